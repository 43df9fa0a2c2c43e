"""Ordered, memory-bounded parallel map over worker processes (CPU-bound generators).

:func:`ordered_map` is what the CMB skies (:mod:`engine.physics.cmb_io`) and the strong-lens
images (:mod:`engine.physics.strong_lens_image`) run their per-sample work with: results come
back in input order, at most ``ahead`` × ``workers`` tasks are in flight (so a long run never
holds more than a few results in memory), and the pool is shut down with its pending work
cancelled when the consumer stops early or a task fails.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def ordered_map(
    fn: Callable[..., Any],
    items: Iterable[tuple],
    workers: int,
    context=None,
    ahead: int = 2,
) -> Iterator[Any]:
    """``fn(*item)`` for every ``item`` of ``items``, yielded in input order.

    Parameters
    ----------
    fn : callable
        A module-level function (picklable), run in the workers.
    items : iterable of tuple
        Positional arguments of each call (picklable).
    workers : int
        Worker processes; ≤ 1 runs every call in this process, lazily.
    context : multiprocessing context, optional
        Start method of the workers (``ProcessPoolExecutor``'s ``mp_context``).
    ahead : int
        Tasks submitted ahead per worker (≥ 1).

    Raises
    ------
    Exception
        Whatever a call raises, when its result is reached (later results are cancelled).
    """
    if workers <= 1:
        for item in items:
            yield fn(*item)
        return
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        todo, pending = iter(items), deque()
        for item in todo:
            pending.append(pool.submit(fn, *item))
            if len(pending) >= max(1, ahead) * workers:
                break
        while pending:
            result = pending.popleft().result()
            for item in todo:  # one new task for each result taken
                pending.append(pool.submit(fn, *item))
                break
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
