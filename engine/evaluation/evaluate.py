r"""Evaluation of (Ω_m, σ8) estimators on labelled maps: metrics, report, figures, comparisons.

:func:`evaluate` resolves a dataset spec (:func:`engine.data.open_spec`; generated kinds follow
the checkpoint's map settings and prior box), predicts every map with a trained network
(:func:`engine.evaluation.likelihood.predict_network`) and with the binned P(k) likelihood
(:func:`engine.evaluation.likelihood.pk_likelihood_predict`, kinds grf, lognormal, 2lpt slabs and kappa;
skipped with a note otherwise), scores both against the true values and against the
Cramér–Rao bound, and writes ``report.json``, ``predictions.csv`` and ``figures/*.png``.
:func:`compare` loops over checkpoints × datasets into one long table (the ``compare`` verb and
the explorer). ``python -m engine train`` runs :func:`evaluate` at the end of a completed run.

Domain transfer and which methods run where
-------------------------------------------
Maps generated now (grf, lognormal, 2lpt, kappa specs) follow the checkpoint's map settings and
are used as they are; other settings than the network's are an error. Maps of other
simulations or observations (camels, quijote, des, folder) and of our own files go through
:func:`transfer_maps` first when their pixel grid differs from the network's: resampled to
its pixel scale and cut into tiles of its map size (:func:`engine.data.transfer.
match_resolution`: area averaging to coarser pixels, Fourier interpolation to finer ones),
each tile keeping the labels of its map; it refuses maps in other length units (Mpc/h vs
degrees), physically smaller than the network's maps, without a pixel scale, or with values in
physical units (no conversion: CAMELS mass maps need ``?delta=true``). For camels, quijote,
des and folder data other differing settings (slab thickness, redshift, ...) are part of the
domain gap and only noted. ``report["transfer"]`` records what was done.

The P(k) likelihood and the Fisher bound need the maps' theory, which the project has only for
its own kinds (grf, lognormal, 2lpt slabs, kappa): they run on generated maps and our files in
their own grid, and are skipped with a note for camels, quijote, des and folder data (their
physics — baryons, N-body non-linearity, survey masks — is not our linear/halofit theory, even
when labelled) and on resampled maps (the theory is for the native grid; :func:`compare` then
runs the likelihood on the file's own maps).

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
  :func:`engine.evaluation.likelihood.efficiency` (σ_CRB / RMSE for a constant bound); null when no Fisher
  bound exists for the maps (kinds without a theory, e.g. CAMELS) or fewer than 2 maps are left.
* ``bins``: the prior range of each parameter cut into :data:`N_BINS` equal bins of the true
  value (maps outside the box go to the end bins): ``edges`` (N_BINS + 1), per bin ``count``,
  ``rmse``, ``bias`` and ``std`` (mean predicted σ); null for empty bins.
* ``calibration``: coverage at the nominal central levels ``levels`` (fraction of maps with
  |e| ≤ z_p σ, z_p = Φ⁻¹((1 + p)/2)), the coverage figure.

Cramér–Rao bound σ_CRB
----------------------
For slab kinds :func:`engine.evaluation.likelihood.cramer_rao` (the Fisher matrix summed mode by mode,
½ Σ_k ∂ ln P ∂ ln P, Tegmark, Taylor & Heavens 1997); for kappa the binned Fisher matrix of the
likelihood's theory table, Σ_b (n_b/2) ∂ ln μ_b ∂ ln μ_b (equal to the mode sum within ~1 %, see
:mod:`engine.evaluation.likelihood`; the mode sum would cost a pyccl call per map). It is a bound only for
Gaussian fields (grf, Gaussian κ); for lognormal and 2LPT maps it is the information of the
power spectrum alone (``fisher["bound"]`` is false), which a network may beat.

report.json (version 1)
-----------------------
::

    {"version": 1, "dataset": "<spec>", "checkpoint": "<path>" | null, "n_maps": int,
     "kind": "grf", "map_settings": {"kind": ..., setting: value},
     "transfer": {"from": {"unit": "Mpc/h" | "deg", "side", "size", "pixel"}, "to": {...},
                  "method": "area-average" | "fourier" | "none", "tiles_per_map": int} | null,
     "prior": {"omega_m": [lo, hi], "sigma8": [lo, hi]}, "params": ["omega_m", "sigma8"],
     "methods": {
        "network": {"label": "<model name>",
                    "metrics": {"omega_m": {"rmse", "mae", "r2", "bias", "coverage_68",
                                            "coverage_95", "efficiency": float | null,
                                            "efficiency_maps": int},
                                "sigma8": {...}},
                    "bins": {"omega_m": {"edges": [9], "count": [8], "rmse": [8],
                                         "bias": [8], "std": [8]}, "sigma8": {...}},
                    "calibration": {"levels": [...], "omega_m": [...], "sigma8": [...]}},
        "pk_likelihood": {same, "label": "P(k) likelihood"}},
     "fisher": {"crb_sigma": {"omega_m": σ_CRB at the prior centre, "sigma8": ...},
                "bins": {"omega_m": [σ_CRB at each bin centre, the other parameter at the
                                     prior centre], "sigma8": [...]},
                "method": "modes" | "binned", "bound": bool} | null,
     "figures": {"scatter": "figures/scatter.png", "bins": "figures/bins.png",
                 "coverage": "figures/coverage.png"},
     "k_max": highest bin centre used (h/Mpc or ℓ) | null (Nyquist),
     "predictions": "predictions.csv", "notes": ["why a method or the bound is missing", ...],
     "created": "<ISO 8601 UTC time>", "seconds": float}

``n_maps`` counts the evaluated maps (tiles after domain transfer). Methods missing from
``methods`` were not run (no checkpoint, ``pk_likelihood=False``, or a kind
the likelihood does not support: see ``notes``). Non-finite numbers are written as null. Paths in
``figures`` and ``predictions`` are relative to the report's directory; without ``out_dir``
nothing is written, ``figures`` is {} and ``predictions`` null.

predictions.csv: ``sample``, ``omega_m_true``, ``sigma8_true``, then per method
``<method>_<param>_mean`` and ``<method>_<param>_std`` (:func:`engine.evaluation.likelihood.
write_predictions`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from engine.params import ConfigError
from engine.train.training import resolve_checkpoint

#: Version of the report.json schema.
REPORT_VERSION = 1
#: Kinds generated by this project (engine.data.SYNTHETIC): the P(k) likelihood's theory.
SYNTHETIC_KINDS = ("grf", "lognormal", "2lpt", "kappa")
#: Inferred parameters, in the order of every (B, 2) array here.
PARAMS = ("omega_m", "sigma8")
#: Bins of the true value per parameter (over the prior range).
N_BINS = 8
#: Efficiency uses maps at least this fraction of the prior width inside every prior edge.
EDGE_MARGIN = 0.1
#: A median σ_CRB above this fraction of the prior width gets a note (the prior dominates).
WIDE_BOUND = 0.25
#: z of the central 68.27 % (1 σ) and 95 % (1.96 σ) Gaussian intervals.
Z_68, Z_95 = 1.0, 1.96
#: Nominal central levels of the calibration curve.
CALIBRATION_LEVELS = tuple(round(float(p), 4) for p in np.linspace(0.05, 0.99, 24))
#: Labels of the methods.
LABELS = {"pk_likelihood": "P(k) likelihood"}
#: Model name of the P(k)-likelihood rows of :func:`compare`.
PK_MODEL = "pk-likelihood"
#: Columns of :func:`compare`'s table.
COMPARE_COLUMNS = (
    "model",
    "dataset",
    "method",
    "param",
    "rmse",
    "mae",
    "r2",
    "bias",
    "coverage_68",
    "coverage_95",
    "efficiency",
    "n_maps",
    "transfer",
    "error",
    "predictions",
    "checkpoint",
)
#: Files of an evaluation, relative to its directory.
REPORT_FILE, PREDICTIONS_FILE = "report.json", "predictions.csv"
FIGURES = {
    "scatter": "figures/scatter.png",
    "bins": "figures/bins.png",
    "coverage": "figures/coverage.png",
}


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def checkpoint_name(path: str | Path) -> str:
    """Short name of a checkpoint for tables: its run directory's name, else the file's stem."""
    p = Path(path)
    if p.is_dir():
        return p.name
    if p.parent.name == "checkpoints" and p.parent.parent.name:
        return p.parent.parent.name
    return p.stem


def checkpoint_like(path: str | Path) -> dict[str, Any]:
    """Map settings and prior box of a checkpoint's training maps, for :func:`engine.data.open_spec`.

    ``path`` is a ``.pt`` file or a run directory (:func:`resolve_checkpoint`).

    Returns
    -------
    dict
        :func:`engine.train.training.checkpoint_map_settings` plus ``omega_m_range`` and
        ``sigma8_range`` ([low, high], the network's prior box, dimensionless).

    Raises
    ------
    ConfigError
        Missing or unreadable checkpoint, or one without map settings.
    """
    from engine.train.training import checkpoint_map_settings, load_checkpoint

    path = resolve_checkpoint(path)
    like = checkpoint_map_settings(path)
    ckpt = load_checkpoint(path)
    for j, name in enumerate(PARAMS):
        if "prior_low" in ckpt and "prior_high" in ckpt:
            # (stored as float32: 7 significant digits give back the settings' values)
            like[f"{name}_range"] = [
                float(f"{float(ckpt[key][j]):.7g}") for key in ("prior_low", "prior_high")
            ]
    return like


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


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
    """1 / √⟨((mean − truth) / σ_CRB)²⟩ of one parameter (:func:`engine.evaluation.likelihood.efficiency`'s
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


def crb_sigma(
    settings, omega_m, sigma8, prior, k_max: float | None = None, grid: int = 64
) -> tuple[np.ndarray, str]:
    """Cramér–Rao σ of (Ω_m, σ8) for maps made with ``settings`` (module docstring).

    Parameters
    ----------
    settings : FieldParams, LPTParams or KappaParams
    omega_m, sigma8 : array_like (B,)
        Parameter values (dimensionless); for kappa clipped into ``prior``.
    prior : ((lo, hi), (lo, hi))
        Prior box of the theory table (kappa).
    k_max : float, optional
        Highest bin centre, h/Mpc or ℓ (default Nyquist).
    grid : int
        Posterior grid of the cached theory table to reuse (kappa; that of the likelihood).

    Returns
    -------
    sigma : numpy.ndarray (B, 2) float64
        Dimensionless (units of Ω_m and σ8).
    method : {"modes", "binned"}

    Raises
    ------
    ConfigError
        Maps the Fisher matrix does not support (see :func:`engine.evaluation.likelihood.map_model`).
    """
    import torch

    from engine.evaluation import likelihood

    om = np.atleast_1d(np.asarray(omega_m, np.float64))
    s8 = np.atleast_1d(np.asarray(sigma8, np.float64))
    model = likelihood.map_model(settings, k_max)
    if model.family != "kappa":
        return np.asarray(likelihood.cramer_rao(settings, om, s8, k_max)).reshape(-1, 2), "modes"
    table, _, _ = likelihood.theory_grid(model, likelihood._check_prior(prior), int(grid))
    o = torch.as_tensor(np.clip(om, *prior[0]))
    s = torch.as_tensor(np.clip(s8, *prior[1]))
    mu, dmu = table(o, s, grad=True)
    wts = model.n_modes / 2 / (mu * mu)
    fisher = torch.einsum("bk,bki,bkj->bij", wts, dmu, dmu).numpy()
    return np.sqrt(np.diagonal(np.linalg.inv(fisher), axis1=-2, axis2=-1)), "binned"


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars → Python, non-finite floats → None, tuples → lists."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_clean(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def _prior_of(like, attrs) -> tuple[tuple[float, float], tuple[float, float]]:
    from engine.data.synthetic import DEFAULT_RANGES, like_prior

    box = dict(DEFAULT_RANGES)
    box.update(like_prior(attrs))
    box.update(like_prior(like))
    return tuple(tuple(float(v) for v in box[n]) for n in PARAMS)  # type: ignore[return-value]


def _map_settings(da) -> tuple[dict[str, Any], Any]:
    """(``{"kind": ..., setting: value}``, settings object or None) of the maps' attrs."""
    from engine.evaluation import likelihood
    from engine.params import to_dict

    attrs = dict(da.attrs)
    try:
        settings = likelihood.settings_from_attrs(attrs)
    except (ConfigError, TypeError, ValueError):
        settings = None
    if settings is not None:
        values = {"kind": attrs.get("kind"), **to_dict(settings)}
        for k in ("seed", "count", "omega_m", "sigma8"):
            values.pop(k, None)
        return _clean(values), settings
    skip = ("source", "omega_m", "sigma8")
    return _clean({k: v for k, v in attrs.items() if k not in skip}), None


def _load_maps(dataset, like, datasets_file, count, seed):
    """(DataArray in memory, spec string) of a spec or a DataArray."""
    from engine.data import open_spec

    if hasattr(dataset, "dims") and hasattr(dataset, "attrs"):
        da = dataset if count is None else dataset.isel(sample=slice(0, int(count)))
        spec = str(dataset.attrs.get("source", "<DataArray>"))
    else:
        spec = str(dataset)
        options = {k: v for k, v in (("count", count), ("seed", seed)) if v is not None}
        da = open_spec(spec, like=like, datasets_file=datasets_file, **options)
    if "sample" not in da.dims:
        raise ConfigError(f"dataset {spec!r} has no 'sample' dimension")
    if "omega_m" not in da.coords or "sigma8" not in da.coords:
        raise ConfigError(
            f"dataset {spec!r} has no omega_m/sigma8 labels: evaluation needs the true values"
        )
    if da.sizes["sample"] == 0:
        raise ConfigError(f"dataset {spec!r} holds no maps")
    return da.load(), spec


def check_network_maps(da, trained: Mapping[str, Any], strict: bool = True) -> list[str]:
    """Check that maps suit a network trained on maps with settings ``trained``.

    The settings of :data:`engine.evaluation.likelihood.NETWORK_SETTINGS` other than ``kind`` that both the
    maps' attrs and ``trained`` have must agree (pixel count and scale, slab, redshift,
    smoothing, noise); the kind may differ (a network applied to other simulations: a note is
    returned), except between slab maps (grf, lognormal, 2lpt; Mpc/h) and kappa maps (arcmin).

    Parameters
    ----------
    da : xarray.DataArray
        Maps with attrs.
    trained : mapping
        ``{"kind": ..., setting: value}`` of the network's training maps.
    strict : bool
        False for other simulations or observations (after :func:`engine.data.transfer.
        match_resolution`): differing settings other than the pixel grid (slab thickness,
        redshift, ...) are part of the domain gap and become notes instead of errors.

    Returns
    -------
    list of str
        Notes for the report (empty when the kinds agree).

    Raises
    ------
    ConfigError
        Mismatched settings (``strict``) or map families (one line listing them).
    """
    from engine.data.synthetic import FAMILY
    from engine.evaluation.likelihood import NETWORK_SETTINGS

    attrs = dict(da.attrs)

    def same(a, b) -> bool:
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return str(a) == str(b)

    bad = [
        f"{k}={attrs[k]!r} (network: {trained[k]!r})"
        for k in NETWORK_SETTINGS
        if k != "kind" and k in attrs and k in trained and not same(attrs[k], trained[k])
    ]
    notes = []
    if bad and strict:
        raise ConfigError("the maps differ from the network's training maps: " + ", ".join(bad))
    if bad:
        notes.append("domain gap: the maps differ from the network's in " + ", ".join(bad))
    kind, net = str(attrs.get("kind")), str(trained.get("kind"))
    if kind == net:
        return notes
    if kind in FAMILY and net in FAMILY and FAMILY[kind] != FAMILY[net]:
        raise ConfigError(
            f"the maps are {kind!r} maps but the network was trained on {net!r} maps "
            "(slab and kappa maps have different units)"
        )
    return [f"the network was trained on {net!r} maps and is evaluated on {kind!r} maps", *notes]


def needs_transfer(da, spec: str) -> bool:
    """True if maps go through domain transfer before a network sees them.

    Maps of other simulations or observations (kinds other than grf, lognormal, 2lpt, kappa:
    camels, quijote, des, folder, ...) and maps read from our own files (spec prefix ``file``)
    do; maps generated now for a checkpoint follow its settings and do not.
    """
    from engine.data import SYNTHETIC, parse_spec

    if str(da.attrs.get("kind")) not in SYNTHETIC:
        return True
    try:
        return parse_spec(spec)[0] == "file"
    except ConfigError:
        return False


def transfer_maps(da, like: Mapping[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """Put maps on a network's pixel grid (:func:`engine.data.transfer.match_resolution`).

    Parameters
    ----------
    da : xarray.DataArray (sample, y, x)
        Maps with attrs ``box_size`` (Mpc/h) or ``fov`` (degrees) and ``units``.
    like : mapping
        The network's map settings (:func:`checkpoint_like`).

    Returns
    -------
    maps : xarray.DataArray
        ``da`` itself when its grid is the network's (same unit, side and pixel count), else
        the resampled tiles (T² samples per input map, labels repeated).
    transfer : dict or None
        None when nothing was done, else ``{"from": grid, "to": grid, "method":
        "area-average" | "fourier" | "none", "tiles_per_map": T²}`` with grid ``{"unit":
        "Mpc/h" | "deg", "side", "size", "pixel"}`` (side and pixel in ``unit``).

    Raises
    ------
    ConfigError
        Maps in physical units while the network's are dimensionless (δ, κ; no conversion is
        made), or :func:`~engine.data.transfer.match_resolution`'s refusals: no pixel scale,
        non-square maps, other length units (Mpc/h vs degrees), maps physically smaller than the
        network's.
    """
    from engine.data.transfer import data_grid, match_resolution, trained_grid

    src = da.attrs.get("source", da.attrs.get("kind"))
    units = str(da.attrs.get("units", "dimensionless"))
    if units != "dimensionless":
        hint = " (CAMELS mass maps: add ?delta=true)" if da.attrs.get("kind") == "camels" else ""
        raise ConfigError(
            f"maps of {src!r} are in {units} but the network was trained on dimensionless "
            f"{like.get('kind')!r} maps: no unit conversion is made{hint}"
        )
    unit0, side0, n0 = trained_grid(like)
    unit, side, n = data_grid(da)
    same = unit == unit0 and n == n0 and math.isclose(side, side0, rel_tol=1e-9)
    if same:
        return da, None
    matched = match_resolution(da, like)
    tiles = int(matched.attrs["tiles_per_side"]) ** 2
    transfer = {
        "from": {"unit": unit, "side": side, "size": n, "pixel": side / n},
        "to": {"unit": unit0, "side": side0, "size": n0, "pixel": side0 / n0},
        "method": str(matched.attrs["resampling"]),
        "tiles_per_map": tiles,
    }
    return matched, transfer


def transfer_text(transfer: Mapping[str, Any] | None) -> str:
    """One line about a transfer record of :func:`transfer_maps` (``""`` for None), e.g.
    ``"fourier: 32² over 1000 Mpc/h → 64² over 1000 Mpc/h, 1 tile/map"``."""
    if not transfer:
        return ""
    a, b = transfer["from"], transfer["to"]
    tiles = int(transfer["tiles_per_map"])
    return (
        f"{transfer['method']}: {a['size']}² over {a['side']:g} {a['unit']} → "
        f"{b['size']}² over {b['side']:g} {b['unit']}, {tiles} tile{'s' if tiles != 1 else ''}/map"
    )


def _method_report(label, result, truth, prior, sigma_maps, keep) -> dict[str, Any]:
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


def evaluate(
    dataset,
    checkpoint: str | Path | None = None,
    out_dir: str | Path | None = None,
    pk_likelihood: bool = True,
    device: str = "cpu",
    count: int | None = None,
    seed: int | None = None,
    datasets_file: str | Path | None = None,
    grid: int = 64,
    k_max: float | None = None,
) -> dict[str, Any]:
    """Evaluate a network and/or the P(k) likelihood on labelled maps; write the report.

    Parameters
    ----------
    dataset : str or xarray.DataArray
        A spec of :func:`engine.data.open_spec` (generated kinds follow the checkpoint's map
        settings and prior box) or maps ``(sample, y, x)`` with ``omega_m``/``sigma8`` coords.
    checkpoint : str or Path, optional
        A ``.pt`` checkpoint or a run directory (its ``checkpoints/best.pt``); None: P(k)
        likelihood only.
    out_dir : str or Path, optional
        Directory (created) for ``report.json``, ``predictions.csv`` and ``figures/``; None
        writes nothing.
    pk_likelihood : bool
        Also run the P(k) likelihood (supported kinds only; otherwise a note).
    device : str
        Torch device of the network (``cpu``, ``cuda[:i]``).
    count, seed : int, optional
        Options ``count`` / ``seed`` of the spec (number of maps; seed of generated maps).
    datasets_file : str or Path, optional
        Datasets YAML of short names (:func:`engine.data.named_specs`).
    grid : int
        Posterior grid of the likelihood per parameter.
    k_max : float, optional
        Highest bin centre of the likelihood and the Fisher bound (h/Mpc, or ℓ for κ); default
        the Nyquist wavenumber, except k_N/4 for 2lpt maps (linear theory; see
        :mod:`engine.evaluation.likelihood`).

    Returns
    -------
    dict
        The report (module docstring for the schema), as written to ``report.json``.

    Raises
    ------
    ConfigError
        Bad spec, file or checkpoint, maps without labels, maps that do not match the network,
        no method to run, or an output directory that cannot be created, maps that domain
        transfer refuses (:func:`transfer_maps`) (one line).
    """
    return _evaluate(
        dataset,
        checkpoint,
        out_dir=out_dir,
        pk_likelihood=pk_likelihood,
        device=device,
        count=count,
        seed=seed,
        datasets_file=datasets_file,
        grid=grid,
        k_max=k_max,
    )[0]


def _evaluate(
    dataset,
    checkpoint,
    out_dir=None,
    pk_likelihood=True,
    device="cpu",
    count=None,
    seed=None,
    datasets_file=None,
    grid=64,
    k_max=None,
) -> tuple[dict[str, Any], dict[str, dict], np.ndarray, Any]:
    """:func:`evaluate`, also returning ``(results, truth (B, 2), maps)``: per method
    ``{"mean", "std"}`` (B, 2) arrays and the evaluated maps (after domain transfer)."""
    from engine.evaluation import likelihood

    t0 = time.perf_counter()
    notes: list[str] = []
    ckpt = resolve_checkpoint(checkpoint) if checkpoint is not None else None
    if ckpt is None and not pk_likelihood:
        raise ConfigError("nothing to evaluate: give a checkpoint or enable the P(k) likelihood")
    if k_max is not None and not (math.isfinite(k_max) and k_max > 0):
        raise ConfigError(f"--k-max {k_max!r} must be a positive number (h/Mpc, or ell for kappa)")
    if ckpt is not None:
        from engine.device import default_device

        try:
            device = str(default_device(str(device)))
        except (ValueError, RuntimeError) as exc:
            msg = str(exc).strip().splitlines()[0]
            raise ConfigError(f"--device {device!r}: {msg}") from None
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {str(out)!r} exists and is not a directory")
        if not out.parent.is_dir():
            raise ConfigError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist")
    like = checkpoint_like(ckpt) if ckpt is not None else None
    da, spec = _load_maps(dataset, like, datasets_file, count, seed)
    native = str(da.attrs.get("kind")) not in SYNTHETIC_KINDS
    transfer = None
    if like is not None and needs_transfer(da, spec):
        da, transfer = transfer_maps(da, like)
        if transfer is not None:
            notes.append(f"domain transfer: {transfer_text(transfer)}")
    truth = np.stack([da["omega_m"].values, da["sigma8"].values], axis=-1).astype(np.float64)
    prior = _prior_of(like, dict(da.attrs))
    map_settings, settings = _map_settings(da)
    if pk_likelihood and native:
        pk_likelihood = False
        notes.append(
            f"P(k) likelihood skipped: {da.attrs.get('kind')!r} maps are not made by this "
            "project's generators, and its theory (engine.evaluation.likelihood) is only that of kinds "
            + ", ".join(SYNTHETIC_KINDS)
        )
    elif pk_likelihood and transfer is not None:
        pk_likelihood = False
        notes.append(
            "P(k) likelihood skipped on the resampled maps: its theory is for the maps' own grid "
            "(evaluate without a checkpoint, as compare does, to run it there)"
        )
    if transfer is not None and settings is not None:
        settings = None
        notes.append("no Fisher bound: the maps were resampled for the network")
    if k_max is None and da.attrs.get("kind") == "2lpt" and settings is not None:
        # linear theory is only good on large scales for 2LPT maps (engine.evaluation.likelihood caveats)
        k_max = math.pi * int(settings.size) / float(settings.box_size) / 4
        notes.append(
            f"2lpt maps: the P(k) likelihood and sigma_CRB use k <= k_Nyquist/4 = {k_max:.4g} "
            "h/Mpc (linear theory)"
        )
    results: dict[str, dict] = {}
    labels: dict[str, str] = {}
    if ckpt is not None:
        from engine.train.training import load_checkpoint

        notes += check_network_maps(da, like, strict=not native)
        results["network"] = likelihood.predict_network(da, ckpt, device=device, strict=False)
        labels["network"] = str(load_checkpoint(ckpt).get("model_name", "network"))
    if pk_likelihood:
        try:
            results["pk_likelihood"] = likelihood.pk_likelihood_predict(
                da, settings=settings, prior=prior, grid=grid, k_max=k_max
            )
            labels["pk_likelihood"] = LABELS["pk_likelihood"]
        except ConfigError as exc:
            notes.append(f"P(k) likelihood skipped: {exc}")
    # Cramér–Rao bound at each map's truth, at the prior centre and at the bin centres.
    fisher, sigma_maps = None, None
    if settings is None:
        if transfer is None:
            notes.append(f"no Fisher bound: kind {da.attrs.get('kind')!r} has no theory")
    else:
        centre = [0.5 * (lo + hi) for lo, hi in prior]
        mids = [
            0.5 * (e[1:] + e[:-1]) for e in (np.linspace(lo, hi, N_BINS + 1) for lo, hi in prior)
        ]
        om = np.concatenate([truth[:, 0], [centre[0]], mids[0], np.full(N_BINS, centre[0])])
        s8 = np.concatenate([truth[:, 1], [centre[1]], np.full(N_BINS, centre[1]), mids[1]])
        try:
            sig, how = crb_sigma(settings, om, s8, prior, k_max, grid)
        except ConfigError as exc:
            notes.append(f"no Fisher bound: {exc}")
        else:
            b = len(truth)
            sigma_maps = sig[:b]
            for j, name in enumerate(PARAMS):
                width = prior[j][1] - prior[j][0]
                if np.median(sigma_maps[:, j]) > WIDE_BOUND * width:
                    notes.append(
                        f"sigma_CRB of {name} (median {np.median(sigma_maps[:, j]):.3g}) is not "
                        f"small against the prior width {width:.3g}: the prior limits the errors "
                        "and an efficiency above 1 is expected"
                    )
            kind = str(da.attrs.get("kind"))
            gaussian = kind == "grf" or (
                kind == "kappa" and getattr(settings, "distribution", "") == "gaussian"
            )
            if not gaussian:
                notes.append(
                    f"kind {kind!r} is not a Gaussian field: sigma_CRB is the information of its "
                    "power spectrum, not a bound on every estimator"
                )
            fisher = {
                "crb_sigma": {"omega_m": sig[b, 0], "sigma8": sig[b, 1]},
                "bins": {
                    "omega_m": sig[b + 1 : b + 1 + N_BINS, 0],
                    "sigma8": sig[b + 1 + N_BINS :, 1],
                },
                "method": how,
                "bound": gaussian,
            }
    keep = away_from_edges(truth, prior)
    methods = {
        m: _method_report(labels[m], r, truth, prior, sigma_maps, keep) for m, r in results.items()
    }
    if "network" in methods:
        methods["network"]["checkpoint"] = str(ckpt)
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "dataset": spec,
        "checkpoint": None if ckpt is None else str(ckpt),
        "n_maps": len(truth),
        "kind": da.attrs.get("kind"),
        "map_settings": map_settings,
        "transfer": transfer,
        "prior": {n: list(prior[j]) for j, n in enumerate(PARAMS)},
        "params": list(PARAMS),
        "methods": methods,
        "fisher": fisher,
        "k_max": k_max,
        "figures": {},
        "predictions": None,
        "notes": notes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": None,
    }
    if out is not None:
        (out / "figures").mkdir(parents=True, exist_ok=True)
        likelihood.write_predictions(out / PREDICTIONS_FILE, results)
        report["predictions"] = PREDICTIONS_FILE
        report["figures"] = dict(FIGURES)
        draw_figures(_clean(report), truth, results, out)
    report["seconds"] = time.perf_counter() - t0
    report = _clean(report)
    if out is not None:
        from engine.runs import write_json_atomic

        write_json_atomic(out / REPORT_FILE, report)
    return report, results, truth, da


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

#: Colours of the methods in the figures.
COLORS = {"network": "#1f77b4", "pk_likelihood": "#ff7f0e"}
_SYMBOLS = {"omega_m": r"$\Omega_m$", "sigma8": r"$\sigma_8$"}


def _figure():
    """A two-panel-wide figure with fixed margins (a layout engine costs seconds per figure)."""
    from matplotlib.figure import Figure  # lazily: a figure without pyplot uses the Agg canvas

    fig = Figure(figsize=(10, 4.5))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.92, wspace=0.25)
    return fig


def _floats(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], float)


def _save(fig, path: Path) -> None:
    from engine.runs import atomic_write

    with atomic_write(path, binary=True) as f:
        fig.savefig(f, format="png", dpi=100)


def draw_figures(report: Mapping[str, Any], truth, results: Mapping[str, dict], out_dir) -> None:
    """Write the PNG figures of ``report["figures"]`` under ``out_dir`` (matplotlib, Agg).

    * scatter: predicted mean ± 1σ against the truth per parameter, both methods, diagonal;
    * bins: RMSE per bin of the true value per method, mean predicted σ dashed, σ_CRB in black;
    * coverage: empirical against nominal coverage of the central intervals (calibration).

    Parameters
    ----------
    report : mapping
        The report (prior, methods, fisher, figures).
    truth : numpy.ndarray (B, 2)
    results : mapping of method → {"mean": (B, 2), "std": (B, 2)}
    out_dir : str or Path
        Directory of the report; ``figures/`` must exist. Each file is written atomically.
    """
    out_dir = Path(out_dir)
    files = report["figures"]
    methods = report["methods"]
    fig = _figure()
    for j, name in enumerate(PARAMS):
        ax = fig.add_subplot(1, len(PARAMS), j + 1)
        lo, hi = report["prior"][name]
        for m, r in results.items():
            ax.errorbar(
                truth[:, j],
                r["mean"][:, j],
                yerr=r["std"][:, j],
                fmt="o",
                ms=2.5,
                lw=0.6,
                alpha=0.6,
                color=COLORS.get(m, "#7f7f7f"),
                label=methods[m]["label"],
            )
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(xlabel=f"true {_SYMBOLS[name]}", ylabel=f"predicted {_SYMBOLS[name]}")
        ax.legend(fontsize=8)
    _save(fig, out_dir / files["scatter"])

    fig = _figure()
    fisher = report.get("fisher") or {}
    for j, name in enumerate(PARAMS):
        ax = fig.add_subplot(1, len(PARAMS), j + 1)
        lo, hi = report["prior"][name]
        e = np.linspace(lo, hi, N_BINS + 1)
        c = 0.5 * (e[1:] + e[:-1])
        for m in results:
            bins = methods[m]["bins"][name]
            color, label = COLORS.get(m, "#7f7f7f"), methods[m]["label"]
            ax.plot(c, _floats(bins["rmse"]), "o-", color=color, label=f"{label} RMSE")
            ax.plot(c, _floats(bins["std"]), ":", color=color, label=f"{label} mean σ")
        crb = (fisher.get("bins") or {}).get(name)
        if crb:
            ax.plot(c, _floats(crb), "k-", lw=1.5, label=r"$\sigma_{\rm CRB}$")
        ax.set(xlabel=f"true {_SYMBOLS[name]}", ylabel=f"error on {_SYMBOLS[name]}")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    _save(fig, out_dir / files["bins"])

    fig = _figure()
    for j, name in enumerate(PARAMS):
        ax = fig.add_subplot(1, len(PARAMS), j + 1)
        for m in results:
            cal = methods[m]["calibration"]
            ax.plot(
                cal["levels"],
                cal[name],
                "o-",
                ms=3,
                color=COLORS.get(m, "#7f7f7f"),
                label=methods[m]["label"],
            )
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(
            xlabel="nominal coverage of mean ± zσ",
            ylabel="empirical coverage",
            title=_SYMBOLS[name],
            xlim=(0, 1),
            ylim=(0, 1),
        )
        ax.legend(fontsize=8)
    _save(fig, out_dir / files["coverage"])


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------


def _rows(
    model: str,
    dataset: str,
    method: str,
    report: Mapping[str, Any],
    predictions: str | None = None,
    maps_of: str | None = None,
) -> list[dict]:
    rows = []
    for name in PARAMS:
        m = report["methods"][method]["metrics"][name]
        rows.append(
            {
                "model": model,
                "dataset": dataset,
                "method": method,
                "param": name,
                **{k: m.get(k) for k in COMPARE_COLUMNS[4:11]},
                "n_maps": report["n_maps"],
                "transfer": transfer_text(report.get("transfer")) or None,
                "error": None,
                "predictions": predictions,
                "checkpoint": report.get("checkpoint_arg") if method == "network" else maps_of,
            }
        )
    return rows


def _error_rows(
    model: str, dataset: str, method: str, message: str, checkpoint: str | None = None
) -> list[dict]:
    return [
        {
            **dict.fromkeys(COMPARE_COLUMNS),
            "model": model,
            "dataset": dataset,
            "method": method,
            "param": name,
            "n_maps": 0,
            "error": message,
            "checkpoint": checkpoint,
        }
        for name in PARAMS
    ]


def predictions_name(model: str, dataset: str) -> str:
    """File name of a (model, dataset) pair's predictions in ``--predictions-dir``:
    ``<model>__<readable part of the spec>-<8 hex of its SHA-1>.csv`` (safe characters only,
    unique per spec)."""
    import hashlib
    import re

    safe = lambda text: re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")  # noqa: E731
    target = dataset.split("?", 1)[0].rstrip("/")
    short = safe(target.rsplit("/", 1)[-1].rsplit(":", 1)[-1])[:40] or "maps"
    digest = hashlib.sha1(dataset.encode()).hexdigest()[:8]
    return f"{safe(model)[:40] or 'model'}__{short}-{digest}.csv"


def write_pair_predictions(path, results: Mapping[str, dict], truth, maps) -> None:
    """Write one (model, dataset) pair's predictions as CSV (atomically).

    Columns ``sample`` (row of the evaluated maps), ``source_sample`` (map of the dataset it
    comes from: differs from ``sample`` after tiling), ``tile_y``/``tile_x`` (after tiling),
    ``omega_m_true``, ``sigma8_true`` and per method ``<method>_<param>_mean`` / ``_std``
    (dimensionless), the layout of ``predictions.csv`` that :mod:`explorer.report` reads
    (:func:`engine.evaluation.likelihood.write_predictions`, which also adds ``<method>_<param>_map`` for the
    P(k) likelihood).
    """
    from engine.evaluation import likelihood

    coords = maps.coords
    source = coords["source_sample"].values if "source_sample" in coords else np.arange(len(truth))
    extra = {"source_sample": np.asarray(source)}
    extra.update({k: np.asarray(coords[k].values) for k in ("tile_y", "tile_x") if k in coords})
    likelihood.write_predictions(path, dict(results), truth=truth, extra=extra)


def compare(
    checkpoints: Sequence[str | Path],
    datasets: Sequence[str],
    count: int | None = None,
    seed: int | None = None,
    device: str = "cpu",
    datasets_file: str | Path | None = None,
    pk_likelihood: bool = True,
    out: str | Path | None = None,
    on_error: str = "skip",
    predictions_dir: str | Path | None = None,
):
    """Metrics of every checkpoint on every dataset, and of the P(k) likelihood, as one table.

    For each dataset spec, each checkpoint is evaluated (:func:`evaluate`; generated kinds take
    each checkpoint's map settings and prior; other data go through domain transfer,
    :func:`transfer_maps`); for generated kinds (``grf``, …: other maps for every network, made
    with its settings) the P(k) likelihood runs on each network's maps, as model
    ``"pk-likelihood [<model> maps]"`` with that checkpoint in ``checkpoint``; otherwise the P(k)
    likelihood is evaluated once per dataset, on the maps of
    the first checkpoint that could be evaluated without domain transfer, else on the
    dataset's own maps (no checkpoint), as rows of model :data:`PK_MODEL`. It runs only for
    kinds whose theory the project has (grf, lognormal, 2lpt, kappa: generated maps and our
    files); for camels, quijote, des and folder data its rows carry the reason in ``error``.

    Parameters
    ----------
    checkpoints : sequence of str or Path
        ``.pt`` files or run directories (may be empty: P(k) likelihood only).
    datasets : sequence of str
        Dataset specs or short names.
    count, seed, device, datasets_file
        As :func:`evaluate` (``count`` counts the dataset's maps, before tiling).
    pk_likelihood : bool
        Add the P(k)-likelihood rows.
    out : str or Path, optional
        Also write the table as CSV (atomically; must end in .csv).
    on_error : {"skip", "raise"}
        A failing (checkpoint, dataset) pair gives rows with empty metrics and the one-line
        message in column ``error`` ("skip"), or raises ("raise").
    predictions_dir : str or Path, optional
        Directory (created) for one CSV of predictions per evaluated pair
        (:func:`write_pair_predictions`, named by :func:`predictions_name`); column
        ``predictions`` of the table holds its path relative to ``out``'s directory (or the
        absolute path without ``out``).

    Returns
    -------
    pandas.DataFrame
        Long format, columns :data:`COMPARE_COLUMNS` (model, dataset, method ∈ {network,
        pk_likelihood}, param ∈ {omega_m, sigma8}, the metrics of the module docstring, n_maps
        (maps evaluated, tiles after domain transfer), transfer (:func:`transfer_text`, empty
        when the maps were used as they are), error, predictions, checkpoint (as given; empty
        for the P(k) likelihood)), one row per (model, dataset, method, param).

    Raises
    ------
    ConfigError
        No datasets, a bad ``on_error`` or output path, or (``on_error="raise"``) any error of
        :func:`evaluate`.
    """
    import os

    import pandas as pd

    if on_error not in ("skip", "raise"):
        raise ConfigError(f"on_error={on_error!r} is not allowed: use 'skip' or 'raise'")
    if not datasets:
        raise ConfigError("--datasets needs at least one dataset spec")
    if out is not None:
        out = Path(out)
        if out.suffix != ".csv":
            raise ConfigError(f"--out {str(out)!r} must end in .csv")
        if not out.parent.is_dir():
            raise ConfigError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist")
    pred_dir = None if predictions_dir is None else Path(predictions_dir)
    if pred_dir is not None:
        if pred_dir.exists() and not pred_dir.is_dir():
            raise ConfigError(f"--predictions-dir {str(pred_dir)!r} is not a directory")
        try:
            pred_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--predictions-dir {str(pred_dir)!r}: {exc}") from None

    def run(spec, ckpt, model, with_pk):
        """(report, relative predictions path or None) of one pair."""
        rep, results, truth, maps = _evaluate(spec, ckpt, pk_likelihood=with_pk, **options)
        rep["checkpoint_arg"] = None if ckpt is None else str(ckpt)
        rel = None
        if pred_dir is not None and results:
            path = pred_dir / predictions_name(model, spec)
            write_pair_predictions(path, results, truth, maps)
            rel = os.path.relpath(path, out.parent) if out is not None else str(path)
        return rep, rel

    options = {"count": count, "seed": seed, "device": device, "datasets_file": datasets_file}
    rows: list[dict] = []
    from engine.data import parse_spec, resolve_name

    for spec in datasets:
        pk_done = not pk_likelihood
        # generated kinds are made with each checkpoint's own map settings: every network sees
        # other maps, so the P(k) likelihood runs on each network's maps (model label names them)
        try:
            synthetic = parse_spec(resolve_name(spec, datasets_file))[0] == "synthetic"
        except ConfigError:
            synthetic = False
        for ckpt in checkpoints:
            name = checkpoint_name(ckpt)
            try:
                rep, rel = run(spec, ckpt, name, pk_likelihood if synthetic else not pk_done)
            except ConfigError as exc:
                if on_error == "raise":
                    raise
                rows += _error_rows(name, spec, "network", str(exc), str(ckpt))
                continue
            rows += _rows(name, spec, "network", rep, rel)
            if synthetic and pk_likelihood:
                pk_done = True
                label = f"{PK_MODEL} [{name} maps]"
                if "pk_likelihood" in rep["methods"]:
                    rows += _rows(label, spec, "pk_likelihood", rep, rel, str(ckpt))
                else:
                    note = "; ".join(rep.get("notes") or []) or "not run"
                    rows += _error_rows(label, spec, "pk_likelihood", note)
                continue
            if not pk_done and rep.get("transfer") is None:
                pk_done = True
                if "pk_likelihood" in rep["methods"]:
                    rows += _rows(PK_MODEL, spec, "pk_likelihood", rep, rel)
                else:
                    note = "; ".join(rep.get("notes") or []) or "not run"
                    rows += _error_rows(PK_MODEL, spec, "pk_likelihood", note)
        if not pk_done:
            try:
                rep, rel = run(spec, None, PK_MODEL, True)
                if "pk_likelihood" in rep["methods"]:
                    rows += _rows(PK_MODEL, spec, "pk_likelihood", rep, rel)
                else:
                    notes = [n for n in rep.get("notes") or [] if "P(k) likelihood" in n]
                    note = "; ".join(notes or rep.get("notes") or []) or "not run"
                    rows += _error_rows(PK_MODEL, spec, "pk_likelihood", note)
            except ConfigError as exc:
                if on_error == "raise":
                    raise
                rows += _error_rows(PK_MODEL, spec, "pk_likelihood", str(exc))
    table = pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))
    if out is not None:
        from engine.runs import atomic_write

        with atomic_write(out) as f:
            table.to_csv(f, index=False, float_format="%.6g")
    return table


def format_table(report: Mapping[str, Any]) -> str:
    """A small text table of a report: method × parameter with RMSE, bias, R², coverage 68 %,
    efficiency (``-`` where null)."""

    def fmt(v, spec=".4g"):
        return "-" if v is None else format(v, spec)

    lines = [
        f"{'method':<16} {'param':<8} {'RMSE':>9} {'bias':>10} {'R2':>7} {'cov68':>6} {'eff':>6}"
    ]
    for m, entry in report["methods"].items():
        for name in report["params"]:
            s = entry["metrics"][name]
            lines.append(
                f"{m:<16} {name:<8} {fmt(s['rmse']):>9} {fmt(s['bias'], '+.3g'):>10} "
                f"{fmt(s['r2'], '.3f'):>7} {fmt(s['coverage_68'], '.2f'):>6} "
                f"{fmt(s['efficiency'], '.2f'):>6}"
            )
    return "\n".join(lines)
