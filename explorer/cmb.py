"""CMB page: pick r, noise, beam and seed; see the lensed, delensed and true B-mode maps, the
residual, the BB spectra before and after delensing against theory and the baselines, and
A_res and the fitted r with its error, live from a shipped delensing network.

Four modules, the three of the Lensing page and the data:

* :mod:`explorer.cmb_compute`: the pure update, stage by stage (:func:`~explorer.cmb_compute.
  updates`: the sky, the network on two noise realisations, the true-φ template, the measured
  quadratic estimator; spectra,
  A_res, r fits, the QE forecast) and the cache of results;
* :mod:`explorer.cmb_data`: the delensers (found, described, loaded) and the caches of skies
  and of stage timings;
* :mod:`explorer.cmb_views`: the Mollweide maps, the spectra, the readout, the widgets;
* this module: the page state :class:`CMBPage`.

Settings. The sky's settings are an :class:`engine.physics.cmb.CMBParams` (one definition of
r, noise, beam and seed: bounds, defaults and docs come from the engine; the page adds slider
ranges as soft bounds, :data:`explorer.cmb_compute.PAGE_RANGES`). Its ``nside`` follows the
delenser: the network only takes skies of its training nside; without one the page uses
``nside_without_delenser`` (default :data:`~explorer.cmb_compute.DEFAULT_NSIDE`, a sky in a few
seconds).

The delenser. The first delensing run (task ``delensing`` with a checkpoint) in
``assets/models/`` (``$EXPLORER_EXAMPLES_DIR``; the shipped ``delens512`` first) or the runs
folder, chosen in a selector; its training skies' r, noise and beam are the page's starting
settings. It is loaded once per server process, in the worker thread of the first update that
needs it. Without one the page says in one line how to train it and shows the template and QE
baselines and the QE forecast.

Updates. Every change is computed off the event loop, on the page's own worker threads
(:func:`executor`, not the field lab's: a minute-long update never delays another page or
session), from a snapshot of the settings, only ever the latest
(:class:`explorer.latest.LatestOnly`); each stage of the update is one job, so the sky shows
while the delensers still run, and a newer change drops the rest of the stages. The page says
which stage runs and how long it is expected to take (measured times), and caches every result
per settings in the server process: settings seen before show at once.

Units: B in µK, D_ℓ in µK², noise in µK-arcmin, beam FWHM in arcmin.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import panel as pn
import param

from engine.params import ConfigError
from engine.physics.cmb import CMBParams
from explorer.cmb_compute import (
    DEFAULT_NSIDE,
    PAGE_RANGES,
    PAGE_SETTINGS,
    CMBResult,
    cached_result,
    one_line,
    page_settings,
    snapshot,
    updates,
)
from explorer.cmb_data import DelenserInfo, iterated_calibration, list_delensers, result_key
from explorer.cmb_views import (
    ABOUT,
    READOUT_CSS,
    CMBFigures,
    MapFrame,
    cmb_widgets,
    map_signature,
    no_delenser_text,
    readout_html,
    stage_line,
    timing_html,
    wait_text,
)
from explorer.latest import LatestOnly
from explorer.training import default_examples_root, default_runs_root
from explorer.widgets import label, look

log = logging.getLogger(__name__)

#: Worker threads of CMB updates, shared by the sessions of the server (each session has at
#: most one job there at a time; every stage of an update is a job, so sessions take turns
#: stage by stage); ``$EXPLORER_CMB_WORKERS`` overrides it.
WORKERS = int(os.environ.get("EXPLORER_CMB_WORKERS") or min(4, max(1, (os.cpu_count() or 2) // 2)))
_executor: ThreadPoolExecutor | None = None
#: Seconds without a newer change before an update starts (a burst of key presses in the seed
#: box computes its last value only).
SETTLE = 0.3
#: Label of the "no network" choice of the delenser selector.
NO_NETWORK = "none (template baseline only)"


def executor() -> ThreadPoolExecutor:
    """The process-wide pool of the CMB page's jobs (made on first use)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="cmb")
    return _executor


def _advance(chain) -> CMBResult | None:
    """The next stage of an update (in a worker thread): its result, or None when done."""
    return next(chain, None)


class CMBPage(pn.viewable.Viewer):
    """CMB page: widgets over a :class:`~engine.physics.cmb.CMBParams`, the delenser selector,
    the four Mollweide B maps, the BB spectra and the A_res / r readout (module docstring).

    Parameters
    ----------
    runs_root, examples_root : str or Path, optional
        Folders searched for delensing runs (defaults of the Training page: ``runs/`` and
        ``assets/models/``).
    doc : bokeh.document.Document, optional
        The session's document (served pages): updates then run in worker threads.
    visible : bool
        Whether the page is shown; the folders are searched and the first sky computed only
        once it is.
    nside_without_delenser : int
        nside of the sky without a delensing network.
    """

    settings = param.ClassSelector(class_=CMBParams, doc="The sky's settings.")
    delenser = param.Selector(
        default="", objects={NO_NETWORK: ""},
        doc="Run directory of the delensing network ('': template baseline only).",
    )  # fmt: skip
    method = param.Selector(
        default="network", objects=["network", "template", "qe", "qe_it"],
        doc="Which delensed map the map panels show.",
    )  # fmt: skip
    result = param.ClassSelector(
        class_=CMBResult, default=None, allow_None=True, doc="The result shown."
    )
    error = param.String("", doc="One line about the last failed update ('' when none).")
    busy = param.Boolean(False, doc="An update is being computed.")
    visible = param.Boolean(True, doc="The page is shown: it computes only while it is.")
    runs_root = param.String("", doc="Folder of the user's runs ('' none).")
    examples_root = param.String("", doc="Folder of the shipped models ('' none).")
    nside_without_delenser = param.Integer(
        DEFAULT_NSIDE, bounds=(16, 2048), doc="nside of the sky without a delensing network."
    )

    def __init__(self, runs_root=None, examples_root=None, doc=None, **params):
        root = runs_root if runs_root is not None else default_runs_root()
        examples = examples_root if examples_root is not None else default_examples_root()
        nside = int(params.get("nside_without_delenser", DEFAULT_NSIDE))
        params.setdefault("settings", page_settings(nside))
        super().__init__(runs_root=str(root or ""), examples_root=str(examples or ""), **params)
        for name, rng in PAGE_RANGES.items():  # slider ranges of this page's settings object
            self.settings.param[name].softbounds = rng
        self._doc = doc
        self.delensers: list[DelenserInfo] | None = None  # listed once shown
        self._updates = LatestOnly(self._deliver, doc=doc, pool=executor())
        self._chain = None  # (key, generator) of the update in progress
        self._key = None
        self._cached = False  # the result shown came from the cache
        self.figures = CMBFigures()
        self._status = pn.pane.HTML("", height=24, margin=(0, 10), sizing_mode="stretch_width")
        self._readout = pn.pane.HTML("", width=460, margin=(0, 5), stylesheets=[READOUT_CSS])
        self._hint = pn.pane.Markdown("", margin=(0, 5), sizing_mode="stretch_width")
        self._wait = pn.pane.Markdown("", margin=(0, 5), sizing_mode="stretch_width")
        self._view = None
        self.settings.param.watch(self._on_setting, [*PAGE_SETTINGS, "nside", "lmax_unlensed"])
        if self.visible:
            self.refresh()

    # -- state -------------------------------------------------------------------------------

    def _on_setting(self, *_events) -> None:
        self.request_update()

    @param.depends("visible", watch=True)
    def _shown(self) -> None:
        if self.visible and self.delensers is None:
            self.refresh()

    def refresh(self) -> None:
        """Search the folders for delensing networks again (the first one is chosen when they
        are first listed or when the chosen one vanished), and recompute."""
        first_listing = self.delensers is None
        self.delensers = list_delensers(self.examples_root, self.runs_root)
        names = {NO_NETWORK: ""} | {d.label: d.path for d in self.delensers}
        if names != self.param.delenser.names:
            self.param.delenser.objects = names
        if first_listing or self.delenser not in names.values():
            first = self.delensers[0].path if self.delensers else ""
            if first != self.delenser:
                with param.parameterized.discard_events(self):
                    self.delenser = first
            self._use_delenser()
        self.request_update()

    def delenser_info(self) -> DelenserInfo | None:
        """The chosen delenser's :class:`~explorer.cmb_data.DelenserInfo` (None: none)."""
        if not self.delenser:
            return None
        return next((d for d in self.delensers or [] if d.path == self.delenser), None)

    @param.depends("delenser", watch=True)
    def _delenser_chosen(self) -> None:
        self._use_delenser()
        self.request_update()

    def _use_delenser(self) -> None:
        """The sky's nside follows the newly chosen delenser, and r, noise and beam start at
        those of its training skies (within the settings' bounds); the hint and the expected
        wait follow too."""
        info = self.delenser_info()
        values = {"nside": info.nside if info else int(self.nside_without_delenser)}
        if info is not None:
            for name in ("r", "noise", "beam"):
                v = info.sky.get(name)
                lo, hi = CMBParams.param[name].bounds
                if isinstance(v, int | float) and lo <= float(v) <= hi:
                    values[name] = float(v)
        with param.parameterized.discard_events(self.settings):
            self.settings.param.update(**values)
        self._hint.object = "" if info else no_delenser_text(values["nside"])
        self._wait.object = wait_text(
            values["nside"], info is not None,
            iterated_calibration(values["nside"], self.settings.noise, self.settings.beam)
            is not None,
        )  # fmt: skip

    def request_update(self) -> None:
        """Recompute for the current settings (while shown): now without a document, else off
        the event loop (only the latest request); a complete result from the cache at once."""
        if not self.visible or self.delensers is None:
            return
        settings, info = snapshot(self.settings), self.delenser_info()
        self._key = key = result_key(settings, info)
        cached = cached_result(key)
        if cached is not None and cached.complete:
            self._chain, self._cached = None, True
            self._updates.request(lambda: cached)
            return
        self._cached = False
        chain = updates(settings, info)
        self._chain = (key, chain)
        self.busy = True
        self._status.object = stage_line(None, "sky", settings.nside, info is not None)
        self._updates.request(partial(_advance, chain), settle=SETTLE)

    def _deliver(self, out, err, latest: bool) -> None:
        """Show a finished stage (on the event loop) and start the next one if this update is
        still the latest."""
        if err is not None:
            self._chain = None
            self.error = one_line(err)
            if not isinstance(err, ConfigError):
                log.error("CMB page update failed", exc_info=err)
            self.busy = False
            self._status.object = f"<span style='color:#b30000'>⚠ {self.error}</span>"
            self._readout.object = readout_html(self.result, self.error, self.delenser_info())
            return
        if out is None:
            return
        self.param.update(result=out, error="")
        self._show()
        chain = self._chain
        if not out.complete and latest and chain is not None and chain[0] == self._key:
            nside, network = out.settings["nside"], bool(out.delenser)
            self._status.object = stage_line(out, out.next_stage, nside, network)
            self._updates.request(partial(_advance, chain[1]))
            return
        if latest:
            self.busy = False
            self._chain = None
            self._status.object = timing_html(out, cached=self._cached)
            self._wait.object = wait_text(
                out.settings["nside"], bool(out.delenser), "qe_it" in out.stages
            )

    @param.depends("method", watch=True)
    def _show(self) -> None:
        """Send the result and the chosen delensed map to the views (the maps only when what
        they show changed: :func:`~explorer.cmb_views.map_signature`)."""
        frame = MapFrame(self.result, self.method)
        if map_signature(frame) != map_signature(self.figures.frame):
            self.figures.show(frame)
        elif self.result is not self.figures.frame.result:
            self.figures.frame = frame
            self.figures.show_spectra(self.result)
        self._readout.object = readout_html(self.result, self.error, self.delenser_info())

    # -- view --------------------------------------------------------------------------------

    def _controls(self) -> pn.Column:
        widgets = cmb_widgets(self.settings)
        choose = pn.widgets.Select.from_param(
            self.param.delenser, **label("Delensing network"), sizing_mode="stretch_width"
        )
        refresh = pn.widgets.Button(**label("⟳"), **look("light"), width=40)
        refresh.on_click(lambda _e: self.refresh())
        method = pn.widgets.RadioButtonGroup.from_param(
            self.param.method, **look("primary", "outline"), sizing_mode="stretch_width"
        )
        return pn.Column(
            "### Sky and instrument",
            *widgets.values(),
            self._nside_line,
            "### Delenser",
            pn.Row(choose, refresh, sizing_mode="stretch_width"),
            self._hint,
            pn.pane.HTML("<label>Delensed map shown</label>", margin=(5, 10, 0, 10)),
            method,
            self._wait,
            width=300,
        )  # fmt: skip

    @param.depends("settings.nside", "delenser")
    def _nside_line(self):
        nside = self.settings.nside
        why = "the network's" if self.delenser else "no network: a lighter sky"
        return pn.pane.HTML(
            f"<span style='color:#444'>HEALPix nside {nside}, ℓ ≤ {3 * nside - 1} ({why})</span>",
            margin=(0, 10),
        )

    def __panel__(self):
        """The page, built once."""
        if self._view is None:
            maps = pn.Column(
                *(
                    pn.Row(*(pn.pane.Bokeh(f, margin=(0, 5)) for f in row))
                    for row in self.figures.rows
                )
            )
            spectra = pn.pane.Bokeh(self.figures.spectra)
            about = pn.pane.Markdown(ABOUT, sizing_mode="stretch_width", max_width=1050)
            main = pn.Column(
                self._status, maps, pn.Row(spectra, self._readout), about,
                sizing_mode="stretch_width",
            )  # fmt: skip
            self._view = pn.Row(self._controls(), main, sizing_mode="stretch_width")
        return self._view
