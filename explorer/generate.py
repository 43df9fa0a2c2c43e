"""Generate page: sample a trained map emulator (conditional GAN or diffusion model) at chosen
parameters and compare its maps with the simulator's.

Generators are the shipped ones (``assets/models/<name>/``, or ``$EXPLORER_EXAMPLES_DIR``) and
the user's runs (``runs/``, or ``$EXPLORER_RUNS_DIR``) whose ``config.json`` names the task
``gan`` or ``diffusion`` and that hold a checkpoint (:func:`list_generators`: only that JSON is
read, no checkpoint). The chosen one is loaded once per server process
(:func:`load_emulator`, :class:`engine.evaluation.sampling.Emulator`); its parameter names and
training box make the sliders, and a diffusion model gets a sampling-steps slider.

*Sample* computes, off the event loop in a served session (:class:`explorer.fieldlab.LatestOnly`
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
import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import panel as pn
import param
import torch

from engine.device import default_device
from engine.evaluation.sampling import GENERATOR_TASKS, Emulator
from engine.kinds import KINDS, get_kind
from engine.params import FIDUCIAL, ConfigError
from engine.runs import list_runs, read_json
from engine.train.checkpoint import resolve_checkpoint
from explorer.fieldlab import LatestOnly
from explorer.generate_views import (
    GenerateResult,
    channel_label,
    display_label,
    is_log_channel,
    result_views,
)
from explorer.report import param_label
from explorer.training import default_examples_root, default_runs_root
from explorer.widgets import label, look

#: Most generated maps per Sample.
MAX_COUNT = 64
#: Simulator maps per Sample by default (at most the generated count): particle-mesh slabs at
#: 64³ take ~0.5 s each on a laptop CPU.
SIM_COUNT = 8
#: Simulator sets kept per server process (per generator, parameter point, count and seed).
SIM_CACHE_SIZE = 32
#: Emulators kept loaded per server process.
EMULATOR_CACHE_SIZE = 4
#: Seconds between two progress messages sent to the page.
PROGRESS_EVERY = 0.2
#: What the page says when no generator exists.
NO_GENERATOR = """\
**No generator yet.** Train a small one (a few seconds on a CPU) and press ⟳:

    python -m engine train --preset gan_smoke

(or `--preset diffusion_smoke`; `gan64` / `diffusion64` train the shipped ones). Runs of task
`gan` or `diffusion` in the runs folder and shipped models in `assets/models/` are listed here.
"""

#: Worker threads of Sample jobs, shared by the sessions of the server (each session has at most
#: one job there at a time); ``$EXPLORER_GENERATE_WORKERS`` overrides it.
WORKERS = int(os.environ.get("EXPLORER_GENERATE_WORKERS") or 1)
_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()
_emulators: OrderedDict[tuple, Emulator] = OrderedDict()
_simulations: OrderedDict[tuple, tuple[np.ndarray, float]] = OrderedDict()


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


def generator_task(path: str | Path) -> str | None:
    """Task of the run directory ``path`` from its ``config.json`` (``task``, else
    ``settings.task``), if it is a generator task with a checkpoint file; else None."""
    config = read_json(Path(path) / "config.json") or {}
    task = config.get("task") or (config.get("settings") or {}).get("task")
    if task not in GENERATOR_TASKS:
        return None
    ckpts = Path(path) / "checkpoints"
    if not any(
        (ckpts / n).is_file() and (ckpts / n).stat().st_size > 0 for n in ("best.pt", "last.pt")
    ):
        return None
    return str(task)


def list_generators(
    runs_root: str | Path | None, examples_root: str | Path | None
) -> dict[str, str]:
    """The generators to choose from: ``{label: run directory}``, shipped ones first (by name,
    ``"gan64 (gan, shipped)"``), then the runs (newest first, ``"<run id> (gan)"``)."""
    out: dict[str, str] = {}
    if examples_root:
        for run in sorted(list_runs(examples_root), key=lambda r: r.id):
            if task := generator_task(run.path):
                out[f"{run.id} ({task}, shipped)"] = str(run.path)
    if runs_root:
        for run in list_runs(runs_root):
            if task := generator_task(run.path):
                out[f"{run.id} ({task})"] = str(run.path)
    return out


def load_emulator(path: str | Path, device: str | torch.device | None = None) -> Emulator:
    """The :class:`~engine.evaluation.sampling.Emulator` of a run directory, loaded once per
    server process (again when its checkpoint file changes).

    Raises
    ------
    ConfigError
        No checkpoint, or not a usable generator checkpoint.
    """
    ckpt = resolve_checkpoint(path)
    dev = torch.device(device) if device is not None else default_device("auto")
    key = (str(ckpt.resolve()), ckpt.stat().st_mtime_ns, str(dev))
    with _lock:
        if key in _emulators:
            _emulators.move_to_end(key)
            return _emulators[key]
    em = Emulator(path, dev)
    with _lock:
        _emulators[key] = em
        while len(_emulators) > EMULATOR_CACHE_SIZE:
            _emulators.popitem(last=False)
    return em


def default_value(name: str, low: float, high: float) -> float:
    """Starting value of a parameter slider: the fiducial value when inside the box, else the
    middle of the box."""
    value = FIDUCIAL.get(name)
    if value is not None and low <= value <= high:
        return float(value)
    return 0.5 * (low + high)


# ---------------------------------------------------------------------------------------------
# One Sample: generated maps, simulator maps, metrics (pure; runs in a worker thread)
# ---------------------------------------------------------------------------------------------


def simulator_reason(em: Emulator) -> str | None:
    """Why the page cannot simulate maps like the generator's (None: it can)."""
    kind = str(em.map_config.get("kind", ""))
    if kind not in KINDS or not KINDS[kind].batch:
        what = f"kind {kind!r}" if kind else "a dataset"
        return (
            f"No simulator maps: the generator was trained on {what}, not on a kind this project "
            "simulates (e.g. CAMELS maps come from hydrodynamic simulations)."
        )
    if set(em.names) != {"omega_m", "sigma8"}:
        return (
            f"No simulator maps: the generator is conditioned on {', '.join(em.names)}; the "
            "simulator takes omega_m and sigma8 only."
        )
    return None


def _geometry(em: Emulator) -> dict:
    """Extent, length unit, spectrum box and k label of the generator's maps."""
    config = em.map_config
    kind = str(config.get("kind", ""))
    if kind in KINDS and KINDS[kind].extent_fn:
        with contextlib.suppress(ConfigError, TypeError, ValueError, KeyError):
            k = get_kind(kind)
            settings = k.settings_from_attrs(config)
            return {
                "extent": k.extent(settings),
                "length_unit": k.length_unit,
                "box": k.spectrum_box(settings),
                "k_label": f"k ({k.k_unit})" if k.k_unit else "ℓ",
            }
    for key, unit in (("box_size", "Mpc/h"), ("fov", "arcmin")):
        value = config.get(key)
        if isinstance(value, int | float) and value > 0:
            extent = float(value) * (60.0 if key == "fov" else 1.0)
            return {
                "extent": extent,
                "length_unit": unit,
                "box": extent,
                "k_label": f"k (1/{unit})",
            }
    return {"extent": 1.0, "length_unit": "box", "box": 1.0, "k_label": "k (1/box)"}


def simulate(em: Emulator, values: dict, count: int, seed: int) -> tuple[np.ndarray, float, bool]:
    """``count`` simulator maps of the generator's kind and map settings at ``values``: the
    first from ``seed``, the others from ``seed + 1``.

    Cached per (generator, map settings, parameters, count, seed) in the server process.

    Returns
    -------
    maps : ndarray (count, C, N, N) float32
    seconds : float
        Measured simulator time per map (of the first computation when cached): the first map
        is simulated alone, and the time per map is that of the others (count > 1), so set-up
        costs of a first call are left out.
    cached : bool

    Raises
    ------
    ConfigError
        Settings the kind refuses.
    """
    config = json.dumps(em.map_config, sort_keys=True, default=str)
    point = tuple(round(float(values[n]), 12) for n in em.names)
    key = (str(em.path), config, point, int(count), int(seed))
    with _lock:
        if key in _simulations:
            _simulations.move_to_end(key)
            maps, seconds = _simulations[key]
            return maps, seconds, True
    kind = get_kind(str(em.map_config["kind"]))
    settings = kind.settings_from_attrs(em.map_config)
    om, s8 = float(values["omega_m"]), float(values["sigma8"])

    def run(n: int, s: int) -> tuple[np.ndarray, float]:
        settings.param.update(
            **{k: v for k, v in (("count", n), ("seed", s)) if k in settings.param}
        )
        t0 = time.perf_counter()
        maps = np.asarray(kind.generate(settings, omega_m=om, sigma8=s8).values, dtype=np.float32)
        return (maps[:, None] if maps.ndim == 3 else maps), time.perf_counter() - t0

    # the first map alone, then the others, timed: the per-map time leaves out the set-up of
    # the first call (theory tables, FFT plans)
    first, t_first = run(1, int(seed))
    if count > 1:
        rest, t_rest = run(int(count) - 1, int(seed) + 1)
        maps, seconds = np.concatenate([first, rest]), t_rest / (int(count) - 1)
    else:
        maps, seconds = first, t_first
    with _lock:
        _simulations[key] = (maps, seconds)
        while len(_simulations) > SIM_CACHE_SIZE:
            _simulations.popitem(last=False)
    return maps, seconds, False


def _pdf_entry(gen: np.ndarray, sim: np.ndarray | None, name: str) -> dict:
    """Pixel PDFs of one channel (``(B, N, N)`` maps) with the band and distances."""
    from engine.evaluation.emulator import LOG_FLOOR, pdf_distances
    from engine.physics.stats import pixel_pdf

    log = is_log_channel(name)
    entry = {
        "label": display_label(name),
        "sim": None,
        "band": None,
        "ks": None,
        "wasserstein": None,
    }
    if sim is None:
        values = np.log(np.maximum(1.0 + gen, LOG_FLOOR)) if log else gen
        lo, hi = np.percentile(values, [0.1, 99.9])
        centers, density = pixel_pdf(
            values, bins=64, value_range=(float(lo), float(max(hi, lo + 1e-12)))
        )
        entry.update(centers=centers, gen=density)
        return entry
    d = pdf_distances(gen, sim, log=log)
    centers = d["centers"][0]
    half = 0.5 * (centers[1] - centers[0]) if len(centers) > 1 else 0.5
    value_range = (float(centers[0] - half), float(centers[-1] + half))
    per_map = np.stack(
        [
            pixel_pdf(
                np.log(np.maximum(1.0 + m, LOG_FLOOR)) if log else m, len(centers), value_range
            )[1]
            for m in sim
        ]
    )
    sd = per_map.std(0, ddof=1) if len(per_map) > 1 else np.zeros(len(centers))
    entry.update(
        centers=centers,
        gen=d["pdf_gen"][0],
        sim=d["pdf_real"][0],
        band=sd * math.sqrt(1.0 / len(gen) + 1.0 / len(sim)),
        ks=float(d["ks"][0]),
        wasserstein=float(d["wasserstein"][0]),
    )
    return entry


def compute(
    em: Emulator,
    generator: str,
    values: dict,
    count: int,
    seed: int,
    steps: int | None = None,
    sim_count: int = SIM_COUNT,
    progress: Callable[[str], None] | None = None,
) -> GenerateResult:
    """One Sample: ``count`` generated maps at ``values``, simulator maps, metrics.

    Parameters
    ----------
    em : Emulator
    generator : str
        Label of the generator (shown in the views).
    values : dict
        ``{parameter: value}`` of every parameter of ``em.names``, inside its training box.
    count, seed : int
        Generated maps and the seed of both the generator and the simulator.
    steps : int, optional
        Diffusion sampling steps (default: the model's); ignored for a GAN.
    sim_count : int
        Simulator maps (at most ``count``; 0: none).
    progress : callable, optional
        ``progress(text)`` with one line about the stage; may raise (e.g. :class:`Superseded`)
        to stop the computation.

    Raises
    ------
    ConfigError
        Parameters outside the box, bad count or steps, settings the simulator refuses.
    """
    say = progress or (lambda _text: None)
    count = int(count)
    if not 1 <= count <= MAX_COUNT:
        raise ConfigError(f"count={count} must be in [1, {MAX_COUNT}]")
    theta = em.theta(values, count)
    diffusion = em.task_name == "diffusion"
    steps = (int(steps) if steps else em.default_steps) if diffusion else None
    unit = "steps" if diffusion else "maps"

    def step(done: int, total: int) -> None:
        say(f"sampling {count} maps: {done}/{total} {unit}")

    say(f"sampling {count} maps…")
    t0 = time.perf_counter()
    gen = em.sample_tensor(theta, seed, steps if diffusion else None, progress=step)
    gen = gen.detach().float().cpu().numpy()
    gen_seconds = (time.perf_counter() - t0) / count
    channels = list(em.channel_names)
    if len(channels) != gen.shape[1]:
        channels = [f"channel_{i}" for i in range(gen.shape[1])]
    geo = _geometry(em)
    point = {n: float(values[n]) for n in em.names}
    result = GenerateResult(
        generator=generator, task=em.task_name, theta=point, seed=int(seed), steps=steps,
        channels=channels, gen=gen, extent=geo["extent"], length_unit=geo["length_unit"],
        k_label=geo["k_label"], gen_seconds=gen_seconds, kind=str(em.map_config.get("kind", "")),
    )  # fmt: skip
    n_sim = max(0, min(int(sim_count), count))
    reason = simulator_reason(em)
    if reason is not None:
        result.sim_note = reason
    elif n_sim == 0:
        result.sim_note = "No simulator maps (simulator maps = 0)."
    else:
        say(f"simulating {n_sim} {em.map_config['kind']} maps…")
        sim, sim_seconds, cached = simulate(em, point, n_sim, seed)
        if sim.shape[1:] != gen.shape[1:]:
            result.sim_note = (
                f"No comparison: the simulator maps {sim.shape[1:]} differ in shape from the "
                f"generated maps {gen.shape[1:]}."
            )
        else:
            result.sim, result.sim_seconds = sim, sim_seconds
            result.sim_note = (
                f"Simulator: {n_sim} {em.map_config['kind']} maps at the same parameters (of "
                f"{count} generated; set 'simulator maps' for more)"
                + (", from the cache (time measured when they were made)." if cached else ".")
            )
    say("scoring…")
    return score(result, geo["box"])


def score(result: GenerateResult, box: float) -> GenerateResult:
    """Fill in the statistics of ``result`` from its maps (``gen``, and ``sim`` when there are
    simulator maps): P(k) ratio, r(k) of the channels, FID/KID against the real–real floor and
    the pixel PDFs; without simulator maps the generated maps' P(k) and PDFs.

    Parameters
    ----------
    result : GenerateResult
        With ``gen``, ``channels``, ``seed`` and optionally ``sim`` set; changed in place.
    box : float
        ``box_size`` of :func:`engine.physics.stats.power_spectrum` (Mpc/h, or radians for κ).

    Returns
    -------
    GenerateResult
        ``result``.
    """
    from engine.evaluation.emulator import (
        SummaryFeatures,
        cross_correlation,
        extract_features,
        fid_kid,
        power_ratio,
        real_real_floor,
    )
    from engine.physics.stats import power_spectrum

    gen, sim, seed = result.gen, result.sim, result.seed
    if sim is not None and len(gen) >= 2 and len(sim) >= 2:
        result.power = power_ratio(gen, sim, box)
        if gen.shape[1] >= 2:
            result.cross = cross_correlation(gen, sim, box)
        h = min(len(sim) // 2, len(gen))
        if h >= 2:
            feat = SummaryFeatures()
            fg, fr, fo = (extract_features(x, feat) for x in (gen[:h], sim[h : 2 * h], sim[:h]))
            result.fid = {
                "gen": fid_kid(fg, fr, seed=seed),
                "floor": real_real_floor(fo, fr, seed=seed),
                "n": h,
            }
        else:
            result.notes.append("FID and KID need at least 4 simulator maps.")
    elif sim is not None:
        result.notes.append("Spectra and scores need at least 2 generated and 2 simulator maps.")
    if result.power is None:
        spectra = [
            power_spectrum(torch.from_numpy(gen[:, c]).double(), box) for c in range(gen.shape[1])
        ]
        k = spectra[0].k.cpu().numpy()
        keep = np.isfinite(k)
        power = np.stack([s.power.cpu().numpy()[:, keep] for s in spectra])  # (C, B, K)
        result.gen_power = {
            "k": k[keep],
            "p_mean": power.mean(1),
            "p_std": power.std(1, ddof=1) if len(gen) > 1 else np.zeros_like(power[:, 0]),
        }
    use_sim = sim is not None and len(sim) >= 2 and len(gen) >= 2
    result.pdf = [
        _pdf_entry(gen[:, c], sim[:, c] if use_sim else None, name)
        for c, name in enumerate(result.channels)
    ]
    return result


# ---------------------------------------------------------------------------------------------
# The page
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
            self.theta = theta
            self.error = ""
            self.info = self._describe(em)
        self._steps_widget.visible = em.task_name == "diffusion"
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
            self.steps, self.sim_count, partial(self._report, tag),
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
