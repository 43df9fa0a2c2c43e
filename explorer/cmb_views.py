"""CMB page, the views: Mollweide B-mode maps (lensed, delensed, true unlensed, residual), the
binned BB spectra, the A_res and r readout, the status lines and the widgets.

As on the Lensing page (:mod:`explorer.lensing_views`), the figures are plain Bokeh figures over
``ColumnDataSource`` s built once (:class:`CMBFigures`); a new result only replaces their
columns, so the zoom survives. The four Mollweide panels share their ranges (zoom one, zoom all)
and one colour mapper, ± the 99.5 % |B| of the observed map rounded up
(:func:`explorer.fieldlab_frames.nice_ceil`), so the residual shows how much B is left. Each panel
is an image of the HEALPix map sampled at screen resolution over the visible part of the
Mollweide plane — the Sky page's rasterisation to the screen (:mod:`explorer.sky_views`: every
screen pixel looks up one HEALPix pixel with ``healpy.ang2pix``, datashader's idea done exactly),
computed once per visible range for all panels (:func:`screen_pixels`) and again when a pan or
zoom ends (:meth:`CMBFigures.resample`). The residual panel is delensed − true unlensed at the
same pixels.

The spectra are D_ℓ = ℓ(ℓ+1)C_ℓ/2π of the band powers of :class:`explorer.cmb_compute.
CMBResult` (µK², beamed maps) at the bin centres, on log axes; non-positive band powers (noise
scatter about zero) are not drawn.

Units: B in µK, D_ℓ in µK², noise in µK-arcmin, beam FWHM in arcmin, times in s.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np
import panel as pn
import param
from bokeh.events import RangesUpdate
from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LinearColorMapper, Range1d
from bokeh.plotting import figure
from holoviews.plotting.util import process_cmap

from explorer.cmb_compute import STAGES, CMBResult
from explorer.cmb_data import TRAIN_COMMAND, DelenserInfo, expected_wait
from explorer.fieldlab_frames import nice_ceil
from explorer.fieldlab_kinds import Control
from explorer.fieldlab_views import TOOLS, setting_widget, slider_range
from explorer.sky_views import X_MAX, Y_MAX, graticule, mollweide_inverse, positive
from explorer.widgets import label

#: Screen pixels (width, height) of one Mollweide panel (also the sampling of its image).
PANEL_FRAME = (440, 220)
#: The map panels, in display order (row by row), and their titles.
PANELS = {
    "lensed": "Lensed B (observed: lensed + beam + noise)",
    "delensed": "Delensed B",
    "unlensed": "True unlensed B (beamed)",
    "residual": "Residual B: delensed − true unlensed",
}
#: Colours of the maps (blue negative, red positive) and of the unobserved sky.
PALETTE = process_cmap("RdBu_r", 256)
SKY_GREY = "#d9d9d9"
#: Curves of the spectrum plot: key of ``CMBResult.bb`` → (legend, colour, dash, markers).
CURVES = {
    "lensed": ("lensed (observed, cross of 2 noise realisations)", "#525252", "solid", True),
    "network": ("delensed: network", "#d62728", "solid", True),
    "template": ("delensed: template (true φ)", "#2ca02c", "solid", True),
    "qe": ("delensed: QE (φ̂ from the maps)", "#9467bd", "solid", True),
    "qe_it": ("delensed: iterated QE (calibrated)", "#8c564b", "solid", True),
    "unlensed": ("true unlensed", "#1f77b4", "solid", True),
    "theory_lensing": ("theory: lensing BB × b²ℓ (CAMB)", "#000000", "dashed", False),
    "qe_residual": ("QE MV forecast residual × b²ℓ", "#9467bd", "dashed", False),
    "primordial": ("primordial r·T (theory)", "#ff7f0e", "dotted", False),
}
#: The Controls of the page's widgets (bounds and docs: engine.physics.cmb.CMBParams).
CONTROLS = (
    Control("r", "Tensor-to-scalar ratio r", "r", "", 3),
    Control("noise", "Noise (µK-arcmin, Q and U each)", "noise", "µK-arcmin", 1),
    Control("beam", "Beam FWHM (arcmin)", "beam", "arcmin", 1),
    Control("seed", "Seed", "seed"),
)
#: Style of the readout table.
READOUT_CSS = """
table.cmb { border-collapse: collapse; font-size: 13px; width: 100%; }
table.cmb th { text-align: left; padding: 1px 6px; border-bottom: 1px solid #999; }
table.cmb td { padding: 1px 6px; border-bottom: 1px solid #e0e0e0; }
table.cmb td.value { text-align: right; font-variant-numeric: tabular-nums; }
"""


# ---------------------------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapFrame:
    """What the map panels show: a result (None before the first) and the delensed map chosen
    (``"network"``, ``"template"``, ``"qe"`` or ``"qe_it"``)."""

    result: CMBResult | None = None
    method: str = "network"


#: The delensed maps the panels can show, in the order of the fallback.
DELENSERS = ("network", "template", "qe", "qe_it")


def method_names(result: CMBResult) -> dict[str, str]:
    """Method key → its name on the page (the readout's rows and the map titles)."""
    return {
        "none": "no delensing",
        "network": f"network {html.escape(result.delenser)}",
        "template": "template (true φ)",
        "qe": "QE (φ̂ from the maps)",
        "qe_it": "iterated QE (calibrated on simulations)",
    }


def delensed_map(result: CMBResult | None, method: str) -> str | None:
    """Key of the delensed map shown: ``method``'s when it has run, else the other delenser's,
    else None."""
    if result is None:
        return None
    for key in (method, *(k for k in DELENSERS if k != method)):
        if key in result.maps:
            return key
    return None


def panel_title(frame: MapFrame, panel: str) -> str:
    """Title of a map panel: what it shows, which delenser, or what it waits for."""
    r = frame.result
    if r is None:
        return f"{PANELS[panel]}: computing…"
    if panel in ("lensed", "unlensed"):
        extra = f" (r = {r.settings['r']:g})" if panel == "unlensed" else ""
        return PANELS[panel] + extra
    key = delensed_map(r, frame.method)
    if key is None:
        return f"{PANELS[panel]}: waiting for the {r.next_stage or 'delenser'}…"
    return f"{PANELS[panel]} — {method_names(r)[key]}"


def map_signature(frame: MapFrame) -> tuple:
    """What the map panels show of ``frame`` (titles and the maps' identities): the panels need
    new images only when it changes (not when a stage adds numbers only)."""
    r = frame.result
    keys = ("lensed", delensed_map(r, frame.method), "unlensed")
    maps = tuple(id(r.maps[k]) if r is not None and k in r.maps else None for k in keys)
    return tuple(panel_title(frame, p) for p in PANELS) + maps


def screen_pixels(nside: int, x_range=None, y_range=None, shape=PANEL_FRAME) -> tuple:
    """The HEALPix pixel (RING) under each screen pixel of the visible part of the Mollweide
    plane: ``(H, W) int64`` (−1 outside the sky; row 0 at the bottom, as Bokeh draws images)
    and the bounds (x0, y0, x1, y1) (:func:`explorer.sky_views.mollweide_inverse`)."""
    import healpy as hp

    x0, x1 = x_range if x_range is not None else (-X_MAX, X_MAX)
    y0, y1 = y_range if y_range is not None else (-Y_MAX, Y_MAX)
    w, h = shape
    xs = x0 + (np.arange(w) + 0.5) * (x1 - x0) / w
    ys = y0 + (np.arange(h) + 0.5) * (y1 - y0) / h
    lon, lat, inside = mollweide_inverse(xs[None, :], ys[:, None])
    pix = np.full(inside.shape, -1, dtype=np.int64)
    pix[inside] = hp.ang2pix(int(nside), lon[inside], lat[inside], lonlat=True)
    return pix, (float(x0), float(y0), float(x1), float(y1))


def panel_images(frame: MapFrame, x_range=None, y_range=None) -> dict:
    """Columns of the four map sources for the visible range: ``{panel: {"image": [(H, W)
    float32 µK, nan outside the sky and while the map is missing], "x", "y", "dw", "dh"}}``
    (pure, thread-safe)."""
    r = frame.result
    nside = r.settings["nside"] if r is not None else 1
    pix, (x0, y0, x1, y1) = screen_pixels(nside, x_range, y_range)
    seen = pix >= 0

    def look_up(key: str | None) -> np.ndarray:
        out = np.full(pix.shape, np.nan, dtype=np.float32)
        if r is not None and key in r.maps:
            out[seen] = r.maps[key][pix[seen]]
        return out

    delensed = look_up(delensed_map(r, frame.method))
    images = {"lensed": look_up("lensed"), "delensed": delensed, "unlensed": look_up("unlensed")}
    images["residual"] = delensed - images["unlensed"]
    return {
        p: {"image": [images[p]], "x": [x0], "y": [y0], "dw": [x1 - x0], "dh": [y1 - y0]}
        for p in PANELS
    }


def spectra_columns(result: CMBResult | None) -> dict:
    """Columns of the spectrum sources: ``{curve: {"ell": bin centres, "D_BB": D_ℓ µK²}}``
    (:data:`CURVES`; empty until its stage has run)."""
    out = {}
    for key in CURVES:
        if result is not None and key in result.bb:
            out[key] = {
                "ell": np.asarray(result.ell, float),
                "D_BB": dl(result.ell, result.bb[key]),
            }
        else:
            out[key] = {"ell": np.array([]), "D_BB": np.array([])}
    return out


def spectra_title(result: CMBResult | None) -> str:
    """Title of the spectrum plot, with the sky's settings."""
    title = "BB band powers (Δℓ = 20)"
    if result is not None:
        s = result.settings
        title += f": r = {s['r']:g}, {s['noise']:g} µK-arcmin, {s['beam']:g}′, seed {s['seed']}"
    return title


def dl(ell: np.ndarray, cl: np.ndarray) -> np.ndarray:
    """D_ℓ = ℓ(ℓ+1)C_ℓ/2π (µK² for C_ℓ in µK²), non-positive values nan (log axes)."""
    ell = np.asarray(ell, np.float64)
    return positive(ell * (ell + 1) * np.asarray(cl, np.float64) / (2 * math.pi))


class CMBFigures:
    """The Bokeh figures of the page, fed in place by :meth:`show`.

    Attributes
    ----------
    panels : dict of str → figure
        The Mollweide panels (:data:`PANELS`), sharing ranges and :attr:`mapper`.
    rows : list of list of figure
        The panels, two per row (the page lays them out; a Bokeh ``gridplot`` of them draws
        nothing inside a stretched Panel layout).
    spectra : figure
        The BB band powers (log axes).
    mapper : LinearColorMapper
    sources, curve_sources : dict of str → ColumnDataSource
    """

    def __init__(self):
        self.frame = MapFrame()
        self._sampled = (None, None)  # the ranges the images were sampled for
        self.x_range = Range1d(-X_MAX, X_MAX, bounds=(-X_MAX, X_MAX))
        self.y_range = Range1d(-Y_MAX, Y_MAX, bounds=(-Y_MAX, Y_MAX))
        self.mapper = LinearColorMapper(palette=PALETTE, low=-1.0, high=1.0, nan_color=(0, 0, 0, 0))
        columns = panel_images(self.frame)
        self.sources = {p: ColumnDataSource(columns[p]) for p in PANELS}
        self.panels = {p: self._panel(p, i % 2 == 1) for i, p in enumerate(PANELS)}
        names = list(PANELS)
        self.rows = [[self.panels[n] for n in names[:2]], [self.panels[n] for n in names[2:]]]
        self.curve_sources = {
            k: ColumnDataSource(v) for k, v in spectra_columns(None).items()
        }  # fmt: skip
        self.spectra = self._spectra_figure()

    def show(self, frame: MapFrame, images: dict | None = None) -> None:
        """Show ``frame``: its map images (``images`` from :func:`panel_images` for the current
        ranges, else computed here), titles, colour range, spectra."""
        self.frame = frame
        x, y = self._sampled = self._visible()
        for p, cols in (images or panel_images(frame, x, y)).items():
            self.sources[p].data = cols
        for p, fig in self.panels.items():
            title = panel_title(frame, p)
            if fig.title.text != title:
                fig.title.text = title
        clim = nice_ceil(frame.result.b_max) if frame.result is not None else 1.0
        if (self.mapper.low, self.mapper.high) != (-clim, clim):
            self.mapper.update(low=-clim, high=clim)
        self.show_spectra(frame.result)

    def show_spectra(self, result: CMBResult | None) -> None:
        """Replace the spectrum columns and title by those of ``result``."""
        for k, cols in spectra_columns(result).items():
            self.curve_sources[k].data = cols
        iterated = result is not None and "qe_it" in result.stages
        for item in self.spectra.legend[0].items:  # the iterated QE's only where it runs
            if item.label.value == CURVES["qe_it"][0] and item.visible != iterated:
                item.visible = iterated
        title = spectra_title(result)
        if self.spectra.title.text != title:
            self.spectra.title.text = title

    def resample(self, *_event) -> None:
        """Sample the maps again for the visible ranges (after a pan or zoom; nothing when they
        did not change since the last sampling)."""
        x, y = self._visible()
        if (x, y) == self._sampled:
            return
        self._sampled = (x, y)
        for p, cols in panel_images(self.frame, x, y).items():
            self.sources[p].data = cols

    def _visible(self) -> tuple:
        x = (self.x_range.start, self.x_range.end)
        y = (self.y_range.start, self.y_range.end)
        full = x == (-X_MAX, X_MAX) and y == (-Y_MAX, Y_MAX)
        return (None, None) if full else (x, y)

    def _panel(self, panel: str, colorbar: bool):
        w, h = PANEL_FRAME
        fig = figure(
            title=PANELS[panel], frame_width=w, frame_height=h, x_range=self.x_range,
            y_range=self.y_range, tools=TOOLS, active_scroll="wheel_zoom",
            toolbar_location="above",
        )  # fmt: skip
        fig.toolbar.autohide = True
        fig.axis.visible = False
        fig.grid.visible = False
        fig.title.text_font_size = "10pt"
        a = np.linspace(0, 2 * math.pi, 181)
        fig.patch(X_MAX * np.cos(a), Y_MAX * np.sin(a), color=SKY_GREY, line_alpha=0)
        img = fig.image(
            image="image", x="x", y="y", dw="dw", dh="dh", color_mapper=self.mapper,
            source=self.sources[panel],
        )  # fmt: skip
        paths = graticule()
        fig.multi_line(
            [p[:, 0] for p in paths], [p[:, 1] for p in paths], color="#525252", alpha=0.3,
            line_width=0.7,
        )  # fmt: skip
        fig.add_tools(HoverTool(renderers=[img], tooltips=[("B (µK)", "@image{0.000}")]))
        fig.on_event(RangesUpdate, self.resample)
        if colorbar:
            bar = ColorBar(color_mapper=self.mapper, width=12, title="B (µK)", title_standoff=6)
            fig.add_layout(bar, "right")
        return fig

    def _spectra_figure(self):
        fig = figure(
            title=spectra_title(None), frame_width=560, frame_height=330, x_axis_type="log",
            y_axis_type="log", tools=TOOLS, x_axis_label="ℓ (bin centre)",
            y_axis_label="ℓ(ℓ+1)C_ℓ^BB/2π (µK²)",
        )  # fmt: skip
        hovers = []
        for key, (legend, color, dash, markers) in CURVES.items():
            src = self.curve_sources[key]
            line = fig.line(
                "ell", "D_BB", source=src, color=color, line_dash=dash, line_width=2,
                legend_label=legend,
            )  # fmt: skip
            hovers.append(line)
            if markers:
                fig.scatter("ell", "D_BB", source=src, color=color, size=5, legend_label=legend)
        fig.add_tools(
            HoverTool(renderers=hovers, tooltips=[("ℓ", "@ell{0}"), ("D_ℓ (µK²)", "@D_BB{0.00e}")])
        )
        fig.legend.location = "top_left"
        fig.legend.label_text_font_size = "8pt"
        fig.legend.background_fill_alpha = 0.6
        fig.legend.click_policy = "hide"
        fig.add_layout(fig.legend[0], "right")
        return fig


# ---------------------------------------------------------------------------------------------
# Text: readout, status, hints
# ---------------------------------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}f}"


def readout_rows(result: CMBResult) -> list[tuple[str, str, str, str]]:
    """(method, A_res, A_res with its own noise counted, r̂ ± σ(r)) rows: no delensing, the
    network, the template, the QE, the iterated QE (where calibrated), the QE forecast ("…" while
    a stage is to run, "—" where there is no such number)."""
    rows = []
    for m, name in method_names(result).items():
        if (m == "network" and not result.delenser) or (m == "qe_it" and m not in result.stages):
            continue
        pending = m not in result.a_res and not result.complete
        a = "…" if pending else _fmt(result.a_res.get(m))
        own = "…" if pending else _fmt(result.a_res_own.get(m))
        fit = result.fits.get(m)
        r = "…" if pending else f"{fit['r_hat']:.4f} ± {fit['sigma_r']:.4f}" if fit else "—"
        rows.append((name, a, own, r))
    qe = _fmt(result.a_res.get("qe_mv"))
    rows.append(("QE forecast (MV, perfect E)", qe, qe, "—"))
    return rows


def readout_html(result: CMBResult | None, error: str = "", info: DelenserInfo | None = None):
    """The readout: ``error`` in bold if given, the A_res and r̂ ± σ(r) table
    (:func:`readout_rows`), the true r and the network's evaluated A_res from its
    ``report.json``."""
    head = f"<p><b>⚠ {html.escape(error)}</b> (showing the last good sky)</p>" if error else ""
    if result is None:
        return head
    lo, hi = result.ell_range
    body = "".join(
        f"<tr><td>{n}</td><td class='value'>{a}</td><td class='value'>{o}</td>"
        f"<td class='value'>{r}</td></tr>"
        for n, a, o, r in readout_rows(result)
    )
    table = (
        f"<table class='cmb'><tr><th>method</th><th>A<sub>res</sub> ({lo} ≤ ℓ ≤ {hi})</th>"
        "<th title='auto spectrum of delensed − own noise − unlensed: the template error that "
        "follows the noise counted, as a forecast counts it'>own noise counted</th>"
        f"<th>r̂ ± σ(r)</th></tr>{body}</table>"
    )
    s = result.settings
    foot = (
        f"<p style='margin:4px 0'>True r = {s['r']:g}; nside {s['nside']}, full sky; r̂ from "
        "the cross spectrum of the two delensed noise realisations.</p>"
    )
    rep = (info.report if info is not None and info.name == result.delenser else None) or {}
    if rep.get("a_res"):
        parts = ", ".join(f"{html.escape(m)} {v:.3f}" for m, v in rep["a_res"].items())
        k = rep.get("n_skies")
        n = f" on {k} test sk{'y' if k == 1 else 'ies'}" if k else ""
        foot += f"<p style='margin:4px 0'>Evaluated{n} (report.json): A<sub>res</sub> {parts}.</p>"
    notes = "".join(f"<p style='margin:2px 0'>⚠ {html.escape(n)}</p>" for n in result.notes)
    return head + table + foot + notes


def stage_line(result: CMBResult | None, stage: str, nside: int, network: bool) -> str:
    """The status while ``stage`` runs: which stage of how many, what it does, and the expected
    wait until it and until the whole update is done (:func:`~explorer.cmb_data.
    expected_wait`)."""
    wait = expected_wait(nside, network, result is not None and "qe_it" in result.stages)
    stages = list(wait)
    i = stages.index(stage) if stage in stages else 0
    before = wait[stages[i - 1]] if i else 0.0
    done = (result.seconds.get("total", 0.0)) if result is not None else 0.0
    this = max(0.0, wait[stage] - before)
    rest = max(0.0, wait[stages[-1]] - before)
    text = (
        f"⏳ updating, step {i + 1}/{len(stages)}: {STAGES[stage]} (≈ {this:.0f} s; all "
        f"numbers in ≈ {rest:.0f} s)…"
    )
    if done and i:
        text += f" {done:.1f} s so far"
    return f"<span style='color:#b35806'>{html.escape(text)}</span>"


def timing_html(result: CMBResult | None, cached: bool = False) -> str:
    """One line: the measured time of the update shown and of its stages (or that it came from
    the cache)."""
    if result is None:
        return ""
    t = result.seconds
    parts = " · ".join(f"{s} {t[s]:.1f}" for s in result.done if s in t)
    where = "from the cache; computed" if cached else "updated"
    return (
        f"<span style='color:#444'>{where} in <b>{t.get('total', 0.0):.1f} s</b> ({parts} s; "
        f"nside {result.settings['nside']})</span>"
    )


def wait_text(nside: int, network: bool, qe_it: bool = False) -> str:
    """Markdown: the expected wait of an update at ``nside`` (:func:`~explorer.cmb_data.
    expected_wait`; ``qe_it``: with the iterated QE's stage)."""
    wait = expected_wait(nside, network, qe_it)
    sky = wait["sky"]
    line = f"**Expected wait** at nside {nside}: the sky in ≈ {sky:.0f} s"
    if network:
        line += f", the network's maps at ≈ {wait['network']:.0f} s"
    line += (
        f", every number at ≈ {list(wait.values())[-1]:.0f} s (the last update measured in this "
        "server, else timings of a 2-core machine; settings seen before come from the cache "
        "at once)."
    )
    return line


def no_delenser_text(nside: int) -> str:
    """The one line shown without a delensing network: how to train one, and what the page
    shows meanwhile."""
    return (
        f"**No delensing network found**: train one with `{TRAIN_COMMAND}`. Meanwhile: the "
        f"template and QE baselines and the QE forecast at nside {nside}."
    )


# ---------------------------------------------------------------------------------------------
# Widgets from the param definitions
# ---------------------------------------------------------------------------------------------


def cmb_widgets(settings: param.Parameterized) -> dict[str, pn.widgets.Widget]:
    """One widget per :data:`CONTROLS` entry, linked to ``settings`` (a
    :class:`engine.physics.cmb.CMBParams` with the page's soft bounds): sliders over the soft
    bounds that set the setting when released (an update takes seconds), the seed a number box
    (:func:`explorer.fieldlab_views.setting_widget`); the setting's doc as description."""
    out = {}
    for c in CONTROLS:
        p = settings.param[c.name]
        rng = slider_range(p) if isinstance(p, param.Number) else None
        if rng is not None and not isinstance(p, param.Integer):
            fmt = {"format": "0." + "0" * c.digits} if c.digits else {}
            w = pn.widgets.FloatSlider.from_param(
                p, start=rng[0], end=rng[1], step=p.step or 0.01, throttled=True,
                sizing_mode="stretch_width", **fmt, **label(c.label),
            )  # fmt: skip
        else:
            w = setting_widget(settings, c)
        w.description = p.doc
        out[c.name] = w
    return out


#: The page's explanation, shown under the plots (Markdown).
ABOUT = """
### What you are looking at

**Sky.** One full-sky CMB polarisation sky (`engine.physics.cmb`): Gaussian E, B (r) and lensing
potential φ from CAMB spectra, lensed on the sphere by lenspyx (Reinecke, Belkner & Carron 2023),
smoothed by a Gaussian beam and observed with white noise in Q and U. Lensing turns a little of
the large E signal into B: at r ≲ 0.01 these *lensing B modes* hide the primordial B of
gravitational waves, and *delensing* removes them.

**Maps.** The B modes of Q/U (`healpy.map2alm_spin`, the B a<sub>ℓm</sub> shown as a scalar
map, µK) in Mollweide: the observed lensed sky, the sky delensed by the network (or the
template), the true unlensed sky (the primordial B at this r, zero at r = 0) and the residual
delensed − unlensed. All four share the colour range; zoom one to zoom all.

**Delensers.** *Network*: a HEALPix U-Net trained to map the observed Q/U to the unlensed Q/U
(`python -m engine train --preset delens512`; skies from
`python -m engine sky --kind cmb --nside 512 --noise 2 --beam 5 --r 0.01 --count 40 --seed 1
--out data/cmb512.zarr`). *Template*: the Wiener-filtered observed E lensed by the **true** φ,
its B subtracted — what a φ-based method achieves with this E. *QE forecast*: the residual after
subtracting the lensing B of a minimum-variance quadratic-estimator φ (Hu & Okamoto 2002; N₀ by
pytempura) with a perfect E.

**Numbers.** A<sub>res</sub> = Σ C<sub>ℓ</sub><sup>BB</sup>[(d₁ − u), (d₂ − u)] /
Σ C<sub>ℓ</sub><sup>BB</sup>[lensed − u] over the ℓ range: d₁, d₂ the delensed maps of two
observations with independent noise (no noise bias), u the true unlensed sky; 1 without
delensing, 0 for perfect delensing. The cross spectrum does not count what follows the noise
realisation (for a template method, the instrument-noise part of its φ̂ error); the column
*own noise counted* does: ½ Σ<sub>k</sub> C<sub>ℓ</sub><sup>BB</sup>[d<sub>k</sub> − n<sub>k</sub> − u]
over the same denominator, n<sub>k</sub> the noise of observation k — the number a forecast
predicts (for a network it also counts any noise the network removed). r̂ ± σ(r) fits C<sub>b</sub> = r T<sub>b</sub> + R<sub>b</sub>
to the cross spectrum of the two delensed observations (Knox variance with the measured noise);
R<sub>b</sub> is CAMB's lensing BB times this sky's A<sub>res</sub> per bin.
"""
