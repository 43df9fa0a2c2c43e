"""Lensing page, the views: the lensed image with its critical curves and subhaloes, the source
plane with the caustics, the classifier's class probabilities, the readout, the widgets, and
the grid of generated lenses.

As in the field lab (:mod:`explorer.fieldlab_views`), the figures are plain Bokeh figures over
``ColumnDataSource`` s built once (:class:`LensFigures`); every new
:class:`~explorer.lensing_compute.LensResult` only replaces their columns
(:func:`frame_data`, pure, computed in the worker thread next to the image), so an update sends
a few small arrays and the user's zoom survives (the axes move only when the instrument's field
of view or the source-plane range changes). The image goes as RGBA coloured here with an asinh
stretch (:func:`lens_rgba`), its values beside it for the hover.

Units: angles in arcsec, pixels in e⁻ s⁻¹, masses in M☉, times in ms.
"""

from __future__ import annotations

import html
import math

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, FactorRange, HoverTool, Range1d
from bokeh.palettes import Inferno256
from bokeh.plotting import figure

from engine.physics.strong_lens import CLASSES
from explorer.fieldlab_frames import nice_ceil
from explorer.fieldlab_views import TOOLS, labelled, setting_widget
from explorer.lensing_compute import CONTROLS, LensResult, LensView
from explorer.widgets import label

#: Image palette (dark to bright) as packed RGBA, Bokeh ``image_rgba`` byte order.
IMAGE_RGBA = np.array(
    [
        int(c[1:3], 16) | int(c[3:5], 16) << 8 | int(c[5:7], 16) << 16 | 255 << 24
        for c in Inferno256
    ],
    dtype=np.uint32,
)
#: asinh softening of the image colours, as a fraction of the top of the colour range.
SOFTENING = 0.03
#: Colours of the overlays.
CRITICAL_COLOR, CAUSTIC_COLOR, SUBHALO_COLOR, SOURCE_COLOR = (
    "#4dd9ff", "#ff7f0e", "#7CFC00", "#1f9bd1",
)  # fmt: skip
#: Colours of the class bars.
CLASS_COLORS = {"none": "#7f7f7f", "cdm": "#2ca02c", "vortex": "#9467bd"}
#: Side of the image frame and of the small panels, px.
IMAGE_FRAME, SMALL_FRAME = 400, 230


def lens_rgba(image: np.ndarray, high: float) -> np.ndarray:
    """``image`` (e⁻ s⁻¹ per pixel) coloured with :data:`IMAGE_RGBA` on an asinh scale from 0
    to ``high`` (softening :data:`SOFTENING` × high; negative noise pixels are black): packed
    RGBA ``(ny, nx)`` uint32."""
    soft = SOFTENING * high
    scaled = np.arcsinh(np.asarray(image, np.float64) / soft) / math.asinh(high / soft)
    n = len(IMAGE_RGBA)
    index = np.clip(np.nan_to_num(scaled * n, nan=0.0), 0, n - 1).astype(np.intp)
    return IMAGE_RGBA[index]


def _lines(curves: list) -> tuple[list, list]:
    return [np.asarray(x, float) for x, _ in curves], [np.asarray(y, float) for _, y in curves]


def frame_data(result: LensResult) -> dict:
    """Columns of every data source of :class:`LensFigures` for ``result`` (pure, thread-safe),
    plus ``half`` (image half side, arcsec), ``source_half`` (half side of the source-plane
    panel: a nice number above the caustics, the cut and the source) and ``high`` (top of the
    colour range: the 99.9 % pixel rounded up to 1, 1.5, 2, 3, 5, 7 × 10ⁿ e⁻ s⁻¹)."""
    h, img = result.half, result.image
    high = nice_ceil(float(np.percentile(img, 99.9)))
    cx, cy = _lines(result.critical)
    kx, ky = _lines(result.caustic)
    s = result.settings
    mass = np.asarray(result.subhalo_mass, float)
    log_m = np.log10(np.maximum(mass, 1.0))
    extent = [float(np.max(np.abs(a), initial=0.0)) for a in (*kx, *ky, *result.cut)]
    extent.append(max(abs(s["source_x"]), abs(s["source_y"])) + 1.5 * s["source_r_sersic"])
    source_half = min(nice_ceil(1.1 * max(extent)), 10.0)
    probs = result.probs or {}
    names = list(probs) or list(CLASSES)
    values = [float(probs.get(c, 0.0)) for c in names]
    return {
        "image": {
            "image": [lens_rgba(img, high)], "counts": [img], "x": [-h], "y": [-h],
            "dw": [2 * h], "dh": [2 * h],
        },
        "critical": {"cx": cx, "cy": cy},
        "caustic": {"kx": kx, "ky": ky},
        "cut": {"x": np.asarray(result.cut[0], float), "y": np.asarray(result.cut[1], float)},
        "subhalo": {
            "x": np.asarray(result.subhalo_x, float), "y": np.asarray(result.subhalo_y, float),
            "mass": mass, "size": np.clip(3.0 + 2.0 * (log_m - 6.0), 3.0, 14.0),
        },
        "source": {
            "x": [s["source_x"]], "y": [s["source_y"]], "w": [2 * s["source_r_sersic"]],
            "h": [2 * s["source_r_sersic"]],
        },
        "probs": {
            "cls": names, "p": values, "text": [f"{v:.2f}" for v in values],
            "color": [CLASS_COLORS.get(c, "#1f77b4") for c in names],
        },
        "half": h,
        "source_half": source_half,
        "high": high,
    }  # fmt: skip


#: Sources of :class:`LensFigures` and their columns (:func:`frame_data`).
SOURCES = {
    "image": ("image", "counts", "x", "y", "dw", "dh"),
    "critical": ("cx", "cy"),
    "caustic": ("kx", "ky"),
    "cut": ("x", "y"),
    "subhalo": ("x", "y", "mass", "size"),
    "source": ("x", "y", "w", "h"),
    "probs": ("cls", "p", "text", "color"),
}


class LensFigures:
    """The Bokeh figures of the page, fed in place by :meth:`show`.

    Attributes
    ----------
    image : figure
        The lensed image with the critical curves and the substructure.
    source : figure
        The source plane: caustics, cut and the source's half-light circle.
    probs : figure
        The classifier's class probabilities.
    sources : dict of str → ColumnDataSource
    """

    def __init__(self):
        self.sources = {n: ColumnDataSource({c: [] for c in cols}) for n, cols in SOURCES.items()}
        self._half: float | None = None
        self._source_half: float | None = None
        self.image = self._image_figure()
        self.source = self._source_figure()
        self.probs = self._probs_figure()

    def show(self, frame: dict) -> None:
        """Replace the sources' columns by those of ``frame`` (:func:`frame_data`); the axes
        follow only a new field of view or source-plane range (zoom survives otherwise)."""
        for name, source in self.sources.items():
            source.data = frame[name]
        if frame["half"] != self._half:
            self._half = h = frame["half"]
            for r in (self.image.x_range, self.image.y_range):
                r.update(start=-h, end=h)
        if frame["source_half"] != self._source_half:
            self._source_half = h = frame["source_half"]
            for r in (self.source.x_range, self.source.y_range):
                r.update(start=-h, end=h)
        factors = list(frame["probs"]["cls"])
        if list(self.probs.x_range.factors) != factors:
            self.probs.x_range.factors = factors

    def _image_figure(self):
        src = self.sources
        fig = figure(
            title="Lensed image (e⁻ s⁻¹ per pixel, asinh colours) and critical curves",
            frame_width=IMAGE_FRAME, frame_height=IMAGE_FRAME, tools=TOOLS,
            active_scroll="wheel_zoom", x_range=Range1d(-1, 1), y_range=Range1d(-1, 1),
            x_axis_label="x (arcsec)", y_axis_label="y (arcsec)",
        )  # fmt: skip
        img = fig.image_rgba(image="image", x="x", y="y", dw="dw", dh="dh", source=src["image"])
        fig.multi_line(
            xs="cx", ys="cy", source=src["critical"], line_color=CRITICAL_COLOR, line_width=2,
            legend_label="critical curves",
        )  # fmt: skip
        subs = fig.scatter(
            x="x", y="y", size="size", source=src["subhalo"], marker="circle",
            fill_alpha=0.0, line_color=SUBHALO_COLOR, line_width=1.5,
            legend_label="subhaloes / vortex",
        )  # fmt: skip
        fig.add_tools(
            HoverTool(
                renderers=[img], tooltips=[("x, y", "$x{0.00}, $y{0.00}"), ("e⁻/s", "@counts")]
            ),
            HoverTool(
                renderers=[subs],
                tooltips=[("mass (M☉)", "@mass{%.2e}")],
                formatters={"@mass": "printf"},
            ),
        )
        fig.legend.location = "top_left"
        fig.legend.background_fill_alpha = 0.4
        fig.legend.label_text_font_size = "9pt"
        fig.legend.click_policy = "hide"
        return fig

    def _source_figure(self):
        src = self.sources
        fig = figure(
            title="Source plane: caustics and the source", frame_width=SMALL_FRAME,
            frame_height=SMALL_FRAME, tools=TOOLS, x_range=Range1d(-1, 1), y_range=Range1d(-1, 1),
            x_axis_label="β_x (arcsec)", y_axis_label="β_y (arcsec)",
        )  # fmt: skip
        fig.ellipse(
            x="x", y="y", width="w", height="h", source=src["source"], fill_color=SOURCE_COLOR,
            fill_alpha=0.35, line_color=SOURCE_COLOR, legend_label="source (R_sérsic)",
        )  # fmt: skip
        fig.multi_line(
            xs="kx", ys="ky", source=src["caustic"], line_color=CAUSTIC_COLOR, line_width=2,
            legend_label="caustics",
        )  # fmt: skip
        fig.line(
            x="x", y="y", source=src["cut"], line_color="#555555", line_dash="dashed",
            legend_label="cut",
        )  # fmt: skip
        fig.scatter(x="x", y="y", source=src["source"], marker="x", size=9, color="black")
        fig.legend.location = "top_left"
        fig.legend.background_fill_alpha = 0.5
        fig.legend.label_text_font_size = "8pt"
        return fig

    def _probs_figure(self):
        fig = figure(
            title="Classifier: class probabilities", frame_width=SMALL_FRAME, frame_height=150,
            x_range=FactorRange(*CLASSES), y_range=Range1d(0.0, 1.12), tools="",
            toolbar_location=None, y_axis_label="p",
        )  # fmt: skip
        src = self.sources["probs"]
        fig.vbar(x="cls", top="p", width=0.7, source=src, color="color")
        fig.text(
            x="cls", y="p", text="text", source=src, text_align="center",
            text_baseline="bottom", text_font_size="9pt", y_offset=-2,
        )  # fmt: skip
        return fig


# ---------------------------------------------------------------------------------------------
# Text: readout, timing, hints
# ---------------------------------------------------------------------------------------------

#: Style of the readout table.
READOUT_CSS = """
table.lens { border-collapse: collapse; font-size: 13px; width: 100%; }
table.lens td { padding: 1px 6px; border-bottom: 1px solid #e0e0e0; }
table.lens td.value { text-align: right; font-variant-numeric: tabular-nums; }
"""


def readout_rows(result: LensResult) -> list[tuple[str, str, str]]:
    """(quantity, value, unit) rows of what was drawn and measured for the image."""
    p = result.params
    rows = [
        ("σ<sub>v</sub> (SIS)", f"{p['velocity_dispersion']:.0f}", "km/s"),
        ("magnification", f"{p['magnification']:.1f}", ""),
        ("background rms", f"{p['background_rms']:.3g}", "e⁻/s"),
    ]
    cls = result.settings["substructure"]
    if cls == "cdm":
        rows += [
            ("subhaloes N", str(int(p["n_subhalo"])), ""),
            ("total subhalo mass", f"{p['subhalo_mass_total']:.2e}", "M☉"),
            ("heaviest subhalo", f"{p['subhalo_mass_max']:.2e}", "M☉"),
        ]
    elif cls == "vortex":
        rows += [
            ("vortex mass", f"{p['vortex_mass']:.2e}", "M☉"),
            ("vortex length", f"{p['vortex_length']:.2f}", "arcsec"),
        ]
    rows.append(("pixel", f"{result.pixel_scale:g}", "arcsec"))
    return rows


def readout_html(result: LensResult | None, error: str = "") -> str:
    """The readout (:func:`readout_rows`) as an HTML table, after ``error`` in bold if given."""
    head = f"<p><b>⚠ {html.escape(error)}</b> (showing the last good image)</p>" if error else ""
    if result is None:
        return head
    body = "".join(
        f"<tr><td>{n}</td><td class='value'>{v}</td><td>{u}</td></tr>"
        for n, v, u in readout_rows(result)
    )
    return f"{head}<table class='lens'>{body}</table>"


def timing_html(result: LensResult | None) -> str:
    """One line: the measured compute time of the image shown, and its parts (ms)."""
    if result is None:
        return ""
    t = result.seconds
    parts = [f"image {1e3 * t['image']:.0f}", f"curves {1e3 * t['curves']:.0f}"]
    if result.classifier:
        parts.append(f"classifier {1e3 * t['classifier']:.0f}")
    n = result.image.shape[0]
    return (
        f"<span style='color:#444'>update computed in <b>{1e3 * t['total']:.0f} ms</b> "
        f"({' · '.join(parts)} ms; {n}², {html.escape(result.settings['preset'])})</span>"
    )


def no_classifier_text(preset: str, commands: tuple[str, str]) -> str:
    """Markdown hint shown instead of the probabilities: no classifier for ``preset``, and the
    ``(dataset, train)`` commands that make one (:func:`~explorer.lensing_compute.
    train_commands`)."""
    data, train = commands
    return (
        f"**No classifier for the {preset} preset** in `assets/models/` or the runs folder. "
        f"Train one: `{train}` (on the images of `{data}`)."
    )


# ---------------------------------------------------------------------------------------------
# Widgets from the param definitions
# ---------------------------------------------------------------------------------------------


def lens_widgets(view: LensView) -> dict[str, pn.widgets.Widget]:
    """One widget per :data:`~explorer.lensing_compute.CONTROLS` entry, linked to ``view``
    (:func:`explorer.fieldlab_views.setting_widget`; a checkbox for switches), with the
    setting's doc as description."""
    out = {}
    for c in CONTROLS:
        p = view.param[c.name]
        if isinstance(p, param.Boolean):
            w = pn.widgets.Checkbox.from_param(p, **label(c.label))
        else:
            w = setting_widget(view, c)
            step = getattr(p, "step", None)
            if step and hasattr(w, "step") and not isinstance(w, pn.widgets.IntInput):
                w.step = step
        w.description = p.doc
        out[c.name] = w
    return out


def controls_column(widgets: dict) -> pn.Column:
    """The widgets stacked, button groups with their label above."""
    return pn.Column(*(labelled(w) for w in widgets.values()), sizing_mode="stretch_width")


# ---------------------------------------------------------------------------------------------
# Generated lenses
# ---------------------------------------------------------------------------------------------


def samples_figure(images: np.ndarray, title: str, columns: int = 4):
    """A grid of images ``(B, N, N)`` (e⁻ s⁻¹ per pixel, each coloured over its own range) in
    one Bokeh figure, in pixel units."""
    images = np.asarray(images, np.float32)
    b, n = len(images), images.shape[-1]
    cols = min(columns, b)
    rows = math.ceil(b / cols)
    gap = max(1, n // 16)
    data = {"image": [], "x": [], "y": [], "dw": [], "dh": []}
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        high = nice_ceil(float(np.percentile(img, 99.9)))
        data["image"].append(lens_rgba(img, high))
        data["x"].append(c * (n + gap))
        data["y"].append((rows - 1 - r) * (n + gap))
        data["dw"].append(n)
        data["dh"].append(n)
    w, h = cols * (n + gap) - gap, rows * (n + gap) - gap
    scale = min(128.0, 640.0 / cols) / n  # screen px per image pixel: tiles of ≤ 128 px
    fig = figure(
        title=title, frame_width=max(int(w * scale), 160), frame_height=int(h * scale),
        x_range=Range1d(0, w), y_range=Range1d(0, h), tools="save", toolbar_location=None,
    )  # fmt: skip
    fig.axis.visible = False
    fig.grid.visible = False
    fig.image_rgba(image="image", x="x", y="y", dw="dw", dh="dh", source=ColumnDataSource(data))
    return fig


def report_markdown(table: tuple[list[str], list[list[str]]] | None) -> str:
    """Markdown table of a generator's report numbers (header, rows), or a line saying there is
    no report."""
    if table is None:
        return "No `report.json` in the generator's run: no FID numbers yet."
    header, rows = table
    if not rows:
        return "The generator's `report.json` holds no numbers."
    lines = [header, ["---"] * len(header), *rows]
    table_md = "\n".join("| " + " | ".join(html.escape(str(c)) for c in r) + " |" for r in lines)
    return "FID of the generated images (from the run's `report.json`):\n\n" + table_md
