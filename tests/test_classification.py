"""The classification task (strong-lens substructure, after ML4SCI DeepLense): metrics on known
cases, the rotation augmentation, training that beats chance, resume, the evaluate and predict
verbs (zarr and folders of .npy images in DeepLense's layouts), and one-line errors.

The images are a tiny synthetic labelled set built here (no lenstronomy): 32² Gaussian rings,
class ``none`` plain, ``cdm`` with two bright blobs, ``vortex`` with a line of seven blobs,
written as the ``strong_lens`` kind's DataArrays are (coord ``substructure``, attrs ``kind``,
``pixel_scale``, a ``split`` coord).
"""

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
from engine.evaluation.classification import (
    accuracy,
    auroc,
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    reliability,
    roc_curves,
)
from engine.evaluation.classification_eval import LITERATURE
from engine.nn.registry import build_model
from engine.params import ConfigError
from engine.physics import slabs
from engine.tasks.classification import rotate_images
from engine.train.settings import resolve_params
from tests import lens_toys

CLASSES = ("none", "cdm", "vortex")
PIXEL_SCALE = 0.1  # arcsec per pixel
#: Settings of the short runs here: one CPU thread, no end-of-training evaluation unless asked.
QUICK = {"num_threads": 1, "device": "cpu"}


def synthetic_lenses(n: int, size: int = 32, seed: int = 0) -> xr.DataArray:
    """``n`` labelled synthetic lens images (tests/lens_toys.py) at this module's pixel scale."""
    return lens_toys.synthetic_lenses(n, size, seed, pixel_scale=PIXEL_SCALE)


@pytest.fixture(scope="module")
def lenses(tmp_path_factory) -> Path:
    """A 300-image synthetic lens dataset (.zarr with splits)."""
    path = tmp_path_factory.mktemp("lenses") / "lenses.zarr"
    slabs.save(synthetic_lenses(300), path)
    return path


@pytest.fixture(scope="module")
def trained(lenses, tmp_path_factory) -> Path:
    """A classifier run of the lens_smoke preset on :func:`lenses` (evaluated on its test split
    when it completes)."""
    run = tmp_path_factory.mktemp("runs") / "lens"
    argv = ["train", "--task", "classification", "--preset", "lens_smoke", "--run-dir", str(run)]
    argv += ["--set", f"dataset={lenses}", "--set", "num_threads=1", "--set", "device=cpu"]
    assert cli.main(argv) == 0
    return run


# ---------------------------------------------------------------------------------------------
# Metrics on known cases
# ---------------------------------------------------------------------------------------------


def test_perfect_scores_and_a_hand_computed_confusion_matrix():
    labels = np.array([0, 0, 1, 2, 2, 1])
    perfect = np.eye(3)[labels]
    per_class, macro = auroc(perfect, labels)
    assert per_class == [1.0, 1.0, 1.0] and macro == 1.0
    assert accuracy(perfect, labels) == 1.0
    assert expected_calibration_error(perfect, labels) == pytest.approx(0.0, abs=1e-7)
    assert confusion_matrix(perfect, labels).tolist() == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    # predictions 0, 1, 1, 2, 0, 1 (rows true, columns predicted)
    guess = np.eye(3)[[0, 1, 1, 2, 0, 1]] * 0.5 + 0.5 / 3
    assert confusion_matrix(guess, labels).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert accuracy(guess, labels) == pytest.approx(4 / 6)
    for fpr, tpr in roc_curves(perfect, labels):
        assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
        assert np.trapezoid(tpr, fpr) == pytest.approx(1.0)


def test_auc_by_hand_and_undefined_classes():
    # class 0 scores: positives 0.9, 0.4; negatives 0.6, 0.2: 3 of 4 pairs ordered -> AUC 0.75
    probs = np.array([[0.9, 0.1, 0.0], [0.4, 0.6, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0]])
    labels = np.array([0, 0, 1, 1])
    per_class, macro = auroc(probs, labels)
    assert per_class[0] == pytest.approx(0.75) and per_class[1] == pytest.approx(0.75)
    assert math.isnan(per_class[2])  # no image of class 2: no AUC
    assert macro == pytest.approx(0.75)  # the mean of the classes that have one
    assert roc_curves(probs, labels)[2] is None


def test_known_expected_calibration_error_and_reliability_bins():
    # 10 images at confidence 0.7, half right (|0.7 - 0.5| = 0.2), and 10 at confidence 0.85,
    # all right (|0.85 - 1| = 0.15): ECE = 0.5 * 0.2 + 0.5 * 0.15 = 0.175
    probs = np.array([[0.7, 0.2, 0.1]] * 10 + [[0.1, 0.05, 0.85]] * 10)
    labels = np.array([0] * 5 + [1] * 5 + [2] * 10)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.175, abs=1e-6)
    rel = reliability(probs, labels, n_bins=15)
    full = [i for i, n in enumerate(rel["count"]) if n]
    assert full == [10, 12] and [rel["count"][i] for i in full] == [10, 10]
    assert rel["accuracy"][10] == pytest.approx(0.5) and rel["accuracy"][12] == pytest.approx(1.0)
    assert rel["confidence"][10] == pytest.approx(0.7) and math.isnan(rel["accuracy"][0])
    m = classification_metrics(probs, labels, CLASSES)
    assert m["n_per_class"] == {"none": 5, "cdm": 5, "vortex": 10}
    assert m["metrics"]["ece"] == pytest.approx(0.175, abs=1e-6)


def test_random_scores_give_auc_one_half_with_the_mann_whitney_spread():
    """Scores independent of the labels: each one-vs-rest AUC is a Mann-Whitney U / (n1 n0)
    with mean 1/2 and variance (n1 + n0 + 1) / (12 n1 n0) under the null (Mann & Whitney 1947);
    400 seeded draws test both, and the macro AUC's mean."""
    from torchmetrics.functional.classification import multiclass_auroc

    rng = np.random.default_rng(7)
    n1, n0 = 60, 120  # 60 images per class: class 0 against the other 120
    labels = np.repeat([0, 1, 2], n1)
    aucs, macros = [], []
    for _ in range(400):
        probs = rng.dirichlet(np.ones(3), size=len(labels))
        per_class, macro = auroc(probs, labels)
        aucs.append(per_class[0])
        macros.append(macro)
    aucs = np.array(aucs)
    sd = math.sqrt((n1 + n0 + 1) / (12 * n1 * n0))
    assert abs(aucs.mean() - 0.5) < 4 * sd / math.sqrt(len(aucs))
    assert abs(np.mean(macros) - 0.5) < 4 * sd / math.sqrt(len(aucs))
    assert 0.85 < aucs.std(ddof=1) / sd < 1.15  # the spread of the null distribution
    # with every class present, our macro AUC is torchmetrics' own
    t = torch.as_tensor(probs, dtype=torch.float32)
    ref = multiclass_auroc(t, torch.as_tensor(labels), 3, average="macro", thresholds=None)
    assert macros[-1] == pytest.approx(float(ref), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Rotation augmentation and networks
# ---------------------------------------------------------------------------------------------


def test_rotation_preserves_flux_and_rotation_invariant_images():
    n = 32
    c = (n - 1) / 2
    yy, xx = np.mgrid[0:n, 0:n] - c
    r = np.hypot(yy, xx)
    ring = np.exp(-((r - 8.0) ** 2) / (2 * 2.0**2))
    lopsided = ring * (1 + 0.8 * np.cos(np.arctan2(yy, xx)))  # a ring brighter on one side
    gauss = np.exp(-(r**2) / (2 * 3.0**2))
    x = torch.tensor(np.stack([lopsided, gauss]), dtype=torch.float32)[:, None]
    for angle in (0.3, 1.0, 2.5, 4.0):
        out = rotate_images(x, torch.full((2,), angle))
        sums = out.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
        torch.testing.assert_close(sums, torch.ones(2), atol=5e-3, rtol=0)  # flux kept
        # isotropic image: itself, to the bilinear interpolation error bound
        # (|f_xx| + |f_yy|) h^2 / 8 = (2 / 3^2) / 8 pixels^-2 for a sigma = 3 px unit Gaussian
        assert (out[1] - x[1]).abs().max() < 2 / 3.0**2 / 8
        assert (out[0] - x[0]).abs().max() > 0.2  # the lopsided ring did turn
    # quarter turns are exact: R(pi/2) samples the input at the rotated pixel centres
    quarter = rotate_images(x, torch.full((2,), math.pi / 2))
    torch.testing.assert_close(quarter, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="square"):
        rotate_images(torch.zeros(1, 1, 4, 6), torch.zeros(1))


def test_classifier_networks_give_class_logits():
    from engine.nn.vit import sincos_position_embedding

    x = torch.randn(2, 1, 32, 32)
    for name in ("resnet18", "vit_small", "cnn"):
        model = build_model(name, in_channels=1, n_params=3, width=4, head="logits").eval()
        out = model(x)
        assert out.shape == (2, 3) and torch.isfinite(out).all()
    # the ViT takes any multiple of its patch; its position embeddings tell patches apart
    vit = build_model("vit_small", n_params=3, width=4, patch_size=8, head="logits").eval()
    assert vit(torch.randn(1, 1, 48, 48)).shape == (1, 3)
    with pytest.raises(ValueError, match="multiple of patch_size=8"):
        vit(torch.randn(1, 1, 36, 36))
    pos = sincos_position_embedding(4, 4, 16)
    assert pos.shape == (16, 16) and torch.unique(pos, dim=0).shape[0] == 16
    with pytest.raises(ConfigError, match="head='softmax' must be one of gaussian, logits"):
        build_model("resnet18", head="softmax")


# ---------------------------------------------------------------------------------------------
# Training, resume
# ---------------------------------------------------------------------------------------------


def test_training_beats_chance_on_held_out_images(trained):
    report = json.loads((trained / "report.json").read_text())
    assert report["task"] == "classification" and report["dataset"].endswith("?split=test")
    assert report["classes"] == list(CLASSES)
    assert report["metrics"]["auc_macro"] > 0.8  # chance: 0.5
    assert report["metrics"]["accuracy"] > 0.6  # chance: 1/3
    val = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    names = {r["name"] for r in val if r["split"] == "val"}
    assert {"loss", "accuracy", "auc", "auc_none", "auc_cdm", "auc_vortex"} <= names
    ckpt = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["best"]["metric"] == "auc" and ckpt["best"]["mode"] == "max"
    state = ckpt["task_state"]
    assert state["classes"] == list(CLASSES) and state["size"] == 32
    assert state["normalisation"]["transform"] == "asinh"
    assert state["pixel_scale"] == pytest.approx(PIXEL_SCALE)


def test_resume_reaches_the_weights_of_an_uninterrupted_run(lenses, tmp_path):
    from engine.runs import RunDir
    from engine.train.loop import Trainer

    settings = {
        **QUICK,
        "dataset": str(lenses),
        "model": "resnet18",
        "width": 2,
        "batch_size": 8,
        "batch_shards": 2,
        "steps_per_epoch": 3,
        "epochs": 2,
        "warmup_steps": 1,
        "ema_decay": 0.9,
        "augment_flips": True,
        "augment_noise": 0.05,
        "eval_maps": 0,
    }

    def trainer(name):
        params = resolve_params("lens_smoke", overrides=settings, task="classification")
        return Trainer(params, RunDir(tmp_path / name).create(), torch.device("cpu"), False)

    whole = trainer("whole")
    assert whole.fit() == "completed" and whole.step == 6
    parts = trainer("parts")
    assert parts.fit(lambda: parts.step == 4) == "stopped"
    resumed = trainer("parts")
    resumed.restore()
    assert resumed.step == 4 and resumed.fit() == "completed"
    a, b = whole.state()["networks"]["model"], resumed.state()["networks"]["model"]
    assert a["name"] == "resnet18" and a["kwargs"]["head"] == "logits"
    for key in ("state", "raw_state"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert whole.state()["best"] == resumed.state()["best"]


# ---------------------------------------------------------------------------------------------
# evaluate and predict
# ---------------------------------------------------------------------------------------------


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_writes_report_predictions_and_figures(trained, lenses, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(trained), "--dataset", f"{lenses}?split=test"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "macro AUC" in text and "confusion" in text
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    assert set(m) == {"accuracy", "auc_macro", "ece", "auc"} and set(m["auc"]) == set(CLASSES)
    assert m["auc_macro"] == pytest.approx(np.mean(list(m["auc"].values())))
    counts = np.array(report["confusion_matrix"]["counts"])
    assert counts.sum() == report["n_maps"] == sum(report["n_per_class"].values()) == 45
    assert counts.sum(axis=1).tolist() == [report["n_per_class"][c] for c in CLASSES]
    assert report["literature"]["resnet_baseline_macro_auc"] == 0.90
    assert report["literature"] == LITERATURE
    for rel in report["figures"].values():
        assert (out / rel).stat().st_size > 1000
    rows = _csv(out / "predictions.csv")
    assert list(rows[0]) == ["sample", "substructure", "p_none", "p_cdm", "p_vortex", "predicted"]
    assert len(rows) == 45
    # compare scores parameter inference: a classifier gets an error row, not a crash
    table = tmp_path / "compare.csv"
    argv = ["compare", "--checkpoints", str(trained), "--datasets", f"{lenses}?split=test"]
    assert cli.main([*argv, "--out", str(table), "--no-pk-likelihood"]) == 0
    assert "is a classifier" in capsys.readouterr().err


def test_predict_from_a_zarr_and_from_folders_in_deeplense_layouts(trained, lenses, tmp_path):
    out = tmp_path / "zarr.csv"
    argv = ["predict", "--checkpoint", str(trained)]
    assert cli.main([*argv, "--maps", str(lenses), "--out", str(out)]) == 0
    rows = _csv(out)
    assert list(rows[0]) == ["sample", "substructure", "p_none", "p_cdm", "p_vortex", "predicted"]
    assert len(rows) == 300 and {r["substructure"] for r in rows} == set(CLASSES)
    probs = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)

    da = slabs.load(lenses).isel(sample=slice(0, 9))
    expected = probs[:9]
    layouts = {
        "plain": lambda img: img,
        "channel": lambda img: img[None],
        "pair": lambda img: np.array([img, "label"], dtype=object),
    }
    for name, layout in layouts.items():
        folder = tmp_path / name
        folder.mkdir()
        lines = ["file,substructure"]
        for i in range(9):
            np.save(folder / f"img_{i}.npy", layout(da.values[i]), allow_pickle=True)
            lines.append(f"img_{i}.npy,{da['substructure'].values[i]}")
        (folder / "labels.csv").write_text("\n".join(lines) + "\n")
        spec = f"folder:{folder}?pixel_scale={PIXEL_SCALE}" + (
            "&pickle=true" if name == "pair" else ""
        )
        csv_path = tmp_path / f"{name}.csv"
        assert cli.main([*argv, "--maps", spec, "--out", str(csv_path)]) == 0, name
        got = _csv(csv_path)
        assert list(got[0]) == [
            "sample",
            "file",
            "substructure",
            "p_none",
            "p_cdm",
            "p_vortex",
            "predicted",
        ]
        assert [r["substructure"] for r in got] == list(da["substructure"].values)
        p = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in got])
        np.testing.assert_allclose(p, expected, atol=1e-5, err_msg=name)


def test_pickled_pairs_need_consent(trained, tmp_path, capsys):
    folder = tmp_path / "pairs"
    folder.mkdir()
    np.save(folder / "a.npy", np.array([np.zeros((32, 32)), 1], dtype=object), allow_pickle=True)
    (folder / "labels.csv").write_text("file,substructure\na.npy,cdm\n")
    argv = ["predict", "--checkpoint", str(trained), "--out", str(tmp_path / "p.csv")]
    assert cli.main([*argv, "--maps", f"folder:{folder}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pickle=true" in err and "execute code" in err


def test_images_of_another_size_or_scale_are_refused_in_one_line(trained, tmp_path, capsys):
    argv = ["predict", "--checkpoint", str(trained), "--out", str(tmp_path / "p.csv")]
    small = tmp_path / "small.zarr"
    slabs.save(synthetic_lenses(6, size=24), small)
    assert cli.main([*argv, "--maps", str(small)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "24x24 pixels" in err and "trained on 1 x 32x32" in err
    coarse = synthetic_lenses(6)
    coarse.attrs["pixel_scale"] = 0.2
    slabs.save(coarse, tmp_path / "coarse.zarr")
    assert cli.main([*argv, "--maps", str(tmp_path / "coarse.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "0.2 arcsec/pixel" in err
    unknown = synthetic_lenses(6)
    unknown["substructure"] = ("sample", np.array(["none", "wdm"] * 3, dtype=object))
    slabs.save(unknown, tmp_path / "wdm.zarr")
    assert cli.main([*argv, "--maps", str(tmp_path / "wdm.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown class names 'wdm'" in err


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_datasets_and_settings_are_one_line_errors(lenses, tmp_path):
    from engine.tasks.classification import Classification

    def task(**overrides):
        params = resolve_params(
            "lens_smoke", overrides={**QUICK, "dataset": str(lenses), **overrides}
        )
        return Classification(params, torch.device("cpu"))

    t = task()
    assert t.classes == CLASSES and t.labels["train"].shape == (210,)
    with pytest.raises(ConfigError, match="set dataset=SPEC"):
        task(dataset="")
    with pytest.raises(ConfigError, match="no class coord 'kind'.*substructure"):
        task(label="kind")
    with pytest.raises(
        ConfigError, match="unknown class names 'vortex'; the classes are none, cdm"
    ):
        task(classes="none,cdm")
    with pytest.raises(ConfigError, match="at least two distinct"):
        task(classes="none")
    with pytest.raises(ConfigError, match="model='hybrid'"):
        task(model="hybrid")
    with pytest.raises(ConfigError, match="patch_size=5 does not divide the 32-pixel images"):
        task(model="vit_small", patch_size=5)
    one = synthetic_lenses(30)
    one["substructure"] = ("sample", np.array(["cdm"] * 30, dtype=object))
    slabs.save(one, tmp_path / "one.zarr")
    with pytest.raises(ConfigError, match="holds 1 class of 'substructure' \\(cdm\\)"):
        task(dataset=str(tmp_path / "one.zarr"))
    # a user's own class order is kept; integer labels become text
    assert task(classes="vortex,cdm,none").classes == ("vortex", "cdm", "none")
    ints = synthetic_lenses(60)
    ints["substructure"] = ("sample", np.arange(60) % 3)
    slabs.save(ints, tmp_path / "ints.zarr")
    assert task(dataset=str(tmp_path / "ints.zarr")).classes == ("0", "1", "2")
