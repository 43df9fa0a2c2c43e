"""Convergence of a diffusion emulator's sampler at one parameter point, against the simulator.

``python -m benchmarks.emulator_samplers [--checkpoint assets/models/diffusion32] [--point 0.45
0.95] [--count 128] [--seeds 1 3] [--runs dpm:20 dpm:50 dpm:200 ddim:50 ddim:1000]
[--device cuda]``

For each sampler and step count of ``--runs`` and each noise seed, ``--count`` maps of the
emulator (:class:`engine.evaluation.sampling.Emulator`) at the point (Ω_m, σ8) against as many
PM maps simulated at the same point with the settings the model was trained on (its
``map_config``, :func:`engine.physics.pm.generate_batch`, one fixed seed): per channel, the mean
over the bins k ≤ k_N/2 of |P̄_gen(k)/P̄_real(k) − 1| (mean spectra of each set,
:func:`engine.physics.stats.power_spectrum`), and the 99 % and 99.9 % quantiles of the first
channel's pixels. The same numbers for two independent simulated sets of the same size (the
score of a perfect generator at this N) are printed first: with maps as non-Gaussian as PM δ
slabs, a few maps with a massive halo carry the power, so the seed-to-seed scatter at N = 128
is of the order of the steps' effect (docs/results.md).

Writes ``benchmarks/results/emulator_samplers.json`` (``emulator_samplers_cuda.json`` on CUDA).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "emulator_samplers.json"


def spectra(maps: torch.Tensor, box: float) -> np.ndarray:
    """Per-map P(k) of every channel: (C, B, K) float64, bins k_f wide up to k_N."""
    from engine.physics import stats

    m = maps.double().cpu()
    edges = stats.default_edges(tuple(m.shape[-2:]), box)
    return np.stack(
        [stats.power_spectrum(m[:, c], box, edges=edges).power.numpy() for c in range(m.shape[1])]
    )


def compare(gen: torch.Tensor, real: torch.Tensor, box: float) -> dict:
    """Mean |P̄_gen/P̄_real − 1| over k ≤ k_N/2 per channel, and the 99 / 99.9 % quantiles of
    channel 0 of each set."""
    pg, pr = spectra(gen, box), spectra(real, box)
    half = pg.shape[-1] // 2
    ratio = pg.mean(1) / pr.mean(1)
    q = [0.99, 0.999]
    return {
        "pk_error": [round(float(np.mean(np.abs(r[:half] - 1))), 4) for r in ratio],
        "quantiles_gen": np.round(np.quantile(gen[:, 0].cpu().numpy(), q), 2).tolist(),
        "quantiles_real": np.round(np.quantile(real[:, 0].cpu().numpy(), q), 2).tolist(),
    }


def simulated(config: dict, point, count: int, seed: int, device: str) -> torch.Tensor:
    """``count`` PM maps (count, C, N, N) float32 at ``point`` with the model's settings."""
    from engine.physics import pm

    settings = pm.PMParams(**{k: v for k, v in config.items() if k in pm.PMParams.param})
    gen = torch.Generator(device=device).manual_seed(seed)
    om = torch.full((count,), float(point[0]), device=device)
    s8 = torch.full((count,), float(point[1]), device=device)
    return pm.generate_batch(settings, om, s8, gen, device).float().cpu()


def main(argv: list[str] | None = None) -> int:
    """Measure, print one line per run, write :data:`OUT`."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.emulator_samplers", description=__doc__)
    ap.add_argument("--checkpoint", default=str(ROOT / "assets" / "models" / "diffusion32"))
    ap.add_argument("--point", type=float, nargs=2, default=(0.45, 0.95), metavar=("OM", "S8"))
    ap.add_argument("--count", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--runs", nargs="+", default=["dpm:20", "dpm:50", "dpm:200"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    from engine.evaluation.sampling import Emulator

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: CUDA is not available on this machine", file=sys.stderr)
        return 2
    em = Emulator(args.checkpoint, device=args.device)
    config, box = em.map_config, float(em.map_config["box_size"])
    real = simulated(config, args.point, args.count, 7, args.device)
    other = simulated(config, args.point, args.count, 8, args.device)
    rows = [{"run": "simulator vs simulator (floor)", **compare(other, real, box)}]
    print(f"{args.checkpoint} at (Ω_m, σ8) = {tuple(args.point)}, {args.count} maps each")
    print(f"{rows[0]['run']:<34} pk_error {rows[0]['pk_error']}")
    theta = np.tile(np.asarray(args.point, float), (args.count, 1))
    for run in args.runs:
        sampler, steps = run.split(":")
        for seed in args.seeds:
            t = time.perf_counter()
            maps = em.sample_tensor(theta, seed=seed, steps=int(steps), sampler=sampler)
            row = {"run": f"{sampler} {steps} steps, seed {seed}", "sampler": sampler,
                   "steps": int(steps), "seed": seed,
                   "seconds": round(time.perf_counter() - t, 2), **compare(maps.cpu(), real, box)}  # fmt: skip
            rows.append(row)
            print(
                f"{row['run']:<34} pk_error {row['pk_error']}  q99/99.9 {row['quantiles_gen']} "
                f"(simulated {row['quantiles_real']})  {row['seconds']} s"
            )
    out = OUT if args.device == "cpu" else OUT.with_name("emulator_samplers_cuda.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": args.device,
            "checkpoint": args.checkpoint, "point": list(args.point), "count": args.count}  # fmt: skip
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**meta, "rows": rows}, indent=1))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
