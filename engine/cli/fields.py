"""``fields``, ``dataset`` and ``sky`` verbs: generate maps and write them to files.

See the ``engine.cli`` module docstring for examples; the flags of ``fields`` and ``dataset``
depend on ``--kind`` (generated from the kind's settings class).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from engine.cli import (
    ALIASES,
    _add_checkpoint_argument,
    _add_output_arguments,
    _layers,
    _output,
)
from engine.kinds import FIELD_KINDS, KINDS, Kind, get_kind
from engine.params import ConfigError, add_arguments, set_values


def add_parsers(sub, fields_kind: str = "grf") -> None:
    """Add the ``fields``, ``dataset`` and ``sky`` subparsers to ``sub``.

    ``fields_kind`` selects the settings class whose flags ``fields`` and ``dataset`` get.

    Raises
    ------
    ConfigError
        Unknown ``fields_kind``.
    """
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
    _add_checkpoint_argument(fields_p)
    _add_output_arguments(fields_p)
    fields_p.set_defaults(func=cmd_fields)

    from engine.data.store import DEFAULT_CHUNK, DEFAULT_SPLIT

    dataset_p = sub.add_parser(
        "dataset",
        help="Write a training dataset (.zarr): parameters from a prior box, fixed split.",
        description=f"Generate --count samples of kind {fields_kind!r} with per-sample omega_m "
        "and sigma8 uniform in ranges LO:HI (drawn from --seed) and a fixed train/val/test "
        "split, and write them to a .zarr store chunk by chunk (atomically). Flags depend on "
        "--kind: see 'dataset --kind KIND --help'.",
    )
    dataset_p.add_argument(
        "--kind", default=fields_kind, choices=list(FIELD_KINDS), help="Map kind (see fields)."
    )
    add_arguments(dataset_p, fields_cls, aliases=ALIASES, skip=("kind",))
    dataset_p.add_argument(
        "--split",
        default=",".join(f"{f:g}" for f in DEFAULT_SPLIT),
        metavar="TRAIN,VAL,TEST",
        help="Fractions of the samples in the train, val and test splits (sum 1; default "
        "%(default)s); which samples is fixed by --seed.",
    )
    dataset_p.add_argument(
        "--chunk",
        type=int,
        default=DEFAULT_CHUNK,
        help="Samples generated and written per chunk (default %(default)s); chunk i draws its "
        "maps from a seed derived from (--seed, i).",
    )
    _add_checkpoint_argument(dataset_p)
    _add_output_arguments(dataset_p)
    dataset_p.set_defaults(func=cmd_dataset)

    from engine.physics.sky import SkyParams

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


def _settings(kind: Kind, args: argparse.Namespace):
    settings = kind.new_settings()
    for layer in _layers(args, type(settings)):
        set_values(settings, layer)
    return settings


def _map_settings(kind: Kind, args: argparse.Namespace):
    """(settings, ranges) of a generating verb (fields, dataset).

    Layers: the kind's defaults < ``--from-checkpoint`` < ``--config`` < flags < ``--set``;
    ``omega_m`` and ``sigma8`` may be ranges ``LO:HI`` in any layer (a later plain value
    replaces an earlier range), returned as ``{name: (low, high)}``
    (:func:`engine.data.store.pop_ranges`).
    """
    from engine.data.store import pop_ranges
    from engine.params import user_settings

    settings = kind.new_settings()
    cls = type(settings)
    layers = list(_layers(args, cls))
    if getattr(args, "from_checkpoint", None):
        from engine.train.checkpoint import checkpoint_map_settings

        names = set(user_settings(cls)) - {"kind", "seed", "count", "omega_m", "sigma8"}
        values = checkpoint_map_settings(args.from_checkpoint)
        layers.insert(0, {k: v for k, v in values.items() if k in names})
    ranges: dict[str, tuple[float, float]] = {}
    for layer in layers:
        plain, found = pop_ranges(cls, layer)
        for key in plain:
            ranges.pop(key.replace("-", "_"), None)
        ranges.update(found)
        set_values(settings, plain)
    return settings, ranges


def _describe_parameters(settings, ranges) -> str:
    return ", ".join(
        f"{n}={ranges[n][0]:g}:{ranges[n][1]:g}" if n in ranges else f"{n}={getattr(settings, n):g}"
        for n in ("omega_m", "sigma8")
    )


def cmd_fields(args: argparse.Namespace) -> int:
    """``fields`` verb: generate ``count`` maps or volumes and save them; prints a summary line.

    ``omega_m`` / ``sigma8`` given as ranges ``LO:HI`` are drawn uniformly per sample from the
    seed (:func:`engine.data.store.draw_parameters`).
    """
    from engine.data.store import draw_parameters
    from engine.physics import slabs

    kind = get_kind(args.kind, FIELD_KINDS)
    settings, ranges = _map_settings(kind, args)
    out, device = _output(args)
    t0 = time.perf_counter()
    theta = draw_parameters(settings, ranges, settings.count, settings.seed) if ranges else {}
    da = kind.generate(settings, device=device, **theta)
    slabs.save(da, out)
    params = ", ".join(f"{d}={da.sizes[d]}" for d in da.dims)
    print(
        f"wrote {settings.count} {kind.name} samples ({params}; "
        f"{_describe_parameters(settings, ranges)}, seed {settings.seed}) to {out} on {device} "
        f"in {time.perf_counter() - t0:.2f} s"
    )
    return 0


def cmd_dataset(args: argparse.Namespace) -> int:
    """``dataset`` verb: write an on-disk dataset (:func:`engine.data.store.write_dataset`);
    prints a summary line with the split sizes."""
    import numpy as np

    from engine.data.store import SPLITS, open_dataset, write_dataset

    kind = get_kind(args.kind, FIELD_KINDS)
    settings, ranges = _map_settings(kind, args)
    out, device = _output(args)
    t0 = time.perf_counter()
    write_dataset(kind.name, settings, ranges, out, args.split, args.chunk, device)
    counts = np.bincount(open_dataset(out)["split"].values, minlength=len(SPLITS))
    sizes = ", ".join(f"{c} {name}" for name, c in zip(SPLITS, counts, strict=True))
    print(
        f"wrote dataset of {settings.count} {kind.name} samples ({sizes}; "
        f"{_describe_parameters(settings, ranges)}, seed {settings.seed}) to {out} on {device} "
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

    from engine.physics import sky, slabs

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
    slabs.save(maps, out)
    what = f"{len(centers)} patches per sky" if centers else "skies"
    print(
        f"wrote {maps.sizes['sample']} samples ({what}) to {out} in {time.perf_counter() - t0:.2f} s"
    )
    return 0
