"""Field lab: a live map of the projected density contrast, its P(k) against theory, its PDF.

The state is one :class:`engine.params.FieldParams` (bounds, defaults and docs defined once in the
engine); :class:`FieldLab` watches it, recomputes with the pure function :func:`compute` and feeds
the result through one ``hv.streams.Pipe`` into three ``hv.DynamicMap`` views, so the user's zoom
survives parameter changes. Slider moves are coalesced (:class:`Coalescer`): the view follows a
moving slider live but never queues more than one pending update.

Units: lengths in comoving Mpc/h, k in h/Mpc, 2D P(k) in (Mpc/h)², δ dimensionless.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import holoviews as hv
import numpy as np
import panel as pn
import param
import torch

from engine import fields, stats
from engine.params import ConfigError, FieldParams, to_dict
from explorer.widgets import label, look

hv.extension("bokeh", logo=False)  # registers hv.opts for the Bokeh backend (idempotent)

#: Map sizes offered in the size selector (pixels per side).
SIZES = (64, 128, 256, 512)
#: Maps with more pixels per side than this are rasterized by datashader to the screen.
RASTERIZE_ABOVE = 256
#: k range of the smooth theory curve and of the P(k) plot's x axis, h/Mpc.
K_PLOT = (2e-3, 10.0)
#: y range of the P(k) plot, (Mpc/h)².
P_PLOT = (1e-3, 3e4)
#: CMB temperature in K (pyccl's default), for k_eq of Eisenstein & Hu (1998), eq. (3).
T_CMB = 2.7255

# Labelled dimensions shared by all plots (axis labels carry the units).
DIM_X = hv.Dimension("x", label="x", unit="Mpc/h")
DIM_Y = hv.Dimension("y", label="y", unit="Mpc/h")
DIM_K = hv.Dimension("k", label="k", unit="h/Mpc")
DIM_P = hv.Dimension("P", label="P(k)", unit="(Mpc/h)²")
DIM_DELTA = hv.Dimension("delta", label="δ")
DIM_PDF = hv.Dimension("pdf", label="p(δ)")


def k_equality(omega_m: float, h: float) -> float:
    """Wavenumber of matter–radiation equality in h/Mpc, k_eq = 0.0746 Ω_m h Θ₂.₇⁻² (EH98 eq. 3).

    The turnover of the linear P(k) sits near k_eq; it moves to larger k as Ω_m h grows.
    """
    return 7.46e-2 * omega_m * h / (T_CMB / 2.7) ** 2


@dataclass(frozen=True, repr=False)
class FieldLabResult:
    """Everything the field-lab views draw, as numpy arrays (one seeded map).

    Attributes
    ----------
    settings : dict
        The :class:`FieldParams` settings the map was made with (plain values).
    x : ndarray (N,)
        Pixel centres along x and y, Mpc/h.
    delta : ndarray (N, N) float32
        Density contrast δ of the projected slab (dimensionless), y along axis 0.
    k, pk : ndarray (K,)
        Mean |k| per bin (h/Mpc) and measured P(k) of the map ((Mpc/h)²; non-positive → nan).
    pk_expected, pk_sigma : ndarray (K,)
        Theory averaged over the same modes (eq. 2 of :mod:`engine.fields`) and its Gaussian
        1σ scatter P·√(2/n_modes), (Mpc/h)².
    k_theory, pk_theory : ndarray (M,)
        Smooth theory curve on log-spaced k in :data:`K_PLOT`, h/Mpc and (Mpc/h)².
    pdf_delta, pdf_density : ndarray (B,)
        Pixel-PDF bin centres (δ) and probability density (1/δ).
    sigma_delta : float
        Measured standard deviation of δ per pixel.
    k_eq : float
        Matter–radiation equality wavenumber, h/Mpc (:func:`k_equality`).
    noise_floor : float
        White-noise level σ_n²(L/N)² in (Mpc/h)².
    seconds : float
        Wall time of the computation, s.
    """

    settings: dict
    x: np.ndarray
    delta: np.ndarray
    k: np.ndarray
    pk: np.ndarray
    pk_expected: np.ndarray
    pk_sigma: np.ndarray
    k_theory: np.ndarray
    pk_theory: np.ndarray
    pdf_delta: np.ndarray
    pdf_density: np.ndarray
    sigma_delta: float
    k_eq: float
    noise_floor: float
    seconds: float = field(default=0.0, compare=False)

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"FieldLabResult(kind={s['kind']!r}, size={s['size']}, omega_m={s['omega_m']:.3f}, "
            f"sigma8={s['sigma8']:.3f}, seed={s['seed']}, sigma_delta={self.sigma_delta:.3f})"
        )


def compute(settings: FieldParams, pdf_bins: int = 80) -> FieldLabResult:
    """Generate one seeded map on the CPU and measure it: the pure update of the field lab.

    Parameters
    ----------
    settings : FieldParams
        omega_m, sigma8, kind, size N, box_size L (Mpc/h), thickness Δ (Mpc/h), redshift,
        smoothing σ_s (Mpc/h), noise σ_n (per pixel), seed.
    pdf_bins : int
        Histogram bins of the pixel PDF (over the 0.1–99.9 percentile range of δ).

    Returns
    -------
    FieldLabResult

    Raises
    ------
    ConfigError
        Settings the generator rejects (e.g. a lognormal target with ξ ≤ −1).
    """
    t0 = time.perf_counter()
    s = settings
    om = torch.tensor([s.omega_m], dtype=torch.float64)
    s8 = torch.tensor([s.sigma8], dtype=torch.float64)
    gen = torch.Generator().manual_seed(int(s.seed))
    delta = fields.generate_maps(s, om, s8, gen, device="cpu")[0]
    measured = stats.power_spectrum(delta, s.box_size)
    expected = fields.binned_theory(s, s.omega_m, s.sigma8)
    k_theory = np.geomspace(*K_PLOT, 300)
    pk_theory = fields.theory_power(s, torch.from_numpy(k_theory), s.omega_m, s.sigma8).numpy()
    d = delta.numpy()
    lo, hi = np.percentile(d, [0.1, 99.9])
    centers, density = stats.pixel_pdf(delta, bins=pdf_bins, value_range=(float(lo), float(hi)))
    pk = measured.power.numpy()
    pk_expected = expected.power.numpy()
    return FieldLabResult(
        settings=to_dict(s),
        x=(np.arange(s.size) + 0.5) * s.box_size / s.size,
        delta=d,
        k=measured.k.numpy(),
        pk=np.where(pk > 0, pk, np.nan),
        pk_expected=pk_expected,
        pk_sigma=pk_expected * np.sqrt(2.0 / expected.n_modes.numpy()),
        k_theory=k_theory,
        pk_theory=np.where(pk_theory > 0, pk_theory, np.nan),
        pdf_delta=centers,
        pdf_density=density,
        sigma_delta=float(d.std()),
        k_eq=k_equality(s.omega_m, s.h),
        noise_floor=s.noise**2 * (s.box_size / s.size) ** 2,
        seconds=time.perf_counter() - t0,
    )


def warm(settings: FieldParams | None = None) -> float:
    """Build the theory tables (pyccl, ~1–2 s, once per process) with one update; returns seconds."""
    t0 = time.perf_counter()
    compute(settings or FieldParams())
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Presentation helpers (pure: result/settings in, HoloViews elements or text out)
# ---------------------------------------------------------------------------------------------


def map_element(result: FieldLabResult) -> hv.Image:
    """The δ map as an ``hv.Image`` in Mpc/h, colour range symmetric at the 99.5 % |δ| level."""
    s = result.settings
    a = float(np.percentile(np.abs(result.delta), 99.5)) or 1.0
    vdim = DIM_DELTA.clone(range=(-a, a))
    return hv.Image(
        result.delta,
        bounds=(0, 0, s["box_size"], s["box_size"]),
        kdims=[DIM_X, DIM_Y],
        vdims=[vdim],
    )


def power_overlay(result: FieldLabResult) -> hv.Overlay:
    """Measured P(k) against theory: the expected band (±1σ), the smooth curve, k_eq, noise floor."""
    band = hv.Area(
        (
            result.k,
            np.maximum(result.pk_expected - result.pk_sigma, 1e-3 * result.pk_expected),
            result.pk_expected + result.pk_sigma,
        ),
        kdims=[DIM_K],
        vdims=[DIM_P, "P2"],
        label="expected ±1σ (same modes)",
    )
    theory = hv.Curve(
        (result.k_theory, result.pk_theory), DIM_K, DIM_P, label="linear theory"
    ).opts(color="#08519c", line_width=2)
    measured = hv.Scatter((result.k, result.pk), DIM_K, DIM_P, label="measured")
    # Always the same layers (a DynamicMap keeps the structure of its first frame): without
    # noise the floor is all-NaN and draws nothing.
    floor = result.noise_floor if result.noise_floor > 0 else np.nan
    noise = hv.Curve(
        (list(K_PLOT), [floor, floor]), DIM_K, DIM_P, label="noise floor σₙ²(L/N)²"
    ).opts(color="#31a354", line_dash="dotted", line_width=2)
    keq = hv.VLine(result.k_eq)
    keq_label = hv.Text(result.k_eq * 1.08, P_PLOT[1] / 3, "k_eq", halign="left")
    return hv.Overlay([band, theory, noise, measured, keq, keq_label])


def pdf_overlay(result: FieldLabResult) -> hv.Overlay:
    """Pixel PDF of δ with a Gaussian of the same variance for reference."""
    sigma = result.sigma_delta or 1.0
    x = result.pdf_delta
    gauss = np.exp(-0.5 * (x / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return hv.Overlay(
        [
            hv.Histogram((x, result.pdf_density), kdims=[DIM_DELTA], vdims=[DIM_PDF], label="map"),
            hv.Curve((x, gauss), DIM_DELTA, DIM_PDF, label="Gaussian, same σ"),
        ]
    )


def parameter_table(settings: FieldParams, result: FieldLabResult | None = None) -> str:
    """Markdown table of the current settings (and measured σ_δ, k_eq) with their units."""
    s = settings
    rows = [
        ("Ω<sub>m</sub>", f"{s.omega_m:.3f}", "–"),
        ("σ<sub>8</sub>", f"{s.sigma8:.3f}", "–"),
        ("smoothing σ<sub>s</sub>", f"{s.smoothing:.2f}", "Mpc/h"),
        ("noise σ<sub>n</sub>", f"{s.noise:.3f}", "δ per pixel"),
        ("kind", s.kind, ""),
        ("map size N", f"{s.size}²", "pixels"),
        ("box L", f"{s.box_size:g}", "Mpc/h"),
        ("pixel L/N", f"{s.box_size / s.size:.3g}", "Mpc/h"),
        ("slab Δ", f"{s.thickness:g}", "Mpc/h"),
        ("redshift", f"{s.redshift:g}", ""),
        ("h", f"{s.h:.4f}", "–"),
        ("seed", str(s.seed), ""),
    ]
    if result is not None:
        rows += [
            ("k<sub>eq</sub>", f"{result.k_eq:.4f}", "h/Mpc"),
            ("measured σ<sub>δ</sub>", f"{result.sigma_delta:.3f}", "–"),
            ("update time", f"{1e3 * result.seconds:.0f}", "ms"),
        ]
    lines = ["| setting | value | unit |", "|:--|--:|:--|"]
    lines += [f"| {name} | {value} | {unit} |" for name, value, unit in rows]
    return "\n".join(lines)


EXPLANATION = """
### What you are looking at

**Map.** The density contrast δ = ρ/ρ̄ − 1 of a slab of thickness Δ, projected along the line
of sight from a linear (Gaussian, or lognormal) matter density field, on a periodic square of
side L. Red is overdense, blue underdense.

**P(k).** Its measured power spectrum (dots) against the theory for the same modes (band: the
expected value ± the 1σ cosmic-variance scatter √(2/n<sub>modes</sub>)) and the smooth curve

P<sub>map</sub>(k) = P<sub>2D</sub>(k) e<sup>−k²σ<sub>s</sub>²</sup> + σ<sub>n</sub>²(L/N)²,
&nbsp; P<sub>2D</sub>(k) = ∫ dk<sub>z</sub>/2π P<sub>3D</sub>(√(k²+k<sub>z</sub>²)) sinc²(k<sub>z</sub>Δ/2).

* **Ω<sub>m</sub> changes the shape** of P(k): the turnover sits at the scale of
  matter–radiation equality, k<sub>eq</sub> ∝ Ω<sub>m</sub>h (dashed line), which moves right as
  Ω<sub>m</sub> grows, tilting the spectrum.
* **σ<sub>8</sub> changes the amplitude**: P ∝ σ<sub>8</sub>², the whole curve moves up or down.
* **Smoothing** with a Gaussian of σ<sub>s</sub> (Mpc/h) suppresses small scales by
  e<sup>−k²σ<sub>s</sub>²</sup>.
* **Noise** of σ<sub>n</sub> per pixel adds a flat floor σ<sub>n</sub>²(L/N)².

Points stop at the Nyquist wavenumber πN/L; the lowest is the fundamental 2π/L.

**PDF.** The one-point distribution of δ: Gaussian for `grf`; skewed with a long tail to high
densities and δ > −1 for `lognormal`.
"""


# ---------------------------------------------------------------------------------------------
# Coalescing of updates
# ---------------------------------------------------------------------------------------------


class Coalescer:
    """Run ``func`` after a burst of requests, at most one pending run at a time.

    In a served session (a Bokeh document is given) :meth:`request` schedules ``func`` on the
    document's event loop unless a run is already pending; requests arriving meanwhile are folded
    into it. The wait before a run is ``delay`` seconds, or as long as the previous run took if
    that was longer, so the server spends at most about half its time redrawing and keeps
    reading slider messages in between: a slider dragged faster than the view can redraw updates
    the view live but never piles up work. Without a document (scripts, tests) ``func`` runs at
    once.
    """

    def __init__(self, func: Callable[[], None], doc=None, delay: float = 0.1):
        self.func, self.doc, self.delay = func, doc, delay
        self._pending = False
        self._last_run = 0.0  # seconds the previous run took

    def request(self, *_events) -> None:
        """Ask for a run of ``func`` (extra arguments, e.g. param events, are ignored)."""
        if self.doc is None:
            self.func()
            return
        if not self._pending:
            self._pending = True
            wait = max(self.delay, self._last_run)
            self.doc.add_timeout_callback(self._run, int(1000 * wait))

    def _run(self) -> None:
        self._pending = False
        t0 = time.perf_counter()
        try:
            self.func()
        finally:
            self._last_run = time.perf_counter() - t0


def _labelled(widget: pn.widgets.Widget) -> pn.viewable.Viewable:
    """Button groups show no label of their own: put their name above them."""
    if not isinstance(widget, pn.widgets.RadioButtonGroup):
        return widget
    title = pn.pane.HTML(f"<label>{widget.name}</label>", margin=(5, 10, 0, 10))
    return pn.Column(title, widget, sizing_mode="stretch_width", margin=0)


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

#: Settings the field lab offers widgets for, in display order.
CONTROLS = ("omega_m", "sigma8", "smoothing", "noise", "seed", "size", "kind")


class FieldLab(pn.viewable.Viewer):
    """Field-lab page: widgets over a :class:`FieldParams`, live map, P(k) and PDF views.

    ``settings`` holds the state; every change of a setting recomputes :attr:`result` with
    :func:`compute` (coalesced in a served session), and the views redraw from it.
    """

    settings = param.ClassSelector(class_=FieldParams, doc="Map settings (the page's state).")
    result = param.ClassSelector(
        class_=FieldLabResult, allow_None=True, doc="Latest computed map and statistics."
    )
    error = param.String("", doc="Message of the last failed update ('' when it succeeded).")
    large = param.Boolean(False, doc="True when the map is rasterized (size > RASTERIZE_ABOVE).")

    def __init__(self, settings: FieldParams | None = None, doc=None, **params):
        super().__init__(settings=settings or FieldParams(), **params)
        self._pipe = hv.streams.Pipe(data=None)
        self._zoom: tuple | None = None  # (x_range, y_range) of the map view, Mpc/h
        self._coalescer = Coalescer(self.update, doc=doc)
        self.settings.param.watch(
            self._coalescer.request, [n for n in FieldParams.param if n != "name"]
        )
        self.update()

    # -- state -------------------------------------------------------------------------------

    def compute(self) -> FieldLabResult:
        """:func:`compute` for the current settings (pure; does not touch the views)."""
        return compute(self.settings)

    def update(self) -> None:
        """Recompute :attr:`result` from the settings and push it to the views."""
        try:
            result = self.compute()
        except ConfigError as exc:
            self.error = str(exc)
            return
        self.param.update(result=result, error="", large=result.settings["size"] > RASTERIZE_ABOVE)
        self._pipe.send(result)

    # -- widgets -----------------------------------------------------------------------------

    def widgets(self) -> dict[str, pn.widgets.Widget]:
        """One widget per setting in :data:`CONTROLS`, generated from the FieldParams parameters."""
        p = self.settings.param

        def slider(name: str, text: str, fmt: str) -> pn.widgets.FloatSlider:
            soft = p[name].softbounds
            extra = {"start": soft[0], "end": soft[1]} if soft else {}
            return pn.widgets.FloatSlider.from_param(
                p[name], **label(text), format=fmt, sizing_mode="stretch_width", **extra
            )

        def buttons(name: str, text: str, **kw) -> pn.widgets.RadioButtonGroup:
            return pn.widgets.RadioButtonGroup.from_param(
                p[name],
                **label(text),
                **look("primary", "outline"),
                sizing_mode="stretch_width",
                **kw,
            )

        return {
            "omega_m": slider("omega_m", "Ωₘ  matter density", "0.00"),
            "sigma8": slider("sigma8", "σ₈  amplitude", "0.00"),
            "smoothing": slider("smoothing", "Smoothing σₛ (Mpc/h)", "0.0"),
            "noise": slider("noise", "Noise σₙ (δ per pixel)", "0.00"),
            # end=None: the 2**62 bound is checked by param; JavaScript numbers stop at 2**53.
            "seed": pn.widgets.IntInput.from_param(
                p.seed, **label("Seed"), end=None, sizing_mode="stretch_width"
            ),
            "size": buttons("size", "Map size N (pixels)", options=list(SIZES)),
            "kind": buttons("kind", "Field kind"),
        }

    # -- views -------------------------------------------------------------------------------

    def map_view(self, large: bool) -> hv.DynamicMap:
        """The map; datashader-rasterized to screen resolution when ``large``.

        Parameter changes keep the zoom (``framewise=False``); a new view made when the map
        crosses the rasterize threshold starts at the zoom of the previous one.
        """
        dmap = hv.DynamicMap(self._map, streams=[self._pipe])
        if large:
            # imported here: datashader takes ~1 s to import and small maps never need it
            from holoviews.operation.datashader import rasterize

            dmap = rasterize(dmap)
        zoom = dict(zip(("xlim", "ylim"), self._zoom, strict=True)) if self._zoom else {}
        dmap = dmap.opts(
            hv.opts.Image(
                cmap="RdBu_r",
                colorbar=True,
                framewise=False,
                frame_width=380,
                frame_height=380,
                data_aspect=1,
                tools=["hover"],
                title="Density contrast δ",
                active_tools=["wheel_zoom"],
                colorbar_opts={"title": "δ"},
                **zoom,
            )
        )
        hv.streams.RangeXY(source=dmap).add_subscriber(self._remember_zoom)
        return dmap

    def _remember_zoom(self, x_range=None, y_range=None) -> None:
        if x_range is not None and y_range is not None:
            self._zoom = (tuple(x_range), tuple(y_range))

    def power_view(self) -> hv.DynamicMap:
        """P(k) of the map and the theory, log-log, fixed axes so zoom and comparison persist."""
        return hv.DynamicMap(self._power, streams=[self._pipe]).opts(
            hv.opts.Overlay(
                logx=True,
                logy=True,
                xlim=K_PLOT,
                ylim=P_PLOT,
                framewise=False,
                frame_width=420,
                frame_height=290,
                legend_position="bottom_left",
                title="Power spectrum P(k)",
                active_tools=["wheel_zoom"],
            ),
            hv.opts.Area(color="#9ecae1", alpha=0.6, line_alpha=0),
            hv.opts.Scatter(color="#d62728", size=5, tools=["hover"]),
            hv.opts.VLine(color="#636363", line_dash="dashed", line_width=1.5),
            hv.opts.Text(text_font_size="10pt", text_color="#636363"),
        )

    def pdf_view(self) -> hv.DynamicMap:
        """Pixel PDF of δ (axes follow the data)."""
        return hv.DynamicMap(self._pdf, streams=[self._pipe]).opts(
            hv.opts.Overlay(
                framewise=True,
                frame_width=420,
                frame_height=160,
                legend_position="top_right",
                title="Pixel PDF of δ",
            ),
            hv.opts.Histogram(color="#6baed6", line_color="#2171b5", alpha=0.8, framewise=True),
            hv.opts.Curve(color="black", line_dash="dashed", line_width=1.5, framewise=True),
        )

    def _map(self, data):
        return map_element(data or self.result)

    def _power(self, data):
        return power_overlay(data or self.result)

    def _pdf(self, data):
        return pdf_overlay(data or self.result)

    @param.depends("result", "error")
    def _readout(self):
        # the settings of the map on screen (they lag the widgets while an update is pending)
        shown = FieldParams(**self.result.settings) if self.result else self.settings
        text = parameter_table(shown, self.result)
        if self.error:
            text = f"**⚠ {self.error}** (showing the last good map)\n\n" + text
        return pn.pane.Markdown(text, sizing_mode="stretch_width", margin=(0, 5))

    def __panel__(self):
        w = self.widgets()
        controls = pn.Column(
            "### Parameters",
            *(_labelled(w[name]) for name in CONTROLS),
            pn.layout.Divider(),
            self._readout,
            width=290,
        )
        map_pane = pn.bind(lambda large: pn.pane.HoloViews(self.map_view(large)), self.param.large)
        plots = pn.Row(
            pn.Column(map_pane),
            pn.Column(pn.pane.HoloViews(self.power_view()), pn.pane.HoloViews(self.pdf_view())),
        )
        about = pn.pane.Markdown(EXPLANATION, sizing_mode="stretch_width", max_width=1050)
        return pn.Row(controls, pn.Column(plots, about))
