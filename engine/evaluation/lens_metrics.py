r"""Physics metrics of strong-lens images, for comparing generated with real images of a class
(the class-conditional diffusion report, :mod:`engine.evaluation.lens_eval`).

Pure functions on batches of images (numpy or torch, float, ``(B, N, N)`` or ``(B, 1, N, N)``,
in the images' units, e⁻ s⁻¹ per pixel for the ``strong_lens`` kind) that know nothing of
networks.

Definitions
-----------
* Noise level σ of an image (:func:`noise_level`): the robust standard deviation
  ``1.4826 · MAD`` of all its pixels (exact for Gaussian noise; the arcs cover a small fraction
  of a lens image, so the median and MAD are those of the background).
* Ring radius R (:func:`ring_radius`), arcsec: the **flux-weighted mean distance from the image
  centre of the pixels brighter than ν σ** (ν = :data:`RING_NSIGMA` = 3 by default),
  ``R = Σ_{I_p > νσ} I_p r_p / Σ_{I_p > νσ} I_p``, with ``r_p`` the distance of pixel p's centre
  from the centre of the pixel grid (at index (N − 1)/2, i.e. the lens centre up to the lens's
  offset, ≤ 0.05 arcsec in the ``strong_lens`` kind) times the pixel scale. For a thin ring of
  radius r and Gaussian width w it is (r² + w²)/r ≈ r. NaN for an image with no pixel above
  the threshold. The threshold keeps the noise out of the mean (with ν = 3, 0.13 % of pure
  noise pixels pass it); it is a property of the image, not a fit of the Einstein radius.
* Total flux F (:func:`total_flux`): the sum of all pixels, image units × pixel (e⁻ s⁻¹ for the
  ``strong_lens`` kind); the zero-mean background noise adds ≈ σ N to its scatter.
* Two-sample Kolmogorov–Smirnov statistic (:func:`ks_distance`): ``scipy.stats.ks_2samp``, the
  largest distance between the two empirical CDFs (0 for identical samples, 1 for disjoint
  ones), with its asymptotic p-value; NaN values are left out.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from engine.params import ConfigError

__all__ = [
    "RING_NSIGMA",
    "compare_distributions",
    "ks_distance",
    "noise_level",
    "ring_radius",
    "total_flux",
]

#: Threshold of :func:`ring_radius`, in units of the image's noise level σ.
RING_NSIGMA = 3.0


def _images(x, name: str = "images") -> np.ndarray:
    """``(B, N, N)`` float64 array from ``(B, N, N)`` or ``(B, 1, N, N)`` numpy/torch.

    Raises
    ------
    ConfigError
        Another shape (several channels, not square, no images).
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or a.shape[-1] != a.shape[-2] or a.shape[0] < 1 or a.shape[-1] < 2:
        raise ConfigError(
            f"{name}: expected single-channel square images (B, N, N) or (B, 1, N, N), got "
            f"{tuple(a.shape)}"
        )
    return a


def noise_level(images) -> np.ndarray:
    """Robust noise level σ = 1.4826 · MAD of each image's pixels (module docstring).

    Parameters
    ----------
    images : array or torch.Tensor (B, N, N) or (B, 1, N, N), float
        Image units (e.g. e⁻ s⁻¹ per pixel).

    Returns
    -------
    numpy.ndarray (B,) float64, image units (0 for an image whose pixels are mostly equal).

    Raises
    ------
    ConfigError
        Images of another shape.
    """
    a = _images(images).reshape(len(images), -1)
    med = np.median(a, axis=1, keepdims=True)
    return 1.4826 * np.median(np.abs(a - med), axis=1)


def ring_radius(images, pixel_scale: float, nsigma: float = RING_NSIGMA) -> np.ndarray:
    """Flux-weighted mean radius of the pixels above ν σ, per image (module docstring).

    Parameters
    ----------
    images : array or torch.Tensor (B, N, N) or (B, 1, N, N), float
        Image units; the lens at the centre of the pixel grid.
    pixel_scale : float
        Pixel side in arcsec (> 0).
    nsigma : float
        Threshold ν ≥ 0 in units of each image's :func:`noise_level`.

    Returns
    -------
    numpy.ndarray (B,) float64, arcsec; NaN where no pixel exceeds the threshold.

    Raises
    ------
    ConfigError
        Images of another shape, a pixel scale ≤ 0 or non-finite, a negative ν.
    """
    if not (math.isfinite(float(pixel_scale)) and float(pixel_scale) > 0):
        raise ConfigError(f"pixel_scale={pixel_scale!r} must be a positive number (arcsec)")
    if not (math.isfinite(float(nsigma)) and float(nsigma) >= 0):
        raise ConfigError(f"nsigma={nsigma!r} must be a number >= 0")
    a = _images(images)
    n = a.shape[-1]
    idx = np.arange(n) - (n - 1) / 2
    r = np.hypot(idx[:, None], idx[None, :]) * float(pixel_scale)
    thr = float(nsigma) * noise_level(a)[:, None, None]
    w = np.where(a > thr, a, 0.0)
    total = w.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (w * r).sum(axis=(1, 2)) / total
    return np.where(total > 0, out, np.nan)


def total_flux(images) -> np.ndarray:
    """Sum of every image's pixels (module docstring).

    Parameters
    ----------
    images : array or torch.Tensor (B, N, N) or (B, 1, N, N), float
        Image units per pixel (e⁻ s⁻¹ per pixel for the ``strong_lens`` kind).

    Returns
    -------
    numpy.ndarray (B,) float64, image units (e⁻ s⁻¹).

    Raises
    ------
    ConfigError
        Images of another shape.
    """
    return _images(images).sum(axis=(1, 2))


def ks_distance(a, b) -> dict[str, Any]:
    """Two-sample Kolmogorov–Smirnov statistic of two sets of values (``scipy.stats.ks_2samp``,
    two-sided, NaN left out).

    Parameters
    ----------
    a, b : array-like (n_a,), (n_b,) float

    Returns
    -------
    dict: ``ks`` (statistic in [0, 1]; NaN when a set has no finite value), ``pvalue``, ``n_a``,
    ``n_b`` (finite values used).
    """
    from scipy.stats import ks_2samp

    x = np.asarray(a, np.float64).reshape(-1)
    y = np.asarray(b, np.float64).reshape(-1)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) == 0 or len(y) == 0:
        return {"ks": math.nan, "pvalue": math.nan, "n_a": len(x), "n_b": len(y)}
    res = ks_2samp(x, y)
    return {
        "ks": float(res.statistic),
        "pvalue": float(res.pvalue),
        "n_a": len(x),
        "n_b": len(y),
    }


def _stats(v: np.ndarray) -> tuple[float, float]:
    f = v[np.isfinite(v)]
    if len(f) == 0:
        return math.nan, math.nan
    return float(f.mean()), float(f.std(ddof=1)) if len(f) > 1 else 0.0


def compare_distributions(gen, real, real_other=None, unit: str = "") -> dict[str, Any]:
    """Summary of one per-image quantity, generated against real, with its floor.

    Parameters
    ----------
    gen, real : array-like (n,) float
        The quantity of the generated images and of the real images they are compared with.
    real_other : array-like (m,) float, optional
        The same quantity of a disjoint real set of the same size: ``ks_floor`` =
        KS(real_other, real), what a perfect generator scores at that size.
    unit : str
        Unit of the quantity (recorded).

    Returns
    -------
    dict: ``generated_mean``, ``generated_std``, ``real_mean``, ``real_std`` (finite values),
    ``ks``, ``ks_pvalue``, ``ks_floor`` (None without ``real_other``), ``nan_generated``,
    ``nan_real`` (counts of undefined values), ``unit``.
    """
    g = np.asarray(gen, np.float64).reshape(-1)
    r = np.asarray(real, np.float64).reshape(-1)
    ks = ks_distance(g, r)
    gm, gs = _stats(g)
    rm, rs = _stats(r)
    out: dict[str, Any] = {
        "generated_mean": gm,
        "generated_std": gs,
        "real_mean": rm,
        "real_std": rs,
        "ks": ks["ks"],
        "ks_pvalue": ks["pvalue"],
        "ks_floor": None,
        "nan_generated": int(np.sum(~np.isfinite(g))),
        "nan_real": int(np.sum(~np.isfinite(r))),
        "unit": unit,
    }
    if real_other is not None:
        out["ks_floor"] = ks_distance(real_other, r)["ks"]
    return out
