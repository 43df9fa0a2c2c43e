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

    With ``--kind cmb``: lensed CMB Q/U skies with primordial B-modes (``engine.physics.cmb``:
    CAMB, lenspyx, healpy), with the unlensed skies and φ beside them; ``.zarr`` outputs are
    written sky by sky, ``--workers`` processes share the work::

        python -m engine sky --kind cmb --r 0.01 --noise 2 --beam 5 --nside 512 --count 4 \\
            --seed 1 --out cmb.nc

``train``
    Train a network to infer (omega_m, sigma8) in a run directory (see ``engine.runs``)::

        python -m engine train --preset smoke --run-dir runs/demo --set lr=3e-3
        python -m engine train --run-dir runs/demo --resume --set epochs=40
        python -m engine train --preset smoke --set dataset=data.zarr
        torchrun --standalone --nproc_per_node 2 -m engine train --preset smoke --run-dir runs/ddp

    Under ``torchrun`` (``WORLD_SIZE > 1``) the processes train one run with distributed data
    parallel; rank 0 alone checks and writes the run directory (see ``engine.train.loop``).
    Other tasks (``engine.tasks``): ``--task gan`` / ``--task diffusion`` (map emulators),
    ``classification`` (strong-lens substructure), ``delensing`` (CMB skies, a HEALPix U-Net), or
    a preset of that task (``--preset gan_smoke``, ``--preset delens512``).

``sample``
    Draw maps from a trained emulator (GAN or diffusion checkpoint) at given parameters, as the
    DataArrays of the kind it was trained on (``engine.evaluation.sampling``)::

        python -m engine sample --checkpoint runs/gan --omega-m 0.3 --sigma8 0.8 \\
            --count 64 --seed 1 --out gen.zarr

``predict``
    Infer (omega_m, sigma8) for every map of a file written by ``fields``, with the binned P(k)
    likelihood (``engine.evaluation.likelihood``; the default without ``--checkpoint``) or a
    trained network checkpoint (the default with ``--checkpoint``; its task must be one that
    ``engine.evaluation.evaluate.EVALUATORS`` knows), and write one CSV row per map (sample, true
    values when the maps carry them, posterior mean and std)::

        python -m engine predict --maps maps.zarr --out preds.csv
        python -m engine predict --checkpoint runs/demo/checkpoints/best.pt \\
            --maps maps.zarr --out preds.csv

    A delensing checkpoint writes delensed Q/U skies as HEALPix FITS maps instead (from a
    ``sky --kind cmb`` file or a FITS map with I, Q, U columns)::

        python -m engine predict --checkpoint assets/models/delens512 --maps cmb.nc \\
            --out delensed.fits

``evaluate``
    Score a network checkpoint (a .pt file or a run directory) and the P(k) likelihood on the
    labelled maps of a dataset spec (``engine.data``: a kind generated like the checkpoint's
    training maps, a .zarr/.nc file, ``camels:PATH``, ...): writes ``report.json``,
    ``predictions.csv`` and ``figures/`` to ``--out`` (``engine.evaluation.evaluate``; schema
    ``engine.evaluation.schema``) and prints a table::

        python -m engine evaluate --checkpoint runs/demo --dataset grf --count 256 --out ev/
        python -m engine evaluate --dataset "lognormal?size=64&count=128" --out ev-pk/

``compare``
    Every checkpoint on every dataset (and the P(k) likelihood once per dataset) as one
    long-format CSV table (model, dataset, method, param, rmse, ..., efficiency, n_maps;
    ``engine.evaluation.compare``)::

        python -m engine compare --checkpoints runs/a runs/b --datasets grf lognormal \\
            --count 128 --out table.csv --predictions-dir predictions/

    Data of other simulations (``camels:``, ``quijote:``, ``des:``, ``folder:``) and our files
    are resampled and tiled to each network's pixel grid first (``engine.data.transfer``;
    column ``transfer``); pairs that cannot be evaluated get the reason in column ``error``.

Flags are generated from the settings classes (``engine.params.FieldParams``,
``engine.train.settings.TrainParams``), so their names, defaults, bounds and help are those of the
settings. Settings are resolved as: preset < ``--config`` file < flags < ``--set key=value``
(``--resume`` starts from the run's saved settings instead of the preset).

User errors (bad value, unknown setting, bad preset, occupied run directory, ...) print one line
``error: ...`` to stderr and exit with code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from engine.kinds import WRITE_KINDS, get_kind
from engine.params import (
    ConfigError,
    from_namespace,
    load_config_file,
    parse_overrides,
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
        from engine.train.checkpoint import checkpoint_map_settings

        kind = checkpoint_map_settings(checkpoint)["kind"]
    return kind or "grf"


def _peek_task(argv: Sequence[str]) -> str:
    """The task of a ``train`` command line, to build its flags: ``--task``, else the ``task``
    of ``--preset`` (:data:`engine.train.settings.PRESETS`), else with ``--resume`` the task
    in ``--run-dir``'s config.json, else "regression".

    Raises
    ------
    ConfigError
        An unknown task.
    """
    from engine.tasks import get_task
    from engine.train.settings import preset_task

    task = _peek_option(argv, "--task")
    if task is None and "--resume" in argv:
        run_dir = _peek_option(argv, "--run-dir")
        if run_dir:
            from engine.runs import RunDir

            task = (RunDir(run_dir).config() or {}).get("task")
    if task is None:
        task = preset_task(_peek_option(argv, "--preset") or "default")
    return get_task(task or "regression").name


def _add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from-checkpoint",
        metavar="PATH",
        help="Start from the map settings of a trained checkpoint (kind, size, box, thickness, "
        "redshift, smoothing, noise, cosmology, ...); config file and flags override them.",
    )


def build_parser(fields_kind: str = "grf", task: str = "regression") -> argparse.ArgumentParser:
    """The ``argparse`` parser of all verbs (see the module docstring).

    ``fields_kind`` selects the settings class whose flags the ``fields`` verb gets, ``task``
    the task whose settings the ``train`` verb gets (:func:`_peek_task`). Each verb
    group's module adds its subparsers: :mod:`engine.cli.fields` (fields, dataset),
    :mod:`engine.cli.sky` (sky),
    :mod:`engine.cli.train` (train), :mod:`engine.cli.evaluate` (evaluate, compare; predict from :mod:`engine.cli.predict`).

    Raises
    ------
    ConfigError
        Unknown ``fields_kind``.
    """
    from engine.cli import evaluate, fields, sample, sky, train

    parser = _ArgumentParser(
        prog="cosmo-engine",
        description="Headless engine for machine learning on cosmological maps.",
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="{fields,dataset,sky,train,sample,predict,evaluate,compare}",
    )
    fields.add_parsers(sub, fields_kind)
    sky.add_parser(sub)
    train.add_parser(sub, task)
    sample.add_parser(sub)
    evaluate.add_parsers(sub)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    0 success (also a run stopped by a signal), 1 a run that failed at run time or a file that
    could not be written, 2 a user error (printed as one line ``error: ...`` on stderr).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        kind = _peek_kind(argv) if argv[:1] in (["fields"], ["dataset"]) else "grf"
        task = _peek_task(argv) if argv[:1] == ["train"] else "regression"
        args = build_parser(get_kind(kind, WRITE_KINDS).name, task).parse_args(argv)
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a run or output directory that cannot be written
        print(f"error: {exc}", file=sys.stderr)
        return 1
