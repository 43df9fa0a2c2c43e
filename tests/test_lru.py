"""engine.lru.LRUCache: order of eviction, byte budget, errors, threads."""

from __future__ import annotations

import doctest
import threading

import pytest

import engine.lru
from engine.lru import LRUCache


def test_doctest():
    assert doctest.testmod(engine.lru).failed == 0


def test_least_recently_used_goes_first():
    cache = LRUCache(3)
    for k in "abc":
        cache.put(k, k.upper())
    assert cache.get("a") == "A"  # a is now the most recent
    cache.put("d", "D")
    assert "b" not in cache and [k in cache for k in "acd"] == [True] * 3
    assert len(cache) == 3 and cache.get("b", 0) == 0


def test_byte_budget_keeps_at_least_the_newest():
    cache = LRUCache(10, max_bytes=100, nbytes=len)
    cache.put("a", b"x" * 60)
    cache.put("b", b"x" * 30)
    assert len(cache) == 2
    cache.put("c", b"x" * 20)  # 110 bytes: a goes
    assert "a" not in cache and len(cache) == 2
    cache.put("big", b"x" * 500)  # larger than the budget alone: kept, all others dropped
    assert len(cache) == 1 and "big" in cache


def test_get_or_make_makes_once_and_keeps_nothing_on_error():
    cache, calls = LRUCache(2), []
    assert cache.get_or_make("k", lambda: calls.append(1) or 7) == 7
    assert cache.get_or_make("k", lambda: calls.append(1) or 8) == 7
    assert calls == [1]

    def fail():
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        cache.get_or_make("bad", fail)
    assert "bad" not in cache


def test_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="size must be >= 1"):
        LRUCache(0)
    with pytest.raises(ValueError, match="needs nbytes"):
        LRUCache(2, max_bytes=10)


def test_threads_never_exceed_the_size():
    """Four threads hammering one cache: never more than its size (an assertion inside a thread
    would not fail the test, so the sizes seen are collected and checked here)."""
    cache, seen = LRUCache(8), []

    def work(t):
        for i in range(2000):
            cache.get_or_make((t, i % 20), lambda i=i: i)
            seen.append(len(cache))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(seen) == 8000 and max(seen) <= 8
    assert len(cache) == 8
