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
* :mod:`explorer.fieldlab_views`: HoloViews elements and views of a result, the readout table,
  widgets generated from the engine's param definitions;
* this module: the page state :class:`FieldLab`.

:class:`FieldLab` holds one settings object per settings class (grf and lognormal share theirs),
watches it, recomputes with :func:`compute` and feeds the result through an ``hv.streams.Pipe``
into ``hv.DynamicMap`` views, so the user's zoom survives parameter changes; the views are rebuilt
only when the style (kind, units, extent, ranges) changes. Slider moves are coalesced
(:class:`Coalescer`): the view follows a moving slider live but never queues more than one update.

Units: lengths in comoving Mpc/h, k in h/Mpc, 2D P(k) in (Mpc/h)², δ dimensionless; κ maps in
arcmin with C_ℓ in sr, plotted as ℓ(ℓ+1)C_ℓ/2π (dimensionless for κ, map unit² otherwise).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import holoviews as hv
import panel as pn
import param
import xarray as xr

from engine.kinds import FIELD_KINDS, KINDS
from engine.params import ConfigError, CosmologyParams, FieldParams, user_settings
from explorer import fieldlab_views as views
from explorer.fieldlab_kinds import compute, kind_view
from explorer.fieldlab_measure import ExternalMap, FieldLabResult, PlotStyle, slab_particles
from explorer.fieldlab_views import labelled, setting_widget
from explorer.widgets import label, look

#: Maps with more pixels per side than this are rasterized by datashader to the screen.
RASTERIZE_ABOVE = 256


# ---------------------------------------------------------------------------------------------
# Coalescing of updates
# ---------------------------------------------------------------------------------------------


class Coalescer:
    """Run ``func`` after a burst of requests, at most one pending run at a time.

    In a served session (a Bokeh document is given) :meth:`request` schedules ``func`` on the
    document's event loop unless a run is already pending; requests arriving meanwhile are folded
    into it. The wait before a run is ``delay`` seconds, or as long as the previous run took if
    that was longer, so the server spends at most about half its time redrawing and keeps
    reading slider messages in between: a slider dragged faster than the view can redraw updates
    the view live but never piles up work. Without a document (scripts, tests) ``func`` runs at
    once.
    """

    def __init__(self, func: Callable[[], None], doc=None, delay: float = 0.1):
        self.func, self.doc, self.delay = func, doc, delay
        self._pending = False
        self._last_run = 0.0  # seconds the previous run took

    def request(self, *_events) -> None:
        """Ask for a run of ``func`` (extra arguments, e.g. param events, are ignored)."""
        if self.doc is None:
            self.func()
            return
        if not self._pending:
            self._pending = True
            wait = max(self.delay, self._last_run)
            self.doc.add_timeout_callback(self._run, int(1000 * wait))

    def _run(self) -> None:
        self._pending = False
        t0 = time.perf_counter()
        try:
            self.func()
        finally:
            self._last_run = time.perf_counter() - t0


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
    :attr:`result` with :func:`compute` (coalesced in a served session), and the views redraw
    from it. Switching ``kind`` switches to that kind's settings object (kept per settings class,
    so each kind remembers its settings), carrying over the cosmology and the seed.
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
    particles = param.Boolean(
        False, doc="2LPT: also show the particles inside the slab (rasterized by datashader)."
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
        self._pipe: hv.streams.Pipe | None = None
        self._zoom: tuple | None = None  # (x_range, y_range) of the map view
        self._coalescer = Coalescer(self.update, doc=doc)
        for s in self._by_class.values():
            self._watch(s)
        self.param.watch(self._on_kind, "kind")
        self.update()

    def _watch(self, settings: param.Parameterized) -> None:
        names = [n for n in user_settings(type(settings)) if n != "kind"]
        settings.param.watch(self._on_setting, names)

    def _on_setting(self, *events) -> None:
        if events and events[0].obj is self.settings:
            self._coalescer.request()

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
        self._coalescer.request()

    def show_map(self, patch: xr.DataArray, source: str = "") -> None:
        """Show an external patch (:func:`engine.physics.sky.extract_patches` output) as kind "patch"."""
        ext = ExternalMap.from_patch(patch, source=source)
        self._by_class[ExternalMap] = ext
        objects = dict(self.param["kind"].objects)
        objects[kind_view("patch").title] = "patch"
        self.param["kind"].objects = objects
        if self.kind == "patch":
            self.settings = ext
            self._coalescer.request()
        else:
            self.kind = "patch"

    def compute(self) -> FieldLabResult:
        """:func:`compute` for the current settings (pure; does not touch the views)."""
        return compute(self.settings)

    def update(self) -> None:
        """Recompute :attr:`result` from the settings and push it to the views."""
        try:
            result = self.compute()
        except ConfigError as exc:
            self.error = str(exc)
            return
        changes = {"result": result, "error": ""}
        large = result.map.shape[0] > RASTERIZE_ABOVE
        if large != self.large:
            changes["large"] = large
        if result.style != self.style:  # set only when changed: param compares objects by id
            changes["style"] = result.style
            self._zoom = None  # another extent or unit: the old zoom means nothing
        self.param.update(**changes)  # a new style or size rebuilds the views from the result
        if len(changes) == 2 and self._pipe is not None:
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
            sizing_mode="stretch_width",
        )
        return {"kind": kind, **self._widgets[key]}

    def _controls(self, settings) -> pn.Column:
        w = self.widgets()
        return pn.Column(*(labelled(x) for x in w.values()), sizing_mode="stretch_width")

    # -- views -------------------------------------------------------------------------------

    def map_view(self, pipe: hv.streams.Pipe, style: PlotStyle, large: bool) -> hv.DynamicMap:
        """The map; datashader-rasterized to screen resolution when ``large``.

        Parameter changes keep the zoom (``framewise=False``); a new view made when the map
        crosses the rasterize threshold starts at the zoom of the previous one.
        """
        dmap = hv.DynamicMap(lambda data: views.map_element(data), streams=[pipe])
        if large:
            # imported here: datashader takes ~1 s to import and small maps never need it
            from holoviews.operation.datashader import rasterize

            dmap = rasterize(dmap)
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

    power_view = staticmethod(views.power_view)

    pdf_view = staticmethod(views.pdf_view)

    peaks_view = staticmethod(views.peaks_view)

    def particle_view(self, result: FieldLabResult | None, show: bool):
        """Particles of a 2LPT map's slab as a datashader raster of counts (empty when off)."""
        if not show or result is None or result.settings.get("kind") != "2lpt":
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

    def _plots(self, style: PlotStyle, large: bool):
        # one fresh pipe per set of views: detached views stop receiving results
        self._pipe = pipe = hv.streams.Pipe(data=self.result)
        extra = []
        if style is not None and style.kind == "2lpt":
            toggle = pn.widgets.Checkbox.from_param(
                self.param.particles, name="Show the particles in the slab"
            )
            extra = [toggle, pn.bind(self.particle_view, self.param.result, self.param.particles)]
        return pn.Row(
            pn.Column(
                pn.pane.HoloViews(self.map_view(pipe, style, large), linked_axes=False),
                *extra,
                pn.pane.HoloViews(self.peaks_view(pipe, style), linked_axes=False),
            ),
            pn.Column(
                pn.pane.HoloViews(self.power_view(pipe, style), linked_axes=False),
                pn.pane.HoloViews(self.pdf_view(pipe, style), linked_axes=False),
            ),
        )

    @param.depends("result", "error")
    def _readout(self):
        # the settings of the map on screen (they lag the widgets while an update is pending)
        text = views.parameter_table(self.result) if self.result else ""
        if self.error:
            text = f"**⚠ {self.error}** (showing the last good map)\n\n" + text
        return pn.pane.Markdown(text, sizing_mode="stretch_width", margin=(0, 5))

    def _about(self, style: PlotStyle):
        text = kind_view(style.kind).explanation if style else ""
        return pn.pane.Markdown(text, sizing_mode="stretch_width", max_width=1050)

    def __panel__(self):
        controls = pn.Column(
            "### Parameters",
            pn.bind(self._controls, self.param.settings),
            pn.layout.Divider(),
            self._readout,
            width=290,
        )
        plots = pn.bind(self._plots, self.param.style, self.param.large)
        about = pn.bind(self._about, self.param.style)
        return pn.Row(controls, pn.Column(plots, about))
