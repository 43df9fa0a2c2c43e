"""``train`` verb: train a network in a run directory (see ``engine.runs``).

::

    python -m engine train --preset smoke --run-dir runs/demo --set lr=3e-3
    python -m engine train --run-dir runs/demo --resume --set epochs=40
    python -m engine train --preset smoke --dataset "camels:/d/Maps_Mgas_IllustrisTNG_LH_z=0.00.npy?fields=Mgas,HI"
    torchrun --standalone --nproc_per_node 2 -m engine train --preset smoke --run-dir runs/ddp

The flags are generated from the parts of the composed settings
(:class:`engine.train.settings.TrainParams`: loop, model, task, data), one help group each.
When a run completes, its best checkpoint is evaluated into the run directory
(:func:`evaluate_run`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from engine.cli import ALIASES, _add_config_arguments, _layers
from engine.params import ConfigError, add_arguments

#: Help-group titles of the parts of the training settings (loop, model, task, data), in order.
PART_TITLES = (
    "loop settings (optimiser, schedule, EMA, fine-tuning, devices, logging)",
    "model settings (the network of task {task})",
    "task settings ({task})",
    "data settings (kind and map settings on the fly, or --dataset SPEC)",
)


def add_parser(sub, task: str = "regression") -> None:
    """Add the ``train`` verb's subparser to ``sub`` (the verbs' ``add_subparsers`` object),
    with the settings of ``task`` as flags (:func:`engine.cli._peek_task` finds it in argv)."""
    from engine.tasks import TASKS
    from engine.train.settings import PRESETS, train_params_class

    TrainParams = train_params_class(task)

    train_p = sub.add_parser(
        "train",
        help="Train a network on maps generated on the fly or on any dataset spec.",
        description="Train a network (task: regression of (omega_m, sigma8) or of a dataset's "
        "labels) on maps generated on the fly on the training device or read from a dataset "
        "spec, in a run directory. Settings: preset < --config < flags < --set.",
    )
    train_p.add_argument(
        "--task",
        choices=list(TASKS),
        default=None,
        help="The problem to train (engine.tasks): "
        + ", ".join(TASKS)
        + "; default: the preset's task, the run's task with --resume, else regression. "
        "'train --task NAME --help' lists that task's settings.",
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
    for title, part in zip(PART_TITLES, TrainParams.parts, strict=True):
        title = title.format(task=TrainParams.task_name)
        add_arguments(train_p.add_argument_group(title), part, aliases=ALIASES)
    train_p.set_defaults(func=cmd_train)


def evaluate_run(params, run, device) -> str | None:
    """Evaluate a completed run's best checkpoint into its run directory
    (:func:`engine.evaluation.evaluate.evaluate`).

    On ``params.eval_maps`` maps: generated now with the run's map settings and prior box, from
    the seed ``derive_seed(params.seed, STREAM_EVAL)`` (on the CPU, so the test set does not
    depend on the training device), or the first ones of the test split of ``params.dataset``.
    Writes ``report.json``, ``predictions.csv`` and ``figures/`` next to the checkpoints.

    Returns
    -------
    str or None
        None on success or with ``eval_maps = 0``, else ``"evaluation failed: <one line>"``
        (any exception is caught, and so is a second SIGTERM/SIGINT during the evaluation: the
        run still completed).
    """
    from engine.data.sources import STREAM_EVAL, derive_seed
    from engine.evaluation.evaluate import evaluate
    from engine.train.process import StopSignals, one_line

    if params.eval_maps <= 0:
        return None
    from engine.tasks import get_task
    from engine.tasks.generative import GenerativeTask

    if issubclass(get_task(params.task_name), GenerativeTask):
        return _evaluate_generator(params, run, device)
    spec = params.dataset or params.kind
    if params.dataset:
        spec = f"{spec}{'&' if '?' in spec else '?'}split=test"
    seed = None if params.dataset else derive_seed(params.seed, STREAM_EVAL) % 2**62
    try:
        with StopSignals():
            evaluate(
                spec,
                run.path,
                out_dir=run.path,
                device=str(device),
                count=params.eval_maps,
                seed=seed,
            )
    except (Exception, KeyboardInterrupt) as exc:
        msg = f"evaluation failed: {one_line(exc)}"
        print(msg, file=sys.stderr)
        return msg
    return None


#: Grid of the end-of-training evaluation of a generator on the fly: the centres of the four
#: quarters of the prior box.
EVAL_GRID_FRACTIONS = (0.25, 0.75)


def _evaluate_generator(params, run, device) -> str | None:
    """The emulator report of a completed generator run (:func:`engine.evaluation.emulator_eval.
    evaluate_emulator`) into its run directory.

    On the fly: ``eval_maps`` maps of the run's kind and map settings on a 2 × 2 grid (the
    centres of the quarters of the prior box, :data:`EVAL_GRID_FRACTIONS`), generated on the CPU
    from ``derive_seed(seed, STREAM_EVAL)``. On a dataset: its test split when it holds a grid
    (≥ 4 maps per parameter point), else nothing (a note: evaluate on a grid with
    ``python -m engine evaluate --checkpoint RUN --dataset GRID``).

    Returns None on success, else ``"evaluation failed: <one line>"`` / the note.
    """
    import numpy as np

    from engine.data.sources import STREAM_EVAL, derive_seed, with_split
    from engine.evaluation.emulator_eval import evaluate_emulator
    from engine.kinds import get_kind
    from engine.train.process import StopSignals, one_line

    try:
        with StopSignals():
            if params.dataset:
                data = with_split(params.dataset, "test")
            else:
                kind = get_kind(params.kind)
                settings = params.map_settings()
                per = max(4, params.eval_maps // 4)
                lo = np.array([params.omega_m_min, params.sigma8_min])
                hi = np.array([params.omega_m_max, params.sigma8_max])
                f = np.array([(a, b) for a in EVAL_GRID_FRACTIONS for b in EVAL_GRID_FRACTIONS])
                theta = np.repeat(lo + f * (hi - lo), per, axis=0)
                settings.count = len(theta)
                settings.seed = derive_seed(params.seed, STREAM_EVAL) % 2**62
                data = kind.generate(
                    settings, device="cpu", omega_m=theta[:, 0], sigma8=theta[:, 1]
                )
            evaluate_emulator(data, run.path, out_dir=run.path, device=str(device), count=None)
    except (Exception, KeyboardInterrupt) as exc:
        msg = f"evaluation failed: {one_line(exc)}"
        print(msg, file=sys.stderr)
        return msg
    return None


def cmd_train(args: argparse.Namespace) -> int:
    """``train`` verb: resolve and check everything, then train in this process.

    Returns the exit code of :func:`engine.train.process.run_training`.

    Raises
    ------
    ConfigError
        Any bad setting or run-directory problem (see :func:`engine.launch.check_run_dir`), or
        another engine process holding the run's lock, before anything is written (a run queued
        for this process by ``engine.launch.launch_train`` gets its status back, or ``failed``).
    """
    from engine.launch import check_run_dir
    from engine.runs import RunDir, new_run_id
    from engine.train.distributed import Distributed
    from engine.train.process import refuse_launch, run_training
    from engine.train.settings import resolve_device, resolve_params, train_params_class

    if args.run_dir is None and args.resume:
        raise ConfigError("--resume needs --run-dir DIR of the run to continue")
    # Under torchrun every rank runs this; rank 0 names, checks and locks the run directory.
    with Distributed.from_env() as dist, contextlib.ExitStack() as stack:
        run = RunDir(dist.broadcast(str(args.run_dir or Path("runs") / new_run_id(args.preset))))
        fresh = not run.path.exists()
        try:
            base = dist.on_main(check_run_dir, run, args.resume)
            task = _check_task(args, run, base)
            params = resolve_params(
                args.preset, *_layers(args, train_params_class(task)), base=base, task=task
            )
            device = dist.device(resolve_device(params))
            # one trainer per run directory: the lock, then the checks again under it
            dist.on_main(lambda: stack.enter_context(run.lock()) and None)
            dist.on_main(check_run_dir, run, args.resume)
        except ConfigError as exc:
            if dist.is_main and "in use by another engine process" not in str(exc):
                refuse_launch(run, str(exc))
            raise
        preset = (run.config() or {}).get("preset") if args.resume else args.preset
        code = run_training(
            params,
            run,
            device,
            resume=args.resume,
            preset=preset,
            dist=dist,
            after=lambda: evaluate_run(params, run, device),
        )
        if dist.is_main and fresh and not run.has_run():
            _remove_empty_run_dir(run)
        return code


def _check_task(args: argparse.Namespace, run, base) -> str:
    """The task of a ``train`` command: ``--task``, else the preset's task, else regression;
    on ``--resume`` the run's own task.

    Raises
    ------
    ConfigError
        ``--resume`` with a ``--task`` other than the run's.
    """
    if not args.resume:
        from engine.train.settings import preset_task

        return args.task or preset_task(args.preset) or "regression"
    saved = (run.config() or {}).get("task", "regression")
    if args.task is not None and args.task != saved:
        raise ConfigError(
            f"--task {args.task} does not match run {run.id!r}, a run of task {saved!r}; "
            "leave --task out to resume it"
        )
    return saved


def _remove_empty_run_dir(run) -> None:
    """Remove a run directory this command created but never started a run in (it holds at
    most the lock file and an empty checkpoints/)."""
    import shutil

    from engine.runs import LOCK_FILE

    names = {p.name for p in run.path.iterdir()} if run.path.is_dir() else set()
    empty_checkpoints = (
        not any(run.checkpoint_dir.iterdir()) if run.checkpoint_dir.is_dir() else True
    )
    if names <= {LOCK_FILE, "checkpoints"} and empty_checkpoints:
        shutil.rmtree(run.path, ignore_errors=True)
