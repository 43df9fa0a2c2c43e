"""Trained networks of the explorer's pages, loaded once per server process.

:func:`load_network` keeps the last few (network, task) pairs of
:func:`engine.evaluation.predict.load_task_network` on the CPU, keyed by the checkpoint file, its
modification time and the task, so a page's second update (or another session's) reuses them
and a retrained run is read again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

#: (network, task) pairs kept per server process.
CACHE_SIZE = 4

_lock = threading.Lock()
_cache: OrderedDict[tuple, tuple] = OrderedDict()


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
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    model, predictor, _ = load_task_network(ckpt, "cpu", task)
    with _lock:
        _cache[key] = (model, predictor)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return model, predictor
