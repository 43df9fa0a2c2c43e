"""Command line of the engine: ``python -m engine <verb>`` or ``cosmo-engine <verb>``.

Verbs
-----
``fields``
    Generate maps (or volumes) of any kind of :mod:`engine.kinds` and write them to a .zarr or
    .nc file; the flags depend on ``--kind`` (``fields --kind kappa --help`` lists them)::

        python -m engine fields --kind lognormal --omega-m 0.3 --sigma8 0.8 --size 256 \\
            --box 256 --count 8 --seed 0 --out maps.zarr
        python -m engine fields --kind 2lpt --size 128 --box 512 --thickness 512 \\
            --lpt-order 2 --dim 3 --count 4 --seed 1 --out vol.zarr
        python -m engine fields --kind kappa --fov 5 --size 256 --sigma-e 0.26 --ngal 8 \\
            --smoothing 10 --count 8 --out k.zarr

``sky``
    Full-sky HEALPix κ maps (``--kind sky`` settings), or gnomonic patches cut from them or from
    any HEALPix FITS map (``--input``)::

        python -m engine sky --nside 256 --count 2 --out sky.nc
        python -m engine sky --nside 256 --patch 30,-45 --patch 60,-30 --patch-fov 5 \\
            --patch-size 128 --out patches.zarr

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

from engine.kinds import FIELD_KINDS, KINDS, Kind, get_kind
from engine.params import (
    ConfigError,
    add_arguments,
    from_namespace,
    load_config_file,
    parse_overrides,
    set_values,
)

#: Flag names that differ from the setting names.
ALIASES = {"box_size": "box", "n_gal": "ngal"}


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


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="PATH", help="Output file, .zarr or .nc.")
    parser.add_argument(
        "--device", default="auto", help="Torch device: auto (CUDA when available), cpu, cuda[:i]."
    )
    _add_config_arguments(parser)


def _peek_kind(argv: Sequence[str]) -> str:
    """The value of ``--kind`` in ``argv`` ("grf" if absent), to build the matching flags."""
    for i, a in enumerate(argv):
        if a == "--kind" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--kind="):
            return a.split("=", 1)[1]
    return "grf"


def build_parser(fields_kind: str = "grf") -> argparse.ArgumentParser:
    """The ``argparse`` parser of all verbs (see the module docstring).

    ``fields_kind`` selects the settings class whose flags the ``fields`` verb gets.

    Raises
    ------
    ConfigError
        Unknown ``fields_kind``.
    """
    from engine.training import PRESETS, TrainParams

    parser = _ArgumentParser(
        prog="cosmo-engine",
        description="Headless engine for machine learning on cosmological maps.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{fields,sky,train}")

    fields_p = sub.add_parser(
        "fields",
        help="Generate maps or volumes and write them to a .zarr or .nc file.",
        description=f"Generate maps or volumes of kind {fields_kind!r} and write them to a .zarr "
        "or .nc file. Flags depend on --kind: see 'fields --kind KIND --help'.",
    )
    fields_p.add_argument(
        "--kind",
        default=fields_kind,
        choices=[k for k in KINDS if k != "sky"],
        help="Map kind: "
        + "; ".join(f"{k.name}: {k.doc}" for k in KINDS.values() if k.name != "sky"),
    )
    fields_cls = get_kind(fields_kind, FIELD_KINDS).settings_class()
    add_arguments(fields_p, fields_cls, aliases=ALIASES, skip=("kind",))
    _add_output_arguments(fields_p)
    fields_p.set_defaults(func=cmd_fields)

    from engine.sky import SkyParams

    sky_p = sub.add_parser(
        "sky",
        help="Full-sky HEALPix kappa maps, or flat patches cut from them or from a FITS map.",
        description="Synthesise full-sky HEALPix convergence maps from the pyccl C_l (or read "
        "--input FITS) and write them, or gnomonic patches centred on --patch LON,LAT.",
    )
    add_arguments(sky_p, SkyParams, aliases=ALIASES)
    sky_p.add_argument(
        "--input", metavar="FITS", help="Read this HEALPix map instead of synthesising."
    )
    sky_p.add_argument("--field", type=int, default=0, help="Column of --input to read (0: first).")
    sky_p.add_argument(
        "--patch",
        action="append",
        default=[],
        metavar="LON,LAT",
        help="Centre of a gnomonic patch in degrees (repeatable); writes patches instead of skies.",
    )
    sky_p.add_argument("--patch-fov", type=float, default=5.0, help="Patch side in degrees.")
    sky_p.add_argument("--patch-size", type=int, default=256, help="Patch pixels per side.")
    _add_output_arguments(sky_p)
    sky_p.set_defaults(func=cmd_sky)

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


def _output(args: argparse.Namespace):
    """Checked (output path, torch device) of a generating verb, before anything is computed."""
    from engine.device import default_device

    out = Path(args.out)
    if out.suffix not in (".zarr", ".nc"):
        raise ConfigError(f"--out {str(out)!r} must end in .zarr or .nc")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist")
    try:
        device = default_device(args.device)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"--device {args.device!r}: {str(exc).splitlines()[0]}") from None
    return out, device


def _settings(kind: Kind, args: argparse.Namespace):
    settings = kind.new_settings()
    for layer in _layers(args, type(settings)):
        set_values(settings, layer)
    return settings


def cmd_fields(args: argparse.Namespace) -> int:
    """``fields`` verb: generate ``count`` maps or volumes and save them; prints a summary line."""
    from engine import fields

    kind = get_kind(args.kind, FIELD_KINDS)
    settings = _settings(kind, args)
    out, device = _output(args)
    t0 = time.perf_counter()
    da = kind.generate(settings, device=device)
    fields.save(da, out)
    params = ", ".join(f"{d}={da.sizes[d]}" for d in da.dims)
    print(
        f"wrote {settings.count} {kind.name} samples ({params}; omega_m={settings.omega_m:g}, "
        f"sigma8={settings.sigma8:g}, seed {settings.seed}) to {out} on {device} "
        f"in {time.perf_counter() - t0:.2f} s"
    )
    return 0


def _parse_centers(items: Sequence[str]) -> list[tuple[float, float]]:
    centers = []
    for item in items:
        try:
            lon, lat = (float(v) for v in item.split(","))
        except ValueError:
            raise ConfigError(f"--patch {item!r} must look like LON,LAT in degrees") from None
        centers.append((lon, lat))
    return centers


def cmd_sky(args: argparse.Namespace) -> int:
    """``sky`` verb: HEALPix κ skies (or an --input map), or gnomonic patches of them."""
    import xarray as xr

    from engine import fields, sky

    kind = get_kind("sky")
    settings = _settings(kind, args)
    out, _ = _output(args)
    centers = _parse_centers(args.patch)
    t0 = time.perf_counter()
    if args.input:
        maps = xr.DataArray(
            sky.read_healpix(args.input, field=args.field, mask=settings.mask)[None],
            dims=("sample", "pixel"),
            name="map",
            attrs={"source": str(args.input)},
        )
    else:
        maps = kind.generate(settings)
    if centers:
        maps = xr.concat(
            [
                sky.extract_patches(
                    maps, centers, fov=args.patch_fov, size=args.patch_size, sample=i
                )
                for i in range(maps.sizes["sample"])
            ],
            dim="sample",
        )
    fields.save(maps, out)
    what = f"{len(centers)} patches per sky" if centers else "skies"
    print(
        f"wrote {maps.sizes['sample']} samples ({what}) to {out} in {time.perf_counter() - t0:.2f} s"
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
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        kind = _peek_kind(argv) if argv[:1] == ["fields"] else "grf"
        args = build_parser(get_kind(kind, FIELD_KINDS).name).parse_args(argv)
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a run or output directory that cannot be written
        print(f"error: {exc}", file=sys.stderr)
        return 1
