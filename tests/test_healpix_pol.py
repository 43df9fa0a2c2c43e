"""E/B of HEALPix face windows in the flat-sky limit (engine.nn.healpix_pol): pure-E and pure-B
skies drawn by healpy stay (mostly) pure, and the B power of white noise is its variance."""

import healpy as hp
import numpy as np
import pytest
import torch

from engine.nn.healpix import nest_to_faces, ring_to_nest
from engine.nn.healpix_pol import _taper, b_power, face_pol_basis, flat_eb, to_grid_axes

NSIDE = 128


def _faces_qu(ee, bb, seed):
    z = np.zeros_like(ee)
    np.random.seed(seed)  # noqa: NPY002 - healpy's synfast draws from the global state
    _, q, u = hp.synfast([z, ee, bb, z], NSIDE, new=True, lmax=3 * NSIDE - 1)
    qu = ring_to_nest(torch.from_numpy(np.stack([q, u]).astype(np.float32)))
    return nest_to_faces(qu).transpose(0, 1)  # (12, 2, n, n)


def _ratio(faces, basis, s=64):
    """Power of the other mode over the power of the drawn mode, per face (centre windows)."""
    o = (NSIDE - s) // 2
    e, b = flat_eb(
        to_grid_axes(faces[:, :, o : o + s, o : o + s], basis[:, :, o : o + s, o : o + s])
    )
    return (b.abs() ** 2).sum((-1, -2)) / (e.abs() ** 2).sum((-1, -2))


@pytest.fixture(scope="module")
def spectra():
    ell = np.arange(3 * NSIDE)
    cl = np.where(ell >= 2, np.exp(-((ell / 250.0) ** 2)), 0.0)
    return cl, np.zeros_like(cl)


def test_pure_e_and_pure_b_stay_pure(spectra):
    cl, z = spectra
    basis = torch.from_numpy(np.array(face_pol_basis(NSIDE)))
    b_over_e = _ratio(_faces_qu(cl, z, 1), basis)
    e_over_b = 1.0 / _ratio(_faces_qu(z, cl, 2), basis)
    for r in (b_over_e, e_over_b):
        # equatorial faces 4-7 are nearly flat and square; polar faces are sheared more
        assert float(r[4:8].max()) < 0.1, r
        assert float(r.max()) < 0.3, r
    # the test can fail: the wrong handedness mixes E and B completely
    wrong = basis.clone()
    wrong[:, 2] *= -1
    assert float(_ratio(_faces_qu(cl, z, 1), wrong).min()) > 0.7


def test_b_power_of_white_noise():
    gen = torch.Generator().manual_seed(0)
    sigma, s = 1.7, 64
    qu = sigma * torch.randn(200, 2, s, s, generator=gen)
    basis = torch.from_numpy(np.array(face_pol_basis(NSIDE)))[:1, :, :s, :s].expand(200, -1, -1, -1)
    taper = _taper(s, s // 8)
    expected = sigma**2 * float((taper**2).mean())  # white Q/U noise: half its power is B
    assert float(b_power(qu, basis)) == pytest.approx(expected, rel=0.03)


def test_basis_shape_and_bad_nside():
    out = face_pol_basis(8)
    assert out.shape == (12, 3, 8, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0] ** 2 + out[:, 1] ** 2, 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="power of 2"):
        face_pol_basis(12)
    with pytest.raises(ValueError, match="must be"):
        flat_eb(torch.zeros(1, 2, 8, 6))
