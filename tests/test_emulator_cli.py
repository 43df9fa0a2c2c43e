"""The emulator verbs end to end: ``train --preset gan_smoke`` (with its end-of-training report),
``sample`` (maps as the training kind's DataArray), ``evaluate`` of a generator on a grid, and
the one-line refusals (parameters outside the box, a GAN given --steps, predict on a generator,
an existing output)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import cli
from engine.physics import slabs


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("emu") / "gan"
    code = cli.main(
        ["train", "--preset", "gan_smoke", "--run-dir", str(run), "--set", "eval_maps=32"]
    )
    assert code == 0
    return run


def test_training_a_generator_writes_its_emulator_report(gan_run):
    report = json.loads((gan_run / "report.json").read_text())
    assert report["task"] == "gan" and report["n_points"] == 4 and report["maps_per_point"] == 8
    assert set(report["targets"]) >= {"power", "pdf_ks", "fid"}
    assert report["means"]["fid_floor"] > 0
    for name in report["figures"].values():
        assert (gan_run / name).is_file()


def test_sample_writes_the_kinds_dataarray_and_is_reproducible(gan_run, tmp_path, capsys):
    args = ["sample", "--checkpoint", str(gan_run), "--omega-m", "0.3", "--sigma8", "0.8"]
    assert cli.main([*args, "--count", "6", "--seed", "3", "--out", str(tmp_path / "a.nc")]) == 0
    assert cli.main([*args, "--count", "6", "--seed", "3", "--out", str(tmp_path / "b.nc")]) == 0
    a, b = slabs.load(tmp_path / "a.nc"), slabs.load(tmp_path / "b.nc")
    assert a.dims == ("sample", "y", "x") and a.shape == (6, 16, 16)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_allclose(a["omega_m"].values, 0.3)
    assert a.attrs["kind"] == "grf" and a.attrs["generator_task"] == "gan"
    assert a.attrs["box_size"] > 0 and a["x"].values[1] > a["x"].values[0]
    # refusals: one line, exit 2, nothing written
    capsys.readouterr()
    assert cli.main([*args, "--count", "2", "--out", str(tmp_path / "a.nc")]) == 2
    assert "already exists" in capsys.readouterr().err
    bad = ["sample", "--checkpoint", str(gan_run), "--omega-m", "0.9", "--sigma8", "0.8"]
    assert cli.main([*bad, "--out", str(tmp_path / "c.nc")]) == 2
    err = capsys.readouterr().err
    assert "omega_m=0.9 is outside the generator's training range" in err
    assert len(err.strip().splitlines()) == 1
    assert cli.main([*args, "--steps", "5", "--out", str(tmp_path / "d.nc")]) == 2
    assert "diffusion models only" in capsys.readouterr().err
    assert cli.main([*args, "--sampler", "dpm", "--out", str(tmp_path / "d.nc")]) == 2
    assert "--sampler applies to diffusion models only" in capsys.readouterr().err
    assert not (tmp_path / "c.nc").exists() and not (tmp_path / "d.nc").exists()


def test_evaluate_and_predict_on_a_generator(gan_run, tmp_path, capsys):
    real = tmp_path / "real.nc"
    base = ["fields", "--from-checkpoint", str(gan_run / "checkpoints" / "best.pt")]
    assert (
        cli.main(
            [*base, "--omega-m", "0.3", "--sigma8", "0.8", "--count", "12", "--out", str(real)]
        )
        == 0
    )
    out = tmp_path / "ev"
    code = cli.main(
        ["evaluate", "--checkpoint", str(gan_run), "--dataset", str(real), "--out", str(out)]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "power" in text and "fid" in text and "1 points × 12 maps" in text
    report = json.loads((out / "report.json").read_text())
    assert report["points"][0]["n_real"] == 12 and report["generator_step"] > 0
    # a dataset of one map per point cannot be a grid
    cont = tmp_path / "cont.nc"
    assert cli.main([*base, "--omega-m", "0.2:0.4", "--count", "8", "--out", str(cont)]) == 0
    capsys.readouterr()
    code = cli.main(
        [
            "evaluate",
            "--checkpoint",
            str(gan_run),
            "--dataset",
            str(cont),
            "--out",
            str(tmp_path / "e2"),
        ]
    )
    assert code == 2 and "at least 4 maps per point" in capsys.readouterr().err
    code = cli.main(
        [
            "predict",
            "--checkpoint",
            str(gan_run),
            "--maps",
            str(real),
            "--out",
            str(tmp_path / "p.csv"),
        ]
    )
    assert code == 2 and "map emulator" in capsys.readouterr().err
