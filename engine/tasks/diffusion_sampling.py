"""Sampling of the conditional diffusion task (:class:`engine.tasks.diffusion
.ConditionalDiffusion`): the samplers' schedulers and the sampling loop with classifier-free
guidance, as the mixin :class:`DiffusionSampling` the task inherits from.

Sampling (:meth:`DiffusionSampling.sample_normalised`): DDIM (Song, Meng & Ermon 2021,
"Denoising diffusion implicit models", ICLR, eq. 12 with η = 0: deterministic given x_T) from
``x_T ~ N(0, 1)`` drawn with the caller's generator, ``sample_steps`` steps with "trailing"
spacing (the first step at t = T − 1, where x_T is drawn; Lin et al. 2024, "Common diffusion
noise schedules and sample steps are flawed", WACV, §3.3), no clipping of x̂_0 (the maps are
standardised, not in [−1, 1]), the last step to ᾱ = 1 (x̂_0 itself). The DDIM update is
written here (:meth:`DiffusionSampling.ddim_step`) from each step's own next timestep: diffusers'
``DDIMScheduler.step`` steps to ``t − T // steps``, which with a step count that does not divide
T (e.g. 400 of 1000) is not the next timestep it is then called with, and the exact denoiser of
Gaussian maps then drew 0.69 of their variance (``tests/test_diffusion.py``). ``sampler=dpm``:
DPM-Solver++ (2nd-order multistep; Lu et al. 2022, arXiv:2211.01095), diffusers'
``DPMSolverMultistepScheduler``, often as good in fewer steps. ``sampler=sde``: its stochastic
variant SDE-DPM-Solver++ (2nd order; Lu et al. 2022, §5; diffusers' ``sde-dpmsolver++``), which
adds fresh noise at every step, drawn with the caller's generator: the noise corrects part of
an imperfect network's error from the earlier steps, where an ODE sampler carries it to the end
(Karras et al. 2022, "Elucidating the design space of diffusion-based generative models",
NeurIPS, §4). The schedulers are built from
the training scheduler's config (diffusers' configs round-trip between schedulers), which is
saved in the task state; no scheduler holds weights.

Classifier-free guidance (Ho & Salimans 2022; training with the null class:
:mod:`engine.tasks.diffusion`, "Classifier-free guidance"): with weight w > 0 each step calls
the U-Net on the conditional and the null-class rows together and uses
``(1 + w) f(x_t, c) − w f(x_t, ∅)``; :meth:`DiffusionSampling.check_guidance` refuses w > 0 for
a model trained without a null class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from engine.params import ConfigError

__all__ = ["SAMPLERS", "SAMPLER_LABELS", "DiffusionSampling"]

#: The samplers of :meth:`DiffusionSampling.sample_normalised` and their names on screen.
SAMPLER_LABELS = {"ddim": "DDIM", "dpm": "DPM-Solver++", "sde": "SDE-DPM-Solver++"}
SAMPLERS = tuple(SAMPLER_LABELS)


class DiffusionSampling:
    """The sampling methods of :class:`engine.tasks.diffusion.ConditionalDiffusion` (a mixin,
    before :class:`~engine.tasks.generative.GenerativeTask` in the task's bases, so that its
    :meth:`sample_normalised` is the task's). They read the task's training ``scheduler``,
    ``prediction_type``, ``sampler``, ``sample_steps``, ``guidance_scale``, ``p_uncond`` and
    ``device``, and call the U-Net through the task's ``_net``."""

    def sampling_scheduler(self, sampler: str | None = None):
        """A fresh sampling scheduler (no state shared between calls) from the training
        scheduler's config: DDIM (η = 0, trailing spacing, no clipping, final ᾱ = 1),
        DPM-Solver++ or SDE-DPM-Solver++ (module docstring).

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
        if sampler in ("dpm", "sde"):
            return DPMSolverMultistepScheduler.from_config(
                config,
                algorithm_type="dpmsolver++" if sampler == "dpm" else "sde-dpmsolver++",
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
            On the task's device; draws x_T (and nothing else with DDIM or DPM-Solver++: same
            generator state ⇒ same maps), and with ``sde`` the noise of every step.
        steps : int, optional
            Sampler steps (default :attr:`sample_steps`), 1 ≤ steps ≤ train_timesteps.
        progress : callable, optional
            ``progress(step, steps)`` after each step (step = 1 … steps).
        sampler : {"ddim", "dpm", "sde"}, optional
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
        sampler_name = sampler or self.sampler
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
            if sampler_name == "ddim":
                x = self.ddim_step(out, t, timesteps[i + 1] if i + 1 < len(timesteps) else -1, x)
            else:
                x = sched.step(out, t, x, generator=generator).prev_sample
            if progress is not None:
                progress(i + 1, len(timesteps))
        return x

    def ddim_step(self, out: torch.Tensor, t: int, t_prev: int, x: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM step (Song, Meng & Ermon 2021, eq. 12 with η = 0) from
        timestep ``t`` to ``t_prev`` (−1: ᾱ = 1, the last step returns x̂_0).

        Parameters
        ----------
        out : torch.Tensor (B, C, N, N) float32
            The U-Net's prediction at ``(x, t)``: v (``v_prediction``; Salimans & Ho 2022,
            x̂_0 = √ᾱ_t x − √(1−ᾱ_t) v̂, ε̂ = √(1−ᾱ_t) x + √ᾱ_t v̂) or ε (``epsilon``).
        t, t_prev : int
            This step's timestep and the next one's (t_prev < t).
        x : torch.Tensor (B, C, N, N) float32
            x_t.

        Returns
        -------
        torch.Tensor like ``x``: x_{t_prev} = √ᾱ_prev x̂_0 + √(1−ᾱ_prev) ε̂.
        """
        abar = self.scheduler.alphas_cumprod
        a_t = float(abar[t])
        a_p = float(abar[t_prev]) if t_prev >= 0 else 1.0
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        else:
            x0 = math.sqrt(a_t) * x - math.sqrt(1 - a_t) * out
            eps = math.sqrt(1 - a_t) * x + math.sqrt(a_t) * out
        return math.sqrt(a_p) * x0 + math.sqrt(1 - a_p) * eps

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
