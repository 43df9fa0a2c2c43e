"""Field lab, the views: HoloViews elements of a result, readout table, widgets from param.

Pure presentation helpers (result in, HoloViews elements or text out) and the ``hv.DynamicMap``
views fed by an ``hv.streams.Pipe`` of :class:`~explorer.fieldlab_measure.FieldLabResult` s, with
fixed axes so that the user's zoom survives parameter changes; plus the widgets generated from
the engine's param definitions (bounds, defaults and docs written once, in the engine).
"""

from __future__ import annotations

import math

import holoviews as hv
import numpy as np
import panel as pn
import param

from explorer.fieldlab_kinds import Control, kind_view
from explorer.fieldlab_measure import FieldLabResult, PlotStyle
from explorer.widgets import label, look

hv.extension("bokeh", logo=False)  # registers hv.opts for the Bokeh backend (idempotent)

#: Most slider steps a Number setting may have before it gets a number box instead (see
#: :func:`setting_widget`): a slider over 1e5 steps cannot be used.
MAX_SLIDER_STEPS = 1000

# ---------------------------------------------------------------------------------------------
# Presentation helpers (pure: result in, HoloViews elements or text out)
# ---------------------------------------------------------------------------------------------


def _dims(style: PlotStyle) -> dict:
    """Labelled dimensions of a style (axis labels carry the units)."""
    value_unit = style.value_unit or None
    return dict(
        x=hv.Dimension("x", label="x", unit=style.coord_unit),
        y=hv.Dimension("y", label="y", unit=style.coord_unit),
        value=hv.Dimension(style.value, label=style.value_label, unit=value_unit),
        pdf=hv.Dimension("pdf", label=f"p({style.value_label})"),
        k=hv.Dimension(style.k, label=style.k_label, unit=style.k_unit or None),
        p=hv.Dimension("P", label=style.p_label, unit=style.p_unit or None),
        nu=hv.Dimension("nu", label="ν = threshold / σ"),
        peaks=hv.Dimension("peaks", label="peaks above νσ (per map)"),
    )


def map_element(result: FieldLabResult) -> hv.Image:
    """The map as an ``hv.Image`` in its coordinate unit, colour range symmetric at 99.5 % |value|."""
    st = result.style
    dims = _dims(st)
    a = float(np.percentile(np.abs(result.map), 99.5)) or 1.0
    return hv.Image(
        np.flipud(result.map),  # hv.Image draws row 0 at the top; map row 0 is y = ½ pixel
        bounds=(0, 0, st.extent, st.extent),
        kdims=[dims["x"], dims["y"]],
        vdims=[dims["value"].clone(range=(-a, a))],
    )


def power_overlay(result: FieldLabResult) -> hv.Overlay:
    """Measured spectrum against theory: expected band (±1σ), smooth curve, noise, markers."""
    st = result.style
    dims = _dims(st)
    k, p = dims["k"], dims["p"]
    lower = np.maximum(result.pk_expected - result.pk_sigma, 1e-3 * result.pk_expected)
    band = hv.Area(
        (result.k, lower, result.pk_expected + result.pk_sigma),
        kdims=[k],
        vdims=[p, "P2"],
        label="expected ±1σ (same modes)",
    )
    theory = hv.Curve(
        (result.k_theory, result.pk_theory), k, p, label=st.theory_label or "theory"
    ).opts(color="#08519c", line_width=2)
    # Always the same layers (a DynamicMap keeps the structure of its first frame): without
    # noise the curve is all-NaN and draws nothing.
    noise = hv.Curve((result.k_theory, result.noise_theory), k, p, label="noise").opts(
        color="#31a354", line_dash="dotted", line_width=2
    )
    measured = hv.Scatter((result.k, result.pk), k, p, label="measured")
    xs = np.array([x for x, _ in result.markers], dtype=np.float64)
    lines = hv.VLines(xs, kdims=[k])
    y_text = st.p_range[1] / 3
    labels = hv.Labels(
        (xs * 1.08, np.full(xs.shape, y_text), [t for _, t in result.markers]),
        kdims=[k, p],
        vdims=["text"],
    )
    return hv.Overlay([band, theory, noise, measured, lines, labels])


def pdf_overlay(result: FieldLabResult) -> hv.Overlay:
    """Pixel PDF with a Gaussian of the same mean and variance for reference."""
    dims = _dims(result.style)
    sigma = result.sigma or 1.0
    x = result.pdf_x
    mean = float(np.sum(x * result.pdf_density) / max(np.sum(result.pdf_density), 1e-300))
    gauss = np.exp(-0.5 * ((x - mean) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return hv.Overlay(
        [
            hv.Histogram(
                (x, result.pdf_density), kdims=[dims["value"]], vdims=[dims["pdf"]], label="map"
            ),
            hv.Curve((x, gauss), dims["value"], dims["pdf"], label="Gaussian, same σ"),
        ]
    )


def peaks_element(result: FieldLabResult) -> hv.Curve:
    """Cumulative peak counts N(>νσ) against ν."""
    dims = _dims(result.style)
    return hv.Curve((result.peak_nu, result.peak_counts), dims["nu"], dims["peaks"])


def parameter_table(result: FieldLabResult) -> str:
    """Markdown table of the settings of ``result`` (per kind), measured moments and timing."""
    s = result.settings
    view = kind_view(s["kind"])
    rows = [("kind", view.title, "")]
    for c in (*view.controls, *view.table):
        if c.name in s:
            rows.append((c.symbol, c.format(s[c.name]), c.unit))
    unit = result.style.value_unit or "–"
    rows += list(result.derived)
    rows += [
        (f"measured σ<sub>{result.style.value_label}</sub>", f"{result.sigma:.3g}", unit),
        ("skewness", f"{result.skewness:.3f}", "–"),
        ("update time", f"{1e3 * result.seconds:.0f}", "ms"),
    ]
    lines = ["| setting | value | unit |", "|:--|--:|:--|"]
    lines += [f"| {name} | {value} | {unit} |" for name, value, unit in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Views (DynamicMaps fed by a Pipe of results)
# ---------------------------------------------------------------------------------------------


def power_view(pipe: hv.streams.Pipe, style: PlotStyle) -> hv.DynamicMap:
    """Spectrum and theory, log-log, fixed axes so zoom and comparison persist."""
    return hv.DynamicMap(lambda data: power_overlay(data), streams=[pipe]).opts(
        hv.opts.Overlay(
            logx=True,
            logy=True,
            xlim=style.k_range,
            ylim=style.p_range,
            framewise=False,
            frame_width=420,
            frame_height=270,
            legend_position=style.legend,
            title=style.power_title,
            active_tools=["wheel_zoom"],
        ),
        hv.opts.Area(color="#9ecae1", alpha=0.6, line_alpha=0),
        hv.opts.Scatter(color="#d62728", size=5, tools=["hover"]),
        hv.opts.VLines(color="#636363", line_dash="dashed", line_width=1.5),
        hv.opts.Labels(text_font_size="10pt", text_color="#636363", text_align="left"),
    )


def pdf_view(pipe: hv.streams.Pipe, style: PlotStyle) -> hv.DynamicMap:
    """Pixel PDF (axes follow the data)."""
    return hv.DynamicMap(lambda data: pdf_overlay(data), streams=[pipe]).opts(
        hv.opts.Overlay(
            framewise=True,
            frame_width=420,
            frame_height=150,
            legend_position="top_right",
            title=f"Pixel PDF of {style.value_label}",
        ),
        hv.opts.Histogram(color="#6baed6", line_color="#2171b5", alpha=0.8, framewise=True),
        hv.opts.Curve(color="black", line_dash="dashed", line_width=1.5, framewise=True),
    )


def peaks_view(pipe: hv.streams.Pipe, style: PlotStyle) -> hv.DynamicMap:
    """Cumulative peak counts N(>νσ) (axes follow the data)."""
    return hv.DynamicMap(lambda data: peaks_element(data), streams=[pipe]).opts(
        hv.opts.Curve(
            framewise=True,
            frame_width=380,
            frame_height=130,
            color="#756bb1",
            line_width=2,
            tools=["hover"],
            title="Peak counts N(>νσ)",
        )
    )


# ---------------------------------------------------------------------------------------------
# Widgets generated from param definitions
# ---------------------------------------------------------------------------------------------


def labelled(widget: pn.widgets.Widget) -> pn.viewable.Viewable:
    """Button groups show no label of their own: put their name above them."""
    if not isinstance(widget, pn.widgets.RadioButtonGroup):
        return widget
    text = widget.label if "label" in widget.param else widget.name
    title = pn.pane.HTML(f"<label>{text}</label>", margin=(5, 10, 0, 10))
    return pn.Column(title, widget, sizing_mode="stretch_width", margin=0)


def slider_range(p: param.Parameter) -> tuple[float, float] | None:
    """(start, end) of a slider for Number parameter ``p``, or None when it needs a number box.

    The softbounds when set; else the bounds, if a step is declared and the bounds hold at most
    :data:`MAX_SLIDER_STEPS` steps. Settings without sensible soft bounds get a number box with
    the hard bounds rather than a range invented here.
    """
    if p.softbounds is not None and None not in p.softbounds:
        return tuple(p.softbounds)
    if p.bounds is None or None in p.bounds or not p.step:
        return None
    lo, hi = p.bounds
    return (lo, hi) if (hi - lo) / p.step <= MAX_SLIDER_STEPS else None


def setting_widget(settings: param.Parameterized, control: Control) -> pn.widgets.Widget:
    """The widget of one setting, generated from its param definition.

    Buttons for discrete ``control.options`` and Selectors, a number box for integers (seed) and
    for Numbers without a usable slider range (:func:`slider_range`), else a slider over the
    soft bounds. Widgets are linked to ``settings`` both ways.
    """
    p = settings.param[control.name]
    kw = dict(**label(control.label), sizing_mode="stretch_width")
    if control.options is not None or (
        isinstance(p, param.Selector) and not isinstance(p, param.ClassSelector)
    ):
        opts = control.options
        extra = {} if opts is None else {"options": opts if isinstance(opts, dict) else list(opts)}
        return pn.widgets.RadioButtonGroup.from_param(
            p, **look("primary", "outline"), **kw, **extra
        )
    if isinstance(p, param.Integer):
        # end=None: the 2**62 seed bound is checked by param; JavaScript numbers stop at 2**53.
        return pn.widgets.IntInput.from_param(p, end=None, **kw)
    if isinstance(p, param.Number):
        rng = slider_range(p)
        if rng is None:
            lo, hi = p.bounds
            return pn.widgets.FloatInput.from_param(p, start=lo, end=hi, **kw)
        fmt = {"format": "0." + "0" * control.digits} if control.digits else {}
        return pn.widgets.FloatSlider.from_param(p, start=rng[0], end=rng[1], **fmt, **kw)
    return pn.widgets.TextInput.from_param(p, **kw)
