r"""Scores of (Ω_m, σ8) estimators against the true values (numpy only, no torch).

Metrics (per method and parameter; e = predicted mean − truth, σ = predicted std, B maps)
-----------------------------------------------------------------------------------------
* ``rmse`` = √⟨e²⟩, ``mae`` = ⟨|e|⟩, ``bias`` = ⟨e⟩ (units of the parameter);
* ``r2`` = 1 − Σe² / Σ(t − t̄)² (coefficient of determination; null when the truth is constant);
* ``coverage_68`` / ``coverage_95``: fraction of maps with |e| ≤ 1 σ / 1.96 σ (the central 68.3 %
  and 95 % intervals of the predicted Gaussian); a calibrated method gives 0.683 / 0.95 up to
  the binomial error √(p(1 − p)/B);
* ``efficiency`` = 1 / √⟨(e / σ_CRB(t))²⟩ over the maps whose truth lies at least
  :data:`EDGE_MARGIN` of the prior width inside the prior box in both parameters (near the edges
  a prior-bounded estimator can beat the bound), the definition of
  :func:`engine.evaluation.fisher.efficiency` (σ_CRB / RMSE for a constant bound); null when no Fisher
  bound exists for the maps (kinds without a theory, e.g. CAMELS) or fewer than 2 maps are left.
* ``bins``: the prior range of each parameter cut into :data:`N_BINS` equal bins of the true
  value (maps outside the box go to the end bins): ``edges`` (N_BINS + 1), per bin ``count``,
  ``rmse``, ``bias`` and ``std`` (mean predicted σ); null for empty bins.
* ``calibration``: coverage at the nominal central levels ``levels`` (fraction of maps with
  |e| ≤ z_p σ, z_p = Φ⁻¹((1 + p)/2)), the coverage figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from engine.evaluation.schema import PARAMS
from engine.params import ConfigError

#: Bins of the true value per parameter (over the prior range).
N_BINS = 8
#: Efficiency uses maps at least this fraction of the prior width inside every prior edge.
EDGE_MARGIN = 0.1
#: z of the central 68.27 % (1 σ) and 95 % (1.96 σ) Gaussian intervals.
Z_68, Z_95 = 1.0, 1.96
#: Nominal central levels of the calibration curve.
CALIBRATION_LEVELS = tuple(round(float(p), 4) for p in np.linspace(0.05, 0.99, 24))


def _columns(mean, std, truth):
    mean = np.asarray(mean, np.float64)
    truth = np.asarray(truth, np.float64)
    std = np.asarray(std, np.float64) if std is not None else np.full_like(mean, np.nan)
    if mean.shape != truth.shape or std.shape != mean.shape or mean.ndim not in (1, 2):
        raise ConfigError(
            f"mean {mean.shape}, std {std.shape} and truth {truth.shape} must be equal (B,) or "
            "(B, P)"
        )
    return mean, std, truth


def coverage(mean, std, truth, z: float) -> np.ndarray | float:
    """Fraction of maps whose truth lies in the interval mean ± z·std.

    Parameters
    ----------
    mean, std, truth : array_like (B,) or (B, P)
        Predicted means and standard deviations, true values (same units).
    z : float
        Half-width in standard deviations (1 → 68.27 %, 1.96 → 95 % for a Gaussian).

    Returns
    -------
    float, or numpy.ndarray (P,) float64; NaN for B = 0.

    Raises
    ------
    ConfigError
        Arrays of different shapes.
    """
    mean, std, truth = _columns(mean, std, truth)
    if mean.shape[0] == 0:
        return np.full(mean.shape[1:], np.nan) if mean.ndim == 2 else math.nan
    inside = np.abs(mean - truth) <= z * std
    out = inside.mean(axis=0)
    return out if mean.ndim == 2 else float(out)


def regression_metrics(mean, std, truth) -> dict[str, float]:
    """Scores of one parameter's predictions (module docstring for the definitions).

    Parameters
    ----------
    mean, std, truth : array_like (B,) float
        Predicted mean and standard deviation, true value; ``std`` may be None (coverages NaN).

    Returns
    -------
    dict of float: ``rmse``, ``mae``, ``bias`` (units of the parameter), ``r2``,
    ``coverage_68``, ``coverage_95`` (fractions); NaN where undefined (no maps, constant truth).

    Raises
    ------
    ConfigError
        Arrays that are not equal (B,) shapes.
    """
    mean, std, truth = _columns(mean, std, truth)
    if mean.ndim != 1:
        raise ConfigError(f"regression_metrics takes (B,) arrays, not {mean.shape}")
    if mean.size == 0:
        return dict.fromkeys(("rmse", "mae", "r2", "bias", "coverage_68", "coverage_95"), math.nan)
    e = mean - truth
    sst = float(np.sum((truth - truth.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(np.mean(e**2))),
        "mae": float(np.mean(np.abs(e))),
        # undefined when the truth does not vary (e.g. every map of one simulation)
        "r2": 1.0 - float(np.sum(e**2)) / sst
        if sst > 1e-10 * float(np.sum(truth**2))
        else math.nan,
        "bias": float(np.mean(e)),
        "coverage_68": coverage(mean, std, truth, Z_68),
        "coverage_95": coverage(mean, std, truth, Z_95),
    }


def binned_errors(mean, std, truth, edges) -> dict[str, list]:
    """Errors per bin of the true value.

    Parameters
    ----------
    mean, std, truth : array_like (B,)
    edges : array_like (n + 1,) increasing
        Bin edges (units of the parameter); truths outside go to the end bins.

    Returns
    -------
    dict: ``edges`` (n + 1), ``count`` (n, int), ``rmse``, ``bias`` (mean of mean − truth) and
    ``std`` (mean predicted std) per bin, lists of float with NaN for empty bins.

    Raises
    ------
    ConfigError
        Arrays of different shapes.
    """
    mean, std, truth = _columns(mean, std, truth)
    edges = np.asarray(edges, np.float64)
    n = edges.size - 1
    idx = np.clip(np.searchsorted(edges, truth, side="right") - 1, 0, n - 1)
    out = {"edges": edges.tolist(), "count": [], "rmse": [], "bias": [], "std": []}
    for b in range(n):
        sel = idx == b
        e = mean[sel] - truth[sel]
        out["count"].append(int(sel.sum()))
        out["rmse"].append(float(np.sqrt(np.mean(e**2))) if sel.any() else math.nan)
        out["bias"].append(float(np.mean(e)) if sel.any() else math.nan)
        out["std"].append(float(np.mean(std[sel])) if sel.any() else math.nan)
    return out


def calibration(mean, std, truth, levels: Sequence[float] = CALIBRATION_LEVELS) -> list[float]:
    """Coverage at nominal central levels p: fraction with |mean − truth| ≤ Φ⁻¹((1+p)/2)·std.

    Parameters
    ----------
    mean, std, truth : array_like (B,)
    levels : sequence of float in (0, 1)

    Returns
    -------
    list of float, one per level (a calibrated Gaussian predictor gives ≈ the levels).

    Raises
    ------
    ConfigError
        Arrays of different shapes.
    """
    z = [NormalDist().inv_cdf((1 + p) / 2) for p in levels]
    return [float(coverage(mean, std, truth, zi)) for zi in z]


def efficiency_from_sigma(mean, truth, sigma) -> float:
    """1 / √⟨((mean − truth) / σ_CRB)²⟩ of one parameter (:func:`engine.evaluation.fisher.efficiency`'s
    definition, σ_CRB per map at its truth); NaN for no maps.

    Parameters
    ----------
    mean, truth, sigma : array_like (B,) float
        Estimates, true values, Cramér–Rao bounds at the true values (units of the parameter).

    Raises
    ------
    ConfigError
        Arrays of different shapes.
    """
    mean, sigma, truth = _columns(mean, sigma, truth)
    if mean.size == 0:
        return math.nan
    ms = float(np.mean(((mean - truth) / sigma) ** 2))
    return 1.0 / math.sqrt(ms) if ms > 0 else math.inf


def away_from_edges(truth, prior, margin: float = EDGE_MARGIN) -> np.ndarray:
    """(B,) bool: truths at least ``margin`` × width inside every edge of the prior box.

    Parameters
    ----------
    truth : array_like (B, 2)
        True (Ω_m, σ8), dimensionless.
    prior : ((lo, hi), (lo, hi))
    margin : float
        Fraction of each parameter's prior width.
    """
    t = np.asarray(truth, np.float64).reshape(-1, 2)
    ok = np.ones(len(t), bool)
    for j, (lo, hi) in enumerate(prior):
        d = margin * (hi - lo)
        ok &= (t[:, j] >= lo + d) & (t[:, j] <= hi - d)
    return ok


def method_report(label, result, truth, prior, sigma_maps, keep) -> dict[str, Any]:
    """The ``report["methods"][method]`` entry of one method (schema: :mod:`engine.evaluation.schema`).

    Parameters
    ----------
    label : str
        Display label of the method.
    result : mapping
        ``{"mean": (B, 2), "std": (B, 2)}`` float arrays of the method, order of ``PARAMS``.
    truth : numpy.ndarray (B, 2) float64
        True (Ω_m, σ8), dimensionless.
    prior : ((lo, hi), (lo, hi))
        Prior box; the bins of :func:`binned_errors` cut it into :data:`N_BINS`.
    sigma_maps : numpy.ndarray (B, 2) float64 or None
        σ_CRB at each map's truth (:func:`engine.evaluation.fisher.crb_sigma`); None: no bound,
        efficiency null.
    keep : numpy.ndarray (B,) bool
        Maps used for the efficiency (:func:`away_from_edges`).

    Returns
    -------
    dict: ``label``, ``metrics`` (per parameter :func:`regression_metrics` plus ``efficiency``
    and ``efficiency_maps``), ``bins`` (per parameter :func:`binned_errors`), ``calibration``
    (``levels`` and per parameter :func:`calibration`).
    """
    mean, std = result["mean"], result["std"]
    out: dict[str, Any] = {"label": label, "metrics": {}, "bins": {}, "calibration": {}}
    out["calibration"]["levels"] = list(CALIBRATION_LEVELS)
    for j, name in enumerate(PARAMS):
        m = regression_metrics(mean[:, j], std[:, j], truth[:, j])
        if sigma_maps is not None and keep.sum() >= 2:
            m["efficiency"] = efficiency_from_sigma(
                mean[keep, j], truth[keep, j], sigma_maps[keep, j]
            )
        else:
            m["efficiency"] = None
        m["efficiency_maps"] = int(keep.sum()) if sigma_maps is not None else 0
        out["metrics"][name] = m
        edges = np.linspace(prior[j][0], prior[j][1], N_BINS + 1)
        out["bins"][name] = binned_errors(mean[:, j], std[:, j], truth[:, j], edges)
        out["calibration"][name] = calibration(mean[:, j], std[:, j], truth[:, j])
    return out
