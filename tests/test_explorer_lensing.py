"""Param-level tests of the Lensing page (no browser).

The physics is the ``strong_lens`` kind's (lenstronomy); the checks here are those of the page:
the image of the sliders' settings, the critical curve of a singular isothermal sphere (a circle
of radius θ_E, its caustic a point, its cut a circle of radius θ_E), updates in place, the
classifier's probabilities (a tiny untrained CNN written here as a classification checkpoint),
the hint without a classifier, and the Generate panel with and without a lens generator.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from bokeh.document import Document

from engine.params import ConfigError
from engine.physics.strong_lens import CLASSES, PRESETS
from explorer import lensing
from explorer import lensing_compute as lc
from explorer.lensing import NO_GENERATOR, LensingPage
from explorer.lensing_compute import LensView, compute
from explorer.lensing_views import report_markdown, samples_figure

EUCLID = PRESETS["euclid"]


def write_classifier(run: Path, size: int = 64, pixel_scale: float = EUCLID.pixel_scale) -> Path:
    """A classification run directory holding an untrained 3-class CNN checkpoint for images of
    ``size``² pixels of ``pixel_scale`` arcsec (config.json as the engine writes it)."""
    import torch

    from engine.nn.registry import build_model
    from engine.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    kwargs = dict(in_channels=1, n_params=3, width=4, circular_padding=False, head="logits")
    model = build_model("cnn", **kwargs)
    state = {
        "classes": list(CLASSES), "label": "substructure",
        "normalisation": {"transform": "asinh", "softening": 1.0, "mean": 0.0, "std": 1.0},
        "channels": 1, "kind": "strong_lens", "size": size, "pixel_scale": pixel_scale,
    }  # fmt: skip
    (run / "checkpoints").mkdir(parents=True)
    save_checkpoint(
        {
            "format": 2,
            "task": "classification",
            "task_state": state,
            "networks": {"model": {"name": "cnn", "kwargs": kwargs, "state": model.state_dict()}},
            "step": 0,
            "epoch": 0,
            "config": {},
            "map_settings": {"kind": "strong_lens"},
        },  # fmt: skip
        run / "checkpoints" / "best.pt",
    )
    config = {"task": "classification", "settings": {"task": "classification"}, "data": state}
    (run / "config.json").write_text(json.dumps(config))
    return run


def _radii(curves) -> np.ndarray:
    return np.concatenate([np.hypot(x, y) for x, y in curves])


def _curve_radius(page) -> float:
    """Median distance from the lens centre of the critical curves drawn (arcsec)."""
    data = page.figures.sources["critical"].data
    return float(np.median(_radii(list(zip(data["cx"], data["cy"], strict=True)))))


def sis(**kw) -> LensView:
    """Settings of a singular isothermal sphere without shear, noise or substructure."""
    base = dict(substructure="none", lens_e1=0.0, lens_e2=0.0, gamma1=0.0, gamma2=0.0)
    return LensView(**{**base, "noise": False, **kw})


@pytest.mark.parametrize(("preset", "theta_e"), [("euclid", 1.2), ("hst", 0.7)])
def test_sis_critical_curve_is_the_einstein_circle(preset, theta_e):
    r = compute(sis(theta_e=theta_e, preset=preset))
    inst = PRESETS[preset]
    assert r.image.shape == (inst.size, inst.size) and r.image.dtype == np.float32
    assert np.isfinite(r.image).all() and r.image.max() > 0
    assert r.pixel_scale == inst.pixel_scale and r.half == pytest.approx(32 * inst.pixel_scale)
    radii = _radii(r.critical)
    assert len(radii) > 50 and np.abs(radii - theta_e).max() < inst.pixel_scale
    # its tangential caustic is a point at the centre, its cut the circle β = θ_E
    assert _radii(r.caustic).max() < inst.pixel_scale
    assert np.abs(np.hypot(*r.cut) - theta_e).max() < 1e-3
    assert r.probs is None and r.seconds["total"] > 0
    # the source's light is lensed into a ring: brightest near θ_E, not at the source
    y, x = np.unravel_index(np.argmax(r.image), r.image.shape)
    centre = (np.array([x, y]) - (inst.size - 1) / 2) * inst.pixel_scale
    assert abs(np.hypot(*centre) - theta_e) < 3 * inst.pixel_scale


def test_substructure_markers_and_settings_errors():
    cdm = compute(LensView(substructure="cdm", subhalo_mean=40, seed=3))
    assert cdm.params["n_subhalo"] == len(cdm.subhalo_x) > 10
    assert cdm.subhalo_mass.min() >= 1e6 * (1 - 1e-9) and cdm.subhalo_mass.max() <= 1e10 * 1.001
    # the draw follows θ_E: subhaloes stay put in units of θ_E
    moved = compute(LensView(substructure="cdm", subhalo_mean=40, seed=3, theta_e=1.5))
    np.testing.assert_allclose(moved.subhalo_x, 1.5 * cdm.subhalo_x, rtol=1e-9)
    vortex = compute(LensView(substructure="vortex"))
    assert len(vortex.subhalo_x) == 100 and np.isfinite(vortex.params["vortex_mass"])
    with pytest.raises(ConfigError, match="must not exceed"):
        compute(LensView(log_mass_min=10.5, log_mass_max=10.0))


def test_page_builds_and_updates_in_place_with_the_no_classifier_hint(tmp_path):
    page = LensingPage(runs_root=tmp_path / "runs", examples_root=tmp_path / "models")
    page.__panel__().get_root(Document())
    figures, image = page.figures, page.figures.sources["image"]
    before = np.array(image.data["counts"][0])
    assert before.shape == (64, 64) and page.result is not None
    assert "ms" in page._timing.object and "update computed in" in page._timing.object
    # no classifier: a hint says how to train one
    assert page._hint.visible and not page.figures.probs.visible
    train = "python -m engine train --preset lens_resnet --run-dir assets/models/lens_resnet"
    assert lc.train_commands("euclid")[1] == train and train in page._hint.object
    # a setting moves: the same figures and sources get the new image and curves
    r0 = _curve_radius(page)
    page.settings.theta_e = 1.4
    assert page.figures is figures and page.figures.sources["image"] is image
    assert not np.array_equal(np.array(image.data["counts"][0]), before)
    assert _curve_radius(page) - r0 == pytest.approx(0.4, abs=0.1)
    # bad settings: one line in the readout, the last image stays
    page.settings.log_mass_min = 10.5
    assert "must not exceed" in page.error and "⚠" in page._readout.object
    page.settings.log_mass_min = 6.0
    assert page.error == ""


def test_page_waits_until_shown(tmp_path):
    page = LensingPage(runs_root=tmp_path / "r", examples_root=tmp_path / "m", visible=False)
    page.settings.theta_e = 1.3
    assert page.result is None and page.classifiers is None
    page.visible = True
    assert page.result is not None and page.result.settings["theta_e"] == 1.3


def test_classifier_probabilities_sum_to_one(tmp_path):
    models = tmp_path / "models"
    write_classifier(models / "lens_tiny")
    write_classifier(models / "lens_other_scale", pixel_scale=0.2)  # no preset's pixels
    assert {c.name for c in lc.list_classifiers(models)} == {"lens_tiny", "lens_other_scale"}
    page = LensingPage(runs_root=tmp_path / "runs", examples_root=models)
    r = page.result
    assert r.classifier == "lens_tiny" and list(r.probs) == list(CLASSES)
    assert sum(r.probs.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(0 <= p <= 1 for p in r.probs.values())
    assert page.figures.probs.visible and not page._hint.visible
    bars = page.figures.sources["probs"].data
    assert list(bars["cls"]) == list(CLASSES) and sum(bars["p"]) == pytest.approx(1.0)
    assert "lens_tiny" in page.figures.probs.title.text
    # the hst preset has other pixels: no classifier for it, the hint names the preset
    page.settings.preset = "hst"
    assert page.result.probs is None and page._hint.visible and not page.figures.probs.visible
    assert "hst preset" in page._hint.object and "--preset hst" in page._hint.object


class FakeGenerator:
    """A lens generator with the expected class-conditional sampling API."""

    classes = ("none", "cdm", "vortex")

    def sample(self, count=1, seed=0, label="none"):
        """``count`` random 16² images (sample, channel, y, x)."""
        rng = np.random.default_rng(seed)
        return xr.DataArray(rng.random((count, 1, 16, 16)), dims=("sample", "channel", "y", "x"))


def test_generate_panel_without_and_with_a_lens_generator(tmp_path, monkeypatch):
    page = LensingPage(runs_root=tmp_path / "runs", examples_root=tmp_path / "models")
    page.__panel__()
    assert page.generator is None and page._report.object == NO_GENERATOR
    assert "No lens generator shipped yet" in NO_GENERATOR
    page.sample()
    assert "No lens generator" in page.gen_error
    # a diffusion run of strong_lens images, with a report: listed, sampled, its FID shown
    run = tmp_path / "models" / "lens_diffusion"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"x")
    settings = {"task": "diffusion", "label": "substructure", "dataset": "data/lenses64.zarr"}
    (run / "config.json").write_text(json.dumps({"task": "diffusion", "settings": settings}))
    other = tmp_path / "models" / "grf_diffusion"  # a diffusion model of cosmological maps
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "best.pt").write_bytes(b"x")
    grf = {"task": "diffusion", "settings": {"task": "diffusion", "label": "", "kind": "grf"}}
    (other / "config.json").write_text(json.dumps(grf))
    report = {"fid": {"none": 1.5, "cdm": 2.25}, "fid_floor": 0.5, "n": 64}
    (run / "report.json").write_text(json.dumps(report))
    monkeypatch.setattr("explorer.lensing.load_lens_generator", lambda _path: FakeGenerator())
    page.refresh_generators()
    assert page.generator == str(run) and len(page.param.generator.objects) == 1
    assert "| fid.cdm | 2.25 |" in page._report.object and "fid_floor" in page._report.object
    # the per-class layout of engine evaluate: one row per class
    per_class = {
        c: {"n": 64, "domain": {"fid": 2.0 + i, "fid_floor": 1.0, "kid_mean": 0.1}}
        for i, c in enumerate(CLASSES)
    }
    (run / "report.json").unlink()
    (run / "lens_report").mkdir()
    (run / "lens_report" / "report.json").write_text(json.dumps({"per_class": per_class}))
    header, rows = lensing.report_table(run)
    assert header == ["class", "n", "domain.fid", "domain.fid_floor"]
    assert rows[1] == ["cdm", "64", "3", "1"]
    page.param.update(gen_class="vortex", gen_count=3)
    page.sample()
    assert page.gen_error == "" and len(page._grid) == 1
    page.param.update(gen_class="all", gen_count=2)  # a row per class
    page.sample()
    (grid,) = page._grid
    assert len(grid.object.renderers[0].data_source.data["image"]) == 6
    # an engine whose sample() takes no class label: one line
    assert lensing.sample_lenses(FakeGenerator(), "cdm", 2, 1).shape == (2, 16, 16)
    with pytest.raises(ConfigError, match="no class label"):
        lensing.sample_lenses(object(), "cdm", 2, 1)
    assert "No `report.json`" in report_markdown(None)
    assert samples_figure(np.ones((5, 8, 8)), "t").frame_width > 0


def test_class_conditional_generators_go_to_the_lensing_page(tmp_path):
    """A diffusion run with a class label is listed by the Lensing page, not by Generate (whose
    sliders are continuous parameters); a map diffusion run the other way round."""

    from explorer.generate_compute import class_label, generator_task
    from explorer.lensing import lens_generator_path

    def run(name: str, settings: dict) -> Path:
        path = tmp_path / name
        (path / "checkpoints").mkdir(parents=True)
        (path / "checkpoints" / "best.pt").write_bytes(b"x")
        config = {"task": "diffusion", "settings": {"task": "diffusion", **settings}}
        (path / "config.json").write_text(json.dumps(config))
        return path

    lens = run("lens", {"label": "substructure", "classes": ""})
    maps = run("maps", {"label": "", "classes": ""})
    assert class_label(json.loads((lens / "config.json").read_text())) == "substructure"
    assert lens_generator_path(lens) and generator_task(lens) is None
    assert not lens_generator_path(maps) and generator_task(maps) == "diffusion"
