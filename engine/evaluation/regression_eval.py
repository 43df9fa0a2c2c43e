r"""Evaluation of a regression checkpoint and/or the P(k) likelihoods on labelled maps: the
report of task ``regression`` (:func:`evaluate_regression`, reached through
:func:`engine.evaluation.evaluate.evaluate`, whose docstring describes the two classical
baselines).

It resolves a dataset spec (generated kinds follow the checkpoint's map settings and prior box),
transfers the maps to the network's grid when needed (:mod:`engine.evaluation.maps`), predicts
with the network, the binned P(k) likelihood and the calibrated P(k) likelihood, scores them
against the truth (:mod:`engine.evaluation.metrics`) and the Cramér–Rao bound
(:mod:`engine.evaluation.fisher`), and writes ``report.json``, ``predictions.csv`` and
``figures/``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from engine.evaluation.calibrated_use import (
    calibrate,
    pk_calibrated_predict,
    resolve_calibration,
    training_spec,
)
from engine.evaluation.figures import draw_figures
from engine.evaluation.fisher import crb_sigma
from engine.evaluation.likelihood import pk_likelihood_predict
from engine.evaluation.maps import (
    SYNTHETIC_KINDS,
    check_network_maps,
    clean_json,
    load_maps,
    map_settings_of,
    needs_transfer,
    prior_of,
    transfer_maps,
    transfer_text,
)
from engine.evaluation.metrics import N_BINS, away_from_edges, method_report
from engine.evaluation.predict import (
    checkpoint_label,
    checkpoint_like,
    checkpoint_path,
    checkpoint_training_spec,
    predict_network,
    write_predictions,
)
from engine.evaluation.schema import (
    FIGURES,
    LABELS,
    PARAMS,
    PREDICTIONS_FILE,
    REPORT_FILE,
    REPORT_VERSION,
)
from engine.kinds import get_kind
from engine.params import ConfigError

__all__ = ["evaluate_regression"]

#: A median σ_CRB above this fraction of the prior width gets a note (the prior dominates).
WIDE_BOUND = 0.25


@dataclass
class _Maps:
    """The evaluated maps of :func:`evaluate_regression` and what follows from them."""

    da: Any  # xarray.DataArray (sample, y, x), after domain transfer
    spec: str
    like: dict[str, Any] | None  # the network's map settings and prior (checkpoint_like)
    transfer: dict[str, Any] | None
    truth: np.ndarray  # (B, 2) float64
    prior: tuple[tuple[float, float], tuple[float, float]]
    map_settings: dict[str, Any]
    settings: Any  # settings object of the maps' theory, or None
    native: bool  # maps of other simulations or observations
    pk_likelihood: bool
    k_max: float | None
    notes: list[str] = field(default_factory=list)
    pk_calibrated: bool = False
    k_max_given: float | None = None  # k_max as given (the calibrated likelihood's bins)
    calibration: dict[str, Any] | None = None  # report["calibration"]


def evaluate_regression(
    dataset,
    checkpoint,
    out_dir=None,
    pk_likelihood=True,
    device="cpu",
    count=None,
    seed=None,
    datasets_file=None,
    grid=64,
    k_max=None,
    pk_calibrated=None,
    calibration=None,
) -> tuple[dict[str, Any], dict[str, dict], np.ndarray, Any]:
    """The evaluation of a regression checkpoint (and/or the P(k) likelihood): :func:`evaluate`.

    Parameters are those of :func:`evaluate`.

    Returns
    -------
    report : dict
        As :func:`evaluate`.
    results : dict
        Per method ``{"mean", "std"}`` (B, 2) float64 arrays (dimensionless).
    truth : numpy.ndarray (B, 2) float64
    maps : xarray.DataArray
        The evaluated maps (after domain transfer).

    Raises
    ------
    ConfigError
        As :func:`evaluate`.
    """
    t0 = time.perf_counter()
    ckpt, device, out = _check_options(
        checkpoint, out_dir, pk_likelihood or bool(pk_calibrated), device, k_max
    )
    m = _prepare_maps(dataset, ckpt, datasets_file, count, seed, pk_likelihood, k_max)
    m.pk_calibrated = pk_likelihood if pk_calibrated is None else bool(pk_calibrated)
    m.k_max_given = k_max
    results, labels = _predict(m, ckpt, device, grid)
    if m.pk_calibrated:
        _predict_calibrated(m, ckpt, calibration, datasets_file, grid, results, labels)
    fisher, sigma_maps = _fisher(m, grid)
    keep = away_from_edges(m.truth, m.prior)
    methods = {
        k: method_report(labels[k], r, m.truth, m.prior, sigma_maps, keep)
        for k, r in results.items()
    }
    if "network" in methods:
        methods["network"]["checkpoint"] = str(ckpt)
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "dataset": m.spec,
        "checkpoint": None if ckpt is None else str(ckpt),
        "n_maps": len(m.truth),
        "kind": m.da.attrs.get("kind"),
        "map_settings": m.map_settings,
        "transfer": m.transfer,
        "prior": {n: list(m.prior[j]) for j, n in enumerate(PARAMS)},
        "params": list(PARAMS),
        "methods": methods,
        "calibration": m.calibration,
        "fisher": fisher,
        "k_max": m.k_max,
        "figures": {},
        "predictions": None,
        "notes": m.notes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": None,
    }
    return _write(report, out, results, m.truth, t0), results, m.truth, m.da


def _check_options(checkpoint, out_dir, pk_likelihood, device, k_max):
    """(checkpoint file or None, device, output directory or None), checked before any work."""
    ckpt = checkpoint_path(checkpoint) if checkpoint is not None else None
    if ckpt is None and not pk_likelihood:
        raise ConfigError("nothing to evaluate: give a checkpoint or enable the P(k) likelihood")
    if k_max is not None and not (math.isfinite(k_max) and k_max > 0):
        raise ConfigError(f"--k-max {k_max!r} must be a positive number (h/Mpc, or ell for kappa)")
    if ckpt is not None:
        from engine.device import default_device

        try:
            device = str(default_device(str(device)))
        except (ValueError, RuntimeError) as exc:
            msg = str(exc).strip().splitlines()[0]
            raise ConfigError(f"--device {device!r}: {msg}") from None
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {str(out)!r} exists and is not a directory")
        if not out.parent.is_dir():
            raise ConfigError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist")
    return ckpt, device, out


def _prepare_maps(dataset, ckpt, datasets_file, count, seed, pk_likelihood, k_max) -> _Maps:
    """Load the maps, transfer them to the network's grid, and decide which methods run."""
    like = checkpoint_like(ckpt) if ckpt is not None else None
    da, spec = load_maps(dataset, like, datasets_file, count, seed)
    notes: list[str] = []
    native = str(da.attrs.get("kind")) not in SYNTHETIC_KINDS
    transfer = None
    if like is not None and needs_transfer(da, spec):
        da, transfer = transfer_maps(da, like)
        if transfer is not None:
            notes.append(f"domain transfer: {transfer_text(transfer)}")
    truth = np.stack([da["omega_m"].values, da["sigma8"].values], axis=-1).astype(np.float64)
    map_settings, settings = map_settings_of(da)
    if pk_likelihood and native:
        pk_likelihood = False
        notes.append(
            f"P(k) likelihood skipped: {da.attrs.get('kind')!r} maps are not made by this "
            "project's generators, and its theory (engine.evaluation.likelihood) is only that "
            "of kinds " + ", ".join(SYNTHETIC_KINDS)
        )
    elif pk_likelihood and transfer is not None:
        pk_likelihood = False
        notes.append(
            "P(k) likelihood skipped on the resampled maps: its theory is for the maps' own grid "
            "(evaluate without a checkpoint, as compare does, to run it there)"
        )
    if transfer is not None and settings is not None:
        settings = None
        notes.append("no Fisher bound: the maps were resampled for the network")
    if k_max is None and da.attrs.get("kind") in ("2lpt", "pm") and settings is not None:
        # linear theory is only good on large scales for 2LPT/PM maps (engine.evaluation.theory)
        k_max = math.pi * int(settings.size) / float(settings.box_size) / 4
        notes.append(
            f"{da.attrs['kind']} maps: the P(k) likelihood and sigma_CRB use k <= k_Nyquist/4 = {k_max:.4g} "
            "h/Mpc (linear theory)"
        )
    prior = prior_of(like, dict(da.attrs))
    return _Maps(
        da,
        spec,
        like,
        transfer,
        truth,
        prior,
        map_settings,
        settings,
        native,
        pk_likelihood,
        k_max,
        notes,
    )


def _predict(m: _Maps, ckpt, device, grid) -> tuple[dict[str, dict], dict[str, str]]:
    """(results, labels) per method: the network's and the P(k) likelihood's predictions."""
    results: dict[str, dict] = {}
    labels: dict[str, str] = {}
    if ckpt is not None:
        m.notes += check_network_maps(m.da, m.like, strict=not m.native)
        results["network"] = predict_network(m.da, ckpt, device=device, strict=False)
        labels["network"] = checkpoint_label(ckpt)
    if m.pk_likelihood:
        try:
            results["pk_likelihood"] = pk_likelihood_predict(
                m.da, settings=m.settings, prior=m.prior, grid=grid, k_max=m.k_max
            )
            labels["pk_likelihood"] = LABELS["pk_likelihood"]
        except ConfigError as exc:
            m.notes.append(f"P(k) likelihood skipped: {exc}")
    return results, labels


def _predict_calibrated(m: _Maps, ckpt, calibration, datasets_file, grid, results, labels):
    """Add the calibrated P(k) likelihood's predictions to ``results`` (module docstring for the
    calibration used), or a note saying why it did not run."""
    try:
        options = {"datasets_file": datasets_file, "k_max": m.k_max_given}
        if calibration is not None:
            cal = resolve_calibration(calibration, like=None, **options)
        elif ckpt is not None:
            spec = checkpoint_training_spec(ckpt)
            # on the fly: maps generated like the network's (settings and prior box)
            like = m.like if spec is None else None
            cal = calibrate(spec or str(m.like["kind"]), like=like, **options)
        elif m.spec == "<DataArray>" or not isinstance(m.spec, str):
            raise ConfigError(
                "maps given as a DataArray without a source: pass calibration= (a file or the "
                "spec of the training data)"
            )
        else:  # the dataset's own train split, all of it (count is of the evaluated maps)
            cal = calibrate(training_spec(m.spec, datasets_file, drop_count=True)[1], **options)
            _note_overlap(m, datasets_file)
        results["pk_calibrated"] = pk_calibrated_predict(m.da, cal, prior=m.prior, grid=grid)
    except ConfigError as exc:
        m.notes.append(f"calibrated P(k) skipped: {exc}")
        return
    labels["pk_calibrated"] = LABELS["pk_calibrated"]
    m.calibration = cal.summary()
    m.notes.append(
        f"calibrated P(k): emulator and covariance from {cal.n_maps} maps of {cal.spec!r} "
        f"({cal.n_bins} bins, Hartlap factor {cal.hartlap:.3f})"
    )
    val = cal.validation
    if val and abs(val["chi2_per_bin"] - 1) > 5 * val["chi2_error"] + 0.1:
        m.notes.append(
            f"calibrated P(k): held-out chi2 per bin {val['chi2_per_bin']:.3g} on "
            f"{val['n_maps']} maps (1 expected): the emulator or covariance misfits"
        )
    outside = [
        name
        for j, name in enumerate(PARAMS)
        if m.prior[j][0] < float(cal.theta_lo[j]) - 0.02 * (m.prior[j][1] - m.prior[j][0])
        or m.prior[j][1] > float(cal.theta_hi[j]) + 0.02 * (m.prior[j][1] - m.prior[j][0])
    ]
    if outside:
        m.notes.append(
            "calibrated P(k): the prior box extends beyond the calibration's labels in "
            + ", ".join(outside)
            + " (the emulator extrapolates there)"
        )


def _note_overlap(m: _Maps, datasets_file) -> None:
    """Note when a calibration fitted on the evaluated dataset's train split shares maps with
    the evaluated maps (other than generated kinds and ``?split=test``/``val``)."""
    from engine.data import parse_spec, resolve_name

    prefix, _base = training_spec(m.spec, datasets_file)
    split = parse_spec(resolve_name(m.spec, datasets_file))[2].get("split")
    if prefix != "synthetic" and split not in ("test", "val"):
        m.notes.append(
            f"calibrated P(k): calibrated on the train split of {m.spec!r}, which the evaluated "
            "maps include (add ?split=test to evaluate on held-out maps)"
        )


def _fisher(m: _Maps, grid: int) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    """(``report["fisher"]``, σ_CRB (B, 2) at each map's truth), or Nones with a note.

    The bound is evaluated at each map's truth, at the prior centre and at the bin centres of
    each parameter (the other at the prior centre).
    """
    if m.settings is None:
        if m.transfer is None:
            m.notes.append(f"no Fisher bound: kind {m.da.attrs.get('kind')!r} has no theory")
        return None, None
    prior, truth = m.prior, m.truth
    centre = [0.5 * (lo + hi) for lo, hi in prior]
    mids = [0.5 * (e[1:] + e[:-1]) for e in (np.linspace(lo, hi, N_BINS + 1) for lo, hi in prior)]
    om = np.concatenate([truth[:, 0], [centre[0]], mids[0], np.full(N_BINS, centre[0])])
    s8 = np.concatenate([truth[:, 1], [centre[1]], np.full(N_BINS, centre[1]), mids[1]])
    try:
        sig, how = crb_sigma(m.settings, om, s8, prior, m.k_max, grid)
    except ConfigError as exc:
        m.notes.append(f"no Fisher bound: {exc}")
        return None, None
    b = len(truth)
    sigma_maps = sig[:b]
    for j, name in enumerate(PARAMS):
        width = prior[j][1] - prior[j][0]
        if np.median(sigma_maps[:, j]) > WIDE_BOUND * width:
            m.notes.append(
                f"sigma_CRB of {name} (median {np.median(sigma_maps[:, j]):.3g}) is not "
                f"small against the prior width {width:.3g}: the prior limits the errors "
                "and an efficiency above 1 is expected"
            )
    kind = str(m.da.attrs.get("kind"))
    gaussian = get_kind(kind).is_gaussian(m.settings)
    if not gaussian:
        m.notes.append(
            f"kind {kind!r} is not a Gaussian field: sigma_CRB is the information of its "
            "power spectrum, not a bound on every estimator"
        )
    fisher = {
        "crb_sigma": {"omega_m": sig[b, 0], "sigma8": sig[b, 1]},
        "bins": {"omega_m": sig[b + 1 : b + 1 + N_BINS, 0], "sigma8": sig[b + 1 + N_BINS :, 1]},
        "method": how,
        "bound": gaussian,
    }
    return fisher, sigma_maps


def _write(report: dict[str, Any], out: Path | None, results, truth, t0: float) -> dict[str, Any]:
    """Write predictions, figures and report.json under ``out`` (if any); the cleaned report.

    They are written to a temporary directory first and moved into place together when complete
    (:func:`engine.outputs.staged_dir`): a directory of only these outputs is replaced as a whole;
    in a directory of other things (a run directory) the old report is removed first and the new
    one moved in last. An error or interrupt leaves the old outputs as they were.
    """
    from engine.outputs import staged_dir

    if out is None:
        report["seconds"] = time.perf_counter() - t0
        return clean_json(report)
    from engine.runs import write_json_atomic

    entries = ("figures", PREDICTIONS_FILE, REPORT_FILE)
    with staged_dir(out, entries) as tmp:
        (tmp / "figures").mkdir()
        write_predictions(tmp / PREDICTIONS_FILE, results)
        report["predictions"] = PREDICTIONS_FILE
        report["figures"] = dict(FIGURES)
        draw_figures(clean_json(report), truth, results, tmp)
        report["seconds"] = time.perf_counter() - t0
        report = clean_json(report)
        write_json_atomic(tmp / REPORT_FILE, report)
    return report
