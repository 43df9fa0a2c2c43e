"""Run-directory protocol: atomic files, metric tailing, listing, stopping (no torch needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from engine import launch, runs
from engine.launch import stop_run
from engine.params import ConfigError, parse_overrides
from engine.runs import MetricsTail, RunDir, is_alive, list_runs, new_run_id, process_start


def test_write_json_atomic_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "status.json"
    runs.write_json_atomic(path, {"a": 1})
    runs.write_json_atomic(path, {"a": 2, "b": [1, 2]})
    assert json.loads(path.read_text()) == {"a": 2, "b": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_write_json_atomic_failure_keeps_old_file(tmp_path):
    path = tmp_path / "status.json"
    runs.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        runs.write_json_atomic(path, {"a": object()})
    with pytest.raises(ValueError):  # NaN is not JSON
        runs.write_json_atomic(path, {"a": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_status_merges_and_tolerates_partial_file(tmp_path):
    run = RunDir(tmp_path / "r").create()
    assert run.status() is None and run.config() is None
    first = run.write_status(state="running", pid=123)
    assert first["state"] == "running" and first["pid"] == 123
    assert {"step", "epoch", "started", "updated", "error"} <= set(first)
    second = run.write_status(step=5, epoch=0)
    assert second["pid"] == 123 and second["step"] == 5
    assert second["started"] == first["started"] and second["updated"] >= first["updated"]
    with pytest.raises(ValueError, match="state='bogus'"):
        run.write_status(state="bogus")
    run.status_path.write_text('{"state": "runn')  # torn write by a foreign tool
    assert run.status() is None


def test_metrics_tail_keeps_torn_last_line(tmp_path):
    run = RunDir(tmp_path / "r").create()
    tail = MetricsTail(run.metrics_path)
    assert tail.read_new() == []  # file does not exist yet
    run.log_metric(1, 0, "train", "loss", 0.5)
    run.log_metrics(2, 0, "val", {"loss": 0.4, "rmse_sigma8": float("inf")})
    rows = tail.read_new()
    assert [(r["step"], r["split"], r["name"], r["value"]) for r in rows] == [
        (1, "train", "loss", 0.5),
        (2, "val", "loss", 0.4),
        (2, "val", "rmse_sigma8", None),
    ]
    assert set(rows[0]) == {"step", "epoch", "split", "name", "value", "time"}
    assert tail.read_new() == []
    line = json.dumps({"step": 3, "epoch": 0, "split": "train", "name": "loss", "value": 0.3})
    with open(run.metrics_path, "a") as f:
        f.write(line[:17])  # torn: no newline yet
    assert tail.read_new() == []
    with open(run.metrics_path, "a") as f:
        f.write(line[17:] + "\n")
    assert [r["step"] for r in tail.read_new()] == [3]
    assert len(run.metrics()) == 4


def test_metrics_tail_restarts_when_file_shrinks(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n')
    tail = MetricsTail(path)
    assert len(tail.read_new()) == 2
    path.write_text('{"step": 9}\n')
    assert [r["step"] for r in tail.read_new()] == [9]


def test_list_runs_newest_first_and_only_runs(tmp_path):
    assert list_runs(tmp_path / "missing") == []
    old, new, queued = (RunDir(tmp_path / n).create() for n in ("b-old", "a-new", "c-queued"))
    old.write_config({"settings": {}})
    new.write_config({"settings": {}})
    queued.write_status(state="queued")
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "file.txt").write_text("x")
    now = time.time()
    os.utime(old.config_path, (now - 100, now - 100))
    os.utime(queued.status_path, (now - 50, now - 50))
    assert [r.id for r in list_runs(tmp_path)] == ["a-new", "c-queued", "b-old"]


def test_new_run_id_format():
    rid = new_run_id("smoke test/1")
    date, clock, *middle, suffix = rid.split("-")
    assert len(date) == 8 and len(clock) == 6 and len(suffix) == 4
    assert "-".join(middle) == "smoke-test-1"
    assert new_run_id("x") != new_run_id("x")


def test_stop_dead_pid_and_no_status(tmp_path):
    run = RunDir(tmp_path / "r").create()
    assert stop_run(run.path) is False  # no status at all
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not is_alive(proc.pid) and not is_alive(None) and not is_alive(-1)
    run.write_status(state="running", pid=proc.pid)
    assert not run.is_active()
    assert stop_run(run.path) is False


def test_stop_live_process_and_zombie(tmp_path):
    run = RunDir(tmp_path / "r").create()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.write_status(state="completed", pid=proc.pid)
        assert stop_run(run.path) is False  # finished runs are never signalled
        run.write_status(state="running", pid_start=process_start(proc.pid))
        assert is_alive(proc.pid) and run.is_active()
        assert stop_run(run.path) is True
        proc.wait(timeout=10)
        assert not is_alive(proc.pid)  # reaped
    finally:
        proc.kill()
        proc.wait()


def test_is_alive_false_for_unreaped_zombie():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 10
    while is_alive(proc.pid) and time.time() < deadline:  # exits, not yet waited for
        time.sleep(0.02)
    assert not is_alive(proc.pid)
    proc.wait()


def test_train_command_round_trips_overrides(tmp_path):
    overrides = {"lr": 0.003, "epochs": 2, "kind": "lognormal", "amp": False, "seed": 7}
    overrides["smoothing"] = np.float64(1.5)  # as a widget may hand it over
    cmd = launch.train_command(tmp_path / "r", "smoke", overrides, resume=True)
    assert cmd[:4] == [sys.executable, "-m", "engine", "train"]
    assert cmd[-1] == "--resume"
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert parse_overrides(sets) == overrides


def test_launch_refuses_occupied_or_empty_run_dir_without_writing(tmp_path):
    run = RunDir(tmp_path / "r").create()
    run.write_config({"settings": {}})
    with pytest.raises(ConfigError, match=r"already holds a run \(state unknown\); add --resume"):
        launch.launch_train(run.path)
    with pytest.raises(ConfigError, match="has no checkpoints/last.pt"):
        launch.launch_train(run.path, resume=True)
    with pytest.raises(ConfigError, match="holds no run"):
        launch.launch_train(tmp_path / "empty", resume=True)
    assert run.status() is None and not (tmp_path / "empty").exists()


def test_atomic_files_have_the_permissions_of_plain_files(tmp_path):
    """mkstemp makes 0o600 files; renamed into place they must read like any created file."""
    from engine.runs import write_json_atomic

    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    write_json_atomic(tmp_path / "atomic.json", {"x": 1})
    assert (tmp_path / "atomic.json").stat().st_mode == plain.stat().st_mode
