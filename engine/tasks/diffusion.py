"""Conditional diffusion of maps: a denoising diffusion model (Ho et al. 2020, "Denoising
diffusion probabilistic models", NeurIPS) of ``(B, C, N, N)`` maps conditioned on continuous
parameters, with diffusers' noise schedulers and U-Net (:class:`engine.nn.unet.ConditionalUNet`).

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
* No classifier-free guidance: a guidance weight w > 0 sharpens the conditional distribution
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
from collections.abc import Callable, Mapping
from typing import Any

import param
import torch
from torch import nn
from torch.nn import functional as F

from engine.data.sources import STREAM_TRAIN, STREAM_VAL, derive_seed
from engine.nn.registry import build_model
from engine.params import ConfigError
from engine.tasks.generative import GenerativeParams, GenerativeTask
from engine.tasks.settings import ModelParams, borrow

__all__ = ["ConditionalDiffusion", "DiffusionParams", "UNetModelParams", "make_scheduler"]

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

    def check(self) -> None:
        """The generator checks (:meth:`GenerativeParams.check`), then the schedule's.

        Raises
        ------
        ConfigError
            Sampling steps above ``train_timesteps``, or ``prediction_type=epsilon`` with the
            cosine schedule (module docstring).
        """
        GenerativeParams.check(self)
        for name in ("sample_steps", "val_sample_steps"):
            if getattr(self, name) > self.train_timesteps:
                raise ConfigError(
                    f"{name}={getattr(self, name)} must be at most "
                    f"train_timesteps={self.train_timesteps}"
                )
        _check_schedule(self.prediction_type, self.beta_schedule)


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
    circular_padding = borrow(ModelParams, "circular_padding")

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

    def unet_kwargs(self, channels: int, size: int, n_params: int) -> dict[str, Any]:
        """Keyword arguments of ``build_model("diffusion_unet", ...)`` (plain values)."""
        return {
            "channels": int(channels),
            "size": int(size),
            "n_params": int(n_params),
            "width": int(self.width),
            "levels": int(self.levels),
            "layers_per_block": int(self.layers_per_block),
            "attention": bool(self.attention),
            "circular_padding": bool(self.circular_padding),
        }


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
        super().__init__(settings, device)
        if settings is None:
            return
        s = settings
        self._set_schedule(
            _plain(make_scheduler(s.train_timesteps, s.beta_schedule, s.prediction_type).config),
            s.sampler,
            s.sample_steps,
            s.val_sample_steps,
            s.val_generated,
        )
        self.size = self._map_size()

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
        kwargs = UNetModelParams.unet_kwargs(s, self.channels, self.size, len(self.names))
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

    def denoising_loss(self, unet, x0, y, t, noise, autocast=None, prepare=None) -> torch.Tensor:
        """Mean squared error (0-d float32) of the U-Net's prediction on ``x_t`` made from
        ``x0 (B, C, N, N)``, ``noise`` (same shape) and integer ``t (B,)``; ``y (B, P)``."""
        xt = self.scheduler.add_noise(x0, noise, t)
        if prepare is not None:
            xt = prepare(xt)
        with self.autocast_or_null(autocast):
            out = unet(xt, t, y)
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
        loss = self.denoising_loss(nets["unet"], x0, y, t, noise, opt.autocast, opt.prepare)
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
    ) -> torch.Tensor:
        """Maps in network space sampled at normalised parameters.

        Parameters
        ----------
        nets : mapping of str to nn.Module
            ``{"unet": ConditionalUNet}`` (eval mode: EMA weights from a checkpoint).
        y : torch.Tensor (B, P) float
            Normalised parameters in [0, 1].
        generator : torch.Generator
            On the task's device; draws x_T (and nothing else with DDIM: same generator state
            ⇒ same maps).
        steps : int, optional
            Sampler steps (default :attr:`sample_steps`), 1 ≤ steps ≤ train_timesteps.
        progress : callable, optional
            ``progress(step, steps)`` after each step (step = 1 … steps).
        sampler : {"ddim", "dpm"}, optional
            Default: the task's ``sampler`` setting.

        Returns
        -------
        torch.Tensor (B, C, N, N) float32 on the task's device (decode with :meth:`decode`).

        Raises
        ------
        ConfigError
            ``steps`` out of range or an unknown sampler.
        """
        unet = nets["unet"]
        unet = getattr(unet, "module", unet)  # DDP
        n_train = int(self.scheduler.config.num_train_timesteps)
        steps = int(self.sample_steps if steps is None else steps)
        if not 1 <= steps <= n_train:
            raise ConfigError(f"steps={steps} must be in [1, {n_train}] (train_timesteps)")
        sched = self.sampling_scheduler(sampler)
        sched.set_timesteps(steps)  # on the CPU: the schedulers index their CPU tables with t
        y = y.to(self.device, torch.float32)
        shape = (len(y), unet.channels, unet.size, unet.size)
        x = torch.randn(shape, generator=generator, device=self.device)
        timesteps = [int(t) for t in sched.timesteps]
        for i, t in enumerate(timesteps):
            out = unet(x, torch.full((len(y),), t, device=self.device), y).float()
            x = sched.step(out, t, x).prev_sample
            if progress is not None:
                progress(i + 1, len(timesteps))
        return x

    # -- state ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The generator's state (:meth:`GenerativeTask.state`) plus ``scheduler`` (the
        DDPM config, plain values), ``sampler``, ``sample_steps``, ``val_sample_steps``,
        ``val_generated``."""
        out = super().state()
        out.update(
            scheduler=_plain(self.scheduler.config),
            sampler=self.sampler,
            sample_steps=self.sample_steps,
            val_sample_steps=self.val_sample_steps,
            val_generated=self.val_generated,
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
        return task
