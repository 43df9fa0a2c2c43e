"""``sample`` verb: draw maps from a trained map emulator (GAN or diffusion checkpoint).

::

    python -m engine sample --checkpoint assets/models/gan64 --omega-m 0.3 --sigma8 0.8 \\
        --count 64 --seed 1 --out gen.zarr
    python -m engine sample --checkpoint runs/camels-diffusion --param A_SN1=1.2 ... --steps 50
    python -m engine sample --checkpoint runs/lens_diffusion --substructure cdm --count 16 \
        --seed 1 --out gen.zarr

The maps are written as the training kind's DataArray (:mod:`engine.evaluation.sampling`),
with a progress bar over batches (GAN) or diffusion steps. A class-conditional diffusion model
takes its class with ``--label CLASS`` (aliases ``--class``, ``--substructure``: the same flag
whatever the model's class coord is called) and optionally ``--guidance W``.
"""

from __future__ import annotations

import argparse
import sys
import time

from engine.outputs import add_overwrite_argument, check_output
from engine.params import ConfigError


def add_parser(sub) -> None:
    """Add the ``sample`` subparser to ``sub``."""
    p = sub.add_parser(
        "sample",
        help="Draw maps from a trained emulator (GAN or diffusion checkpoint) at given parameters "
        "or of a given class.",
        description="Draw --count maps from a trained conditional generator at one point of "
        "its parameters (a class-conditional one: of one class, --label) and write them (.zarr "
        "or .nc) with the dims, coords and attrs of the data it was trained on.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="Generator checkpoint .pt or run directory (checkpoints/best.pt).",
    )
    p.add_argument("--omega-m", type=float, default=None, help="Omega_m (dimensionless).")
    p.add_argument("--sigma8", type=float, default=None, help="sigma8 (dimensionless).")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="Any other parameter the generator is conditioned on (repeatable), e.g. "
        "--param A_SN1=1.2 for a CAMELS generator.",
    )
    p.add_argument(
        "--label",
        "--class",
        "--substructure",
        dest="label",
        default=None,
        metavar="CLASS",
        help="Class of a class-conditional generator (e.g. none, cdm or vortex for strong-lens "
        "substructure); required for such a model, refused for others.",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        metavar="W",
        help="Classifier-free guidance weight w >= 0 of a class-conditional diffusion model "
        "trained with p_uncond > 0 (default: its guidance_scale setting, usually 0).",
    )
    p.add_argument("--count", type=int, default=16, help="Number of maps (default 16).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the latent draws (default 0).")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="Diffusion sampling steps (default: the model's sample_steps); not for a GAN.",
    )
    p.add_argument(
        "--sampler",
        default=None,
        help="Diffusion sampler: ddim, dpm (DPM-Solver++) or sde (SDE-DPM-Solver++; default: "
        "the model's); not for a GAN.",
    )
    p.add_argument("--batch-size", type=int, default=64, help="Maps per network call.")
    p.add_argument("--out", required=True, metavar="PATH", help="Output file, .zarr or .nc.")
    add_overwrite_argument(p)
    p.add_argument(
        "--device", default="auto", help="Torch device: auto (CUDA when available), cpu, cuda[:i]."
    )
    p.set_defaults(func=cmd_sample)


def parameter_values(args: argparse.Namespace) -> dict[str, float]:
    """``{name: value}`` of ``--omega-m``, ``--sigma8`` and ``--param NAME=VALUE``.

    Raises
    ------
    ConfigError
        A ``--param`` that is not ``NAME=VALUE`` with a number, or a name given twice.
    """
    values: dict[str, float] = {}
    if args.omega_m is not None:
        values["omega_m"] = args.omega_m
    if args.sigma8 is not None:
        values["sigma8"] = args.sigma8
    for item in args.param:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        try:
            value = float(text)
        except ValueError:
            value = None
        if not sep or not name or value is None:
            raise ConfigError(f"--param {item!r} must be NAME=VALUE with a number")
        if name in values:
            raise ConfigError(f"parameter {name!r} is given twice")
        values[name] = value
    return values


def cmd_sample(args: argparse.Namespace) -> int:
    """``sample`` verb: check everything (checkpoint, parameters, output), sample, write."""
    from engine.cli import _output
    from engine.evaluation.sampling import Emulator
    from engine.physics import slabs

    if not 1 <= args.count <= 10_000_000:
        raise ConfigError(f"--count {args.count} must be in [1, 10000000]")
    if not 1 <= args.batch_size <= 65536:
        raise ConfigError(f"--batch-size {args.batch_size} must be in [1, 65536]")
    out, device = _output(args)
    em = Emulator(args.checkpoint, device)
    label = em.check_label(args.label)
    if args.guidance is not None:
        if not em.classes:
            raise ConfigError(
                "--guidance applies to class-conditional diffusion models only "
                "(classifier-free guidance)"
            )
        em.task.check_guidance(args.guidance)
    theta = em.theta(parameter_values(args), args.count)
    n = em.map_config.get("size") or 64
    per_map = 4 * len(em.channel_names) * int(n) ** 2
    check_output(
        out,
        overwrite=args.overwrite,
        disk_bytes=args.count * per_map,
        memory_bytes=3 * args.count * per_map,
    )
    bar = None
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        diffusion = em.task_name == "diffusion"
        bar = tqdm(
            desc="diffusion steps" if diffusion else "maps", unit="step" if diffusion else "map"
        )

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    t0 = time.perf_counter()
    try:
        da = em.sample(
            dict(zip(em.names, theta[0], strict=True)),
            count=args.count,
            seed=args.seed,
            steps=args.steps,
            batch_size=args.batch_size,
            progress=progress,
            label=label,
            guidance=args.guidance,
            sampler=args.sampler,
        )
    finally:
        if bar is not None:
            bar.close()
    slabs.save(da, out, overwrite=args.overwrite)
    parts = [f"{k}={v:g}" for k, v in zip(em.names, theta[0], strict=True)]
    if label is not None:
        parts.insert(0, f"{em.label}={label}")
    point = ", ".join(parts)
    print(
        f"wrote {args.count} maps of {em.task_name} generator {em.path} ({point}, seed "
        f"{args.seed}) to {out} on {device} in {time.perf_counter() - t0:.2f} s"
    )
    return 0
