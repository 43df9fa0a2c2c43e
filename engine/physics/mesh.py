r"""Mesh utilities shared by the generators and the estimators: Fourier grids, CIC, slabs.

Grids follow the conventions of :mod:`engine.physics.stats`: a periodic box of side L (Mpc/h, or
radians for angular maps) on N cells per side, cell size c = L/N, array index i at the cell
centre (i + ½) c, Fourier modes k = 2π m / L of numpy's/torch's unnormalised FFTs, real FFTs
along the last axis (N//2+1 modes).

* Fourier grids: integer frequencies (:func:`freq_int`), |k| of the real-FFT modes
  (:func:`wavenumbers`, cached 2D :func:`wavenumber_grid` and its distinct values
  :func:`wavenumber_shells`), the derivative kernels of the 3D grid
  (:func:`kvectors`) and its |k| shells (:func:`mode_shells`), Gaussian smoothing
  (:func:`gaussian_smooth`).
* Cloud-in-cell (CIC; Hockney & Eastwood 1988, *Computer Simulation Using Particles*): the
  deposit of particles on a periodic N³ mesh (:func:`cic_deposit`, :func:`lattice_deposit`;
  per-particle weights such as velocities: :func:`lattice_paint`), its
  window W²(k) (:func:`cic_window`) and the deconvolution of a deposited field
  (:func:`deconvolve_cic`).
* Slabs: the overlap weights of mesh cells along the line of sight (:func:`slab_weights`) and
  the average of volumes through a slab (:func:`project_slab`).

Units: lengths Mpc/h, k h/Mpc (2π / the unit of the box in general), fields dimensionless.
"""

from __future__ import annotations

import functools
import math

import torch

from engine.params import ConfigError

#: Axis names of a volume (B, z, y, x) and their array dimension.
AXES = {"z": 1, "y": 2, "x": 3}

# ---------------------------------------------------------------------------------------------
# Fourier grids
# ---------------------------------------------------------------------------------------------


def freq_int(n: int, last: bool) -> torch.Tensor:
    """Integer frequencies m of an FFT axis of n points (rfft if ``last``).

    Returns
    -------
    torch.Tensor (n,) or (n//2+1,) int64: 0, 1, …, then negative frequencies (fft order).
    """
    if last:
        return torch.arange(n // 2 + 1)
    return torch.fft.fftfreq(n, d=1.0 / n).round().long()


def wavenumbers(shape: tuple[int, ...], box_size: float, device=None) -> torch.Tensor:
    """|k| in h/Mpc of the modes of a real FFT of a field of ``shape`` (N, N) or (N, N, N).

    Returns
    -------
    torch.Tensor of shape (N, ..., N//2 + 1), float64, on ``device``.
    """
    axes = []
    for i, n in enumerate(shape):
        d = box_size / n
        f = torch.fft.rfftfreq(n, d=d) if i == len(shape) - 1 else torch.fft.fftfreq(n, d=d)
        axes.append(2 * math.pi * f.to(torch.float64))
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.sqrt(sum(g**2 for g in grids)).to(device)


@functools.lru_cache(maxsize=16)
def wavenumber_grid(n: int, box: float, device) -> torch.Tensor:
    """Cached |k| (n, n//2+1) float64 of the real-FFT modes of an n² map of side ``box``.

    Units are 2π / (unit of ``box``): h/Mpc for box in Mpc/h, ℓ for box in radians.
    """
    return wavenumbers((n, n), box, device=device)


@functools.lru_cache(maxsize=16)
def wavenumber_shells(n: int, box: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct |k| of :func:`wavenumber_grid`, so that an isotropic P(|k|) is evaluated once each.

    Returns
    -------
    values : torch.Tensor (S,) float64
        The distinct values of ``wavenumber_grid(n, box, device)``, ascending (values[0] = 0),
        bit for bit (S ≈ n²/10 of the n (n//2+1) modes).
    inverse : torch.Tensor (n, n//2+1) int64
        Index of each mode's value in ``values``. Both on ``device``; cached, do not modify.
    """
    return torch.unique(wavenumber_grid(n, box, device), return_inverse=True)


@functools.lru_cache(maxsize=8)
def kvectors(n: int, box: float, device: torch.device):
    """Fourier kernels of the rfft grid of N³ cells of side L/N, as complex64 on ``device``.

    Complex kernels make the products complex × complex, which torch runs much faster on CPU than
    complex × real broadcasts. Odd derivatives use k_a = 0 on the Nyquist plane of axis a (an odd
    derivative of a real field has no real Nyquist component). Cached per (n, box, device).

    Parameters
    ----------
    n : int
        Cells per side N.
    box : float
        Side L in Mpc/h.
    device : torch.device

    Returns
    -------
    k2diag : list of 3 torch.Tensor, broadcastable to (N, N, N//2+1)
        k_a² in (h/Mpc)² for the axes a = 0, 1, 2 (z, y, x).
    kk_off : dict (a, b) → torch.Tensor
        k_a k_b for a < b, Nyquist zeroed, (h/Mpc)².
    ik : list of 3 torch.Tensor
        i k_a with Nyquist zeroed, h/Mpc.
    inv_k2 : torch.Tensor (N, N, N//2+1)
        1/k² with 0 at k = 0, (Mpc/h)².
    """
    kf = 2 * math.pi / box
    full, odd = [], []
    for a in range(3):
        m = freq_int(n, last=a == 2)
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
def mode_shells(n: int, device: torch.device):
    """Shells of equal |k| of the 3D rfft grid of N³ cells: P(|k|) is evaluated once per shell.

    Returns
    -------
    values : torch.Tensor (U,) int64
        Unique m² = m_z² + m_y² + m_x² (|k| = 2π √m² / L), on ``device``.
    inverse : torch.Tensor (N, N, N//2+1) int64
        Index of each mode's shell in ``values``, on ``device``.
    """
    mz = freq_int(n, False).reshape(-1, 1, 1)
    my = freq_int(n, False).reshape(1, -1, 1)
    mx = freq_int(n, True).reshape(1, 1, -1)
    m2 = mz**2 + my**2 + mx**2
    values, inverse = torch.unique(m2, return_inverse=True)
    return values.to(device), inverse.to(device)


def gaussian_smooth(field: torch.Tensor, sigma: float, box_size: float, d: int) -> torch.Tensor:
    """Gaussian smoothing of periodic fields: Fourier modes × exp(−k²σ²/2).

    Parameters
    ----------
    field : torch.Tensor (B, N, …, N) float32
        Batch of d-dimensional cubic fields (last d axes).
    sigma : float
        Standard deviation of the kernel, in the unit of ``box_size`` (Mpc/h).
    box_size : float
        Side L of the periodic box.
    d : {2, 3}
        Number of spatial dimensions.

    Returns
    -------
    torch.Tensor, shape of ``field``, float32.
    """
    n = field.shape[-1]
    dims = tuple(range(-d, 0))
    kf = 2 * math.pi / box_size
    k2 = torch.zeros((), dtype=torch.float64)
    for a in range(d):
        m = freq_int(n, last=a == d - 1).to(torch.float64)
        view = [1] * d
        view[a] = -1
        k2 = k2 + (kf * m.reshape(view)) ** 2
    kernel = torch.exp(-0.5 * k2 * sigma**2).to(torch.float32).to(field.device)
    return torch.fft.irfftn(torch.fft.rfftn(field, dim=dims) * kernel, s=(n,) * d, dim=dims)


# ---------------------------------------------------------------------------------------------
# Cloud-in-cell
# ---------------------------------------------------------------------------------------------


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
        Side L in Mpc/h; accepted for symmetry with :func:`wavenumbers`: the window
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
        m = freq_int(n, last=a == d - 1).to(torch.float64)
        w = torch.sinc(m / n) ** 4  # torch.sinc(x) = sin(pi x) / (pi x)
        view = [1] * d
        view[a] = -1
        out = out * w.reshape(view)
    return out.to(device)


def deconvolve_cic(field: torch.Tensor, dim: int = 2) -> torch.Tensor:
    """Divide a CIC-deposited field by the CIC window W(k) = √W²(k) of :func:`cic_window`.

    The measured spectrum of the result is ⟨P̂⟩/W², the n = 0 term of :func:`cic_window`'s alias
    sum (trust it at k ≲ k_N/4 for LPT lattices, see the lattice caveat there); white noise added
    after the deposit is amplified by 1/W² (:func:`engine.physics.slabs.binned_theory` with
    ``deconvolved=True``).

    Parameters
    ----------
    field : torch.Tensor (..., N, N) or (..., N, N, N) float32
        Periodic fields on the mesh (last ``dim`` axes), batch axes kept.
    dim : {2, 3}
        Number of spatial dimensions.

    Returns
    -------
    torch.Tensor, shape and device of ``field``, float32.
    """
    shape = tuple(field.shape[-dim:])
    axes = tuple(range(-dim, 0))
    window = cic_window(shape).sqrt().to(torch.float32).to(field.device)
    return torch.fft.irfftn(torch.fft.rfftn(field, dim=axes) / window, s=shape, dim=axes)


def _deposit(
    cell: torch.Tensor, frac: torch.Tensor, n: int, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """CIC core for one batch of particles.

    ``cell`` (B, 3, M) int64: index in [0, N) of the cell centre at or below each particle along
    z, y, x; ``frac`` (B, 3, M) float32: offset from that centre in [0, 1) cells. Deposits on a
    mesh padded to (N+1)³, so the 8 corners are the base index plus a constant (no per-corner
    index arithmetic), then folds the padding back periodically. Returns counts (B, N, N, N)
    float32 (one unit of mass per particle), or with ``weight`` (B, M) float32 the CIC sum of
    the particles' weights (e.g. a velocity component: the momentum density).
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
                wzy = wz * wy if weight is None else wz * wy * weight[b]
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
        Displacements in Mpc/h (:func:`engine.physics.lpt.displacement`).
    box_size : float
        Side L in Mpc/h.

    Returns
    -------
    torch.Tensor (B, N, N, N) float32: δ = counts − 1 (mean density exactly one particle per
    cell), dimensionless.
    """
    cell, frac = _lattice_cells(psi, box_size)
    mesh = _deposit(cell, frac, psi.shape[2])
    return mesh.sub_(1.0)


def _lattice_cells(psi: torch.Tensor, box_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CIC cells (B, 3, N³) int64 and offsets (B, 3, N³) float32 of the lattice particles
    displaced by ``psi`` (as :func:`lattice_deposit`: lattice index + ⌊Ψ/c⌋, wrapped)."""
    batch, _, n = psi.shape[:3]
    d = psi * (n / box_size)
    fl = torch.floor(d)
    frac = d.sub_(fl)
    for a in range(3):  # lattice index + integer part, wrapped (exact: small integers in float32)
        shape = [1, 1, 1]
        shape[a] = n
        lattice = torch.arange(n, dtype=fl.dtype, device=fl.device).reshape(shape)
        fl[:, a] = torch.remainder(fl[:, a] + lattice, n)
    return fl.reshape(batch, 3, -1).long(), frac.reshape(batch, 3, -1)


def lattice_paint(psi: torch.Tensor, box_size: float, weights: torch.Tensor) -> torch.Tensor:
    """CIC sums of per-particle quantities of the displaced lattice particles (mass-weighted fields).

    The particles of :func:`lattice_deposit` (the particle of cell (i, j, l) at
    q = ((i+½), (j+½), (l+½)) c + Ψ) each deposit their weights with the same CIC kernel
    (Hockney & Eastwood 1988), so that a weight v gives the mesh field Σ_p W(x − x_p) v_p =
    (1 + δ) v̄ (one particle per cell on average): the density-weighted mean of v, defined in
    empty cells too (it is 0 there), with no division by the density.

    Parameters
    ----------
    psi : torch.Tensor (B, 3, N, N, N) float32
        Displacements in Mpc/h.
    box_size : float
        Side L in Mpc/h.
    weights : torch.Tensor (B, C, N, N, N) float32
        C quantities per particle (e.g. C = 3 velocity components), any unit.

    Returns
    -------
    torch.Tensor (B, C, N, N, N) float32 in the unit of ``weights`` (per particle-per-cell: the
    mean number of particles per cell is 1).

    Raises
    ------
    ConfigError
        ``weights`` not of shape (B, C, N, N, N) matching ``psi``.
    """
    batch, n = psi.shape[0], psi.shape[2]
    if weights.ndim != 5 or weights.shape[0] != batch or weights.shape[2:] != psi.shape[2:]:
        raise ConfigError(
            f"weights must have shape (B, C, N, N, N) = ({batch}, C, {n}, {n}, {n}), "
            f"got {tuple(weights.shape)}"
        )
    cell, frac = _lattice_cells(psi, box_size)
    flat = weights.reshape(batch, weights.shape[1], -1)
    out = [_deposit(cell, frac, n, flat[:, c]) for c in range(weights.shape[1])]
    return torch.stack(out, dim=1)


# ---------------------------------------------------------------------------------------------
# Slabs
# ---------------------------------------------------------------------------------------------


def slab_weights(n: int, thickness: float, box_size: float, start: float = 0.0) -> torch.Tensor:
    """Weight of each cell along the line of sight in the average through a slab [s, s + Δ).

    Cell j spans [j c, (j+1) c), c = L/N; its weight is the length of its overlap with
    [s, s + Δ) divided by Δ, so the weights sum to 1 and the projected value is the exact mean
    over the slab of the piecewise-constant (cell-averaged) field. Partially covered cells count
    with their covered fraction.

    Parameters
    ----------
    n : int
        Cells per side N.
    thickness : float
        Slab thickness Δ in Mpc/h.
    box_size : float
        Side L in Mpc/h.
    start : float
        Lower face s of the slab in Mpc/h (default 0); the slab must lie inside the box,
        0 <= s and s + Δ <= L (no periodic wrap).

    Returns
    -------
    torch.Tensor (N,) float64, dimensionless.

    Raises
    ------
    ConfigError
        ``thickness`` not in (0, L], or the slab [s, s + Δ) not inside [0, L].
    """
    if not 0 < thickness <= box_size * (1 + 1e-12):
        raise ConfigError(
            f"thickness={thickness} is out of range: allowed 0 < thickness <= box_size={box_size}"
        )
    if not 0 <= start <= (box_size - thickness) + 1e-12 * box_size:
        raise ConfigError(
            f"slab start={start:g} Mpc/h is out of range: allowed 0 <= start <= box_size - "
            f"thickness = {box_size - thickness:g} Mpc/h"
        )
    c = box_size / n
    lo = torch.arange(n, dtype=torch.float64) * c
    if start == 0:
        overlap = (torch.clamp(lo + c, max=thickness) - lo).clamp(min=0.0)
    else:
        overlap = (torch.clamp(lo + c, max=start + thickness) - lo.clamp(min=start)).clamp(min=0.0)
    return overlap / overlap.sum()


def project_slab(
    volumes: torch.Tensor, thickness: float, box_size: float, axis: str = "z", start: float = 0.0
) -> torch.Tensor:
    """Average δ through the slab [s, s + Δ) along ``axis``: 2D maps of a projected slab.

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
    start : float
        Lower face s of the slab on the line of sight, Mpc/h (default 0); s + Δ ≤ L.

    Returns
    -------
    torch.Tensor (B, N, N), dtype and device of ``volumes``, dimensionless.

    Raises
    ------
    ConfigError
        Unknown axis, thickness or start out of range, or volumes not of shape (B, N, N, N).
    """
    if axis not in AXES:
        raise ConfigError(f"axis={axis!r} is not allowed: axis must be one of 'z', 'y', 'x'")
    if volumes.ndim != 4 or len(set(volumes.shape[1:])) != 1:
        raise ConfigError(f"volumes must have shape (B, N, N, N), got {tuple(volumes.shape)}")
    n = volumes.shape[1]
    w = slab_weights(n, thickness, box_size, start)
    cells = torch.nonzero(w > 0).reshape(-1)  # a contiguous run of cells (0 … used−1 for s = 0)
    first, used = int(cells[0]), len(cells)
    w = w[first : first + used].to(volumes.dtype).to(volumes.device)
    dim = AXES[axis]
    part = volumes.narrow(dim, first, used)
    return torch.tensordot(part.movedim(dim, -1), w, dims=1)
