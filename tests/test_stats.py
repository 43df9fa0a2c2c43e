"""The P(k) estimator against a plain numpy implementation of the conventions in engine.physics.stats."""

import numpy as np
import pytest
import torch

from engine.physics import stats


def numpy_power(a, box, edges, b=None):
    """Full-plane FFT, |k| per mode, mean of v^2 |d_k|^2 / V per bin (engine.physics.stats docstring)."""
    d = a.ndim
    n = a.shape[0]
    fa = np.fft.fftn(a)
    fb = fa if b is None else np.fft.fftn(b)
    p = (fa * np.conj(fb)).real * box**d / n ** (2 * d)
    k1 = 2 * np.pi * np.fft.fftfreq(n, d=box / n)
    kk = np.sqrt(sum(g**2 for g in np.meshgrid(*([k1] * d), indexing="ij")))
    out, kmean, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (kk >= lo) & (kk < hi) & (kk > 0)
        out.append(p[m].mean())
        kmean.append(kk[m].mean())
        counts.append(m.sum())
    return np.array(kmean), np.array(out), np.array(counts)


@pytest.mark.parametrize(
    "n, dim, box", [(64, 2, 100.0), (63, 2, 7.0), (16, 3, 50.0), (128, 2, 256.0)]
)
def test_matches_numpy(n, dim, box):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n,) * dim)
    b = rng.standard_normal((n,) * dim)
    edges = stats.default_edges((n,) * dim, box).numpy()
    k_ref, p_ref, c_ref = numpy_power(a, box, edges)
    ps = stats.power_spectrum(torch.from_numpy(a), box, dim=dim)
    np.testing.assert_allclose(ps.power.numpy(), p_ref, rtol=1e-5)
    np.testing.assert_allclose(ps.k.numpy(), k_ref, rtol=1e-5)
    np.testing.assert_array_equal(ps.n_modes.numpy(), c_ref)
    _, x_ref, _ = numpy_power(a, box, edges, b)
    xs = stats.cross_spectrum(torch.from_numpy(a), torch.from_numpy(b), box, dim=dim)
    np.testing.assert_allclose(xs.power.numpy(), x_ref, rtol=1e-5, atol=1e-9 * np.abs(p_ref).max())


def test_batched_and_custom_edges():
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((3, 32, 32)).astype(np.float32)
    edges = np.geomspace(0.2, 3.0, 9)
    ps = stats.power_spectrum(torch.from_numpy(maps), 40.0, edges=edges)
    assert ps.power.shape == (3, 8)
    for i in range(3):
        _, ref, _ = numpy_power(maps[i].astype(np.float64), 40.0, edges)
        np.testing.assert_allclose(ps.power[i].numpy(), ref, rtol=1e-5)


def test_white_noise_level():
    """White noise of variance s^2 per pixel has P = s^2 (L/N)^2 at all k."""
    g = torch.Generator().manual_seed(0)
    s, n, box = 0.7, 128, 64.0
    noise = s * torch.randn((16, n, n), generator=g, dtype=torch.float64)
    ps = stats.power_spectrum(noise, box)
    expect = s**2 * (box / n) ** 2
    total_modes = float(ps.n_modes.sum()) * 16
    assert float(ps.power.mean()) == pytest.approx(expect, rel=5 * np.sqrt(2 / total_modes))


def test_pixel_pdf_normalised():
    x = torch.randn(10000, generator=torch.Generator().manual_seed(2))
    c, d = stats.pixel_pdf(x, bins=40)
    assert c.shape == d.shape == (40,)
    assert np.sum(d) * (c[1] - c[0]) == pytest.approx(1.0)


def test_bad_input_messages():
    with pytest.raises(ValueError, match="square"):
        stats.power_spectrum(torch.zeros(4, 8, 6), 10.0)
    with pytest.raises(ValueError, match="increasing"):
        stats.power_spectrum(torch.zeros(8, 8), 10.0, edges=[1.0, 0.5])


def numpy_peaks(m, thresholds):
    """Brute force: visit every pixel and its 8 periodic neighbours."""
    n, k = m.shape
    heights = []
    for i in range(n):
        for j in range(k):
            nb = [m[(i + dy) % n, (j + dx) % k] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            if all(
                m[i, j] > v
                for v, (dy, dx) in zip(nb, np.ndindex(3, 3), strict=True)
                if (dy, dx) != (1, 1)
            ):
                heights.append(m[i, j])
    heights = np.asarray(heights)
    return np.array([(heights > t).sum() for t in thresholds])


def test_peak_counts_match_brute_force():
    rng = np.random.default_rng(3)
    maps = rng.standard_normal((3, 24, 20))
    maps[0, 5, 6] = maps[0, 5, 7] = 9.0  # a tie is no peak
    maps[1, 0, 0] = 9.0  # a corner peak sees the opposite corners as neighbours
    thresholds = np.linspace(-2.0, 3.0, 11)
    got = stats.peak_counts(torch.from_numpy(maps), thresholds)
    assert got.shape == (3, 11) and got.dtype == np.int64
    for b in range(3):
        np.testing.assert_array_equal(got[b], numpy_peaks(maps[b], thresholds))
    assert got[0, -1] == numpy_peaks(maps[0], [3.0])[0]
    np.testing.assert_array_equal(stats.peak_counts(maps[1], thresholds), got[1])  # numpy, 2D
    assert stats.peak_counts(np.zeros((8, 8)), [-1.0]).tolist() == [0]  # flat: no strict maximum
