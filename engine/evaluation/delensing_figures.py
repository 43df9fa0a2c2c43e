"""Figures of a delensing report (:func:`engine.evaluation.delensing.delensing_report`): PNG files.

* bb_spectra: sky-mean binned BB band powers D_ℓ = ℓ(ℓ+1)C_ℓ/2π (µK², beamed maps) at the
  report's largest r — observed lensed (cross of the two observations, no noise bias), each
  method's delensed cross spectrum (the ``template`` baseline among them), the true unlensed
  sky, CAMB's lensing BB × b_ℓ², the QE-forecast residual × b_ℓ² and the primordial r·T_b;
  non-positive band powers (noise scatter around 0) are not drawn on the log axis;
* a_res: A_res per ℓ bin with its error (std of per-sky ratios/√n) per method, the QE forecast
  per bin (EB, MV; perfect E) and the lines A_res = 1 (no delensing) and 0.

matplotlib with the Agg canvas, the style of :mod:`engine.evaluation.figures`. File names:
:data:`DELENSING_FIGURES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.evaluation.figures import _save

#: Figures of a delensing report (name → file name in the output directory).
DELENSING_FIGURES = {
    "bb_spectra": "delensing_bb_spectra.png",
    "a_res": "delensing_a_res.png",
}

_ELL = r"multipole $\ell$"


def _figure():
    from matplotlib.figure import Figure  # lazily: a figure without pyplot uses the Agg canvas

    fig = Figure(figsize=(7.5, 5.0))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.92)
    return fig


def _arr(values) -> np.ndarray:
    """JSON list (None for non-finite) → float array."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _colors(names):
    fixed = {"none": "0.45", "template": "#2ca02c"}
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    others = [n for n in names if n not in fixed]
    out = dict(fixed)
    out.update({n: cmap(i % 10) for i, n in enumerate(others)})
    return out


def _dl(ell: np.ndarray, cl: np.ndarray) -> np.ndarray:
    d = ell * (ell + 1) * cl / (2 * np.pi)
    return np.where(d > 0, d, np.nan)


def draw_delensing_figures(report: Mapping[str, Any], out_dir) -> dict[str, str]:
    """Write the PNG figures of a delensing report into ``out_dir`` (created if missing).

    Parameters
    ----------
    report : mapping
        The JSON-ready report of :func:`engine.evaluation.delensing.delensing_report`.
    out_dir : str or Path
        Directory of the PNG files (each written atomically).

    Returns
    -------
    dict name → file name (relative to ``out_dir``) of the figures written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ell = _arr(report["ell"])
    methods = list(report["methods"])
    colors = _colors(methods)
    written = {}

    spec = report["spectra"]
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(ell, _dl(ell, _arr(spec["lensed"])), color="k", lw=2, label="observed lensed")
    for m in methods:
        if m == "none":
            continue
        ax.plot(ell, _dl(ell, _arr(spec["delensed"][m])), color=colors[m], lw=1.5, label=m)
    ax.plot(ell, _dl(ell, _arr(spec["unlensed"])), color="C3", lw=1.5, label="true unlensed")
    ax.plot(ell, _dl(ell, _arr(spec["theory_lensing"])), "k--", lw=1, label="lensing BB (CAMB)")
    for est in ("mv", "eb"):
        key = f"qe_residual_{est}"
        if key in spec:
            ls = ":" if est == "mv" else "-."
            ax.plot(
                ell,
                _dl(ell, _arr(spec[key])),
                color="C4",
                ls=ls,
                lw=1,
                label=f"QE residual ({est.upper()}, perfect E)",
            )
    for r, t in spec.get("primordial", {}).items():
        ax.plot(ell, _dl(ell, _arr(t)), color="C1", ls="--", lw=0.8, label=f"primordial r={r}")
    ax.set_yscale("log")
    ax.set(
        xlabel=_ELL,
        ylabel=r"$\ell(\ell+1)C_\ell^{BB}/2\pi$ [µK², beamed]",
        title=f"BB band powers at r = {spec.get('r')}, nside {report.get('nside')}",
    )
    ax.legend(fontsize=7, ncol=2)
    _save(fig, out_dir / DELENSING_FIGURES["bb_spectra"])
    written["bb_spectra"] = DELENSING_FIGURES["bb_spectra"]

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = report.get("ell_range", (20, 200))
    for m in methods:
        a = report["a_res"][m]
        ax.errorbar(
            ell,
            _arr(a["per_bin"]),
            yerr=_arr(a["per_bin_err"]),
            color=colors[m],
            marker="o",
            ms=3,
            capsize=2,
            label=f"{m}: mean({lo}–{hi}) = {a['mean']:.3f}" if a["mean"] is not None else m,
        )
        o = (report.get("a_res_own") or {}).get(m)
        if o and m != "none":
            ax.plot(
                ell,
                _arr(o["per_bin"]),
                color=colors[m],
                ls="--",
                lw=0.8,
                label=f"{m}, own noise counted: {o['mean']:.3f}" if o["mean"] is not None else None,
            )
    for est, ls in (("eb", "-."), ("mv", ":"), ("pol", "--")):
        f = report.get("qe_forecast", {}).get(est)
        if f:
            ax.plot(
                ell,
                _arr(f["per_bin"]),
                color="C4",
                ls=ls,
                label=f"QE forecast {est.upper()} (perfect E): {f['mean']:.3f}",
            )
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(0.0, color="k", lw=0.5, ls="--")
    ax.set(
        xlabel=_ELL,
        ylabel=r"$A_{\rm res}$ = residual / lensing BB",
        title="Residual lensing fraction (markers: cross spectra; dashed: own noise counted)",
    )
    ax.legend(fontsize=7)
    _save(fig, out_dir / DELENSING_FIGURES["a_res"])
    written["a_res"] = DELENSING_FIGURES["a_res"]
    return written
