r"""Classical inference of (Ω_m, σ8) from maps: the binned P(k) likelihood.

The data vector of each map is its binned power spectrum P̂_b and the model μ_b(θ) the expected
binned spectrum of maps made with the same settings (:mod:`engine.evaluation.theory`: bins,
units, supported kinds, caveats); the Fisher bound is :mod:`engine.evaluation.fisher`.

Likelihood and its covariance
-----------------------------
Gaussian in P̂ with the Gaussian-field covariance of :mod:`engine.physics.stats`,

    −2 ln L(θ) = Σ_b (P̂_b − μ_b(θ))² / σ_b²,    σ_b² = 2 μ_b(θ̂)² / n_b,

and a flat prior on the box ``prior`` in (Ω_m, σ8). **The covariance does not depend on θ**: it
is held fixed at the maximum θ̂ of the likelihood itself (self-consistently: θ̂ is where the score
Σ_b (n_b/2)(P̂_b − μ_b) ∂μ_b / μ_b² vanishes, found by Fisher scoring). Why not a θ-dependent
covariance with its log-determinant: for a Gaussian field the covariance carries no information
that the mean does not already carry, but a Gaussian likelihood with C(θ) adds ½ Tr[C⁻¹C,i C⁻¹C,j]
= Σ_b 2 ∂_i ln μ_b ∂_j ln μ_b to its Fisher matrix, spurious information that makes posteriors too
narrow, worst for bins with few modes (Carron 2013, A&A 551, A88). A covariance fixed at an
arbitrary fiducial avoids that but gives an inefficient estimator far from the fiducial (the
prior box spans a factor 2.8 in σ8²); fixed at θ̂ it is both. Its maximum θ̂ is also the maximum
of the exact likelihood of a Gaussian field's binned spectrum, P̂_b ~ μ_b χ²_{n_b} / n_b (the
"gamma" option, −ln L = Σ_b (n_b/2)(P̂_b/μ_b + ln μ_b)), because both have the same score at θ̂;
their widths differ at the level of the observed vs expected information (the Gaussian one has
the curvature of the expected Fisher matrix at θ̂).

Algorithm (:func:`pk_likelihood_predict`, all maps at once, float64 torch on the CPU)
----------------------------------------------------------------------------------------
0. A :class:`TheoryTable` of ln μ_b on nodes uniform in (ln Ω_m, ln σ8) over the prior box, one
   batched theory call, interpolated by Catmull–Rom cubic convolution (with cubically
   extrapolated ghost nodes) with analytic derivatives. For fields, and κ with linear matter
   power, μ = σ8² S(Ω_m) + N exactly, so two calls per Ω_m node fill any σ8 resolution; κ with
   halofit needs a pyccl call per (Ω_m, σ8) node (~0.3 s each), hence a coarser default grid.
   The table is cached per settings, prior, bins and node numbers.
1. The gamma log-likelihood on the ``grid × grid`` posterior grid (uniform in Ω_m and σ8,
   endpoints on the prior edges) for all maps: one (B, K) × (K, G) matrix product. Its argmax
   is the starting point of
2. Fisher scoring (projected onto the prior box) to the maximum θ̂ (reported as ``map``).
3. The Gaussian posterior with σ_b fixed at θ̂ on the same grid, normalised; posterior mean and
   standard deviation per parameter and the correlation are its moments. Sums over a uniform
   grid converge exponentially for smooth posteriors (Poisson summation: the aliasing error is
   exp(−2π² mᵀD⁻¹ΣD⁻¹m) for the reciprocal-lattice vectors m, D the grid steps, Σ the posterior
   covariance), so when the Laplace covariance Σ = F(θ̂)⁻¹ is not resolved (min over small
   integer m of mᵀD⁻¹ΣD⁻¹m < 1, i.e. the posterior is narrower than a grid cell along some
   lattice direction: large maps), the moments come instead from a local 21 × 21 grid in the
   whitened coordinates z = L⁻¹(θ − θ̂), |z_i| ≤ 5, Σ = LLᵀ (``refined`` is True for those maps).

"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.evaluation.theory import (
    DEFAULT_PRIOR,
    TheoryTable,
    check_prior,
    map_model,
    settings_from_attrs,
    theory_grid,
)
from engine.params import ConfigError

__all__ = ["LIKELIHOODS", "LOCAL_HALF_WIDTH", "LOCAL_POINTS", "pk_likelihood_predict"]

#: Half-width (in posterior standard deviations) and points per axis of the refined local grid.
LOCAL_HALF_WIDTH, LOCAL_POINTS = 5.0, 21
#: Likelihood choices of :func:`pk_likelihood_predict`.
LIKELIHOODS = ("gaussian", "gamma")


def _as_maps(maps, settings):
    """(maps (B, N, N) float tensor on the CPU, settings, truth (B, 2) or None) of the input."""
    truth = None
    if hasattr(maps, "dims") and hasattr(maps, "attrs"):  # xarray.DataArray
        if settings is None:
            settings = settings_from_attrs(dict(maps.attrs))
        if "omega_m" in maps.coords and "sigma8" in maps.coords:
            truth = np.stack(
                [np.asarray(maps["omega_m"], np.float64), np.asarray(maps["sigma8"], np.float64)],
                axis=-1,
            ).reshape(-1, 2)
        if maps.ndim != 3:
            raise ConfigError(
                f"maps of dims {tuple(maps.dims)} are not supported: the P(k) likelihood needs "
                "2D maps (sample, y, x)"
            )
        maps = maps.values
    if settings is None:
        raise ConfigError("settings are needed for maps without attrs (pass settings=...)")
    x = torch.as_tensor(np.asarray(maps) if not torch.is_tensor(maps) else maps)
    if x.ndim == 2:
        x = x.unsqueeze(0)
    n = int(settings.size)
    if x.ndim != 3 or tuple(x.shape[1:]) != (n, n):
        raise ConfigError(
            f"maps of shape {tuple(x.shape)} do not match the settings: expected (B, {n}, {n})"
        )
    if not x.is_floating_point():
        x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ConfigError("maps hold NaN or infinite pixels")
    return x.detach().cpu(), settings, truth


def _gamma_loglike(p: torch.Tensor, half: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """ln L = −Σ_b (n_b/2)(P̂_b/μ_b + ln μ_b) for maps p (B, K) at points mu (..., G, K)."""
    if mu.ndim == 2:
        return -((p * half) @ (1 / mu).T + (half * mu.log()).sum(-1))
    return -torch.einsum("bk,bgk->bg", p * half, 1 / mu) - (half * mu.log()).sum(-1)


def _gauss_loglike(p: torch.Tensor, wts: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """ln L = −½ Σ_b w_b (P̂_b − μ_b)², w (B, K) per map, at points mu (G, K) or (B, G, K)."""
    if mu.ndim == 2:
        chi2 = (wts * p * p).sum(-1, keepdim=True) - 2 * (wts * p) @ mu.T + wts @ (mu * mu).T
        return -0.5 * chi2
    return -0.5 * (wts[:, None, :] * (p[:, None, :] - mu) ** 2).sum(-1)


def _moments(logp: torch.Tensor, theta: torch.Tensor):
    """Mean (B, 2), std (B, 2), correlation (B,) of weights exp(logp) (B, G) at theta (…, G, 2)."""
    logp = torch.nan_to_num(logp, nan=-math.inf)
    w = torch.exp(logp - logp.max(dim=-1, keepdim=True).values)
    w = w / w.sum(-1, keepdim=True)
    th = theta if theta.ndim == 3 else theta[None]
    mean = torch.einsum("bg,bgi->bi", w, th.expand(w.shape[0], -1, -1))
    d = th - mean[:, None, :]
    cov = torch.einsum("bg,bgi,bgj->bij", w, d, d)
    std = cov.diagonal(dim1=-2, dim2=-1).clamp(min=0).sqrt()
    corr = cov[:, 0, 1] / (std[:, 0] * std[:, 1]).clamp(min=1e-300)
    return mean, std, corr


def _fisher_scoring(p, half, table, theta, lo, hi, cell, max_iter=30):
    """Maximise the gamma likelihood (same maximum as the self-consistent Gaussian) in the box.

    Projected Fisher scoring: a coordinate at a bound whose step points outwards is frozen and
    the other one solved alone; steps are limited to 3 grid cells. Returns θ̂ (B, 2).
    """
    for _ in range(max_iter):
        mu, dmu = table(theta[:, 0], theta[:, 1], grad=True)
        w = half / (mu * mu)
        g = torch.einsum("bk,bk,bki->bi", w, p - mu, dmu)
        f = torch.einsum("bk,bki,bkj->bij", w, dmu, dmu)
        det = f[:, 0, 0] * f[:, 1, 1] - f[:, 0, 1] ** 2
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
        step = torch.where(blocked[:, [1, 0]], single, step)  # other coordinate frozen
        step = torch.where(blocked, torch.zeros_like(step), step)
        step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
        step = torch.maximum(torch.minimum(step, 3 * cell), -3 * cell)
        new = torch.maximum(torch.minimum(theta + step, hi), lo)
        done = bool(((new - theta).abs() <= 1e-9 * cell).all())
        theta = new
        if done:
            break
    return theta


def _resolved(cov: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """True where the grid of steps ``cell`` (2,) resolves a Gaussian of covariance cov (B, 2, 2).

    Poisson summation: the relative error of grid moments is ~exp(−2π² mᵀD⁻¹ΣD⁻¹m) for the
    integer vectors m ≠ 0; resolved means mᵀD⁻¹ΣD⁻¹m ≥ 1 (error ≲ 3e-9) for all |m_i| ≤ 3.
    Non-finite or non-positive covariances (unconstrained maps) count as resolved.
    """
    r = torch.arange(-3, 4, dtype=torch.float64)
    m = torch.cartesian_prod(r, r)
    m = m[(m != 0).any(-1)] / cell
    q = torch.einsum("mi,bij,mj->bm", m, cov, m).min(-1).values
    ok = torch.isfinite(cov).all(-1).all(-1) & (cov[:, 0, 0] > 0) & (cov[:, 1, 1] > 0)
    return (q >= 1) | ~ok


def pk_likelihood_predict(
    maps,
    settings=None,
    prior=DEFAULT_PRIOR,
    grid: int = 64,
    k_max: float | None = None,
    likelihood: str = "gaussian",
    batch_size: int = 1024,
    table_nodes: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """Posterior of (Ω_m, σ8) per map from its binned P(k) (module docstring for the method).

    Parameters
    ----------
    maps : torch.Tensor or numpy.ndarray (B, N, N), or xarray.DataArray (sample, y, x)
        Maps as generated (δ for slabs, κ for lensing), float.
    settings : FieldParams, LPTParams or KappaParams, optional
        The settings the maps were made with; default rebuilt from a DataArray's attrs
        (:func:`settings_from_attrs`).
    prior : ((float, float), (float, float))
        Flat prior box ((Ω_m min, max), (σ8 min, max)).
    grid : int
        Posterior grid points per parameter (grid² in all), >= 8.
    k_max : float, optional
        Highest bin centre used (h/Mpc, or ℓ for κ); default the Nyquist wavenumber.
    likelihood : {"gaussian", "gamma"}
        Gaussian with the covariance 2μ(θ̂)²/n_b fixed at the maximum θ̂ (default), or the exact
        likelihood of a Gaussian field's binned spectrum (χ² with n_b degrees of freedom).
    batch_size : int
        Maps processed together (memory ~ batch_size × grid² × 8 bytes × a few).
    table_nodes : (int, int), optional
        Nodes (Ω_m, σ8) of the :class:`TheoryTable` (:func:`theory_grid` defaults).

    Returns
    -------
    dict of numpy.ndarray, float64 unless noted, parameters in the order of :data:`PARAM_NAMES`
    (both dimensionless):
        ``mean`` (B, 2) posterior mean; ``std`` (B, 2) posterior standard deviation;
        ``map`` (B, 2) maximum of the likelihood in the prior box (= maximum a posteriori);
        ``corr`` (B,) posterior correlation of Ω_m and σ8; ``refined`` (B,) bool, moments from
        the local whitened grid; ``truth`` (B, 2) true parameters, only for DataArrays with
        omega_m / sigma8 coords.

    Raises
    ------
    ConfigError
        Unsupported kind or settings, maps of the wrong shape or with non-finite pixels, a bad
        prior, grid, k_max or likelihood.
    """
    if likelihood not in LIKELIHOODS:
        raise ConfigError(
            f"likelihood={likelihood!r} is not allowed: likelihood must be one of "
            + ", ".join(map(repr, LIKELIHOODS))
        )
    if not isinstance(grid, int | np.integer) or not 8 <= grid <= 1024:
        raise ConfigError(f"grid={grid!r} is out of range: allowed 8 <= grid <= 1024")
    prior = check_prior(prior)
    x, settings, truth = _as_maps(maps, settings)
    model = map_model(settings, k_max)
    table, theta_g, mu_g = theory_grid(model, prior, int(grid), table_nodes)
    lo = torch.tensor([prior[0][0], prior[1][0]], dtype=torch.float64)
    hi = torch.tensor([prior[0][1], prior[1][1]], dtype=torch.float64)
    g = _Grid(table, theta_g, mu_g, model.n_modes / 2, lo, hi, (hi - lo) / (grid - 1), likelihood)
    out = {k: [] for k in ("mean", "std", "map", "corr", "refined")}
    for start in range(0, x.shape[0], batch_size):
        batch = _batch_posterior(model.measure(x[start : start + batch_size]), g)
        for k, v in batch.items():
            out[k].append(v)
    result = {k: torch.cat(v).numpy() for k, v in out.items()}
    if truth is not None:
        result["truth"] = truth
    return result


@dataclass(frozen=True)
class _Grid:
    """The posterior grid of one :func:`pk_likelihood_predict` call and its theory."""

    table: TheoryTable
    theta: torch.Tensor  # (G, 2) grid points
    mu: torch.Tensor  # (G, K) μ_b at the grid points
    half: torch.Tensor  # (K,) n_b / 2
    lo: torch.Tensor  # (2,) prior low
    hi: torch.Tensor  # (2,) prior high
    cell: torch.Tensor  # (2,) grid steps
    likelihood: str


def _loglike(g: _Grid, p, wts, mu) -> torch.Tensor:
    """The chosen log-likelihood of maps p (B, K) at points mu ((G, K) or (B, G, K))."""
    if g.likelihood == "gaussian":
        return _gauss_loglike(p, wts, mu)
    return _gamma_loglike(p, g.half, mu)


def _batch_posterior(p: torch.Tensor, g: _Grid) -> dict[str, torch.Tensor]:
    """Steps 1–3 of the algorithm (module docstring) for the binned spectra p (B, K) of a batch:
    ``mean``, ``std``, ``map`` (B, 2), ``corr`` (B,), ``refined`` (B,) bool."""
    # 1. gamma likelihood on the grid -> start point; 2. Fisher scoring -> θ̂
    theta0 = g.theta[_gamma_loglike(p, g.half, g.mu).argmax(-1)]
    theta_hat = _fisher_scoring(p, g.half, g.table, theta0, g.lo, g.hi, g.cell)
    mu_hat, dmu = g.table(theta_hat[:, 0], theta_hat[:, 1], grad=True)
    wts = g.half / (mu_hat * mu_hat)  # 1 / σ_b², covariance fixed at θ̂
    fisher = torch.einsum("bk,bki,bkj->bij", wts, dmu, dmu)
    cov = torch.linalg.inv(fisher + 1e-300 * torch.eye(2, dtype=torch.float64))
    # 3. posterior moments on the grid, or on a local whitened grid where it is too coarse
    mean, std, corr = _moments(_loglike(g, p, wts, g.mu), g.theta)
    fine = ~_resolved(cov, g.cell)
    chol, info = torch.linalg.cholesky_ex(cov)
    fine &= info == 0  # (a covariance that is not positive definite keeps the grid moments)
    if bool(fine.any()):
        _refine(p, wts, g, theta_hat, chol, fine.nonzero().reshape(-1), (mean, std, corr))
    return {"mean": mean, "std": std, "map": theta_hat, "corr": corr, "refined": fine}


def _refine(p, wts, g: _Grid, theta_hat, chol, idx, moments) -> None:
    """Overwrite ``moments`` (mean, std, corr) of the maps ``idx`` by those on the local grid
    θ̂ + L z, |z_i| ≤ :data:`LOCAL_HALF_WIDTH` (Σ = LLᵀ, ``chol`` (B, 2, 2)), 16 maps at a time."""
    mean, std, corr = moments
    z1 = torch.linspace(-LOCAL_HALF_WIDTH, LOCAL_HALF_WIDTH, LOCAL_POINTS, dtype=torch.float64)
    z = torch.cartesian_prod(z1, z1)  # (L, 2) whitened offsets
    lo, hi = g.lo, g.hi
    for c in range(0, idx.numel(), 16):
        j = idx[c : c + 16]
        th = theta_hat[j, None, :] + torch.einsum("lj,bij->bli", z, chol[j])
        inside = ((th >= lo) & (th <= hi)).all(-1)
        mu_l = g.table(th[..., 0].clamp(lo[0], hi[0]), th[..., 1].clamp(lo[1], hi[1]))
        lp = _loglike(g, p[j], wts[j], mu_l)
        lp = torch.where(inside, lp, torch.full_like(lp, -math.inf))
        mean[j], std[j], corr[j] = _moments(lp, th)
