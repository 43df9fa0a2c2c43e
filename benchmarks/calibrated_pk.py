"""The simulation-calibrated P(k) likelihood on the 2LPT slabs of ``assets/models/2lpt64``.

The engine's linear-theory P(k) likelihood (:mod:`engine.evaluation.likelihood`) is biased for
thin 2LPT slabs at z = 0: the projection integrates 3D modes up to k_z ~ 2π/Δ, where LPT is
damped and nonlinear, so the measured P̂ lies ~25-35 % below linear theory. The fair classical
baseline is the simulation-calibrated likelihood of :mod:`engine.evaluation.calibrated` (the
engine's implementation: emulator of the mean ln P̂ quadratic in (ln Ω_m, ln σ8), residual
covariance with the Hartlap correction, posterior on the prior grid), fitted on the dataset's
*training* split and scored on its *test* split (the maps the shipped network was evaluated
on). This script only drives the engine code.

Run ``python -m benchmarks.calibrated_pk`` after writing the dataset (docs/results.md):
``python -m engine dataset --kind 2lpt --size 64 --box 128 --thickness 8 --omega-m 0.1:0.5
--sigma8 0.6:1.0 --count 3200 --split 0.75,0.1,0.15 --seed 0 --out data/2lpt64.zarr``.
Prints RMSE, bias and 68 % coverage per parameter for the linear-theory likelihood (k ≤ k_N/4,
as ``evaluate`` uses for 2lpt) and the calibrated likelihood (k_f-wide bins up to k_N/4 and up
to k_N; and the default 16 merged bins up to k_N) next to the shipped network's (its
report.json on the same test maps), and writes ``benchmarks/results/calibrated_pk.json``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from engine.data import open_spec
from engine.evaluation.calibrated import DEFAULT_MAX_BINS
from engine.evaluation.calibrated_fit import fit_calibration
from engine.evaluation.calibrated_use import (
    pk_calibrated_predict,
    training_maps,
)
from engine.evaluation.likelihood import pk_likelihood_predict
from engine.evaluation.theory import DEFAULT_PRIOR

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT / "data" / "2lpt64.zarr"
REPORT = ROOT / "assets" / "models" / "2lpt64" / "report.json"
OUT = Path(__file__).resolve().parent / "results" / "calibrated_pk.json"
GRID = 80


def scores(result: dict, truth: np.ndarray) -> dict:
    """RMSE, bias and 68 % coverage per parameter (lists in the order Ω_m, σ8)."""
    err = result["mean"] - truth
    return {
        "rmse": np.sqrt((err**2).mean(0)).tolist(),
        "bias": err.mean(0).tolist(),
        "coverage_68": (np.abs(err) <= result["std"]).mean(0).tolist(),
    }


def main() -> int:
    if not DATASET.exists():
        print(
            f"error: {DATASET} does not exist: write it first (module docstring)", file=sys.stderr
        )
        return 2
    train = training_maps(str(DATASET))
    test = open_spec(f"{DATASET}?split=test").load()
    truth = np.stack([test["omega_m"].values, test["sigma8"].values], -1).astype(np.float64)
    size, box = int(test.attrs["size"]), float(test.attrs["box_size"])
    k_quarter = math.pi * size / box / 4
    results = {
        "linear theory P(k), k<=kN/4": scores(
            pk_likelihood_predict(test, prior=DEFAULT_PRIOR, grid=GRID, k_max=k_quarter), truth
        )
    }
    for label, k_max, max_bins in (
        ("calibrated P(k), kf bins, k<=kN/4", k_quarter, None),
        ("calibrated P(k), kf bins, all k", None, None),
        (f"calibrated P(k), {DEFAULT_MAX_BINS} bins, all k", None, DEFAULT_MAX_BINS),
    ):
        cal = fit_calibration(train, str(DATASET), k_max=k_max, max_bins=max_bins)
        pred = pk_calibrated_predict(test, cal, prior=DEFAULT_PRIOR, grid=GRID)
        results[label] = {**scores(pred, truth), "n_bins": cal.n_bins, "hartlap": cal.hartlap}
        results[label]["validation"] = cal.validation
    net = json.loads(REPORT.read_text())["methods"]["network"]["metrics"]
    results["network (2lpt64)"] = {
        "rmse": [net["omega_m"]["rmse"], net["sigma8"]["rmse"]],
        "bias": [net["omega_m"]["bias"], net["sigma8"]["bias"]],
        "coverage_68": [net["omega_m"]["coverage_68"], net["sigma8"]["coverage_68"]],
    }
    print(f"2LPT test split: {len(truth)} maps; calibration on {train.sizes['sample']} train maps")
    head = f"{'estimator':<38}{'RMSE Ω_m':>10}{'RMSE σ8':>10}{'bias Ω_m':>10}{'bias σ8':>10}"
    print(head + f"{'cov68 Ω_m':>11}{'cov68 σ8':>10}")
    for name, r in results.items():
        print(
            f"{name:<38}{r['rmse'][0]:>10.4f}{r['rmse'][1]:>10.4f}{r['bias'][0]:>10.4f}"
            f"{r['bias'][1]:>10.4f}{r['coverage_68'][0]:>11.3f}{r['coverage_68'][1]:>10.3f}"
        )
    best = min((v["rmse"][0], k) for k, v in results.items() if k.startswith("calibrated"))
    ratio = best[0] / results["network (2lpt64)"]["rmse"][0]
    print(f"RMSE(Ω_m) best calibrated P(k) likelihood ({best[1]}) / network = {ratio:.2f}")
    rows = [
        dict(name=f"2lpt64_{metric}_{param}[{k}]", value=v[metric][j], unit="")
        for k, v in results.items()
        if not k.startswith("network")
        for metric in ("rmse", "bias", "coverage_68")
        for j, param in enumerate(("omega_m", "sigma8"))
    ]
    rows.append(
        dict(
            name="2lpt64_rmse_omega_m_network",
            value=results["network (2lpt64)"]["rmse"][0],
            unit="",
            peer=best[1],
            peer_value=best[0],
            ratio=ratio,
        )
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
