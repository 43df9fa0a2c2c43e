"""On-disk datasets (``python -m engine dataset``), parameter ranges, and training on a dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from engine import cli
from engine.data import store
from engine.data.sources import LabelledMaps
from engine.kinds import Kind
from engine.params import ConfigError, FieldParams
from engine.runs import RunDir
from engine.tasks.regression import Regression as ParameterRegression
from engine.train.loop import Trainer
from engine.train.settings import resolve_params

#: A tiny grf dataset: 12 maps of 16², chunks of 5, split 6/3/3.
DATASET_ARGS = [
    "dataset",
    "--kind",
    "grf",
    "--omega-m",
    "0.2:0.4",
    "--sigma8",
    "0.7:0.9",
    "--size",
    "16",
    "--count",
    "12",
    "--chunk",
    "5",
    "--split",
    "0.5,0.25,0.25",
    "--seed",
    "4",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "d.zarr"
    assert cli.main([*DATASET_ARGS, "--out", str(out)]) == 0
    return out


def test_ranges_are_parsed_once_for_both_verbs():
    rest, ranges = store.pop_ranges(
        FieldParams, {"omega_m": "0.1:0.5", "sigma8": [0.6, 1.0], "size": "16", "noise": 0.1}
    )
    assert rest == {"size": "16", "noise": 0.1}
    assert ranges == {"omega_m": (0.1, 0.5), "sigma8": (0.6, 1.0)}
    assert store.pop_ranges(FieldParams, {"omega_m": 0.3}) == ({"omega_m": 0.3}, {})
    for value, message in [
        ("0.5:0.1", "needs LO < HI"),
        ("0.1:0.2:0.3", "must be a number or a range LO:HI"),
        ("a:b", "must be a number or a range LO:HI"),
        ("0.05:0.5", "omega_m=0.05 is out of range: allowed 0.1 <= omega_m <= 0.9"),
    ]:
        with pytest.raises(ConfigError, match=message):
            store.pop_ranges(FieldParams, {"omega_m": value})


def test_parameters_and_split_are_fixed_by_the_seed():
    s = FieldParams(omega_m=0.3, sigma8=0.8)
    a = store.draw_parameters(s, {"omega_m": (0.1, 0.5)}, 1000, 7)
    b = store.draw_parameters(s, {"omega_m": (0.1, 0.5)}, 1000, 7)
    np.testing.assert_array_equal(a["omega_m"], b["omega_m"])
    assert 0.1 <= a["omega_m"].min() and a["omega_m"].max() < 0.5
    assert abs(a["omega_m"].mean() - 0.3) < 0.01  # uniform: mean 0.3, std 0.115/sqrt(1000)
    assert (a["sigma8"] == 0.8).all()
    labels = store.split_labels(10, (0.8, 0.1, 0.1), 3)
    assert np.bincount(labels).tolist() == [8, 1, 1]
    np.testing.assert_array_equal(labels, store.split_labels(10, (0.8, 0.1, 0.1), 3))
    assert not np.array_equal(labels, store.split_labels(10, (0.8, 0.1, 0.1), 4))
    for bad in ("0.8,0.1", "0.8,0.3,0.1", "1,-0.5,0.5", "a,b,c"):
        with pytest.raises(ConfigError, match="--split"):
            store.parse_split(bad)


def test_dataset_verb_writes_a_split_zarr(dataset_path, tmp_path, capsys):
    with xr.open_zarr(dataset_path, consolidated=False) as ds:
        da = ds["delta"].load()
    assert da.dims == ("sample", "y", "x") and da.shape == (12, 16, 16)
    assert ds.delta.encoding["chunks"][0] == 5
    assert np.bincount(da["split"].values).tolist() == [6, 3, 3]
    assert da["split"].attrs["flag_meanings"] == "train val test"
    om, s8 = da["omega_m"].values, da["sigma8"].values
    assert (0.2 <= om).all() and (om < 0.4).all() and len(set(om)) == 12
    assert (0.7 <= s8).all() and (s8 < 0.9).all()
    attrs = da.attrs
    assert attrs["kind"] == "grf" and attrs["seed"] == 4 and attrs["count"] == 12
    assert attrs["omega_m_range"] == [0.2, 0.4] and attrs["split_fractions"] == [0.5, 0.25, 0.25]
    assert attrs["map_scale"] > 0 and attrs["units"] == "dimensionless"
    # Same command again: the same dataset (the content depends on the seed and chunk only).
    again = tmp_path / "again.zarr"
    capsys.readouterr()
    assert cli.main([*DATASET_ARGS, "--out", str(again)]) == 0
    assert "wrote dataset of 12 grf samples (6 train, 3 val, 3 test;" in capsys.readouterr().out
    with xr.open_zarr(again, consolidated=False) as ds2:
        np.testing.assert_array_equal(ds2["delta"].values, da.values)
    maps, theta = store.load_split(store.open_dataset(again), "val")
    assert maps.shape == (3, 16, 16) and theta.shape == (3, 2)
    np.testing.assert_array_equal(maps, da.values[da["split"].values == 1])


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_dataset_is_written_atomically(tmp_path, monkeypatch, error):
    real = Kind.generate
    calls = []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise error("interrupted")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Kind, "generate", flaky)
    out = tmp_path / "d.zarr"
    with pytest.raises(error):
        store.write_dataset(
            "grf", FieldParams(size=16, count=6), {"omega_m": (0.2, 0.4)}, out, chunk=3
        )
    assert list(tmp_path.iterdir()) == []  # no output, no temporary directory
    with pytest.raises(ConfigError, match="must end in .zarr"):
        store.write_dataset("grf", FieldParams(size=16), {}, tmp_path / "d.nc")


def test_fields_ranges_and_from_checkpoint(tmp_path, capsys):
    base = ["fields", "--kind", "grf", "--size", "16", "--count", "4", "--device", "cpu"]
    out = tmp_path / "a.zarr"
    assert cli.main([*base, "--omega-m", "0.2:0.4", "--seed", "1", "--out", str(out)]) == 0
    assert "omega_m=0.2:0.4, sigma8=0.8, seed 1" in capsys.readouterr().out
    with xr.open_zarr(out, consolidated=False) as ds:
        om = ds["omega_m"].values
        assert len(set(om)) == 4 and ((0.2 <= om) & (om < 0.4)).all()
        assert (ds["sigma8"].values == 0.8).all()
    np.testing.assert_array_equal(
        om, store.draw_parameters(FieldParams(), {"omega_m": (0.2, 0.4)}, 4, 1)["omega_m"]
    )
    # a plain value given later (--set) replaces the range of the flag
    out2 = tmp_path / "b.zarr"
    argv = [*base, "--omega-m", "0.2:0.4", "--set", "omega_m=0.35", "--out", str(out2)]
    assert cli.main(argv) == 0
    with xr.open_zarr(out2, consolidated=False) as ds:
        assert (ds["omega_m"].values == 0.35).all()

    ckpt = tmp_path / "model.pt"
    settings = {"kind": "lognormal", "size": 16, "box_size": 64.0, "smoothing": 2.0, "h": 0.7}
    torch.save({"map_settings": settings, "config": {}}, ckpt)
    out3 = tmp_path / "c.zarr"
    assert cli.main(["fields", "--from-checkpoint", str(ckpt), "--count", "2", "--size", "24",
                     "--device", "cpu", "--out", str(out3)]) == 0  # fmt: skip
    with xr.open_zarr(out3, consolidated=False) as ds:
        attrs = ds["delta"].attrs
    assert attrs["kind"] == "lognormal" and attrs["size"] == 24  # the flag wins
    assert (attrs["box_size"], attrs["smoothing"], attrs["h"]) == (64.0, 2.0, 0.7)
    assert (
        cli.main(["fields", "--from-checkpoint", str(tmp_path / "no.pt"), "--out", "x.zarr"]) == 2
    )
    # a run directory stands for its checkpoints/best.pt
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"map_settings": settings, "config": {}}, run / "checkpoints" / "best.pt")
    out4 = tmp_path / "d.zarr"
    assert (
        cli.main(["fields", "--from-checkpoint", str(run), "--count", "2", "--out", str(out4)]) == 0
    )
    with xr.open_zarr(out4, consolidated=False) as ds:
        assert ds["delta"].attrs["box_size"] == 64.0 and ds.sizes["x"] == 16


def test_training_on_a_dataset(dataset_path, tmp_path):
    params = resolve_params(
        "smoke",
        overrides={
            "dataset": str(dataset_path),
            "batch_size": 4,
            "steps_per_epoch": 3,  # 12 maps per epoch: two passes over the 6 training maps
            "epochs": 1,
            "width": 4,
            "num_threads": 1,
            "device": "cpu",
            "augment_flips": True,
        },
    )
    task = ParameterRegression(params, torch.device("cpu"))
    maps, theta = store.load_split(store.open_dataset(dataset_path), "train")
    assert task.scale == store.open_dataset(dataset_path).attrs["map_scale"]
    torch.testing.assert_close(task.low, torch.tensor([0.2, 0.7]))
    # each pass over the train split visits every map once
    ys = torch.cat([task.train_batch(s)[1] for s in range(3)])
    expected = task.normalise(torch.from_numpy(theta))
    for half in (ys[:6], ys[6:]):
        assert sorted(half[:, 0].tolist()) == pytest.approx(sorted(expected[:, 0].tolist()))
    val = task.validation_data()  # the val split, in file order
    val_maps, _ = store.load_split(store.open_dataset(dataset_path), "val")
    torch.testing.assert_close(val[0][0][:, 0] * task.scale, torch.from_numpy(val_maps))

    run = RunDir(tmp_path / "run").create()
    trainer = Trainer(params, run, torch.device("cpu"), progress=False)
    assert trainer.fit() == "completed"
    state = trainer.state()
    assert state["map_settings"]["kind"] == "grf" and state["map_settings"]["size"] == 16
    assert {r["name"] for r in run.metrics() if r["split"] == "val"} >= {"loss", "rmse_sigma8"}


def test_datasets_that_cannot_train(tmp_path):
    fixed = tmp_path / "fixed.zarr"
    store.write_dataset("grf", FieldParams(size=16, count=3), {"omega_m": (0.2, 0.4)}, fixed)
    with pytest.raises(ConfigError, match="does not vary sigma8"):
        LabelledMaps(str(fixed))
    with pytest.raises(ConfigError, match="dataset='nowhere.zarr' does not exist"):
        resolve_params("smoke", overrides={"dataset": "nowhere.zarr"})
    plain = tmp_path / "plain.zarr"
    assert cli.main(["fields", "--size", "16", "--count", "2", "--out", str(plain)]) == 0
    # a file of the fields verb has no splits: split map by map; fixed parameters cannot train
    with pytest.raises(ConfigError, match="does not vary omega_m"):
        LabelledMaps(str(plain))
