"""Field lab, the measurement: one seeded map of a kind, its spectra against theory, as numbers.

Everything here is pure (settings in, numpy out) and UI-free: :func:`compute` is what the page
(:mod:`explorer.fieldlab`) calls on every settings change. The physics (generators, theory,
CIC deconvolution, cosmic-variance bands, k_eq, D(z)) lives in the engine; the kind-specific
*measure* functions here only pick which engine calls make a map and its expected spectra, and
how the plots label them (:class:`PlotStyle`).

Units: lengths in comoving Mpc/h, k in h/Mpc, 2D P(k) in (Mpc/h)², δ dimensionless; κ maps in
arcmin with C_ℓ in sr, plotted as ℓ(ℓ+1)C_ℓ/2π (dimensionless for κ, map unit² otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import param
import torch
import xarray as xr

from engine.kinds import KINDS
from engine.params import FieldParams, to_dict
from engine.physics import lensing, limber, lpt, mesh, slabs, stats
from engine.physics.cosmology import growth_factor, k_equality

#: k range of the smooth theory curve and of the P(k) plot's x axis, h/Mpc.
K_PLOT = (2e-3, 10.0)
#: y range of the P(k) plot, (Mpc/h)².
P_PLOT = (1e-3, 3e4)
#: y range of the κ plot of ℓ(ℓ+1)C_ℓ/2π (dimensionless).
DL_KAPPA_PLOT = (1e-8, 1e-2)
#: Signal-to-noise levels ν of the peak counts N(>ν σ).
PEAK_NU = np.linspace(-2.0, 5.0, 29)
#: Most particles drawn in the particle view (a random subset above it).
MAX_PARTICLES = 200_000

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
    peak_nu : ndarray (T,)
        Levels ν of the peak counts.
    derived : tuple of (str, str, str)
        Extra readout rows (HTML name, formatted value, unit), e.g. k_eq or D(z).
    seconds : float
        Wall time of the computation, s.
    pdf_bins : int
        Number of bins of the pixel PDF.

    The pixel statistics below are computed from ``map`` on first use (once; :func:`pixel_statistics`):
    the page shows them only once the updates pause, so a slider step does not pay for them.

    pdf_x, pdf_density : ndarray (B,)
        Pixel-PDF bin centres (map units) and probability density (1/map units).
    sigma, skewness : float
        Standard deviation (map units) and skewness ⟨(x−x̄)³⟩/σ³ of the pixel values.
    peak_counts : ndarray (T,)
        Number of local maxima (8 periodic neighbours) above ν σ in the map, per ``peak_nu``.
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
    peak_nu: np.ndarray
    derived: tuple = ()
    seconds: float = field(default=0.0, compare=False)
    pdf_bins: int = 80

    @cached_property
    def pixel_statistics(self) -> dict:
        """:func:`pixel_statistics` of ``map`` (computed once, on first use)."""
        return pixel_statistics(self.map, self.peak_nu, self.pdf_bins)

    @property
    def pdf_x(self) -> np.ndarray:
        return self.pixel_statistics["pdf_x"]

    @property
    def pdf_density(self) -> np.ndarray:
        return self.pixel_statistics["pdf_density"]

    @property
    def sigma(self) -> float:
        return self.pixel_statistics["sigma"]

    @property
    def skewness(self) -> float:
        return self.pixel_statistics["skewness"]

    @property
    def peak_counts(self) -> np.ndarray:
        return self.pixel_statistics["peak_counts"]

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
        pk_exp = expected.power.numpy() * f(k)
        pk_sig = stats.gaussian_sigma(expected).numpy() * f(k)
    return dict(
        k=k,
        pk=_positive(measured.power.numpy().reshape(-1)[:n] * f(k)),
        pk_expected=pk_exp,
        pk_sigma=pk_sig,
        k_theory=np.asarray(k_theory, dtype=np.float64),
        pk_theory=_positive(np.asarray(pk_theory) * f(np.asarray(k_theory))),
        noise_theory=_positive(np.asarray(noise_theory) * f(np.asarray(k_theory))),
    )


def _slab_style(s: FieldParams, title: str, theory_label: str) -> PlotStyle:
    kind = KINDS[s.kind]
    return PlotStyle(
        kind=s.kind,
        value="delta",
        value_label="δ",
        value_unit="",
        coord_unit=kind.length_unit,
        extent=kind.extent(s),
        k="k",
        k_label="k",
        k_unit=kind.k_unit,
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
    noise = slabs.noise_power(s) * np.ones_like(k_theory)
    k_eq = k_equality(s.omega_m, s.h)
    return dict(
        map=delta.numpy(),
        style=_slab_style(s, "Density contrast δ", "linear theory"),
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

    The measured map is divided by the CIC window W(k) in Fourier space before the estimator
    (:func:`engine.physics.mesh.deconvolve_cic`). The expected band is
    :func:`engine.physics.slabs.binned_theory` with ``deconvolved=True``: the projected linear
    spectrum at ``s.redshift`` (D(z)² included) with the smoothing kernel, plus the white noise as
    the deconvolution amplifies it. Trust the comparison at k ≲ k_N/4 (lattice and alias caveats
    of :func:`engine.physics.mesh.cic_window`).
    """
    om, s8, gen = _seeded(s)
    settings = s if s.dim == 2 else lpt.LPTParams(**{**to_dict(s), "dim": 2})
    delta = lpt.generate_batch(settings, om, s8, gen, device="cpu")[0]
    n, box = s.size, s.box_size
    k_theory = np.geomspace(*K_PLOT, 300)
    pk_theory = slabs.theory_power(s, torch.from_numpy(k_theory), s.omega_m, s.sigma8).numpy()
    k_eq, k_nyq = k_equality(s.omega_m, s.h), math.pi * n / box
    growth = growth_factor(s, s.omega_m, s.redshift)
    order = "2LPT" if s.lpt_order == 2 else "1LPT (Zel'dovich)"
    return dict(
        map=delta.numpy(),
        style=_slab_style(
            s, f"{order} density contrast δ (CIC)", "projected linear theory × D²(z)"
        ),
        markers=((k_eq, "k_eq"), (k_nyq / 4, "k_N/4")),
        derived=(
            ("growth D(z)/D(0)", f"{growth:.3f}", "–"),
            ("k<sub>eq</sub>", f"{k_eq:.4f}", "h/Mpc"),
            ("particles", f"{n}³", ""),
        ),
        **_spectra(
            stats.power_spectrum(mesh.deconvolve_cic(delta, dim=2), box),
            slabs.binned_theory(s, s.omega_m, s.sigma8, deconvolved=True),
            k_theory,
            pk_theory,
            slabs.noise_power(s) * np.ones_like(k_theory),
        ),
    )


def slab_particles(settings: dict, max_points: int = MAX_PARTICLES) -> np.ndarray:
    """Positions of the particles inside the slab of a 2LPT or PM field-lab map, in map coordinates.

    The particles are those of the volume behind the map (same seed:
    :func:`engine.physics.lpt.generate_displacements` and
    :func:`engine.physics.pm.generate_displacements` consume the generator like the
    ``generate_volumes`` of their module) selected by :func:`engine.physics.lpt.slab_particles`.

    Parameters
    ----------
    settings : dict
        Plain 2LPT or PM settings (``FieldLabResult.settings`` of kind "2lpt" or "pm").
    max_points : int
        At most this many particles (a seeded random subset beyond it).

    Returns
    -------
    numpy.ndarray (M, 2) float32: (x, y) in Mpc/h.
    """
    from engine.physics import pm

    module, cls = (pm, pm.PMParams) if settings.get("kind") == "pm" else (lpt, lpt.LPTParams)
    s = cls(**{k: v for k, v in settings.items() if k in cls.param and k != "kind"})
    om, s8, gen = _seeded(s)
    psi = module.generate_displacements(s, om, s8, gen, device="cpu")
    xy = lpt.slab_particles(psi[0], s.thickness, s.box_size, s.axis)
    if xy.shape[0] > max_points:
        pick = torch.randperm(xy.shape[0], generator=torch.Generator().manual_seed(0))
        xy = xy[pick[:max_points]]
    return xy.numpy()


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
        return dict(markers=(), **_spectra(measured, None, ell, nan, nan, limber.d_ell))
    t = torch.from_numpy(ell)
    noise = limber.smoothed_noise_cl(s, t).numpy()
    if s.sigma_e == 0:
        noise = np.full_like(ell, np.nan)
    markers = ((1 / (s.smoothing * limber.ARCMIN), "1/σ_s"),) if s.smoothing > 0 else ()
    return dict(
        markers=markers,
        **_spectra(
            measured,
            lensing.binned_theory(s, s.omega_m, s.sigma8),
            ell,
            limber.map_cl(s, t, s.omega_m, s.sigma8).numpy(),
            noise,
            limber.d_ell,
        ),
    )


def measure_kappa(s: lensing.KappaParams) -> dict:
    """Flat κ map (arcmin) and its C_ℓ against pyccl's Limber C_ℓ + shape noise, smoothed."""
    om, s8, gen = _seeded(s)
    kappa = lensing.generate_maps(s, om, s8, gen, device="cpu")[0]
    pix = KINDS["kappa"].pixel_size(s)
    noise_pix = lensing.pixel_noise(s)
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
# What every kind shares
# ---------------------------------------------------------------------------------------------


def plain_settings(settings: param.Parameterized) -> dict:
    """Plain-valued settings of any kind (``kind`` included; arrays such as map data left out)."""
    out = {n: v for n, v in to_dict(settings).items() if not isinstance(v, xr.DataArray)}
    out["kind"] = settings.kind
    return out


def pixel_statistics(m: np.ndarray, peak_nu: np.ndarray, pdf_bins: int = 80) -> dict:
    """Pixel PDF, standard deviation, skewness and peak counts of one map.

    Parameters
    ----------
    m : ndarray (N, N) float32
        The map (map units).
    peak_nu : ndarray (T,)
        Thresholds ν of the peak counts, in units of the map's σ above its mean.
    pdf_bins : int
        Bins of the PDF, over the 0.1–99.9 percentile range of the pixel values.

    Returns
    -------
    dict
        ``pdf_x``, ``pdf_density`` (B,) (bin centres, map units; density, 1/map units),
        ``sigma`` (map units), ``skewness`` ⟨(x−x̄)³⟩/σ³ (0 for a constant map) and
        ``peak_counts`` (T,) (:func:`engine.physics.stats.peak_counts`: local maxima, 8 periodic
        neighbours, above x̄ + ν σ).
    """
    lo, hi = np.percentile(m, [0.1, 99.9])
    if hi <= lo:
        hi = lo + 1.0
    centers, density = stats.pixel_pdf(m, bins=pdf_bins, value_range=(float(lo), float(hi)))
    d = m.astype(np.float64) - m.mean()
    sigma = float(np.sqrt(np.mean(d**2)))
    skew = float(np.mean(d**3) / sigma**3) if sigma > 0 else 0.0
    peaks = stats.peak_counts(m, float(m.mean()) + np.asarray(peak_nu) * sigma)
    return dict(pdf_x=centers, pdf_density=density, sigma=sigma, skewness=skew, peak_counts=peaks)


def summarize(part: dict, settings: dict, pdf_bins: int = 80) -> FieldLabResult:
    """Complete the kind-specific ``part`` of a result with what every kind shares.

    Adds the pixel coordinates and the peak levels :data:`PEAK_NU`; the pixel PDF
    (``pdf_bins`` bins), σ, skewness and peak counts follow from the map on first use
    (:attr:`FieldLabResult.pixel_statistics`).

    Parameters
    ----------
    part : dict
        Output of a kind's measure function: ``map`` (N, N) and the other
        :class:`FieldLabResult` fields (style, k, pk, …). ``map`` is popped.
    settings : dict
        Plain settings of the map (:func:`plain_settings`).
    pdf_bins : int

    Returns
    -------
    FieldLabResult with ``seconds`` = 0 (the caller times the whole update).
    """
    m = np.asarray(part.pop("map"), dtype=np.float32)
    n = m.shape[0]
    extent = part["style"].extent
    return FieldLabResult(
        settings=settings,
        x=(np.arange(n) + 0.5) * extent / n,
        map=m,
        peak_nu=PEAK_NU.copy(),
        pdf_bins=int(pdf_bins),
        **part,
    )
