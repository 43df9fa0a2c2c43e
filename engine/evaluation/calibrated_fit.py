r"""Fitting the calibrated P(k) likelihood: the emulator's least-squares fit, its residual
covariance and Hartlap factor on labelled training maps, and the held-out validation.

:mod:`engine.evaluation.calibrated` defines the model (bins, emulator features, covariance with
the Hartlap factor, the :class:`~engine.evaluation.calibrated.Calibration` and its file format);
this module builds one from maps (:func:`fit_calibration`);
:mod:`engine.evaluation.calibrated_use` finds the training maps, caches fits and computes
posteriors. Formulas: see :mod:`engine.evaluation.calibrated`.

Validation
----------
Before the final fit on all n maps, the emulator and covariance are fitted on a random 80 % of
the maps (of the simulations, when the data has a ``simulation`` coord) and checked on the
other 20 %: ``validation["chi2_per_bin"]`` = mean over held-out maps of rᵀ Ψ r / K (≈ 1 + p/n
for a correct model; ``chi2_error`` = √(2/(K n_val)) its statistical error for independent maps)
and ``validation["max_bias_sigma"]`` = max over bins of |mean r_b| / (σ_b / √n_val) (the
emulator's bias in units of its statistical error; ≲ 3 expected).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from engine.evaluation.calibrated import (
    BATCH,
    CALIBRATION_SEED,
    DEFAULT_DEGREE,
    DEFAULT_MAX_BINS,
    Calibration,
    Geometry,
    _as_maps,
    _log_spectra,
    _monomials,
    calibration_bins,
    features,
    hartlap_factor,
)
from engine.evaluation.schema import PARAMS
from engine.params import ConfigError
from engine.physics.stats import bin_isotropic

__all__ = ["VALIDATION_FRACTION", "fit_calibration"]

#: Fraction of the maps (or simulations) held out for the validation of the emulator.
VALIDATION_FRACTION = 0.2


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------


def _fit(y: torch.Tensor, theta: torch.Tensor, lo, hi, degree: int):
    """(coef (p, K), cov Σ̂ (K, K), hartlap h) of ln P̂ y (n, K) at labels θ (n, 2)."""
    x = features(theta, lo, hi, degree)
    n, p = x.shape
    h = hartlap_factor(n, y.shape[1], p)
    coef = torch.linalg.lstsq(x, y, driver="gelsd").solution
    r = y - x @ coef
    cov = r.T @ r / (n - p)
    return coef, cov, h


def _groups(da, n: int) -> np.ndarray:
    """Group id per map: the ``simulation`` coord when present, else each map its own."""
    if "simulation" in da.coords and da["simulation"].dims == ("sample",):
        return np.asarray(da["simulation"].values)
    return np.arange(n)


def _validate(y, theta, groups, lo, hi, degree: int) -> dict[str, Any] | None:
    """The held-out check of the module docstring (Validation), or None when too few maps."""
    ids = np.unique(groups)
    n_out = int(round(VALIDATION_FRACTION * len(ids)))
    if n_out < 1 or n_out == len(ids):
        return None
    rng = np.random.default_rng(CALIBRATION_SEED)
    held = np.isin(groups, rng.choice(ids, n_out, replace=False))
    fit_idx = torch.as_tensor(np.nonzero(~held)[0])
    val_idx = torch.as_tensor(np.nonzero(held)[0])
    if val_idx.numel() < 2:
        return None
    try:
        coef, cov, h = _fit(y[fit_idx], theta[fit_idx], lo, hi, degree)
    except ConfigError:
        return None
    r = y[val_idx] - features(theta[val_idx], lo, hi, degree) @ coef
    psi = h * torch.linalg.inv(cov)
    k, n_val = y.shape[1], val_idx.numel()
    chi2 = float(torch.einsum("bk,kl,bl->b", r, psi, r).mean()) / k
    sigma = cov.diagonal().sqrt()
    bias = (r.mean(0) / (sigma / math.sqrt(n_val))).abs()
    return {
        "n_maps": int(n_val),
        "n_fit_maps": int(fit_idx.numel()),
        "chi2_per_bin": chi2,
        "chi2_error": math.sqrt(2 / (k * n_val)),
        "max_bias_sigma": float(bias.max()),
        "rms_residual": float(r.pow(2).mean().sqrt()),
    }


def fit_calibration(
    maps,
    spec: str | None = None,
    k_max: float | None = None,
    max_bins: int | None = DEFAULT_MAX_BINS,
    degree: int = DEFAULT_DEGREE,
    scale: Mapping[str, float | None] | None = None,
) -> Calibration:
    """Fit the calibrated likelihood on labelled maps (module docstring for the method).

    Parameters
    ----------
    maps : xarray.DataArray (sample, y, x)
        Training maps with per-sample ``omega_m`` and ``sigma8`` coords and a pixel scale (attr
        ``box_size`` in Mpc/h or ``fov`` in degrees, or ``scale``); read in batches.
    spec : str, optional
        Recorded as the calibration's ``spec`` (default the maps' ``source`` attr).
    k_max : float, optional
        Highest k_f-bin centre kept, h/Mpc (ℓ for flat-sky maps); default the Nyquist k_N.
    max_bins : int or None
        At most this many merged bins (:func:`calibration_bins`; None: k_f-wide bins).
    degree : int
        Total degree of the emulator polynomial in (ln Ω_m, ln σ8), 1 … 4.
    scale : mapping, optional
        ``{"box_size": L}`` or ``{"fov": θ}`` for maps without the attr.

    Returns
    -------
    Calibration (not saved: :meth:`Calibration.save`, or :func:`calibrate` for the cache).

    Raises
    ------
    ConfigError
        Maps without labels, pixel scale or of other dims; labels that do not vary or are not
        > 0; too few maps for the bins (n ≤ K + p + 1, :func:`hartlap_factor`); NaN/inf pixels
        or maps with zero power in a bin; a bad ``k_max``, ``max_bins`` or ``degree``.
    """
    if not isinstance(degree, int | np.integer) or not 1 <= int(degree) <= 4:
        raise ConfigError(f"degree={degree!r} is out of range: allowed 1 <= degree <= 4")
    degree = int(degree)
    geometry = Geometry.of(maps, scale)
    src = spec or str(maps.attrs.get("source", "<DataArray>"))
    if "omega_m" not in maps.coords or "sigma8" not in maps.coords:
        raise ConfigError(f"dataset {src!r} has no omega_m/sigma8 labels: calibration needs them")
    edges = calibration_bins(geometry.size, geometry.box, k_max, max_bins)
    n = int(maps.sizes["sample"])
    hartlap_factor(n, edges.numel() - 1, len(_monomials(degree)))  # refuse before reading maps
    ys, thetas = [], []
    for i in range(0, n, BATCH):
        try:
            x, t = _as_maps(maps.isel(sample=slice(i, i + BATCH)), first=i)
            ys.append(_log_spectra(x, geometry.box, edges, first=i))
        except ConfigError as exc:
            raise ConfigError(f"dataset {src!r}: {exc}") from None
        thetas.append(torch.from_numpy(t))
    y, theta = torch.cat(ys), torch.cat(thetas)
    if not bool(torch.isfinite(theta).all() & (theta > 0).all()):
        raise ConfigError(f"dataset {src!r}: omega_m and sigma8 labels must be finite and > 0")
    lo, hi = theta.min(0).values, theta.max(0).values
    flat = [PARAMS[j] for j in range(2) if not hi[j] > lo[j] * (1 + 1e-9)]
    if flat:
        raise ConfigError(
            f"dataset {src!r} does not vary {flat[0]} (all labels {float(lo[PARAMS.index(flat[0])]):g}): "
            "a calibration needs maps over a range of both parameters"
        )
    coef, cov, h = _fit(y, theta, lo, hi, degree)
    if not bool(torch.isfinite(coef).all()) or torch.linalg.matrix_rank(cov) < cov.shape[0]:
        raise ConfigError(
            f"dataset {src!r}: the residual covariance of ln P is singular (too few distinct "
            "maps or labels for the bins)"
        )
    ones = torch.ones(geometry.size, geometry.size // 2 + 1, dtype=torch.float64)
    ps = bin_isotropic(ones, (geometry.size, geometry.size), geometry.box, edges)
    import engine

    return Calibration(
        spec=src,
        geometry=geometry,
        edges=edges,
        k=ps.k,
        n_modes=ps.n_modes,
        degree=degree,
        theta_lo=lo,
        theta_hi=hi,
        coef=coef,
        cov=cov,
        n_maps=n,
        hartlap=h,
        validation=_validate(y, theta, _groups(maps, n), lo, hi, degree),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        engine_version=str(getattr(engine, "__version__", "")),
    )
