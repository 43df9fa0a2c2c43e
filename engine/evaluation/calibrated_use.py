r"""The calibrated P(k) likelihood put to use: its training data, the calibration cache, and the
posterior of (Ω_m, σ8) for new maps.

:mod:`engine.evaluation.calibrated` defines the model (bins, emulator, covariance with the
Hartlap factor), :mod:`engine.evaluation.calibrated_fit` fits it
(:func:`~engine.evaluation.calibrated_fit.fit_calibration`); this module finds the maps to fit
it on (:func:`training_spec`, :func:`training_maps`), fits once per training data and stores
the result (:func:`calibrate`, :func:`cache_dir`), reads stored
calibrations (:func:`load_calibration`, :func:`resolve_calibration`) and computes the posterior
on the prior grid (:func:`pk_calibrated_predict`). Formulas and the file format: see
:mod:`engine.evaluation.calibrated`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.evaluation.calibrated import (
    CACHE_ENV,
    CALIBRATION_SEED,
    DEFAULT_COUNT,
    DEFAULT_DEGREE,
    DEFAULT_MAX_BINS,
    VERSION,
    Calibration,
    Geometry,
    _as_maps,
)
from engine.evaluation.calibrated_fit import fit_calibration
from engine.evaluation.likelihood import LOCAL_HALF_WIDTH, LOCAL_POINTS, _moments, _resolved
from engine.evaluation.theory import DEFAULT_PRIOR, check_prior
from engine.lru import LRUCache
from engine.params import ConfigError

# ---------------------------------------------------------------------------------------------
# Training data, cache, loading
# ---------------------------------------------------------------------------------------------


def _join(prefix: str, target: str, options: Mapping[str, str]) -> str:
    """A spec string from :func:`engine.data.parse_spec`'s parts."""
    head = target if prefix in ("synthetic", "file") else f"{prefix}:{target}"
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{head}?{query}" if query else head


def training_spec(spec: str, datasets_file=None, drop_count: bool = False) -> tuple[str, str]:
    """(prefix, the spec of the training data behind ``spec``): the spec resolved (short
    names), without its ``split`` and ``seed`` options, and without ``count`` for generated
    kinds (their calibration maps are :data:`DEFAULT_COUNT` new ones) or with ``drop_count``
    (``count`` of other data keeps the first maps of the train split).

    Raises
    ------
    ConfigError
        A bad spec (:func:`engine.data.parse_spec`).
    """
    from engine.data import parse_spec, resolve_name

    prefix, target, options = parse_spec(resolve_name(spec, datasets_file))
    for key in ("split", "seed", "count"):
        if key != "count" or drop_count or prefix == "synthetic":
            options.pop(key, None)
    return prefix, _join(prefix, target, options)


def training_maps(
    spec: str,
    like: Mapping[str, Any] | None = None,
    datasets_file=None,
    count: int | None = None,
    seed: int | None = None,
):
    """The maps a calibration of ``spec`` is fitted on: the training split.

    Generated kinds (``grf``, …): ``count`` (default :data:`DEFAULT_COUNT`) maps generated with
    ``like``'s settings and prior box and the spec's options, seed ``seed`` (default
    :data:`CALIBRATION_SEED`, not the evaluation's). Other specs: their ``split=train`` (by
    simulation, as training reads it: :class:`engine.data.sources.LabelledMaps`); files
    and readers without splits are split map by map with the same rule
    (:func:`engine.data._common.split_groups`); ``count`` (or the spec's ``count``) keeps the
    first maps of the train split.

    Returns
    -------
    xarray.DataArray (sample, y, x), lazy where the reader is.

    Raises
    ------
    ConfigError
        A bad spec or file, or an empty train split.
    """
    from engine.data import open_spec
    from engine.data._common import split_groups

    prefix, base = training_spec(spec, datasets_file)
    if prefix == "synthetic":
        return open_spec(
            base,
            like=like,
            count=int(count or DEFAULT_COUNT),
            seed=CALIBRATION_SEED if seed is None else int(seed),
        )
    sep = "&" if "?" in base else "?"
    try:
        da = open_spec(f"{base}{sep}split=train", like=like)
    except ConfigError as exc:  # files of 'fields', readers without splits (des)
        if "no splits" not in str(exc) and "unknown option 'split'" not in str(exc):
            raise
        da = open_spec(base, like=like)
        da = da.isel(sample=split_groups(da.sizes["sample"], "train"))
    if count is not None:
        da = da.isel(sample=slice(0, int(count)))
    if da.sizes["sample"] == 0:
        raise ConfigError(f"dataset {base!r} has no maps in its train split")
    da.attrs["source"] = base
    return da


def cache_dir() -> Path:
    """The calibration cache folder: ``$ENGINE_CALIBRATIONS``, else
    ``$XDG_CACHE_HOME/cosmo-engine/calibrations`` (``~/.cache`` by default)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cosmo-engine" / "calibrations"


def _stat_signature(target: str) -> list:
    """(name, size, mtime_ns) of a path, and of a folder's entries (two levels), for the key."""
    p = Path(target)
    try:
        if not p.exists():
            return []
        items = [p, *p.iterdir()] if p.is_dir() else [p]
        if p.is_dir():
            items += [c for d in list(p.iterdir()) if d.is_dir() for c in d.iterdir()]
        out = []
        for q in sorted(items):
            st = q.stat()
            out.append([str(q.relative_to(p.parent)), st.st_size, st.st_mtime_ns])
        return out
    except OSError:
        return []


def _cache_key(base: str, prefix: str, like, options: Mapping[str, Any]) -> str:
    from engine.data import parse_spec

    target = parse_spec(base)[1] if prefix != "synthetic" else ""
    doc = {
        "version": VERSION,
        "spec": base,
        "like": {str(k): repr(v) for k, v in sorted((like or {}).items())},
        "options": {k: repr(v) for k, v in sorted(options.items())},
        "files": _stat_signature(target) if target else [],
    }
    return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()


_MEMORY: LRUCache[Calibration] = LRUCache(16)


def calibrate(
    spec: str,
    like: Mapping[str, Any] | None = None,
    datasets_file=None,
    count: int | None = None,
    seed: int | None = None,
    k_max: float | None = None,
    max_bins: int | None = DEFAULT_MAX_BINS,
    degree: int = DEFAULT_DEGREE,
    cache: bool = True,
) -> Calibration:
    """The calibration of the training data of ``spec``, fitted once and then reused.

    Looked up in memory (this process), then in the cache folder (:func:`cache_dir`, file
    ``pk_<key>.json``), else fitted (:func:`training_maps`, :func:`fit_calibration`) and stored
    in both. The key: module docstring (spec without split/count/seed, ``like``, the options,
    the files' sizes and times).

    Parameters
    ----------
    spec : str
        Dataset spec or short name of the training data.
    like : mapping, optional
        Map settings and prior box to generate or read them with (a checkpoint's
        :func:`engine.evaluation.predict.checkpoint_like`).
    datasets_file : str or Path, optional
    count, seed : int, optional
        :func:`training_maps`.
    k_max, max_bins, degree
        :func:`fit_calibration`.
    cache : bool
        False: always fit, store nothing.

    Returns
    -------
    Calibration (``path`` the cache file, or None when it could not be written).

    Raises
    ------
    ConfigError
        As :func:`training_maps` and :func:`fit_calibration`.
    """
    prefix, base = training_spec(spec, datasets_file)
    options = {"count": count, "seed": seed, "k_max": k_max, "max_bins": max_bins}
    options["degree"] = degree
    if not cache:
        maps = training_maps(spec, like, datasets_file, count, seed)
        return fit_calibration(maps, base, k_max, max_bins, degree)
    key = _cache_key(base, prefix, like, options)
    kept = _MEMORY.get(key)
    if kept is not None:
        return kept
    path = cache_dir() / f"pk_{key[:20]}.json"
    cal = None
    if path.is_file():
        try:
            cal = load_calibration(path)
        except ConfigError:
            cal = None
    if cal is None:
        maps = training_maps(spec, like, datasets_file, count, seed)
        cal = fit_calibration(maps, base, k_max, max_bins, degree)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            cal = cal.save(path)
        except (OSError, ConfigError):
            pass  # an unwritable cache: keep the fit in memory only
    return _MEMORY.put(key, cal)


def load_calibration(path: str | Path) -> Calibration:
    """A calibration from its JSON file (:meth:`Calibration.save`).

    Raises
    ------
    ConfigError
        Missing, unreadable or damaged file, or not a P(k) calibration (one line).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"calibration file {str(p)!r} does not exist")
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"calibration file {str(p)!r} is not readable JSON: {exc}") from None
    return Calibration.from_dict(doc, str(p))


def resolve_calibration(
    value, like: Mapping[str, Any] | None = None, datasets_file=None, **options
) -> Calibration:
    """A :class:`Calibration` from what a user gives: a Calibration, a ``.json`` calibration
    file, or a dataset spec to calibrate on (:func:`calibrate`, cached).

    Raises
    ------
    ConfigError
        As :func:`load_calibration` or :func:`calibrate`.
    """
    if isinstance(value, Calibration):
        return value
    text = str(value)
    if text.endswith(".json"):
        return load_calibration(text)
    return calibrate(text, like=like, datasets_file=datasets_file, **options)


# ---------------------------------------------------------------------------------------------
# Posterior
# ---------------------------------------------------------------------------------------------


def _loglike(y: torch.Tensor, psi: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """ln L = −½ (y − m)ᵀ Ψ (y − m) for y (B, K) at m (G, K) → (B, G), or m (B, G, K)."""
    if m.ndim == 2:
        yp = y @ psi
        quad_m = torch.einsum("gk,kl,gl->g", m, psi, m)
        return -0.5 * ((yp * y).sum(-1, keepdim=True) - 2 * yp @ m.T + quad_m)
    d = y[:, None, :] - m
    return -0.5 * torch.einsum("bgk,kl,bgl->bg", d, psi, d)


def _gauss_newton(cal: Calibration, y, psi, theta, lo, hi, cell, max_iter: int = 30):
    """Projected Gauss–Newton steps from θ (B, 2) to the maximum of ln L in the box."""
    for _ in range(max_iter):
        m, jac = cal.mean_log_power(theta, grad=True)
        pj = jac.transpose(-1, -2) @ psi  # (B, 2, K)
        g = torch.einsum("bik,bk->bi", pj, y - m)
        f = pj @ jac
        det = f[:, 0, 0] * f[:, 1, 1] - f[:, 0, 1] ** 2  # 2 × 2 solve; singular F: no step
        step = (
            torch.stack(
                [
                    f[:, 1, 1] * g[:, 0] - f[:, 0, 1] * g[:, 1],
                    f[:, 0, 0] * g[:, 1] - f[:, 0, 1] * g[:, 0],
                ],
                dim=-1,
            )
            / det.clamp(min=1e-300)[:, None]
        )
        single = g / f.diagonal(dim1=-2, dim2=-1).clamp(min=1e-300)
        blocked = ((theta <= lo) & (step < 0)) | ((theta >= hi) & (step > 0))
        step = torch.where(blocked[:, [1, 0]], single, step)
        step = torch.where(blocked, torch.zeros_like(step), step)
        step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
        step = torch.maximum(torch.minimum(step, 3 * cell), -3 * cell)
        new = torch.maximum(torch.minimum(theta + step, hi), lo)
        done = bool(((new - theta).abs() <= 1e-9 * cell).all())
        theta = new
        if done:
            break
    _, jac = cal.mean_log_power(theta, grad=True)
    fisher = jac.transpose(-1, -2) @ psi @ jac
    return theta, fisher


def pk_calibrated_predict(
    maps,
    calibration,
    prior=DEFAULT_PRIOR,
    grid: int = 64,
    batch_size: int = 1024,
    scale: Mapping[str, float | None] | None = None,
) -> dict[str, np.ndarray]:
    """Posterior of (Ω_m, σ8) per map under a calibrated P(k) likelihood (module docstring).

    Parameters
    ----------
    maps : xarray.DataArray (sample, y, x)
        Maps with a pixel scale attr (``box_size`` Mpc/h or ``fov`` degrees, or ``scale``) and
        ``units``; a numpy array or tensor (B, N, N) is taken to have the calibration's geometry.
    calibration : Calibration, or str
        A calibration, a ``.json`` file of one, or a dataset spec to calibrate on
        (:func:`resolve_calibration`).
    prior : ((float, float), (float, float))
        Flat prior box ((Ω_m min, max), (σ8 min, max)), dimensionless.
    grid : int
        Posterior grid points per parameter (grid² in all), 8 … 1024.
    batch_size : int
        Maps per batch (memory ~ batch_size × grid² × 8 bytes × a few).
    scale : mapping, optional
        ``{"box_size": L}`` or ``{"fov": θ}`` for DataArrays without the attr.

    Returns
    -------
    dict of numpy.ndarray, float64 unless noted, parameters in the order of ``PARAMS``
    (dimensionless): ``mean`` (B, 2), ``std`` (B, 2), ``map`` (B, 2) maximum of the likelihood
    in the box, ``corr`` (B,), ``refined`` (B,) bool; ``truth`` (B, 2) for DataArrays with
    omega_m / sigma8 coords. As :func:`engine.evaluation.likelihood.pk_likelihood_predict`.

    Raises
    ------
    ConfigError
        Maps of another geometry or units than the calibration's (one line), maps without a
        pixel scale, NaN/inf pixels, zero power in a bin, a bad prior or grid.
    """
    if not isinstance(grid, int | np.integer) or not 8 <= grid <= 1024:
        raise ConfigError(f"grid={grid!r} is out of range: allowed 8 <= grid <= 1024")
    prior = check_prior(prior)
    cal = resolve_calibration(calibration)
    truth = None
    if hasattr(maps, "dims") and hasattr(maps, "attrs"):
        cal.geometry.check(Geometry.of(maps, scale))
        x, truth = _as_maps(maps)
    else:
        x = torch.as_tensor(np.asarray(maps) if not torch.is_tensor(maps) else maps)
        x = x.detach().cpu().to(torch.float64)
        if x.ndim == 2:
            x = x[None]
        n = cal.geometry.size
        if x.ndim != 3 or tuple(x.shape[1:]) != (n, n):
            raise ConfigError(
                f"maps of shape {tuple(x.shape)} do not match the calibration: expected (B, {n}, "
                f"{n}) ({cal.geometry.text()})"
            )
        if not bool(torch.isfinite(x).all()):
            raise ConfigError("maps hold NaN or infinite pixels")
    lo = torch.tensor([prior[0][0], prior[1][0]], dtype=torch.float64)
    hi = torch.tensor([prior[0][1], prior[1][1]], dtype=torch.float64)
    cell = (hi - lo) / (grid - 1)
    om = torch.linspace(*prior[0], grid, dtype=torch.float64)
    s8 = torch.linspace(*prior[1], grid, dtype=torch.float64)
    oo, ss = torch.meshgrid(om, s8, indexing="ij")
    theta_g = torch.stack([oo.reshape(-1), ss.reshape(-1)], dim=-1)
    m_g = cal.mean_log_power(theta_g)
    psi = cal.precision
    out: dict[str, list] = {k: [] for k in ("mean", "std", "map", "corr", "refined")}
    for start in range(0, x.shape[0], batch_size):
        y = cal.measure(x[start : start + batch_size])
        logp = _loglike(y, psi, m_g)
        theta0 = theta_g[logp.argmax(-1)]
        theta_hat, fisher = _gauss_newton(cal, y, psi, theta0, lo, hi, cell)
        cov = torch.linalg.inv(fisher + 1e-300 * torch.eye(2, dtype=torch.float64))
        mean, std, corr = _moments(logp, theta_g)
        fine = ~_resolved(cov, cell)
        chol, info = torch.linalg.cholesky_ex(cov)
        fine &= info == 0
        if bool(fine.any()):
            _refine(cal, y, psi, theta_hat, chol, fine.nonzero().reshape(-1), lo, hi)(
                mean, std, corr
            )
        for k, v in (("mean", mean), ("std", std), ("map", theta_hat), ("corr", corr)):
            out[k].append(v)
        out["refined"].append(fine)
    result = {k: torch.cat(v).numpy() for k, v in out.items()}
    if truth is not None:
        result["truth"] = truth
    return result


def _refine(cal, y, psi, theta_hat, chol, idx, lo, hi):
    """A function overwriting (mean, std, corr) of the maps ``idx`` by the moments on the local
    whitened grid θ̂ + L z, |z_i| ≤ LOCAL_HALF_WIDTH (as the linear-theory likelihood)."""
    z1 = torch.linspace(-LOCAL_HALF_WIDTH, LOCAL_HALF_WIDTH, LOCAL_POINTS, dtype=torch.float64)
    z = torch.cartesian_prod(z1, z1)

    def apply(mean, std, corr):
        for c in range(0, idx.numel(), 64):
            j = idx[c : c + 64]
            th = theta_hat[j, None, :] + torch.einsum("lj,bij->bli", z, chol[j])
            inside = ((th >= lo) & (th <= hi)).all(-1)
            m = cal.mean_log_power(torch.maximum(torch.minimum(th, hi), lo))
            lp = _loglike(y[j], psi, m)
            lp = torch.where(inside, lp, torch.full_like(lp, -math.inf))
            mean[j], std[j], corr[j] = _moments(lp, th)

    return apply
