"""Real-browser tests of the explorer: `panel serve explorer` driven by Playwright + Chromium.

Uses the Debian Chromium at /usr/bin/chromium (no browser download); skipped when it is missing.
One server (with EXPLORER_RUNS_DIR and EXPLORER_EXAMPLES_DIR in temporary folders, the latter
holding one fake example run with an evaluation) and one browser serve the module; engine runs
started by the tests are killed at the end. ``--screenshots`` saves
assets/screenshots/fieldlab.png, fieldlab_kappa.png, sky.png, training.png, generate.png,
lensing.png and compare.png.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_explorer_training import write_example_run, write_gan_run

from engine.runs import is_alive, list_runs

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
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
SCREENSHOTS = REPO / "assets" / "screenshots"

# JavaScript helpers reading the Bokeh document of the page.
JS_SOURCES = """(cols) => {
  const out = [];
  for (const m of Bokeh.documents[0].all_models) {
    if (m.data_source && m.glyph) {
      const data = m.data_source.data;
      if (cols.every((c) => c in data)) {
        out.push({glyph: m.glyph.constructor.__name__, n: m.data_source.get_length(),
                  columns: Object.fromEntries(cols.map((c) => [c, Array.from(data[c])]))});
      }
    }
  }
  return out;
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"panel serve exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("explorer-runs")


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory) -> Path:
    """Shipped example runs of the server: one fake finished run ``grf64`` with an evaluation
    and ``wgan64``, a run of another task (GAN metric names, a generic report.json)."""
    root = tmp_path_factory.mktemp("examples")
    write_example_run(root, "grf64")
    write_gan_run(root / "wgan64")
    return root


@pytest.fixture(scope="module")
def server(runs_dir, examples_dir, tmp_path_factory):
    """URL of a `panel serve explorer` subprocess; the server and its runs die at the end."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    port = _free_port()
    log = open(tmp_path_factory.mktemp("server") / "panel.log", "wb")  # noqa: SIM115
    cmd = [
        sys.executable, "-m", "panel", "serve", "explorer",
        "--port", str(port), "--address", "localhost",
        "--allow-websocket-origin", f"localhost:{port}",
    ]  # fmt: skip
    env = {
        **os.environ,
        "EXPLORER_RUNS_DIR": str(runs_dir),
        "EXPLORER_EXAMPLES_DIR": str(examples_dir),
    }
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://localhost:{port}/explorer"
    try:
        _wait_http(url, proc, timeout=90)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        for run in list_runs(runs_dir):  # engine runs live in their own sessions
            pid = (run.status() or {}).get("pid")
            if pid and is_alive(pid):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser(server):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server, request):
    """A fresh page (session) of the explorer, loaded and rendered."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(server)
    pg.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0")
    pg.wait_for_function(f"() => ({JS_SOURCES})(['k', 'P']).length > 0")
    yield pg
    context.close()


# Page rectangle (x, y, width, height) of the plot frame of the figure titled ``title``.
JS_FRAME = """(title) => {
  let found = null;
  function walk(v) {
    if (found) return;
    if (v.model && v.model.title && v.model.title.text === title && v.frame) {
      const r = v.el.getBoundingClientRect(), f = v.frame.bbox;
      found = [r.x + f.x, r.y + f.y, f.width, f.height];
    }
    if (v.child_views) for (const c of v.child_views) walk(c);
  }
  for (const v of Bokeh.index) walk(v);
  return found;
}"""

# Page position (x, y) of the centre of the cell (x factor, y factor) of the categorical plot
# titled ``title``.
JS_CELL = """([title, xf, yf]) => {
  let found = null;
  function walk(v) {
    if (found) return;
    if (v.model && v.model.title && v.model.title.text === title && v.frame) {
      const r = (v.canvas_view ? v.canvas_view.el : v.el).getBoundingClientRect();
      const x = v.frame.x_scale.compute(v.model.x_range.synthetic(xf));
      const y = v.frame.y_scale.compute(v.model.y_range.synthetic(yf));
      found = [r.x + x, r.y + y];
    }
    if (v.child_views) for (const c of v.child_views) walk(c);
  }
  for (const v of Bokeh.index) walk(v);
  return found;
}"""

# Whether some model of the document has a title text starting with ``prefix``.
JS_TITLE = """(prefix) => [...Bokeh.documents[0].all_models]
  .some((m) => typeof m.text === "string" && m.text.startsWith(prefix))"""


def _screenshot(request, page, name: str) -> None:
    if request.config.getoption("--screenshots"):
        page.mouse.move(1, 1)  # no hover tooltips in the picture
        page.wait_for_timeout(300)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def _measured_pk(page) -> list[float]:
    sources = page.evaluate(JS_SOURCES, ["k", "P"])
    # the measured points (the legend's proxy scatter has no data: fieldlab_views._static_legend)
    (scatter,) = [s for s in sources if s["glyph"] == "Scatter" and len(s["columns"]["P"])]
    return scatter["columns"]["P"]


def _wait_until(predicate, timeout: float = 60.0, interval: float = 0.25):
    """Poll ``predicate()`` until it returns something truthy; return that."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() > deadline:
            assert value, f"condition not met within {timeout} s"
            return value
        time.sleep(interval)


def test_omega_m_slider_updates_power_spectrum(page, request):
    before = _measured_pk(page)
    assert len(before) > 10
    # the parameter readout (an HTML table in the page) shows Ω_m
    page.locator("td", has_text="0.300").first.wait_for()
    # explorer.browser_fixes: Bokeh's style sheets keep their text when it is unchanged
    assert page.evaluate(
        "() => Bokeh.require('core/dom').InlineStyleSheet.prototype.__same_css_fix === true"
    )
    handle = page.locator(".noUi-handle").first  # the first slider is Ω_m
    handle.focus()
    for _ in range(10):
        handle.press("ArrowRight")  # step 0.01
    page.locator("td", has_text="0.400").first.wait_for()
    after = _wait_until(lambda: (pk := _measured_pk(page)) != before and pk)
    assert len(after) == len(before)
    # larger Ω_m at fixed σ8: power moves from large to small scales
    assert after[-1] / before[-1] > after[0] / before[0]
    _screenshot(request, page, "fieldlab.png")


# The map figure's frame on the page (x, y, width, height), its ranges and the image's extent.
JS_MAP_FRAME = """() => {
  let found = null;
  function walk(v) {
    if (found) return;
    const img = v.model && v.model.renderers &&
      v.model.renderers.find((r) => r.glyph && r.glyph.constructor.__name__ === "ImageRGBA");
    if (img && v.frame) {
      const r = (v.canvas_view ? v.canvas_view.el : v.el).getBoundingClientRect(), f = v.frame.bbox;
      const d = img.data_source.data;
      found = {rect: [r.x + f.x, r.y + f.y, f.width, f.height],
               x: [v.model.x_range.start, v.model.x_range.end],
               y: [v.model.y_range.start, v.model.y_range.end], dw: d.dw[0], dh: d.dh[0]};
    }
    if (v.child_views) for (const c of v.child_views) walk(c);
  }
  for (const v of Bokeh.index) walk(v);
  return found;
}"""

# The float values of the map's hover source (the source with a 'value' column and no image).
JS_HOVER_VALUES = """() => {
  for (const m of Bokeh.documents[0].all_models)
    if (m.data && m.data.value && !m.data.image && m.data.value.length)
      return {shape: m.data.value[0].shape, values: Array.from(m.data.value[0])};
  return null;
}"""


def test_map_hover_shows_the_value_of_the_pixel_under_the_cursor(page):
    """The map's tooltip reads the float value of the hovered pixel from the hover source, which
    no glyph draws (row 0 of the map at the bottom, as the image is drawn)."""
    page.wait_for_function(f"() => ({JS_HOVER_VALUES})() !== null")
    frame = page.evaluate(JS_MAP_FRAME)
    hover = page.evaluate(JS_HOVER_VALUES)
    ny, nx = hover["shape"]
    values = np.asarray(hover["values"], dtype=np.float32).reshape(ny, nx)
    x0, y0, w, h = frame["rect"]
    fx, fy = 0.3, 0.6  # fractions of the frame from its top-left corner
    page.mouse.move(x0 + fx * w, y0 + fy * h)
    shown = page.locator(".bk-tooltip-row-value").nth(1)
    shown.wait_for()
    (xr0, xr1), (yr0, yr1) = frame["x"], frame["y"]
    i = int((xr0 + fx * (xr1 - xr0)) / frame["dw"] * nx)
    j = int((yr1 - fy * (yr1 - yr0)) / frame["dh"] * ny)

    def fmt(v: float) -> str:  # as Bokeh's default number formatter
        return (
            f"{v:.3f}"
            if 0.1 < abs(v) < 1000
            else f"{v:.3e}".replace("e-0", "e-").replace("e+0", "e+")
        )

    near = {fmt(float(values[b, a])) for b in (j - 1, j, j + 1) for a in (i - 1, i, i + 1)}
    assert shown.inner_text() in near
    page.mouse.move(1, 1)


def test_training_run_streams_loss_into_page(page, request, runs_dir):
    page.get_by_text("Training", exact=True).first.click()
    train = page.get_by_text("▶ Train")
    train.wait_for()
    # shorten the smoke preset through its widgets: 3 epochs of 8 steps (~20 s on 2 CPUs)
    for name, value in (("epochs", 3), ("steps per epoch", 8)):
        box = page.get_by_label(name, exact=True)
        box.fill(str(value))
        box.press("Enter")
        page.wait_for_function(
            "([name, value]) => [...Bokeh.documents[0].all_models]"
            ".some((m) => m.title === name && m.value === value)",
            arg=[name, value],
        )
    before = {r.id for r in list_runs(runs_dir)}
    train.click()
    page.get_by_text("running", exact=True).first.wait_for(timeout=60_000)

    def loss_points():  # the loss curve's data source in the page grows as the run logs
        sources = page.evaluate(JS_SOURCES, ["step", "value"])
        return max((s["n"] for s in sources if s["glyph"] == "Line"), default=0)

    _wait_until(loss_points, timeout=90)
    page.get_by_text("completed", exact=True).first.wait_for(timeout=90_000)
    assert _wait_until(lambda: loss_points() >= 6)  # 24 steps: every 5 and at epoch ends
    # one plot per group of the metric names the run wrote (none of them listed in the page)
    for title in ("Loss", "RMSE of the parameters", "grad_norm", "Learning rate", "Throughput"):
        page.wait_for_function(JS_TITLE, arg=title)
    (run,) = [r for r in list_runs(runs_dir) if r.id not in before]
    assert run.status()["state"] == "completed"
    settings = run.config()["settings"]
    assert (settings["epochs"], settings["steps_per_epoch"]) == (3, 8)
    # The engine evaluates the finished run (report.json); it appears in the page by itself.
    n_maps = settings["eval_maps"]
    page.get_by_text(f"Evaluation on {n_maps} test maps").first.wait_for(timeout=120_000)
    page.locator("td", has_text="P(k) likelihood").first.wait_for()
    page.wait_for_timeout(1000)
    _screenshot(request, page, "training.png")


def test_example_run_shows_its_evaluation_read_only(page):
    page.get_by_text("Training", exact=True).first.click()
    runs = page.locator("select").filter(has=page.locator("option", has_text="example: grf64"))
    runs.select_option(label="example: grf64 — completed 40/40")
    page.get_by_text("(read-only)").first.wait_for()
    page.locator("td", has_text="Cramér–Rao bound").first.wait_for()  # its evaluation table
    expect = pytest.importorskip("playwright.sync_api").expect
    expect(page.get_by_role("button", name="■ Stop")).to_be_disabled()
    expect(page.get_by_role("button", name="↻ Resume")).to_be_disabled()  # has last.pt, yet
    # its curves replay from its metrics.jsonl, and the evaluation plots are drawn
    _wait_until(lambda: page.evaluate(JS_SOURCES, ["step", "value"]))
    page.wait_for_function(JS_TITLE, arg="σ₈: RMSE per bin of the truth")


def test_training_page_streams_curves_of_another_task(page):
    """A GAN run (train loss_g/loss_d, val fid) shows its curves and its report's metrics."""
    page.get_by_text("Training", exact=True).first.click()
    runs = page.locator("select").filter(has=page.locator("option", has_text="example: wgan64"))
    runs.select_option(label="example: wgan64 — completed 30/30")
    page.get_by_text("task gan").first.wait_for()  # the generic evaluation line and table
    page.locator("td", has_text="pk.ratio_mean").first.wait_for()
    page.wait_for_function(JS_TITLE, arg="fid")

    def series():  # the legend labels of the drawn curves
        return set(page.evaluate(JS_LEGEND))

    assert _wait_until(lambda: {"loss_g (train)", "loss_d (train)", "validation"} <= series())


# Legend item labels of the document.
JS_LEGEND = """() => [...Bokeh.documents[0].all_models]
  .filter((m) => m.constructor.__name__ === "LegendItem")
  .map((m) => (typeof m.label === "string" ? m.label : m.label && (m.label.value ?? m.label.field)))
  .filter((l) => typeof l === "string")"""


def test_kind_selector_shows_kappa_with_ell_axis(page, request):
    page.get_by_text("κ WL", exact=True).first.click()
    page.locator("td", has_text="arcmin⁻²").first.wait_for()  # κ settings in the readout
    # the spectrum is now C_ℓ: a Scatter over ℓ, and the map axes are in arcmin
    _wait_until(lambda: page.evaluate(JS_SOURCES, ["ell", "P"]))
    page.wait_for_function(JS_TITLE, arg="Convergence κ")
    page.wait_for_timeout(500)
    _screenshot(request, page, "fieldlab_kappa.png")


def test_sky_click_cuts_patch_and_opens_it_in_field_lab(page, request):
    page.get_by_text("Sky", exact=True).first.click()
    page.get_by_text("WMAP 7-yr W band (analysis mask)").first.wait_for()  # WMAP is shown
    frame = _wait_until(lambda: page.evaluate(JS_FRAME, "Click the sky to cut a patch"))
    x, y, w, h = frame
    page.wait_for_timeout(500)  # let the first frame settle before clicking
    page.mouse.click(x + 0.4 * w, y + 0.8 * h)  # southern sky, east of the centre
    page.get_by_text("Patch centre: lon").first.wait_for()
    page.wait_for_function(JS_TITLE, arg="Patch at lon")  # the patch view shows it
    page.wait_for_timeout(500)
    _screenshot(request, page, "sky.png")
    page.get_by_text("Open patch in field lab").first.click()
    page.locator("td", has_text="centre lon").first.wait_for()  # the field lab measures it
    _wait_until(lambda: page.evaluate(JS_SOURCES, ["ell", "P"]))


def test_compare_tab_shows_the_shipped_comparison(page, request):
    """The Compare tab lists the rows of assets/compare/table.csv (models × datasets) at once."""
    import csv

    with open(REPO / "assets" / "compare" / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    page.get_by_text("Compare", exact=True).first.click()
    page.get_by_text("↻ Recompute").first.wait_for()
    for model in {r["model"] for r in rows}:  # every model and the P(k) likelihood
        page.locator(".tabulator-cell", has_text=model).first.wait_for()
    assert page.locator(".tabulator-row").count() >= min(len(rows), 8)
    # it opens on the best in-domain pair (highest efficiency: lognormal64 on lognormal maps),
    # not on the first row (2lpt64 on grf maps, R² = −70); its scatter and domain gap are drawn
    page.get_by_text("lognormal64 on lognormal").first.wait_for()
    page.wait_for_function(JS_TITLE, arg="σ₈: prediction against truth")
    page.wait_for_function(JS_TITLE, arg="Domain gap: power spectrum", timeout=120_000)
    # the models × datasets matrix: a click on a cell selects its pair
    title = "RMSE of Ωₘ: models × datasets (* in domain; click a cell)"
    page.wait_for_function(JS_TITLE, arg=title)
    x, y = _wait_until(lambda: page.evaluate(JS_CELL, [title, "grf", "grf64"]))
    page.mouse.click(x, y)
    page.get_by_text("grf64 on grf").first.wait_for()
    page.get_by_role("button", name="efficiency σ_CRB/RMSE").click()  # the colour selector
    page.wait_for_function(JS_TITLE, arg="efficiency σ_CRB/RMSE of Ωₘ: models × datasets")
    page.wait_for_function(JS_TITLE, arg="Domain gap: power spectrum", timeout=120_000)
    _screenshot(request, page, "compare.png")


def test_slow_kind_says_updating_and_ends_on_the_last_value(page):
    """2LPT at 128³ (~0.3 s an update): a burst of slider steps says "updating…" at once, and
    the page ends on the last value with the message gone."""
    page.get_by_text("2LPT", exact=True).first.click()
    page.get_by_text("particles N").first.wait_for()  # the 2LPT readout
    page.get_by_text("128", exact=True).first.click()  # 128 particles per side
    page.locator("td", has_text="128³").first.wait_for()
    handle = page.locator(".noUi-handle").first  # Ω_m
    handle.focus()
    for _ in range(5):
        handle.press("ArrowRight")  # step 0.01
    page.wait_for_function(JS_TITLE_OR_TEXT, arg="updating…", timeout=5_000)
    page.locator("td", has_text="0.350").first.wait_for()  # the last value's map and readout
    page.wait_for_function(f"(t) => !({JS_TITLE_OR_TEXT})(t)", arg="updating…")


# Whether a rendered text of the page (an HTML or Markdown model) contains ``text``.
JS_TITLE_OR_TEXT = """(text) => [...Bokeh.documents[0].all_models]
  .some((m) => typeof m.text === "string" && m.text.includes(text) && m.visible !== false)"""


# ---------------------------------------------------------------------------------------------
# Map emulators: the Generate page and a GAN run launched from the Training page
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gan_generator(runs_dir) -> Path:
    """A trained gan_smoke run in the server's runs folder (skipped without the GAN task)."""
    from test_explorer_generate import _importable, train_generator

    if not _importable("gan"):
        pytest.skip("engine.tasks.gan is not there")
    return train_generator(runs_dir / "20250101-000000-gan_smoke-test")


def _console_errors(page) -> list[str]:
    """Console errors of ``page`` from now on (a list that fills as they come)."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def test_generate_page_samples_a_generator_beside_the_simulator(page, request, gan_generator):
    errors = _console_errors(page)
    page.get_by_text("Generate", exact=True).first.click()
    option = page.locator("option", has_text=f"{gan_generator.name} (gan)")  # listed by name
    option.first.wait_for(state="attached")
    page.get_by_text("Trained on").first.wait_for()  # the generator is loaded: its box
    page.get_by_role("button", name="▶ Sample").click()
    page.wait_for_function(JS_TITLE, arg="Generated channel_0 (gan)")
    page.wait_for_function(JS_TITLE, arg="Simulator channel_0 (grf)")
    page.wait_for_function(JS_TITLE, arg="P(k) ratio, generated / simulator")
    page.locator("td", has_text="real–real floor").first.wait_for()  # the scores table
    maps = _wait_until(lambda: page.evaluate(JS_SOURCES, ["image", "value"]))
    assert len(maps) >= 2 and all(m["n"] == 1 for m in maps)  # generated and simulator maps
    page.wait_for_timeout(500)
    _screenshot(request, page, "generate.png")
    assert not errors, errors


def test_training_page_launches_a_gan_run_and_streams_its_losses(page, runs_dir):
    if not importlib.util.find_spec("engine.tasks.gan"):
        pytest.skip("engine.tasks.gan is not there")
    errors = _console_errors(page)
    page.get_by_text("Training", exact=True).first.click()
    tasks = page.locator("select").filter(has=page.locator("option", has_text="regression"))
    tasks.select_option("gan")
    page.wait_for_function(  # the preset follows the task, the form shows the GAN's settings
        "() => [...Bokeh.documents[0].all_models].some((m) => m.title === 'Preset' "
        "&& m.value === 'gan_smoke')"
    )
    page.get_by_label("d width", exact=True).wait_for()
    before = {r.id for r in list_runs(runs_dir)}
    page.get_by_text("▶ Train").click()
    page.get_by_text(re.compile(r"Started \S*gan_smoke")).first.wait_for()  # the new run is open
    (run,) = [r for r in list_runs(runs_dir) if r.id not in before]
    # its engine process runs, or has already finished: gan_smoke's steps take < 1 s once the
    # process is up, shorter than the page's polling, so its "running" badge may never show
    states = ("running", "completed")
    assert _wait_until(lambda: (run.status() or {}).get("state") in states, timeout=60)
    assert "gan_smoke" in run.id and run.config()["task"] == "gan"
    assert _wait_until(lambda: "loss_g (train)" in page.evaluate(JS_LEGEND), timeout=90)
    page.get_by_role("button", name="■ Stop").click()  # free the CPU for the other tests
    assert not errors, errors


# ---------------------------------------------------------------------------------------------
# The Lensing page
# ---------------------------------------------------------------------------------------------

# Sum of the lens image's pixels (its source has a "counts" column), or null before it is shown.
JS_LENS_SUM = """() => {
  for (const m of Bokeh.documents[0].all_models) {
    if (m.data_source && m.glyph && "counts" in m.data_source.data) {
      const a = m.data_source.data.counts[0];
      if (!a) return null;
      let s = 0;
      for (const v of a) s += v;
      return s;
    }
  }
  return null;
}"""

# Median distance from the centre of the critical-curve points drawn (columns cx, cy), or null.
JS_CURVE_RADIUS = """() => {
  for (const m of Bokeh.documents[0].all_models) {
    if (m.data_source && m.glyph && "cx" in m.data_source.data) {
      const r = [];
      const {cx, cy} = m.data_source.data;
      for (let i = 0; i < cx.length; i++)
        for (let j = 0; j < cx[i].length; j++) r.push(Math.hypot(cx[i][j], cy[i][j]));
      if (!r.length) return null;
      r.sort((a, b) => a - b);
      return r[Math.floor(r.length / 2)];
    }
  }
  return null;
}"""


def test_lensing_tab_theta_e_slider_moves_the_image_and_its_critical_curve(page, request):
    errors = _console_errors(page)
    page.get_by_text("Lensing", exact=True).first.click()
    before = _wait_until(lambda: page.evaluate(JS_LENS_SUM))
    radius = _wait_until(lambda: page.evaluate(JS_CURVE_RADIUS))
    assert 0.8 < radius < 1.2  # θ_E = 1 arcsec
    page.get_by_text("update computed in").first.wait_for()  # the measured time is shown
    slider = page.locator(".bk-input-group", has_text="Einstein radius").first
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    for _ in range(20):
        handle.press("ArrowRight")  # step 0.01 arcsec
    slider.locator(".bk-slider-value", has_text="1.20").wait_for()
    moved = _wait_until(lambda: (r := page.evaluate(JS_CURVE_RADIUS)) > radius + 0.15 and r)
    assert moved == pytest.approx(radius + 0.2, abs=0.06)
    assert page.evaluate(JS_LENS_SUM) != before
    page.wait_for_timeout(500)
    _screenshot(request, page, "lensing.png")
    assert not errors, errors


# ---------------------------------------------------------------------------------------------
# The CMB page
# ---------------------------------------------------------------------------------------------

# Per image glyph of the page (the Mollweide B maps): its number of finite pixels and the sum of
# their absolute values.
JS_CMB_IMAGES = """() => {
  const out = [];
  for (const m of Bokeh.documents[0].all_models) {
    if (m.data_source && m.glyph && m.glyph.type === "Image" && "image" in m.data_source.data) {
      const a = m.data_source.data.image[0];
      if (!a) continue;
      let n = 0, s = 0;
      for (const v of a) if (Number.isFinite(v)) { n += 1; s += Math.abs(v); }
      out.push([n, s]);
    }
  }
  return out;
}"""


def test_cmb_tab_r_slider_updates_the_b_maps_and_spectra(page, request):
    """The CMB tab (no delensing network in the server's folders: the template baseline at
    nside 128): the four Mollweide B maps and the BB spectra render; moving r recomputes the sky
    (off the event loop, saying so) and both follow."""
    errors = _console_errors(page)
    page.get_by_text("CMB", exact=True).first.click()
    page.get_by_text("No delensing network found").first.wait_for()  # the one-line hint
    page.wait_for_function(JS_TITLE_OR_TEXT, arg="updated in", timeout=240_000)
    images = page.evaluate(JS_CMB_IMAGES)
    assert len(images) == 4 and all(n > 1000 for n, _ in images), images
    spectra = page.evaluate(JS_SOURCES, ["ell", "D_BB"])
    assert sum(any(v is not None and v > 0 for v in s["columns"]["D_BB"]) for s in spectra) >= 5
    page.wait_for_function(JS_TITLE_OR_TEXT, arg="r = 0.01,")  # the spectra's title
    slider = page.locator(".bk-input-group", has_text="Tensor-to-scalar ratio r").first
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    for _ in range(10):
        handle.press("ArrowRight")  # step 0.001
    slider.locator(".bk-slider-value", has_text="0.020").wait_for()
    page.wait_for_function(JS_TITLE_OR_TEXT, arg="⏳ updating", timeout=10_000)
    page.wait_for_function(JS_TITLE_OR_TEXT, arg="r = 0.02,", timeout=240_000)
    page.wait_for_function(JS_TITLE_OR_TEXT, arg="updated in", timeout=240_000)
    after = page.evaluate(JS_CMB_IMAGES)
    assert len(after) == 4 and after != images  # the B maps of the new sky
    page.wait_for_timeout(500)
    _screenshot(request, page, "cmb.png")
    assert not errors, errors
