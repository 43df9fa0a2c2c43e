"""Settings of a training run: the loop's own (:class:`LoopParams`), composed with the model's,
the task's and the data's into :class:`TrainParams`; named presets; device and thread set-up.

One definition of each setting: :class:`LoopParams` here, :class:`engine.tasks.settings.ModelParams`
and :class:`engine.tasks.settings.DataParams`, and the task's own class (e.g.
:class:`engine.tasks.regression.RegressionParams`). :func:`train_params_class` composes them
(:func:`engine.tasks.settings.compose`) into one flat class whose settings keep their names
(``lr``, ``width``, ``kind``, ``targets``...), so ``--set NAME=VALUE``, YAML configs, the CLI
flags (one group per part) and the explorer's form are generated from it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import param
import torch

from engine.device import default_device
from engine.params import PARAM_NAMES, ConfigError, set_values
from engine.tasks import get_task
from engine.tasks.settings import (
    KAPPA_MAX_POINTS,
    TRAIN_KINDS,
    ComposedParams,
    DataParams,
    ModelParams,
    compose,
)
from engine.train.presets import PRESETS, preset_task

__all__ = [
    "KAPPA_MAX_POINTS",
    "PRESETS",
    "TRAIN_KINDS",
    "LoopParams",
    "TrainParams",
    "resolve_params",
]

#: One-line error of ``tensorboard=true`` without the package.
TENSORBOARD_MISSING = "tensorboard=true needs the tensorboard package: pip install tensorboard"


def tensorboard_available() -> bool:
    """True if the ``tensorboard`` package can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("tensorboard") is not None
    except (ImportError, ValueError):
        return False


class LoopParams(param.Parameterized):
    """Settings of the training loop: seed, batches, optimiser and schedule, EMA, fine-tuning,
    early stopping, logging and devices (every task)."""

    seed = param.Integer(
        0,
        bounds=(0, 2**62),
        doc="Seed of the run: model initialisation, the batch of every step and the validation "
        "set; same seed ⇒ same run on CPU.",
    )
    batch_size = param.Integer(
        64,
        bounds=(1, 65536),
        doc="Maps per optimiser step, over all processes (DDP: each of W processes gets "
        "batch_size/W of them).",
    )
    batch_shards = param.Integer(
        1,
        bounds=(1, 65536),
        doc="Independent random streams each step's batch is drawn from (batch_size/batch_shards "
        "maps each, same batch for any number of processes); a DDP process generates only the "
        "shards overlapping its rows, so a multiple of the number of processes avoids "
        "generating maps twice.",
    )
    steps_per_epoch = param.Integer(
        200, bounds=(1, 10_000_000), doc="Optimiser steps per epoch (validation after each)."
    )
    epochs = param.Integer(20, bounds=(1, 100_000), doc="Number of epochs.")
    lr = param.Number(
        1e-3,
        bounds=(0.0, 10.0),
        inclusive_bounds=(False, True),
        doc="Peak learning rate of AdamW (dimensionless), reached after warmup_steps; the "
        "learning rate of the head (see lr_decay).",
    )
    final_lr_fraction = param.Number(
        0.1,
        bounds=(0.0, 1.0),
        doc="Learning rate at the end of each cosine decay, as a fraction of lr.",
    )
    restart_period = param.Integer(
        0,
        bounds=(0, None),
        doc="Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2017): optimiser "
        "steps of the first cosine cycle after warm-up, after which the learning rate jumps back "
        "to lr (0: one cosine decay over the whole run, no restarts).",
    )
    restart_mult = param.Number(
        1.0,
        bounds=(1.0, 100.0),
        doc="SGDR: each cosine cycle lasts this many times the previous one (T_mult, "
        "dimensionless; 1: equal cycles).",
    )
    weight_decay = param.Number(
        1e-4,
        bounds=(0.0, 10.0),
        doc="Decoupled weight decay of AdamW (fraction of each weight removed per step, times lr).",
    )
    warmup_steps = param.Integer(
        200, bounds=(0, None), doc="Optimiser steps of linear learning-rate warm-up."
    )
    grad_clip = param.Number(
        1.0, bounds=(0.0, None), doc="Maximum global L2 norm of the gradient (0: no clipping)."
    )
    ema_decay = param.Number(
        0.0,
        bounds=(0.0, 1.0),
        inclusive_bounds=(True, False),
        doc="Exponential moving average of the weights: decay per optimiser step (e.g. 0.999; "
        "ramped up as min(decay, (1+t)/(10+t)) over the first steps t). Validation and the "
        "checkpoints' model_state use the averaged weights (0: off).",
    )
    init_from = param.String(
        "",
        doc="Fine-tuning: path of a checkpoint whose model_state initialises the network (same "
        "model and model settings; the optimiser starts afresh). Empty: random initialisation.",
    )
    freeze = param.List(
        default=[],
        item_type=str,
        doc="Fine-tuning: parameters not trained, as module-name prefixes (e.g. features.0) or "
        "'backbone' (every top-level stage of the model but the last, the head).",
    )
    unfreeze_every = param.Integer(
        0,
        bounds=(0, None),
        doc="Gradual unfreezing: every this many epochs, one more frozen stage (from the head "
        "towards the input) becomes trainable (0: frozen stages stay frozen).",
    )
    lr_decay = param.Number(
        1.0,
        bounds=(0.0, 1.0),
        inclusive_bounds=(False, True),
        doc="Discriminative learning rates: the top-level stage at depth d from the head "
        "(head d=0) trains with lr * lr_decay**d (1: the same lr everywhere).",
    )
    patience = param.Integer(
        0,
        bounds=(0, None),
        doc="Early stopping: stop after this many epochs without a better validation loss (0: never).",
    )
    log_every = param.Integer(
        20, bounds=(1, None), doc="Log the training loss and learning rate every this many steps."
    )
    tensorboard = param.Boolean(
        False,
        doc="Also write every logged metric as TensorBoard scalars to <run>/tensorboard (needs "
        "the tensorboard package).",
    )
    device = param.Selector(
        default="auto",
        objects=["auto", "cpu", "cuda"],
        doc="Training device: auto picks CUDA when available, else CPU.",
    )
    amp = param.Boolean(
        True,
        doc="Mixed precision (bfloat16 autocast) on CUDA GPUs that support it; ignored on CPU.",
    )
    tf32 = param.Boolean(
        True,
        doc="Allow TensorFloat-32 in float32 matrix products and convolutions on CUDA (faster, "
        "~1e-3 relative precision); ignored on CPU.",
    )
    channels_last = param.Boolean(
        False,
        doc="Channels-last memory format for the network and its inputs on CUDA (often faster "
        "convolutions with AMP); ignored on CPU.",
    )
    num_threads = param.Integer(
        0,
        bounds=(0, 1024),
        doc="CPU threads of torch (0: torch's default, at most the CPUs this process may use).",
    )

    def check(self) -> None:
        """Check the loop settings together (each alone is checked when set).

        Raises
        ------
        ConfigError
            batch_size not a multiple of batch_shards; a missing init_from file; tensorboard
            without its package.
        """
        if self.batch_size % self.batch_shards:
            raise ConfigError(
                f"batch_size={self.batch_size} must be a multiple of batch_shards={self.batch_shards}"
            )
        if self.init_from and not Path(self.init_from).exists():
            raise ConfigError(f"init_from={self.init_from!r}: checkpoint does not exist")
        if self.tensorboard and not tensorboard_available():
            raise ConfigError(TENSORBOARD_MISSING)

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run, ``epochs * steps_per_epoch``."""
        return self.epochs * self.steps_per_epoch


class TrainBase(ComposedParams):
    """Base of the composed training settings (:func:`train_params_class`)."""

    #: The task these settings are for (its registry name).
    task_name = "regression"

    #: Optimiser steps of the whole run (:attr:`LoopParams.total_steps`).
    total_steps = LoopParams.total_steps

    def map_settings(self) -> param.Parameterized:
        """The kind's settings of on-the-fly maps (:meth:`DataParams.map_settings`)."""
        return DataParams.map_settings(self)

    @property
    def resolved_prior_points(self) -> int:
        """``prior_points`` with 0 resolved (:meth:`DataParams.resolved_prior_points`)."""
        return DataParams.resolved_prior_points(self)

    def model_kwargs(self, in_channels: int = 1, n_outputs: int | None = None) -> dict[str, Any]:
        """Keyword arguments of the network for ``in_channels`` input channels and, by default,
        one mean and one std per target of the task (:meth:`ModelParams.model_kwargs`)."""
        if n_outputs is None:
            names = [t for t in str(getattr(self, "targets", "omega_m,sigma8")).split(",") if t]
            n_outputs = len(names)
        return ModelParams.model_kwargs(self, in_channels, n_outputs)


@functools.cache
def train_params_class(task: str = "regression") -> type[TrainBase]:
    """The composed settings class of a task: loop, model, task and data settings (one class
    per task, made once: ``isinstance(resolve_params(...), TrainParams)`` holds).

    Raises
    ------
    ConfigError
        Unknown task.
    """
    cls = get_task(task)
    model_cls = cls.model_params_class or ModelParams
    composed = compose(
        "TrainParams",
        LoopParams,
        model_cls,
        cls.params_class,
        DataParams,
        doc=f"Settings of a {cls.name} training run: loop ({LoopParams.__name__}), model "
        f"({model_cls.__name__}), task ({cls.params_class.__name__}) and data "
        f"({DataParams.__name__}).",
    )
    return type(
        "TrainParams", (composed, TrainBase), {"task_name": cls.name, "__doc__": composed.__doc__}
    )


#: The settings class of the regression task (the default task).
TrainParams = train_params_class("regression")


def _apply_generated_spec(params: TrainBase) -> None:
    """A dataset spec naming a generated kind (``lognormal?size=64&omega_m=0.2:0.4``) becomes
    that kind with those settings (a prior range sets the prior box), maps on the fly."""
    from engine.data import parse_spec, resolve_name
    from engine.data.sources import is_generated

    if not params.dataset or not is_generated(resolve_name(params.dataset)):
        return
    _prefix, kind, options = parse_spec(resolve_name(params.dataset))
    values: dict[str, Any] = {"kind": kind, "dataset": ""}
    for key, value in options.items():
        if key in PARAM_NAMES and ":" in value:
            lo, hi = value.split(":", 1)
            values[f"{key}_min"], values[f"{key}_max"] = lo, hi
        elif key in ("count", "seed"):
            raise ConfigError(
                f"dataset={params.dataset!r}: option {key!r} does not apply to training on the "
                "fly (see batch_size, steps_per_epoch, val_maps and seed)"
            )
        else:
            values[key] = value
    set_values(params, values)


#: Section names a config file may group settings under (``loop: {lr: 3e-4}``).
SECTIONS = ("loop", "model", "task", "data")


def flatten_sections(layer: Mapping[str, Any]) -> dict[str, Any]:
    """A config layer with optional sections (``loop:``, ``model:``, ``task:``, ``data:``, each
    a mapping of settings) as one flat ``{setting: value}``; a plain ``model: cnn`` stays the
    model name.

    Raises
    ------
    ConfigError
        A setting given twice (in a section and outside, or in two sections).
    """
    flat: dict[str, Any] = {}
    for key, value in layer.items():
        items = value.items() if key in SECTIONS and isinstance(value, Mapping) else [(key, value)]
        for name, v in items:
            if name in flat:
                raise ConfigError(f"setting {name!r} is given twice in the config")
            flat[name] = v
    return flat


def resolve_params(
    preset: str = "default",
    config: Mapping[str, Any] | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
    task: str | None = None,
) -> TrainBase:
    """Build checked training settings: preset < config file < flags < ``--set`` overrides.

    Parameters
    ----------
    preset : str
        Name in :data:`PRESETS` (ignored when ``base`` is given).
    config, flags, overrides : mapping, optional
        ``{setting: value}`` layers, later ones win; string values are converted.
    base : mapping, optional
        Settings to start from instead of the preset (e.g. a run's saved settings on resume).
    task : str, optional
        The task (:data:`engine.tasks.TASKS`); default: the preset's ``task`` entry, else
        ``"regression"``.

    Raises
    ------
    ConfigError
        Unknown preset, task or setting, bad value, or inconsistent settings (each part's
        ``check``).
    """
    if base is None:
        if preset not in PRESETS:
            raise ConfigError(
                f"preset={preset!r} is not allowed: preset must be one of "
                + ", ".join(map(repr, PRESETS))
            )
        base = PRESETS[preset]
        named = preset_task(preset)
        if task is not None and named is not None and get_task(task).name != named:
            raise ConfigError(
                f"preset={preset!r} is a preset of task {named!r}, not of task={task!r}; "
                "choose one of that task's presets or leave --task out"
            )
        task = task or named
    base = {k: v for k, v in base.items() if k != "task"}
    params = train_params_class(task or "regression")()
    for layer in (base, config, flags, overrides):
        if layer:
            set_values(params, flatten_sections(layer))
    _apply_generated_spec(params)
    return params.check()


def resolve_device(params) -> torch.device:
    """The torch device of ``params.device`` (``auto``: CUDA when available).

    Raises
    ------
    ConfigError
        CUDA requested but not available.
    """
    try:
        return default_device(params.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def configure_threads(num_threads: int = 0) -> int:
    """Set torch's CPU threads: ``num_threads`` if > 0, else torch's default capped at the CPUs
    this process may run on (``os.sched_getaffinity``). Returns the number of threads."""
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    else:
        usable = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        )
        if usable and torch.get_num_threads() > usable:
            torch.set_num_threads(usable)
    return torch.get_num_threads()


def configure_tf32(enabled: bool) -> None:
    """Allow (or forbid) TensorFloat-32 in CUDA float32 matmuls and cuDNN convolutions.

    Process-wide torch flags; a no-op without CUDA. bfloat16 autocast (``amp``) is unaffected.
    """
    if not torch.cuda.is_available():
        return
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        precision = "tf32" if enabled else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    else:  # pragma: no cover - older torch
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
