"""Starting and stopping engine processes on run directories (no torch, no Panel).

* :func:`check_run_dir` — may a run be started (or resumed) in a directory; writes nothing.
* :func:`launch_train` — ``python -m engine train`` in its own session, status ``queued``.
* :func:`stop_run` — SIGTERM to the run's own engine process (pid and start time checked).

The explorer starts and stops runs through these; the engine's ``train`` verb checks its run
directory with :func:`check_run_dir` and holds :meth:`engine.runs.RunDir.lock` while it trains.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.params import ConfigError
from engine.runs import ACTIVE_STATES, REPO_ROOT, RunDir, process_start, same_process


def check_run_dir(run_dir: str | Path | RunDir, resume: bool = False) -> dict[str, Any] | None:
    """Check that a training run may be started (or resumed) in ``run_dir``; writes nothing.

    Returns
    -------
    dict or None
        On ``resume``, the run's saved settings (``config.json["settings"]``); else ``None``.

    Raises
    ------
    ConfigError
        The path is a file; a run exists there and not ``resume``; on ``resume``: no run, no
        ``checkpoints/last.pt``, or the run's process is still alive.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if run.path.exists() and not run.path.is_dir():
        raise ConfigError(f"--run-dir {str(run.path)!r} is a file, not a directory")
    if not resume:
        if run.has_run():
            state = (run.status() or {}).get("state", "unknown")
            raise ConfigError(
                f"--run-dir {str(run.path)!r} already holds a run (state {state}); add --resume "
                "to continue it or choose another directory"
            )
        return None
    if not run.has_run():
        raise ConfigError(f"--resume: {str(run.path)!r} holds no run (no config.json)")
    if not (run.checkpoint_dir / "last.pt").is_file():
        raise ConfigError(f"--resume: {str(run.path)!r} has no checkpoints/last.pt to resume from")
    status = run.status() or {}
    if status.get("state") == "running" and status.get("pid") != os.getpid() and run.is_active():
        raise ConfigError(
            f"--resume: run {run.id!r} is still running (pid {status.get('pid')}); stop it first"
        )
    settings = (run.config() or {}).get("settings")
    if not isinstance(settings, dict):
        raise ConfigError(f"--resume: {str(run.config_path)!r} holds no settings")
    return settings


def train_command(
    run_dir: str | Path,
    preset: str = "smoke",
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    config_file: str | Path | None = None,
    task: str | None = None,
) -> list[str]:
    """The argv of ``python -m engine train`` for these arguments (see :func:`launch_train`)."""
    cmd = [sys.executable, "-m", "engine", "train", "--preset", preset, "--run-dir", str(run_dir)]
    if task is not None:
        cmd += ["--task", str(task)]
    if config_file is not None:
        cmd += ["--config", str(config_file)]
    for key, value in (overrides or {}).items():
        cmd += ["--set", f"{key}={_yaml_scalar(value)}"]
    if resume:
        cmd.append("--resume")
    return cmd


def _yaml_scalar(value: Any) -> str:
    """Render ``value`` so that ``yaml.safe_load`` in :func:`engine.params.parse_overrides`
    reads it back as the same value (numpy scalars become Python ones)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float, str)):
        return json.dumps(value) if isinstance(value, str) else repr(value)
    return json.dumps(value)


def launch_train(
    run_dir: str | Path,
    preset: str = "smoke",
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    config_file: str | Path | None = None,
    task: str | None = None,
) -> subprocess.Popen:
    """Start ``python -m engine train`` for ``run_dir`` in a new session and return at once.

    The child runs with ``start_new_session=True`` (a browser closing or the server restarting
    does not kill it), the repository root as working directory and on ``PYTHONPATH``, and its
    stdout/stderr appended to ``run_dir/engine.log``. The directory is created and
    ``status.json`` set to state ``"queued"`` with the child's pid, so the run is listed at once;
    the engine process takes the status over (``"running"``) once it has started. Settings are
    validated by the child: on a bad one it marks the run ``"failed"`` with the message and exits
    with code 2 (see ``engine.log``). A child killed before it handles signals (e.g. by
    :func:`stop_run` during its first seconds) leaves the state ``"queued"`` with a dead pid,
    which :meth:`RunDir.is_active` reports as not active.

    Parameters
    ----------
    run_dir : str or Path
        The run directory (created if missing).
    preset : str
        Name of a preset in ``engine.train.settings.PRESETS``.
    overrides : mapping, optional
        ``{setting: value}`` passed as ``--set setting=value`` (highest precedence).
    resume : bool
        Continue the run in ``run_dir`` from ``checkpoints/last.pt``.
    config_file : str or Path, optional
        YAML/JSON config file passed as ``--config``.
    task : str, optional
        The task (``engine.tasks.TASKS``) passed as ``--task``; default: the preset's task
        (regression for presets that name none), or the run's own task on ``resume``.

    Returns
    -------
    subprocess.Popen
        The child; call ``poll()`` now and then so that it is reaped when it ends.

    Raises
    ------
    ConfigError
        The run directory cannot take this launch (see :func:`check_run_dir`); nothing is
        written then.

    Call this from the server's event loop or a callback, never to train in-process.
    """
    run = RunDir(run_dir)
    check_run_dir(run, resume)
    run.path.mkdir(parents=True, exist_ok=True)
    # a refused resume puts back the status it had (engine.train.process.refuse_launch)
    previous = run.raw_status() if resume else None
    run.write_status(state="queued", pid=None, pid_start=None, error=None, previous=previous)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = train_command(run.path.resolve(), preset, overrides, resume, config_file, task)
    with open(run.log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # Fill in the pid now: the child needs seconds of imports before it writes its own status
    # (with the same pid), so this read-merge-write does not overlap with the child's.
    if (run.raw_status() or {}).get("state") == "queued":
        run.write_status(pid=proc.pid, pid_start=process_start(proc.pid))
    return proc


def stop_run(run_dir: str | Path) -> bool:
    """Ask the engine process of ``run_dir`` to stop: SIGTERM to the process in ``status.json``.

    The engine then finishes its current step, saves ``checkpoints/last.pt`` and sets the state
    to ``"stopped"``. Only the run's own engine process is signalled: a queued/running run on
    this host whose pid is alive AND started when the status says (``pid_start``,
    :func:`engine.runs.same_process`; a status without it must name a process whose command
    line runs ``engine``), never another process that got the pid after the run died.

    Returns
    -------
    bool
        True if a signal was sent; False if there is no status, no pid, the run is not active,
        runs on another host, or the pid is not (any more) the run's engine process.
    """
    status = RunDir(run_dir).raw_status() or {}
    pid = status.get("pid")
    if status.get("state") not in ACTIVE_STATES or pid is None:
        return False
    if status.get("host") not in (None, socket.gethostname()):
        return False
    if not same_process(pid, status.get("pid_start")):
        return False
    if status.get("pid_start") is None and not _runs_engine(pid):
        return False
    try:
        os.kill(int(pid), signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _runs_engine(pid: int) -> bool:
    """True if process ``pid``'s command line runs the engine (``-m engine`` or cosmo-engine)."""
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"engine" in argv or any(a.endswith(b"cosmo-engine") for a in argv)
