"""Field lab, the views: Bokeh figures updated in place, readout table, widgets from param.

The figures of one :class:`~explorer.fieldlab_measure.PlotStyle` (map, spectrum against theory,
pixel PDF, peak counts) are built once, as plain Bokeh figures over ``ColumnDataSource`` s
(:class:`FieldFigures`); every new result only replaces the sources' columns
(:func:`explorer.fieldlab_frames.frame_data`, pure, computed off the event loop next to the map), so an update sends a few arrays (the map as
float32) and the user's zoom survives. Maps larger than the screen are drawn instead by a
HoloViews ``DynamicMap`` fed by an ``hv.streams.Pipe`` and rasterized by datashader
(:func:`map_element`). Plus the readout table and the widgets generated from the engine's param
definitions (bounds, defaults and docs written once, in the engine).

Rebuilding HoloViews elements and plots for every slider step took ~200 ms of server time per
update (HoloViews' per-frame range, style and legend processing), more than the computation of
a 256² map; replacing the sources' columns takes a few ms. In the browser (measured with
``benchmarks/browser.py`` and a Chromium CPU profile) the rest of a step went to: colour-mapping
the float map in JavaScript (the map now goes as RGBA coloured here, with the float values
beside it for the hover), auto-ranging the PDF and peak-count axes after every update (a second
repaint and a round trip; their ranges are now set here with the data) and re-laying out the
page when the readout table changed size (it now has a fixed size).
"""

from __future__ import annotations

import html

import holoviews as hv
import numpy as np
import panel as pn
import param
from bokeh.core.properties import Int
from bokeh.model import DataModel
from bokeh.models import (
    ColorBar,
    ColumnDataSource,
    CustomJS,
    CustomJSHover,
    HoverTool,
    LinearColorMapper,
    Range1d,
)
from bokeh.plotting import figure

from explorer.fieldlab_frames import MAP_PALETTE, same_columns
from explorer.fieldlab_kinds import Control, kind_view
from explorer.fieldlab_measure import FieldLabResult, PlotStyle
from explorer.widgets import LiveFloatSlider, label, look

hv.extension("bokeh", logo=False)  # registers hv.opts for the Bokeh backend (idempotent)

#: Most slider steps a Number setting may have before it gets a number box instead (see
#: :func:`setting_widget`): a slider over 1e5 steps cannot be used.
MAX_SLIDER_STEPS = 1000

# ---------------------------------------------------------------------------------------------
# Presentation helpers (pure: result in, HoloViews element or text out)
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


def parameter_rows(result: FieldLabResult) -> list[tuple[str, str, str]]:
    """(setting, value, unit) rows of the readout: the settings of ``result`` (per kind), the
    kind's derived numbers, the measured moments and the update time (HTML in the names)."""
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
    return rows


#: Style of the readout table (:func:`parameter_table`), as Panel's Markdown tables look.
READOUT_CSS = """
table.readout { border-collapse: collapse; font-size: 13px; width: 100%; }
table.readout th, table.readout td { padding: 2px 6px; border-bottom: 1px solid #e0e0e0; }
table.readout th { text-align: left; border-bottom: 2px solid #bbb; }
table.readout td.value { text-align: right; font-variant-numeric: tabular-nums; }
"""


def parameter_table(result: FieldLabResult, error: str = "") -> str:
    """The readout as an HTML table (:func:`parameter_rows`), after ``error`` in bold if given.

    Plain HTML, not Markdown: rendering a Markdown table cost the server ~19 ms per update
    (``benchmarks/browser.py --profile-server``), building this string well under 1 ms.
    """
    head = f"<p><b>⚠ {html.escape(error)}</b> (showing the last good map)</p>" if error else ""
    body = "".join(
        f"<tr><td>{name}</td><td class='value'>{value}</td><td>{unit}</td></tr>"
        for name, value, unit in (parameter_rows(result) if result is not None else ())
    )
    if not body:
        return head
    return (
        f"{head}<table class='readout'><tr><th>setting</th><th>value</th><th>unit</th></tr>"
        f"{body}</table>"
    )


# ---------------------------------------------------------------------------------------------
# Figures updated in place (one set per style; results only replace the sources' columns)
# ---------------------------------------------------------------------------------------------

#: Tools of every figure; the mouse wheel zooms.
TOOLS = "pan,wheel_zoom,box_zoom,reset,save"


def _axis_label(label_: str, unit: str) -> str:
    return f"{label_} ({unit})" if unit else label_


def _static_legend(fig, entries) -> None:
    """A legend for ``entries`` (renderer, glyph method, its fields and style, label) drawn from
    proxy renderers of the same glyph and style with no data, whose visibility (the legend's
    click hides) drives the real renderer's (in the browser, looked up by id).

    Bokeh's legend re-renders its items, each with a new canvas and a forced layout of the page,
    whenever anything reachable from them changes, the data of its renderers included (3.9:
    ``on_transitive_change(items, …, recursive)``): on the P(k) figure that was ~5 ms of the
    page's script per slider step plus the new canvases' compositing (Chromium CPU profile of
    ``benchmarks/browser.py --trace-js``). The proxies' sources never change.
    """
    for renderer, method, kw, text in entries:
        fields = {
            v for key, v in kw.items() if key in ("x", "y", "y1", "y2") and isinstance(v, str)
        }
        proxy = getattr(fig, method)(
            source=ColumnDataSource({f: [] for f in fields}), legend_label=text, **kw
        )
        # found by id, not referenced: a reference would make the real renderer (and its data)
        # reachable from the legend again
        proxy.js_on_change(
            "visible",
            CustomJS(
                code=f"const r = cb_obj.document.get_model_by_id({renderer.id!r});"
                " if (r != null) r.visible = cb_obj.visible;"
            ),
        )


class FrameAck(DataModel):
    """The browser's acknowledgement of painted frames: the server sets ``sent`` with a frame's
    data (same message); once the page has painted it, the page sets ``painted`` to it, which
    comes back to the server (flow control of :class:`explorer.latest.LatestOnly`)."""

    sent = Int(0, help="Number of the last frame sent to the browser.")
    painted = Int(0, help="Number of the last frame the browser painted.")


#: Runs in the browser when ``FrameAck.sent`` changes: the next animation frame paints the new
#: data; the task queued from it runs after that paint.
_ACK_JS = """
const frame = cb_obj.sent;
requestAnimationFrame(() => setTimeout(() => {
  if (cb_obj.painted < frame) cb_obj.painted = frame;
}, 0));
"""


#: The map's value under the cursor (:class:`FieldFigures`' hover): the pixel of the image hit,
#: looked up in the float32 values of the ``src`` source, formatted as Bokeh formats numbers.
_HOVER_VALUE_JS = """
const ii = special_vars.image_index;
const col = src.data.value;
if (ii == null || col == null || col.length === 0) return "…";
const v = col[0][ii.flat_index];
if (v == null || !Number.isFinite(v)) return "–";
const a = Math.abs(v);
return (a > 0.1 && a < 1000) ? v.toFixed(3) : v.toExponential(3);
"""


class FieldFigures:
    """The Bokeh figures of one style, fed in place by :meth:`show` (zoom survives updates).

    Parameters
    ----------
    style : PlotStyle
    with_map : bool
        Build the map figure (else a rasterized HoloViews view shows the map).
    zoom : ((x0, x1), (y0, y1)), optional
        Initial ranges of the map, in ``style.coord_unit``.

    Attributes
    ----------
    map, power, pdf, peaks : bokeh figure (``map`` is None without the map)
    sources : dict of str → ColumnDataSource
    """

    def __init__(self, style: PlotStyle, with_map: bool = True, zoom: tuple | None = None):
        self.style = style
        names = ("band", "theory", "noise", "measured", "markers", "pdf", "gauss", "peaks")
        maps = ("map", "hover") if with_map else ()
        self.sources = {n: ColumnDataSource() for n in (*names, *maps)}
        self.mapper = LinearColorMapper(palette=MAP_PALETTE, low=-1.0, high=1.0)
        self.map = self._map_figure(zoom) if with_map else None
        self.power = self._power_figure()
        self.pdf, self.peaks = self._pdf_figure(), self._peaks_figure()
        self._shown: dict[str, dict] = {}  # columns last sent per source (unchanged: not resent)
        self.ack = FrameAck()
        self.ack.js_on_change("sent", CustomJS(code=_ACK_JS))
        self.power.tags = [self.ack]  # in the document with the figures

    def on_painted(self, callback) -> None:
        """Call ``callback(frame)`` (on the server's event loop) when the browser says it painted
        the frame numbered ``frame`` (:meth:`show`'s ``sequence``)."""
        self.ack.on_change("painted", lambda _attr, _old, new: callback(new))

    def show(
        self, frame: dict, names: tuple[str, ...] | None = None, sequence: int | None = None
    ) -> None:
        """Replace the sources' columns by those of ``frame``
        (:func:`explorer.fieldlab_frames.frame_data`).

        ``names``: only these sources (and the axis ranges and colour range that go with them;
        ``fieldlab_frames.PRIMARY``, ``SECONDARY``); default all. Columns equal to those shown
        are not sent again. ``sequence``: the frame's number, for the browser to acknowledge
        once painted (:meth:`on_painted`).
        """
        for name in self.sources:
            if (names is None or name in names) and name in frame:
                self._show_source(name, frame[name])
        for name, (xr_, yr_) in frame.get("ranges", {}).items():
            if names is None or name in names:
                fig = getattr(self, name)
                fig.x_range.update(start=xr_[0], end=xr_[1])
                fig.y_range.update(start=yr_[0], end=yr_[1])
        if "clim" in frame and self.map is not None and (names is None or "map" in names):
            self.mapper.update(low=frame["clim"][0], high=frame["clim"][1])
        if sequence is not None:
            self.ack.sent = int(sequence)

    def _show_source(self, name: str, columns: dict) -> None:
        """Send the columns of ``columns`` that differ from those shown: all of them (one
        assignment) when the column names changed, else only the changed ones (one event)."""
        old = self._shown.get(name)
        if old is None or old.keys() != columns.keys():
            if not same_columns(old, columns):
                self.sources[name].data = columns
                self._shown[name] = columns
            return
        changed = {c: v for c, v in columns.items() if not same_columns({c: old[c]}, {c: v})}
        if changed:
            self.sources[name].data.update(changed)
            self._shown[name] = {**old, **changed}

    def panes(self) -> dict:
        """The figures as Panel panes: map (None without it), power, pdf, peaks."""
        out = {n: getattr(self, n) for n in ("map", "power", "pdf", "peaks")}
        return {n: f if f is None else pn.pane.Bokeh(f) for n, f in out.items()}

    def _map_figure(self, zoom):
        st = self.style
        xr_, yr_ = zoom if zoom else ((0.0, st.extent), (0.0, st.extent))
        fig = figure(
            title=st.map_title, frame_width=380, frame_height=380, tools=TOOLS,
            active_scroll="wheel_zoom", x_range=Range1d(*xr_), y_range=Range1d(*yr_),
            x_axis_label=_axis_label("x", st.coord_unit),
            y_axis_label=_axis_label("y", st.coord_unit),
        )  # fmt: skip
        # coloured here (colour_map): colour-mapping 256² floats in the browser cost ~20 ms a step
        img = fig.image_rgba(
            image="image", x="x", y="y", dw="dw", dh="dh", source=self.sources["map"]
        )
        name = _axis_label(st.value_label, st.value_unit)
        # the value under the cursor from the "hover" source, which no glyph draws (its update
        # repaints nothing); the pixel's index is the image's
        value = CustomJSHover(args=dict(src=self.sources["hover"]), code=_HOVER_VALUE_JS)
        fig.add_tools(
            HoverTool(
                renderers=[img],
                tooltips=[("x, y", "$x{0.0}, $y{0.0}"), (name, "@image{custom}")],
                formatters={"@image": value},
            )
        )
        fig.add_layout(ColorBar(color_mapper=self.mapper, title=name), "right")
        return fig

    def _power_figure(self):
        st, src = self.style, self.sources
        k = st.k
        fig = figure(
            title=st.power_title, frame_width=420, frame_height=270, tools=TOOLS,
            active_scroll="wheel_zoom", x_axis_type="log", y_axis_type="log",
            x_range=Range1d(*st.k_range), y_range=Range1d(*st.p_range),
            x_axis_label=_axis_label(st.k_label, st.k_unit),
            y_axis_label=_axis_label(st.p_label, st.p_unit),
        )  # fmt: skip
        # (source, glyph method, its fields and style, legend label) of the legend's curves
        curves = (
            ("band", "varea", dict(x=k, y1="lower", y2="upper", color="#9ecae1", alpha=0.6),
             "expected ±1σ (same modes)"),
            ("theory", "line", dict(x=k, y="P", color="#08519c", line_width=2),
             st.theory_label or "theory"),
            ("noise", "line", dict(x=k, y="P", color="#31a354", line_dash="dotted", line_width=2),
             "noise"),
            ("measured", "scatter", dict(x=k, y="P", color="#d62728", size=5), "measured"),
        )  # fmt: skip
        drawn = {
            name: getattr(fig, method)(source=src[name], **kw) for name, method, kw, _ in curves
        }
        _static_legend(fig, [(drawn[name], method, kw, text) for name, method, kw, text in curves])
        dots = drawn["measured"]
        fig.vspan(
            x=k, source=src["markers"], line_color="#636363", line_dash="dashed", line_width=1.5
        )
        fig.text(
            x="x_text", y="P", text="text", source=src["markers"], text_font_size="10pt",
            text_color="#636363", text_align="left",
        )  # fmt: skip
        fig.add_tools(HoverTool(renderers=[dots], tooltips=[(st.k_label, f"@{k}"), ("P", "@P")]))
        fig.legend.location = st.legend
        fig.legend.click_policy = "hide"
        return fig

    def _pdf_figure(self):
        st = self.style
        # fixed ranges set by show(): auto-ranging repainted the figure a second time per update
        fig = figure(
            title=f"Pixel PDF of {st.value_label}", frame_width=420, frame_height=150,
            tools=TOOLS, x_range=Range1d(0.0, 1.0), y_range=Range1d(0.0, 1.0),
            x_axis_label=_axis_label(st.value_label, st.value_unit),
            y_axis_label=f"p({st.value_label})",
        )  # fmt: skip
        fig.quad(
            left="left", right="right", top="top", bottom=0.0, source=self.sources["pdf"],
            fill_color="#6baed6", line_color="#2171b5", alpha=0.8, legend_label="map",
        )  # fmt: skip
        fig.line(
            x=st.value, y="pdf", source=self.sources["gauss"], color="black",
            line_dash="dashed", line_width=1.5, legend_label="Gaussian, same σ",
        )  # fmt: skip
        fig.legend.location = "top_right"
        return fig

    def _peaks_figure(self):
        fig = figure(
            title="Peak counts N(>νσ)", frame_width=380, frame_height=130, tools=TOOLS,
            x_range=Range1d(0.0, 1.0), y_range=Range1d(0.0, 1.0),
            x_axis_label="ν = threshold / σ", y_axis_label="peaks above νσ (per map)",
        )  # fmt: skip
        line = fig.line(
            x="nu", y="peaks", source=self.sources["peaks"], color="#756bb1", line_width=2
        )
        fig.add_tools(HoverTool(renderers=[line], tooltips=[("ν", "@nu"), ("N", "@peaks")]))
        return fig


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
        return LiveFloatSlider.from_param(p, start=rng[0], end=rng[1], **fmt, **kw)
    return pn.widgets.TextInput.from_param(p, **kw)
