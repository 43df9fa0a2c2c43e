"""A thread-safe least-recently-used cache: the one place the engine and the explorer keep
their per-process caches (loaded networks, simulated skies and maps, theory tables,
calibrations, lens models' critical curves).

>>> cache = LRUCache(2)
>>> cache.get_or_make("a", lambda: 1), cache.get_or_make("b", lambda: 2)
(1, 2)
>>> cache.get("a"), "b" in cache  # "a" used last: "b" goes first
(1, True)
>>> cache.put("c", 3); "b" in cache
3
False
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")
_MISSING = object()


class LRUCache(Generic[V]):
    """At most ``size`` values by key, the least recently used dropped first; thread-safe.

    Values are made outside the lock (:meth:`get_or_make`): two threads asking for the same
    missing key may both make it, and the later one is kept. That is the right trade for
    values that take seconds to make (a lock held meanwhile would serialise every other key).

    Parameters
    ----------
    size : int
        Most values kept, ≥ 1.
    max_bytes : int, optional
        Most bytes kept, as ``nbytes(value)`` counts them; the newest value is always kept,
        however large.
    nbytes : callable, optional
        ``nbytes(value) -> int``; required with ``max_bytes``.

    Raises
    ------
    ValueError
        ``size`` < 1, or ``max_bytes`` without ``nbytes``.
    """

    def __init__(
        self, size: int, max_bytes: int | None = None, nbytes: Callable[[V], int] | None = None
    ):
        if int(size) < 1:
            raise ValueError(f"LRUCache size must be >= 1, got {size}")
        if max_bytes is not None and nbytes is None:
            raise ValueError("LRUCache max_bytes needs nbytes, the size of a value in bytes")
        self.size, self.max_bytes, self.nbytes = int(size), max_bytes, nbytes
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, default=None):
        """The value of ``key`` (now the most recently used), or ``default``."""
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Hashable, value: V) -> V:
        """Keep ``value`` under ``key`` as the most recently used; drop the least recently used
        beyond ``size`` (and ``max_bytes``). Returns ``value``."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > 1 and (
                len(self._items) > self.size
                or (
                    self.max_bytes is not None
                    and sum(self.nbytes(v) for v in self._items.values()) > self.max_bytes
                )
            ):
                self._items.popitem(last=False)
        return value

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> V:
        """The value of ``key``, made by ``make()`` (outside the lock) and kept if missing.
        Whatever ``make`` raises propagates, and nothing is kept."""
        value = self.get(key, _MISSING)
        return self.put(key, make()) if value is _MISSING else value

    def clear(self) -> None:
        """Drop every value."""
        with self._lock:
            self._items.clear()

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
