"""The HEALPix U-Net (engine.nn.healpix): face geometry, neighbour padding, seams, the network.

The padding is checked against healpy (``get_all_neighbours``, ``pix2ang``, ``pix2vec``), the
seams against healpy's spherical-harmonic smoothing of a Gaussian random sky.
"""

from __future__ import annotations

import math

import healpy as hp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.nn.healpix import (
    crop_padded,
    face_corners,
    faces_to_nest,
    nest_to_faces,
    nest_to_ring,
    pad_faces,
    padded_face_index,
    ring_to_nest,
    unpad_faces,
)
from engine.nn.healpix_unet import HealpixUNet
from engine.nn.registry import build_model, count_parameters, model_options
from engine.params import ConfigError

NSIDES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


# ------------------------------------------------------------------------------------------------
# Permutations
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nside", NSIDES)
def test_faces_round_trip_and_axes(nside):
    npix = 12 * nside * nside
    rng = np.random.default_rng(nside)
    maps = rng.standard_normal((2, npix))
    faces = nest_to_faces(maps)
    assert faces.shape == (2, 12, nside, nside)
    np.testing.assert_array_equal(faces_to_nest(faces), maps)
    # [f, iy, ix]: the last axis is healpy's x.
    f, iy, ix = np.meshgrid(np.arange(12), np.arange(nside), np.arange(nside), indexing="ij")
    pix = hp.xyf2pix(nside, ix.ravel(), iy.ravel(), f.ravel(), nest=True)
    np.testing.assert_array_equal(nest_to_faces(np.arange(npix)).ravel(), pix)
    # torch, same result, differentiable
    t = torch.tensor(maps, requires_grad=True)
    tf = nest_to_faces(t)
    np.testing.assert_array_equal(tf.detach().numpy(), faces)
    back = faces_to_nest(tf)
    assert torch.equal(back, t)
    back.sum().backward()
    assert torch.equal(t.grad, torch.ones_like(t))
    # RING helpers against healpy.reorder
    np.testing.assert_array_equal(ring_to_nest(maps[0]), hp.reorder(maps[0], r2n=True))
    np.testing.assert_array_equal(nest_to_ring(maps[0]), hp.reorder(maps[0], n2r=True))
    assert torch.equal(nest_to_ring(ring_to_nest(t)), t)


def test_nested_hierarchy_is_2x2_pooling():
    nside = 16
    x = torch.randn(1, 1, 12 * nside * nside, dtype=torch.float64)
    pooled = F.avg_pool2d(nest_to_faces(x)[0], 2)  # (1, 12, 8, 8) → pooled per face
    parent = x.reshape(1, 1, -1, 4).mean(-1)  # NESTED children 4p..4p+3
    torch.testing.assert_close(faces_to_nest(pooled[None]), parent)


def test_bad_pixel_counts():
    with pytest.raises(ValueError, match="12·nside"):
        nest_to_faces(np.zeros(100))
    with pytest.raises(ValueError, match="12·nside"):
        pad_faces(torch.zeros(1, 1, 12 * 9), 1)  # nside 3: not NESTED
    with pytest.raises(ValueError, match="margin"):
        padded_face_index(8, 9)
    with pytest.raises(ValueError, match="margin"):
        padded_face_index(8, -1)


# ------------------------------------------------------------------------------------------------
# Geometry of the padding
# ------------------------------------------------------------------------------------------------


def _plane(theta, phi):
    """Forward HEALPix projection (Calabretta & Roukema 2007) of (θ, φ) → (x_s, y_s)."""
    z = np.cos(theta)
    polar = np.abs(z) > 2.0 / 3.0
    sigma = np.sqrt(3.0 * (1.0 - np.abs(z)))
    xc = math.pi / 4 + np.floor(phi / (math.pi / 2)) * math.pi / 2
    x = np.where(polar, xc + (phi - xc) * sigma, phi)
    y = np.where(polar, np.sign(z) * (math.pi / 2 - math.pi / 4 * sigma), 3 * math.pi / 8 * z)
    return x, y


@pytest.mark.parametrize("nside", [2, 8, 64])
def test_face_map_is_the_fitted_linear_map(nside):
    """Fit (x_s, y_s) ≈ A·(ix + ½, iy + ½) + b per face from healpy's pixel centres: exactly
    linear, and equal to the derived map of the module docstring."""
    h = math.pi / (4 * nside)
    corners = face_corners()
    pix = nest_to_faces(np.arange(12 * nside * nside))
    iy, ix = np.meshgrid(np.arange(nside) + 0.5, np.arange(nside) + 0.5, indexing="ij")
    design = np.stack([ix.ravel(), iy.ravel(), np.ones(ix.size)], axis=1)
    for f in range(12):
        x, y = _plane(*hp.pix2ang(nside, pix[f].ravel(), nest=True))
        x = corners[f, 0] + np.mod(x - corners[f, 0] + math.pi, 2 * math.pi) - math.pi
        coef, *_ = np.linalg.lstsq(design, np.stack([x, y], 1), rcond=None)
        np.testing.assert_allclose(design @ coef, np.stack([x, y], 1), atol=1e-12)
        np.testing.assert_allclose(coef[:2].T, [[h, -h], [h, h]], atol=1e-12)
        np.testing.assert_allclose(coef[2], corners[f], atol=1e-12)


@pytest.mark.parametrize("nside", NSIDES)
def test_margin_one_is_healpy_neighbours(nside):
    idx = padded_face_index(nside, 1)
    assert idx.shape == (12, nside + 2, nside + 2) and idx.dtype == np.int64
    np.testing.assert_array_equal(idx[:, 1:-1, 1:-1], nest_to_faces(np.arange(12 * nside**2)))
    # the 3×3 block around every face pixel
    blocks = np.lib.stride_tricks.sliding_window_view(idx, (3, 3), axis=(1, 2))
    blocks = blocks.reshape(-1, 9)
    centre, around = blocks[:, 4], np.delete(blocks, 4, axis=1)
    nb = hp.get_all_neighbours(nside, centre, nest=True).T  # (N, 8), -1 where missing
    padded_in_nb = (around[:, :, None] == nb[:, None, :]).any(-1)
    nb_in_padded = (nb[:, :, None] == around[:, None, :]).any(-1) | (nb == -1)
    assert padded_in_nb.all() and nb_in_padded.all()


def _gap_corner_mask(nside, m):
    """(12, P, P) bool: positions in the corner squares at three-face vertices; (12,P,P) int of
    the side of the corner's diagonal (+1, -1, 0 on it)."""
    p = nside + 2 * m
    c = np.arange(p)
    dist = np.maximum(np.maximum(m - c, c - (m + nside - 1)), 0)
    dy, dx = np.meshgrid(dist, dist, indexing="ij")
    corner = (dy > 0) & (dx > 0)
    # a face corner lies at a three-face vertex iff healpy's neighbours of the face's corner
    # pixel there miss one (-1); needs nside ≥ 2 (one corner pixel per face corner)
    mask = np.zeros((12, p, p), bool)
    faces = nest_to_faces(np.arange(12 * nside**2))
    for f in range(12):
        for cy, cx in ((0, 0), (0, 1), (1, 0), (1, 1)):
            if (hp.get_all_neighbours(nside, faces[f, -cy, -cx], nest=True) == -1).any():
                ys = slice(0, m) if cy == 0 else slice(m + nside, p)
                xs = slice(0, m) if cx == 0 else slice(m + nside, p)
                mask[f, ys, xs] = True
    return mask & corner[None], np.sign(dy - dx)[None] * corner[None]


@pytest.mark.parametrize(("nside", "margin"), [(2, 2), (8, 3), (8, 8), (32, 16), (32, 32)])
def test_large_margins_are_geometric_and_continuous(nside, margin):
    m, p = margin, nside + 2 * margin
    idx = padded_face_index(nside, m)
    res = hp.nside2resol(nside)
    v = np.stack(hp.pix2vec(nside, idx.ravel(), nest=True), -1).reshape(12, p, p, 3)

    def ang(a, b):
        return np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)) / res

    # depth k into a strip ↔ about k pixel sizes from the face edge pixel of the same row/column
    rows = slice(m, m + nside)
    for k in range(1, m + 1):
        for d in (
            ang(v[:, rows, m + nside - 1 + k], v[:, rows, m + nside - 1]) / k,
            ang(v[:, rows, m - k], v[:, rows, m]) / k,
            ang(v[:, m + nside - 1 + k, rows], v[:, m + nside - 1, rows]) / k,
            ang(v[:, m - k, rows], v[:, m, rows]) / k,
        ):
            assert 0.7 < d.min() and d.max() < 1.5
    # no jumps: neighbouring entries ≤ 1.5 pixel sizes apart, except across the diagonal of the
    # 24 corner squares at three-face vertices (no sky of their own; filled by mirroring)
    gap, side = _gap_corner_mask(nside, m)
    assert gap.any(axis=(1, 2)).sum() == 12 and gap.sum() == 24 * m * m
    step_x, step_y = ang(v[:, :, 1:], v[:, :, :-1]), ang(v[:, 1:], v[:, :-1])
    diag_x = (gap[:, :, 1:] | gap[:, :, :-1]) & (side[:, :, 1:] != side[:, :, :-1])
    diag_y = (gap[:, 1:] | gap[:, :-1]) & (side[:, 1:] != side[:, :-1])
    assert step_x[~diag_x].max() < 1.5 and step_y[~diag_y].max() < 1.5
    # everything outside the gap corners is continuous even across the pole corners
    assert step_x[~(gap[:, :, 1:] | gap[:, :, :-1])].max() < 1.5


def test_pad_faces_gather_unpad_and_gradient():
    nside, m = 16, 5
    x = torch.randn(3, 2, 12 * nside * nside, dtype=torch.float64, requires_grad=True)
    y = pad_faces(x, m)
    assert y.shape == (36, 2, nside + 2 * m, nside + 2 * m) and y.dtype == torch.float64
    idx = torch.from_numpy(np.array(padded_face_index(nside, m)))
    ref = x.detach()[:, :, idx].permute(0, 2, 1, 3, 4).reshape(36, 2, nside + 2 * m, -1)
    assert torch.equal(y.detach(), ref)
    assert torch.equal(unpad_faces(y, nside, m), x)
    y.sum().backward()  # gradient = how often each pixel is gathered
    counts = np.bincount(np.asarray(padded_face_index(nside, m)).ravel(), minlength=x.shape[-1])
    np.testing.assert_array_equal(x.grad[1, 0].numpy(), counts)
    with pytest.raises(ValueError, match="nside=16, margin=5"):
        unpad_faces(y[:, :, 1:], nside, m)


def test_crop_padded_matches_targets():
    nside, m, s = 16, 4, 8
    x = torch.randn(2, 1, 12 * nside * nside)
    xp = pad_faces(x, m)
    targets = nest_to_faces(x).transpose(1, 2).reshape(24, 1, nside, nside)
    g = torch.Generator().manual_seed(0)
    xc, yc = crop_padded(xp, s, m, targets, generator=g, align=4)
    assert xc.shape == (24, 1, s + 2 * m, s + 2 * m) and yc.shape == (24, 1, s, s)
    assert torch.equal(xc[..., m:-m, m:-m], yc)  # target = centre of the input crop
    xc2, yc2 = crop_padded(xp, s, m, xp, generator=torch.Generator().manual_seed(0), align=4)
    assert torch.equal(xc2, xc) and torch.equal(yc2, yc)  # padded targets, same seed
    with pytest.raises(ValueError, match="align"):
        crop_padded(xp, 7, m, align=4)


# ------------------------------------------------------------------------------------------------
# Seams: a fixed Gaussian convolution on padded faces vs healpy's smoothing
# ------------------------------------------------------------------------------------------------


def _gaussian_sky(nside, seed):
    lmax = 3 * nside - 1
    ell = np.arange(lmax + 1)
    cl = 1.0 / (ell + 10.0) ** 2
    cl[:2], cl[2 * nside + 32 :] = 0.0, 0.0  # band-limited
    rng = np.random.default_rng(seed)
    l_, m_ = hp.Alm.getlm(lmax)
    alm = (rng.standard_normal(l_.size) + 1j * rng.standard_normal(l_.size)) * np.sqrt(cl[l_] / 2)
    alm[m_ == 0] = rng.standard_normal((m_ == 0).sum()) * np.sqrt(cl[l_[m_ == 0]])
    return hp.alm2map(alm, nside, lmax=lmax)  # RING


@pytest.mark.parametrize("seed", [0, 1])
def test_seams_leave_no_artefacts_in_spectra(seed):
    """A Gaussian kernel (σ = 1.5 px) applied by pad_faces → conv2d(padding=0) → unpad_faces
    agrees with ``hp.smoothing`` (σ · pixel size): binned C_ℓ within 2σ of cosmic variance
    wherever the beam keeps ≥ 10 % of the power (beyond that, ℓσ ≳ 1.5, the flat kernel's
    anisotropy on the sphere dominates, with or without seams), its difference map is no larger
    near face edges than inside, and at low ℓ it is decorrelated from healpy's 50× less than the
    same convolution with zero padding (whose edge RMS is far larger: the test can fail)."""
    nside, sig, r = 64, 1.5, 5
    sky = _gaussian_sky(nside, seed)
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sig) ** 2)
    kernel = torch.tensor(np.outer(g, g) / np.outer(g, g).sum())[None, None]
    x = torch.tensor(ring_to_nest(sky))[None, None]
    neigh = nest_to_ring(unpad_faces(F.conv2d(pad_faces(x, r), kernel), nside, 0)[0, 0].numpy())
    zero_faces = F.pad(nest_to_faces(x).reshape(12, 1, nside, nside), (r, r, r, r))
    zero = nest_to_ring(unpad_faces(F.conv2d(zero_faces, kernel), nside, 0)[0, 0].numpy())
    sigma = sig * hp.nside2resol(nside)
    ref = hp.smoothing(sky, sigma=sigma, lmax=3 * nside - 1)

    lmax = 2 * nside - 1
    c_n, c_z, c_ref = (hp.anafast(m, lmax=lmax) for m in (neigh, zero, ref))
    beam2 = np.exp(-np.arange(lmax + 1) * (np.arange(lmax + 1) + 1) * sigma**2)
    edges = np.arange(2, lmax + 2, 8)
    n_bins = 0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if beam2[hi - 1] < 0.1:
            break
        cv = math.sqrt(2.0 / (2 * np.arange(lo, hi) + 1).sum())
        assert abs(c_n[lo:hi].sum() / c_ref[lo:hi].sum() - 1) < 2 * cv, (lo, hi)
        n_bins += 1
    assert n_bins >= 7  # ℓ up to ~60

    d_n, d_z = hp.anafast(neigh - ref, lmax=lmax), hp.anafast(zero - ref, lmax=lmax)
    decor_n = d_n[2:20].sum() / c_ref[2:20].sum()
    decor_z = d_z[2:20].sum() / c_ref[2:20].sum()
    assert decor_n < 1e-3 and decor_n < decor_z / 20
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):  # never worse than zero padding
        assert d_n[lo:hi].sum() < d_z[lo:hi].sum()

    faces = nest_to_faces(np.arange(12 * nside**2))
    edge = np.zeros((12, nside, nside), bool)
    edge[:, :3], edge[:, -3:], edge[:, :, :3], edge[:, :, -3:] = True, True, True, True
    diff_n, diff_z = ring_to_nest(neigh - ref), ring_to_nest(zero - ref)

    def rms(d, mask):
        return math.sqrt(float((d[faces[mask]] ** 2).mean()))

    ratio_n = rms(diff_n, edge) / rms(diff_n, ~edge)
    ratio_z = rms(diff_z, edge) / rms(diff_z, ~edge)
    assert ratio_n < 1.5
    assert ratio_z > 2.5 and ratio_z > 2 * ratio_n


# ------------------------------------------------------------------------------------------------
# The network
# ------------------------------------------------------------------------------------------------


def test_unet_shapes_identity_at_init_and_registry():
    torch.manual_seed(0)
    net = build_model("healpix_unet", in_channels=3, out_channels=2, width=8, levels=2)
    assert isinstance(net, HealpixUNet) and net.margin == 16
    assert model_options("healpix_unet")["levels"] == 4
    x = torch.randn(2, 3, 12 * 16 * 16, dtype=torch.float64)
    y = net(x)
    assert y.shape == (2, 2, 12 * 16 * 16) and y.dtype == torch.float32
    torch.testing.assert_close(y, x[:, :2].float())  # residual, zero-initialised output conv
    assert count_parameters(HealpixUNet(2, 2)) == 2_160_290  # width 16, levels 4
    with pytest.raises(ValueError, match=r"nside=8 must be a multiple of 2\*\*levels=16"):
        HealpixUNet(2, 2, levels=4)(torch.zeros(1, 2, 12 * 64))
    with pytest.raises(ConfigError, match="margin=6"):
        build_model("healpix_unet", levels=2, margin=6)
    with pytest.raises(ConfigError, match="out_channels"):
        build_model("healpix_unet", in_channels=1, out_channels=2)


def test_forward_is_forward_faces_on_padded_faces():
    torch.manual_seed(1)
    nside = 16
    net = HealpixUNet(2, 1, width=4, levels=2, margin=8, residual=False, face_batch=5).eval()
    x = torch.randn(2, 2, 12 * nside * nside)
    with torch.no_grad():
        y = net(x)
        faces = net.forward_faces(pad_faces(x, 8))  # all 24 faces at once
    torch.testing.assert_close(y, unpad_faces(faces, nside, 0), atol=1e-5, rtol=1e-5)
    # margin is capped at nside
    assert HealpixUNet(1, 1, levels=2, margin=64).margin_for(16) == 16


def _smoothed(x, nside):
    """Toy target: a fixed 3×3 blur on neighbour-padded faces, minus the input."""
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
    return unpad_faces(F.conv2d(pad_faces(x, 1), k[None, None]), nside, 0)


def test_training_reduces_loss_on_full_skies_and_crops():
    torch.manual_seed(0)
    nside = 32
    net = HealpixUNet(1, 1, width=8, levels=3)  # margin 32 = nside
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(2, 1, 12 * nside * nside)
    target = _smoothed(x, nside)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.mse_loss(net(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    # the training path: random crops of padded faces
    m = net.margin_for(nside)
    xp, tp = pad_faces(x, m), pad_faces(target, m)
    g = torch.Generator().manual_seed(3)
    crop_losses = []
    for _ in range(6):
        xc, yc = crop_padded(xp, 16, m, tp, generator=g, align=net.stride)
        opt.zero_grad()
        loss = F.mse_loss(net.forward_faces(xc, m), yc)
        loss.backward()
        opt.step()
        crop_losses.append(loss.item())
    assert crop_losses[-1] < losses[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    nside = 32
    net = HealpixUNet(2, 2, width=8, levels=3).cuda()
    x = torch.randn(1, 2, 12 * nside * nside, device="cuda")
    y = net(x)
    assert y.device.type == "cuda" and y.shape == x.shape
    y.sum().backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in net.parameters())
    torch.testing.assert_close(y.detach().cpu(), net.cpu()(x.cpu()), atol=1e-4, rtol=1e-4)


def test_tiled_forward_matches_windows_and_refuses_bad_tiles():
    """forward(tile=c) runs the U-Net on c×c windows of each padded face (what training sees):
    each window's output equals forward_faces on that window; c must divide nside."""
    torch.manual_seed(0)
    net = HealpixUNet(2, 2, width=4, levels=2, margin=8).eval()
    nside, c = 32, 16
    x = torch.randn(1, 2, 12 * nside**2)
    with torch.no_grad():
        tiled = net(x, tile=c)
        faces = pad_faces(x, 8)
        window = net.forward_faces(faces[:, :, c : 2 * c + 16, 0 : c + 16], 8)
    got = nest_to_faces(tiled)[0].transpose(0, 1)  # (12, 2, n, n)
    torch.testing.assert_close(got[:, :, c : 2 * c, 0:c], window)
    with torch.no_grad():
        torch.testing.assert_close(net(x, tile=nside), net(x))
    with pytest.raises(ValueError, match="tile=12 must divide nside=32"):
        net(x, tile=12)
