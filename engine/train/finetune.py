"""Fine-tuning and weight averaging: stages of a network, freezing, discriminative learning
rates (parameter groups) and the exponential moving average (EMA) of the weights."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from engine.params import ConfigError


def model_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The stages of a model for freezing and per-depth learning rates.

    Stages are the model's top-level children that hold parameters, in registration order
    (input → output: the convention of every model of :mod:`engine.nn.registry`, whose last child is
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
