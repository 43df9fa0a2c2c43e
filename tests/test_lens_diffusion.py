"""Class-conditional diffusion of strong-lens images (issue 13 §3): the U-Net's class
embeddings, the lens metrics on known cases, and end to end through the CLI — the
lens_diffusion_smoke preset trains on a tiny synthetic labelled set, resumes to the weights of an
uninterrupted run, samples per class as the strong_lens kind's DataArray, and writes the per-class
report (FID/KID with the real–real floor, accuracies, ring radius and flux).

The images are built here (no lenstronomy): 16² positive Gaussian rings with noise, class
``none`` plain, ``cdm`` with two bright blobs, ``vortex`` with a line of blobs, written as the
``strong_lens`` kind's DataArrays are (name ``image``, coord ``substructure``, attrs ``kind``,
``pixel_scale`` in arcsec, ``units``, a ``split`` coord).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from engine import cli
from engine.evaluation.lens_metrics import (
    compare_distributions,
    ks_distance,
    noise_level,
    ring_radius,
    total_flux,
)
from engine.nn.registry import build_model
from engine.params import ConfigError
from engine.physics import slabs
from engine.runs import REPO_ROOT, RunDir
from engine.train.checkpoint import load_checkpoint
from engine.train.settings import resolve_params
from tests import lens_toys

CLASSES = ("none", "cdm", "vortex")
PIXEL_SCALE = 0.2  # arcsec per pixel
SIZE = 16
#: One CPU thread on the CPU: the smoke presets as the tests run them.
FAST = {"num_threads": 1, "device": "cpu"}


def synthetic_lenses(n: int, size: int = SIZE, seed: int = 0) -> xr.DataArray:
    """``n`` labelled synthetic lens images (tests/lens_toys.py): small bright rings at this
    module's size and pixel scale, with a theta_e coord."""
    return lens_toys.synthetic_lenses(
        n, size, seed, pixel_scale=PIXEL_SCALE, ring=(4.0, 5.0), ring_width=0.8, ring_amp=3.0,
        blob_amp=2.0, blob_var=1.0, blob_r=(2.0, 6.0), line=(5.0, 5), noise=0.1,
        units="e-/s per pixel", theta_e=True,
    )  # fmt: skip


def _sets(overrides: dict) -> list[str]:
    return [arg for k, v in overrides.items() for arg in ("--set", f"{k}={v}")]


def _train(run_dir, dataset, *extra: str, **overrides) -> int:
    argv = ["train", "--preset", "lens_diffusion_smoke", "--run-dir", str(run_dir)]
    return cli.main([*argv, *extra, *_sets({**FAST, "dataset": dataset, **overrides})])


@pytest.fixture(scope="module")
def lenses(tmp_path_factory) -> Path:
    """A 48-image synthetic lens dataset (.zarr with splits; 16 images per class)."""
    path = tmp_path_factory.mktemp("lenses") / "lenses.zarr"
    slabs.save(synthetic_lenses(48), path)
    return path


@pytest.fixture(scope="module")
def run(lenses, tmp_path_factory) -> Path:
    """A lens_diffusion_smoke run on :func:`lenses` (constant learning rate, for resume)."""
    path = tmp_path_factory.mktemp("runs") / "lensdiff"
    assert _train(path, lenses, warmup_steps=0, final_lr_fraction=1.0) == 0
    return path


# -- the metrics on known cases ------------------------------------------------------------------


def test_ring_radius_of_an_analytic_ring_and_flux_and_ks_on_known_cases():
    n, pixel, r0, w = 128, 0.02, 1.0, 0.03  # arcsec
    idx = (np.arange(n) - (n - 1) / 2) * pixel
    rr = np.hypot(idx[:, None], idx[None, :])
    ring = np.exp(-((rr - r0) ** 2) / (2 * w**2))
    # a thin Gaussian ring: (r0² + w²)/r0
    assert ring_radius(ring[None], pixel)[0] == pytest.approx((r0**2 + w**2) / r0, rel=1e-3)
    noise = 0.02 * np.random.default_rng(1).standard_normal((4, n, n))
    assert noise_level(noise) == pytest.approx(np.full(4, 0.02), rel=0.03)
    noisy = ring + noise
    np.testing.assert_allclose(ring_radius(noisy[:, None], pixel), r0, rtol=0.01)
    assert math.isnan(ring_radius(np.zeros((1, 8, 8)), pixel)[0])  # nothing above threshold
    flux = total_flux(np.full((3, 8, 8), 0.5))
    np.testing.assert_allclose(flux, 32.0)
    same = np.random.default_rng(2).normal(size=50)
    assert ks_distance(same, same)["ks"] == 0.0
    assert ks_distance(same, same + 100)["ks"] == 1.0
    cmp = compare_distributions(same, same, same, "arcsec")
    assert cmp["ks"] == cmp["ks_floor"] == 0.0 and cmp["unit"] == "arcsec"
    assert cmp["generated_mean"] == pytest.approx(cmp["real_mean"])
    with pytest.raises(ConfigError, match="pixel_scale=0"):
        ring_radius(ring[None], 0)
    with pytest.raises(ConfigError, match="single-channel square images"):
        total_flux(np.zeros((2, 2, 8, 8)))


# -- the network ---------------------------------------------------------------------------------


def test_unet_class_embeddings_condition_the_prediction():
    torch.manual_seed(0)
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([10, 500, 900])
    labels = torch.tensor([0, 1, 2])
    classes_only = build_model(
        "diffusion_unet", size=16, n_params=0, n_classes=3, null_class=True, width=8, levels=2
    ).eval()
    assert classes_only.unet.class_embedding.num_embeddings == 4  # 3 classes + null
    with torch.no_grad():
        out = classes_only(x, t, labels=labels)
        other = classes_only(x, t, labels=labels.flip(0))
        null = classes_only(x, t, labels=torch.full((3,), 3))
    assert out.shape == x.shape and (out[0] - other[0]).abs().max() > 1e-5
    assert (out[1] - null[1]).abs().max() > 1e-5
    both = build_model("diffusion_unet", size=16, n_params=1, n_classes=3, width=8, levels=2).eval()
    with torch.no_grad():
        a = both(x, t, torch.rand(3, 1), labels=labels)
    assert a.shape == x.shape
    with pytest.raises(ValueError, match="labels must be"):
        classes_only(x, t)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        classes_only(x, t, labels=torch.tensor([0, 1, 4]))
    with pytest.raises(ConfigError, match="needs conditioning"):
        build_model("diffusion_unet", size=16, n_params=0, n_classes=0)


# -- training, resume, sampling and evaluation through the CLI -----------------------------------


def test_smoke_run_trains_with_classes_and_the_lens_transform(run):
    rd = RunDir(run)
    assert rd.status()["state"] == "completed"
    val = {(r["epoch"], r["name"]) for r in rd.metrics() if r["split"] == "val"}
    assert {(e, n) for e in (0, 1) for n in ("loss", "fid", "fid_floor")} <= val
    ckpt = load_checkpoint(rd.checkpoint_dir / "best.pt")
    state = ckpt["task_state"]
    assert state["classes"] == list(CLASSES) and state["label"] == "substructure"
    assert state["names"] == [] and state["p_uncond"] == pytest.approx(0.2)
    assert state["log_offsets"] == [None] and state["asinh_scales"][0] > 0  # asinh(x / s)
    assert state["layout"]["attrs"]["kind"] == "strong_lens" and len(state["layout"]["x"]) == 16
    kwargs = ckpt["networks"]["unet"]["kwargs"]
    assert kwargs["n_classes"] == 3 and kwargs["null_class"] is True
    assert kwargs["circular_padding"] is False and kwargs["n_params"] == 0


def test_resume_reaches_the_same_weights(run, lenses, tmp_path):
    parts = RunDir(tmp_path / "parts")
    assert _train(parts.path, lenses, epochs=1, warmup_steps=0, final_lr_fraction=1.0) == 0
    assert cli.main(["train", "--run-dir", str(parts.path), "--resume", "--set", "epochs=2"]) == 0
    a = load_checkpoint(RunDir(run).checkpoint_dir / "last.pt")
    b = load_checkpoint(parts.checkpoint_dir / "last.pt")
    assert a["step"] == b["step"] == 6
    for key in ("state", "raw_state"):
        sa, sb = a["networks"]["unet"][key], b["networks"]["unet"][key]
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (key, k)
    assert a["task_state"] == b["task_state"]


def test_sample_per_class_writes_the_strong_lens_dataarray(run, lenses, tmp_path, capsys):
    from engine.evaluation.sampling import Emulator

    args = ["sample", "--checkpoint", str(run), "--count", "5", "--seed", "1"]
    assert cli.main([*args, "--substructure", "cdm", "--out", str(tmp_path / "a.zarr")]) == 0
    assert cli.main([*args, "--label", "cdm", "--out", str(tmp_path / "b.nc")]) == 0
    a, b = slabs.load(tmp_path / "a.zarr"), slabs.load(tmp_path / "b.nc")
    real = slabs.load(lenses)
    assert a.dims == real.dims == ("sample", "y", "x") and a.shape == (5, SIZE, SIZE)
    assert a.name == "image" and a.dtype == np.float32
    assert [str(v) for v in a["substructure"].values] == ["cdm"] * 5
    np.testing.assert_allclose(a["x"].values, real["x"].values)
    assert a["x"].attrs["units"] == "arcsec"
    for key in ("kind", "pixel_scale", "units", "preset", "size"):
        assert a.attrs[key] == real.attrs[key], key
    assert a.attrs["generator_class"] == "cdm" and a.attrs["generator_task"] == "diffusion"
    np.testing.assert_array_equal(a.values, b.values)  # same seed, same images
    assert "substructure=cdm" in capsys.readouterr().out
    # the Python API the explorer uses
    em = Emulator.from_checkpoint(run)
    assert em.classes == CLASSES and em.label == "substructure" and em.names == ()
    da = em.sample(count=5, seed=1, label="cdm")
    np.testing.assert_allclose(da.values, a.values, rtol=1e-6)
    assert not np.array_equal(em.sample_class("vortex", count=5, seed=1).values, a.values)
    guided = em.sample(count=2, seed=1, label="cdm", guidance=2.0)
    assert guided.attrs["guidance"] == 2.0 and not np.allclose(guided.values, a.values[:2])
    # one-line refusals, nothing written
    for flags, text in (
        (["--label", "wdm"], "class 'wdm' is not one of this generator's 'substructure' classes"),
        ([], "give one of none, cdm, vortex"),
        (["--label", "cdm", "--guidance", "-1"], "must be a number >= 0"),
    ):
        assert cli.main([*args, *flags, "--out", str(tmp_path / "c.zarr")]) == 2
        err = capsys.readouterr().err
        assert text in err and len(err.strip().splitlines()) == 1, err
    shipped = REPO_ROOT / "assets" / "models" / "diffusion32"
    maps = ["sample", "--checkpoint", str(shipped), "--omega-m", "0.3"]
    maps += ["--sigma8", "0.8", "--label", "cdm", "--out", str(tmp_path / "d.zarr")]
    assert cli.main(maps) == 2
    err = capsys.readouterr().err
    assert "has no classes" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.zarr").exists() and not (tmp_path / "d.zarr").exists()


def test_evaluate_writes_the_per_class_report(run, lenses, tmp_path, capsys):
    classifier = tmp_path / "classifier"
    argv = ["train", "--preset", "lens_smoke", "--run-dir", str(classifier)]
    settings = {**FAST, "dataset": lenses, "steps_per_epoch": 3, "epochs": 1, "eval_maps": 0}
    assert cli.main([*argv, *_sets(settings)]) == 0
    test = tmp_path / "test.zarr"  # 10 images per class, no splits (a reader's default split)
    slabs.save(synthetic_lenses(30, seed=5).drop_vars("split"), test)
    out = tmp_path / "report"
    argv = ["evaluate", "--checkpoint", str(run), "--dataset", str(test), "--count", "4"]
    assert cli.main([*argv, "--classifier", str(classifier), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 classes × 4 images" in text and "classifier accuracy" in text
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == list(CLASSES) and report["maps_per_point"] == 4
    for name in CLASSES:
        c = report["per_class"][name]
        d = c["domain"]
        assert d["feature"] == "classifier_penultimate"
        assert d["fid"] >= 0 and d["fid_floor"] >= 0 and "kid_floor_mean" in d
        assert 0 <= c["accuracy"]["generated"] <= 1 and 0 <= c["accuracy"]["real"] <= 1
        for q in ("ring_radius", "total_flux"):
            assert c[q]["ks"] is not None and c[q]["ks_floor"] is not None
        assert c["ring_radius"]["unit"] == "arcsec"
        assert c["inception"]["available"] is False
    assert 0 <= report["overall"]["accuracy_generated"] <= 1
    for rel in report["figures"].values():
        assert (out / rel).stat().st_size > 1000
    # without a classifier: summary features, no accuracies
    out2 = tmp_path / "report2"
    assert cli.main([*argv, "--classifier", "none", "--out", str(out2)]) == 0
    r2 = json.loads((out2 / "report.json").read_text())
    assert r2["per_class"]["cdm"]["domain"]["feature"] == "SummaryFeatures"
    assert r2["per_class"]["cdm"]["accuracy"]["generated"] is None


def test_bad_settings_are_one_line_errors(lenses, tmp_path):
    from engine.tasks.diffusion import ConditionalDiffusion

    def task(**overrides):
        params = resolve_params(
            "lens_diffusion_smoke", overrides={**FAST, "dataset": str(lenses), **overrides}
        )
        return ConditionalDiffusion(params, torch.device("cpu"))

    t = task()
    assert t.classes == CLASSES and t.names == () and t.asinh_scales[0] > 0
    assert task(targets="theta_e").names == ("theta_e",)
    with pytest.raises(ConfigError, match="circular_padding=true: strong-lens images"):
        task(circular_padding=True)
    with pytest.raises(ConfigError, match="no class coord 'kind'"):
        task(label="kind")
    with pytest.raises(ConfigError, match="set dataset=SPEC"):
        task(dataset="")
    with pytest.raises(ConfigError, match="no label 'omega_m'.*targets=none"):
        task(targets="omega_m")
    with pytest.raises(ConfigError, match="p_uncond=0.2 is for class-conditional"):
        resolve_params("lens_diffusion_smoke", overrides={"label": ""})
    with pytest.raises(ConfigError, match="needs a null class"):
        resolve_params("lens_diffusion_smoke", overrides={"p_uncond": 0, "guidance_scale": 1})
