"""Views of map emulators: the Generate page's maps, spectra, PDFs and scores, and the emulator
report of a training run.

Pure functions of a :class:`GenerateResult` (what one press of *Sample* computed, made by
:func:`explorer.generate.compute`) and a channel index: the generated and simulator maps
(Bokeh ``image_rgba`` figures coloured here with :func:`explorer.fieldlab_frames.colour_map`, as
in the field lab, with linked zoom), the ratio of the mean power spectra with the band a perfect
generator would scatter in, the cross-correlation coefficient r(k) of the two channels, the pixel
PDFs with their band, and a Markdown table of the scores (FID and KID against the real–real
floor, mean |P_gen/P_sim − 1|, KS and Wasserstein distances of the PDFs, time per map). The
metrics are those of :mod:`engine.evaluation.emulator`.

An emulator report (``report.json`` of a GAN or diffusion run, the layout of
:func:`engine.evaluation.emulator.score_grid`: ``targets``, ``means``, ``points``) is shown by
:func:`emulator_report_view`: the table of its targets (name, value, threshold, pass), its grid
means and the run's ``figures/*.png``.

Units: lengths in the kind's unit (Mpc/h for slabs, arcmin for κ maps), k in its inverse (h/Mpc;
ℓ for κ), P(k) ratios, r(k), KS and the Wasserstein distance (in units of the simulator pixels'
standard deviation) dimensionless; PDFs in 1/unit of the pixel variable (ln(1 + δ) for density
channels, else the map's value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LinearColorMapper, Range1d
from bokeh.plotting import figure

from engine.tasks.diffusion_sampling import SAMPLER_LABELS
from explorer.fieldlab_frames import MAP_PALETTE, colour_map
from explorer.fieldlab_views import TOOLS
from explorer.report import param_label

hv.extension("bokeh", logo=False)  # registers hv.opts for the Bokeh backend (idempotent)

#: Colours of the generated and simulator curves.
GEN_COLOR, SIM_COLOR = "#d62728", "#1f77b4"
#: Side of the map figures' frames, px.
MAP_FRAME = 300
#: Floor of 1 + δ before the logarithm of density channels (as engine.evaluation.emulator).
LOG_FLOOR = 1e-3
#: Channel names shown as ln(1 + value) (density contrasts δ > −1).
LOG_CHANNELS = ("delta",)
#: Display names of channels.
CHANNEL_LABELS = {"delta": "δ", "theta": "θ"}


def channel_label(name: str) -> str:
    """Display name of a channel (``"delta"`` → ``"δ"``)."""
    return CHANNEL_LABELS.get(name, name)


def is_log_channel(name: str) -> bool:
    """True for channels drawn and histogrammed as ln(1 + x): density contrasts."""
    return name in LOG_CHANNELS


def display_values(maps: np.ndarray, name: str) -> np.ndarray:
    """The variable of channel ``name`` shown on the page: ln(max(1 + x, :data:`LOG_FLOOR`))
    for density channels, else the map itself."""
    if is_log_channel(name):
        return np.log(np.maximum(1.0 + np.asarray(maps, dtype=np.float64), LOG_FLOOR))
    return np.asarray(maps, dtype=np.float64)


def display_label(name: str) -> str:
    """Label of :func:`display_values` of channel ``name``."""
    return f"ln(1 + {channel_label(name)})" if is_log_channel(name) else channel_label(name)


@dataclass
class GenerateResult:
    """What one press of *Sample* computed (:func:`explorer.generate.compute`).

    Attributes
    ----------
    generator : str
        Label of the generator.
    task : str
        ``"gan"`` or ``"diffusion"``.
    theta : dict
        ``{parameter: value}`` of the maps (physical units).
    seed, steps : int, int or None
        Seed of the draw; diffusion sampling steps (None for a GAN).
    sampler : str or None
        Diffusion sampler, ``"ddim"`` or ``"dpm"`` (None for a GAN).
    channels : list of str
        Channel names.
    gen : ndarray (B, C, N, N) float32
        Generated maps, map units.
    sim : ndarray (S, C, N, N) float32 or None
        Simulator maps at the same parameters (None: see ``sim_note``).
    sim_note : str
        How many maps were simulated (and whether from the cache), or why there are none.
    kind : str
        Kind of the training maps (``map_config["kind"]``; "" when unknown).
    extent : float
        Side of a map in ``length_unit`` (1 and "pixels" when unknown).
    length_unit : str
    k_label : str
        Name and unit of the spectra's k axis, e.g. ``"k (h/Mpc)"`` or ``"ℓ"``.
    gen_seconds, sim_seconds : float, float or None
        Measured time per map of the generator and of the simulator, s.
    power, cross, fid : dict or None
        :func:`engine.evaluation.emulator.power_ratio`, ``cross_correlation`` (None for one
        channel) and ``{"gen": fid_kid, "floor": real_real_floor, "n": maps per set}`` (None
        when there are too few simulator maps).
    pdf : list of dict
        Per channel: ``centers``, ``gen``, ``sim``, ``band`` (1σ of the generated PDF for a
        perfect generator), ``ks``, ``wasserstein``, ``label``.
    gen_power : dict or None
        Without simulator maps: ``k`` and the generated maps' mean and std ``p_mean``, ``p_std``
        (C, K), in (unit of the map)².
    notes : list of str
        Why some statistics are missing.
    """

    generator: str
    task: str
    theta: dict
    seed: int
    steps: int | None
    channels: list[str]
    gen: np.ndarray
    sim: np.ndarray | None = None
    sim_note: str = ""
    kind: str = ""
    extent: float = 1.0
    length_unit: str = "pixels"
    k_label: str = "k"
    gen_seconds: float = math.nan
    sampler: str | None = None
    sim_seconds: float | None = None
    power: dict | None = None
    cross: dict | None = None
    fid: dict | None = None
    pdf: list = field(default_factory=list)
    gen_power: dict | None = None
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------------------------


def map_clim(result: GenerateResult, c: int) -> tuple[float, float]:
    """Colour range of channel ``c``: symmetric about the simulator maps' median (else the
    generated maps') at 99.5 % of the deviations of both first maps, in display units."""
    shown = [
        display_values(m[0, c], result.channels[c])
        for m in (result.gen, result.sim)
        if m is not None
    ]
    centre = float(np.median(shown[-1]))
    a = max(float(np.percentile(np.abs(v - centre), 99.5)) for v in shown) or 1.0
    return centre - a, centre + a


def map_figure(
    image: np.ndarray,
    title: str,
    result: GenerateResult,
    c: int,
    clim: tuple[float, float],
    ranges: tuple[Range1d, Range1d] | None = None,
):
    """One map (``(N, N)``, display units) as a Bokeh figure coloured here (``image_rgba``).

    ``ranges``: shared (x, y) ranges, so that the two maps zoom together.
    """
    extent, unit = result.extent, result.length_unit
    x_range, y_range = ranges or (Range1d(0.0, extent), Range1d(0.0, extent))
    fig = figure(
        title=title, frame_width=MAP_FRAME, frame_height=MAP_FRAME, tools=TOOLS,
        active_scroll="wheel_zoom", x_range=x_range, y_range=y_range,
        x_axis_label=f"x ({unit})", y_axis_label=f"y ({unit})",
    )  # fmt: skip
    values = np.ascontiguousarray(image, dtype=np.float32)
    source = ColumnDataSource(
        {
            "image": [colour_map(values, *clim)],
            "value": [values],
            "x": [0.0],
            "y": [0.0],
            "dw": [extent],
            "dh": [extent],
        }
    )
    img = fig.image_rgba(image="image", x="x", y="y", dw="dw", dh="dh", source=source)
    name = display_label(result.channels[c])
    fig.add_tools(
        HoverTool(renderers=[img], tooltips=[("x, y", "$x{0.0}, $y{0.0}"), (name, "@value")])
    )
    mapper = LinearColorMapper(palette=MAP_PALETTE, low=clim[0], high=clim[1])
    fig.add_layout(ColorBar(color_mapper=mapper, title=name), "right")
    return fig


def map_panes(result: GenerateResult, c: int) -> list:
    """The first generated map and, when there is one, the first simulator map of channel ``c``
    (same colour range, linked zoom), as Bokeh panes."""
    clim = map_clim(result, c)
    ranges = (Range1d(0.0, result.extent), Range1d(0.0, result.extent))
    name = channel_label(result.channels[c])
    gen = display_values(result.gen[0, c], result.channels[c])
    title = f"Generated {name} ({result.task})"
    panes = [pn.pane.Bokeh(map_figure(gen, title, result, c, clim, ranges))]
    if result.sim is not None:
        sim = display_values(result.sim[0, c], result.channels[c])
        title = f"Simulator {name} ({result.kind})"
        panes.append(pn.pane.Bokeh(map_figure(sim, title, result, c, clim, ranges)))
    return panes


def where_markdown(result: GenerateResult) -> str:
    """One line: the generator, the parameters, seed and steps of the maps shown."""
    values = ", ".join(f"{param_label(k)} = {v:.4g}" for k, v in result.theta.items())
    steps = f" · {result.steps} sampling steps" if result.steps else ""
    if result.sampler:
        steps += f" ({SAMPLER_LABELS.get(result.sampler, result.sampler)})"
    return f"**{result.generator}** at {values} · seed {result.seed}{steps} · first map of each set"


# ---------------------------------------------------------------------------------------------
# Statistics plots (HoloViews)
# ---------------------------------------------------------------------------------------------


def _k_dim(result: GenerateResult) -> hv.Dimension:
    return hv.Dimension("k", label=result.k_label)


def _plot_opts(title: str, **extra) -> dict:
    opts = dict(
        title=title, frame_width=380, frame_height=230, show_grid=True, legend_position="top_left"
    )  # fmt: skip
    return {**opts, **extra}


def ratio_plot(result: GenerateResult, c: int) -> hv.Overlay:
    """P_gen(k)/P_sim(k) of the mean spectra of channel ``c``, the ±1σ band of a perfect
    generator (cosmic variance of both sets) and the line 1."""
    p = result.power
    k, ratio, band = p["k"], p["ratio"][c], p["band"][c]
    kd, rd = _k_dim(result), hv.Dimension("ratio", label="P_gen / P_sim")
    area = hv.Area((k, 1 - band, 1 + band), kd, [rd, "upper"], label="±1σ, perfect generator")
    curve = hv.Curve((k, ratio), kd, rd, label="generated / simulator")
    layers = [
        area.opts(color="#9ecae1", alpha=0.6, line_alpha=0),
        hv.HLine(1.0).opts(color="black", line_dash="dashed", line_width=1),
        curve.opts(color=GEN_COLOR, line_width=2, tools=["hover"]),
        hv.Scatter(curve).opts(color=GEN_COLOR, size=4),
    ]
    title = f"P(k) ratio, generated / simulator: {channel_label(result.channels[c])}"
    return hv.Overlay(layers).opts(**_plot_opts(title, logx=True))


def cross_plot(result: GenerateResult) -> hv.Overlay:
    """r(k) of each channel pair, generated (dashed) and simulator (solid)."""
    cr = result.cross
    kd, rd = _k_dim(result), hv.Dimension("r", label="r(k)")
    layers = []
    for i, pair in enumerate(cr["pairs"]):
        a, b = (int(j) for j in pair.split("-"))
        names = f"{channel_label(result.channels[a])}×{channel_label(result.channels[b])}"
        sim = hv.Curve((cr["k"], cr["r_real"][i]), kd, rd, label=f"simulator {names}")
        gen = hv.Curve((cr["k"], cr["r_gen"][i]), kd, rd, label=f"generated {names}")
        layers += [
            sim.opts(color=SIM_COLOR, line_width=2, tools=["hover"]),
            gen.opts(color=GEN_COLOR, line_width=2, line_dash="dashed", tools=["hover"]),
        ]
    return hv.Overlay(layers).opts(
        **_plot_opts(
            "Cross-correlation r(k) of the channels", logx=True, legend_position="bottom_left"
        )
    )


def pdf_plot(result: GenerateResult, c: int) -> hv.Overlay:
    """Pixel PDF of channel ``c``: simulator and generated, the ±1σ band of a perfect
    generator around the simulator's."""
    d = result.pdf[c]
    x = hv.Dimension("x", label=d["label"])
    y = hv.Dimension("p", label=f"p({d['label']})")
    layers = []
    if d.get("sim") is not None:
        lo, hi = d["sim"] - d["band"], d["sim"] + d["band"]
        layers += [
            hv.Area((d["centers"], np.maximum(lo, 0.0), hi), x, [y, "upper"], label="±1σ").opts(
                color="#9ecae1", alpha=0.6, line_alpha=0
            ),
            hv.Curve((d["centers"], d["sim"]), x, y, label="simulator").opts(
                color=SIM_COLOR, line_width=2, tools=["hover"]
            ),
        ]
    layers.append(
        hv.Curve((d["centers"], d["gen"]), x, y, label="generated").opts(
            color=GEN_COLOR, line_width=2, line_dash="dashed", tools=["hover"]
        )
    )
    title = f"Pixel PDF of {d['label']}"
    return hv.Overlay(layers).opts(**_plot_opts(title, legend_position="top_right"))


def gen_power_plot(result: GenerateResult, c: int) -> hv.Overlay:
    """Without simulator maps: the generated maps' mean P(k) of channel ``c`` and its map-to-map
    scatter (log-log)."""
    g = result.gen_power
    k, mean, std = g["k"], g["p_mean"][c], g["p_std"][c]
    kd, pd_ = _k_dim(result), hv.Dimension("P", label="P(k)")
    lower = np.maximum(mean - std, 1e-3 * mean)
    layers = [
        hv.Area((k, lower, mean + std), kd, [pd_, "upper"], label="map-to-map ±1σ").opts(
            color="#fcbba1", alpha=0.6, line_alpha=0
        ),
        hv.Curve((k, mean), kd, pd_, label="generated mean").opts(color=GEN_COLOR, line_width=2),
    ]
    title = f"P(k) of the generated maps: {channel_label(result.channels[c])}"
    return hv.Overlay(layers).opts(**_plot_opts(title, logx=True, logy=True))


#: Maps per set below which the KID (an unbiased MMD estimate over subsets) is not shown.
KID_MIN_MAPS = 10


def _fmt(value, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    return f"{v:.{digits}g}" if math.isfinite(v) else "—"


def _ms(seconds) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    return f"{1e3 * seconds:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def scores_markdown(result: GenerateResult, c: int) -> str:
    """Markdown table of the scores of channel ``c`` and the whole set: FID and KID against the
    real–real floor, P(k) error, PDF distances, time per map; then the notes."""
    n_sim = 0 if result.sim is None else len(result.sim)
    rows = [
        ("maps", str(len(result.gen)), str(n_sim) if n_sim else "—"),
        ("time per map", _ms(result.gen_seconds), _ms(result.sim_seconds)),
    ]
    if result.fid is not None:
        g, f = result.fid["gen"], result.fid["floor"]
        n = result.fid["n"]
        rows.append(
            (
                f"FID, summary features ({n} vs {n} maps)",
                _fmt(g["fid"]),
                f"{_fmt(f['fid'])} (real–real floor)",
            )
        )
        if n >= KID_MIN_MAPS:
            kid = (
                f"{_fmt(g['kid_mean'])} ± {_fmt(g['kid_std'], 2)}",
                f"{_fmt(f['kid_mean'])} ± {_fmt(f['kid_std'], 2)} (floor)",
            )
        else:  # the unbiased MMD of a few maps is noise: not shown
            kid = (f"— (needs ≥ {KID_MIN_MAPS} maps per set)", "—")
        rows.append(("KID", *kid))
    name = channel_label(result.channels[c])
    if result.power is not None:
        err = result.power["frac_error"][c]
        floor = result.power["frac_error_floor"][c]
        rows.append(
            (
                f"mean abs(P_gen/P_sim − 1), k ≤ k_N/2, {name}",
                _fmt(err),
                f"{_fmt(floor)} perfect generator (target ≤ 0.05)",
            )
        )
    if result.cross is not None and len(result.cross["pairs"]):
        rows.append(
            (
                "max abs Δr(k), k ≤ k_N/2",
                _fmt(result.cross["max_abs_delta_all"]),
                "0 (target ≤ 0.05)",
            )
        )
    d = result.pdf[c] if result.pdf else {}
    if d.get("ks") is not None:
        rows.append((f"PDF KS statistic, {d['label']}", _fmt(d["ks"]), "0 (target ≤ 0.05)"))
        rows.append((f"PDF Wasserstein / σ_sim, {d['label']}", _fmt(d["wasserstein"]), "0"))
    lines = ["| | generated | simulator, or target |", "|:--|--:|--:|"]
    lines += [f"| {a} | {b} | {s} |" for a, b, s in rows]
    text = "\n".join(lines)
    notes = ([result.sim_note] if result.sim_note else []) + list(result.notes)
    return text + "".join(f"\n\n*{n}*" for n in notes)


def result_views(result: GenerateResult, c: int) -> pn.Column:
    """Everything the Generate page shows for ``result`` and channel ``c``."""
    plots = []
    if result.power is not None:
        plots.append(ratio_plot(result, c))
    elif result.gen_power is not None:
        plots.append(gen_power_plot(result, c))
    if result.pdf:
        plots.append(pdf_plot(result, c))
    if result.cross is not None and len(result.cross["pairs"]):
        plots.append(cross_plot(result))
    panes = [pn.pane.HoloViews(p, linked_axes=False) for p in plots]
    rows = [pn.Row(*panes[i : i + 2]) for i in range(0, len(panes), 2)]
    return pn.Column(
        pn.pane.Markdown(where_markdown(result), margin=(0, 5), sizing_mode="stretch_width"),
        pn.Row(*map_panes(result, c)),
        *rows,
        pn.pane.Markdown(scores_markdown(result, c), sizing_mode="stretch_width", max_width=900),
        sizing_mode="stretch_width",
    )


# ---------------------------------------------------------------------------------------------
# The emulator report of a training run (Training page)
# ---------------------------------------------------------------------------------------------


def is_emulator_report(report: dict | None) -> bool:
    """True if ``report`` has the layout of :func:`engine.evaluation.emulator.score_grid`:
    a ``targets`` object whose entries have a ``threshold``."""
    targets = (report or {}).get("targets")
    return isinstance(targets, dict) and any(
        isinstance(t, dict) and "threshold" in t for t in targets.values()
    )


def _values(value) -> str:
    """A report value (number, list of numbers, None) as text."""
    if isinstance(value, list | tuple):
        return ", ".join(_values(v) for v in value) if value else "—"
    if isinstance(value, bool):
        return str(value)
    return _fmt(value)


def targets_table(report: dict | None) -> pd.DataFrame:
    """The ``targets`` of an emulator report: columns ``target``, ``value`` (per channel,
    pair or parameter when a list), ``threshold``, ``pass`` (``✓``, ``✗`` or ``not measured``)
    and ``definition``; strings."""
    rows = []
    for name, t in ((report or {}).get("targets") or {}).items():
        if not isinstance(t, dict):
            continue
        ok = t.get("pass")
        mark = "not measured" if ok is None else ("✓" if ok else "✗")
        rows.append(
            (
                name,
                _values(t.get("value")),
                _values(t.get("threshold")),
                mark,
                str(t.get("definition") or ""),
            )
        )
    return pd.DataFrame(rows, columns=["target", "value", "threshold", "pass", "definition"])


def means_table(report: dict | None) -> pd.DataFrame:
    """The grid means of an emulator report (``means``): numbers and lists of numbers, one row
    each (objects of per-parameter values flattened to ``name.param``); columns ``metric``,
    ``value``."""
    rows = []

    def walk(prefix: str, obj) -> None:
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                walk(name, value)
            elif value is None or isinstance(value, int | float | list):
                rows.append((name, _values(value)))

    walk("", (report or {}).get("means") or {})
    return pd.DataFrame(rows, columns=["metric", "value"])


def emulator_summary(report: dict) -> str:
    """One Markdown line about an emulator report: task, grid points and maps per point, the
    simulator data set, whether all measured targets pass, time, notes."""
    task = report.get("task") or "emulator"
    parts = [f"**Evaluation** of task `{task}`"]
    if report.get("n_points") is not None:
        parts[0] += f" on {report['n_points']} parameter points"
        if report.get("maps_per_point") is not None:
            parts[0] += f" × {report['maps_per_point']} maps"
    if report.get("dataset"):
        parts.append(f"against `{report['dataset']}`")
    passed = report.get("passed")
    if passed is not None:
        parts.append("all measured targets pass" if passed else "**some targets fail**")
    if report.get("seconds") is not None:
        parts.append(f"{_fmt(report['seconds'])} s")
    notes = [str(n) for n in report.get("notes") or []]
    return " · ".join(parts) + "".join(f"\n\n*Note:* {n}" for n in notes)


def report_figures(report: dict | None, run_path: str | Path | None) -> list[Path]:
    """PNG figures of a run's report: the files named in ``report["figures"]`` and every
    ``figures/*.png`` of the run directory, existing ones, each once, in name order."""
    if run_path is None:
        return []
    root = Path(run_path)
    named = (report or {}).get("figures")
    found = (
        {p.resolve() for p in (root / "figures").glob("*.png")}
        if (root / "figures").is_dir()
        else set()
    )
    if isinstance(named, dict):
        for value in named.values():
            if isinstance(value, str) and value.endswith(".png"):
                path = root / value if not Path(value).is_absolute() else Path(value)
                if not path.is_file():
                    path = root / "figures" / Path(value).name
                if path.is_file():
                    found.add(path.resolve())
    return sorted(found, key=lambda p: p.name)


def emulator_report_view(report: dict, run_path: str | Path | None) -> pn.Column:
    """An emulator report: its targets, its grid means and its PNG figures."""
    targets = targets_table(report)
    means = means_table(report)
    items = [
        pn.pane.Markdown(
            "Targets of the emulator (grid means over the parameter points):", margin=(0, 5)
        ),
        pn.pane.DataFrame(targets, index=False, sizing_mode="stretch_width", max_height=300),
    ]
    if not means.empty:
        items += [
            pn.pane.Markdown("Grid means:", margin=(0, 5)),
            pn.pane.DataFrame(means, index=False, max_height=300),
        ]
    figures = report_figures(report, run_path)
    if figures:
        items.append(pn.FlexBox(*(pn.pane.PNG(str(p), width=460) for p in figures)))
    return pn.Column(*items, sizing_mode="stretch_width")
