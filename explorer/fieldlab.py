"""Field lab: a live map of any flat kind, its power spectrum against theory, its PDF and peaks.

Kinds: ``grf`` and ``lognormal`` projected slabs (:mod:`engine.physics.slabs`), ``2lpt`` particle slabs
(:mod:`engine.physics.lpt`), ``kappa`` weak-lensing convergence (:mod:`engine.physics.lensing`), and ``patch``, an
external map handed over by the sky page (:meth:`FieldLab.show_map`).

One mechanism for all of them. A :class:`KindView` per kind names its settings class (from the
:mod:`engine.kinds` registry), the :class:`Control` s shown as widgets (generated from the engine's
param definitions: bounds, defaults and docs are written once, in the engine), its explanation
text and its *measure* function, the only kind-specific code: it makes the map and returns the
measured and expected spectra. The pure :func:`compute` adds what is common to all kinds (pixel
PDF, peak counts, moments, timing) and returns a :class:`FieldLabResult`; the views draw any
result the same way, with the axes, units and labels of its :class:`PlotStyle`.

:class:`FieldLab` holds one settings object per settings class (grf and lognormal share theirs),
watches it, recomputes with :func:`compute` and feeds the result through an ``hv.streams.Pipe``
into ``hv.DynamicMap`` views, so the user's zoom survives parameter changes; the views are rebuilt
only when the style (kind, units, extent, ranges) changes. Slider moves are coalesced
(:class:`Coalescer`): the view follows a moving slider live but never queues more than one update.

Units: lengths in comoving Mpc/h, k in h/Mpc, 2D P(k) in (Mpc/h)², δ dimensionless; κ maps in
arcmin with C_ℓ in sr, plotted as ℓ(ℓ+1)C_ℓ/2π (dimensionless for κ, map unit² otherwise).
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
import xarray as xr

from engine.kinds import FIELD_KINDS, KINDS
from engine.params import ConfigError, CosmologyParams, FieldParams, to_dict, user_settings
from engine.physics import lensing, lpt, slabs, stats
from engine.physics.cosmology import table_for
from explorer.widgets import label, look

hv.extension("bokeh", logo=False)  # registers hv.opts for the Bokeh backend (idempotent)

#: Map sizes offered in the size selector (pixels per side) of the projected-slab kinds.
SIZES = (64, 128, 256, 512)
#: Particles (and mesh cells) per side offered for 2LPT.
LPT_SIZES = (32, 64, 128)
#: Map sizes offered for κ.
KAPPA_SIZES = (128, 256, 512)
#: Maps with more pixels per side than this are rasterized by datashader to the screen.
RASTERIZE_ABOVE = 256
#: k range of the smooth theory curve and of the P(k) plot's x axis, h/Mpc.
K_PLOT = (2e-3, 10.0)
#: y range of the P(k) plot, (Mpc/h)².
P_PLOT = (1e-3, 3e4)
#: y range of the κ plot of ℓ(ℓ+1)C_ℓ/2π (dimensionless).
DL_KAPPA_PLOT = (1e-8, 1e-2)
#: Signal-to-noise levels ν of the peak counts N(>ν σ).
PEAK_NU = np.linspace(-2.0, 5.0, 29)
#: CMB temperature in K (pyccl's default), for k_eq of Eisenstein & Hu (1998), eq. (3).
T_CMB = 2.7255
#: Most slider steps a Number setting may have before it gets a number box instead (see
#: :func:`setting_widget`): a slider over 1e5 steps cannot be used.
MAX_SLIDER_STEPS = 1000


def k_equality(omega_m: float, h: float) -> float:
    """Wavenumber of matter–radiation equality in h/Mpc, k_eq = 0.0746 Ω_m h Θ₂.₇⁻² (EH98 eq. 3).

    The turnover of the linear P(k) sits near k_eq; it moves to larger k as Ω_m h grows.
    """
    return 7.46e-2 * omega_m * h / (T_CMB / 2.7) ** 2


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlotStyle:
    """What the plots of a result show: names, units and fixed ranges (hashable, compared by value).

    The views are rebuilt when the style changes, never for a change of values only, so a zoom
    survives slider moves.

    Attributes
    ----------
    kind : str
        Kind of the map (a key of :data:`KIND_VIEWS`).
    value, value_label, value_unit : str
        Name, symbol and unit of the map's pixel values ("delta", "δ", "" or "kappa", "κ", "").
    coord_unit : str
        Unit of the map axes ("Mpc/h" or "arcmin").
    extent : float
        Side of the square map in ``coord_unit``.
    k, k_label, k_unit : str
        Wavenumber axis ("k", "k", "h/Mpc" or "ell", "ℓ", "").
    p_label, p_unit : str
        Spectrum axis ("P(k)", "(Mpc/h)²" or "ℓ(ℓ+1)C_ℓ/2π", "").
    k_range, p_range : (float, float)
        Fixed axis ranges of the spectrum plot.
    map_title, power_title : str
    theory_label : str
        Legend of the smooth theory curve ("" when the result has none).
    legend : str
        Legend position of the spectrum plot (where the curves leave room).
    """

    kind: str
    value: str
    value_label: str
    value_unit: str
    coord_unit: str
    extent: float
    k: str
    k_label: str
    k_unit: str
    p_label: str
    p_unit: str
    k_range: tuple[float, float]
    p_range: tuple[float, float]
    map_title: str
    power_title: str
    theory_label: str
    legend: str = "bottom_left"


@dataclass(frozen=True, repr=False)
class FieldLabResult:
    """Everything the field-lab views draw, as numpy arrays (one seeded map of any kind).

    Spectra are in the plotted form of ``style``: P(k) in (Mpc/h)² for slabs, ℓ(ℓ+1)C_ℓ/2π for
    angular maps (C_ℓ in sr; dimensionless for κ). Arrays without a theory hold NaN.

    Attributes
    ----------
    settings : dict
        The settings the map was made with (plain values, including ``kind``).
    style : PlotStyle
        Names, units and ranges of the plots.
    x : ndarray (N,)
        Pixel centres along x and y, in ``style.coord_unit``.
    map : ndarray (N, N) float32
        Pixel values (δ, κ, …), y along axis 0.
    k, pk : ndarray (K,)
        Mean wavenumber per bin (h/Mpc or ℓ) and measured spectrum (non-positive → nan).
    pk_expected, pk_sigma : ndarray (K,)
        Theory averaged over the same modes as the estimator and its Gaussian 1σ scatter
        P·√(2/n_modes).
    k_theory, pk_theory : ndarray (M,)
        Smooth theory curve (including smoothing and noise).
    noise_theory : ndarray (M,)
        Noise contribution to the theory curve on ``k_theory`` (nan without noise).
    markers : tuple of (float, str)
        Vertical reference lines on the spectrum plot (position, label), e.g. k_eq.
    pdf_x, pdf_density : ndarray (B,)
        Pixel-PDF bin centres (map units) and probability density (1/map units).
    sigma, skewness : float
        Standard deviation (map units) and skewness ⟨(x−x̄)³⟩/σ³ of the pixel values.
    peak_nu, peak_counts : ndarray (T,)
        Levels ν and the number of local maxima (8 periodic neighbours) above ν σ in the map.
    derived : tuple of (str, str, str)
        Extra readout rows (HTML name, formatted value, unit), e.g. k_eq or D(z).
    seconds : float
        Wall time of the computation, s.
    """

    settings: dict
    style: PlotStyle
    x: np.ndarray
    map: np.ndarray
    k: np.ndarray
    pk: np.ndarray
    pk_expected: np.ndarray
    pk_sigma: np.ndarray
    k_theory: np.ndarray
    pk_theory: np.ndarray
    noise_theory: np.ndarray
    markers: tuple
    pdf_x: np.ndarray
    pdf_density: np.ndarray
    sigma: float
    skewness: float
    peak_nu: np.ndarray
    peak_counts: np.ndarray
    derived: tuple = ()
    seconds: float = field(default=0.0, compare=False)

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"FieldLabResult(kind={s['kind']!r}, size={self.map.shape[0]}, "
            f"sigma={self.sigma:.3g}, skewness={self.skewness:.3g})"
        )


# ---------------------------------------------------------------------------------------------
# External maps (patches from the sky page)
# ---------------------------------------------------------------------------------------------


class ExternalMap(param.Parameterized):
    """Settings of an external flat map shown in the field lab (e.g. a patch cut from a sky).

    Build with :meth:`from_patch`; the readout shows the plain-valued parameters.
    """

    kind = param.Selector(default="patch", objects=["patch"], constant=True, doc="Map kind.")
    data = param.ClassSelector(
        class_=xr.DataArray,
        constant=True,
        doc="The map: DataArray (y, x) with attrs fov (deg) and units (e.g. 'mK').",
    )
    source = param.String("", doc="Where the map comes from (free text).")
    fov = param.Number(5.0, bounds=(0.0, 30.0), doc="Side of the square patch in degrees.")
    size = param.Integer(128, bounds=(8, 4096), doc="Pixels per side (N).")
    lon = param.Number(0.0, doc="Longitude of the patch centre, degrees.")
    lat = param.Number(0.0, bounds=(-90.0, 90.0), doc="Latitude of the patch centre, degrees.")
    units = param.String("dimensionless", doc="Unit of the pixel values.")

    @classmethod
    def from_patch(cls, patch: xr.DataArray, source: str = "") -> ExternalMap:
        """Wrap one patch of :func:`engine.physics.sky.extract_patches` (dims (sample, y, x), sample 0)."""
        if "sample" in patch.dims:
            patch = patch.isel(sample=0)
        coord = {c: float(patch[c]) for c in ("lon", "lat") if c in patch.coords}
        return cls(
            data=patch,
            source=source,
            fov=float(patch.attrs["fov"]),
            size=int(patch.shape[-1]),
            units=str(patch.attrs.get("units", "dimensionless")),
            **coord,
        )

    def theory_settings(self) -> lensing.KappaParams | None:
        """KappaParams of a κ patch cut from a synthesized sky (its attrs), else None."""
        attrs = self.data.attrs
        if attrs.get("kind") != "kappa":
            return None
        settings = lensing.settings_from_attrs(attrs)
        om, s8 = (float(self.data.coords[c]) for c in ("omega_m", "sigma8"))
        if not (math.isfinite(om) and math.isfinite(s8)):
            return None
        settings.param.update(omega_m=om, sigma8=s8, fov=self.fov, size=self.size)
        return settings


# ---------------------------------------------------------------------------------------------
# Measuring one map: the kind-specific part
# ---------------------------------------------------------------------------------------------


def _positive(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return np.where(a > 0, a, np.nan)


def _spectra(measured, expected, k_theory, pk_theory, noise_theory, scale=None) -> dict:
    """Fields k … noise_theory of a result from binned PowerSpectra and a smooth theory curve.

    ``expected`` may be None (no theory); ``scale(k)`` multiplies every spectrum (e.g.
    ℓ(ℓ+1)/2π).
    """
    k = measured.k.numpy()
    f = (lambda x: 1.0) if scale is None else scale
    n = len(k)
    if expected is None:
        pk_exp, pk_sig = np.full(n, np.nan), np.full(n, np.nan)
    else:
        e = expected.power.numpy()
        pk_exp, pk_sig = e * f(k), e * np.sqrt(2.0 / expected.n_modes.numpy()) * f(k)
    return dict(
        k=k,
        pk=_positive(measured.power.numpy().reshape(-1)[:n] * f(k)),
        pk_expected=pk_exp,
        pk_sigma=pk_sig,
        k_theory=np.asarray(k_theory, dtype=np.float64),
        pk_theory=_positive(np.asarray(pk_theory) * f(np.asarray(k_theory))),
        noise_theory=_positive(np.asarray(noise_theory) * f(np.asarray(k_theory))),
    )


def _slab_style(kind: str, box: float, title: str, theory_label: str) -> PlotStyle:
    return PlotStyle(
        kind=kind,
        value="delta",
        value_label="δ",
        value_unit="",
        coord_unit="Mpc/h",
        extent=float(box),
        k="k",
        k_label="k",
        k_unit="h/Mpc",
        p_label="P(k)",
        p_unit="(Mpc/h)²",
        k_range=K_PLOT,
        p_range=P_PLOT,
        map_title=title,
        power_title="Power spectrum P(k)",
        theory_label=theory_label,
    )


def _seeded(settings) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    om = torch.tensor([settings.omega_m], dtype=torch.float64)
    s8 = torch.tensor([settings.sigma8], dtype=torch.float64)
    return om, s8, torch.Generator().manual_seed(int(settings.seed))


def measure_projected(s: FieldParams) -> dict:
    """grf / lognormal slab: map δ, P(k) against the projected linear theory of eq. (2)."""
    om, s8, gen = _seeded(s)
    delta = slabs.generate_maps(s, om, s8, gen, device="cpu")[0]
    k_theory = np.geomspace(*K_PLOT, 300)
    pk_theory = slabs.theory_power(s, torch.from_numpy(k_theory), s.omega_m, s.sigma8).numpy()
    noise = s.noise**2 * (s.box_size / s.size) ** 2 * np.ones_like(k_theory)
    k_eq = k_equality(s.omega_m, s.h)
    return dict(
        map=delta.numpy(),
        style=_slab_style(s.kind, s.box_size, "Density contrast δ", "linear theory"),
        markers=((k_eq, "k_eq"),),
        derived=(("k<sub>eq</sub>", f"{k_eq:.4f}", "h/Mpc"),),
        **_spectra(
            stats.power_spectrum(delta, s.box_size),
            slabs.binned_theory(s, s.omega_m, s.sigma8),
            k_theory,
            pk_theory,
            noise,
        ),
    )


def measure_lpt(s: lpt.LPTParams) -> dict:
    """2LPT/1LPT slab: CIC map δ; P(k) deconvolved by the 2D CIC window against D²-scaled theory.

    The measured map is divided by W(k) = sinc²(k_x c/2) sinc²(k_y c/2) (c = L/N) in Fourier space
    before the estimator (:func:`engine.physics.lpt.cic_window`). The expected band is the projected
    linear spectrum at ``s.redshift`` (eq. 1 of :mod:`engine.physics.slabs`, D(z)² included) with the
    smoothing kernel, plus the white noise as the deconvolution amplifies it (σ_n²(L/N)²/W²).
    Trust the comparison at k ≲ k_N/4 (lattice and alias caveats of ``cic_window``).
    """
    om, s8, gen = _seeded(s)
    settings = s if s.dim == 2 else lpt.LPTParams(**{**to_dict(s), "dim": 2})
    delta = lpt.generate_batch(settings, om, s8, gen, device="cpu")[0]
    n, box = s.size, s.box_size
    w2 = lpt.cic_window((n, n))
    deconvolved = torch.fft.irfft2(torch.fft.rfft2(delta) / w2.sqrt().to(torch.float32), s=(n, n))
    kmag = slabs.wavenumber_grid(n, box, torch.device("cpu"))
    signal = slabs.projected_power(s, kmag, s.omega_m, s.sigma8) * torch.exp(
        -(kmag**2) * s.smoothing**2
    )
    floor = s.noise**2 * (box / n) ** 2
    expected = stats.bin_isotropic(signal + floor / w2, (n, n), box)
    k_theory = np.geomspace(*K_PLOT, 300)
    pk_theory = slabs.theory_power(s, torch.from_numpy(k_theory), s.omega_m, s.sigma8).numpy()
    k_eq, k_nyq = k_equality(s.omega_m, s.h), math.pi * n / box
    growth = float(table_for(s).growth(torch.tensor([s.omega_m]), s.redshift)[0])
    order = "2LPT" if s.lpt_order == 2 else "1LPT (Zel'dovich)"
    return dict(
        map=delta.numpy(),
        style=_slab_style(
            "2lpt", box, f"{order} density contrast δ (CIC)", "projected linear theory × D²(z)"
        ),
        markers=((k_eq, "k_eq"), (k_nyq / 4, "k_N/4")),
        derived=(
            ("growth D(z)/D(0)", f"{growth:.3f}", "–"),
            ("k<sub>eq</sub>", f"{k_eq:.4f}", "h/Mpc"),
            ("particles", f"{n}³", ""),
        ),
        **_spectra(
            stats.power_spectrum(deconvolved, box),
            expected,
            k_theory,
            pk_theory,
            floor * np.ones_like(k_theory),
        ),
    )


#: Most particles drawn in the particle view (a random subset above it).
MAX_PARTICLES = 200_000


def slab_particles(settings: dict, max_points: int = MAX_PARTICLES) -> np.ndarray:
    """Positions of the LPT particles inside the slab of a 2LPT field-lab map, in map coordinates.

    The particles are those of the volume behind the map (same seed: :func:`engine.physics.lpt.
    generate_displacements` consumes the generator like :func:`engine.physics.lpt.generate_volumes`)
    whose line-of-sight coordinate lies in the slab [0, Δ); their other two coordinates are
    returned in the map's orientation (columns → x, rows → y, :func:`engine.physics.lpt.project_slab`).

    Parameters
    ----------
    settings : dict
        Plain 2LPT settings (``FieldLabResult.settings`` of kind "2lpt").
    max_points : int
        At most this many particles (a seeded random subset beyond it).

    Returns
    -------
    numpy.ndarray (M, 2) float32: (x, y) in Mpc/h.
    """
    s = lpt.LPTParams(**{k: v for k, v in settings.items() if k in lpt.LPTParams.param})
    om, s8, gen = _seeded(s)
    psi = lpt.generate_displacements(s, om, s8, gen, device="cpu")
    pos = lpt.particle_positions(psi, s.box_size)[0]
    los = lpt.AXES[s.axis] - 1
    row, col = (c for c in range(3) if c != los)
    inside = pos[pos[:, los] < s.thickness]
    if inside.shape[0] > max_points:
        pick = torch.randperm(inside.shape[0], generator=torch.Generator().manual_seed(0))
        inside = inside[pick[:max_points]]
    return torch.stack([inside[:, col], inside[:, row]], dim=1).numpy()


def d_ell(ell):
    """ℓ(ℓ+1)/2π, the factor turning C_ℓ into the plotted D_ℓ = ℓ(ℓ+1)C_ℓ/2π."""
    ell = np.asarray(ell, dtype=np.float64)
    return ell * (ell + 1) / (2 * math.pi)


def _angular_style(
    kind, fov, size, value, value_label, unit, title, theory_label, p_range, legend="top_right"
):
    ell_f = 2 * math.pi / math.radians(fov)
    return PlotStyle(
        kind=kind,
        value=value,
        value_label=value_label,
        value_unit=unit,
        coord_unit="arcmin",
        extent=float(fov) * 60.0,
        k="ell",
        k_label="ℓ",
        k_unit="",
        p_label="ℓ(ℓ+1)C_ℓ/2π",
        p_unit=f"{unit}²" if unit else "",
        k_range=(0.6 * ell_f, 0.75 * ell_f * size),  # 1.5 ℓ_N
        p_range=p_range,
        map_title=title,
        power_title="Angular power spectrum",
        theory_label=theory_label,
        legend=legend,
    )


def _kappa_spectra(kappa: torch.Tensor, s: lensing.KappaParams | None, fov: float) -> dict:
    """Measured C_ℓ of a κ map of side ``fov`` degrees, and the theory of ``s`` (None: none)."""
    box = math.radians(fov)
    measured = stats.power_spectrum(kappa, box)
    n = kappa.shape[-1]
    ell_f = 2 * math.pi / box
    ell = np.geomspace(max(2.0, 0.5 * ell_f), min(math.sqrt(2) * math.pi * n / box, 1e5), 300)
    if s is None:
        nan = np.full_like(ell, np.nan)
        return dict(markers=(), **_spectra(measured, None, ell, nan, nan, d_ell))
    t = torch.from_numpy(ell)
    noise = lensing.noise_cl(s) * lensing.smoothing_window(s, t).numpy() ** 2
    if s.sigma_e == 0:
        noise = np.full_like(ell, np.nan)
    markers = ((1 / (s.smoothing * lensing.ARCMIN), "1/σ_s"),) if s.smoothing > 0 else ()
    return dict(
        markers=markers,
        **_spectra(
            measured,
            lensing.binned_theory(s, s.omega_m, s.sigma8),
            ell,
            lensing.map_cl(s, t, s.omega_m, s.sigma8).numpy(),
            noise,
            d_ell,
        ),
    )


def measure_kappa(s: lensing.KappaParams) -> dict:
    """Flat κ map (arcmin) and its C_ℓ against pyccl's Limber C_ℓ + shape noise, smoothed."""
    om, s8, gen = _seeded(s)
    kappa = lensing.generate_maps(s, om, s8, gen, device="cpu")[0]
    pix = s.fov * 60 / s.size
    noise_pix = s.sigma_e / math.sqrt(s.n_gal * pix**2) if s.sigma_e > 0 else 0.0
    style = _angular_style(
        "kappa", s.fov, s.size, "kappa", "κ", "", "Convergence κ", "Limber C_ℓ (pyccl)",
        DL_KAPPA_PLOT,
    )  # fmt: skip
    return dict(
        map=kappa.numpy(),
        style=style,
        derived=(
            ("pixel", f"{pix:.3g}", "arcmin"),
            ("shape noise per pixel", f"{noise_pix:.3g}", "κ (before smoothing)"),
            ("ℓ range", f"{2 * math.pi / math.radians(s.fov):.0f}–{180 * 60 / pix:.0f}", ""),
        ),
        **_kappa_spectra(kappa, s, s.fov),
    )


def measure_patch(s: ExternalMap) -> dict:
    """External patch: its C_ℓ, against the sky's theory when it was cut from a synthesized κ sky."""
    values = torch.as_tensor(np.asarray(s.data.values, dtype=np.float32))
    theory = s.theory_settings()
    spectra = _kappa_spectra(values, theory, s.fov)
    finite = np.concatenate([spectra["pk"], spectra["pk_theory"]])
    finite = finite[np.isfinite(finite)]
    p_range = (float(finite.min()) / 3, float(finite.max()) * 3) if finite.size else DL_KAPPA_PLOT
    symbol, name = ("κ", "kappa") if s.data.attrs.get("kind") == "kappa" else ("T", "value")
    unit = "" if s.units == "dimensionless" else s.units
    title = f"Patch at lon {s.lon:.1f}°, lat {s.lat:.1f}°"
    style = _angular_style(
        "patch", s.fov, s.size, name, symbol, unit, title,
        "sky theory (no interpolation window)" if theory is not None else "", p_range,
        "bottom_left",
    )  # fmt: skip
    unobserved = 1.0 - float(np.mean(s.data.coords["mask"])) if "mask" in s.data.coords else 0.0
    return dict(
        map=values.numpy(),
        style=style,
        derived=(("unobserved (set to 0)", f"{100 * unobserved:.1f}", "%"),),
        **spectra,
    )


# ---------------------------------------------------------------------------------------------
# Kinds: what each one shows
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Control:
    """One setting shown as a widget (bounds and defaults come from its param definition).

    Attributes
    ----------
    name : str
        Attribute of the settings object.
    label : str
        Widget label, with the unit in parentheses.
    symbol : str
        Name in the readout table (HTML).
    unit : str
        Unit in the readout table.
    digits : int, optional
        Decimals of the slider and the table (default: ``{:g}``).
    options : tuple or dict, optional
        Discrete choices (values, or {label: value}) shown as buttons instead of a slider.
    """

    name: str
    label: str
    symbol: str
    unit: str = ""
    digits: int | None = None
    options: tuple | dict | None = None

    def format(self, value) -> str:
        """The value as shown in the readout table."""
        if isinstance(self.options, dict):
            names = {v: k for k, v in self.options.items()}
            return names.get(value, str(value))
        if self.digits is not None and isinstance(value, (int, float)):
            return f"{value:.{self.digits}f}"
        return f"{value:g}" if isinstance(value, float) else str(value)


OMEGA_M = Control("omega_m", "Ωₘ  matter density", "Ω<sub>m</sub>", "–", 3)
SIGMA8 = Control("sigma8", "σ₈  amplitude", "σ<sub>8</sub>", "–", 3)
SEED = Control("seed", "Seed", "seed")
H = Control("h", "h", "h", "–", 4)
REDSHIFT = Control("redshift", "Redshift z", "redshift z", "", 2)
BOX = Control("box_size", "Box L (Mpc/h)", "box L", "Mpc/h")
THICKNESS = Control("thickness", "Slab thickness Δ (Mpc/h)", "slab Δ", "Mpc/h")
SLAB_SMOOTHING = Control("smoothing", "Smoothing σₛ (Mpc/h)", "smoothing σ<sub>s</sub>", "Mpc/h", 2)


@dataclass(frozen=True)
class KindView:
    """How the field lab shows one kind.

    Attributes
    ----------
    kind : str
        Kind name (``engine.kinds`` registry, or "patch").
    title : str
        Label on the kind selector.
    controls : tuple of Control
        Settings with a widget, in display order.
    table : tuple of Control
        Further settings shown only in the readout table.
    explanation : str
        Markdown of the "What you are looking at" text.
    measure : callable
        settings → dict of the kind-specific :class:`FieldLabResult` fields (map, style, k, pk,
        pk_expected, pk_sigma, k_theory, pk_theory, noise_theory, markers, derived).
    """

    kind: str
    title: str
    controls: tuple
    table: tuple
    explanation: str
    measure: Callable[[param.Parameterized], dict]


SLAB_TEXT = """
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

**PDF and peaks.** The one-point distribution of δ: Gaussian for `grf`; skewed with a long tail
to high densities and δ > −1 for `lognormal`. Peaks are pixels higher than their 8 neighbours;
N(>νσ) counts those above ν standard deviations.
"""

LPT_TEXT = """
### What you are looking at

**Particles.** N³ particles start on a cubic lattice and move by Lagrangian perturbation theory:
the **Zel'dovich** displacement Ψ₁ = −∇φ₁ with ∇²φ₁ = δ<sub>L</sub> (1LPT, linear in the
initial field) plus, for 2LPT, the **second-order** term Ψ₂ = (D₂/D₁²)∇φ₂, sourced by the tidal
field, ∇²φ₂ = Σ<sub>i<j</sub>[φ₁,<sub>ii</sub>φ₁,<sub>jj</sub> − φ₁,<sub>ij</sub>²]. They are
deposited on the N³ mesh with **cloud-in-cell** (CIC) weights and the slab [0, Δ) is averaged
along the line of sight.

**Why δ is skewed.** Particles stream out of voids and pile up in sheets and filaments: δ is
bounded below by −1 but not above, so the PDF grows a tail to high densities (skewness
S₃ = ⟨δ³⟩/σ⁴ ≈ 4 + γ₁ for 1LPT and 34/7 + γ₁ for 2LPT at tree level) — compare the
skewness in the readout for the two orders.

**Redshift.** The initial field is scaled to the slab's redshift by the growth factor: the
linear spectrum drops as D(z)², so higher z gives a fainter, more Gaussian map.

**P(k).** Measured on the CIC map divided by the CIC window sinc²(k<sub>x</sub>c/2)
sinc²(k<sub>y</sub>c/2) (c = L/N), against the projected linear theory at the same z and Δ
(the same curve as for `grf`). Trust the comparison below k<sub>N</sub>/4 (the lattice and
aliasing affect the deconvolution above it); LPT itself falls a few per cent below linear
theory from k ≈ 0.05 h/Mpc at z = 0 (Zel'dovich damping).
"""

KAPPA_TEXT = """
### What you are looking at

**Map.** The weak-lensing **convergence** κ: the projected matter density contrast along the
line of sight, weighted by the lensing kernel of sources distributed as n(z) (a DES Y3-like
distribution, mean z 0.63), κ(θ) = ∫ dχ q(χ) δ(χ θ, χ), q ∝ Ω<sub>m</sub> χ ∫ n(χ′)(χ′−χ)/χ′.
Axes in arcmin on a periodic flat patch of side "field of view".

**C<sub>ℓ</sub>.** Plotted as ℓ(ℓ+1)C<sub>ℓ</sub>/2π against ℓ. Theory: the Limber-approximation
spectrum from pyccl (halofit nonlinear matter power), plus **shape noise**
N<sub>ℓ</sub> = σ<sub>e</sub>²/n<sub>gal</sub> (n<sub>gal</sub> per steradian; dotted), both
multiplied by the smoothing kernel e<sup>−ℓ²σ<sub>s</sub>²</sup> with σ<sub>s</sub> in arcmin
(marker at ℓ = 1/σ<sub>s</sub>). The amplitude scales roughly as σ<sub>8</sub>²Ω<sub>m</sub>^1.5
(more matter lenses more, and σ<sub>8</sub> is the clustering amplitude).

**PDF and peaks.** A Gaussian field, or a shifted lognormal one with κ > −κ₀ and a high-κ tail;
shape noise pulls the PDF towards a Gaussian. Peak counts above ν σ are a classic
non-Gaussian probe of σ<sub>8</sub> and Ω<sub>m</sub>.
"""

PATCH_TEXT = """
### What you are looking at

A gnomonic patch cut from the sky page (bilinear interpolation of the HEALPix pixels), shown
with the same tools: its flat-sky C<sub>ℓ</sub> as ℓ(ℓ+1)C<sub>ℓ</sub>/2π, pixel PDF and peak
counts. A patch is not periodic and the interpolation smooths below the HEALPix pixel scale,
so its spectrum follows the sky's theory (for a synthesized κ sky) only well above the pixel
scale; unobserved pixels are set to 0.
"""

#: Controls and table rows of the projected-slab kinds (grf and lognormal share them).
SLAB_CONTROLS = (
    OMEGA_M,
    SIGMA8,
    SLAB_SMOOTHING,
    Control("noise", "Noise σₙ (δ per pixel)", "noise σ<sub>n</sub>", "δ per pixel", 3),
    SEED,
    Control("size", "Map size N (pixels)", "map size N", "pixels", options=SIZES),
)
SLAB_TABLE = (BOX, THICKNESS, REDSHIFT, H)

KIND_VIEWS: dict[str, KindView] = {
    v.kind: v
    for v in (
        KindView("grf", "GRF", SLAB_CONTROLS, SLAB_TABLE, SLAB_TEXT, measure_projected),
        KindView("lognormal", "lognormal", SLAB_CONTROLS, SLAB_TABLE, SLAB_TEXT, measure_projected),
        KindView(
            "2lpt",
            "2LPT",
            (
                OMEGA_M,
                SIGMA8,
                REDSHIFT,
                Control(
                    "lpt_order", "Order", "order", "", options={"1LPT (Zel'dovich)": 1, "2LPT": 2}
                ),
                Control(
                    "size", "Particles per side N", "particles N", "per side", options=LPT_SIZES
                ),
                BOX,
                THICKNESS,
                SLAB_SMOOTHING,
                SEED,
            ),
            (H,),
            LPT_TEXT,
            measure_lpt,
        ),
        KindView(
            "kappa",
            "κ WL",
            (
                OMEGA_M,
                SIGMA8,
                Control("n_gal", "Galaxies n_gal (arcmin⁻²)", "n<sub>gal</sub>", "arcmin⁻²"),
                Control("sigma_e", "Shape noise σₑ", "σ<sub>e</sub>", "per component", 2),
                Control("smoothing", "Smoothing σₛ (arcmin)", "smoothing σ<sub>s</sub>", "arcmin"),
                Control("fov", "Field of view (deg)", "field of view", "deg", 1),
                Control("distribution", "Distribution", "distribution"),
                Control("size", "Map size N (pixels)", "map size N", "pixels", options=KAPPA_SIZES),
                SEED,
            ),
            (Control("matter_power", "", "matter power"), Control("nz", "", "source n(z)")),
            KAPPA_TEXT,
            measure_kappa,
        ),
        KindView(
            "patch",
            "patch",
            (),
            (
                Control("source", "", "source"),
                Control("lon", "", "centre lon", "deg", 2),
                Control("lat", "", "centre lat", "deg", 2),
                Control("fov", "", "field of view", "deg", 2),
                Control("size", "", "size N", "pixels"),
                Control("units", "", "units"),
            ),
            PATCH_TEXT,
            measure_patch,
        ),
    )
}


def kind_view(kind: str) -> KindView:
    """The :class:`KindView` of ``kind``; ConfigError for kinds the field lab cannot show."""
    if kind not in KIND_VIEWS:
        raise ConfigError(
            f"kind={kind!r} is not shown by the field lab: one of {', '.join(KIND_VIEWS)}"
        )
    return KIND_VIEWS[kind]


# ---------------------------------------------------------------------------------------------
# The pure update
# ---------------------------------------------------------------------------------------------


def plain_settings(settings: param.Parameterized) -> dict:
    """Plain-valued settings of any kind (``kind`` included; arrays such as map data left out)."""
    out = {n: v for n, v in to_dict(settings).items() if not isinstance(v, xr.DataArray)}
    out["kind"] = settings.kind
    return out


def compute(settings: param.Parameterized, pdf_bins: int = 80) -> FieldLabResult:
    """Make one seeded map of ``settings.kind`` on the CPU and measure it: the field-lab update.

    Parameters
    ----------
    settings : FieldParams, LPTParams, KappaParams or ExternalMap
        Settings of the kind (:data:`KIND_VIEWS`); the map is made with ``settings.seed``.
    pdf_bins : int
        Histogram bins of the pixel PDF (over the 0.1–99.9 percentile range of the values).

    Returns
    -------
    FieldLabResult

    Raises
    ------
    ConfigError
        Settings the generator rejects (e.g. a lognormal target with ξ ≤ −1, a cell size outside
        the theory table, a slab thicker than the box).
    """
    t0 = time.perf_counter()
    part = kind_view(settings.kind).measure(settings)
    m = np.asarray(part.pop("map"), dtype=np.float32)
    lo, hi = np.percentile(m, [0.1, 99.9])
    if hi <= lo:
        hi = lo + 1.0
    centers, density = stats.pixel_pdf(m, bins=pdf_bins, value_range=(float(lo), float(hi)))
    d = m.astype(np.float64) - m.mean()
    sigma = float(np.sqrt(np.mean(d**2)))
    skew = float(np.mean(d**3) / sigma**3) if sigma > 0 else 0.0
    peaks = stats.peak_counts(m, float(m.mean()) + PEAK_NU * sigma)
    n = m.shape[0]
    extent = part["style"].extent
    return FieldLabResult(
        settings=plain_settings(settings),
        x=(np.arange(n) + 0.5) * extent / n,
        map=m,
        pdf_x=centers,
        pdf_density=density,
        sigma=sigma,
        skewness=skew,
        peak_nu=PEAK_NU.copy(),
        peak_counts=peaks,
        seconds=time.perf_counter() - t0,
        **part,
    )


def warm(settings: param.Parameterized | None = None) -> float:
    """Build the theory tables (pyccl, a few s once per process) by one update of each kind.

    ``settings`` given: only that update. Returns seconds.
    """
    t0 = time.perf_counter()
    todo = [settings] if settings is not None else [KINDS[k].new_settings() for k in FIELD_KINDS]
    for s in todo:
        compute(s)
    return time.perf_counter() - t0


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


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

#: Settings carried over when the kind changes (same meaning in every settings class).
SHARED = (*user_settings(CosmologyParams), "seed")


def _kind_objects(kinds) -> dict[str, str]:
    return {kind_view(k).title: k for k in kinds}


class FieldLab(pn.viewable.Viewer):
    """Field-lab page: a kind selector, widgets over that kind's settings, live views.

    ``settings`` holds the state of the shown kind; every change of a setting recomputes
    :attr:`result` with :func:`compute` (coalesced in a served session), and the views redraw
    from it. Switching ``kind`` switches to that kind's settings object (kept per settings class,
    so each kind remembers its settings), carrying over the cosmology and the seed.
    """

    kind = param.Selector(
        default="grf", objects=_kind_objects(FIELD_KINDS), doc="Kind of the map shown."
    )
    settings = param.ClassSelector(
        class_=param.Parameterized, doc="Settings of the shown kind (the page's state)."
    )
    result = param.ClassSelector(
        class_=FieldLabResult, allow_None=True, doc="Latest computed map and statistics."
    )
    style = param.ClassSelector(
        class_=PlotStyle, allow_None=True, doc="Style of the views on screen (rebuilt on change)."
    )
    error = param.String("", doc="Message of the last failed update ('' when it succeeded).")
    large = param.Boolean(False, doc="True when the map is rasterized (size > RASTERIZE_ABOVE).")
    particles = param.Boolean(
        False, doc="2LPT: also show the particles inside the slab (rasterized by datashader)."
    )

    def __init__(self, settings: param.Parameterized | None = None, doc=None, **params):
        settings = settings or FieldParams()
        super().__init__(settings=settings, kind=settings.kind, **params)
        self._by_class: dict[type, param.Parameterized] = {type(settings): settings}
        for k in FIELD_KINDS:
            cls = KINDS[k].settings_class()
            if cls not in self._by_class:
                self._by_class[cls] = KINDS[k].new_settings()
        self._widgets: dict[int, dict] = {}
        self._pipe: hv.streams.Pipe | None = None
        self._zoom: tuple | None = None  # (x_range, y_range) of the map view
        self._coalescer = Coalescer(self.update, doc=doc)
        for s in self._by_class.values():
            self._watch(s)
        self.param.watch(self._on_kind, "kind")
        self.update()

    def _watch(self, settings: param.Parameterized) -> None:
        names = [n for n in user_settings(type(settings)) if n != "kind"]
        settings.param.watch(self._on_setting, names)

    def _on_setting(self, *events) -> None:
        if events and events[0].obj is self.settings:
            self._coalescer.request()

    # -- state -------------------------------------------------------------------------------

    def _settings_for(self, kind: str) -> param.Parameterized:
        if kind == "patch":
            return self._by_class[ExternalMap]
        return self._by_class[KINDS[kind].settings_class()]

    def _on_kind(self, event) -> None:
        new = self._settings_for(event.new)
        old = self.settings
        with param.parameterized.discard_events(new):
            if new is not old:  # carry the cosmology and the seed over
                shared = {n: getattr(old, n) for n in SHARED if n in new.param and n in old.param}
                new.param.update(**shared)
            if "kind" in new.param and not new.param["kind"].constant:
                new.kind = event.new
        self.settings = new
        self._coalescer.request()

    def show_map(self, patch: xr.DataArray, source: str = "") -> None:
        """Show an external patch (:func:`engine.physics.sky.extract_patches` output) as kind "patch"."""
        ext = ExternalMap.from_patch(patch, source=source)
        self._by_class[ExternalMap] = ext
        objects = dict(self.param["kind"].objects)
        objects[kind_view("patch").title] = "patch"
        self.param["kind"].objects = objects
        if self.kind == "patch":
            self.settings = ext
            self._coalescer.request()
        else:
            self.kind = "patch"

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
        changes = {"result": result, "error": ""}
        large = result.map.shape[0] > RASTERIZE_ABOVE
        if large != self.large:
            changes["large"] = large
        if result.style != self.style:  # set only when changed: param compares objects by id
            changes["style"] = result.style
            self._zoom = None  # another extent or unit: the old zoom means nothing
        self.param.update(**changes)  # a new style or size rebuilds the views from the result
        if len(changes) == 2 and self._pipe is not None:
            self._pipe.send(result)

    # -- widgets -----------------------------------------------------------------------------

    def widgets(self) -> dict[str, pn.widgets.Widget]:
        """The kind selector and one widget per control of the shown kind (generated from param)."""
        key = id(self.settings)
        if key not in self._widgets:
            view = kind_view(self.settings.kind)
            self._widgets[key] = {c.name: setting_widget(self.settings, c) for c in view.controls}
        kind = pn.widgets.RadioButtonGroup.from_param(
            self.param.kind,
            **label("Field kind"),
            **look("primary", "outline"),
            sizing_mode="stretch_width",
        )
        return {"kind": kind, **self._widgets[key]}

    def _controls(self, settings) -> pn.Column:
        w = self.widgets()
        return pn.Column(*(labelled(x) for x in w.values()), sizing_mode="stretch_width")

    # -- views -------------------------------------------------------------------------------

    def map_view(self, pipe: hv.streams.Pipe, style: PlotStyle, large: bool) -> hv.DynamicMap:
        """The map; datashader-rasterized to screen resolution when ``large``.

        Parameter changes keep the zoom (``framewise=False``); a new view made when the map
        crosses the rasterize threshold starts at the zoom of the previous one.
        """
        dmap = hv.DynamicMap(lambda data: map_element(data), streams=[pipe])
        if large:
            # imported here: datashader takes ~1 s to import and small maps never need it
            from holoviews.operation.datashader import rasterize

            dmap = rasterize(dmap)
        zoom = dict(zip(("xlim", "ylim"), self._zoom, strict=True)) if self._zoom else {}
        label_ = style.value_label + (f" ({style.value_unit})" if style.value_unit else "")
        dmap = dmap.opts(
            hv.opts.Image(
                cmap="RdBu_r",
                colorbar=True,
                framewise=False,
                frame_width=380,
                frame_height=380,
                data_aspect=1,
                tools=["hover"],
                title=style.map_title,
                active_tools=["wheel_zoom"],
                colorbar_opts={"title": label_},
                **zoom,
            )
        )
        hv.streams.RangeXY(source=dmap).add_subscriber(self._remember_zoom)
        return dmap

    def _remember_zoom(self, x_range=None, y_range=None) -> None:
        if x_range is not None and y_range is not None:
            self._zoom = (tuple(x_range), tuple(y_range))

    @staticmethod
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

    @staticmethod
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

    @staticmethod
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

    def particle_view(self, result: FieldLabResult | None, show: bool):
        """Particles of a 2LPT map's slab as a datashader raster of counts (empty when off)."""
        if not show or result is None or result.settings.get("kind") != "2lpt":
            return pn.pane.Markdown("", margin=0)
        from holoviews.operation.datashader import rasterize

        dims = _dims(result.style)
        xy = slab_particles(result.settings)
        extent = result.style.extent
        points = hv.Points(xy, kdims=[dims["x"], dims["y"]])
        raster = rasterize(points, x_range=(0, extent), y_range=(0, extent)).opts(
            cmap="viridis",
            cnorm="eq_hist",
            colorbar=True,
            frame_width=380,
            frame_height=380,
            data_aspect=1,
            title=f"{len(xy):,} particles with line-of-sight coordinate in [0, Δ)",
        )
        return pn.pane.HoloViews(raster, linked_axes=False)

    def _plots(self, style: PlotStyle, large: bool):
        # one fresh pipe per set of views: detached views stop receiving results
        self._pipe = pipe = hv.streams.Pipe(data=self.result)
        extra = []
        if style is not None and style.kind == "2lpt":
            toggle = pn.widgets.Checkbox.from_param(
                self.param.particles, name="Show the particles in the slab"
            )
            extra = [toggle, pn.bind(self.particle_view, self.param.result, self.param.particles)]
        return pn.Row(
            pn.Column(
                pn.pane.HoloViews(self.map_view(pipe, style, large), linked_axes=False),
                *extra,
                pn.pane.HoloViews(self.peaks_view(pipe, style), linked_axes=False),
            ),
            pn.Column(
                pn.pane.HoloViews(self.power_view(pipe, style), linked_axes=False),
                pn.pane.HoloViews(self.pdf_view(pipe, style), linked_axes=False),
            ),
        )

    @param.depends("result", "error")
    def _readout(self):
        # the settings of the map on screen (they lag the widgets while an update is pending)
        text = parameter_table(self.result) if self.result else ""
        if self.error:
            text = f"**⚠ {self.error}** (showing the last good map)\n\n" + text
        return pn.pane.Markdown(text, sizing_mode="stretch_width", margin=(0, 5))

    def _about(self, style: PlotStyle):
        text = kind_view(style.kind).explanation if style else ""
        return pn.pane.Markdown(text, sizing_mode="stretch_width", max_width=1050)

    def __panel__(self):
        controls = pn.Column(
            "### Parameters",
            pn.bind(self._controls, self.param.settings),
            pn.layout.Divider(),
            self._readout,
            width=290,
        )
        plots = pn.bind(self._plots, self.param.style, self.param.large)
        about = pn.bind(self._about, self.param.style)
        return pn.Row(controls, pn.Column(plots, about))
