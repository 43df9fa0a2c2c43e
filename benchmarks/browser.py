"""End-to-end latency of the field lab in a real browser: ``python -m benchmarks.browser``.

Serves ``panel serve explorer`` and drives the Debian Chromium (/usr/bin/chromium, no browser
download) with Playwright. For each kind it times, in the page, the **key press** on the Ω_m
slider to the first painted frame that shows **both** the new map and the new P(k):

* the page's data sources are compared, in page JavaScript whenever the Bokeh document changes,
  with the map and spectrum computed here in advance for the same settings (same seed: same
  numbers), so a redraw is recognised only when it shows the pressed value, whatever the page's
  internals; the time is taken at the start of the second animation frame after the data
  arrived (the first one painted it). Nothing runs in the page between changes (checking on
  every frame, as the first version did, cost the five tabs CPU the pages then lacked);
* *step*: one press, then a pause; p50/p95 over all steps;
* *drag*: ten presses 35 ms apart (keyboard auto-repeat speed), timed from the last press to
  the frame that shows the last value (intermediate values may or may not be drawn);
* 1 session, and 5 sessions (browser contexts) pressing at the same time, each at its own σ8
  and every step a new Ω_m, so that no session or step reuses another's cached theory tables;
* *updating*: for the slow kinds, the time until the page says "updating…".

Prints a table and writes ``benchmarks/results/browser.json`` in the row format of
``latest.json`` (name, value, unit, peer, peer_value, ratio, target, meta). ``--peer DIR``
serves a second tree (e.g. the previous version of ``explorer/``, with ``engine`` and ``assets``
linked in) from its own server in the same run and reports it as the peer (ratio > 1: ours is
faster). ``--trace DIR`` records a Chromium performance trace of the 1-session steps of each
kind (``--trace-js`` adds V8's CPU profile: self time per JavaScript function);
``--profile-server DIR`` runs the server under cProfile (written when it stops).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "browser.json"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Chromium trace categories of ``--trace`` (the timeline; ``--trace-js`` adds V8's sampling CPU
#: profiler, self time per JavaScript function, which itself costs the page CPU).
TRACE_CATEGORIES = [
    "devtools.timeline",
    "disabled-by-default-devtools.timeline",
    "v8.execute",
    "blink",
    "cc",
    "gpu",
    "toplevel",
]
JS_PROFILER = "disabled-by-default-v8.cpu_profiler"
#: (kind, map size) benchmarked: 256² maps; 2LPT offers at most 128 particles (and pixels) a side;
#: PM at the field lab's default, 64³ particles.
CASES = (("grf", 256), ("lognormal", 256), ("kappa", 256), ("2lpt", 128), ("pm", 64))
#: Kind-selector label of each kind (explorer.fieldlab_kinds.KIND_VIEWS titles).
TITLES = {
    "grf": "GRF",
    "lognormal": "lognormal",
    "2lpt": "2LPT",
    "pm": "PM N-body",
    "kappa": "κ WL",
}
#: Size buttons of each kind (explorer.fieldlab_kinds SIZES, LPT_SIZES, KAPPA_SIZES).
SIZE_OPTIONS = {
    "grf": (64, 128, 256, 512),
    "lognormal": (64, 128, 256, 512),
    "2lpt": (32, 64, 128),
    "pm": (32, 64, 128),
    "kappa": (128, 256, 512),
}
#: Ω_m and σ8 of the page when it opens, of the first map of a session, slider step.
OPENING = (0.30, 0.80)
OMEGA_M0, SIGMA8_0, STEP = 0.20, 0.80, 0.01
#: Pixels of the map compared with the expected one.
N_PIXELS = 48
TARGETS = {"step1": "<= 150 ms", "step5": "<= 400 ms", "drag1": "<= 300 ms"}

# Page-side instrumentation: the keydown time, and a per-frame check of the drawn data. Only
# rendered views count (the document may still hold the models of replaced views).
JS_INSTALL = """() => {
  if (window.__fl) return;
  const f = window.__fl = {t0: null, want: null, hit: null, busy: null, renders: 0};
  document.addEventListener('keydown', () => { f.t0 = performance.now(); }, true);
  f.views = () => {
    const out = [], seen = new Set();
    const walk = (v) => {
      if (!v || seen.has(v)) return;
      seen.add(v);
      out.push(v);
      for (const c of v.child_views || []) walk(c);
      if (v.renderer_views) for (const c of v.renderer_views.values()) walk(c);
    };
    for (const v of Bokeh.index) walk(v);
    return out;
  };
  f.sources = () => {
    let pk = null, image = null, rgba = false;
    for (const v of f.views()) {
      const m = v.model;
      if (!m.glyph || !m.data_source) continue;
      const d = m.data_source.data, g = m.glyph.constructor.__name__;
      if (g === 'Scatter' && 'P' in d && !pk) pk = d.P;
      if (g === 'Image' && 'image' in d && !image) image = d.image[0];
      // coloured on the server: the colours drawn (the float values, for the hover, follow
      // later in a source of their own: explorer.fieldlab_frames.SECONDARY)
      if (g === 'ImageRGBA' && 'image' in d && !image) { image = d.image[0]; rgba = true; }
    }
    return {pk, image, rgba};
  };
  const close = (a, b, tol) => (Number.isNaN(b) ? (a === null || Number.isNaN(a))
                                : Math.abs(a - b) <= tol * Math.abs(b) + 1e-7);
  f.matches = (want) => {
    const {pk, image, rgba} = f.sources();
    if (!pk || !image || pk.length !== want.pk.length || image.length !== want.n) return false;
    for (let i = 0; i < pk.length; i++) if (!close(pk[i], want.pk[i], 1e-4)) return false;
    const ok = rgba ? (col) => want.px.every((p) => image[p[0]] === p[col + 2])
                    : (col) => want.px.every((p) => close(image[p[0]], p[col], 1e-3));
    return ok(1) || ok(2);
  };
  f.busyShown = () => f.views().some((v) => v.model.visible !== false
    && typeof v.model.text === 'string' && v.model.text.includes('updating…'));
  f.set = ([kind, key, value]) => {  // a widget set as a user would
    for (const v of f.views()) {
      const m = v.model, name = m.constructor.__name__;
      if (kind === 'slider' && name === 'Slider' && m.title === key) { m.value = value; return true; }
      if (kind === 'buttons' && name === 'RadioButtonGroup' && m.labels.join() === key.join()) {
        m.active = m.labels.indexOf(value); return true;
      }
    }
    return false;
  };
  // Checked when the document changes (after the whole server patch is applied: a microtask),
  // not on every frame: polling every frame in five tabs took CPU from the page measured.
  f.arm = (want, watchBusy) => {
    Object.assign(f, {want, hit: null, busy: null, renders: 0, last: f.sources().pk,
                      watchBusy, queued: false, done: false});
    f.check();
  };
  f.check = () => {
    f.queued = false;
    if (f.want === null || f.done) return;
    const {pk} = f.sources();
    if (pk !== f.last) { f.renders++; f.last = pk; }
    if (f.watchBusy && f.busy === null && f.t0 !== null && f.busyShown()) f.busy = performance.now();
    if (f.matches(f.want)) {  // shown from the next frame on: its start is the painted time
      f.done = true;
      requestAnimationFrame(() => requestAnimationFrame(() => {
        f.hit = performance.now();
        if (f.resolve) f.resolve(true);
      }));
    }
  };
  // Resolves once the armed page is shown (true) or after ``ms`` (false). Awaited by the
  // benchmark instead of Playwright's wait_for_function, which evaluates its predicate in every
  // animation frame: frames that the measured pages do not otherwise ask for.
  f.waitHit = (ms) => new Promise((resolve) => {
    if (f.hit !== null) { resolve(true); return; }
    const timer = setTimeout(() => { f.resolve = null; resolve(false); }, ms);
    f.resolve = (v) => { clearTimeout(timer); f.resolve = null; resolve(v); };
  });
  for (const doc of Bokeh.documents) doc.on_change(() => {
    if (!f.queued) { f.queued = true; queueMicrotask(f.check); }
  }, true);
}"""

# Sets a widget as a user would: a button group (by its labels) to the button labelled
# ``value`` (or a slider, by title, to a value); true once done.
JS_SET = "(args) => window.__fl.set(args)"


# ---------------------------------------------------------------------------------------------
# Expected pages (computed here, before any timing)
# ---------------------------------------------------------------------------------------------


def expected(kind: str, size: int, omega_m: float, sigma8: float) -> dict:
    """What the page must show for these settings: P(k) values and a few map pixels.

    Returns
    -------
    dict with ``pk`` (list, NaN where the page shows no point), ``px`` (rows [flat index, value,
    value of the up-down flipped map, packed RGBA colour the page draws there (the server's
    colouring, :func:`explorer.fieldlab_frames.frame_data`), the same of the flipped map]) and
    ``n`` (pixels).
    """
    from engine.kinds import KINDS
    from explorer.fieldlab_frames import frame_data
    from explorer.fieldlab_kinds import compute

    s = KINDS[kind].new_settings()
    s.param.update(size=size, omega_m=omega_m, sigma8=sigma8)
    r = compute(s)
    m = np.asarray(r.map, dtype=np.float32)
    colours = np.asarray(frame_data(r, secondary=False)["map"]["image"][0])
    flat, flipped = m.ravel(), np.flipud(m).ravel()
    c_flat, c_flipped = colours.ravel(), np.flipud(colours).ravel()
    idx = np.random.default_rng(0).choice(flat.size, N_PIXELS, replace=False)
    px = [
        [int(i), float(flat[i]), float(flipped[i]), int(c_flat[i]), int(c_flipped[i])] for i in idx
    ]
    return dict(pk=[float(x) for x in r.pk], px=px, n=int(flat.size))


@dataclass
class Plan:
    """Settings a session walks through: its σ8, then Ω_m steps, then drags (all new values)."""

    sigma8: float
    steps: int
    drags: int
    presses: int

    def omega(self, i: int) -> float:
        """Ω_m after ``i`` presses (the page starts at :data:`OMEGA_M0`)."""
        return round(OMEGA_M0 + STEP * i, 2)

    def values(self) -> list[float]:
        """Every Ω_m the page must show (start, each step, the end of each drag)."""
        ends = [self.steps + self.presses * (j + 1) for j in range(self.drags)]
        return [self.omega(i) for i in (*range(self.steps + 1), *ends)]


# ---------------------------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


#: Process id of the server behind each URL served by :func:`serve`.
SERVER_PIDS: dict[str, int] = {}


def cpu_seconds() -> dict[str, float]:
    """CPU time (user + system, s) used so far by Chromium's renderer processes, its other
    processes (browser, GPU/viz, utility) and each server of :data:`SERVER_PIDS` (read from
    /proc; Linux only, else empty)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"renderer": 0.0, "browser": 0.0} | {url: 0.0 for url in SERVER_PIDS}
    servers = {pid: url for url, pid in SERVER_PIDS.items()}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()  # children rewrite it as one string
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / tick
        pgid = int(fields[2])
        if pgid in servers:
            out[servers[pgid]] += cpu
        elif cmd.split(b"\0")[0].split(b" ")[0].endswith(b"chromium"):
            out["renderer" if b"--type=renderer" in cmd else "browser"] += cpu
    return out


@contextlib.contextmanager
def serve(root: Path, log: Path, profile: Path | None = None):
    """URL of ``panel serve explorer`` run in ``root`` (under cProfile, writing ``profile``)."""
    port = _free_port()
    runs = tempfile.mkdtemp(prefix="bench-runs-")
    pre = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
    cmd = [*pre, "-m", "panel", "serve", "explorer", "--port", str(port), "--address",
           "localhost", "--allow-websocket-origin", f"localhost:{port}"]  # fmt: skip
    env = {**os.environ, "EXPLORER_RUNS_DIR": runs, "PYTHONPATH": str(root)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        url = f"http://localhost:{port}/explorer"
        SERVER_PIDS[url] = proc.pid  # start_new_session: its process group
        try:
            deadline = time.time() + 120
            while True:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"panel serve did not start (see {log})")
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(url, timeout=60) as r:
                        if r.status == 200:
                            break
                time.sleep(0.5)
            yield url
        finally:  # SIGINT lets cProfile write its file; SIGTERM is quicker
            os.killpg(proc.pid, signal.SIGINT if profile else signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_until_idle(urls: list[str], cpu_below: float = 0.05, timeout: float = 120.0) -> float:
    """Wait until every server of ``urls`` used less than ``cpu_below`` s of CPU in the last
    second (their start-up warm-up, ``explorer/app_hooks.py``, has ended), at most ``timeout``
    s; returns the seconds waited. Servers start together: without this, the first case measured
    ran beside both servers' warm-up, against ours only (first in every case)."""
    t0 = time.time()
    before = cpu_seconds()
    while time.time() - t0 < timeout:
        time.sleep(1.0)
        now = cpu_seconds()
        if all(now.get(u, 0.0) - before.get(u, 0.0) < cpu_below for u in urls):
            break
        before = now
    return time.time() - t0


# ---------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Latencies (ms) collected by the sessions of one measurement."""

    step: list = field(default_factory=list)
    drag: list = field(default_factory=list)
    busy: list = field(default_factory=list)
    renders: list = field(default_factory=list)
    timeouts: int = 0
    load: tuple = ()  # 1-minute load average before and after
    presses: int = 0  # key presses of the timed part (steps and drags, all sessions)
    cpu: dict = field(default_factory=dict)  # CPU ms per press: renderer, browser, server


async def _wait_hit(page, timeout: float) -> dict | None:
    if not await page.evaluate("(ms) => window.__fl.waitHit(ms)", timeout * 1e3):
        return None  # the page never showed it
    return await page.evaluate(
        "() => ({ms: __fl.hit - __fl.t0, busy: __fl.busy && __fl.busy - __fl.t0,"
        " renders: __fl.renders})"
    )


async def open_session(browser, url: str, case, plan: Plan, want: dict, timeout: float):
    """A page of the explorer on ``case``'s kind and size at (Ω_m0, ``plan.sigma8``)."""
    kind, size = case
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    await page.goto(url, timeout=120_000)
    await page.wait_for_function(
        "() => window.Bokeh && Bokeh.documents.length > 0 && [...Bokeh.documents[0].all_models]"
        ".some((m) => m.data_source && 'P' in m.data_source.data)",
        timeout=120_000,
    )
    await page.evaluate(JS_INSTALL)
    await page.evaluate(JS_SET, ["buttons", list(TITLES.values()), TITLES[kind]])
    # the kind's own size buttons: its controls are on the page
    sizes = [str(n) for n in SIZE_OPTIONS[kind]]
    await page.wait_for_function(JS_SET, arg=["buttons", sizes, str(size)], timeout=60_000)
    await page.evaluate("(w) => __fl.arm(w, false)", want["opening"])  # the kind's first map
    if await _wait_hit(page, 4 * timeout) is None:
        raise RuntimeError(f"{kind} {size}: the page never showed the kind's first map")
    # Ω_m and σ8 by key presses, as a user would (the slider widget then agrees with its model)
    handles = page.locator(".noUi-handle")
    for nth, start, value in ((1, OPENING[1], plan.sigma8), (0, OPENING[0], OMEGA_M0)):
        await handles.nth(nth).focus()
        presses = round((value - start) / STEP)
        for _ in range(abs(presses)):
            await handles.nth(nth).press("ArrowRight" if presses > 0 else "ArrowLeft")
    await page.evaluate("(w) => __fl.arm(w, false)", want[plan.omega(0)])
    if await _wait_hit(page, 4 * timeout) is None:
        raise RuntimeError(f"{kind} {size}: the page never showed the starting map")
    return context, page, handles.first  # the first slider is Ω_m for every kind


async def run_session(page, handle, plan: Plan, want, out: Samples, timeout, rng) -> None:
    """Steps, then drags, of one session; latencies appended to ``out``."""
    for i in range(1, plan.steps + 1):
        await page.evaluate("(w) => __fl.arm(w, true)", want[plan.omega(i)])
        await handle.press("ArrowRight")
        res = await _wait_hit(page, timeout)
        if res is None:  # counted as taking the timeout; the session stops
            out.timeouts += 1
            out.step.append(timeout * 1e3)
            return
        out.step.append(res["ms"])
        if res["busy"] is not None:
            out.busy.append(res["busy"])
        await asyncio.sleep(rng.uniform(0.15, 0.4))
    for j in range(plan.drags):
        end = plan.steps + plan.presses * (j + 1)
        await page.evaluate("(w) => __fl.arm(w, false)", want[plan.omega(end)])
        for _ in range(plan.presses):
            await handle.press("ArrowRight")
            await asyncio.sleep(0.035)
        res = await _wait_hit(page, timeout)
        if res is None:
            out.timeouts += 1
            out.drag.append(timeout * 1e3)
            return
        out.drag.append(res["ms"])
        out.renders.append(res["renders"])
        await asyncio.sleep(rng.uniform(0.3, 0.6))


async def measure(
    browser, url, case, plans, want, timeout, trace: Path | None, js_profile: bool = False
) -> Samples:
    """Open one session per plan, then run them all at once."""
    opened = [await open_session(browser, url, case, p, want[p.sigma8], timeout) for p in plans]
    out, rng = Samples(), random.Random(0)
    out.presses = sum(p.steps + p.drags * p.presses for p in plans)
    cpu0 = cpu_seconds()
    if trace is not None:
        await browser.start_tracing(
            page=opened[0][1],
            path=str(trace),
            screenshots=False,
            categories=TRACE_CATEGORIES + [JS_PROFILER] * js_profile,
        )
    try:
        await asyncio.gather(
            *(
                run_session(pg, h, p, want[p.sigma8], out, timeout, rng)
                for (_, pg, h), p in zip(opened, plans, strict=True)
            )
        )
    finally:
        cpu1 = cpu_seconds()
        out.cpu = {
            ("server" if k == url else k): round(
                1e3 * (cpu1[k] - cpu0.get(k, 0.0)) / out.presses, 1
            )
            for k in ("renderer", "browser", url)
            if k in cpu1
        }
        if trace is not None:
            await browser.stop_tracing()
        for context, _, _ in opened:
            await context.close()
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _pct(xs, q) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def rows_of(case, sessions: int, s: Samples, peer: Samples | None, meta: dict) -> list[dict]:
    """Result rows (latest.json format) of one measurement, with the peer's where given."""
    kind, size = case
    rows = []
    series = [("step", s.step, peer and peer.step), ("drag", s.drag, peer and peer.drag)]
    if s.busy:
        series.append(("updating", s.busy, None))
    for what, xs, ys in series:
        for q in (50, 95):
            name = f"browser_{what}_{kind}{size}_{sessions}s_p{q}"
            row = dict(name=name, value=_pct(xs, q), unit="ms")
            if ys:
                row.update(peer="previous explorer", peer_value=_pct(ys, q))
                row["ratio"] = row["peer_value"] / row["value"]
            key = f"{what}{sessions}"
            row["target"] = TARGETS.get(key, "") if q == 95 else ""
            extra = dict(n=len(xs), timeouts=s.timeouts, cpu_ms_per_press=s.cpu)
            if what == "drag":
                extra["renders_per_drag"] = float(np.mean(s.renders)) if s.renders else 0.0
            row["meta"] = {**meta, "kind": kind, "size": size, "sessions": sessions, **extra}
            rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    """One line per row: value, peer value and ratio, target."""
    head = f"{'benchmark':<36}{'n':>4}{'ours ms':>10}{'peer ms':>10}{'ratio':>8}  target"
    print(head)
    print("-" * len(head))
    for r in rows:
        pv = f"{r['peer_value']:.0f}" if "peer_value" in r else ""
        ratio = f"{r['ratio']:.1f}x" if "ratio" in r else ""
        n = r["meta"]["n"]
        print(f"{r['name']:<36}{n:>4}{r['value']:>10.0f}{pv:>10}{ratio:>8}  {r['target']}")


def _plans(sessions: int, steps: int, drags: int, presses: int) -> list[Plan]:
    if sessions == 1:
        return [Plan(SIGMA8_0, steps, drags, presses)]
    return [
        Plan(round(SIGMA8_0 + STEP * (i + 1), 2), steps, drags, presses) for i in range(sessions)
    ]


async def measure_case(browser, urls: dict, case, plans: list[Plan], args, meta: dict):
    """Rows of one case and number of sessions: each app measured in turn, same expected pages."""
    t0 = time.perf_counter()
    want = {p.sigma8: {v: expected(*case, v, p.sigma8) for v in p.values()} for p in plans}
    opening = expected(*case, OPENING[0], OPENING[1])  # the page switched to the kind and size
    for w in want.values():
        w["opening"] = opening
    print(f"# {case} x{len(plans)}: expected pages in {time.perf_counter() - t0:.0f} s", flush=True)
    got = {}
    for name, url in urls.items():
        trace = None
        if args.trace and len(plans) == 1:
            Path(args.trace).mkdir(parents=True, exist_ok=True)
            trace = Path(args.trace) / f"{name}-{case[0]}.json"
        load = os.getloadavg()[0]
        try:
            got[name] = await measure(
                browser, url, case, plans, want, args.timeout, trace, args.trace_js
            )
        except RuntimeError as exc:  # a page that never showed its first map: no samples
            print(f"#   {name}: {exc}")
            got[name] = Samples(timeouts=len(plans))
        got[name].load = (load, os.getloadavg()[0])
    meta = {**meta, "loadavg": got["ours"].load}
    if "peer" in got:
        meta["peer_loadavg"] = got["peer"].load
    rows = rows_of(case, len(plans), got["ours"], got.get("peer"), meta)
    for name, s in got.items():
        print(f"#   {name}: CPU ms per key press {s.cpu}")
    print_table(rows)
    return rows


async def run(args) -> list[dict]:
    """Every case, 1 session then ``args.sessions`` sessions, ours and (optionally) the peer."""
    from playwright.async_api import async_playwright

    runs = [_plans(1, args.steps, args.drags, args.presses)]
    if args.sessions > 1:  # --sessions 1: only the 1-session run (and its --trace)
        runs.append(_plans(args.sessions, args.steps5, args.drags5, args.presses))
    apps = {"ours": REPO} | ({"peer": Path(args.peer).resolve()} if args.peer else {})
    logs = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    prof = Path(args.profile_server) if args.profile_server else None
    if prof is not None:
        prof.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        urls = {
            name: stack.enter_context(
                serve(root, logs / f"{name}.log", prof and prof / f"server-{name}.prof")
            )
            for name, root in apps.items()
        }
        waited = wait_until_idle(list(urls.values()))
        print(f"# servers idle after {waited:.0f} s", flush=True)
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            meta = dict(
                browser=f"chromium {browser.version}", machine=platform.machine(),
                cpus=os.cpu_count(), time=time.strftime("%Y-%m-%dT%H:%M:%S"),
            )  # fmt: skip
            for case in [c for c in CASES if c[0] in args.kinds]:
                for plans in runs:
                    rows += await measure_case(browser, urls, case, plans, args, meta)
                    write(rows, Path(args.out))
            await browser.close()
    return rows


def write(rows: list[dict], out: Path) -> None:
    """Write ``rows`` to ``out``, keeping the rows of other cases already there."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["meta"]["kind"], r["meta"]["sessions"]) for r in rows}
    kept = []
    if out.exists():
        kept = [
            r
            for r in json.loads(out.read_text())
            if (r["meta"]["kind"], r["meta"]["sessions"]) not in done
        ]
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(kept + rows, indent=1))
    os.replace(tmp, out)


def main(argv=None) -> int:
    """Run the benchmark, print the table, write :data:`RESULTS` (after every case)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", nargs="+", default=[k for k, _ in CASES])
    ap.add_argument("--sessions", type=int, default=5)
    ap.add_argument("--steps", type=int, default=24, help="steps of the 1-session run")
    ap.add_argument("--steps5", type=int, default=4, help="steps per session, many sessions")
    ap.add_argument("--drags", type=int, default=4)
    ap.add_argument("--drags5", type=int, default=1)
    ap.add_argument("--presses", type=int, default=10, help="key presses per drag")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds a step may take")
    ap.add_argument("--peer", help="another tree with explorer/ to serve as the peer")
    ap.add_argument("--trace", help="folder for Chromium performance traces (1 session)")
    ap.add_argument(
        "--trace-js", action="store_true", help="add V8's CPU profile to the --trace files"
    )
    ap.add_argument("--profile-server", help="folder for cProfile output of the servers")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    from engine.params import FieldParams  # the slider's range

    top = FieldParams.param.omega_m.bounds[1]
    for flag, steps, drags in (("", args.steps, args.drags), ("5", args.steps5, args.drags5)):
        last = Plan(SIGMA8_0, steps, drags, args.presses).values()[-1]
        if last > top:
            ap.error(
                f"--steps{flag} {steps} and --drags{flag} {drags} (x {args.presses} presses) "
                f"walk Ω_m from {OMEGA_M0} to {last}, above the slider's maximum {top}: "
                f"need {OMEGA_M0} + {STEP} x (steps + drags x presses) <= {top}"
            )
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: no browser benchmark")
        return 0
    rows = asyncio.run(run(args))
    print()
    print_table(rows)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
