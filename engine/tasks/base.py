"""The task interface: what a problem (regression, GAN, diffusion, classification, delensing)
gives the one training loop of :mod:`engine.train`.

A task owns its networks, optimisers, objective, training data and validation metrics; the loop
(:class:`engine.train.loop.Trainer`) owns devices, AMP, EMA, gradient clipping, the learning-rate
schedule, early stopping, checkpoints, resume, signals, DDP, metrics.jsonl and TensorBoard.

Contract
--------
* :meth:`Task.build_networks` returns ``{name: nn.Module}``; the first one is the *primary*
  network (fine-tuning settings ``init_from``, ``freeze``, ``lr_decay`` apply to it).
* :meth:`Task.training_step` computes its losses on the batch of a step and calls
  ``opt.step(name, loss)`` once per optimiser it updates (a GAN steps two); the loop's
  :class:`Stepper` does zero-grad, backward, clipping and the optimiser step. It returns the
  scalars to log (``loss`` first: the loop stops on a non-finite ``loss``).
* :meth:`Task.optimizer_options` may set each network's learning-rate scale, Adam betas and
  weight decay (default: the loop's settings for all).
* :meth:`Task.validate` returns named metrics; :attr:`Task.selection` names the one that picks
  ``best.pt`` and whether lower (``"min"``) or higher (``"max"``) is better.
* :meth:`Task.state` is the task's own state (prior box, normalisation, class names, noise
  schedule…) as plain values, saved in every checkpoint as ``task_state``;
  :meth:`Task.from_state` rebuilds a task for inference from it, without training data.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import param
import torch
from torch import nn


class Stepper(Protocol):
    """What the loop gives :meth:`Task.training_step`: mixed precision, input layout and the
    update of one network."""

    #: The loop's autocast context (bfloat16 on CUDA when ``amp``; disabled otherwise).
    autocast: Any

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """A network input ``(B, C, H, W)`` in the loop's memory format (channels_last)."""

    def step(self, name: str, loss: torch.Tensor) -> torch.Tensor:
        """Zero the gradients of optimiser ``name``, back-propagate ``loss`` (a 0-d tensor),
        clip the gradient of the network ``name`` and take an optimiser step; returns the
        gradient norm before clipping (0-d tensor)."""


class Task(abc.ABC):
    """Base class of a task (module docstring for the contract).

    Parameters
    ----------
    settings : engine.train.settings.TrainParams
        The run's checked settings (the task reads its own part and the data and model parts).
    device : torch.device
        Where batches are made and networks run.
    """

    #: Registry name, recorded in checkpoints (``engine.tasks.TASKS``).
    name: ClassVar[str] = ""
    #: The param class of the task's own settings.
    params_class: ClassVar[type[param.Parameterized]]
    #: Validation metric that selects ``best.pt``, and "min" or "max".
    selection: ClassVar[tuple[str, str]] = ("loss", "min")
    #: What one training sample is called, for the throughput metric ``<unit>_per_s``.
    sample_unit: ClassVar[str] = "maps"
    #: Networks whose weights the EMA averages (None: all of them).
    ema_networks: ClassVar[tuple[str, ...] | None] = None
    #: The param class of the task's network settings (None:
    #: :class:`engine.tasks.settings.ModelParams`, a model of the registry by name).
    model_params_class: ClassVar[type[param.Parameterized] | None] = None

    def optimizer_options(self, name: str) -> dict[str, Any]:
        """Options of the AdamW optimiser of network ``name``: ``lr_scale`` (its learning rate
        over the loop's ``lr``, default 1), ``betas`` (default torch's (0.9, 0.999)),
        ``weight_decay`` (default the loop's). A GAN, e.g., gives its discriminator a larger
        learning rate and β1 = 0 (two time-scale update rule, Heusel et al. 2017)."""
        return {}

    def __init__(self, settings, device: torch.device):
        self.settings = settings
        self.device = torch.device(device)

    @abc.abstractmethod
    def build_networks(self) -> dict[str, nn.Module]:
        """The task's networks, freshly initialised (the loop seeds torch's RNG first), on the
        CPU; ``{name: module}``, the primary one first."""

    def network_specs(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """``{network: (registry name, keyword arguments)}`` to rebuild each network from a
        checkpoint with :func:`engine.nn.registry.build_model`."""
        return {}

    @abc.abstractmethod
    def training_step(
        self, step: int, rows: tuple[int, int], nets: Mapping[str, nn.Module], opt: Stepper
    ) -> dict[str, torch.Tensor]:
        """One update on rows ``[start, stop)`` of the global batch of step ``step`` (DDP: each
        process its rows of the same batch). ``nets`` are the trainable (maybe DDP-wrapped)
        networks in train mode. Returns 0-d tensors to log, ``loss`` first."""

    @abc.abstractmethod
    def validation_data(self) -> Any:
        """The fixed validation set (made once per run, on the main process)."""

    @abc.abstractmethod
    def validate(self, nets: Mapping[str, nn.Module], data: Any, autocast=None) -> dict[str, float]:
        """Validation metrics of ``nets`` (EMA weights when enabled, eval mode) on ``data``;
        includes the :attr:`selection` metric."""

    @abc.abstractmethod
    def state(self) -> dict[str, Any]:
        """The task's state as plain values and tensors (``torch.load(weights_only=True)``)."""

    @classmethod
    @abc.abstractmethod
    def from_state(cls, state: Mapping[str, Any], device: torch.device) -> Task:
        """A task for inference from a checkpoint's ``task_state`` (no training data)."""

    def train_batch(self, step: int, start: int = 0, stop: int | None = None):
        """Rows ``[start, stop)`` of the training batch of step ``step`` (default: all) as
        ``(inputs, targets)`` tensors: the same batch for any split into row ranges (DDP), made
        of the task's shards ``self.shard(step, j)`` of ``batch_size // batch_shards`` rows
        (only the overlapping shards are made). For tasks that define ``shard``."""
        s = self.settings
        stop = s.batch_size if stop is None else stop
        m = s.batch_size // s.batch_shards
        xs, ys = [], []
        for j in range(start // m, (stop - 1) // m + 1):
            x, y = self.shard(step, j)
            a, b = max(start - j * m, 0), min(stop - j * m, m)
            xs.append(x[a:b])
            ys.append(y[a:b])
        return torch.cat(xs), torch.cat(ys)

    def describe(self) -> dict[str, Any]:
        """Plain summary of the data for ``config.json``."""
        return {}

    def map_config(self) -> dict[str, Any]:
        """``{"kind": ..., setting: value}`` of the training maps (checkpoints), or {}."""
        return {}

    def better(self, value: float, best: float) -> bool:
        """True when validation metric ``value`` beats ``best`` in the :attr:`selection` sense."""
        return value < best if self.selection[1] == "min" else value > best

    @staticmethod
    def autocast_or_null(autocast):
        """``autocast`` itself, or a null context when it is None."""
        return autocast if autocast is not None else contextlib.nullcontext()
