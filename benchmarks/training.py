"""Training throughput of the project's networks: ``python -m benchmarks.training [--device
auto|cpu|cuda] [--quick]``.

For each network below, built as its named preset (:data:`engine.train.presets.PRESETS`) builds
it — the preset's composed :class:`~engine.train.settings.TrainParams` from
:func:`~engine.train.settings.resolve_params`, the task of :data:`engine.tasks.TASKS` made from a
task state (:meth:`~engine.tasks.base.Task.from_state`, the no-data path) describing the data the
preset trains on, then the task's own :meth:`~engine.tasks.base.Task.build_networks` — one
training step is the task's own :meth:`~engine.tasks.base.Task.training_step` on a fixed
synthetic batch of the shape and dtype the task feeds (random tensors made once on the device:
no dataset is read and no map is generated), with what the loop
(:class:`engine.train.loop.Trainer`) adds around it: AdamW per network with the task's
optimiser options, gradient clipping, the EMA of the weights when the preset has one, and on
CUDA the preset's bfloat16 autocast (``amp``, when the GPU supports it), TF32 and
channels_last settings.

=================  ==============  ====================================================  =====
preset             task            synthetic batch (the preset's data)                   batch
=================  ==============  ====================================================  =====
``grf64``          regression      (B, 1, 64, 64) float32 maps, (B, 2) labels in [0, 1)  128
``lens_resnet``    classification  (B, 1, 64, 64) float32 images, (B,) int64 classes     128
``diffusion32``    diffusion       (B, 2, 32, 32) float32 maps (delta, theta), (B, 2)    32
``gan32``          gan             (B, 2, 32, 32) float32 maps (delta, theta), (B, 2)    32
``delens512``      delensing       (B, 2, 256, 256) windows (crop 128 + margin 64 from   8
                                   the neighbouring faces, nside 512), (B, 2, 128, 128)
=================  ==============  ====================================================  =====

A network whose modules import a package this machine lacks (diffusers for the diffusion
U-Net; healpy, which imports astropy, for the HEALPix U-Net) is skipped with a row saying why.

Reported per network: samples per second (maps, images or windows: the task's
``sample_unit``) and milliseconds per optimiser step (a GAN step is one discriminator and one
generator update), after warm-up steps, timed over N steps with ``torch.cuda.synchronize()``
at both ends on CUDA. On CUDA the same steps are measured on the CPU in this run (fewer steps)
as the peer: ``ratio`` = CUDA rate / CPU rate (CPU ms / CUDA ms for the time rows), so > 1
means the GPU is faster, as in :mod:`benchmarks`. On a GPU with bfloat16, one more row
compares ``lens_resnet`` with bfloat16 autocast against the same network without autocast
(float32, TF32 as the preset says), both on the GPU.
On a machine without CUDA, ``--device auto`` is the CPU and there is no peer.

Prints a table and writes ``benchmarks/results/training.json`` (rows with name, value, unit
and, where a peer exists, peer, peer_value, ratio; meta with the machine: torch, device name,
CPUs, threads). ``--quick``: fewer steps (a smoke run; marked ``quick`` in the meta). Not part
of ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "training.json"
REPO = Path(__file__).resolve().parents[1]

#: Side of the strong-lens images of data/lenses64.zarr (lens_resnet's dataset), pixels.
LENS_SIZE = 64
#: Classes of the strong-lens images (substructure: none, cdm, vortex).
LENS_CLASSES = ("none", "cdm", "vortex")
#: The 32² PM slabs of data/pm2c32.zarr (gan32's and diffusion32's dataset): side, channels.
PM_SIZE, PM_FIELDS = 32, ("delta", "theta")
#: HEALPix resolution of data/cmb512.zarr (delens512's skies).
CMB_NSIDE = 512

#: (warm-up, timed) steps on CUDA, on the CPU as the main device, and on the CPU as CUDA's peer.
STEPS = {"cuda": (5, 30), "cpu": (2, 5), "peer": (1, 3)}
QUICK_STEPS = {"cuda": (2, 5), "cpu": (1, 2), "peer": (1, 1)}


@dataclass(frozen=True)
class Network:
    """One benchmarked network: its preset, the task state that stands for the preset's data,
    and the synthetic batch of one step."""

    #: Name in :data:`engine.train.presets.PRESETS`.
    preset: str
    #: ``state(settings)``: the task state (:meth:`Task.from_state`) of the preset's data.
    state: Callable[[Any], dict[str, Any]]
    #: ``batch(task, settings, device, generator)``: the step's inputs and targets.
    batch: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    #: Task attributes that :meth:`Task.from_state` does not restore but training needs.
    extra: Callable[[Any], dict[str, Any]] = lambda settings: {}


def _prior_state(settings, channels: int, kind: str) -> dict[str, Any]:
    """Regression's task state: labels omega_m, sigma8 in the preset's prior box, scale 1."""
    return {
        "names": ["omega_m", "sigma8"],
        "prior_low": [settings.omega_m_min, settings.sigma8_min],
        "prior_high": [settings.omega_m_max, settings.sigma8_max],
        "map_scale": 1.0,
        "channels": channels,
        "kind": kind,
    }


def _pm_state(settings) -> dict[str, Any]:
    """A generator's task state for the 2-channel PM slabs (ln(1 + δ), asinh θ, unit scales)."""
    return {
        **_prior_state(settings, len(PM_FIELDS), "pm"),
        "channel_names": list(PM_FIELDS),
        "log_offsets": [1.0, None],
        "asinh_scales": [None, 1.0],
        "u_mean": [0.0, 0.0],
        "u_std": [1.0, 1.0],
    }


def _diffusion_state(settings) -> dict[str, Any]:
    """The diffusion task's state: the PM slabs and the preset's training noise schedule."""
    from engine.tasks.diffusion_settings import make_scheduler

    config = make_scheduler(
        settings.train_timesteps, settings.beta_schedule, settings.prediction_type
    ).config
    return {
        **_pm_state(settings),
        "scheduler": {k: v for k, v in dict(config).items() if not k.startswith("_")},
        "sampler": settings.sampler,
        "sample_steps": settings.sample_steps,
        "val_sample_steps": settings.val_sample_steps,
        "val_generated": settings.val_generated,
    }


def _maps_batch(channels: int, size: int):
    """Batch maker of ``(B, channels, size, size)`` standard-normal maps with ``(B, 2)``
    labels uniform in [0, 1)."""

    def batch(task, settings, device, gen):
        n = settings.batch_size
        x = torch.randn((n, channels, size, size), generator=gen, device=device)
        return x, torch.rand((n, 2), generator=gen, device=device)

    return batch


def _lens_batch(task, settings, device, gen):
    """``(B, 1, 64, 64)`` normalised images and ``(B,)`` int64 class indices."""
    n = settings.batch_size
    x = torch.randn((n, 1, LENS_SIZE, LENS_SIZE), generator=gen, device=device)
    return x, torch.randint(0, len(LENS_CLASSES), (n,), generator=gen, device=device)


def _window_batch(task, settings, device, gen):
    """``(B, 2, crop + 2m, crop + 2m)`` padded-face windows and their ``(B, 2, crop, crop)``
    target centres (the task's margin m)."""
    n, crop, m = settings.batch_size, int(settings.crop), task._margin()
    x = torch.randn((n, 2, crop + 2 * m, crop + 2 * m), generator=gen, device=device)
    return x, torch.randn((n, 2, crop, crop), generator=gen, device=device)


#: The benchmarked networks, by preset, in table order.
NETWORKS: dict[str, Network] = {
    n.preset: n
    for n in (
        Network(
            "grf64",
            lambda s: _prior_state(s, 1, s.kind),
            lambda task, s, device, gen: _maps_batch(1, s.size)(task, s, device, gen),
        ),
        Network(
            "lens_resnet",
            lambda s: {
                "classes": list(LENS_CLASSES),
                "label": s.label,
                "normalisation": {"transform": "asinh", "softening": 1.0, "mean": 0.0, "std": 1.0},
                "channels": 1,
                "kind": "strong_lens",
                "size": LENS_SIZE,
                "pixel_scale": 0.101,
            },
            _lens_batch,
        ),
        Network(
            "diffusion32",
            _diffusion_state,
            _maps_batch(len(PM_FIELDS), PM_SIZE),
            extra=lambda s: {"size": PM_SIZE},
        ),
        Network(
            "gan32",
            lambda s: {
                **_pm_state(s),
                "latent_dim": s.latent_dim,
                "size": PM_SIZE,
                "random_shift": s.random_shift,
            },
            _maps_batch(len(PM_FIELDS), PM_SIZE),
        ),
        Network(
            "delens512",
            lambda s: {
                "scale": 1.0,
                "nside": CMB_NSIDE,
                "sky_attrs": {},
                "crop": s.crop,
                "margin": 0,  # the task takes its margin from the settings
            },
            _window_batch,
        ),
    )
}


class _Stepper:
    """The loop's side of a training step (as :class:`engine.train.loop._Stepper`): zero the
    gradients, back-propagate, clip, take the AdamW step."""

    def __init__(self, models, optimizers, grad_clip: float, autocast, channels_last: bool):
        self.models, self.optimizers = models, optimizers
        self.max_norm = grad_clip if grad_clip > 0 else math.inf
        self.autocast = autocast
        self.channels_last = channels_last

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The network input in the loop's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def step(self, name: str, loss: torch.Tensor) -> torch.Tensor:
        """One optimiser update of network ``name``; returns the gradient norm (0-d)."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        trainable = [q for q in self.models[name].parameters() if q.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, self.max_norm)
        opt.step()
        return grad_norm.detach()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Run:
    """A network ready to train on a synthetic batch (:func:`setup`)."""

    #: The preset's composed, checked settings (dataset replaced by the synthetic batch).
    settings: Any
    #: The task (:mod:`engine.tasks`) that owns the networks and the step.
    task: Any
    #: The task's networks on the device, ``{name: module}``.
    models: dict[str, torch.nn.Module]
    #: One training step; returns the task's 0-d tensors (``loss`` first).
    step: Callable[[], dict[str, torch.Tensor]]
    #: ``"bfloat16"`` or ``"off"``.
    autocast: str
    #: Shape of the network input of one step.
    input_shape: list[int]


def setup(preset: str, device: torch.device, amp: bool | None = None) -> Run:
    """Network ``preset`` of :data:`NETWORKS` on ``device``, ready to train.

    Parameters
    ----------
    preset : str
        A key of :data:`NETWORKS`.
    device : torch.device
    amp : bool, optional
        Force bfloat16 autocast on (where the GPU supports it) or off; default the preset's
        ``amp`` setting. Ignored on the CPU (never autocast there, as in the loop).

    Raises
    ------
    ImportError
        A package the task's modules need is missing.
    """
    from engine.tasks import get_task
    from engine.train.finetune import EMA, param_groups
    from engine.train.settings import configure_tf32, resolve_params

    spec = NETWORKS[preset]
    # The preset's settings, checked; its dataset is replaced by the synthetic batch below.
    settings = resolve_params(preset, overrides={"dataset": ""})
    task = get_task(settings.task_name).from_state(spec.state(settings), device)
    task.settings = settings
    for key, value in spec.extra(settings).items():
        setattr(task, key, value)
    cuda = device.type == "cuda"
    if cuda:
        configure_tf32(settings.tf32)
    channels_last = bool(settings.channels_last and cuda)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        built = task.build_networks()
    models = {}
    for name, model in built.items():
        model = model.to(device)
        models[name] = model.to(memory_format=torch.channels_last) if channels_last else model
    optimizers = {}
    for name, model in models.items():  # as Trainer._optimizer (no lr_decay)
        options = dict(task.optimizer_options(name))
        scale = float(options.pop("lr_scale", 1.0))
        options.setdefault("weight_decay", settings.weight_decay)
        optimizers[name] = torch.optim.AdamW(param_groups(model), lr=settings.lr * scale, **options)
    averaged = task.ema_networks or tuple(models)
    emas = (
        {n: EMA(models[n], settings.ema_decay) for n in averaged} if settings.ema_decay > 0 else {}
    )
    use_amp = bool(settings.amp if amp is None else amp) and cuda and torch.cuda.is_bf16_supported()
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp)
    stepper = _Stepper(models, optimizers, settings.grad_clip, autocast, channels_last)
    gen = torch.Generator(device=device).manual_seed(0)
    x, y = spec.batch(task, settings, device, gen)
    task.train_batch = lambda step, start=0, stop=None: (x[start:stop], y[start:stop])
    rows = (0, settings.batch_size)
    done = [0]

    def step() -> dict[str, torch.Tensor]:
        for net in models.values():
            net.train()
        values = task.training_step(done[0], rows, models, stepper)
        for name, ema in emas.items():
            ema.update(models[name], done[0])
        done[0] += 1
        return values

    return Run(settings, task, models, step, "bfloat16" if use_amp else "off", list(x.shape))


def measure(
    preset: str, device: torch.device, warmup: int, steps: int, amp: bool | None = None
) -> dict[str, Any]:
    """Training speed of network ``preset`` on ``device``: ``warmup`` untimed steps, then
    ``steps`` timed ones (synchronised on CUDA before and after).

    Returns
    -------
    dict
        ``samples_per_s`` (the task's samples per second), ``ms_per_step``, ``unit`` (e.g.
        ``"maps/s"``) and the run's details (task, batch, autocast, parameters, input shape,
        the last loss, steps, warmup).

    Raises
    ------
    ImportError
        A package the task's modules need is missing.
    """
    run = setup(preset, device, amp)
    for _ in range(warmup):
        run.step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        values = run.step()
    _sync(device)
    seconds = (time.perf_counter() - t) / steps
    batch = run.settings.batch_size
    return {
        "samples_per_s": batch / seconds,
        "ms_per_step": seconds * 1e3,
        "unit": f"{run.task.sample_unit}/s",
        "task": run.task.name,
        "batch": batch,
        "autocast": run.autocast,
        "parameters": sum(p.numel() for m in run.models.values() for p in m.parameters()),
        "input": run.input_shape,
        "loss": float(values["loss"]),
        "steps": steps,
        "warmup": warmup,
    }


def why_skipped(exc: ImportError) -> str:
    """One line on a failed import: the missing module and the chain that imported it, from
    the last file of the engine on (``"No module named 'astropy' (engine/data/cmb.py -> healpy
    -> astropy)"``)."""
    chain: list[str] = []
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename)
        if path.is_relative_to(REPO / "engine"):
            chain = [str(path.relative_to(REPO))]
        elif chain and "site-packages" in path.parts[:-1]:
            package = path.parts[path.parts.index("site-packages") + 1]
            if package not in chain:
                chain.append(package)
    if exc.name and exc.name.split(".")[0] not in chain:
        chain.append(exc.name.split(".")[0])
    return f"{exc}" + (f" ({' -> '.join(chain)})" if chain else "")


def _not_measured(preset: str, why: str) -> dict:
    """The row of a network that was not measured, with the reason (``skipped``)."""
    return dict(name=f"train_{preset}", value=None, unit="", skipped=why, meta={"preset": preset})


def _failure(exc: Exception) -> str:
    """One line on an error other than a missing package (its traceback goes to stderr)."""
    traceback.print_exc()
    return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def bench_network(preset: str, device: torch.device, quick: bool = False) -> list[dict]:
    """Rows of network ``preset`` on ``device``: samples per second and ms per step, with the
    CPU measured in the same run as the peer when ``device`` is CUDA.

    A network whose modules need a missing package gives one row with value None and
    ``skipped`` saying which package and which engine module imported it; any other error in
    its measurement gives such a row too (``skipped: failed: ...``), so one network never stops
    the others.
    """
    table = QUICK_STEPS if quick else STEPS
    try:
        ours = measure(preset, device, *table[device.type])
    except ImportError as exc:
        return [_not_measured(preset, why_skipped(exc))]
    except Exception as exc:  # reported in the row, the other networks go on
        return [_not_measured(preset, _failure(exc))]
    meta = {k: ours[k] for k in ("task", "batch", "autocast", "parameters", "input", "loss")}
    meta.update(preset=preset, steps=ours["steps"], warmup=ours["warmup"])
    rate = dict(
        name=f"train_{preset}_{ours['unit'].replace('/', '_per_')}",
        value=ours["samples_per_s"],
        unit=ours["unit"],
    )
    ms = dict(name=f"train_{preset}_ms_per_step", value=ours["ms_per_step"], unit="ms")
    if device.type == "cuda":
        try:
            peer = measure(preset, torch.device("cpu"), *table["peer"])
        except Exception as exc:  # the CUDA numbers stand without their peer
            meta["peer_error"] = _failure(exc)
        else:
            label = f"CPU, {torch.get_num_threads()} threads"
            rate.update(peer=label, peer_value=peer["samples_per_s"])
            rate["ratio"] = rate["value"] / rate["peer_value"]
            ms.update(peer=label, peer_value=peer["ms_per_step"])
            ms["ratio"] = ms["peer_value"] / ms["value"]
            meta.update(peer_steps=peer["steps"], peer_warmup=peer["warmup"])
            meta["peer_loss"] = peer["loss"]
    rate["meta"] = ms["meta"] = meta
    return [rate, ms]


def bench_bf16(
    device: torch.device, quick: bool = False, preset: str = "lens_resnet"
) -> list[dict]:
    """bfloat16 autocast against float32 (TF32 as the preset says) for network ``preset`` on
    CUDA, measured one after the other here (``ratio`` > 1: bfloat16 is faster; both losses in
    the meta, finite when autocast works). No row on the CPU or on GPUs without bfloat16."""
    if device.type != "cuda" or not torch.cuda.is_bf16_supported():
        return []
    warmup, steps = (QUICK_STEPS if quick else STEPS)["cuda"]
    try:
        bf16 = measure(preset, device, warmup, steps, amp=True)
        fp32 = measure(preset, device, warmup, steps, amp=False)
    except ImportError as exc:
        return [_not_measured(f"{preset}_bf16_vs_fp32", why_skipped(exc))]
    except Exception as exc:  # e.g. an op without a bfloat16 kernel
        return [_not_measured(f"{preset}_bf16_vs_fp32", _failure(exc))]
    return [
        dict(
            name=f"train_{preset}_bf16_vs_fp32",
            value=bf16["samples_per_s"],
            unit=bf16["unit"],
            peer="same GPU, amp off (float32)",
            peer_value=fp32["samples_per_s"],
            ratio=bf16["samples_per_s"] / fp32["samples_per_s"],
            meta={"preset": preset, "loss_bf16": bf16["loss"], "loss_fp32": fp32["loss"]},
        )
    ]


def print_table(rows: list[dict]) -> None:
    """One line per row: value, unit, peer, peer value, ratio (or why it was not measured)."""
    head = f"{'benchmark':<36}{'value':>10} {'unit':<11}{'peer':<28}{'peer value':>11}{'ratio':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.get("value") is None:
            print(f"{r['name']:<36}{'-':>10} skipped: {r.get('skipped', '')}")
            continue
        pv = f"{r['peer_value']:.3g}" if "peer_value" in r else ""
        ratio = f"{r['ratio']:.3g}x" if "ratio" in r else ""
        print(
            f"{r['name']:<36}{r['value']:>10.3g} {r['unit']:<11}{r.get('peer', ''):<28}"
            f"{pv:>11}{ratio:>8}"
        )


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write(rows: list[dict], meta: dict) -> None:
    """Write ``rows`` to :data:`RESULTS` (atomically), each with ``meta`` under its own."""
    out = [{**r, "meta": {**meta, **r.get("meta", {})}} for r in rows]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, RESULTS)


def main(argv=None) -> int:
    """Run every network, print the table, write :data:`RESULTS` (after every network, so a
    run cut short keeps what it measured)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.training", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: CUDA when available (with the CPU as peer), else the CPU",
    )
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    args = parser.parse_args(argv)
    from engine.device import default_device
    from engine.train.settings import configure_threads

    try:
        device = default_device(args.device)
    except ValueError as exc:
        print(exc)
        return 2
    configure_threads(0)
    cuda = device.type == "cuda"
    meta = dict(
        machine=platform.machine(),
        cpus=os.cpu_count(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if cuda else cpu_name(),
        cpu_name=cpu_name(),
        quick=args.quick,
        time=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    print(f"# {meta['device_name']} ({device}), torch {meta['torch']}, {meta['threads']} threads")
    t0 = time.perf_counter()
    rows: list[dict] = []
    for preset in NETWORKS:
        t = time.perf_counter()
        new = bench_network(preset, device, args.quick)
        rows += new
        what = (
            f"{new[0]['value']:.3g} {new[0]['unit']}"
            + (f", CPU {new[0]['peer_value']:.3g}" if "peer_value" in new[0] else "")
            if new[0]["value"] is not None
            else new[0]["skipped"]
        )
        print(f"# {preset}: {what} ({time.perf_counter() - t:.1f} s)", flush=True)
        write(rows, meta)
    rows += bench_bf16(device, args.quick)
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    write(rows, meta)
    print()
    print_table(rows)
    print(f"\nwrote {RESULTS} ({meta['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
