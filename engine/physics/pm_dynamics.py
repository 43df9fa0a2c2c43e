"""The particle-mesh integrator of the ``pm`` kind: flat-ΛCDM background and growth, 2LPT
initial conditions at ``a_start``, the mesh force and the FastPM kick-drift-kick steps (Feng et
al. 2016), on batches of volumes in torch. The kind itself — settings, checks, linear theory,
the velocity-divergence channel, slabs and the boundary DataArrays — is :mod:`engine.physics.pm`
(which re-exports these names); its docstring gives the equations and conventions. Settings
are :class:`engine.physics.pm.PMParams` (annotated as its base class, LPTParams, so this module
does not import the kind's).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy.special import hyp2f1

from engine.params import ConfigError
from engine.physics.cosmology import check_parameters, omega_m_at, second_order_growth_ratio
from engine.physics.lpt import LPTParams, displacement, linear_modes
from engine.physics.lpt import check_settings as check_lpt_settings
from engine.physics.mesh import _deposit, freq_int, lattice_deposit


def output_scale_factor(settings: LPTParams) -> float:
    """a_out = 1 / (1 + redshift), dimensionless."""
    return 1.0 / (1.0 + settings.redshift)


def check_settings(settings: LPTParams) -> None:
    """Raise :class:`ConfigError` for settings no PM volume can be made with.

    The checks of :func:`engine.physics.lpt.check_settings` (mesh k range inside the theory
    table, slab inside the box) and ``a_start < 1/(1 + redshift)``.
    """
    check_lpt_settings(settings)
    a_out = output_scale_factor(settings)
    if not settings.a_start < a_out:
        raise ConfigError(
            f"a_start={settings.a_start:g} must be smaller than the output scale factor "
            f"1/(1+redshift)={a_out:.4g} (redshift={settings.redshift:g}): lower a_start or the "
            "redshift"
        )
    s = settings.slabs
    if s > 1 and settings.dim != 2:
        raise ConfigError(
            f"slabs={s} needs dim=2 (slab maps): a dim=3 output is the whole volume; allowed "
            "slabs=1 with dim=3"
        )
    if s * settings.thickness > settings.box_size * (1 + 1e-12):
        raise ConfigError(
            f"slabs={s} slabs of thickness={settings.thickness:g} Mpc/h need "
            f"{s * settings.thickness:g} Mpc/h > box_size={settings.box_size:g} Mpc/h: the "
            f"slabs of a volume must not overlap; allowed slabs <= "
            f"{max(1, math.floor(settings.box_size / settings.thickness + 1e-9))}"
        )


# ---------------------------------------------------------------------------------------------
# Background and growth (flat ΛCDM, radiation neglected), float64 numpy
# ---------------------------------------------------------------------------------------------


def _broadcast(a, omega_m):
    a = np.asarray(a, dtype=np.float64)
    om = np.asarray(torch.as_tensor(omega_m, dtype=torch.float64).cpu(), dtype=np.float64)
    return a, om


def hubble_e(a, omega_m) -> np.ndarray:
    """E(a) = H(a)/H0 = √(Ω_m a⁻³ + 1 − Ω_m) of flat ΛCDM (dimensionless; numpy broadcasting)."""
    a, om = _broadcast(a, omega_m)
    return np.sqrt(om / a**3 + 1.0 - om)


def growth_d1(a, omega_m) -> np.ndarray:
    """Linear growth factor D(a) = a ₂F₁(1/3, 1; 11/6; −a³(1−Ω_m)/Ω_m) of flat ΛCDM, → a early.

    The growing solution of d(a³ E dD/da)/da = (3/2) Ω_m D / (a² E) (Percival 2005, A&A 443, 819,
    w = −1; Heath 1977). Dimensionless, normalised to D/a → 1 as a → 0; numpy broadcasting of
    ``a`` and ``omega_m``.
    """
    a, om = _broadcast(a, omega_m)
    return a * hyp2f1(1.0 / 3.0, 1.0, 11.0 / 6.0, -(a**3) * (1.0 - om) / om)


def growth_rate_f1(a, omega_m) -> np.ndarray:
    """f(a) = d ln D / d ln a of :func:`growth_d1` (dimensionless), from the derivative of ₂F₁:
    f = 1 + (6/11) z ₂F₁(4/3, 2; 17/6; z) / ₂F₁(1/3, 1; 11/6; z), z = −a³(1−Ω_m)/Ω_m."""
    a, om = _broadcast(a, omega_m)
    z = -(a**3) * (1.0 - om) / om
    return 1.0 + (6.0 / 11.0) * z * hyp2f1(4.0 / 3.0, 2.0, 17.0 / 6.0, z) / hyp2f1(
        1.0 / 3.0, 1.0, 11.0 / 6.0, z
    )


def momentum_growth(a, omega_m) -> np.ndarray:
    """G_f(a) = a³ E(a) dD/da = a² E f D: the momentum p = G_f Ψ_0 of a linear displacement
    D Ψ_0 (FastPM's G_f; same normalisation as :func:`growth_d1`; numpy broadcasting)."""
    a = np.asarray(a, dtype=np.float64)
    return a**2 * hubble_e(a, omega_m) * growth_rate_f1(a, omega_m) * growth_d1(a, omega_m)


def drift_factor(a0, a1, ac, omega_m) -> np.ndarray:
    """FastPM drift factor [D(a1) − D(a0)] / G_f(a_c): Δx = factor · p(a_c) (dimensionless)."""
    d1 = growth_d1(np.asarray([a0, a1]), np.asarray(omega_m)[..., None])
    return (d1[..., 1] - d1[..., 0]) / momentum_growth(ac, omega_m)


def kick_factor(a0, a1, ac, omega_m) -> np.ndarray:
    """FastPM kick factor [G_f(a1) − G_f(a0)] / D(a_c): Δp = factor · F̃(a_c), F̃ = −∇∇⁻²δ
    (the (3/2) Ω_m of the force cancels against g_f = dG_f/da = (3/2) Ω_m D / (a² E))."""
    g = momentum_growth(np.asarray([a0, a1]), np.asarray(omega_m)[..., None])
    return (g[..., 1] - g[..., 0]) / growth_d1(ac, omega_m)


def stages(settings: LPTParams) -> np.ndarray:
    """Scale factors of the force evaluations: ``steps`` + 1 values linear in a from a_start to
    1/(1+redshift) (float64)."""
    return np.linspace(settings.a_start, output_scale_factor(settings), settings.steps + 1)


# ---------------------------------------------------------------------------------------------
# Initial conditions
# ---------------------------------------------------------------------------------------------


def initial_conditions(
    settings: LPTParams,
    omega_m: torch.Tensor,
    sigma8: torch.Tensor,
    generator: torch.Generator,
    device=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """2LPT displacements and FastPM momenta of the particle lattice at ``settings.a_start``.

    Linear modes at ``settings.redshift`` (:func:`engine.physics.lpt.linear_modes`, pyccl)
    scaled by D(a_start)/D(a_out), then Ψ1, Ψ = Ψ1 + Ψ2 (:func:`engine.physics.lpt.displacement`)
    and p = a² E (f1 Ψ1 + f2 Ψ2) (module docstring, step 1).

    Parameters
    ----------
    settings : LPTParams
    omega_m, sigma8 : torch.Tensor (B,)
    generator : torch.Generator
        On ``device``; consumed exactly as by :func:`engine.physics.lpt.generate_displacements`.
    device : torch.device or str, optional
        Default: the generator's device.

    Returns
    -------
    psi, p : torch.Tensor (B, 3, N, N, N) float32 in Mpc/h (components along z, y, x).

    Raises
    ------
    ConfigError
        Parameters out of range, a cell size outside the theory table, a_start ≥ a_out.
    """
    device = torch.device(device) if device is not None else generator.device
    check_settings(settings)
    om = torch.as_tensor(omega_m, dtype=torch.float64).reshape(-1)
    s8 = torch.as_tensor(sigma8, dtype=torch.float64).reshape(-1)
    if om.shape != s8.shape:
        raise ConfigError(
            f"omega_m and sigma8 must hold one value per volume, got {om.numel()} and {s8.numel()}"
        )
    check_parameters(om.cpu(), s8.cpu())
    om_np = om.cpu().numpy()
    a0, a_out = settings.a_start, output_scale_factor(settings)
    back = growth_d1(a0, om_np) / growth_d1(a_out, om_np)  # (B,)
    delta_k = linear_modes(settings, om, s8, generator, device)
    delta_k *= torch.as_tensor(back, dtype=torch.float32, device=device).reshape(-1, 1, 1, 1)
    psi1 = displacement(delta_k, settings.box_size, 1)
    moment = a0**2 * hubble_e(a0, om_np)
    f1 = growth_rate_f1(a0, om_np)

    def per_volume(x):
        return torch.as_tensor(x, dtype=torch.float32, device=device).reshape(-1, 1, 1, 1, 1)

    if settings.lpt_order == 1:
        return psi1, psi1 * per_volume(moment * f1)
    z0 = 1.0 / a0 - 1.0
    psi = displacement(delta_k, settings.box_size, 2, second_order_growth_ratio(om, z0))
    del delta_k
    f2 = 2.0 * f1 + (3.0 / 143.0) * (1.0 - omega_m_at(om, z0).cpu().numpy())
    # p = a²E (f1 Ψ1 + f2 (Ψ − Ψ1)) = a²E (f2 Ψ − (f2 − f1) Ψ1)
    p = psi * per_volume(moment * f2)
    p -= psi1 * per_volume(moment * (f2 - f1))
    return psi, p


# ---------------------------------------------------------------------------------------------
# Force
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def force_kernels(m: int, box: float, device: torch.device):
    """Fourier kernels of the force mesh of M³ cells of side L/M (cached per m, box, device).

    Returns
    -------
    inv_k2 : torch.Tensor (M, M, M//2+1) complex64
        1/k² in (Mpc/h)², 0 at k = 0 (the Green's function of ∇², sign in :func:`pm_force`).
    ik : list of 3 torch.Tensor, broadcastable to (M, M, M//2+1), complex64
        i k̃_a = i [8 sin(k_a c) − sin(2 k_a c)] / (6 c) in h/Mpc, c = L/M (4-point finite
        difference; 0 on the Nyquist plane).
    """
    kf, c = 2 * math.pi / box, box / m
    k2 = torch.zeros((), dtype=torch.float64)
    ik = []
    for a in range(3):
        shape = [1, 1, 1]
        shape[a] = -1
        k = (kf * freq_int(m, last=a == 2).to(torch.float64)).reshape(shape)
        k2 = k2 + k**2
        fd = (8 * torch.sin(k * c) - torch.sin(2 * k * c)) / (6 * c)
        ik.append((1j * fd).to(torch.complex64).to(device))
    inv_k2 = torch.where(k2 > 0, 1.0 / k2.clamp(min=1e-300), 0.0)
    return inv_k2.to(torch.complex64).to(device), ik


def _mesh_cells(psi: torch.Tensor, box: float, ratio: int):
    """CIC cells and offsets of the particles on the force mesh of M = ratio·N cells per side.

    The particle of lattice cell i (per axis) sits at ratio·(i + ½) − ½ + Ψ M/L mesh cells from
    the centre of mesh cell 0. Returns cell (B, 3, P) int64 in [0, M) (the mesh cell centre at or
    below) and frac (B, 3, P) float32 in [0, 1).
    """
    batch, _, n = psi.shape[:3]
    m = ratio * n
    d = psi * (m / box)
    d += 0.5 * (ratio - 1)
    fl = torch.floor(d)
    frac = d.sub_(fl)
    for a in range(3):
        shape = [1, 1, 1]
        shape[a] = n
        lattice = ratio * torch.arange(n, dtype=fl.dtype, device=fl.device).reshape(shape)
        fl[:, a] = torch.remainder(fl[:, a] + lattice, m)
    return fl.reshape(batch, 3, -1).long(), frac.reshape(batch, 3, -1)


def pm_force(psi: torch.Tensor, box_size: float, mesh_ratio: int = 1) -> torch.Tensor:
    """F̃ = −∇φ̃ with ∇²φ̃ = δ at the particles (Mpc/h): the PM force over (3/2) Ω_m.

    CIC deposit of the particles x = q + Ψ on the force mesh of M = ``mesh_ratio``·N cells,
    F̃_k = i k̃ δ_k / k² (exact 1/k² Green's function, 4-point finite-difference gradient k̃;
    module docstring, step 2), inverse FFT, CIC read-out at the particles.

    Parameters
    ----------
    psi : torch.Tensor (B, 3, N, N, N) float32
        Displacements from the lattice of cell centres, Mpc/h.
    box_size : float
        Side L in Mpc/h.
    mesh_ratio : {1, 2}

    Returns
    -------
    torch.Tensor (B, 3, N, N, N) float32 in Mpc/h (components along z, y, x); in linear theory it
    equals the linear displacement (up to the mesh kernels).
    """
    batch, _, n = psi.shape[:3]
    m = mesh_ratio * n
    cell, frac = _mesh_cells(psi, box_size, mesh_ratio)
    counts = _deposit(cell, frac, m)
    inv_k2, ik = force_kernels(m, float(box_size), psi.device)
    # pot_k = −φ̃_k = δ_k / k², δ_k = counts_k / n̄ for k ≠ 0 (n̄ = N³/M³ particles per cell);
    # k = 0 is removed by 1/k²
    pot_k = torch.fft.rfftn(counts, dim=(1, 2, 3))
    del counts
    pot_k *= inv_k2
    if mesh_ratio != 1:
        pot_k *= float(mesh_ratio**3)
    p = m + 1  # force on a periodically padded mesh: the 8 CIC corners are base + constants
    mesh = torch.empty((batch, 3, p, p, p), dtype=torch.float32, device=psi.device)
    for a in range(3):
        mesh[:, a, :m, :m, :m] = torch.fft.irfftn(pot_k * ik[a], s=(m, m, m), dim=(1, 2, 3))
    del pot_k
    mesh[:, :, m, :m, :m] = mesh[:, :, 0, :m, :m]
    mesh[:, :, :, m, :m] = mesh[:, :, :, 0, :m]
    mesh[:, :, :, :, m] = mesh[:, :, :, :, 0]
    flat = mesh.view(batch, 3, -1)
    base = (cell[:, 0] * p + cell[:, 1]).mul_(p).add_(cell[:, 2])  # (B, P)
    del cell
    g = 1.0 - frac
    out = torch.zeros((batch, 3, base.shape[1]), dtype=torch.float32, device=psi.device)
    for cz, wz in ((0, g[:, 0]), (1, frac[:, 0])):
        for cy, wy in ((0, g[:, 1]), (1, frac[:, 1])):
            wzy = wz * wy
            for cx, wx in ((0, g[:, 2]), (1, frac[:, 2])):
                idx = (base + ((cz * p + cy) * p + cx)).unsqueeze(1).expand(batch, 3, -1)
                out.addcmul_(torch.gather(flat, 2, idx), (wzy * wx).unsqueeze(1))
    return out.view(batch, 3, n, n, n)


# ---------------------------------------------------------------------------------------------
# Time stepping and generation
# ---------------------------------------------------------------------------------------------


def evolve(
    psi: torch.Tensor, p: torch.Tensor, omega_m, settings: LPTParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kick-drift-kick leapfrog from ``settings.a_start`` to 1/(1+redshift) (FastPM factors).

    Stages a_i of :func:`stages`, half steps √(a_i a_{i+1}); at each stage i the force
    F̃(a_i) (:func:`pm_force`) kicks p from its time to the next half step (to a_out after the
    last stage) by :func:`kick_factor`, then p drifts Ψ to a_{i+1} by :func:`drift_factor`
    (module docstring, step 3). ``steps`` + 1 force evaluations.

    Parameters
    ----------
    psi, p : torch.Tensor (B, 3, N, N, N) float32
        Displacements and momenta at a_start, Mpc/h (:func:`initial_conditions`); updated in place.
    omega_m : torch.Tensor or array_like (B,)
    settings : LPTParams
        a_start, steps, redshift, box_size, mesh_ratio.

    Returns
    -------
    psi, p : torch.Tensor (B, 3, N, N, N) float32 at a_out, Mpc/h.
    """
    om = np.asarray(torch.as_tensor(omega_m, dtype=torch.float64).cpu().reshape(-1))
    a = stages(settings)
    half = np.sqrt(a[:-1] * a[1:])
    kick_to = np.append(half, a[-1])
    kick_from = np.insert(half, 0, a[0])

    def per_volume(x):
        return torch.as_tensor(x, dtype=torch.float32, device=psi.device).reshape(-1, 1, 1, 1, 1)

    for i in range(len(a)):
        force = pm_force(psi, settings.box_size, settings.mesh_ratio)
        p.add_(force.mul_(per_volume(kick_factor(kick_from[i], kick_to[i], a[i], om))))
        del force
        if i + 1 < len(a):
            psi.add_(p * per_volume(drift_factor(a[i], a[i + 1], half[i], om)))
    return psi, p


def generate_displacements(
    settings: LPTParams,
    omega_m: torch.Tensor,
    sigma8: torch.Tensor,
    generator: torch.Generator,
    device=None,
) -> torch.Tensor:
    """Final PM displacements Ψ(q) of the particle lattice, one field per (omega_m, sigma8) pair.

    :func:`initial_conditions` then :func:`evolve`; the first step of :func:`generate_volumes`,
    which consumes the generator identically (same seed ⇒ the particles of the same volume).

    Returns
    -------
    torch.Tensor (B, 3, N, N, N) float32 in Mpc/h (components along z, y, x); positions
    x = q + Ψ (:func:`engine.physics.lpt.particle_positions`, :func:`slab_particles`).

    Raises
    ------
    ConfigError
        Parameters out of range, a cell size outside the theory table, a_start ≥ a_out.
    """
    psi, p = initial_conditions(settings, omega_m, sigma8, generator, device)
    psi, _ = evolve(psi, p, omega_m, settings)
    return psi


def generate_volumes(
    settings: LPTParams,
    omega_m: torch.Tensor,
    sigma8: torch.Tensor,
    generator: torch.Generator,
    device=None,
) -> torch.Tensor:
    """PM density contrast volumes, one per (omega_m, sigma8) pair (no smoothing, no noise).

    Returns
    -------
    torch.Tensor (B, N, N, N) float32 on ``device``: δ = ρ/ρ̄ − 1 of the final particles (CIC on
    the N³ mesh, not deconvolved), array axes (z, y, x), cell (i, j, l) centred at
    ((i+½), (j+½), (l+½)) L/N; Σ (1 + δ) = N³.

    Raises
    ------
    ConfigError
        As :func:`generate_displacements`.
    """
    psi = generate_displacements(settings, omega_m, sigma8, generator, device)
    return lattice_deposit(psi, settings.box_size)
