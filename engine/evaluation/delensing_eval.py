r"""Evaluation and prediction of a delensing checkpoint (:mod:`engine.tasks.delensing`).

``python -m engine evaluate --checkpoint RUN --dataset SKIES --out DIR`` delenses every sky of
``SKIES`` — one file of ``engine sky --kind cmb``, or several separated by commas (e.g. test
skies at r = 0, 0.01 and 0.05; each file's ``r`` attr is its true r) — twice, with the stored and
with an independent noise realisation, and writes the report of
:func:`engine.evaluation.delensing.delensing_report` (A_res per ℓ bin and over 20 ≤ ℓ ≤ 200
against the baselines none and true-φ template, fitted r with bias and σ(r), the
quadratic-estimator forecasts) as ``report.json`` with figures
(:mod:`engine.evaluation.delensing_figures`), written into a temporary directory and moved into
place. Skies of another nside than the network's are refused; other noise or beam than the
training skies' are allowed (the report notes them: this is how A_res at 1 and 5 µK-arcmin is
measured for a network trained at 2). Where ``assets/qe`` holds a calibration of the iterated QE
at the skies' nside, noise and beam (:func:`calibrate_qe`, ``python -m engine qe-calibrate``),
the report adds it as the baseline ``qe_it``.

``python -m engine predict --checkpoint RUN --maps SKIES --out delensed.fits`` delenses the
observed Q/U of a sky file (one FITS file per sky: ``delensed.fits`` for one, else
``delensed_0000.fits`` …) or of a HEALPix FITS map (:func:`engine.data.cmb.read_fits_qu`),
writing I (zeros), Q, U in µK, RING (:func:`engine.data.cmb.write_fits_qu`).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from engine.params import ConfigError

#: Task name of the checkpoints evaluated here.
TASK = "delensing"
#: Report file name.
REPORT_FILE = "report.json"
#: Maps of a sky read for the evaluation.
EVAL_KEYS = ("Q", "U", "Q_lensed", "U_lensed", "Q_unlensed", "U_unlensed", "phi")


def calibrate_qe(spec: str, out, count: int | None = None, progress: bool | None = None):
    """Calibrate the one-step iterated QE (:func:`engine.physics.cmb_qe_iter.calibrate_iteration`)
    on simulated skies with their true φ and write it as JSON (atomically).

    ``python -m engine qe-calibrate --dataset data/cmb512.zarr --out assets/qe/NAME.json``.
    The skies must share nside, noise and beam (those of the skies the calibration will be used
    on; :func:`qe_calibration_for` finds it by them) and hold ``phi``; use skies other than the
    ones the delensing is scored on (the training skies).

    Parameters
    ----------
    spec : str
        Sky files, comma-separated (:func:`load_skies`).
    out : str or Path
        JSON file to write; an existing one is replaced.
    count : int, optional
        At most this many skies per file.
    progress : bool, optional
        tqdm bar (default: when stderr is a terminal).

    Returns
    -------
    dict: the calibration (``edges``, ``a``, ``b``, ``rho2_qe``, ``rho2``, ``n_skies``, ``lmax``,
    ``nside``, ``noise``, ``beam``, ``b_lmin``, ``dataset``, ``created``, ``seconds``).

    Raises
    ------
    ConfigError
        Unreadable skies, skies without φ, masked skies, skies of different settings, < 2 skies.
    """
    import sys

    import healpy as hp
    from tqdm.auto import tqdm

    from engine.physics.cmb_maps import _attr
    from engine.physics.cmb_qe import B_LMIN
    from engine.physics.cmb_qe_iter import calibrate_iteration, qe_iteration_terms
    from engine.runs import write_json_atomic

    t0 = time.perf_counter()
    skies = load_skies(spec, count)
    settings = set()
    for sky in skies.values():
        if "phi" not in sky:
            raise ConfigError(f"dataset {sky['spec']!r} holds no phi: calibration needs it")
        mask = sky.get("mask")
        if mask is not None and np.any(np.asarray(mask) <= 0):
            raise ConfigError(f"dataset {sky['spec']!r} is masked: the QE here is full-sky only")
        a = sky["attrs"]
        settings.add((sky["Q"].shape[1], _attr(a, "noise"), _attr(a, "beam")))
    if len(settings) > 1:
        raise ConfigError(
            f"dataset {spec!r}: skies of different nside/noise/beam {sorted(settings)}"
        )
    rows = [(sky, i) for sky in skies.values() for i in range(sky["Q"].shape[0])]
    show = sys.stderr.isatty() if progress is None else progress
    terms: dict[str, list] = {"phi_wf": [], "delta": []}
    truth, lmax, attrs = [], 0, {}
    for sky, i in tqdm(rows, desc="QE iteration", unit="sky", disable=not show):
        attrs = sky["attrs"]
        t = qe_iteration_terms(sky["Q"][i], sky["U"][i], attrs)
        lmax = t["lmax"]
        terms["phi_wf"].append(t["phi_wf"][0])
        terms["delta"].append(t["delta"][0])
        truth.append(hp.map2alm(sky["phi"][i], lmax=lmax, iter=3))
    cal = calibrate_iteration({**terms, "lmax": lmax}, np.array(truth))
    cal.update(
        nside=int(hp.npix2nside(rows[0][0]["Q"].shape[1])),
        noise=float(_attr(attrs, "noise")),
        beam=float(_attr(attrs, "beam")),
        b_lmin=B_LMIN,
        dataset=str(spec),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=time.perf_counter() - t0,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, cal)
    return cal


def load_skies(spec: str, count: int | None = None) -> dict[float, dict[str, Any]]:
    """The skies of one or several sky files, by their true r.

    Parameters
    ----------
    spec : str
        Sky-file specs (:class:`engine.data.cmb.CMBSkies`) separated by commas.
    count : int, optional
        At most this many skies per file.

    Returns
    -------
    dict
        ``{r: {"Q": (n, npix) float64, …, "mask": (npix,), "attrs": dict, "indices": (n,)
        int64 file rows}}``.

    Raises
    ------
    ConfigError
        Unreadable files, two files of the same r, files of different nside.
    """
    from engine.data.cmb import CMBSkies

    out: dict[float, dict[str, Any]] = {}
    nside = None
    for part in filter(None, (p.strip() for p in str(spec).split(","))):
        src = CMBSkies(part)
        rows = src.indices[:count] if count else src.indices
        r = float(src.attrs.get("r", 0.0))
        if r in out:
            raise ConfigError(f"dataset {part!r}: a second set of skies at r={r:g}")
        if nside is not None and src.nside != nside:
            raise ConfigError(f"dataset {part!r}: nside {src.nside}, the others {nside}")
        nside = src.nside
        keys = [k for k in EVAL_KEYS if k in src.ds.variables]
        sky = {
            k: np.stack([src.sky(int(i), (k,))[k] for i in rows]).astype(np.float64) for k in keys
        }
        sky["mask"] = src.mask()
        sky["attrs"] = dict(src.attrs)
        sky["indices"] = np.asarray(rows, dtype=np.int64)
        sky["spec"] = part
        out[r] = sky
    if not out:
        raise ConfigError(f"dataset {spec!r} names no sky file")
    return out


def evaluate_delenser(
    dataset,
    checkpoint,
    out_dir=None,
    device: str = "cpu",
    count: int | None = None,
    seed: int | None = None,
    datasets_file=None,
    template: bool = True,
    measured_qe: bool = True,
    **_regression_options,
) -> tuple[dict[str, Any], dict, None, None]:
    """Score a delensing checkpoint on skies; write the report (module docstring).

    Parameters
    ----------
    dataset : str
        Sky files, comma-separated (:func:`load_skies`).
    checkpoint : str or Path
        A ``.pt`` file or a run directory.
    out_dir : str or Path, optional
        Directory for ``report.json`` and ``figures/``; None writes nothing.
    device : str
    count : int, optional
        At most this many skies per file.
    seed : int, optional
        Seed of the second noise realisations (default 1).
    template : bool
        Also run the true-φ template baseline (~1 min per noise realisation at nside 512).
    measured_qe : bool
        Also run the measured quadratic-estimator delensing baseline on full-sky skies
        (:mod:`engine.physics.cmb_qe`; ~16 s per sky and noise realisation at nside
        512, plus its transfer function).
    datasets_file, **_regression_options
        Accepted like every evaluator's options; not used.

    Returns
    -------
    (report, results, None, None)
        The JSON-ready report and ``{"network": {"seconds_per_sky": ...}}``.

    Raises
    ------
    ConfigError
        Bad checkpoint or skies, another nside than the network's.
    """
    from engine.evaluation.delensing import delensing_report
    from engine.evaluation.maps import clean_json
    from engine.evaluation.predict import load_task_network

    t0 = time.perf_counter()
    model, task, _ = load_task_network(checkpoint, device, TASK)
    skies = load_skies(dataset, count)
    notes = []
    trained = task.sky_attrs
    for r, sky in skies.items():
        n = sky["Q"].shape[1]
        if n != 12 * task.nside**2:
            raise ConfigError(
                f"dataset {sky['spec']!r}: nside {int(np.sqrt(n // 12))}; the delenser was "
                f"trained at nside {task.nside}"
            )
        for key, unit in (("noise", "uK-arcmin"), ("beam", "arcmin"), ("lmax_unlensed", "")):
            a, b = sky["attrs"].get(key), trained.get(key)
            if a is not None and b is not None and float(a) != float(b):
                notes.append(
                    f"skies at r={r:g} have {key}={a} {unit}; the network was trained at {b}"
                )
    timing = {"skies": 0, "seconds": 0.0}

    def network(q, u, sky):
        qs, us = np.empty_like(q), np.empty_like(u)
        for i in range(q.shape[0]):
            t = time.perf_counter()
            qs[i], us[i] = task.predict(model, q[i], u[i])
            timing["seconds"] += time.perf_counter() - t
            timing["skies"] += 1
        return qs, us

    from engine.physics.cmb_maps import _lmax
    from engine.physics.cmb_qe_iter import qe_calibration_for

    first = next(iter(skies.values()))
    lmax = _lmax(first["Q"].shape[1], first["attrs"].get("lmax") or None)
    calibration = qe_calibration_for(first["attrs"], lmax) if measured_qe else None
    report = delensing_report(
        skies,
        {"network": network},
        seed=1 if seed is None else int(seed),
        template=template,
        measured_qe=measured_qe,
        qe_calibration=calibration,
    )
    if calibration is not None:
        notes.append(f"qe_it: the iterated QE calibrated in {calibration['path']}")
    per_sky = timing["seconds"] / max(timing["skies"], 1)
    report.update(
        task=TASK,
        dataset=str(dataset),
        checkpoint=str(checkpoint),
        n_skies={f"{r:g}": int(s["Q"].shape[0]) for r, s in skies.items()},
        trained_on=dict(trained),
        seconds_per_sky=per_sky,
        notes=list(dict.fromkeys(notes)),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    results = {"network": {"seconds_per_sky": per_sky}}
    if out_dir is None:
        report["seconds"] = time.perf_counter() - t0
        return clean_json(report), results, None, None
    from engine.evaluation.delensing_figures import draw_delensing_figures
    from engine.outputs import staged_dir
    from engine.runs import write_json_atomic

    out = Path(out_dir)
    with staged_dir(out, ("figures", REPORT_FILE)) as tmp:
        (tmp / "figures").mkdir()
        report["figures"] = draw_delensing_figures(clean_json(report), tmp / "figures")
        report["figures"] = {k: f"figures/{Path(v).name}" for k, v in report["figures"].items()}
        report["seconds"] = time.perf_counter() - t0
        report = clean_json(report)
        write_json_atomic(tmp / REPORT_FILE, report)
    return report, results, None, None


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Terminal lines of a delensing report: mean A_res over the ℓ range for the network and the
    baselines, the QE forecasts, and the fitted r per true r."""

    def f(v, fmt=".3f"):
        return "-" if v is None else format(v, fmt)

    lo, hi = report["ell_range"]
    lines = [f"A_res (residual lensing BB / lensing BB, {lo} <= ell <= {hi}):"]
    own = report.get("a_res_own") or {}
    for name, a in report["a_res"].items():
        o = own.get(name) or {}
        lines.append(
            f"  {name:<10} {f(a.get('mean'))} ± {f(a.get('mean_err'))} (cross spectrum); "
            f"{f(o.get('mean'))} ± {f(o.get('mean_err'))} with its own noise counted"
        )
    for est, q in (report.get("qe_forecast") or {}).items():
        what = "; the estimator of the measured qe" if est == "pol" else ""
        lines.append(f"  QE {est.upper():<7} {f(q.get('mean'))} (forecast, perfect E{what})")
    fits = report.get("fit_r") or {}
    for name, fit in fits.items():
        tr = fit.get("transfer")
        if tr:
            lines.append(
                f"  {name}: transfer function on primordial B {f(tr.get('mean'))} over the "
                f"range (injected r = {tr.get('r_injected')}, {tr.get('n_skies')} skies); "
                "r fitted with it"
            )
        paired = fit.get("paired") or {}
        for r, s in (fit.get("by_r") or {}).items():
            lines.append(
                f"  r={r:<5} {name:<10} mean r_hat {f(s.get('mean_r_hat'), '.4f')} "
                f"sigma(r) {f(s.get('sigma_r'), '.4f')} bias/sigma "
                f"{f(s.get('bias_over_sigma'), '.2f')} ± {f(s.get('bias_over_sigma_err'), '.2f')} "
                f"({s.get('n_sky')} skies)"
            )
            if r in paired:
                p = paired[r]
                lines.append(
                    f"  r={r:<5} {name:<10} paired with the r=0 skies: bias/sigma "
                    f"{f(p.get('bias_over_sigma'), '.2f')} ± "
                    f"{f(p.get('bias_over_sigma_err'), '.2f')} ({p.get('n_sky')} pairs)"
                )
    return lines


def predict_delenser(
    maps: str, checkpoint, out, device: str = "cpu", overwrite: bool = False
) -> list[Path]:
    """Delens the observed Q/U of ``maps`` and write FITS files (module docstring).

    Parameters
    ----------
    maps : str
        A sky file spec (``.zarr``/``.nc``, its ``Q``/``U``) or a HEALPix FITS map (I, Q, U).
    checkpoint : str or Path
    out : str or Path
        ``.fits`` path; several skies get ``_NNNN`` before the suffix.
    device : str
    overwrite : bool
        Replace existing output files (else refused before any work).

    Returns
    -------
    list of Path : the files written.

    Raises
    ------
    ConfigError
        Bad checkpoint or maps, another nside, an output that is not ``.fits``.
    """
    from engine.data.cmb import CMBSkies, read_fits_qu, write_fits_qu
    from engine.evaluation.predict import load_task_network
    from engine.outputs import check_output, staged

    out = Path(out)
    if out.suffix.lower() not in (".fits", ".fit"):
        raise ConfigError(f"--out {str(out)!r} must end in .fits for a delenser")
    model, task, _ = load_task_network(checkpoint, device, TASK)
    path = str(maps).partition("?")[0]
    if path.lower().endswith((".fits", ".fit", ".fits.gz")):
        q, u, _ = read_fits_qu(path, nside=task.nside)
        pairs = [(q, u)]
    else:
        src = CMBSkies(maps)
        if src.nside != task.nside:
            raise ConfigError(
                f"maps {str(maps)!r} have nside {src.nside}; the delenser was trained at nside "
                f"{task.nside}"
            )
        pairs = [(s["Q"], s["U"]) for s in (src.sky(int(i), ("Q", "U")) for i in src.indices)]
    names = [out] if len(pairs) == 1 else [
        out.with_name(f"{out.stem}_{i:04d}{out.suffix}") for i in range(len(pairs))
    ]  # fmt: skip
    for name in names:
        check_output(name, overwrite=overwrite, disk_bytes=3 * 4 * 12 * task.nside**2)
    header = {"NSIDE": task.nside, "DELENSED": "engine delensing"}
    for (q, u), name in zip(pairs, names, strict=True):
        dq, du = task.predict(model, q, u)
        with staged(name, overwrite=overwrite) as tmp:
            write_fits_qu(tmp, dq, du, header)
    return names
