"""Lensing page: a live strong-lens image with dark-matter substructure, its critical curves and
caustics, a trained classifier's verdict, and a class-conditional lens generator.

Three modules, as the field lab:

* :mod:`explorer.lensing_compute`: the settings (:class:`~explorer.lensing_compute.LensView`,
  one definition of each, units in the docs and labels), the pure update
  (:func:`~explorer.lensing_compute.compute`: the ``strong_lens`` kind's image through
  lenstronomy, critical curves and caustics from lenstronomy's ``LensModelExtensions``, class
  probabilities of a classifier run), and the lens generators;
* :mod:`explorer.lensing_views`: the Bokeh figures fed in place, the readout, the widgets;
* this module: the page state :class:`LensingPage`.

Every change of a setting is computed off the event loop in a served session, from a snapshot
of the settings, only ever the latest (:class:`explorer.latest.LatestOnly` on the field lab's
worker threads); the finished image replaces the columns of the figures' sources, so the zoom
survives. The page says how long the update took (image, curves and classifier apart).

The classifier is the first classification run in ``assets/models/`` (``$EXPLORER_EXAMPLES_DIR``)
or the runs folder whose training images have the preset's size and pixel scale; it is loaded
once per server process, in the worker thread of the first update that needs it. Without one
the page says how to train one.

The *Generate* panel samples a class-conditional diffusion model of lens images when one is
found there (:func:`list_lens_generators`; loaded through
:class:`engine.evaluation.sampling.Emulator`, :func:`sample_lenses` defensive about a sampling
API that may lack class labels), on the Generate page's worker thread so that a slow sample
never holds up the image, with the FID numbers of its run's ``report.json``
(:func:`report_table`).

Units: angles in arcsec, pixels in e⁻ s⁻¹, masses in M☉.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np
import panel as pn
import param

from engine.lru import LRUCache
from engine.params import ConfigError
from engine.physics.strong_lens import CLASSES
from engine.runs import list_runs, read_json
from explorer.generate import executor as generate_executor
from explorer.generate import one_line
from explorer.generate_compute import class_label
from explorer.latest import LatestOnly
from explorer.lensing_compute import (
    ClassifierInfo,
    LensResult,
    LensView,
    checkpoint_file,
    compute,
    find_classifier,
    list_classifiers,
    run_task,
    snapshot,
    train_commands,
)
from explorer.lensing_views import (
    READOUT_CSS,
    LensFigures,
    controls_column,
    frame_data,
    lens_widgets,
    no_classifier_text,
    readout_html,
    report_markdown,
    samples_figure,
    timing_html,
)
from explorer.training import default_examples_root, default_runs_root
from explorer.widgets import label, look

#: Lens generators kept loaded per server process.
GENERATOR_CACHE_SIZE = 2
#: Most generated images per class and press of *Sample*.
MAX_SAMPLES = 8
#: What the Generate panel says when there is no lens generator.
NO_GENERATOR = (
    "**No lens generator shipped yet.** A diffusion model of `strong_lens` images conditioned "
    "on the substructure class (task `diffusion`) in `assets/models/` or the runs folder shows "
    "up here; press ⟳ after training one."
)

ABOUT = """
### What you are looking at

**Image.** A galaxy–galaxy strong lens as the `strong_lens` kind makes it (lenstronomy): a
singular isothermal ellipsoid of Einstein radius θ<sub>E</sub> with external shear γ at
z = 0.5 bends the light of a Sérsic galaxy at z = 1 into arcs or an Einstein ring, seen through
the Euclid VIS or HST instrument (pixels, PSF, Poisson and background noise). The substructure
of the class chosen is drawn from the seed: *cdm*, a Poisson number of subhaloes (point masses,
dN/dm ∝ m<sup>−1.9</sup> between the two masses) within 2 θ<sub>E</sub>; *vortex*, a line of
point masses of an axion-like dark-matter vortex; *none*, the smooth lens.

**Critical curves** (cyan) are where the magnification diverges; the source plane (right) shows
their images, the **caustics** (orange), and the **cut** (dashed): a source inside the
tangential caustic makes four images, between it and the cut two. Subhaloes near the critical
curve bend it into small loops — the signal substructure classifiers look for.

**Classifier.** The class probabilities of a network trained on such images
(`python -m engine train --preset lens_resnet`), for the image shown.
"""


# ---------------------------------------------------------------------------------------------
# Lens generators (class-conditional diffusion models)
# ---------------------------------------------------------------------------------------------


def lens_generator_path(path: str | Path) -> bool:
    """Whether run directory ``path`` holds a class-conditional diffusion model (task
    ``diffusion``, a checkpoint, and a class ``label`` setting:
    :func:`explorer.generate_compute.class_label`)."""
    path = Path(path)
    config = read_json(path / "config.json") or {}
    if run_task(config) != "diffusion" or checkpoint_file(path) is None:
        return False
    return bool(class_label(config))


def list_lens_generators(*roots) -> dict[str, str]:
    """``{label: run directory}`` of the lens generators under the folders ``roots``."""
    out = {}
    for root in roots:
        if root:
            for run in list_runs(root):
                if lens_generator_path(run.path):
                    out[f"{run.id} (diffusion)"] = str(run.path)
    return out


_generators: LRUCache[object] = LRUCache(GENERATOR_CACHE_SIZE)


def load_lens_generator(path: str | Path):
    """The emulator of a lens-generator run (``Emulator.from_checkpoint`` when the engine has
    it, else ``Emulator(path)``), loaded once per server process.

    Raises
    ------
    ConfigError
        No usable checkpoint.
    """
    from engine.evaluation.sampling import Emulator
    from engine.train.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    key = (str(ckpt.resolve()), ckpt.stat().st_mtime_ns)
    make = getattr(Emulator, "from_checkpoint", None) or Emulator
    return _generators.get_or_make(key, lambda: make(str(path)))


def generator_classes(em) -> tuple[str, ...]:
    """Class labels a lens generator samples (its ``classes``, else its task's, else the
    strong-lens classes)."""
    for obj in (em, getattr(em, "task", None)):
        for name in ("classes", "class_names", "labels"):
            value = getattr(obj, name, None) if obj is not None else None
            if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
                return tuple(value)
    return tuple(CLASSES)


def sample_lenses(em, label: str, count: int, seed: int) -> np.ndarray:
    """``count`` images ``(count, N, N)`` float32 of class ``label`` from a lens generator
    (``em.sample(count=..., seed=..., label=...)``).

    Raises
    ------
    ConfigError
        A generator whose ``sample`` takes no class label, or that fails (one line).
    """
    sample = getattr(em, "sample", None)
    try:
        names = inspect.signature(sample).parameters if sample is not None else {}
    except (TypeError, ValueError):
        names = {}
    if "label" not in names:
        raise ConfigError(
            "this generator's sample() takes no class label: the engine's class-conditional "
            "sampling is not there yet"
        )
    try:
        out = sample(count=int(count), seed=int(seed), label=str(label))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - an API we code against defensively
        raise ConfigError(one_line(exc)) from None
    arr = np.asarray(getattr(out, "values", out), dtype=np.float32)
    while arr.ndim > 3 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ConfigError(f"the generator returned images of shape {arr.shape}, not (B, N, N)")
    return arr


def _numbers(obj, prefix: str = "", depth: int = 0):
    """(dotted path, value) of the finite numbers (not booleans) of a JSON object."""
    if depth > 6:
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _numbers(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)
    elif isinstance(obj, int | float) and not isinstance(obj, bool) and math.isfinite(obj):
        yield prefix, float(obj)


def report_table(path: str | Path) -> tuple[list[str], list[list[str]]] | None:
    """The FID numbers of a generator run's ``report.json`` (or, without one, of the first
    ``*/report.json`` of its folders, e.g. ``evaluate --out RUN/lens_report``) as (header,
    rows): one row per class of its ``per_class`` entries with their numbers named ``n`` or
    ``*fid*`` (e.g. ``domain.fid``, ``domain.fid_floor``: the real–real floor); else one row
    per number whose path names fid or floor (else every number, at most 40). None without a
    report."""
    files = [Path(path) / "report.json", *sorted(Path(path).glob("*/report.json"))]
    report = next((r for f in files if (r := read_json(f)) is not None), None)
    if report is None:
        return None
    per_class = report.get("per_class")
    if isinstance(per_class, Mapping):
        flat = {str(c): dict(_numbers(v)) for c, v in per_class.items() if isinstance(v, Mapping)}
        cols: list[str] = []
        for numbers in flat.values():
            for k in numbers:
                if (k == "n" or "fid" in k.rsplit(".", 1)[-1]) and k not in cols:
                    cols.append(k)
        if cols:
            rows = [[c, *(f"{v[k]:.4g}" if k in v else "—" for k in cols)] for c, v in flat.items()]
            return ["class", *cols], rows
    rows = list(_numbers(report))
    fid = [r for r in rows if "fid" in r[0].lower() or "floor" in r[0].lower()]
    return ["report entry", "value"], [[k, f"{v:.4g}"] for k, v in (fid or rows)[:40]]


def _compute_frame(view: LensView, classifier: ClassifierInfo | None) -> tuple:
    """One update (in a worker thread in a served session): the result and its figures'
    columns."""
    result = compute(view, classifier)
    return result, frame_data(result)


def _sample_job(path: str, cls: str, count: int, seed: int) -> tuple:
    """A *Sample* of the Generate panel (in a worker thread): ``count`` images of class
    ``cls`` (of each of the generator's classes for ``"all"``, one row per class), the number
    of columns and a title."""
    em = load_lens_generator(path)
    known = generator_classes(em)
    classes = known if cls == "all" else (cls,)
    if any(c not in known for c in classes):
        raise ConfigError(f"the generator samples classes {', '.join(known)}, not {cls!r}")
    t0 = time.perf_counter()
    images = np.concatenate([sample_lenses(em, c, count, seed) for c in classes])
    seconds = (time.perf_counter() - t0) / max(1, len(images))
    title = f"Generated: {', '.join(classes)} (rows), seed {seed}, {seconds:.2g} s per image"
    return images, count, title


class LensingPage(pn.viewable.Viewer):
    """Lensing page: widgets over a :class:`LensView`, the live image with its curves and the
    classifier's probabilities, and the *Generate* panel (module docstring).

    Parameters
    ----------
    runs_root, examples_root : str or Path, optional
        Folders searched for classifier and lens-generator runs (defaults of the Training
        page: ``runs/`` and ``assets/models/``).
    doc : bokeh.document.Document, optional
        The session's document (served pages): updates then run in worker threads.
    visible : bool
        Whether the page is shown; the first image is computed (and the folders searched) only
        once it is.
    """

    settings = param.ClassSelector(class_=LensView, doc="The page's settings.")
    result = param.ClassSelector(
        class_=LensResult, default=None, allow_None=True, doc="The image shown."
    )
    error = param.String("", doc="One line about the last failed update ('' when none).")
    visible = param.Boolean(True, doc="The page is shown: it computes only while it is.")
    runs_root = param.String("", doc="Folder of the user's runs ('' none).")
    examples_root = param.String("", doc="Folder of the shipped models ('' none).")
    generator = param.Selector(
        default=None, objects=[], allow_None=True, doc="Run directory of the lens generator."
    )
    gen_class = param.Selector(
        default="all", objects=["all", *CLASSES], doc="Class to generate (all: each in a row)."
    )
    gen_count = param.Integer(4, bounds=(1, MAX_SAMPLES), doc="Images per class and Sample.")
    gen_seed = param.Integer(0, bounds=(0, 2**31 - 1), doc="Seed of the generator.")
    gen_error = param.String("", doc="One line about the last failed Sample.")
    gen_busy = param.Boolean(False, doc="A Sample is being computed.")

    def __init__(self, runs_root=None, examples_root=None, doc=None, settings=None, **params):
        root = runs_root if runs_root is not None else default_runs_root()
        examples = examples_root if examples_root is not None else default_examples_root()
        super().__init__(
            settings=settings or LensView(), runs_root=str(root or ""),
            examples_root=str(examples or ""), **params,
        )  # fmt: skip
        self._doc = doc
        self.classifiers: list[ClassifierInfo] | None = None  # listed once shown
        self.figures = LensFigures()
        self._updates = LatestOnly(self._deliver, doc=doc)
        self._samples = LatestOnly(self._deliver_samples, doc=doc, pool=generate_executor())
        self._timing = pn.pane.HTML("", height=22, margin=(0, 10), sizing_mode="stretch_width")
        self._readout = pn.pane.HTML("", width=280, margin=(0, 5), stylesheets=[READOUT_CSS])
        self.figures.probs.visible = False  # until a classifier answers
        self._probs = pn.pane.Bokeh(self.figures.probs)
        self._hint = pn.pane.Markdown("", width=300, margin=(0, 5), visible=False)
        self._grid = pn.Column(margin=0)
        self._report = pn.pane.Markdown("", margin=(0, 5))
        self._view = None
        names = [n for n in self.settings.param if n != "name"]
        self.settings.param.watch(self._on_setting, names)
        if self.visible:
            self.refresh()

    # -- state -------------------------------------------------------------------------------

    def _on_setting(self, *_events) -> None:
        self.request_update()

    @param.depends("visible", watch=True)
    def _shown(self) -> None:
        if self.visible and self.classifiers is None:
            self.refresh()

    def refresh(self) -> None:
        """Search the folders for classifiers and lens generators again, and recompute."""
        self.classifiers = list_classifiers(self.examples_root, self.runs_root)
        self.refresh_generators()
        self.request_update()

    def classifier_for(self, preset: str) -> ClassifierInfo | None:
        """The classifier used for images of ``preset`` (:func:`find_classifier`), or None."""
        return find_classifier(self.classifiers or [], preset)

    def request_update(self) -> None:
        """Recompute the image for the current settings (while shown): now without a document,
        else off the event loop (only the latest request)."""
        if not self.visible:
            return
        view = snapshot(self.settings)
        self._updates.request(partial(_compute_frame, view, self.classifier_for(view.preset)))

    def _deliver(self, out, err, latest: bool) -> None:
        """Show a finished update (on the event loop)."""
        if out is None and err is None:
            return
        if isinstance(err, ConfigError):
            self.error = str(err)
            self._readout.object = readout_html(self.result, self.error)
            return
        if err is not None:
            raise err
        result, frame = out
        self.figures.show(frame)
        self.param.update(result=result, error="")
        self._timing.object = timing_html(result)
        self._readout.object = readout_html(result)
        preset = result.settings["preset"]
        if result.classifier and result.probs is not None:
            title = f"Classifier {result.classifier}: p(class)"
            if self.figures.probs.title.text != title:
                self.figures.probs.title.text = title
            self._show_probs(True)
        else:
            self._hint.object = (
                f"**⚠ classifier {result.classifier}:** {result.classifier_error}"
                if result.classifier_error
                else no_classifier_text(preset, train_commands(preset))
            )
            self._show_probs(False)

    def _show_probs(self, show: bool) -> None:
        """The probabilities (``show``) or the hint instead."""
        self.figures.probs.visible = show  # the figure is the pane's model: hidden in place
        self._hint.visible = not show

    # -- generated lenses --------------------------------------------------------------------

    def refresh_generators(self) -> None:
        """Re-list the lens generators; choose the first when none (or a vanished one) is."""
        names = list_lens_generators(self.examples_root, self.runs_root)
        if names != self.param.generator.names:
            self.param.generator.objects = names
        if self.generator not in names.values():
            self.generator = next(iter(names.values()), None)
        self._show_report()

    @param.depends("generator", watch=True)
    def _show_report(self) -> None:
        self._grid[:] = []
        self._report.object = (
            report_markdown(report_table(self.generator)) if self.generator else NO_GENERATOR
        )

    def sample(self) -> None:
        """Sample ``gen_count`` images of ``gen_class`` from the lens generator (in a served
        session off the event loop; a newer Sample supersedes a waiting one)."""
        if self.generator is None:
            self.gen_error = "No lens generator shipped yet."
            return
        self.param.update(gen_busy=True, gen_error="")
        self._samples.request(
            partial(_sample_job, self.generator, self.gen_class, self.gen_count, self.gen_seed)
        )

    def _deliver_samples(self, out, err, latest: bool) -> None:
        """Show finished samples (on the event loop)."""
        if latest:
            self.gen_busy = False
        if out is None and err is None:
            return
        if err is not None:
            self.gen_error = one_line(err)
            return
        images, columns, title = out
        self._grid[:] = [pn.pane.Bokeh(samples_figure(images, title, columns))]

    # -- view --------------------------------------------------------------------------------

    @param.depends("gen_busy", "gen_error")
    def _gen_status(self):
        text = (
            "⏳ sampling…" if self.gen_busy else (f"⚠ {self.gen_error}" if self.gen_error else "")
        )
        return pn.pane.HTML(f"<span style='color:#b35806'>{text}</span>", height=22, margin=(0, 10))

    def _generate_panel(self) -> pn.Column:
        choose = pn.widgets.Select.from_param(
            self.param.generator, **label("Lens generator"), width=300,
            visible=self.param.generator.rx.is_not(None),
        )  # fmt: skip
        refresh = pn.widgets.Button(**label("⟳"), **look("light"), width=40)
        refresh.on_click(lambda _e: self.refresh_generators())
        cls = pn.widgets.RadioButtonGroup.from_param(
            self.param.gen_class, **look("primary", "outline"), width=280
        )
        count = pn.widgets.IntSlider.from_param(
            self.param.gen_count, **label("images N"), width=200
        )
        seed = pn.widgets.IntInput.from_param(self.param.gen_seed, **label("seed"), width=120)
        button = pn.widgets.Button(
            **label("▶ Sample"), **look("primary"), width=120,
            disabled=self.param.generator.rx.is_(None),
        )  # fmt: skip
        button.on_click(lambda _e: self.sample())
        return pn.Column(
            "### Generate lenses",
            pn.Row(choose, refresh),
            pn.Row(cls, count, seed, button),
            self._gen_status,
            self._grid,
            self._report,
            sizing_mode="stretch_width",
        )

    def __panel__(self):
        """The page, built once."""
        if self._view is None:
            widgets = lens_widgets(self.settings)
            controls = pn.Column("### Lens and source", controls_column(widgets), width=300)
            centre = pn.Column(self._timing, pn.pane.Bokeh(self.figures.image))
            side = pn.Column(
                pn.pane.Bokeh(self.figures.source), self._probs, self._hint, self._readout
            )
            about = pn.pane.Markdown(ABOUT, sizing_mode="stretch_width", max_width=1050)
            self._view = pn.Row(
                controls,
                pn.Column(pn.Row(centre, side), self._generate_panel(), about),
                sizing_mode="stretch_width",
            )
        return self._view
