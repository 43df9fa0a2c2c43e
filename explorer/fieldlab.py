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
* this module: the page state :class:`FieldLab` (its updates run in
  :class:`explorer.latest.LatestOnly`).

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

import math
from functools import partial

import holoviews as hv
import panel as pn
import param
import xarray as xr

from engine.kinds import FIELD_KINDS, KINDS
from engine.params import ConfigError, CosmologyParams, FieldParams, user_settings
from explorer import fieldlab_frames as frames
from explorer import fieldlab_views as views
from explorer.fieldlab_kinds import compute, kind_view
from explorer.fieldlab_measure import ExternalMap, FieldLabResult, PlotStyle, slab_particles
from explorer.fieldlab_views import labelled, setting_widget
from explorer.latest import LatestOnly, capture, executor
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
#: most :data:`explorer.latest.MAX_SETTLE` s after a change; faster ones start at once.
SETTLE_AFTER = 0.25
SETTLE = 0.06


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
        # the views that follow once the updates pause, computed in a thread of their own
        self._settled = LatestOnly(
            self._deliver_settled, doc=doc, pool=executor("settled"), idle=True
        )
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
        out, err = capture(partial(_compute_frame, self.settings))
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
        computed by a :class:`~explorer.latest.LatestOnly` of their own in the one-thread
        ``"settled"`` pool (10–25 ms for a 256² map, which on the event loop held up the frames
        of every other session of the server, ``--profile-server``; in the shared ``"updates"``
        worker they queued before other sessions' maps), at idle priority (once no session's
        live update is computing or being painted, at most ``IDLE_WAIT`` s later), then shown
        by :meth:`_deliver_settled`."""
        if tag != self._readout_requests:  # a newer result brings its own
            return
        result = self.result
        self._settled.request(lambda: (tag, frames.secondary_data(result)))

    def _deliver_settled(self, out, err, latest: bool) -> None:
        """Show the readout and the PDF and peak counts (``out``: the tag of the result and
        :func:`explorer.fieldlab_frames.secondary_data` of it) in one message to the browser
        (:class:`~explorer.latest.LatestOnly` holds the document's events): sent one by one
        (readout text, three sources, four axis bounds) they made the page lay out and paint
        four times, ~50 ms of the renderer's CPU per step (Chromium trace). Skipped when a
        newer result came meanwhile (it brings its own)."""
        if err is not None:
            raise err
        if out is None or out[0] != self._readout_requests:
            return
        self._show_readout()
        figures, frame = self._secondary
        # only the frame still on screen, on the figures it was for
        if figures is not None and figures is self._figures and frame is self._frame:
            if "pdf" not in frame:
                frame.update(out[1])
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
