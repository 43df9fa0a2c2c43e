"""Training page: launch, stop and resume engine training runs and watch their curves live.

Nothing trains in the server. :class:`TrainingController` starts ``python -m engine train`` as a
separate OS process in its own session (:func:`engine.launch.launch_train`), so closing the browser
or restarting the server never kills a run. A periodic callback per browser session tails the
open run's ``metrics.jsonl`` (:class:`engine.runs.MetricsTail`, by byte offset) and streams new
points into ``hv.streams.Buffer`` objects drawn as ``hv.DynamicMap`` curves; runs started from
the CLI (or on a cluster, on a shared file system) show up in the same list.

The launch form is generated from the composed settings of the chosen task
(:func:`engine.train.settings.train_params_class`: regression, gan, diffusion, ...; bounds,
defaults and docs are the engine's): the task's presets, the maps, the task's own model settings
and task settings (:func:`control_groups`), and the loop's. A map setting shows only for the
kinds whose settings class (:mod:`engine.kinds`) has it, and a registry model's parameter count
(:func:`engine.nn.registry.summary`) sits next to the model selector. Train passes the task and
the preset to the engine (``--task``, ``--preset``). When the open run has an evaluation
(``report.json``, written by the engine when training ends) it appears below the curves
(:class:`RunEvaluation`: the regression views of :class:`explorer.report.EvaluationPanel`, or,
for an emulator report, its targets and figures).

Shipped example runs (``assets/models/<name>/``, or ``$EXPLORER_EXAMPLES_DIR``) are listed after
the runs as ``example: <name>``: read-only (no Stop or Resume; nothing is written there), so the
page demonstrates trained models without training. When no run exists, the first example opens.

Curves come from the metric names a run writes, not from a fixed list (:mod:`explorer.curves`:
every (split, name) pair of ``metrics.jsonl`` is a series, grouped into plots by the name's
first ``_``-separated token), so a run of a new task streams its curves with no change here.

Units: ``step`` counts optimiser updates; each curve is in the units of its metric (for the
regression task: the loss is the Gaussian negative log-likelihood in normalised parameter units,
RMSEs of Ω_m and σ8 are in their physical, dimensionless, units).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import holoviews as hv
import panel as pn
import param

from engine.launch import launch_train, stop_run
from engine.params import ConfigError, to_dict
from engine.runs import REPO_ROOT, MetricsTail, RunDir, list_runs, new_run_id
from engine.tasks import TASKS
from explorer.curves import (
    BUFFER_LENGTH,
    CurvePlot,
    curve_dmap,
    curve_plots,
    empty_frame,
    metric_pairs,
    metrics_frames,
)
from explorer.polling import SessionPolling
from explorer.report import EvaluationPanel

# The training-side names come from explorer.training_form, the ONE place where the explorer
# imports them (explorer.training.TrainParams, ... stay valid for the other modules and tests).
from explorer.training_form import (  # noqa: F401 - the page's form, re-exported  # noqa: F401
    CONTROL_GROUPS,
    FORM_EXCLUDED,
    PRESETS,
    REGRESSION,
    TRAIN_CONTROLS,
    TRAIN_KINDS,
    TrainParams,
    _has_widget,
    _kind_settings,
    _summary,
    available_tasks,
    control_groups,
    model_summary,
    preset_values,
    presets_of,
    resolve_params,
    setting_applies,
    task_available,
    task_controls,
    uses_registry_model,
)
from explorer.training_views import (  # noqa: F401 - the open run's views, re-exported
    STATE_COLORS,
    RunEvaluation,
    config_markdown,
    list_examples,
    run_label,
    status_markdown,
)
from explorer.widgets import label, look

hv.extension("bokeh", logo=False)  # registers hv.opts for the Bokeh backend (idempotent)

#: Environment variable overriding the runs folder (default ``runs/`` in the working directory).
RUNS_ENV = "EXPLORER_RUNS_DIR"
#: Environment variable overriding the folder of shipped example runs (see
#: :func:`default_examples_root`).
EXAMPLES_ENV = "EXPLORER_EXAMPLES_DIR"
#: Prefix of the run selector's values that name example runs (run ids never hold a colon).
EXAMPLE_PREFIX = "example:"
#: Engine processes started by this server, polled so they are reaped when they end.
_CHILDREN: list = []


def default_runs_root() -> Path:
    """The runs folder: ``$EXPLORER_RUNS_DIR`` if set, else ``runs/`` in the working directory."""
    return Path(os.environ.get(RUNS_ENV) or "runs")


def default_examples_root() -> Path:
    """The example runs: ``$EXPLORER_EXAMPLES_DIR`` if set, else ``assets/models/`` of the repo."""
    return Path(os.environ.get(EXAMPLES_ENV) or REPO_ROOT / "assets" / "models")


@functools.cache
def _reap_children() -> None:
    _CHILDREN[:] = [p for p in _CHILDREN if p.poll() is None]


class TrainingController(SessionPolling, pn.viewable.Viewer):
    """Training page: a preset plus edited settings → engine run; runs list; live curves;
    the open run's evaluation.

    ``settings`` (a :class:`engine.train.settings.TrainParams`) is reset to the preset's values when
    ``preset`` changes; :meth:`overrides` is what the user changed. :meth:`train` launches a new
    run in ``runs_root``, :meth:`stop` and :meth:`resume` act on the open run (``run_id``), and
    :meth:`poll` (every ``period`` ms per browser session, see :meth:`start`) streams its new
    metrics into the curve buffers and refreshes :attr:`evaluation`.

    Example runs in ``examples_root`` (none when empty; the app passes
    :func:`default_examples_root`) are listed after the runs with ids prefixed by
    :data:`EXAMPLE_PREFIX`; they are only read.
    """

    runs_root = param.String(
        doc="Folder holding the run directories (default: $EXPLORER_RUNS_DIR or runs/)."
    )
    examples_root = param.String(
        default="", doc="Folder holding read-only example runs ('': none)."
    )
    task = param.Selector(
        default=REGRESSION,
        objects=list(TASKS),
        doc="Task of the next run (engine.tasks.TASKS); the presets and the form follow it.",
    )
    preset = param.Selector(
        default="smoke",
        objects=list(PRESETS),
        doc="Preset in engine.train.settings.PRESETS (those of the task: presets_of).",
    )
    settings = param.ClassSelector(
        class_=param.Parameterized,  # train_params_class(task): one settings class per task
        doc="Settings of the next run (resolve_params of the preset and task).",
    )
    run_id = param.Selector(default=None, objects=[], allow_None=True, doc="Id of the open run.")
    status = param.Dict(default=None, allow_None=True, doc="status.json of the open run.")
    message = param.String("", doc="Feedback of the last action.")
    maps_per_s = param.Number(None, allow_None=True, doc="Latest training throughput, maps/s.")
    period = param.Integer(
        500, bounds=(50, None), doc="Polling period of the periodic callback, ms."
    )
    refresh_every = param.Integer(4, bounds=(1, None), doc="Refresh the runs list every n polls.")
    can_stop = param.Boolean(False, doc="The open run has a live process that Stop can signal.")
    can_resume = param.Boolean(False, doc="The open run has ended and has a checkpoint.")
    evaluation = param.ClassSelector(
        class_=EvaluationPanel, doc="Evaluation (report.json) of the open run (RunEvaluation)."
    )
    curves = param.List(
        default=[], item_type=CurvePlot, doc="Plots of the open run's metrics (curve_plots)."
    )

    def __init__(self, runs_root: str | Path | None = None, **params):
        root = str(runs_root if runs_root is not None else default_runs_root())
        super().__init__(runs_root=root, **params)
        self.param.task.objects = available_tasks() or [REGRESSION]
        presets = presets_of(self.task)
        self.param.preset.objects = presets
        if self.preset not in presets:
            with param.parameterized.discard_events(self):
                self.preset = presets[0]
        if self.settings is None:
            self.settings = resolve_params(self.preset, task=self.task)
        #: Settings object of each task the form has shown (edits survive a task switch).
        self._by_task: dict[str, param.Parameterized] = {self.task: self.settings}
        #: The preset last chosen for each task.
        self._preset_of: dict[str, str] = {self.task: self.preset}
        self._switching = False
        #: Form widgets per settings object (made once each: see widgets()).
        self._forms: dict[int, dict[str, pn.widgets.Widget]] = {}
        self._selectors: dict[str, pn.widgets.Widget] | None = None
        self._form_box = pn.Column(sizing_mode="stretch_width", margin=0)
        if self.evaluation is None:
            self.evaluation = RunEvaluation()
        #: One stream per plot key (:func:`plot_key`), made when its first metric arrives.
        self.buffers: dict[str, hv.streams.Buffer] = {}
        self._pairs: dict[tuple[str, str], None] = {}  # (split, name) pairs of the open run
        self._tail: MetricsTail | None = None
        self._callback = None
        self._polls = 0
        self._view = None
        # Made and watched once (not per render): see __panel__.
        self._progress_bar = pn.indicators.Progress(
            **self._progress(None), sizing_mode="stretch_width", height=12
        )
        self.param.watch(self._show_progress, "status")
        self.refresh_runs()

    # -- state -------------------------------------------------------------------------------

    @property
    def is_example(self) -> bool:
        """True if the open run is a read-only example."""
        return self.run_id is not None and self.run_id.startswith(EXAMPLE_PREFIX)

    @property
    def run(self) -> RunDir | None:
        """The open run, or None."""
        if self.run_id is None:
            return None
        if self.is_example:
            return RunDir(Path(self.examples_root) / self.run_id[len(EXAMPLE_PREFIX) :])
        return RunDir(Path(self.runs_root) / self.run_id)

    def overrides(self) -> dict:
        """Settings that differ from the preset's values: ``{name: value}`` for ``--set``."""
        base = preset_values(self.preset, self.task)
        return {n: v for n, v in to_dict(self.settings).items() if base.get(n) != v}

    @param.depends("preset", watch=True)
    def _reset_settings(self) -> None:
        """Load the preset's values into the settings (widgets follow)."""
        if self._switching:  # another task's form: its settings hold their values already
            return
        self._preset_of[self.task] = self.preset
        try:
            self.settings.param.update(**preset_values(self.preset, self.task))
        except ConfigError as exc:
            self.message = f"Preset {self.preset}: {exc}"

    @param.depends("task", watch=True)
    def _switch_task(self) -> None:
        """Show the form of the new task: its settings object (made from its first preset on
        first use) and its presets. A task that cannot be imported puts the old one back."""
        task = self.task
        presets = presets_of(task)
        try:
            settings = self._by_task.get(task) or resolve_params(presets[0], task=task)
            control_groups(task)
        except (ConfigError, ImportError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.message = f"Task {task} is not available: {text}"
            previous = next((t for t, s in self._by_task.items() if s is self.settings), REGRESSION)
            self.task = previous
            return
        self._by_task[task] = settings
        # the task's settings hold the values of its last preset (and the user's edits)
        preset = self._preset_of.get(task, presets[0])
        self._switching = True
        try:  # a preset selector on the page may snap to a new option: no reset meanwhile
            self.settings = settings
            self.param.preset.objects = presets
            self.preset = preset
        finally:
            self._switching = False
        self._preset_of[task] = preset

    def refresh_runs(self) -> None:
        """Re-read the runs folder into the run selector (labels show state and progress).

        While no run is open, the newest one is opened (else the first example), so a page
        shows the latest run (also one started from the CLI) and the list's highlighted entry
        is the open run.
        """
        runs = list_runs(self.runs_root)
        names = {run_label(r): r.id for r in runs}
        names.update(
            {
                run_label(r, example=True): EXAMPLE_PREFIX + r.id
                for r in list_examples(self.examples_root)
            }
        )
        if self.run_id is not None and self.run_id not in names.values():
            names[self.run_id] = self.run_id
        if names != self.param.run_id.names:
            self.param.run_id.objects = names
        if self.run_id is None and names:
            self.run_id = next(iter(names.values()))

    @param.depends("run_id", watch=True)
    def _open(self) -> None:
        """Open the run: clear the curves and replay its metrics.jsonl from the start."""
        for buffer in self.buffers.values():
            buffer.clear()
        self._pairs = {}
        self.maps_per_s = None
        self._tail = None if self.run is None else MetricsTail(self.run.metrics_path)
        self.poll()

    # -- actions -----------------------------------------------------------------------------

    def train(self) -> RunDir | None:
        """Launch a new engine run with the preset and :meth:`overrides`; open it.

        Settings the engine would refuse (e.g. a preset's data set that is not there) are
        reported in :attr:`message` instead, and nothing is launched (returns None).
        """
        try:
            resolve_params(self.preset, overrides=self.overrides(), task=self.task)
        except ConfigError as exc:
            self.message = f"Cannot train: {exc}"
            return None
        root = Path(self.runs_root)
        root.mkdir(parents=True, exist_ok=True)
        run = RunDir(root / new_run_id(self.preset))
        proc = launch_train(run.path, self.preset, self.overrides(), task=self.task)
        _CHILDREN.append(proc)
        self.message = f"Started {run.id} (pid {proc.pid})."
        self.refresh_runs()
        self.run_id = run.id
        return run

    def stop(self) -> bool:
        """SIGTERM the open run's process (it checkpoints and ends as 'stopped')."""
        if self.run is None:
            return False
        if self.is_example:
            self.message = f"{self.run.id} is a read-only example."
            return False
        sent = stop_run(self.run.path)
        self.message = (
            f"Asked {self.run.id} to stop; it saves a checkpoint first."
            if sent
            else f"{self.run.id} is not running."
        )
        return sent

    def resume(self) -> bool:
        """Continue the open run from its last checkpoint in a new engine process."""
        run = self.run
        if run is None:
            return False
        if self.is_example:
            self.message = f"{run.id} is a read-only example; press Train for a new run."
            return False
        status = run.status() or {}
        if run.is_active():
            self.message = f"{run.id} is still {status.get('state')}."
            return False
        if not (run.checkpoint_dir / "last.pt").is_file():
            self.message = f"{run.id} has no checkpoint to resume from."
            return False
        _CHILDREN.append(launch_train(run.path, resume=True))
        self.message = f"Resuming {run.id}."
        return True

    # -- polling -----------------------------------------------------------------------------

    def poll(self) -> int:
        """Stream new metric lines of the open run into the buffers; refresh status and list.

        Returns the number of metric lines read.
        """
        _reap_children()
        rows = self._tail.read_new() if self._tail is not None else []
        for key, frame in metrics_frames(rows).items():
            self._buffer(key).send(frame)
        self._pairs.update(dict.fromkeys(metric_pairs(rows)))
        plots = curve_plots(self._pairs)  # after the sends: a new plot starts with its data
        if plots != self.curves:
            self.curves = plots
        speeds = [r.get("value") for r in rows if r.get("name") == "maps_per_s"]
        if speeds and speeds[-1] is not None:
            self.maps_per_s = float(speeds[-1])
        run = self.run
        status = run.status() if run is not None else None
        if status != self.status:
            self.status = status
        self._update_flags()
        self.evaluation.update(run, status)  # last: drawing a new evaluation takes a while
        self._polls += 1
        if self._polls % self.refresh_every == 0:
            self.refresh_runs()
        return len(rows)

    # -- views -------------------------------------------------------------------------------

    def _buffer(self, key: str) -> hv.streams.Buffer:
        """The stream of plot ``key``, made empty on first use."""
        if key not in self.buffers:
            self.buffers[key] = hv.streams.Buffer(empty_frame(), length=BUFFER_LENGTH, index=False)
        return self.buffers[key]

    def curve_view(self, plot: CurvePlot | str) -> hv.DynamicMap:
        """Plot ``plot`` (a :class:`explorer.curves.CurvePlot`, or the key of one of
        :attr:`curves`) against step, streamed from its buffer
        (:func:`explorer.curves.curve_dmap`)."""
        if isinstance(plot, str):
            plot = next(p for p in self.curves if p.key == plot)
        return curve_dmap(plot, self._buffer(plot.key))

    @param.depends("curves")
    def _curves_view(self):
        """The plots of :attr:`curves`; rebuilt only when a plot or a series appears."""
        if not self.curves:
            return pn.pane.Markdown("*No metrics yet.*", margin=(0, 5))
        # Not linked: each plot's framewise x range spans its own series. Two plots a row.
        panes = [pn.pane.HoloViews(self.curve_view(p), linked_axes=False) for p in self.curves]
        return pn.Column(*(pn.Row(*panes[i : i + 2]) for i in range(0, len(panes), 2)))

    def widgets(self) -> dict[str, pn.widgets.Widget]:
        """Task and preset selectors plus one widget per setting of the current task's form
        (:func:`control_groups`, from its settings class).

        Bounds, defaults and descriptions come from the settings' param objects; map settings
        are visible only while the chosen kind uses them (:func:`setting_applies`). The widgets
        of a settings object are made once (the page shows the same ones).
        """
        if self._selectors is None:
            self._selectors = {
                "task": pn.widgets.Select.from_param(
                    self.param.task, **label("Task"), sizing_mode="stretch_width"
                ),
                "preset": pn.widgets.Select.from_param(
                    self.param.preset, **label("Preset"), sizing_mode="stretch_width"
                ),
            }
        key = id(self.settings)
        if key not in self._forms:
            self._forms[key] = self._setting_widgets(self.settings)
        return {**self._selectors, **self._forms[key]}

    def _setting_widgets(self, settings: param.Parameterized) -> dict[str, pn.widgets.Widget]:
        p = settings.param
        out = {}
        for name in task_controls(getattr(settings, "task_name", REGRESSION)):
            if name not in p:
                continue
            par = p[name]
            text = name.replace("_", " ")
            if isinstance(par, param.Selector):
                w = pn.widgets.Select.from_param(par, **label(text))
            elif isinstance(par, param.Boolean):
                w = pn.widgets.Checkbox.from_param(par, **label(text))
            elif isinstance(par, param.Number):  # typed values may use the whole range
                start, end = par.bounds or (None, None)
                if isinstance(par, param.Integer):
                    end = end if (end or 0) < 2**53 else None
                    w = pn.widgets.IntInput.from_param(par, **label(text), start=start, end=end)
                else:
                    w = pn.widgets.FloatInput.from_param(par, **label(text), start=start, end=end)
            else:
                w = pn.widgets.TextInput.from_param(par, **label(text))
            w.param.update(width=150)
            if "description" in w.param:
                w.description = par.doc
            if "kind" in p and any(not setting_applies(name, k) for k in TRAIN_KINDS):
                w.visible = pn.bind(setting_applies, name, p.kind)
            out[name] = w
        return out

    def model_info(self) -> pn.pane.Markdown:
        """The chosen model's parameter count (:func:`model_summary`), following the settings."""
        settings = self.settings
        p = settings.param
        if not uses_registry_model(settings):  # a task with networks of its own
            return pn.pane.Markdown("", margin=(0, 5), visible=False)

        def text(*_values) -> str:
            return f"**{model_summary(settings)}**"

        return pn.pane.Markdown(
            pn.bind(text, p.model, p.width, p.circular_padding),
            margin=(0, 5),
            sizing_mode="stretch_width",
        )

    def _form(self) -> list:
        """The launch form of the current settings: one titled group per :func:`control_groups`."""
        w = self.widgets()
        form = []
        groups = control_groups(getattr(self.settings, "task_name", REGRESSION))
        for title, names in groups.items():
            items = [w[n] for n in names if n in w]
            if title == "Model":
                items.append(self.model_info())
            form += [pn.pane.Markdown(f"#### {title}", margin=(0, 5)), pn.FlexBox(*items)]
        return form

    @param.depends("settings", watch=True)
    def _show_form(self) -> None:
        """Put the form of the current settings on the page (another task: another form)."""
        if getattr(self, "_view", None) is not None:
            self._form_box[:] = self._form()

    @param.depends("status", "run_id", "maps_per_s")
    def _status_text(self) -> str:
        return status_markdown(self.run, self.status, self.maps_per_s, example=self.is_example)

    def _update_flags(self) -> None:
        """Enable Stop for a live local process, Resume for an ended run with a checkpoint."""
        run, status = self.run, self.status or {}
        if run is None or self.is_example:
            self.param.update(can_stop=False, can_resume=False)
            return
        active = run.is_active()
        self.param.update(
            can_stop=active and status.get("pid") is not None,
            can_resume=not active and (run.checkpoint_dir / "last.pt").is_file(),
        )

    def _show_progress(self, event) -> None:
        """Follow the open run's progress (watcher of ``status``, registered once)."""
        # One at a time: Progress checks value against the bounds its max set last.
        settings = self._progress(event.new)
        bar = self._progress_bar
        bar.value = 0
        bar.max = settings.pop("max")
        bar.param.update(**settings)

    @staticmethod
    def _progress(status: dict | None) -> dict:
        """Progress-bar settings (value, max, visible) for a status.json dict."""
        status = status or {}
        step, total = status.get("step") or 0, status.get("total_steps") or 0
        top = max(int(total), 1)
        return dict(max=top, value=min(int(step), top), visible=bool(total))

    @param.depends("run_id", "status")  # config.json appears once the engine process starts
    def _config_view(self):
        return pn.pane.Markdown(config_markdown(self.run), margin=(0, 5))

    def __panel__(self):
        """The page, built once: rendering it again (another root, a notebook cell) adds no
        widgets, watchers or callbacks."""
        if self._view is None:
            self._view = self._build_view()
        return self._view

    def _build_view(self) -> pn.Row:
        w = self.widgets()
        train = pn.widgets.Button(
            **label("▶ Train"), **look("primary"), sizing_mode="stretch_width"
        )
        train.on_click(lambda _e: self.train())
        stop = pn.widgets.Button(
            **label("■ Stop"), **look("warning"), disabled=self.param.can_stop.rx.not_()
        )
        stop.on_click(lambda _e: self.stop())
        resume = pn.widgets.Button(
            **label("↻ Resume"), **look("default"), disabled=self.param.can_resume.rx.not_()
        )
        resume.on_click(lambda _e: self.resume())
        runs = pn.widgets.Select.from_param(
            self.param.run_id,
            **label(f"Runs in {self.runs_root}/" + (" and examples" if self.examples_root else "")),
            size=8,
            sizing_mode="stretch_width",
        )
        refresh = pn.widgets.Button(**label("⟳ Refresh list"), **look("light"))
        refresh.on_click(lambda _e: self.refresh_runs())
        self._form_box[:] = self._form()
        controls = pn.Column(
            "### New run",
            w["task"],
            w["preset"],
            self._form_box,
            train,
            pn.pane.Markdown(self.param.message, margin=(0, 5)),
            pn.layout.Divider(),
            "### Runs",
            runs,
            refresh,
            width=340,
        )
        plots = pn.Column(self._curves_view, self._config_view, sizing_mode="stretch_width")
        status = pn.pane.Markdown(self._status_text, margin=(0, 5), sizing_mode="stretch_width")
        return pn.Row(
            controls,
            pn.Column(
                "### Open run",
                status,
                self._progress_bar,
                pn.Row(stop, resume),
                plots,
                "### Evaluation",
                self.evaluation,
                sizing_mode="stretch_width",
            ),
        )
