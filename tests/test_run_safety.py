"""Run directories that cannot be corrupted: a refused resume writes nothing, one trainer per
run directory, a killed run shows as died, Stop never signals a foreign process, a resume cuts
metrics.jsonl back to its checkpoint and cleans up after a killed save."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine import cli
from engine.launch import stop_run
from engine.runs import LOCK_FILE, RunDir, list_runs, process_start
from tests.test_cli_train import TINY, _engine, _sets


def _snapshot(path: Path) -> dict[str, bytes]:
    """Every file of a run directory but the lock file (which records its last holder)."""
    files = (p for p in path.rglob("*") if p.is_file() and p.name != LOCK_FILE)
    return {str(p.relative_to(path)): p.read_bytes() for p in files}


def _wait(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_refused_resume_leaves_the_run_exactly_as_it_was(tmp_path, capsys):
    run = RunDir(tmp_path / "r")
    argv = ["train", "--preset", "smoke", "--run-dir", str(run.path)]
    assert cli.main([*argv, *_sets(TINY)]) == 0
    before = _snapshot(run.path)
    resume = ["train", "--run-dir", str(run.path), "--resume"]
    assert cli.main([*resume, "--set", "width=16"]) == 2  # another model: refused
    assert "width" in capsys.readouterr().err
    assert _snapshot(run.path) == before
    assert run.status()["state"] == "completed"
    assert cli.main(resume) == 0  # the saved settings still resume
    assert run.status()["state"] == "completed"


def test_two_trainers_started_together_one_is_refused(tmp_path):
    run = RunDir(tmp_path / "r")
    settings = {**TINY, "epochs": 1, "steps_per_epoch": 30, "log_every": 1}
    argv = ["train", "--preset", "smoke", *_sets(settings), "--run-dir", str(run.path)]
    procs = [_engine(*argv) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    err = next(e for code, _, e in results if code == 2)
    assert "in use by another engine process" in err or "already holds a run" in err
    assert err.strip().count("\n") == 0  # one line
    steps = [r["step"] for r in run.metrics() if (r["split"], r["name"]) == ("train", "loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 30  # one run's lines, never two
    status = run.status()
    assert status["state"] == "completed" and status["step"] == 30


def test_killed_run_shows_died_and_resume_cuts_metrics_back(tmp_path):
    from explorer.report import state_markdown
    from explorer.training import run_label

    run = RunDir(tmp_path / "r")
    settings = {**TINY, "epochs": 50, "steps_per_epoch": 2, "log_every": 1}
    proc = _engine("train", "--preset", "smoke", *_sets(settings), "--run-dir", str(run.path))
    _wait(lambda: (run.checkpoint_dir / "last.pt").is_file() and len(run.metrics()) > 12)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    status = run.status()
    assert status["state"] == "died" and status["written_state"] == "running"
    assert run.raw_status()["state"] == "running" and not run.is_active()
    assert list_runs(tmp_path) == [run] and "died" in run_label(run)
    assert "died" in state_markdown("none", status, None, {"eval_maps": 0})
    assert stop_run(run.path) is False  # nothing to signal

    # what a kill -9 can leave: a killed save's temporary file, steps logged after the last
    # checkpoint (here a marker value), a torn last line
    from engine.train.checkpoint import load_checkpoint

    saved = load_checkpoint(run.checkpoint_dir / "last.pt")["step"]
    (run.checkpoint_dir / ".last.pt.abcd.tmp").write_bytes(b"partial")
    run.log_metrics(saved + 1, 0, "train", {"loss": 12345.0})
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 999, "epoch": 0, "split": "train", "na')
    assert cli.main(["train", "--run-dir", str(run.path), "--resume", "--set", "epochs=10"]) == 0
    assert not list(run.checkpoint_dir.glob(".*.tmp"))
    lines = run.metrics_path.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # no torn or glued line
    rows = [json.loads(line) for line in lines]
    train = [r["step"] for r in rows if (r["split"], r["name"]) == ("train", "loss")]
    assert train == sorted(train) and len(train) == len(set(train))  # no zig-zag
    assert 12345.0 not in {r["value"] for r in rows} and 999 not in {r["step"] for r in rows}
    assert run.status()["state"] == "completed"


def test_stop_signals_only_the_runs_own_engine_process(tmp_path):
    run = RunDir(tmp_path / "r").create()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # the pid is alive but belongs to another process: started at another time ...
        start = process_start(other.pid)
        run.write_status(state="running", pid=other.pid, pid_start=(start or 0) + 1)
        assert run.status()["state"] == "died"
        assert stop_run(run.path) is False
        # ... or, without a recorded start time, not an engine process
        run.write_status(pid_start=None)
        assert stop_run(run.path) is False
        time.sleep(0.2)
        assert other.poll() is None  # never signalled
    finally:
        other.kill()
        other.wait()
