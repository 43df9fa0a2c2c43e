"""Command line of the engine: ``python -m engine <verb>`` or ``cosmo-engine <verb>``.

Verbs
-----
``fields``
    Generate maps and write them to a .zarr or .nc file::

        python -m engine fields --kind lognormal --omega-m 0.3 --sigma8 0.8 --size 256 \\
            --box 256 --count 8 --seed 0 --out maps.zarr

``train``
    Train a network to infer (omega_m, sigma8) in a run directory (see ``engine.runs``)::

        python -m engine train --preset smoke --run-dir runs/demo --set lr=3e-3
        python -m engine train --run-dir runs/demo --resume --set epochs=40

Flags are generated from the settings classes (``engine.params.FieldParams``,
``engine.training.TrainParams``), so their names, defaults, bounds and help are those of the
settings. Settings are resolved as: preset < ``--config`` file < flags < ``--set key=value``
(``--resume`` starts from the run's saved settings instead of the preset).

User errors (bad value, unknown setting, bad preset, occupied run directory, ...) print one line
``error: ...`` to stderr and exit with code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from engine.params import (
    ConfigError,
    FieldParams,
    add_arguments,
    from_namespace,
    load_config_file,
    parse_overrides,
    set_values,
)

#: Flag names that differ from the setting names.
ALIASES = {"box_size": "box"}


class _ArgumentParser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors raise :class:`ConfigError` (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see {self.prog} --help)")


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="YAML or JSON file of setting: value (below flags)."
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override one setting (repeatable; highest precedence), e.g. --set lr=3e-3.",
    )


def _layers(args: argparse.Namespace, cls) -> tuple[dict, dict, dict]:
    """(config file, flags, --set) settings of the command line, in increasing precedence."""
    config = load_config_file(args.config) if args.config else {}
    return config, from_namespace(cls, args), parse_overrides(args.overrides)


def build_parser() -> argparse.ArgumentParser:
    """The ``argparse`` parser of all verbs (see the module docstring)."""
    from engine.training import PRESETS, TrainParams

    parser = _ArgumentParser(
        prog="cosmo-engine",
        description="Headless engine for machine learning on cosmological maps.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{fields,train}")

    fields_p = sub.add_parser(
        "fields",
        help="Generate maps and write them to a .zarr or .nc file.",
        description="Generate maps and write them to a .zarr or .nc file.",
    )
    add_arguments(fields_p, FieldParams, aliases=ALIASES)
    fields_p.add_argument("--out", required=True, metavar="PATH", help="Output file, .zarr or .nc.")
    fields_p.add_argument(
        "--device", default="auto", help="Torch device: auto (CUDA when available), cpu, cuda[:i]."
    )
    _add_config_arguments(fields_p)
    fields_p.set_defaults(func=cmd_fields)

    train_p = sub.add_parser(
        "train",
        help="Train a network to infer (omega_m, sigma8) from maps generated on the fly.",
        description="Train a network to infer (omega_m, sigma8) from maps generated on the fly, "
        "in a run directory. Settings: preset < --config < flags < --set.",
    )
    train_p.add_argument(
        "--preset",
        default="default",
        help=f"Named settings: {', '.join(PRESETS)} (default: default; ignored with --resume).",
    )
    train_p.add_argument(
        "--run-dir",
        metavar="DIR",
        help="Run directory (default: runs/<new run id>); must not hold a run unless --resume.",
    )
    train_p.add_argument(
        "--resume",
        action="store_true",
        help="Continue the run in --run-dir from checkpoints/last.pt, with its saved settings.",
    )
    _add_config_arguments(train_p)
    add_arguments(train_p, TrainParams, aliases=ALIASES)
    train_p.set_defaults(func=cmd_train)
    return parser


def cmd_fields(args: argparse.Namespace) -> int:
    """``fields`` verb: generate ``count`` maps and save them; prints a one-line summary."""
    from engine import fields
    from engine.device import default_device

    settings = FieldParams()
    for layer in _layers(args, FieldParams):
        set_values(settings, layer)
    out = Path(args.out)
    if out.suffix not in (".zarr", ".nc"):
        raise ConfigError(f"--out {str(out)!r} must end in .zarr or .nc")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist")
    try:
        device = default_device(args.device)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"--device {args.device!r}: {str(exc).splitlines()[0]}") from None
    fields.check_resolution(settings)
    t0 = time.perf_counter()
    da = fields.generate(settings, device=device)
    fields.save(da, out)
    s = settings
    print(
        f"wrote {s.count} {s.kind} maps of {s.size}x{s.size} pixels "
        f"(box {s.box_size:g} Mpc/h, slab {s.thickness:g} Mpc/h, z={s.redshift:g}, "
        f"omega_m={s.omega_m:g}, sigma8={s.sigma8:g}, seed {s.seed}) to {out} "
        f"on {device} in {time.perf_counter() - t0:.2f} s"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``train`` verb: resolve and check everything, then train in this process.

    Returns the exit code of :func:`engine.training.run_training`.

    Raises
    ------
    ConfigError
        Any bad setting or run-directory problem (see :func:`engine.runs.check_run_dir`), before
        anything is written, except that a run queued by ``engine.runs.launch_train`` is marked
        failed with the message.
    """
    from engine.runs import RunDir, check_run_dir, new_run_id
    from engine.training import TrainParams, resolve_device, resolve_params, run_training

    if args.run_dir is None and args.resume:
        raise ConfigError("--resume needs --run-dir DIR of the run to continue")
    run = RunDir(args.run_dir or Path("runs") / new_run_id(args.preset))
    try:
        base = check_run_dir(run, args.resume)
        params = resolve_params(args.preset, *_layers(args, TrainParams), base=base)
        device = resolve_device(params)
    except ConfigError as exc:
        if (run.status() or {}).get("state") == "queued":  # left so by launch_train
            run.write_status(state="failed", error=str(exc))
        raise
    preset = (run.config() or {}).get("preset") if args.resume else args.preset
    return run_training(params, run, device, resume=args.resume, preset=preset)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    0 success (also a run stopped by a signal), 1 a run that failed at run time or a file that
    could not be written, 2 a user error (printed as one line ``error: ...`` on stderr).
    """
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a run or output directory that cannot be written
        print(f"error: {exc}", file=sys.stderr)
        return 1
