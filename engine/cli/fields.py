"""``fields``, ``dataset`` and ``sky`` verbs: generate maps and write them to files.

See the ``engine.cli`` module docstring for examples; the flags of ``fields`` and ``dataset``
depend on ``--kind`` (generated from the kind's settings class).

Kinds with a torch hot path (:data:`engine.kinds.FIELD_KINDS`) are generated batch by batch on
the device; kinds with a chunked CPU generator (:attr:`engine.kinds.Kind.chunks`, e.g.
``strong_lens``: each sample from its own seed, in worker processes) are written chunk by chunk
from :meth:`engine.kinds.Kind.generate_chunks`, and their datasets keep the consecutive samples
of :meth:`engine.kinds.Kind.split_group` in one split (one image of each substructure class for
``strong_lens --substructure all``, so every split is balanced).

The ``sky`` verb makes HEALPix skies of two kinds (``--kind``): ``kappa`` (the default),
full-sky weak-lensing convergence (:mod:`engine.physics.sky`, flags from
:class:`~engine.physics.sky.SkyParams`) or gnomonic patches cut from it or from a FITS map, and
``cmb``, lensed CMB polarisation skies with primordial B-modes (:mod:`engine.physics.cmb`, flags
from :class:`~engine.physics.cmb.CMBParams`)::

    python -m engine sky --kind cmb --r 0.01 --noise 2 --beam 5 --nside 512 --count 4 \
        --seed 1 --out cmb.nc
    python -m engine sky --kind cmb --nside 512 --count 64 --workers 2 --out cmb.zarr

A ``.zarr`` output of ``cmb`` skies is generated and written chunk by chunk (:data:`CHUNK_BYTES`),
a ``.nc`` file in memory; the skies are the same. The flags that only one kind takes (``--patch``,
``--footprint``, ``--input`` for kappa; ``--r``, ``--beam``, ``--workers`` for cmb, ...) are
refused with the other kind, in one line.
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
from engine.kinds import KINDS, WRITE_KINDS, Kind, get_kind
from engine.outputs import add_overwrite_argument, check_output
from engine.params import ConfigError, add_arguments, allowed, set_values, user_settings

#: Bytes of samples generated and appended per step of a .zarr ``fields`` output (rounded to a
#: whole number of the kind's generation batches, so the maps are those of one batch).
CHUNK_BYTES = 256 * 2**20
#: Peak memory of in-memory generation per byte of output: batches, their concatenation and
#: the float32 copy of the DataArray (.nc files and ``sky``); chunked .zarr writes hold two.
IN_MEMORY_FACTOR, CHUNK_FACTOR = 3, 2
#: Kinds of the ``sky`` verb (``--kind``): HEALPix κ (the default) and lensed CMB skies.
SKY_KINDS = ("kappa", "cmb")
#: Default side (degrees) and pixels per side of the ``sky --patch`` patches (κ only).
PATCH_FOV, PATCH_SIZE = 5.0, 256
#: Options of the ``sky`` verb besides settings that only ``--kind kappa`` takes: dest -> flag.
_KAPPA_OPTIONS = {
    "input": "--input",
    "field": "--field",
    "patch": "--patch",
    "patch_fov": "--patch-fov",
    "patch_size": "--patch-size",
}


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

    sky_p = sub.add_parser(
        "sky",
        help="Full-sky HEALPix skies: kappa maps (or flat patches cut from them or from a FITS "
        "map), or lensed CMB polarisation skies (--kind cmb).",
        description="--kind kappa (default): synthesise full-sky HEALPix convergence maps from "
        "the pyccl C_l (or read --input FITS) and write them, or gnomonic patches centred on "
        "--patch LON,LAT. --kind cmb: lensed CMB Q/U skies with primordial B-modes (CAMB + "
        "lenspyx), with their noiseless, unlensed and lensing-potential maps. Flags marked "
        "[kappa] or [cmb] belong to that kind only.",
    )
    sky_p.add_argument(
        "--kind",
        default="kappa",
        choices=SKY_KINDS,
        help="Sky kind: kappa (weak-lensing convergence; default) or cmb (lensed CMB "
        "polarisation).",
    )
    _add_sky_settings(sky_p)
    sky_p.add_argument(
        "--input", metavar="FITS", help="[kappa] Read this HEALPix map instead of synthesising."
    )
    sky_p.add_argument(
        "--field", type=int, default=None, help="[kappa] Column of --input to read (0: first)."
    )
    sky_p.add_argument(
        "--patch",
        action="append",
        default=None,
        metavar="LON,LAT",
        help="[kappa] Centre of a gnomonic patch in degrees (repeatable); writes patches instead "
        "of skies.",
    )
    sky_p.add_argument(
        "--patch-fov",
        type=float,
        default=None,
        help=f"[kappa] Patch side in degrees ({PATCH_FOV:g}).",
    )
    sky_p.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help=f"[kappa] Patch pixels per side ({PATCH_SIZE}).",
    )
    _add_output_arguments(sky_p)
    add_overwrite_argument(sky_p)
    sky_p.set_defaults(func=cmd_sky)


def _sky_classes() -> dict:
    """Settings class of each kind of the ``sky`` verb."""
    from engine.physics.cmb import CMBParams
    from engine.physics.sky import SkyParams

    return {"kappa": SkyParams, "cmb": CMBParams}


def _metavar(p) -> str:
    import param

    if isinstance(p, param.Selector):
        return "{" + ",".join(str(o) for o in p.objects) + "}"
    if isinstance(p, param.Integer):
        return "INT"
    if isinstance(p, param.Number):
        return "X"
    return "VALUE"


def _add_sky_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of either sky kind (as :func:`engine.params.add_arguments`): a
    setting of one kind only is marked [kappa] or [cmb] in its help; one of both kinds with
    different meanings or ranges (``--mask``, ``--nside``, ...) describes each."""
    classes = _sky_classes()
    names = list(dict.fromkeys(n for cls in classes.values() for n in user_settings(cls)))
    for name in names:
        texts, metavars = {}, set()
        for kind, cls in classes.items():
            if name in user_settings(cls):
                p = cls.param[name]
                doc = (p.doc or "").strip()
                texts[kind] = f"{doc} Default {p.default!r}; allowed {allowed(p, name)}."
                metavars.add(_metavar(p))
        if len(texts) == 1:
            ((kind, text),) = texts.items()
            help_ = f"[{kind}] {text}"
        elif len(set(texts.values())) == 1:
            help_ = next(iter(texts.values()))
        else:
            help_ = " ".join(f"[{kind}] {text}" for kind, text in texts.items())
        flag = "--" + ALIASES.get(name, name).replace("_", "-")
        parser.add_argument(
            flag,
            dest=name,
            default=None,
            metavar=metavars.pop() if len(metavars) == 1 else "VALUE",
            help=help_.replace("%", "%%"),
        )


def _refuse_other_kind(args: argparse.Namespace) -> None:
    """ConfigError (one line) for a flag of the ``sky`` verb that the chosen ``--kind`` does
    not take."""
    classes = _sky_classes()
    mine = set(user_settings(classes[args.kind]))
    for kind, cls in classes.items():
        if kind == args.kind:
            continue
        for name in user_settings(cls):
            if name not in mine and getattr(args, name, None) is not None:
                flag = "--" + ALIASES.get(name, name).replace("_", "-")
                raise ConfigError(
                    f"{flag} is a setting of --kind {kind} skies, not of --kind {args.kind}"
                )
    if args.kind != "kappa":
        for dest, flag in _KAPPA_OPTIONS.items():
            if getattr(args, dest, None) not in (None, []):
                raise ConfigError(
                    f"{flag} is an option of --kind kappa skies, not of --kind {args.kind}"
                )


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
    """``sky`` verb: HEALPix κ skies (or an --input map), or gnomonic patches of them
    (``--kind kappa``, the default), or lensed CMB skies (``--kind cmb``, :func:`cmd_sky_cmb`).

    The output is checked first (:func:`engine.outputs.check_output`; the sizes of synthesised
    skies and their patches are estimated from the settings). Flags of the other kind are
    refused in one line.
    """
    import xarray as xr

    from engine.physics import sky, slabs

    _refuse_other_kind(args)
    if args.kind == "cmb":
        return cmd_sky_cmb(args)
    kind = get_kind("sky")
    settings = _settings(kind, args)
    out, _ = _output(args)
    centers = _parse_centers(args.patch or [])
    field = 0 if args.field is None else args.field
    fov = PATCH_FOV if args.patch_fov is None else args.patch_fov
    size = PATCH_SIZE if args.patch_size is None else args.patch_size
    skies = 0 if args.input else int(settings.count) * 12 * int(settings.nside) ** 2 * 4
    written = len(centers) * (1 if args.input else int(settings.count)) * size**2 * 4
    check_output(
        out,
        overwrite=args.overwrite,
        disk_bytes=written if centers else skies,
        memory_bytes=IN_MEMORY_FACTOR * skies + written,
    )
    t0 = time.perf_counter()
    if args.input:
        maps = xr.DataArray(
            sky.read_healpix(args.input, field=field, mask=settings.mask)[None],
            dims=("sample", "pixel"),
            name="map",
            attrs={"source": str(args.input)},
        )
    else:
        maps = kind.generate(settings)
    if centers:
        maps = xr.concat(
            [
                sky.extract_patches(maps, centers, fov=fov, size=size, sample=i)
                for i in range(maps.sizes["sample"])
            ],
            dim="sample",
        )
    slabs.save(maps, out, overwrite=args.overwrite)
    what = f"{len(centers)} patches per sky" if centers else "skies"
    print(
        f"wrote {maps.sizes['sample']} samples ({what}) to {out} in {time.perf_counter() - t0:.2f} s"
    )
    return 0


def cmd_sky_cmb(args: argparse.Namespace) -> int:
    """``sky --kind cmb``: lensed CMB polarisation skies (:mod:`engine.physics.cmb`) written to
    a .nc file (in memory) or a .zarr store (chunk by chunk, :data:`CHUNK_BYTES` of skies per
    step, by ``--workers`` processes); prints a summary line.

    Settings are checked, then the output (:func:`engine.outputs.check_output`: the size of the
    skies on disk; in memory all of them for .nc, two chunks for .zarr, plus the lensing work
    of each worker process), before any work.
    """
    from engine.physics import cmb

    settings = cmb.CMBParams()
    for layer in _layers(args, cmb.CMBParams):
        set_values(settings, layer)
    cmb.check_settings(settings)
    out, _ = _output(args)
    count, per_sky = int(settings.count), cmb.sample_bytes(settings)
    chunk = max(1, CHUNK_BYTES // per_sky)
    held = count * IN_MEMORY_FACTOR if out.suffix == ".nc" else min(chunk, count) * CHUNK_FACTOR
    check_output(
        out,
        overwrite=args.overwrite,
        disk_bytes=count * per_sky,
        memory_bytes=held * per_sky + cmb.work_bytes(settings),
    )
    t0 = time.perf_counter()
    if out.suffix == ".nc":
        data = cmb.generate(settings)
    else:
        data = cmb.generate_chunks(settings, chunk)
    cmb.save(data, out, overwrite=args.overwrite)
    print(
        f"wrote {count} cmb skies (nside {settings.nside}, maps {', '.join(cmb.VARIABLES)}; "
        f"r={settings.r:g}, noise {settings.noise:g} uK-arcmin, beam {settings.beam:g} arcmin, "
        f"lmax_unlensed {cmb.unlensed_lmax(settings)}, mask {settings.mask}, seed "
        f"{settings.seed}) to {out} in {time.perf_counter() - t0:.2f} s"
    )
    return 0
