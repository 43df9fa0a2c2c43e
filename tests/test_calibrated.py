"""The simulation-calibrated P(k) likelihood (engine.evaluation.calibrated): recovery and
coverage on generated maps, agreement with the exact linear-theory likelihood on Gaussian maps,
the Hartlap factor, refusals, the stored calibration, ``predict --method pk-calibrated`` on a
folder spec, and the calibrated row of ``evaluate`` and ``compare``."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import torch

from engine import cli
from engine.data import open_spec
from engine.evaluation import calibrated, calibrated_use
from engine.evaluation.calibrated import Calibration, hartlap_factor
from engine.evaluation.calibrated_fit import fit_calibration
from engine.evaluation.calibrated_use import (
    calibrate,
    load_calibration,
    pk_calibrated_predict,
)
from engine.evaluation.compare import compare
from engine.evaluation.evaluate import evaluate
from engine.evaluation.likelihood import pk_likelihood_predict
from engine.params import ConfigError

#: Gaussian and lognormal maps: 32² over 256 Mpc/h (16 k_f-wide bins = the default 16 bins).
GRF = "grf?size=32&box_size=256"
LOGNORMAL = "lognormal?size=32&box_size=256"
N_TRAIN, N_TEST = 400, 300
#: P(|z| ≤ 1) of a Gaussian.
P68 = math.erf(1 / math.sqrt(2))


@pytest.fixture(autouse=True, scope="module")
def _calibration_cache(tmp_path_factory):
    """Calibrations of this module are cached in a temporary folder, not in ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(calibrated.CACHE_ENV, str(tmp_path_factory.mktemp("calibrations")))
        yield


def _one_line(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


def _maps(spec: str, count: int, seed: int):
    return open_spec(f"{spec}&count={count}&seed={seed}")


@pytest.fixture(scope="module")
def grf():
    """(calibration fitted on N_TRAIN Gaussian maps, N_TEST other maps)."""
    torch.manual_seed(0)
    return fit_calibration(_maps(GRF, N_TRAIN, 1)), _maps(GRF, N_TEST, 2)


@pytest.fixture(scope="module")
def lognormal():
    return fit_calibration(_maps(LOGNORMAL, N_TRAIN, 3)), _maps(LOGNORMAL, N_TEST, 4)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["grf", "lognormal"])
def test_calibrated_likelihood_recovers_parameters_with_calibrated_68_intervals(which, request):
    """Coverage of mean ± std within 3 binomial σ of 0.683 for each parameter (N_TEST maps);
    the mean error is small against the scatter (no bias beyond 3 standard errors plus the
    emulator's own error ~ σ √(p / n_train))."""
    cal, test = request.getfixturevalue(which)
    out = pk_calibrated_predict(test, cal)
    assert set(out) == {"mean", "std", "map", "corr", "refined", "truth"}
    assert out["mean"].shape == out["std"].shape == (N_TEST, 2) and out["corr"].shape == (N_TEST,)
    err = out["mean"] - out["truth"]
    cover = (np.abs(err) <= out["std"]).mean(0)
    tol = 3 * math.sqrt(P68 * (1 - P68) / N_TEST)
    assert np.all(np.abs(cover - P68) < tol), cover
    rmse = np.sqrt((err**2).mean(0))
    emulator = math.sqrt(6 / N_TRAIN)
    assert np.all(np.abs(err.mean(0)) < (3 / math.sqrt(N_TEST) + emulator) * rmse), err.mean(0)
    # informative: below the prior's own scatter (width / √12)
    assert np.all(rmse < 0.75 * 0.4 / math.sqrt(12)), rmse
    # the held-out validation of the fit: χ² per bin ≈ 1 + p/n
    v = cal.validation
    assert v["n_maps"] == 80 and abs(v["chi2_per_bin"] - 1) < 5 * v["chi2_error"] + 0.05, v


def test_agrees_with_the_exact_linear_theory_likelihood_on_gaussian_maps(grf):
    """Same maps, same bins: the calibrated likelihood and the exact likelihood of a Gaussian
    field's binned spectrum with its linear theory (P̂_b ~ μ_b χ²_{n_b}/n_b, the ``gamma``
    option of :func:`pk_likelihood_predict`) must agree within their statistical differences.

    Tolerances: per map, the rms difference of the posterior means is below half the posterior
    std (same data; they differ by the Gaussian approximation of ln P̂ and by the emulator's and
    covariance's noise from n_train maps); on average, the systematic difference is within 3
    standard errors of the mean difference plus the emulator's error σ √(p / n_train); the
    RMSEs agree within 10 % and the posterior widths within 15 % (a Gaussian in ln P̂ has the
    variance ψ'(n_b/2) ≈ 2/n_b (1 + 1/n_b) instead of 2/n_b: ~1/n_b of the information of a
    bin of n_b ≥ 8 modes is lost, so the calibrated posterior is slightly wider, never
    narrower than 0.95 times the exact one).
    """
    cal, test = grf
    assert cal.n_bins == 16  # the linear likelihood's k_f-wide bins, unmerged
    c = pk_calibrated_predict(test, cal)
    lin = pk_likelihood_predict(test, likelihood="gamma")
    d = c["mean"] - lin["mean"]
    sigma = lin["std"]
    assert np.all(np.sqrt(((d / sigma) ** 2).mean(0)) < 0.5), np.sqrt(((d / sigma) ** 2).mean(0))
    tol = 3 * d.std(0) / math.sqrt(N_TEST) + math.sqrt(6 / N_TRAIN) * sigma.mean(0)
    assert np.all(np.abs(d.mean(0)) < tol), (d.mean(0), tol)
    rmse = lambda r: np.sqrt(((r["mean"] - r["truth"]) ** 2).mean(0))  # noqa: E731
    assert np.all(np.abs(rmse(c) / rmse(lin) - 1) < 0.1), (rmse(c), rmse(lin))
    ratio = np.median(c["std"] / lin["std"], axis=0)
    assert np.all((ratio > 0.95) & (ratio < 1.15)), ratio


def test_hartlap_factor_and_too_few_maps():
    assert hartlap_factor(100, 10) == pytest.approx((100 - 10 - 2) / (100 - 1))  # eq. 17
    assert hartlap_factor(100, 10, n_fit=6) == pytest.approx((100 - 6 - 10 - 1) / (100 - 6))
    assert hartlap_factor(13, 10) == pytest.approx(1 / 12)
    msg = _one_line(hartlap_factor, 12, 10)
    assert "12 maps are too few" in msg and "10 bins" in msg and "n > 12" in msg
    # 16 bins and 6 coefficients need n > 16 + 6 + 1 maps
    few = _maps(GRF, 23, 5)
    msg = _one_line(fit_calibration, few)
    assert "23 maps are too few" in msg and "16 bins" in msg and "at least 24" in msg
    fit_calibration(_maps(GRF, 24, 5))  # just enough
    # fewer bins need fewer maps
    assert fit_calibration(few, max_bins=8).n_bins <= 8


def test_refusals_of_other_geometries_and_bad_inputs(grf):
    cal, test = grf
    other_box = _maps("grf?size=32&box_size=128", 4, 6)
    msg = _one_line(pk_calibrated_predict, other_box, cal)
    assert "32² over 256 Mpc/h" in msg and "32² over 128 Mpc/h" in msg
    msg = _one_line(pk_calibrated_predict, _maps("grf?size=16&box_size=256", 4, 6), cal)
    assert "16² over 256 Mpc/h" in msg
    msg = _one_line(pk_calibrated_predict, np.zeros((2, 16, 16)), cal)
    assert "(B, 32, 32)" in msg
    kappa = open_spec("kappa?size=32&count=2&seed=1")
    assert "deg" in _one_line(pk_calibrated_predict, kappa, cal)
    bare = test.isel(sample=slice(0, 3)).copy()
    bare.attrs = {k: v for k, v in bare.attrs.items() if k != "box_size"}
    assert "no pixel scale" in _one_line(pk_calibrated_predict, bare, cal)
    out = pk_calibrated_predict(bare, cal, scale={"box_size": 256.0})  # given by the caller
    assert out["mean"].shape == (3, 2)
    nan = test.isel(sample=slice(0, 2)).copy()
    nan.values[1, 0, 0] = np.nan
    assert "map 1" in _one_line(pk_calibrated_predict, nan, cal)
    flat = test.isel(sample=slice(0, 30)).copy()
    flat["sigma8"] = ("sample", np.full(30, 0.8))
    assert "does not vary sigma8" in _one_line(fit_calibration, flat)
    assert "grid" in _one_line(pk_calibrated_predict, test, cal, grid=4)
    assert "prior" in _one_line(pk_calibrated_predict, test, cal, prior=((0.05, 0.5), (0.6, 1)))


# ---------------------------------------------------------------------------------------------
# Storage and reuse
# ---------------------------------------------------------------------------------------------


def test_stored_calibration_round_trips(grf, tmp_path):
    cal, test = grf
    saved = cal.save(tmp_path / "cal.json")
    assert saved.path == str(tmp_path / "cal.json")
    doc = json.loads((tmp_path / "cal.json").read_text())
    assert doc["format"] == "pk-calibration" and doc["version"] == 1
    assert doc["geometry"] == {"unit": "Mpc/h", "side": 256.0, "size": 32, "units": "dimensionless"}
    assert len(doc["edges"]) == 17 and np.array(doc["cov"]).shape == (16, 16)
    assert np.array(doc["coef"]).shape == (6, 16) and doc["n_maps"] == N_TRAIN
    back = load_calibration(tmp_path / "cal.json")
    assert back == cal  # every array bit for bit (JSON floats round-trip exactly)
    a, b = pk_calibrated_predict(test, cal), pk_calibrated_predict(test, str(tmp_path / "cal.json"))
    np.testing.assert_array_equal(a["mean"], b["mean"])
    with pytest.raises(ConfigError, match="must end in .json"):
        cal.save(tmp_path / "cal.npz")
    (tmp_path / "bad.json").write_text('{"format": "pk-calibration", "version": 1}')
    assert "damaged" in _one_line(load_calibration, tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("[1, 2]")
    assert "not a P(k) calibration" in _one_line(load_calibration, tmp_path / "other.json")
    assert "does not exist" in _one_line(load_calibration, tmp_path / "none.json")


def test_calibrations_are_cached_by_spec_and_not_refitted(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "maps", 40)
    spec = f"folder:{folder}?box_size=256"
    calibrated_use._MEMORY.clear()
    first = calibrate(spec)
    assert first.path and os.path.dirname(first.path) == os.environ[calibrated.CACHE_ENV]
    assert first.n_maps == 32 and first.spec == spec  # the train split: 80 % of the files
    assert calibrate(f"{spec}&split=test") is first  # any split: the same train split

    def no_fit(*args, **kwargs):
        raise AssertionError("refitted")

    monkeypatch.setattr(calibrated_use, "fit_calibration", no_fit)
    calibrated_use._MEMORY.clear()
    again = calibrate(spec)  # from the cache file
    assert again == first and again.path == first.path
    # the dataset changes on disk: the key changes, so it is fitted again
    labels = folder / "labels.csv"
    labels.write_text(labels.read_text().replace("0.8", "0.81", 1))
    with pytest.raises(AssertionError, match="refitted"):
        calibrate(spec)


# ---------------------------------------------------------------------------------------------
# The verbs: predict on a folder spec, evaluate and compare rows
# ---------------------------------------------------------------------------------------------


def _folder(path, count: int, seed: int = 11):
    """A folder dataset of ``count`` lognormal 32² maps over 256 Mpc/h (.npy + labels.csv)."""
    da = _maps(LOGNORMAL, count, seed)
    path.mkdir(parents=True)
    with open(path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "omega_m", "sigma8"])
        for i in range(count):
            np.save(path / f"m{i:03d}.npy", da.values[i])
            om, s8 = da["omega_m"].values[i], da["sigma8"].values[i]
            w.writerow([f"m{i:03d}.npy", f"{om:.6f}", f"{s8:.6f}"])
    return path


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_verb_pk_calibrated_on_a_folder_spec(tmp_path, capsys):
    folder = _folder(tmp_path / "maps", 40)
    spec = f"folder:{folder}?box_size=256"
    out, cal = tmp_path / "p.csv", tmp_path / "cal.json"
    argv = ["predict", "--method", "pk-calibrated", "--calibration", spec]
    argv += ["--maps", f"{spec}&split=test", "--out", str(out), "--save-calibration", str(cal)]
    assert cli.main(argv) == 0
    assert "predictions (pk-calibrated; rmse omega_m=" in capsys.readouterr().out
    rows = _rows(out)
    assert len(rows) == 4  # the test split: 10 % of 40 files
    assert list(rows[0]) == ["sample", "omega_m_true", "sigma8_true"] + [
        f"{p}_{k}" for p in ("omega_m", "sigma8") for k in ("mean", "std", "map")
    ]
    assert load_calibration(cal).n_maps == 32
    # the saved calibration is used as it is (the method follows from --calibration)
    argv = ["predict", "--calibration", str(cal), "--maps", f"{spec}&split=test"]
    assert cli.main([*argv, "--out", str(out), "--overwrite"]) == 0
    assert _rows(out) == rows
    # refusals: one line, exit code 2, nothing written
    bad = [
        (["--method", "pk-calibrated"], "needs --calibration"),
        (["--method", "pk-calibrated", "--checkpoint", str(cal)], "uses no checkpoint"),
        (["--calibration", spec, "--checkpoint", str(cal)], "not network"),
        (["--method", "pk-likelihood", "--calibration", spec], "are for --method pk-calibrated"),
        (["--calibration", str(cal), "--maps", f"folder:{folder}?box_size=128"], "256 Mpc/h"),
        (["--calibration", f"folder:{folder}?box_size=256&count=20"], "too few"),
    ]
    for extra, words in bad:
        args = ["predict", "--maps", spec, "--out", str(tmp_path / "x.csv"), *extra]
        if "--maps" in extra:
            args = ["predict", "--out", str(tmp_path / "x.csv"), *extra]
        assert cli.main(args) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, (extra, err)
        assert not (tmp_path / "x.csv").exists()


def test_evaluate_and_compare_have_the_calibrated_row(tmp_path):
    folder = _folder(tmp_path / "maps", 40)
    spec = f"folder:{folder}?box_size=256"
    report = evaluate(f"{spec}&split=test", out_dir=tmp_path / "ev")
    assert set(report["methods"]) == {"pk_calibrated"}  # no theory for folder maps
    entry = report["methods"]["pk_calibrated"]
    assert entry["label"] == "calibrated P(k)" and entry["metrics"]["omega_m"]["rmse"] > 0
    assert report["calibration"]["n_maps"] == 32 and report["calibration"]["spec"] == spec
    notes = " ".join(report["notes"])
    assert "P(k) likelihood skipped" in notes and "include" not in notes
    header = _rows(tmp_path / "ev" / "predictions.csv")[0]
    assert "pk_calibrated_omega_m_mean" in header and "pk_calibrated_sigma8_map" in header
    # all maps: the calibration's train split is among them, and the report says so
    report = evaluate(spec)
    assert "which the evaluated maps include" in " ".join(report["notes"])
    # Gaussian maps: both likelihoods
    report = evaluate("grf?size=32&box_size=256&count=40&seed=3", k_max=None)
    assert set(report["methods"]) == {"pk_likelihood", "pk_calibrated"}
    table = compare([], [spec, "grf?size=32&box_size=256"], count=30)
    by = {(r.model, r.dataset, r.method) for r in table.itertuples()}
    assert ("pk-calibrated", spec, "pk_calibrated") in by
    assert ("pk-calibrated", "grf?size=32&box_size=256", "pk_calibrated") in by
    assert table[table.method == "pk_calibrated"]["error"].isna().all()
    # too few maps to calibrate: an error row with the reason
    few = f"folder:{_folder(tmp_path / 'few', 20)}?box_size=256"
    row = compare([], [few])
    cal = row[row.method == "pk_calibrated"]
    assert cal["rmse"].isna().all() and cal["error"].str.contains("too few").all()
    assert isinstance(calibrate(spec), Calibration)
