"""Inference benchmark of the shipped models: ``python -m benchmarks.inference`` (or
``make bench-inference``).

For every run directory ``assets/models/NAME`` with a ``checkpoints/best.pt`` (the models of
issue #4 §6, see docs/results.md), on this machine's CPU:

1. draws ``count`` fresh test maps of the checkpoint's own kind and map settings, with
   (Ω_m, σ8) uniform in its prior box from the seed :data:`SEED` (never seen in training: the
   training seeds draw from other streams, the 2LPT dataset from its own seed), and times the
   generation (maps/s);
2. predicts them with the network (:func:`engine.evaluation.predict.predict_network`, posterior mean) and
   with the binned P(k) likelihood (:func:`engine.evaluation.likelihood.pk_likelihood_predict`, posterior
   mean, the peer; for 2LPT slabs with k <= k_Nyquist/4 as ``engine.evaluation.evaluate`` does, since their
   linear theory fails on smaller scales, and once more with every k), timing both (maps/s);
3. scores both: RMSE per parameter over all test maps and over the maps away from the prior edges
   (:func:`engine.evaluation.metrics.away_from_edges`, 10 % of the prior width), the efficiency
   σ_CRB / RMSE there (:func:`engine.evaluation.metrics.efficiency_from_sigma` with
   :func:`engine.evaluation.fisher.crb_sigma`; a bound only for Gaussian maps — for lognormal and 2LPT
   maps σ_CRB is the information of the power spectrum alone, which a network may beat), and
   the RMSE ratio P(k) likelihood / network;
4. times optimiser steps with the settings the model was trained with (the run's
   ``config.json``: maps/s of training including on-the-fly generation or dataset reads).

Prints a table and writes ``benchmarks/results/inference.json``, a list of objects with ``name``,
``value``, ``unit`` and, where a peer exists, ``peer``, ``peer_value`` and ``ratio`` (> 1 means
the network is better: peer/ours for errors, ours/peer for efficiencies and rates), plus
``target`` and ``meta`` — the format of ``benchmarks/results/latest.json``
(:mod:`benchmarks`). Numbers on this shared 2-core machine are noisy; nothing is asserted.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine.evaluation import fisher, likelihood, metrics, predict, schema
from engine.kinds import get_kind
from engine.params import ConfigError, set_values, user_settings
from engine.train.checkpoint import load_checkpoint
from engine.train.loop import Trainer
from engine.train.settings import PRESETS, resolve_params

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "assets" / "models"
RESULTS = Path(__file__).resolve().parent / "results" / "inference.json"
#: Seed of the test maps' parameters and fields.
SEED = 20_260_404
#: Test maps per kind (2LPT slabs cost ~0.3 s each on 2 cores, hence fewer).
COUNTS = {"grf": 1000, "lognormal": 1000, "2lpt": 300}
#: Maps generated per call.
CHUNK = 100
#: Optimiser steps timed per preset (after one warm-up step).
TRAIN_STEPS = 5
#: Targets of issue #4 §6 (reported, not asserted).
TARGETS = {"efficiency": ">= 0.9 (grf)", "ratio_omega_m": ">= 1.3 (lognormal, 2lpt)"}


def kind_settings(map_settings: dict):
    """Settings object of the checkpoint's kind with its map settings (2LPT: slabs, dim=2)."""
    kind = get_kind(map_settings["kind"])
    settings = kind.new_settings()
    names = set(user_settings(type(settings)))
    values = {k: v for k, v in map_settings.items() if k in names and k != "kind"}
    if "dim" in names:
        values["dim"] = 2
    set_values(settings, values)
    return kind, settings


def test_maps(kind, settings, prior, count: int, seed: int = SEED):
    """``count`` maps ``(B, N, N) float32`` with parameters ``(B, 2) float64`` uniform in
    ``prior``, and the generation rate (maps/s)."""
    gen = torch.Generator().manual_seed(seed)
    lo = torch.tensor([prior[0][0], prior[1][0]], dtype=torch.float64)
    hi = torch.tensor([prior[0][1], prior[1][1]], dtype=torch.float64)
    theta = lo + (hi - lo) * torch.rand((count, 2), generator=gen, dtype=torch.float64)
    kind.generate_batch(settings, theta[:2, 0].float(), theta[:2, 1].float(), gen, "cpu")  # warm
    maps = []
    t = time.perf_counter()
    for i in range(0, count, CHUNK):
        th = theta[i : i + CHUNK].float()
        maps.append(kind.generate_batch(settings, th[:, 0], th[:, 1], gen, "cpu"))
    rate = count / (time.perf_counter() - t)
    return torch.cat(maps), theta.numpy(), rate


def train_rate(run_dir: Path) -> float | None:
    """Maps/s of optimiser steps with the settings the model in ``run_dir`` was trained with
    (its ``config.json``; else the preset of the same name). None: neither, or a missing
    dataset."""
    config = run_dir / "config.json"
    base = json.loads(config.read_text()).get("settings") if config.is_file() else None
    if base is None and run_dir.name not in PRESETS:
        return None
    try:
        params = resolve_params(run_dir.name, base=base)
    except ConfigError as exc:
        print(f"  {run_dir.name}: training not timed ({exc})", file=sys.stderr)
        return None
    from engine.runs import RunDir

    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(tmp)
        run.create()
        trainer = Trainer(params, run, torch.device("cpu"), progress=False)
        trainer.train_step()
        t = time.perf_counter()
        for _ in range(TRAIN_STEPS):
            trainer.train_step()
        dt = time.perf_counter() - t
    return TRAIN_STEPS * params.batch_size / dt


def pk_k_max(kind: str, settings) -> float | None:
    """Highest k (h/Mpc) of the P(k) likelihood: ``engine.evaluation.evaluate``'s choice, k_Nyquist / 4
    for 2LPT slabs (their linear theory fails on smaller scales), else None (Nyquist)."""
    if kind == "2lpt":
        return math.pi * int(settings.size) / float(settings.box_size) / 4
    return None


def rmse(pred, truth) -> np.ndarray:
    """(2,) root-mean-square error of ``pred`` (B, 2) against ``truth`` (B, 2)."""
    return np.sqrt(np.mean((np.asarray(pred) - np.asarray(truth)) ** 2, axis=0))


def accuracy_rows(name: str, net, pk, truth, keep, sigma, bound: bool) -> list[dict]:
    """RMSE (all maps and away from the prior edges) and efficiency rows of one model, per
    parameter, with the P(k) likelihood as the peer."""
    count = len(truth)
    rows: list[dict] = []
    r_net, r_pk = rmse(net, truth), rmse(pk, truth)
    r_net_in, r_pk_in = rmse(net[keep], truth[keep]), rmse(pk[keep], truth[keep])
    for j, p in enumerate(schema.PARAMS):
        rows.append(
            dict(
                name=f"{name}_rmse_{p}",
                value=float(r_net[j]),
                unit="",
                peer="P(k) likelihood",
                peer_value=float(r_pk[j]),
                ratio=float(r_pk[j] / r_net[j]),
                target=TARGETS["ratio_omega_m"] if (p == "omega_m" and not bound) else "",
                n_maps=int(count),
            )
        )
        rows.append(
            dict(
                name=f"{name}_rmse_{p}_inner",
                value=float(r_net_in[j]),
                unit="",
                peer="P(k) likelihood",
                peer_value=float(r_pk_in[j]),
                ratio=float(r_pk_in[j] / r_net_in[j]),
                n_maps=int(keep.sum()),
            )
        )
        e_net = metrics.efficiency_from_sigma(net[keep, j], truth[keep, j], sigma[:, j])
        e_pk = metrics.efficiency_from_sigma(pk[keep, j], truth[keep, j], sigma[:, j])
        rows.append(
            dict(
                name=f"{name}_efficiency_{p}" if bound else f"{name}_pk_fisher_ratio_{p}",
                value=float(e_net),
                unit="sigma_CRB/RMSE" if bound else "sigma_Fisher(P(k))/RMSE",
                peer="P(k) likelihood",
                peer_value=float(e_pk),
                ratio=float(e_net / e_pk),
                target=TARGETS["efficiency"] if bound else "",
                n_maps=int(keep.sum()),
            )
        )
    return rows


def bench_model(run_dir: Path) -> list[dict]:
    """The result rows of one shipped model (module docstring)."""
    name = run_dir.name
    ckpt_path = run_dir / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(ckpt_path)
    kind, settings = kind_settings(ckpt["map_settings"])
    state = ckpt["task_state"]  # label box of the regression task (engine.tasks.regression)
    prior = tuple(zip(state["prior_low"], state["prior_high"], strict=True))
    count = COUNTS.get(kind.name, 300)
    maps, truth, gen_rate = test_maps(kind, settings, prior, count)

    t = time.perf_counter()
    net = predict.predict_network(maps, ckpt_path)["mean"]
    net_rate = count / (time.perf_counter() - t)
    k_max = pk_k_max(kind.name, settings)
    t = time.perf_counter()
    pk = likelihood.pk_likelihood_predict(maps, settings, prior=prior, k_max=k_max)["mean"]
    pk_rate = count / (time.perf_counter() - t)

    keep = metrics.away_from_edges(truth, prior)
    sigma, _ = fisher.crb_sigma(settings, truth[keep, 0], truth[keep, 1], prior, k_max)
    bound = kind.is_gaussian(settings)  # the Fisher information of P(k) bounds every estimator
    rows = accuracy_rows(name, net, pk, truth, keep, sigma, bound)
    r_net = rmse(net, truth)
    if k_max is not None:  # the likelihood with every k, past the range of its linear theory
        full = likelihood.pk_likelihood_predict(maps, settings, prior=prior)["mean"]
        r_full = rmse(full, truth)
        rows.append(
            dict(
                name=f"{name}_rmse_omega_m",
                value=float(r_net[0]),
                unit="",
                peer="P(k) likelihood, k <= k_Nyquist",
                peer_value=float(r_full[0]),
                ratio=float(r_full[0] / r_net[0]),
                n_maps=int(count),
            )
        )
    rows.append(dict(name=f"{name}_generation", value=gen_rate, unit="maps/s"))
    rows.append(
        dict(
            name=f"{name}_inference",
            value=net_rate,
            unit="maps/s",
            peer="P(k) likelihood",
            peer_value=pk_rate,
            ratio=net_rate / pk_rate,
        )
    )
    rate = train_rate(run_dir)
    if rate is not None:
        rows.append(dict(name=f"{name}_training", value=rate, unit="maps/s"))
    return rows


def _task(run: Path) -> str:
    """The task of a shipped run directory (its config.json; regression when not said)."""
    try:
        return json.loads((run / "config.json").read_text()).get("task", "regression")
    except (OSError, ValueError):
        return "regression"


def main() -> int:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    dirs = sorted(
        p
        for p in MODELS_DIR.glob("*")
        if (p / "checkpoints" / "best.pt").is_file() and _task(p) == "regression"
    )  # the map emulators (gan32, diffusion32) are measured by benchmarks.emulators
    if not dirs:
        print(f"no models in {MODELS_DIR}", file=sys.stderr)
        return 1
    results: list[dict] = []
    for d in dirs:
        print(f"benchmarking {d.name} ...", file=sys.stderr, flush=True)
        results.extend(bench_model(d))
    header = f"{'benchmark':<36}{'value':>12} {'unit':<24}{'peer':<34}{'peer value':>12}{'ratio':>8}  target"
    print(header)
    print("-" * len(header))
    for r in results:
        pv = f"{r['peer_value']:.4g}" if "peer_value" in r else ""
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else ""
        print(
            f"{r['name']:<36}{r['value']:>12.4g} {r['unit']:<24}{r.get('peer', ''):<34}{pv:>12}"
            f"{ratio:>8}  {r.get('target', '')}"
        )
    meta = dict(
        machine=platform.machine(),
        cpus=os.cpu_count(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        seed=SEED,
        time=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps([{**r, "meta": meta} for r in results], indent=1))
    os.replace(tmp, RESULTS)
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
