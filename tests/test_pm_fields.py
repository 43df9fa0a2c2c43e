"""The two-channel PM kind and several slabs per simulation: the velocity divergence θ against
linear theory (pyccl) and its correlation with δ, nonlinear decorrelation at z = 0, the unchanged
single-channel output, slabs of one simulation, datasets split by simulation, the CLI."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as sps
from test_lpt import deconvolved_power, one_line, pyccl_binned

from engine import cli
from engine.data import store
from engine.data.sources import LabelledMaps
from engine.kinds import get_kind
from engine.params import ConfigError, set_values
from engine.physics import mesh, pm, slabs, stats

OM, S8 = 0.3, 0.8


def volumes(count, seed, **overrides):
    """δ and θ volumes (count, 2, N, N, N) float64 at the fiducial cosmology, and the settings."""
    kw = {"dim": 3, "fields": "delta,theta", "count": count, "seed": seed, **overrides}
    settings = pm.PMParams(**kw)
    vols = pm.generate(settings, device="cpu", progress=False).values
    return settings, torch.from_numpy(vols).double()


def correlation(a, b, box, edges):
    """Cross-correlation coefficient r(k) = P_ab / √(P_aa P_bb) of the summed spectra, and the
    ratio P_ab / P_aa (θ's transfer function on δ)."""
    paa = stats.power_spectrum(a, box, edges).power.mean(0)
    pbb = stats.power_spectrum(b, box, edges).power.mean(0)
    pab = stats.cross_spectrum(a, b, box, edges).power.mean(0)
    return (pab / (paa * pbb).sqrt()).numpy(), (pab / paa).numpy(), (pbb / paa).numpy()


# ---------------------------------------------------------------------------------------------
# (a) linear theory and (b) nonlinear decorrelation
# ---------------------------------------------------------------------------------------------


def test_theta_follows_linear_theory_and_delta_at_high_redshift():
    """z = 2, 32³ particles in 250 Mpc/h (cells of 7.8 Mpc/h, as the δ test of test_pm.py),
    force mesh 64³, 5 steps, 16 seeded volumes. In linear theory θ = −∇·[(1+δ)v]/(aHf) = δ, so

    * the mean CIC-deconvolved P_θ(k) is D(z)² P_lin from pyccl for k ≤ k_N/4: χ² with Gaussian
      cosmic variance 2P²/(n_modes n_vol), as for δ (measured χ² = 4.1 for 3 bins, p = 0.25;
      δ of the same volumes 5.2, p = 0.16); the same test rejects a 15 % amplitude error
      (p = 1e-8 and 6e-6);
    * θ's transfer function on δ, P_δθ / P_δδ (cosmic variance cancels), is 1 within 1.5 %
      there (measured 0.998, 1.002, 1.001): it checks the units of v = H0 p/a and the factor a H f, e.g.
      f(z=2) = 0.97 alone would be 3 % off;
    * the correlation r(k) = P_δθ / √(P_δδ P_θθ) is > 0.98 (measured 0.9997, 0.998, 0.995)."""
    settings, vols = volumes(
        16, seed=0, size=32, box_size=250.0, redshift=2.0, mesh_ratio=2, steps=5
    )
    n, box = settings.size, settings.box_size
    edges = stats.default_edges((n,) * 3, box)
    edges = edges[edges <= math.pi * n / box / 4 + 1e-12]
    theory = pyccl_binned((n,) * 3, box, edges, settings.redshift)
    ps = deconvolved_power(vols[:, 1], box, edges)
    mean = ps.power.mean(0)

    def pvalue(amplitude):
        expect = amplitude * theory
        chi2 = float((((mean - expect) ** 2) / (2 * expect**2 / (ps.n_modes * len(vols)))).sum())
        return sps.chi2.sf(chi2, len(theory))

    assert pvalue(1.0) > 1e-2
    assert pvalue(1.15) < 1e-3 and pvalue(0.85) < 1e-3
    r, transfer, _ = correlation(vols[:, 0], vols[:, 1], box, edges)
    np.testing.assert_allclose(transfer, 1.0, atol=0.015)
    assert np.all(r > 0.98), r


def test_theta_decorrelates_from_delta_at_small_scales_at_z0():
    """z = 0, 32³ particles in 128 Mpc/h, 10 steps: r(k) stays > 0.9 in the two lowest bins
    (measured 0.997, 0.947) but drops well below 1 at k ≥ k_N/2 (measured 0.68 down to
    0.37; nonlinear mode coupling and virial motions), where P_θ > P_δ (θ = ∂δ/∂ln D and
    nonlinear δ grows faster than D; measured P_θ/P_δ 1.9 at k_N/4 rising to 11 at k_N)."""
    settings, vols = volumes(2, seed=1, size=32, box_size=128.0, redshift=0.0, steps=10)
    n, box = settings.size, settings.box_size
    edges = stats.default_edges((n,) * 3, box)
    k = stats.power_spectrum(vols[:1, 0], box, edges).k.numpy()
    kn = math.pi * n / box
    r, _, ratio = correlation(vols[:, 0], vols[:, 1], box, edges)
    assert np.all(r[:2] > 0.9), r
    assert np.all(r[k >= kn / 2] < 0.8) and np.all(r < 1.0), r
    assert np.all(ratio[k >= kn / 4] > 1.1), ratio
    # θ is a divergence: no mean; δ keeps its mass
    assert abs(float(vols[:, 1].mean())) < 1e-5
    np.testing.assert_allclose((1 + vols[:, 0]).sum((1, 2, 3)).numpy(), n**3, rtol=1e-6)


def test_scaled_velocity_is_the_linear_displacement():
    """u = p / (a² E f) is the displacement D Ψ_0 for the linear momenta p = G_f Ψ_0 (FastPM)."""
    om = np.array([0.2, 0.45])
    psi0 = torch.randn((2, 3, 4, 4, 4), generator=torch.Generator().manual_seed(0))

    def per(x):
        return torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 1, 1, 1)

    for a in (0.25, 1.0):
        p = psi0 * per(pm.momentum_growth(a, om))
        expect = psi0 * per(pm.growth_d1(a, om))
        np.testing.assert_allclose(pm.scaled_velocity(p, om, a), expect, rtol=1e-5, atol=1e-6)


def test_momentum_painting_of_lattice_particles_and_its_divergence():
    """Particles on the lattice paint their velocity exactly (CIC weight 1 at their own cell), so
    θ of a small plane-wave velocity u = A sin(k q) x̂ is −A k cos(k q): −∇·u, exactly."""
    n, box, mode, amp = 16, 32.0, 2, 0.1
    q = (torch.arange(n, dtype=torch.float64) + 0.5) * box / n
    kx = 2 * math.pi * mode / box
    u = torch.zeros((1, 3, n, n, n))
    u[0, 2] = (amp * torch.sin(kx * q)).reshape(1, 1, n).float()
    psi = torch.zeros((1, 3, n, n, n))
    painted = mesh.lattice_paint(psi, box, u)
    np.testing.assert_allclose(painted.numpy(), u.numpy(), atol=1e-7)
    theta = pm.velocity_divergence(psi, u, box)[0].double()
    expect = (-amp * kx * torch.cos(kx * q)).reshape(1, 1, n).expand(n, n, n)
    np.testing.assert_allclose(theta.numpy(), expect.numpy(), atol=1e-6)
    with pytest.raises(ConfigError, match="weights must have shape") as e:
        mesh.lattice_paint(psi, box, u[:, :, :4])
    one_line(e)


# ---------------------------------------------------------------------------------------------
# (c) the single-channel output is unchanged; (d) reproducibility and the boundary
# ---------------------------------------------------------------------------------------------

SMALL = dict(size=16, box_size=64.0, thickness=8.0, steps=3)


@pytest.mark.parametrize("extra", [{}, {"noise": 0.3, "smoothing": 2.0, "axis": "y"}, {"dim": 3}])
def test_delta_alone_is_unchanged_and_is_the_first_channel(extra):
    """fields="delta" (the default) gives exactly the maps of the previous pipeline (PM volumes,
    slab projection, smoothing, noise from the same generator), and the δ channel of
    "delta,theta" is the same maps, bit for bit, over several batches (noise goes to δ only)."""
    kw = {**SMALL, "count": 5, "seed": 3, **extra}
    default = pm.generate(pm.PMParams(**kw), device="cpu", batch_size=2, progress=False)
    explicit = pm.generate(pm.PMParams(**kw, fields="delta"), device="cpu", batch_size=2)
    np.testing.assert_array_equal(default.values, explicit.values)
    assert default.dims == (
        ("sample", "y", "x") if "dim" not in extra else ("sample", "z", "y", "x")
    )
    assert "slabs" in default.attrs and "simulation" not in default.coords
    # the previous pipeline from its public pieces
    s = pm.PMParams(**kw)
    gen = torch.Generator().manual_seed(3)
    ref = []
    for sl in (slice(0, 2), slice(2, 4), slice(4, 5)):
        size = (sl.stop - sl.start,)
        om, s8 = (
            torch.full(size, OM, dtype=torch.float64),
            torch.full(size, S8, dtype=torch.float64),
        )
        out = pm.generate_volumes(s, om, s8, gen)
        if s.dim == 2:
            out = mesh.project_slab(out, s.thickness, s.box_size, s.axis)
        if s.smoothing > 0:
            out = mesh.gaussian_smooth(out, s.smoothing, s.box_size, s.dim)
        if s.noise > 0:
            out = out + s.noise * torch.randn(out.shape, generator=gen)
        ref.append(out.numpy())
    np.testing.assert_array_equal(default.values, np.concatenate(ref))
    two = pm.generate(pm.PMParams(**kw, fields="delta,theta"), device="cpu", batch_size=2)
    np.testing.assert_array_equal(two.sel(channel="delta").values, default.values)
    assert not np.allclose(two.sel(channel="theta").values, default.values)


def test_two_channel_dataarray_schema_and_reproducibility(tmp_path):
    s = pm.PMParams(**SMALL, count=3, seed=9, fields="delta,theta")
    a = pm.generate(s, omega_m=[0.2, 0.3, 0.4], device="cpu")
    b = get_kind("pm").generate(s, omega_m=[0.2, 0.3, 0.4], device="cpu")
    np.testing.assert_array_equal(a.values, b.values)
    c = pm.generate(pm.PMParams(**SMALL, count=3, seed=10, fields="delta,theta"), device="cpu")
    assert not np.allclose(a.values, c.values)
    assert a.name == "maps" and a.dims == ("sample", "channel", "y", "x")
    assert a.shape == (3, 2, 16, 16) and a.dtype == np.float32
    assert list(a["channel"].values) == ["delta", "theta"]
    assert a.attrs["fields"] == "delta,theta" and a.attrs["kind"] == "pm"
    assert a.attrs["channel_units"] == "dimensionless,dimensionless"
    assert "velocity divergence theta" in a.attrs["long_name"]
    np.testing.assert_array_equal(a["omega_m"].values, [0.2, 0.3, 0.4])
    batch = pm.generate_batch(
        s, torch.full((2,), OM), torch.full((2,), S8), torch.Generator().manual_seed(0)
    )
    assert batch.shape == (2, 2, 16, 16)
    vol = pm.generate(pm.PMParams(**SMALL, count=1, dim=3, fields="delta,theta"), device="cpu")
    assert vol.dims == ("sample", "channel", "z", "y", "x") and vol.shape == (1, 2, 16, 16, 16)
    for path in (tmp_path / "pm2.nc", tmp_path / "pm2.zarr"):
        back = slabs.load(slabs.save(a, path))
        np.testing.assert_array_equal(back.values, a.values)
        assert list(back["channel"].values) == ["delta", "theta"]
        settings = get_kind("pm").settings_from_attrs(dict(back.attrs))
        assert settings.fields == "delta,theta" and settings.slabs == 1


# ---------------------------------------------------------------------------------------------
# Several slabs per simulation
# ---------------------------------------------------------------------------------------------


def test_slabs_of_a_simulation_are_slabs_of_its_volume():
    """slabs=4 of thickness L/4: slab k of simulation b is the projection of [kL/4, (k+1)L/4)
    of the volume b made from the same seed; slab 0 is the slabs=1 map; the four slabs tile the
    box, so their mean is the volume mean (0 for δ and θ); they share parameters."""
    kw = {**SMALL, "thickness": 16.0, "seed": 5, "fields": "delta,theta"}
    maps = pm.generate(pm.PMParams(**kw, count=8, slabs=4), omega_m=[0.25] * 4 + [0.35] * 4)
    assert maps.shape == (8, 2, 16, 16)
    np.testing.assert_array_equal(maps["simulation"].values, [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(maps["slab"].values, [0, 1, 2, 3] * 2)
    np.testing.assert_allclose(maps["slab_start"].values, [0.0, 16.0, 32.0, 48.0] * 2)
    assert maps.attrs["slabs"] == 4
    vols = pm.generate(pm.PMParams(**kw, count=2, dim=3), omega_m=[0.25, 0.35], device="cpu")
    for b in range(2):
        for k in range(4):
            for c in range(2):
                ref = mesh.project_slab(
                    torch.from_numpy(vols.values[b : b + 1, c]), 16.0, 64.0, "z", 16.0 * k
                )[0]
                got = maps.values[4 * b + k, c]
                np.testing.assert_allclose(got, ref.numpy(), rtol=1e-6, atol=1e-6)
        tiled = maps.values[4 * b : 4 * b + 4].astype(np.float64).mean((0, 2, 3))
        np.testing.assert_allclose(tiled, 0.0, atol=1e-5)
    assert not np.allclose(maps.values[0], maps.values[1])
    single = pm.generate(pm.PMParams(**kw, count=2), omega_m=[0.25, 0.35], device="cpu")
    np.testing.assert_array_equal(single.values, maps.values[[0, 4]])
    # count need not be a multiple of slabs: the last simulation gives fewer maps
    part = pm.generate(pm.PMParams(**kw, count=6, slabs=4), omega_m=[0.25] * 4 + [0.35] * 2)
    np.testing.assert_array_equal(part.values, maps.values[:6])


def test_bad_slab_settings_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"slabs=5 slabs of thickness=16 .*allowed slabs <= 4"):
        pm.generate(pm.PMParams(**{**SMALL, "thickness": 16.0}, slabs=5), device="cpu")
    with pytest.raises(ConfigError, match=r"slabs=2 needs dim=2") as e:
        get_kind("pm").check_settings(pm.PMParams(**SMALL, slabs=2, dim=3))
    one_line(e)
    with pytest.raises(ConfigError, match=r"slabs=0 is out of range") as e:
        set_values(pm.PMParams(), {"slabs": 0})
    one_line(e)
    with pytest.raises(ConfigError, match=r"fields='theta' is not allowed") as e:
        set_values(pm.PMParams(), {"fields": "theta"})
    one_line(e)
    with pytest.raises(ConfigError, match=r"share one omega_m") as e:
        pm.generate(pm.PMParams(**SMALL, count=4, slabs=2), omega_m=[0.2, 0.3, 0.3, 0.3])
    one_line(e)
    with pytest.raises(ConfigError, match=r"slab start=60 Mpc/h is out of range") as e:
        mesh.project_slab(torch.zeros(1, 4, 4, 4), 8.0, 64.0, "z", 60.0)
    one_line(e)


def test_dataset_keeps_each_simulation_in_one_split_and_is_read_with_two_channels(tmp_path):
    """``python -m engine dataset --kind pm --fields delta,theta --slabs 4``: 48 maps of 12
    simulations in chunks of 6 maps (rounded up to 8, two simulations), global simulation ids,
    one (Ω_m, σ8) and one split per simulation; LabelledMaps reads 2 channels."""
    out = tmp_path / "pm.zarr"
    argv = [
        "dataset", "--kind", "pm", "--fields", "delta,theta", "--slabs", "4",
        "--size", "8", "--box", "32", "--thickness", "8", "--steps", "2",
        "--omega-m", "0.2:0.4", "--sigma8", "0.7:0.9", "--count", "48", "--chunk", "6",
        "--split", "0.5,0.25,0.25", "--seed", "2", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    da = store.open_dataset(out)
    assert da.dims == ("sample", "channel", "y", "x") and da.shape == (48, 2, 8, 8)
    assert da.attrs["chunk"] == 8 and da.attrs["slabs"] == 4
    sim = da["simulation"].values
    np.testing.assert_array_equal(sim, np.repeat(np.arange(12), 4))
    np.testing.assert_array_equal(da["slab"].values, np.tile(np.arange(4), 12))
    for name in ("omega_m", "sigma8", "split"):
        per_sim = da[name].values.reshape(12, 4)
        assert np.all(per_sim == per_sim[:, :1]), name
    assert len(np.unique(da["omega_m"].values)) == 12
    np.testing.assert_array_equal(np.bincount(da["split"].values.reshape(12, 4)[:, 0]), [6, 3, 3])
    source = LabelledMaps(str(out))
    assert source.channels == 2 and source.names == ("omega_m", "sigma8")
    maps, theta = source.split("train")
    assert maps.shape == (24, 2, 8, 8) and theta.shape == (24, 2)
    assert isinstance(source.scale, list) and len(source.scale) == 2


def test_fields_verb_writes_slabs_with_global_simulation_ids(tmp_path, capsys):
    """``fields --kind pm --fields delta,theta --slabs 4``: the flags come from PMParams; the
    parameters are drawn per simulation; a .zarr in chunks equals the .nc made in one call."""
    base = [
        "fields", "--kind", "pm", "--fields", "delta,theta", "--slabs", "4", "--size", "8",
        "--box", "32", "--thickness", "8", "--steps", "2", "--omega-m", "0.2:0.4",
        "--count", "10", "--seed", "1", "--device", "cpu",
    ]  # fmt: skip
    assert cli.main([*base, "--out", str(tmp_path / "a.nc")]) == 0
    a = slabs.load(tmp_path / "a.nc")
    assert a.shape == (10, 2, 8, 8)
    np.testing.assert_array_equal(a["simulation"].values, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    om = a["omega_m"].values
    assert om[0] == om[3] != om[4] == om[7] != om[8] == om[9]
    with pytest.raises(SystemExit):
        cli.main(["fields", "--kind", "pm", "--help"])
    text = capsys.readouterr().out
    assert "--fields" in text and "--slabs INT" in text


def test_a_fields_file_of_slabs_is_split_by_simulation(tmp_path):
    """A ``fields`` output has no split: a training reader splits it by its ``simulation``
    coord, so the slabs of one simulation never sit in two splits."""
    out = tmp_path / "s.zarr"
    args = [
        "fields", "--kind", "pm", "--slabs", "4", "--size", "8", "--box", "32",
        "--thickness", "8", "--steps", "1", "--omega-m", "0.2:0.4", "--sigma8", "0.7:0.9",
        "--count", "80", "--seed", "2", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    assert cli.main(args) == 0
    src = LabelledMaps(str(out))
    sims = {}
    for name in ("train", "val", "test"):
        da = src._read(name)
        sims[name] = set(da["simulation"].values.tolist())
        assert da.sizes["sample"] == 4 * len(sims[name])  # whole simulations only
    assert not (sims["train"] & sims["val"]) and not (sims["train"] & sims["test"])
    assert not (sims["val"] & sims["test"])
    assert len(sims["train"] | sims["val"] | sims["test"]) == 20


def test_emulator_grid_is_a_reproducible_test_split(tmp_path, monkeypatch):
    """benchmarks.emulator_data.write_grid: every grid point's maps from its own seed, global
    simulation ids, one split (test), readable as a dataset spec; same seed ⇒ same maps."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    from benchmarks.emulator_data import emulator_settings, write_grid
    from engine.data import open_spec

    small = emulator_settings(size=8, box_size=32.0, thickness=4.0, slabs=4, steps=2)
    kw = dict(omega_m=(0.2, 0.4), sigma8=(0.7, 0.9), sims=2, settings=small)
    a = write_grid(tmp_path / "a.zarr", seed=7, **kw)
    b = write_grid(tmp_path / "b.zarr", seed=7, **kw)
    c = write_grid(tmp_path / "c.zarr", seed=8, **kw)
    da, db, dc = (store.open_dataset(p) for p in (a, b, c))
    np.testing.assert_array_equal(da.values, db.values)
    assert not np.allclose(da.values, dc.values)
    assert da.shape == (32, 2, 8, 8) and da.dims == ("sample", "channel", "y", "x")
    np.testing.assert_array_equal(da["simulation"].values, np.repeat(np.arange(8), 4))
    np.testing.assert_array_equal(da["omega_m"].values, np.repeat([0.2, 0.2, 0.4, 0.4], 8))
    np.testing.assert_array_equal(da["sigma8"].values, np.tile(np.repeat([0.7, 0.9], 8), 2))
    assert np.all(da["split"].values == 2) and da.attrs["omega_m_range"] == [0.1, 0.5]
    assert open_spec(f"{a}?split=test").sizes["sample"] == 32
    with pytest.raises(ConfigError, match="already exists|exists") as e:
        write_grid(a, seed=7, **kw)
    one_line(e)
