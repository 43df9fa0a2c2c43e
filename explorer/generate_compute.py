"""The computation of the Generate page (no Panel objects): listing and loading generators
(cached per server process), simulating the matching simulator maps (cached per parameter
point), and scoring generated against simulated maps with :mod:`engine.evaluation.emulator`.
:mod:`explorer.generate` runs these in its worker threads and draws the result.

Units: parameters are dimensionless (Ω_m, σ8, ...); lengths in the kind's unit (Mpc/h, arcmin);
times in seconds per map.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.device import default_device
from engine.evaluation.sampling import GENERATOR_TASKS, Emulator
from engine.kinds import KINDS, get_kind
from engine.lru import LRUCache
from engine.params import FIDUCIAL, ConfigError
from engine.runs import list_runs, read_json
from engine.train.checkpoint import resolve_checkpoint
from explorer.generate_views import GenerateResult, display_label, is_log_channel

#: Most generated maps per Sample.
MAX_COUNT = 64
#: Simulator maps per Sample by default (at most the generated count): particle-mesh slabs at
#: 64³ take ~0.5 s each on a laptop CPU.
SIM_COUNT = 8
#: Simulator sets kept per server process (per generator, parameter point, count and seed).
SIM_CACHE_SIZE = 32
#: Emulators kept loaded per server process.
EMULATOR_CACHE_SIZE = 4
_emulators: LRUCache[Emulator] = LRUCache(EMULATOR_CACHE_SIZE)
_simulations: LRUCache[tuple[np.ndarray, float]] = LRUCache(SIM_CACHE_SIZE)


def class_label(config: dict) -> str:
    """The class coordinate a run's generator is conditioned on (its ``label`` setting, e.g.
    ``substructure`` for the strong-lens diffusion model), or "" for a generator of maps
    conditioned on continuous parameters."""
    settings = config.get("settings") if isinstance(config.get("settings"), dict) else {}
    return str(settings.get("label") or config.get("label") or "").strip()


def generator_task(path: str | Path) -> str | None:
    """Task of the run directory ``path`` from its ``config.json`` (``task``, else
    ``settings.task``), if it is a generator of maps (continuous parameters; class-conditional
    ones are the Lensing page's, :func:`class_label`) with a checkpoint file; else None."""
    config = read_json(Path(path) / "config.json") or {}
    task = config.get("task") or (config.get("settings") or {}).get("task")
    if task not in GENERATOR_TASKS or class_label(config):
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
    return _emulators.get_or_make(key, lambda: Emulator(path, dev))


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
    kept = _simulations.get(key)
    if kept is not None:
        return (*kept, True)
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
    _simulations.put(key, (maps, seconds))
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
    sampler: str | None = None,
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
    sampler : {"ddim", "dpm", "sde"}, optional
        Diffusion sampler (default: the model's); ignored for a GAN.

    Raises
    ------
    ConfigError
        Parameters outside the box, bad count, steps or sampler, settings the simulator refuses.
    """
    say = progress or (lambda _text: None)
    count = int(count)
    if not 1 <= count <= MAX_COUNT:
        raise ConfigError(f"count={count} must be in [1, {MAX_COUNT}]")
    theta = em.theta(values, count)
    diffusion = em.task_name == "diffusion"
    steps = (int(steps) if steps else em.default_steps) if diffusion else None
    sampler = (sampler or em.default_sampler) if diffusion else None
    unit = "steps" if diffusion else "maps"

    def step(done: int, total: int) -> None:
        say(f"sampling {count} maps: {done}/{total} {unit}")

    say(f"sampling {count} maps…")
    t0 = time.perf_counter()
    gen = em.sample_tensor(theta, seed, steps, progress=step, sampler=sampler)
    gen = gen.detach().float().cpu().numpy()
    gen_seconds = (time.perf_counter() - t0) / count
    channels = list(em.channel_names)
    if len(channels) != gen.shape[1]:
        channels = [f"channel_{i}" for i in range(gen.shape[1])]
    geo = _geometry(em)
    point = {n: float(values[n]) for n in em.names}
    result = GenerateResult(
        generator=generator, task=em.task_name, theta=point, seed=int(seed), steps=steps,
        sampler=sampler,
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
