"""Generated maps against theory: projection integral, chi^2 over seeded maps, lognormal moments."""

import numpy as np
import pytest
import torch
import xarray as xr
from scipy import stats as sps
from scipy.integrate import simpson

from engine.params import ConfigError, FieldParams
from engine.physics import slabs, stats
from engine.physics.cosmology import ccl_cosmology, linear_power_pyccl


def reference_projection(k, thickness, omega_m=0.3, sigma8=0.8, redshift=0.0):
    """(1/pi) ∫_0^∞ dk_z P_3D(sqrt(k^2+k_z^2)) sinc^2(k_z Δ/2), brute force on pyccl's P_3D."""
    cosmo = ccl_cosmology(omega_m, sigma8)
    period = 2 * np.pi / thickness
    step = min(1e-3, period / 40)
    kz = np.arange(0, 60.0 if thickness < 50 else 8.0, step)
    p3 = linear_power_pyccl(np.sqrt(k**2 + kz**2), cosmo, redshift)
    return simpson(p3 * np.sinc(kz * thickness / 2 / np.pi) ** 2, x=kz) / np.pi


@pytest.mark.parametrize("thickness", [5.0, 25.0, 512.0])
def test_projection_matches_brute_force(thickness):
    settings = FieldParams(thickness=thickness, redshift=0.5)
    k = np.array([0.02, 0.1, 0.3, 1.0, 3.0])
    ours = slabs.projected_power(settings, torch.from_numpy(k), 0.3, 0.8).numpy()
    ref = np.array([reference_projection(x, thickness, redshift=0.5) for x in k])
    np.testing.assert_allclose(ours, ref, rtol=5e-3)


def chi2_pvalue(maps, settings, amplitude=1.0, omega_m=0.3, sigma8=0.8):
    """p-value of the mean binned P(k) of Gaussian maps against theory, Gaussian cosmic variance.

    Var(mean P) = 2 P^2 / (n_modes * n_maps) per bin, bins independent (Gaussian field); bins
    strictly below the Nyquist frequency only.
    """
    ps = stats.power_spectrum(maps, settings.box_size)
    th = slabs.binned_theory(settings, omega_m, sigma8)
    expect = amplitude * th.power
    mean = ps.power.mean(0)
    var = 2 * expect**2 / (ps.n_modes * maps.shape[0])
    use = ps.edges[1:] <= np.pi * settings.size / settings.box_size
    chi2 = float((((mean - expect) ** 2) / var)[use].sum())
    return sps.chi2.sf(chi2, int(use.sum()))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(size=128, box_size=256.0, thickness=10.0),
        dict(size=64, box_size=100.0, thickness=30.0, smoothing=2.0, noise=0.3, redshift=1.0),
    ],
)
def test_grf_spectrum_chi2(overrides):
    settings = FieldParams(kind="grf", **overrides)
    gen = torch.Generator().manual_seed(123)
    n = 48
    maps = slabs.generate_maps(settings, torch.full((n,), 0.3), torch.full((n,), 0.8), gen)
    assert maps.shape == (n, settings.size, settings.size) and maps.dtype == torch.float32
    assert chi2_pvalue(maps, settings) > 1e-3
    # the same test detects a 5% amplitude error in the theory
    assert chi2_pvalue(maps, settings, amplitude=1.05) < 1e-6
    assert chi2_pvalue(maps, settings, amplitude=0.95) < 1e-6


def test_grf_detects_wrong_cosmology():
    settings = FieldParams(kind="grf", size=128, box_size=256.0, thickness=10.0)
    gen = torch.Generator().manual_seed(7)
    maps = slabs.generate_maps(settings, torch.full((32,), 0.3), torch.full((32,), 0.8), gen)
    assert chi2_pvalue(maps, settings) > 1e-3
    assert chi2_pvalue(maps, settings, omega_m=0.33) < 1e-6


def lognormal_maps(n=64, seed=5):
    settings = FieldParams(kind="lognormal", size=64, box_size=256.0, thickness=40.0)
    gen = torch.Generator().manual_seed(seed)
    maps = slabs.generate_maps(settings, torch.full((n,), 0.3), torch.full((n,), 0.8), gen)
    return settings, maps.to(torch.float64)


def test_lognormal_spectrum_matches_target():
    """Mean spectrum vs target, chi^2 with the map-to-map variance (non-Gaussian covariance)."""
    settings, maps = lognormal_maps()
    ps = stats.power_spectrum(maps, settings.box_size)
    th = slabs.binned_theory(settings, 0.3, 0.8).power
    use = ps.edges[1:] <= np.pi * settings.size / settings.box_size
    mean = ps.power.mean(0)
    err2 = ps.power.var(0) / maps.shape[0]
    chi2 = float((((mean - th) ** 2) / err2)[use].sum())
    assert sps.chi2.sf(chi2, int(use.sum())) > 1e-3
    chi2_bad = float((((mean - 1.1 * th) ** 2) / err2)[use].sum())
    assert sps.chi2.sf(chi2_bad, int(use.sum())) < 1e-6


def test_lognormal_one_point_moments():
    settings, maps = lognormal_maps()
    assert float(maps.min()) > -1.0
    # target pixel variance from the spectrum, sigma^2 = sum_k P / V (engine.physics.stats conventions)
    var_target = float(slabs.map_scale(settings)) ** 2
    per_map_var = maps.var(dim=(1, 2))
    assert float(per_map_var.mean()) == pytest.approx(
        var_target, abs=4 * float(per_map_var.std()) / np.sqrt(len(maps))
    )
    per_map_mean = maps.mean(dim=(1, 2))
    assert abs(float(per_map_mean.mean())) < 4 * float(per_map_mean.std()) / np.sqrt(len(maps))
    # lognormal skewness (e^{s^2} + 2) sqrt(e^{s^2} - 1), s^2 = ln(1 + var)
    s2 = np.log1p(var_target)
    skew_target = (np.exp(s2) + 2) * np.sqrt(np.exp(s2) - 1)
    skew = torch.tensor([sps.skew(m.reshape(-1).numpy()) for m in maps])
    assert float(skew.mean()) == pytest.approx(
        skew_target, abs=4 * float(skew.std()) / np.sqrt(len(maps))
    )
    # and a Gaussian field with the same spectrum is not skewed this way
    assert skew_target > 0.5


def test_sigma8_scales_amplitude_and_same_seed_same_maps():
    settings = FieldParams(kind="grf", size=64, count=3, seed=11)
    a = slabs.generate(settings, sigma8=0.8, device="cpu")
    b = slabs.generate(settings, sigma8=0.4, device="cpu")
    c = slabs.generate(settings, sigma8=0.8, device="cpu")
    np.testing.assert_array_equal(a.values, c.values)
    np.testing.assert_allclose(b.values, 0.5 * a.values, rtol=1e-4, atol=1e-6)
    d = slabs.generate(FieldParams(kind="grf", size=64, count=3, seed=12), device="cpu")
    assert not np.allclose(a.values, d.values)


def test_grf_map_depends_on_its_own_cosmology_and_settings_only():
    """Map b of a batch is the generator's noise for slot b times its own cosmology's amplitude:
    the cached one-cosmology path and the per-map path agree, and changed settings or parameters
    are never served a cached amplitude."""

    def maps(omega_m, **overrides):
        settings = FieldParams(
            **{**dict(kind="grf", size=32, box_size=64.0, thickness=10.0), **overrides}
        )
        om = torch.tensor(omega_m)
        return slabs.generate_maps(
            settings, om, torch.full_like(om, 0.8), torch.Generator().manual_seed(4)
        )

    mixed = maps([0.3, 0.4])
    torch.testing.assert_close(mixed[0], maps([0.3, 0.3])[0])
    torch.testing.assert_close(mixed[1], maps([0.4, 0.4])[1])
    torch.testing.assert_close(maps([0.3, 0.3]), maps([0.3, 0.3]), rtol=0, atol=0)
    plain = maps([0.3, 0.3])
    for overrides in (dict(smoothing=2.0), dict(thickness=20.0), dict(redshift=1.0)):
        assert not torch.allclose(maps([0.3, 0.3], **overrides), plain)
    assert not torch.allclose(maps([0.31, 0.31]), plain)


def test_dataarray_schema_and_roundtrip(tmp_path):
    settings = FieldParams(
        kind="lognormal", size=32, box_size=50.0, count=4, smoothing=1.0, noise=0.1
    )
    da = slabs.generate(settings, omega_m=[0.2, 0.3, 0.4, 0.5], device="cpu")
    assert da.dims == ("sample", "y", "x") and da.shape == (4, 32, 32)
    assert da.dtype == np.float32
    np.testing.assert_allclose(da.x.values, (np.arange(32) + 0.5) * 50.0 / 32)
    assert da.x.attrs["units"] == "Mpc/h"
    np.testing.assert_allclose(da.omega_m.values, [0.2, 0.3, 0.4, 0.5])
    np.testing.assert_allclose(da.sigma8.values, 0.8)
    for key in (
        "omega_b",
        "h",
        "n_s",
        "redshift",
        "box_size",
        "thickness",
        "smoothing",
        "noise",
        "transfer_function",
        "units",
        "kind",
        "seed",
    ):
        assert key in da.attrs
    for suffix in (".zarr", ".nc"):
        path = slabs.save(da, tmp_path / f"maps{suffix}")
        back = slabs.load(path)
        np.testing.assert_array_equal(back.values, da.values)
        assert slabs.settings_from_attrs(back.attrs).smoothing == 1.0
    # overwriting a .zarr store is atomic and leaves no temporary directories behind
    slabs.save(da, tmp_path / "maps.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.nc", "maps.zarr"]


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(
        ConfigError, match=r"omega_m=1.5 is out of range: allowed 0.1 <= omega_m <= 0.9"
    ):
        slabs.generate(FieldParams(size=16, count=2), omega_m=1.5)
    with pytest.raises(ConfigError, match="must end in .zarr or .nc"):
        slabs.save(xr.DataArray(np.zeros((1, 2, 2))), tmp_path / "maps.npy")
    with pytest.raises(ConfigError, match="pixel size"):
        slabs.generate(FieldParams(size=4096, box_size=10.0, count=1))
    assert not list(tmp_path.iterdir())
