"""Figures of an emulator report (:func:`engine.evaluation.emulator.score_grid`): PNG files.

* power_ratio: P_gen/P_real per grid point and channel, the 1σ band of a perfect generator
  (mean over the points) and the ± :data:`~engine.evaluation.emulator.TARGET_POWER` lines;
* cross: r(k) of every channel pair, real (solid) and generated (dashed), per grid point, with
  the 1σ band of Δr for a perfect generator around the mean real r(k);
* pdf: pixel PDFs, real (solid) and generated (dashed), per grid point and channel;
* fid: FID of the generated set and the real–real floor per grid point, with the target line.

matplotlib with the Agg canvas, the style of :mod:`engine.evaluation.figures`. File names:
:data:`EMULATOR_FIGURES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.evaluation.figures import _floats, _save

#: Figures of an emulator report (name → file name in the output directory).
EMULATOR_FIGURES = {
    "power_ratio": "emulator_power_ratio.png",
    "cross": "emulator_cross.png",
    "pdf": "emulator_pdf.png",
    "fid": "emulator_fid.png",
}


_K = "k (inverse unit of the box side: h/Mpc or 1/arcmin)"


def _figure(n_panels: int):
    from matplotlib.figure import Figure  # lazily: a figure without pyplot uses the Agg canvas

    fig = Figure(figsize=(max(6.5, 4.5 * n_panels), 4.5))
    left = 0.08 if n_panels > 1 else 0.15
    fig.subplots_adjust(left=left, right=0.98, bottom=0.22, top=0.9, wspace=0.25)
    return fig


def _log_k_axis(ax) -> None:
    """Log k axis with labelled decades only (minor labels of a short range overlap)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())


def _arr(values) -> np.ndarray:
    """JSON lists (None for non-finite) → float array of any depth."""
    a = np.array(values, dtype=object)
    return np.where(a == None, np.nan, a).astype(float)  # noqa: E711


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


_SYMBOLS = {"omega_m": "Ω_m", "sigma8": "σ8"}


def _point_label(p: Mapping, i: int, names=None) -> str:
    th = p.get("theta")
    if not th:
        return f"point {i}"
    names = names or [f"p{j}" for j in range(len(th))]
    return ", ".join(f"{_SYMBOLS.get(n, n)}={v:.3g}" for n, v in zip(names, th, strict=False))


def _k_label(report: Mapping[str, Any]) -> str:
    """The k axis label: h/Mpc for maps in Mpc/h, 1/arcmin for maps in arcmin."""
    unit = str(report.get("length_unit") or "")
    if unit == "Mpc/h":
        return "k [h/Mpc]"
    if unit == "arcmin":
        return "k [1/arcmin]"
    return _K


def draw_emulator_figures(report: Mapping[str, Any], out_dir) -> dict[str, str]:
    """Write the PNG figures of an emulator report into ``out_dir`` (created if missing).

    Parameters
    ----------
    report : mapping
        The JSON-clean report of :func:`engine.evaluation.emulator.score_grid`.
    out_dir : str or Path
        Directory of the PNG files (each written atomically).

    Returns
    -------
    dict name → file name (relative to ``out_dir``) of the figures written; ``cross`` is left
    out for one-channel maps and ``fid`` when no FID was computed.
    """
    from engine.evaluation.emulator import TARGET_FID_FLOOR, TARGET_POWER

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    points = report["points"]
    colors = _colors(len(points))
    written = {}
    names = report.get("names")
    k_label = _k_label(report)
    n_ch0 = len(points[0]["power"]["ratio"])
    channels = list(report.get("channels") or [f"channel {c}" for c in range(n_ch0)])

    n_ch = len(points[0]["power"]["ratio"])
    fig = _figure(n_ch)
    for c in range(n_ch):
        ax = fig.add_subplot(1, n_ch, c + 1)
        bands = []
        for i, p in enumerate(points):
            pw = p["power"]
            ax.plot(
                _floats(pw["k"]),
                _arr(pw["ratio"])[c],
                color=colors[i],
                label=_point_label(p, i, names),
            )
            bands.append(_arr(pw["band"])[c])
        k = _floats(points[0]["power"]["k"])
        band = np.nanmean(bands, axis=0)
        ax.fill_between(k, 1 - band, 1 + band, color="0.8", label="1σ, perfect generator")
        for s in (-1, 1):
            ax.axhline(1 + s * TARGET_POWER, color="k", ls="--", lw=0.8)
        ax.axvline(points[0]["power"]["k_max"], color="k", ls=":", lw=0.8)
        ax.set(xlabel=k_label, ylabel=r"$P_{\rm gen}/P_{\rm real}$", title=channels[c])
        _log_k_axis(ax)
        ax.legend(fontsize=6)
    _save(fig, out_dir / EMULATOR_FIGURES["power_ratio"])
    written["power_ratio"] = EMULATOR_FIGURES["power_ratio"]

    pairs = points[0]["cross"]["pairs"]
    if pairs:
        fig = _figure(len(pairs))
        for j, pair in enumerate(pairs):
            ax = fig.add_subplot(1, len(pairs), j + 1)
            k = _floats(points[0]["cross"]["k"])
            r_mean = np.nanmean([_arr(p["cross"]["r_real"])[j] for p in points], axis=0)
            band = np.nanmean([_arr(p["cross"]["band"])[j] for p in points], axis=0)
            ax.fill_between(k, r_mean - band, r_mean + band, color="0.85", label="1σ of Δr")
            for i, p in enumerate(points):
                cr, k = p["cross"], _floats(p["cross"]["k"])
                ax.plot(k, _arr(cr["r_real"])[j], color=colors[i], label=_point_label(p, i, names))
                ax.plot(k, _arr(cr["r_gen"])[j], color=colors[i], ls="--")
            a, _, b = str(pair).partition("-")
            title = f"{channels[int(a)]} × {channels[int(b)]}" if b.isdigit() else str(pair)
            ax.set(xlabel=k_label, ylabel="r(k)", title=title)
            _log_k_axis(ax)
            ax.legend(fontsize=7, title="solid: real, dashed: generated", title_fontsize=7)
        _save(fig, out_dir / EMULATOR_FIGURES["cross"])
        written["cross"] = EMULATOR_FIGURES["cross"]

    fig = _figure(n_ch)
    for c in range(n_ch):
        ax = fig.add_subplot(1, n_ch, c + 1)
        for i, p in enumerate(points):
            pdf = p["pdf"]
            x = _arr(pdf["centers"])[c]
            ax.plot(x, _arr(pdf["pdf_real"])[c], color=colors[i], label=_point_label(p, i, names))
            ax.plot(x, _arr(pdf["pdf_gen"])[c], color=colors[i], ls="--")
        logs = points[0]["pdf"]["log"]
        log = logs[c] if isinstance(logs, list) else logs
        xlabel = f"ln(1 + {channels[c]})" if log else channels[c]
        ax.set(yscale="log", xlabel=xlabel, ylabel="PDF", title=channels[c])
        ax.legend(fontsize=7, title="solid: real, dashed: generated", title_fontsize=7)
    _save(fig, out_dir / EMULATOR_FIGURES["pdf"])
    written["pdf"] = EMULATOR_FIGURES["pdf"]

    if any(p.get("fid") for p in points):
        fig = _figure(1)
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(points))
        fid = _floats([(p.get("fid") or {}).get("gen", {}).get("fid") for p in points])
        floor = _floats([(p.get("fid") or {}).get("floor", {}).get("fid") for p in points])
        ax.plot(x, fid, "o-", label="FID (generated vs real)")
        ax.plot(x, floor, "s-", color="k", label="real–real floor")
        ax.plot(x, TARGET_FID_FLOOR * floor, "k--", lw=0.8, label=f"{TARGET_FID_FLOOR:g} × floor")
        ax.set(xlabel="grid point", ylabel="FID (feature units²)", yscale="log")
        ax.set_xticks(
            x,
            [_point_label(p, i, names) for i, p in enumerate(points)],
            fontsize=6,
            rotation=60,
            ha="right",
        )
        ax.legend(fontsize=8)
        _save(fig, out_dir / EMULATOR_FIGURES["fid"])
        written["fid"] = EMULATOR_FIGURES["fid"]
    return written
