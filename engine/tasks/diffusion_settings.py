"""Settings of the conditional diffusion task (:mod:`engine.tasks.diffusion`): the task's
:class:`DiffusionParams` (schedule, sampler, validation sampling, classes, guidance), the
U-Net's :class:`UNetModelParams`, and :func:`make_scheduler`, the training noise schedule they
define (diffusers' ``DDPMScheduler``).

The schedules (``beta_schedule``: cosine ``squaredcos_cap_v2`` or ``linear``) and the defaults
(``v_prediction``; ``epsilon`` with the cosine schedule is refused) are explained in
:mod:`engine.tasks.diffusion` ("Schedules", "Defaults and why").

The task itself is :class:`engine.tasks.diffusion.ConditionalDiffusion`, which re-exports these
names.
"""

from __future__ import annotations

from typing import Any

import param

from engine.data.classes import class_names
from engine.params import ConfigError
from engine.tasks.classification import ClassificationParams
from engine.tasks.diffusion_sampling import SAMPLERS
from engine.tasks.generative import GenerativeParams
from engine.tasks.settings import ModelParams, borrow

__all__ = [
    "DiffusionParams",
    "UNetModelParams",
    "make_scheduler",
    "no_targets",
]


class DiffusionParams(GenerativeParams):
    """Settings of the conditional diffusion task (:mod:`engine.tasks.diffusion`)."""

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
        doc="Sampler of generated maps: ddim (deterministic DDIM, eta = 0, Song et al. 2021), "
        "dpm (DPM-Solver++ 2nd-order multistep, Lu et al. 2022) or sde (its stochastic "
        "variant SDE-DPM-Solver++: fresh noise at every step).",
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
            cosine schedule (:mod:`engine.tasks.diffusion`, "Defaults and why"), bad ``classes``,
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
