"""Flat-sky κ maps against pyccl: C_ℓ chi^2 over seeded maps, noise plateau, σ8 scaling, schema."""

import math

import numpy as np
import pyccl as ccl
import pytest
import torch
from scipy import stats as sps
from scipy.integrate import trapezoid

from engine.params import ConfigError, set_values
from engine.physics import lensing, limber, slabs, stats

ARCMIN_PER_RAD = 180 * 60 / math.pi


def pyccl_kappa_cl(ell, omega_m=0.3, sigma8=0.8, matter_power="halofit", dndz=None):
    """C_ℓ^κκ from a pyccl *convergence* tracer (lensing kernel, der_angles=1), built here.

    Independent of engine.physics.lensing's shear tracer + spin-factor conversion.
    """
    cosmo = ccl.Cosmology(
        Omega_c=omega_m - 0.049,
        Omega_b=0.049,
        h=0.6711,
        n_s=0.9624,
        sigma8=sigma8,
        transfer_function="eisenstein_hu",
        matter_power_spectrum=matter_power,
    )
    dndz = limber.des_y3_nz() if dndz is None else dndz
    chi, kernel = ccl.tracers.get_lensing_kernel(cosmo, dndz=dndz)
    tracer = ccl.Tracer()
    tracer.add_tracer(cosmo, kernel=(chi, kernel), der_bessel=-1, der_angles=1)
    return ccl.angular_cl(cosmo, tracer, tracer, np.asarray(ell, dtype=np.float64))


def binned_pyccl(settings, amplitude=1.0, noise=0.0):
    """pyccl C_ℓ (+ flat noise) × smoothing², evaluated on every map mode, binned like the maps."""
    n, box = settings.size, math.radians(settings.fov)
    ell = stats.wavenumbers((n, n), box).numpy()
    uniq, inv = np.unique(ell, return_inverse=True)
    cl = np.zeros_like(uniq)
    cl[uniq > 0] = pyccl_kappa_cl(uniq[uniq > 0])
    sigma = settings.smoothing / ARCMIN_PER_RAD
    per_mode = (amplitude * cl[inv].reshape(ell.shape) + noise) * np.exp(-(ell**2) * sigma**2)
    return stats.bin_isotropic(torch.from_numpy(per_mode), (n, n), box)


def chi2_pvalue(maps, settings, expect, lmax_frac=1.0):
    """p-value of the mean binned C_ℓ against ``expect`` with Gaussian variance 2C²/n_modes."""
    ps = stats.power_spectrum(maps.to(torch.float64), math.radians(settings.fov))
    var = 2 * expect**2 / (ps.n_modes * maps.shape[0])
    use = ps.edges[1:] <= lmax_frac * math.pi * settings.size / math.radians(settings.fov)
    use &= expect > 0
    chi2 = float((((ps.power.mean(0) - expect) ** 2) / var)[use].sum())
    return sps.chi2.sf(chi2, int(use.sum()))


def test_interpolated_cl_matches_direct_pyccl():
    s = lensing.KappaParams()
    ell = np.array([2.0, 3.0, 17.3, 72.0, 150.0, 1234.5, 9000.0, 6.1e4])
    ours = limber.theory_cl(s, torch.from_numpy(ell), 0.3, 0.8).numpy()
    ref = pyccl_kappa_cl(ell)
    np.testing.assert_allclose(ours, ref, rtol=1e-3)
    np.testing.assert_allclose(limber.direct_cl(s, ell, 0.3, 0.8), ref, rtol=1e-4)
    # batch of parameters, one C_l per pair; monopole is zero
    batch = limber.theory_cl(s, torch.tensor([0.0, 100.0]), [0.3, 0.3], [0.8, 0.6])
    assert batch.shape == (2, 2) and float(batch[:, 0].abs().max()) == 0.0
    assert float(batch[1, 1] / batch[0, 1]) < 0.6


def test_stored_cl_table_matches_pyccl_over_the_prior_box():
    """The shipped C_ℓ(Ω_m, σ8) table of the default configuration, against pyccl's convergence
    tracer (built in this file) at seeded points of the prior box, its corners included."""
    s = lensing.KappaParams()
    table = limber.cl_table(limber._config_key(s))
    assert table is not None, "no stored C_l table: python -m engine.physics.limber build-table"
    rng = np.random.default_rng(7)
    points = [(0.1, 0.4), (0.9, 1.2), (0.1, 1.2), (0.9, 0.4)]
    points += [(rng.uniform(0.1, 0.9), rng.uniform(0.4, 1.2)) for _ in range(6)]
    ell = np.array([2.0, 10.0, 100.0, 1000.0, 5000.0, 2.0e4])
    for om, s8 in points:
        ours = limber.theory_cl(s, torch.from_numpy(ell), om, s8).numpy()
        np.testing.assert_allclose(
            ours, pyccl_kappa_cl(ell, om, s8), rtol=1e-3, err_msg=f"{om, s8}"
        )


def test_cl_table_fallbacks(tmp_path):
    """No table, a table of another pyccl version, a corrupt file: pyccl is called instead."""
    s = lensing.KappaParams()
    config = limber._config_key(s)
    assert limber.cl_table(config, tmp_path) is None
    ln_cl = np.zeros((limber.N_OM, limber.N_S8, limber.N_ELL))
    path = limber.write_cl_table(ln_cl, config, tmp_path)
    limber._TABLES.clear()
    assert limber.cl_table(config, tmp_path) is not None
    np.savez(path, ln_cl=ln_cl, config=np.array(repr(config)), pyccl=np.array("0.1"))
    limber._TABLES.clear()
    assert limber.cl_table(config, tmp_path) is None
    path.write_bytes(b"not a table")
    limber._TABLES.clear()
    assert limber.cl_table(config, tmp_path) is None
    limber._TABLES.clear()
    other = set_values(lensing.KappaParams(), {"n_s": 0.95})
    assert limber.cl_table(limber._config_key(other)) is None  # only the default ships
    with pytest.raises(ValueError, match="shape"):
        limber.ClTable(np.zeros((2, 2, 2)))


def test_gaussian_maps_chi2_against_pyccl():
    settings = lensing.KappaParams(size=128, fov=5.0, sigma_e=0.0, smoothing=0.0)
    gen = torch.Generator().manual_seed(2024)
    maps = lensing.generate_maps(settings, np.full(12, 0.3), np.full(12, 0.8), gen)
    assert maps.shape == (12, 128, 128) and maps.dtype == torch.float32
    expect = binned_pyccl(settings).power
    assert chi2_pvalue(maps, settings, expect) > 1e-3
    assert chi2_pvalue(maps, settings, 1.05 * expect) < 1e-6
    assert chi2_pvalue(maps, settings, 0.95 * expect) < 1e-6
    # the engine's own binned theory is the same expectation
    th = lensing.binned_theory(settings, 0.3, 0.8).power
    np.testing.assert_allclose(th.numpy(), expect.numpy(), rtol=2e-3)


def test_noise_plateau_and_smoothing_of_noisy_map():
    """Noise = (noisy − noiseless) at the same seed; its spectrum is σ_e²/n_gal[sr⁻¹]."""
    n_gal_sr = 8.0 * ARCMIN_PER_RAD**2  # 8 arcmin^-2 in sr^-1
    n_level = 0.26**2 / n_gal_sr
    base = dict(size=128, fov=8.0, n_gal=8.0)
    for smoothing in (0.0, 6.0):
        noisy = lensing.KappaParams(sigma_e=0.26, smoothing=smoothing, **base)
        clean = lensing.KappaParams(sigma_e=0.0, smoothing=smoothing, **base)
        om, s8 = np.full(24, 0.3), np.full(24, 0.8)
        a = lensing.generate_maps(noisy, om, s8, torch.Generator().manual_seed(5))
        b = lensing.generate_maps(clean, om, s8, torch.Generator().manual_seed(5))
        noise = a.double() - b.double()
        assert limber.noise_cl(noisy) == pytest.approx(n_level, rel=1e-12)
        ell = stats.wavenumbers((128, 128), math.radians(8.0))
        kernel2 = torch.exp(-(ell**2) * (smoothing / ARCMIN_PER_RAD) ** 2)
        expect = stats.bin_isotropic(n_level * kernel2, (128, 128), math.radians(8.0)).power
        use_frac = 1.0 if smoothing == 0 else 0.5  # skip bins where exp(-l^2 s^2) underflows
        assert chi2_pvalue(noise, noisy, expect, use_frac) > 1e-3
        assert chi2_pvalue(noise, noisy, 1.05 * expect, use_frac) < 1e-6
        if smoothing == 0:  # per-pixel sigma_e / sqrt(n_gal A_pix), A_pix in arcmin^2
            pix = 8.0 * 60 / 128
            assert float(noise.std()) == pytest.approx(0.26 / math.sqrt(8.0 * pix**2), rel=0.01)


def test_halving_sigma8_quarters_low_ell_power():
    lin = lensing.KappaParams(matter_power="linear")
    nl = lensing.KappaParams(matter_power="halofit")
    ell = torch.tensor([20.0, 30.0, 100.0, 1000.0])
    r_lin = limber.theory_cl(lin, ell, 0.3, 0.4) / limber.theory_cl(lin, ell, 0.3, 0.8)
    np.testing.assert_allclose(r_lin.numpy(), 0.25, rtol=1e-9)  # linear: exactly sigma8^2
    r_nl = limber.theory_cl(nl, ell, 0.3, 0.4) / limber.theory_cl(nl, ell, 0.3, 0.8)
    # halofit: Limber C_l at l <~ 30 comes from k <~ 0.05 h/Mpc, linear to ~3 %
    np.testing.assert_allclose(r_nl[:2].numpy(), 0.25, rtol=0.03)
    assert float(r_nl[3]) < 0.15  # nonlinear boost grows with sigma8 at l ~ 1000
    # maps: same seed -> same phases, so binned spectra scale exactly as the theory
    s = lensing.KappaParams(size=64, fov=30.0, sigma_e=0.0, smoothing=0.0)
    a = lensing.generate_maps(s, [0.3] * 2, [0.8] * 2, torch.Generator().manual_seed(3))
    b = lensing.generate_maps(s, [0.3] * 2, [0.4] * 2, torch.Generator().manual_seed(3))
    box = math.radians(30.0)
    pa, pb = stats.power_spectrum(a.double(), box), stats.power_spectrum(b.double(), box)
    ratio = (pb.power / pa.power).mean(0)
    expect = lensing.binned_theory(s, 0.3, 0.4).power / lensing.binned_theory(s, 0.3, 0.8).power
    # (equal up to the C_l variation inside a bin, weighted by the realised mode amplitudes)
    np.testing.assert_allclose(ratio.numpy(), expect.numpy(), rtol=5e-3)
    assert float(ratio[0]) == pytest.approx(0.25, rel=0.03)  # l ~ 12


def test_lognormal_maps_spectrum_floor_and_skewness():
    s = lensing.KappaParams(distribution="lognormal", size=64, fov=3.0, sigma_e=0.0, smoothing=0.0)
    kappa0 = lensing.lognormal_shift(s)
    z, nz = limber.des_y3_nz()
    assert kappa0 == pytest.approx(trapezoid(nz * lensing.hilbert_shift(z), z))
    assert 0.01 < kappa0 < 0.025
    maps = lensing.generate_maps(s, [0.3] * 48, [0.8] * 48, torch.Generator().manual_seed(9))
    maps = maps.double()
    assert float(maps.min()) >= -kappa0 * (1 + 1e-5)
    ps = stats.power_spectrum(maps, math.radians(3.0))
    th = lensing.binned_theory(s, 0.3, 0.8).power
    err2 = ps.power.var(0) / maps.shape[0]
    chi2 = float((((ps.power.mean(0) - th) ** 2) / err2).sum())
    assert sps.chi2.sf(chi2, th.numel()) > 1e-3
    chi2_bad = float((((ps.power.mean(0) - 1.1 * th) ** 2) / err2).sum())
    assert sps.chi2.sf(chi2_bad, th.numel()) < 1e-6
    # shifted-lognormal skewness (e^{s2} + 2) sqrt(e^{s2} - 1), s2 = ln(1 + var/kappa0^2)
    var = lensing.map_scale(s) ** 2
    s2 = math.log1p(var / kappa0**2)
    target = (math.exp(s2) + 2) * math.sqrt(math.expm1(s2))
    skew = torch.tensor([sps.skew(m.reshape(-1).numpy()) for m in maps])
    assert float(skew.mean()) == pytest.approx(target, abs=4 * float(skew.std()) / math.sqrt(48))
    assert target > 0.5
    # a fixed shift too small for this C_l cannot be lognormal
    with pytest.raises(ConfigError, match="lognormal_shift"):
        tiny = lensing.KappaParams(distribution="lognormal", size=64, fov=3.0, lognormal_shift=1e-4)
        lensing.generate_maps(tiny, [0.3], [0.8], torch.Generator().manual_seed(0))


def test_des_y3_nz_and_user_table(tmp_path, monkeypatch):
    monkeypatch.setattr(limber, "TABLE_DIR", tmp_path / "no-tables")  # both from pyccl
    z, nz = limber.des_y3_nz()
    assert trapezoid(nz, z) == pytest.approx(1.0, rel=1e-6)
    assert trapezoid(z * nz, z) == pytest.approx(0.63, abs=2e-3)
    path = tmp_path / "nz.txt"
    np.savetxt(path, np.c_[z, 3.0 * nz], header="z n(z)")
    user = lensing.KappaParams(nz=str(path))
    ell = torch.tensor([100.0, 1000.0])
    np.testing.assert_allclose(
        limber.theory_cl(user, ell, 0.3, 0.8).numpy(),
        limber.theory_cl(lensing.KappaParams(), ell, 0.3, 0.8).numpy(),
        rtol=1e-9,
    )
    deep = tmp_path / "deep.txt"  # sources at z ~ 1.5 lens more
    zz = np.linspace(0, 3, 61)
    np.savetxt(deep, np.c_[zz, np.exp(-0.5 * ((zz - 1.5) / 0.2) ** 2)])
    c_deep = limber.theory_cl(lensing.KappaParams(nz=str(deep)), ell, 0.3, 0.8)
    assert bool((c_deep > 2 * limber.theory_cl(user, ell, 0.3, 0.8)).all())
    bad = tmp_path / "bad.txt"
    bad.write_text("0.1 0.2 0.3\n0.2 0.3 0.4\n")
    for value in (str(bad), str(tmp_path / "missing.txt"), "des_y9"):
        with pytest.raises(ConfigError, match="nz=") as err:
            limber.theory_cl(lensing.KappaParams(nz=value), ell, 0.3, 0.8)
        assert "\n" not in str(err.value)


def test_dataarray_schema_roundtrip_and_seeds(tmp_path):
    mask = np.ones((32, 32), dtype=np.float32)
    mask[:8] = 0
    np.save(tmp_path / "mask.npy", mask)
    s = lensing.KappaParams(size=32, fov=2.0, count=3, seed=4, mask=str(tmp_path / "mask.npy"))
    da = lensing.generate(s, omega_m=[0.25, 0.3, 0.35], device="cpu")
    assert da.dims == ("sample", "y", "x") and da.shape == (3, 32, 32)
    assert da.dtype == np.float32 and da.name == "kappa"
    np.testing.assert_allclose(da.x.values, (np.arange(32) + 0.5) * 120.0 / 32)
    assert da.x.attrs["units"] == "arcmin"
    np.testing.assert_allclose(da.omega_m.values, [0.25, 0.3, 0.35])
    assert np.all(da.values[:, :8] == 0) and np.all(da.values[:, 8:] != 0)
    np.testing.assert_array_equal(da.mask.values, mask.astype(np.uint8))
    for key in (
        "fov",
        "size",
        "n_gal",
        "sigma_e",
        "smoothing",
        "nz",
        "matter_power",
        "distribution",
        "kind",
    ):
        assert key in da.attrs
    np.testing.assert_allclose(da.attrs["nz_dndz"], limber.des_y3_nz()[1])
    for suffix in (".nc", ".zarr"):
        back = slabs.load(slabs.save(da, tmp_path / f"kappa{suffix}"))
        np.testing.assert_array_equal(back.values, da.values)
        np.testing.assert_array_equal(back.mask.values, da.mask.values)
        np.testing.assert_allclose(np.asarray(back.attrs["nz_z"]), da.attrs["nz_z"])
        np.testing.assert_allclose(np.asarray(back.attrs["nz_dndz"]), da.attrs["nz_dndz"])
        rebuilt = lensing.settings_from_attrs(back.attrs)
        assert rebuilt.fov == 2.0 and rebuilt.mask == str(tmp_path / "mask.npy")
    same = lensing.generate(s, omega_m=[0.25, 0.3, 0.35], device="cpu")
    np.testing.assert_array_equal(same.values, da.values)
    s.seed = 5
    assert not np.allclose(lensing.generate(s, device="cpu").values, da.values)
    no_mask = lensing.generate(lensing.KappaParams(size=16, count=1), device="cpu")
    assert no_mask.attrs["mask"] == "" and lensing.settings_from_attrs(no_mask.attrs).mask is None


def test_bad_settings_raise_one_line_config_errors(tmp_path):
    cases = [
        ({"fov": 100}, "fov=100 is out of range"),
        ({"size": 4}, "size=4 is out of range"),
        ({"distribution": "gamma"}, "distribution='gamma' is not allowed"),
        ({"n_gal": 0}, "n_gal=0 is out of range"),
        ({"sigma_e": -0.1}, "sigma_e=-0.1 is out of range"),
        ({"matter_power": "emu"}, "matter_power='emu' is not allowed"),
    ]
    for values, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            set_values(lensing.KappaParams(), values)
        assert "\n" not in str(err.value)
    gen = torch.Generator().manual_seed(0)
    s = lensing.KappaParams(size=16, fov=1.0)
    with pytest.raises(ConfigError, match="omega_m=0.05 is out of range"):
        lensing.generate_maps(s, [0.05], [0.8], gen)
    with pytest.raises(ConfigError, match="pixel size"):
        lensing.generate_maps(lensing.KappaParams(size=4096, fov=0.5), [0.3], [0.8], gen)
    np.save(tmp_path / "m.npy", np.ones((8, 8)))
    np.save(tmp_path / "m2.npy", np.full((16, 16), 0.5))
    (tmp_path / "m3.npy").write_text("not numpy")
    for name, message in (("m.npy", "shape"), ("m2.npy", "only 0"), ("m3.npy", "not a .npy")):
        with pytest.raises(ConfigError, match=message) as err:
            lensing.generate_maps(
                lensing.KappaParams(size=16, mask=str(tmp_path / name)), [0.3], [0.8], gen
            )
        assert "\n" not in str(err.value)
