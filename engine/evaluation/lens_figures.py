"""Figures of the class-conditional generator report (:mod:`engine.evaluation.lens_eval`): PNG
files under ``<out>/figures/`` (matplotlib, Agg canvas, the style of :mod:`engine.evaluation.
figures`).

* lens_samples: per class (one row each) up to 4 real images (set R2) and 4 generated ones, each
  row with one asinh stretch, asinh(x / s) with s the real images' robust noise level and limits
  at the real images' 0.5 and 99.8 percentiles;
* lens_physics: per class (one column each) histograms of the ring radius (arcsec, top) and the
  total flux (image units, bottom), real (R2, filled) against generated (line), with their KS
  statistics;
* lens_fid: per class the FID of the generated images and the real–real floor at the same N.

File names: :data:`LENS_FIGURES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.evaluation.figures import _save
from engine.evaluation.lens_metrics import noise_level

#: Figures of the class report (name → file name in ``figures/``).
LENS_FIGURES = {
    "samples": "lens_samples.png",
    "physics": "lens_physics.png",
    "fid": "lens_fid.png",
}
#: Images of each kind per class row of lens_samples.
SHOWN = 4


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # lazily: a figure without pyplot uses the Agg canvas

    return Figure(figsize=(width, height))


def draw_lens_figures(
    report: Mapping[str, Any], arrays: Mapping[str, Mapping[str, np.ndarray]], out_dir
) -> dict[str, str]:
    """Write the figures of :data:`LENS_FIGURES` into ``out_dir`` (existing), each atomically.

    Parameters
    ----------
    report : mapping
        The JSON-clean report (``per_class``, ``units``).
    arrays : mapping class → {``gen``, ``real`` (n, N, N) images; ``radius_gen``,
        ``radius_real``, ``flux_gen``, ``flux_real`` (n,) values}
    out_dir : str or Path

    Returns
    -------
    dict name → path written.
    """
    out_dir = Path(out_dir)
    written = {}
    for name, draw in (("samples", samples_figure), ("physics", physics_figure)):
        path = out_dir / LENS_FIGURES[name]
        _save(draw(report, arrays), path)
        written[name] = str(path)
    path = out_dir / LENS_FIGURES["fid"]
    _save(fid_figure(report), path)
    written["fid"] = str(path)
    return written


def samples_figure(report: Mapping[str, Any], arrays):
    """Real and generated images per class (module docstring); a matplotlib Figure."""
    names = list(arrays)
    fig = _figure(2 * SHOWN * 1.2 + 0.6, 1.3 * max(1, len(names)) + 0.5)
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.02, top=0.9, wspace=0.04, hspace=0.08)
    for row, name in enumerate(names):
        real, gen = np.asarray(arrays[name]["real"]), np.asarray(arrays[name]["gen"])
        s = float(np.median(noise_level(real))) if len(real) else 1.0
        s = s if s > 0 else float(np.std(real)) or 1.0
        lo, hi = np.percentile(np.arcsinh(real / s), [0.5, 99.8]) if len(real) else (0, 1)
        for j in range(2 * SHOWN):
            ax = fig.add_subplot(len(names), 2 * SHOWN, row * 2 * SHOWN + j + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            src, i = (real, j) if j < SHOWN else (gen, j - SHOWN)
            if i < len(src):
                ax.imshow(np.arcsinh(src[i] / s), cmap="magma", vmin=lo, vmax=hi, origin="lower")
            if row == 0:
                ax.set_title("real" if j < SHOWN else "generated", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle("real (left) and generated (right) images per class, asinh stretch", fontsize=10)
    return fig


def _hist(ax, real, gen, label: str, ks) -> None:
    real, gen = np.asarray(real, float), np.asarray(gen, float)
    both = np.concatenate([real[np.isfinite(real)], gen[np.isfinite(gen)]])
    if both.size == 0:
        ax.text(0.5, 0.5, "no values", ha="center", transform=ax.transAxes)
        return
    lo, hi = np.percentile(both, [0.5, 99.5])
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 25)
    ax.hist(real[np.isfinite(real)], bins=bins, density=True, alpha=0.4, label="real")
    ax.hist(
        gen[np.isfinite(gen)], bins=bins, density=True, histtype="step", lw=1.5, label="generated"
    )
    ax.set_xlabel(label, fontsize=8)
    if ks is not None:
        ax.set_title(f"KS {ks:.2f}", fontsize=8)


def physics_figure(report: Mapping[str, Any], arrays):
    """Ring-radius and total-flux histograms per class (module docstring)."""
    names = list(arrays)
    per = report.get("per_class") or {}
    units = report.get("flux_unit") or "image units x pixel"
    fig = _figure(3.2 * max(1, len(names)) + 0.4, 6.0)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.88, wspace=0.3, hspace=0.55)
    for col, name in enumerate(names):
        a = arrays[name]
        ax = fig.add_subplot(2, len(names), col + 1)
        _hist(
            ax,
            a["radius_real"],
            a["radius_gen"],
            "ring radius (arcsec)",
            per.get(name, {}).get("ring_radius", {}).get("ks"),
        )
        ax.set_ylabel(name, fontsize=9)
        if col == 0:
            ax.legend(fontsize=7)
        ax = fig.add_subplot(2, len(names), len(names) + col + 1)
        _hist(
            ax,
            a["flux_real"],
            a["flux_gen"],
            f"total flux ({units})",
            per.get(name, {}).get("total_flux", {}).get("ks"),
        )
    fig.suptitle("ring radius and total flux: real against generated, per class", fontsize=10)
    return fig


def fid_figure(report: Mapping[str, Any]):
    """FID of the generated images and the real–real floor per class (bars)."""
    per = report.get("per_class") or {}
    names = list(per)
    fig = _figure(max(4.5, 1.4 * len(names) + 2), 4.0)
    fig.subplots_adjust(left=0.16, right=0.97, bottom=0.14, top=0.88)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    fid = [per[n]["domain"]["fid"] or 0.0 for n in names]
    floor = [per[n]["domain"]["fid_floor"] or 0.0 for n in names]
    ax.bar(x - 0.2, fid, 0.4, label="generated vs real")
    ax.bar(x + 0.2, floor, 0.4, label="real vs real (floor)")
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    feature = per[names[0]]["domain"]["feature"] if names else ""
    ax.set_ylabel(f"FID ({feature})")
    ax.legend(fontsize=8)
    n = [per[k]["n"] for k in names]
    ax.set_title(f"FID per class at N = {min(n) if n else 0}", fontsize=10)
    return fig
