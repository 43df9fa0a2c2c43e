"""Training loop, tasks and checkpoints: infer (omega_m, sigma8) from maps generated on the fly.

* :class:`TrainParams` — every training setting, once (bounds, defaults, docs with units); map
  settings are inherited from :class:`engine.params.FieldParams`.
* :data:`PRESETS` — named sets of settings (``smoke`` for tests and demos, ``default``).
* :func:`lr_at` — pure learning-rate schedule (linear warm-up, cosine decay).
* :class:`ParameterRegression` — the task: owns the objective (Gaussian negative log-likelihood
  of the normalised parameters), the data (maps generated on the training device, parameters
  uniform in the prior box) and the validation metrics.
* :class:`Trainer` — the loop: device, AMP, checkpoints, resume, early stopping, logging.
* :func:`run_training` — one engine process's run: run directory, status, signals, failures.

Reproducibility: the model is initialised from ``derive_seed(seed, STREAM_INIT)``, the batch of
(0-based) step ``s`` from a fresh generator seeded with ``derive_seed(seed, STREAM_TRAIN, s)``
and the validation set from ``derive_seed(seed, STREAM_VAL)``. A run stopped after any step and
resumed from its ``last.pt`` therefore reaches bit-identical weights to an uninterrupted run on
the same device with the same number of threads.

Checkpoints (``checkpoints/last.pt`` each epoch and on stop, ``best.pt`` on a new best validation
loss) are dicts of plain Python values and tensors, loadable with ``torch.load(weights_only=True)``:
``model_name, model_kwargs, model_state, optimizer_state, step, epoch, best_val,
epochs_since_best, config`` (the TrainParams settings), ``engine_version``, ``task``,
``param_names``, ``prior_low``, ``prior_high`` (physical units) and ``map_scale``.
"""

from __future__ import annotations

import contextlib
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
from engine import fields
from engine.device import default_device
from engine.models import MODELS, build_model, count_parameters
from engine.params import (
    OMEGA_M_BOUNDS,
    SIGMA8_BOUNDS,
    ConfigError,
    FieldParams,
    set_values,
    to_dict,
)
from engine.runs import RunDir, atomic_write

#: Seed streams of :func:`derive_seed`.
STREAM_INIT, STREAM_TRAIN, STREAM_VAL = 0, 1, 2


class TrainParams(FieldParams):
    """Settings of a parameter-inference training run on maps generated on the fly.

    The map settings (kind, size, box_size, thickness, redshift, smoothing, noise) and the shared
    cosmology (omega_b, h, n_s, transfer_function) are those of :class:`FieldParams`; omega_m and
    sigma8 are drawn per map, uniformly in the prior box ``[omega_m_min, omega_m_max] ×
    [sigma8_min, sigma8_max]``, so ``omega_m``, ``sigma8`` and ``count`` are not settings here.
    """

    # Inherited settings that do not apply to training: constant, hence not user settings.
    omega_m = param.Number(constant=True, doc="Not used: drawn per map from the prior box.")
    sigma8 = param.Number(constant=True, doc="Not used: drawn per map from the prior box.")
    count = param.Integer(constant=True, doc="Not used: see batch_size and val_maps.")
    # Inherited settings with another default or meaning (bounds are inherited).
    size = param.Integer(64)
    seed = param.Integer(
        doc="Seed of the run: model initialisation, the batch of every step and the validation "
        "set; same seed ⇒ same run on CPU."
    )

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
    model = param.Selector(
        default="cnn", objects=list(MODELS), doc="Network, by name in engine.models.MODELS."
    )
    width = param.Integer(
        16, bounds=(1, 512), doc="Channels of the network's first stage (doubling per stage)."
    )
    circular_padding = param.Boolean(
        True, doc="Periodic padding in convolutions (the maps are periodic); zeros otherwise."
    )
    batch_size = param.Integer(64, bounds=(1, 65536), doc="Maps per optimiser step.")
    steps_per_epoch = param.Integer(
        200, bounds=(1, 10_000_000), doc="Optimiser steps per epoch (validation after each)."
    )
    epochs = param.Integer(20, bounds=(1, 100_000), doc="Number of epochs.")
    lr = param.Number(
        1e-3,
        bounds=(0.0, 10.0),
        inclusive_bounds=(False, True),
        doc="Peak learning rate of AdamW (dimensionless), reached after warmup_steps.",
    )
    final_lr_fraction = param.Number(
        0.1,
        bounds=(0.0, 1.0),
        doc="Learning rate at the end of the cosine decay, as a fraction of lr.",
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
    val_maps = param.Integer(
        512, bounds=(1, 1_000_000), doc="Maps in the fixed validation set (generated once)."
    )
    patience = param.Integer(
        0,
        bounds=(0, None),
        doc="Early stopping: stop after this many epochs without a better validation loss (0: never).",
    )
    log_every = param.Integer(
        20, bounds=(1, None), doc="Log the training loss and learning rate every this many steps."
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
            An empty prior box, or a pixel scale outside the theory tables.
        """
        for name in ("omega_m", "sigma8"):
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if not lo < hi:
                raise ConfigError(
                    f"{name}_min={lo} must be smaller than {name}_max={hi} (the prior box)"
                )
        fields.check_resolution(self)
        return self

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


#: Named settings; ``default`` is the parameter defaults of :class:`TrainParams` themselves.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "size": 32,
        "batch_size": 32,
        "steps_per_epoch": 20,
        "epochs": 3,
        "val_maps": 64,
        "lr": 2e-3,
        "warmup_steps": 10,
        "log_every": 5,
        "width": 8,
    },
    "default": {},
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


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``(seed, *keys)`` (numpy ``SeedSequence``); pure function."""
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def lr_at(
    step: int, base_lr: float, warmup_steps: int, total_steps: int, final_fraction: float = 0.1
) -> float:
    """Learning rate of the update with 0-based index ``step``: linear warm-up, cosine decay.

    Warm-up from ``base_lr / warmup_steps`` to ``base_lr`` over the first ``warmup_steps``
    updates, then half a cosine from ``base_lr`` down towards ``final_fraction * base_lr`` at
    ``total_steps``. Same units as ``base_lr``.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return base_lr
    progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    return base_lr * (
        final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    )


def epoch_of(step: int, steps_per_epoch: int) -> int:
    """0-based epoch that the ``step``-th update (1-based count) belongs to; 0 for step 0."""
    return max(step - 1, 0) // steps_per_epoch


# ---------------------------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------------------------


class ParameterRegression:
    """Regression of (omega_m, sigma8) from maps with a Gaussian negative log-likelihood.

    Targets are normalised to [0, 1] by the prior box: ``y = (theta - low) / (high - low)``.
    Maps enter the network divided by ONE fixed global scale, :func:`engine.fields.map_scale`
    (the pixel std at the fiducial cosmology), never standardised per map, which would erase
    the amplitude that carries sigma8.

    Parameters
    ----------
    params : TrainParams
    device : torch.device
        Where batches are generated and the model runs.
    """

    #: Inferred parameters, in the order of the model's outputs.
    names = ("omega_m", "sigma8")
    #: Clamp of the predicted log standard deviation (normalised units), for a stable loss.
    LOG_STD_MIN, LOG_STD_MAX = -7.0, 3.0

    def __init__(self, params: TrainParams, device: torch.device):
        self.params = params
        self.device = torch.device(device)
        self.low = torch.tensor(
            [getattr(params, f"{n}_min") for n in self.names], dtype=torch.float32, device=device
        )
        self.high = torch.tensor(
            [getattr(params, f"{n}_max") for n in self.names], dtype=torch.float32, device=device
        )
        self.scale = fields.map_scale(params)

    def to_physical(self, y: torch.Tensor) -> torch.Tensor:
        """Normalised parameters ``(B, P)`` → physical ones (dimensionless Omega_m, sigma8)."""
        return self.low + (self.high - self.low) * y

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` parameter pairs uniformly in the prior box and generate their maps.

        Returns
        -------
        x : torch.Tensor (n, 1, N, N) float32
            Maps divided by :attr:`scale`, on the task's device.
        y : torch.Tensor (n, 2) float32
            Normalised targets in [0, 1).
        """
        y = torch.rand((n, len(self.names)), generator=generator, device=self.device)
        theta = self.to_physical(y)
        maps = fields.generate_maps(self.params, theta[:, 0], theta[:, 1], generator, self.device)
        return (maps / self.scale).unsqueeze(1), y

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
        """The fixed validation batches ``[(x, y), ...]`` (``params.val_maps`` maps in batches of
        ``params.batch_size``), generated once from ``derive_seed(seed, STREAM_VAL)``."""
        gen = torch.Generator(device=self.device).manual_seed(derive_seed(params.seed, STREAM_VAL))
        sizes = [
            min(params.batch_size, params.val_maps - i)
            for i in range(0, params.val_maps, params.batch_size)
        ]
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
            Density contrast maps as from :func:`engine.fields.generate_maps` (not normalised).

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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :class:`Trainer` with ``torch.load(weights_only=True)``.

    Raises
    ------
    ConfigError
        The file does not exist or is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
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
        Where metrics, status and checkpoints go (must exist, see :meth:`RunDir.create`).
    device : torch.device
    progress : bool, optional
        tqdm progress bar; default when stderr is a terminal.
    """

    def __init__(
        self,
        params: TrainParams,
        run: RunDir,
        device: torch.device,
        progress: bool | None = None,
    ):
        self.params = params
        self.run = run
        self.device = torch.device(device)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.task = ParameterRegression(params, self.device)
        self.model_name = params.model
        self.model_kwargs = params.model_kwargs()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(params.seed, STREAM_INIT))
            model = build_model(self.model_name, **self.model_kwargs)
        self.model = model.to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=params.lr, weight_decay=params.weight_decay
        )
        self.step = 0
        self.best_val = math.inf
        self.epochs_since_best = 0
        use_amp = params.amp and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.autocast = torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=use_amp
        )

    # -- checkpoints -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The self-describing checkpoint dict (see the module docstring)."""
        return {
            "model_name": self.model_name,
            "model_kwargs": dict(self.model_kwargs),
            "model_state": self.model.state_dict(),
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
        }

    def save(self, name: str = "last.pt") -> Path:
        """Write the checkpoint to ``run.checkpoint_dir / name`` atomically."""
        path = self.run.checkpoint_dir / name
        save_checkpoint(self.state(), path)
        return path

    def restore(self, path: str | Path | None = None) -> None:
        """Load model, optimiser and loop state from a checkpoint (default ``last.pt``).

        Raises
        ------
        ConfigError
            Missing/unreadable checkpoint, or one of another model than the settings ask for.
        """
        ckpt = load_checkpoint(
            path or self.run.checkpoint_dir / "last.pt", map_location=self.device
        )
        if (
            ckpt.get("model_name") != self.model_name
            or ckpt.get("model_kwargs") != self.model_kwargs
        ):
            raise ConfigError(
                f"cannot resume: the checkpoint holds model {ckpt.get('model_name')!r} "
                f"{ckpt.get('model_kwargs')}, the settings ask for {self.model_name!r} {self.model_kwargs}"
            )
        self.model.load_state_dict(ckpt["model_state"])
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        self.step = int(ckpt["step"])
        self.best_val = float(ckpt["best_val"])
        self.epochs_since_best = int(ckpt.get("epochs_since_best", 0))

    # -- loop --------------------------------------------------------------------------------

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimiser update on the batch of the current step; advances :attr:`step`.

        Returns the loss and the gradient norm (0-d tensors on the device, not synchronised)
        and the learning rate used.
        """
        p = self.params
        lr = lr_at(self.step, p.lr, p.warmup_steps, p.total_steps, p.final_lr_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        gen = torch.Generator(device=self.device).manual_seed(
            derive_seed(p.seed, STREAM_TRAIN, self.step)
        )
        x, y = self.task.sample(p.batch_size, gen)
        self.model.train()
        with self.autocast:
            out = self.model(x)
        loss = self.task.loss(out, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = p.grad_clip if p.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.step += 1
        return loss.detach(), grad_norm.detach(), lr

    def fit(self, should_stop: Callable[[], bool] = lambda: False) -> str:
        """Train from :attr:`step` to ``params.total_steps``; returns the final state.

        Logs split ``train`` (``loss``: mean over the steps since the last log, ``lr``,
        ``grad_norm``, ``maps_per_s``) every ``log_every`` steps and at epoch ends, split ``val``
        (see :meth:`ParameterRegression.evaluate`) at epoch ends, updates ``status.json`` and
        writes ``last.pt`` (and ``best.pt`` on a new best validation loss) at epoch ends.

        Parameters
        ----------
        should_stop : callable
            Polled after every step; when it returns True the loop saves ``last.pt`` and returns
            ``"stopped"``.

        Returns
        -------
        str
            ``"completed"`` (all steps done, or early stopping) or ``"stopped"``.

        Raises
        ------
        FloatingPointError
            The training loss became NaN or infinite.
        """
        from tqdm.auto import tqdm

        p, run = self.params, self.run
        total, spe = p.total_steps, p.steps_per_epoch
        val_set = self.task.validation_set(p)
        loss_sum = torch.zeros((), device=self.device)
        n_window, t_window = 0, time.perf_counter()
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
                stop = should_stop()
                bar.update(1)
                if self.step % p.log_every == 0 or end_of_epoch or stop or self.step == total:
                    mean_loss = float(loss_sum) / n_window
                    if not math.isfinite(mean_loss):
                        raise FloatingPointError(
                            f"training loss is {mean_loss} at step {self.step}; "
                            f"try a smaller lr (now {p.lr:g}) or grad_clip"
                        )
                    elapsed = time.perf_counter() - t_window
                    run.log_metrics(
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
                    run.write_status(step=self.step, epoch=epoch)
                if end_of_epoch:
                    if self.end_epoch(epoch, val_set):
                        return "completed"
                elif stop:
                    self.save("last.pt")
                if stop and self.step < total:
                    return "stopped"
        finally:
            bar.close()
        return "completed"

    def end_epoch(self, epoch: int, val_set) -> bool:
        """Validate, log, checkpoint; returns True when early stopping ends the run."""
        metrics = self.task.evaluate(self.model, val_set, self.autocast)
        self.run.log_metrics(self.step, epoch, "val", metrics)
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
        return bool(patience) and self.epochs_since_best >= patience


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


def run_training(
    params: TrainParams,
    run: RunDir,
    device: torch.device,
    resume: bool = False,
    preset: str | None = None,
    progress: bool | None = None,
) -> int:
    """Train in this process and keep ``run``'s files up to date; returns an exit code.

    Writes ``config.json`` (settings, engine version, device), sets the state ``running`` with
    this pid, trains (resuming from ``last.pt`` if ``resume``) and ends in state ``completed``
    (exit 0), ``stopped`` after SIGTERM/SIGINT (exit 0; 130 after a second signal, without a
    checkpoint of the interrupted step) or ``failed`` with a one-line ``error`` (exit 1; 2 for a
    ConfigError, e.g. a checkpoint of another model). The settings must already be checked and
    the run directory validated (see ``engine.cli``).
    """
    threads = configure_threads(params.num_threads)
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
            trainer = Trainer(params, run, device, progress=progress)
            if resume:
                trainer.restore()
            run.write_config({**run.config(), "n_parameters": count_parameters(trainer.model)})
            state = trainer.fit(stop)
        except KeyboardInterrupt:
            run.write_status(state="stopped", error="interrupted during a step (second signal)")
            print("stopped: interrupted during a step", file=sys.stderr)
            return 130
        except Exception as exc:
            msg = one_line(exc)
            run.write_status(state="failed", error=msg)
            if not isinstance(exc, ConfigError):
                traceback.print_exc(file=sys.stderr)
            print(f"error: {msg}", file=sys.stderr)
            return 2 if isinstance(exc, ConfigError) else 1
    epoch = epoch_of(trainer.step, params.steps_per_epoch)
    run.write_status(state=state, step=trainer.step, epoch=epoch, error=None)
    best = f", best val loss {trainer.best_val:.4g}" if math.isfinite(trainer.best_val) else ""
    print(f"{state}: run {run.id} at step {trainer.step}/{params.total_steps}{best} ({run.path})")
    return 0
