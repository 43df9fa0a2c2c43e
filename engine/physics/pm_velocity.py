"""The velocity field of the particle-mesh output: the theta channel of :mod:`engine.physics.pm`.

:func:`scaled_velocity` turns FastPM momenta into u = v/(aHf) (Mpc/h, = the displacement in
linear theory) and :func:`velocity_divergence` paints (1 + δ) u with the density's CIC kernel
and takes θ = −∇·[(1 + δ) u] with the exact spectral derivative, so that θ = δ on the mesh in
linear theory. Array axes (z, y, x), lengths in Mpc/h, torch float32 on any device.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.physics.mesh import kvectors, lattice_paint
from engine.physics.pm_dynamics import growth_rate_f1, hubble_e


def scaled_velocity(p: torch.Tensor, omega_m, a: float) -> torch.Tensor:
    """u = v / (a H f) of FastPM momenta p at scale factor ``a``, in Mpc/h.

    With p = a³ E dx/da (:mod:`engine.physics.pm` docstring, step 1; H0 = 1, lengths in Mpc/h) the peculiar
    velocity is v = a dx/dt = a² H dx/da = H0 p / a, so u = v / (a H f) = p / (a² E(a) f(a)),
    the displacement-like velocity: in linear theory p = G_f Ψ_0 = a² E f D Ψ_0, hence u = Ψ, the
    linear displacement (E, f of :func:`engine.physics.pm_dynamics.hubble_e`, :func:`~engine.physics.pm_dynamics.growth_rate_f1`).

    Parameters
    ----------
    p : torch.Tensor (B, 3, N, N, N) float32
        Momenta at ``a`` in Mpc/h (:func:`engine.physics.pm_dynamics.evolve` returns them at a_out).
    omega_m : torch.Tensor or array_like (B,)
    a : float
        Scale factor of the momenta (dimensionless).

    Returns
    -------
    torch.Tensor (B, 3, N, N, N) float32 in Mpc/h (components along z, y, x).
    """
    om = np.asarray(torch.as_tensor(omega_m, dtype=torch.float64).cpu().reshape(-1))
    factor = 1.0 / (a**2 * hubble_e(a, om) * growth_rate_f1(a, om))
    return p * torch.as_tensor(factor, dtype=torch.float32, device=p.device).reshape(-1, 1, 1, 1, 1)


def velocity_divergence(psi: torch.Tensor, u: torch.Tensor, box_size: float) -> torch.Tensor:
    r"""θ = −∇·[(1 + δ) u] on the N³ output mesh (dimensionless): the theta channel.

    The momentum density (1 + δ) u is painted with the CIC kernel of the density
    (:func:`engine.physics.mesh.lattice_paint`: each particle deposits its u, no division by
    the density, so empty cells are simply 0), and its divergence is taken in Fourier space with
    the exact spectral derivative i k of the initial conditions
    (:func:`engine.physics.mesh.kvectors`, k_a = 0 on the Nyquist plane of axis a, as
    :func:`engine.physics.lpt.displacement`): θ_k = −Σ_a i k_a [(1+δ) u_a]_k. The force's
    4-point k̃ is not used: it is chosen to damp the force near the mesh Nyquist frequency,
    whereas θ should share δ's mesh response (then θ = δ on the mesh in linear theory).

    Parameters
    ----------
    psi : torch.Tensor (B, 3, N, N, N) float32
        Displacements of the lattice particles, Mpc/h.
    u : torch.Tensor (B, 3, N, N, N) float32
        Their scaled velocities v/(a H f), Mpc/h (:func:`scaled_velocity`).
    box_size : float
        Side L in Mpc/h.

    Returns
    -------
    torch.Tensor (B, N, N, N) float32, dimensionless, array axes (z, y, x) as
    :func:`engine.physics.mesh.lattice_deposit`.
    """
    n = psi.shape[2]
    momentum = lattice_paint(psi, box_size, u)
    _, _, ik, _ = kvectors(n, float(box_size), psi.device)
    div_k = None
    for a in range(3):
        term = torch.fft.rfftn(momentum[:, a], dim=(1, 2, 3)).mul_(ik[a])
        div_k = term if div_k is None else div_k.add_(term)
    del momentum
    return torch.fft.irfftn(div_k, s=(n, n, n), dim=(1, 2, 3)).neg_()
