"""A U-Net on the HEALPix grid itself: the 12 base faces as padded square images, no interpolation.
This module holds the face geometry, the neighbour padding and the crops; the network is
:class:`engine.nn.healpix_unet.HealpixUNet`.

Design
------
In NESTED ordering each of the 12 HEALPix base faces (Górski et al. 2005, ApJ 622, 759) is an
``nside × nside`` square grid, and four NESTED children ``4p … 4p+3`` are the 2×2 block of their
parent ``p``: 2×2 pooling within a face *is* the HEALPix hierarchy. A plain 2-D U-Net
(Ronneberger et al. 2015, MICCAI, "U-Net: convolutional networks for biomedical image
segmentation") therefore runs on the faces directly, provided convolutions near a face edge see
the sky that truly lies beyond it. Every face is padded once with a margin of ``m`` pixels taken
from its neighbouring faces (one gather with a precomputed index, :func:`padded_face_index`), the
U-Net (zero padding inside) runs on ``(B·12, C, nside+2m, nside+2m)``, and the centre
``nside × nside`` of every face is cropped and put back in NESTED order. This is the padded-face
approach of DLWP-HEALPix (Karlbauer et al. 2024, JAMES 16, e2023MS004021, "Advancing
parsimonious deep learning weather prediction using the HEALPix mesh"; NVIDIA physicsnemo's
``HEALPixPadding``), except that there the padding is applied before every convolution while
here the faces are padded once, by a margin that covers the network's reach.

Face axes
---------
:func:`nest_to_faces` gives ``(..., 12, nside, nside)`` arrays ``faces[..., f, iy, ix]``: the last
axis is healpy's ``x`` (``ix`` of ``healpy.pix2xyf``), the one before it healpy's ``y``. Pixel
``(0, 0)`` is a face's southernmost corner; ``ix`` grows towards the north-east, ``iy`` towards
the north-west. With this layout the C-order flattening of a 2×2 block is NESTED order.

Geometry of the padding
-----------------------
The HEALPix projection (Calabretta & Roukema 2007, MNRAS 381, 865) maps the sphere onto a plane
``(x_s, y_s)``: equatorial zone ``|y_s| ≤ π/4`` with ``x_s = φ``, ``y_s = 3π/8 · z``; polar zones
with ``σ = √(3(1−|z|))``, ``y_s = ±(π/2 − π/4 · σ)``, ``x_s = x_c + (φ − x_c) σ``,
``x_c = π/4 + kπ/2``. Each base face is a square rotated by 45° in that plane, and its pixel
centres lie on a regular lattice; the map from face-local ``(ix + ½, iy + ½)`` to the plane is
exactly linear:

    x_s = x_f + π/(4 nside) · (ix − iy),      y_s = y_f + π/(4 nside) · (ix + iy),

with ``(x_f, y_f)`` the face's southern corner: ``(π/4 + fπ/2, 0)`` for the north faces 0–3,
``((f−4)π/2, −π/4)`` for the equatorial faces 4–7, ``(π/4 + (f−8)π/2, −π/2)`` for the south faces
8–11 (tests/test_healpix_nn.py checks it against ``healpy.pix2ang`` by a fit). Padded positions
(``ix`` or ``iy`` outside ``[0, nside)``) are extrapolated with the same map, ``x_s`` is wrapped into
``[0, 2π)``, the projection is inverted to ``(θ, φ)`` and ``healpy.ang2pix(nest=True)`` gives the
pixel. Every padded position lands on a pixel centre of the lattice, so no position is ambiguous.

Gaps. Beyond ``|y_s| > π/4`` the projection covers only the four polar triangles; between two
triangles, above (below) the vertex ``V = (kπ/2, ±π/4)`` where only three faces meet, lies a
"notch" (the cone ``|y_s| − π/4 > |x_s − kπ/2|``) with no sky. A padded position in a notch is
rotated by 90° about ``V`` into the face beside the notch that is not the face being padded. For
a polar face, whose two upper (lower) edges border notches, this gives exactly the neighbouring
polar face across that edge: the rotation maps the edge the two faces share on the sphere onto
itself, pixel onto pixel. Rotations repeat until the position is on the sky (a polar face's
corner square beyond the pole takes two and lands in the face opposite across the pole, which is
continuous since four faces meet at the pole).

Corners at three-face vertices. At each of the 8 vertices where only three faces meet, a face's
two padded strips already cover the whole sky around the vertex (they meet along the edge the two
other faces share), so the corner square between them has no sky of its own. It is filled by
mirroring: each position copies the mirror image, across the nearer strip's boundary line, of
that strip (ties on the diagonal: the strip beyond the ``ix`` edge). The padding is then
continuous everywhere except across the diagonals of those 24 corner squares (8 vertices × 3
faces). With margin 1 the 8 padded neighbours of every face pixel are exactly
``healpy.get_all_neighbours`` (the missing neighbour at a three-face vertex repeats another).
Margins up to ``nside`` are supported.

Network
-------
:class:`HealpixUNet` maps NESTED skies ``(B, C_in, npix) float32`` to ``(B, C_out, npix)
float32``: pad → U-Net → crop → NESTED. Levels: ``levels`` 2×2 average-poolings (the HEALPix
parent averages), channels ``width · 2**i`` at level ``i``, two :class:`~engine.nn.blocks.ConvBlock`
(3×3 conv, GroupNorm, GELU, zero padding) per level, nearest upsampling (children copy their
parent) + 3×3 conv on the way up, skip connections by concatenation, 1×1 output convolution.
With ``residual=True`` the output is ``input[:, :C_out]`` + U-Net output and the output
convolution starts at zero, so the untrained network is the identity (delensing predicts the
lensing correction). GroupNorm statistics are per padded face (per crop in training): on
statistically homogeneous skies the two agree closely, not exactly.

Spin-2 fields (Q, U) are taken as healpy stores them, in the local (θ, φ) basis, which is
continuous across face edges (not at the poles): the padding copies values, it does not rotate
polarisation into a face's grid axes, and the network is not equivariant to the face orientation.

Default margin: ``4 · 2**levels`` pixels (64 for ``levels=4``: four pixels of the deepest level),
capped at ``nside``; margins must be multiples of ``2**levels`` so that pooling stays aligned with
the HEALPix hierarchy in padded faces and crops alike.
"""

from __future__ import annotations

import functools
import math

import healpy as hp
import numpy as np
import torch

__all__ = [
    "crop_padded",
    "face_corners",
    "faces_to_nest",
    "nest_to_faces",
    "nest_to_ring",
    "padded_face_index",
    "pad_faces",
    "ring_to_nest",
    "unpad_faces",
]

_HALF_PI = 0.5 * math.pi
_QUARTER_PI = 0.25 * math.pi


# --------------------------------------------------------------------------------------------
# Permutations (numpy, cached)
# --------------------------------------------------------------------------------------------


def _check_nside(nside: int) -> int:
    if isinstance(nside, bool) or int(nside) != nside or not hp.isnsideok(int(nside), nest=True):
        raise ValueError(f"nside={nside!r} must be a power of 2 (NESTED ordering)")
    return int(nside)


def _nside_of(npix: int) -> int:
    nside = math.isqrt(max(int(npix), 0) // 12)
    if 12 * nside * nside != npix or not hp.isnsideok(nside, nest=True):
        raise ValueError(f"last axis has {npix} pixels, not 12·nside² with nside a power of 2")
    return nside


@functools.lru_cache(maxsize=32)
def _faces_perm(nside: int) -> np.ndarray:
    """``perm[f·n² + iy·n + ix]`` = NESTED index of face ``f``'s pixel ``(ix, iy)``."""
    ix, iy = np.meshgrid(np.arange(nside), np.arange(nside), indexing="xy")  # [iy, ix]
    f = np.repeat(np.arange(12), nside * nside)
    perm = hp.xyf2pix(nside, np.tile(ix.ravel(), 12), np.tile(iy.ravel(), 12), f, nest=True)
    perm = np.asarray(perm, dtype=np.int64)
    perm.setflags(write=False)
    return perm


@functools.lru_cache(maxsize=32)
def _faces_inverse(nside: int) -> np.ndarray:
    inv = np.empty(12 * nside * nside, dtype=np.int64)
    inv[_faces_perm(nside)] = np.arange(inv.size)
    inv.setflags(write=False)
    return inv


@functools.lru_cache(maxsize=32)
def _ring_perm(nside: int, to_nest: bool) -> np.ndarray:
    pix = np.arange(12 * nside * nside)
    perm = hp.nest2ring(nside, pix) if to_nest else hp.ring2nest(nside, pix)
    perm = np.asarray(perm, dtype=np.int64)
    perm.setflags(write=False)
    return perm


_TORCH_INDEX: dict[tuple, torch.Tensor] = {}


def _as_index(idx: np.ndarray, key: tuple, device: torch.device) -> torch.Tensor:
    """The torch copy of a cached index on ``device`` (kept, so a GPU gets it once)."""
    k = (*key, str(device))
    t = _TORCH_INDEX.get(k)
    if t is None:
        if len(_TORCH_INDEX) > 64:
            _TORCH_INDEX.clear()
        t = _TORCH_INDEX[k] = torch.from_numpy(np.array(idx, dtype=np.int64)).to(device)
    return t


def _take_last(x, idx: np.ndarray, key: tuple):
    """``x[..., idx]`` for a numpy array or a torch tensor (differentiable)."""
    if isinstance(x, torch.Tensor):
        return x.index_select(-1, _as_index(idx, key, x.device))
    return np.take(np.asarray(x), idx, axis=-1)


def nest_to_faces(maps):
    """NESTED maps ``(..., 12·nside²)`` → faces ``(..., 12, nside, nside)``, ``[..., f, iy, ix]``.

    The last axis of the result is healpy's ``x`` (``ix``: north-east), the one before it
    healpy's ``y`` (``iy``: north-west); ``(0, 0)`` is the face's southern corner.

    Parameters
    ----------
    maps : numpy.ndarray or torch.Tensor
        ``(..., npix)``, NESTED, any dtype.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Same type, dtype and device; a copy.

    Raises
    ------
    ValueError
        ``npix`` is not ``12·nside²`` with ``nside`` a power of 2.
    """
    nside = _nside_of(maps.shape[-1])
    out = _take_last(maps, _faces_perm(nside), ("faces", nside))
    return out.reshape(*maps.shape[:-1], 12, nside, nside)


def faces_to_nest(faces):
    """Faces ``(..., 12, nside, nside)`` → NESTED maps ``(..., 12·nside²)``; inverse of
    :func:`nest_to_faces` (numpy or torch, same dtype and device).

    Raises
    ------
    ValueError
        The last three axes are not ``(12, nside, nside)`` with ``nside`` a power of 2.
    """
    if faces.ndim < 3 or faces.shape[-3] != 12 or faces.shape[-1] != faces.shape[-2]:
        raise ValueError(f"faces must be (..., 12, nside, nside); got {tuple(faces.shape)}")
    nside = _check_nside(faces.shape[-1])
    flat = faces.reshape(*faces.shape[:-3], 12 * nside * nside)
    return _take_last(flat, _faces_inverse(nside), ("unfaces", nside))


def ring_to_nest(maps):
    """RING maps ``(..., npix)`` → NESTED (numpy or torch; ``maps[..., nest2ring]``)."""
    nside = _nside_of(maps.shape[-1])
    return _take_last(maps, _ring_perm(nside, True), ("r2n", nside))


def nest_to_ring(maps):
    """NESTED maps ``(..., npix)`` → RING (numpy or torch; ``maps[..., ring2nest]``)."""
    nside = _nside_of(maps.shape[-1])
    return _take_last(maps, _ring_perm(nside, False), ("n2r", nside))


# --------------------------------------------------------------------------------------------
# Geometry of the padded faces
# --------------------------------------------------------------------------------------------


def face_corners() -> np.ndarray:
    """Southern corners ``(x_f, y_f)`` of the 12 base faces in the HEALPix projection plane.

    Returns
    -------
    numpy.ndarray
        ``(12, 2) float64``, radians; the centre of the face's pixel ``(ix, iy)`` (counted from
        0) is at ``(x_f + h (ix − iy), y_f + h (ix + iy + 1))`` with ``h = π/(4 nside)``.
    """
    f = np.arange(12)
    row = f // 4
    x = np.where(row == 1, (f % 4) * _HALF_PI, _QUARTER_PI + (f % 4) * _HALF_PI)
    y = np.choose(row, [0.0, -_QUARTER_PI, -_HALF_PI])
    return np.stack([x, y], axis=1)


def _plane_to_ang(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse HEALPix projection of valid plane points → ``(θ, φ)`` radians."""
    ay = np.abs(y)
    polar = ay > _QUARTER_PI
    z = np.where(polar, 0.0, y * 8.0 / (3.0 * math.pi))
    sigma = np.clip(2.0 - 4.0 * ay / math.pi, 0.0, None)
    z = np.where(polar, np.sign(y) * (1.0 - sigma**2 / 3.0), z)
    xc = _QUARTER_PI + np.floor(x / _HALF_PI) * _HALF_PI
    with np.errstate(divide="ignore", invalid="ignore"):
        phi_polar = np.where(sigma > 0, xc + (x - xc) / sigma, xc)
    phi = np.where(polar, phi_polar, x)
    return np.arccos(np.clip(z, -1.0, 1.0)), np.mod(phi, 2.0 * math.pi)


def _resolve_gaps(x: np.ndarray, y: np.ndarray, source_xc: np.ndarray, max_turns: int = 4):
    """Move plane points out of the polar notches by 90° rotations about the notch vertex.

    ``source_xc`` is the x_s centre of the face each point belongs to (it is updated to the face
    a point is rotated into). Returns wrapped ``(x, y)`` that all lie on the sky.
    """
    two_pi = 2.0 * math.pi
    x, y, src = np.mod(x, two_pi), y.copy(), source_xc.copy()
    for turn in range(max_turns + 1):
        k = np.round(x / _HALF_PI)
        vx = k * _HALF_PI
        s = np.sign(y)
        notch = (np.abs(y) > _QUARTER_PI) & (np.abs(y) - _QUARTER_PI > np.abs(x - vx))
        if not notch.any():
            return x, y
        if turn == max_turns:
            break
        vy = s * _QUARTER_PI
        dx, dy = x - vx, y - vy
        # Target side d = +1 (east) or -1 (west): away from the face the point comes from.
        rel = np.mod(vx - src + math.pi, two_pi) - math.pi  # vertex relative to the source face
        # (An equatorial face's own polar vertex: by side of V; those corner squares are then
        # overwritten by _mirror_gap_corners.)
        d = np.where(np.abs(rel) < 1e-9, np.where(dx <= 1e-12, -1.0, 1.0), np.sign(rel))
        # A 90° rotation mapping the notch direction (0, s) onto (d, 0): counter-clockwise
        # (x, y) → (−y, x) when d = −s, clockwise (x, y) → (y, −x) when d = s.
        ccw = d == -s
        nx = np.where(ccw, -dy, dy)
        ny = np.where(ccw, dx, -dx)
        x = np.where(notch, np.mod(vx + nx, two_pi), x)
        y = np.where(notch, vy + ny, y)
        src = np.where(notch, vx + d * _QUARTER_PI, src)
    raise RuntimeError("padded positions left in a polar gap after repeated rotations")


@functools.lru_cache(maxsize=16)
def padded_face_index(nside: int, margin: int) -> np.ndarray:
    """NESTED pixel index of every position of the 12 faces padded by ``margin`` pixels.

    Parameters
    ----------
    nside : int
        HEALPix resolution (power of 2).
    margin : int
        Padding ``m`` in pixels, ``0 ≤ m ≤ nside``.

    Returns
    -------
    numpy.ndarray
        ``(12, nside + 2m, nside + 2m) int64``, read-only, ``[f, iy + m, ix + m]``: inside the face
        its own pixels (the :func:`nest_to_faces` layout), outside the pixel of the neighbouring
        face that lies there (module docstring: extrapolation in the HEALPix projection, polar
        notches by 90° rotation about the three-face vertex, the corner squares at three-face
        vertices by mirroring the adjacent strips). Cached per ``(nside, margin)``.

    Raises
    ------
    ValueError
        ``nside`` not a power of 2, or ``margin`` not an integer in ``[0, nside]``.
    """
    nside = _check_nside(nside)
    if isinstance(margin, bool) or int(margin) != margin or not 0 <= int(margin) <= nside:
        raise ValueError(f"margin={margin!r} must be an integer in [0, nside={nside}]")
    m = int(margin)
    side = nside + 2 * m
    c = np.arange(-m, nside + m) + 0.5  # pixel-centre coordinates
    iy, ix = np.meshgrid(c, c, indexing="ij")
    h = math.pi / (4 * nside)
    corners = face_corners()
    x = corners[:, 0, None, None] + h * (ix - iy)[None]
    y = corners[:, 1, None, None] + h * (ix + iy)[None]
    # Every face's centre has the x_s of its southern corner.
    src = np.broadcast_to(corners[:, 0, None, None], x.shape).ravel()
    x, y = _resolve_gaps(x.ravel(), y.ravel(), src)
    theta, phi = _plane_to_ang(x, y)
    idx = hp.ang2pix(nside, theta, phi, nest=True).astype(np.int64).reshape(12, side, side)
    # Inside the face, exactly its own pixels (no round-off at all).
    idx[:, m : m + nside, m : m + nside] = _faces_perm(nside).reshape(12, nside, nside)
    _mirror_gap_corners(idx, nside, m)
    idx.setflags(write=False)
    return idx


def _mirror_gap_corners(idx: np.ndarray, nside: int, m: int) -> None:
    """Fill the corner squares at three-face vertices by mirroring the two adjacent strips.

    Around such a vertex the two padded strips of a face already cover the whole sky (they meet
    along the edge the two neighbouring faces share), so the corner square between them has no
    sky of its own. Each of its positions copies the mirror image, across the nearer strip's
    boundary line, of that strip (ties on the diagonal: the strip beyond the ``ix`` edge), which
    keeps the padding continuous into both strips. In place on ``idx (12, P, P)``.
    """
    if m == 0:
        return
    corners, h = face_corners(), math.pi / (4 * nside)
    d = np.arange(m) + 0.5  # distance of the corner rows/columns from the face edge
    for f in range(12):
        for cy in (0, 1):
            for cx in (0, 1):
                x0, y0 = cx * nside, cy * nside
                xv = corners[f, 0] + h * (x0 - y0)
                yv = corners[f, 1] + h * (x0 + y0)
                on_vertex = abs(xv / _HALF_PI - round(xv / _HALF_PI)) < 1e-9
                if not (on_vertex and abs(abs(yv) - _QUARTER_PI) < 1e-9):
                    continue  # four faces meet there: the geometric padding is continuous
                rows = m - 1 - np.arange(m) if cy == 0 else m + nside + np.arange(m)
                cols = m - 1 - np.arange(m) if cx == 0 else m + nside + np.arange(m)
                mrows = 2 * m - 1 - rows if cy == 0 else 2 * (m + nside) - 1 - rows
                mcols = 2 * m - 1 - cols if cx == 0 else 2 * (m + nside) - 1 - cols
                dy, dx = np.meshgrid(d, d, indexing="ij")
                near_x_strip = dy <= dx  # mirror across the row boundary into the ix strip
                src_r = np.where(near_x_strip, mrows[:, None], rows[:, None])
                src_c = np.where(near_x_strip, cols[None, :], mcols[None, :])
                idx[f, rows[:, None], cols[None, :]] = idx[f, src_r, src_c]


def pad_faces(x: torch.Tensor, margin: int) -> torch.Tensor:
    """NESTED skies ``(B, C, npix)`` → faces padded from their neighbours
    ``(B·12, C, nside + 2m, nside + 2m)``: one differentiable gather.

    Row ``b·12 + f`` is face ``f`` of sky ``b``, laid out as :func:`padded_face_index`.

    Raises
    ------
    ValueError
        ``x`` not 3-D, ``npix`` not ``12·nside²``, or a margin outside ``[0, nside]``.
    """
    if x.ndim != 3:
        raise ValueError(f"x must be (B, C, npix); got {tuple(x.shape)}")
    b, c, npix = x.shape
    nside = _nside_of(npix)
    idx = padded_face_index(nside, margin)
    side = idx.shape[-1]
    g = x.index_select(-1, _as_index(idx.ravel(), ("pad", nside, int(margin)), x.device))
    g = g.reshape(b, c, 12, side, side).transpose(1, 2)
    return g.reshape(b * 12, c, side, side)


def unpad_faces(y: torch.Tensor, nside: int, margin: int) -> torch.Tensor:
    """Padded faces ``(B·12, C, nside + 2m, nside + 2m)`` → NESTED skies ``(B, C, npix)``: crop
    each face's centre and reorder (inverse of :func:`pad_faces` on the face pixels).

    Raises
    ------
    ValueError
        Shapes that do not match ``nside`` and ``margin``.
    """
    nside, m = _check_nside(nside), int(margin)
    side = nside + 2 * m
    if y.ndim != 4 or y.shape[0] % 12 or y.shape[-2:] != (side, side):
        raise ValueError(
            f"y must be (B·12, C, {side}, {side}) for nside={nside}, margin={m}; "
            f"got {tuple(y.shape)}"
        )
    b, c = y.shape[0] // 12, y.shape[1]
    core = y[..., m : m + nside, m : m + nside].reshape(b, 12, c, nside, nside)
    return faces_to_nest(core.transpose(1, 2))


def crop_padded(
    x_padded: torch.Tensor,
    size: int,
    margin: int,
    targets: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    align: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One random square crop per padded face, with its margin, and the matching targets.

    Parameters
    ----------
    x_padded : torch.Tensor
        ``(N, C, n + 2m, n + 2m)`` padded faces (:func:`pad_faces`), ``n`` = nside.
    size : int
        Side ``s`` of the crop's centre, ``1 ≤ s ≤ n`` (pixels).
    margin : int
        The ``m`` of ``x_padded``.
    targets : torch.Tensor, optional
        ``(N, C', n, n)`` unpadded faces (e.g. :func:`nest_to_faces` of the target skies,
        flattened to ``B·12``), or ``(N, C', n + 2m, n + 2m)`` padded ones.
    generator : torch.Generator, optional
        CPU generator of the crop offsets (seeded ⇒ same crops).
    align : int
        Offsets are multiples of ``align`` (use the network's ``2**levels`` so pooling stays on
        the HEALPix hierarchy, as in full-face inference).

    Returns
    -------
    (torch.Tensor, torch.Tensor or None)
        Inputs ``(N, C, s + 2m, s + 2m)`` and targets ``(N, C', s, s)`` (the crop's centre), same
        dtype and device as given.

    Raises
    ------
    ValueError
        Sizes that do not fit.
    """
    m, s, a = int(margin), int(size), int(align)
    if x_padded.ndim != 4 or x_padded.shape[-1] != x_padded.shape[-2]:
        raise ValueError(f"x_padded must be (N, C, n+2m, n+2m); got {tuple(x_padded.shape)}")
    n = x_padded.shape[-1] - 2 * m
    if a < 1 or not 1 <= s <= n or (n - s) % a:
        raise ValueError(f"size={s} must be in [1, {n}] with {n} - size a multiple of align={a}")
    nn_ = x_padded.shape[0]
    off = torch.randint(0, (n - s) // a + 1, (nn_, 2), generator=generator) * a
    ar = torch.arange(s + 2 * m)
    rows = (off[:, 0, None] + ar).to(x_padded.device)  # (N, s+2m)
    cols = (off[:, 1, None] + ar).to(x_padded.device)
    bi = torch.arange(nn_, device=x_padded.device)[:, None, None]
    xc = x_padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if targets is None:
        return xc, None
    if targets.shape[0] != nn_ or targets.shape[-1] not in (n, n + 2 * m):
        raise ValueError(f"targets must be (N={nn_}, C', {n}, {n}); got {tuple(targets.shape)}")
    shift = m if targets.shape[-1] == n + 2 * m else 0
    tr = (off[:, 0, None] + shift + torch.arange(s)).to(targets.device)
    tc = (off[:, 1, None] + shift + torch.arange(s)).to(targets.device)
    bt = torch.arange(nn_, device=targets.device)[:, None, None]
    yc = targets.permute(0, 2, 3, 1)[bt, tr[:, :, None], tc[:, None, :]].permute(0, 3, 1, 2)
    return xc.contiguous(), yc.contiguous()
