"""Evaluation (engine.evaluation: metrics, evaluate, compare), synthetic/file readers (engine.data.synthetic), the evaluate and
compare verbs, and the end-of-training evaluation."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from engine import cli
from engine.data import open_spec
from engine.data.store import write_dataset
from engine.evaluation import calibrated, evaluate, metrics, predict, schema
from engine.kinds import get_kind
from engine.params import ConfigError
from engine.runs import RunDir

#: A tiny training run: 16² grf maps, a few steps, one thread; evaluation on 16 maps.
TINY = {
    "size": 16,
    "batch_size": 8,
    "steps_per_epoch": 3,
    "epochs": 1,
    "val_maps": 8,
    "eval_maps": 16,
    "width": 4,
    "log_every": 3,
    "num_threads": 1,
    "device": "cpu",
}
LIKE = {"kind": "grf", "size": 16, "box_size": 128.0, "omega_m_range": [0.2, 0.3]}
METRIC_KEYS = {"rmse", "mae", "r2", "bias", "coverage_68", "coverage_95", "efficiency"}
REPORT_KEYS = {
    "version",
    "dataset",
    "checkpoint",
    "n_maps",
    "kind",
    "map_settings",
    "prior",
    "params",
    "methods",
    "calibration",
    "fisher",
    "figures",
    "predictions",
    "created",
    "seconds",
}


@pytest.fixture(autouse=True, scope="module")
def _calibration_cache(tmp_path_factory):
    """Calibrations of the calibrated P(k) likelihood are cached in a temporary folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(calibrated.CACHE_ENV, str(tmp_path_factory.mktemp("calibrations")))
        yield


#: Methods of an evaluation with a network on generated maps.
ALL_METHODS = {"network", "pk_likelihood", "pk_calibrated"}


def _one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg
    return msg


# ---------------------------------------------------------------------------------------------
# Metrics against hand-computed values and theory
# ---------------------------------------------------------------------------------------------


def test_regression_metrics_hand_computed():
    truth = np.array([1.0, 1.0, 4.0, 4.0])
    mean = np.array([1.0, 2.0, 3.0, 4.0])  # errors 0, 1, -1, 0
    std = np.array([0.5, 2.0, 0.6, 1.0])  # |e| <= std: T T F T; |e| <= 1.96 std: all
    m = metrics.regression_metrics(mean, std, truth)
    assert m["rmse"] == pytest.approx(math.sqrt(0.5))
    assert m["mae"] == pytest.approx(0.5)
    assert m["bias"] == pytest.approx(0.0)
    assert m["r2"] == pytest.approx(1 - 2 / 9)  # SST = 4 * 1.5²
    assert m["coverage_68"] == pytest.approx(0.75)
    assert m["coverage_95"] == pytest.approx(1.0)
    assert math.isnan(metrics.regression_metrics(mean, std, np.ones(4))["r2"])
    with pytest.raises(ConfigError):
        metrics.regression_metrics(mean, std, truth[:3])


def test_binned_errors_and_efficiency_hand_computed():
    truth = np.array([0.5, 0.5, 1.5, 2.5, -1.0])  # the last two fall outside: end bins
    mean = np.array([0.7, 0.1, 1.5, 2.0, -1.0])
    std = np.array([1.0, 3.0, 2.0, 4.0, 0.0])
    b = metrics.binned_errors(mean, std, truth, [0.0, 1.0, 2.0])
    assert b["count"] == [3, 2]
    assert b["rmse"][0] == pytest.approx(math.sqrt((0.04 + 0.16 + 0) / 3))
    assert b["bias"][0] == pytest.approx((0.2 - 0.4 + 0) / 3)
    assert b["std"][0] == pytest.approx((1 + 3 + 0) / 3)
    assert b["rmse"][1] == pytest.approx(math.sqrt(0.25 / 2))
    assert b["bias"][1] == pytest.approx(-0.25)
    empty = metrics.binned_errors(mean[:1], std[:1], truth[:1], [0.0, 1.0, 2.0])
    assert empty["count"] == [1, 0] and math.isnan(empty["rmse"][1])
    # constant bound: efficiency = sigma / RMSE
    e = np.array([0.1, -0.3, 0.2])
    eff = metrics.efficiency_from_sigma(e, np.zeros(3), np.full(3, 0.05))
    assert eff == pytest.approx(0.05 / math.sqrt(np.mean(e**2)))
    t = np.array([[0.1, 0.6], [0.3, 0.8], [0.47, 0.8], [0.3, 0.97]])
    assert metrics.away_from_edges(t, ((0.1, 0.5), (0.6, 1.0))).tolist() == [0, 1, 0, 0]


def test_coverage_of_calibrated_gaussian_predictions():
    """Truths drawn from the predicted Gaussians: coverages within 4 binomial σ of theory."""
    rng = np.random.default_rng(7)
    n = 20000
    mean = rng.uniform(0.1, 0.5, n)
    std = rng.uniform(0.01, 0.05, n)
    truth = mean + std * rng.standard_normal(n)
    m = metrics.regression_metrics(mean, std, truth)
    for key, p in (("coverage_68", math.erf(1 / math.sqrt(2))), ("coverage_95", 0.9500042)):
        assert abs(m[key] - p) < 4 * math.sqrt(p * (1 - p) / n), (key, m[key])
    levels = [0.1, 0.5, 0.9]
    for p, c in zip(levels, metrics.calibration(mean, std, truth, levels), strict=True):
        assert abs(c - p) < 4 * math.sqrt(p * (1 - p) / n)
    # over-confident predictions (std halved) under-cover: P(|z| <= 0.5) = 0.383
    assert metrics.coverage(mean, std / 2, truth, 1.0) == pytest.approx(0.383, abs=0.02)


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------


def test_open_spec_generates_labelled_reproducible_maps_like_the_fields_verb(tmp_path):
    da = open_spec("grf?count=8&seed=3&sigma8=0.7:0.9", like=LIKE)
    assert da.dims == ("sample", "y", "x") and da.shape == (8, 16, 16)
    assert da.attrs["kind"] == "grf" and da.attrs["box_size"] == 128.0
    assert da.attrs["source"] == "grf?count=8&seed=3&sigma8=0.7:0.9"
    om, s8 = da["omega_m"].values, da["sigma8"].values
    assert ((om >= 0.2) & (om <= 0.3)).all() and ((s8 >= 0.7) & (s8 <= 0.9)).all()
    assert len(set(om)) == 8
    again = open_spec("grf?count=8&seed=3&sigma8=0.7:0.9", like=LIKE)
    np.testing.assert_array_equal(da.values, again.values)
    np.testing.assert_array_equal(om, again["omega_m"].values)
    assert not np.array_equal(da.values, open_spec("grf?count=8&seed=4", like=LIKE).values)
    # the same maps, labels and attrs as python -m engine fields with the same settings
    out = tmp_path / "maps.zarr"
    argv = ["fields", "--kind", "grf", "--size", "16", "--box", "128", "--count", "8"]
    argv += ["--seed", "3", "--omega-m", "0.2:0.3", "--sigma8", "0.7:0.9", "--out", str(out)]
    argv += ["--device", "cpu"]
    assert cli.main(argv) == 0
    ref = open_spec(str(out))
    np.testing.assert_array_equal(ref.values, da.values)
    np.testing.assert_allclose(ref["omega_m"].values, om)
    np.testing.assert_allclose(ref["sigma8"].values, s8)
    common = {k for k in ref.attrs if k not in ("source", "engine_version")}
    assert common <= set(da.attrs)
    assert all(str(ref.attrs[k]) == str(da.attrs[k]) for k in common)
    assert ref.attrs["source"] == str(out)


def test_generate_defaults_prior_and_kinds():
    da = open_spec("lognormal?count=6&size=16&box_size=64")
    om, s8 = da["omega_m"].values, da["sigma8"].values
    assert ((om >= 0.1) & (om <= 0.5)).all() and ((s8 >= 0.6) & (s8 <= 1.0)).all()
    assert da.attrs["omega_m_range"] == [0.1, 0.5]
    fixed = open_spec("2lpt?count=2&size=16&box_size=64&thickness=16&omega_m=0.3", like=LIKE)
    assert fixed.dims == ("sample", "y", "x") and fixed.attrs["kind"] == "2lpt"
    assert (fixed["omega_m"].values == 0.3).all() and fixed.attrs["box_size"] == 64.0
    # a like of the other family (kappa, arcmin) lends only its prior box
    other = open_spec(
        "grf?count=2&size=16",
        like={"kind": "kappa", "size": 32, "fov": 2.0, "omega_m_range": [0.2, 0.3]},
    )
    assert other.attrs["size"] == 16 and (other["omega_m"].values <= 0.3).all()


def test_open_file_reads_fields_files_and_dataset_splits(tmp_path):
    kind = get_kind("grf")
    settings = kind.new_settings()
    settings.param.update(size=16, count=20, seed=1)
    path = write_dataset("grf", settings, {"omega_m": (0.2, 0.4)}, tmp_path / "d.zarr", chunk=10)
    test = open_spec(str(path))
    assert (test["split"].values == 2).all() and test.sizes["sample"] >= 1
    train = open_spec(f"{path}?split=train&count=3")
    assert train.sizes["sample"] == 3 and (train["split"].values == 0).all()
    assert "omega_m" in train.coords and train.attrs["kind"] == "grf"
    nc = tmp_path / "m.nc"
    maps = open_spec("grf?count=4&size=16")
    maps.to_dataset(name="delta").to_netcdf(nc)
    back = open_spec(f"{nc}?count=2")
    np.testing.assert_array_equal(back.values, maps.values[:2])
    msg = _one_line_error(open_spec, f"{nc}?split=test")
    assert "no splits" in msg


@pytest.mark.parametrize(
    "spec, words",
    [
        ("nope:/tmp/x", ["unknown prefix"]),
        ("grf?bogus=1", ["bogus", "allowed: count, seed, omega_m, sigma8"]),
        ("grf?count=0", ["count", "1 <= count"]),
        ("grf?omega_m=0.5:0.2", ["omega_m", "LO < HI"]),
        ("/does/not/exist.zarr", ["does not exist", "/does/not/exist.zarr"]),
        ("/does/not/exist.txt", ["neither a kind"]),
    ],
)
def test_bad_specs_give_one_line_errors(spec, words):
    msg = _one_line_error(open_spec, spec)
    for w in words:
        assert w in msg, msg


def test_unknown_file_option_and_unreadable_file(tmp_path):
    bad = tmp_path / "bad.zarr"
    bad.mkdir()
    (bad / "junk").write_text("not zarr")
    msg = _one_line_error(open_spec, f"{bad}?foo=1")
    assert "foo" in msg and "allowed: split, count" in msg
    msg = _one_line_error(open_spec, str(bad))
    assert str(bad) in msg


# ---------------------------------------------------------------------------------------------
# End to end: training + evaluation, the evaluate and compare verbs
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A completed tiny run (its end-of-training evaluation included)."""
    run = RunDir(tmp_path_factory.mktemp("runs") / "tiny")
    assert _train(run, TINY) == 0
    return run


def _train(run: RunDir, overrides: dict) -> int:
    """``python -m engine train --preset smoke`` into ``run`` (which evaluates at the end)."""
    sets = [arg for k, v in overrides.items() for arg in ("--set", f"{k}={v}")]
    return cli.main(["train", "--preset", "smoke", "--run-dir", str(run.path), *sets])


def _check_report(report: dict, n_maps: int, methods: set[str]) -> None:
    assert REPORT_KEYS <= set(report) and report["version"] == 1
    assert report["n_maps"] == n_maps and report["params"] == ["omega_m", "sigma8"]
    assert set(report["methods"]) == methods
    for entry in report["methods"].values():
        assert entry["label"]
        for name in ("omega_m", "sigma8"):
            assert METRIC_KEYS <= set(entry["metrics"][name])
            bins = entry["bins"][name]
            assert len(bins["edges"]) == metrics.N_BINS + 1 and sum(bins["count"]) == n_maps
            lo, hi = report["prior"][name]
            assert bins["edges"][0] == pytest.approx(lo) and bins["edges"][-1] == pytest.approx(hi)
            for key in ("rmse", "bias", "std"):
                assert len(bins[key]) == metrics.N_BINS
    fisher = report["fisher"]
    assert fisher["crb_sigma"]["omega_m"] > 0 and len(fisher["bins"]["sigma8"]) == metrics.N_BINS


def _check_outputs(out, report) -> None:
    assert json.loads((out / "report.json").read_text()) == report
    for rel in report["figures"].values():
        assert (out / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / report["predictions"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == report["n_maps"]
    # the report's metrics are those of the CSV's columns
    for method, entry in report["methods"].items():
        for name in report["params"]:
            e = [float(r[f"{method}_{name}_mean"]) - float(r[f"{name}_true"]) for r in rows]
            rmse = math.sqrt(sum(v * v for v in e) / len(e))
            assert entry["metrics"][name]["rmse"] == pytest.approx(rmse, rel=1e-6)


def test_training_writes_its_evaluation_before_completing(trained_run):
    status = trained_run.status()
    assert status["state"] == "completed" and status["error"] is None
    report = json.loads((trained_run.path / "report.json").read_text())
    _check_report(report, TINY["eval_maps"], ALL_METHODS)
    _check_outputs(trained_run.path, report)
    assert report["dataset"] == "grf" and report["map_settings"]["size"] == 16
    # calibrated on maps generated like the network's training maps (on the fly)
    cal = report["calibration"]
    assert cal["spec"] == "grf" and cal["n_maps"] == calibrated.DEFAULT_COUNT
    side = predict.checkpoint_like(trained_run.path)["box_size"]
    assert cal["geometry"] == {"unit": "Mpc/h", "side": side, "size": 16, "units": "dimensionless"}
    assert report["methods"]["pk_calibrated"]["label"] == "calibrated P(k)"


def test_evaluate_verb_end_to_end(trained_run, tmp_path, capsys):
    out = tmp_path / "ev"
    argv = ["evaluate", "--checkpoint", str(trained_run.path), "--dataset", "grf?seed=9"]
    assert cli.main([*argv, "--count", "12", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "network" in text and "pk_likelihood" in text and "pk_calibrated" in text
    report = json.loads((out / "report.json").read_text())
    _check_report(report, 12, ALL_METHODS)
    _check_outputs(out, report)
    assert report["checkpoint"].endswith("best.pt")
    assert report["prior"] == {"omega_m": [0.1, 0.5], "sigma8": [0.6, 1.0]}


def test_evaluate_without_checkpoint_is_the_two_likelihoods(tmp_path, capsys):
    out = tmp_path / "pk"
    argv = ["evaluate", "--dataset", "grf?size=16&count=10", "--out", str(out)]
    assert cli.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    _check_report(report, 10, {"pk_likelihood", "pk_calibrated"})
    assert report["checkpoint"] is None
    assert report["methods"]["pk_likelihood"]["label"] == "P(k) likelihood"
    assert report["calibration"]["spec"] == "grf?size=16"  # the kind, generated again
    _check_outputs(out, report)
    out2 = tmp_path / "pk2"
    assert cli.main([*argv[:-1], str(out2), "--no-pk-calibrated"]) == 0
    assert set(json.loads((out2 / "report.json").read_text())["methods"]) == {"pk_likelihood"}


def test_evaluate_user_errors_exit_2_with_one_line(tmp_path, capsys):
    out = tmp_path / "x"
    assert cli.main(["evaluate", "--dataset", "grf?oops=1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "oops" in err and "\n" not in err
    argv = ["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--dataset", "grf"]
    assert cli.main([*argv, "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_compare_one_checkpoint_two_datasets(trained_run, tmp_path, capsys):
    out = tmp_path / "table.csv"
    argv = ["compare", "--checkpoints", str(trained_run.path), "--datasets", "grf", "lognormal"]
    assert cli.main([*argv, "--count", "8", "--out", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:12] == list(schema.COMPARE_COLUMNS[:12])
    keys = {(r["model"], r["dataset"], r["method"], r["param"]) for r in rows}
    for ds in ("grf", "lognormal"):
        for p in ("omega_m", "sigma8"):
            assert ("tiny", ds, "network", p) in keys
            # generated maps follow each network's settings: the likelihood runs on its maps
            assert ("pk-likelihood [tiny maps]", ds, "pk_likelihood", p) in keys
            # the calibrated likelihood is calibrated on the network's training data (grf)
            assert ("pk-calibrated [tiny]", ds, "pk_calibrated", p) in keys
    assert len(rows) == 12 and all(r["n_maps"] == "8" and float(r["rmse"]) > 0 for r in rows)
    pk = [r for r in rows if r["method"] != "network"]
    assert {r["checkpoint"] for r in pk} == {str(trained_run.path)}


def test_failed_evaluation_is_noted_and_the_run_still_completes(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(evaluate, "evaluate", broken)
    run = RunDir(tmp_path / "run")
    assert _train(run, {**TINY, "steps_per_epoch": 1}) == 0
    status = run.status()
    assert status["state"] == "completed"
    assert status["error"] == "evaluation failed: RuntimeError: disk on fire"
    assert not (run.path / "report.json").exists()


def test_network_refuses_maps_of_another_geometry(trained_run):
    maps = open_spec("grf?count=2&size=32")
    msg = _one_line_error(evaluate.evaluate, maps, trained_run.path)
    assert "size=32" in msg
    assert isinstance(maps, xr.DataArray)


# ---------------------------------------------------------------------------------------------
# Domain transfer: native-format data evaluated with a network of another pixel grid
# ---------------------------------------------------------------------------------------------


def _camels_fixture(folder, n_sims: int = 2, size: int = 64):
    """A CMD-format file: (15 S, size, size) positive surface densities + a params table."""
    rng = np.random.default_rng(3)
    maps = np.exp(0.3 * rng.standard_normal((15 * n_sims, size, size))).astype(np.float32)
    path = folder / "Maps_Mtot_Tiny_LH_z=0.00.npy"
    np.save(path, maps * 1e10)
    rows = "\n".join(f"{0.2 + 0.1 * s} {0.7 + 0.1 * s} 1 1 1 1" for s in range(n_sims))
    (folder / "params_LH_Tiny.txt").write_text("# Om sigma8 SN1 AGN1 SN2 AGN2\n" + rows + "\n")
    return f"camels:{path}"


@pytest.fixture(scope="module")
def small_box_checkpoint(trained_run, tmp_path_factory):
    """The tiny network relabelled as trained on 16² maps over 12.5 Mpc/h (a CAMELS-size box)."""
    ckpt = torch.load(trained_run.path / "checkpoints" / "best.pt", weights_only=True)
    ckpt["map_settings"] = {**ckpt["map_settings"], "box_size": 12.5, "thickness": 5.0}
    path = tmp_path_factory.mktemp("small") / "smallbox.pt"
    torch.save(ckpt, path)
    return path


def test_camels_maps_are_resampled_and_tiled_for_the_network(small_box_checkpoint, tmp_path):
    spec = _camels_fixture(tmp_path) + "?delta=true"
    out = tmp_path / "ev"
    report = evaluate.evaluate(spec, small_box_checkpoint, out_dir=out, count=15)
    # 64² over 25 Mpc/h → pixels of 12.5/16 Mpc/h: 2 × 2 area average, 32² → 2 × 2 tiles of 16²
    assert report["transfer"] == {
        "from": {"unit": "Mpc/h", "side": 25.0, "size": 64, "pixel": 25.0 / 64},
        "to": {"unit": "Mpc/h", "side": 12.5, "size": 16, "pixel": 12.5 / 16},
        "method": "area-average",
        "tiles_per_map": 4,
    }
    # the calibrated likelihood runs on the tiles (the network's grid), calibrated on the
    # network's training maps; the linear-theory one has no theory for CAMELS maps
    assert report["n_maps"] == 60 and set(report["methods"]) == {"network", "pk_calibrated"}
    assert report["calibration"]["geometry"]["side"] == 12.5
    assert report["fisher"] is None and report["kind"] == "camels"
    notes = " ".join(report["notes"])
    assert "P(k) likelihood skipped" in notes and "'camels'" in notes
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60 and {float(r["omega_m_true"]) for r in rows} == {0.2}
    # the mass maps themselves (not delta) are refused: no unit conversion
    msg = _one_line_error(evaluate.evaluate, _camels_fixture(tmp_path), small_box_checkpoint)
    assert "delta=true" in msg and "(Msun/h)/(Mpc/h)^2" in msg


def test_maps_physically_smaller_than_the_trained_box_are_refused(trained_run, tmp_path):
    spec = _camels_fixture(tmp_path) + "?delta=true"
    side = predict.checkpoint_like(trained_run.path)["box_size"]
    msg = _one_line_error(evaluate.evaluate, spec, trained_run.path, count=15)
    assert "cover 25 Mpc/h" in msg and f"{side:g} Mpc/h" in msg


def test_compare_covers_every_spec_kind_with_transfer_and_error_columns(
    small_box_checkpoint, trained_run, tmp_path, capsys
):
    """One row per (model, dataset, method, param) for a generated kind, one of our files and
    the native formats of assets/samples; P(k) rows where the theory exists, errors otherwise."""
    samples = Path(__file__).resolve().parent.parent / "assets" / "samples"
    ours = tmp_path / "grf32.nc"  # our file of a finer grid than the network's (32² vs 16²)
    small = "grf?size=32&count=6&box_size=12.5&thickness=5&seed=4"
    open_spec(small).to_netcdf(ours)
    specs = {
        "synthetic": "grf",
        "file": str(ours),
        "camels": _camels_fixture(tmp_path) + "?delta=true",
        "quijote": f"quijote:{samples / 'quijote' / 'LH'}?thickness=250",
        "des": f"des:{samples / 'des' / 'kappa_nside64.fits'}?omega_m=0.3&sigma8=0.8&size=16",
        "folder": f"folder:{samples / 'folder'}?box_size=100",
    }
    out = tmp_path / "table.csv"
    argv = ["compare", "--checkpoints", str(small_box_checkpoint), str(trained_run.path)]
    argv += ["--datasets", *specs.values(), "--count", "6", "--out", str(out)]
    assert cli.main([*argv, "--predictions-dir", str(tmp_path / "pred")]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(schema.COMPARE_COLUMNS)
    by = {(r["model"], r["dataset"], r["method"], r["param"]): r for r in rows}
    # 2 networks + the P(k) likelihood, 2 params; on generated maps one likelihood per network;
    # the calibrated likelihood with each network evaluated on a spec (grf: 2; file, camels,
    # quijote: 1), else once on the spec's own maps (des, folder)
    assert len(by) == len(rows) == (len(specs) * 3 + 1 + 7) * 2
    ok = lambda r: r["error"] == "" and float(r["rmse"]) >= 0  # noqa: E731
    err = lambda r, words: r["rmse"] == "" and words in r["error"]  # noqa: E731
    small_name, tiny = "smallbox", "tiny"
    for p in ("omega_m", "sigma8"):
        # generated maps: both networks, each like its training maps, and the likelihood
        assert ok(by[(tiny, specs["synthetic"], "network", p)])
        assert ok(by[("pk-likelihood [tiny maps]", specs["synthetic"], "pk_likelihood", p)])
        assert ok(by[("pk-likelihood [smallbox maps]", specs["synthetic"], "pk_likelihood", p)])
        # our file: resampled 32² → 16² for the small-box network, refused by the other
        r = by[(small_name, specs["file"], "network", p)]
        assert ok(r) and r["transfer"].startswith("area-average") and r["n_maps"] == "6"
        assert err(by[(tiny, specs["file"], "network", p)], "smaller than")
        assert ok(by[("pk-likelihood", specs["file"], "pk_likelihood", p)])  # own grid
        # camels: tiled for the small-box network; the likelihood has no theory for it
        r = by[(small_name, specs["camels"], "network", p)]
        assert ok(r) and r["n_maps"] == "24" and "4 tiles/map" in r["transfer"]
        assert err(by[("pk-likelihood", specs["camels"], "pk_likelihood", p)], "not made by")
        # quijote (32² over 1000 Mpc/h): 31 Mpc/h pixels are far coarser than the small-box
        # network's 0.78 Mpc/h ones (refused)
        assert err(by[(small_name, specs["quijote"], "network", p)], "coarser than the network")
        # des: kappa in degrees vs slab networks; folder: 100 Mpc/h < 256 Mpc/h
        assert err(by[(tiny, specs["des"], "network", p)], "no domain transfer")
        assert err(by[(tiny, specs["folder"], "network", p)], "smaller than")
        # folder: 3.1 Mpc/h pixels, 4x coarser than the small-box network's: refused too
        assert err(by[(small_name, specs["folder"], "network", p)], "coarser than the network")
        # calibrated P(k): with every network on the maps it sees, else on the data's own
        for model in ("pk-calibrated [tiny]", "pk-calibrated [smallbox]"):
            assert ok(by[(model, specs["synthetic"], "pk_calibrated", p)])
        for spec in ("file", "camels"):
            assert ok(by[("pk-calibrated [smallbox]", specs[spec], "pk_calibrated", p)])
        # quijote tiles on the tiny network's grid: calibrated on its (generated) training maps
        assert ok(by[("pk-calibrated [tiny]", specs["quijote"], "pk_calibrated", p)])
        # no network for these: on their own train split, too small for 16 bins or fixed labels
        for spec, words in (("folder", "too few"), ("des", "does not vary")):
            assert err(by[("pk-calibrated", specs[spec], "pk_calibrated", p)], words)
    pred = tmp_path / by[(small_name, specs["camels"], "network", "omega_m")]["predictions"]
    frame = np.genfromtxt(pred, delimiter=",", names=True)
    assert len(frame) == 24 and set(frame["source_sample"]) == set(range(6))
    assert "network_sigma8_mean" in frame.dtype.names
    assert "warning:" in capsys.readouterr().err
