r"""N-body-like density fields from Lagrangian perturbation theory (1LPT / 2LPT), batched in torch.

Pipeline (one call of :func:`generate_volumes`, everything on the chosen device, float32 FFTs):

1. Gaussian initial conditions δ_L(k) on the 3D real-FFT grid of N³ cells of side c = L/N
   (Mpc/h), already at the target redshift: P_L(k, z) = σ8² D(z)² P_lin(k, 0 | Ω_m, σ8=1) from
   :class:`engine.physics.cosmology.LinearPowerTable` (pyccl), evaluated at |k| of each mode. Conventions of
   :mod:`engine.physics.stats`: ⟨|δ_k|²⟩ = n P(k) / v with n = N³ and v = c³ the cell volume (white noise
   drawn in real space with a seeded ``torch.Generator``, forward-FFT'd and scaled by √(P/v)). The
   k = 0 mode is zero. Array index i along an axis is the position (i + ½) c (cell centres).
2. Displacement of the particle initially at the lattice point q (one particle per cell, at the
   cell centre), in the convention of Scoccimarro (1998, MNRAS 299, 1097, §2) and of 2LPTic
   (Crocce, Pueblas & Scoccimarro 2006, MNRAS 373, 369, §2)::

       x(q) = q + Ψ(q),       Ψ = Ψ1 + Ψ2,
       Ψ1 = −∇_q φ1,                   ∇_q² φ1 = δ_L(q, z)          (D1 absorbed in δ_L),
       Ψ2 = (D2 / D1²) ∇_q φ2,         ∇_q² φ2 = Σ_{i<j} [φ1,ii φ1,jj − (φ1,ij)²],

   so that ∇·Ψ1 = −δ_L (linear continuity: δ = −∇·Ψ) and ∇·Ψ2 = (D2/D1²) Σ_{i<j}[…], which with
   D2/D1² = −3/7 is the Einstein–de Sitter result of Bernardeau et al. (2002, Phys. Rep. 367, 1,
   §2.5) ∇·Ψ^(2) = −(3/14) Σ_{i≠j} [Ψ^(1)_{i,i} Ψ^(1)_{j,j} − Ψ^(1)_{i,j} Ψ^(1)_{j,i}]. Second-order
   growth factor is the flat-ΛCDM fit of Bouchet et al. (1995, A&A 296, 575)

       D2 / D1² ≈ −(3/7) Ω_m(z)^(−1/143),   Ω_m(z) = Ω_m (1+z)³ / [Ω_m (1+z)³ + 1 − Ω_m]

   (flat ΛCDM Friedmann equation, radiation neglected). In Fourier space, with k² ≠ 0,
   Ψ_k = i k (δ_k − (D2/D1²) S_k) / k², where S = Σ_{i<j}[φ1,ii φ1,jj − φ1,ij²] is built in real
   space from the six second derivatives φ1,ij = irfft(k_i k_j δ_k / k²). Odd derivatives (Ψ and
   the off-diagonal φ1,ij) use k_i = 0 on the Nyquist plane of axis i (an odd derivative of a real
   field has no real Nyquist component); the diagonal φ1,ii keep it. ``lpt_order=1`` is the
   Zel'dovich approximation (Ψ2 = 0).
3. Particles are moved, wrapped periodically and deposited with cloud-in-cell (CIC; Hockney &
   Eastwood 1988) onto the same N³ mesh: a particle at distance (f_z, f_y, f_x) cells from the
   cell centre below it gives weight Π_a (1 − f_a) / f_a to the 8 surrounding cells. The mean
   density is exactly one particle per cell, so δ = ρ/ρ̄ − 1 = counts − 1 and Σ (1 + δ) = N³ up to
   float32 rounding of the weights (no particle is lost; the mean of δ is 0).

What the fields look like against theory (tests/test_lpt.py; Ω_m = 0.3, σ8 = 0.8):

* The CIC-deposited δ has the power spectrum W²(k) P(k) (+ aliases, see :func:`cic_window`); a
  P(k) estimate is deconvolved with P̂ / W². On large scales it is D(z)² P_lin from pyccl.
  LPT itself departs from linear theory already at k ~ 0.05 h/Mpc at z = 0: measured with the
  same seeds against the initial field (N = 128, L = 500 Mpc/h), P_LPT / D² P_lin ≈ 0.97 at
  k = 0.04, 0.94 at 0.065 and 0.91 at 0.09 h/Mpc (1LPT and 2LPT alike), the deficit scaling
  roughly as D(z)²: the Zel'dovich damping of the propagator, exp(−k² σ_Ψ²/2), which 1LPT
  reproduces exactly, is only partly compensated by mode coupling.
* The top-hat smoothed skewness follows tree-level LPT: S3 = 4 + γ1 for 1LPT (Zel'dovich;
  Munshi, Sahni & Starobinsky 1994, ApJ 436, 517) and S3 = 4 + (6/7) Ω_m(z)^(−1/143) + γ1
  ≈ 34/7 + γ1 for 2LPT, the exact tree-level value (Bernardeau 1994, ApJ 433, 1; review in
  Bernardeau et al. 2002), γ1 = d ln σ²(R) / d ln R.

Outputs: 3D volumes (B, N, N, N) with array axes (z, y, x), or 2D maps (B, N, N) projected from
a slab of thickness Δ (:func:`project_slab`), optionally smoothed and with white noise as in
:mod:`engine.physics.slabs`. Units: lengths Mpc/h, k h/Mpc, δ dimensionless.
"""

from __future__ import annotations

import functools
import json
import math
import sys

import numpy as np
import param
import torch
import xarray as xr

import engine
from engine.device import default_device
from engine.params import ConfigError, FieldParams, to_dict
from engine.physics.cosmology import K_MAX, K_MIN, table_for
from engine.physics.slabs import check_parameters, per_sample, slab_weights, to_dataarray

#: Axis names of a volume (B, z, y, x) and their array dimension.
AXES = {"z": 1, "y": 2, "x": 3}


class LPTParams(FieldParams):
    """Settings of a batch of 1LPT/2LPT density volumes or projected slab maps.

    Inherits the cosmology, ``box_size``, ``thickness``, ``redshift``, ``smoothing``, ``noise``,
    ``seed`` and ``count`` of :class:`~engine.params.FieldParams` (same bounds and docs); ``size``
    is the number of particles per side, which is also the number of mesh cells per side.
    """

    kind = param.Selector(
        default="2lpt",
        objects=["2lpt"],
        constant=True,
        doc="Field kind: Lagrangian perturbation theory particles deposited on a mesh (fixed).",
    )
    size = param.Integer(
        64,
        bounds=(8, 1024),
        doc="Particles per side and mesh cells per side (N): N³ particles on an N³ mesh. "
        "Memory grows as N³: about 100 bytes per particle at the peak of 2LPT.",
    )
    lpt_order = param.Integer(
        2,
        bounds=(1, 2),
        doc="Order of Lagrangian perturbation theory: 1 = Zel'dovich approximation, 2 = 2LPT.",
    )
    dim = param.Integer(
        2,
        bounds=(2, 3),
        doc="Output dimension: 2 = maps of delta averaged through a slab of thickness Delta, "
        "3 = full volumes.",
    )
    axis = param.Selector(
        default="z",
        objects=["z", "y", "x"],
        doc="Line-of-sight axis of the projected slab (dim=2); the slab spans [0, Delta) on it.",
    )


# ---------------------------------------------------------------------------------------------
# Background and checks
# ---------------------------------------------------------------------------------------------


def omega_m_at(omega_m, redshift: float) -> torch.Tensor:
    """Ω_m(z) = Ω_m (1+z)³ / [Ω_m (1+z)³ + 1 − Ω_m] of flat ΛCDM (radiation neglected).

    Parameters
    ----------
    omega_m : float or torch.Tensor (B,)
        Matter density today (dimensionless).
    redshift : float

    Returns
    -------
    torch.Tensor (B,) float64 (0-d for a scalar), dimensionless.
    """
    om = torch.as_tensor(omega_m, dtype=torch.float64)
    a3 = om * (1.0 + redshift) ** 3
    return a3 / (a3 + 1.0 - om)


def second_order_growth_ratio(omega_m, redshift: float) -> torch.Tensor:
    """D2 / D1² ≈ −(3/7) Ω_m(z)^(−1/143) of flat ΛCDM (Bouchet et al. 1995, A&A 296, 575).

    Accurate to better than ~1 % against the exact ODE solution for 0.1 ≤ Ω_m(z) ≤ 1 (Bouchet
    et al. 1995); sign convention of :mod:`engine.physics.lpt` (Ψ2 = (D2/D1²) ∇φ2).

    Returns
    -------
    torch.Tensor, shape and dtype as :func:`omega_m_at`, dimensionless.
    """
    return -3.0 / 7.0 * omega_m_at(omega_m, redshift) ** (-1.0 / 143.0)


def check_settings(settings: LPTParams) -> None:
    """Raise :class:`ConfigError` for settings no LPT volume can be made with.

    Checks that the mesh k range √3 π N / L stays inside the theory table [1e-4, 100] h/Mpc, and
    (for ``dim=2``) that the slab fits in the box, ``thickness <= box_size``.
    """
    n, box = settings.size, settings.box_size
    if math.sqrt(3) * math.pi * n / box > K_MAX:
        raise ConfigError(
            f"cell size box_size/size={box / n:.3g} Mpc/h is too small: the theory covers "
            f"k <= {K_MAX:g} h/Mpc, so box_size/size must be >= {math.sqrt(3) * math.pi / K_MAX:.3g}"
            " Mpc/h"
        )
    if 2 * math.pi / box < K_MIN:
        raise ConfigError(
            f"box_size={box} Mpc/h is too large: the theory covers k >= {K_MIN} h/Mpc"
        )
    if settings.dim == 2 and settings.thickness > box:
        raise ConfigError(
            f"thickness={settings.thickness} Mpc/h is larger than box_size={box} Mpc/h: "
            "the slab must fit in the box"
        )


# ---------------------------------------------------------------------------------------------
# Fourier grids
# ---------------------------------------------------------------------------------------------


def _freq_int(n: int, last: bool) -> torch.Tensor:
    """Integer frequencies m of an FFT axis (rfft if ``last``), int64."""
    if last:
        return torch.arange(n // 2 + 1)
    return torch.fft.fftfreq(n, d=1.0 / n).round().long()


@functools.lru_cache(maxsize=8)
def _kvectors(n: int, box: float, device: torch.device):
    """Fourier kernels of the rfft grid of N³ cells of side L/N, as complex64 on ``device``.

    Returns ``k2diag`` (3 broadcastable tensors k_a², (h/Mpc)²), ``kk_off`` (dict (a, b) → k_a k_b
    with Nyquist zeroed), ``ik`` (3 tensors i k_a with Nyquist zeroed, h/Mpc) and ``inv_k2``
    (N, N, N//2+1) = 1/k² with 0 at k = 0 ((Mpc/h)²). Axes a = 0, 1, 2 are z, y, x. Complex
    kernels make the products complex × complex, which torch runs much faster on CPU than
    complex × real broadcasts."""
    kf = 2 * math.pi / box
    full, odd = [], []
    for a in range(3):
        m = _freq_int(n, last=a == 2)
        shape = [1, 1, 1]
        shape[a] = -1
        k = (kf * m.to(torch.float64)).reshape(shape)
        full.append(k)
        nyq = (m.abs() == n // 2) & (n % 2 == 0)
        odd.append(k * (~nyq).reshape(shape))

    def c(t):
        return t.to(torch.complex64).to(device)

    k2 = full[0] ** 2 + full[1] ** 2 + full[2] ** 2
    inv_k2 = torch.where(k2 > 0, 1.0 / k2.clamp(min=1e-300), 0.0)
    k2diag = [c(full[a] ** 2) for a in range(3)]
    kk_off = {(a, b): c(odd[a] * odd[b]) for a, b in ((0, 1), (0, 2), (1, 2))}
    ik = [c(1j * odd[a]) for a in range(3)]
    return k2diag, kk_off, ik, c(inv_k2)


@functools.lru_cache(maxsize=8)
def _mode_shells(n: int, device: torch.device):
    """Unique m² = m_z² + m_y² + m_x² (U,) int64 of the rfft grid, and the inverse index
    (N, N, N//2+1) int64 into them: P(|k|) is evaluated once per shell."""
    mz = _freq_int(n, False).reshape(-1, 1, 1)
    my = _freq_int(n, False).reshape(1, -1, 1)
    mx = _freq_int(n, True).reshape(1, 1, -1)
    m2 = mz**2 + my**2 + mx**2
    values, inverse = torch.unique(m2, return_inverse=True)
    return values.to(device), inverse.to(device)


def cic_window(shape: tuple[int, ...], box_size: float | None = None, device=None) -> torch.Tensor:
    r"""CIC mass-assignment window of the power spectrum, W²(k) = Π_i sinc⁴(k_i L / 2N).

    sinc x = sin x / x. Depositing with cloud-in-cell multiplies each Fourier mode of the density
    by W(k) = Π_i sinc²(k_i c/2), c = L/N (Hockney & Eastwood 1988), so the measured spectrum is

        ⟨P̂(k)⟩ = Σ_n W²(k + 2 k_N n) P(k + 2 k_N n)        (Jing 2005, ApJ 620, 559, eq. 9)

    summed over alias vectors n ∈ ℤ^d, k_N = π N / L (particles on a lattice: no Poisson shot
    noise term). Dividing by this W²(k) corrects only the n = 0 term; the aliases make P̂/W²
    larger than P towards k_N (below ~1 % for k ≲ k_N/2 with CDM-like spectra).

    Lattice caveat: W(k) is the response of a mesh to particles at random offsets from the cell
    centres. LPT particles start *on* the cell centres; while their displacements are much
    smaller than a cell (high redshift, coarse mesh) the deposit acts like a one-sided finite
    difference of Ψ whose response lies between W and 1, so P̂/W² overestimates P (measured for
    δ_rms ≪ 1: +1 % at k = 0.3 k_N, +3 % at 0.4 k_N, +9 % at 0.5 k_N). Compare deconvolved LPT
    spectra with theory at k ≲ k_N/4 (as the tests do), or use a finer mesh.

    Parameters
    ----------
    shape : tuple of int
        Real-space shape (N, N) or (N, N, N).
    box_size : float, optional
        Side L in Mpc/h; accepted for symmetry with :func:`engine.physics.stats.wavenumbers`: the window
        depends only on k_i L / N = 2π m_i / N, so L cancels.
    device : torch.device or str, optional

    Returns
    -------
    torch.Tensor (N, ..., N//2+1) float64: W² on the real-FFT modes (1 at k = 0, Π over axes
    of sinc⁴(π m_i / N), ≥ (2/π)^(4d) at the Nyquist corner).
    """
    del box_size
    d = len(shape)
    out = torch.ones((), dtype=torch.float64)
    for a, n in enumerate(shape):
        m = _freq_int(n, last=a == d - 1).to(torch.float64)
        w = torch.sinc(m / n) ** 4  # torch.sinc(x) = sin(pi x) / (pi x)
        view = [1] * d
        view[a] = -1
        out = out * w.reshape(view)
    return out.to(device)


# ---------------------------------------------------------------------------------------------
# Initial conditions and displacements
# ---------------------------------------------------------------------------------------------


def linear_modes(
    settings: LPTParams,
    omega_m: torch.Tensor,
    sigma8: torch.Tensor,
    generator: torch.Generator,
    device=None,
) -> torch.Tensor:
    """Gaussian linear density modes δ_L(k) at ``settings.redshift`` on the 3D real-FFT grid.

    ⟨|δ_k|²⟩ = n P_L(|k|, z) / v (engine.physics.stats conventions, n = N³, v = (L/N)³), δ_0 = 0, with
    P_L from :func:`engine.physics.cosmology.table_for` (pyccl, cubic in ln Ω_m, 0.1 % accurate).

    Parameters
    ----------
    settings : LPTParams
        size N, box_size L (Mpc/h), redshift and the shared cosmology.
    omega_m, sigma8 : torch.Tensor (B,)
    generator : torch.Generator
        On ``device``; consumes B·N³ normal draws.
    device : torch.device or str, optional
        Default: the generator's device.

    Returns
    -------
    torch.Tensor (B, N, N, N//2+1) complex64 on ``device``, dimensionless (unnormalised FFT of δ).
    """
    device = torch.device(device) if device is not None else generator.device
    n, box = settings.size, settings.box_size
    om = torch.as_tensor(omega_m, dtype=torch.float64).reshape(-1).to(device)
    s8 = torch.as_tensor(sigma8, dtype=torch.float64).reshape(-1).to(device)
    shells, inverse = _mode_shells(n, device)
    k = (2 * math.pi / box) * shells.to(torch.float64).sqrt()
    power = table_for(settings).power(k, om, s8, settings.redshift)  # (B, U) float64
    cell_volume = (box / n) ** 3
    amp = torch.sqrt(power / cell_volume).to(torch.float32)
    amp[:, shells == 0] = 0.0
    white = torch.randn((om.shape[0], n, n, n), generator=generator, device=device)
    return torch.fft.rfftn(white, dim=(1, 2, 3)) * amp[:, inverse]


def displacement(
    delta_k: torch.Tensor, box_size: float, lpt_order: int = 2, growth_ratio=None
) -> torch.Tensor:
    """LPT displacement field Ψ(q) on the particle lattice, in Mpc/h.

    Ψ = −∇φ1 + (D2/D1²) ∇φ2 with ∇²φ1 = δ_L and ∇²φ2 = Σ_{i<j}[φ1,ii φ1,jj − φ1,ij²] (module
    docstring; Scoccimarro 1998 convention), computed with float32 FFTs.

    Parameters
    ----------
    delta_k : torch.Tensor (B, N, N, N//2+1) complex64
        Linear modes at the target redshift (:func:`linear_modes`).
    box_size : float
        Side L in Mpc/h.
    lpt_order : {1, 2}
    growth_ratio : float or torch.Tensor (B,), optional
        D2/D1² per sample (:func:`second_order_growth_ratio`); required for ``lpt_order=2``.

    Returns
    -------
    torch.Tensor (B, 3, N, N, N) float32 in Mpc/h; component 0, 1, 2 is the displacement along the
    array axis 1, 2, 3 (z, y, x) of the volume.

    Raises
    ------
    ConfigError
        ``lpt_order`` not 1 or 2, or ``growth_ratio`` missing for 2LPT.
    """
    if lpt_order not in (1, 2):
        raise ConfigError(f"lpt_order={lpt_order!r} is not allowed: allowed 1 <= lpt_order <= 2")
    n = delta_k.shape[-2]
    s = (n, n, n)
    dims = (1, 2, 3)
    k2diag, kk_off, ik, inv_k2 = _kvectors(n, float(box_size), delta_k.device)
    phi_k = delta_k * inv_k2  # = −φ1_k (∇²φ1 = δ ⇒ φ1_k = −δ_k/k²)
    source = phi_k
    if lpt_order == 2:
        if growth_ratio is None:
            raise ConfigError("lpt_order=2 needs growth_ratio = D2/D1^2 per sample")
        # φ1,ij = irfft(−k_i k_j φ1_k) = irfft(k_i k_j δ_k / k²); S = Σ_{i<j} φ1,ii φ1,jj − φ1,ij²
        diag = [torch.fft.irfftn(phi_k * k2diag[a], s=s, dim=dims) for a in range(3)]
        src = diag[0] * diag[1]
        src += diag[0] * diag[2]
        src += diag[1] * diag[2]
        del diag
        for kk in kk_off.values():
            src -= torch.fft.irfftn(phi_k * kk, s=s, dim=dims).square_()
        f2 = torch.as_tensor(growth_ratio, device=delta_k.device).reshape(-1, 1, 1, 1)
        src_k = torch.fft.rfftn(src, dim=dims)
        del src
        source = phi_k - src_k.mul_(inv_k2).mul_(f2.to(torch.complex64))
    # Ψ_k = i k_a (δ_k − f2 S_k) / k²
    out = torch.empty((delta_k.shape[0], 3, n, n, n), dtype=torch.float32, device=delta_k.device)
    for a in range(3):
        out[:, a] = torch.fft.irfftn(source * ik[a], s=s, dim=dims)
    return out


# ---------------------------------------------------------------------------------------------
# Cloud-in-cell deposit
# ---------------------------------------------------------------------------------------------


def _deposit(cell: torch.Tensor, frac: torch.Tensor, n: int) -> torch.Tensor:
    """CIC core for one batch of particles.

    ``cell`` (B, 3, M) int64: index in [0, N) of the cell centre at or below each particle along
    z, y, x; ``frac`` (B, 3, M) float32: offset from that centre in [0, 1) cells. Deposits on a
    mesh padded to (N+1)³, so the 8 corners are the base index plus a constant (no per-corner
    index arithmetic), then folds the padding back periodically. Returns counts (B, N, N, N)
    float32 (one unit of mass per particle).
    """
    batch = cell.shape[0]
    p = n + 1
    out = torch.empty((batch, n, n, n), dtype=torch.float32, device=frac.device)
    for b in range(batch):  # one volume at a time keeps the index arrays small
        base = (cell[b, 0] * p + cell[b, 1]).mul_(p).add_(cell[b, 2])
        f = frac[b]
        g = 1.0 - f
        mesh = torch.zeros(p**3, dtype=torch.float32, device=frac.device)
        for cz, wz in ((0, g[0]), (1, f[0])):
            for cy, wy in ((0, g[1]), (1, f[1])):
                wzy = wz * wy
                for cx, wx in ((0, g[2]), (1, f[2])):
                    off = (cz * p + cy) * p + cx
                    mesh[off:].scatter_add_(0, base, wzy * wx)
        m = mesh.view(p, p, p)
        m[0] += m[n]
        m[:, 0] += m[:, n]
        m[:, :, 0] += m[:, :, n]
        out[b] = m[:n, :n, :n]
    return out


def cic_deposit(positions: torch.Tensor, n: int, box_size: float) -> torch.Tensor:
    """Cloud-in-cell particle counts on a periodic N³ mesh.

    Cell (i, j, l) spans [i c, (i+1) c) × … with c = L/N and centre ((i+½) c, …); positions are
    wrapped into [0, L). Each particle adds a total weight of exactly 1 (up to float32 rounding of
    its 8 weights), so the mesh sums to the number of particles.

    Parameters
    ----------
    positions : torch.Tensor (B, M, 3) float
        Particle positions in Mpc/h; component 0, 1, 2 is the coordinate along mesh axis 1, 2, 3
        (z, y, x).
    n : int
        Cells per side N.
    box_size : float
        Side L in Mpc/h.

    Returns
    -------
    torch.Tensor (B, N, N, N) float32 on the positions' device: particles per cell.

    Raises
    ------
    ConfigError
        ``positions`` not of shape (B, M, 3).
    """
    if positions.ndim != 3 or positions.shape[-1] != 3:
        raise ConfigError(f"positions must have shape (B, M, 3), got {tuple(positions.shape)}")
    u = positions.to(torch.float64).transpose(1, 2) * (n / box_size) - 0.5  # cells from centre 0
    fl = torch.floor(u)
    frac = (u - fl).to(torch.float32)
    return _deposit(torch.remainder(fl.long(), n), frac, n)


def lattice_deposit(psi: torch.Tensor, box_size: float) -> torch.Tensor:
    """Density contrast of particles displaced by ``psi`` from the lattice of cell centres (CIC).

    The particle of cell (i, j, l) sits at q = ((i+½) c, (j+½) c, (l+½) c) + Ψ, c = L/N. The
    lattice index and the displacement are combined in integers (index = i + ⌊Ψ/c⌋, offset =
    Ψ/c − ⌊Ψ/c⌋) so positions keep float32 precision relative to the cell for any N.

    Parameters
    ----------
    psi : torch.Tensor (B, 3, N, N, N) float32
        Displacements in Mpc/h (:func:`displacement`).
    box_size : float
        Side L in Mpc/h.

    Returns
    -------
    torch.Tensor (B, N, N, N) float32: δ = counts − 1 (mean density exactly one particle per
    cell), dimensionless.
    """
    batch, _, n = psi.shape[:3]
    d = psi * (n / box_size)
    fl = torch.floor(d)
    frac = d.sub_(fl)
    for a in range(3):  # lattice index + integer part, wrapped (exact: small integers in float32)
        shape = [1, 1, 1]
        shape[a] = n
        lattice = torch.arange(n, dtype=fl.dtype, device=fl.device).reshape(shape)
        fl[:, a] = torch.remainder(fl[:, a] + lattice, n)
    mesh = _deposit(fl.reshape(batch, 3, -1).long(), frac.reshape(batch, 3, -1), n)
    return mesh.sub_(1.0)


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def generate_displacements(
    settings: LPTParams,
    omega_m: torch.Tensor,
    sigma8: torch.Tensor,
    generator: torch.Generator,
    device=None,
) -> torch.Tensor:
    """LPT displacements Ψ(q) of the particle lattice, one field per (omega_m, sigma8) pair.

    :func:`linear_modes` then :func:`displacement` at ``settings.redshift`` with
    ``settings.lpt_order``; the first step of :func:`generate_volumes`, which consumes the
    generator identically (same seed ⇒ the particles of the same volume).

    Parameters
    ----------
    settings : LPTParams
        size N, box_size L (Mpc/h), redshift, lpt_order and the shared cosmology.
    omega_m, sigma8 : torch.Tensor (B,)
    generator : torch.Generator
        Source of randomness on ``device``.
    device : torch.device or str, optional
        Default: the generator's device.

    Returns
    -------
    torch.Tensor (B, 3, N, N, N) float32 in Mpc/h (components along z, y, x).

    Raises
    ------
    ConfigError
        Parameters out of range or a cell size outside the theory table.
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
    delta_k = linear_modes(settings, om, s8, generator, device)
    ratio = second_order_growth_ratio(om, settings.redshift)
    return displacement(delta_k, settings.box_size, settings.lpt_order, ratio)


def particle_positions(psi: torch.Tensor, box_size: float) -> torch.Tensor:
    """Eulerian particle positions x = q + Ψ(q), wrapped into the periodic box [0, L)³.

    The particle of cell (i, j, l) starts at q = ((i+½), (j+½), (l+½)) L/N (as in
    :func:`lattice_deposit`).

    Parameters
    ----------
    psi : torch.Tensor (B, 3, N, N, N) float32
        Displacements in Mpc/h (:func:`generate_displacements`).
    box_size : float
        Side L in Mpc/h.

    Returns
    -------
    torch.Tensor (B, N³, 3) float32 in Mpc/h; component 0, 1, 2 is the coordinate along z, y, x.
    """
    batch, _, n = psi.shape[:3]
    c = box_size / n
    q = (torch.arange(n, dtype=torch.float32, device=psi.device) + 0.5) * c
    lattice = torch.stack(torch.meshgrid(q, q, q, indexing="ij"))  # (3, N, N, N)
    x = torch.remainder(psi + lattice, box_size)
    return x.reshape(batch, 3, -1).transpose(1, 2)


def generate_volumes(
    settings: LPTParams,
    omega_m: torch.Tensor,
    sigma8: torch.Tensor,
    generator: torch.Generator,
    device=None,
) -> torch.Tensor:
    """LPT density contrast volumes, one per (omega_m, sigma8) pair (no smoothing, no noise).

    Parameters
    ----------
    settings : LPTParams
        size N, box_size L (Mpc/h), redshift, lpt_order and the shared cosmology;
        ``settings.omega_m``, ``sigma8``, ``count``, ``seed``, ``dim``, ``smoothing`` and ``noise``
        are ignored.
    omega_m, sigma8 : torch.Tensor (B,)
    generator : torch.Generator
        Source of randomness on ``device``; same generator state ⇒ same volumes on CPU.
    device : torch.device or str, optional
        Default: the generator's device.

    Returns
    -------
    torch.Tensor (B, N, N, N) float32 on ``device``: δ = ρ/ρ̄ − 1 (CIC, not deconvolved), array
    axes (z, y, x), cell (i, j, l) centred at ((i+½), (j+½), (l+½)) L/N.

    Raises
    ------
    ConfigError
        Parameters out of range or a cell size outside the theory table.
    """
    psi = generate_displacements(settings, omega_m, sigma8, generator, device)
    return lattice_deposit(psi, settings.box_size)


def project_slab(
    volumes: torch.Tensor, thickness: float, box_size: float, axis: str = "z"
) -> torch.Tensor:
    """Average δ through the slab [0, Δ) along ``axis``: 2D maps of a projected slab.

    map = Σ_j w_j δ_j over the cells j along the axis with the overlap weights of
    :func:`slab_weights` (exact slab average of the cell values; Δ = L gives the mean through the
    whole box).

    Parameters
    ----------
    volumes : torch.Tensor (B, N, N, N) float
        Array axes (z, y, x).
    thickness : float
        Slab thickness Δ in Mpc/h, 0 < Δ ≤ L.
    box_size : float
        Side L in Mpc/h.
    axis : {"z", "y", "x"}
        Line of sight. The map keeps the other two axes in order: (y, x) for "z", (z, x) for "y",
        (z, y) for "x".

    Returns
    -------
    torch.Tensor (B, N, N), dtype and device of ``volumes``, dimensionless.

    Raises
    ------
    ConfigError
        Unknown axis, thickness out of range, or volumes not of shape (B, N, N, N).
    """
    if axis not in AXES:
        raise ConfigError(f"axis={axis!r} is not allowed: axis must be one of 'z', 'y', 'x'")
    if volumes.ndim != 4 or len(set(volumes.shape[1:])) != 1:
        raise ConfigError(f"volumes must have shape (B, N, N, N), got {tuple(volumes.shape)}")
    n = volumes.shape[1]
    w = slab_weights(n, thickness, box_size)
    used = int((w > 0).sum())  # the slab starts at 0: only the first `used` cells contribute
    w = w[:used].to(volumes.dtype).to(volumes.device)
    dim = AXES[axis]
    part = volumes.narrow(dim, 0, used)
    return torch.tensordot(part.movedim(dim, -1), w, dims=1)


def _smooth(field: torch.Tensor, sigma: float, box_size: float, d: int) -> torch.Tensor:
    """Gaussian smoothing exp(−k²σ²/2) of (B, N, …) fields in d dimensions (σ in Mpc/h)."""
    n = field.shape[-1]
    dims = tuple(range(-d, 0))
    kf = 2 * math.pi / box_size
    k2 = torch.zeros((), dtype=torch.float64)
    for a in range(d):
        m = _freq_int(n, last=a == d - 1).to(torch.float64)
        view = [1] * d
        view[a] = -1
        k2 = k2 + (kf * m.reshape(view)) ** 2
    kernel = torch.exp(-0.5 * k2 * sigma**2).to(torch.float32).to(field.device)
    return torch.fft.irfftn(torch.fft.rfftn(field, dim=dims) * kernel, s=(n,) * d, dim=dims)


def generate_batch(
    settings: LPTParams,
    omega_m: torch.Tensor,
    sigma8: torch.Tensor,
    generator: torch.Generator,
    device=None,
) -> torch.Tensor:
    """The output of :func:`generate` for one batch, as torch tensors (the training hot path).

    :func:`generate_volumes`, then for ``dim=2`` :func:`project_slab` with ``settings.thickness``
    and ``settings.axis``, then Gaussian smoothing exp(−k²σ_s²/2) (σ_s = ``settings.smoothing``
    Mpc/h, in 3D for volumes, in 2D on maps) and white noise of standard deviation
    ``settings.noise`` per cell/pixel, as in :mod:`engine.physics.slabs`.

    Returns
    -------
    torch.Tensor (B, N, N, N) for ``dim=3`` or (B, N, N) for ``dim=2``, float32 on ``device``.

    Raises
    ------
    ConfigError
        As :func:`generate_volumes`, or a slab thicker than the box.
    """
    device = torch.device(device) if device is not None else generator.device
    out = generate_volumes(settings, omega_m, sigma8, generator, device)
    d = settings.dim
    if d == 2:
        out = project_slab(out, settings.thickness, settings.box_size, settings.axis)
    if settings.smoothing > 0:
        out = _smooth(out, settings.smoothing, settings.box_size, d)
    if settings.noise > 0:
        out = out + settings.noise * torch.randn(
            out.shape, generator=generator, device=device, dtype=torch.float32
        )
    return out


def _attrs(settings: LPTParams) -> dict:
    cosmo = {k: getattr(settings, k) for k in ("omega_b", "h", "n_s", "transfer_function")}
    return dict(
        kind=settings.kind,
        grid=settings.size,
        particles_per_side=settings.size,
        mass_assignment="cic",
        cosmology=json.dumps({"model": "flat LCDM", **cosmo}),
        units="dimensionless",
        coordinate_units="Mpc/h",
        engine_version=engine.__version__,
    )


def volumes_to_dataarray(volumes: np.ndarray, settings: LPTParams, omega_m, sigma8) -> xr.DataArray:
    """Wrap volumes (B, N, N, N) in a DataArray "delta" with dims (sample, z, y, x).

    Coords z, y, x are cell centres in Mpc/h; per-sample coords omega_m, sigma8; attrs are every
    setting (as :func:`engine.physics.slabs.to_dataarray`) plus those of :func:`generate`.
    """
    n, box = settings.size, settings.box_size
    centres = (np.arange(n) + 0.5) * box / n
    attrs = {k: v for k, v in to_dict(settings).items() if k not in ("omega_m", "sigma8", "count")}
    attrs.update(_attrs(settings), long_name="density contrast delta of an LPT volume")
    return xr.DataArray(
        np.asarray(volumes, dtype=np.float32),
        dims=("sample", "z", "y", "x"),
        coords={
            "z": ("z", centres, {"units": "Mpc/h"}),
            "y": ("y", centres, {"units": "Mpc/h"}),
            "x": ("x", centres, {"units": "Mpc/h"}),
            "omega_m": ("sample", np.asarray(omega_m, dtype=np.float64)),
            "sigma8": ("sample", np.asarray(sigma8, dtype=np.float64)),
        },
        name="delta",
        attrs=attrs,
    )


def default_batch_size(settings: LPTParams) -> int:
    """Volumes per torch call so that one batch needs ≲ 1 GiB (peak ~100 bytes per particle)."""
    return max(1, min(64, (1 << 30) // (128 * settings.size**3)))


def generate(
    settings: LPTParams,
    omega_m=None,
    sigma8=None,
    device=None,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> xr.DataArray:
    """Generate ``settings.count`` LPT volumes or slab maps from ``settings.seed`` as a DataArray.

    Parameters
    ----------
    settings : LPTParams
    omega_m, sigma8 : float or array_like (count,), optional
        Per-sample parameters; default the scalar ``settings.omega_m`` / ``settings.sigma8``.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU (same seed and batch size ⇒ same output on CPU;
        CUDA output is reproducible up to the order of the atomic CIC additions).
    batch_size : int, optional
        Volumes per torch call; default :func:`default_batch_size` (depends on N only). The
        random stream is drawn batch by batch, so with ``noise > 0`` the output depends on it.
    progress : bool, optional
        tqdm bar; default only when stderr is a terminal and there is more than one batch.

    Returns
    -------
    xarray.DataArray "delta", float32: dims (sample, z, y, x) for ``dim=3``, or (sample, y, x)
    for ``dim=2`` (through :func:`engine.physics.slabs.to_dataarray`; for ``axis`` "y"/"x" the map's
    (y, x) are the volume's (z, x)/(z, y)). Coords in Mpc/h at cell centres, per-sample coords
    omega_m and sigma8; attrs: every setting (redshift, lpt_order, box_size, size, thickness,
    axis, dim, smoothing, noise, seed, omega_b, h, n_s, transfer_function) plus grid,
    particles_per_side, mass_assignment, cosmology (JSON string), kind="2lpt", units,
    engine_version.

    Raises
    ------
    ConfigError
        Bad parameter values, a cell size outside the theory table, a slab thicker than the box.
    """
    from tqdm.auto import tqdm

    device = default_device(None if device is None else str(device))
    check_settings(settings)
    count = settings.count
    om = per_sample(omega_m, settings.omega_m, count, "omega_m")
    s8 = per_sample(sigma8, settings.sigma8, count, "sigma8")
    check_parameters(torch.from_numpy(om), torch.from_numpy(s8))
    batch_size = batch_size or default_batch_size(settings)
    gen = torch.Generator(device=device).manual_seed(int(settings.seed))
    if progress is None:
        progress = sys.stderr.isatty() and count > batch_size
    chunks = []
    for start in tqdm(range(0, count, batch_size), disable=not progress, desc="lpt", unit="batch"):
        sl = slice(start, min(start + batch_size, count))
        out = generate_batch(
            settings, torch.from_numpy(om[sl]), torch.from_numpy(s8[sl]), gen, device
        )
        chunks.append(out.cpu().numpy())
    data = np.concatenate(chunks)
    if settings.dim == 3:
        return volumes_to_dataarray(data, settings, om, s8)
    da = to_dataarray(data, settings, om, s8)
    da.attrs.update(_attrs(settings), long_name="density contrast delta of an LPT slab")
    return da
