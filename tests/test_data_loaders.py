"""Readers of native formats (CAMELS, Quijote, DES, folder), domain transfer and sample files.

Fixtures are tiny files in each native format written here (tmp_path); expected values come from
independent numpy computations or the real CAMELS tables, never from the readers' own output.
"""

from __future__ import annotations

import math
from pathlib import Path

import healpy as hp
import numpy as np
import pytest
import torch

from engine.data import open_spec
from engine.data._common import read_table, split_groups
from engine.data.transfer import domain_gap, match_resolution
from engine.params import ConfigError
from engine.physics.stats import default_edges, power_spectrum
from tests.realdata import CAMELS

CAMELS_NAMES = ["omega_m", "sigma8", "A_SN1", "A_AGN1", "A_SN2", "A_AGN2"]
HEADER = "# Om\tsigma8\tSN1\tAGN1\tSN2\tAGN2\n"


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def write_camels(folder: Path, n_sims: int, size: int = 8, fields=("Mtot",), rows=None):
    """CMD-format files whose map i is filled with i + 1 + small positive noise."""
    rng = np.random.default_rng(0)
    for f in fields:
        base = np.arange(15 * n_sims, dtype=np.float32)[:, None, None] + 1.0
        maps = base + 0.01 * rng.random((15 * n_sims, size, size), dtype=np.float32)
        np.save(folder / f"Maps_{f}_TestSuite_LH_z=0.00.npy", maps.astype(np.float32))
    n_rows = n_sims if rows is None else rows
    table = np.column_stack(
        [0.1 + 0.01 * np.arange(n_rows), 0.6 + 0.002 * np.arange(n_rows)] + [np.ones(n_rows)] * 4
    )
    text = HEADER + "".join(" ".join(f"{v:.5f}" for v in r) + "\n" for r in table)
    (folder / "params_LH_TestSuite.txt").write_text(text)
    return folder / f"Maps_{fields[0]}_TestSuite_LH_z=0.00.npy"


# ---------------------------------------------------------------------------------------------
# CAMELS
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", ["IllustrisTNG", "SIMBA"])
def test_real_camels_tables_parse(suite):
    path = CAMELS / f"params_LH_{suite}.txt"
    names, values = read_table(path, "test")
    assert names == CAMELS_NAMES
    reference = np.loadtxt(path)
    assert values.shape == (1000, 6) == reference.shape
    np.testing.assert_array_equal(values, reference)
    # CAMELS LH ranges (Villaescusa-Navarro et al. 2021): Om 0.1-0.5, sigma8 0.6-1.0
    assert values[:, 0].min() >= 0.1 and values[:, 0].max() <= 0.5
    assert values[:, 1].min() >= 0.6 and values[:, 1].max() <= 1.0


def test_sample_camels_rows_are_the_real_first_rows():
    from engine.data.samples import CAMELS_ROWS

    np.testing.assert_allclose(np.loadtxt(CAMELS / "params_LH_IllustrisTNG.txt")[:2], CAMELS_ROWS)


def test_camels_map_to_row_and_lazy_values(tmp_path):
    target = write_camels(tmp_path, n_sims=3)
    da = open_spec(f"camels:{target}")
    assert da.dims == ("sample", "y", "x") and da.shape == (45, 8, 8)
    table = np.loadtxt(tmp_path / "params_LH_TestSuite.txt")
    rows = np.arange(45) // 15
    np.testing.assert_allclose(da["omega_m"].values, table[rows, 0])
    np.testing.assert_allclose(da["sigma8"].values, table[rows, 1])
    assert {"A_SN1", "A_AGN2"} <= set(da.coords)
    # values of a selection are the file's maps (map i holds i + 1 + noise < 0.01)
    sub = da.isel(sample=[40, 3], x=slice(0, 2)).values
    assert sub.shape == (2, 8, 2)
    np.testing.assert_allclose(sub.mean(axis=(1, 2)), [41.005, 4.005], atol=0.006)
    assert da.attrs["box_size"] == 25.0 and da.attrs["kind"] == "camels"
    np.testing.assert_allclose(da["x"].values, (np.arange(8) + 0.5) * 25 / 8)


def test_camels_fields_log_and_delta(tmp_path):
    target = write_camels(tmp_path, n_sims=2, fields=("Mtot", "HI"))
    da = open_spec(f"camels:{target}?fields=Mtot,HI&log=true")
    assert da.dims == ("sample", "channel", "y", "x") and list(da["channel"].values) == [
        "Mtot",
        "HI",
    ]
    raw = np.load(tmp_path / "Maps_HI_TestSuite_LH_z=0.00.npy")
    lg = np.log10(raw.astype(np.float64))
    # 30 maps <= LOG_SAMPLE_MAPS: the constants are the moments of the whole file
    x = da.isel(channel=1).values.astype(np.float64)
    np.testing.assert_allclose(x, (lg - lg.mean()) / lg.std(), rtol=1e-4, atol=1e-4)
    d = open_spec(f"camels:{target}?delta=true&count=4").values
    np.testing.assert_allclose(
        d, np.load(target)[:4] / np.load(target)[:4].mean(axis=(1, 2), keepdims=True) - 1, atol=1e-5
    )


def test_camels_split_never_shares_a_simulation(tmp_path):
    target = write_camels(tmp_path, n_sims=20, size=8)
    sims = {}
    for split in ("train", "val", "test"):
        da = open_spec(f"camels:{target}?split={split}")
        s = da["simulation"].values
        np.testing.assert_array_equal(da["map_index"].values // 15, s)
        assert all(np.sum(s == k) == 15 for k in np.unique(s))  # whole simulations
        sims[split] = set(s.tolist())
    assert sims["train"].isdisjoint(sims["val"]) and sims["train"].isdisjoint(sims["test"])
    assert sims["val"].isdisjoint(sims["test"])
    assert sims["train"] | sims["val"] | sims["test"] == set(range(20))
    assert (len(sims["train"]), len(sims["val"]), len(sims["test"])) == (16, 2, 2)
    again = split_groups(20, "test")
    assert set(again.tolist()) == sims["test"]  # fixed seed


def test_camels_bad_files(tmp_path):
    target = write_camels(tmp_path, n_sims=2, rows=3)  # 30 maps but 3 rows
    before = listing(tmp_path)
    with pytest.raises(ConfigError) as e:
        open_spec(f"camels:{target}")
    msg = str(e.value)
    assert target.name in msg and "params_LH_TestSuite.txt" in msg and "\n" not in msg
    (tmp_path / "params_LH_TestSuite.txt").unlink()
    with pytest.raises(ConfigError, match="parameter file missing"):
        open_spec(f"camels:{target}")
    write_camels(tmp_path, n_sims=2)
    np.save(target, np.zeros((30, 8), np.float32))
    with pytest.raises(ConfigError, match=r"Maps_Mtot.*\(N, H, W\)"):
        open_spec(f"camels:{target}")
    np.save(target, np.ones((30, 8, 8), np.int32))
    with pytest.raises(ConfigError, match="float"):
        open_spec(f"camels:{target}")
    bad = np.ones((30, 8, 8), np.float32)
    bad[17, 2, 3] = np.nan
    np.save(target, bad)
    da = open_spec(f"camels:{target}")  # lazy: opening reads no map
    assert da.isel(sample=slice(0, 15)).values.shape == (15, 8, 8)  # a good simulation reads
    with pytest.raises(ConfigError, match=r"Maps_Mtot.*map 17 holds NaN"):
        da.load()
    with pytest.raises(ConfigError, match="allowed: fields, params"):
        open_spec(f"camels:{target}?bogus=1")
    (tmp_path / "Maps_Mtot_TestSuite_LH_z=0.00.npy").write_bytes(b"not numpy")
    with pytest.raises(ConfigError, match="not a readable .npy"):
        open_spec(f"camels:{target}")
    assert listing(tmp_path) == before  # nothing written


# ---------------------------------------------------------------------------------------------
# Quijote
# ---------------------------------------------------------------------------------------------


def write_quijote(root: Path, n_sims=2, n=16, density=False):
    rng = np.random.default_rng(1)
    vols = []
    for i in range(n_sims):
        g = np.exp(0.5 * rng.standard_normal((n, n, n)))
        delta = g / g.mean() - 1.0
        vols.append(delta)
        (root / str(i)).mkdir(parents=True)
        values = 3.0 * (1 + delta) if density else delta
        np.save(root / str(i) / "df_m_16_CIC_z=0.npy", values.astype(np.float32))
    rows = "".join(f"{0.2 + 0.1 * i} 0.05 0.7 0.96 {0.7 + 0.05 * i}\n" for i in range(n_sims))
    (root / "latin_hypercube_params.txt").write_text("# Omega_m Omega_b h n_s sigma_8\n" + rows)
    return [v.astype(np.float32) for v in vols]


def test_quijote_slabs_match_numpy_and_have_mean_zero(tmp_path):
    vols = write_quijote(tmp_path / "LH")
    da = open_spec(f"quijote:{tmp_path / 'LH'}?thickness=250&axis=all")
    assert da.shape == (2 * 3 * 4, 16, 16)
    maps = da.values.astype(np.float64)
    for i, (s, a, j) in enumerate(
        zip(da.simulation.values, da.axis.values, da.slab.values, strict=True)
    ):
        v = np.moveaxis(vols[s].astype(np.float64), a, 0)
        np.testing.assert_allclose(maps[i], v[4 * j : 4 * j + 4].mean(axis=0), atol=1e-5)
    for s in range(2):
        for a in range(3):
            sel = (da.simulation.values == s) & (da.axis.values == a)
            assert abs(maps[sel].mean()) < 1e-6
    np.testing.assert_allclose(da.omega_m.values, 0.2 + 0.1 * da.simulation.values)
    np.testing.assert_allclose(da.sigma8.values, 0.7 + 0.05 * da.simulation.values)
    assert da.attrs["box_size"] == 1000.0 and da.attrs["redshift"] == 0.0


def test_quijote_partial_cells_match_lpt_project_slab(tmp_path):
    from engine.physics.lpt import project_slab

    vols = write_quijote(tmp_path / "LH", density=True)  # values=auto reads a density grid
    da = open_spec(f"quijote:{tmp_path / 'LH'}?thickness=100&axis=0&count=3")
    assert da.shape == (3, 16, 16)  # 100 Mpc/h = 1.6 cells of 62.5 Mpc/h
    ref = project_slab(torch.from_numpy(vols[0][None].astype(np.float64)), 100.0, 1000.0, "z")
    np.testing.assert_allclose(da.values[0], ref[0].numpy(), atol=1e-5)


def test_quijote_bad_files(tmp_path):
    root = tmp_path / "LH"
    write_quijote(root)
    before = listing(tmp_path)
    with pytest.raises(ConfigError, match="allowed: thickness, axis"):
        open_spec(f"quijote:{root}?slab=3")
    with pytest.raises(ConfigError, match="axis='3'"):
        open_spec(f"quijote:{root}?axis=3")
    bad = np.zeros((16, 16, 16), np.float32)
    bad[0, 0, 0] = np.inf
    np.save(root / "1" / "df_m_16_CIC_z=0.npy", bad)
    da = open_spec(f"quijote:{root}?thickness=500")
    with pytest.raises(ConfigError, match=r"LH/1/df_m_16_CIC_z=0.npy.*NaN or inf"):
        da.load()
    (root / "latin_hypercube_params.txt").write_text(
        "# Omega_m Omega_b h n_s sigma_8\n0.3 0.05 0.7 0.9 0.8\n"
    )
    with pytest.raises(ConfigError, match=r"folder 1/.*latin_hypercube_params.txt.*1 rows"):
        open_spec(f"quijote:{root}")
    assert listing(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# DES
# ---------------------------------------------------------------------------------------------


def test_des_patches_report_masked_fraction(tmp_path):
    nside = 32
    npix = hp.nside2npix(nside)
    rng = np.random.default_rng(2)
    kappa = 0.01 * rng.standard_normal(npix)
    lon, lat = hp.pix2ang(nside, np.arange(npix), lonlat=True)
    mask = (lat < -60).astype(np.float64)  # a southern polar cap observed
    hp.write_map(str(tmp_path / "kappa.fits"), kappa, dtype=np.float64)
    hp.write_map(str(tmp_path / "mask.fits"), mask, dtype=np.float64)
    spec = f"des:{tmp_path / 'kappa.fits'}?mask={tmp_path / 'mask.fits'}&max_masked=0.4&spacing=6"
    da = open_spec(spec + "&omega_m=0.3&sigma8=0.8", like={"kind": "kappa", "size": 16, "fov": 12})
    assert da.shape[1:] == (16, 16) and da.attrs["fov"] == 12 and da.attrs["kind"] == "des"
    mf = da["masked_fraction"].values
    np.testing.assert_allclose(mf, 1 - da["mask"].values.mean(axis=(1, 2)))
    assert mf.max() <= 0.4 and mf.max() > 0  # the row at -63 deg straddles the cap's edge
    assert np.all(da.values[da["mask"].values == 0] == 0)
    assert np.all(mf[da["lat"].values <= -69] == 0)  # rows inside the cap: fully observed
    assert np.all(da["lat"].values < -60)
    np.testing.assert_array_equal(da["omega_m"].values, 0.3)
    unlabelled = open_spec(spec, like={"kind": "kappa", "size": 16, "fov": 12})
    assert "omega_m" not in unlabelled.coords
    hp.write_map(str(tmp_path / "mask16.fits"), np.ones(hp.nside2npix(16)), dtype=np.float64)
    (tmp_path / "junk.fits").write_bytes(b"SIMPLE = junk" * 10)
    before = listing(tmp_path)
    with pytest.raises(ConfigError, match=r"kappa.fits.*nside"):
        open_spec(f"des:{tmp_path / 'kappa.fits'}?mask={tmp_path / 'mask16.fits'}")
    with pytest.raises(ConfigError, match=r"kappa.fits' has nside 32, expected nside=64"):
        open_spec(f"des:{tmp_path / 'kappa.fits'}?nside=64")
    with pytest.raises(ConfigError, match=r"junk.fits.*not a HEALPix FITS map"):
        open_spec(f"des:{tmp_path / 'junk.fits'}")
    assert listing(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# Folder
# ---------------------------------------------------------------------------------------------


def test_folder_reads_npy_npz_fits_with_labels(tmp_path):
    from astropy.io import fits

    rng = np.random.default_rng(3)
    maps = rng.standard_normal((4, 8, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", maps[0])
    np.savez(tmp_path / "b.npz", m=maps[1])
    fits.PrimaryHDU(maps[2]).writeto(tmp_path / "c.fits")
    np.save(tmp_path / "d.npy", maps[3])
    (tmp_path / "labels.csv").write_text(
        "file,Omega_m,sigma_8,simulation\na.npy,0.2,0.7,0\nb.npz,0.3,0.8,0\nc.fits,0.4,0.9,1\n"
        "d.npy,0.25,0.75,2\n"
    )
    da = open_spec(f"folder:{tmp_path}?box_size=50")
    np.testing.assert_allclose(da.values, maps)
    np.testing.assert_allclose(da["omega_m"].values, [0.2, 0.3, 0.4, 0.25])
    np.testing.assert_allclose(da["sigma8"].values, [0.7, 0.8, 0.9, 0.75])
    assert da.attrs["box_size"] == 50.0
    with pytest.raises(ConfigError, match=r"box_size=MPC_H or \?fov=DEG"):
        match_resolution(open_spec(f"folder:{tmp_path}"), {"kind": "grf", "size": 4})
    (tmp_path / "labels.csv").write_text("name,omega_m\na.npy,0.3\n")
    before = listing(tmp_path)
    with pytest.raises(ConfigError, match=r"labels.csv.*no 'file' column"):
        open_spec(f"folder:{tmp_path}")
    (tmp_path / "labels.csv").write_text("file,omega_m\na.npy,0.3\nmissing.npy,0.2\n")
    with pytest.raises(ConfigError, match=r"missing.npy.*does not exist"):
        open_spec(f"folder:{tmp_path}")
    assert listing(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# Domain transfer
# ---------------------------------------------------------------------------------------------


def power_law_maps(count, n, box, slope=-2.0, seed=0):
    """Gaussian maps with P(k) ∝ k^slope made with numpy FFTs (independent of engine.physics.slabs)."""
    rng = np.random.default_rng(seed)
    k = 2 * np.pi * np.fft.fftfreq(n, d=box / n)
    kk = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    amp = np.where(kk > 0, kk, np.inf) ** (slope / 2)
    white = np.fft.fft2(rng.standard_normal((count, n, n)))
    return np.fft.ifft2(white * amp).real + 3.0


def test_match_resolution_block_average_conserves_mean_and_low_k_power():
    import xarray as xr

    maps = power_law_maps(16, 256, 25.0)
    da = xr.DataArray(
        maps.astype(np.float32),
        dims=("sample", "y", "x"),
        coords={"omega_m": ("sample", np.linspace(0.2, 0.4, 16))},
        attrs={"box_size": 25.0, "kind": "camels"},
    )
    out = match_resolution(da, {"kind": "grf", "size": 64, "box_size": 25.0})
    assert out.shape == (16, 64, 64) and out.attrs["resampling"] == "area-average"
    blocks = maps.reshape(16, 64, 4, 64, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(out.values, blocks, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.values.mean(axis=(1, 2)), maps.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(out["omega_m"].values, da["omega_m"].values)
    edges = default_edges((64, 64), 25.0)
    p_in = power_spectrum(torch.from_numpy(maps), 25.0, edges)
    p_out = power_spectrum(torch.from_numpy(out.values.astype(np.float64)), 25.0, edges)
    low = p_out.k < (np.pi * 64 / 25.0) / 4  # a quarter of the new Nyquist
    ratio = (p_out.power.mean(0) / p_in.power.mean(0))[low].numpy()
    assert low.sum() >= 6 and np.all(np.abs(ratio - 1) < 0.08)


def test_match_resolution_tiles_upsamples_and_refuses():
    import xarray as xr

    maps = np.random.default_rng(4).standard_normal((2, 128, 128)).astype(np.float32)
    da = xr.DataArray(maps, dims=("sample", "y", "x"), attrs={"box_size": 50.0})
    out = match_resolution(da, {"kind": "lognormal", "size": 64, "box_size": 25.0})
    assert out.shape == (8, 64, 64) and out.attrs["resampling"] == "none"
    np.testing.assert_array_equal(out.values[1], maps[0, :64, 64:])  # tile (0, 1)
    np.testing.assert_array_equal(out.values[6], maps[1, 64:, :64])  # tile (1, 0)
    assert list(out["source_sample"].values) == [0] * 4 + [1] * 4
    # band-limited upsampling reproduces a resolved cosine at the new pixel centres
    x = (np.arange(32) + 0.5) * 10.0 / 32
    wave = np.cos(2 * np.pi * 3 * x / 10.0)[None, :] * np.ones((32, 1))
    up = match_resolution(
        xr.DataArray(wave[None], dims=("sample", "y", "x"), attrs={"box_size": 10.0}),
        {"kind": "grf", "size": 64, "box_size": 10.0},
    )
    x2 = (np.arange(64) + 0.5) * 10.0 / 64
    np.testing.assert_allclose(
        up.values[0], np.cos(2 * np.pi * 3 * x2 / 10.0)[None, :] * np.ones((64, 1)), atol=1e-5
    )
    with pytest.raises(ConfigError, match="smaller than the network's 100 Mpc/h"):
        match_resolution(da, {"kind": "grf", "size": 64, "box_size": 100.0})
    kappa = xr.DataArray(maps, dims=("sample", "y", "x"), attrs={"fov": 5.0})
    with pytest.raises(ConfigError, match="in deg but the network was trained on maps in Mpc/h"):
        match_resolution(kappa, {"kind": "grf", "size": 64, "box_size": 25.0})


def test_domain_gap_shapes_and_shared_bins():
    import xarray as xr

    like = {"kind": "grf", "size": 16, "box_size": 100.0, "thickness": 20.0}
    maps = power_law_maps(4, 32, 100.0, seed=5) - 3.0
    target = xr.DataArray(maps, dims=("sample", "y", "x"), attrs={"box_size": 100.0})
    gap = domain_gap(target, like, count=4)
    k = gap["k"]
    assert k.shape == gap["pk_train_mean"].shape == gap["pk_target_std"].shape
    kf = 2 * np.pi / 100.0  # default bins: k_f wide, centred on k_f, 2 k_f, ... up to k_N
    assert k.shape == (8,) and 0.5 * kf < k[0] < 1.5 * kf and np.all(np.diff(k) > 0)
    assert gap["pdf_x"].shape == gap["pdf_train"].shape == gap["pdf_target"].shape == (64,)
    width = gap["pdf_x"][1] - gap["pdf_x"][0]
    assert math.isclose(gap["pdf_train"].sum() * width, 1.0, rel_tol=0.02)
    assert gap["n_train"] == 4 and gap["n_target"] == 4 and gap["k_units"] == "h/Mpc"


# ---------------------------------------------------------------------------------------------
# Sample datasets of the repository
# ---------------------------------------------------------------------------------------------


SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="assets/samples not generated")
def test_repository_samples_open_in_their_native_formats():
    c = open_spec(f"camels:{SAMPLES / 'camels' / 'Maps_Mtot_Sample_LH_z=0.00.npy'}")
    assert c.shape == (30, 64, 64)
    np.testing.assert_allclose(c["omega_m"].values[[0, 15]], [0.309, 0.3026])
    q = open_spec(f"quijote:{SAMPLES / 'quijote' / 'LH'}?thickness=250&axis=2")
    assert q.shape == (12, 32, 32) and abs(float(q.values.mean())) < 1e-5
    d = open_spec(
        f"des:{SAMPLES / 'des' / 'kappa_nside64.fits'}?mask="
        f"{SAMPLES / 'des' / 'mask_nside64.fits'}&fov=10&size=32&count=4"
    )
    assert d.shape == (4, 32, 32)
    f = open_spec(f"folder:{SAMPLES / 'folder'}?box_size=100")
    assert f.shape == (8, 32, 32) and "omega_m" in f.coords
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 3e6


def test_match_resolution_refuses_much_coarser_pixels():
    """Interpolating 31 Mpc/h pixels onto 2 Mpc/h ones cannot restore the small scales."""
    import xarray as xr

    from engine.data.transfer import match_resolution

    da = xr.DataArray(np.zeros((1, 32, 32), np.float32), dims=("sample", "y", "x"))
    da.attrs.update(box_size=1000.0, kind="quijote", source="quijote:x")
    with pytest.raises(ConfigError, match="coarser than the network"):
        match_resolution(da, {"kind": "lognormal", "size": 64, "box_size": 128.0})
    out = match_resolution(da, {"kind": "grf", "size": 64, "box_size": 1000.0})  # 2x: allowed
    assert out.shape == (1, 64, 64)
