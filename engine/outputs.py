"""Outputs that never destroy data: one check before any work, and atomic writes.

Every verb that writes a file or directory (``fields``, ``dataset``, ``sky``, ``predict``,
``evaluate``, ``compare``, ``python -m engine.data.samples``) follows the same rules:

* :func:`check_output` runs before any work and refuses, in one line (:class:`ConfigError`, exit
  code 2): an existing output without ``--overwrite`` (an empty directory is not refused: it holds
  nothing to lose), a parent directory that does not exist or is not writable, and a request whose
  estimated size exceeds the free disk space (:func:`shutil.disk_usage`) or, for work held in
  memory, the available memory (:func:`available_memory`); the message gives the size.
* :func:`add_overwrite_argument` is the one ``--overwrite`` flag of every such verb.
* :func:`staged` writes a file or directory to a temporary directory next to the target and moves
  it into place with ``os.replace`` only when complete; with ``--overwrite`` the old output is
  replaced only then. An error or Ctrl-C leaves the old output as it was and no temporary files.
  :func:`staged_dir` does the same for the few entries of a directory that a writer owns (the
  evaluation's report, predictions and figures), also inside a directory that holds other things
  (a run directory).

Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from engine.params import ConfigError

#: The flag that allows replacing an existing output.
OVERWRITE_FLAG = "--overwrite"


def add_overwrite_argument(parser: argparse.ArgumentParser, flag: str = "--out") -> None:
    """Add the ``--overwrite`` flag (``args.overwrite``, default False) to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The parser of a verb that writes ``flag``.
    flag : str
        The output flag(s) named in the help, e.g. ``"--out"``.
    """
    parser.add_argument(
        OVERWRITE_FLAG,
        action="store_true",
        help=f"Replace an existing {flag} (only once the new output is complete); without it an "
        "existing output is refused before any work.",
    )


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``format_bytes(3 * 2**30) == "3.0 GiB"``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def available_memory() -> int | None:
    """Memory available to a new allocation in bytes (``MemAvailable`` of ``/proc/meminfo``,
    else free physical pages), or None when the system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def is_occupied(path: str | Path) -> bool:
    """Whether ``path`` holds something a write would destroy: a file, a link or a non-empty
    directory (an empty directory holds nothing)."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        return True
    if path.is_dir():
        with os.scandir(path) as it:
            return any(True for _ in it)
    return False


def exists_message(path: str | Path, flag: str = "--out") -> str:
    """The one-line refusal of an existing output ``path`` of option ``flag``."""
    return f"{flag} {str(path)!r} already exists: add {OVERWRITE_FLAG} to replace it"


def check_output(
    path: str | Path,
    *,
    overwrite: bool = False,
    flag: str = "--out",
    disk_bytes: float = 0,
    memory_bytes: float = 0,
) -> Path:
    """Check an output path before any work is done; returns it as a Path.

    Parameters
    ----------
    path : str or Path
        The file or directory that will be written.
    overwrite : bool
        Whether an existing ``path`` may be replaced (``--overwrite``).
    flag : str
        Option named in the messages (``--out``, ``--predictions-dir``).
    disk_bytes : float
        Estimated size of the output; refused when above the free space of the parent directory.
    memory_bytes : float
        Estimated memory of the work held in memory at once; refused when above
        :func:`available_memory` (not checked when that is unknown).

    Raises
    ------
    ConfigError
        One line: ``path`` exists (and is not an empty directory) without ``overwrite``, its
        parent does not exist or is not writable, or the request needs more disk or memory than
        there is (with both sizes).
    """
    path = Path(path)
    parent = path.parent
    if is_occupied(path) and not overwrite:
        raise ConfigError(exists_message(path, flag))
    if not parent.is_dir():
        raise ConfigError(f"{flag} {str(path)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {str(path)!r}: directory {str(parent)!r} is not writable")
    free = shutil.disk_usage(parent).free
    if disk_bytes > free:
        raise ConfigError(
            f"{flag} {str(path)!r}: the request needs about {format_bytes(disk_bytes)} on disk, "
            f"but only {format_bytes(free)} are free in {str(parent)!r}"
        )
    memory = available_memory() if memory_bytes else None
    if memory is not None and memory_bytes > memory:
        raise ConfigError(
            f"{flag} {str(path)!r}: the request needs about {format_bytes(memory_bytes)} of "
            f"memory, but only {format_bytes(memory)} are available"
        )
    return path


def _temporary_dir(parent: Path, name: str) -> Path:
    """A new hidden directory ``parent/.name.XXXX`` with the permissions of a plain mkdir."""
    from engine.runs import default_mode

    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))
    os.chmod(tmp, default_mode(0o777))  # not mkdtemp's 0o700
    return tmp


def _move_into_place(new: Path, path: Path, trash: Path) -> None:
    """``os.replace`` ``new`` to ``path``; an existing directory (or anything a directory
    replaces) is first moved to ``trash``, and moved back if the replacement fails."""
    if not (path.exists() or path.is_symlink()):
        os.replace(new, path)
        return
    if not (new.is_dir() or (path.is_dir() and not path.is_symlink())):
        os.replace(new, path)  # a file replaces a file atomically
        return
    os.replace(path, trash)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(trash, path)
        raise


@contextlib.contextmanager
def staged(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Write a file or directory atomically: yields the temporary path to write it to.

    The temporary path lies in a new hidden directory next to ``path`` (same file system). When
    the ``with`` block completes, the new output is moved to ``path`` (an older one is removed
    only then); on an error or interrupt the temporary directory is removed and ``path`` is left
    as it was.

    Parameters
    ----------
    path : str or Path
        The target; its parent directory must exist.
    overwrite : bool
        Whether an existing ``path`` may be replaced; checked again when the new output is moved
        into place (something may have appeared meanwhile).

    Raises
    ------
    ConfigError
        ``path`` exists without ``overwrite`` (nothing is moved; the new output is dropped).
    """
    path = Path(path)
    tmp = _temporary_dir(path.parent, path.name)
    try:
        target = tmp / path.name
        yield target
        if not overwrite and is_occupied(path):
            raise ConfigError(exists_message(path))
        _move_into_place(target, path, tmp / ".old")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _owns_only(directory: Path, entries: Sequence[str]) -> bool:
    """Whether ``directory`` is missing or holds nothing but ``entries``."""
    if not directory.is_dir() or directory.is_symlink():
        return not directory.exists()
    with os.scandir(directory) as it:
        return all(e.name in entries for e in it)


@contextlib.contextmanager
def staged_dir(path: str | Path, entries: Sequence[str]) -> Iterator[Path]:
    """Write the ``entries`` of directory ``path`` atomically: yields a temporary directory.

    When ``path`` is missing or holds nothing but ``entries``, the temporary directory lies next
    to it and replaces it as a whole when the ``with`` block completes (as :func:`staged`).
    Otherwise (a directory of other things, e.g. a run directory) it lies inside ``path``, and
    each entry written is moved into place: the last entry (the index, e.g. ``report.json``) is
    removed first and moved last, so an interrupted move never leaves new files beside an old
    index. On an error or interrupt in the ``with`` block nothing in ``path`` changes.

    Parameters
    ----------
    path : str or Path
        The output directory; its parent must exist.
    entries : sequence of str
        The names this writer owns in ``path``, the index last.
    """
    path = Path(path)
    if _owns_only(path, entries):
        with staged(path) as target:
            target.mkdir()
            yield target
        return
    tmp = _temporary_dir(path, "staged")
    try:
        yield tmp
        index = path / entries[-1]
        if index.exists() and (tmp / entries[-1]).exists():
            os.replace(index, tmp / ".old-index")
        for name in entries:
            if (tmp / name).exists():
                _move_into_place(tmp / name, path / name, tmp / f".old-{name}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
