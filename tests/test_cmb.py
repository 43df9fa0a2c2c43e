"""Lensed CMB skies (engine.physics.cmb, ``engine sky --kind cmb``): spectra against CAMB,
determinism, files and the command line.

The statistical tests compare the mean over seeded skies of band-averaged spectra with CAMB's
C_ℓ, in units of the Gaussian cosmic-variance error of that mean,
σ_b² = Σ_{ℓ∈b} 2 C_ℓ² / (2ℓ + 1) / n_b² / N_skies (full sky, no noise in the compared maps), and
require |z| < 4 in every band. The skies (nside 64, ℓ_max = 191) use the automatic ℓ_unl = 2191,
which holds 99.7 % of CAMB's lensed BB at ℓ ≤ 191 (engine.physics.cmb docstring): a bias far
below σ_b (≥ 1 % here). Bands stop at ℓ = 2·nside: above it healpy's ``map2alm`` (3 Jacobi
iterations) of these band-limited maps loses 3 % of EE at 140 ≤ ℓ < 192 and leaks E into B
(+14 % of BB at 170 ≤ ℓ < 192, more with more iterations), an error of the estimator, not of
the maps (checked against the a_ℓm they are made from).
"""

from __future__ import annotations

import json
import math

import healpy as hp
import numpy as np
import pytest
import xarray as xr

from engine.cli import main
from engine.params import ConfigError
from engine.physics import cmb, cmb_io

NSIDE = 64
LMAX = 3 * NSIDE - 1
N_SKIES = 4
#: Largest |z| of a band mean accepted.
Z_MAX = 4.0
#: ℓ bands of the spectrum tests (up to 2·nside: module docstring).
BANDS = [2, 12, 30, 60, 90, 128]


@pytest.fixture(scope="module")
def physics():
    """(settings, skies, theory) of N_SKIES skies with r = 0.1, a 60' beam and 5 µK' noise."""
    settings = cmb.CMBParams(nside=NSIDE, r=0.1, beam=60.0, noise=5.0, count=N_SKIES, seed=3)
    assert cmb.unlensed_lmax(settings) == LMAX + 2000
    return settings, cmb_io.generate(settings, progress=False), cmb.theory(settings)


def _eb(q, u) -> tuple[np.ndarray, np.ndarray]:
    """(C_ℓ^EE, C_ℓ^BB) of full-sky Q, U maps, ℓ = 0 … LMAX (healpy, 3 Jacobi iterations)."""
    q = np.asarray(q, dtype=np.float64)
    alm = hp.map2alm([np.zeros_like(q), q, np.asarray(u, np.float64)], lmax=LMAX, iter=3, pol=True)
    return hp.alm2cl(alm[1]), hp.alm2cl(alm[2])


def _z_scores(measured: np.ndarray, theory: np.ndarray, edges) -> np.ndarray:
    """z of the mean over skies of each band average: measured (N, LMAX+1), theory (LMAX+1,)."""
    z = []
    n = measured.shape[0]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        ell = np.arange(lo, hi)
        mean = measured[:, lo:hi].mean(axis=1).mean()
        th = theory[lo:hi].mean()
        sigma = math.sqrt(np.sum(2 * theory[lo:hi] ** 2 / (2 * ell + 1)) / ell.size**2 / n)
        z.append((mean - th) / sigma)
    return np.array(z)


def _spectra(skies, q: str, u: str):
    pairs = [_eb(skies[q][i], skies[u][i]) for i in range(skies.sizes["sample"])]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def test_lensed_spectra_match_camb(physics):
    settings, skies, th = physics
    ee, bb = _spectra(skies, "Q_lensed", "U_lensed")
    edges = BANDS
    z_bb = _z_scores(bb, th["BB_lensed"].values, edges)
    z_ee = _z_scores(ee, th["EE_lensed"].values, edges)
    assert np.all(np.abs(z_bb) < Z_MAX), z_bb
    assert np.all(np.abs(z_ee) < Z_MAX), z_ee
    # the test can see lensing: at 90 <= l < 128 lensing makes most of BB (r = 0.1), and the
    # unlensed (tensor) BB alone is many sigma below the measured lensed BB
    z_unl = _z_scores(bb, th["BB_unlensed"].values, BANDS[-2:])
    assert np.all(z_unl > 10), z_unl


def test_unlensed_spectra_match_camb(physics):
    settings, skies, th = physics
    ee, bb = _spectra(skies, "Q_unlensed", "U_unlensed")
    z_ee = _z_scores(ee, th["EE_unlensed"].values, BANDS)
    z_bb = _z_scores(bb, th["BB_unlensed"].values, BANDS)
    assert np.all(np.abs(z_ee) < Z_MAX), z_ee
    assert np.all(np.abs(z_bb) < Z_MAX), z_bb
    # tensor BB at r = 0.1 is measured: the band 30 <= l < 100 differs from r = 0 by > 5 sigma
    assert _z_scores(bb, np.full(LMAX + 1, 1e-12), [30, 100])[0] > 5


def test_noise_is_white_at_the_stated_level(physics):
    settings, skies, th = physics
    nq = skies["Q"].values.astype(np.float64) - skies["Q_lensed"].values
    nu = skies["U"].values.astype(np.float64) - skies["U_lensed"].values
    sigma_pix = settings.noise / math.sqrt(hp.nside2pixarea(NSIDE, degrees=True) * 3600)
    assert skies.attrs["noise_pixel"] == pytest.approx(sigma_pix, rel=1e-9)
    n_values = 2 * nq.size
    var = (np.sum(nq**2) + np.sum(nu**2)) / n_values
    assert var == pytest.approx(sigma_pix**2, abs=4 * sigma_pix**2 * math.sqrt(2 / n_values))
    assert abs(np.corrcoef(nq.ravel(), nu.ravel())[0, 1]) < 4 / math.sqrt(nq.size)
    # spectrum: N_l = (noise [uK-arcmin] in uK-rad)^2 for E and B, below 2 nside (above, the
    # HEALPix quadrature of a pixel-white map loses a few percent)
    pairs = [_eb(nq[i], nu[i]) for i in range(N_SKIES)]
    ee, bb = [p[0] for p in pairs], [p[1] for p in pairs]
    n_ell = (settings.noise * math.pi / 10800) ** 2
    assert th["noise"].values[2:] == pytest.approx(n_ell)
    edges = [2, 30, 64, 100, 128]
    for cl in (np.array(ee), np.array(bb)):
        z = _z_scores(cl, np.full(LMAX + 1, n_ell), edges)
        assert np.all(np.abs(z) < Z_MAX), z


def test_phi_map_has_the_lensing_potential_spectrum(physics):
    settings, skies, th = physics
    cl = np.array(
        [hp.anafast(skies["phi"].values[i].astype(np.float64), lmax=LMAX, iter=3)
         for i in range(N_SKIES)]
    )  # fmt: skip
    z = _z_scores(cl, th["phiphi"].values, [2, 8, 20, 50, 90, 128])
    assert np.all(np.abs(z) < Z_MAX), z


def test_observed_maps_and_theory_are_consistent(physics):
    settings, skies, th = physics
    assert set(skies.data_vars) == {*cmb.VARIABLES, "mask"}
    for name, (units, _) in cmb.VARIABLES.items():
        da = skies[name]
        assert da.dims == ("sample", "pixel") and da.dtype == np.float32
        assert da.shape == (N_SKIES, 12 * NSIDE**2)
        assert da.attrs["units"] == units
    assert skies["mask"].dims == ("pixel",) and np.all(skies["mask"].values == 1)
    assert skies["sample"].values.tolist() == list(range(N_SKIES))
    a = skies.attrs
    assert (a["kind"], a["ordering"], a["lmax"], a["lmax_unlensed"]) == ("cmb", "RING", LMAX, 2191)
    assert (a["r"], a["beam"], a["noise"], a["nside"], a["seed"]) == (0.1, 60.0, 5.0, NSIDE, 3)
    cosmology = json.loads(a["cosmology"])
    assert a["omega_m"] == cosmology["omega_m"] == settings.omega_m and cosmology["r"] == 0.1
    assert "CAMB" in cosmology["model"] and cosmology["A_s"] == a["A_s"]
    assert th["BB"].values == pytest.approx(th["BB_lensed"].values + th["noise"].values)
    beam = hp.gauss_beam(math.radians(1.0), lmax=LMAX, pol=True)[:, 2]
    assert th["beam"].values == pytest.approx(beam)
    assert th["ell"].values[-1] == LMAX and th["EE"].attrs["units"] == "uK^2"


# ---------------------------------------------------------------------------------------------
# Determinism, masks, settings (cheap skies: nside 16, l_unl = 200)
# ---------------------------------------------------------------------------------------------


def _small(**kw) -> cmb.CMBParams:
    values = dict(nside=16, lmax_unlensed=200, count=3, seed=5)
    values.update(kw)
    return cmb.CMBParams(**values)


@pytest.fixture(scope="module")
def small():
    return cmb_io.generate(_small(), progress=False)


def test_same_seed_same_skies_and_skies_differ(small):
    again = cmb_io.generate(_small(), progress=False)
    for name in cmb.VARIABLES:
        np.testing.assert_array_equal(small[name].values, again[name].values)
        assert not np.array_equal(small[name].values[0], small[name].values[1])
    other = cmb_io.generate(_small(seed=6, count=1), progress=False)
    assert not np.array_equal(other["Q"].values[0], small["Q"].values[0])
    # sky i depends on (seed, i) only: a shorter run gives the first skies
    first = cmb_io.generate(_small(count=2), progress=False)
    np.testing.assert_array_equal(first["Q"].values, small["Q"].values[:2])


def test_workers_and_chunks_do_not_change_the_skies(small):
    two = cmb_io.generate(_small(workers=2), progress=False)
    parts = list(cmb_io.generate_chunks(_small(), chunk=2, progress=False))
    assert [p.sizes["sample"] for p in parts] == [2, 1]
    chunked = xr.concat(parts, dim="sample", data_vars="minimal")
    for name in cmb.VARIABLES:
        # worker processes run the spherical transforms on another number of threads, which
        # sums in another order: equal to float32 rounding (chunks in one process: bit for bit)
        scale = float(np.abs(small[name].values).max())
        np.testing.assert_allclose(two[name].values, small[name].values, rtol=0, atol=1e-5 * scale)
        np.testing.assert_array_equal(chunked[name].values, small[name].values)
    assert chunked["sample"].values.tolist() == [0, 1, 2]


def test_masks():
    none = cmb.sky_mask(_small(nside=64))
    assert none.dtype == np.float32 and np.all(none == 1)
    gal = cmb.sky_mask(_small(nside=64, mask="galactic"))
    assert gal.mean() == pytest.approx(1 - math.sin(math.radians(20)), abs=0.01)
    # the Galactic centre (RA 266.4, Dec -28.9) is masked, the north Galactic pole observed
    for (ra, dec), expected in (((266.4, -28.9), 0), ((192.86, 27.13), 1)):
        assert gal[hp.ang2pix(64, ra, dec, lonlat=True)] == expected
    disc = cmb.sky_mask(_small(nside=64, mask="small_aperture"))
    assert disc.mean() == pytest.approx((1 - math.cos(math.radians(20))) / 2, rel=0.05)
    assert disc[hp.ang2pix(64, 0.0, -57.5, lonlat=True)] == 1
    assert disc[hp.ang2pix(64, 0.0, -30.0, lonlat=True)] == 0
    ds = cmb_io.generate(_small(count=1, mask="small_aperture", nside=16), progress=False)
    assert set(np.unique(ds["mask"].values)) == {0.0, 1.0}
    assert np.all(np.isfinite(ds["Q"].values))  # masked pixels keep their values


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"nside": 24}, "nside=24 is not allowed: a power of 2 with 16 <= nside <= 2048"),
        ({"lmax_unlensed": 1}, "lmax_unlensed=1 is out of range"),
    ],
)
def test_bad_settings_are_one_line_errors(values, words):
    s = cmb.CMBParams()
    s.param.update(**values)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")) as err:
        cmb.check_settings(s)
    assert "\n" not in str(err.value)


def test_save_streams_zarr_and_refuses_overwrite(tmp_path, small):
    out = tmp_path / "skies.zarr"
    cmb_io.save(cmb_io.generate_chunks(_small(), chunk=1, progress=False), out)
    with xr.open_zarr(out, consolidated=False) as ds:
        assert ds["Q"].encoding["chunks"] == (1, 12 * 16**2)
        for name in (*cmb.VARIABLES, "mask"):
            np.testing.assert_array_equal(ds[name].values, small[name].values)
        assert cmb_io.settings_from_attrs(ds.attrs).lmax_unlensed == 200
    with pytest.raises(ConfigError, match="already exists"):
        cmb_io.save(small, out)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

_CMB = ["sky", "--kind", "cmb", "--nside", "16", "--lmax-unlensed", "200", "--seed", "5"]


def test_cli_writes_a_readable_file_and_refuses_overwrite(tmp_path, capsys, small):
    out = tmp_path / "cmb.nc"
    assert main([*_CMB, "--count", "2", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("wrote 2 cmb skies (nside 16") and "\n" not in line
    with xr.open_dataset(out) as ds:
        assert ds.attrs["kind"] == "cmb" and ds.attrs["r"] == 0.01 and ds.attrs["nside"] == 16
        assert ds["Q"].attrs["units"] == "uK"
        np.testing.assert_array_equal(ds["Q"].values, small["Q"].values[:2])
    before = out.read_bytes()
    assert main([*_CMB, "--count", "2", "--r", "0.1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "--overwrite" in err and "\n" not in err
    assert out.read_bytes() == before


def test_cli_zarr_output(tmp_path, capsys, small):
    out = tmp_path / "cmb.zarr"
    assert main([*_CMB, "--count", "3", "--out", str(out)]) == 0
    with xr.open_zarr(out, consolidated=False) as ds:
        np.testing.assert_array_equal(ds["U_lensed"].values, small["U_lensed"].values)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--nside", "100"], "nside=100 is not allowed"),
        (["--nside", "4096"], "nside=4096"),
        (["--r", "2"], "r=2.0 is out of range: allowed 0.0 <= r <= 1.0"),
        (["--noise", "-1"], "noise=-1.0 is out of range: allowed 0.0 <= noise <= 100.0"),
        (["--mask", "des"], "mask='des' is not allowed"),
        (["--patch", "0,0"], "--patch is an option of --kind kappa skies, not of --kind cmb"),
        (["--footprint", "des_like"], "--footprint is a setting of --kind kappa skies"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, capsys, flags, words):
    out = tmp_path / "bad.nc"
    argv = ["sky", "--kind", "cmb", "--count", "1", *flags, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and "\n" not in err
    assert "Traceback" not in err and not out.exists()


def test_cli_kappa_refuses_cmb_flags(tmp_path, capsys):
    out = tmp_path / "k.nc"
    assert main(["sky", "--nside", "16", "--r", "0.1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--r is a setting of --kind cmb skies, not of --kind kappa" in err
