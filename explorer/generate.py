"""Generate page: sample a trained map emulator (conditional GAN or diffusion model) at chosen
parameters and compare its maps with the simulator's.

Generators are the shipped ones (``assets/models/<name>/``, or ``$EXPLORER_EXAMPLES_DIR``) and
the user's runs (``runs/``, or ``$EXPLORER_RUNS_DIR``) whose ``config.json`` names the task
``gan`` or ``diffusion`` and that hold a checkpoint (:func:`list_generators`: only that JSON is
read, no checkpoint). The chosen one is loaded once per server process
(:func:`load_emulator`, :class:`engine.evaluation.sampling.Emulator`); its parameter names and
training box make the sliders, and a diffusion model gets a sampling-steps slider.

*Sample* computes, off the event loop in a served session (:class:`explorer.latest.LatestOnly`
on a pool of its own, so a diffusion model sampling for seconds never holds up the field lab or
other sessions), :func:`compute`: ``count`` generated maps; as many as ``sim_count`` simulator
maps of the kind the generator was trained on at the same parameters
(:meth:`engine.kinds.Kind.generate`, cached per parameter point, :data:`SIM_CACHE_SIZE`), or
none, with the reason, when the training maps were not one of the project's kinds (CAMELS and
other datasets); and the metrics of :mod:`engine.evaluation.emulator` (P(k) ratio with the band
of a perfect generator, r(k) of the channels, pixel PDFs, FID and KID on summary features
against the real–real floor), with the measured time per map of both. The views are drawn by
:mod:`explorer.generate_views`. A new *Sample* supersedes one still running (it stops at its
next progress call); progress and errors show as one line on the page.

Units: parameters are dimensionless (Ω_m, σ8, ...); lengths in the kind's unit (Mpc/h, arcmin);
times in seconds per map.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import panel as pn
import param

from engine.evaluation.sampling import Emulator
from engine.params import ConfigError
from engine.tasks.diffusion_sampling import SAMPLER_LABELS, SAMPLERS
from explorer.generate_compute import (  # noqa: F401 - the page's computation, re-exported
    EMULATOR_CACHE_SIZE,
    MAX_COUNT,
    SIM_CACHE_SIZE,
    SIM_COUNT,
    _geometry,
    _pdf_entry,
    compute,
    default_value,
    generator_task,
    list_generators,
    load_emulator,
    score,
    simulate,
    simulator_reason,
)
from explorer.generate_views import (
    GenerateResult,
    channel_label,
    result_views,
)
from explorer.latest import LatestOnly
from explorer.report import param_label
from explorer.training import default_examples_root, default_runs_root
from explorer.widgets import label, look

#: Seconds between two progress messages sent to the page.
PROGRESS_EVERY = 0.2
#: What the page says when no generator exists.
NO_GENERATOR = """\
**No generator yet.** Train a small one (a few seconds on a CPU) and press ⟳:

    python -m engine train --preset gan_smoke

(or `--preset diffusion_smoke`; `gan32` / `diffusion32` train the shipped ones). Runs of task
`gan` or `diffusion` in the runs folder and shipped models in `assets/models/` are listed here.
"""

#: Worker threads of Sample jobs, shared by the sessions of the server (each session has at most
#: one job there at a time); ``$EXPLORER_GENERATE_WORKERS`` overrides it.
WORKERS = int(os.environ.get("EXPLORER_GENERATE_WORKERS") or 1)
_executor: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    """The process-wide pool of the Generate page's jobs (made on first use; not the field
    lab's, so a slow sample never delays a field-lab update)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="generate")
    return _executor


class Superseded(Exception):
    """Raised in a running Sample job when a newer one was requested (it is dropped)."""


def _tagged(tag: int, work: Callable[[], GenerateResult]) -> tuple[int, GenerateResult]:
    """``(tag, work())``: a Sample job's result with the request it answers."""
    return tag, work()


def one_line(exc: BaseException) -> str:
    """One line about an exception: the message of a ConfigError, else ``Type: message``."""
    text = str(exc).strip()
    msg = text.splitlines()[0] if text else ""
    if isinstance(exc, ConfigError):
        return msg or "bad settings"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Generators: listing and loading
# ---------------------------------------------------------------------------------------------


class GeneratePage(pn.viewable.Viewer):
    """Generate page: pick a generator, set its parameters, *Sample*, compare with the simulator.

    ``generator`` holds the run directory of the chosen generator; choosing one loads it
    (:func:`load_emulator`, while :attr:`visible`) and rebuilds the parameter sliders from its
    names and training box. :meth:`sample` computes :func:`compute` (in a served session off
    the event loop, only the latest request) into :attr:`result`; the views follow ``result``
    and ``channel``.

    Parameters
    ----------
    runs_root, examples_root : str or Path, optional
        Folders of the user's runs and of the shipped models (defaults of the Training page).
    doc : bokeh.document.Document, optional
        The session's document (served pages): Sample then runs in a worker thread.
    """

    runs_root = param.String(
        doc="Folder of the user's runs (default: $EXPLORER_RUNS_DIR or runs/)."
    )
    examples_root = param.String("", doc="Folder of the shipped models ('': none).")
    generator = param.Selector(
        default=None, objects=[], allow_None=True, doc="Run directory of the chosen generator."
    )
    count = param.Integer(16, bounds=(1, MAX_COUNT), doc="Generated maps per Sample.")
    sim_count = param.Integer(
        SIM_COUNT,
        bounds=(0, MAX_COUNT),
        doc="Simulator maps per Sample at the same parameters (at most the generated count; "
        "cached per parameter point). Particle-mesh slabs take ~0.5 s each on a CPU.",
    )
    seed = param.Integer(0, bounds=(0, 2**31 - 1), doc="Seed of the generator and the simulator.")
    steps = param.Integer(
        50,
        bounds=(1, 1000),
        doc="Diffusion sampling steps (a diffusion model only; its sample_steps when chosen).",
    )
    sampler = param.Selector(
        default="ddim",
        objects=list(SAMPLERS),
        doc="Diffusion sampler (a diffusion model only; its own setting when chosen): DDIM, "
        "DPM-Solver++ (dpm) or SDE-DPM-Solver++ (sde).",
    )
    theta = param.Dict(default={}, doc="{parameter: value} of the next Sample.")
    channel = param.Selector(default=0, objects=[0], doc="Channel shown (index).")
    result = param.ClassSelector(
        class_=GenerateResult, default=None, allow_None=True, doc="The last Sample's result."
    )
    error = param.String("", doc="One line about the last failure ('' when none).")
    busy = param.Boolean(False, doc="A Sample is being computed.")
    progress = param.String("", doc="One line about the running Sample's stage.")
    info = param.String("", doc="Markdown about the chosen generator.")
    visible = param.Boolean(True, doc="The page is shown: generators load only while it is.")

    def __init__(self, runs_root=None, examples_root=None, doc=None, **params):
        root = str(runs_root if runs_root is not None else default_runs_root())
        examples = examples_root if examples_root is not None else default_examples_root()
        super().__init__(runs_root=root, examples_root=str(examples or ""), **params)
        self.emulator: Emulator | None = None
        self._loaded_for: str | None = None
        self._doc = doc
        self._loop = None
        self._requests = 0
        self._last_progress = 0.0
        self._updates = LatestOnly(self._deliver, doc=doc, pool=executor())
        self._slider_box = pn.Column(sizing_mode="stretch_width", margin=0)
        self._steps_widget = pn.widgets.IntSlider.from_param(
            self.param.steps, **label("diffusion steps"), start=1, end=1000, visible=False,
            sizing_mode="stretch_width",
        )  # fmt: skip
        self._sampler_widget = pn.widgets.RadioButtonGroup.from_param(
            self.param.sampler, name="diffusion sampler", options={v: k for k, v in SAMPLER_LABELS.items()},
            visible=False, sizing_mode="stretch_width",
        )  # fmt: skip
        self._view = None
        self.refresh_generators()

    # -- generators --------------------------------------------------------------------------

    def refresh_generators(self) -> None:
        """Re-list the generators; choose the first when none (or a vanished one) is chosen."""
        names = list_generators(self.runs_root, self.examples_root)
        if names != self.param.generator.names:
            self.param.generator.objects = names
        if self.generator not in names.values():
            self.generator = next(iter(names.values()), None)
        elif self.generator is not None and self._loaded_for != self.generator:
            self._load()

    @param.depends("generator", "visible", watch=True)
    def _load(self) -> None:
        """Load the chosen generator (while visible) and make its sliders."""
        if not self.visible or self.generator == self._loaded_for:
            return
        self._loaded_for = self.generator
        self._requests += 1  # a Sample of the previous generator still running is dropped
        self.emulator = None
        self.result = None
        if self.generator is None:
            self.param.update(theta={}, info="", error="")
            self._slider_box[:] = []
            return
        try:
            em = load_emulator(self.generator)
        except Exception as exc:  # noqa: BLE001 - any broken checkpoint: one line on the page
            self.param.update(theta={}, info="", error=one_line(exc))
            self._slider_box[:] = []
            return
        self.emulator = em
        theta = {
            n: default_value(n, lo, hi) for n, lo, hi in zip(em.names, em.low, em.high, strict=True)
        }
        channels = {channel_label(n): i for i, n in enumerate(em.channel_names)}
        self.param.channel.objects = channels
        with param.parameterized.batch_call_watchers(self):
            self.channel = 0
            self.steps = em.default_steps or self.steps
            self.sampler = em.default_sampler or self.sampler
            self.theta = theta
            self.error = ""
            self.info = self._describe(em)
        self._steps_widget.visible = em.task_name == "diffusion"
        self._sampler_widget.visible = em.task_name == "diffusion"
        if em.default_steps:
            self._steps_widget.end = min(1000, max(100, 4 * em.default_steps))
        self._slider_box[:] = self._sliders(em, theta)

    @staticmethod
    def _describe(em: Emulator) -> str:
        kind = em.map_config.get("kind", "?")
        size = em.map_config.get("size")
        box = ", ".join(
            f"{param_label(n)} ∈ [{lo:g}, {hi:g}]"
            for n, lo, hi in zip(em.names, em.low, em.high, strict=True)
        )
        text = f"`{em.task_name}` · kind `{kind}`" + (f" · {size}² pixels" if size else "")
        text += (
            f" · channels {', '.join(channel_label(c) for c in em.channel_names)} · step {em.step}"
        )
        return text + f"\n\nTrained on {box}."

    def _sliders(self, em: Emulator, theta: dict) -> list:
        sliders = []
        for name, lo, hi in zip(em.names, em.low, em.high, strict=True):
            w = pn.widgets.FloatSlider(
                **label(param_label(name)), start=lo, end=hi, value=theta[name],
                step=(hi - lo) / 200, format="0.000", sizing_mode="stretch_width",
            )  # fmt: skip
            w.param.watch(partial(self._set_value, name), "value")
            sliders.append(w)
        return sliders

    def _set_value(self, name: str, event) -> None:
        self.theta = {**self.theta, name: float(event.new)}

    # -- sampling ----------------------------------------------------------------------------

    def sample(self) -> None:
        """Compute :func:`compute` for the current settings: now without a document, else in a
        worker thread (a newer request supersedes this one)."""
        em = self.emulator
        if em is None:
            self.error = "Choose a generator first." if self.generator is None else self.error
            return
        self._requests += 1
        tag = self._requests
        if self._doc is not None:
            from tornado.ioloop import IOLoop

            self._loop = IOLoop.current()
        name = self.param.generator.names and next(
            (k for k, v in self.param.generator.names.items() if v == self.generator), ""
        )
        work = partial(
            compute, em, name or str(self.generator), dict(self.theta), self.count, self.seed,
            self.steps, self.sim_count, partial(self._report, tag), self.sampler,
        )  # fmt: skip
        self.param.update(busy=True, error="", progress="starting…")
        self._updates.request(partial(_tagged, tag, work))

    def _report(self, tag: int, text: str) -> None:
        """Progress of job ``tag`` (called in its worker thread): stop it when superseded, else
        show ``text`` (at most every :data:`PROGRESS_EVERY` s)."""
        if tag != self._requests:
            raise Superseded
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_EVERY:
            return
        self._last_progress = now
        if self._doc is None or self._loop is None:
            self.progress = text
            return

        def show() -> None:
            if tag == self._requests and self.busy:
                self.progress = text

        with contextlib.suppress(Exception):  # the session may have ended
            self._loop.add_callback(self._doc.add_next_tick_callback, show)

    def _deliver(self, out, err, latest: bool) -> None:
        """Show a finished Sample (on the event loop)."""
        if latest:
            self.param.update(busy=False, progress="")
        if isinstance(err, Superseded) or (out is None and err is None):
            return
        if err is not None:
            self.error = one_line(err)
            return
        tag, result = out
        if tag == self._requests:  # else a newer request (or generator) came meanwhile
            self.param.update(result=result, error="")

    # -- views -------------------------------------------------------------------------------

    @param.depends("result", "channel")
    def _results(self):
        if self.result is None:
            text = "Press **Sample** to draw maps." if self.emulator is not None else ""
            return pn.pane.Markdown(text, margin=(0, 5))
        c = min(int(self.channel or 0), len(self.result.channels) - 1)
        return result_views(self.result, c)

    @param.depends("busy", "progress")
    def _status(self):
        text = f"⏳ {self.progress or 'updating…'}" if self.busy else ""
        return pn.pane.HTML(
            f"<span style='color:#b35806'>{text}</span>", height=22, margin=(0, 10),
            sizing_mode="stretch_width",
        )  # fmt: skip

    @param.depends("error")
    def _error(self):
        return pn.pane.Markdown(
            f"**⚠ {self.error}**" if self.error else "", margin=(0, 5), sizing_mode="stretch_width"
        )

    @param.depends("generator")
    def _empty(self):
        if any(v is not None for v in self.param.generator.objects):
            return pn.pane.Markdown("", margin=0)
        return pn.pane.Markdown(NO_GENERATOR, sizing_mode="stretch_width", max_width=800)

    def __panel__(self):
        """The page, built once: rendering it again adds no widgets or watchers."""
        if self._view is None:
            self._view = self._build_view()
        return self._view

    def _build_view(self) -> pn.Row:
        generators = pn.widgets.Select.from_param(
            self.param.generator, **label("Generator"), sizing_mode="stretch_width"
        )
        refresh = pn.widgets.Button(**label("⟳ Refresh list"), **look("light"))
        refresh.on_click(lambda _e: self.refresh_generators())
        count = pn.widgets.IntSlider.from_param(
            self.param.count, **label("maps N"), sizing_mode="stretch_width"
        )
        sims = pn.widgets.IntInput.from_param(
            self.param.sim_count, **label("simulator maps"), width=130
        )
        seed = pn.widgets.IntInput.from_param(self.param.seed, **label("seed"), width=130)
        for w, par in (
            (count, self.param.count),
            (sims, self.param.sim_count),
            (seed, self.param.seed),
        ):
            w.description = par.doc
        button = pn.widgets.Button(
            **label("▶ Sample"), **look("primary"), sizing_mode="stretch_width",
            disabled=self.param.generator.rx.is_(None),
        )  # fmt: skip
        button.on_click(lambda _e: self.sample())
        channel = pn.widgets.RadioButtonGroup.from_param(
            self.param.channel, **label("Channel"), **look("primary", "outline"),
            visible=self.param.info.rx.pipe(lambda _: len(self.param.channel.objects) > 1),
        )  # fmt: skip
        controls = pn.Column(
            "### Generator",
            generators,
            refresh,
            pn.pane.Markdown(self.param.info, margin=(0, 5), sizing_mode="stretch_width"),
            "### Parameters",
            self._slider_box,
            count,
            pn.Row(sims, seed),
            self._steps_widget,
            self._sampler_widget,
            button,
            self._status,
            self._error,
            width=320,
        )
        return pn.Row(
            controls,
            pn.Column(self._empty, channel, self._results, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )
