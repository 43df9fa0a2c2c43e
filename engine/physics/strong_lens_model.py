r"""Strong-lens model pieces: cosmology, mass → angle conversions and parameter draws.

The ``strong_lens`` kind (:mod:`engine.physics.strong_lens`: settings, DataArrays) draws the
parameters of each image here (:func:`draw_parameters`, pure numpy, no ray tracing) and renders
them with lenstronomy in :mod:`engine.physics.strong_lens_image`.

Angles are in arcsec, masses in M☉ (physical, no h), redshifts dimensionless; image pixels are
in electrons per second per pixel (e⁻ s⁻¹ pix⁻¹).

Cosmology
---------
Distances for the mass → angle conversions come from astropy's
``FlatLambdaCDM(H0=67.11, Om0=0.3, Ob0=0.049, Tcmb0=0)`` (:data:`COSMOLOGY`): the engine's
fiducial Ω_m = 0.3 (:data:`engine.params.FIDUCIAL`) with the default h = 0.6711 and Ω_b = 0.049
of :class:`engine.params.CosmologyParams`, no radiation. They go through lenstronomy's
``LensCosmo(z_lens, z_source, cosmo)`` (angular-diameter distances D_l, D_s, D_ls).

* Point mass M (:func:`point_mass_theta_e`): θ_E = √(M / (π Σ_crit)), with Σ_crit in M☉/arcsec²
  (``LensCosmo.sigma_crit_angle``), i.e. θ_E² = (4GM/c²) D_ls / (D_l D_s).
* Truncated NFW of mass M = M_200c (:func:`tnfw_kwargs`): concentration
  c_200c(M, z_l) = 5.71 (M / 2×10¹² h⁻¹M☉)^−0.084 (1 + z_l)^−0.47 (Duffy et al. 2008, MNRAS 390,
  L64, full sample, extrapolated below 10¹¹ M☉), lenstronomy's ``LensCosmo.nfw_physical2angle``
  for (R_s [arcsec], α_Rs [arcsec]), truncated at r_t = r_200 = c R_s (lenstronomy ``TNFW``,
  Baltz, Marshall & Oguri 2009, JCAP 01, 015).
* The main lens's Einstein radius θ_E is drawn in arcsec; the equivalent SIS velocity dispersion
  σ_v [km/s] (``LensCosmo.sis_theta_E2sigma_v``) is recorded with it.

Random streams: every image ``i`` of a run with ``seed`` draws from three numpy generators seeded
by ``SeedSequence([seed, 7301, i, stream])``: stream 0 the macro model (lens, shear, source,
lens light; always drawn in the same order, whatever the settings switch on), stream 1 the
substructure, stream 2 the noise. So an image depends only on (seed, i, settings) — not on
chunks, workers or the other images — and a ``cdm`` or ``vortex`` image has the same lens and
source as the ``none`` image of the same (seed, i).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from engine.params import ConfigError

#: Substructure classes, in the order ``substructure="all"`` cycles through them.
CLASSES = ("none", "cdm", "vortex")
#: h, Ω_m, Ω_b of :data:`COSMOLOGY` (the engine's fiducial cosmology).
COSMOLOGY_H, COSMOLOGY_OMEGA_M, COSMOLOGY_OMEGA_B = 0.6711, 0.3, 0.049
#: Description of the cosmology of the distances (the ``cosmology`` attr of the images).
COSMOLOGY = (
    f"astropy FlatLambdaCDM(H0={100 * COSMOLOGY_H:g}, Om0={COSMOLOGY_OMEGA_M:g}, "
    f"Ob0={COSMOLOGY_OMEGA_B:g}, Tcmb0=0)"
)
#: Sérsic index range of the lens light (uniform; de Vaucouleurs-like ellipticals).
LENS_LIGHT_N = (3.0, 5.0)
#: Entropy word that separates strong-lens streams from other SeedSequence users.
_STREAM = 7301


# ---------------------------------------------------------------------------------------------
# Cosmology and mass -> angle conversions
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def astropy_cosmology():
    """The astropy cosmology of :data:`COSMOLOGY`."""
    from astropy.cosmology import FlatLambdaCDM

    return FlatLambdaCDM(
        H0=100 * COSMOLOGY_H, Om0=COSMOLOGY_OMEGA_M, Ob0=COSMOLOGY_OMEGA_B, Tcmb0=0
    )


@functools.lru_cache(maxsize=16)
def lens_cosmo(z_lens: float, z_source: float):
    """lenstronomy ``LensCosmo`` of the lens and source redshifts in :data:`COSMOLOGY`.

    Raises
    ------
    ConfigError
        z_source <= z_lens.
    """
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo

    if not z_source > z_lens:
        raise ConfigError(
            f"z_source={z_source!r} must be larger than z_lens={z_lens!r} (the source lies "
            "behind the lens)"
        )
    return LensCosmo(z_lens=float(z_lens), z_source=float(z_source), cosmo=astropy_cosmology())


def point_mass_theta_e(mass, z_lens: float, z_source: float):
    """Einstein radius [arcsec] of point masses ``mass`` [M☉] at z_lens for sources at z_source.

    θ_E = √(M / (π Σ_crit)) with Σ_crit [M☉/arcsec²] from lenstronomy's
    ``LensCosmo.sigma_crit_angle``, i.e. θ_E² = (4GM/c²) D_ls/(D_l D_s) (angular-diameter
    distances of :data:`COSMOLOGY`). ``mass`` float or array; returns the same shape.
    """
    sigma = lens_cosmo(z_lens, z_source).sigma_crit_angle
    return np.sqrt(np.asarray(mass, dtype=np.float64) / (math.pi * sigma))


def concentration(mass, z_lens: float):
    """c_200c of haloes of M_200c = ``mass`` [M☉] at z_lens: Duffy et al. (2008), full sample,
    c = 5.71 (M / (2×10¹² M☉/h))^−0.084 (1 + z)^−0.47 (h of :data:`COSMOLOGY`)."""
    pivot = 2e12 / COSMOLOGY_H
    return 5.71 * (np.asarray(mass, np.float64) / pivot) ** -0.084 * (1 + z_lens) ** -0.47


def tnfw_kwargs(mass: float, x: float, y: float, z_lens: float, z_source: float) -> dict:
    """lenstronomy ``TNFW`` keyword arguments of a subhalo of M_200c = ``mass`` [M☉] at (x, y)
    [arcsec]: Rs, alpha_Rs [arcsec] from ``LensCosmo.nfw_physical2angle(M, c)`` with
    :func:`concentration`, r_trunc = c Rs (truncated at r_200)."""
    c = float(concentration(mass, z_lens))
    rs, alpha_rs = lens_cosmo(z_lens, z_source).nfw_physical2angle(float(mass), c)
    return {
        "Rs": float(rs),
        "alpha_Rs": float(alpha_rs),
        "r_trunc": c * float(rs),
        "center_x": x,
        "center_y": y,
    }


def velocity_dispersion(theta_e: float, z_lens: float, z_source: float) -> float:
    """SIS velocity dispersion [km/s] of Einstein radius ``theta_e`` [arcsec]
    (``LensCosmo.sis_theta_E2sigma_v``)."""
    return float(lens_cosmo(z_lens, z_source).sis_theta_E2sigma_v(theta_e))


# ---------------------------------------------------------------------------------------------
# Parameter draws (no ray tracing)
# ---------------------------------------------------------------------------------------------


def rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The numpy generator of stream ``stream`` (0 macro, 1 substructure, 2 noise) of image
    ``index`` of a run with ``seed``."""
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), _STREAM, int(index), int(stream)])
    )


def sample_class(settings, index: int) -> str:
    """Substructure class of image ``index``: ``settings.substructure``, or with "all" the
    classes of :data:`CLASSES` in turn (index mod 3)."""
    if settings.substructure == "all":
        return CLASSES[int(index) % len(CLASSES)]
    return str(settings.substructure)


def _polar(gen: np.random.Generator, modulus_max: float) -> tuple[float, float]:
    """A spin-2 quantity (ellipticity or shear): modulus uniform in [0, max], angle φ uniform in
    [0, π); returns (|e| cos 2φ, |e| sin 2φ)."""
    modulus, phi = gen.uniform(0.0, modulus_max), gen.uniform(0.0, math.pi)
    return modulus * math.cos(2 * phi), modulus * math.sin(2 * phi)


def _disk(gen: np.random.Generator, radius: float, n: int | None = None):
    """Points uniform in area in a disk of ``radius`` about 0: (x, y) floats, or arrays (n,)."""
    r = radius * np.sqrt(gen.uniform(0.0, 1.0, n))
    phi = gen.uniform(0.0, 2 * math.pi, n)
    x, y = r * np.cos(phi), r * np.sin(phi)
    return (float(x), float(y)) if n is None else (x, y)


def power_law_masses(
    gen: np.random.Generator, n: int, m_min: float, m_max: float, slope: float
) -> np.ndarray:
    """``n`` masses [M☉] from dN/dm ∝ m^slope on [m_min, m_max] (inverse CDF; slope ≠ −1)."""
    a = slope + 1.0
    lo, hi = m_min**a, m_max**a
    return (lo + (hi - lo) * gen.uniform(0.0, 1.0, n)) ** (1.0 / a)


def mean_power_law_mass(m_min: float, m_max: float, slope: float) -> float:
    """Mean mass [M☉] of dN/dm ∝ m^slope on [m_min, m_max] (slope ≠ −1):
    ⟨m⟩ = ∫ m^(slope+1) dm / ∫ m^slope dm."""
    a, b = slope + 1.0, slope + 2.0
    norm = (m_max**a - m_min**a) / a
    first = math.log(m_max / m_min) if abs(b) < 1e-12 else (m_max**b - m_min**b) / b
    return first / norm


def subhalo_number_mean(settings, theta_e: float) -> float:
    """Poisson mean of the number of subhaloes of a ``cdm`` image of Einstein radius
    ``theta_e`` [arcsec]: ``settings.subhalo_mean``, or with ``subhalo_fraction`` f > 0,
    f · M_SIS(< R) / ⟨m⟩ with R = ``subhalo_radius`` θ_E and M_SIS(< R) = π Σ_crit θ_E R (the
    projected mass of an SIS inside R; Σ_crit in M☉/arcsec² from lenstronomy's LensCosmo) and
    ⟨m⟩ from :func:`mean_power_law_mass`."""
    s = settings
    if not s.subhalo_fraction:
        return float(s.subhalo_mean)
    sigma = lens_cosmo(s.z_lens, s.z_source).sigma_crit_angle
    mass_inside = math.pi * sigma * theta_e * (s.subhalo_radius * theta_e)
    mean = mean_power_law_mass(s.subhalo_mass_min, s.subhalo_mass_max, s.subhalo_slope)
    return float(s.subhalo_fraction * mass_inside / mean)


def draw_parameters(settings, index: int, substructure: str | None = None) -> dict:
    """Every random parameter of image ``index`` (no ray tracing).

    Parameters
    ----------
    settings : StrongLensParams
    index : int
        Image number in the run (with ``settings.seed``: the random streams, module docstring).
    substructure : {"none", "cdm", "vortex"}, optional
        Default :func:`sample_class`.

    Returns
    -------
    dict
        Scalars: index, substructure, theta_e [arcsec], lens_x, lens_y [arcsec], lens_e1, lens_e2,
        gamma1, gamma2, source_x, source_y [arcsec, absolute], source_mag [AB],
        source_r_sersic [arcsec], source_n_sersic, source_e1, source_e2, lens_light_mag [AB],
        lens_light_r_sersic [arcsec], lens_light_n_sersic (NaN without lens light), n_subhalo,
        subhalo_mass_total, subhalo_mass_max [M☉] (0 unless cdm), vortex_mass [M☉],
        vortex_length [arcsec], vortex_angle [rad from +x], vortex_x, vortex_y [arcsec] (NaN
        unless vortex); arrays: subhalo_mass [M☉], subhalo_x, subhalo_y [arcsec] (n_subhalo,).
    """
    s = settings
    cls = substructure or sample_class(s, index)
    macro = rng(s.seed, index, 0)
    theta_e = macro.uniform(s.theta_e_min, s.theta_e_max)
    lens_e1, lens_e2 = _polar(macro, s.lens_e_max)
    gamma1, gamma2 = _polar(macro, s.shear_max)
    lens_x, lens_y = _disk(macro, s.lens_offset_max)
    dx, dy = _disk(macro, s.source_offset_max * theta_e)
    p = dict(
        index=int(index),
        substructure=cls,
        theta_e=theta_e,
        lens_x=lens_x,
        lens_y=lens_y,
        lens_e1=lens_e1,
        lens_e2=lens_e2,
        gamma1=gamma1,
        gamma2=gamma2,
        source_x=lens_x + dx,
        source_y=lens_y + dy,
        source_mag=macro.uniform(s.source_mag_min, s.source_mag_max),
        source_r_sersic=macro.uniform(s.source_r_min, s.source_r_max),
        source_n_sersic=macro.uniform(s.source_n_min, s.source_n_max),
    )
    p["source_e1"], p["source_e2"] = _polar(macro, s.source_e_max)
    light = (
        macro.uniform(s.lens_light_mag_min, s.lens_light_mag_max),
        macro.uniform(s.lens_light_r_min, s.lens_light_r_max),
        macro.uniform(*LENS_LIGHT_N),
    )
    if not s.lens_light:
        light = (math.nan,) * 3
    p["lens_light_mag"], p["lens_light_r_sersic"], p["lens_light_n_sersic"] = light

    sub = rng(s.seed, index, 1)
    masses, xs, ys = np.zeros(0), np.zeros(0), np.zeros(0)
    if cls == "cdm":
        n = int(sub.poisson(subhalo_number_mean(s, theta_e)))
        masses = power_law_masses(sub, n, s.subhalo_mass_min, s.subhalo_mass_max, s.subhalo_slope)
        xs, ys = _disk(sub, s.subhalo_radius * theta_e, n)
        xs, ys = xs + lens_x, ys + lens_y
    p.update(
        n_subhalo=len(masses),
        subhalo_mass_total=float(masses.sum()),
        subhalo_mass_max=float(masses.max()) if len(masses) else 0.0,
        subhalo_mass=masses,
        subhalo_x=xs,
        subhalo_y=ys,
    )
    vortex = dict.fromkeys(
        ("vortex_mass", "vortex_length", "vortex_angle", "vortex_x", "vortex_y"), math.nan
    )
    if cls == "vortex":
        log_m = sub.uniform(math.log10(s.vortex_mass_min), math.log10(s.vortex_mass_max))
        vx, vy = _disk(sub, theta_e)
        vortex.update(
            vortex_mass=10.0**log_m,
            vortex_length=sub.uniform(s.vortex_length_min, s.vortex_length_max),
            vortex_angle=sub.uniform(0.0, math.pi),
            vortex_x=lens_x + vx,
            vortex_y=lens_y + vy,
        )
    p.update(vortex)
    return p
