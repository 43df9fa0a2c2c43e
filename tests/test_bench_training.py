"""benchmarks.training: one network's quick measurement on the CPU gives positive rates in the
task's units, and a missing package skips the network with a row saying which."""

from __future__ import annotations

import sys

import pytest
import torch

from benchmarks import training


def test_bench_network_quick_cpu():
    """grf64 (the regression preset's hybrid_std, batch 128 of 64² maps) on the CPU, quick:
    a maps/s row and an ms/step row, positive, no peer; the synthetic batch has the preset's
    shape and the step a finite loss."""
    rows = training.bench_network("grf64", torch.device("cpu"), quick=True)
    assert [r["unit"] for r in rows] == ["maps/s", "ms"]
    assert all(r["value"] > 0 for r in rows)
    assert not any("peer" in r for r in rows)
    meta = rows[0]["meta"]
    assert meta["task"] == "regression" and meta["batch"] == 128
    assert meta["input"] == [128, 1, 64, 64]
    assert meta["autocast"] == "off"
    assert torch.isfinite(torch.tensor(meta["loss"]))
    assert rows[0]["value"] * rows[1]["value"] / 1e3 == pytest.approx(128)  # maps/s · s/step


def test_missing_package_skips_the_network(monkeypatch):
    """A task module that cannot import a package gives one row with value None and the
    package named, not an exception."""
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers → ImportError
    rows = training.bench_network("diffusion32", torch.device("cpu"), quick=True)
    assert len(rows) == 1
    assert rows[0]["value"] is None
    assert "diffusers" in rows[0]["skipped"]
