"""Tasks: one module per problem, each a :class:`engine.tasks.base.Task` for the one training
loop of :mod:`engine.train`.

* :mod:`engine.tasks.base` — the task interface (networks, optimiser steps, validation metrics
  and the metric that selects ``best.pt``, the task state saved in checkpoints).
* :mod:`engine.tasks.settings` — settings every task shares: the model (name + keyword
  arguments) and the data (a kind generated on the fly, or a dataset spec); :func:`compose`.
* :mod:`engine.tasks.regression` — regression of (omega_m, sigma8), or any labels of a
  dataset, with a Gaussian negative log-likelihood.
* :mod:`engine.tasks.generative` — the base of conditional map generators (data, map
  transform, sampling, validation FID); :mod:`engine.tasks.gan` (conditional GAN) and
  :mod:`engine.tasks.diffusion` (conditional diffusion with diffusers; its settings, sampling loop and
  class-labelled data in ``diffusion_settings``, ``diffusion_sampling``, ``diffusion_classes``).
* :mod:`engine.tasks.classification` — classification of images by a class coordinate (strong-lens
  substructure); the labelled data and class names are in :mod:`engine.data.classes`.
* :mod:`engine.tasks.delensing` — CMB delensing: lensed Q/U → unlensed Q/U with a U-Net on the
  HEALPix faces (:mod:`engine.nn.healpix`), spin-2 rotations as augmentation.

Adding a problem means one module here and one line in :data:`TASKS`; the loop, the run
directory, the CLI verbs and the explorer's Training page work for it unchanged.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from engine.params import ConfigError

#: Task name → ``module:class`` (imported lazily).
TASKS = {
    "regression": "engine.tasks.regression:Regression",
    "gan": "engine.tasks.gan:ConditionalGAN",
    "diffusion": "engine.tasks.diffusion:ConditionalDiffusion",
    "classification": "engine.tasks.classification:Classification",
    "delensing": "engine.tasks.delensing:Delensing",
}
#: Names of tasks written by older engine versions.
ALIASES = {"parameter_regression": "regression"}


def get_task(name: str) -> type:
    """The task class called ``name`` (or an older alias of it).

    Raises
    ------
    ConfigError
        Unknown task (the message lists the known ones).
    """
    name = ALIASES.get(name, name)
    if name not in TASKS:
        raise ConfigError(f"task={name!r} is not known: task must be one of {', '.join(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def task_from_checkpoint(ckpt: Mapping[str, Any], device="cpu"):
    """The task of a checkpoint (:func:`engine.train.checkpoint.load_checkpoint`), rebuilt for
    inference from its ``task_state``.

    Raises
    ------
    ConfigError
        Unknown task or a task state it cannot read.
    """
    cls = get_task(str(ckpt.get("task", "")))
    try:
        return cls.from_state(ckpt["task_state"], device)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"checkpoint of task {cls.name!r} has an unreadable task state: {exc}"
        ) from None
