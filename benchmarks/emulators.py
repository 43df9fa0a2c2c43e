"""Sampling throughput of the map emulators against the particle-mesh simulator, in one run.

Rows (maps per second, wall clock, the median of a few repeats, torch's CPU threads):

* ``gan`` / ``diffusion``: the shipped emulators ``assets/models/gan32`` and
  ``assets/models/diffusion32`` (:class:`engine.evaluation.sampling.Emulator`, maps in map units
  including the inverse transform), the diffusion model with its own sampler at its
  ``sample_steps`` and at 20 steps; batch 256 (GAN) and 64 (diffusion);
* ``gan64 network``: the generator of preset ``gan64`` (random weights: throughput does not
  depend on them) at 64² and 2 channels, batch 256 — the issue's ≥ 1000 maps/s target;
* ``pm``: the simulator the emulators stand in for, at each geometry (32³ particles in
  64 Mpc/h; 64³ in 128 Mpc/h; 10 KDK steps, δ and θ, 8 slabs per simulation so one simulation
  gives 8 maps), batch 8 simulations.

``speed-up`` is emulator maps/s over the simulator's at the same map size, measured here in the
same run. Writes ``benchmarks/results/emulators.json``; ``python -m benchmarks.emulators``
(also run by ``make bench``). ``--device cuda`` runs everything (emulators and simulator) on the
GPU, timed with ``torch.cuda.synchronize``, and writes ``emulators_cuda.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "emulators.json"
MODELS = ROOT / "assets" / "models"


def _rate(fn, count: int, repeat: int = 3) -> float:
    """Median maps/s of ``fn()`` making ``count`` maps (one warm-up call;
    :func:`benchmarks.__main__.timeit`; CUDA work is waited for inside each call)."""
    from benchmarks.__main__ import timeit

    def synced():
        out = fn()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return out

    return count / timeit(synced, repeat=repeat, warmup=1)


def pm_rate(size: int, box: float, sims: int = 8, device: str = "cpu") -> float:
    """Maps/s of the PM simulator (two channels, 8 slabs per simulation) at ``size``³."""
    from benchmarks.emulator_data import emulator_settings
    from engine.physics import pm

    settings = emulator_settings(size=size, box_size=box)
    om = torch.full((sims,), 0.3, device=device)
    s8 = torch.full((sims,), 0.8, device=device)

    def run():
        gen = torch.Generator(device=device).manual_seed(0)
        return pm.generate_batch(settings, om, s8, gen, device)

    maps = run().shape[0]
    return _rate(run, maps, repeat=2)


def gan64_network_rate(batch: int = 256, device: str = "cpu") -> float:
    """Maps/s of the gan64 generator network (random weights) at 64², 2 channels."""
    from engine.nn.registry import build_model
    from engine.train.settings import PRESETS

    p = PRESETS["gan64"]
    g = build_model(
        "gan_generator",
        latent_dim=p["latent_dim"],
        n_params=2,
        channels=2,
        size=64,
        embed_dim=p["embed_dim"],
        circular_padding=True,
        width=p["width"],
        noise=True,
    ).eval()
    g.to(device)
    y = torch.rand(batch, 2, device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    @torch.no_grad()
    def run():
        z = torch.randn(batch, p["latent_dim"], generator=gen, device=device)
        noise = torch.randn(batch, g.noise_dim, generator=gen, device=device)
        return g(z, y, noise)

    return _rate(run, batch)


def emulator_rates(name: str, steps=(None,), batch: int = 64, device: str = "cpu") -> list[dict]:
    """Maps/s of a shipped emulator (``assets/models/NAME``) per number of sampling steps."""
    from engine.evaluation.sampling import Emulator

    path = MODELS / name
    if not (path / "checkpoints" / "best.pt").is_file():
        return []
    em = Emulator(path, device=device)
    theta = np.tile([0.3, 0.8], (batch, 1))
    rows = []
    for s in steps:
        rate = _rate(lambda s=s: em.sample_tensor(theta, seed=0, steps=s, batch_size=batch), batch)
        rows.append(
            {
                "emulator": name,
                "task": em.task_name,
                "size": int(em.map_config.get("size", 0)),
                "steps": s or em.default_steps,
                "sampler": em.default_sampler,
                "maps_per_s": rate,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, write :data:`OUT` (``emulators_cuda.json`` with
    ``--device cuda``)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.emulators", description=__doc__)
    ap.add_argument("--device", default="cpu", help="torch device of every row: cpu, cuda[:i]")
    args = ap.parse_args(argv)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {device}: CUDA is not available on this machine", file=sys.stderr)
        return 2
    out = OUT if device == "cpu" else OUT.with_name(f"emulators_{device.split(':')[0]}.json")
    threads = torch.get_num_threads()
    sim = {32: pm_rate(32, 64.0, device=device), 64: pm_rate(64, 128.0, device=device)}
    rows = emulator_rates("gan32", batch=256, device=device)
    rows += emulator_rates("diffusion32", steps=(None, 20), batch=64, device=device)
    rows.append(
        {
            "emulator": "gan64 network",
            "task": "gan",
            "size": 64,
            "steps": None,
            "sampler": None,
            "maps_per_s": gan64_network_rate(device=device),
        }
    )
    for r in rows:
        r["pm_maps_per_s"] = sim[r["size"]]
        r["speed_up"] = r["maps_per_s"] / sim[r["size"]]
    where = (
        f"CPU, {threads} torch threads"
        if device == "cpu"
        else f"{device}: {torch.cuda.get_device_name(torch.device(device))}"
    )
    print(f"emulator sampling vs the PM simulator ({where}; maps/s)")
    print(
        f"{'emulator':<16} {'size':>5} {'steps':>10} {'maps/s':>10} {'PM maps/s':>10} {'speed-up':>9}"
    )
    for r in rows:
        steps = "-" if r["steps"] is None else f"{r['steps']} {r['sampler']}"
        print(
            f"{r['emulator']:<16} {r['size']:>5} {steps:>10} {r['maps_per_s']:>10.1f} "
            f"{r['pm_maps_per_s']:>10.2f} {r['speed_up']:>8.3g}×"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": platform.platform(),
        "device": device if device == "cpu" else torch.cuda.get_device_name(torch.device(device)),
        "cpu_threads": threads,
        "torch": torch.__version__,
        "rows": rows,
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
