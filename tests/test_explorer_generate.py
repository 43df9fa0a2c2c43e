"""Param-level tests of the Generate page and of the Training page's emulator tasks.

No browser. A real ``gan_smoke`` run (and, where the diffusion task imports, a tiny diffusion
run) is trained once per session through the CLI (seconds) and sampled by the page; the
simulator maps, metrics and views are the engine's. The emulator report shown on the Training
page is made by :func:`engine.evaluation.emulator.score_grid` from seeded Gaussian maps.
:func:`train_generator` is also used by the browser tests (tests/test_browser.py).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import panel as pn
import pytest
from bokeh.models import Title
from test_explorer_training import write_gan_run, write_run

from engine.evaluation.sampling import Emulator
from engine.launch import train_command
from engine.runs import RunDir
from explorer import generate as gen_page
from explorer import generate_views as gv
from explorer import training
from explorer.generate import GeneratePage, Superseded, list_generators
from explorer.training import TrainingController

REPO = Path(__file__).resolve().parent.parent


def train_generator(run_dir: Path, task: str = "gan", timeout: float = 300) -> Path:
    """Train a tiny generator of ``task`` into ``run_dir`` with the CLI: the ``<task>_smoke``
    preset when there is one, else the task's defaults shrunk to a few steps on 16² maps."""
    from engine.train.settings import PRESETS

    preset = f"{task}_smoke"
    cmd = [sys.executable, "-m", "engine", "train", "--run-dir", str(run_dir)]
    if preset in PRESETS:
        cmd += ["--preset", preset]
    else:
        cmd += ["--task", task, "--preset", "default"]
        for item in (
            "kind=grf", "size=16", "width=4", "batch_size=8", "steps_per_epoch=3", "epochs=1",
            "val_maps=16", "eval_maps=0", "warmup_steps=1", "log_every=1",
        ):  # fmt: skip
            cmd += ["--set", item]
    if task == "diffusion":
        cmd += ["--set", "sample_steps=4", "--set", "val_sample_steps=2"]
    cmd += ["--set", "eval_maps=0"]
    subprocess.run(cmd, cwd=REPO, check=True, timeout=timeout, capture_output=True)
    return run_dir


def _importable(task: str) -> bool:
    return importlib.util.find_spec(f"engine.tasks.{task}") is not None


@pytest.fixture(scope="session")
def gan_run(tmp_path_factory) -> Path:
    """A trained gan_smoke run directory (skipped when the GAN task is missing)."""
    if not _importable("gan"):
        pytest.skip("engine.tasks.gan is not there")
    return train_generator(tmp_path_factory.mktemp("gan") / "20260101-000000-gan_smoke-aaaa")


@pytest.fixture(scope="session")
def diffusion_run(tmp_path_factory) -> Path:
    """A tiny trained diffusion run directory (skipped when the diffusion task is missing)."""
    if not _importable("diffusion"):
        pytest.skip("engine.tasks.diffusion is not there")
    root = tmp_path_factory.mktemp("diffusion")
    return train_generator(root / "20260101-000000-diffusion-aaaa", "diffusion")


@pytest.fixture
def runs(tmp_path, gan_run) -> Path:
    """A runs folder holding the gan run, a regression run and a GAN run without checkpoint."""
    root = tmp_path / "runs"
    shutil.copytree(gan_run, root / gan_run.name)
    write_run(root / "20250101-000000-smoke-rrrr")  # regression: not a generator
    write_gan_run(root / "20250101-000000-gan-nock")  # task gan, but no checkpoint
    return root


def _titles(viewable) -> set[str]:
    return {m.text for m in pn.panel(viewable).get_root().select({"type": Title})}


# ---------------------------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------------------------


def test_lists_generators_of_runs_and_shipped_models(runs, tmp_path, gan_run):
    shipped = tmp_path / "models"
    shutil.copytree(gan_run, shipped / "gan64")
    write_run(shipped / "grf64")  # a shipped regression model: not listed
    names = list_generators(runs, shipped)
    assert names == {
        "gan64 (gan, shipped)": str(shipped / "gan64"),
        f"{gan_run.name} (gan)": str(runs / gan_run.name),
    }
    assert list_generators(tmp_path / "missing", None) == {}
    page = GeneratePage(runs_root=runs, examples_root=shipped)
    assert page.generator == str(shipped / "gan64")  # the first one is loaded
    assert page.emulator is not None and page.emulator.task_name == "gan"
    assert "`gan` · kind `grf`" in page.info


def test_no_generator_says_how_to_train_one(tmp_path):
    page = GeneratePage(runs_root=tmp_path / "runs", examples_root=tmp_path / "models")
    assert page.generator is None and page.emulator is None
    text = page._empty().object
    assert "python -m engine train --preset gan_smoke" in text
    pn.panel(page).get_root()  # the page builds
    page.sample()
    assert page.error == "Choose a generator first." and page.result is None


def test_sliders_get_the_generators_box(runs, gan_run):
    page = GeneratePage(runs_root=runs, examples_root="")
    em = page.emulator
    assert em.names == ("omega_m", "sigma8")
    sliders = list(page._slider_box)
    assert [(s.start, s.end) for s in sliders] == list(zip(em.low, em.high, strict=True))
    assert page.theta == {"omega_m": 0.3, "sigma8": 0.8}  # fiducial values inside the box
    sliders[1].value = 0.7
    assert page.theta == {"omega_m": 0.3, "sigma8": 0.7}
    assert not page._steps_widget.visible  # a GAN samples in one pass
    assert not page._sampler_widget.visible


def test_sample_draws_maps_beside_the_simulator_and_scores_them(runs, gan_run):
    page = GeneratePage(runs_root=runs, examples_root="")
    page.param.update(count=12, sim_count=8, seed=3)
    pn.panel(page).get_root()
    page.sample()
    assert page.error == "" and not page.busy
    r = page.result
    em = Emulator(gan_run)
    theta = em.theta(page.theta, 12)
    expected = em.sample_tensor(theta, seed=3).numpy()
    np.testing.assert_allclose(r.gen, expected, rtol=1e-5, atol=1e-6)  # the seeded draw
    n = r.gen.shape[-1]
    assert r.sim.shape == (8, 1, n, n) and r.sim_seconds > 0 and r.gen_seconds > 0
    assert "8 grf maps" in r.sim_note and "cache" not in r.sim_note
    assert r.power["ratio"].shape == r.power["band"].shape and r.power["ratio"].shape[0] == 1
    assert r.fid["n"] == 4 and r.fid["floor"]["fid"] >= 0 and r.cross is None  # one channel
    assert r.pdf[0]["ks"] is not None and np.all(r.pdf[0]["band"] >= 0)
    titles = _titles(page)
    assert {"Pixel PDF of channel_0", "P(k) ratio, generated / simulator: channel_0"} <= titles
    assert any(t.startswith("Generated channel_0 (gan)") for t in titles)
    assert "Simulator channel_0 (grf)" in titles
    scores = gv.scores_markdown(r, 0)
    assert "real–real floor" in scores and "time per map" in scores
    page.sample()  # the same point again: the simulator maps come from the cache
    assert "from the cache" in page.result.sim_note
    np.testing.assert_array_equal(page.result.sim, r.sim)


def test_errors_are_one_line_on_the_page(runs, tmp_path):
    page = GeneratePage(runs_root=runs, examples_root="")
    page.theta = {"omega_m": 0.9, "sigma8": 0.8}  # outside the training box
    page.sample()
    assert page.error == "omega_m=0.9 is outside the generator's training range [0.1, 0.5]"
    assert page.result is None and not page.busy
    assert "\n" not in page._error().object
    broken = RunDir(runs / "20270101-000000-gan-bad").create()  # a damaged checkpoint
    broken.write_config({"task": "gan", "settings": {"task": "gan"}})
    (broken.checkpoint_dir / "best.pt").write_bytes(b"not a checkpoint")
    page.refresh_generators()
    page.generator = str(broken.path)
    assert page.emulator is None and page.error and "\n" not in page.error
    assert list(page._slider_box) == []


def test_a_newer_request_supersedes_a_running_one(runs):
    page = GeneratePage(runs_root=runs, examples_root="")
    page._requests = 2
    with pytest.raises(Superseded):  # the progress call of job 1 stops it
        page._report(1, "sampling 16 maps: 3/16 maps")
    page._report(2, "sampling 16 maps: 3/16 maps")
    assert page.progress == "sampling 16 maps: 3/16 maps"
    page.busy = True
    page._deliver(None, Superseded(), latest=False)  # dropped, the newer job still runs
    assert page.busy and page.error == ""
    page._deliver(None, ValueError("boom\nmore"), latest=True)
    assert not page.busy and page.error == "ValueError: boom"
    page._deliver((1, object()), None, latest=True)  # a finished but superseded job
    assert page.result is None and page.error == "ValueError: boom"


def test_no_simulator_for_maps_of_other_data(gan_run):
    em = Emulator(gan_run)
    em.map_config = {"kind": "camels", "fields": "Mgas"}
    assert "not on a kind this project simulates" in gen_page.simulator_reason(em)
    r = gen_page.compute(em, "camels gan", {"omega_m": 0.3, "sigma8": 0.8}, count=4, seed=0)
    assert r.sim is None and "CAMELS" in r.sim_note and r.power is None and r.fid is None
    assert r.gen_power["p_mean"].shape == r.gen_power["p_std"].shape
    view = gv.result_views(r, 0)
    titles = _titles(view)
    assert "P(k) of the generated maps: channel_0" in titles
    assert not any(t.startswith("Simulator") for t in titles)


def test_two_channel_maps_show_their_cross_correlation_and_log_density():
    """δ and θ channels (as PM slabs with fields=delta,theta): r(k) of the pair, δ drawn and
    histogrammed as ln(1 + δ), θ linearly; the channel selector picks the views."""
    rng = np.random.default_rng(1)

    def maps(b):  # δ lognormal (> −1), θ correlated with it
        g = rng.normal(size=(b, 16, 16))
        return np.stack([np.exp(g) - 1, g + 0.3 * rng.normal(size=g.shape)], 1).astype("f4")

    r = gv.GenerateResult(
        generator="test", task="gan", theta={"omega_m": 0.3, "sigma8": 0.8}, seed=0, steps=None,
        channels=["delta", "theta"], gen=maps(8), sim=maps(8), kind="pm", extent=128.0,
        length_unit="Mpc/h", k_label="k (h/Mpc)",
    )  # fmt: skip
    gen_page.score(r, 128.0)
    assert r.cross["pairs"] == ["0-1"] and r.cross["r_real"].shape == r.cross["r_gen"].shape
    assert r.cross["r_real"][0, 0] > 0.5  # the channels are correlated
    assert [d["label"] for d in r.pdf] == ["ln(1 + δ)", "θ"]
    assert r.pdf[0]["centers"].min() < 0  # ln(1 + δ) of lognormal δ: centred on ~0
    for c, name in ((0, "δ"), (1, "θ")):
        titles = _titles(gv.result_views(r, c))
        assert {f"Generated {name} (gan)", f"Simulator {name} (pm)"} <= titles
        assert "Cross-correlation r(k) of the channels" in titles
        assert f"P(k) ratio, generated / simulator: {name}" in titles
    clim = gv.map_clim(r, 0)
    assert clim[0] < 0 < clim[1] and gv.display_label("delta") == "ln(1 + δ)"


def test_diffusion_generator_gets_steps_and_sampler(tmp_path, diffusion_run):
    runs = tmp_path / "runs"
    shutil.copytree(diffusion_run, runs / diffusion_run.name)
    page = GeneratePage(runs_root=runs, examples_root="")
    em = page.emulator
    assert em.task_name == "diffusion" and em.default_steps
    assert page._steps_widget.visible and page.steps == em.default_steps
    page.param.update(count=4, sim_count=4, steps=2)
    page.sample()
    assert page.error == "" and page.result.steps == 2 and page.result.task == "diffusion"
    assert page.result.gen.shape[0] == 4
    assert page._sampler_widget.visible and page.sampler == em.default_sampler
    assert page.result.sampler == em.default_sampler
    page.sampler = "dpm"
    page.sample()
    assert page.error == "" and page.result.sampler == "dpm"
    assert "DPM-Solver++" in gv.where_markdown(page.result)
    # every sampler of the engine is offered, by its name
    assert page._sampler_widget.options == {
        "DDIM": "ddim", "DPM-Solver++": "dpm", "SDE-DPM-Solver++": "sde"
    }  # fmt: skip
    page.sampler = "sde"
    page.sample()
    assert page.error == "" and page.result.sampler == "sde"
    assert "(SDE-DPM-Solver++)" in gv.where_markdown(page.result)


# ---------------------------------------------------------------------------------------------
# Training page: tasks in the launch form, curves and report of a GAN run
# ---------------------------------------------------------------------------------------------


def test_launch_form_follows_the_task(tmp_path, monkeypatch):
    if not _importable("gan"):
        pytest.skip("engine.tasks.gan is not there")
    launched = []

    class Proc:
        pid = 12345

        def poll(self):
            return 0

    def fake_launch(run_dir, preset, overrides, task=None):
        launched.append((Path(run_dir).name, preset, overrides, task))
        return Proc()

    monkeypatch.setattr(training, "launch_train", fake_launch)
    ctl = TrainingController(runs_root=tmp_path, preset="smoke")
    assert "gan" in ctl.param.task.objects
    ctl.widgets()["width"].value = 12  # an edit of the regression form
    root = pn.panel(ctl).get_root()
    ctl.task = "gan"
    assert ctl.preset == "gan_smoke" and ctl.param.preset.objects == training.presets_of("gan")
    assert ctl.settings.task_name == "gan" and ctl.overrides() == {}
    w = ctl.widgets()
    groups = training.control_groups("gan")
    assert set(groups["Model"]) <= set(w) and "d_width" in groups["Model"]
    assert "objective" in groups["Task"] and "targets" not in w
    assert w["d_width"].value == ctl.settings.d_width
    w["epochs"].value = 1
    assert ctl.overrides() == {"epochs": 1}
    ctl.train()
    assert launched[-1][1:] == ("gan_smoke", {"epochs": 1}, "gan")
    assert "gan_smoke" in launched[-1][0]
    assert root is not None and any(
        isinstance(o, pn.widgets.IntInput) and o.value == ctl.settings.d_width
        for o in ctl._form_box.select(pn.widgets.IntInput)
    )  # the page shows the GAN's form
    ctl.task = "regression"  # back: the regression settings kept their edit and preset
    assert ctl.preset == "smoke" and ctl.settings.width == 12
    assert ctl.overrides() == {"width": 12}
    cmd = train_command("runs/x", "gan_smoke", {"epochs": 1}, task="gan")
    assert cmd[cmd.index("--task") + 1] == "gan" and "--task" not in train_command("runs/x")


def test_preset_with_a_missing_dataset_is_shown_but_not_launched(tmp_path, monkeypatch):
    if not _importable("gan"):
        pytest.skip("engine.tasks.gan is not there")
    missing = str(tmp_path / "absent.zarr")
    monkeypatch.setitem(
        training.PRESETS, "gan_data", {**training.PRESETS["gan_smoke"], "dataset": missing}
    )
    monkeypatch.setattr(training, "launch_train", lambda *a, **k: pytest.fail("launched"))
    ctl = TrainingController(runs_root=tmp_path / "runs", task="gan", preset="gan_smoke")
    ctl.preset = "gan_data"  # its values load, unchecked
    assert ctl.settings.dataset == missing and ctl.overrides() == {}
    assert ctl.train() is None
    assert ctl.message.startswith("Cannot train: dataset=") and "does not exist" in ctl.message
    assert not (tmp_path / "runs").exists()


def test_gan_run_shows_generator_and_discriminator_losses_and_fid(tmp_path, gan_run):
    runs = tmp_path / "runs"
    shutil.copytree(gan_run, runs / gan_run.name)
    ctl = TrainingController(runs_root=runs)
    plots = {p.key: p for p in ctl.curves}
    assert {"loss_g (train)", "loss_d (train)"} <= set(plots["loss"].series)
    assert set(plots["fid"].series) == {"validation", "fid_floor (validation)"}
    assert len(ctl.buffers["fid"].data) >= 2
    assert "task `gan`" in training.config_markdown(ctl.run)
    assert "| d_width |" in training.config_markdown(ctl.run)
    assert {"Loss", "fid_*"} <= _titles(ctl)


def _emulator_report(out_dir: Path) -> dict:
    """An emulator report of score_grid at two points, seeded Gaussian maps standing in for
    generated and simulator maps, with its figures, written into ``out_dir``."""
    from engine.evaluation.emulator import score_grid, score_point
    from engine.evaluation.emulator_figures import draw_emulator_figures

    rng = np.random.default_rng(0)
    points = []
    for theta in ((0.3, 0.8), (0.4, 0.9)):
        gen, real = (rng.normal(size=(8, 2, 16, 16)) for _ in range(2))
        points.append(score_point(gen, real, 100.0, theta=theta))
    report = score_grid(points)
    report["task"] = "gan"
    figures = draw_emulator_figures(report, out_dir / "figures")
    report["figures"] = {k: f"figures/{v}" for k, v in figures.items()}
    (out_dir / "report.json").write_text(json.dumps(report))
    return report


def test_emulator_report_shows_targets_and_figures(tmp_path):
    run = write_gan_run(tmp_path / "20260101-000000-gan-aaaa")
    report = _emulator_report(run.path)
    ctl = TrainingController(runs_root=tmp_path)
    ev = ctl.evaluation
    assert ev.state == "ready" and gv.is_emulator_report(ev.report)
    assert "task `gan` on 2 parameter points" in ev.summary
    table = gv.targets_table(ev.report)
    assert list(table["target"]) == list(report["targets"])
    power = table[table["target"] == "power"].iloc[0]
    assert power["threshold"] == "0.05" and power["pass"] in ("✓", "✗")
    assert len(power["value"].split(", ")) == 2  # one value per channel
    assert table[table["target"] == "conditioning"].iloc[0]["pass"] == "not measured"
    figures = gv.report_figures(ev.report, ev.run_path)
    assert {p.name for p in figures} == {Path(f).name for f in report["figures"].values()}
    view = ev._content()
    assert len(view.select(pn.pane.PNG)) == len(figures)
    frames = view.select(pn.pane.DataFrame)
    assert list(frames[0].object.columns) == ["target", "value", "threshold", "pass", "definition"]
    assert "fid_floor" in set(gv.means_table(ev.report)["metric"])
    pn.panel(ctl).get_root()
