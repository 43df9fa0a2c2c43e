"""The kinds registry: units, family, geometry, theory and DataArray dispatch without name branches."""

import numpy as np
import pytest
import torch

from engine.kinds import FIELD_KINDS, KINDS, get_kind
from engine.params import FIDUCIAL, PARAM_NAMES, ConfigError, CosmologyParams
from engine.physics import lensing, lpt, slabs, stats


def test_fiducial_and_parameter_names():
    assert PARAM_NAMES == ("omega_m", "sigma8")
    assert FIDUCIAL == {"omega_m": 0.3, "sigma8": 0.8}
    assert {n: CosmologyParams.param[n].default for n in PARAM_NAMES} == FIDUCIAL


def test_units_family_and_extent():
    table = {k: (v.family, v.length_unit, v.map_units) for k, v in KINDS.items()}
    assert table == {
        "grf": ("density", "Mpc/h", "density contrast"),
        "lognormal": ("density", "Mpc/h", "density contrast"),
        "2lpt": ("density", "Mpc/h", "density contrast"),
        "pm": ("density", "Mpc/h", "density contrast"),
        "kappa": ("convergence", "arcmin", "convergence"),
        "sky": ("convergence", "", "convergence"),
        "strong_lens": ("strong_lens", "arcsec", "e-/s per pixel"),
    }
    assert FIELD_KINDS == ("grf", "lognormal", "2lpt", "pm", "kappa")
    grf = get_kind("grf").new_settings()
    grf.param.update(box_size=200.0, size=64)
    assert get_kind("grf").extent(grf) == 200.0 and get_kind("grf").pixel_size(grf) == 3.125
    kappa = get_kind("kappa").new_settings()
    kappa.param.update(fov=4.0, size=128)
    assert get_kind("kappa").extent(kappa) == 240.0
    assert get_kind("kappa").pixel_size(kappa) == 240.0 / 128
    assert get_kind("kappa").spectrum_box(kappa) == pytest.approx(np.radians(4.0))
    sky = get_kind("sky")
    for call in (
        lambda: sky.extent(sky.new_settings()),
        lambda: sky.binned_theory(sky.new_settings(), 0.3, 0.8),
        lambda: sky.generate_batch(sky.new_settings(), None, None, None),
    ):
        with pytest.raises(ConfigError, match="kind='sky' has no"):
            call()


def test_binned_theory_dispatches_to_the_physics_modules():
    s = get_kind("2lpt").new_settings()
    s.param.update(size=16, box_size=64.0, thickness=8.0)
    ps = get_kind("2lpt").binned_theory(s, 0.3, 0.8)
    np.testing.assert_array_equal(ps.power, slabs.binned_theory(s, 0.3, 0.8).power)
    k = get_kind("kappa").new_settings()
    k.param.update(size=32, fov=3.0)
    edges = [200.0, 400.0, 800.0]
    ps = get_kind("kappa").binned_theory(k, 0.3, 0.8, edges)
    np.testing.assert_array_equal(ps.power, lensing.binned_theory(k, 0.3, 0.8, edges).power)
    assert get_kind("kappa").power_unit == "sr" and get_kind("grf").k_unit == "h/Mpc"


def test_dataarray_round_trip_through_attrs():
    for name in ("grf", "2lpt", "kappa", "sky"):
        kind = get_kind(name)
        s = kind.new_settings()
        if name == "sky":
            s.param.update(nside=8, count=1, seed=2)
            maps = np.zeros((1, 12 * 8**2))
        else:
            s.param.update(size=16, count=2, seed=2)
            maps = np.zeros((2, 16, 16))
        om, s8 = np.full(len(maps), 0.3), np.full(len(maps), 0.8)
        da = kind.to_dataarray(maps, s, om, s8)
        assert da.attrs["kind"] == name
        back = kind.settings_from_attrs(dict(da.attrs))
        assert type(back) is type(s) and back.seed == 2 and back.kind == name


def test_generate_is_the_module_loop_and_keeps_2lpt_volumes():
    s = lpt.LPTParams(size=16, box_size=64.0, dim=3, count=3, seed=1, noise=0.1)
    da = get_kind("2lpt").generate(s, device="cpu", batch_size=2)
    assert da.dims == ("sample", "z", "y", "x") and da.shape == (3, 16, 16, 16)
    np.testing.assert_array_equal(da.values, lpt.generate(s, device="cpu", batch_size=2).values)
    g = get_kind("grf").new_settings()
    g.param.update(size=16, box_size=64.0, count=3, seed=4)
    da = get_kind("grf").generate(g, device="cpu", omega_m=[0.2, 0.3, 0.4])
    np.testing.assert_array_equal(da.values, slabs.generate(g, omega_m=[0.2, 0.3, 0.4]).values)
    np.testing.assert_array_equal(da["omega_m"], [0.2, 0.3, 0.4])
    # the batch hot path of the first batch is the first maps of generate (same seed)
    gen = torch.Generator().manual_seed(4)
    om = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64)
    s8 = torch.full((3,), 0.8, dtype=torch.float64)
    first = get_kind("grf").generate_batch(g, om, s8, gen, "cpu")
    np.testing.assert_array_equal(first.numpy(), da.values)
    with pytest.raises(ConfigError, match="omega_m=1.5 is out of range"):
        get_kind("grf").generate(g, device="cpu", omega_m=1.5)


def test_gaussian_sigma_is_the_cosmic_variance():
    s = get_kind("grf").new_settings()
    s.param.update(size=16, box_size=64.0)
    ps = slabs.binned_theory(s, 0.3, 0.8)
    expect = ps.power.numpy() * np.sqrt(2 / ps.n_modes.numpy())
    np.testing.assert_allclose(stats.gaussian_sigma(ps).numpy(), expect, rtol=1e-15)
