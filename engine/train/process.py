"""One engine process's run: run directory, status, signals, failures (:func:`run_training`)."""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

import engine
from engine.nn.registry import count_parameters
from engine.params import ConfigError, to_dict
from engine.runs import RunDir, process_start, write_json_atomic
from engine.train.distributed import Distributed
from engine.train.loop import Trainer
from engine.train.schedule import epoch_of
from engine.train.settings import configure_threads


class StopSignals:
    """Context manager turning SIGTERM and SIGINT into a stop request.

    The first signal sets :attr:`requested` (the loop finishes its step, saves and stops); a
    second one raises ``KeyboardInterrupt`` at once. Handlers are only installed in the main
    thread and are restored on exit. Calling the object returns :attr:`requested`.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}")
        self.requested = True

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False


def one_line(exc: BaseException) -> str:
    """``"Type: first line of the message"`` of an exception (just the message for ConfigError)."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, ConfigError):
        return msg
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _write_start(run: RunDir, params, device, world_size, threads, resume, preset) -> None:
    """``config.json`` (settings, versions, device, processes) and the ``running`` status."""
    run.create()
    run.write_config(
        {
            "command": "train",
            "task": getattr(params, "task_name", "regression"),
            "preset": preset,
            "resumed": bool(resume),
            "settings": to_dict(params),
            "engine_version": engine.__version__,
            "torch_version": torch.__version__,
            "device": str(device),
            "world_size": world_size,
            "num_threads": threads,
            "created": time.time(),
        }
    )
    run.write_status(
        state="running",
        pid=os.getpid(),
        pid_start=process_start(os.getpid()),
        started=time.time(),
        total_steps=params.total_steps,
        error=None,
        previous=None,
    )


def _prepare(params, run: RunDir, device, resume: bool, progress, dist) -> Trainer:
    """The trainer, restored from ``last.pt`` (``resume``) or ``init_from``: every check that
    can refuse the run, before anything is written."""
    trainer = Trainer(params, run, device, progress=progress, dist=dist)
    if resume:
        trainer.restore()
    elif params.init_from:
        trainer.load_weights(params.init_from)
    return trainer


def refuse_launch(run: RunDir, message: str) -> None:
    """A run queued for this process by ``engine.launch.launch_train`` that this process
    refuses: its status goes back to what it was before the launch (a resume of a completed
    run stays completed) with ``error`` set, or ``failed`` for a new run. Nothing is written for
    runs not queued for this very process."""
    status = run.raw_status() or {}
    if status.get("state") != "queued" or status.get("pid") not in (None, os.getpid()):
        return
    previous = status.get("previous")
    if isinstance(previous, dict) and previous.get("state"):
        write_json_atomic(run.status_path, {**previous, "error": message})
    else:
        run.write_status(state="failed", error=message)


def _report_failure(exc: BaseException, run: RunDir, main: bool, written: bool) -> int:
    """Print a failure in one line (traceback for bugs), record it, return the exit code."""
    msg = one_line(exc)
    if main and written:
        run.write_status(state="failed", error=msg)
    elif main:
        refuse_launch(run, msg)
    if not isinstance(exc, ConfigError):
        traceback.print_exc(file=sys.stderr)
    print(f"error: {msg}", file=sys.stderr)
    return 2 if isinstance(exc, ConfigError) else 1


def run_training(
    params,
    run: RunDir,
    device: torch.device,
    resume: bool = False,
    preset: str | None = None,
    progress: bool | None = None,
    dist: Distributed | None = None,
    after: Callable[[], str | None] | None = None,
) -> int:
    """Train in this process and keep ``run``'s files up to date; returns an exit code.

    First builds the trainer and restores its checkpoint (``resume``) or ``init_from``
    weights: a refusal then (changed settings, unreadable checkpoint) writes nothing, so a run
    stays exactly as it was (:func:`refuse_launch` only undoes a launch queued for this
    process). Then writes ``config.json`` (settings, engine version, device, number of
    processes), sets the state ``running`` with this pid and its start time, removes temporary
    files of a killed earlier save, cuts ``metrics.jsonl`` back to the restored step, trains (resuming from ``last.pt`` if ``resume``, else
    starting from ``init_from``'s weights when set) and ends in state ``completed`` (exit 0;
    first ``after()``, e.g. the end-of-training evaluation that writes ``report.json``, runs
    while the state is still ``running``; a message it returns is noted in ``error``),
    ``stopped`` after SIGTERM/SIGINT (exit 0; 130 after a second signal, without a checkpoint of
    the interrupted step) or ``failed`` with a one-line ``error`` (exit 1; 2 for a ConfigError,
    e.g. a checkpoint of another model). The settings must already be checked and the run
    directory validated (see ``engine.cli``).

    With several processes (``dist``, a torchrun launch) every rank calls this; only rank 0
    writes the run directory and prints, and the state and pid are rank 0's.
    """
    dist = dist or Distributed()
    main = dist.is_main
    threads = configure_threads(params.num_threads)
    trainer, written = None, False
    with StopSignals() as stop:
        try:
            trainer = _prepare(params, run, device, resume, progress, dist)
            if main:  # every check passed: now the run directory is written
                written = True
                _write_start(run, params, device, dist.world_size, threads, resume, preset)
                run.clean_temporary_files()
                if resume:
                    run.truncate_metrics(trainer.step)
                n = sum(count_parameters(m, trainable_only=False) for m in trainer.models.values())
                run.write_config(
                    {**run.config(), "n_parameters": n, "data": trainer.task.describe()}
                )
            state = trainer.fit(stop)
        except KeyboardInterrupt:
            if main and written:
                run.write_status(state="stopped", error="interrupted during a step (second signal)")
            print("stopped: interrupted during a step", file=sys.stderr)
            return 130
        except Exception as exc:
            return _report_failure(exc, run, main, written)
    if not main:
        return 0
    epoch = epoch_of(trainer.step, params.steps_per_epoch)
    error = None
    if state == "completed" and after is not None:
        run.write_status(step=trainer.step, epoch=epoch)
        error = after()
    run.write_status(state=state, step=trainer.step, epoch=epoch, error=error)
    metric = trainer.task.selection[0]
    best = f", best val {metric} {trainer.best:.4g}" if math.isfinite(trainer.best) else ""
    print(f"{state}: run {run.id} at step {trainer.step}/{params.total_steps}{best} ({run.path})")
    return 0
