"""HEALPix Q/U sky inputs shared by the quadratic estimator (:mod:`engine.physics.cmb_qe`) and
the delensing metrics (:mod:`engine.evaluation.delensing_spectra`, which re-exports them): map
and attrs checks with one-line :class:`~engine.params.ConfigError` s, the Gaussian beam, the
multipole limit, threads. No torch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import healpy as hp
import numpy as np

from engine.params import ConfigError

#: One arcminute in radians.
ARCMIN = math.pi / (180.0 * 60.0)


def _maps(x, name: str) -> np.ndarray:
    """``(n, npix) float64`` from ``(npix,)`` or ``(n, npix)``; ConfigError for bad input."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name} must be a float array (npix,) or (n_sky, npix): {e}") from None
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] == 0 or not hp.isnpixok(a.shape[1]):
        raise ConfigError(
            f"{name} has shape {np.shape(x)}: expected (npix,) or (n_sky, npix) with npix = "
            "12*nside**2"
        )
    return a


def _pair(q, u, name: str) -> tuple[np.ndarray, np.ndarray]:
    q, u = _maps(q, f"{name} Q"), _maps(u, f"{name} U")
    if q.shape != u.shape:
        raise ConfigError(f"{name}: Q has shape {q.shape} and U {u.shape}; they must match")
    return q, u


def _attrs(sky) -> dict:
    """The attrs of a sky: ``sky.attrs`` or ``sky["attrs"]`` (ConfigError if neither)."""
    attrs = getattr(sky, "attrs", None)
    if attrs is None and isinstance(sky, Mapping):
        attrs = sky.get("attrs")
    if not isinstance(attrs, Mapping):
        raise ConfigError("sky has no attrs (sky.attrs or sky['attrs'] with noise, beam, nside)")
    return dict(attrs)


def _attr(attrs: Mapping, key: str) -> float:
    if key not in attrs:
        raise ConfigError(f"sky attrs lack {key!r}")
    try:
        v = float(attrs[key])
    except (TypeError, ValueError):
        raise ConfigError(f"sky attrs {key}={attrs[key]!r} must be a number") from None
    if not math.isfinite(v) or v < 0:
        raise ConfigError(f"sky attrs {key}={attrs[key]!r} must be a finite number >= 0")
    return v


def _cosmology(attrs: Mapping) -> dict:
    """omega_m, sigma8, omega_b, h, n_s from ``attrs["cosmology"]`` (dict or JSON) or attrs."""
    c = attrs.get("cosmology")
    if isinstance(c, str | bytes):
        try:
            c = json.loads(c)
        except ValueError:
            raise ConfigError("sky attrs cosmology is not a JSON object") from None
    src = c if isinstance(c, Mapping) else attrs
    keys = ("omega_m", "sigma8", "omega_b", "h", "n_s")
    return {k: float(src[k]) for k in keys if k in src}


def _sky_map(sky, key: str) -> np.ndarray:
    try:
        v = sky[key]
    except (KeyError, TypeError):
        raise ConfigError(f"sky lacks the map {key!r}") from None
    return _maps(v, key)


def _sky_mask(sky) -> np.ndarray | None:
    try:
        m = sky["mask"]
    except (KeyError, TypeError):
        return None
    return None if m is None else np.asarray(m, dtype=np.float64)


def _threads() -> int:
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


def _gauss_beam(beam_arcmin: float, lmax: int) -> np.ndarray:
    """b_ℓ of a Gaussian beam of FWHM ``beam_arcmin`` (0: no beam), ``(lmax + 1,)``."""
    if beam_arcmin < 0 or not math.isfinite(beam_arcmin):
        raise ConfigError(f"beam={beam_arcmin} must be a finite FWHM >= 0 arcmin")
    return hp.gauss_beam(beam_arcmin * ARCMIN, lmax=lmax)


def _lmax(npix: int, lmax: int | None) -> int:
    nside = hp.npix2nside(npix)
    if lmax is None:
        return 3 * nside - 1
    lmax = int(lmax)
    if not 2 <= lmax <= 4 * nside:
        raise ConfigError(
            f"lmax={lmax} is out of range: allowed 2 <= lmax <= 4*nside = {4 * nside}"
        )
    return lmax
