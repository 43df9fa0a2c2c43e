"""Field lab: a live map of any flat kind, its power spectrum against theory, its PDF and peaks.

Kinds: ``grf`` and ``lognormal`` projected slabs (:mod:`engine.physics.slabs`), ``2lpt`` particle
slabs (:mod:`engine.physics.lpt`), ``kappa`` weak-lensing convergence
(:mod:`engine.physics.lensing`), and ``patch``, an external map handed over by the sky page
(:meth:`FieldLab.show_map`).

One mechanism for all of them, in four modules:

* :mod:`explorer.fieldlab_measure`: the pure, UI-free measurement of one seeded map (engine calls
  for the map and its expected spectra, :class:`~explorer.fieldlab_measure.FieldLabResult`,
  :class:`~explorer.fieldlab_measure.PlotStyle`);
* :mod:`explorer.fieldlab_kinds`: a :class:`~explorer.fieldlab_kinds.KindView` per kind (its
  settings class from the :mod:`engine.kinds` registry, the controls shown as widgets, its
  explanation and its measure function) and the pure update :func:`compute`;
* :mod:`explorer.fieldlab_views`: the Bokeh figures of a style, fed in place from a result, the
  readout table, widgets generated from the engine's param definitions;
* this module: the page state :class:`FieldLab` and :class:`LatestOnly`.

:class:`FieldLab` holds one settings object per settings class (grf and lognormal share theirs)
and watches it. In a served session every change is computed off the event loop, in a worker
thread, from a snapshot of the settings, only ever the latest (:class:`LatestOnly`: one update
runs, one waits, older ones are dropped); the finished result replaces the columns of the
figures' data sources, so the user's zoom survives and an update sends a few arrays (the map as
float32), all in one message. The figures are rebuilt only when the style (kind, units, extent,
ranges) changes. When the last update of the kind and size took longer than
:data:`BUSY_AFTER`, the page says "updating…" at the moment of the change.

Units: lengths in comoving Mpc/h, k in h/Mpc, 2D P(k) in (Mpc/h)², δ dimensionless; κ maps in
arcmin with C_ℓ in sr, plotted as ℓ(ℓ+1)C_ℓ/2π (dimensionless for κ, map unit² otherwise).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import holoviews as hv
import panel as pn
import param
import xarray as xr
from panel.io.document import hold
from tornado.ioloop import IOLoop

from engine.kinds import FIELD_KINDS, KINDS
from engine.params import ConfigError, CosmologyParams, FieldParams, user_settings
from explorer import fieldlab_frames as frames
from explorer import fieldlab_views as views
from explorer.fieldlab_kinds import compute, kind_view
from explorer.fieldlab_measure import ExternalMap, FieldLabResult, PlotStyle, slab_particles
from explorer.fieldlab_views import labelled, setting_widget
from explorer.widgets import label, look

#: Maps with more pixels per side than this are rasterized by datashader to the screen.
RASTERIZE_ABOVE = 256
#: Kinds made of particles: the page can show the particles inside the slab.
PARTICLE_KINDS = ("2lpt", "pm")
#: Seconds the secondary views — the PDF, the peak counts and the readout table — wait for the
#: updates to pause before they follow the map and P(k), the live views (served pages; errors
#: show at once). Replacing the table's HTML cost the page ~20 ms and the server ~10 ms per
#: update, and repainting two more figures on every step of a key burst or a drag took page
#: time that five tabs on two cores do not have (``benchmarks/browser.py``); numbers that change
#: ten times a second cannot be read anyway.
READOUT_AFTER = 0.25
#: Height (px) of the readout table: room for the longest (κ: 18 rows) without scrolling.
READOUT_HEIGHT = 600
#: Seconds an update may take before the page says "updating…" at once for the next one.
BUSY_AFTER = 0.1
#: Updates slower than SETTLE_AFTER s start once the settings stayed unchanged for SETTLE s (a
#: burst of key presses or a drag then computes its last value, not first its first one), at
#: most MAX_SETTLE s after a change; faster ones start at once.
SETTLE_AFTER = 0.25
SETTLE = 0.06
MAX_SETTLE = 0.5
#: Seconds a served page waits for the browser to say it painted a frame before it sends the
#: next one anyway (a hidden tab runs no animation frames and never says so).
ACK_TIMEOUT = 1.0


# ---------------------------------------------------------------------------------------------
# Updates off the event loop, only the latest
# ---------------------------------------------------------------------------------------------

#: Worker threads computing field-lab updates, shared by all sessions of the server (each
#: session has at most one job in them at a time; see :class:`LatestOnly`);
#: ``$EXPLORER_FIELDLAB_WORKERS`` overrides it.
WORKERS = int(
    os.environ.get("EXPLORER_FIELDLAB_WORKERS") or min(4, max(1, (os.cpu_count() or 2) // 2))
)
_executors: dict[str, ThreadPoolExecutor] = {}


def executor(name: str = "updates") -> ThreadPoolExecutor:
    """A process-wide pool of threads, made on first use: ``"updates"`` (:data:`WORKERS`
    threads) computes the maps and their main views; ``"settled"`` (one thread) the numbers
    of the views that follow once a session's updates pause, so that they never wait in line
    before, or hold up, another session's map."""
    if name not in _executors:
        threads = WORKERS if name == "updates" else 1
        _executors[name] = ThreadPoolExecutor(threads, thread_name_prefix=f"fieldlab-{name}")
    return _executors[name]


class LatestOnly:
    """Run jobs off the event loop, one at a time, always the latest one requested.

    In a served session (a Bokeh document is given) :meth:`request` asks the worker threads
    for a turn when no job of this owner runs or waits there; a job requested meanwhile
    replaces the pending one, and a worker takes the pending job only when it starts, so a
    stale job is dropped, never queued, even while the workers serve other sessions. When the
    running job ends, the next turn (if a job is pending) is asked at once and then the finished
    job's output is handed to ``deliver`` on the document's event loop (the worker hands it to
    the event loop with the thread-safe ``IOLoop.add_callback``, which then schedules it with
    the document, so that it runs under the document's lock; a worker never touches the
    document, whose event hold is not thread-safe): a slider moved
    faster than the updates are computed shows finished updates as they come and always ends
    on its last value, with no wait in between. Without a document (scripts, tests) the job
    runs at once and is delivered before :meth:`request` returns.

    A request with a ``settle`` time (slow updates) starts once no newer request came for that
    long, or :data:`MAX_SETTLE` s after the first waiting one: a burst of key presses or a drag
    then does not first compute a value it leaves at once.

    Flow control (:meth:`expect_ack`, :meth:`acknowledge`): after ``deliver`` sent a frame that
    the browser will acknowledge once painted, the next job starts only when that
    acknowledgement came (or :data:`ACK_TIMEOUT` s passed). The server then never sends frames
    faster than the page can paint them: a drag in five tabs on two cores had queued up to a
    second of stale frames in the browsers (every key press of a drag was drawn, each ~0.1 s of
    the renderer's CPU), and its last value waited behind them.

    Parameters
    ----------
    deliver : callable
        ``deliver(output, error, latest)`` with the job's return value (None if it raised), the
        exception it raised (or None) and whether no newer job is pending.
    doc : bokeh.document.Document, optional
    pool : concurrent.futures.Executor, optional
        Where jobs run (default :func:`executor`).
    loop : tornado.ioloop.IOLoop, optional
        The document's event loop (default: the current one when the first job starts).
    """

    def __init__(self, deliver: Callable, doc=None, pool=None, loop=None):
        self.deliver, self.doc, self.pool, self.loop = deliver, doc, pool, loop
        self._pending: Callable | None = None
        self._lock = threading.Lock()  # guards _pending (a worker takes it when it starts)
        self._requests = 0  # number of requests so far (tags the settle timers)
        self._waiting_since: float | None = None
        self._awaiting: int | None = None  # frame sent and not yet acknowledged as painted
        self.running = False

    @property
    def busy(self) -> bool:
        """True while a job runs or waits."""
        return self.running or self._pending is not None

    def request(self, job: Callable[[], object], settle: float = 0.0) -> None:
        """Compute ``job()`` (a snapshot of what to compute) as soon as possible.

        ``settle``: seconds without a newer request before the job starts (0: at once).
        """
        if self.doc is None:
            out, err = _call(job)
            self.deliver(out, err, True)
            return
        with self._lock:
            self._pending = job
        self._requests += 1
        if self.running or self._awaiting is not None:
            return
        now = time.monotonic()
        waiting = self._waiting_since if self._waiting_since is not None else now
        if settle <= 0 or now - waiting >= MAX_SETTLE:
            self._start()
            return
        self._waiting_since = waiting
        self.doc.add_timeout_callback(partial(self._settled, self._requests), int(1e3 * settle))

    def _settled(self, tag: int) -> None:  # on the event loop
        if tag == self._requests and not self.running and self._pending is not None:
            self._start()

    def expect_ack(self, frame: int) -> None:
        """Hold the next job until :meth:`acknowledge` receives ``frame`` (or a later one), at
        most :data:`ACK_TIMEOUT` s (served documents only; call from ``deliver``)."""
        if self.doc is None:
            return
        self._awaiting = int(frame)
        self.doc.add_timeout_callback(partial(self.acknowledge, frame), int(1e3 * ACK_TIMEOUT))

    def acknowledge(self, frame: int) -> None:
        """The browser painted ``frame`` (on the event loop): the pending job, if any, starts."""
        if self._awaiting is None or int(frame) < self._awaiting:
            return  # an older frame, or a timeout of one already acknowledged
        self._awaiting = None
        if not self.running and self._pending is not None:
            self._start()

    def _start(self) -> None:  # on the event loop
        if self.loop is None:
            self.loop = IOLoop.current()
        self._waiting_since = None
        self.running = True  # a turn asked: the job runs or waits in the pool
        (self.pool or executor()).submit(self._work)

    def _work(self) -> None:  # in a worker thread: the latest job, taken as the turn starts
        with self._lock:
            job, self._pending = self._pending, None
        out, err = _call(job) if job is not None else (None, None)
        self.loop.add_callback(self._finished, out, err)  # thread-safe

    def _finished(self, out, err) -> None:  # on the event loop: run _done with the doc's lock
        with contextlib.suppress(Exception):  # the session may have ended meanwhile
            self.doc.add_next_tick_callback(partial(self._done, out, err))

    def _done(self, out, err) -> None:  # on the event loop
        self.running = False
        with hold(self.doc):  # all changes of one update in one message to the browser
            self.deliver(out, err, self._pending is None)
        if self._pending is not None and self._awaiting is None:
            self._start()  # the next update computes while this one is sent


def _call(job) -> tuple:
    try:
        return job(), None
    except Exception as exc:  # noqa: BLE001 - handed to deliver, which shows or re-raises it
        return None, exc


def _snapshot(settings: param.Parameterized) -> param.Parameterized:
    """A copy of ``settings`` for a worker thread (the widgets may change the original)."""
    values = {n: v for n, v in settings.param.values().items() if n != "name"}
    return type(settings)(**values)


def _compute_frame(settings: param.Parameterized, secondary: bool = True) -> tuple:
    """One update (in a worker thread in a served session): the result and its views' columns
    (``secondary``: with the PDF and peak counts, :func:`explorer.fieldlab_frames.frame_data`)."""
    result = compute(settings)
    with_map = result.map.shape[0] <= RASTERIZE_ABOVE
    return result, frames.frame_data(result, with_map=with_map, secondary=secondary)


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

#: Settings carried over when the kind changes (same meaning in every settings class).
SHARED = (*user_settings(CosmologyParams), "seed")


def _kind_objects(kinds) -> dict[str, str]:
    return {kind_view(k).title: k for k in kinds}


class FieldLab(pn.viewable.Viewer):
    """Field-lab page: a kind selector, widgets over that kind's settings, live views.

    ``settings`` holds the state of the shown kind; every change of a setting recomputes
    :attr:`result` with :func:`compute` (in a served session off the event loop, only the
    latest request: :class:`LatestOnly`), and the views redraw from it in place. Switching
    ``kind`` switches to that kind's settings object (kept per settings class, so each kind
    remembers its settings), carrying over the cosmology and the seed.
    """

    kind = param.Selector(
        default="grf", objects=_kind_objects(FIELD_KINDS), doc="Kind of the map shown."
    )
    settings = param.ClassSelector(
        class_=param.Parameterized, doc="Settings of the shown kind (the page's state)."
    )
    result = param.ClassSelector(
        class_=FieldLabResult, allow_None=True, doc="Latest computed map and statistics."
    )
    style = param.ClassSelector(
        class_=PlotStyle, allow_None=True, doc="Style of the views on screen (rebuilt on change)."
    )
    error = param.String("", doc="Message of the last failed update ('' when it succeeded).")
    large = param.Boolean(False, doc="True when the map is rasterized (size > RASTERIZE_ABOVE).")
    busy = param.Boolean(
        False, doc="True while a slow update (> BUSY_AFTER s) is computed: the page says so."
    )
    particles = param.Boolean(
        False,
        doc="2LPT and PM: also show the particles inside the slab (rasterized by datashader).",
    )

    def __init__(self, settings: param.Parameterized | None = None, doc=None, **params):
        settings = settings or FieldParams()
        super().__init__(settings=settings, kind=settings.kind, **params)
        self._by_class: dict[type, param.Parameterized] = {type(settings): settings}
        for k in FIELD_KINDS:
            cls = KINDS[k].settings_class()
            if cls not in self._by_class:
                self._by_class[cls] = KINDS[k].new_settings()
        self._widgets: dict[int, dict] = {}
        self._pipe: hv.streams.Pipe | None = None  # feeds the rasterized map of large maps
        self._figures: views.FieldFigures | None = None
        self._frame: dict | None = None  # columns of the views for self.result
        self._zoom: tuple | None = None  # (x_range, y_range) of the map view
        self._seconds: dict[tuple, float] = {}  # last update time per (kind, size)
        self._updates = LatestOnly(self._deliver, doc=doc)
        self._frames_sent = 0  # frames of map and P(k) sent to the browser (paint acks)
        # fixed size: a table that changed size re-laid out the whole page (~30 ms per update)
        self._readout_pane = pn.pane.HTML(
            "", width=280, height=READOUT_HEIGHT, margin=(0, 5), styles={"overflow-y": "auto"},
            stylesheets=[views.READOUT_CSS],
        )  # fmt: skip
        self._status = pn.pane.HTML("", height=22, margin=(0, 10), sizing_mode="stretch_width")
        self._particle_box = pn.Column(margin=0)
        for s in self._by_class.values():
            self._watch(s)
        self.param.watch(self._on_kind, "kind")
        self._readout_requests = 0  # tags the delayed readout updates (only the latest runs)
        self._secondary: tuple = (None, None)  # (figures, frame) whose PDF and peaks wait
        self.param.watch(self._request_readout, ["result", "error"])
        self.param.watch(self._show_status, "busy")
        self.param.watch(self._show_particles, ["result", "particles"])
        self.update()

    def _watch(self, settings: param.Parameterized) -> None:
        names = [n for n in user_settings(type(settings)) if n != "kind"]
        settings.param.watch(self._on_setting, names)

    def _on_setting(self, *events) -> None:
        if events and events[0].obj is self.settings:
            self.request_update()

    # -- state -------------------------------------------------------------------------------

    def _settings_for(self, kind: str) -> param.Parameterized:
        if kind == "patch":
            return self._by_class[ExternalMap]
        return self._by_class[KINDS[kind].settings_class()]

    def _on_kind(self, event) -> None:
        new = self._settings_for(event.new)
        old = self.settings
        with param.parameterized.discard_events(new):
            if new is not old:  # carry the cosmology and the seed over
                shared = {n: getattr(old, n) for n in SHARED if n in new.param and n in old.param}
                new.param.update(**shared)
            if "kind" in new.param and not new.param["kind"].constant:
                new.kind = event.new
        self.settings = new
        self.request_update()

    def show_map(self, patch: xr.DataArray, source: str = "") -> None:
        """Show an external patch (:func:`engine.physics.sky.extract_patches` output) as kind "patch"."""
        ext = ExternalMap.from_patch(patch, source=source)
        self._by_class[ExternalMap] = ext
        objects = dict(self.param["kind"].objects)
        objects[kind_view("patch").title] = "patch"
        self.param["kind"].objects = objects
        if self.kind == "patch":
            self.settings = ext
            self.request_update()
        else:
            self.kind = "patch"

    def compute(self) -> FieldLabResult:
        """:func:`compute` for the current settings (pure; does not touch the views)."""
        return compute(self.settings)

    def update(self) -> None:
        """Recompute :attr:`result` from the settings now and push it to the views."""
        out, err = _call(partial(_compute_frame, self.settings))
        self._deliver(out, err, True)

    def request_update(self) -> None:
        """Recompute for the current settings: now without a document, else off the event loop
        (only the latest request). When the last update of this kind and size took longer than
        :data:`BUSY_AFTER`, "updating…" shows at once; longer than :data:`SETTLE_AFTER`, the
        update waits for the settings to settle (:class:`LatestOnly`)."""
        s = self.settings
        key = (s.kind, getattr(s, "size", None))
        last = self._seconds.get(key, math.inf)  # seconds the last such update took
        if last >= BUSY_AFTER and self._updates.doc is not None:
            self.busy = True
        settle = SETTLE if last >= SETTLE_AFTER else 0.0
        # served: the PDF and peak counts are computed once the updates pause (_show_settled)
        job = partial(_compute_frame, _snapshot(s), secondary=self._updates.doc is None)
        self._updates.request(job, settle)

    def _deliver(self, out, err, latest: bool) -> None:
        """Show a finished update (on the event loop); ``latest``: no newer one is pending."""
        if latest:
            self.busy = False
        if out is None and err is None:  # a turn that found no job
            return
        if isinstance(err, ConfigError):
            self.error = str(err)
            return
        if err is not None:
            raise err
        result, frame = out
        self._seconds[(result.settings["kind"], result.settings.get("size"))] = result.seconds
        changes = {"result": result, "error": ""}
        large = result.map.shape[0] > RASTERIZE_ABOVE
        if large != self.large:
            changes["large"] = large
        if result.style != self.style:  # set only when changed: param compares objects by id
            changes["style"] = result.style
            self._zoom = None  # another extent or unit: the old zoom means nothing
        elif large != self.large:
            self._zoom = self._map_ranges() or self._zoom  # the zoom on screen carries over
        self._frame = frame
        self.param.update(**changes)  # a new style or size rebuilds the views from the result
        if len(changes) == 2 and self._figures is not None:
            doc = self._updates.doc
            if doc is None:
                self._figures.show(frame)
            else:  # map and P(k) now; the PDF and peak counts with the readout (_settled)
                self._frames_sent += 1
                self._figures.show(frame, frames.PRIMARY, sequence=self._frames_sent)
                self._updates.expect_ack(self._frames_sent)  # the next once this one is painted
                self._secondary = (self._figures, frame)
            if self._pipe is not None:
                self._pipe.send(result)

    # -- widgets -----------------------------------------------------------------------------

    def widgets(self) -> dict[str, pn.widgets.Widget]:
        """The kind selector and one widget per control of the shown kind (generated from param)."""
        key = id(self.settings)
        if key not in self._widgets:
            view = kind_view(self.settings.kind)
            self._widgets[key] = {c.name: setting_widget(self.settings, c) for c in view.controls}
        kind = pn.widgets.RadioButtonGroup.from_param(
            self.param.kind,
            **label("Field kind"),
            **look("primary", "outline"),
            orientation="vertical",  # five kinds do not fit side by side in the 290 px column
            sizing_mode="stretch_width",
        )
        return {"kind": kind, **self._widgets[key]}

    def _controls(self, settings) -> pn.Column:
        w = self.widgets()
        return pn.Column(*(labelled(x) for x in w.values()), sizing_mode="stretch_width")

    # -- views -------------------------------------------------------------------------------

    def map_view(self, pipe: hv.streams.Pipe, style: PlotStyle) -> hv.DynamicMap:
        """The map of a large result, datashader-rasterized to screen resolution.

        Parameter changes keep the zoom (``framewise=False``); a view made when the map
        crosses the rasterize threshold starts at the zoom of the previous one.
        """
        # imported here: datashader takes ~1 s to import and small maps never need it
        from holoviews.operation.datashader import rasterize

        dmap = rasterize(hv.DynamicMap(lambda data: views.map_element(data), streams=[pipe]))
        zoom = dict(zip(("xlim", "ylim"), self._zoom, strict=True)) if self._zoom else {}
        label_ = style.value_label + (f" ({style.value_unit})" if style.value_unit else "")
        dmap = dmap.opts(
            hv.opts.Image(
                cmap="RdBu_r",
                colorbar=True,
                framewise=False,
                frame_width=380,
                frame_height=380,
                data_aspect=1,
                tools=["hover"],
                title=style.map_title,
                active_tools=["wheel_zoom"],
                colorbar_opts={"title": label_},
                **zoom,
            )
        )
        hv.streams.RangeXY(source=dmap).add_subscriber(self._remember_zoom)
        return dmap

    def _remember_zoom(self, x_range=None, y_range=None) -> None:
        if x_range is not None and y_range is not None:
            self._zoom = (tuple(x_range), tuple(y_range))

    def _map_ranges(self) -> tuple | None:
        """(x_range, y_range) of the Bokeh map figure on screen, if any."""
        fig = self._figures.map if self._figures is not None else None
        if fig is None:
            return None
        return ((fig.x_range.start, fig.x_range.end), (fig.y_range.start, fig.y_range.end))

    def particle_view(self, result: FieldLabResult | None, show: bool):
        """Particles of a 2LPT map's slab as a datashader raster of counts (empty when off)."""
        if not show or result is None or result.settings.get("kind") not in PARTICLE_KINDS:
            return pn.pane.Markdown("", margin=0)
        from holoviews.operation.datashader import rasterize

        dims = views._dims(result.style)
        xy = slab_particles(result.settings)
        extent = result.style.extent
        points = hv.Points(xy, kdims=[dims["x"], dims["y"]])
        raster = rasterize(points, x_range=(0, extent), y_range=(0, extent)).opts(
            cmap="viridis",
            cnorm="eq_hist",
            colorbar=True,
            frame_width=380,
            frame_height=380,
            data_aspect=1,
            title=f"{len(xy):,} particles with line-of-sight coordinate in [0, Δ)",
        )
        return pn.pane.HoloViews(raster, linked_axes=False)

    def _show_particles(self, *_) -> None:
        # redrawn for a new result only while shown (the particles are not computed otherwise)
        if self.particles or len(self._particle_box):
            self._particle_box[:] = (
                [self.particle_view(self.result, True)] if self.particles else []
            )

    def _plots(self, style: PlotStyle, large: bool):
        # built once per style and size; results then only replace the figures' data
        self._figures = fig = views.FieldFigures(style, with_map=not large, zoom=self._zoom)
        fig.on_painted(self._updates.acknowledge)
        if self._frame is not None:
            fig.show(frames.complete_frame(self._frame, self.result))
        panes = fig.panes()
        self._pipe = None
        if large:  # one fresh pipe per view: a detached view stops receiving results
            self._pipe = hv.streams.Pipe(data=self.result)
            panes["map"] = pn.pane.HoloViews(self.map_view(self._pipe, style), linked_axes=False)
        extra = []
        if style is not None and style.kind in PARTICLE_KINDS:
            toggle = pn.widgets.Checkbox.from_param(
                self.param.particles, name="Show the particles in the slab"
            )
            self._particle_box[:] = []
            self._show_particles()
            extra = [toggle, self._particle_box]
        return pn.Row(
            pn.Column(panes["map"], *extra, panes["peaks"]),
            pn.Column(self._status, panes["power"], panes["pdf"]),
        )

    def _request_readout(self, *_) -> None:
        """After every new result or error: the readout, PDF and peak counts follow once the
        updates pause for :data:`READOUT_AFTER` s (at once without a document, for an error or
        for the first readout)."""
        doc = self._updates.doc
        if doc is None or self.error or not self._readout_pane.object:
            self._show_readout()
            if doc is None:
                return
        self._readout_requests += 1
        tag = self._readout_requests
        doc.add_timeout_callback(partial(self._show_settled, tag), int(1e3 * READOUT_AFTER))

    def _show_settled(self, tag: int) -> None:
        """The views that follow once the updates pause (on the event loop, :data:`READOUT_AFTER`
        s after the last result): their numbers — pixel PDF, σ, skewness, peak counts — are
        computed in a worker thread (10–25 ms for a 256² map, which on the event loop held up
        the frames of every other session of the server; ``--profile-server``), then shown by
        :meth:`_apply_settled`."""
        if tag != self._readout_requests:  # a newer result brings its own
            return
        result, doc = self.result, self._updates.doc
        loop = self._updates.loop or IOLoop.current()

        def work() -> None:  # in a worker thread
            out, err = _call(partial(frames.secondary_data, result))
            with contextlib.suppress(Exception):  # the session may have ended meanwhile
                loop.add_callback(
                    doc.add_next_tick_callback, partial(self._apply_settled, tag, out, err)
                )

        (self._updates.pool or executor("settled")).submit(work)

    def _apply_settled(self, tag: int, secondary: dict | None, err) -> None:
        """Show the readout and the PDF and peak counts (``secondary``,
        :func:`explorer.fieldlab_frames.secondary_data` of the result on screen) in one message
        to the browser: sent one by one (readout text, three sources, four axis bounds) they
        made the page lay out and paint four times, ~50 ms of the renderer's CPU per step
        (Chromium trace). Skipped when a newer result came meanwhile (it brings its own)."""
        if tag != self._readout_requests:
            return
        if err is not None:
            raise err
        with hold(self._updates.doc):
            self._show_readout()
            figures, frame = self._secondary
            # only the frame still on screen, on the figures it was for
            if figures is not None and figures is self._figures and frame is self._frame:
                if "pdf" not in frame:
                    frame.update(secondary)
                figures.show(frame, frames.SECONDARY)

    def _show_readout(self, *_) -> None:
        # the settings of the map on screen (they lag the widgets while an update is pending)
        self._readout_pane.object = views.parameter_table(self.result, self.error)

    def _show_status(self, *_) -> None:
        self._status.object = "<span style='color:#b35806'>⏳ updating…</span>" if self.busy else ""

    def _about(self, style: PlotStyle):
        text = kind_view(style.kind).explanation if style else ""
        return pn.pane.Markdown(text, sizing_mode="stretch_width", max_width=1050)

    def __panel__(self):
        controls = pn.Column(
            "### Parameters",
            pn.bind(self._controls, self.param.settings),
            pn.layout.Divider(),
            self._readout_pane,
            width=290,
        )
        plots = pn.bind(self._plots, self.param.style, self.param.large)
        about = pn.bind(self._about, self.param.style)
        return pn.Row(controls, pn.Column(plots, about))
