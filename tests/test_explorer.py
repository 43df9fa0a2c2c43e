"""Param-level tests of the explorer: field-lab physics and state, training controller logic.

No browser and no real training: runs are launched for real only to check the launch path
(and terminated at once); curves are fed from hand-written metrics.jsonl files.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from functools import partial

import holoviews as hv
import numpy as np
import panel as pn
import pytest
from bokeh.document import Document

import explorer.latest
from engine.kinds import FIELD_KINDS
from engine.params import ConfigError, FieldParams
from engine.physics import slabs
from engine.physics.lensing import KappaParams
from engine.physics.limber import ARCMIN
from engine.physics.lpt import LPTParams
from engine.physics.stats import peak_counts
from engine.runs import RunDir, is_alive, process_start
from engine.train.settings import PRESETS
from explorer import fieldlab, fieldlab_kinds, training
from explorer.fieldlab import FieldLab, compute
from explorer.fieldlab_views import parameter_rows, parameter_table
from explorer.latest import LatestOnly
from explorer.training import TrainingController


@pytest.fixture(autouse=True)
def _own_live_runners(monkeypatch):
    """Each test sees only its own live runners (explorer.latest.LatestOnly._live): a runner
    left busy by another test must not hold up this one's idle-priority views."""
    monkeypatch.setattr(LatestOnly, "_live", weakref.WeakSet())


@pytest.fixture(scope="module")
def base() -> fieldlab.FieldLabResult:
    return compute(FieldParams(size=128, omega_m=0.3, sigma8=0.8, seed=3))


def test_compute_returns_consistent_arrays(base):
    n = 128
    assert base.map.shape == (n, n) and base.style.coord_unit == "Mpc/h"
    assert base.x[0] == pytest.approx(1.0) and base.x[-1] == pytest.approx(255.0)  # L/N = 2 Mpc/h
    assert base.k.shape == base.pk.shape == base.pk_expected.shape == base.pk_sigma.shape
    kf, kn = 2 * np.pi / 256.0, np.pi * n / 256.0
    assert base.k.min() == pytest.approx(kf, rel=0.3) and base.k.max() <= kn * 1.01
    assert np.all(np.isfinite(base.pk)) and np.all(base.pk_expected > 0)
    # the measured spectrum scatters around the binned theory: mean ratio over all bins ~ 1
    assert np.mean(base.pk / base.pk_expected) == pytest.approx(1.0, abs=0.1)
    # the PDF is a normalised density around 0 for a Gaussian field
    width = base.pdf_x[1] - base.pdf_x[0]
    assert np.sum(base.pdf_density) * width == pytest.approx(1.0, rel=1e-6)
    assert abs(np.sum(base.pdf_x * base.pdf_density) * width) < 0.1 * base.sigma


def test_same_seed_gives_same_map(base):
    again = compute(FieldParams(size=128, omega_m=0.3, sigma8=0.8, seed=3))
    np.testing.assert_array_equal(again.map, base.map)
    other = compute(FieldParams(size=128, omega_m=0.3, sigma8=0.8, seed=4))
    assert not np.array_equal(other.map, base.map)


def test_sigma8_scales_amplitude_not_shape(base):
    """P ∝ σ8²: with the same seed the measured P(k) scales by (σ8'/σ8)² in every bin."""
    high = compute(FieldParams(size=128, omega_m=0.3, sigma8=1.2, seed=3))
    ratio = high.pk / base.pk
    np.testing.assert_allclose(ratio, (1.2 / 0.8) ** 2, rtol=1e-3)
    np.testing.assert_allclose(high.pk_expected / base.pk_expected, (1.2 / 0.8) ** 2, rtol=1e-6)


def test_omega_m_changes_shape(base):
    """Ω_m moves the turnover (k_eq ∝ Ω_m h): the ratio of spectra depends on k."""
    high = compute(FieldParams(size=128, omega_m=0.6, sigma8=0.8, seed=3))
    ratio = high.pk / base.pk
    lo, hi = ratio[:5].mean(), ratio[-20:].mean()
    # at fixed σ8 a larger Ω_m moves power from large to small scales
    assert hi / lo > 1.5
    # and the measured shape change follows the theory for the same modes
    np.testing.assert_allclose(ratio, high.pk_expected / base.pk_expected, rtol=0.15)
    assert high.markers[0][0] == pytest.approx(2 * base.markers[0][0])  # k_eq


def test_smoothing_and_noise_follow_theory(base):
    smooth = compute(FieldParams(size=128, smoothing=4.0, seed=3))
    damp = smooth.pk / base.pk
    np.testing.assert_allclose(damp[:10], np.exp(-((smooth.k[:10] * 4.0) ** 2)), rtol=0.05)
    noisy = compute(FieldParams(size=128, noise=2.0, seed=3))
    assert noisy.noise_theory[0] == pytest.approx(4.0 * 2.0**2)  # σ_n² (L/N)², L/N = 2 Mpc/h
    assert np.median(noisy.pk[-20:] / noisy.pk_expected[-20:]) == pytest.approx(1.0, abs=0.15)


def test_parameter_table_shows_values_with_units(base):
    settings = FieldParams(size=128, omega_m=0.3, sigma8=0.8, seed=3, smoothing=1.5)
    result = compute(settings)
    rows = parameter_rows(result)
    pairs = {(name, value) for name, value, _ in rows}
    assert {("Ω<sub>m</sub>", "0.300"), ("σ<sub>8</sub>", "0.800")} <= pairs
    assert ("1.50", "Mpc/h") in {(value, unit) for _, value, unit in rows}
    text = parameter_table(result)
    for unit in ("Mpc/h", "h/Mpc", "pixels", "δ per pixel"):
        assert unit in text
    assert text.startswith("<table") and "<th>setting</th><th>value</th><th>unit</th>" in text
    assert text.count("<tr>") == len(rows) + 1
    assert parameter_table(result, error="size <3> too big").startswith(
        "<p><b>⚠ size &lt;3&gt; too big</b>"
    )


def test_fieldlab_recomputes_on_parameter_change():
    lab = FieldLab(FieldParams(size=64))
    first = lab.result
    lab.settings.omega_m = 0.5
    assert lab.result is not first and lab.result.settings["omega_m"] == 0.5
    assert not lab.large
    lab.settings.size = 512
    assert lab.large and lab.result.map.shape == (512, 512)
    assert "0.500" in parameter_table(lab.result)


def test_views_are_rebuilt_only_when_the_style_changes():
    lab = FieldLab(FieldParams(size=64))
    builds = []
    lab.param.watch(lambda e: builds.append(e.name), ["style", "large"])
    lab.settings.omega_m = 0.45
    lab.settings.seed = 3
    assert builds == []  # same kind, extent and ranges: results go through the pipe
    lab.settings.box_size = 128.0
    assert builds == ["style"]


def test_fieldlab_keeps_last_result_on_error(monkeypatch):
    lab = FieldLab(FieldParams(size=64))
    good = lab.result

    def fail(settings):
        raise ConfigError("kind='lognormal' fails here")

    monkeypatch.setattr(fieldlab, "compute", fail)
    lab.settings.seed = 5
    assert lab.result is good and "fails here" in lab.error


def test_widgets_are_generated_from_fieldparams():
    lab = FieldLab(FieldParams(size=64))
    w = lab.widgets()
    assert set(w) == {"kind"} | {c.name for c in fieldlab_kinds.KIND_VIEWS["grf"].controls}
    assert (w["omega_m"].start, w["omega_m"].end) == FieldParams.param.omega_m.bounds
    assert (w["sigma8"].start, w["sigma8"].end) == FieldParams.param.sigma8.bounds
    assert (w["smoothing"].start, w["smoothing"].end) == FieldParams.param.smoothing.softbounds
    assert w["omega_m"].value == FieldParams.param.omega_m.default
    assert list(w["size"].options) == list(fieldlab_kinds.SIZES)
    assert list(w["kind"].options.values()) == list(FIELD_KINDS)
    w["sigma8"].value = 1.1  # widget → state → result
    assert lab.settings.sigma8 == 1.1 and lab.result.settings["sigma8"] == 1.1


def test_widgets_of_other_kinds_come_from_their_param_classes():
    lab = FieldLab(FieldParams(size=64))
    lab.kind = "2lpt"
    w = lab.widgets()
    assert isinstance(lab.settings, LPTParams)
    assert (w["redshift"].start, w["redshift"].end) == LPTParams.param.redshift.bounds
    assert list(w["lpt_order"].options.values()) == [1, 2]
    # a slider over the soft bounds declared in the engine (hard bounds are far wider)
    assert isinstance(w["box_size"], pn.widgets.FloatSlider)
    assert (w["box_size"].start, w["box_size"].end) == LPTParams.param.box_size.softbounds
    lab.kind = "kappa"
    w = lab.widgets()
    assert (w["fov"].start, w["fov"].end) == KappaParams.param.fov.bounds
    assert (w["sigma_e"].start, w["sigma_e"].end) == KappaParams.param.sigma_e.bounds
    assert list(w["distribution"].options) == KappaParams.param.distribution.objects


def test_kind_switch_carries_cosmology_and_keeps_each_kinds_settings():
    lab = FieldLab(FieldParams(size=64))
    lab.settings.omega_m = 0.4
    lab.settings.smoothing = 2.0  # Mpc/h: must not leak into κ's arcmin smoothing
    lab.kind = "kappa"
    assert lab.result.settings["kind"] == "kappa" and lab.settings.omega_m == 0.4
    assert lab.settings.smoothing == KappaParams.param.smoothing.default
    assert lab.result.style.k == "ell" and lab.result.style.coord_unit == "arcmin"
    lab.kind = "lognormal"  # grf and lognormal share one FieldParams
    assert lab.settings.kind == "lognormal" and lab.settings.smoothing == 2.0
    assert lab.result.settings["kind"] == "lognormal"


def test_lpt_compute_at_32():
    """2LPT slab at 32³: δ > −1, positive skewness, CIC-deconvolved P(k) near the D²-scaled theory."""
    s = LPTParams(size=32, box_size=256.0, thickness=64.0, seed=1)
    r = compute(s)
    assert r.map.shape == (32, 32) and r.style.coord_unit == "Mpc/h" and r.style.k_unit == "h/Mpc"
    assert r.map.min() > -1 and r.skewness > 0
    assert r.x[-1] == pytest.approx(256.0 - 4.0)  # cell centres, L/N = 8 Mpc/h
    # without noise the expected band is the projected linear theory of the same modes
    np.testing.assert_allclose(
        r.pk_expected, slabs.binned_theory(s, 0.3, 0.8, deconvolved=True).power, rtol=1e-6
    )
    low = r.k < np.pi * 32 / 256.0 / 2  # a single map: consistent within cosmic variance
    assert np.mean(((r.pk[low] - r.pk_expected[low]) / r.pk_sigma[low]) ** 2) < 4
    assert [t for _, t in r.markers] == ["k_eq", "k_N/4"]
    # growth: at z = 1 the same seed gives a map scaled by about D(1) ≈ 0.6
    high_z = compute(LPTParams(size=32, box_size=256.0, thickness=64.0, seed=1, redshift=1.0))
    growth = float(dict((n, v) for n, v, _ in high_z.derived)["growth D(z)/D(0)"])
    assert 0.55 < growth < 0.66
    assert high_z.sigma / r.sigma == pytest.approx(growth, rel=0.15)
    assert high_z.skewness < r.skewness
    assert ("order", "2LPT") in {(name, value) for name, value, _ in parameter_rows(r)}


@pytest.mark.parametrize("axis", ["z", "x"])
def test_particle_view_matches_the_slab_map(axis):
    """Particles counted in the map's pixels follow the slab's δ map (same volume, orientation)."""
    s = LPTParams(size=32, box_size=128.0, thickness=32.0, seed=2, axis=axis)
    r = compute(s)
    xy = fieldlab.slab_particles(r.settings)
    assert xy.shape[1] == 2 and 0 <= xy.min() and xy.max() < 128.0
    # about (Δ/L) N³ particles in the slab (mass conservation, up to the slab-edge flux)
    assert len(xy) == pytest.approx(32**3 * 32.0 / 128.0, rel=0.1)
    counts, _, _ = np.histogram2d(xy[:, 1], xy[:, 0], bins=32, range=[[0, 128.0], [0, 128.0]])
    assert np.corrcoef(counts.ravel(), r.map.ravel())[0, 1] > 0.8
    lab = FieldLab(s)
    assert isinstance(lab.particle_view(lab.result, True), pn.pane.HoloViews)
    assert not isinstance(lab.particle_view(lab.result, False), pn.pane.HoloViews)


def test_kappa_compute_matches_theory_without_noise():
    s = KappaParams(size=128, fov=5.0, sigma_e=0.0, smoothing=2.0, seed=2)
    r = compute(s)
    assert r.map.shape == (128, 128) and r.style.coord_unit == "arcmin"
    assert r.x[-1] == pytest.approx(300.0 - 300.0 / 256)  # pixel centres in arcmin
    assert r.style.k_label == "ℓ" and r.style.p_label == "ℓ(ℓ+1)C_ℓ/2π"
    assert r.k[0] == pytest.approx(2 * np.pi / np.radians(5.0), rel=0.3)  # ℓ_f ≈ 72
    ok = np.isfinite(r.pk) & (r.k < 3000)
    assert np.mean(r.pk[ok] / r.pk_expected[ok]) == pytest.approx(1.0, abs=0.1)
    assert np.all(np.isnan(r.noise_theory))  # σ_e = 0: no noise curve
    # peaks: counts decrease with the threshold and match engine.physics.stats on the map
    assert np.all(np.diff(r.peak_counts) <= 0)
    m = r.map
    np.testing.assert_array_equal(r.peak_counts, peak_counts(m, m.mean() + r.peak_nu * r.sigma))
    noisy = compute(KappaParams(size=128, fov=5.0, sigma_e=0.3, n_gal=5.0, smoothing=0.0))
    level = 0.3**2 / (5.0 / ARCMIN**2)  # σ_e²/n_gal in sr
    ell = noisy.k_theory[-1]
    assert noisy.noise_theory[-1] == pytest.approx(level * ell * (ell + 1) / (2 * np.pi), rel=1e-6)


class FakeDoc(Document):
    """A Bokeh document whose next-tick callbacks wait until :meth:`tick`, its timeout
    callbacks until :meth:`time_passes`."""

    def __init__(self):
        super().__init__()
        self.ticks, self.timeouts = [], []

    def add_next_tick_callback(self, callback):
        self.ticks.append(callback)

    def add_timeout_callback(self, callback, ms):
        self.timeouts.append(callback)

    def time_passes(self):
        todo, self.timeouts = self.timeouts, []
        for callback in todo:
            callback()

    def tick(self):
        todo, self.ticks = self.ticks, []
        for callback in todo:
            callback()


class NowLoop:
    """Stands in for the event loop: a callback handed over by a worker runs at once."""

    def add_callback(self, callback, *args):
        callback(*args)


class FakePool:
    """Stands in for the worker threads: submitted jobs wait until :meth:`run_one`."""

    def __init__(self):
        self.jobs = []

    def submit(self, fn, *args):
        self.jobs.append((fn, args))

    def run_one(self):
        fn, args = self.jobs.pop(0)
        fn(*args)


def test_latest_only_never_queues_stale_updates():
    doc, pool, delivered = FakeDoc(), FakePool(), []
    runner = LatestOnly(
        lambda out, err, latest: delivered.append((out, latest)), doc, pool, NowLoop()
    )
    runner.request(lambda: 0)
    assert len(pool.jobs) == 1 and runner.busy  # a turn in the pool, at once
    pool.run_one()  # 0 is computed; its result is not shown yet
    for v in (1, 2, 3):  # requests while 0 runs: each replaces the pending one
        runner.request(lambda v=v: v)
    assert delivered == [] and len(doc.ticks) == 1 and not pool.jobs
    doc.tick()  # 0 is shown on the event loop (not the latest) and the next turn is asked
    assert delivered == [(0, False)] and len(pool.jobs) == 1
    pool.run_one()
    doc.tick()
    assert delivered == [(0, False), (3, True)] and not runner.busy  # 1 and 2 never ran


def test_latest_only_takes_the_latest_job_when_its_turn_comes():
    """While the pool serves other sessions, requests of this one wait as one pending job."""
    doc, pool, delivered = FakeDoc(), FakePool(), []
    runner = LatestOnly(lambda out, err, latest: delivered.append(out), doc, pool, NowLoop())
    for v in range(5):
        runner.request(lambda v=v: v)
    assert len(pool.jobs) == 1  # one turn asked
    pool.run_one()  # the turn comes: it computes the latest request
    doc.tick()
    assert delivered == [4] and not runner.busy and not pool.jobs


def test_latest_only_sends_the_next_frame_once_the_last_is_painted():
    """Flow control: a frame the browser will acknowledge holds the next job until it does
    (or until the acknowledgement's timeout); requests meanwhile collapse to the latest."""
    doc, pool, delivered = FakeDoc(), FakePool(), []

    def deliver(out, err, latest):
        delivered.append(out)
        runner.expect_ack(out)  # frame number = the value, for the test

    runner = LatestOnly(deliver, doc, pool, NowLoop())
    runner.request(lambda: 1)
    pool.run_one()
    doc.tick()
    assert delivered == [1] and len(doc.timeouts) == 1  # the acknowledgement's timeout
    for v in (2, 3, 4):  # a drag while frame 1 is painted: nothing starts
        runner.request(lambda v=v: v)
    assert not pool.jobs and runner.busy
    runner.acknowledge(0)  # an older frame's acknowledgement changes nothing
    assert not pool.jobs
    runner.acknowledge(1)  # painted: the latest request starts
    assert len(pool.jobs) == 1
    pool.run_one()
    doc.tick()
    assert delivered == [1, 4]
    runner.request(lambda: 5)  # frame 4 is never acknowledged (a hidden tab) ...
    assert not pool.jobs
    doc.time_passes()  # ... its timeout lets the next frame go (frame 1's is a no-op)
    assert len(pool.jobs) == 1
    pool.run_one()
    doc.tick()
    assert delivered == [1, 4, 5]


def test_latest_only_hands_errors_to_deliver():
    doc, pool, got = FakeDoc(), FakePool(), []
    runner = LatestOnly(lambda out, err, latest: got.append((out, err)), doc, pool, NowLoop())
    runner.request(lambda: 1 / 0)
    pool.run_one()
    doc.tick()
    assert got[0][0] is None and isinstance(got[0][1], ZeroDivisionError)


def test_latest_only_settles_before_slow_jobs(monkeypatch):
    doc, pool, delivered = FakeDoc(), FakePool(), []
    runner = LatestOnly(lambda out, err, latest: delivered.append(out), doc, pool, NowLoop())
    for v in range(3):  # a burst of slow requests: nothing starts before the settle time
        runner.request(lambda v=v: v, settle=0.06)
    assert not pool.jobs and runner.busy
    doc.time_passes()  # only the timer of the last request starts a job: the last value
    assert len(pool.jobs) == 1
    pool.run_one()
    doc.tick()
    assert delivered == [2] and not runner.busy
    monkeypatch.setattr(explorer.latest, "MAX_SETTLE", 0.0)  # waited long enough: starts at once
    runner.request(lambda: 3, settle=0.06)
    assert len(pool.jobs) == 1


def test_idle_priority_waits_for_every_sessions_live_updates(monkeypatch):
    """An idle-priority job (the field lab's PDF and peak counts) starts only once no live
    runner of any session computes or waits for its frame to be painted, or IDLE_WAIT s after
    it was first requested; a live runner of a closed session stops counting."""
    doc, pool, delivered = FakeDoc(), FakePool(), []
    live = LatestOnly(lambda out, err, latest: delivered.append(out), doc, pool, NowLoop())
    idle = LatestOnly(lambda out, err, latest: delivered.append(out), doc, pool, NowLoop(), True)
    live.request(lambda: 1)
    idle.request(lambda: "pdf")
    assert len(pool.jobs) == 1 and idle.busy  # only the live job: the idle one waits
    pool.run_one()
    doc.tick()  # frame 1 (another session's map and P(k)) is sent ...
    live.expect_ack(1)
    doc.timeouts = [t for t in doc.timeouts if not isinstance(t, partial)]  # no ack timeout
    doc.time_passes()  # ... the idle job polls while it is being painted: still waiting
    assert delivered == [1] and not pool.jobs and len(doc.timeouts) == 1
    live.acknowledge(1)  # painted: the next poll starts the idle job
    doc.time_passes()
    assert len(pool.jobs) == 1
    pool.run_one()
    doc.tick()
    assert delivered == [1, "pdf"] and not idle.busy
    live.request(lambda: 2)  # live work never ends (a drag in another tab) ...
    idle.request(lambda: "pdf2")
    monkeypatch.setattr(explorer.latest, "IDLE_WAIT", 0.0)  # ... the idle job waited enough
    doc.time_passes()
    assert len(pool.jobs) == 2  # the live job and the idle one
    assert LatestOnly.live_work()
    pool.jobs.clear()  # the session closes: nothing refers to its runners any more
    del live
    gc.collect()  # a closed session's runner holds up no one
    assert not LatestOnly.live_work()


def test_slow_updates_say_updating_at_once_and_end_on_the_last_value(monkeypatch):
    """2LPT in a served session: a burst of slider steps says "updating…" before any
    computation, computes only its last value, and the page ends on it."""
    doc, pool = FakeDoc(), FakePool()
    lab = FieldLab(LPTParams(size=32, seed=1), doc=doc)  # the first map is made at once
    lab._updates.pool, lab._updates.loop = pool, NowLoop()
    lab._settled.pool, lab._settled.loop = pool, NowLoop()
    first = lab.result
    monkeypatch.setattr(fieldlab, "BUSY_AFTER", 0.0)  # every update counts as slow here
    monkeypatch.setattr(fieldlab, "SETTLE_AFTER", 0.0)
    for om in (0.31, 0.32, 0.33, 0.34):
        lab.settings.omega_m = om
    assert lab.busy and "updating…" in lab._status.object and lab.result is first
    assert not pool.jobs  # waiting for the burst to settle
    doc.time_passes()  # the first map's settled views, and the burst's turn
    turns = [fn for fn, _ in pool.jobs if getattr(fn, "__self__", None) is lab._updates]
    assert len(turns) == 1  # one turn for the burst: 0.31-0.33 are never computed
    lab.settings.omega_m = 0.35  # before the turn starts: the turn computes 0.35
    assert len(pool.jobs) == 2
    pool.run_one()  # the first map's settled views (shown only if no newer result came)
    pool.run_one()
    doc.tick()
    assert lab.result.settings["omega_m"] == 0.35 and not lab.busy and lab._status.object == ""
    assert not pool.jobs and not doc.ticks


def test_fast_updates_do_not_flash_updating():
    doc, pool = FakeDoc(), FakePool()
    lab = FieldLab(FieldParams(size=64), doc=doc)
    lab._updates.pool, lab._updates.loop = pool, NowLoop()
    lab._settled.pool, lab._settled.loop = pool, NowLoop()
    lab._seconds[("grf", 64)] = 0.01  # the last update of this kind and size was fast
    lab.settings.omega_m = 0.35
    assert not lab.busy and lab._status.object == ""
    pool.run_one()
    doc.tick()
    assert lab.result.settings["omega_m"] == 0.35


def test_readout_follows_when_updates_pause():
    """Served, the readout table is replaced once the updates pause, with the latest values."""
    doc, pool = FakeDoc(), FakePool()
    lab = FieldLab(FieldParams(size=64), doc=doc)
    lab._updates.pool, lab._updates.loop = pool, NowLoop()
    lab._settled.pool, lab._settled.loop = pool, NowLoop()
    lab._seconds[("grf", 64)] = 0.01  # fast (a cold first map may not be): no settling
    first = lab._readout_pane.object
    assert "0.3" in first
    for om in (0.35, 0.36):
        lab.settings.omega_m = om
        pool.run_one()
        doc.tick()
    assert lab.result.settings["omega_m"] == 0.36
    assert lab._readout_pane.object == first  # still the old table: the updates go on
    doc.time_passes()  # the updates paused: the table's numbers are computed in a worker ...
    assert lab._readout_pane.object == first and len(pool.jobs) == 1
    pool.run_one()
    doc.tick()  # ... and shown on the event loop
    assert "0.36" in lab._readout_pane.object and "0.35" not in lab._readout_pane.object


def test_main_views_are_sent_before_the_pdf_and_peaks():
    """Served, the map and P(k) change with the update; the PDF and peak counts follow in a
    later message (and only for the frame still on screen)."""
    doc, pool = FakeDoc(), FakePool()
    lab = FieldLab(FieldParams(size=64), doc=doc)
    lab._updates.pool, lab._updates.loop = pool, NowLoop()
    lab._settled.pool, lab._settled.loop = pool, NowLoop()
    lab._seconds[("grf", 64)] = 0.01  # fast (a cold first map may not be): no settling
    lab.__panel__().get_root(Document())
    figures = lab._figures
    pdf_before = figures.sources["pdf"].data["top"]
    lab.settings.omega_m = 0.41
    pool.run_one()
    doc.tick()
    np.testing.assert_array_equal(figures.sources["measured"].data["P"], lab.result.pk)
    assert figures.sources["pdf"].data["top"] is pdf_before
    doc.time_passes()  # the settled views wait (idle priority) while the frame is painted ...
    assert not pool.jobs
    lab._updates.acknowledge(lab._frames_sent)  # ... the page says it painted it
    doc.time_passes()
    pool.run_one()  # the PDF and peak counts, computed in a worker
    doc.tick()
    np.testing.assert_array_equal(figures.sources["pdf"].data["top"], lab.result.pdf_density)


def test_views_update_in_place():
    """A new value replaces the figures' data; the figures (and so the zoom) stay."""
    lab = FieldLab(FieldParams(size=64))
    lab.__panel__().get_root(Document())
    figures = lab._figures
    measured = figures.sources["measured"]
    before = measured.data["P"]
    lab.settings.omega_m = 0.45
    assert lab._figures is figures and measured.data["P"] is not before
    np.testing.assert_array_equal(measured.data["P"], lab.result.pk)
    values = figures.sources["hover"].data["value"][0]
    assert values.dtype == np.float32 and np.array_equal(values, lab.result.map)
    rgba = figures.sources["map"].data["image"][0]  # coloured on the server
    assert rgba.dtype == np.uint32 and rgba.shape == values.shape
    lab.settings.box_size = 128.0  # another extent: new figures
    assert lab._figures is not figures


def test_colour_range_is_nice_and_unchanged_sources_are_not_resent():
    """The map's colour range is a round number that a small step keeps; columns equal to those
    on screen are not sent again."""
    from explorer.fieldlab_frames import frame_data, nice_ceil
    from explorer.fieldlab_views import FieldFigures

    assert [nice_ceil(v) for v in (0.0123, 0.3, 1.0, 1.01, 2.9, 6.99, 7.01)] == pytest.approx(
        [0.015, 0.3, 1.0, 1.5, 3.0, 7.0, 10.0]
    )
    assert nice_ceil(0.0) == nice_ceil(float("nan")) == 1.0
    a = compute(FieldParams(size=64, sigma8=0.80, seed=2))
    b = compute(FieldParams(size=64, sigma8=0.81, seed=2))
    fa, fb = frame_data(a), frame_data(b)
    assert fa["clim"][1] >= np.percentile(np.abs(a.map), 99.5)
    assert fa["clim"] == fb["clim"]  # a 1 % step of σ8 keeps the colour scale
    figures = FieldFigures(a.style)
    figures.show(fa)
    sent = {name: source.data for name, source in figures.sources.items()}
    figures.show(frame_data(a))  # the same numbers again (new arrays)
    assert all(figures.sources[name].data is sent[name] for name in sent)
    figures.show(fb)  # changed columns are sent (in place: only those columns)
    np.testing.assert_array_equal(figures.sources["measured"].data["P"], b.pk)
    np.testing.assert_array_equal(figures.sources["hover"].data["value"][0], b.map)


def test_pdf_and_peak_axes_hold_the_data_and_stay_put_for_a_small_step():
    """The PDF and peak-count axis ranges contain the data and are round numbers that a 1 %
    step of σ8 keeps (a new range re-lays out the axis and repaints the figure)."""
    from explorer.fieldlab_frames import nice_span, secondary_data

    assert nice_span(0.03, 0.97) == pytest.approx((0.0, 1.05))  # step nice_ceil(0.1175) = 0.15
    assert nice_span(-2.34, 7.1) == pytest.approx((-3.0, 7.5))  # step nice_ceil(1.18) = 1.5
    assert nice_span(1.0, 1.0) == (0.5, 1.5) and nice_span(float("nan"), 1.0) == (0.0, 1.0)
    a, b = (compute(FieldParams(size=128, sigma8=s8, seed=2)) for s8 in (0.80, 0.81))
    ra, rb = secondary_data(a)["ranges"], secondary_data(b)["ranges"]
    assert ra == rb
    (x0, x1), (y0, y1) = ra["pdf"]
    half = 0.5 * (a.pdf_x[1] - a.pdf_x[0])
    assert x0 <= a.pdf_x[0] - half and a.pdf_x[-1] + half <= x1 and y0 == 0.0
    assert a.pdf_density.max() <= y1 <= 1.6 * a.pdf_density.max()
    assert max(a.peak_counts) <= ra["peaks"][1][1]


def test_live_updates_leave_the_hover_values_to_the_settled_one():
    """A live (PRIMARY) update sends the map's colours but not its float values for the hover;
    the settled (SECONDARY) update brings them, in a source no glyph draws."""
    from explorer.fieldlab_frames import PRIMARY, SECONDARY, frame_data
    from explorer.fieldlab_views import FieldFigures

    a = compute(FieldParams(size=64, sigma8=0.80, seed=2))
    b = compute(FieldParams(size=64, sigma8=0.90, seed=2))
    figures = FieldFigures(a.style)
    figures.show(frame_data(a))
    fb = frame_data(b)
    figures.show(fb, PRIMARY)
    assert np.array_equal(figures.sources["map"].data["image"][0], fb["map"]["image"][0])
    assert np.array_equal(figures.sources["hover"].data["value"][0], a.map)  # old, for now
    shown = figures._shown["map"]
    figures.show(fb, SECONDARY)
    assert np.array_equal(figures.sources["hover"].data["value"][0], b.map)
    assert figures._shown["map"] is shown  # the settled update sends nothing to the drawn map


def test_colour_map_matches_bokeh_linear_mapper():
    """Server-side colouring bins values as Bokeh's LinearColorMapper does (palette of 256)."""
    from explorer.fieldlab_frames import MAP_PALETTE, MAP_RGBA, colour_map

    n = len(MAP_PALETTE)
    low, high = -2.0, 2.0
    values = np.array([[-5.0, -2.0, -1e-9, 0.0], [1.999, 2.0, 7.0, np.nan]])
    # Bokeh: index floor((v - low) / (high - low) * n), clamped to [0, n-1]; NaN transparent
    expect = [[0, 0, n // 2 - 1, n // 2], [n - 1, n - 1, n - 1, -1]]
    got = colour_map(values, low, high)
    for (r, c), i in np.ndenumerate(np.array(expect)):
        assert got[r, c] == (0 if i < 0 else MAP_RGBA[i])
    # packed as little-endian RGBA bytes of the palette's hex colours, opaque
    first = MAP_PALETTE[0]
    assert got[0, 0].tobytes() == bytes.fromhex(first[1:7]) + b"\xff"


def test_pdf_and_peak_axes_follow_the_data():
    lab = FieldLab(FieldParams(size=64))
    lab.__panel__().get_root(Document())
    f, r = lab._figures, lab.result
    assert f.pdf.x_range.start <= r.pdf_x.min() and f.pdf.x_range.end >= r.pdf_x.max()
    assert f.pdf.y_range.end >= r.pdf_density.max() > 0
    assert f.peaks.y_range.end >= r.peak_counts.max()


def test_views_render_without_server():
    from bokeh.document import Document

    from explorer.app import create_app

    app = create_app()
    root = app.get_root(Document())
    assert root is not None


def test_open_patch_in_field_lab():
    from explorer.sky import SkyPage

    lab = FieldLab(FieldParams(size=64))
    page = SkyPage(on_open=lambda patch, source: lab.show_map(patch, source=source))
    page.patch_settings.size = 64
    page.cut(120.0, 45.0)
    page.open_in_field_lab()
    assert lab.kind == "patch" and "patch" in lab.param["kind"].objects.values()
    r = lab.result
    assert r.map.shape == (64, 64) and r.style.value_unit == "mK" and r.style.k == "ell"
    assert np.isfinite(r.pk).sum() > 5 and np.all(np.isnan(r.pk_theory))  # real map: no theory
    assert ("centre lon", "120.00") in {(name, value) for name, value, _ in parameter_rows(r)}


# ---------------------------------------------------------------------------------------------
# Sky page
# ---------------------------------------------------------------------------------------------


def test_mollweide_round_trip():
    from explorer.sky import X_MAX, mollweide_forward, mollweide_inverse

    lon = np.array([0.0, 30.0, 150.0, 210.0, 359.0, 80.0])
    lat = np.array([0.0, 45.0, -60.0, 10.0, 89.0, -89.5])
    x, y = mollweide_forward(lon, lat)
    lon2, lat2, inside = mollweide_inverse(x, y)
    assert inside.all()
    np.testing.assert_allclose(lat2, lat, atol=1e-7)
    np.testing.assert_allclose(lon2, lon, atol=1e-6)
    assert x[1] < 0  # longitude grows to the left, as healpy.mollview
    assert not mollweide_inverse(0.99 * X_MAX, 0.9)[2]  # outside the ellipse


def test_sky_page_shows_wmap_and_tap_cuts_patch():
    import healpy as hp

    from explorer import sky

    page = sky.SkyPage()
    r = page.result
    assert page.source == "wmap" and r.nside == 32 and r.unit == "μK"
    assert 0.5 < r.fsky < 0.8  # the analysis mask removes the Galactic plane
    assert r.ell[0] == 2 and np.isfinite(r.dl).all()
    # healpy's reference spectrum of the same masked map (made with lmax 64 instead of 95: the
    # iterated map2alm differs by ~1 %)
    ref = np.isfinite(r.dl_theory)
    assert ref.sum() == 63
    np.testing.assert_allclose(r.dl[ref], r.dl_theory[ref], rtol=0.03)
    image, bounds = sky.sample_mollweide(r.values, shape=(200, 100))
    assert image.shape == (100, 200) and np.isnan(image[0, 0]) and np.isfinite(image).any()
    x, y = sky.mollweide_forward(60.0, 50.0)  # a click at lon 60°, lat 50°
    patch = page.tap(float(x), float(y))
    size = page.patch_settings.size
    assert patch.shape == (size, size) and patch.attrs["units"] == "mK"
    assert page.center == pytest.approx((60.0, 50.0))
    assert float(patch.x[-1]) == pytest.approx(page.patch_settings.fov * 60 * (1 - 0.5 / size))
    pix = hp.ang2pix(32, 60.0, 50.0, lonlat=True)
    assert abs(float(patch.values[size // 2, size // 2]) - r.sky.values[pix]) < 0.2  # mK
    assert page.tap(0.99 * sky.X_MAX, 1.3) is None and "inside" in page.message
    page.patch_settings.size = 64  # a new size recuts at the same centre
    assert page.patch.shape == (64, 64)


def test_sky_page_kappa_source_against_theory():
    from explorer import sky

    page = sky.SkyPage(source="kappa")
    page.sky_settings.nside = 64
    r = page.result
    assert r.source == "kappa" and r.nside == 64 and r.fsky == 1.0
    band = (r.ell >= 10) & (r.ell <= 100)
    assert np.mean(r.dl[band] / r.dl_theory[band]) == pytest.approx(1.0, abs=0.1)
    page.sky_settings.footprint = "des_like"
    assert page.result.fsky == pytest.approx(0.107, abs=0.01)
    patch = page.cut(30.0, -45.0)  # inside the DES-like box
    assert patch.attrs["kind"] == "kappa" and patch.shape == (128, 128)
    theory = fieldlab.ExternalMap.from_patch(patch).theory_settings()  # the sky's C_ℓ settings
    assert (theory.omega_m, theory.fov, theory.size) == (0.3, page.patch_settings.fov, 128)


# ---------------------------------------------------------------------------------------------
# Training controller
# ---------------------------------------------------------------------------------------------


def _write_run(root, run_id, rows, state="running", pid=None, preset="smoke"):
    run = RunDir(root / run_id).create()
    run.write_config({"command": "train", "preset": preset, "settings": {"size": 32}})
    pid_start = process_start(pid)  # as the engine records it (Stop checks it)
    run.write_status(state=state, pid=pid, pid_start=pid_start, step=0, epoch=0, total_steps=60)
    with open(run.metrics_path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return run


def _row(step, split, name, value, epoch=0):
    return {"step": step, "epoch": epoch, "split": split, "name": name, "value": value, "time": 0.0}


def test_runs_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv(training.RUNS_ENV, str(tmp_path))
    assert TrainingController().runs_root == str(tmp_path)
    monkeypatch.delenv(training.RUNS_ENV)
    assert TrainingController().runs_root == "runs"


def test_overrides_follow_widgets_and_preset(tmp_path):
    ctl = TrainingController(runs_root=tmp_path, preset="smoke")
    assert ctl.overrides() == {}
    w = ctl.widgets()
    assert set(training.TRAIN_CONTROLS) <= set(w)
    assert w["epochs"].value == PRESETS["smoke"]["epochs"]
    w["epochs"].value = 1
    w["kind"].value = "lognormal"
    w["lr"].value = 5e-3
    assert ctl.overrides() == {"epochs": 1, "kind": "lognormal", "lr": 5e-3}
    ctl.preset = "default"  # a new preset resets the settings to its values
    assert ctl.overrides() == {} and w["epochs"].value == ctl.settings.epochs


def test_train_launches_engine_process(tmp_path):
    ctl = TrainingController(runs_root=tmp_path, preset="smoke")
    ctl.settings.epochs = 1
    run = ctl.train()
    proc = training._CHILDREN[-1]
    try:
        assert run.path.parent == tmp_path and ctl.run_id == run.id
        assert run.status()["state"] in ("queued", "running")
        assert "--set" in proc.args and "epochs=1" in proc.args
        assert os.getsid(proc.pid) == proc.pid  # own session: survives the server
        assert run.id in ctl.param.run_id.objects
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_poll_streams_metrics_into_buffers(tmp_path):
    rows = [
        _row(5, "train", "loss", 1.0),
        _row(5, "train", "lr", 1e-3),
        _row(5, "train", "grad_norm", 0.5),  # not plotted
        _row(5, "train", "maps_per_s", 812.0),  # shown in the status line
        _row(10, "train", "loss", 0.8),
        _row(10, "train", "lr", 2e-3),
    ]
    old = _write_run(tmp_path, "20250101-000000-cli-bbbb", [], state="completed")
    os.utime(old.config_path, (time.time() - 60, time.time() - 60))
    run = _write_run(tmp_path, "20260101-000000-smoke-aaaa", rows)
    ctl = TrainingController(runs_root=tmp_path)
    assert len(ctl.param.run_id.objects) == 2  # CLI runs are listed too
    assert ctl.run_id == run.id  # the newest run opens by itself; its curves replay

    def series(plot, label):
        data = ctl.buffers[plot].data
        return data[data["series"] == label]

    assert list(series("loss", "train")["step"]) == [5, 10]
    assert list(series("loss", "train")["value"]) == [1.0, 0.8]
    assert list(series("lr", "learning rate")["value"]) == [1e-3, 2e-3]
    assert len(series("loss", "validation")) == 0
    assert ctl.status["state"] == "running"
    assert "812 maps/s" in training.status_markdown(ctl.run, ctl.status, ctl.maps_per_s)
    plot = hv.renderer("bokeh").get_plot(ctl.curve_view("loss"))

    with open(run.metrics_path, "a") as f:
        f.write(json.dumps(_row(20, "val", "loss", 0.5)) + "\n")
        f.write(json.dumps(_row(20, "val", "rmse_omega_m", None)) + "\n")
        f.write('{"step": 25, "epoch": 1, "split": "tr')  # torn last line: kept for later
    assert ctl.poll() == 2
    assert list(series("loss", "validation")["value"]) == [0.5]
    assert np.isnan(series("rmse", "Ωₘ (validation)")["value"].iloc[0])
    with open(run.metrics_path, "a") as f:
        f.write('ain", "name": "loss", "value": 0.7, "time": 0.0}\n')
    assert ctl.poll() == 1 and list(series("loss", "train")["step"]) == [5, 10, 25]

    # the plot's axes span every series of the buffer, after incremental updates too
    x_range = plot.handles["x_range"]
    assert (x_range.start, x_range.end) == (5, 25)

    run.write_status(state="completed", step=60)
    ctl.poll()
    assert ctl.status["state"] == "completed" and not ctl.can_stop
    assert "completed" in training.status_markdown(ctl.run, ctl.status)

    ctl.run_id = "20250101-000000-cli-bbbb"  # another run: curves start over
    assert all(len(b.data) == 0 for b in ctl.buffers.values())


def test_stop_signals_the_run_process(tmp_path):
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        run = _write_run(tmp_path, "20260101-000000-smoke-cccc", [], pid=sleeper.pid)
        ctl = TrainingController(runs_root=tmp_path)
        ctl.run_id = run.id
        assert ctl.can_stop and not ctl.can_resume
        assert ctl.stop()
        sleeper.wait(timeout=10)
        assert sleeper.returncode == -signal.SIGTERM
        deadline = time.time() + 5
        while is_alive(sleeper.pid) and time.time() < deadline:
            time.sleep(0.05)
        run.write_status(state="stopped")
        ctl.poll()
        assert not ctl.can_stop and not ctl.can_resume  # no checkpoint yet
        assert not ctl.resume() and "no checkpoint" in ctl.message
        (run.checkpoint_dir / "last.pt").write_bytes(b"")
        ctl.poll()
        assert ctl.can_resume
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_periodic_callback_is_removed_with_the_session(monkeypatch, tmp_path):
    import panel as pn

    import explorer.polling

    made = []

    class FakeCallback:
        stopped = started = False

        def __init__(self, callback, period, background, log):
            self.callback, self.period, self.background = callback, period, background
            made.append(self)

        def start(self):
            self.started = True

        def stop(self):
            self.stopped = True

    destroyed = []
    monkeypatch.setattr(explorer.polling, "PeriodicCallback", FakeCallback)
    monkeypatch.setattr(pn.state, "on_session_destroyed", destroyed.append)
    ctl = TrainingController(runs_root=tmp_path)
    ctl.start(shown=False)
    (cb,) = made
    # a background callback (no busy-state churn), slow while its tab is hidden
    assert cb.started and cb.background and cb.period == ctl.hidden_period
    polls = []
    monkeypatch.setattr(ctl, "poll", lambda: polls.append(1))
    ctl.shown(True)  # the tab is shown: polled at once, then every period
    assert polls == [1] and cb.period == ctl.period
    ctl.shown(False)
    assert cb.period == ctl.hidden_period and polls == [1]
    assert len(destroyed) == 1
    destroyed[0](None)
    assert cb.stopped
