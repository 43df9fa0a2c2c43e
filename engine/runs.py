"""Run-directory protocol: the contract between an engine process and its watchers.

A run lives in one directory (``runs/<run-id>/``) that any process may read while the engine
process writes it; nothing else is shared, so a run started on a cluster node shows up the same
way when its directory sits on a shared file system::

    config.json     {"command", "preset", "settings": {every setting}, "engine_version",
                     "device", "created"}                       (written once per start)
    status.json     {"state", "pid", "host", "step", "epoch", "total_steps", "started",
                     "updated", "error", ...}                   (rewritten atomically)
    metrics.jsonl   {"step", "epoch", "split", "name", "value", "time"} per line (append-only)
    checkpoints/    last.pt, best.pt                            (written atomically)
    engine.log      stdout and stderr of a process started by :func:`launch_train`

``state`` is one of :data:`STATES`. Times (``started``, ``updated``, ``time``) are Unix times in
seconds (float). ``step`` counts optimiser updates done; ``epoch`` is the 0-based epoch that the
step belongs to. Non-finite metric values are written as ``null`` so every line is strict JSON.
A run resumed from a checkpoint older than its last metrics (after a crash; a stop saves the
current step) logs some steps again: readers keep the last line per (split, name, step).

Atomic means: written to a temporary file in the same directory, then ``os.replace``-d over the
target, so a reader sees the old or the new file, never a partial one. ``metrics.jsonl`` lines are
appended with one ``write`` each; a reader (:class:`MetricsTail`) keeps a torn last line (no
newline yet) for its next read.

Nothing here imports torch or Panel: the explorer lists and tails runs cheaply, and launches and
stops engine processes without ever training in its own process.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from engine.params import ConfigError

#: Values of ``status.json["state"]``.
STATES = ("queued", "running", "completed", "failed", "stopped")
#: States in which a process is (supposed to be) working on the run.
ACTIVE_STATES = ("queued", "running")

#: Root of the engine package's repository (the directory holding ``engine/``).
REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Atomic files
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path: str | Path, binary: bool = False, fsync: bool = False) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on success ``os.replace`` it to ``path``.

    Parameters
    ----------
    path : str or Path
        Target file; its directory must exist.
    binary : bool
        Open the temporary file in binary mode (``"wb"``) instead of text mode (UTF-8).
    fsync : bool
        Flush the data to disk before the rename (slower; use for checkpoints).

    On an exception inside the ``with`` block the temporary file is removed and ``path`` is left
    as it was. The file gets the permissions of a plainly created one (0o666 minus the umask, not
    mkstemp's 0o600), so run directories on a shared file system stay readable by the explorer
    and by collaborators.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, default_mode(0o666))
    try:
        with os.fdopen(
            fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})
        ) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The process umask, read once at import (reading it means setting it, which is not thread-safe).
_UMASK = _read_umask()


def default_mode(base: int = 0o666) -> int:
    """Permission bits of a newly created file (``base`` 0o666) or directory (0o777) under the
    process umask, for temporary files and directories that are renamed into place."""
    return base & ~_UMASK


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON (indented, UTF-8) to ``path`` atomically (temporary file + rename).

    Raises
    ------
    TypeError
        ``obj`` holds something JSON cannot encode (``path`` is then left unchanged).
    """
    with atomic_write(path) as f:
        json.dump(obj, f, indent=1, allow_nan=False, default=_json_default)
        f.write("\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def read_json(path: str | Path) -> dict | None:
    """Read a JSON object from ``path``; ``None`` if missing, unreadable, partial or not a dict."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------
# Run directory
# ---------------------------------------------------------------------------------------------


class RunDir:
    """One run directory (see the module docstring for its files).

    Cheap to create: nothing is read or written until a method is called, and the directory need
    not exist yet (:meth:`create` makes it).

    Attributes
    ----------
    path : Path
        The directory.
    id : str
        Its name, e.g. ``"20261122-021530-smoke-ab12"``.
    config_path, status_path, metrics_path, log_path, checkpoint_dir : Path
        ``config.json``, ``status.json``, ``metrics.jsonl``, ``engine.log``, ``checkpoints/``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.id = self.path.name
        self.config_path = self.path / "config.json"
        self.status_path = self.path / "status.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.log_path = self.path / "engine.log"
        self.checkpoint_dir = self.path / "checkpoints"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    def create(self) -> RunDir:
        """Create the directory and ``checkpoints/`` (parents too; no error if they exist)."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        return self

    def has_run(self) -> bool:
        """True if a run was started here (``config.json`` exists)."""
        return self.config_path.is_file()

    def config(self) -> dict | None:
        """Contents of ``config.json``, or ``None`` if missing or unreadable."""
        return read_json(self.config_path)

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Write ``config.json`` atomically (see the module docstring for its keys)."""
        write_json_atomic(self.config_path, dict(config))

    def status(self) -> dict | None:
        """Contents of ``status.json``, or ``None`` if missing, partial or unreadable."""
        return read_json(self.status_path)

    def write_status(self, **fields: Any) -> dict:
        """Merge ``fields`` into ``status.json``, set ``"updated"`` to now, write it atomically.

        A first write also fills ``pid``, ``host``, ``step``, ``epoch``, ``started`` and
        ``error`` with defaults (``None`` / this process / now). Only one process should write a
        run's status at a time (the engine process once it runs; the launcher before).

        Returns
        -------
        dict
            The status as written.

        Raises
        ------
        ValueError
            ``state`` is not one of :data:`STATES`.
        """
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"state={fields['state']!r} is not one of {', '.join(STATES)}")
        now = time.time()
        status = self.status() or {
            "state": "queued",
            "pid": None,
            "host": socket.gethostname(),
            "step": None,
            "epoch": None,
            "started": now,
            "error": None,
        }
        status.update(fields)
        status["updated"] = now
        write_json_atomic(self.status_path, status)
        return status

    def is_active(self) -> bool:
        """True if the status is queued/running and its process may still be alive.

        The pid is only checked when the status was written on this host; a run on another host
        (shared file system) counts as active while its state says so.
        """
        status = self.status() or {}
        if status.get("state") not in ACTIVE_STATES:
            return False
        pid = status.get("pid")
        if pid is None or status.get("host") not in (None, socket.gethostname()):
            return True
        return is_alive(pid)

    def log_metric(self, step: int, epoch: int, split: str, name: str, value: float) -> None:
        """Append one metric line ``{"step", "epoch", "split", "name", "value", "time"}``.

        ``split`` is e.g. ``"train"`` or ``"val"``; ``value`` a float (non-finite → ``null``);
        ``time`` is the Unix time in seconds.
        """
        self.log_metrics(step, epoch, split, {name: value})

    def log_metrics(self, step: int, epoch: int, split: str, values: Mapping[str, float]) -> None:
        """Append one line per ``name: value`` of ``values``, in one ``write`` (see log_metric)."""
        now = time.time()
        lines = [
            json.dumps(
                {
                    "step": int(step),
                    "epoch": int(epoch),
                    "split": split,
                    "name": name,
                    "value": _finite_or_none(value),
                    "time": now,
                },
                allow_nan=False,
            )
            + "\n"
            for name, value in values.items()
        ]
        data = "".join(lines).encode("utf-8")
        fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def metrics(self) -> list[dict]:
        """Every complete metric line written so far (see :class:`MetricsTail`)."""
        return MetricsTail(self.metrics_path).read_new()


def _finite_or_none(value: Any) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


class MetricsTail:
    """Incremental reader of a ``metrics.jsonl`` file, by byte offset.

    Each :meth:`read_new` returns the complete lines appended since the previous call, parsed.
    A last line without its newline yet (torn write in progress) is left for the next call. The
    file need not exist yet. If the file shrinks (replaced by a new run), reading starts over.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = 0

    def read_new(self) -> list[dict]:
        """Parse and return the complete new lines as dicts (lines that are not JSON objects are
        skipped); ``[]`` when there is nothing new or the file does not exist."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:
                    self.offset = 0
                f.seek(self.offset)
                data = f.read(size - self.offset)
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        out = []
        for line in data[: end + 1].splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out


def list_runs(root: str | Path) -> list[RunDir]:
    """The run directories directly under ``root``, newest first.

    Only directories holding ``config.json`` or ``status.json`` count. "Newest" is by the
    modification time of ``config.json`` (written when the run starts), else ``status.json``;
    ties by name, descending. A missing ``root`` gives ``[]``.
    """
    root = Path(root)
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        run = RunDir(entry)
        for marker in (run.config_path, run.status_path):
            try:
                found.append((marker.stat().st_mtime, entry.name, run))
                break
            except OSError:
                continue
    found.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [run for _, _, run in found]


def new_run_id(prefix: str = "run") -> str:
    """A fresh run id ``"YYYYmmdd-HHMMSS-<prefix>-<4 hex>"`` in local time.

    Characters of ``prefix`` other than letters, digits, ``_`` and ``-`` become ``-``.
    """
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", prefix).strip("-") or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{secrets.token_hex(2)}"


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


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
            raise ConfigError(
                f"--run-dir {str(run.path)!r} already holds a run; add --resume to continue it "
                "or choose another directory"
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
) -> list[str]:
    """The argv of ``python -m engine train`` for these arguments (see :func:`launch_train`)."""
    cmd = [sys.executable, "-m", "engine", "train", "--preset", preset, "--run-dir", str(run_dir)]
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
    run.write_status(state="queued", pid=None, error=None)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = train_command(run.path.resolve(), preset, overrides, resume, config_file)
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
    if (run.status() or {}).get("state") == "queued":
        run.write_status(pid=proc.pid)
    return proc


def is_alive(pid: int | None) -> bool:
    """True if a process with id ``pid`` exists on this host and is not a zombie.

    ``None`` or a non-positive pid gives ``False``. A process owned by another user counts as
    alive.
    """
    if pid is None or int(pid) <= 0:
        return False
    pid = int(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:  # an exited child not yet reaped by its parent is still signalable: a zombie
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rpartition(")")[2].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def stop_run(run_dir: str | Path) -> bool:
    """Ask the engine process of ``run_dir`` to stop: SIGTERM to the pid in ``status.json``.

    The engine then finishes its current step, saves ``checkpoints/last.pt`` and sets the state
    to ``"stopped"``. Only a queued/running run whose process is alive on this host is signalled.

    Returns
    -------
    bool
        True if a signal was sent; False if there is no status, no pid, the run is not active,
        or the process is gone (a dead pid is not an error).
    """
    status = RunDir(run_dir).status() or {}
    pid = status.get("pid")
    if status.get("state") not in ACTIVE_STATES or not is_alive(pid):
        return False
    if status.get("host") not in (None, socket.gethostname()):
        return False
    try:
        os.kill(int(pid), signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    return True
