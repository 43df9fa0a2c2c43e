"""``python -m engine train`` end to end: run directory, resume, signals, failures, user errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from engine import cli
from engine.launch import launch_train
from engine.params import load_config_file, to_dict
from engine.physics import slabs
from engine.runs import REPO_ROOT, RunDir
from engine.train.checkpoint import load_checkpoint, load_network
from engine.train.settings import PRESETS, TrainParams, resolve_params

#: Tiny settings on top of the smoke preset: 16² maps, a few steps, one CPU thread.
TINY = {
    "size": 16,
    "batch_size": 8,
    "steps_per_epoch": 4,
    "epochs": 2,
    "val_maps": 8,
    "width": 4,
    "log_every": 2,
    "num_threads": 1,
    "device": "cpu",
    "eval_maps": 0,
}
CKPT_KEYS = {
    "format",
    "task",
    "task_state",
    "networks",
    "optimizers",
    "step",
    "epoch",
    "best",
    "config",
    "map_settings",
    "engine_version",
}


def _sets(overrides: dict) -> list[str]:
    return [arg for k, v in overrides.items() for arg in ("--set", f"{k}={v}")]


def _engine(*args: str) -> subprocess.Popen:
    """Start ``python -m engine ...`` from the repository root, output captured."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "engine", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_same_tensors(a, b, where="") -> None:
    """Recursively assert two checkpoint parts hold bit-identical tensors and equal values."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_launched_smoke_run_writes_the_run_directory(tmp_path):
    run = RunDir(tmp_path / "runs" / "smoke")
    proc = launch_train(run.path, "smoke", TINY)
    assert run.status()["state"] in ("queued", "running")  # listed at once
    assert proc.wait(timeout=120) == 0, run.log_path.read_text()

    config = run.config()
    assert config["command"] == "train" and config["preset"] == "smoke"
    assert config["device"] == "cpu" and config["engine_version"]
    assert config["settings"] == to_dict(resolve_params("smoke", overrides=TINY))
    assert config["settings"]["size"] == 16 and "omega_m" not in config["settings"]

    status = run.status()
    assert status["state"] == "completed" and status["error"] is None
    assert status["step"] == status["total_steps"] == 8 and status["epoch"] == 1
    assert status["pid"] == proc.pid

    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert all(set(r) == {"step", "epoch", "split", "name", "value", "time"} for r in rows)
    train_loss = [r for r in rows if (r["split"], r["name"]) == ("train", "loss")]
    assert [r["step"] for r in train_loss] == [2, 4, 6, 8]
    val = {(r["epoch"], r["name"]): r["value"] for r in rows if r["split"] == "val"}
    assert set(val) >= {(e, n) for e in (0, 1) for n in ("loss", "rmse_omega_m", "rmse_sigma8")}
    assert 0 < val[(1, "rmse_omega_m")] < 0.4 and 0 < val[(1, "rmse_sigma8")] < 0.4

    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(run.checkpoint_dir / name, weights_only=True)
        assert CKPT_KEYS <= set(ckpt)
        assert ckpt["config"] == config["settings"]
    assert ckpt["task"] == "regression" and ckpt["networks"]["model"]["name"] == "cnn"
    model, last = load_network(run.checkpoint_dir / "last.pt")
    assert last["step"] == 8
    maps = torch.randn(3, 1, 16, 16)
    assert model(maps).shape == (3, 4)


@pytest.mark.slow
def test_sigterm_then_resume_matches_uninterrupted_run(tmp_path, capsys):
    settings = {**TINY, "steps_per_epoch": 30, "batch_size": 4, "val_maps": 4, "log_every": 1}
    whole, parts = RunDir(tmp_path / "whole"), RunDir(tmp_path / "parts")
    argv = ["train", "--preset", "smoke", *_sets(settings)]

    # Interrupted run in its own process: SIGTERM as soon as the first step is logged.
    proc = _engine(*argv, "--run-dir", str(parts.path))
    deadline = time.time() + 60
    while not parts.metrics() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    status = parts.status()
    assert status["state"] == "stopped", out + err
    stopped = load_checkpoint(parts.checkpoint_dir / "last.pt")
    assert 1 <= stopped["step"] == status["step"] < 60
    assert "stopped" in out

    # Resume (with the saved settings: the preset given here must not matter) and an
    # uninterrupted run, both in this process.
    assert cli.main(["train", "--preset", "default", "--run-dir", str(parts.path), "--resume"]) == 0
    assert parts.status()["state"] == "completed"
    assert cli.main([*argv, "--run-dir", str(whole.path)]) == 0
    a = load_checkpoint(whole.checkpoint_dir / "last.pt")
    b = load_checkpoint(parts.checkpoint_dir / "last.pt")
    assert a["step"] == b["step"] == 60
    _assert_same_tensors(a["networks"], b["networks"], "networks")
    _assert_same_tensors(a["optimizers"], b["optimizers"], "optimizers")
    assert a["best"] == b["best"]


@pytest.mark.parametrize("fault", ["raise", "nan"])
def test_runtime_failure_marks_run_failed(tmp_path, monkeypatch, capsys, fault):
    real = slabs.generate_maps
    calls = []

    def flaky(*args, **kwargs):  # validation set, step 1, then the fault at step 2
        calls.append(1)
        maps = real(*args, **kwargs)
        if len(calls) < 3:
            return maps
        if fault == "raise":
            raise RuntimeError("boom\nsecond line")
        return maps * float("nan")

    monkeypatch.setattr(slabs, "generate_maps", flaky)
    run = RunDir(tmp_path / "r")
    argv = ["train", "--preset", "smoke", "--run-dir", str(run.path), *_sets(TINY)]
    assert cli.main([*argv, "--set", "log_every=1"]) == 1
    status = run.status()
    assert status["state"] == "failed"
    expected = {
        "raise": "RuntimeError: boom",
        "nan": "FloatingPointError: training loss is nan at step 2; try a smaller lr (now 0.002) or grad_clip",
    }[fault]
    assert status["error"] == expected
    assert f"error: {expected}" in capsys.readouterr().err


BAD_ARGS = [
    (["--set", "lr=-1"], "lr=-1 is out of range: allowed 0.0 < lr <= 10.0"),
    (
        ["--omega-m-min", "0.05"],
        "omega_m_min=0.05 is out of range: allowed 0.1 <= omega_m_min <= 0.9",
    ),
    (["--size", "abc"], "size='abc' is not an integer"),
    (["--kind", "nbody"], "kind='nbody' is not allowed: kind must be one of 'grf', 'lognormal'"),
    (
        ["--preset", "huge"],
        "preset='huge' is not allowed: preset must be one of 'smoke', 'default'",
    ),
    (["--set", "bogus=1"], "unknown setting 'bogus' for TrainParams"),
    (["--set", "omega_m=0.3"], "unknown setting 'omega_m' for TrainParams"),
    (
        ["--set", "sigma8_min=0.9", "--sigma8-max", "0.8"],
        "sigma8_min=0.9 must be smaller than sigma8_max=0.8",
    ),
    (["--set", "noequals"], "--set 'noequals' must look like key=value"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--resume"], "holds no run (no config.json)"),
    (["--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    run_dir = tmp_path / "run"
    code = cli.main(["train", "--preset", "smoke", "--run-dir", str(run_dir), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not run_dir.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_gpu(tmp_path, capsys):
    assert cli.main(["train", "--run-dir", str(tmp_path / "r"), "--device", "cuda"]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_existing_run_needs_resume_and_is_left_alone(tmp_path, capsys):
    run = RunDir(tmp_path / "r").create()
    run.write_config({"settings": {}})
    before = run.config_path.read_text()
    assert cli.main(["train", "--run-dir", str(run.path)]) == 2
    assert "already holds a run (state unknown); add --resume" in capsys.readouterr().err
    assert run.config_path.read_text() == before and run.status() is None
    assert cli.main(["train", "--run-dir", str(run.path), "--resume"]) == 2
    assert "has no checkpoints/last.pt" in capsys.readouterr().err


def test_queued_run_with_bad_setting_is_marked_failed(tmp_path, capsys):
    run = RunDir(tmp_path / "r")
    run.create().write_status(state="queued")  # as launch_train leaves it
    assert cli.main(["train", "--run-dir", str(run.path), "--set", "lr=-1"]) == 2
    status = run.status()
    assert status["state"] == "failed"
    assert status["error"] == "lr=-1 is out of range: allowed 0.0 < lr <= 10.0"
    assert capsys.readouterr().err == f"error: {status['error']}\n"
    assert not run.has_run()


def test_settings_precedence(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("size: 24\nbatch_size: 3\nlr: 0.01\n")
    p = resolve_params(
        "smoke", load_config_file(config), {"size": "20", "lr": "0.02"}, {"size": 16}
    )
    assert (p.size, p.batch_size, p.lr, p.epochs) == (16, 3, 0.02, PRESETS["smoke"]["epochs"])
    assert resolve_params("default").size == TrainParams.param.size.default == 64
