r"""Strong-lens images with lenstronomy: instrument presets, lens components, one image, and
the loop over worker processes.

lenstronomy (Birrer & Amara 2018, PDU 22, 189; Birrer et al. 2021, JOSS 6, 3283) does all the
lensing: our code only assembles its ``LensModel``, ``LightModel``, ``ImageData``, ``PSF`` and
``ImageModel`` from the parameters drawn by :func:`engine.physics.strong_lens_model.
draw_parameters`. Angles in arcsec, masses in M☉, pixels in e⁻ s⁻¹ per pixel.

Image model (one image, :func:`render`)
---------------------------------------
* Main lens: ``SIE`` (θ_E, e1, e2, centre) + external ``SHEAR`` (γ1, γ2, centred on the lens),
  one lens plane at z_lens (every subhalo and vortex point is in the same plane).
* Source: ``SERSIC_ELLIPSE`` at z_source, amplitude from its AB magnitude m:
  total rate 10^(−0.4 (m − zp)) e⁻/s with the preset's zero point zp
  (``lenstronomy.Util.data_util.magnitude2amplitude``).
* Lens light (optional): ``SERSIC_ELLIPSE`` at the lens centre with the SIE's e1, e2 (light
  follows mass), amplitude from its magnitude in the same way.
* Instrument: ``ImageData`` of ``size``² pixels of ``pixel_scale`` arcsec centred on (0, 0)
  (x to the right with the column index, y up with the row index), a Gaussian ``PSF`` of FWHM
  ``psf_fwhm`` (truncated at 5 σ) or a tabulated kernel, surface brightness integrated with
  ``supersampling``² sub-pixels (``ImageModel`` numerics; PSF convolved at the pixel scale).
* Noise (``noise=True``): Poisson counts of the noiseless image over the preset's exposure time
  T (counts / T, e⁻/s), plus zero-mean Gaussian background (sky-subtracted sky + read noise) of
  rms σ_bkg = peak / ``snr``, where peak is the brightest pixel of the noiseless lensed source
  (PSF convolved, without lens light): ``snr`` is the peak signal-to-noise ratio of the arcs
  against the background. σ_bkg [e⁻/s] is recorded per image.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.params import ConfigError, to_dict
from engine.physics.pool import ordered_map
from engine.physics.strong_lens_model import (
    draw_parameters,
    point_mass_theta_e,
    rng,
    tnfw_kwargs,
    velocity_dispersion,
)

#: Gaussian PSF truncation in units of σ (lenstronomy ``PSF(truncation=...)``).
PSF_TRUNCATION = 5.0
#: Images per task of a worker process (and the most held back per worker).
BLOCK = 16
#: Modules the forkserver imports once, so that worker processes start without importing them.
_PRELOAD = (
    "astropy.cosmology",
    "lenstronomy.ImSim.image_model",
    "lenstronomy.LensModel.lens_model",
    "lenstronomy.LightModel.light_model",
)


@dataclass(frozen=True)
class Instrument:
    """An instrument preset: image grid, PSF, photometric zero point and exposure.

    Attributes
    ----------
    size : int
        Pixels per side.
    pixel_scale : float
        Pixel side, arcsec.
    psf_fwhm : float
        FWHM of the Gaussian PSF, arcsec.
    zero_point : float
        AB magnitude of a source giving 1 e⁻/s.
    exposure_time : float
        Seconds (sets the Poisson noise).
    source : str
        Where the numbers come from.
    """

    size: int
    pixel_scale: float
    psf_fwhm: float
    zero_point: float
    exposure_time: float
    source: str


#: Instrument presets, after the ML4SCI DeepLense simulations (mwt5345/DeepLenseSim) and
#: lenstronomy's ``SimulationAPI.ObservationConfig``.
PRESETS = {
    "euclid": Instrument(
        64,
        0.101,
        0.16,
        25.72,
        4 * 566.0,
        "Euclid VIS: 0.101 arcsec pixels, PSF FWHM 0.16 arcsec, AB zero point 25.72, 4 x 566 s "
        "(lenstronomy ObservationConfig.Euclid VIS band); 64^2 cut-outs as DeepLense Model II",
    ),
    "hst": Instrument(
        64,
        0.05,
        0.1,
        25.94,
        2200.0,
        "HST ACS/WFC F814W-like: 0.05 arcsec drizzled pixels, PSF FWHM 0.1 arcsec, AB zero point "
        "25.94, one orbit ~2200 s",
    ),
    "deeplense_model_i": Instrument(
        150,
        0.05,
        0.087,
        25.94,
        10**3.25,
        "DeepLense Model I (DeepLenseSim Model_I): 150^2 pixels of 0.05 arcsec, Gaussian PSF "
        "FWHM 0.087 arcsec, exposure 10^3.25 s (the middle of their 10^U(3, 3.5)), SNR ~ 25",
    ),
}


def instrument(settings) -> Instrument:
    """The preset of ``settings`` with its ``size``, ``pixel_scale`` and ``psf_fwhm`` overrides
    (0 keeps the preset's; ``psf_fwhm`` is NaN with a tabulated ``psf``)."""
    base = PRESETS[settings.preset]
    return Instrument(
        int(settings.size or base.size),
        float(settings.pixel_scale or base.pixel_scale),
        math.nan if settings.psf else float(settings.psf_fwhm or base.psf_fwhm),
        base.zero_point,
        base.exposure_time,
        base.source,
    )


# ---------------------------------------------------------------------------------------------
# lenstronomy models and one image
# ---------------------------------------------------------------------------------------------


def lens_components(settings, p: dict) -> tuple[list[str], list[dict]]:
    """lenstronomy (lens_model_list, kwargs_lens) of the drawn parameters ``p``: SIE, SHEAR,
    then the subhaloes (POINT_MASS or TNFW) or the ``vortex_points`` point masses of the vortex
    (equal masses evenly spaced over its length)."""
    z_l, z_s = settings.z_lens, settings.z_source
    models = ["SIE", "SHEAR"]
    kwargs = [
        {
            "theta_E": p["theta_e"],
            "e1": p["lens_e1"],
            "e2": p["lens_e2"],
            "center_x": p["lens_x"],
            "center_y": p["lens_y"],
        },
        {"gamma1": p["gamma1"], "gamma2": p["gamma2"], "ra_0": p["lens_x"], "dec_0": p["lens_y"]},
    ]
    if p["n_subhalo"]:
        if settings.subhalo_profile == "tnfw":
            for m, x, y in zip(p["subhalo_mass"], p["subhalo_x"], p["subhalo_y"], strict=True):
                models.append("TNFW")
                kwargs.append(tnfw_kwargs(m, float(x), float(y), z_l, z_s))
        else:
            theta = point_mass_theta_e(p["subhalo_mass"], z_l, z_s)
            for t, x, y in zip(theta, p["subhalo_x"], p["subhalo_y"], strict=True):
                models.append("POINT_MASS")
                kwargs.append({"theta_E": float(t), "center_x": float(x), "center_y": float(y)})
    if p["substructure"] == "vortex":
        k = int(settings.vortex_points)
        theta = float(point_mass_theta_e(p["vortex_mass"] / k, z_l, z_s))
        t = np.linspace(-0.5, 0.5, k) * p["vortex_length"]
        ca, sa = math.cos(p["vortex_angle"]), math.sin(p["vortex_angle"])
        for ti in t:
            models.append("POINT_MASS")
            kwargs.append(
                {
                    "theta_E": theta,
                    "center_x": p["vortex_x"] + ti * ca,
                    "center_y": p["vortex_y"] + ti * sa,
                }
            )
    return models, kwargs


def load_psf_kernel(path: str) -> np.ndarray:
    """A tabulated PSF: a 2D ``.npy`` array, odd square, finite, ≥ 0, positive sum (normalised
    to unit sum here), sampled at the image pixel scale.

    Raises
    ------
    ConfigError
        Missing or unreadable file, or an array that is not such a kernel.
    """
    try:
        kernel = np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"psf={path!r} could not be read: {exc}".splitlines()[0]) from None
    kernel = np.asarray(kernel, dtype=np.float64)
    ok = kernel.ndim == 2 and kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    if not ok or not np.isfinite(kernel).all() or (kernel < 0).any() or kernel.sum() <= 0:
        raise ConfigError(
            f"psf={path!r} must hold a 2D odd-sized square array >= 0 with a positive sum, got "
            f"shape {kernel.shape}"
        )
    return kernel / kernel.sum()


@functools.lru_cache(maxsize=8)
def _instrument_classes(size: int, pixel_scale: float, fwhm: float, psf: str):
    """lenstronomy (ImageData, PSF) of a grid and PSF (cached per process)."""
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.Util.simulation_util import data_configure_simple

    data = ImageData(**data_configure_simple(size, pixel_scale, exposure_time=1.0))
    if psf:
        psf_class = PSF(psf_type="PIXEL", kernel_point_source=load_psf_kernel(psf))
    else:
        psf_class = PSF(
            psf_type="GAUSSIAN", fwhm=fwhm, pixel_size=pixel_scale, truncation=PSF_TRUNCATION
        )
    return data, psf_class


def pixel_coordinates(size: int, pixel_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) [arcsec] of the pixel centres of the image grid: x per column, y per row."""
    data, _ = _instrument_classes(size, pixel_scale, 1.0, "")
    ra, dec = data.pixel_coordinates
    return np.asarray(ra[0, :], np.float64), np.asarray(dec[:, 0], np.float64)


def render(settings, p: dict, instrument: Instrument) -> tuple[np.ndarray, dict]:
    """The image of drawn parameters ``p`` (:func:`draw_parameters`) seen by ``instrument``.

    Returns
    -------
    image : numpy.ndarray (size, size) float64
        e⁻/s per pixel; noisy when ``settings.noise`` (module docstring).
    extra : dict
        source_amp, lens_light_amp (lenstronomy Sérsic amplitudes, NaN without lens light),
        magnification (noiseless lensed source flux in the image / unlensed source flux),
        background_rms [e⁻/s per pixel] (0 without noise).
    """
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    from lenstronomy.Util.data_util import magnitude2amplitude, magnitude2cps

    data, psf = _instrument_classes(
        instrument.size, instrument.pixel_scale, instrument.psf_fwhm, settings.psf or ""
    )
    models, kwargs_lens = lens_components(settings, p)
    source = LightModel(["SERSIC_ELLIPSE"])
    kwargs_source = magnitude2amplitude(
        source,
        [
            {
                "magnitude": p["source_mag"],
                "R_sersic": p["source_r_sersic"],
                "n_sersic": p["source_n_sersic"],
                "e1": p["source_e1"],
                "e2": p["source_e2"],
                "center_x": p["source_x"],
                "center_y": p["source_y"],
            }
        ],
        instrument.zero_point,
    )
    light, kwargs_light = None, None
    if settings.lens_light:
        light = LightModel(["SERSIC_ELLIPSE"])
        kwargs_light = magnitude2amplitude(
            light,
            [
                {
                    "magnitude": p["lens_light_mag"],
                    "R_sersic": p["lens_light_r_sersic"],
                    "n_sersic": p["lens_light_n_sersic"],
                    "e1": p["lens_e1"],
                    "e2": p["lens_e2"],
                    "center_x": p["lens_x"],
                    "center_y": p["lens_y"],
                }
            ],
            instrument.zero_point,
        )
    model = ImageModel(
        data,
        psf,
        lens_model_class=LensModel(models),
        source_model_class=source,
        lens_light_model_class=light,
        kwargs_numerics={
            "supersampling_factor": int(settings.supersampling),
            "supersampling_convolution": False,
        },
    )
    arcs = model.image(kwargs_lens, kwargs_source, kwargs_light, lens_light_add=False)
    image = arcs
    if light is not None:
        image = arcs + model.image(kwargs_lens, kwargs_source, kwargs_light, source_add=False)
    cps = float(magnitude2cps(p["source_mag"], instrument.zero_point))
    extra = {
        "source_amp": float(kwargs_source[0]["amp"]),
        "lens_light_amp": float(kwargs_light[0]["amp"]) if kwargs_light else math.nan,
        "magnification": float(arcs.sum()) / cps,
        "background_rms": 0.0,
    }
    if settings.noise:
        noise = rng(settings.seed, p["index"], 2)
        sigma = float(arcs.max()) / float(settings.snr)
        t = instrument.exposure_time
        image = noise.poisson(np.clip(image, 0.0, None) * t) / t
        image = image + noise.normal(0.0, sigma, image.shape)
        extra["background_rms"] = sigma
    return np.asarray(image, dtype=np.float64), extra


# ---------------------------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------------------------


def _workers(settings) -> int:
    return int(settings.workers) or min(4, os.cpu_count() or 1)


def render_block(cls, values: dict, start: int, stop: int) -> tuple[np.ndarray, list[dict]]:
    """Images ``start`` … ``stop`` − 1 of the settings ``cls(**values)`` (a worker's task):
    (n, N, N) float32, and per image the scalars of :func:`draw_parameters` and :func:`render`
    plus velocity_dispersion [km/s]."""
    settings = cls(**values)
    inst = instrument(settings)
    images, rows = [], []
    for i in range(start, stop):
        p = draw_parameters(settings, i)
        image, extra = render(settings, p, inst)
        row = {k: v for k, v in p.items() if np.ndim(v) == 0}
        row.update(extra)
        row["velocity_dispersion"] = velocity_dispersion(
            p["theta_e"], settings.z_lens, settings.z_source
        )
        images.append(image.astype(np.float32))
        rows.append(row)
    return np.stack(images), rows


def _context():
    """Start method of the worker processes: the platform's default (fork on Linux before
    Python 3.14: workers inherit the imported lenstronomy), with lenstronomy preloaded in the
    server when it is forkserver, so that workers start without importing it again."""
    ctx = multiprocessing.get_context()
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["engine.physics.strong_lens", *_PRELOAD])
    return ctx


def render_images(
    settings, start: int, stop: int, workers: int | None = None
) -> Iterator[tuple[np.ndarray, list[dict]]]:
    """Blocks of images ``start`` … ``stop`` − 1 in order: (images (n, N, N) float32, coords).

    With ``workers`` > 1 (default from the settings) and more than one block, blocks of
    :data:`BLOCK` images run in a ``ProcessPoolExecutor`` with at most two blocks per worker in
    flight (:func:`engine.physics.pool.ordered_map`); otherwise in this process. The images are
    the same either way.
    """
    values = to_dict(settings)
    starts = list(range(int(start), int(stop), BLOCK))
    blocks = [(b, min(b + BLOCK, int(stop))) for b in starts]
    workers = min(_workers(settings) if workers is None else int(workers), len(blocks))
    calls = ((type(settings), values, *b) for b in blocks)
    yield from ordered_map(render_block, calls, workers, _context() if workers > 1 else None)
