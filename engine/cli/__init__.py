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

    ``--omega-m`` and ``--sigma8`` also take a range ``LO:HI``: uniform per sample, drawn from the
    seed (``--omega-m 0.1:0.5 --sigma8 0.6:1.0``). ``--from-checkpoint PATH`` starts from the map
    settings (kind, size, box, thickness, redshift, smoothing, noise, cosmology, ...) that a
    trained checkpoint's model saw; flags still override them.

``dataset``
    Write an on-disk training dataset (see ``engine.data.store``): samples of any kind with
    per-sample parameters uniform in a prior box and a fixed train/val/test split, to .zarr
    chunk by chunk, atomically::

        python -m engine dataset --kind grf --omega-m 0.1:0.5 --sigma8 0.6:1.0 --size 64 \\
            --count 10000 --split 0.8,0.1,0.1 --seed 0 --out data.zarr

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
        python -m engine train --preset smoke --set dataset=data.zarr
        torchrun --standalone --nproc_per_node 2 -m engine train --preset smoke --run-dir runs/ddp

    Under ``torchrun`` (``WORLD_SIZE > 1``) the processes train one run with distributed data
    parallel; rank 0 alone checks and writes the run directory (see ``engine.train.training``).

``predict``
    Infer (omega_m, sigma8) for every map of a file written by ``fields``, with the binned P(k)
    likelihood (``engine.evaluation.likelihood``) or a trained network checkpoint, and write one CSV row
    per map (sample, true values when the maps carry them, posterior mean and std)::

        python -m engine predict --method pk-likelihood --maps maps.zarr --out preds.csv
        python -m engine predict --method network --checkpoint runs/demo/checkpoints/best.pt \\
            --maps maps.zarr --out preds.csv

``evaluate``
    Score a network checkpoint (a .pt file or a run directory) and the P(k) likelihood on the
    labelled maps of a dataset spec (``engine.data``: a kind generated like the checkpoint's
    training maps, a .zarr/.nc file, ``camels:PATH``, ...): writes ``report.json``,
    ``predictions.csv`` and ``figures/`` to ``--out`` (``engine.evaluation.evaluate``) and prints a table::

        python -m engine evaluate --checkpoint runs/demo --dataset grf --count 256 --out ev/
        python -m engine evaluate --dataset "lognormal?size=64&count=128" --out ev-pk/

``compare``
    Every checkpoint on every dataset (and the P(k) likelihood once per dataset) as one
    long-format CSV table (model, dataset, method, param, rmse, ..., efficiency, n_maps)::

        python -m engine compare --checkpoints runs/a runs/b --datasets grf lognormal \\
            --count 128 --out table.csv --predictions-dir predictions/

    Data of other simulations (``camels:``, ``quijote:``, ``des:``, ``folder:``) and our files
    are resampled and tiled to each network's pixel grid first (``engine.data.transfer``;
    column ``transfer``); pairs that cannot be evaluated get the reason in column ``error``.

Flags are generated from the settings classes (``engine.params.FieldParams``,
``engine.train.training.TrainParams``), so their names, defaults, bounds and help are those of the
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


def _peek_option(argv: Sequence[str], flag: str) -> str | None:
    """The value of option ``flag`` (e.g. ``"--kind"``) in ``argv``, or None if absent."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _peek_kind(argv: Sequence[str]) -> str:
    """The value of ``--kind`` in ``argv``, else the kind of ``--from-checkpoint``'s maps, else
    "grf": to build the matching flags.

    Raises
    ------
    ConfigError
        An unreadable ``--from-checkpoint``.
    """
    kind = _peek_option(argv, "--kind")
    checkpoint = _peek_option(argv, "--from-checkpoint")
    if kind is None and checkpoint:
        from engine.train.training import checkpoint_map_settings

        kind = checkpoint_map_settings(checkpoint)["kind"]
    return kind or "grf"


def _add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from-checkpoint",
        metavar="PATH",
        help="Start from the map settings of a trained checkpoint (kind, size, box, thickness, "
        "redshift, smoothing, noise, cosmology, ...); config file and flags override them.",
    )


def build_parser(fields_kind: str = "grf") -> argparse.ArgumentParser:
    """The ``argparse`` parser of all verbs (see the module docstring).

    ``fields_kind`` selects the settings class whose flags the ``fields`` verb gets.

    Raises
    ------
    ConfigError
        Unknown ``fields_kind``.
    """
    from engine.train.training import PRESETS, TrainParams

    parser = _ArgumentParser(
        prog="cosmo-engine",
        description="Headless engine for machine learning on cosmological maps.",
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="{fields,dataset,sky,train,predict,evaluate,compare}",
    )

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
    _add_predict_parser(sub)
    _add_evaluate_parsers(sub)
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
        from engine.train.training import checkpoint_map_settings

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


def cmd_train(args: argparse.Namespace) -> int:
    """``train`` verb: resolve and check everything, then train in this process.

    Returns the exit code of :func:`engine.train.training.run_training`.

    Raises
    ------
    ConfigError
        Any bad setting or run-directory problem (see :func:`engine.runs.check_run_dir`), before
        anything is written, except that a run queued by ``engine.runs.launch_train`` is marked
        failed with the message.
    """
    from engine.runs import RunDir, check_run_dir, new_run_id
    from engine.train.training import (
        Distributed,
        TrainParams,
        resolve_device,
        resolve_params,
        run_training,
    )

    if args.run_dir is None and args.resume:
        raise ConfigError("--resume needs --run-dir DIR of the run to continue")
    # Under torchrun every rank runs this; rank 0 names and checks the run directory.
    with Distributed.from_env() as dist:
        run = RunDir(dist.broadcast(str(args.run_dir or Path("runs") / new_run_id(args.preset))))
        try:
            base = dist.on_main(check_run_dir, run, args.resume)
            params = resolve_params(args.preset, *_layers(args, TrainParams), base=base)
            device = dist.device(resolve_device(params))
        except ConfigError as exc:
            if dist.is_main and (run.status() or {}).get("state") == "queued":  # launch_train
                run.write_status(state="failed", error=str(exc))
            raise
        preset = (run.config() or {}).get("preset") if args.resume else args.preset
        return run_training(params, run, device, resume=args.resume, preset=preset, dist=dist)


def _add_predict_parser(sub) -> None:
    """The ``predict`` verb's subparser (see :func:`cmd_predict`)."""
    from engine.evaluation.likelihood import DEFAULT_PRIOR

    prior = ",".join(f"{v:g}" for pair in DEFAULT_PRIOR for v in pair)
    p = sub.add_parser(
        "predict",
        help="Infer (omega_m, sigma8) for every map of a file; one CSV row per map.",
        description="Infer (omega_m, sigma8) for every map of a .zarr/.nc file written by "
        "'fields', with the binned P(k) likelihood or a trained network, and write one CSV "
        "row per map: sample, true values (when the maps carry them), posterior mean and std.",
    )
    p.add_argument(
        "--method",
        default="pk-likelihood",
        choices=["pk-likelihood", "network"],
        help="pk-likelihood: Gaussian likelihood of the binned P(k) (engine.evaluation.likelihood); "
        "network: a trained checkpoint (--checkpoint).",
    )
    p.add_argument("--maps", required=True, metavar="PATH", help="Maps file, .zarr or .nc.")
    p.add_argument("--out", required=True, metavar="PATH", help="Output CSV file.")
    p.add_argument("--checkpoint", metavar="PATH", help="Network checkpoint (--method network).")
    p.add_argument(
        "--prior",
        default=prior,
        metavar="OM_MIN,OM_MAX,S8_MIN,S8_MAX",
        help="Flat prior box of the likelihood (default %(default)s).",
    )
    p.add_argument(
        "--grid", type=int, default=64, help="Posterior grid points per parameter (default 64)."
    )
    p.add_argument(
        "--k-max",
        type=float,
        default=None,
        help="Highest bin centre used, h/Mpc (ell for kappa maps); default Nyquist.",
    )
    p.add_argument(
        "--device", default="cpu", help="Torch device of the network: cpu (default), cuda[:i]."
    )
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    """``predict`` verb: posterior mean/std per map to a CSV file; prints a summary line.

    Raises
    ------
    ConfigError
        Missing maps file, unsupported kind, bad prior, missing checkpoint, output not .csv or
        in a missing directory; all before anything is written.
    """
    import numpy as np

    from engine.evaluation import likelihood
    from engine.physics import slabs

    out = Path(args.out)
    if out.suffix != ".csv":
        raise ConfigError(f"--out {str(out)!r} must end in .csv")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist")
    try:
        values = [float(v) for v in args.prior.split(",")]
        if len(values) != 4:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"--prior {args.prior!r} must look like OM_MIN,OM_MAX,S8_MIN,S8_MAX"
        ) from None
    if args.method == "network" and not args.checkpoint:
        raise ConfigError("--method network needs --checkpoint PATH")
    t0 = time.perf_counter()
    maps = slabs.load(args.maps)
    if args.method == "network":
        result = likelihood.predict_network(maps, args.checkpoint, device=args.device)
    else:
        result = likelihood.pk_likelihood_predict(
            maps, prior=(tuple(values[:2]), tuple(values[2:])), grid=args.grid, k_max=args.k_max
        )
    likelihood.write_predictions(out, result)
    summary = ""
    if "truth" in result:
        rmse = np.sqrt(np.mean((result["mean"] - result["truth"]) ** 2, axis=0))
        summary = "; rmse " + ", ".join(
            f"{n}={r:.4g}" for n, r in zip(likelihood.PARAM_NAMES, rmse, strict=True)
        )
    print(
        f"wrote {len(result['mean'])} predictions ({args.method}{summary}) to {out} "
        f"in {time.perf_counter() - t0:.2f} s"
    )
    return 0


def _add_evaluate_parsers(sub) -> None:
    """The ``evaluate`` and ``compare`` verbs' subparsers (see :func:`cmd_evaluate`,
    :func:`cmd_compare` and ``engine.evaluation.evaluate``)."""
    datasets_help = "Datasets YAML of short names (default $ENGINE_DATASETS or ./datasets.yaml)."
    p = sub.add_parser(
        "evaluate",
        help="Score a network and the P(k) likelihood on labelled maps; report.json + figures.",
        description="Predict (omega_m, sigma8) for every map of a dataset spec (a kind such as "
        "grf, generated like the checkpoint's training maps; a .zarr/.nc file; prefix:path) with "
        "a trained network and the binned P(k) likelihood, and write OUT/report.json, "
        "OUT/predictions.csv and OUT/figures/*.png (schema: engine.evaluation.evaluate).",
    )
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="Checkpoint .pt or run directory (its best.pt); "
        "without it only the P(k) likelihood is evaluated.",
    )
    p.add_argument("--dataset", required=True, metavar="SPEC", help="Dataset spec or short name.")
    p.add_argument("--out", required=True, metavar="DIR", help="Output directory (created).")
    p.add_argument("--count", type=int, default=None, help="Number of maps (spec option count).")
    p.add_argument("--seed", type=int, default=None, help="Seed of generated maps (spec option).")
    p.add_argument("--device", default="cpu", help="Torch device of the network: cpu, cuda[:i].")
    p.add_argument(
        "--no-pk-likelihood",
        dest="pk_likelihood",
        action="store_false",
        help="Do not run the P(k) likelihood.",
    )
    p.add_argument(
        "--k-max",
        type=float,
        default=None,
        help="Highest bin centre of the P(k) likelihood and the Fisher bound, h/Mpc (ell for "
        "kappa); default Nyquist (k_N/4 for 2lpt).",
    )
    p.add_argument("--datasets", metavar="FILE", help=datasets_help)
    p.set_defaults(func=cmd_evaluate)

    c = sub.add_parser(
        "compare",
        help="Metrics of several checkpoints on several datasets as one long CSV table.",
        description="Evaluate every checkpoint on every dataset spec (and the P(k) likelihood "
        "once per dataset, model 'pk-likelihood') and write one CSV row per (model, dataset, "
        "method, param) with rmse, mae, r2, bias, coverage_68, coverage_95, efficiency, n_maps.",
    )
    c.add_argument(
        "--checkpoints", nargs="*", default=[], metavar="PATH", help=".pt files or run dirs."
    )
    c.add_argument(
        "--datasets", nargs="+", required=True, metavar="SPEC", help="Dataset specs or names."
    )
    c.add_argument("--out", required=True, metavar="PATH", help="Output CSV file.")
    c.add_argument("--count", type=int, default=None, help="Number of maps per dataset.")
    c.add_argument("--seed", type=int, default=None, help="Seed of generated maps.")
    c.add_argument("--device", default="cpu", help="Torch device of the networks.")
    c.add_argument(
        "--no-pk-likelihood",
        dest="pk_likelihood",
        action="store_false",
        help="Leave out the P(k)-likelihood rows.",
    )
    c.add_argument("--datasets-file", metavar="FILE", help=datasets_help)
    c.add_argument(
        "--predictions-dir",
        metavar="DIR",
        help="Also write each (model, dataset) pair's predictions as DIR/<model>__<dataset>.csv "
        "(created; the table's 'predictions' column names the file).",
    )
    c.set_defaults(func=cmd_compare)


def _check_count(count: int | None) -> None:
    if count is not None and count < 1:
        raise ConfigError(f"--count {count} must be >= 1")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``evaluate`` verb: :func:`engine.evaluation.evaluate.evaluate`; prints a method × parameter table.

    Raises
    ------
    ConfigError
        Bad dataset spec, checkpoint, count or output directory (one line, before writing).
    """
    from engine.evaluation.evaluate import evaluate, format_table

    _check_count(args.count)
    report = evaluate(
        args.dataset,
        args.checkpoint,
        out_dir=args.out,
        pk_likelihood=args.pk_likelihood,
        device=args.device,
        count=args.count,
        seed=args.seed,
        datasets_file=args.datasets,
        k_max=args.k_max,
    )
    print(format_table(report))
    for note in report.get("notes") or []:
        print(f"note: {note}")
    print(
        f"evaluated {report['n_maps']} maps of {report['dataset']} in {report['seconds']:.2f} s; "
        f"wrote {Path(args.out) / 'report.json'}"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``compare`` verb: :func:`engine.evaluation.evaluate.compare` to a long-format CSV; prints it.

    Raises
    ------
    ConfigError
        Bad output path or count; failing (checkpoint, dataset) pairs are reported in the
        table's ``error`` column and on stderr instead.
    """
    from engine.evaluation.evaluate import compare

    _check_count(args.count)
    t0 = time.perf_counter()
    table = compare(
        args.checkpoints,
        args.datasets,
        count=args.count,
        seed=args.seed,
        device=args.device,
        datasets_file=args.datasets_file,
        pk_likelihood=args.pk_likelihood,
        out=args.out,
        predictions_dir=args.predictions_dir,
    )
    shown = table.drop(columns=["error", "predictions"]).dropna(subset=["rmse"])
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for row in table.dropna(subset=["error"]).drop_duplicates(["model", "dataset"]).itertuples():
        print(f"warning: {row.model} on {row.dataset}: {row.error}", file=sys.stderr)
    print(f"wrote {len(table)} rows to {args.out} in {time.perf_counter() - t0:.2f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    0 success (also a run stopped by a signal), 1 a run that failed at run time or a file that
    could not be written, 2 a user error (printed as one line ``error: ...`` on stderr).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        kind = _peek_kind(argv) if argv[:1] in (["fields"], ["dataset"]) else "grf"
        args = build_parser(get_kind(kind, FIELD_KINDS).name).parse_args(argv)
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a run or output directory that cannot be written
        print(f"error: {exc}", file=sys.stderr)
        return 1
