"""Bad input gives one line, everywhere: NaN/inf settings, damaged map files and checkpoints,
maps a network cannot use, and predictions outside the network's prior.

Each test first states the defect it guards against (a traceback, a lost table, a silent
prediction); :mod:`tests.test_fuzz` throws random values and damaged files at the same paths.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import xarray as xr

from engine import cli
from engine.evaluation import compare, predict
from engine.params import ConfigError, FieldParams, set_values
from engine.physics import slabs

#: Map settings of the tiny network of :func:`_checkpoint` (32² grf maps).
SETTINGS = dict(kind="grf", size=32, box_size=512.0, thickness=100.0)


def _one_line_error(capsys) -> str:
    """The stderr of a CLI call that failed as a user error: exactly one line ``error: ...``."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _checkpoint(tmp_path, bias=None, name="net.pt"):
    """(checkpoint, maps file) of an untrained 32² grf cnn; ``bias`` (4,) fixes its output.

    With ``bias`` the last layer's weights are zero, so every map gets the normalised means
    ``bias[:2]`` (0 … 1 is the prior box, e.g. 2.0 lies outside it).
    """
    from engine.nn.registry import build_model
    from engine.params import to_dict
    from engine.train.checkpoint import save_checkpoint

    settings = FieldParams(**dict(SETTINGS, count=3, seed=7))
    kwargs = {"in_channels": 1, "n_params": 2, "width": 4, "circular_padding": True}
    torch.manual_seed(0)
    model = build_model("cnn", **kwargs)
    if bias is not None:
        with torch.no_grad():
            model.head[-1].weight.zero_()
            model.head[-1].bias.copy_(torch.tensor(bias, dtype=torch.float32))
    ckpt = tmp_path / name
    save_checkpoint(
        {
            "model_name": "cnn",
            "model_kwargs": kwargs,
            "model_state": model.state_dict(),
            "task": "parameter_regression",
            "param_names": ["omega_m", "sigma8"],
            "prior_low": [0.1, 0.6],
            "prior_high": [0.5, 1.0],
            "map_scale": slabs.map_scale(settings),
            "map_settings": {"kind": "grf", **to_dict(settings)},
        },
        ckpt,
    )
    maps = tmp_path / "maps.nc"
    if not maps.exists():
        slabs.save(slabs.generate(settings), maps)
    return ckpt, maps


# ---------------------------------------------------------------------------------------------
# Integer settings given NaN or inf (a traceback from int(float("nan")) before)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["fields", "--size", "nan"],
        ["fields", "--count", "nan"],
        ["fields", "--seed", "inf"],
        ["fields", "--seed=-inf"],
        ["fields", "--size", "1e400"],
        ["fields", "--size", "9" * 5000],
        ["fields", "--set", "size=.nan"],
        ["fields", "--set", "count=.inf"],
        ["fields", "--noise", "nan"],
        ["dataset", "--count", "inf"],
        ["sky", "--nside", "nan"],
    ],
)
def test_nan_and_inf_settings_are_one_line_errors(tmp_path, capsys, argv):
    out = tmp_path / ("o.nc" if argv[0] == "sky" else "o.zarr")
    assert cli.main([*argv, "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "finite" in err and len(err) < 300, err
    assert not out.exists()


@pytest.mark.parametrize("value", ["inf", ".inf", "nan", ".nan", "-.inf", "1e400"])
def test_train_set_epochs_inf_is_refused_before_the_run_dir(tmp_path, capsys, value):
    run = tmp_path / "run"
    argv = ["train", "--preset", "smoke", "--run-dir", str(run), "--set", f"epochs={value}"]
    assert cli.main(argv) == 2
    assert "epochs=" in _one_line_error(capsys)
    assert not run.exists()


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -float("inf"), "nan", "inf", "1e400", 10**400]
)
def test_set_values_refuses_non_finite_numbers(value):
    p = FieldParams()
    for name in ("size", "seed", "count", "noise", "box_size"):
        with pytest.raises(ConfigError, match=name) as info:
            set_values(p, {name: value})
        assert "\n" not in str(info.value) and len(str(info.value)) < 200
    assert p.size == 256 and p.noise == 0.0  # unchanged


def test_integer_settings_still_take_integers_written_as_numbers():
    p = set_values(FieldParams(), {"size": "64", "count": "1e3", "seed": 2.0})
    assert (p.size, p.count, p.seed) == (64, 1000, 2)
    big = set_values(FieldParams(), {"seed": str(2**61 + 1)})  # read exactly, not as a float
    assert big.seed == 2**61 + 1
    with pytest.raises(ConfigError, match="not an integer"):
        set_values(FieldParams(), {"size": "64.5"})


# ---------------------------------------------------------------------------------------------
# predict on damaged or foreign files (tracebacks from xarray / zarr / json before)
# ---------------------------------------------------------------------------------------------


def _damaged(tmp_path, how: str):
    """A maps path damaged in one way (see the parametrisation below)."""
    da = slabs.generate(FieldParams(size=16, box_size=64.0, count=2))
    if how == "empty .nc":
        path = tmp_path / "empty.nc"
        path.write_bytes(b"")
    elif how == "random .nc":
        path = tmp_path / "random.nc"
        path.write_bytes(np.random.default_rng(0).bytes(300))
    elif how == ".npy":
        path = tmp_path / "maps.npy"
        np.save(path, da.values)
    else:
        path = tmp_path / "maps.zarr"
        slabs.save(da, path)
        if how == "truncated zarr chunk":
            chunk = max(
                (p for p in (path / "delta").rglob("*") if p.is_file() and p.name != "zarr.json"),
                key=lambda p: p.stat().st_size,
            )
            chunk.write_bytes(chunk.read_bytes()[:20])
        elif how == "corrupt zarr.json":
            (path / "zarr.json").write_text('{"zarr_format": 3, "node_type": ')
        elif how == "corrupt array zarr.json":
            (path / "delta" / "zarr.json").write_text("not json")
    return path


DAMAGED = [
    "empty .nc",
    "random .nc",
    ".npy",
    "truncated zarr chunk",
    "corrupt zarr.json",
    "corrupt array zarr.json",
]


@pytest.mark.parametrize("how", DAMAGED)
def test_predict_on_a_damaged_file_is_one_line(tmp_path, capsys, how):
    maps = _damaged(tmp_path, how)
    out = tmp_path / "p.csv"
    assert cli.main(["predict", "--maps", str(maps), "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert f"maps file {str(maps)!r}" in err
    assert not out.exists()


@pytest.mark.parametrize("how", DAMAGED)
def test_dataset_specs_of_damaged_files_are_one_line(tmp_path, how):
    from engine.data import open_spec

    maps = _damaged(tmp_path, how)
    with pytest.raises(ConfigError) as info:
        open_spec(str(maps)).load()
    assert "\n" not in str(info.value)


def test_a_dataset_path_the_system_refuses_is_a_config_error(tmp_path):
    from engine.data import open_spec

    for spec in ("folder:" + "a" * 5000, "ab:" + "b" * 5000, "camels:" + "c" * 5000 + ".npy"):
        with pytest.raises(ConfigError) as info:
            open_spec(spec)
        assert "\n" not in str(info.value)


def test_an_empty_checkpoint_is_one_line(tmp_path, capsys):
    _, maps = _checkpoint(tmp_path)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    out = tmp_path / "p.csv"
    argv = ["predict", "--checkpoint", str(empty), "--maps", str(maps), "--out", str(out)]
    assert cli.main(argv) == 2
    assert "could not be read" in _one_line_error(capsys)


# ---------------------------------------------------------------------------------------------
# compare keeps the table when a checkpoint is damaged (one pair's exception lost it before)
# ---------------------------------------------------------------------------------------------


def _damaged_checkpoints(tmp_path) -> dict[str, object]:
    """Checkpoints that are not usable, by name: a bare tensor, a bare state dict, a task state
    that is a tensor (IndexError deep in the task), a prior box of the wrong length."""
    from engine.train.checkpoint import load_checkpoint

    good, _ = _checkpoint(tmp_path)
    ckpt = load_checkpoint(good)
    paths = {}
    paths["bare"] = tmp_path / "bare.pt"
    torch.save(torch.zeros(3), paths["bare"])
    paths["state_dict"] = tmp_path / "state_dict.pt"
    torch.save(ckpt["networks"]["model"]["state"], paths["state_dict"])
    paths["tensor_state"] = tmp_path / "tensor_state.pt"
    torch.save({**ckpt, "task_state": torch.zeros(3)}, paths["tensor_state"])
    short = dict(ckpt["task_state"], prior_low=[0.1])
    paths["short_prior"] = tmp_path / "short_prior.pt"
    torch.save({**ckpt, "task_state": short}, paths["short_prior"])
    return good, paths


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")  # the damaged task state
def test_compare_records_a_failing_pair_and_goes_on(tmp_path, capsys):
    good, bad = _damaged_checkpoints(tmp_path)
    out = tmp_path / "table.csv"
    argv = ["compare", "--checkpoints", str(good), *map(str, bad.values())]
    argv += ["--datasets", "grf?count=4&seed=3", "--no-pk-likelihood", "--out", str(out)]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    table = _read_csv(out)
    by_model = {r["model"]: r for r in table}
    assert set(by_model) == {"net", *bad}
    assert by_model["net"]["error"] == "" and float(by_model["net"]["rmse"]) >= 0
    for name in bad:
        assert by_model[name]["error"], name
        assert "\n" not in by_model[name]["error"]
        assert f"warning: {name} on grf" in err


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")  # the damaged task state
def test_compare_raises_the_first_failure_with_on_error_raise(tmp_path):
    good, bad = _damaged_checkpoints(tmp_path)
    with pytest.raises(ConfigError, match="not a checkpoint of this engine"):
        compare.compare([good, bad["bare"]], ["grf?count=2"], pk_likelihood=False, on_error="raise")


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")  # the damaged task state
def test_predict_refuses_damaged_checkpoints_in_one_line(tmp_path, capsys):
    _, bad = _damaged_checkpoints(tmp_path)
    maps = tmp_path / "maps.nc"
    for path in bad.values():
        out = tmp_path / "p.csv"
        argv = ["predict", "--checkpoint", str(path), "--maps", str(maps), "--out", str(out)]
        assert cli.main(argv) == 2
        _one_line_error(capsys)
        assert not out.exists()


# ---------------------------------------------------------------------------------------------
# predict --method network: NaN maps, maps without a pixel scale, predictions outside the prior
# ---------------------------------------------------------------------------------------------


def test_network_refuses_maps_with_nan_or_inf(tmp_path, capsys):
    ckpt, maps = _checkpoint(tmp_path)
    da = slabs.load(maps)
    da[1, 2, 3] = np.nan
    da[2, 0, 0] = np.inf
    bad = tmp_path / "nan.nc"
    slabs.save(da, bad)
    out = tmp_path / "p.csv"
    argv = ["predict", "--method", "network", "--checkpoint", str(ckpt), "--maps", str(bad)]
    assert cli.main([*argv, "--out", str(out)]) == 2
    assert "map 1 holds NaN or inf" in _one_line_error(capsys) and not out.exists()
    for maps_in in (da, da.values, torch.from_numpy(da.values)):
        with pytest.raises(ConfigError, match="NaN or inf"):
            predict.predict_network(maps_in, ckpt)


def _without_scale(tmp_path, maps):
    """The maps of ``maps`` with no attrs (no kind, no box_size), as another tool writes them."""
    da = slabs.load(maps)
    path = tmp_path / "bare.nc"
    xr.DataArray(da.values, dims=da.dims, name="delta").to_dataset().to_netcdf(path)
    return path


def test_maps_without_a_pixel_scale_need_it_given(tmp_path, capsys):
    ckpt, maps = _checkpoint(tmp_path)
    bare = _without_scale(tmp_path, maps)
    out = tmp_path / "p.csv"
    argv = ["predict", "--checkpoint", str(ckpt), "--maps", str(bare), "--out", str(out)]
    assert cli.main(argv) == 2
    err = _one_line_error(capsys)
    assert "no pixel scale" in err and "--box-size" in err and "512" in err and not out.exists()

    assert cli.main([*argv, "--box-size", "256"]) == 2  # not the network's scale
    assert "box_size=256" in _one_line_error(capsys)
    assert cli.main([*argv, "--fov", "5"]) == 2  # a kappa scale for a slab network
    assert "fov was given" in _one_line_error(capsys)
    assert cli.main([*argv, "--box-size", "nan"]) == 2
    _one_line_error(capsys)
    assert cli.main([*argv, "--box-size", "512"]) == 0
    expected = predict.predict_network(slabs.load(maps), ckpt)["mean"]
    rows = _read_csv(out)
    assert float(rows[2]["omega_m_mean"]) == pytest.approx(expected[2, 0], rel=1e-6)

    # a given scale that contradicts the maps' own attr is refused too
    out.unlink()
    argv = ["predict", "--checkpoint", str(ckpt), "--maps", str(maps), "--out", str(out)]
    assert cli.main([*argv, "--box-size", "256"]) == 2
    assert "maps say box_size=512" in _one_line_error(capsys)
    with pytest.raises(ConfigError, match="no pixel scale"):
        predict.predict_network(slabs.load(bare), ckpt)
    # arrays without attrs are the caller's business (benchmarks pass tensors)
    assert predict.predict_network(slabs.load(bare).values, ckpt)["mean"].shape == (3, 2)


def test_predictions_outside_the_prior_are_flagged(tmp_path, capsys):
    ckpt, maps = _checkpoint(tmp_path, bias=[2.0, -1.0, 0.0, 0.0], name="out.pt")
    out = tmp_path / "p.csv"
    argv = ["predict", "--checkpoint", str(ckpt), "--maps", str(maps), "--out", str(out)]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert warning == [
        f"warning: 3 of 3 predictions lie outside the network's prior box "
        f"(column outside_prior of {out})"
    ]
    rows = _read_csv(out)
    assert [r["outside_prior"] for r in rows] == ["true"] * 3
    assert float(rows[0]["omega_m_mean"]) == pytest.approx(0.1 + 2.0 * 0.4, rel=1e-6)

    inside, _ = _checkpoint(tmp_path, bias=[0.5, 0.5, 0.0, 0.0], name="in.pt")
    out2 = tmp_path / "p2.csv"
    assert cli.main([*argv[:2], str(inside), *argv[3:-1], str(out2)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert [r["outside_prior"] for r in _read_csv(out2)] == ["false"] * 3

    result = predict.predict_network(slabs.load(maps), ckpt)
    assert result["outside_prior"].dtype == bool and result["outside_prior"].all()


def test_evaluate_predictions_carry_the_network_flag(tmp_path):
    from engine.evaluation.evaluate import evaluate

    ckpt, _ = _checkpoint(tmp_path, bias=[2.0, 0.5, 0.0, 0.0], name="out.pt")
    evaluate("grf?count=3&seed=1", ckpt, out_dir=tmp_path / "ev", pk_likelihood=False)
    rows = _read_csv(tmp_path / "ev" / "predictions.csv")
    assert [r["network_outside_prior"] for r in rows] == ["true"] * 3


def test_config_file_keys_that_are_not_text_and_overlong_paths(tmp_path, capsys):
    from engine import cli

    cfg = tmp_path / "k.yaml"
    cfg.write_text("1: 2\n")
    assert cli.main(["fields", "--config", str(cfg), "--out", str(tmp_path / "o.zarr")]) == 2
    assert "setting names must be text" in capsys.readouterr().err
    long = str(tmp_path / ("a" * 5000 + ".nc"))
    assert cli.main(["predict", "--maps", long, "--out", str(tmp_path / "p.csv")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
