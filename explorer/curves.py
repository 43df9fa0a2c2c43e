"""Training curves: the metric names a run writes, grouped into plots and streamed.

Curves come from ``metrics.jsonl`` (lines ``{"step", "epoch", "split", "name", "value", "time"}``),
not from a fixed list: every (split, name) pair is a series, and series are grouped into plots by
:func:`plot_key`: one plot per name's first ``_``-separated token (``loss`` of every split with
``loss_g`` and ``loss_d``; ``rmse_omega_m`` with ``rmse_sigma8``; ``fid`` alone), learning rates
(``lr``, ``lr_*``) and throughputs (``*_per_s``) in plots of their own. A run of a new task (a
GAN writing train ``loss_g``/``loss_d`` and val ``fid``) streams its curves with no change here.

Each plot is fed by one ``hv.streams.Buffer`` of ``(step, value, series)`` rows and drawn as an
``hv.DynamicMap`` (:func:`curve_dmap`); :class:`explorer.training.TrainingController` tails the
file by byte offset and sends the new rows. Units: ``step`` counts optimiser updates; a curve is
in its metric's units.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import holoviews as hv
import numpy as np
import pandas as pd

from explorer.report import PARAM_LABELS

hv.extension("bokeh", logo=False)  # registers hv.opts for the Bokeh backend (idempotent)

#: Number of points each curve keeps (older ones scroll out).
BUFFER_LENGTH = 200_000
#: x axis of every plot.
DIM_STEP = hv.Dimension("step", label="optimiser step")

#: Plot keys shown first and last (loop diagnostics); a task's own plots come in between, in
#: the order their metrics first appear in metrics.jsonl.
FIRST_PLOTS = ("loss",)
LAST_PLOTS = ("grad", "lr", "throughput")
#: Titles and y-axis labels of plot keys that the loop or the shipped tasks write; any other key
#: is titled with its metric name (one name) or ``<key>_*`` (several).
PLOT_TEXT = {
    "loss": ("Loss", "loss"),
    "rmse": ("RMSE of the parameters", "RMSE (parameter units)"),
    "std": ("Predicted σ of the parameters", "σ (parameter units)"),
    "lr": ("Learning rate", "learning rate"),
    "throughput": ("Throughput", "per second"),
}
#: Colours of a plot's series, in the order the series first appear.
PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
)  # fmt: skip
#: Split of the per-step series; the others (one value per epoch: val, test) show points.
TRAIN_SPLIT = "train"
#: Legend names of splits (others are shown as written).
SPLIT_LABELS = {"val": "validation"}
#: Legend names of learning rates (others: the metric name).
LR_LABELS = {"lr": "learning rate"}


def plot_key(name: str) -> str:
    """Plot that metric ``name`` is drawn in.

    ``"lr"`` for learning rates (``lr``, ``lr_*``), ``"throughput"`` for rates (``*_per_s``),
    else the name's first ``_``-separated token: ``loss``, ``loss_g`` and ``loss_d`` share the
    plot ``loss``, ``rmse_omega_m`` and ``rmse_sigma8`` the plot ``rmse``, ``fid`` has its own.
    """
    if name == "lr" or name.startswith("lr_"):
        return "lr"
    if name.endswith("_per_s"):
        return "throughput"
    return name.split("_", 1)[0] or name


def series_label(split: str, name: str) -> str:
    """Legend label of the series (``split``, ``name``) in its plot (:func:`plot_key`).

    The split alone for the plot's own name (``train``, ``validation`` of ``loss``, ``fid``);
    the name for learning rates (``learning rate``, ``lr_g``); else a short name and the split:
    ``Ωₘ (validation)`` for ``rmse_omega_m``, ``maps/s (train)`` for ``maps_per_s``,
    ``loss_g (train)``. Splits are named by :data:`SPLIT_LABELS`.
    """
    key = plot_key(name)
    split = SPLIT_LABELS.get(split, split)
    if key == "lr":
        return LR_LABELS.get(name, name)
    if name == key:
        return split
    if key == "throughput":
        short = name[: -len("_per_s")] + "/s"
    else:
        rest = name[len(key) + 1 :] if name.startswith(key + "_") else name
        short = PARAM_LABELS.get(rest, name)
    return f"{short} ({split})"


@dataclass(frozen=True)
class CurvePlot:
    """One plot of the page, fed by one ``hv.streams.Buffer`` of (step, value, series) rows.

    Attributes
    ----------
    key : str
        :func:`plot_key` of its metrics (the key of :attr:`TrainingController.buffers`).
    series : tuple of str
        Legend labels (:func:`series_label`) in the order they first appeared.
    points : tuple of str
        Those of ``series`` drawn with points too (splits other than :data:`TRAIN_SPLIT`).
    title, ylabel : str
    yformatter : str or None
        Bokeh tick format of the y axis (``"%.1e"`` for learning rates).
    """

    key: str
    series: tuple[str, ...]
    points: tuple[str, ...]
    title: str
    ylabel: str
    yformatter: str | None = None


def curve_plots(pairs) -> list[CurvePlot]:
    """The plots of a run that wrote the (split, name) pairs ``pairs`` (in order of appearance).

    Pairs are grouped by :func:`plot_key` of the name; plots are ordered :data:`FIRST_PLOTS`,
    then the others by first appearance, then :data:`LAST_PLOTS`.
    """
    grouped: dict[str, dict[str, str]] = {}  # key → {label: split}
    names: dict[str, list[str]] = {}
    for split, name in pairs:
        key = plot_key(name)
        grouped.setdefault(key, {}).setdefault(series_label(split, name), split)
        if name not in names.setdefault(key, []):
            names[key].append(name)
    order = list(grouped)

    def rank(key: str) -> tuple[int, int]:
        if key in FIRST_PLOTS:
            return (0, FIRST_PLOTS.index(key))
        if key in LAST_PLOTS:
            return (2, LAST_PLOTS.index(key))
        return (1, order.index(key))

    out = []
    for key in sorted(grouped, key=rank):
        labels = grouped[key]
        default = names[key][0] if len(names[key]) == 1 else f"{key}_*"
        title, ylabel = PLOT_TEXT.get(key, (default, default))
        out.append(
            CurvePlot(
                key=key,
                series=tuple(labels),
                points=tuple(lab for lab, split in labels.items() if split != TRAIN_SPLIT),
                title=title,
                ylabel=ylabel,
                yformatter="%.1e" if key == "lr" else None,
            )
        )
    return out


def empty_frame() -> pd.DataFrame:
    """An empty frame of a plot's buffer: columns ``step``, ``value``, ``series``."""
    return pd.DataFrame(
        {
            "step": np.array([], dtype=np.int64),
            "value": np.array([], dtype=float),
            "series": np.array([], dtype=object),
        }
    )


def _metric_value(value) -> float | None:
    """A metric value as a float (``null``: NaN); None for values that are not numbers."""
    if value is None:
        return np.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def metric_pairs(rows: list[dict]) -> list[tuple[str, str]]:
    """The distinct (split, name) pairs of metric rows with a step and a number, in order."""
    out: dict[tuple[str, str], None] = {}
    for row in rows:
        name = row.get("name")
        if isinstance(name, str) and name and row.get("step") is not None:
            if _metric_value(row.get("value")) is not None:
                out.setdefault((str(row.get("split") or ""), name), None)
    return list(out)


def metrics_frames(rows: list[dict]) -> dict[str, pd.DataFrame]:
    """Group metric rows (dicts of metrics.jsonl) into one frame per plot (:func:`plot_key`).

    Each frame has columns ``step``, ``value`` and ``series`` (:func:`series_label`). Rows
    without a name or step, or whose value is not a number, are ignored; ``null`` values
    (non-finite) become NaN.
    """
    grouped: dict[str, list[tuple]] = {}
    for row in rows:
        name, step = row.get("name"), row.get("step")
        value = _metric_value(row.get("value"))
        if not isinstance(name, str) or not name or step is None or value is None:
            continue
        split = str(row.get("split") or "")
        grouped.setdefault(plot_key(name), []).append((int(step), value, series_label(split, name)))
    return {
        key: pd.DataFrame(
            {
                "step": np.array([r[0] for r in rs], dtype=np.int64),
                "value": np.array([r[1] for r in rs], dtype=float),
                "series": np.array([r[2] for r in rs], dtype=object),
            }
        )
        for key, rs in grouped.items()
    }


def curve_overlay(plot: CurvePlot, data: pd.DataFrame) -> hv.Overlay:
    """All series of ``plot`` from a buffer's rows (always the same layers, maybe empty)."""
    layers = []
    for i, series in enumerate(plot.series):
        color = PALETTE[i % len(PALETTE)]
        rows = data[data["series"] == series][["step", "value"]]
        curve = hv.Curve(rows, DIM_STEP, ("value", plot.ylabel), label=series)
        layers.append(curve.opts(color=color))
        if series in plot.points:  # one point per epoch: show the points
            layers.append(hv.Scatter(curve).opts(color=color))
    return hv.Overlay(layers)


def curve_dmap(plot: CurvePlot, buffer: hv.streams.Buffer) -> hv.DynamicMap:
    """Plot ``plot`` against step, redrawn from ``buffer`` (framewise: axes follow the data)."""
    return hv.DynamicMap(partial(curve_overlay, plot), streams=[buffer]).opts(
        hv.opts.Curve(line_width=2, tools=["hover"], framewise=True),
        hv.opts.Scatter(size=6, tools=["hover"], framewise=True),
        hv.opts.Overlay(
            title=plot.title,
            yformatter=plot.yformatter,
            frame_width=400,
            frame_height=230,
            legend_position="top_right",
            framewise=True,
            show_grid=True,
        ),
    )
