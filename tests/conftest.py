"""Shared pytest configuration."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _calibration_cache(tmp_path_factory, monkeypatch):
    """Calibrated P(k) likelihoods fitted by tests go to a temporary cache, not ~/.cache."""
    monkeypatch.setenv("ENGINE_CALIBRATIONS", str(tmp_path_factory.mktemp("calibrations")))


def pytest_addoption(parser):
    # Browser tests (tests/test_browser.py): `pytest tests/test_browser.py --screenshots` also
    # saves assets/screenshots/fieldlab.png and training.png (full page, 1400x900 viewport).
    parser.addoption(
        "--screenshots",
        action="store_true",
        default=False,
        help="browser tests save full-page screenshots to assets/screenshots/",
    )
