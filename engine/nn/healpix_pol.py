r"""Spin-2 fields on the HEALPix base-face grids: E/B of a face window in the flat-sky limit.

HEALPix Q/U are defined on the local basis (e_θ, e_φ) of every pixel (healpy's COSMO
convention). The face grids of :func:`engine.nn.healpix.nest_to_faces` (axis −1 = ``ix``, axis
−2 = ``iy``) are turned against that basis by an angle that varies over a face (45° at the
centre of an equatorial face, more towards the corners and the poles). :func:`face_pol_basis`
gives, per face pixel, the rotation that takes Q/U to the face grid's own axes, so that a window
of a face can be treated as a flat patch: E and B from the 2-D FFT of (Q, U) on the grid axes
(Zaldarriaga & Seljak 1997, eq. 8 in the flat-sky limit; Bunn et al. 2003 for the E/B mixing
that a window's edges cause, kept small here by a cosine taper).

Used by the delensing task's B-mode loss (:mod:`engine.tasks.delensing`): a linear projection
of the error field that weights B-like errors (lensing B, the quantity that delensing must
remove) far above the E-mode errors that dominate a plain Q/U mean squared error. The
evaluation of delensing does not use this approximation (it works on the sphere).
"""

from __future__ import annotations

import functools
import math

import healpy as hp
import numpy as np
import torch

from engine.nn.healpix import _check_nside, _faces_perm


@functools.lru_cache(maxsize=8)
def face_pol_basis(nside: int) -> np.ndarray:
    """Rotation of HEALPix Q/U to the face grids' axes, per face pixel.

    Parameters
    ----------
    nside : int
        HEALPix resolution (a power of 2).

    Returns
    -------
    np.ndarray (12, 3, n, n) float32, n = nside, faces as :func:`~engine.nn.healpix.
    nest_to_faces` (``[face, :, iy, ix]``)
        Channels ``cos 2ψ``, ``sin 2ψ`` and ``h``: ψ is the angle from e_θ towards e_φ to the
        grid's ``ix`` axis, ``h`` = ±1 the handedness of (``ix``, ``iy``) against
        (e_θ, e_φ). With Q' = Q cos 2ψ + U sin 2ψ and U' = h(−Q sin 2ψ + U cos 2ψ), (Q', U') are
        the Stokes parameters on the grid axes (``ix`` first), dimensionless factors.

    Raises
    ------
    ValueError
        ``nside`` not a power of 2.

    Notes
    -----
    The axis directions are central differences of neighbouring pixel centres along the grid
    (one-sided at a face's edge), projected on the tangent plane.
    """
    n = _check_nside(nside)
    perm = _faces_perm(n)
    vec = np.stack(hp.pix2vec(n, perm, nest=True), axis=-1).reshape(12, n, n, 3)
    theta, phi = hp.pix2ang(n, perm, nest=True)
    theta, phi = theta.reshape(12, n, n), phi.reshape(12, n, n)
    e_t = np.stack([np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), -np.sin(theta)], -1)
    e_p = np.stack([-np.sin(phi), np.cos(phi), np.zeros_like(phi)], -1)

    if n == 1:  # one pixel per face: take the face's own axes from a finer grid's centre
        out = face_pol_basis(2)[:, :, :1, :1].copy()
        out.setflags(write=False)
        return out
    gx, gy = np.gradient(vec, axis=2), np.gradient(vec, axis=1)  # along ix, along iy
    psi = np.arctan2(np.sum(gx * e_p, -1), np.sum(gx * e_t, -1))
    # handedness: the sign of gy on the direction perpendicular to gx (towards e_φ from e_θ)
    perp = -np.sin(psi)[..., None] * e_t + np.cos(psi)[..., None] * e_p
    h = np.sign(np.sum(gy * perp, -1))
    h[h == 0] = 1.0
    out = np.stack([np.cos(2 * psi), np.sin(2 * psi), h], axis=1).astype(np.float32)
    out.setflags(write=False)
    return out


def to_grid_axes(qu: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Stokes (Q, U) on HEALPix's local basis → on the face grid's axes.

    Parameters
    ----------
    qu : torch.Tensor (..., 2, s, s)
        Q and U of face windows (any units).
    basis : torch.Tensor (..., 3, s, s)
        The matching window of :func:`face_pol_basis` (``cos 2ψ``, ``sin 2ψ``, ``h``).

    Returns
    -------
    torch.Tensor (..., 2, s, s), same units: (Q', U') on the grid axes (differentiable).
    """
    q, u = qu[..., 0, :, :], qu[..., 1, :, :]
    c, s, h = basis[..., 0, :, :], basis[..., 1, :, :], basis[..., 2, :, :]
    return torch.stack([q * c + u * s, h * (u * c - q * s)], dim=-3)


@functools.lru_cache(maxsize=16)
def _taper(size: int, width: int) -> torch.Tensor:
    ramp = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(width, dtype=torch.float64) + 0.5) / width)
    w = torch.ones(size, dtype=torch.float64)
    w[:width], w[size - width :] = ramp, ramp.flip(0)
    return (w[:, None] * w[None, :]).float()


def flat_eb(qu_grid: torch.Tensor, taper: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """E and B Fourier modes of square windows of (Q, U) given on the grid axes.

    E_k = Q_k cos 2φ_k + U_k sin 2φ_k, B_k = −Q_k sin 2φ_k + U_k cos 2φ_k with φ_k the angle
    of the wavevector from the ``ix`` axis towards ``iy`` (Zaldarriaga & Seljak 1997, flat
    sky), after a separable cosine taper of ``taper`` pixels on each edge (default s // 8).

    Parameters
    ----------
    qu_grid : torch.Tensor (..., 2, s, s) float
        Output of :func:`to_grid_axes`.
    taper : int, optional
        Width of the cosine taper, pixels (0: none).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        E and B, complex, shape (..., s, s // 2 + 1) (``rfft2`` layout; the k = 0 mode is 0),
        normalised so that the sum of |E|² + |B|² over the full plane equals the sum of
        Q² + U² of the tapered window (Parseval).

    Raises
    ------
    ValueError
        A window that is not square.
    """
    s = qu_grid.shape[-1]
    if qu_grid.shape[-2] != s or qu_grid.shape[-3] != 2:
        raise ValueError(f"qu_grid must be (..., 2, s, s); got {tuple(qu_grid.shape)}")
    width = s // 8 if taper is None else int(taper)
    x = qu_grid * _taper(s, width).to(qu_grid.device) if width > 0 else qu_grid
    f = torch.fft.rfft2(x.float(), norm="ortho")
    ky = torch.fft.fftfreq(s, device=x.device)[:, None]
    kx = torch.fft.rfftfreq(s, device=x.device)[None, :]
    phi = torch.atan2(ky, kx)
    c, sn = torch.cos(2 * phi), torch.sin(2 * phi)
    c[0, 0], sn[0, 0] = 0.0, 0.0
    qk, uk = f[..., 0, :, :], f[..., 1, :, :]
    return qk * c + uk * sn, uk * c - qk * sn


def b_power(qu: torch.Tensor, basis: torch.Tensor, taper: int | None = None) -> torch.Tensor:
    """Mean B-mode power of windows of (Q, U) on HEALPix's basis (the delensing B loss).

    Parameters
    ----------
    qu : torch.Tensor (N, 2, s, s)
        Q, U windows (e.g. the error of a prediction).
    basis : torch.Tensor (N, 3, s, s)
        Their windows of :func:`face_pol_basis`.
    taper : int, optional
        As :func:`flat_eb`.

    Returns
    -------
    torch.Tensor (), float32: Σ|B_k|² / (N s²), with the rfft2 half-plane counted twice except
    its self-conjugate columns, so that for white Q/U noise of variance σ² it is ≈ σ² times the
    taper's mean square (units of qu squared). Differentiable.
    """
    _, b = flat_eb(to_grid_axes(qu, basis), taper)
    s = qu.shape[-1]
    w = torch.full((b.shape[-1],), 2.0, device=b.device)
    w[0] = 1.0
    if s % 2 == 0:
        w[-1] = 1.0
    return (b.abs() ** 2 * w).sum() / (qu.shape[0] * s * s)
