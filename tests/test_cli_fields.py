"""``python -m engine fields``: maps to .zarr / .nc with labelled dims, coords and attrs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from realdata import WMAP

from engine import cli
from engine.physics import slabs
from engine.runs import REPO_ROOT

ARGS = [
    "fields",
    "--kind",
    "lognormal",
    "--omega-m",
    "0.25",
    "--sigma8",
    "0.9",
    "--size",
    "32",
    "--box",
    "128",
    "--thickness",
    "20",
    "--count",
    "3",
    "--seed",
    "5",
    "--device",
    "cpu",
]


def _open(path):
    return (
        xr.open_zarr(path, consolidated=False) if path.suffix == ".zarr" else xr.open_dataset(path)
    )


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_fields_writes_labelled_maps(tmp_path, capsys, suffix):
    out = tmp_path / f"maps{suffix}"
    assert cli.main([*ARGS, "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert (
        summary.count("\n") == 1 and "wrote 3 lognormal samples (sample=3, y=32, x=32;" in summary
    )
    assert str(out) in summary

    with _open(out) as ds:
        da = ds["delta"].load()
    assert da.dims == ("sample", "y", "x") and da.shape == (3, 32, 32)
    assert da.dtype == np.float32 and np.isfinite(da.values).all()
    assert (da.values > -1).all()  # lognormal
    np.testing.assert_allclose(da["x"].values, (np.arange(32) + 0.5) * 4.0)
    np.testing.assert_allclose(da["y"].values, da["x"].values)
    assert da["x"].attrs["units"] == "Mpc/h"
    np.testing.assert_allclose(da["omega_m"].values, 0.25)
    np.testing.assert_allclose(da["sigma8"].values, 0.9)
    attrs = da.attrs
    assert attrs["kind"] == "lognormal" and attrs["box_size"] == 128.0 and attrs["size"] == 32
    assert attrs["thickness"] == 20.0 and attrs["seed"] == 5 and attrs["units"] == "dimensionless"


def test_fields_is_reproducible_from_the_seed(tmp_path, capsys):
    a, b = tmp_path / "a.nc", tmp_path / "b.nc"
    assert cli.main([*ARGS, "--out", str(a)]) == 0
    assert cli.main([*ARGS, "--set", "seed=5", "--out", str(b)]) == 0
    with _open(a) as da, _open(b) as db:
        np.testing.assert_array_equal(da["delta"].values, db["delta"].values)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "maps.txt"], "--out 'maps.txt' must end in .zarr or .nc"),
        (["--out", "no/such/dir/m.nc"], "directory 'no/such/dir' does not exist"),
        (
            ["--out", "m.nc", "--omega-m", "1.5"],
            "omega_m=1.5 is out of range: allowed 0.1 <= omega_m <= 0.9",
        ),
        (["--out", "m.nc", "--kind", "gauss"], "kind='gauss' is not allowed"),
        (["--out", "m.nc", "--set", "size=4"], "size=4 is out of range: allowed 8 <= size <= 4096"),
        (["--out", "m.nc", "--box-size", "3"], "unrecognized arguments: --box-size 3"),
        ([], "the following arguments are required: --out"),
    ],
)
def test_fields_bad_arguments(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["fields", "--size", "16", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_fields_user_error_from_the_real_entry_point(tmp_path):
    """``python -m engine``: a bad value gives exit 2 and exactly one line, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "engine",
        "fields",
        "--omega-m",
        "2",
        "--out",
        str(tmp_path / "x.nc"),
    ]
    bad = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr == "error: omega_m=2.0 is out of range: allowed 0.1 <= omega_m <= 0.9\n"
    assert bad.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, dims",
    [
        (
            [
                "--kind",
                "2lpt",
                "--size",
                "16",
                "--box",
                "128",
                "--thickness",
                "128",
                "--dim",
                "3",
                "--lpt-order",
                "2",
                "--count",
                "2",
                "--seed",
                "1",
            ],
            ("sample", "z", "y", "x"),
        ),
        (
            [
                "--kind",
                "2lpt",
                "--size",
                "16",
                "--box",
                "128",
                "--thickness",
                "20",
                "--dim",
                "2",
                "--lpt-order",
                "1",
                "--count",
                "2",
            ],
            ("sample", "y", "x"),
        ),
        (
            [
                "--kind",
                "kappa",
                "--fov",
                "5",
                "--size",
                "32",
                "--sigma-e",
                "0.26",
                "--ngal",
                "8",
                "--smoothing",
                "10",
                "--count",
                "2",
            ],
            ("sample", "y", "x"),
        ),
    ],
)
def test_fields_other_kinds(tmp_path, capsys, args, dims):
    out = tmp_path / "out.zarr"
    assert cli.main(["fields", *args, "--out", str(out)]) == 0
    da = slabs.load(out)
    assert da.dims == dims and da.attrs["kind"] == args[1]
    assert da.sizes["sample"] == 2


def test_fields_kind_specific_flags(tmp_path, capsys):
    # a flag of another kind is refused, naming it; an unknown kind lists the known ones
    assert (
        cli.main(["fields", "--kind", "kappa", "--box", "3", "--out", str(tmp_path / "k.nc")]) == 2
    )
    assert "--box" in capsys.readouterr().err
    assert cli.main(["fields", "--kind", "nbody", "--out", str(tmp_path / "k.nc")]) == 2
    assert "'2lpt'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_sky_patches_from_real_wmap_map(tmp_path, capsys):
    fits = WMAP / "wmap_band_iqumap_r9_7yr_W_v4_udgraded32.fits"
    if not fits.exists():
        pytest.skip("real WMAP map not available")
    out = tmp_path / "patches.nc"
    argv = [
        "sky",
        "--input",
        str(fits),
        "--patch",
        "0,60",
        "--patch",
        "90,-60",
        "--patch-fov",
        "20",
        "--patch-size",
        "32",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    da = slabs.load(out)
    assert da.shape == (2, 32, 32) and da.attrs["kind"] == "patch"
    assert np.isfinite(da.values).all() and float(np.abs(da).max()) > 0
