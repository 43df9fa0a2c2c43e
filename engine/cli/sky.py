"""``sky`` verb: HEALPix skies written to files.

The ``sky`` verb makes HEALPix skies of two kinds (``--kind``): ``kappa`` (the default),
full-sky weak-lensing convergence (:mod:`engine.physics.sky`, flags from
:class:`~engine.physics.sky.SkyParams`) or gnomonic patches cut from it or from a FITS map, and
``cmb``, lensed CMB polarisation skies with primordial B-modes (:mod:`engine.physics.cmb`, flags
from :class:`~engine.physics.cmb.CMBParams`)::

    python -m engine sky --kind cmb --r 0.01 --noise 2 --beam 5 --nside 512 --count 4 \
        --seed 1 --out cmb.nc
    python -m engine sky --kind cmb --nside 512 --count 64 --workers 2 --out cmb.zarr

A ``.zarr`` output of ``cmb`` skies is generated and written chunk by chunk
(:data:`~engine.cli.fields.CHUNK_BYTES`), a ``.nc`` file in memory; the skies are the same. The
flags that only one kind takes (``--patch``, ``--footprint``, ``--input`` for kappa; ``--r``,
``--beam``, ``--workers`` for cmb, ...) are refused with the other kind, in one line.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from engine.cli import (
    ALIASES,
    _add_output_arguments,
    _layers,
    _output,
)
from engine.cli.fields import CHUNK_BYTES, CHUNK_FACTOR, IN_MEMORY_FACTOR
from engine.kinds import Kind, get_kind
from engine.outputs import add_overwrite_argument, check_output
from engine.params import ConfigError, allowed, set_values, user_settings

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


def add_parser(sub) -> None:
    """Add the ``sky`` subparser to ``sub``."""
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
    from engine.physics import cmb, cmb_io

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
        data = cmb_io.generate(settings)
    else:
        data = cmb_io.generate_chunks(settings, chunk)
    cmb_io.save(data, out, overwrite=args.overwrite)
    print(
        f"wrote {count} cmb skies (nside {settings.nside}, maps {', '.join(cmb.VARIABLES)}; "
        f"r={settings.r:g}, noise {settings.noise:g} uK-arcmin, beam {settings.beam:g} arcmin, "
        f"lmax_unlensed {cmb.unlensed_lmax(settings)}, mask {settings.mask}, seed "
        f"{settings.seed}) to {out} in {time.perf_counter() - t0:.2f} s"
    )
    return 0
