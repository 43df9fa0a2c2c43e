"""Trained networks of the explorer's pages, loaded once per server process.

:func:`load_network` keeps the last few (network, task) pairs of
:func:`engine.evaluation.predict.load_task_network` on the CPU, keyed by the checkpoint file, its
modification time and the task, so a page's second update (or another session's) reuses them
and a retrained run is read again.
"""

from __future__ import annotations

from pathlib import Path

from engine.lru import LRUCache

#: (network, task) pairs kept per server process.
CACHE_SIZE = 4

_cache: LRUCache[tuple] = LRUCache(CACHE_SIZE)


def load_network(path: str | Path, task: str) -> tuple:
    """(network in eval mode, task rebuilt for inference) of the run or ``.pt`` file ``path``
    of task ``task`` (e.g. ``"classification"``, ``"delensing"``), on the CPU, cached.

    Raises
    ------
    ConfigError
        Missing or unusable checkpoint, or one of another task (one line).
    """
    from engine.evaluation.predict import checkpoint_path, load_task_network

    ckpt = checkpoint_path(path)
    key = (str(ckpt.resolve()), ckpt.stat().st_mtime_ns, task)
    return _cache.get_or_make(key, lambda: load_task_network(ckpt, "cpu", task)[:2])
