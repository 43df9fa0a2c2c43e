"""Conditional diffusion of maps: a denoising diffusion model (Ho et al. 2020, "Denoising
diffusion probabilistic models", NeurIPS) of ``(B, C, N, N)`` maps conditioned on continuous
parameters and/or a discrete class, with diffusers' noise schedulers and U-Net
(:class:`engine.nn.unet.ConditionalUNet`).

Data, the map transform (ln(1 + δ) and per-channel standardisation), the normalised labels
``y ∈ [0, 1]^P`` and the validation FID are those of :class:`engine.tasks.generative
.GenerativeTask`; the diffusion acts on the transformed maps ``x_0`` (unit variance per channel).

Training (DDPM): a time step ``t`` uniform in ``{0, …, train_timesteps − 1}`` and noise
``ε ~ N(0, 1)`` per map, ``x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε`` (``DDPMScheduler.add_noise``); the
U-Net predicts, from ``(x_t, t, y)``, either ε (``prediction_type=epsilon``, Ho et al. 2020,
eq. 14) or the velocity ``v = √ᾱ_t ε − √(1 − ᾱ_t) x_0`` (``v_prediction``, Salimans & Ho 2022,
"Progressive distillation for fast sampling of diffusion models", ICLR, §4); the loss is the
mean squared error of that prediction (float32). ``t`` and ε of step ``s`` come from a generator
seeded with ``derive_seed(seed, STREAM_TRAIN, s, NOISE_KEY)``, drawn for the whole global batch
(each DDP process takes its rows), so a resumed run reaches bit-identical weights and a DDP run
trains on the same noisy batches.

Classes (setting ``label``; e.g. the substructure none/cdm/vortex of strong-lens images)
-------------------------------------------------------------------------------------------
With ``label=NAME`` the task reads the dataset's per-sample class coord ``NAME`` as the
classification task does (:class:`ClassConditionedMaps`: :class:`~engine.tasks.classification.
ClassMaps`, :func:`~engine.tasks.classification.choose_classes` — the setting ``classes``, else
the label's declared order, substructure → none, cdm, vortex — and
:func:`~engine.tasks.classification.encode_labels`), builds the U-Net with one class embedding
per class (``n_classes = K``, diffusers' ``num_class_embeds``) and saves the class names, the
label and the images' layout (name, attrs, pixel coords) in the task state, so that generated
images come back as the data's DataArray. ``targets=none`` conditions on the class alone; named
targets condition on them besides the class. Inside the task the conditioning of a map is one
row ``(P + 1)``: the P normalised parameters, then the class index (a float holding an integer),
so batches, validation and sampling carry it like the parameters.

Classifier-free guidance (optional; Ho & Salimans 2022, "Classifier-free diffusion guidance",
arXiv:2207.12598): with ``p_uncond > 0`` the U-Net has a null class K, and each training map's
class is replaced by it with probability ``p_uncond`` (drawn from the step's generator after t and
ε); sampling with weight w = ``guidance_scale`` (or ``engine sample --guidance``) uses the
prediction ``(1 + w) f(x_t, c) − w f(x_t, ∅)``. w > 0 trades diversity for class fidelity; the
default w = 0 is the plain conditional model, whose samples should follow the class's own
distribution (the evaluation compares it with real images).

Images that are not periodic (kind ``strong_lens``) need ``circular_padding=false`` (zero
padding; refused otherwise), and positive images with noise ``asinh_channels=all``
(:mod:`engine.tasks.generative`: asinh(x / s), s = 1.4826 MAD ≈ the noise level, then
standardisation). Augmentation: ``augment_flips`` (the 8 symmetries of the square are exact for
lens images); no rotations by other angles (interpolation would smooth the noise the generator
must reproduce).

Schedules (``beta_schedule``): ``squaredcos_cap_v2``, the cosine schedule ᾱ_t ∝ cos²((t/T +
0.008)/1.008 · π/2) of Nichol & Dhariwal 2021 ("Improved denoising diffusion probabilistic
models", ICML, eq. 17), or ``linear`` β from 1e-4 to 0.02 (Ho et al. 2020).

Defaults and why
----------------
* ``v_prediction`` with the cosine schedule: at t = T − 1 the cosine schedule reaches ᾱ ≈ 2e-9
  (zero signal), where predicting ε makes the x_0 estimate ``(x_t − √(1−ᾱ) ε̂)/√ᾱ`` amplify the
  network's error ~10⁴ times, while ``x̂_0 = √ᾱ x_t − √(1−ᾱ) v̂`` stays bounded at every t.
  ``epsilon`` with ``squaredcos_cap_v2`` is therefore refused (ConfigError); ``epsilon`` with
  ``linear`` (ᾱ_T ≈ 4e-5) is allowed.
* No classifier-free guidance for map emulators (for class-conditional models it is optional,
  see "Classes"): a guidance weight w > 0 sharpens the conditional distribution
  and shrinks the sample variance, which would bias the cosmic variance an emulator must
  reproduce; the model is a plain conditional one (as in Mudur et al. 2023, arXiv:2312.07534,
  "Cosmological field emulation and parameter inference with diffusion models").
* Selection of ``best.pt`` by the validation ``loss`` (the denoising MSE at fixed t and
  noise). The shipped ``diffusion32`` run showed why not the base class's ``fid``: over 10
  epochs the validation FID of summary features (256 maps, 20 DDIM steps) stayed within
  1.12–1.39 (floor 0.14), i.e. noise, and picked the first epoch, whose P(k) error was 4× the
  later ones', while the loss fell at every epoch (0.718 → 0.634). ``fid``, ``fid_floor`` and
  ``pk_error`` are still logged each validation, on ``val_generated`` maps (default 256) with
  ``val_sample_steps`` DDIM steps (default 20).
* EMA of the weights via the loop's ``ema_decay`` (presets: 0.999; validation, checkpoints'
  ``state`` and sampling use the average): the standard practice of diffusion models since
  Ho et al. 2020 (0.9999 there), as the raw weights of small-batch training fluctuate from
  step to step.

Sampling (:meth:`ConditionalDiffusion.sample_normalised`): DDIM (Song, Meng & Ermon 2021,
"Denoising diffusion implicit models", ICLR, eq. 12 with η = 0: deterministic given x_T) from
``x_T ~ N(0, 1)`` drawn with the caller's generator, ``sample_steps`` steps with "trailing"
spacing (the first step at t = T − 1, where x_T is drawn; Lin et al. 2024, "Common diffusion
noise schedules and sample steps are flawed", WACV, §3.3), no clipping of x̂_0 (the maps are
standardised, not in [−1, 1]), the last step to ᾱ = 1 (x̂_0 itself). ``sampler=dpm``:
DPM-Solver++ (2nd-order multistep; Lu et al. 2022, arXiv:2211.01095), diffusers'
``DPMSolverMultistepScheduler``, often as good in fewer steps. Both schedulers are built from
the training scheduler's config (diffusers' configs round-trip between schedulers), which is
saved in the task state; no scheduler holds weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import param
import torch
from torch import nn
from torch.nn import functional as F

from engine.data.sources import STREAM_TRAIN, STREAM_VAL, derive_seed
from engine.nn.registry import build_model
from engine.params import ConfigError
from engine.tasks.base import Task
from engine.tasks.classification import (
    ClassificationParams,
    ClassMaps,
    choose_classes,
    class_names,
    encode_labels,
)
from engine.tasks.generative import GenerativeParams, GenerativeTask
from engine.tasks.regression import target_names
from engine.tasks.settings import ModelParams, borrow

__all__ = [
    "ClassConditionedMaps",
    "ConditionalDiffusion",
    "DiffusionParams",
    "UNetModelParams",
    "make_scheduler",
    "no_targets",
]

#: Seed key (with STREAM_TRAIN and the step) of the time steps and noise of a training batch;
#: above any shard index of the data (batch_shards ≤ 65536).
NOISE_KEY = 1 << 20
#: Seed key (with STREAM_VAL) of the fixed time steps and noise of the validation loss.
_VAL_NOISE_KEY = 11
#: The samplers of :meth:`ConditionalDiffusion.sample_normalised`.
SAMPLERS = ("ddim", "dpm")


class DiffusionParams(GenerativeParams):
    """Settings of the conditional diffusion task (module docstring)."""

    train_timesteps = param.Integer(
        1000,
        bounds=(10, 10_000),
        doc="Number T of diffusion time steps of training (the discretisation of the noise "
        "schedule; samplers take fewer steps through them).",
    )
    beta_schedule = param.Selector(
        default="squaredcos_cap_v2",
        objects=["squaredcos_cap_v2", "linear"],
        doc="Noise schedule: squaredcos_cap_v2 (cosine, Nichol & Dhariwal 2021) or linear "
        "(beta from 1e-4 to 0.02, Ho et al. 2020).",
    )
    prediction_type = param.Selector(
        default="v_prediction",
        objects=["v_prediction", "epsilon"],
        doc="What the U-Net predicts: v_prediction (the velocity sqrt(abar) eps - sqrt(1 - "
        "abar) x0, Salimans & Ho 2022) or epsilon (the noise, Ho et al. 2020; needs "
        "beta_schedule=linear).",
    )
    sampler = param.Selector(
        default="ddim",
        objects=list(SAMPLERS),
        doc="Sampler of generated maps: ddim (deterministic DDIM, eta = 0, Song et al. 2021) or "
        "dpm (DPM-Solver++ 2nd-order multistep, Lu et al. 2022).",
    )
    sample_steps = param.Integer(
        50,
        bounds=(1, 1000),
        doc="Sampler steps per generated map by default (engine sample --steps overrides it); "
        "at most train_timesteps.",
    )
    val_sample_steps = param.Integer(
        20,
        bounds=(1, 1000),
        doc="Sampler steps of the maps generated at each validation (fid, pk_error); fewer "
        "than sample_steps to keep validation cheap.",
    )

    val_generated = param.Integer(
        256,
        bounds=(2, 100_000),
        doc="Maps generated at each validation for fid, fid_floor and pk_error: one per "
        "validation map, the first ones of the validation set (at most 512); sampling costs "
        "val_sample_steps network calls per map.",
    )
    label = param.String(
        "",
        doc="Class conditioning: the dataset's per-sample class coord (e.g. substructure of "
        "strong-lens images: none, cdm, vortex), read as the classification task does; empty: "
        "no classes (conditioning on the continuous targets only). With a label, targets=none "
        "conditions on the class alone.",
    )
    classes = borrow(
        ClassificationParams,
        "classes",
        "(Diffusion: the order of the class embeddings; label only.)",
    )
    p_uncond = param.Number(
        0.0,
        bounds=(0.0, 0.5),
        doc="Classifier-free guidance (Ho & Salimans 2022): probability that a training map's "
        "class is replaced by the null class (0: no null class, no guidance possible; label "
        "only).",
    )
    guidance_scale = param.Number(
        0.0,
        bounds=(0.0, 20.0),
        doc="Classifier-free guidance weight w of sampling by default: prediction (1 + w) "
        "f(x, c) - w f(x, null) (0: the plain conditional model; needs p_uncond > 0; engine "
        "sample --guidance overrides it).",
    )

    def check(self) -> None:
        """The generator checks (:meth:`GenerativeParams.check`; with a ``label`` the targets
        may be ``none``), then the schedule's and the classes'.

        Raises
        ------
        ConfigError
            Sampling steps above ``train_timesteps``, ``prediction_type=epsilon`` with the
            cosine schedule (module docstring), bad ``classes``,
            ``p_uncond`` or ``guidance_scale`` without a label, guidance without ``p_uncond``.
        """
        label = str(self.label).strip()
        if label:  # a missing dataset is refused when the task is built (presets resolve)
            class_names(self.classes)
        else:
            for name in ("p_uncond", "guidance_scale"):
                if getattr(self, name) > 0:
                    raise ConfigError(
                        f"{name}={getattr(self, name)} is for class-conditional models: set "
                        "label=NAME (the dataset's class coord) or leave it at 0"
                    )
            if str(self.classes).strip():
                raise ConfigError(f"classes={self.classes!r} needs label=NAME (the class coord)")
        if self.guidance_scale > 0 and self.p_uncond <= 0:
            raise ConfigError(
                f"guidance_scale={self.guidance_scale} needs a null class: train with "
                "p_uncond > 0 (e.g. 0.1)"
            )
        if label and no_targets(self.targets):
            GenerativeParams.check_maps(self)
        else:
            GenerativeParams.check(self)
        for name in ("sample_steps", "val_sample_steps"):
            if getattr(self, name) > self.train_timesteps:
                raise ConfigError(
                    f"{name}={getattr(self, name)} must be at most "
                    f"train_timesteps={self.train_timesteps}"
                )
        _check_schedule(self.prediction_type, self.beta_schedule)


def no_targets(text: str) -> bool:
    """True when ``targets`` names no continuous label: empty or ``none`` (allowed with a class
    ``label`` only)."""
    return str(text).strip().lower() in ("", "none")


def _check_schedule(prediction_type: str, beta_schedule: str) -> None:
    if prediction_type == "epsilon" and beta_schedule == "squaredcos_cap_v2":
        raise ConfigError(
            "prediction_type='epsilon' is ill-conditioned with beta_schedule='squaredcos_cap_v2' "
            "(zero signal at t = T); use prediction_type='v_prediction' or beta_schedule='linear'"
        )


class UNetModelParams(param.Parameterized):
    """The denoising U-Net (:class:`engine.nn.unet.ConditionalUNet`, registry name
    ``diffusion_unet``); its channels, size and parameters come from the data."""

    width = param.Integer(
        32,
        bounds=(4, 512),
        doc="Channels of the U-Net's first level (width*(1, 2, 4, 4, ...) per level; time "
        "embedding 4*width).",
    )
    levels = param.Integer(
        3,
        bounds=(1, 6),
        doc="Resolution levels of the U-Net (N, N/2, ...); the map size must be a multiple of "
        "2**(levels-1).",
    )
    layers_per_block = param.Integer(
        1, bounds=(1, 4), doc="Residual blocks per level of the U-Net (one more going up)."
    )
    attention = param.Boolean(
        True, doc="Self-attention at the U-Net's lowest resolution (and in its middle block)."
    )
    circular_padding = borrow(
        ModelParams,
        "circular_padding",
        "Strong-lens images are not periodic: refused on kind strong_lens (the lens_diffusion "
        "presets set it off).",
    )

    def check(self) -> None:
        """Maps generated on the fly: their ``size`` must be a multiple of ``2**(levels-1)``
        (a dataset's size is checked when the task reads it).

        Raises
        ------
        ConfigError
            ``levels`` too many for ``size``.
        """
        size = getattr(self, "size", None)
        if not getattr(self, "dataset", "") and size and size % 2 ** (self.levels - 1):
            raise ConfigError(
                f"levels={self.levels} needs a map size that is a multiple of "
                f"{2 ** (self.levels - 1)}; size={size} (allowed: levels ≤ {_max_levels(size)})"
            )

    def unet_kwargs(
        self, channels: int, size: int, n_params: int, n_classes: int = 0, null_class: bool = False
    ) -> dict[str, Any]:
        """Keyword arguments of ``build_model("diffusion_unet", ...)`` (plain values; the class
        arguments only with ``n_classes > 0``, so the kwargs of map emulators are unchanged)."""
        out: dict[str, Any] = {
            "channels": int(channels),
            "size": int(size),
            "n_params": int(n_params),
            "width": int(self.width),
            "levels": int(self.levels),
            "layers_per_block": int(self.layers_per_block),
            "attention": bool(self.attention),
            "circular_padding": bool(self.circular_padding),
        }
        if n_classes:
            out.update(n_classes=int(n_classes), null_class=bool(null_class))
        return out


def _max_levels(size: int) -> int:
    """The most U-Net levels a map of ``size`` pixels allows (1 + the power of 2 in size)."""
    return (int(size) & -int(size)).bit_length()


def make_scheduler(train_timesteps: int, beta_schedule: str, prediction_type: str):
    """diffusers' ``DDPMScheduler`` of training: ``train_timesteps`` steps of ``beta_schedule``,
    predicting ``prediction_type``, no clipping of x̂_0 (the maps are standardised, not in
    [−1, 1]).

    Raises
    ------
    ConfigError
        An unknown schedule or prediction type, or epsilon with the cosine schedule.
    """
    from diffusers import DDPMScheduler

    if beta_schedule not in DiffusionParams.param.beta_schedule.objects:
        raise ConfigError(
            f"beta_schedule={beta_schedule!r} is not allowed: one of "
            + ", ".join(map(repr, DiffusionParams.param.beta_schedule.objects))
        )
    if prediction_type not in DiffusionParams.param.prediction_type.objects:
        raise ConfigError(
            f"prediction_type={prediction_type!r} is not allowed: one of "
            + ", ".join(map(repr, DiffusionParams.param.prediction_type.objects))
        )
    _check_schedule(prediction_type, beta_schedule)
    return DDPMScheduler(
        num_train_timesteps=int(train_timesteps),
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        clip_sample=False,
    )


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """A scheduler config as plain JSON values (``torch.load(weights_only=True)``), without
    diffusers' private ``_class_name``/``_diffusers_version`` entries."""
    return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))


def _first_maps(data, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` maps of validation batches ``[(x, y), ...]``, as batches."""
    out, left = [], int(n)
    for x, y in data:
        if left <= 0:
            break
        out.append((x[:left], y[:left]))
        left -= len(out[-1][0])
    return out


def _plain_value(value):
    """An attr value as a plain JSON/pickle-safe scalar (numpy scalars unwrapped), or None for
    anything else (arrays, dicts)."""
    value = value.item() if getattr(value, "ndim", None) == 0 else value
    if isinstance(value, (bool, int, float, str)):
        return value
    return None


class ClassConditionedMaps(ClassMaps):
    """Images of a dataset with a per-sample class coord, and optional continuous labels, by
    split: the data of class-conditional diffusion (module docstring, "Classes").

    The images, splits and class names are read as the classification task reads them
    (:class:`engine.tasks.classification.ClassMaps`, :func:`~engine.tasks.classification.
    choose_classes`, :func:`~engine.tasks.classification.encode_labels`); :meth:`split` gives
    what :class:`engine.tasks.regression.Regression` expects of a source.

    Parameters
    ----------
    spec : str
        A dataset spec without a ``split`` option.
    label : str
        The class coord (e.g. ``substructure``).
    names : sequence of str
        Continuous label coords conditioned on besides the class (may be empty).
    classes : sequence of str, optional
        The class order (the ``classes`` setting); None: the label's declared order
        (substructure: none, cdm, vortex) restricted to the train split's classes.

    Attributes
    ----------
    classes : tuple of str
    names : tuple of str
    low, high : list of float
        Min and max of each continuous label on the train split (physical units).
    scale : float or list of float
        Standard deviation of the train pixels (per channel with several), image units.
    pixel : float
        Pixel side (the ``pixel_scale`` attr in arcsec, else the x-coordinate spacing).

    Raises
    ------
    ConfigError
        As :class:`~engine.tasks.classification.ClassMaps`; unknown class names in the train or
        val split, one class only, a missing or constant continuous label.
    """

    def __init__(self, spec: str, label: str, names=(), classes=None, datasets_file=None):
        self.names = tuple(names)
        self._theta: dict[str, np.ndarray] = {}
        self._tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        super().__init__(spec, label, datasets_file)
        where = f"dataset={spec!r}"
        self.classes = choose_classes(self.values("train"), self.label, classes, where)
        maps = self.maps("train")
        theta = self._theta["train"]
        self.low, self.high = [], []
        for j, name in enumerate(self.names):
            lo, hi = float(theta[:, j].min()), float(theta[:, j].max())
            if not lo < hi:
                raise ConfigError(
                    f"{where} does not vary {name} (range [{lo:g}, {hi:g}]); it cannot be "
                    "conditioned on"
                )
            self.low.append(lo)
            self.high.append(hi)
        std = maps.double().std(dim=(0, 2, 3)).tolist()
        self.scale = float(std[0]) if self.channels == 1 else [float(v) for v in std]
        x = np.asarray(self._head["x"].values, np.float64) if "x" in self._head.coords else []
        spacing = abs(float(x[1] - x[0])) if len(x) > 1 else 1.0
        self.pixel = self.pixel_scale or spacing
        self.split("val")

    def _load(self, name: str):
        maps, values = super()._load(name)
        if not self.names:
            self._theta[name] = np.zeros((len(values), 0))
            return maps, values
        da = self._read(name)
        have = [
            str(c)
            for c, v in da.coords.items()
            if v.dims == ("sample",) and np.issubdtype(v.dtype, np.number)
        ]
        missing = [n for n in self.names if n not in have]
        if missing:
            raise ConfigError(
                f"dataset={self.dataset!r} has no label {missing[0]!r} (set targets=none to "
                f"condition on the class {self.label!r} alone); its labels: "
                + (", ".join(have) or "none")
            )
        theta = np.stack([np.asarray(da[n].values, np.float64) for n in self.names], axis=1)
        if not np.all(np.isfinite(theta)):
            raise ConfigError(f"dataset={self.dataset!r}: split {name!r} holds NaN labels")
        self._theta[name] = theta
        return maps, values

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw images ``(n, C, N, N) float32`` and conditioning ``(n, P + 1) float64`` of split
        ``name`` (CPU, loaded once): the P continuous labels (physical units) and, last, the
        class index in [0, K) as a float.

        Raises
        ------
        ConfigError
            An empty split, or class names outside :attr:`classes`.
        """
        if name not in self._tensors:
            values = self.values(name)
            where = f"dataset={self.dataset!r} ({name} split)"
            index = encode_labels(values, self.classes, where).double()[:, None]
            theta = torch.from_numpy(self._theta[name])
            self._tensors[name] = (self.maps(name), torch.cat([theta, index], dim=1))
        return self._tensors[name]

    def layout(self) -> dict[str, Any]:
        """How the images are written, for generated ones to match (plain values): ``name``
        (the DataArray's name), ``attrs`` (the train split's scalar attrs), ``x``, ``y`` (the
        pixel coords, e.g. arcsec) and their ``x_attrs``, ``y_attrs``."""
        head = self._head
        out: dict[str, Any] = {"name": str(head.name) if head.name is not None else "image"}
        attrs = {str(k): _plain_value(v) for k, v in head.attrs.items()}
        out["attrs"] = {k: v for k, v in attrs.items() if v is not None}
        for axis in ("x", "y"):
            coord = head.coords.get(axis)
            values = np.asarray(coord.values if coord is not None else [], np.float64)
            out[axis] = [float(v) for v in values]
            plain = {
                str(k): _plain_value(v)
                for k, v in (coord.attrs if coord is not None else {}).items()
            }
            out[f"{axis}_attrs"] = {k: v for k, v in plain.items() if v is not None}
        return out

    def describe(self) -> dict[str, Any]:
        """Plain summary for ``config.json``: kind, dataset, label, classes, images per class and
        split, continuous names and their box, channels, size, pixel scale."""
        counts = {}
        for split, (_maps, cond) in self._tensors.items():
            idx = cond[:, -1].long()
            counts[split] = {c: int((idx == i).sum()) for i, c in enumerate(self.classes)}
        return {
            "kind": self.kind,
            "dataset": self.dataset,
            "label": self.label,
            "classes": list(self.classes),
            "images": counts,
            "names": list(self.names),
            "prior_low": list(self.low),
            "prior_high": list(self.high),
            "map_scale": self.scale,
            "channels": self.channels,
            "size": self.size,
            "pixel_scale": self.pixel_scale,
        }


class ConditionalDiffusion(GenerativeTask):
    """Conditional denoising diffusion of maps (module docstring).

    Parameters
    ----------
    settings : engine.train.settings.TrainParams or None
        The run's settings (of task ``diffusion``); None only through :meth:`from_state`.
    device : torch.device

    Raises
    ------
    ConfigError
        Bad map settings or dataset (:class:`GenerativeTask`), or a map size the U-Net's
        levels do not divide.
    """

    name = "diffusion"
    params_class = DiffusionParams
    model_params_class = UNetModelParams
    selection = ("loss", "min")
    progress_per_step = True

    def __init__(self, settings, device):
        label = str(getattr(settings, "label", "") or "").strip()
        #: Class names in embedding order (empty: no class conditioning).
        self.classes: tuple[str, ...] = ()
        #: The dataset's class coord ("" without classes).
        self.label = label
        #: Probability of the null class in training (classifier-free guidance; 0: none).
        self.p_uncond = 0.0
        #: Default guidance weight w of sampling.
        self.guidance_scale = 0.0
        #: How the training images are written (:meth:`ClassConditionedMaps.layout`), or None.
        self.layout: dict[str, Any] | None = None
        if label:
            self._init_classes(settings, device)
        else:
            super().__init__(settings, device)
        if settings is None:
            return
        s = settings
        if s.circular_padding and str(self.kind) == "strong_lens":
            raise ConfigError(
                "circular_padding=true: strong-lens images are not periodic (zero padding is "
                "right for them); set circular_padding=false (the lens_diffusion presets do)"
            )
        if self.classes:
            self.p_uncond = float(s.p_uncond)
            self.guidance_scale = float(s.guidance_scale)
        self._set_schedule(
            _plain(make_scheduler(s.train_timesteps, s.beta_schedule, s.prediction_type).config),
            s.sampler,
            s.sample_steps,
            s.val_sample_steps,
            s.val_generated,
        )
        self.size = self._map_size()

    def _init_classes(self, settings, device) -> None:
        """Set-up of a class-conditional run (setting ``label``): the
        :class:`ClassConditionedMaps` source in place of regression's labelled maps, then the
        generator's map transform (:meth:`GenerativeTask._fit_transform`)."""
        Task.__init__(self, settings, device)
        self._perms = {}
        s = settings
        if not s.dataset:
            raise ConfigError(
                f"label={self.label!r}: class conditioning reads the classes of a dataset; set "
                "dataset=SPEC (e.g. a .zarr of python -m engine dataset --kind strong_lens)"
            )
        names = () if no_targets(s.targets) else target_names(s.targets)
        if names is None:
            raise ConfigError(
                "targets='all' is not allowed with label: name the continuous labels to "
                "condition on besides the class, or targets=none"
            )
        src = ClassConditionedMaps(s.dataset, self.label, names, class_names(s.classes))
        self.source = src
        self.classes = tuple(src.classes)
        self.layout = src.layout()
        self._setup(src.names, src.low, src.high, src.scale, src.channels, src.kind)
        self.pixel = src.pixel
        self._fit_transform()

    def _set_schedule(
        self, config, sampler: str, sample_steps: int, val_steps: int, val_generated: int
    ) -> None:
        from diffusers import DDPMScheduler

        if sampler not in SAMPLERS:
            raise ConfigError(f"sampler={sampler!r} is not allowed: one of {', '.join(SAMPLERS)}")
        self.scheduler = DDPMScheduler.from_config(dict(config))
        self.prediction_type = self.scheduler.config.prediction_type
        self.sampler = str(sampler)
        self.sample_steps = int(sample_steps)
        self.val_sample_steps = int(val_steps)
        self.val_generated = int(val_generated)

    def _map_size(self) -> int:
        """N, the side of the training maps in pixels."""
        if hasattr(self.source, "split"):
            return int(self.source.split("train")[0].shape[-1])
        return int(self.settings.size)

    # -- networks ------------------------------------------------------------------------------

    def network_specs(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """``{"unet": ("diffusion_unet", kwargs)}`` from the model settings and the data.

        Raises
        ------
        ConfigError
            The map size is not a multiple of ``2**(levels - 1)``.
        """
        s = self.settings
        stride = 2 ** (s.levels - 1)
        if self.size % stride:
            raise ConfigError(
                f"levels={s.levels} needs a map size that is a multiple of {stride}; the maps "
                f"are {self.size} pixels wide (allowed: levels ≤ {_max_levels(self.size)})"
            )
        kwargs = UNetModelParams.unet_kwargs(
            s, self.channels, self.size, len(self.names), len(self.classes), self.p_uncond > 0
        )
        return {"unet": ("diffusion_unet", kwargs)}

    def build_networks(self) -> dict[str, nn.Module]:
        """One network ``unet`` (:class:`engine.nn.unet.ConditionalUNet`)."""
        name, kwargs = self.network_specs()["unet"]
        return {"unet": build_model(name, **kwargs)}

    # -- objective -----------------------------------------------------------------------------

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the U-Net must predict for clean maps ``x0``, noise and time steps ``t (B,)``:
        the noise (epsilon) or the velocity (v_prediction); ``(B, C, N, N)`` float32."""
        if self.prediction_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(x0, noise, t)

    # -- conditioning --------------------------------------------------------------------------

    def normalise(self, theta: torch.Tensor) -> torch.Tensor:
        """Physical conditioning ``(B, P)`` → normalised ``(B, P)`` float32 on the task's
        device; with classes ``(B, P + 1)``, the last column (the class index) kept as it is."""
        if not self.classes:
            return super().normalise(theta)
        theta = theta.to(self.device, torch.float32)
        p = len(self.names)
        return torch.cat([super().normalise(theta[:, :p]), theta[:, p:]], dim=1)

    def to_physical(self, y: torch.Tensor) -> torch.Tensor:
        """Normalised conditioning → physical (inverse of :meth:`normalise`)."""
        if not self.classes:
            return super().to_physical(y)
        p = len(self.names)
        return torch.cat([super().to_physical(y[:, :p]), y[:, p:]], dim=1)

    def class_index(self, name: str) -> int:
        """The index of class ``name`` in :attr:`classes`.

        Raises
        ------
        ConfigError
            A model without classes, or a name that is not one of its classes (one line).
        """
        if not self.classes:
            raise ConfigError(
                f"class {name!r}: this generator has no classes (it is conditioned on "
                f"{', '.join(self.names) or 'nothing'})"
            )
        if str(name) not in self.classes:
            raise ConfigError(
                f"class {name!r} is not one of this generator's classes: {', '.join(self.classes)}"
            )
        return self.classes.index(str(name))

    def _net(self, unet, x, t, y, drop: torch.Tensor | None = None):
        """The U-Net's prediction for conditioning ``y`` in the task's packed form (``(B, P)``,
        or ``(B, P + 1)`` with the class index last); ``drop (B,) bool`` replaces those rows'
        class with the null class."""
        if not self.classes:
            return unet(x, t, y)
        p = len(self.names)
        labels = y[:, p].round().long()
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, len(self.classes)), labels)
        return unet(x, t, y[:, :p], labels=labels)

    def denoising_loss(
        self, unet, x0, y, t, noise, autocast=None, prepare=None, drop=None
    ) -> torch.Tensor:
        """Mean squared error (0-d float32) of the U-Net's prediction on ``x_t`` made from
        ``x0 (B, C, N, N)``, ``noise`` (same shape) and integer ``t (B,)``; ``y (B, P)`` (with
        classes ``(B, P + 1)``, the class index last); ``drop (B,) bool``: rows trained on the
        null class (classifier-free guidance)."""
        xt = self.scheduler.add_noise(x0, noise, t)
        if prepare is not None:
            xt = prepare(xt)
        with self.autocast_or_null(autocast):
            out = self._net(unet, xt, t, y, drop)
        return F.mse_loss(out.float(), self.target(x0, noise, t).float())

    def training_step(self, step, rows, nets, opt) -> dict[str, torch.Tensor]:
        """Denoising MSE on this process's rows of the batch of ``step`` (module docstring);
        one optimiser step of ``unet``."""
        s = self.settings
        start, stop = rows
        x0, y = self.train_batch(step, start, stop)
        gen = torch.Generator(device=self.device).manual_seed(
            derive_seed(s.seed, STREAM_TRAIN, step, NOISE_KEY)
        )
        n = s.batch_size
        t = torch.randint(
            0, self.scheduler.config.num_train_timesteps, (n,), generator=gen, device=self.device
        )[start:stop]
        noise = torch.randn((n, *x0.shape[1:]), generator=gen, device=self.device)[start:stop]
        drop = None
        if self.p_uncond > 0:  # drawn after t and noise: runs without guidance are unchanged
            drop = (torch.rand((n,), generator=gen, device=self.device) < self.p_uncond)[start:stop]
        loss = self.denoising_loss(nets["unet"], x0, y, t, noise, opt.autocast, opt.prepare, drop)
        grad_norm = opt.step("unet", loss)
        return {"loss": loss.detach(), "grad_norm": grad_norm}

    @torch.no_grad()
    def validate(self, nets, data, autocast=None) -> dict[str, float]:
        """``loss``: the denoising MSE on the validation maps at time steps and noise drawn once
        from ``derive_seed(seed, STREAM_VAL, 11)`` (the same every epoch); ``fid``,
        ``fid_floor``, ``pk_error`` of ``val_generated`` maps sampled with
        ``val_sample_steps`` steps at the parameters of the first ``val_generated``
        validation maps (:meth:`GenerativeTask.sample_metrics`)."""
        unet = nets["unet"]
        unet.eval()
        gen = torch.Generator(device=self.device).manual_seed(
            derive_seed(self.settings.seed, STREAM_VAL, _VAL_NOISE_KEY)
        )
        total, count = 0.0, 0
        for x0, y in data:
            t = torch.randint(
                0,
                self.scheduler.config.num_train_timesteps,
                (len(x0),),
                generator=gen,
                device=self.device,
            )
            noise = torch.randn(x0.shape, generator=gen, device=self.device)
            total += float(self.denoising_loss(unet, x0, y, t, noise, autocast)) * len(x0)
            count += len(x0)
        out = {"loss": total / max(count, 1)}
        first = _first_maps(data, self.val_generated)
        out.update(self.sample_metrics(nets, first, steps=self.val_sample_steps))
        return out

    # -- sampling ------------------------------------------------------------------------------

    def sampling_scheduler(self, sampler: str | None = None):
        """A fresh sampling scheduler (no state shared between calls) from the training
        scheduler's config: DDIM (η = 0, trailing spacing, no clipping, final ᾱ = 1) or
        DPM-Solver++ (module docstring).

        Raises
        ------
        ConfigError
            An unknown sampler.
        """
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        sampler = sampler or self.sampler
        config = dict(self.scheduler.config)
        if sampler == "ddim":
            return DDIMScheduler.from_config(
                config,
                clip_sample=False,
                set_alpha_to_one=True,
                steps_offset=0,
                timestep_spacing="trailing",
            )
        if sampler == "dpm":
            return DPMSolverMultistepScheduler.from_config(
                config,
                algorithm_type="dpmsolver++",
                solver_order=2,
                timestep_spacing="trailing",
                thresholding=False,
            )
        raise ConfigError(f"sampler={sampler!r} is not allowed: one of {', '.join(SAMPLERS)}")

    @torch.no_grad()
    def sample_normalised(
        self,
        nets: Mapping[str, nn.Module],
        y: torch.Tensor,
        generator: torch.Generator,
        steps: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        sampler: str | None = None,
        guidance: float | None = None,
    ) -> torch.Tensor:
        """Maps in network space sampled at normalised parameters (and classes).

        Parameters
        ----------
        nets : mapping of str to nn.Module
            ``{"unet": ConditionalUNet}`` (eval mode: EMA weights from a checkpoint).
        y : torch.Tensor (B, P) float
            Normalised parameters in [0, 1]; with classes ``(B, P + 1)``, the class index (a
            float holding an integer in [0, K)) last.
        generator : torch.Generator
            On the task's device; draws x_T (and nothing else with DDIM: same generator state
            ⇒ same maps).
        steps : int, optional
            Sampler steps (default :attr:`sample_steps`), 1 ≤ steps ≤ train_timesteps.
        progress : callable, optional
            ``progress(step, steps)`` after each step (step = 1 … steps).
        sampler : {"ddim", "dpm"}, optional
            Default: the task's ``sampler`` setting.
        guidance : float, optional
            Classifier-free guidance weight w ≥ 0 (default :attr:`guidance_scale`): the
            prediction ``(1 + w) f(x_t, c) − w f(x_t, ∅)`` (Ho & Salimans 2022, eq. 6, written
            for the network's output, ε or v: both are linear in ε at fixed x_t); w = 0 is the
            plain conditional model (one network call per step, no null class needed).

        Returns
        -------
        torch.Tensor (B, C, N, N) float32 on the task's device (decode with :meth:`decode`).

        Raises
        ------
        ConfigError
            ``steps`` out of range, an unknown sampler, or guidance > 0 for a model without
            a null class.
        """
        unet = nets["unet"]
        unet = getattr(unet, "module", unet)  # DDP
        n_train = int(self.scheduler.config.num_train_timesteps)
        steps = int(self.sample_steps if steps is None else steps)
        if not 1 <= steps <= n_train:
            raise ConfigError(f"steps={steps} must be in [1, {n_train}] (train_timesteps)")
        w = self.check_guidance(guidance)
        sched = self.sampling_scheduler(sampler)
        sched.set_timesteps(steps)  # on the CPU: the schedulers index their CPU tables with t
        y = y.to(self.device, torch.float32)
        shape = (len(y), unet.channels, unet.size, unet.size)
        x = torch.randn(shape, generator=generator, device=self.device)
        timesteps = [int(t) for t in sched.timesteps]
        if w > 0:
            y2 = torch.cat([y, y])
            drop = torch.arange(2 * len(y), device=self.device) >= len(y)
        for i, t in enumerate(timesteps):
            if w > 0:
                tt = torch.full((2 * len(y),), t, device=self.device)
                cond, uncond = self._net(unet, torch.cat([x, x]), tt, y2, drop).float().chunk(2)
                out = (1 + w) * cond - w * uncond
            else:
                out = self._net(unet, x, torch.full((len(y),), t, device=self.device), y).float()
            x = sched.step(out, t, x).prev_sample
            if progress is not None:
                progress(i + 1, len(timesteps))
        return x

    def check_guidance(self, guidance: float | None) -> float:
        """The guidance weight to use: ``guidance``, or :attr:`guidance_scale` when None.

        Raises
        ------
        ConfigError
            A negative or non-finite weight, or w > 0 for a model trained without a null class.
        """
        w = self.guidance_scale if guidance is None else float(guidance)
        if not (math.isfinite(w) and w >= 0):
            raise ConfigError(f"guidance={guidance!r} must be a number >= 0")
        if w > 0 and self.p_uncond <= 0:
            raise ConfigError(
                f"guidance={w:g} needs a model trained with a null class (p_uncond > 0; "
                "classifier-free guidance); this one has none: use guidance 0"
            )
        return w

    @torch.no_grad()
    def generate(
        self,
        nets: Mapping[str, nn.Module],
        theta,
        generator: torch.Generator,
        batch_size: int = 64,
        progress=None,
        labels=None,
        **options,
    ) -> torch.Tensor:
        """Maps in map units at physical parameters ``theta`` and, for a class-conditional
        model, classes ``labels`` (:meth:`GenerativeTask.generate` otherwise).

        Parameters
        ----------
        nets, generator, batch_size, progress
            As :meth:`GenerativeTask.generate`.
        theta : array-like (B, P) float, or None
            Physical values of :attr:`names`; None (or ``(B, 0)``) for a class-only model.
        labels : sequence (B,) of str or int, optional
            Class names (or indices into :attr:`classes`); required with classes, refused
            without.
        **options
            ``steps``, ``sampler``, ``guidance`` (:meth:`sample_normalised`).

        Returns
        -------
        torch.Tensor (B, C, N, N) float32 on the task's device, map units.

        Raises
        ------
        ConfigError
            Labels missing, unknown or given to a model without classes; theta of the wrong
            width or outside the label box; bad sampling options.
        """
        if not self.classes:
            if labels is not None:
                raise ConfigError(
                    "a class was given, but this generator has no classes: it is conditioned on "
                    + ", ".join(self.names)
                )
            return super().generate(nets, theta, generator, batch_size, progress, **options)
        if labels is None:
            raise ConfigError(f"give the class of each map: one of {', '.join(self.classes)}")
        index = torch.tensor(
            [int(v) if isinstance(v, (int, np.integer)) else self.class_index(v) for v in labels],
            dtype=torch.float32,
            device=self.device,
        )
        if bool(((index < 0) | (index >= len(self.classes))).any()):
            raise ConfigError(f"class indices must lie in [0, {len(self.classes)})")
        if self.names:
            y = self.normalised_parameters(theta)
        else:
            if theta is not None and np.asarray(theta).size:
                raise ConfigError("this generator takes no parameters, only a class")
            y = torch.zeros((len(index), 0), device=self.device)
        if len(y) != len(index):
            raise ConfigError(f"{len(y)} parameter rows for {len(index)} class labels")
        y = torch.cat([y, index[:, None]], dim=1)
        self.check_guidance(options.get("guidance"))
        return self.generate_normalised(nets, y, generator, batch_size, progress, **options)

    # -- state ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The generator's state (:meth:`GenerativeTask.state`) plus ``scheduler`` (the
        DDPM config, plain values), ``sampler``, ``sample_steps``, ``val_sample_steps``,
        ``val_generated``; with classes also ``classes``, ``label``, ``p_uncond``,
        ``guidance_scale`` and ``layout`` (:meth:`ClassConditionedMaps.layout`)."""
        out = super().state()
        out.update(
            scheduler=_plain(self.scheduler.config),
            sampler=self.sampler,
            sample_steps=self.sample_steps,
            val_sample_steps=self.val_sample_steps,
            val_generated=self.val_generated,
        )
        if self.classes:
            out.update(
                classes=list(self.classes),
                label=self.label,
                p_uncond=self.p_uncond,
                guidance_scale=self.guidance_scale,
                layout=self.layout,
            )
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device) -> ConditionalDiffusion:
        """The task for sampling from a checkpoint's ``task_state`` (no data); the training
        scheduler rebuilt from its saved config."""
        task = super().from_state(state, device)
        task._set_schedule(
            state["scheduler"],
            state.get("sampler", "ddim"),
            int(state.get("sample_steps", 50)),
            int(state.get("val_sample_steps", 20)),
            int(state.get("val_generated", 256)),
        )
        task.classes = tuple(str(c) for c in state.get("classes") or ())
        task.label = str(state.get("label", "") or "")
        task.p_uncond = float(state.get("p_uncond", 0.0) or 0.0)
        task.guidance_scale = float(state.get("guidance_scale", 0.0) or 0.0)
        task.layout = state.get("layout")
        return task
