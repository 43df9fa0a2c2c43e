"""Param-level tests of the CMB page (no browser): B modes from Q/U, one update stage by stage
against CAMB and the engine's delensing metrics, and the page with and without a delensing
network (a tiny one trained here with ``python -m engine train --preset delens_smoke`` on the
toy skies of ``tests/test_delensing_task.py``).

Skies are nside 32; the page tests cut the unlensed band limit (``lmax_unlensed``) to keep a
sky under a second — only the physics test uses the engine's automatic one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import healpy as hp
import numpy as np
import pytest
from bokeh.document import Document
from bokeh.models import ColumnDataSource, GlyphRenderer, Image, LinearColorMapper
from test_delensing_task import toy_skies

from engine.evaluation.delensing import residual_fraction, second_observation, tensor_template
from explorer import cmb_compute as cc
from explorer.cmb import NO_NETWORK, CMBPage
from explorer.cmb_views import (
    CMBFigures,
    MapFrame,
    panel_images,
    panel_title,
    readout_rows,
    spectra_columns,
)

REPO = Path(__file__).resolve().parent.parent
NSIDE = 32
#: Unlensed band limit of the page tests (fast skies; the physics test uses the automatic one).
FAST_LMAX_UNLENSED = 300


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A models folder holding ``delens_tiny``: delens_smoke trained on 10 toy nside-32 skies."""
    root = tmp_path_factory.mktemp("cmb")
    skies = toy_skies(root / "toy.zarr", nside=NSIDE)
    run = root / "models" / "delens_tiny"
    cmd = [sys.executable, "-m", "engine", "train", "--preset", "delens_smoke",
           "--set", f"dataset={skies}", "--run-dir", str(run)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "models"


def _synth(nside: int, e_amp: float, b_amp: float, seed: int) -> tuple:
    """Q, U maps (µK) of E and B a_ℓm with C_ℓ ∝ amp² b_ℓ²/(ℓ + 10)² up to 3·nside − 1 (b_ℓ a
    Gaussian beam of two pixels, as a beamed sky), and the B a_ℓm."""
    lmax = 3 * nside - 1
    ell = np.arange(lmax + 1)
    beam = hp.gauss_beam(2 * hp.nside2resol(nside), lmax=lmax)
    cl = (beam / (ell + 10.0)) ** 2
    cl[:2] = 0
    rng = np.random.default_rng(seed)
    n = hp.Alm.getsize(lmax)

    def alm(amp: float) -> np.ndarray:  # Gaussian a_ℓm of C_ℓ = amp² cl (a_ℓ0 real)
        a = (rng.standard_normal(n) + 1j * rng.standard_normal(n)) / np.sqrt(2)
        a[: lmax + 1] = a[: lmax + 1].real * np.sqrt(2)
        return hp.almxfl(a, amp * np.sqrt(cl))

    e, b = alm(e_amp), alm(b_amp)
    q, u = hp.alm2map_spin([e, b], nside, 2, lmax)
    return q, u, b


def test_b_maps_of_pure_e_and_pure_b_skies():
    """B of an E-only sky is (nearly) zero; of a B-only sky its B field; a sky sharing the E of
    the reference (:class:`~explorer.cmb_compute.BModes`) gets its B without the E leakage."""
    lmax = 3 * NSIDE - 1
    q, u, _ = _synth(NSIDE, 100.0, 0.0, 1)  # E only, 100× the B below
    bq, bu, b = _synth(NSIDE, 0.0, 1.0, 2)  # B only
    b_true = hp.alm2map(b, NSIDE, lmax=lmax)
    leak = cc.b_map_of(q, u, NSIDE)
    assert leak.dtype == np.float32 and leak.shape == (12 * NSIDE**2,)
    # E→B leakage of 3 Jacobi iterations: < 0.3 % of E in amplitude, 1/5 of a plain analysis
    assert np.std(leak) < 0.3 * np.std(b_true)
    assert np.std(leak) < 0.3 * np.std(cc.b_map_of(q, u, NSIDE, iterations=0))
    np.testing.assert_allclose(cc.b_map_of(bq, bu, NSIDE), b_true, atol=0.1 * np.std(b_true))
    got = cc.b_map(cc.BModes(q, u, lmax)(q + bq, u + bu), NSIDE)
    plain = cc.b_map(cc.b_alm(q + bq, u + bu, lmax), NSIDE)
    assert np.std(got - b_true) < 0.3 * np.std(b_true)
    assert np.std(got - b_true) < 0.3 * np.std(plain - b_true)


@pytest.fixture(scope="module")
def physics(models):
    """The complete update of an engine sky (nside 32, automatic lmax_unlensed) delensed by the
    tiny network, its stages, and the settings."""
    info = cc.delenser_info(models / "delens_tiny")
    settings = cc.page_settings(NSIDE, r=0.05, noise=1.0, beam=30.0, seed=11)
    stages = list(cc.updates(settings, info))
    return settings, info, stages


def test_update_stage_by_stage_against_camb_and_the_engine(physics):
    settings, info, stages = physics
    assert [r.done[-1] for r in stages] == ["sky", "network", "network2", "template", "qe"]
    sky, net, net2, _, full = stages
    assert set(sky.maps) == {"lensed", "unlensed"} and "network" in net.maps
    assert "network" not in net.a_res and "network" in net2.a_res and full.complete
    assert set(full.maps) == {"lensed", "unlensed", "network", "template", "qe"}
    assert all(m.shape == (12 * NSIDE**2,) and m.dtype == np.float32 for m in full.maps.values())
    assert full.ell_range == (20, 95) and list(full.ell) == [29.5, 49.5, 69.5]
    # the observed lensed BB (cross of two noise realisations) is CAMB's lensed BB × b²
    spectra = cc.spectra_of(settings)
    bins = cc.ell_bins(20, cc.plot_lmax(NSIDE), 20)
    tensor = tensor_template(bins, 30.0, spectra)
    expected = full.bb["theory_lensing"] + 0.05 * tensor
    np.testing.assert_allclose(full.bb["lensed"], expected, rtol=0.25)
    np.testing.assert_allclose(full.bb["primordial"], 0.05 * tensor)
    np.testing.assert_allclose(full.bb["unlensed"], 0.05 * tensor, rtol=0.35)
    # A_res: 1 without delensing; the engine's residual_fraction on the same maps
    sky_maps = cc.simulated_sky(settings)
    attrs = {"noise": 1.0, "beam": 30.0, "nside": NSIDE}
    obs2 = second_observation({**sky_maps, "attrs": attrs}, 11)
    ref = residual_fraction((sky_maps["Q"], sky_maps["U"]), obs2, sky_maps, ell_range=(20, 95))
    assert full.a_res["none"] == pytest.approx(ref["mean"], rel=5e-3)
    assert full.a_res["none"] == pytest.approx(1.0, abs=0.05)
    assert 0.0 < full.a_res["qe_mv"] <= 1.0 and full.a_res["template"] < 1.02
    # the measured QE: nothing to reconstruct from at 30′ and ℓ ≤ 95 (forecast ≈ 1)
    assert full.a_res["qe"] == pytest.approx(1.0, abs=0.05)
    for m in ("none", "network", "template", "qe"):
        fit = full.fits[m]
        assert fit["sigma_r"] > 0 and abs(fit["r_hat"] - 0.05) < 5 * fit["sigma_r"] + 0.01
    # the toy network was trained at r = 0, noise 2, beam 30: the page says where it differs
    assert any("r = 0.05" in n for n in full.notes) and any("noise" in n for n in full.notes)
    assert full.seconds["total"] == pytest.approx(sum(full.seconds[s] for s in full.done))
    # the same settings again: the cache holds the complete result
    assert cc.cached_result(cc.result_key(settings, info)) is full


def test_views_of_a_result(physics):
    _, _, (sky, _, _, _, full) = physics
    assert "waiting for the network" in panel_title(MapFrame(sky, "network"), "delensed")
    assert "network delens_tiny" in panel_title(MapFrame(full, "network"), "residual")
    assert "template" in panel_title(MapFrame(full, "template"), "delensed")
    rows = readout_rows(sky)
    assert rows[0][1] != "…" and rows[1][1] == "…" and rows[-1][0].startswith("QE")
    # own noise counted: exactly 1 without delensing (d - n - u = lensed - u); the template's
    # noise-driven error counts, so it is at least the cross-spectrum value
    assert rows[0][2] == "1.000" and full.a_res_own["none"] == pytest.approx(1.0, abs=1e-9)
    assert full.a_res_own["template"] >= full.a_res["template"] - 0.02
    columns = spectra_columns(full)
    assert all(len(c["ell"]) == 3 for k, c in columns.items() if k != "qe_it")
    assert len(columns["qe_it"]["ell"]) == 0  # no calibration at nside 32: no such stage
    assert len(spectra_columns(sky)["template"]["ell"]) == 0  # not there yet
    # the maps at screen resolution: nan outside the Mollweide ellipse, the residual d − u
    images = panel_images(MapFrame(full, "template"))
    lensed, resid = images["lensed"]["image"][0], images["residual"]["image"][0]
    assert lensed.shape == (220, 440) and np.isnan(lensed[0, 0]) and np.isfinite(lensed[110, 220])
    inside = np.isfinite(lensed)
    assert 0.7 < inside.mean() < 0.8  # π/4 of the frame
    delensed, unlensed = images["delensed"]["image"][0], images["unlensed"]["image"][0]
    np.testing.assert_allclose(resid[inside], (delensed - unlensed)[inside])
    # zoomed: the same sky at more screen pixels per HEALPix pixel
    figures = CMBFigures()
    figures.show(MapFrame(full))
    assert "r = 0.05" in figures.spectra.title.text and figures.mapper.high > 0
    figures.x_range.update(start=-0.5, end=0.5)
    figures.y_range.update(start=-0.25, end=0.25)
    figures.resample()
    zoomed = figures.sources["lensed"].data["image"][0]
    assert np.isfinite(zoomed).all() and figures.sources["lensed"].data["dw"] == [1.0]


def test_delensers_are_listed_shipped_first(models, tmp_path):
    (tmp_path / "delens512").symlink_to(models / "delens_tiny")
    (tmp_path / "other").mkdir()  # not a run
    found = cc.list_delensers(tmp_path, models)
    assert [d.name for d in found] == ["delens512", "delens_tiny"]
    info = found[1]
    assert info.nside == NSIDE and info.sky["noise"] == 2.0 and info.sky["beam"] == 30.0
    assert set(info.report["a_res"]) == {"none", "template", "qe", "network"}
    assert cc.delenser_info(tmp_path / "other") is None


def _fast(page: CMBPage) -> CMBPage:
    page.settings.lmax_unlensed = FAST_LMAX_UNLENSED
    page.visible = True
    return page


def _images(root) -> list:
    """The image renderers of a Bokeh root."""
    return [r for r in root.select({"type": GlyphRenderer}) if isinstance(r.glyph, Image)]


def test_page_without_delenser_shows_template_and_forecast(tmp_path):
    page = CMBPage(runs_root=tmp_path / "r", examples_root=tmp_path / "m", visible=False,
                   nside_without_delenser=NSIDE)  # fmt: skip
    assert page.result is None and page.delensers is None
    _fast(page)
    root = page.__panel__().get_root(Document())
    r = page.result
    assert r.complete and r.done == ("sky", "template", "qe") and page.delenser == ""
    assert page.settings.nside == NSIDE and cc.TRAIN_COMMAND in page._hint.object
    assert "python -m engine train --preset delens512 --run-dir assets/models/delens512" in (
        page._hint.object
    )
    assert "updated in" in page._status.object and "Expected wait" in page._wait.object
    text = page._readout.object
    assert "template (true φ)" in text and "QE forecast" in text and "network" not in text
    assert "QE (φ̂ from the maps)" in text
    # four Mollweide panels sharing one colour range, and the spectra
    images = _images(root)
    assert len(images) == 4
    ranges = {(m.low, m.high) for m in root.select({"type": LinearColorMapper})}
    assert len(ranges) == 1
    assert any("D_BB" in s.data for s in root.select({"type": ColumnDataSource}))
    # bad input: one line, the last good sky stays
    page.settings.lmax_unlensed = 1
    assert "lmax_unlensed=1 is out of range" in page.error and "\n" not in page.error
    assert "⚠" in page._status.object and "⚠" in page._readout.object and page.result is r
    page.settings.lmax_unlensed = FAST_LMAX_UNLENSED
    assert page.error == "" and "from the cache" in page._status.object


def test_page_with_shipped_delenser(models, tmp_path):
    page = _fast(CMBPage(runs_root=tmp_path / "runs", examples_root=models, visible=False))
    page.__panel__().get_root(Document())
    assert page.delenser == str(models / "delens_tiny")
    assert page.param.delenser.names[NO_NETWORK] == ""
    # the sky follows the network: its nside and its training skies' r, noise and beam
    s = page.settings
    assert (s.nside, s.r, s.noise, s.beam) == (NSIDE, 0.0, 2.0, 30.0)
    r = page.result
    assert r.complete and r.delenser == "delens_tiny" and not r.notes
    assert "network" in r.a_res and "network" in r.fits and page._hint.object == ""
    assert "network delens_tiny" in page._readout.object
    assert "report.json" in page._readout.object  # the run's evaluated A_res
    before = r.maps["lensed"].copy()
    page.settings.seed = 5
    assert page.result.settings["seed"] == 5 and not np.array_equal(page.result.maps["lensed"],
                                                                    before)  # fmt: skip
    page.settings.noise = 1.0  # the network was trained at 2 µK-arcmin: said on the page
    assert any("noise = 1 µK-arcmin" in n for n in page.result.notes)
    assert "trained at 2" in page._readout.object
    page.settings.param.update(noise=2.0, seed=0)
    assert page.result is r and "from the cache" in page._status.object
    page.method = "template"
    assert page.figures.frame.method == "template"
    assert "template" in page.figures.panels["delensed"].title.text
    # without the network: the lighter default sky, the template and the hint
    page.nside_without_delenser = NSIDE
    page.delenser = ""
    assert page.result.delenser == "" and cc.TRAIN_COMMAND in page._hint.object


def test_iterated_qe_stage_where_a_calibration_exists(monkeypatch):
    """Where a calibration of the page's nside, noise and beam exists, the update ends with the
    iterated QE; with weights a = 1, b = 0 it is the plain QE's template, so its A_res equals the
    QE's. No calibration (the shipped ones are nside 512): no stage, no row."""
    from explorer.cmb_views import wait_text

    settings = cc.page_settings(NSIDE, r=0.0, noise=2.0, beam=30.0, seed=5,
                                lmax_unlensed=FAST_LMAX_UNLENSED)  # fmt: skip
    assert cc.iterated_calibration(NSIDE, 2.0, 30.0) is None
    plain = cc.compute(settings)
    assert "qe_it" not in plain.stages and "iterated" not in str(readout_rows(plain))
    cal = {"nside": NSIDE, "noise": 2.0, "beam": 30.0, "lmax": 3 * NSIDE - 1, "edges": [0, 96],
           "a": [1.0], "b": [0.0]}  # fmt: skip
    monkeypatch.setattr(cc, "iterated_calibration", lambda *a: cal)
    full = cc.compute(cc.page_settings(NSIDE, r=0.0, noise=2.0, beam=30.0, seed=5,
                                       lmax_unlensed=FAST_LMAX_UNLENSED))  # fmt: skip
    assert full.stages[-1] == "qe_it" and full.complete and "qe_it" in full.maps
    assert full.a_res["qe_it"] == pytest.approx(full.a_res["qe"], rel=1e-6)
    assert full.a_res_own["qe_it"] == pytest.approx(full.a_res_own["qe"], rel=1e-6)
    assert any(row[0].startswith("iterated QE") for row in readout_rows(full))
    assert "iterated QE" in panel_title(MapFrame(full, "qe_it"), "delensed")
    assert "every number at" in wait_text(NSIDE, False, True)
    figures = CMBFigures()
    legend = {i.label.value: i for i in figures.spectra.legend[0].items}
    figures.show(MapFrame(plain))
    assert not legend["delensed: iterated QE (calibrated)"].visible
    figures.show(MapFrame(full, "qe_it"))
    assert legend["delensed: iterated QE (calibrated)"].visible
    assert len(figures.curve_sources["qe_it"].data["ell"]) == 3
