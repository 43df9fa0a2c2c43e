r"""The Fisher matrix of (Ω_m, σ8) for one map and the Cramér–Rao bound.

Fisher matrix and Cramér–Rao bound
----------------------------------
For a Gaussian random field on the periodic grid, the modes k and −k form one complex Gaussian
variable with independent real and imaginary parts of variance P(k)/2 each (in the units of
:mod:`engine.physics.stats`), and the self-conjugate (Nyquist) modes one real variable of variance P(k).
A zero-mean Gaussian variable x of variance s²(θ) has Fisher information ½ ∂_i ln s² ∂_j ln s²
(Tegmark, Taylor & Heavens 1997, ApJ 480, 22: F = ½ Tr[C⁻¹C,i C⁻¹C,j] for zero-mean Gaussian
data, here with a diagonal C).
A complex mode pair therefore holds 2 × ½ (∂ ln P)² and a self-conjugate mode ½ (∂ ln P)²: with
the **full-plane** mode count of :mod:`engine.physics.stats` (k and −k counted separately) every mode
carries exactly ½,

    F_ij = ½ Σ_{full-plane modes k in the bins} ∂_i ln P_map(k) ∂_j ln P_map(k),            (F)

P_map including smoothing and noise. This is the exact information of the map (all of it is in
the spectrum for a Gaussian field) and is what :func:`fisher_matrix` sums mode by mode. Binned,
it becomes Σ_b (n_b/2) ∂_i ln μ_b ∂_j ln μ_b, the Fisher matrix of the likelihood of
:mod:`engine.evaluation.likelihood`, equal to (F) up to the variation of P and ∂ ln P inside a bin (``binned=True``; it can come out slightly
larger, as 2μ_b²/n_b underestimates the variance of a bin over which P varies: ~1 % for steep
κ spectra, ~0.1 % for slabs). For lognormal, 2LPT and lognormal κ maps (F) is only the
information of the spectrum under Gaussian covariance, not a bound. Note that a known smoothing
of a noiseless map changes no ∂ ln P and loses no information; noise does.

Derivatives are central finite differences of the theory (relative steps ``FD_STEP``; one-sided
at the parameter bounds) or, for the slab kinds, forward-mode autograd through the interpolated
theory of :func:`engine.physics.slabs.theory_power` (``derivative="autograd"``); the tests check that
they agree.

σ_CRB of an evaluation
----------------------
:func:`crb_sigma` gives, for slab kinds, :func:`cramer_rao` (the Fisher matrix summed mode by
mode, eq. F); for kappa the binned Fisher matrix of the likelihood's theory table,
Σ_b (n_b/2) ∂ ln μ_b ∂ ln μ_b (equal to the mode sum within ~1 %; the mode sum would cost a
pyccl call per map). It is a bound only for Gaussian fields (grf, Gaussian κ); for lognormal and
2LPT maps it is the information of the power spectrum alone (``report["fisher"]["bound"]`` is
false), which a network may beat.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.evaluation.theory import check_prior, map_model, theory_grid
from engine.params import OMEGA_M_BOUNDS, SIGMA8_BOUNDS, ConfigError

#: Relative finite-difference steps of the theory derivatives, per theory family.
FD_STEP = {"density": 1e-4, "convergence": 1e-2}


def _params(omega_m, sigma8) -> tuple[torch.Tensor, torch.Tensor, bool]:
    scalar = np.ndim(omega_m) == 0 and np.ndim(sigma8) == 0
    om = torch.atleast_1d(torch.as_tensor(omega_m, dtype=torch.float64)).reshape(-1)
    s8 = torch.atleast_1d(torch.as_tensor(sigma8, dtype=torch.float64)).reshape(-1)
    om, s8 = torch.broadcast_tensors(om, s8)
    from engine.physics.slabs import check_parameters

    check_parameters(om, s8)
    return om.contiguous(), s8.contiguous(), scalar


def _fd_log_derivatives(fn, om, s8, step: float) -> torch.Tensor:
    """∂ ln f / ∂(Ω_m, σ8) by central differences (one-sided at the bounds): (B, 2, ...)."""
    out = []
    for i, (v, (blo, bhi)) in enumerate(
        zip((om, s8), (OMEGA_M_BOUNDS, SIGMA8_BOUNDS), strict=True)
    ):
        h = step * v
        up, dn = (v + h).clamp(max=bhi), (v - h).clamp(min=blo)
        args_up = (up, s8) if i == 0 else (om, up)
        args_dn = (dn, s8) if i == 0 else (om, dn)
        f_up, f_dn = fn(*args_up).log(), fn(*args_dn).log()
        dv = (up - dn).reshape(-1, *([1] * (f_up.ndim - 1)))
        out.append((f_up - f_dn) / dv)
    return torch.stack(out, dim=1)


def log_power_derivatives(
    settings,
    omega_m,
    sigma8,
    k_max: float | None = None,
    derivative: str = "fd",
    step: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """∂ ln P_map(k) / ∂(Ω_m, σ8) on every stored real-FFT mode in the bins.

    Parameters
    ----------
    settings, k_max
        As :func:`map_model`.
    omega_m, sigma8 : float or array_like (B,)
    derivative : {"fd", "autograd"}
        Central finite differences of the theory with relative step ``step`` (default
        :data:`FD_STEP` of the theory family), or forward-mode autograd through
        :func:`engine.physics.slabs.theory_power` (slab kinds only).

    Returns
    -------
    d : torch.Tensor (B, 2, M) float64 (or (2, M) for scalar parameters), per unit Ω_m / σ8.
    weights : torch.Tensor (M,) float64
        Full-plane modes each stored mode stands for (1 or 2), see :mod:`engine.physics.stats`.

    Raises
    ------
    ConfigError
        Unknown ``derivative``, autograd for κ, or the errors of :func:`map_model`.
    """
    model = map_model(settings, k_max)
    om, s8, scalar = _params(omega_m, sigma8)
    kmag, weights = model.modes()
    if derivative == "fd":
        step = FD_STEP[model.family] if step is None else float(step)
        d = _fd_log_derivatives(lambda o, s: model.mode_power(kmag, o, s), om, s8, step)
    elif derivative == "autograd":
        if model.family != "density":
            raise ConfigError(
                "derivative='autograd' needs a torch theory: only the slab kinds (grf, lognormal, "
                "2lpt) have one; use derivative='fd' for kappa"
            )

        import torch.autograd.forward_ad as fwad

        cols = []
        for i in range(2):
            with fwad.dual_level():
                args = [om, s8]
                args[i] = fwad.make_dual(args[i], torch.ones_like(args[i]))
                ln_p = model.mode_power(kmag, *args).log()
                cols.append(fwad.unpack_dual(ln_p).tangent)
        d = torch.stack(cols, dim=1)
    else:
        raise ConfigError(
            f"derivative={derivative!r} is not allowed: derivative must be one of 'fd', 'autograd'"
        )
    return (d[0] if scalar else d), weights


def fisher_matrix(
    settings,
    omega_m,
    sigma8,
    k_max: float | None = None,
    binned: bool = False,
    derivative: str = "fd",
    step: float | None = None,
) -> np.ndarray:
    """Fisher matrix of (Ω_m, σ8) for one map, from all its Fourier modes in the bins.

    F_ij = ½ Σ_modes ∂_i ln P_map ∂_j ln P_map over full-plane modes (module docstring, eq. F),
    smoothing and noise included; or, with ``binned``, Σ_b (n_b/2) ∂_i ln μ_b ∂_j ln μ_b of the
    binned theory (the information the binned Gaussian likelihood assumes it has).

    Parameters
    ----------
    settings : FieldParams, LPTParams or KappaParams
    omega_m, sigma8 : float or array_like (B,)
        Fiducial parameters.
    k_max : float, optional
        Highest bin centre (h/Mpc or ℓ); default Nyquist. The modes are those of the bins.
    binned : bool
    derivative, step
        As :func:`log_power_derivatives` (binned: finite differences only).

    Returns
    -------
    numpy.ndarray (2, 2) float64, or (B, 2, 2) for array parameters; units 1/parameter².
    """
    if binned:
        model = map_model(settings, k_max)
        om, s8, scalar = _params(omega_m, sigma8)
        if derivative != "fd":
            raise ConfigError("binned=True supports derivative='fd' only")
        step = FD_STEP[model.family] if step is None else float(step)
        d = _fd_log_derivatives(model.binned, om, s8, step)  # (B, 2, K)
        f = torch.einsum("bik,k,bjk->bij", d, model.n_modes / 2, d)
    else:
        d, w = log_power_derivatives(settings, omega_m, sigma8, k_max, derivative, step)
        scalar = d.ndim == 2
        d = d.reshape(-1, 2, w.numel())
        f = torch.einsum("bim,m,bjm->bij", d, w / 2, d)
    f = f.numpy()
    return f[0] if scalar else f


def cramer_rao(settings, omega_m, sigma8, k_max: float | None = None, **kwargs) -> np.ndarray:
    """Marginalised Cramér–Rao bounds σ_i = √(F⁻¹)_ii of (Ω_m, σ8) for one map.

    Parameters as :func:`fisher_matrix` (``kwargs`` passed on). Returns numpy.ndarray (2,)
    float64, or (B, 2) for array parameters; dimensionless (units of Ω_m and σ8).
    """
    f = fisher_matrix(settings, omega_m, sigma8, k_max, **kwargs)
    return np.sqrt(np.diagonal(np.linalg.inv(f), axis1=-2, axis2=-1))


def efficiency(pred_mean, truth, settings, k_max: float | None = None) -> np.ndarray:
    """Efficiency per parameter of an estimator: σ_CRB / RMSE over test maps.

    With the bound evaluated at each map's true parameters, efficiency_i = 1 / √⟨(e_i/σ_CRB,i)²⟩
    (e the estimation error), which is σ_CRB / RMSE when σ_CRB is the same for all maps. An
    unbiased estimator has efficiency ≤ 1 (up to the scatter of the test set, relative standard
    error ≈ 1/√(2B)); use test maps away from the prior edges, where a prior can beat the bound.

    Parameters
    ----------
    pred_mean, truth : array_like (B, 2)
        Estimates and true values of (Ω_m, σ8).
    settings : FieldParams, LPTParams or KappaParams
    k_max : float, optional
        As :func:`fisher_matrix` (use the estimator's).

    Returns
    -------
    numpy.ndarray (2,) float64, dimensionless.
    """
    pred = np.asarray(pred_mean, np.float64).reshape(-1, 2)
    true = np.asarray(truth, np.float64).reshape(-1, 2)
    if pred.shape != true.shape or pred.shape[0] == 0:
        raise ConfigError(f"pred_mean {pred.shape} and truth {true.shape} must be equal (B, 2)")
    sigma = cramer_rao(settings, true[:, 0], true[:, 1], k_max).reshape(-1, 2)
    return 1.0 / np.sqrt(np.mean(((pred - true) / sigma) ** 2, axis=0))


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
        Maps the Fisher matrix does not support (see :func:`engine.evaluation.theory.map_model`).
    """
    om = np.atleast_1d(np.asarray(omega_m, np.float64))
    s8 = np.atleast_1d(np.asarray(sigma8, np.float64))
    model = map_model(settings, k_max)
    if model.family != "convergence":
        return np.asarray(cramer_rao(settings, om, s8, k_max)).reshape(-1, 2), "modes"
    table, _, _ = theory_grid(model, check_prior(prior), int(grid))
    o = torch.as_tensor(np.clip(om, *prior[0]))
    s = torch.as_tensor(np.clip(s8, *prior[1]))
    mu, dmu = table(o, s, grad=True)
    wts = model.n_modes / 2 / (mu * mu)
    fisher = torch.einsum("bk,bki,bkj->bij", wts, dmu, dmu).numpy()
    return np.sqrt(np.diagonal(np.linalg.inv(fisher), axis1=-2, axis2=-1)), "binned"
