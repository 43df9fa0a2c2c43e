r"""Galaxy–galaxy strong-lens images with dark-matter substructure (kind ``strong_lens``).

After the ML4SCI DeepLense programme (Alexander et al. 2020, ApJ 893, 15; the DeepLenseSim
"Model I/II" data sets, mwt5345/DeepLenseSim): an SIE + external-shear lens at z_lens images a
Sérsic source at z_source, with one of three kinds of substructure in the lens plane:

``none``
    the smooth macro model only;
``cdm``
    a Poisson number (mean ``subhalo_mean``) of subhaloes with masses from dN/dm ∝ m^slope
    (slope −1.9 by default, the Aquarius subhalo mass function, Springel et al. 2008, MNRAS 391,
    1685) on [``subhalo_mass_min``, ``subhalo_mass_max``] = [10⁶, 10¹⁰] M☉, uniform in area
    within ``subhalo_radius`` θ_E of the lens centre, as point masses (DeepLense Model I) or
    truncated NFW haloes. Unlike DeepLenseSim, whose ``draw_old_cdm_sub_masses`` draws the
    Poisson number but then always places 25 subhaloes (and uses slope −0.9 by default), the
    number here is Poisson;
``vortex``
    an axion-like dark-matter vortex (DeepLense): a line of ``vortex_points`` equal point masses
    of total mass M_v (log-uniform in [``vortex_mass_min``, ``vortex_mass_max``] M☉) evenly
    spaced over a length L (uniform in [``vortex_length_min``, ``vortex_length_max``] arcsec),
    at a random orientation, centred uniformly within θ_E of the lens centre so that it crosses
    or passes near the Einstein ring (DeepLenseSim centres it on the lens).

The physics (cosmology, conversions, random streams, image and noise model) is documented in
:mod:`engine.physics.strong_lens_model`; this module holds the settings, the generation loop
over processes and the DataArrays.

Einstein radius: θ_E [arcsec] is drawn uniformly in [``theta_e_min``, ``theta_e_max``] (not
from a velocity dispersion); the SIS-equivalent velocity dispersion [km/s] is recorded with it.
Ellipticities and shear: modulus uniform in [0, max], position angle uniform (lenstronomy's
e1, e2 and γ1, γ2 conventions). The source centre is uniform in area within
``source_offset_max`` θ_E of the lens centre: inside the SIS radial caustic (β < θ_E), where
every source is multiply imaged, and by default (0.3 θ_E) close to the tangential caustic so that
arcs or rings form.

Output (:func:`generate`, :func:`generate_chunks`): ``xarray.DataArray`` "image" (sample, y, x)
float32 in e⁻ s⁻¹ per pixel (``attrs["units"]``), noisy unless ``noise=False``; coords x, y
[arcsec] (pixel centres, 0 at the image centre), per-sample ``substructure`` (str: none, cdm,
vortex; object dtype, written as variable-length UTF-8 strings, which zarr reads back as numpy's
``StringDType``: compare with ``==`` or use ``.tolist()``, as ``.astype(str)`` fails there) and
every drawn parameter (:data:`SAMPLE_COORDS`); attrs kind="strong_lens", preset,
pixel_scale [arcsec], size, psf_fwhm [arcsec], zero_point, exposure_time [s], z_lens, z_source,
cosmology, snr and every setting except count and workers (booleans as 0/1, None as ""), so that
:func:`settings_from_attrs` rebuilds settings that make the same images.

Same seed ⇒ same images: image i is drawn from (seed, i) only, so the output does not depend on
chunks or on the number of worker processes (``workers``; a
``concurrent.futures.ProcessPoolExecutor`` with blocks of
:data:`engine.physics.strong_lens_image.BLOCK` images in order).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator

import numpy as np
import param
import xarray as xr

import engine
from engine.params import ConfigError, set_values, to_dict, user_settings
from engine.physics.strong_lens_image import (
    PRESETS,
    instrument,
    load_psf_kernel,
    pixel_coordinates,
    render_images,
)
from engine.physics.strong_lens_model import (
    CLASSES,
    COSMOLOGY,
    draw_parameters,
    lens_cosmo,
    point_mass_theta_e,
    sample_class,
)

__all__ = [
    "CLASSES",
    "PRESETS",
    "SAMPLE_COORDS",
    "StrongLensParams",
    "check_settings",
    "draw_parameters",
    "generate",
    "generate_chunks",
    "instrument",
    "point_mass_theta_e",
    "render_images",
    "sample_class",
    "sample_bytes",
    "settings_from_attrs",
    "split_group",
]

#: Per-sample coords of the DataArrays (besides ``substructure``), float64 unless noted.
SAMPLE_COORDS = {
    "theta_e": "arcsec",
    "velocity_dispersion": "km/s",
    "lens_x": "arcsec",
    "lens_y": "arcsec",
    "lens_e1": "1",
    "lens_e2": "1",
    "gamma1": "1",
    "gamma2": "1",
    "source_x": "arcsec",
    "source_y": "arcsec",
    "source_mag": "mag (AB)",
    "source_amp": "lenstronomy Sersic amplitude, e-/s per arcsec^2 at R_sersic",
    "source_r_sersic": "arcsec",
    "source_n_sersic": "1",
    "source_e1": "1",
    "source_e2": "1",
    "lens_light_mag": "mag (AB)",
    "lens_light_amp": "lenstronomy Sersic amplitude, e-/s per arcsec^2 at R_sersic",
    "lens_light_r_sersic": "arcsec",
    "lens_light_n_sersic": "1",
    "n_subhalo": "count (int64)",
    "subhalo_mass_total": "Msun",
    "subhalo_mass_max": "Msun",
    "vortex_mass": "Msun",
    "vortex_length": "arcsec",
    "vortex_angle": "rad",
    "vortex_x": "arcsec",
    "vortex_y": "arcsec",
    "magnification": "1",
    "background_rms": "e-/s per pixel",
}


class StrongLensParams(param.Parameterized):
    """Settings of a batch of galaxy–galaxy strong-lens images (module docstring)."""

    kind = param.Selector(
        default="strong_lens",
        objects=["strong_lens"],
        constant=True,
        doc="Field kind: strong-lens images (fixed).",
    )
    substructure = param.Selector(
        default="all",
        objects=["all", *CLASSES],
        doc="Dark-matter substructure: none, cdm (Poisson subhaloes), vortex (axion-like line "
        "mass), or all (image i gets none, cdm, vortex in turn: balanced classes).",
    )
    preset = param.Selector(
        default="euclid",
        objects=list(PRESETS),
        doc="Instrument: euclid (64^2 x 0.101 arcsec, PSF FWHM 0.16 arcsec), hst (64^2 x 0.05 "
        "arcsec, FWHM 0.1 arcsec), deeplense_model_i (150^2 x 0.05 arcsec, FWHM 0.087 arcsec).",
    )
    size = param.Integer(
        0, bounds=(0, 1024), doc="Pixels per side (0: the preset's; at least 8 otherwise)."
    )
    pixel_scale = param.Number(
        0.0, bounds=(0.0, 2.0), doc="Pixel side in arcsec (0: the preset's)."
    )
    psf_fwhm = param.Number(
        0.0, bounds=(0.0, 5.0), doc="FWHM of the Gaussian PSF in arcsec (0: the preset's)."
    )
    psf = param.String(
        None,
        allow_None=True,
        doc="Optional .npy file of a tabulated PSF kernel (2D, odd size, at the pixel scale); "
        "replaces the Gaussian PSF.",
    )
    supersampling = param.Integer(
        2, bounds=(1, 8), doc="Sub-pixels per pixel side for the surface brightness."
    )
    seed = param.Integer(
        0, bounds=(0, 2**62), doc="Random seed: image i depends only on (seed, i) and settings."
    )
    count = param.Integer(8, bounds=(1, 1_000_000), doc="Number of images to generate.")
    workers = param.Integer(
        0,
        bounds=(0, 256),
        doc="Worker processes (0: min(4, CPU count)); the images do not depend on it.",
    )
    z_lens = param.Number(0.5, bounds=(0.01, 5.0), doc="Lens redshift.")
    z_source = param.Number(1.0, bounds=(0.02, 10.0), doc="Source redshift (> z_lens).")
    theta_e_min = param.Number(
        0.8, bounds=(0.05, 5.0), doc="Smallest Einstein radius of the SIE, arcsec."
    )
    theta_e_max = param.Number(
        1.2, bounds=(0.05, 5.0), doc="Largest Einstein radius of the SIE, arcsec (uniform)."
    )
    lens_e_max = param.Number(
        0.2, bounds=(0.0, 0.6), doc="Largest ellipticity modulus |e| = (1-q)/(1+q) of the SIE."
    )
    shear_max = param.Number(
        0.05, bounds=(0.0, 0.3), doc="Largest external shear modulus |gamma| (dimensionless)."
    )
    lens_offset_max = param.Number(
        0.05, bounds=(0.0, 2.0), doc="Lens centre uniform within this radius of 0, arcsec."
    )
    source_offset_max = param.Number(
        0.3,
        bounds=(0.0, 1.0),
        doc="Source centre uniform within this radius of the lens centre, in units of theta_E.",
    )
    source_mag_min = param.Number(
        22.0, bounds=(10.0, 35.0), doc="Brightest source AB magnitude (unlensed)."
    )
    source_mag_max = param.Number(
        24.0, bounds=(10.0, 35.0), doc="Faintest source AB magnitude (uniform)."
    )
    source_r_min = param.Number(
        0.1, bounds=(0.01, 5.0), doc="Smallest source Sersic half-light radius, arcsec."
    )
    source_r_max = param.Number(
        0.4, bounds=(0.01, 5.0), doc="Largest source Sersic half-light radius, arcsec."
    )
    source_n_min = param.Number(
        0.5, bounds=(0.3, 8.0), doc="Smallest source Sersic index (uniform)."
    )
    source_n_max = param.Number(4.0, bounds=(0.3, 8.0), doc="Largest source Sersic index.")
    source_e_max = param.Number(
        0.3, bounds=(0.0, 0.6), doc="Largest source ellipticity modulus (dimensionless)."
    )
    lens_light = param.Boolean(
        False, doc="Add the lens galaxy's light (Sersic, n in [3, 5], mass-aligned)."
    )
    lens_light_mag_min = param.Number(
        18.0, bounds=(10.0, 35.0), doc="Brightest lens-light AB magnitude."
    )
    lens_light_mag_max = param.Number(
        20.0, bounds=(10.0, 35.0), doc="Faintest lens-light AB magnitude (uniform)."
    )
    lens_light_r_min = param.Number(
        0.5, bounds=(0.01, 10.0), doc="Smallest lens-light half-light radius, arcsec."
    )
    lens_light_r_max = param.Number(
        1.5, bounds=(0.01, 10.0), doc="Largest lens-light half-light radius, arcsec."
    )
    subhalo_mean = param.Number(
        25.0,
        bounds=(0.0, 10000.0),
        doc="Mean number of subhaloes (Poisson) of a cdm image (DeepLense's 25; used when "
        "subhalo_fraction is 0).",
    )
    subhalo_fraction = param.Number(
        0.0,
        bounds=(0.0, 0.5),
        doc="Projected mass fraction f_sub of the subhaloes within subhalo_radius theta_E "
        "(of the SIS mass there); > 0 sets the Poisson mean number of each image from it "
        "(measured f_sub ~ 0.008, Vegetti et al. 2014, MNRAS 442, 2017; 25 subhaloes of the "
        "default mass function give ~0.0002). 0: subhalo_mean.",
    )
    subhalo_mass_min = param.Number(
        1e6, bounds=(1e3, 1e13), doc="Lightest subhalo mass, Msun (M_200c for tnfw)."
    )
    subhalo_mass_max = param.Number(
        1e10, bounds=(1e3, 1e13), doc="Heaviest subhalo mass, Msun (M_200c for tnfw)."
    )
    subhalo_slope = param.Number(
        -1.9, bounds=(-3.0, -1.05), doc="Slope of the subhalo mass function dN/dm ~ m^slope."
    )
    subhalo_radius = param.Number(
        2.0,
        bounds=(0.1, 5.0),
        doc="Subhaloes uniform in area within this radius of the lens centre, units of theta_E.",
    )
    subhalo_profile = param.Selector(
        default="point_mass",
        objects=["point_mass", "tnfw"],
        doc="Subhalo profile: point masses (DeepLense Model I) or truncated NFW (Duffy et al. "
        "2008 concentration, truncated at r_200).",
    )
    vortex_mass_min = param.Number(
        1e10, bounds=(1e6, 1e13), doc="Smallest total vortex mass, Msun (log-uniform)."
    )
    vortex_mass_max = param.Number(5e10, bounds=(1e6, 1e13), doc="Largest total vortex mass, Msun.")
    vortex_length_min = param.Number(
        0.5, bounds=(0.01, 20.0), doc="Shortest vortex, arcsec (uniform)."
    )
    vortex_length_max = param.Number(3.0, bounds=(0.01, 20.0), doc="Longest vortex, arcsec.")
    vortex_points = param.Integer(
        100, bounds=(2, 2000), doc="Point masses that make up a vortex (DeepLense: 100)."
    )
    noise = param.Boolean(True, doc="Add Poisson and background noise (false: noiseless).")
    snr = param.Number(
        25.0,
        bounds=(0.1, 1e5),
        doc="Peak signal-to-noise: brightest noiseless arc pixel / background rms (DeepLense "
        "Model I: ~25).",
    )


#: Pairs of (low, high) settings that must be ordered.
_RANGES = (
    ("theta_e_min", "theta_e_max"),
    ("source_mag_min", "source_mag_max"),
    ("source_r_min", "source_r_max"),
    ("source_n_min", "source_n_max"),
    ("lens_light_mag_min", "lens_light_mag_max"),
    ("lens_light_r_min", "lens_light_r_max"),
    ("subhalo_mass_min", "subhalo_mass_max"),
    ("vortex_mass_min", "vortex_mass_max"),
    ("vortex_length_min", "vortex_length_max"),
)


def check_settings(settings: StrongLensParams) -> None:
    """Raise :class:`ConfigError` (one line naming the setting) for settings that cannot make
    images: z_source <= z_lens, a low end above its high end, size 1..7, an unreadable or
    malformed ``psf`` kernel."""
    lens_cosmo(float(settings.z_lens), float(settings.z_source))
    for lo, hi in _RANGES:
        a, b = getattr(settings, lo), getattr(settings, hi)
        if a > b:
            raise ConfigError(f"{lo}={a!r} must not exceed {hi}={b!r}")
    if 0 < settings.size < 8:
        raise ConfigError(f"size={settings.size!r} is out of range: allowed 0 or 8 <= size <= 1024")
    if settings.psf:
        load_psf_kernel(settings.psf)


def split_group(settings: StrongLensParams) -> int:
    """Consecutive images a dataset keeps in one split: 3 (one of each class) with
    ``substructure="all"``, so that every split is balanced; else 1."""
    return len(CLASSES) if settings.substructure == "all" else 1


def sample_bytes(settings: StrongLensParams) -> int:
    """Bytes of one written image: float32 pixels plus its per-sample coords (8 bytes each, the
    class string and a split code), for the output checks before generation."""
    size = instrument(settings).size
    return 4 * size**2 + 8 * len(SAMPLE_COORDS) + 32


def to_dataarray(images: np.ndarray, rows: list[dict], settings: StrongLensParams):
    """Wrap images (B, N, N) and their per-sample coord values in the DataArray of the module
    docstring."""
    inst = instrument(settings)
    x, y = pixel_coordinates(inst.size, inst.pixel_scale)
    coords = {
        "x": ("x", x, {"units": "arcsec"}),
        "y": ("y", y, {"units": "arcsec"}),
        "substructure": (
            "sample",
            np.array([r["substructure"] for r in rows], dtype=object),
            {"flag_meanings": " ".join(CLASSES)},
        ),
    }
    for name, unit in SAMPLE_COORDS.items():
        dtype = np.int64 if name == "n_subhalo" else np.float64
        coords[name] = ("sample", np.array([r[name] for r in rows], dtype=dtype), {"units": unit})
    attrs = {
        k: (int(v) if isinstance(v, bool) else "" if v is None else v)
        for k, v in to_dict(settings).items()
        if k not in ("count", "workers")
    }
    attrs.update(
        kind="strong_lens",
        size=inst.size,
        pixel_scale=inst.pixel_scale,
        psf_fwhm=inst.psf_fwhm,
        zero_point=inst.zero_point,
        exposure_time=inst.exposure_time,
        instrument=inst.source,
        cosmology=COSMOLOGY,
        classes=" ".join(CLASSES),
        units="e-/s per pixel",
        long_name="strong-lens image (lenstronomy), electrons per second per pixel",
        coordinate_units="arcsec",
        engine_version=engine.__version__,
    )
    return xr.DataArray(
        np.asarray(images, dtype=np.float32),
        dims=("sample", "y", "x"),
        coords=coords,
        name="image",
        attrs=attrs,
    )


def generate_chunks(
    settings: StrongLensParams, chunk: int | None = None, progress: bool | None = None
) -> Iterator[xr.DataArray]:
    """The ``settings.count`` images as consecutive DataArrays of ``chunk`` samples (default
    all), generated lazily by one pool of ``workers`` processes; concatenated they equal
    :func:`generate`.

    Parameters
    ----------
    settings : StrongLensParams
    chunk : int, optional
        Samples per DataArray (>= 1).
    progress : bool, optional
        tqdm bar over the images; default when stderr is a terminal.

    Raises
    ------
    ConfigError
        Bad settings (:func:`check_settings`, before any work).
    """
    check_settings(settings)
    count = int(settings.count)
    chunk = count if chunk is None else max(1, int(chunk))
    if progress is None:
        progress = sys.stderr.isatty()
    return _chunks(settings, count, chunk, progress)


def _chunks(settings, count, chunk, progress):
    """Generator of :func:`generate_chunks` (settings checked)."""
    from tqdm.auto import tqdm

    images, rows = [], []
    with tqdm(total=count, disable=not progress, desc="strong_lens", unit="image") as bar:
        for block, block_rows in render_images(settings, 0, count):
            images.append(block)
            rows.extend(block_rows)
            bar.update(len(block))
            while len(rows) >= chunk:
                stack = np.concatenate(images)
                yield to_dataarray(stack[:chunk], rows[:chunk], settings)
                images, rows = [stack[chunk:]], rows[chunk:]
        if rows:
            yield to_dataarray(np.concatenate(images), rows, settings)


def generate(settings: StrongLensParams, progress: bool | None = None) -> xr.DataArray:
    """``settings.count`` images from ``settings.seed`` as one DataArray (module docstring).

    Raises
    ------
    ConfigError
        Bad settings (:func:`check_settings`).
    """
    parts = list(generate_chunks(settings, None, progress))
    return parts[0] if len(parts) == 1 else xr.concat(parts, dim="sample")


def settings_from_attrs(attrs: dict) -> StrongLensParams:
    """Rebuild the settings a DataArray was generated with, from its attrs: 0/1 → booleans,
    "" → None, numpy scalars → Python numbers; attrs that are not settings are ignored.

    Raises
    ------
    ConfigError
        A value outside a setting's bounds.
    """
    names = set(user_settings(StrongLensParams))
    values = {}
    for k, v in attrs.items():
        if k not in names:
            continue
        v = v.item() if getattr(v, "ndim", None) == 0 else v
        p = StrongLensParams.param[k]
        if isinstance(p, param.Boolean):
            v = bool(v)
        elif v == "" and p.allow_None:
            v = None
        elif isinstance(v, float) and math.isnan(v):
            continue  # psf_fwhm of a tabulated PSF
        values[k] = v
    return set_values(StrongLensParams(), values)
