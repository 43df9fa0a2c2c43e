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

Sampling (:meth:`ConditionalDiffusion.sample_normalised`): DDIM (η = 0, trailing spacing) or
DPM-Solver++ from ``x_T ~ N(0, 1)``, optionally with classifier-free guidance; details in
:mod:`engine.tasks.diffusion_sampling`.

Modules
-------
* :mod:`engine.tasks.diffusion` (this one) — the task :class:`ConditionalDiffusion`: set-up,
  the U-Net's specs, the denoising objective, the training step, validation, class labels at
  generation, and the task state.
* :mod:`engine.tasks.diffusion_settings` — :class:`DiffusionParams`, :class:`UNetModelParams`,
  :func:`make_scheduler` (the training noise schedule) and :func:`no_targets`.
* :mod:`engine.tasks.diffusion_sampling` — :class:`DiffusionSampling`, the task's sampling
  methods (samplers' schedulers, the sampling loop, classifier-free guidance), and
  :data:`SAMPLERS`.
* :mod:`engine.tasks.diffusion_classes` — :class:`ClassConditionedMaps`, the class-labelled
  data source of class-conditional runs.

Every name of those modules listed here is importable from :mod:`engine.tasks.diffusion`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from engine.data.classes import class_names
from engine.data.sources import STREAM_TRAIN, STREAM_VAL, derive_seed
from engine.nn.registry import build_model
from engine.params import ConfigError
from engine.tasks.base import Task
from engine.tasks.diffusion_classes import ClassConditionedMaps
from engine.tasks.diffusion_sampling import SAMPLERS, DiffusionSampling
from engine.tasks.diffusion_settings import (
    DiffusionParams,
    UNetModelParams,
    _max_levels,
    make_scheduler,
    no_targets,
)
from engine.tasks.generative import GenerativeTask
from engine.tasks.regression import target_names

__all__ = [
    "SAMPLERS",
    "ClassConditionedMaps",
    "ConditionalDiffusion",
    "DiffusionParams",
    "DiffusionSampling",
    "UNetModelParams",
    "make_scheduler",
    "no_targets",
]


#: Seed key (with STREAM_TRAIN and the step) of the time steps and noise of a training batch;
#: above any shard index of the data (batch_shards ≤ 65536).
NOISE_KEY = 1 << 20
#: Seed key (with STREAM_VAL) of the fixed time steps and noise of the validation loss.
_VAL_NOISE_KEY = 11


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


class ConditionalDiffusion(DiffusionSampling, GenerativeTask):
    """Conditional denoising diffusion of maps (module docstring); the sampling methods
    (:meth:`sample_normalised`, :meth:`sampling_scheduler`, :meth:`check_guidance`) come from
    :class:`~engine.tasks.diffusion_sampling.DiffusionSampling`.

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
