"""``fields`` and ``dataset`` verbs: generate maps and write them to files.

See the ``engine.cli`` module docstring for examples; the flags of ``fields`` and ``dataset``
depend on ``--kind`` (generated from the kind's settings class). The ``sky`` verb lives in
:mod:`engine.cli.sky`.

Kinds with a torch hot path (:data:`engine.kinds.FIELD_KINDS`) are generated batch by batch on
the device; kinds with a chunked CPU generator (:attr:`engine.kinds.Kind.chunks`, e.g.
``strong_lens``: each sample from its own seed, in worker processes) are written chunk by chunk
from :meth:`engine.kinds.Kind.generate_chunks`, and their datasets keep the consecutive samples
of :meth:`engine.kinds.Kind.split_group` in one split (one image of each substructure class for
``strong_lens --substructure all``, so every split is balanced).
"""

from __future__ import annotations

import argparse
import time

from engine.cli import (
    ALIASES,
    _add_checkpoint_argument,
    _add_output_arguments,
    _layers,
    _output,
)
from engine.kinds import KINDS, WRITE_KINDS, Kind, get_kind
from engine.outputs import add_overwrite_argument, check_output
from engine.params import ConfigError, add_arguments, set_values

#: Bytes of samples generated and appended per step of a .zarr ``fields`` output (rounded to a
#: whole number of the kind's generation batches, so the maps are those of one batch).
CHUNK_BYTES = 256 * 2**20
#: Peak memory of in-memory generation per byte of output: batches, their concatenation and
#: the float32 copy of the DataArray (.nc files and ``sky``); chunked .zarr writes hold two.
IN_MEMORY_FACTOR, CHUNK_FACTOR = 3, 2


def add_parsers(sub, fields_kind: str = "grf") -> None:
    """Add the ``fields`` and ``dataset`` subparsers to ``sub``.

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
    fields_cls = get_kind(fields_kind, WRITE_KINDS).settings_class()
    add_arguments(fields_p, fields_cls, aliases=ALIASES, skip=("kind",))
    _add_checkpoint_argument(fields_p)
    _add_output_arguments(fields_p)
    add_overwrite_argument(fields_p)
    fields_p.set_defaults(func=cmd_fields)

    from engine.data.store import DEFAULT_CHUNK, DEFAULT_SPLIT

    dataset_p = sub.add_parser(
        "dataset",
        help="Write a training dataset (.zarr): parameters from a prior box, fixed split.",
        description=f"Generate --count samples of kind {fields_kind!r} and a fixed "
        "train/val/test split, and write them to a .zarr store chunk by chunk (atomically). "
        "Map kinds: per-sample omega_m and sigma8 uniform in ranges LO:HI (drawn from --seed); "
        "strong_lens: the substructure classes none, cdm, vortex in equal numbers in every "
        "split. Flags depend on --kind: see 'dataset --kind KIND --help'.",
    )
    dataset_p.add_argument(
        "--kind", default=fields_kind, choices=list(WRITE_KINDS), help="Map kind (see fields)."
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
    add_overwrite_argument(dataset_p)
    dataset_p.set_defaults(func=cmd_dataset)


def _map_settings(kind: Kind, args: argparse.Namespace):
    """(settings, ranges) of a generating verb (fields, dataset).

    Layers: the kind's defaults < ``--from-checkpoint`` < ``--config`` < flags < ``--set``;
    ``omega_m`` and ``sigma8`` may be ranges ``LO:HI`` in any layer (a later plain value
    replaces an earlier range), returned as ``{name: (low, high)}``
    (:func:`engine.data.store.pop_ranges`).
    """
    from engine.data.store import RANGE_SETTINGS, pop_ranges
    from engine.params import user_settings

    settings = kind.new_settings()
    cls = type(settings)
    range_names = [n for n in RANGE_SETTINGS if n in user_settings(cls)]  # none for strong_lens
    layers = list(_layers(args, cls))
    if getattr(args, "from_checkpoint", None):
        from engine.train.checkpoint import checkpoint_map_settings

        names = set(user_settings(cls)) - {"kind", "seed", "count", "omega_m", "sigma8"}
        values = checkpoint_map_settings(args.from_checkpoint)
        layers.insert(0, {k: v for k, v in values.items() if k in names})
    ranges: dict[str, tuple[float, float]] = {}
    for layer in layers:
        plain, found = pop_ranges(cls, layer, range_names)
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
    seed (:func:`engine.data.store.draw_parameters`). A .zarr output is generated and appended
    chunk by chunk (:data:`CHUNK_BYTES`; the same maps as one call of the kind's ``generate``), a
    .nc file in memory. The output is checked first (:func:`engine.outputs.check_output`: an
    existing one without ``--overwrite``, an unwritable directory, more than the free disk or, in
    memory, the available memory are refused in one line).
    """
    from engine.data.store import draw_parameters, sample_bytes
    from engine.physics import slabs

    kind = get_kind(args.kind, WRITE_KINDS)
    if kind.chunks:
        return _chunked_fields(kind, args)
    settings, ranges = _map_settings(kind, args)
    out, device = _output(args)
    count, per_sample = int(settings.count), sample_bytes(settings)
    batch = kind.default_batch_size(settings)
    chunk = max(1, CHUNK_BYTES // (batch * per_sample)) * batch
    held = count * IN_MEMORY_FACTOR if out.suffix == ".nc" else min(chunk, count) * CHUNK_FACTOR
    check_output(
        out,
        overwrite=args.overwrite,
        disk_bytes=count * per_sample,
        memory_bytes=held * per_sample,
    )
    t0 = time.perf_counter()
    theta = draw_parameters(settings, ranges, count, settings.seed) if ranges else {}
    if out.suffix == ".nc":
        data = kind.generate(settings, device=device, **theta)
    else:
        data = field_chunks(kind, settings, theta, chunk, device)
    slabs.save(data, out, overwrite=args.overwrite)
    print(
        f"wrote {count} {kind.name} samples ({_sizes(out)}; "
        f"{_describe_parameters(settings, ranges)}, seed {settings.seed}) to {out} on {device} "
        f"in {time.perf_counter() - t0:.2f} s"
    )
    return 0


def _chunked_fields(kind: Kind, args: argparse.Namespace) -> int:
    """``fields`` of a kind with a chunked CPU generator: .zarr chunk by chunk
    (:data:`CHUNK_BYTES`), .nc in memory; the same samples either way."""
    from engine.physics import slabs

    settings, _ = _map_settings(kind, args)
    out, _ = _output(args)
    count, per_sample = int(settings.count), kind.sample_bytes(settings)
    chunk = max(1, CHUNK_BYTES // per_sample)
    held = count * IN_MEMORY_FACTOR if out.suffix == ".nc" else min(chunk, count) * CHUNK_FACTOR
    check_output(
        out,
        overwrite=args.overwrite,
        disk_bytes=count * per_sample,
        memory_bytes=held * per_sample,
    )
    t0 = time.perf_counter()
    if out.suffix == ".nc":
        data = kind.generate(settings)
    else:
        data = kind.generate_chunks(settings, chunk)
    slabs.save(data, out, overwrite=args.overwrite)
    print(
        f"wrote {count} {kind.name} samples ({_sizes(out)}; seed {settings.seed}) to {out} "
        f"in {time.perf_counter() - t0:.2f} s"
    )
    return 0


def write_chunked_dataset(
    kind: Kind, settings, out, split, chunk: int, overwrite: bool = False, progress=None
):
    """A dataset (.zarr) of a kind with a chunked CPU generator: its ``settings.count`` samples
    (:meth:`~engine.kinds.Kind.generate_chunks`, ``chunk`` per step) with the ``split`` coord of
    :func:`engine.data.store.write_dataset` (int8 codes of :data:`engine.data.store.SPLITS`,
    fixed by the seed) made per group of :meth:`~engine.kinds.Kind.split_group` consecutive
    samples, and attrs ``seed``, ``count``, ``chunk``, ``split_fractions``. Written atomically
    (:func:`engine.physics.slabs.save`).

    Raises
    ------
    ConfigError
        Not a .zarr output, chunk < 1, bad split or settings, or an output refused by
        :func:`engine.outputs.check_output` (all before any work).
    """
    from pathlib import Path

    from engine.data.store import SPLITS, parse_split, simulation_split
    from engine.physics import slabs

    out = Path(out)
    if out.suffix != ".zarr":
        raise ConfigError(f"--out {str(out)!r} must end in .zarr (datasets are zarr stores)")
    if chunk < 1:
        raise ConfigError(f"--chunk {chunk} must be >= 1")
    fractions = parse_split(split)
    count, seed = int(settings.count), int(settings.seed)
    per_sample = kind.sample_bytes(settings)
    check_output(
        out,
        overwrite=overwrite,
        disk_bytes=count * per_sample,
        memory_bytes=CHUNK_FACTOR * min(chunk, count) * per_sample,
    )
    labels = simulation_split(count, kind.split_group(settings), fractions, seed)
    attrs = {"seed": seed, "count": count, "chunk": int(chunk), "split_fractions": list(fractions)}
    parts = kind.generate_chunks(settings, chunk, progress)  # checks the settings first

    def with_split():
        start = 0
        for da in parts:
            stop = start + da.sizes["sample"]
            da.attrs.update(attrs)
            flags = {"flag_values": [0, 1, 2], "flag_meanings": " ".join(SPLITS)}
            yield da.assign_coords(split=("sample", labels[start:stop], flags))
            start = stop

    slabs.save(with_split(), out, overwrite=overwrite)
    return out


def field_chunks(kind: Kind, settings, theta, chunk: int, device=None, progress=None):
    """The samples of ``kind.generate(settings, device, **theta)`` as consecutive DataArrays of
    ``chunk`` samples, generated lazily (one chunk in memory at a time).

    One ``torch.Generator`` seeded with ``settings.seed`` is drawn batch after batch of the
    kind's batch size, as :func:`engine.physics.generation.generate_samples` does, so with a
    ``chunk`` that is a multiple of that batch size the samples are identical to one call.

    Parameters
    ----------
    kind : Kind
        A kind of :data:`engine.kinds.FIELD_KINDS`.
    settings : the kind's settings
    theta : dict
        Optional per-sample ``omega_m`` / ``sigma8`` arrays (count,).
    chunk : int
        Samples per DataArray (rounded up to a whole number of simulations for kinds with several
        maps per simulation, ``slabs``; the ``simulation`` coord then counts from the first
        chunk on).
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    progress : bool, optional
        tqdm bar over the samples; default when stderr is a terminal and there are several
        batches.

    Returns
    -------
    iterator of xarray.DataArray

    Raises
    ------
    ConfigError
        Bad parameters or settings (checked here, before the first chunk is generated).
    """
    import sys

    import torch

    from engine.device import default_device
    from engine.physics.cosmology import check_parameters
    from engine.physics.generation import per_sample

    count = int(settings.count)
    om = per_sample(theta.get("omega_m"), settings.omega_m, count, "omega_m")
    s8 = per_sample(theta.get("sigma8"), settings.sigma8, count, "sigma8")
    check_parameters(torch.from_numpy(om), torch.from_numpy(s8))
    kind.check_settings(settings)
    device = default_device(None if device is None else str(device))
    batch = kind.default_batch_size(settings)
    per = int(getattr(settings, "slabs", 1))
    chunk = per * -(-int(chunk) // per)
    if progress is None:
        progress = sys.stderr.isatty() and count > batch
    return _chunks(kind, settings, om, s8, chunk, batch, device, progress)


def _chunks(kind: Kind, settings, om, s8, chunk, batch, device, progress):
    """Generator of :func:`field_chunks` (parameters and settings already checked)."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from engine.data.store import maps_per_simulation as per_simulation

    count = len(om)
    maps_per_simulation = per_simulation(settings)
    gen = torch.Generator(device=device).manual_seed(int(settings.seed))
    with tqdm(total=count, disable=not progress, desc=kind.name, unit="sample") as bar:
        for start in range(0, count, chunk):
            stop = min(start + chunk, count)
            maps = []
            for b in range(start, stop, batch):
                sl = slice(b, min(b + batch, stop))
                om_b, s8_b = torch.from_numpy(om[sl]), torch.from_numpy(s8[sl])
                maps.append(kind.generate_batch(settings, om_b, s8_b, gen, device).cpu().numpy())
                bar.update(sl.stop - sl.start)
            da = kind.to_dataarray(np.concatenate(maps), settings, om[start:stop], s8[start:stop])
            if "simulation" in da.coords:  # numbered from 0 in each chunk: make them global
                da = da.assign_coords(simulation=da["simulation"] + start // maps_per_simulation)
            yield da


def _sizes(path) -> str:
    """``"sample=8, y=64, x=64"``: the dims of the samples written to ``path`` (read lazily)."""
    import xarray as xr

    opener = xr.open_zarr if path.suffix == ".zarr" else xr.open_dataset
    with opener(path, **({"consolidated": False} if path.suffix == ".zarr" else {})) as ds:
        da = next(ds[v] for v in ds.data_vars if "sample" in ds[v].dims)
        return ", ".join(f"{d}={da.sizes[d]}" for d in da.dims)


def cmd_dataset(args: argparse.Namespace) -> int:
    """``dataset`` verb: write an on-disk dataset (:func:`engine.data.store.write_dataset`);
    prints a summary line with the split sizes."""
    import numpy as np

    from engine.data.store import SPLITS, open_dataset, write_dataset

    kind = get_kind(args.kind, WRITE_KINDS)
    settings, ranges = _map_settings(kind, args)
    out, device = _output(args)
    t0 = time.perf_counter()
    if kind.chunks:
        write_chunked_dataset(kind, settings, out, args.split, args.chunk, args.overwrite)
    else:
        write_dataset(
            kind.name,
            settings,
            ranges,
            out,
            args.split,
            args.chunk,
            device,
            overwrite=args.overwrite,
        )
    counts = np.bincount(open_dataset(out)["split"].values, minlength=len(SPLITS))
    sizes = ", ".join(f"{c} {name}" for name, c in zip(SPLITS, counts, strict=True))
    per = int(getattr(settings, "slabs", 1))
    sims = f" from {-(-int(settings.count) // per)} simulations × {per} slabs" if per > 1 else ""
    where = f" on {device}"
    if kind.chunks:
        described, where = "", ""
    else:
        described = f"{_describe_parameters(settings, ranges)}, "
    print(
        f"wrote dataset of {settings.count} {kind.name} samples{sims} ({sizes}; "
        f"{described}seed {settings.seed}) to {out}{where} in {time.perf_counter() - t0:.2f} s"
    )
    return 0
