"""Run-directory protocol: the contract between an engine process and its watchers.

A run lives in one directory (``runs/<run-id>/``) that any process may read while the engine
process writes it; nothing else is shared, so a run started on a cluster node shows up the same
way when its directory sits on a shared file system::

    config.json     {"command", "preset", "settings": {every setting}, "engine_version",
                     "device", "created"}                       (written once per start)
    status.json     {"state", "pid", "pid_start", "host", "step", "epoch", "total_steps",
                     "started", "updated", "error", ...}        (rewritten atomically)
    metrics.jsonl   {"step", "epoch", "split", "name", "value", "time"} per line (append-only)
    checkpoints/    last.pt, best.pt                            (written atomically)
    engine.log      stdout and stderr of a process started by ``engine.launch.launch_train``
    .lock           held (``fcntl.flock``) by the one engine process training the run; records
                    its host, pid and start time

``state`` is one of :data:`STATES`. A reader on the run's host sees ``"died"`` instead of
``"queued"``/``"running"`` when the recorded process is gone or is another process with the same
pid (``pid_start``, the process start time, differs): killed by ``kill -9``, out of memory, a
crashed node (:meth:`RunDir.status`). ``"died"`` is never written; a resume continues such a
run. Times (``started``, ``updated``, ``time``) are Unix times in
seconds (float). ``step`` counts optimiser updates done; ``epoch`` is the 0-based epoch that the
step belongs to. Non-finite metric values are written as ``null`` so every line is strict JSON.
A run resumed from a checkpoint older than its last metrics (after a crash; a stop saves the
current step) first cuts ``metrics.jsonl`` back to the checkpoint's step and drops a torn last
line (:meth:`RunDir.truncate_metrics`), so curves never zig-zag or glue two lines together.

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
import socket
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
#: The state readers show for an active run whose process is gone (never written).
DIED = "died"
#: Name of the lock file of the engine process training a run.
LOCK_FILE = ".lock"

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

    def raw_status(self) -> dict | None:
        """Contents of ``status.json`` as written, or ``None`` if missing, partial or unreadable."""
        return read_json(self.status_path)

    def status(self) -> dict | None:
        """``status.json`` as a reader should show it: ``state`` is ``"died"`` (and
        ``written_state`` the state on disk) when the run is queued/running on this host but its
        process is gone or is another process (:func:`same_process`); ``None`` if missing."""
        status = self.raw_status()
        if status is None or status.get("state") not in ACTIVE_STATES:
            return status
        if status.get("host") not in (None, socket.gethostname()) or status.get("pid") is None:
            return status
        if same_process(status.get("pid"), status.get("pid_start")):
            return status
        return {**status, "state": DIED, "written_state": status["state"]}

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
        status = self.raw_status() or {
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

        The process is only checked when the status was written on this host (pid and start
        time, :meth:`status`); a run on another host (shared file system) counts as active while
        its state says so.
        """
        return (self.status() or {}).get("state") in ACTIVE_STATES

    @contextlib.contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold the run's exclusive lock (``.lock``, ``fcntl.flock``) for a training process.

        Creates the directory if needed. The lock is released when the block ends or the
        process dies (the kernel drops it), so a killed run never blocks its resume; the file
        records the holder's host, pid and start time for the error message.

        Raises
        ------
        ConfigError
            Another process holds the lock (a second trainer on the same run directory, even
            one started in the same instant).
        """
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, default_mode(0o666))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_json(self.path / LOCK_FILE) or {}
            os.close(fd)
            raise ConfigError(
                f"run directory {str(self.path)!r} is in use by another engine process (pid "
                f"{holder.get('pid', '?')} on {holder.get('host', '?')}); wait for it to end or "
                "stop it first"
            ) from None
        try:
            info = {"host": socket.gethostname(), "pid": os.getpid()}
            info.update(pid_start=process_start(os.getpid()), time=time.time())
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            yield self
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def clean_temporary_files(self) -> list[Path]:
        """Remove temporary files that a killed atomic write left behind (``.NAME.*.tmp`` in the
        run directory and ``checkpoints/``); call while holding :meth:`lock`. Returns them."""
        removed = []
        for folder in (self.path, self.checkpoint_dir):
            for tmp in folder.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    removed.append(tmp)
        return removed

    def truncate_metrics(self, step: int) -> int:
        """Rewrite ``metrics.jsonl`` keeping the complete lines with ``step <= step`` (a resume
        from a checkpoint of that step): no steps logged twice, no torn last line. Atomic;
        returns the number of lines dropped (0: file left as it was)."""
        try:
            data = self.metrics_path.read_bytes()
        except OSError:
            return 0
        keep, dropped = [], 0
        for line in data.splitlines(keepends=True):
            try:
                obj = json.loads(line) if line.endswith(b"\n") else None
            except ValueError:
                obj = None
            if isinstance(obj, dict) and int(obj.get("step", 0)) <= step:
                keep.append(line)
            else:
                dropped += 1
        if dropped:
            with atomic_write(self.metrics_path, binary=True) as f:
                f.write(b"".join(keep))
        return dropped

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


def process_start(pid: int | None) -> int | None:
    """Start time of process ``pid`` on this host (clock ticks since boot, ``/proc/PID/stat``
    field 22): with the pid, an identity that a reused pid does not share. None where there is
    no ``/proc`` or no such process."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rpartition(")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def same_process(pid: int | None, start: int | None) -> bool:
    """True if process ``pid`` is alive and, when ``start`` is recorded, started at ``start``
    (:func:`process_start`): the process that wrote a status, not a later one with its pid."""
    if not is_alive(pid):
        return False
    if start is None:
        return True
    now = process_start(pid)
    return now is None or now == int(start)


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
