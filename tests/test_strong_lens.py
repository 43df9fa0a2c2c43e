"""The ``strong_lens`` kind: ring radius vs Einstein radius, Poisson subhaloes and their mass
function, seeds and workers, substructure perturbations, the CLI and the θ_E conversion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from scipy import optimize, stats

from engine import cli
from engine.kinds import FIELD_KINDS, WRITE_KINDS, get_kind
from engine.params import ConfigError
from engine.physics import strong_lens as sl
from engine.physics import strong_lens_image
from engine.physics.strong_lens_image import render
from engine.physics.strong_lens_model import (
    COSMOLOGY_H,
    COSMOLOGY_OMEGA_B,
    COSMOLOGY_OMEGA_M,
    draw_parameters,
)

#: Noiseless rings: no lens light, compact source close to the lens axis, near-round lens and
#: little shear, so the flux-weighted ring radius is θ_E + O(β²/θ_E, e, γ) ≪ 1 pixel.
RING = dict(
    substructure="none",
    noise=False,
    workers=1,
    lens_e_max=0.05,
    shear_max=0.01,
    lens_offset_max=0.0,
    source_offset_max=0.05,
    source_r_min=0.05,
    source_r_max=0.08,
)


def _radius(image: np.ndarray, x: np.ndarray, y: np.ndarray, cx: float, cy: float) -> float:
    """Flux-weighted mean distance from (cx, cy) of the pixels above 10 % of the peak (arcsec)."""
    xx, yy = np.meshgrid(x, y)
    r = np.hypot(xx - cx, yy - cy)
    ring = image > 0.1 * image.max()
    return float((image[ring] * r[ring]).sum() / image[ring].sum())


def test_ring_radius_is_the_einstein_radius():
    # Tolerance 0.3 pixel (0.03 arcsec): for an SIS the flux-weighted radius of a point source
    # at β is θ_E + β²/θ_E (< 0.003θ_E here); the PSF adds σ²/2θ_E ~ 0.003 arcsec.
    da = sl.generate(sl.StrongLensParams(count=8, seed=11, **RING), progress=False)
    pix = da.attrs["pixel_scale"]
    for i in range(da.sizes["sample"]):
        one = da.isel(sample=i)
        r = _radius(one.values, da.x.values, da.y.values, float(one.lens_x), float(one.lens_y))
        assert abs(r - float(one.theta_e)) < 0.3 * pix, (i, r, float(one.theta_e))
    assert 0.8 <= da.theta_e.min() and da.theta_e.max() <= 1.2


def test_subhalo_number_is_poisson_and_masses_follow_the_slope():
    s = sl.StrongLensParams(substructure="cdm", subhalo_mean=4.0, seed=3)
    n = np.array([draw_parameters(s, i)["n_subhalo"] for i in range(3000)])
    assert abs(n.mean() - 4.0) < 4 * math.sqrt(4.0 / n.size)  # not a fixed number (DeepLenseSim)
    assert abs(n.var() - 4.0) < 0.5
    observed = np.bincount(n, minlength=13)[:12].astype(float)
    observed = np.append(observed, n.size - observed.sum())  # 12 and more
    expected = n.size * np.append(stats.poisson.pmf(np.arange(12), 4.0), stats.poisson.sf(11, 4.0))
    keep = expected >= 5  # pool the sparse tail into one bin
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    chi2 = ((obs - exp) ** 2 / exp).sum()
    assert stats.chi2.sf(chi2, len(obs) - 1) > 1e-3, chi2

    s = sl.StrongLensParams(substructure="cdm", subhalo_mean=50.0, seed=4)
    m = np.concatenate([draw_parameters(s, i)["subhalo_mass"] for i in range(300)])
    lo, hi = 1e6, 1e10
    assert m.min() >= lo and m.max() <= hi and m.size > 10_000

    def nll(slope):  # truncated power law dN/dm ∝ m^slope on [lo, hi]
        a = slope + 1
        return -(m.size * math.log(a / (hi**a - lo**a)) + slope * np.log(m).sum())

    fit = optimize.minimize_scalar(nll, bounds=(-2.5, -1.2), method="bounded")
    assert abs(fit.x + 1.9) < 0.03, fit.x
    a = -0.9
    cdf = lambda v: (v**a - lo**a) / (hi**a - lo**a)  # noqa: E731
    assert stats.kstest(m, cdf).pvalue > 1e-3


def test_same_seed_same_images_for_any_workers_and_chunks(monkeypatch):
    s = sl.StrongLensParams(count=6, seed=5, workers=1, supersampling=1)
    one = sl.generate(s, progress=False)
    assert list(one.substructure.values) == ["none", "cdm", "vortex"] * 2
    again = sl.generate(sl.StrongLensParams(count=6, seed=5, workers=1, supersampling=1))
    assert one.identical(again)
    monkeypatch.setattr(strong_lens_image, "BLOCK", 2)  # three blocks for two processes
    s.workers = 2
    assert one.identical(sl.generate(s, progress=False))
    chunks = list(sl.generate_chunks(s, chunk=4, progress=False))
    assert [c.sizes["sample"] for c in chunks] == [4, 2]
    assert one.identical(xr.concat(chunks, dim="sample"))
    s.seed = 6
    assert not np.array_equal(one.values, sl.generate(s, progress=False).values)


def test_substructure_perturbs_the_same_macro_model():
    s = sl.StrongLensParams(noise=False, seed=2)
    inst = sl.instrument(s)
    for i in range(3):
        p = {c: draw_parameters(s, i, c) for c in ("none", "cdm", "vortex")}
        macro = ("theta_e", "lens_e1", "gamma2", "source_x", "source_mag", "source_n_sersic")
        assert all(p["none"][k] == p[c][k] for c in p for k in macro)
        assert p["none"]["n_subhalo"] == 0 and p["cdm"]["n_subhalo"] > 0
        img = {c: render(s, p[c], inst)[0] for c in p}
        peak, flux = img["none"].max(), img["none"].sum()
        # a Poisson set of mostly 10^6-10^7 Msun subhaloes moves pixels by >= 1e-4 of the peak;
        # a 10^10-10^11 Msun vortex by more than 10 %
        assert np.abs(img["cdm"] - img["none"]).max() > 1e-4 * peak
        assert np.abs(img["vortex"] - img["none"]).max() > 0.1 * peak
        # lensing conserves surface brightness, not flux: the magnification changes a little
        assert img["cdm"].sum() == pytest.approx(flux, rel=0.03)
        assert 0.5 < img["vortex"].sum() / flux < 2.0


def test_presets_profiles_lens_light_and_noise():
    base = dict(count=3, seed=4, workers=1, supersampling=1, subhalo_profile="tnfw")
    for preset, size, pix in (("hst", 64, 0.05), ("deeplense_model_i", 150, 0.05)):
        dark = sl.generate(sl.StrongLensParams(preset=preset, noise=False, **base))
        lit = sl.generate(sl.StrongLensParams(preset=preset, noise=False, lens_light=True, **base))
        assert lit.shape == (3, size, size) and lit.attrs["pixel_scale"] == pix
        assert np.isfinite(lit.values).all() and int(lit.n_subhalo[1]) > 0
        assert np.isnan(dark.lens_light_mag).all() and (lit.lens_light_mag < 20.01).all()
        assert (lit.sum(("y", "x")) > dark.sum(("y", "x"))).all()  # lens light adds flux
    # the noise is the stated background rms (Poisson adds I/T, small outside the arcs)
    base["count"] = 6
    clean = sl.generate(sl.StrongLensParams(noise=False, **base))
    noisy = sl.generate(sl.StrongLensParams(**base))
    sigma = noisy.background_rms.values
    assert (clean.background_rms == 0).all() and (sigma > 0).all()
    z = (noisy - clean).values / sigma[:, None, None]  # noise in units of the background rms
    faint = clean.values < 0.01 * sigma[:, None, None]
    assert faint.sum() > 7000 and z[faint].std() == pytest.approx(1.0, abs=0.03)  # ~4 std errors
    peak = clean.max(("y", "x")).values / sigma
    np.testing.assert_allclose(peak, 25.0, rtol=1e-6)  # snr = arc peak / background rms


def test_point_mass_einstein_radius_is_the_analytic_formula():
    from astropy import constants, units
    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.Util import constants as lenstronomy_constants

    cosmo = FlatLambdaCDM(
        H0=100 * COSMOLOGY_H, Om0=COSMOLOGY_OMEGA_M, Ob0=COSMOLOGY_OMEGA_B, Tcmb0=0
    )
    z_l, z_s, mass = 0.5, 1.0, np.array([1e6, 1e9, 3e10, 1e12])
    d_l, d_s = cosmo.angular_diameter_distance(z_l), cosmo.angular_diameter_distance(z_s)
    d_ls = cosmo.angular_diameter_distance(z_l, z_s)
    # θ_E² = (4GM/c²) D_ls / (D_l D_s), angular-diameter distances
    theta2 = 4 * constants.G * mass * constants.M_sun / constants.c**2 * d_ls / (d_l * d_s)
    expected = np.sqrt(theta2.decompose().value) * units.rad.to(units.arcsec)
    got = sl.point_mass_theta_e(mass, z_l, z_s)
    # lenstronomy's G (CODATA 2010) and Msun (1.9891e30 kg) differ from astropy's CODATA 2018
    # and IAU 2015 values: GM by 2.8e-4, θ_E by 1.4e-4; with its constants the match is exact
    np.testing.assert_allclose(got, expected, rtol=2e-4)
    gm = lenstronomy_constants.G * lenstronomy_constants.M_sun / (constants.G * constants.M_sun)
    np.testing.assert_allclose(got, expected * np.sqrt(gm.value), rtol=1e-9)
    assert 0.5 < sl.point_mass_theta_e(1e11, z_l, z_s) < 0.55  # ~0.5 arcsec for 10^11 Msun


def test_settings_checks_and_the_registry(tmp_path):
    kind = get_kind("strong_lens")
    assert "strong_lens" in WRITE_KINDS and "strong_lens" not in FIELD_KINDS
    for bad, match in (
        (dict(theta_e_min=1.5, theta_e_max=1.0), "theta_e_min=1.5 must not exceed"),
        (dict(z_lens=1.0, z_source=0.8), "z_source=0.8 must be larger than z_lens"),
        (dict(size=4), "size=4 is out of range"),
        (dict(psf=str(tmp_path / "none.npy")), "psf=.* could not be read"),
    ):
        with pytest.raises(ConfigError, match=match):
            kind.check_settings(sl.StrongLensParams(**bad))
    kernel = np.ones((4, 4))
    np.save(tmp_path / "even.npy", kernel)
    with pytest.raises(ConfigError, match="odd-sized"):
        kind.check_settings(sl.StrongLensParams(psf=str(tmp_path / "even.npy")))
    # a tabulated PSF: a narrow Gaussian kernel keeps the flux of the Gaussian-PSF image
    g = np.exp(-0.5 * (np.arange(-7, 8)[:, None] ** 2 + np.arange(-7, 8) ** 2) / 0.7**2)
    np.save(tmp_path / "psf.npy", g)
    base = dict(count=1, seed=1, noise=False, workers=1, substructure="none")
    tab = kind.generate(sl.StrongLensParams(psf=str(tmp_path / "psf.npy"), **base))
    gauss = kind.generate(sl.StrongLensParams(**base))
    assert math.isnan(tab.attrs["psf_fwhm"]) and tab.attrs["psf"].endswith("psf.npy")
    assert float(tab.sum()) == pytest.approx(float(gauss.sum()), rel=0.01)
    back = kind.settings_from_attrs(dict(gauss.attrs))
    assert back.noise is False and back.psf is None and back.size == 64


def _open(path):
    if path.suffix == ".zarr":
        return xr.open_zarr(path, consolidated=False)
    return xr.open_dataset(path)


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_fields_writes_images_with_coords(tmp_path, capsys, suffix):
    out = tmp_path / f"lens{suffix}"
    argv = ["fields", "--kind", "strong_lens", "--substructure", "cdm", "--preset", "euclid"]
    argv += ["--count", "4", "--seed", "1", "--workers", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    assert "wrote 4 strong_lens samples (sample=4, y=64, x=64; seed 1)" in capsys.readouterr().out
    with _open(out) as ds:
        da = ds["image"].load()
    assert da.dims == ("sample", "y", "x") and da.dtype == np.float32
    assert [str(v) for v in da.substructure.values] == ["cdm"] * 4
    for name in sl.SAMPLE_COORDS:
        assert da[name].dims == ("sample",), name
    assert (da.n_subhalo > 0).all() and np.isnan(da.vortex_mass).all()
    np.testing.assert_allclose(da.x.values, (np.arange(64) - 31.5) * 0.101)
    assert da.x.attrs["units"] == "arcsec" and da.attrs["units"] == "e-/s per pixel"
    a = da.attrs
    assert a["kind"] == "strong_lens" and a["pixel_scale"] == 0.101 and a["preset"] == "euclid"
    assert a["z_lens"] == 0.5 and a["z_source"] == 1.0 and a["snr"] == 25.0
    assert a["psf_fwhm"] == 0.16 and "FlatLambdaCDM" in a["cosmology"] and a["noise"] == 1
    settings = get_kind("strong_lens").settings_from_attrs(dict(a))
    settings.count = 4
    np.testing.assert_array_equal(da.values, sl.generate(settings, progress=False).values)
    assert cli.main(argv) == 2  # exists: refused without --overwrite


def test_dataset_is_balanced_with_a_split(tmp_path, capsys):
    out = tmp_path / "lenses.zarr"
    argv = ["dataset", "--kind", "strong_lens", "--preset", "euclid", "--count", "30"]
    argv += ["--size", "32", "--supersampling", "1", "--chunk", "8", "--out", str(out)]
    assert cli.main(argv) == 0
    assert "wrote dataset of 30 strong_lens samples (24 train, 3 val, 3 test" in (
        capsys.readouterr().out
    )
    from engine.data.store import open_dataset

    da = open_dataset(out).load()
    labels = np.array([str(v) for v in da.substructure.values])
    assert (
        da.shape == (30, 32, 32) and da.attrs["count"] == 30 and da.attrs["kind"] == "strong_lens"
    )
    for split in range(3):
        in_split = labels[da.split.values == split]
        counts = [int((in_split == c).sum()) for c in sl.CLASSES]
        assert counts[0] == counts[1] == counts[2] > 0, (split, counts)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--theta-e-min", "2", "--theta-e-max", "1"], "theta_e_min=2.0 must not exceed"),
        (["--snr", "0"], "snr=0.0 is out of range: allowed 0.1 <= snr"),
        (["--substructure", "wdm"], "substructure='wdm' is not allowed"),
        (["--z-source", "0.2"], "z_source=0.2 must be larger than z_lens=0.5"),
        (["--set", "omega_m=0.3"], "unknown setting 'omega_m'"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, capsys, flags, message):
    out = tmp_path / "bad.zarr"
    assert cli.main(["fields", "--kind", "strong_lens", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not out.exists()


def test_subhalo_fraction_sets_the_projected_mass_fraction():
    """subhalo_fraction = f: over many cdm draws the subhalo mass inside subhalo_radius θ_E is
    f of the SIS mass there (π Σ_crit θ_E R), within 4 standard errors of the sample mean; the
    mean mass of the power law matches a numerical integral (also at slope −2)."""
    from scipy import integrate

    from engine.physics.strong_lens_model import lens_cosmo, mean_power_law_mass

    for slope in (-1.9, -2.0, -1.5):
        lo, hi = np.log(1e6), np.log(1e10)  # ∫ f(m) dm = ∫ f(e^u) e^u du
        num = integrate.quad(lambda u, a=slope: np.exp(u) ** (a + 2), lo, hi)[0]
        den = integrate.quad(lambda u, a=slope: np.exp(u) ** (a + 1), lo, hi)[0]
        assert mean_power_law_mass(1e6, 1e10, slope) == pytest.approx(num / den, rel=1e-6)
    s = sl.StrongLensParams(subhalo_fraction=0.01, subhalo_mass_max=1e9)
    sigma = lens_cosmo(s.z_lens, s.z_source).sigma_crit_angle
    ratios = []
    for i in range(300):
        p = sl.draw_parameters(s, i, substructure="cdm")
        inside = math.pi * sigma * p["theta_e"] * s.subhalo_radius * p["theta_e"]
        ratios.append(p["subhalo_mass_total"] / inside)
    ratios = np.array(ratios)
    se = ratios.std(ddof=1) / math.sqrt(len(ratios))
    assert se < 0.1 * 0.01  # the test resolves a 40 % error in f
    assert abs(ratios.mean() - 0.01) < 4 * se
    default = sl.StrongLensParams()  # subhalo_fraction 0: the mean number is subhalo_mean
    n = [sl.draw_parameters(default, i, substructure="cdm")["n_subhalo"] for i in range(200)]
    assert abs(np.mean(n) - 25.0) < 4 * math.sqrt(25.0 / 200)
