r"""N-body-like density fields from Lagrangian perturbation theory (1LPT / 2LPT), batched in torch.

Pipeline (one call of :func:`generate_volumes`, everything on the chosen device, float32 FFTs):

1. Gaussian initial conditions δ_L(k) on the 3D real-FFT grid of N³ cells of side c = L/N
   (Mpc/h), already at the target redshift: P_L(k, z) = σ8² D(z)² P_lin(k, 0 | Ω_m, σ8=1) from
   :class:`engine.physics.cosmology.LinearPowerTable` (pyccl), evaluated at |k| of each mode.
   Conventions of :mod:`engine.physics.stats`: ⟨|δ_k|²⟩ = n P(k) / v with n = N³ and v = c³ the
   cell volume (white noise drawn in real space with a seeded ``torch.Generator``, forward-FFT'd and scaled by √(P/v)). The
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
   Eastwood 1988; :func:`engine.physics.mesh.lattice_deposit`) onto the same N³ mesh: a particle at distance (f_z, f_y, f_x) cells from the
   cell centre below it gives weight Π_a (1 − f_a) / f_a to the 8 surrounding cells. The mean
   density is exactly one particle per cell, so δ = ρ/ρ̄ − 1 = counts − 1 and Σ (1 + δ) = N³ up to
   float32 rounding of the weights (no particle is lost; the mean of δ is 0).

What the fields look like against theory (tests/test_lpt.py; Ω_m = 0.3, σ8 = 0.8):

* The CIC-deposited δ has the power spectrum W²(k) P(k) (+ aliases, see
  :func:`engine.physics.mesh.cic_window`); a P(k) estimate is deconvolved with P̂ / W². On large scales it is D(z)² P_lin from pyccl.
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
a slab of thickness Δ (:func:`engine.physics.mesh.project_slab`), optionally smoothed and with
white noise as in :mod:`engine.physics.slabs`; :func:`generate` is the shared loop of
:mod:`engine.physics.generation` around the hot path :func:`generate_batch`. Units: lengths
Mpc/h, k h/Mpc, δ dimensionless.
"""

from __future__ import annotations

import json
import math

import numpy as np
import param
import torch
import xarray as xr

import engine
from engine.params import ConfigError, FieldParams, from_attrs, to_dict
from engine.physics.cosmology import (
    K_MAX,
    K_MIN,
    check_parameters,
    second_order_growth_ratio,
    table_for,
)
from engine.physics.generation import generate_samples
from engine.physics.mesh import (
    AXES,
    gaussian_smooth,
    kvectors,
    lattice_deposit,
    mode_shells,
    project_slab,
)
from engine.physics.slabs import to_dataarray as slab_dataarray


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
# Checks
# ---------------------------------------------------------------------------------------------


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
    shells, inverse = mode_shells(n, device)
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
        D2/D1² per sample (:func:`engine.physics.cosmology.second_order_growth_ratio`);
        required for ``lpt_order=2``.

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
    k2diag, kk_off, ik, inv_k2 = kvectors(n, float(box_size), delta_k.device)
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
    :func:`engine.physics.mesh.lattice_deposit`).

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


def slab_particles(
    psi: torch.Tensor, thickness: float, box_size: float, axis: str = "z"
) -> torch.Tensor:
    """Particles of one volume inside the slab [0, Δ) along ``axis``, in map coordinates.

    The particles whose Eulerian line-of-sight coordinate (:func:`particle_positions`) lies in
    [0, Δ): those that :func:`engine.physics.mesh.project_slab` averages (up to the CIC spread
    at the slab faces). Their other two coordinates are returned in the map's orientation
    (columns → x, rows → y, as :func:`engine.physics.mesh.project_slab`).

    Parameters
    ----------
    psi : torch.Tensor (3, N, N, N) float32
        Displacements of one volume in Mpc/h (one item of :func:`generate_displacements`).
    thickness : float
        Slab thickness Δ in Mpc/h.
    box_size : float
        Side L in Mpc/h.
    axis : {"z", "y", "x"}
        Line of sight.

    Returns
    -------
    torch.Tensor (M, 2) float32: (x, y) of the M particles in the slab, Mpc/h, in [0, L).

    Raises
    ------
    ConfigError
        Unknown axis.
    """
    if axis not in AXES:
        raise ConfigError(f"axis={axis!r} is not allowed: axis must be one of 'z', 'y', 'x'")
    pos = particle_positions(psi.unsqueeze(0), box_size)[0]
    los = AXES[axis] - 1
    row, col = (c for c in range(3) if c != los)
    inside = pos[pos[:, los] < thickness]
    return torch.stack([inside[:, col], inside[:, row]], dim=1)


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


def generate_batch(
    settings: LPTParams,
    omega_m: torch.Tensor,
    sigma8: torch.Tensor,
    generator: torch.Generator,
    device=None,
) -> torch.Tensor:
    """The output of :func:`generate` for one batch, as torch tensors (the training hot path).

    :func:`generate_volumes`, then for ``dim=2`` :func:`engine.physics.mesh.project_slab` with ``settings.thickness``
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
        out = gaussian_smooth(out, settings.smoothing, settings.box_size, d)
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
    return generate_samples(
        settings,
        generate_batch,
        to_dataarray,
        omega_m=omega_m,
        sigma8=sigma8,
        device=device,
        batch_size=batch_size or default_batch_size(settings),
        progress=progress,
        check=check_settings,
        desc="lpt",
    )


def to_dataarray(data: np.ndarray, settings: LPTParams, omega_m, sigma8) -> xr.DataArray:
    """Wrap the output of :func:`generate_batch` in the boundary DataArray of :func:`generate`.

    Parameters
    ----------
    data : numpy.ndarray (B, N, N, N) for ``settings.dim == 3``, else (B, N, N)
    settings : LPTParams
    omega_m, sigma8 : array_like (B,)

    Returns
    -------
    xarray.DataArray "delta" float32: (sample, z, y, x) volumes (:func:`volumes_to_dataarray`) or
    (sample, y, x) slab maps (:func:`engine.physics.slabs.to_dataarray` plus the LPT attrs).
    """
    if settings.dim == 3:
        return volumes_to_dataarray(data, settings, omega_m, sigma8)
    da = slab_dataarray(data, settings, omega_m, sigma8)
    da.attrs.update(_attrs(settings), long_name="density contrast delta of an LPT slab")
    return da


def settings_from_attrs(attrs: dict) -> LPTParams:
    """Rebuild the LPTParams a DataArray was generated with, from its attrs.

    Attrs that are not settings (grid, cosmology, units, …) are ignored; numpy scalars (netCDF)
    become Python numbers.
    """
    return from_attrs(LPTParams, attrs)
