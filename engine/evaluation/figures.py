"""Figures of an evaluation: PNG files under ``<out>/figures/`` (matplotlib, Agg canvas).

* scatter: predicted mean ± 1σ against the truth per parameter, every method, diagonal;
* bins: RMSE per bin of the true value per method, mean predicted σ dotted, σ_CRB in black;
* coverage: empirical against nominal coverage of the central intervals (calibration).

File names: :data:`engine.evaluation.schema.FIGURES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.evaluation.metrics import N_BINS
from engine.evaluation.schema import PARAMS

#: Colours of the methods in the figures.
COLORS = {"network": "#1f77b4", "pk_likelihood": "#ff7f0e", "pk_calibrated": "#2ca02c"}
_SYMBOLS = {"omega_m": r"$\Omega_m$", "sigma8": r"$\sigma_8$"}


def _figure():
    """A two-panel-wide figure with fixed margins (a layout engine costs seconds per figure)."""
    from matplotlib.figure import Figure  # lazily: a figure without pyplot uses the Agg canvas

    fig = Figure(figsize=(10, 4.5))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.92, wspace=0.25)
    return fig


def _floats(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], float)


def _save(fig, path: Path) -> None:
    from engine.runs import atomic_write

    with atomic_write(path, binary=True) as f:
        fig.savefig(f, format="png", dpi=100)


def draw_figures(report: Mapping[str, Any], truth, results: Mapping[str, dict], out_dir) -> None:
    """Write the PNG figures of ``report["figures"]`` under ``out_dir`` (matplotlib, Agg).

    * scatter: predicted mean ± 1σ against the truth per parameter, both methods, diagonal;
    * bins: RMSE per bin of the true value per method, mean predicted σ dashed, σ_CRB in black;
    * coverage: empirical against nominal coverage of the central intervals (calibration).

    Parameters
    ----------
    report : mapping
        The report (prior, methods, fisher, figures).
    truth : numpy.ndarray (B, 2)
    results : mapping of method → {"mean": (B, 2), "std": (B, 2)}
    out_dir : str or Path
        Directory of the report; ``figures/`` must exist. Each file is written atomically.
    """
    out_dir = Path(out_dir)
    files = report["figures"]
    _save(_scatter_figure(report, truth, results), out_dir / files["scatter"])
    _save(_bins_figure(report, results), out_dir / files["bins"])
    _save(_coverage_figure(report, results), out_dir / files["coverage"])


def _scatter_figure(report, truth, results):
    """Predicted mean ± 1σ against the truth, one panel per parameter."""
    methods = report["methods"]
    fig = _figure()
    for j, name in enumerate(PARAMS):
        ax = fig.add_subplot(1, len(PARAMS), j + 1)
        lo, hi = report["prior"][name]
        for m, r in results.items():
            ax.errorbar(
                truth[:, j],
                r["mean"][:, j],
                yerr=r["std"][:, j],
                fmt="o",
                ms=2.5,
                lw=0.6,
                alpha=0.6,
                color=COLORS.get(m, "#7f7f7f"),
                label=methods[m]["label"],
            )
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(xlabel=f"true {_SYMBOLS[name]}", ylabel=f"predicted {_SYMBOLS[name]}")
        ax.legend(fontsize=8)
    return fig


def _bins_figure(report, results):
    """RMSE and mean predicted σ per bin of the true value, and σ_CRB, per parameter."""
    methods = report["methods"]
    fig = _figure()
    fisher = report.get("fisher") or {}
    for j, name in enumerate(PARAMS):
        ax = fig.add_subplot(1, len(PARAMS), j + 1)
        lo, hi = report["prior"][name]
        e = np.linspace(lo, hi, N_BINS + 1)
        c = 0.5 * (e[1:] + e[:-1])
        for m in results:
            bins = methods[m]["bins"][name]
            color, label = COLORS.get(m, "#7f7f7f"), methods[m]["label"]
            ax.plot(c, _floats(bins["rmse"]), "o-", color=color, label=f"{label} RMSE")
            ax.plot(c, _floats(bins["std"]), ":", color=color, label=f"{label} mean σ")
        crb = (fisher.get("bins") or {}).get(name)
        if crb:
            ax.plot(c, _floats(crb), "k-", lw=1.5, label=r"$\sigma_{\rm CRB}$")
        ax.set(xlabel=f"true {_SYMBOLS[name]}", ylabel=f"error on {_SYMBOLS[name]}")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    return fig


def _coverage_figure(report, results):
    """Empirical against nominal coverage of the central intervals, per parameter."""
    methods = report["methods"]
    fig = _figure()
    for j, name in enumerate(PARAMS):
        ax = fig.add_subplot(1, len(PARAMS), j + 1)
        for m in results:
            cal = methods[m]["calibration"]
            ax.plot(
                cal["levels"],
                cal[name],
                "o-",
                ms=3,
                color=COLORS.get(m, "#7f7f7f"),
                label=methods[m]["label"],
            )
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(
            xlabel="nominal coverage of mean ± zσ",
            ylabel="empirical coverage",
            title=_SYMBOLS[name],
            xlim=(0, 1),
            ylim=(0, 1),
        )
        ax.legend(fontsize=8)
    return fig
