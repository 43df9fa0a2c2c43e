"""Param-level tests of the training page: launch form, model size, example runs, evaluation,
curves grouped from the metric names a run writes, and watchers of pages rendered twice.

No browser and no training: runs, example runs and evaluations (report.json, predictions.csv)
are written by the tests from known numbers. :func:`write_example_run` is also used by the
browser test (tests/test_browser.py) to show an evaluation without training.
"""

from __future__ import annotations

import json
import math

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import pytest
from bokeh.models import Title

from engine.nn.registry import MODELS, build_model, count_parameters, format_count
from engine.runs import RunDir
from explorer import curves, training
from explorer import report as rep
from explorer.training import TRAIN_KINDS, TrainingController, TrainParams

PRIOR = {"omega_m": [0.1, 0.5], "sigma8": [0.6, 1.0]}
CRB = {"omega_m": 0.005, "sigma8": 0.004}
N_MAPS = 40
EDGES = 4  # bins per parameter


def fake_predictions() -> pd.DataFrame:
    """predictions.csv of N_MAPS maps: the network is off by ±0.01 (alternating, unbiased),
    the P(k) likelihood by +0.02 (biased); predicted stds 0.02 and 0.01."""
    sign = np.where(np.arange(N_MAPS) % 2 == 0, 1.0, -1.0)
    frame = {"sample": np.arange(N_MAPS)}
    truth = {p: np.linspace(lo, hi, N_MAPS) for p, (lo, hi) in PRIOR.items()}
    for p in PRIOR:
        frame[f"{p}_true"] = truth[p]
    for p in PRIOR:
        frame[f"network_{p}_mean"] = truth[p] + 0.01 * sign
        frame[f"network_{p}_std"] = np.full(N_MAPS, 0.02)
        frame[f"pk_likelihood_{p}_mean"] = truth[p] + 0.02
        frame[f"pk_likelihood_{p}_std"] = np.full(N_MAPS, 0.01)
    return pd.DataFrame(frame)


def _metrics(truth, mean, std, crb) -> dict:
    err = mean - truth
    rmse = float(np.sqrt(np.mean(err**2)))
    return {
        "rmse": rmse,
        "mae": float(np.mean(np.abs(err))),
        "r2": float(1 - np.sum(err**2) / np.sum((truth - truth.mean()) ** 2)),
        "bias": float(np.mean(err)),
        "coverage_68": float(np.mean(np.abs(err) <= std)),
        "coverage_95": float(np.mean(np.abs(err) <= 1.96 * std)),
        "efficiency": crb / rmse,
    }


def _bins(truth, mean, lo, hi) -> dict:
    edges = np.linspace(lo, hi, EDGES + 1)
    idx = np.clip(np.digitize(truth, edges) - 1, 0, EDGES - 1)
    err = mean - truth
    sel = [err[idx == b] for b in range(EDGES)]
    return {
        "edges": edges.tolist(),
        "count": [len(e) for e in sel],
        "rmse": [float(np.sqrt(np.mean(e**2))) for e in sel],
        "bias": [float(np.mean(e)) for e in sel],
        "std": [float(np.std(e)) for e in sel],
    }


def fake_report(frame: pd.DataFrame) -> dict:
    """report.json (schema of explorer.report) computed with numpy from ``frame``."""
    methods = {}
    for method, label in (("network", "resnet18"), ("pk_likelihood", "P(k) likelihood")):
        methods[method] = {
            "label": label,
            "metrics": {
                p: _metrics(
                    frame[f"{p}_true"].to_numpy(),
                    frame[f"{method}_{p}_mean"].to_numpy(),
                    frame[f"{method}_{p}_std"].to_numpy(),
                    CRB[p],
                )
                for p in PRIOR
            },
            "bins": {
                p: _bins(frame[f"{p}_true"].to_numpy(), frame[f"{method}_{p}_mean"].to_numpy(), *lh)
                for p, lh in PRIOR.items()
            },
        }
    return {
        "version": 1,
        "dataset": "grf",
        "checkpoint": "checkpoints/best.pt",
        "n_maps": N_MAPS,
        "kind": "grf",
        "map_settings": {"kind": "grf", "size": 32},
        "prior": PRIOR,
        "params": list(PRIOR),
        "methods": methods,
        "fisher": {
            "crb_sigma": dict(CRB),
            "bins": {p: [CRB[p] * (1 + 0.1 * b) for b in range(EDGES)] for p in PRIOR},
        },
        "figures": {"scatter": "figures/scatter.png"},
        "predictions": "predictions.csv",
        "created": "2026-01-01T00:00:00",
        "seconds": 1.5,
    }


def write_evaluation(run_dir) -> dict:
    """Write predictions.csv and report.json into ``run_dir``; return the report."""
    frame = fake_predictions()
    frame.to_csv(run_dir / "predictions.csv", index=False)
    report = fake_report(frame)
    (run_dir / "report.json").write_text(json.dumps(report))
    return report


def write_run(path, state="completed", settings=None, evaluation=True, pid=None) -> RunDir:
    """A finished (or ``state``) run directory with a few metrics and, optionally, an evaluation."""
    run = RunDir(path).create()
    settings = {"kind": "grf", "size": 32, "model": "resnet18", **(settings or {})}
    run.write_config({"command": "train", "preset": "smoke", "settings": settings})
    run.write_status(state=state, pid=pid, step=40, epoch=1, total_steps=40)
    for step, loss, lr in ((5, 1.0, 1e-3), (40, 0.5, 1e-4)):
        run.log_metrics(step, 1, "train", {"loss": loss, "lr": lr})
    run.log_metrics(40, 1, "val", {"loss": 0.6, "rmse_omega_m": 0.05, "rmse_sigma8": 0.04})
    (run.checkpoint_dir / "best.pt").write_bytes(b"")
    (run.checkpoint_dir / "last.pt").write_bytes(b"")
    if evaluation:
        write_evaluation(run.path)
    return run


def write_example_run(root, name="grf64") -> RunDir:
    """A shipped example run (assets/models/<name>/ layout) with an evaluation, under ``root``."""
    return write_run(root / name, settings={"size": 64})


def _snapshot(path) -> dict:
    return {p.relative_to(path): p.stat().st_mtime_ns for p in path.rglob("*")}


# ---------------------------------------------------------------------------------------------
# Launch form
# ---------------------------------------------------------------------------------------------


def test_form_settings_come_from_trainparams(tmp_path):
    ctl = TrainingController(runs_root=tmp_path, preset="smoke")
    w = ctl.widgets()
    assert set(training.TRAIN_CONTROLS) <= set(w)
    assert list(w["model"].options) == list(MODELS)
    assert list(w["kind"].options) == list(TRAIN_KINDS)
    for name in ("fov", "n_gal", "sigma_e", "box_size", "noise", "smoothing"):
        par = TrainParams.param[name]
        assert w[name].value == getattr(ctl.settings, name)
        assert (w[name].start, w[name].end) == tuple(par.bounds)
        assert w[name].description == par.doc
    w["fov"].value = 3.0
    w["kind"].value = "kappa"
    assert ctl.overrides() == {"fov": 3.0, "kind": "kappa"}


@pytest.mark.parametrize(
    "kind, shown, hidden",
    [
        ("grf", {"box_size", "thickness", "noise", "smoothing"}, {"fov", "n_gal", "lpt_order"}),
        ("2lpt", {"box_size", "lpt_order", "noise"}, {"fov", "sigma_e"}),
        ("kappa", {"fov", "n_gal", "sigma_e", "smoothing"}, {"box_size", "noise", "lpt_order"}),
    ],
)
def test_kind_specific_settings_show_only_for_their_kind(tmp_path, kind, shown, hidden):
    ctl = TrainingController(runs_root=tmp_path, preset="smoke")
    w = ctl.widgets()
    ctl.settings.kind = kind
    always = {"kind", "size", "model", "width", "epochs", "lr", "seed"}
    assert all(w[n].visible for n in shown | always)
    assert not any(w[n].visible for n in hidden)
    assert training.setting_applies("kind", kind)


def test_model_parameter_count_follows_model_and_width(tmp_path):
    ctl = TrainingController(runs_root=tmp_path, preset="smoke")
    info = ctl.model_info()

    def count(model, width):
        kwargs = {**ctl.settings.model_kwargs(), "width": width}
        return format_count(count_parameters(build_model(model, **kwargs)))

    assert count("cnn", 8) in training.model_summary(ctl.settings)
    ctl.settings.param.update(model="resnet18", width=16)
    text = training.model_summary(ctl.settings)
    assert text == f"resnet18: {count('resnet18', 16)} parameters"
    root = pn.panel(info).get_root()  # the pane in the page follows the settings
    assert count("resnet18", 16) in root.text
    ctl.settings.width = 8
    assert count("resnet18", 8) in pn.panel(info).get_root().text


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def test_comparison_table_from_report(tmp_path):
    run = write_run(tmp_path / "run")
    report = json.loads((run.path / "report.json").read_text())
    ev = rep.EvaluationPanel()
    assert ev.update(run, run.status())
    assert ev.state == "ready" and "40 test maps" in ev.summary
    table = ev.table()
    assert list(table["method"]) == ["resnet18", "P(k) likelihood", "Cramér–Rao bound"] * 2
    net = table[(table["method"] == "resnet18") & (table["parameter"] == "Ωₘ")].iloc[0]
    metrics = report["methods"]["network"]["metrics"]["omega_m"]
    assert net["RMSE"] == pytest.approx(0.01) == pytest.approx(metrics["rmse"])
    assert net["bias"] == pytest.approx(0.0, abs=1e-12)
    assert net["R²"] == pytest.approx(metrics["r2"])
    assert (net["coverage 68 %"], net["coverage 95 %"]) == (1.0, 1.0)
    assert net["efficiency σ_CRB/RMSE"] == pytest.approx(0.5)
    pk = table[(table["method"] == "P(k) likelihood") & (table["parameter"] == "σ₈")].iloc[0]
    assert pk["bias"] == pytest.approx(0.02) and pk["coverage 95 %"] == 0.0
    assert pk["efficiency σ_CRB/RMSE"] == pytest.approx(0.2)
    crb = table[(table["method"] == "Cramér–Rao bound") & (table["parameter"] == "σ₈")].iloc[0]
    assert crb["RMSE"] == 0.004 and math.isnan(crb["bias"])
    shown = rep.format_table(table)
    assert shown.iloc[0]["RMSE"] == "0.01" and shown.iloc[2]["bias"] == "—"
    assert not ev.update(run, run.status())  # nothing changed: nothing re-read


def test_scatter_and_bins_plots_hold_both_methods_and_the_bound(tmp_path):
    run = write_run(tmp_path / "run")
    ev = rep.EvaluationPanel()
    ev.update(run, run.status())
    frame = fake_predictions()
    scatter = rep.scatter_plot(ev.report, ev.predictions, "sigma8")
    diagonal, net, pk = scatter
    assert (diagonal.data.iloc[0, 0], diagonal.data.iloc[-1, 0]) == tuple(PRIOR["sigma8"])
    assert (net.label, pk.label) == ("resnet18", "P(k) likelihood")
    np.testing.assert_allclose(net.dimension_values(1), frame["network_sigma8_mean"])
    np.testing.assert_allclose(pk.dimension_values(0), frame["sigma8_true"])
    bins = rep.bin_frame(ev.report, "omega_m")
    assert list(bins["series"].unique()) == ["resnet18", "P(k) likelihood", "Cramér–Rao bound"]
    edges = np.linspace(*PRIOR["omega_m"], EDGES + 1)
    crb = bins[bins["series"] == "Cramér–Rao bound"]
    np.testing.assert_allclose(crb["centre"], 0.5 * (edges[1:] + edges[:-1]))
    np.testing.assert_allclose(crb["rmse"], ev.report["fisher"]["bins"]["omega_m"])
    pk_bins = bins[bins["series"] == "P(k) likelihood"]
    np.testing.assert_allclose(pk_bins["rmse"], 0.02)
    assert pk_bins["count"].sum() == N_MAPS
    renderer = hv.renderer("bokeh")  # both plots render with Bokeh
    renderer.get_plot(scatter)
    renderer.get_plot(rep.bins_plot(ev.report, "omega_m"))
    pn.panel(ev).get_root()


def test_prediction_columns_are_detected():
    frame = pd.DataFrame(
        {
            "sample": [0],
            "omega_m_true": [0.3],
            "sigma8_true": [0.8],
            "omega_m_mean": [0.31],  # the predict verb's unprefixed columns: the network's
            "omega_m_std": [0.01],
            "sigma8_mean": [0.79],
            "other_sigma8_mean": [0.5],  # another method, without std
        }
    )
    cols = rep.prediction_columns(frame, ["omega_m", "sigma8"], ["network", "pk_likelihood"])
    assert cols == {
        "network": {"omega_m": ("omega_m_mean", "omega_m_std"), "sigma8": ("sigma8_mean", None)},
        "other": {"sigma8": ("other_sigma8_mean", None)},
    }
    assert rep.prediction_columns(None, ["omega_m"], ["network"]) == {}


def test_partial_report_is_shown_with_what_it_has(tmp_path):
    run = write_run(tmp_path / "run", evaluation=False)
    metrics = {"rmse": 0.03, "bias": 0.001}
    partial = {"methods": {"network": {"metrics": {"omega_m": metrics}}}, "fisher": None}
    (run.path / "report.json").write_text(json.dumps(partial))
    ev = rep.EvaluationPanel()
    ev.update(run, run.status())
    assert ev.state == "ready" and ev.predictions is None
    table = ev.table()
    assert list(table["method"]) == ["network", "network"]  # default label; sigma8 empty
    assert table.iloc[0]["RMSE"] == 0.03 and math.isnan(table.iloc[1]["RMSE"])
    assert rep.bin_frame(ev.report, "omega_m").empty
    pn.panel(ev).get_root()  # draws without predictions, bins or Fisher bound
    assert "? test maps" in ev.summary
    # lognormal maps: the Fisher σ is the P(k) information, no bound; notes are shown
    report = write_evaluation(run.path)
    report["fisher"]["bound"] = False
    report["notes"] = ["kind lognormal: σ_CRB is the P(k) information only"]
    (run.path / "report.json").write_text(json.dumps(report))
    ev.update(run, run.status())
    assert rep.FISHER_PK_LABEL in set(ev.table()["method"])
    assert rep.FISHER_PK_LABEL in set(rep.bin_frame(ev.report, "sigma8")["series"])
    assert rep.CRB_LABEL not in set(ev.table()["method"])
    assert "*Note:* kind lognormal" in ev.summary


def test_evaluation_states_follow_the_run(tmp_path):
    ev = rep.EvaluationPanel()
    ev.update(None)
    assert ev.state == "none"
    run = write_run(tmp_path / "run", state="running", evaluation=False)
    run.write_status(step=10)
    ev.update(run, run.status())
    assert ev.state == "pending" and "Evaluation pending" in ev.summary
    run.write_status(state="failed")
    ev.update(run, run.status())
    assert ev.state == "none" and "the run failed" in ev.summary
    run.write_status(state="running", step=40, total_steps=40, error=None)
    ev.update(run, run.status())  # training done, the engine evaluates before "completed"
    assert ev.state == "pending" and "Evaluating" in ev.summary
    run.write_status(state="completed", error="evaluation failed: ValueError: boom")
    ev.update(run, run.status())
    assert ev.state == "none" and "(evaluation failed: ValueError: boom)" in ev.summary
    run.write_status(error=None)
    run.write_config({"settings": {"kind": "grf", "eval_maps": 0}})
    ev.update(None)
    ev.update(run, run.status())
    assert ev.state == "none" and "(eval_maps = 0)" in ev.summary
    write_evaluation(run.path)
    assert ev.update(run, run.status()) and ev.state == "ready"


# ---------------------------------------------------------------------------------------------
# Controller: evaluation of the open run, example runs
# ---------------------------------------------------------------------------------------------


def test_evaluation_appears_when_the_run_ends(tmp_path):
    run = write_run(tmp_path / "20260101-000000-smoke-aaaa", state="running", evaluation=False)
    ctl = TrainingController(runs_root=tmp_path)
    assert ctl.run_id == run.id and ctl.evaluation.state == "pending"
    run.write_status(state="completed")
    write_evaluation(run.path)
    ctl.poll()
    assert ctl.evaluation.state == "ready"
    assert ctl.evaluation.run_path == str(run.path)
    pn.panel(ctl).get_root()  # the whole page builds, evaluation included


def test_examples_are_listed_read_only(tmp_path):
    runs, examples = tmp_path / "runs", tmp_path / "assets" / "models"
    example = write_example_run(examples, "grf64")
    before = _snapshot(examples)
    ctl = TrainingController(runs_root=runs, examples_root=str(examples))
    assert ctl.param.run_id.names == {"example: grf64 — completed 40/40": "example:grf64"}
    assert ctl.run_id == "example:grf64" and ctl.run == example  # no runs: the example opens
    assert ctl.is_example and ctl.evaluation.state == "ready"
    loss = ctl.buffers["loss"].data
    assert list(loss[loss["series"] == "train"]["value"]) == [1.0, 0.5]
    assert "read-only" in training.status_markdown(ctl.run, ctl.status, example=True)
    assert not ctl.can_stop and not ctl.can_resume  # even with checkpoints/last.pt
    assert not ctl.resume() and "read-only" in ctl.message
    assert not ctl.stop()
    new = write_run(runs / "20260101-000000-smoke-bbbb", evaluation=False)
    ctl.refresh_runs()
    assert list(ctl.param.run_id.objects) == [new.id, "example:grf64"]  # runs first
    assert ctl.run_id == "example:grf64"  # the open run stays open
    ctl.run_id = new.id
    assert not ctl.is_example and ctl.can_resume and ctl.evaluation.state == "none"
    for _ in range(ctl.refresh_every):
        ctl.poll()
    assert _snapshot(examples) == before  # nothing written into the examples
    assert TrainingController(runs_root=runs).param.run_id.objects == [new.id]  # no examples


def test_default_examples_root(monkeypatch, tmp_path):
    monkeypatch.setenv(training.EXAMPLES_ENV, str(tmp_path))
    assert training.default_examples_root() == tmp_path
    monkeypatch.delenv(training.EXAMPLES_ENV)
    assert training.default_examples_root().parts[-2:] == ("assets", "models")


def test_progress_bar_follows_runs_of_any_length(tmp_path):
    long = write_run(tmp_path / "20260101-000000-smoke-long", evaluation=False)  # 40/40 steps
    short = write_run(tmp_path / "20260101-000000-smoke-shrt", evaluation=False)
    short.write_status(step=24, total_steps=24)
    ctl = TrainingController(runs_root=tmp_path)
    ctl.run_id = short.id
    (progress,) = ctl.__panel__().select(pn.indicators.Progress)
    assert (progress.value, progress.max) == (24, 24)
    ctl.run_id = long.id  # a longer run after a shorter one: max grows before value
    assert (progress.value, progress.max) == (40, 40)
    ctl.run_id = short.id
    assert (progress.value, progress.max) == (24, 24)
    assert ctl.can_resume and not ctl.is_example


# ---------------------------------------------------------------------------------------------
# Curves from the metric names a run writes (any task)
# ---------------------------------------------------------------------------------------------


def write_gan_run(path, steps=(10, 20, 30)) -> RunDir:
    """A run of a future task (conditional GAN): train ``loss_g``/``loss_d``, val ``fid``,
    the loop's ``lr`` and ``maps_per_s``, and a generic report.json."""
    run = RunDir(path).create()
    run.write_config({"command": "train", "preset": "gan", "settings": {"task": "gan"}})
    run.write_status(state="completed", step=steps[-1], epoch=1, total_steps=steps[-1])
    for step in steps:
        run.log_metrics(step, 0, "train", {"loss_g": 2.0 / step, "loss_d": 0.5, "lr": 1e-4})
        run.log_metrics(step, 0, "train", {"maps_per_s": 100.0})
    run.log_metrics(steps[-1], 1, "val", {"fid": 12.5})
    report = {"task": "gan", "n_maps": 16, "metrics": {"fid": 12.5, "pk": {"ratio_mean": 1.02}}}
    (run.path / "report.json").write_text(json.dumps(report))
    return run


def test_plot_grouping_of_metric_names():
    assert [curves.plot_key(n) for n in ("loss", "loss_g", "rmse_sigma8", "fid")] == [
        "loss", "loss", "rmse", "fid",
    ]  # fmt: skip
    assert curves.plot_key("lr_d") == curves.plot_key("lr") == "lr"
    assert curves.plot_key("maps_per_s") == "throughput"
    assert curves.series_label("val", "loss") == "validation"
    assert curves.series_label("val", "rmse_omega_m") == "Ωₘ (validation)"
    assert curves.series_label("train", "lr") == "learning rate"
    assert curves.series_label("train", "loss_g") == "loss_g (train)"
    assert curves.series_label("train", "maps_per_s") == "maps/s (train)"
    pairs = [("train", "lr"), ("train", "grad_norm"), ("val", "fid"), ("train", "loss")]
    plots = curves.curve_plots(pairs)
    assert [p.key for p in plots] == ["loss", "fid", "grad", "lr"]  # loss first, loop last
    fid = plots[1]
    assert (fid.title, fid.series, fid.points) == ("fid", ("validation",), ("validation",))
    assert plots[2].title == "grad_norm" and plots[3].yformatter == "%.1e"
    rows = [
        {"step": 1, "split": "train", "name": "loss", "value": None},  # non-finite: NaN
        {"step": 1, "split": "train", "name": "note", "value": "text"},  # not a number: left out
        {"split": "train", "name": "loss", "value": 1.0},  # no step: left out
    ]
    frames = curves.metrics_frames(rows)
    assert list(frames) == ["loss"] and np.isnan(frames["loss"]["value"][0])
    assert curves.metric_pairs(rows) == [("train", "loss")]


def test_gan_run_streams_its_own_curves(tmp_path):
    run = write_gan_run(tmp_path / "20260101-000000-gan-aaaa")
    ctl = TrainingController(runs_root=tmp_path)
    assert ctl.run_id == run.id
    plots = {p.key: p for p in ctl.curves}
    assert list(plots) == ["loss", "fid", "lr", "throughput"]
    assert plots["loss"].series == ("loss_g (train)", "loss_d (train)")
    assert plots["loss"].points == () and plots["fid"].points == ("validation",)
    loss = ctl.buffers["loss"].data
    g = loss[loss["series"] == "loss_g (train)"]
    assert list(g["step"]) == [10, 20, 30] and g["value"].tolist() == pytest.approx(
        [0.2, 0.1, 2 / 30]
    )
    assert ctl.buffers["fid"].data["value"].tolist() == [12.5]
    # each plot's DynamicMap draws one curve per series, from its buffer
    overlay = ctl.curve_view("loss")[()]
    curves = [el for el in overlay if isinstance(el, hv.Curve)]
    assert [c.label for c in curves] == ["loss_g (train)", "loss_d (train)"]
    assert [len(c) for c in curves] == [3, 3]
    fid = ctl.curve_view(plots["fid"])[()]
    assert {type(el) for el in fid} == {hv.Curve, hv.Scatter}  # val: points too
    root = pn.panel(ctl).get_root()  # the page builds with these plots
    titles = {m.text for m in root.select({"type": Title})}
    assert {"Loss", "fid", "Throughput"} <= titles
    # streaming: new lines of known and new names reach the buffers and the plots
    run.log_metrics(40, 1, "train", {"loss_g": 0.05, "loss_d": 0.4})
    run.log_metrics(40, 1, "val", {"loss_g": 0.07})
    assert ctl.poll() == 3
    assert len(ctl.buffers["loss"].data) == 9
    assert [p.series for p in ctl.curves if p.key == "loss"] == [
        ("loss_g (train)", "loss_d (train)", "loss_g (validation)")
    ]
    # the report of the unknown task: its scalar metrics in a generic table
    assert ctl.evaluation.state == "ready" and "task `gan`" in ctl.evaluation.summary
    table = ctl.evaluation.table()
    assert table.to_dict("list") == {"metric": ["fid", "pk.ratio_mean"], "value": [12.5, 1.02]}


def test_generic_report_of_an_unknown_task(tmp_path):
    run = write_run(tmp_path / "run", evaluation=False)
    report = {
        "task": "gan",
        "version": 1,
        "metrics": {"fid": 12.3, "val": {"kid": None, "ok": True}, "bins": [1, 2], "m": "x"},
    }
    (run.path / "report.json").write_text(json.dumps(report))
    ev = rep.EvaluationPanel()
    ev.update(run, run.status())
    assert ev.state == "ready" and rep.report_task(ev.report) == "gan"
    assert not rep.is_regression(ev.report)
    table = ev.table()  # numbers only (null: NaN); lists, strings and booleans left out
    assert list(table["metric"]) == ["fid", "val.kid"] and np.isnan(table["value"][1])
    assert list(rep.format_scalars(table)["value"]) == ["12.3", "—"]
    root = pn.panel(ev).get_root()  # drawn as a table, no regression plots
    assert not list(root.select({"type": Title}))
    # no "metrics" object: the report's own scalars less its description
    assert list(
        rep.scalar_metrics({"task": "x", "n_maps": 4, "seconds": 1.0, "acc": 0.9})["metric"]
    ) == ["n_maps", "acc"]
    # a report with task "regression" (or none) is the regression view
    assert rep.is_regression({"task": "regression"}) and rep.is_regression({})
    pending = rep.state_markdown("pending", {"state": "running"}, None, {"task": "gan"})
    assert "P(k)" not in pending and "Evaluation pending" in pending


# ---------------------------------------------------------------------------------------------
# Pages rendered more than once: watchers and callbacks are registered once
# ---------------------------------------------------------------------------------------------


def _watcher_counts(obj) -> dict[str, int]:
    return {name: sum(map(len, what.values())) for name, what in obj.param.watchers.items()}


def test_training_page_rendered_twice_registers_its_watchers_once(tmp_path, monkeypatch):
    calls = []
    show = TrainingController._show_progress

    def counting(self, event):
        calls.append(event.new.get("step") if event.new else None)
        show(self, event)

    monkeypatch.setattr(TrainingController, "_show_progress", counting)
    run = write_run(tmp_path / "20260101-000000-smoke-aaaa", evaluation=False)
    ctl = TrainingController(runs_root=tmp_path)
    pn.panel(ctl).get_root()
    counts = _watcher_counts(ctl), _watcher_counts(ctl.settings)
    pn.panel(ctl).get_root()  # a second render (another root) ...
    ctl.__panel__()  # ... and a direct call give the same page
    assert (_watcher_counts(ctl), _watcher_counts(ctl.settings)) == counts
    assert ctl.__panel__() is ctl.__panel__()
    calls.clear()
    run.write_status(step=20, total_steps=40, state="running")
    ctl.poll()
    assert calls == [20]  # one status change, one call
    (progress,) = ctl.__panel__().select(pn.indicators.Progress)
    assert (progress.value, progress.max) == (20, 40)


def test_sky_page_rendered_twice_registers_its_watchers_once(monkeypatch):
    from explorer import sky

    calls = []
    show = sky.SkyPage._show_open_button

    def counting(self, event):
        calls.append(event.new is None)
        show(self, event)

    monkeypatch.setattr(sky.SkyPage, "_show_open_button", counting)
    page = sky.SkyPage(source="kappa", sky_settings=sky.esky.SkyParams(nside=64, count=1))
    pn.panel(page).get_root()
    counts = _watcher_counts(page)
    pn.panel(page).get_root()
    assert _watcher_counts(page) == counts and page.__panel__() is page.__panel__()
    (button,) = [
        b for b in page.__panel__().select(pn.widgets.Button) if "field lab" in str(b.label)
    ]
    assert button.disabled
    page.cut(30.0, 10.0)
    assert calls == [False] and not button.disabled
