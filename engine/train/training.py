"""Training loop, tasks and checkpoints: infer (omega_m, sigma8) from maps.

* :class:`TrainParams` — every training setting, once (bounds, defaults, docs with units); map
  settings are inherited from :class:`engine.params.FieldParams` or copied from the settings
  class of the kind that owns them (:class:`engine.physics.lpt.LPTParams`,
  :class:`engine.physics.lensing.KappaParams`).
* :data:`PRESETS` — named sets of settings (``smoke`` for tests and demos, ``default``).
* :func:`lr_at` — pure learning-rate schedule: linear warm-up, then one cosine decay or cosine
  annealing with warm restarts (SGDR).
* :func:`augment_maps` — physics-preserving augmentations (symmetries of the square, extra
  smoothing and white noise).
* :class:`ParameterRegression` — the task: owns the objective (Gaussian negative log-likelihood
  of the normalised parameters), the data (maps of any flat kind of :mod:`engine.kinds`
  generated on the training device, or an on-disk dataset of :mod:`engine.data.store`) and the
  validation metrics.
* :class:`Trainer` — the loop: device, AMP, TF32/channels_last, EMA, freezing, discriminative
  learning rates, checkpoints, resume, early stopping, logging (metrics.jsonl, TensorBoard), DDP.
* :class:`Distributed` — the process group of a ``torchrun`` launch (or one process).
* :func:`run_training` — one engine process's run: run directory, status, signals, failures.

Reproducibility: the model is initialised from ``derive_seed(seed, STREAM_INIT)``. The batch of
(0-based) step ``s`` is ``batch_shards`` shards of ``batch_size / batch_shards`` maps each; shard
``j`` comes from a fresh generator seeded with ``derive_seed(seed, STREAM_TRAIN, s)`` (one shard)
or ``derive_seed(seed, STREAM_TRAIN, s, j)`` — its parameters, maps and augmentations (on-disk
data: the rows of a per-pass permutation seeded with ``derive_seed(seed, STREAM_DATA, pass)``).
The validation set comes from ``derive_seed(seed, STREAM_VAL)`` (or is the dataset's val split),
fixed prior points from ``derive_seed(seed, STREAM_POINTS)``. A run stopped after any step and
resumed from its ``last.pt`` therefore reaches bit-identical weights to an uninterrupted run on
the same device with the same number of threads and processes.

Distributed data parallel (``torchrun --nproc_per_node W -m engine train ...``): ``batch_size``
is the global batch; process ``r`` trains on rows ``[r B/W, (r+1) B/W)`` of the SAME global batch
as a one-process run (it generates only the shards overlapping its rows), gradients are averaged
by :class:`torch.nn.parallel.DistributedDataParallel`, so a W-process run follows the one-process
run with the same settings up to float summation order (tests/test_ddp.py). Only rank 0 validates,
writes the run directory and shows a progress bar; a stop request on any rank (SIGTERM/SIGINT) is
all-reduced every step so all ranks stop after the same step.

Checkpoints (``checkpoints/last.pt`` each epoch and on stop, ``best.pt`` on a new best validation
loss) are dicts of plain Python values and tensors, loadable with ``torch.load(weights_only=True)``:
``model_name, model_kwargs, model_state`` (the weights to use: the EMA weights when ``ema_decay >
0``), ``raw_model_state`` (only with EMA: the optimised weights, for resuming),
``optimizer_state, step, epoch, best_val, epochs_since_best, config`` (the TrainParams settings),
``engine_version``, ``task``, ``param_names``, ``prior_low``, ``prior_high`` (physical units),
``map_scale`` and ``map_settings`` (``{"kind": ..., setting: value}``: the settings of the maps
the model was trained on, e.g. for ``python -m engine fields --from-checkpoint``).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import param
import torch
from torch import nn

import engine
from engine.data import store
from engine.device import default_device
from engine.kinds import get_kind
from engine.nn.models import MODELS, build_model, count_parameters, set_map_scale
from engine.params import (
    OMEGA_M_BOUNDS,
    SIGMA8_BOUNDS,
    ConfigError,
    FieldParams,
    set_values,
    to_dict,
    user_settings,
)
from engine.physics.lensing import KappaParams
from engine.physics.lpt import LPTParams
from engine.runs import RunDir, atomic_write

#: Seed streams of :func:`derive_seed`.
STREAM_INIT, STREAM_TRAIN, STREAM_VAL, STREAM_POINTS, STREAM_DATA = 0, 1, 2, 3, 4
#: Seed stream of the end-of-training evaluation maps (:func:`evaluate_run`).
STREAM_EVAL = 5
#: Map kinds that can be generated on the fly (2D maps of :mod:`engine.kinds`).
TRAIN_KINDS = ("grf", "lognormal", "2lpt", "kappa")
#: Fixed prior points of kind kappa on the fly: the size of the C_ell cache of engine.physics.lensing.
KAPPA_MAX_POINTS = 256


def _borrow(cls: type[param.Parameterized], name: str, kinds: str) -> param.Parameter:
    """A copy of setting ``name`` of the kind settings class ``cls`` (same default, bounds and
    doc, so the setting stays defined once, there), its doc noting the kinds it applies to."""
    p = copy.copy(cls.param[name])
    p.doc = f"{p.doc} (Kind {kinds} only.)"
    return p


class TrainParams(FieldParams):
    """Settings of a parameter-inference training run.

    The map settings (kind, size, box_size, thickness, redshift, smoothing, noise) and the shared
    cosmology (omega_b, h, n_s, transfer_function) are those of :class:`FieldParams`; the settings
    of kinds 2lpt and kappa are copied from :class:`~engine.physics.lpt.LPTParams` and
    :class:`~engine.physics.lensing.KappaParams`, and :meth:`map_settings` checks them with that kind's
    bounds. omega_m and sigma8 are drawn per map, uniformly in the prior box ``[omega_m_min,
    omega_m_max] × [sigma8_min, sigma8_max]`` (or among ``prior_points`` fixed points of it), so
    ``omega_m``, ``sigma8`` and ``count`` are not settings here.
    """

    # Inherited settings that do not apply to training: constant, hence not user settings.
    omega_m = param.Number(constant=True, doc="Not used: drawn per map from the prior box.")
    sigma8 = param.Number(constant=True, doc="Not used: drawn per map from the prior box.")
    count = param.Integer(constant=True, doc="Not used: see batch_size and val_maps.")
    # Inherited settings with another default or meaning (bounds are inherited).
    kind = param.Selector(
        default="grf",
        objects=list(TRAIN_KINDS),
        doc="Map kind (engine.kinds): grf or lognormal projected slabs, 2lpt slab maps (dim=2) "
        "or kappa flat-sky convergence maps, generated on the fly on the training device.",
    )
    size = param.Integer(64)
    seed = param.Integer(
        doc="Seed of the run: model initialisation, the batch of every step and the validation "
        "set; same seed ⇒ same run on CPU."
    )
    box_size = param.Number(
        doc="Side of the periodic square map in comoving Mpc/h (L). (Kinds grf, lognormal, 2lpt.)"
    )
    thickness = param.Number(
        doc="Thickness of the projected slab in comoving Mpc/h (Delta). "
        "(Kinds grf, lognormal, 2lpt.)"
    )
    redshift = param.Number(
        doc="Redshift of the slab; growth D(z) from pyccl. (Kinds grf, lognormal, 2lpt.)"
    )
    noise = param.Number(
        doc="Standard deviation per pixel of the additive white noise, in units of the density "
        "contrast (0: none). (Kinds grf, lognormal, 2lpt; kappa: see sigma_e and n_gal.)"
    )
    smoothing = param.Number(
        doc="Standard deviation of the Gaussian smoothing kernel in the map's length unit: "
        "comoving Mpc/h for grf, lognormal, 2lpt; arcmin for kappa (0: none)."
    )
    # Settings of other kinds, defined in their settings classes.
    lpt_order = _borrow(LPTParams, "lpt_order", "2lpt")
    axis = _borrow(LPTParams, "axis", "2lpt")
    fov = _borrow(KappaParams, "fov", "kappa")
    distribution = _borrow(KappaParams, "distribution", "kappa")
    lognormal_shift = _borrow(KappaParams, "lognormal_shift", "kappa")
    nz = _borrow(KappaParams, "nz", "kappa")
    matter_power = _borrow(KappaParams, "matter_power", "kappa")
    n_gal = _borrow(KappaParams, "n_gal", "kappa")
    sigma_e = _borrow(KappaParams, "sigma_e", "kappa")
    mask = _borrow(KappaParams, "mask", "kappa")

    omega_m_min = param.Number(
        0.1,
        bounds=OMEGA_M_BOUNDS,
        step=0.01,
        doc="Lower edge of the uniform prior of Omega_m (dimensionless).",
    )
    omega_m_max = param.Number(
        0.5,
        bounds=OMEGA_M_BOUNDS,
        step=0.01,
        doc="Upper edge of the uniform prior of Omega_m (dimensionless).",
    )
    sigma8_min = param.Number(
        0.6,
        bounds=SIGMA8_BOUNDS,
        step=0.01,
        doc="Lower edge of the uniform prior of sigma8 (dimensionless).",
    )
    sigma8_max = param.Number(
        1.0,
        bounds=SIGMA8_BOUNDS,
        step=0.01,
        doc="Upper edge of the uniform prior of sigma8 (dimensionless).",
    )
    prior_points = param.Integer(
        0,
        bounds=(0, 1_000_000),
        doc="Number of fixed (omega_m, sigma8) points, drawn once from the seed uniformly in the "
        "prior box, that every map's parameters are drawn from; 0: each map draws its own point "
        f"from the continuous prior, except for kind kappa, where 0 means {KAPPA_MAX_POINTS} points "
        "(each new cosmology costs a pyccl C_l call of ~0.2-0.4 s, cached for at most "
        f"{KAPPA_MAX_POINTS}; for a continuous kappa prior write a dataset with "
        "'python -m engine dataset --kind kappa' and train on it).",
    )
    dataset = param.String(
        "",
        doc="Path of an on-disk dataset (.zarr written by 'python -m engine dataset'): batches "
        "from its train split, validation on its val split in file order, the prior box and the "
        "map normalisation from its attrs; the map settings, prior box, prior_points and "
        "val_maps here are then not used. Empty: maps generated on the fly.",
    )
    model = param.Selector(
        default="cnn", objects=list(MODELS), doc="Network, by name in engine.nn.models.MODELS."
    )
    width = param.Integer(
        16, bounds=(1, 512), doc="Channels of the network's first stage (doubling per stage)."
    )
    circular_padding = param.Boolean(
        True, doc="Periodic padding in convolutions (the maps are periodic); zeros otherwise."
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
    augment_flips = param.Boolean(
        False,
        doc="Augmentation: give every training map a random symmetry of the square (flips and "
        "90-degree rotations; exact for statistically isotropic periodic maps; a kappa mask "
        "moves with its map).",
    )
    augment_noise = param.Number(
        0.0,
        bounds=(0.0, 100.0),
        doc="Augmentation: extra white noise per training map, standard deviation per pixel "
        "uniform in [0, augment_noise], in the map's units (density contrast or convergence; "
        "0: none).",
    )
    augment_smoothing = param.Number(
        0.0,
        bounds=(0.0, 100.0),
        doc="Augmentation: extra Gaussian smoothing per training map, standard deviation uniform "
        "in [0, augment_smoothing] in the map's length unit (comoving Mpc/h, or arcmin for "
        "kappa; 0: none).",
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
    eval_maps = param.Integer(
        512,
        bounds=(0, 100_000),
        doc="Maps of the evaluation run when training completes (not when stopped or failed): "
        "the best checkpoint and the P(k) likelihood on a fresh test set of the run's own kind "
        "and map settings with parameters uniform in the prior box (with a dataset: the first "
        "eval_maps maps of its test split), written to report.json, predictions.csv and "
        "figures/ in the run directory (engine.evaluation.evaluate); 0: no evaluation. Kind kappa costs a "
        "pyccl C_l per map (~0.3 s each).",
    )
    val_maps = param.Integer(
        512,
        bounds=(1, 1_000_000),
        doc="Maps in the fixed validation set (generated once; with a dataset, its val split "
        "is the validation set).",
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

    def check(self) -> TrainParams:
        """Check the settings together (each one alone is checked when set).

        Raises
        ------
        ConfigError
            An empty prior box; batch_size not a multiple of batch_shards; map settings outside
            the kind's bounds or theory tables (:meth:`map_settings`); too many prior points for
            kappa; a missing dataset or init_from file; tensorboard without its package.
        """
        for name in ("omega_m", "sigma8"):
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if not lo < hi:
                raise ConfigError(
                    f"{name}_min={lo} must be smaller than {name}_max={hi} (the prior box)"
                )
        if self.batch_size % self.batch_shards:
            raise ConfigError(
                f"batch_size={self.batch_size} must be a multiple of batch_shards={self.batch_shards}"
            )
        if self.dataset:
            if not Path(self.dataset).exists():
                raise ConfigError(
                    f"dataset={self.dataset!r} does not exist (write one with "
                    "python -m engine dataset ... --out PATH.zarr)"
                )
        else:
            self.map_settings()
            if self.kind == "kappa" and self.prior_points > KAPPA_MAX_POINTS:
                raise ConfigError(
                    f"prior_points={self.prior_points} is too many for kind='kappa' on the fly "
                    f"(at most {KAPPA_MAX_POINTS}: one pyccl C_l per point); for more "
                    "cosmologies write a dataset (python -m engine dataset --kind kappa "
                    "--omega-m LO:HI --sigma8 LO:HI ...) and train with dataset=PATH"
                )
        if self.init_from and not Path(self.init_from).is_file():
            raise ConfigError(f"init_from={self.init_from!r}: checkpoint does not exist")
        if self.tensorboard and not tensorboard_available():
            raise ConfigError(TENSORBOARD_MISSING)
        return self

    def map_settings(self) -> param.Parameterized:
        """The settings of the kind's own class (:mod:`engine.kinds`) for on-the-fly maps.

        Every setting of that class that is also a setting here is copied (2lpt: ``dim=2``),
        then checked with that class's bounds and the kind's check (theory-table resolution,
        slab inside the box, ...).

        Raises
        ------
        ConfigError
            A value outside the kind's bounds (e.g. size > 1024 for 2lpt) or unusable settings.
        """
        kind = get_kind(self.kind, TRAIN_KINDS)
        settings = kind.new_settings()
        cls = type(settings)
        mine = set(user_settings(type(self)))
        values = {n: getattr(self, n) for n in user_settings(cls) if n in mine and n != "kind"}
        if "dim" in user_settings(cls):
            values["dim"] = 2
        try:
            set_values(settings, values)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (for kind={self.kind!r})") from None
        kind.check_settings(settings)
        return settings

    @property
    def resolved_prior_points(self) -> int:
        """:attr:`prior_points`, with 0 resolved (:data:`KAPPA_MAX_POINTS` for kind kappa)."""
        if self.prior_points == 0 and self.kind == "kappa" and not self.dataset:
            return KAPPA_MAX_POINTS
        return self.prior_points

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run, ``epochs * steps_per_epoch``."""
        return self.epochs * self.steps_per_epoch

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``build_model(self.model, ...)`` (plain values)."""
        return {
            "in_channels": 1,
            "n_params": len(ParameterRegression.names),
            "width": self.width,
            "circular_padding": self.circular_padding,
        }


#: One-line error of ``tensorboard=true`` without the package.
TENSORBOARD_MISSING = "tensorboard=true needs the tensorboard package: pip install tensorboard"


def tensorboard_available() -> bool:
    """True if the ``tensorboard`` package can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("tensorboard") is not None
    except (ImportError, ValueError):
        return False


#: Named settings; ``default`` is the parameter defaults of :class:`TrainParams` themselves.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "size": 32,
        "batch_size": 32,
        "steps_per_epoch": 20,
        "epochs": 3,
        "val_maps": 64,
        "eval_maps": 64,
        "lr": 2e-3,
        "warmup_steps": 10,
        "log_every": 5,
        "width": 8,
    },
    "default": {},
    # Issue #4 §6 results (docs/results.md): one preset per shipped model in assets/models/NAME,
    # trained on this project's 2-core CPU; retrain with
    # python -m engine train --preset NAME --run-dir assets/models/NAME
    "grf64": {
        # Gaussian slabs, 64² pixels of 15.6 Mpc/h, 100 Mpc/h thick (linear scales): the P(k)
        # likelihood reaches the Cramér-Rao bound here (efficiency ~0.99 for both parameters).
        "kind": "grf",
        "size": 64,
        "box_size": 1000.0,
        "thickness": 100.0,
        "model": "hybrid_std",
        "width": 8,
        "batch_size": 128,
        "steps_per_epoch": 150,
        "epochs": 4,
        "lr": 2e-3,
        "warmup_steps": 100,
        "ema_decay": 0.998,
        "augment_flips": True,
        "val_maps": 1024,
        "eval_maps": 1024,
        "log_every": 25,
    },
    "lognormal64": {
        # Lognormal slabs, 64² pixels of 2 Mpc/h, 5 Mpc/h thick (pixel std ~1.9, strongly
        # non-Gaussian); hybrid_log sees ln(1 + δ), a Gaussian field for these maps.
        "kind": "lognormal",
        "size": 64,
        "box_size": 128.0,
        "thickness": 5.0,
        "model": "hybrid_log",
        "width": 8,
        "batch_size": 128,
        "steps_per_epoch": 150,
        "epochs": 6,
        "lr": 2e-3,
        "warmup_steps": 100,
        "ema_decay": 0.998,
        "augment_flips": True,
        "val_maps": 1024,
        "eval_maps": 1024,
        "log_every": 25,
    },
    "2lpt64": {
        # 2LPT slabs at z = 0: 64³ particles in a 128 Mpc/h box (2 Mpc/h cells), a slab of
        # 8 Mpc/h (4 cells) projected to 64² pixels; hybrid_log (ln(1 + δ), empty cells at
        # ln 1e-3). On the fly this costs ~0.3 s per map on 2 CPU cores: on a CPU train on a
        # dataset instead (docs/results.md): python -m engine dataset --kind 2lpt --size 64
        # --box 128 --thickness 8 --omega-m 0.1:0.5 --sigma8 0.6:1.0 --count 3200
        # --split 0.75,0.1,0.15 --seed 0 --chunk 64 --out data/2lpt64.zarr, then add
        # --set dataset=data/2lpt64.zarr to the train command.
        "kind": "2lpt",
        "size": 64,
        "box_size": 128.0,
        "thickness": 8.0,
        "model": "hybrid_log",
        "width": 8,
        "batch_size": 64,
        "steps_per_epoch": 150,
        "epochs": 6,
        "lr": 2e-3,
        "warmup_steps": 100,
        "ema_decay": 0.998,
        "augment_flips": True,
        "val_maps": 256,
        "eval_maps": 480,
        "log_every": 25,
    },
}


def resolve_params(
    preset: str = "default",
    config: Mapping[str, Any] | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> TrainParams:
    """Build checked :class:`TrainParams`: preset < config file < flags < ``--set`` overrides.

    Parameters
    ----------
    preset : str
        Name in :data:`PRESETS` (ignored when ``base`` is given).
    config, flags, overrides : mapping, optional
        ``{setting: value}`` layers, later ones win; string values are converted.
    base : mapping, optional
        Settings to start from instead of the preset (e.g. a run's saved settings on resume).

    Raises
    ------
    ConfigError
        Unknown preset or setting, bad value, or inconsistent settings (:meth:`TrainParams.check`).
    """
    params = TrainParams()
    if base is None:
        if preset not in PRESETS:
            raise ConfigError(
                f"preset={preset!r} is not allowed: preset must be one of "
                + ", ".join(map(repr, PRESETS))
            )
        base = PRESETS[preset]
    for layer in (base, config, flags, overrides):
        if layer:
            set_values(params, layer)
    return params.check()


def resolve_device(params: TrainParams) -> torch.device:
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


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``(seed, *keys)`` (numpy ``SeedSequence``); pure function."""
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def lr_at(
    step: int,
    base_lr: float,
    warmup_steps: int,
    total_steps: int,
    final_fraction: float = 0.1,
    restart_period: int = 0,
    restart_mult: float = 1.0,
) -> float:
    """Learning rate of the update with 0-based index ``step``; same units as ``base_lr``.

    Linear warm-up from ``base_lr / warmup_steps`` to ``base_lr`` over the first
    ``warmup_steps`` updates, then

    * ``restart_period == 0``: half a cosine from ``base_lr`` down towards
      ``final_fraction * base_lr`` at ``total_steps``;
    * ``restart_period = T_0 > 0``: cosine annealing with warm restarts (SGDR; Loshchilov &
      Hutter 2017, ICLR, eq. 5): cycle ``i`` lasts ``T_i = T_0 * restart_mult**i`` updates,
      within it the rate is ``f + (1 - f) * (1 + cos(pi * t_cur / T_i)) / 2`` times ``base_lr``
      (``f = final_fraction``, ``t_cur`` updates since the cycle began), and it jumps back to
      ``base_lr`` at each restart.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = step - warmup_steps
    if restart_period > 0:
        if restart_mult == 1.0:
            period = float(restart_period)
            t_cur = t % restart_period
        else:
            period, t_cur = float(restart_period), float(t)
            while t_cur >= period:  # O(log t) cycles
                t_cur -= period
                period *= restart_mult
        progress = t_cur / period
    elif total_steps <= warmup_steps:
        return base_lr
    else:
        progress = min(t / (total_steps - warmup_steps), 1.0)
    return base_lr * (
        final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    )


def epoch_of(step: int, steps_per_epoch: int) -> int:
    """0-based epoch that the ``step``-th update (1-based count) belongs to; 0 for step 0."""
    return max(step - 1, 0) // steps_per_epoch


def augment_maps(
    x: torch.Tensor,
    generator: torch.Generator,
    flips: bool = False,
    noise: float = 0.0,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Random physics-preserving transforms of a batch of periodic square maps.

    Parameters
    ----------
    x : torch.Tensor (B, C, N, N) float32
        Maps (any units), on the generator's device.
    generator : torch.Generator
        All random draws come from it, in this order (each only when enabled): the symmetries
        (B, 3), the smoothing scales (B,), the noise levels (B,) and the noise field (B, C, N, N).
    flips : bool
        Each map gets one of the 8 symmetries of the square uniformly (a transpose, a flip of y
        and a flip of x, each with probability 1/2: identity, three 90° rotations and four
        reflections). For statistically isotropic fields on a periodic square these map the
        ensemble to itself and the pixel lattice (centres (i+½)L/N) to itself.
    noise : float
        Each map gets white Gaussian noise with standard deviation per pixel uniform in
        ``[0, noise]``, in the units of ``x``.
    smoothing : float
        Each map is convolved with a periodic Gaussian of standard deviation uniform in
        ``[0, smoothing]`` pixels: Fourier modes times exp(−k²σ²/2), k in radians per pixel.

    Returns
    -------
    torch.Tensor, shape, dtype and device of ``x`` (``x`` itself when nothing is enabled).
    """
    b, n = x.shape[0], x.shape[-1]
    dev = x.device
    if flips:
        bits = torch.randint(0, 2, (b, 3), generator=generator, device=dev).bool()
        t, fy, fx = (bits[:, i].view(b, 1, 1, 1) for i in range(3))
        x = torch.where(t, x.transpose(-1, -2), x)
        x = torch.where(fy, x.flip(-2), x)
        x = torch.where(fx, x.flip(-1), x)
    if smoothing > 0:
        sigma = smoothing * torch.rand((b,), generator=generator, device=dev)
        ky = 2 * math.pi * torch.fft.fftfreq(n, device=dev)
        kx = 2 * math.pi * torch.fft.rfftfreq(n, device=dev)
        k2 = ky[:, None] ** 2 + kx[None, :] ** 2
        kernel = torch.exp(-0.5 * k2 * sigma.view(b, 1, 1, 1) ** 2)
        x = torch.fft.irfft2(torch.fft.rfft2(x) * kernel, s=(n, n))
    if noise > 0:
        level = noise * torch.rand((b,), generator=generator, device=dev)
        field = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
        x = x + level.view(b, 1, 1, 1) * field
    return x


# ---------------------------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------------------------


class DiskData:
    """An on-disk dataset of ``python -m engine dataset`` as a data source for training.

    Opening reads only metadata; each split is loaded into (CPU) memory on first use.

    Attributes
    ----------
    path : str
    kind : str
        The kind the maps were generated with (attr ``kind``).
    low, high : list of float
        Prior box of (omega_m, sigma8) (attrs ``omega_m_range``, ``sigma8_range``).
    scale : float
        Fixed input normalisation (attr ``map_scale``), map units.
    pixel : float
        Pixel size in the map's length unit (Mpc/h, or arcmin for kappa), from coord ``x``.
    attrs : dict
        The variable's attrs.

    Raises
    ------
    ConfigError
        Not a dataset (see :func:`engine.data.store.open_dataset`), samples that are not 2D maps
        ``(sample, y, x)``, a parameter that does not vary, or no ``map_scale`` attr.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        da = store.open_dataset(path)
        if da.dims != ("sample", "y", "x"):
            raise ConfigError(
                f"dataset {self.path!r} holds samples of dims {da.dims}; training needs 2D maps "
                "(sample, y, x)"
            )
        self.attrs = dict(da.attrs)
        self.kind = str(self.attrs.get("kind", ""))
        self.low, self.high = [], []
        for name in ParameterRegression.names:
            lo, hi = (float(v) for v in self.attrs.get(f"{name}_range", (0.0, 0.0)))
            if not lo < hi:
                raise ConfigError(
                    f"dataset {self.path!r} does not vary {name} (range [{lo:g}, {hi:g}]); "
                    f"write it with --{name.replace('_', '-')} LO:HI"
                )
            self.low.append(lo)
            self.high.append(hi)
        if "map_scale" not in self.attrs:
            raise ConfigError(f"dataset {self.path!r} has no map_scale attr")
        self.scale = float(self.attrs["map_scale"])
        x = da["x"].values
        self.pixel = float(x[1] - x[0]) if len(x) > 1 else 1.0
        self._da = da
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps ``(n, N, N) float32`` and parameters ``(n, 2) float64`` of a split (CPU, cached).

        Raises
        ------
        ConfigError
            The split is empty.
        """
        if name not in self._splits:
            maps, theta = store.load_split(self._da, name)
            if len(maps) == 0:
                raise ConfigError(f"dataset {self.path!r} has no {name} samples")
            self._splits[name] = torch.from_numpy(maps), torch.from_numpy(theta)
        return self._splits[name]

    def map_settings(self) -> dict[str, Any]:
        """``{"kind": ..., setting: value}`` of the maps, from the attrs (see the kind's class)."""
        out: dict[str, Any] = {"kind": self.kind}
        with contextlib.suppress(ConfigError):
            cls = get_kind(self.kind).settings_class()
            for name in user_settings(cls):
                if name in self.attrs and name not in ("seed", "count", "omega_m", "sigma8"):
                    value = self.attrs[name]
                    value = value.item() if hasattr(value, "item") else value
                    out[name] = None if (name == "mask" and value == "") else value
        return out


class ParameterRegression:
    """Regression of (omega_m, sigma8) from maps with a Gaussian negative log-likelihood.

    Targets are normalised to [0, 1] by the prior box: ``y = (theta - low) / (high - low)``.
    Maps enter the network divided by ONE fixed global scale, the kind's
    :meth:`engine.kinds.Kind.map_scale` (the pixel std at the fiducial cosmology; for on-disk
    data the dataset's ``map_scale`` attr, computed the same way), never standardised per map,
    which would erase the amplitude that carries sigma8.

    Maps of any kind of :data:`TRAIN_KINDS` are generated on the fly through the kinds registry
    (:meth:`engine.kinds.Kind.generate_batch`), or read from ``params.dataset``
    (:class:`DiskData`).

    Parameters
    ----------
    params : TrainParams
    device : torch.device
        Where batches are generated and the model runs.

    Raises
    ------
    ConfigError
        Bad map settings or dataset.
    """

    #: Inferred parameters, in the order of the model's outputs.
    names = ("omega_m", "sigma8")
    #: Clamp of the predicted log standard deviation (normalised units), for a stable loss.
    LOG_STD_MIN, LOG_STD_MAX = -7.0, 3.0

    def __init__(self, params: TrainParams, device: torch.device):
        self.params = params
        self.device = torch.device(device)
        self.disk: DiskData | None = None
        self.points: torch.Tensor | None = None
        self._perms: dict[int, torch.Tensor] = {}
        if params.dataset:
            self.disk = DiskData(params.dataset)
            low, high = self.disk.low, self.disk.high
            self.kind = self.disk.kind
            self.settings = None
            self.scale = self.disk.scale
            self.pixel = self.disk.pixel
        else:
            low = [getattr(params, f"{n}_min") for n in self.names]
            high = [getattr(params, f"{n}_max") for n in self.names]
            self.kind = params.kind
            self.settings = params.map_settings()
            self.scale = get_kind(self.kind).map_scale(self.settings)
            extent = params.fov * 60.0 if self.kind == "kappa" else params.box_size
            self.pixel = extent / params.size
            n_points = params.resolved_prior_points
            if n_points:
                gen = torch.Generator().manual_seed(derive_seed(params.seed, STREAM_POINTS))
                self.points = torch.rand((n_points, len(self.names)), generator=gen).to(device)
        self.low = torch.tensor(low, dtype=torch.float32, device=device)
        self.high = torch.tensor(high, dtype=torch.float32, device=device)

    def describe(self) -> dict[str, Any]:
        """Plain summary of the data for ``config.json``: kind, dataset, prior box, scale."""
        return {
            "kind": self.kind,
            "dataset": self.disk.path if self.disk else None,
            "prior_low": self.low.tolist(),
            "prior_high": self.high.tolist(),
            "prior_points": 0 if self.points is None else len(self.points),
            "map_scale": float(self.scale),
        }

    def map_config(self) -> dict[str, Any]:
        """``{"kind": ..., setting: value}``: the settings of the training maps (checkpoints)."""
        if self.disk is not None:
            return self.disk.map_settings()
        return {"kind": self.kind, **to_dict(self.settings)}

    def to_physical(self, y: torch.Tensor) -> torch.Tensor:
        """Normalised parameters ``(B, P)`` → physical ones (dimensionless Omega_m, sigma8)."""
        return self.low + (self.high - self.low) * y

    def normalise(self, theta: torch.Tensor) -> torch.Tensor:
        """Physical parameters ``(B, P)`` → normalised ones, float32 on the task's device."""
        theta = theta.to(self.device, torch.float32)
        return (theta - self.low) / (self.high - self.low)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The augmentations of the settings (:func:`augment_maps`) on normalised maps ``x``;
        ``augment_noise`` (map units) and ``augment_smoothing`` (length units) converted."""
        p = self.params
        return augment_maps(
            x,
            generator,
            flips=p.augment_flips,
            noise=p.augment_noise / self.scale,
            smoothing=p.augment_smoothing / self.pixel,
        )

    def sample(
        self, n: int, generator: torch.Generator, augment: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` parameter pairs and generate their maps on the fly.

        The pairs are uniform in the prior box, or uniform among the fixed prior points
        (``prior_points``); the maps come from the kind's torch generator.

        Returns
        -------
        x : torch.Tensor (n, 1, N, N) float32
            Maps divided by :attr:`scale`, on the task's device (augmented if ``augment``).
        y : torch.Tensor (n, 2) float32
            Normalised targets in [0, 1).

        Raises
        ------
        ConfigError
            The task reads an on-disk dataset.
        """
        if self.disk is not None:
            raise ConfigError("sample() generates maps on the fly; this task reads a dataset")
        if self.points is not None:
            idx = torch.randint(len(self.points), (n,), generator=generator, device=self.device)
            y = self.points[idx]
        else:
            y = torch.rand((n, len(self.names)), generator=generator, device=self.device)
        theta = self.to_physical(y)
        maps = get_kind(self.kind).generate_batch(
            self.settings, theta[:, 0], theta[:, 1], generator, self.device
        )
        x = (maps / self.scale).unsqueeze(1)
        return (self.augment(x, generator) if augment else x), y

    def _disk_rows(self, start: int, n: int) -> torch.Tensor:
        """Train-split rows of global sample positions ``start .. start+n-1``: each pass over
        the split is a permutation seeded with ``derive_seed(seed, STREAM_DATA, pass)``."""
        count = len(self.disk.split("train")[0])
        pos = torch.arange(start, start + n)
        passes = pos // count
        rows = torch.empty(n, dtype=torch.long)
        for e in passes.unique().tolist():
            if e not in self._perms:
                if len(self._perms) > 2:
                    self._perms.pop(min(self._perms))
                gen = torch.Generator().manual_seed(derive_seed(self.params.seed, STREAM_DATA, e))
                self._perms[e] = torch.randperm(count, generator=gen)
            sel = passes == e
            rows[sel] = self._perms[e][pos[sel] % count]
        return rows

    def shard(self, step: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Shard ``index`` of the training batch of step ``step`` (module docstring), augmented.

        Returns ``(x, y)`` as :meth:`sample`, ``batch_size / batch_shards`` maps.
        """
        p = self.params
        m = p.batch_size // p.batch_shards
        keys = (step,) if p.batch_shards == 1 else (step, index)
        gen = torch.Generator(device=self.device).manual_seed(
            derive_seed(p.seed, STREAM_TRAIN, *keys)
        )
        if self.disk is None:
            return self.sample(m, gen, augment=True)
        maps, theta = self.disk.split("train")
        rows = self._disk_rows(step * p.batch_size + index * m, m)
        x = (maps[rows].to(self.device) / self.scale).unsqueeze(1)
        return self.augment(x, gen), self.normalise(theta[rows])

    def train_batch(
        self, step: int, start: int = 0, stop: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``[start, stop)`` of the training batch of step ``step`` (default: all).

        The batch is the same for any split into row ranges (DDP): only the shards overlapping
        the rows are generated. Returns ``(x, y)`` as :meth:`sample`.
        """
        p = self.params
        stop = p.batch_size if stop is None else stop
        m = p.batch_size // p.batch_shards
        xs, ys = [], []
        for j in range(start // m, (stop - 1) // m + 1):
            x, y = self.shard(step, j)
            a, b = max(start - j * m, 0), min(stop - j * m, m)
            xs.append(x[a:b])
            ys.append(y[a:b])
        return torch.cat(xs), torch.cat(ys)

    def split(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model output ``(B, 2P)`` → mean ``(B, P)`` and clamped log-std ``(B, P)``, float32."""
        output = output.float()
        p = len(self.names)
        return output[:, :p], output[:, p:].clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean Gaussian negative log-likelihood per parameter of ``y`` (normalised), scalar."""
        mean, log_std = self.split(output)
        z = (y - mean) * torch.exp(-log_std)
        return (0.5 * z.square() + log_std).mean() + 0.5 * math.log(2 * math.pi)

    def validation_set(self, params: TrainParams) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed validation batches ``[(x, y), ...]`` in batches of ``params.batch_size``.

        On the fly: ``params.val_maps`` maps generated once from ``derive_seed(seed,
        STREAM_VAL)`` (from the prior points when set; never augmented). On-disk: the dataset's
        val split in file order.
        """
        bs = params.batch_size
        if self.disk is not None:
            maps, theta = self.disk.split("val")
            return [
                (
                    (maps[i : i + bs].to(self.device) / self.scale).unsqueeze(1),
                    self.normalise(theta[i : i + bs]),
                )
                for i in range(0, len(maps), bs)
            ]
        gen = torch.Generator(device=self.device).manual_seed(derive_seed(params.seed, STREAM_VAL))
        sizes = [min(bs, params.val_maps - i) for i in range(0, params.val_maps, bs)]
        return [self.sample(n, gen) for n in sizes]

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], autocast=None
    ) -> dict[str, float]:
        """Validation metrics of ``model`` over ``batches``.

        Returns
        -------
        dict
            ``loss`` (mean NLL, normalised units), ``rmse_<name>`` (RMSE of the predicted mean,
            physical units) and ``std_<name>`` (mean predicted standard deviation, physical units)
            for each parameter name.
        """
        model.eval()
        means, log_stds, ys = [], [], []
        for x, y in batches:
            with autocast if autocast is not None else contextlib.nullcontext():
                out = model(x)
            mean, log_std = self.split(out)
            means.append(mean)
            log_stds.append(log_std)
            ys.append(y)
        mean, log_std, y = torch.cat(means), torch.cat(log_stds), torch.cat(ys)
        loss = self.loss(torch.cat([mean, log_std], dim=1), y)
        width = self.high - self.low
        rmse = ((mean - y).square().mean(0).sqrt() * width).tolist()
        std = (log_std.exp().mean(0) * width).tolist()
        out = {"loss": float(loss)}
        for i, name in enumerate(self.names):
            out[f"rmse_{name}"] = rmse[i]
            out[f"std_{name}"] = std[i]
        return out

    @torch.no_grad()
    def predict(self, model: nn.Module, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and standard deviation of (omega_m, sigma8) for raw maps.

        Parameters
        ----------
        maps : torch.Tensor (B, N, N) or (B, 1, N, N) float32
            Density contrast maps as from :func:`engine.physics.slabs.generate_maps` (not normalised).

        Returns
        -------
        mean, std : torch.Tensor (B, 2) float32, physical units (dimensionless).
        """
        model.eval()
        x = maps.to(self.device, torch.float32)
        x = (x.unsqueeze(1) if x.ndim == 3 else x) / self.scale
        mean, log_std = self.split(model(x))
        return self.to_physical(mean), log_std.exp() * (self.high - self.low)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def save_checkpoint(obj: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    with atomic_write(path, binary=True, fsync=True) as f:
        torch.save(dict(obj), f)


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file of ``path``: a ``.pt`` file, or a run directory's
    ``checkpoints/best.pt`` (``last.pt`` when there is no best).

    Raises
    ------
    ConfigError
        Neither a file nor a run directory with a checkpoint.
    """
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name
        raise ConfigError(f"checkpoint {str(path)!r}: run directory without checkpoints/best.pt")
    if not p.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist (give a .pt file or a run dir)")
    return p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :class:`Trainer` with ``torch.load(weights_only=True)``.

    ``path`` is a ``.pt`` file or a run directory (:func:`resolve_checkpoint`).

    Raises
    ------
    ConfigError
        The file does not exist or is not a readable checkpoint.
    """
    path = resolve_checkpoint(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle/zip errors of many kinds; report one line
        raise ConfigError(
            f"checkpoint {str(path)!r} could not be read: {str(exc).splitlines()[0]}"
        ) from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint, in eval mode on ``device``; returns (model, checkpoint)."""
    ckpt = load_checkpoint(path, map_location=device)
    model = build_model(ckpt["model_name"], **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model_state"])
    return model.to(device).eval(), ckpt


def checkpoint_map_settings(path: str | Path) -> dict[str, Any]:
    """``{"kind": ..., setting: value}``: the map settings a checkpoint's model was trained on.

    From the checkpoint's ``map_settings`` (or, for older checkpoints, its ``config``). Only
    settings; the caller keeps those its kind's settings class has.

    Raises
    ------
    ConfigError
        Missing or unreadable checkpoint, or one without map settings.
    """
    ckpt = load_checkpoint(path)
    settings = ckpt.get("map_settings") or ckpt.get("config")
    if not isinstance(settings, dict) or "kind" not in settings:
        raise ConfigError(f"checkpoint {str(path)!r} holds no map settings")
    return dict(settings)


# ---------------------------------------------------------------------------------------------
# Fine-tuning, EMA
# ---------------------------------------------------------------------------------------------


def model_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The stages of a model for freezing and per-depth learning rates.

    Stages are the model's top-level children that hold parameters, in registration order
    (input → output: the convention of every model of :mod:`engine.nn.models`, whose last child is
    the head); parameters registered on the model itself join the last stage. Works for any
    ``nn.Module``.

    Returns
    -------
    list of (stage name, names of its parameters as in ``model.named_parameters()``)
    """
    names = [n for n, _ in model.named_parameters()]
    stages = []
    for child, _ in model.named_children():
        own = [n for n in names if n.startswith(child + ".")]
        if own:
            stages.append((child, own))
    root = [n for n in names if "." not in n]
    if root:
        if stages:
            stages[-1] = (stages[-1][0], stages[-1][1] + root)
        else:
            stages.append(("", root))
    return stages


def frozen_parameters(model: nn.Module, freeze: list[str]) -> set[str]:
    """Names of the parameters matched by the ``freeze`` setting.

    Each item is ``"backbone"`` (every stage of :func:`model_stages` but the last) or a
    module-name prefix: a parameter ``a.b.weight`` is matched by ``a``, ``a.b`` and
    ``a.b.weight``.

    Raises
    ------
    ConfigError
        An item that matches no parameter (the message lists the model's stages).
    """
    stages = model_stages(model)
    names = [n for n, _ in model.named_parameters()]
    out: set[str] = set()
    for item in freeze:
        prefixes = [s for s, _ in stages[:-1]] if item == "backbone" else [item]
        matched = {n for n in names for pre in prefixes if n == pre or n.startswith(pre + ".")}
        if not matched:
            raise ConfigError(
                f"freeze={item!r} matches no parameter of the model; its stages are "
                + ", ".join(repr(s) for s, _ in stages)
                + " (or use 'backbone')"
            )
        out |= matched
    return out


def param_groups(model: nn.Module, lr_decay: float = 1.0) -> list[dict[str, Any]]:
    """Optimiser parameter groups, one per stage of :func:`model_stages`.

    The stage at depth ``d`` from the head (head ``d = 0``) gets ``lr_scale = lr_decay**d``
    (discriminative fine-tuning, Howard & Ruder 2018, ACL); the loop sets each group's ``lr``
    to ``lr_at(...) * lr_scale``.
    """
    params = dict(model.named_parameters())
    stages = model_stages(model)
    n = len(stages)
    return [
        {"params": [params[k] for k in names], "lr_scale": lr_decay ** (n - 1 - i), "stage": s}
        for i, (s, names) in enumerate(stages)
    ]


class EMA:
    """Exponential moving average of a model's weights (Polyak averaging).

    After update ``t`` (0-based), ``w_ema ← d_t w_ema + (1 − d_t) w`` with ``d_t = min(decay,
    (1 + t) / (10 + t))`` (the ``num_updates`` ramp of TensorFlow's ExponentialMovingAverage, so
    the average forgets the random initialisation quickly); buffers are copied.

    Parameters
    ----------
    model : nn.Module
        Copied (deep) into :attr:`module`, in eval mode, without gradients.
    decay : float
        In (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, t: int) -> None:
        """Average in the current weights of ``model`` (same architecture) after update ``t``."""
        d = min(self.decay, (1.0 + t) / (10.0 + t))
        for e, p in zip(self.module.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)


# ---------------------------------------------------------------------------------------------
# Distributed data parallel
# ---------------------------------------------------------------------------------------------


class Distributed:
    """The processes of one run: a ``torchrun`` launch (``WORLD_SIZE > 1``) or one process.

    Used as a context manager: entering initialises the default process group when
    ``world_size > 1`` (backend gloo for CPU tensors, plus NCCL for CUDA tensors when CUDA is
    available; rendezvous from torchrun's environment), leaving destroys it. With one process
    every method is a cheap no-op.

    Parameters
    ----------
    rank, world_size, local_rank : int
        As torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        self.rank, self.world_size, self.local_rank = int(rank), int(world_size), int(local_rank)
        self._owner = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Distributed:
        """From torchrun's environment variables (one process when they are absent)."""
        env = os.environ if environ is None else environ
        return cls(
            int(env.get("RANK") or 0),
            int(env.get("WORLD_SIZE") or 1),
            int(env.get("LOCAL_RANK") or 0),
        )

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that validates and writes the run directory."""
        return self.rank == 0

    def __enter__(self) -> Distributed:
        import torch.distributed as tdist

        if self.world_size > 1 and not tdist.is_initialized():
            backend = "gloo"
            if torch.cuda.is_available():
                torch.cuda.set_device(self.local_rank)
                backend = "cpu:gloo,cuda:nccl"
            tdist.init_process_group(backend=backend)
            self._owner = True
        return self

    def __exit__(self, *exc) -> bool:
        import torch.distributed as tdist

        if self._owner and tdist.is_initialized():
            tdist.destroy_process_group()
        self._owner = False
        return False

    def device(self, device: torch.device) -> torch.device:
        """This process's device: ``cuda:LOCAL_RANK`` for CUDA with several processes."""
        device = torch.device(device)
        if device.type == "cuda" and self.world_size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def rows(self, batch_size: int) -> tuple[int, int]:
        """This process's rows ``[start, stop)`` of a global batch.

        Raises
        ------
        ConfigError
            ``batch_size`` is not a multiple of the number of processes.
        """
        if batch_size % self.world_size:
            raise ConfigError(
                f"batch_size={batch_size} must be a multiple of the number of processes "
                f"({self.world_size})"
            )
        per = batch_size // self.world_size
        return self.rank * per, (self.rank + 1) * per

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any rank (all-reduce MAX; a collective)."""
        if self.world_size == 1:
            return bool(flag)
        import torch.distributed as tdist

        t = torch.tensor([1.0 if flag else 0.0])
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a tensor over the ranks (all-reduce; a collective); ``value`` unchanged."""
        if self.world_size == 1:
            return value
        import torch.distributed as tdist

        t = value.detach().clone()
        tdist.all_reduce(t)
        return t / self.world_size

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable; a collective)."""
        if self.world_size == 1:
            return obj
        import torch.distributed as tdist

        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on rank 0 only and return its result on every rank.

        Raises
        ------
        ConfigError
            On every rank, when ``fn`` raised one on rank 0 (same message).
        """
        if self.world_size == 1:
            return fn(*args)
        result = ("ok", None)
        if self.is_main:
            try:
                result = ("ok", fn(*args))
            except ConfigError as exc:
                result = ("error", str(exc))
        status, value = self.broadcast(result)
        if status == "error":
            raise ConfigError(value)
        return value


# ---------------------------------------------------------------------------------------------
# Loop
# ---------------------------------------------------------------------------------------------


class Trainer:
    """The training loop of one run: model, optimiser, data, logging and checkpoints.

    Parameters
    ----------
    params : TrainParams
        Checked settings.
    run : RunDir
        Where metrics, status and checkpoints go (must exist, see :meth:`RunDir.create`); only
        written by the main process.
    device : torch.device
    progress : bool, optional
        tqdm progress bar; default when stderr is a terminal (never on ranks other than 0).
    dist : Distributed, optional
        The processes of the run (default: this one alone).

    Raises
    ------
    ConfigError
        Bad map settings or dataset, a ``freeze`` item matching nothing, no trainable parameter
        in the first epoch, or a batch size the processes cannot share.
    """

    def __init__(
        self,
        params: TrainParams,
        run: RunDir,
        device: torch.device,
        progress: bool | None = None,
        dist: Distributed | None = None,
    ):
        self.params = params
        self.run = run
        self.device = torch.device(device)
        self.dist = dist or Distributed()
        self.is_main = self.dist.is_main
        self.rows = self.dist.rows(params.batch_size)
        self.progress = self.is_main and (sys.stderr.isatty() if progress is None else progress)
        cuda = self.device.type == "cuda"
        if cuda:
            configure_tf32(params.tf32)
        self.channels_last = params.channels_last and cuda
        self.task = ParameterRegression(params, self.device)
        self.model_name = params.model
        self.model_kwargs = params.model_kwargs()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(params.seed, STREAM_INIT))
            model = build_model(self.model_name, **self.model_kwargs)
        # Models with an input transform on the raw map (engine.nn.models.InputTransform, e.g.
        # ln(1 + δ)) receive δ / scale like every model and need the scale to undo it; it is
        # saved in their state, so checkpoints predict with the same transform.
        set_map_scale(model, self.task.scale)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = EMA(model, params.ema_decay) if params.ema_decay > 0 else None
        self.optimizer = torch.optim.AdamW(
            param_groups(model, params.lr_decay), lr=params.lr, weight_decay=params.weight_decay
        )
        # Freezing: frozen stages, head first, released one per unfreeze_every epochs.
        self.frozen = frozen_parameters(model, list(params.freeze))
        self._stage_of = {n: s for s, names in model_stages(model) for n in names}
        self._release_order = [
            s for s, names in reversed(model_stages(model)) if self.frozen.intersection(names)
        ]
        self._released: int | None = None
        self.net: nn.Module = model
        self.set_epoch(0)
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError(
                f"freeze={list(params.freeze)} leaves no trainable parameter in the first epoch"
            )
        self.step = 0
        self.best_val = math.inf
        self.epochs_since_best = 0
        use_amp = params.amp and cuda and torch.cuda.is_bf16_supported()
        self.autocast = torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=use_amp
        )
        self.tensorboard = None

    @property
    def eval_model(self) -> nn.Module:
        """The weights validated and checkpointed as ``model_state``: the EMA's when enabled."""
        return self.ema.module if self.ema is not None else self.model

    # -- freezing and DDP ----------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Make the parameters trainable that should be in (0-based) ``epoch``, and (re)wrap the
        model for DDP when that set changed (DDP only synchronises trainable parameters)."""
        k = self.params.unfreeze_every
        released = min(epoch // k, len(self._release_order)) if k > 0 else 0
        if released == self._released:
            return
        self._released = released
        free = set(self._release_order[:released])
        for name, p in self.model.named_parameters():
            p.requires_grad_(name not in self.frozen or self._stage_of[name] in free)
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = self.model  # drop the old wrapper (and its hooks) first
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)

    # -- checkpoints -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The self-describing checkpoint dict (see the module docstring)."""
        state = {
            "model_name": self.model_name,
            "model_kwargs": dict(self.model_kwargs),
            "model_state": self.eval_model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": epoch_of(self.step, self.params.steps_per_epoch),
            "best_val": float(self.best_val),
            "epochs_since_best": self.epochs_since_best,
            "config": to_dict(self.params),
            "engine_version": engine.__version__,
            "task": "parameter_regression",
            "param_names": list(self.task.names),
            "prior_low": self.task.low.tolist(),
            "prior_high": self.task.high.tolist(),
            "map_scale": float(self.task.scale),
            "map_settings": self.task.map_config(),
        }
        if self.ema is not None:
            state["raw_model_state"] = self.model.state_dict()
        return state

    def save(self, name: str = "last.pt") -> Path:
        """Write the checkpoint to ``run.checkpoint_dir / name`` atomically."""
        path = self.run.checkpoint_dir / name
        save_checkpoint(self.state(), path)
        return path

    def _check_model(self, ckpt: Mapping[str, Any], what: str) -> None:
        if (
            ckpt.get("model_name") != self.model_name
            or ckpt.get("model_kwargs") != self.model_kwargs
        ):
            raise ConfigError(
                f"{what}: the checkpoint holds model {ckpt.get('model_name')!r} "
                f"{ckpt.get('model_kwargs')}, the settings ask for {self.model_name!r} {self.model_kwargs}"
            )

    def load_weights(self, path: str | Path) -> None:
        """Fine-tuning start: the weights (``model_state``) of a checkpoint, not its optimiser.

        Raises
        ------
        ConfigError
            Missing/unreadable checkpoint, or one of another model than the settings ask for.
        """
        ckpt = load_checkpoint(path, map_location=self.device)
        self._check_model(ckpt, f"init_from={str(path)!r}")
        self.model.load_state_dict(ckpt["model_state"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["model_state"])

    def restore(self, path: str | Path | None = None) -> None:
        """Load model, EMA, optimiser and loop state from a checkpoint (default ``last.pt``).

        Raises
        ------
        ConfigError
            Missing/unreadable checkpoint, or one of another model or optimiser layout than the
            settings ask for.
        """
        ckpt = load_checkpoint(
            path or self.run.checkpoint_dir / "last.pt", map_location=self.device
        )
        self._check_model(ckpt, "cannot resume")
        raw = ckpt.get("raw_model_state")
        self.model.load_state_dict(ckpt["model_state"] if raw is None else raw)
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["model_state"])
        try:
            self.optimizer.load_state_dict(ckpt["optimizer_state"])
        except ValueError as exc:
            raise ConfigError(
                f"cannot resume: the checkpoint's optimiser state does not fit ({exc})"
            ) from None
        self.step = int(ckpt["step"])
        self.best_val = float(ckpt["best_val"])
        self.epochs_since_best = int(ckpt.get("epochs_since_best", 0))

    # -- logging -----------------------------------------------------------------------------

    def log(self, step: int, epoch: int, split: str, values: Mapping[str, float]) -> None:
        """Append metrics to ``metrics.jsonl`` (and TensorBoard scalars ``split/name``); main
        process only."""
        if not self.is_main:
            return
        self.run.log_metrics(step, epoch, split, values)
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(f"{split}/{name}", float(value), step)
            self.tensorboard.flush()

    def _open_tensorboard(self) -> None:
        if not (self.params.tensorboard and self.is_main) or self.tensorboard is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(TENSORBOARD_MISSING) from None
        self.tensorboard = SummaryWriter(log_dir=str(self.run.path / "tensorboard"))

    def _close_tensorboard(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    # -- loop --------------------------------------------------------------------------------

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimiser update on (this process's rows of) the batch of the current step;
        advances :attr:`step`.

        Returns the loss (this process's rows) and the gradient norm (0-d tensors on the device,
        not synchronised) and the learning rate of the head.
        """
        p = self.params
        self.set_epoch(self.step // p.steps_per_epoch)
        lr = lr_at(
            self.step,
            p.lr,
            p.warmup_steps,
            p.total_steps,
            p.final_lr_fraction,
            p.restart_period,
            p.restart_mult,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        x, y = self.task.train_batch(self.step, *self.rows)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.net.train()
        with self.autocast:
            out = self.net(x)
        loss = self.task.loss(out, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = p.grad_clip if p.grad_clip > 0 else math.inf
        trainable = [q for q in self.model.parameters() if q.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        self.step += 1
        return loss.detach(), grad_norm.detach(), lr

    def fit(self, should_stop: Callable[[], bool] = lambda: False) -> str:
        """Train from :attr:`step` to ``params.total_steps``; returns the final state.

        Logs split ``train`` (``loss``: mean over the steps since the last log and over the
        processes, ``lr``, ``grad_norm``, ``maps_per_s``) every ``log_every`` steps and at epoch
        ends, split ``val`` (see :meth:`ParameterRegression.evaluate`) at epoch ends, updates
        ``status.json`` and writes ``last.pt`` (and ``best.pt`` on a new best validation loss)
        at epoch ends. With several processes every rank runs this loop; only rank 0 writes.

        Parameters
        ----------
        should_stop : callable
            Polled after every step (on every rank; any rank's True stops all of them): the
            loop saves ``last.pt`` and returns ``"stopped"``.

        Returns
        -------
        str
            ``"completed"`` (all steps done, or early stopping) or ``"stopped"``.

        Raises
        ------
        FloatingPointError
            The training loss became NaN or infinite.
        ConfigError
            ``tensorboard`` without its package.
        """
        from tqdm.auto import tqdm

        p, run, dist = self.params, self.run, self.dist
        total, spe = p.total_steps, p.steps_per_epoch
        val_set = self.task.validation_set(p) if self.is_main else None
        loss_sum = torch.zeros((), device=self.device)
        n_window, t_window = 0, time.perf_counter()
        self._open_tensorboard()
        bar = tqdm(
            total=total, initial=self.step, disable=not self.progress, desc=run.id, unit="step"
        )
        try:
            while self.step < total:
                loss, grad_norm, lr = self.train_step()
                loss_sum += loss
                n_window += 1
                epoch = epoch_of(self.step, spe)
                end_of_epoch = self.step % spe == 0
                stop = dist.any(should_stop())
                bar.update(1)
                if self.step % p.log_every == 0 or end_of_epoch or stop or self.step == total:
                    mean_loss = float(dist.mean(loss_sum)) / n_window
                    if not math.isfinite(mean_loss):
                        raise FloatingPointError(
                            f"training loss is {mean_loss} at step {self.step}; "
                            f"try a smaller lr (now {p.lr:g}) or grad_clip"
                        )
                    elapsed = time.perf_counter() - t_window
                    self.log(
                        self.step,
                        epoch,
                        "train",
                        {
                            "loss": mean_loss,
                            "lr": lr,
                            "grad_norm": float(grad_norm),
                            "maps_per_s": n_window * p.batch_size / max(elapsed, 1e-9),
                        },
                    )
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                    loss_sum.zero_()
                    n_window, t_window = 0, time.perf_counter()
                    if self.is_main:
                        run.write_status(step=self.step, epoch=epoch)
                if end_of_epoch:
                    if self.end_epoch(epoch, val_set):
                        return "completed"
                elif stop and self.is_main:
                    self.save("last.pt")
                if stop and self.step < total:
                    return "stopped"
        finally:
            bar.close()
            self._close_tensorboard()
        return "completed"

    def end_epoch(self, epoch: int, val_set) -> bool:
        """Validate, log, checkpoint (rank 0); returns True on every rank when early stopping
        ends the run."""
        done = False
        if self.is_main:
            metrics = self.task.evaluate(self.eval_model, val_set, self.autocast)
            self.log(self.step, epoch, "val", metrics)
            improved = metrics["loss"] < self.best_val
            if improved:
                self.best_val = metrics["loss"]
                self.epochs_since_best = 0
            else:
                self.epochs_since_best += 1
            self.save("last.pt")
            if improved:
                self.save("best.pt")
            best = self.best_val if math.isfinite(self.best_val) else None
            self.run.write_status(step=self.step, epoch=epoch, best_val=best)
            patience = self.params.patience
            done = bool(patience) and self.epochs_since_best >= patience
        return self.dist.broadcast(done)


# ---------------------------------------------------------------------------------------------
# One engine process
# ---------------------------------------------------------------------------------------------


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


def evaluate_run(params: TrainParams, run: RunDir, device: torch.device) -> str | None:
    """Evaluate a completed run's best checkpoint into its run directory (``engine.evaluation.evaluate``).

    On ``params.eval_maps`` maps: generated now with the run's map settings and prior box, from
    the seed ``derive_seed(params.seed, STREAM_EVAL)`` (on the CPU, so the test set does not
    depend on the training device), or the first ones of the test split of ``params.dataset``.
    Writes ``report.json``, ``predictions.csv`` and ``figures/`` next to the checkpoints.

    Returns
    -------
    str or None
        None on success, else ``"evaluation failed: <one line>"`` (any exception is caught, and
        so is a second SIGTERM/SIGINT during the evaluation: the run still completed).
    """
    from engine.evaluation.evaluate import evaluate

    spec = params.dataset or params.kind
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


def run_training(
    params: TrainParams,
    run: RunDir,
    device: torch.device,
    resume: bool = False,
    preset: str | None = None,
    progress: bool | None = None,
    dist: Distributed | None = None,
) -> int:
    """Train in this process and keep ``run``'s files up to date; returns an exit code.

    Writes ``config.json`` (settings, engine version, device, number of processes), sets the
    state ``running`` with this pid, trains (resuming from ``last.pt`` if ``resume``, else
    starting from ``init_from``'s weights when set) and ends in state ``completed`` (exit 0;
    first, with ``eval_maps > 0``, :func:`evaluate_run` writes ``report.json`` while the state is
    still ``running``, and a failed evaluation is only noted in ``error``),
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
    if main:
        run.create()
        run.write_config(
            {
                "command": "train",
                "preset": preset,
                "resumed": bool(resume),
                "settings": to_dict(params),
                "engine_version": engine.__version__,
                "torch_version": torch.__version__,
                "device": str(device),
                "world_size": dist.world_size,
                "num_threads": threads,
                "created": time.time(),
            }
        )
        run.write_status(
            state="running",
            pid=os.getpid(),
            started=time.time(),
            total_steps=params.total_steps,
            error=None,
        )
    trainer = None
    with StopSignals() as stop:
        try:
            trainer = Trainer(params, run, device, progress=progress, dist=dist)
            if resume:
                trainer.restore()
            elif params.init_from:
                trainer.load_weights(params.init_from)
            if main:
                run.write_config(
                    {
                        **run.config(),
                        "n_parameters": count_parameters(trainer.model, trainable_only=False),
                        "data": trainer.task.describe(),
                    }
                )
            state = trainer.fit(stop)
        except KeyboardInterrupt:
            if main:
                run.write_status(state="stopped", error="interrupted during a step (second signal)")
            print("stopped: interrupted during a step", file=sys.stderr)
            return 130
        except Exception as exc:
            msg = one_line(exc)
            if main:
                run.write_status(state="failed", error=msg)
            if not isinstance(exc, ConfigError):
                traceback.print_exc(file=sys.stderr)
            print(f"error: {msg}", file=sys.stderr)
            return 2 if isinstance(exc, ConfigError) else 1
    if not main:
        return 0
    epoch = epoch_of(trainer.step, params.steps_per_epoch)
    error = None
    if state == "completed" and params.eval_maps > 0:
        run.write_status(step=trainer.step, epoch=epoch)
        error = evaluate_run(params, run, device)
    run.write_status(state=state, step=trainer.step, epoch=epoch, error=error)
    best = f", best val loss {trainer.best_val:.4g}" if math.isfinite(trainer.best_val) else ""
    print(f"{state}: run {run.id} at step {trainer.step}/{params.total_steps}{best} ({run.path})")
    return 0
