r"""Classification of maps into discrete classes: the dark-matter substructure of strong-lens
images (``none``, ``cdm``, ``vortex``; after ML4SCI DeepLense, Alexander et al. 2020, ApJ 893,
15, arXiv:1909.07346), or any class coordinate of a dataset.

This module holds the task: its settings (:class:`ClassificationParams`,
:class:`ClassifierModelParams`), the input normalisation, the rotation augmentation
(:func:`rotate_images`), the objective and metrics (:class:`Classification`,
:func:`one_vs_rest_auc`). The dataset side — the class names of a label coord, their order and
encoding, and the labelled images by split (:class:`~engine.data.classes.ClassMaps`) — is
:mod:`engine.data.classes`, whose names this module re-exports (``CLASS_ORDERS``,
``class_names``, ``encode_labels``, ``label_values``, ``choose_classes``, ``ClassMaps``).

Data and classes
----------------
A labelled dataset (setting ``dataset``; no maps on the fly) whose samples carry a per-sample
class coord named by the setting ``label`` (default ``substructure``). Batches come from the train
split, validation from the val split, the end-of-training evaluation from the test split. The
class names and their order (the network's output columns; ``p_<class>`` columns of
``predict``) are fixed once, from the train split, and saved in the task state: the setting
``classes`` when given, else the label's declared order
(:data:`~engine.data.classes.CLASS_ORDERS`), else the sorted names. The datasets accepted, the
splits and the rules and refusals of the class order are those of :mod:`engine.data.classes`
(its docstring).

Input normalisation (fixed, from the train split, saved in the task state)
--------------------------------------------------------------------------
``transform="asinh"`` (default): ``z = (asinh(x / s) − μ) / σ`` with the softening ``s`` the
standard deviation of all train pixels (image units, e.g. counts) and μ, σ the mean and standard
deviation of ``asinh(x / s)`` over all train pixels. asinh is linear for |x| ≲ s (noise,
including negative pixels) and logarithmic above (the bright arcs), the "asinh magnitude"
stretch of Lupton, Gunn & Szalay 1999 (AJ 118, 1406). ``transform="none"``: ``z = (x − μ) / σ``.
One global set of numbers for every image (never per image), so relative brightness is kept.

Augmentation (training only; on the raw images, before the transform)
---------------------------------------------------------------------
The classes are invariant under rotations and reflections of the sky, so:

* ``augment_rotate`` (default on): every image is rotated about its centre by an angle uniform
  in [0, 2π) with bilinear interpolation and zero padding outside the image
  (:func:`rotate_images`: :func:`torch.nn.functional.affine_grid` + ``grid_sample``,
  ``align_corners=False``). It conserves the total flux of an image whose light lies inside
  the inscribed disc up to the interpolation error (≲ 1 % for features wider than ~2 pixels),
  and it smooths slightly (bilinear interpolation is a ≤ 1-pixel kernel);
* ``augment_flips``: one of the 8 symmetries of the square (exact; :func:`engine.data.augment.
  augment_maps`), and ``augment_noise`` (image units) / ``augment_smoothing`` (arcsec with a
  pixel scale, else pixels) as for regression.

Objective and metrics
---------------------
Cross-entropy of the network's logits (``(B, K)``; models of
:data:`engine.nn.registry.CLASSIFIERS` built with ``head="logits"``), AdamW (the loop's).
Validation: ``loss`` (mean cross-entropy, nats), ``accuracy`` (top-1), ``auc`` (macro one-vs-rest
ROC AUC: the mean over classes of the AUC of ``p_k`` separating class k from the others,
:func:`torchmetrics.functional.classification.multiclass_auroc`; classes absent from the val
split are left out) and ``auc_<class>``. ``best.pt`` is selected by ``auc`` (higher is better).

Reproducibility is regression's (:mod:`engine.tasks.regression`): the batch of step ``s`` comes
from ``derive_seed(seed, STREAM_TRAIN, s[, shard])`` (rotation angles, then the flips, smoothing
and noise of :func:`~engine.data.augment.augment_maps`) and the rows of a per-pass permutation
seeded with ``derive_seed(seed, STREAM_DATA, pass)``, so a resumed run reaches the same weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import param
import torch
import torch.nn.functional as F
from torch import nn

from engine.data.augment import augment_maps
from engine.data.classes import (  # noqa: F401 - the dataset side, re-exported
    CLASS_ORDERS,
    ClassMaps,
    choose_classes,
    class_names,
    encode_labels,
    label_values,
)
from engine.data.sources import STREAM_TRAIN, derive_seed, epoch_rows
from engine.nn.registry import CLASSIFIERS, build_model
from engine.params import ConfigError
from engine.tasks.base import Stepper, Task

#: Input transforms (module docstring).
TRANSFORMS = ("asinh", "none")


class ClassificationParams(param.Parameterized):
    """Settings of the classification task (module docstring)."""

    label = param.String(
        "substructure",
        doc="Per-sample coord of the dataset holding each image's class (text or integers); "
        "substructure (none, cdm, vortex) for strong-lens datasets.",
    )
    classes = param.String(
        "",
        doc="Comma-separated class names in the order of the network's outputs (e.g. "
        "none,cdm,vortex); empty: the label's declared order (substructure: none,cdm,vortex) "
        "restricted to the classes of the train split, else their sorted names.",
    )
    transform = param.Selector(
        default="asinh",
        objects=list(TRANSFORMS),
        doc="Input transform before the global standardisation (fixed from the train split): "
        "asinh(x / s), s the std of the train pixels (linear for faint pixels and noise, "
        "logarithmic for bright arcs), or none.",
    )
    augment_rotate = param.Boolean(
        True,
        doc="Augmentation: rotate every training image about its centre by a uniform random "
        "angle (bilinear interpolation, zeros outside); the classes are rotation invariant.",
    )

    def check(self) -> None:
        """Raises ConfigError with an empty ``label`` or bad ``classes`` (a missing dataset is
        refused when the task is built, :class:`Classification`, so that presets resolve
        without one)."""
        if not str(self.label).strip():
            raise ConfigError("label must name the dataset's class coord (e.g. substructure)")
        class_names(self.classes)


class ClassifierModelParams(param.Parameterized):
    """The network of the classification task: a model of
    :data:`engine.nn.registry.CLASSIFIERS` with a logits head."""

    model = param.Selector(
        default="resnet18",
        objects=list(CLASSIFIERS),
        doc="Network, by name in engine.nn.registry (resnet18, resnet_cbam, cnn, or vit_small: a small "
        "Vision Transformer), built with a class-logits head.",
    )
    width = param.Integer(
        16,
        bounds=(1, 512),
        doc="Channels of the network's first stage (doubling per stage); vit_small: tokens of "
        "4*width dimensions.",
    )
    circular_padding = param.Boolean(
        False,
        doc="Periodic padding in convolutions; off: zeros (lens images are not periodic).",
    )
    stem = param.Selector(
        default="large",
        objects=["large", "small"],
        doc="ResNets only: large = the ImageNet stem of ResNet-18 (7x7 conv stride 2 + 3x3 "
        "max-pool stride 2, He et al. 2016; as DeepLense's ResNet baseline; 11x faster at 64^2 "
        "than small on this CPU) or small = 3x3 conv at full resolution (the maps' stem).",
    )
    patch_size = param.Integer(
        8,
        bounds=(1, 64),
        doc="vit_small only: side of its square patches, pixels (divides the size).",
    )
    depth = param.Integer(6, bounds=(1, 48), doc="vit_small only: number of transformer blocks.")

    def model_kwargs(self, in_channels: int, n_outputs: int) -> dict[str, Any]:
        """Keyword arguments of ``build_model(self.model, ...)`` for ``n_outputs`` classes
        (plain values; ``head="logits"``)."""
        kwargs: dict[str, Any] = {
            "in_channels": int(in_channels),
            "n_params": int(n_outputs),
            "width": int(self.width),
            "circular_padding": bool(self.circular_padding),
            "head": "logits",
        }
        if self.model == "vit_small":
            kwargs.update(patch_size=int(self.patch_size), depth=int(self.depth))
        elif self.model in ("resnet18", "resnet_cbam"):
            kwargs["stem"] = str(self.stem)
        return kwargs


def rotate_images(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each square image of a batch about its centre (bilinear, zeros outside).

    Output pixel centre ``p`` (relative to the image centre) takes the bilinear interpolation
    of the input at ``R(θ) p``: the image turns by −θ (clockwise for θ > 0 with y pointing
    down the rows). Implemented with :func:`torch.nn.functional.affine_grid` and
    :func:`~torch.nn.functional.grid_sample` (``mode="bilinear"``, ``padding_mode="zeros"``,
    ``align_corners=False``: the centre is that of the pixel grid, (N − 1)/2 in index units).

    Parameters
    ----------
    x : torch.Tensor (B, C, N, N) float
        Images, any units (all channels of an image turn together).
    angles : torch.Tensor (B,)
        Angles in radians, on the device of ``x``.

    Returns
    -------
    torch.Tensor (B, C, N, N), dtype and device of ``x``. Flux is conserved up to the
    interpolation error for light inside the inscribed disc; flux that turns out of the square
    is lost; angles that are multiples of π/2 reproduce the image to float precision.

    Raises
    ------
    ValueError
        Images that are not square, or ``angles`` of another length than the batch.
    """
    b, _c, h, w = x.shape
    if h != w:
        raise ValueError(f"rotate_images needs square images, got {h}x{w}")
    if angles.shape != (b,):
        raise ValueError(f"angles of shape {tuple(angles.shape)} for a batch of {b}")
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), [b, 1, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class Classification(Task):
    """Classifier of images into classes with a cross-entropy loss (module docstring).

    Parameters
    ----------
    settings : engine.train.settings.TrainParams or None
        The run's settings (task ``classification``); None only through :meth:`from_state`.
    device : torch.device

    Raises
    ------
    ConfigError
        No dataset, a bad one (see :class:`~engine.data.classes.ClassMaps`), unknown class
        names, one class only, a val split of fewer than two classes, constant images, or a
        vit_small whose patches do not divide the images.
    """

    name = "classification"
    params_class = ClassificationParams
    model_params_class = ClassifierModelParams
    selection = ("auc", "max")
    sample_unit = "images"

    def __init__(self, settings, device):
        super().__init__(settings, device)
        self._perms: dict[int, torch.Tensor] = {}
        if settings is None:
            return
        s = settings
        if not s.dataset:
            raise ConfigError(
                "task classification trains on a labelled dataset: set dataset=SPEC (e.g. a "
                ".zarr of python -m engine dataset --kind strong_lens, or folder:DIR with a "
                "labels.csv of file,substructure)"
            )
        src = ClassMaps(s.dataset, str(s.label).strip())
        self.source = src
        where = f"dataset={s.dataset!r}"
        classes = choose_classes(src.values("train"), src.label, class_names(s.classes), where)
        labels = {}
        for split in ("train", "val"):
            labels[split] = encode_labels(src.values(split), classes, f"{where} ({split} split)")
        if len(labels["val"].unique()) < 2:
            raise ConfigError(
                f"{where}: the val split holds one class only; its AUC is undefined (use a "
                "larger dataset)"
            )
        self.labels = labels
        norm = fit_normalisation(src.maps("train"), s.transform, where)
        self._setup(classes, src.label, norm, src.channels, src.kind, src.size, src.pixel_scale)
        if s.model == "vit_small" and src.size % int(s.patch_size):
            raise ConfigError(
                f"model=vit_small: patch_size={s.patch_size} does not divide the {src.size}-pixel "
                "images; choose a divisor of the size"
            )

    def _setup(self, classes, label, norm, channels, kind, size, pixel_scale) -> None:
        self.classes = tuple(str(c) for c in classes)
        self.label = str(label)
        self.norm = dict(norm)
        self.channels = int(channels)
        self.kind = str(kind)
        self.size = int(size)
        self.pixel_scale = None if pixel_scale is None else float(pixel_scale)

    # -- networks ------------------------------------------------------------------------------

    def network_specs(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """``{"model": (name, kwargs)}``: the model settings with a logits head of K classes."""
        s = self.settings
        kwargs = ClassifierModelParams.model_kwargs(s, self.channels, len(self.classes))
        return {"model": (s.model, kwargs)}

    def build_networks(self) -> dict[str, nn.Module]:
        """One network ``model`` (``(B, C, N, N) → (B, K)`` logits)."""
        name, kwargs = self.network_specs()["model"]
        return {"model": build_model(name, **kwargs)}

    # -- data ----------------------------------------------------------------------------------

    def encode(self, maps: torch.Tensor) -> torch.Tensor:
        """Raw images ``(B, C, N, N)`` (image units) → network inputs, float32 on the task's
        device (:func:`apply_normalisation` with the saved numbers)."""
        return apply_normalisation(maps.to(self.device, torch.float32), self.norm)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The training augmentations of the settings on raw images ``x (B, C, N, N)``
        (module docstring), all draws from ``generator``."""
        s = self.settings
        if s.augment_rotate:
            angles = 2 * math.pi * torch.rand((x.shape[0],), generator=generator, device=x.device)
            x = rotate_images(x, angles)
        pixel = self.pixel_scale or 1.0
        return augment_maps(
            x,
            generator,
            flips=s.augment_flips,
            noise=s.augment_noise,
            smoothing=s.augment_smoothing / pixel,
        )

    def _rows(self, start: int, n: int) -> torch.Tensor:
        """Train-split rows of global sample positions ``start .. start+n-1``: each pass over
        the split is a permutation seeded with ``derive_seed(seed, STREAM_DATA, pass)``."""
        count = len(self.labels["train"])
        return epoch_rows(self._perms, self.settings.seed, count, start, n)

    def shard(self, step: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Shard ``index`` of the training batch of step ``step``: network inputs ``(m, C, N,
        N)`` and class indices ``(m,) int64``."""
        s = self.settings
        m = s.batch_size // s.batch_shards
        keys = (step,) if s.batch_shards == 1 else (step, index)
        gen = torch.Generator(device=self.device).manual_seed(
            derive_seed(s.seed, STREAM_TRAIN, *keys)
        )
        rows = self._rows(step * s.batch_size + index * m, m)
        x = self.source.maps("train")[rows].to(self.device)
        return self.encode(self.augment(x, gen)), self.labels["train"][rows].to(self.device)

    # -- objective -----------------------------------------------------------------------------

    def training_step(self, step, rows, nets, opt: Stepper) -> dict[str, torch.Tensor]:
        """Cross-entropy on this process's rows of the batch of ``step``; one step of
        ``model``. Logs ``loss`` (nats), ``accuracy`` of the batch and ``grad_norm``."""
        x, y = self.train_batch(step, *rows)
        with opt.autocast:
            logits = nets["model"](opt.prepare(x))
        logits = logits.float()
        loss = F.cross_entropy(logits, y)
        grad_norm = opt.step("model", loss)
        accuracy = (logits.detach().argmax(1) == y).float().mean()
        return {"loss": loss.detach(), "accuracy": accuracy, "grad_norm": grad_norm}

    def validation_data(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The val split in file order, as batches ``[(inputs, labels), ...]`` of
        ``batch_size`` images (never augmented)."""
        bs = self.settings.batch_size
        maps, y = self.source.maps("val"), self.labels["val"]
        return [
            (self.encode(maps[i : i + bs]), y[i : i + bs].to(self.device))
            for i in range(0, len(maps), bs)
        ]

    @torch.no_grad()
    def validate(self, nets, data, autocast=None) -> dict[str, float]:
        """``loss`` (mean cross-entropy, nats), ``accuracy``, ``auc`` (macro one-vs-rest ROC
        AUC over the classes present) and ``auc_<class>`` (NaN for a class absent from the
        val split)."""
        model = nets["model"]
        model.eval()
        logits, ys = [], []
        for x, y in data:
            with self.autocast_or_null(autocast):
                out = model(x)
            logits.append(out.float())
            ys.append(y)
        logit, y = torch.cat(logits), torch.cat(ys)
        probs = torch.softmax(logit, dim=1)
        per_class = one_vs_rest_auc(probs, y, len(self.classes))
        present = [a for a in per_class if math.isfinite(a)]
        out = {
            "loss": float(F.cross_entropy(logit, y)),
            "accuracy": float((probs.argmax(1) == y).float().mean()),
            "auc": float(np.mean(present)) if present else math.nan,
        }
        for name, a in zip(self.classes, per_class, strict=True):
            out[f"auc_{name}"] = a
        return out

    # -- state and inference -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """``classes`` (output order), ``label``, ``normalisation`` (transform, softening, mean,
        std), ``channels``, ``kind``, ``size`` (pixels), ``pixel_scale`` (arcsec/pixel or
        None)."""
        return {
            "classes": list(self.classes),
            "label": self.label,
            "normalisation": dict(self.norm),
            "channels": self.channels,
            "kind": self.kind,
            "size": self.size,
            "pixel_scale": self.pixel_scale,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device) -> Classification:
        """The task's prediction path from a checkpoint's ``task_state`` (no data set-up)."""
        task = cls(None, device)
        task._setup(
            state["classes"],
            state["label"],
            state["normalisation"],
            state.get("channels", 1),
            state.get("kind", ""),
            state["size"],
            state.get("pixel_scale"),
        )
        return task

    def describe(self) -> dict[str, Any]:
        """Plain summary for ``config.json``: kind, dataset, label, classes, images per class
        and split, normalisation, channels, size, pixel scale."""
        counts = {
            split: {c: int((y == i).sum()) for i, c in enumerate(self.classes)}
            for split, y in self.labels.items()
        }
        return {
            "kind": self.kind,
            "dataset": self.source.dataset,
            "label": self.label,
            "classes": list(self.classes),
            "images": counts,
            "normalisation": dict(self.norm),
            "channels": self.channels,
            "size": self.size,
            "pixel_scale": self.pixel_scale,
        }

    def map_config(self) -> dict[str, Any]:
        """``{"kind": ..., setting: value}`` of the training images
        (:meth:`~engine.data.classes.ClassMaps.map_config`)."""
        return self.source.map_config()

    @torch.no_grad()
    def predict(self, model: nn.Module, maps: torch.Tensor) -> torch.Tensor:
        """Class probabilities of raw images.

        Parameters
        ----------
        model : nn.Module
            The trained network (eval mode).
        maps : torch.Tensor (B, N, N) or (B, C, N, N)
            Raw images in the units of the training images.

        Returns
        -------
        torch.Tensor (B, K) float32, rows summing to 1, columns in the order of :attr:`classes`.
        """
        x = maps.unsqueeze(1) if maps.ndim == 3 else maps
        return torch.softmax(model(self.encode(x)).float(), dim=1)


def fit_normalisation(maps: torch.Tensor, transform: str, where: str) -> dict[str, Any]:
    """The fixed input normalisation of the module docstring, from the train images.

    Parameters
    ----------
    maps : torch.Tensor (n, C, N, N) float32
        Raw train images (image units).
    transform : {"asinh", "none"}
    where : str
        The dataset, for messages.

    Returns
    -------
    dict
        ``{"transform", "softening" (image units; 1.0 for none), "mean", "std"}``, floats.

    Raises
    ------
    ConfigError
        Unknown transform, or images whose (transformed) pixels do not vary.
    """
    if transform not in TRANSFORMS:
        raise ConfigError(f"transform={transform!r} must be one of {', '.join(TRANSFORMS)}")
    x = maps.double()
    softening = 1.0
    if transform == "asinh":
        softening = float(x.std())
        if not softening > 0:
            raise ConfigError(f"{where}: the train images are constant; nothing to classify")
        x = torch.asinh(x / softening)
    mean, std = float(x.mean()), float(x.std())
    if not std > 0:
        raise ConfigError(f"{where}: the train images are constant; nothing to classify")
    return {"transform": transform, "softening": softening, "mean": mean, "std": std}


def apply_normalisation(x: torch.Tensor, norm: Mapping[str, Any]) -> torch.Tensor:
    """``(x' − mean) / std`` with ``x' = asinh(x / softening)`` (transform asinh) or ``x``
    (none): raw images ``(…)`` float → normalised, same shape and dtype."""
    if norm["transform"] == "asinh":
        x = torch.asinh(x / float(norm["softening"]))
    return (x - float(norm["mean"])) / float(norm["std"])


def one_vs_rest_auc(probs: torch.Tensor, y: torch.Tensor, n_classes: int) -> list[float]:
    """Per-class one-vs-rest ROC AUC of class probabilities (torchmetrics
    ``multiclass_auroc``, ``average=None``).

    Parameters
    ----------
    probs : torch.Tensor (B, K) float
        Class probabilities (or any scores; only their order per column matters).
    y : torch.Tensor (B,) int64
        True classes in [0, K).
    n_classes : int
        K.

    Returns
    -------
    list of float (K,)
        AUC of column k separating class k from the rest, in [0, 1]; NaN for a class with no
        positive or no negative sample (undefined; torchmetrics would return 0).
    """
    from torchmetrics.functional.classification import multiclass_auroc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "No positive samples ..." of absent classes
        auc = multiclass_auroc(probs.float(), y, n_classes, average=None, thresholds=None)
    counts = torch.bincount(y, minlength=n_classes)
    defined = (counts > 0) & (counts < len(y))
    return [
        float(a) if ok else math.nan for a, ok in zip(auc.tolist(), defined.tolist(), strict=True)
    ]
