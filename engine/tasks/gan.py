"""Conditional GAN: a generator of maps ``(B, C, N, N)`` at given parameters (omega_m, sigma8, or
any labels of a dataset), trained against a projection discriminator.

Data, the map transform (ln(1 + δ) for density channels, standardisation per channel), the
validation metrics (``fid`` on physics summary features, ``fid_floor``, ``pk_error``; ``fid``
selects ``best.pt``) and :meth:`generate` come from :class:`engine.tasks.generative.
GenerativeTask`; the networks are those of :mod:`engine.nn.gan` (a generator with conditional
group norms, a discriminator with spectral norm and a projection output).

Objective (setting ``objective``)
---------------------------------
``hinge`` (default; Lim & Ye 2017, arXiv:1705.02894; Miyato et al. 2018, ICLR,
arXiv:1802.05957, eq. 16–17, the loss of SNGAN, projection GANs and BigGAN)::

    L_D = E[max(0, 1 − D(x, y))] + E[max(0, 1 + D(G(z, y), y))]
    L_G = −E[D(G(z, y), y)]

``wgan-gp`` (Gulrajani et al. 2017, NeurIPS, arXiv:1704.00028, alg. 1)::

    L_D = E[D(G(z, y), y)] − E[D(x, y)] + λ E[(‖∇_x̂ D(x̂, y)‖₂ − 1)²] + ε_drift E[D(x, y)²]
    L_G = −E[D(G(z, y), y)]

with ``x̂ = u·x + (1 − u)·G(z, y)``, ``u ~ U(0, 1)`` per map, λ = ``gp_weight`` and the drift
term ε_drift = 10⁻³ of Karras et al. 2018 (ICLR, arXiv:1710.10196, sec. A.1) that keeps the
critic's values near 0. Gulrajani et al. take ``d_steps = 5``.

Optional R1 penalty (``r1_gamma > 0``; Mescheder et al. 2018, ICML, arXiv:1801.04406, eq. 9),
for either objective: ``+ γ/2 · E[‖∇_x D(x, y)‖²]`` on real maps. Off by default: spectral norm
already bounds the discriminator's Lipschitz constant, and the penalty's double backward
doubles the cost of a discriminator step on a CPU.

Conditioning: the fake maps of a batch are generated at the labels of its real maps, so the
discriminator compares real and fake maps at the same parameters.

Optimisers (:meth:`ConditionalGAN.optimizer_options`): AdamW for both networks with
β = (0.0, 0.9) (Miyato et al. 2018; Zhang et al. 2019, SAGAN, arXiv:1805.08318, sec. 5) and the
two time-scale update rule (Heusel et al. 2017, NeurIPS, arXiv:1706.08500): the discriminator's
learning rate is ``d_lr_scale`` times the loop's ``lr`` (SAGAN uses 4; default 2). Weight decay
and gradient clipping are the loop's (the presets set ``weight_decay=0``). The loop's EMA
(``ema_decay``) averages the generator only (Yazıcı et al. 2019, ICLR, arXiv:1806.04498);
validation, ``best.pt`` and sampling from a checkpoint use the averaged generator.

Step ``s`` (reproducible, so a resumed run reaches the same weights): ``d_steps = k``
discriminator updates, update ``i`` on the training batch of step ``k·s + i`` (with k > 1 the
data are read k times faster), then one generator update on the fakes of the last
discriminator update. The latents, the generator's injected noise, the random shifts and
WGAN-GP's mixing weights of the whole batch come from one generator seeded with
``derive_seed(seed, STREAM_TRAIN, s, 2**20)`` (drawn for the full batch and sliced to this
process's rows, so DDP trains on the same fakes). Sampling (:meth:`ConditionalGAN.
sample_normalised`) draws, per batch, z, then the noise, then the shifts from the caller's
generator.

Random shift (setting ``random_shift``, default on): every generated map is shifted
periodically by a random offset, uniform over the N² pixels, in training and in sampling. The
real ensemble of periodic maps is invariant under such shifts, so this costs the generator
nothing and makes its ensemble exactly homogeneous (the 4×4 start of the generator otherwise
fixes a grid of preferred positions).

Logged every ``log_every`` steps: ``loss`` (= ``loss_g``, the loop stops when it is not
finite), ``loss_d``, ``loss_g``; ``grad_norm_d``, ``grad_norm_g`` (before clipping);
``logit_real``, ``logit_fake`` (mean discriminator outputs); ``penalty_gp``, ``penalty_r1`` when
used. The Training page groups curves by the first ``_`` token (``loss_*`` together).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import param
import torch
import torch.nn.functional as F
from torch import nn

from engine.data.sources import STREAM_TRAIN, GeneratedMaps, derive_seed
from engine.nn.gan import check_size
from engine.nn.registry import build_model
from engine.params import ConfigError
from engine.tasks.base import Stepper
from engine.tasks.generative import GenerativeParams, GenerativeTask

#: Seed key of a step's latent draws (with STREAM_TRAIN and the step; above any batch shard).
LATENT_KEY = 2**20
#: Adam betas of both networks.
BETAS = (0.0, 0.9)
#: Weight of the drift term of wgan-gp (Karras et al. 2018).
DRIFT = 1e-3


class GANParams(GenerativeParams):
    """Settings of the conditional GAN's training (module docstring)."""

    objective = param.Selector(
        default="hinge",
        objects=["hinge", "wgan-gp"],
        doc="Adversarial loss: hinge (SNGAN, BigGAN) or wgan-gp (Wasserstein loss with a "
        "gradient penalty of weight gp_weight; take d_steps=5).",
    )
    gp_weight = param.Number(
        10.0,
        bounds=(0.0, 1000.0),
        doc="wgan-gp: weight λ of the gradient penalty E[(|grad D| - 1)^2] (dimensionless; 10 "
        "in Gulrajani et al. 2017). Not used by hinge.",
    )
    r1_gamma = param.Number(
        0.0,
        bounds=(0.0, 1000.0),
        doc="Weight γ of the R1 penalty γ/2·E[|grad_x D(x, y)|^2] on real maps (Mescheder et "
        "al. 2018), either objective; 0: off (spectral norm already regularises D).",
    )
    d_steps = param.Integer(
        1,
        bounds=(1, 10),
        doc="Discriminator updates per generator update, each on its own batch.",
    )
    d_lr_scale = param.Number(
        2.0,
        bounds=(0.01, 100.0),
        doc="Learning rate of the discriminator over the loop's lr (two time-scale update "
        "rule; the generator trains with lr).",
    )
    random_shift = param.Boolean(
        True,
        doc="Shift every generated map by a random periodic offset (training and sampling): "
        "an exact symmetry of periodic maps that makes the generated ensemble homogeneous.",
    )

    def check(self) -> None:
        """The shared generator checks (:meth:`GenerativeParams.check`), and a map size the
        networks support when maps are generated on the fly.

        Raises
        ------
        ConfigError
            Targets or augmentations a generator cannot use; ``size`` not a power of two ≥ 8.
        """
        GenerativeParams.check(self)
        if not getattr(self, "dataset", "") and hasattr(self, "size"):
            check_size(self.size)


class GANModelParams(param.Parameterized):
    """The networks of the conditional GAN (:mod:`engine.nn.gan`): generator and
    discriminator sizes."""

    width = param.Integer(
        32,
        bounds=(1, 512),
        doc="Generator channels at 16x16 (width*16/r at resolution r, between 4 and 4*width; "
        "few channels at high resolution keep sampling fast on a CPU).",
    )
    d_width = param.Integer(
        32,
        bounds=(1, 512),
        doc="Discriminator channels at 16x16 (width*16/r at resolution r, at most 4*d_width).",
    )
    latent_dim = param.Integer(
        64, bounds=(1, 4096), doc="Width of the generator's standard-normal latent vector z."
    )
    embed_dim = param.Integer(
        64,
        bounds=(1, 4096),
        doc="Width of the parameter embeddings (the generator's norm conditioning, the "
        "discriminator's projection).",
    )
    noise_injection = param.Boolean(
        True,
        doc="Add a learned amount of white noise after every up-block of the generator "
        "(StyleGAN), for stochastic small-scale structure.",
    )
    circular_padding = param.Boolean(
        True, doc="Periodic padding in convolutions (the maps are periodic); zeros otherwise."
    )


def roll_maps(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Periodic shift of each map by its own offset, differentiable.

    Parameters
    ----------
    x : torch.Tensor (B, C, H, W)
        Maps, any float dtype.
    shifts : torch.Tensor (B, 2) int64
        Offsets (rows, columns) in pixels: ``out[b, :, i, j] = x[b, :, i − s_y, j − s_x]``
        (indices modulo H, W), like ``torch.roll`` per map.

    Returns
    -------
    torch.Tensor, shape and dtype of ``x``.
    """
    b, c, h, w = x.shape
    iy = (torch.arange(h, device=x.device)[None] - shifts[:, :1]) % h  # (B, H)
    ix = (torch.arange(w, device=x.device)[None] - shifts[:, 1:]) % w  # (B, W)
    idx = (iy[:, :, None] * w + ix[:, None, :]).flatten(1)  # (B, H·W)
    out = x.flatten(2).gather(2, idx[:, None, :].expand(b, c, h * w))
    return out.view(b, c, h, w)


class ConditionalGAN(GenerativeTask):
    """Conditional GAN of maps (module docstring).

    Parameters
    ----------
    settings : engine.train.settings.TrainParams or None
        The run's settings (task ``gan``); None only through :meth:`from_state`.
    device : torch.device

    Raises
    ------
    ConfigError
        Bad map settings or dataset; maps whose side is not a power of two ≥ 8.
    """

    name = "gan"
    params_class = GANParams
    model_params_class = GANModelParams
    selection = ("fid", "min")
    sample_unit = "maps"
    ema_networks = ("generator",)

    def __init__(self, settings, device):
        super().__init__(settings, device)
        if settings is None:
            return
        if isinstance(self.source, GeneratedMaps):
            self.size = int(self.source.settings.size)
        else:
            self.size = int(self.source.split("train")[0].shape[-1])
        try:
            check_size(self.size)
        except ConfigError:
            raise ConfigError(
                f"size={self.size}: the maps of dataset={settings.dataset!r} must have a side "
                "that is a power of two ≥ 8 for a GAN (8, 16, 32, 64, ...)"
            ) from None
        self.latent_dim = int(settings.latent_dim)
        self.random_shift = bool(settings.random_shift)

    # -- networks ------------------------------------------------------------------------------

    def network_specs(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """``{"generator": ("gan_generator", kwargs), "discriminator": ("gan_discriminator",
        kwargs)}`` from the model settings."""
        s = self.settings
        common = {
            "n_params": len(self.names),
            "channels": self.channels,
            "size": self.size,
            "embed_dim": int(s.embed_dim),
            "circular_padding": bool(s.circular_padding),
        }
        return {
            "generator": (
                "gan_generator",
                {
                    "latent_dim": self.latent_dim,
                    **common,
                    "width": int(s.width),
                    "noise": bool(s.noise_injection),
                },
            ),
            "discriminator": ("gan_discriminator", {**common, "width": int(s.d_width)}),
        }

    def build_networks(self) -> dict[str, nn.Module]:
        """The generator (primary) and the discriminator, freshly initialised on the CPU."""
        return {name: build_model(n, **kw) for name, (n, kw) in self.network_specs().items()}

    def optimizer_options(self, name: str) -> dict[str, Any]:
        """β = (0.0, 0.9) for both networks; the discriminator's learning rate is
        ``d_lr_scale`` times the loop's (module docstring)."""
        scale = float(self.settings.d_lr_scale) if name == "discriminator" else 1.0
        return {"betas": BETAS, "lr_scale": scale}

    def generator_nets(self, nets: Mapping[str, nn.Module]) -> Mapping[str, nn.Module]:
        """Sampling needs the generator only."""
        return {"generator": nets["generator"]}

    # -- sampling ------------------------------------------------------------------------------

    def _fake(
        self,
        generator_net: nn.Module,
        y: torch.Tensor,
        gen: torch.Generator,
        rows: tuple[int, int] | None = None,
        total: int | None = None,
    ) -> torch.Tensor:
        """Generated maps ``(stop − start, C, N, N)`` at labels ``y (stop − start, P)``: the
        latents, the injected noise and the shifts of ``total`` maps are drawn from ``gen`` (in
        that order) and rows ``[start, stop)`` of them used (default: all, ``total = len(y)``),
        so any split of a batch into row ranges gets the same maps."""
        total = len(y) if total is None else total
        start, stop = rows if rows is not None else (0, total)
        z = torch.randn((total, self.latent_dim), generator=gen, device=self.device)
        dim = int(getattr(getattr(generator_net, "module", generator_net), "noise_dim", 0))
        noise = torch.randn((total, dim), generator=gen, device=self.device) if dim else None
        shifts = (
            torch.randint(0, self.size, (total, 2), generator=gen, device=self.device)
            if self.random_shift
            else None
        )
        x = generator_net(z[start:stop], y, None if noise is None else noise[start:stop])
        if shifts is not None:
            x = roll_maps(x, shifts[start:stop])
        return x

    def sample_normalised(
        self, nets: Mapping[str, nn.Module], y: torch.Tensor, generator: torch.Generator, **options
    ) -> torch.Tensor:
        """Network-space maps ``(B, C, N, N)`` float32 for normalised labels ``y (B, P)`` in
        [0, 1]: ``G(z, y, noise)`` with ``z`` and the injected noise standard normal from
        ``generator`` (then the random shift, when enabled, also from ``generator``). No
        options."""
        if options:
            raise ConfigError(
                f"the gan task takes no sampling options (got {', '.join(sorted(options))})"
            )
        y = y.to(self.device, torch.float32)
        return self._fake(nets["generator"], y, generator).float()

    # -- objective -----------------------------------------------------------------------------

    def _penalty_grad(self, d_net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``∇_x Σ D(x, y)`` with a graph (float32, outside autocast), ``(B, C, N, N)``."""
        x = x.detach().float().requires_grad_(True)
        out = d_net(x, y).float()
        (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return grad

    def training_step(
        self, step: int, rows: tuple[int, int], nets: Mapping[str, nn.Module], opt: Stepper
    ) -> dict[str, torch.Tensor]:
        """``d_steps`` discriminator updates then one generator update (module docstring).

        Returns ``loss`` (= ``loss_g``), ``loss_d``, ``loss_g``, ``grad_norm_d``,
        ``grad_norm_g``, ``logit_real``, ``logit_fake`` and the penalties in use (0-d tensors;
        the discriminator's values are means over its updates)."""
        s = self.settings
        g_net, d_net = nets["generator"], nets["discriminator"]
        start, stop = rows
        gen = torch.Generator(device=self.device).manual_seed(
            derive_seed(s.seed, STREAM_TRAIN, step, LATENT_KEY)
        )
        k = int(s.d_steps)
        sums: dict[str, torch.Tensor] = {}

        def add(name: str, value: torch.Tensor) -> None:
            v = value.detach().float() / k
            sums[name] = sums[name] + v if name in sums else v

        fake = y = None
        for i in range(k):
            x, y = self.train_batch(step * k + i, start, stop)
            last = i == k - 1
            with torch.set_grad_enabled(last), opt.autocast:
                fake = self._fake(g_net, y, gen, rows, s.batch_size)
            with opt.autocast:
                both = d_net(opt.prepare(torch.cat([x, fake.detach()])), torch.cat([y, y]))
            d_real, d_fake = both.float().chunk(2)
            if s.objective == "hinge":
                loss_d = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
            else:
                u = torch.rand((s.batch_size, 1, 1, 1), generator=gen, device=self.device)
                u = u[start:stop]
                mix = u * x + (1.0 - u) * fake.detach().float()
                grad = self._penalty_grad(d_net, mix, y)
                gp = (grad.flatten(1).norm(dim=1) - 1.0).square().mean()
                loss_d = d_fake.mean() - d_real.mean() + s.gp_weight * gp
                loss_d = loss_d + DRIFT * d_real.square().mean()
                add("penalty_gp", gp)
            if s.r1_gamma > 0:
                r1 = self._penalty_grad(d_net, x, y).flatten(1).square().sum(1).mean()
                loss_d = loss_d + 0.5 * s.r1_gamma * r1
                add("penalty_r1", r1)
            add("grad_norm_d", opt.step("discriminator", loss_d))
            add("loss_d", loss_d)
            add("logit_real", d_real.mean())
            add("logit_fake", d_fake.mean())
        with opt.autocast:
            g_out = d_net(opt.prepare(fake), y).float()
        loss_g = -g_out.mean()
        grad_norm_g = opt.step("generator", loss_g)
        loss_g = loss_g.detach()
        return {
            "loss": loss_g,
            "loss_d": sums.pop("loss_d"),
            "loss_g": loss_g,
            "grad_norm_d": sums.pop("grad_norm_d"),
            "grad_norm_g": grad_norm_g,
            **sums,
        }

    # -- validation ----------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self, nets, data, autocast=None) -> dict[str, float]:
        """``fid``, ``fid_floor`` and ``pk_error`` of the (EMA) generator on the validation
        maps (:meth:`GenerativeTask.sample_metrics`); float32 sampling, ``autocast`` unused."""
        return dict(self.sample_metrics(self.generator_nets(nets), data))

    # -- state ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The generative task's state plus ``latent_dim``, ``size`` (pixels) and
        ``random_shift``."""
        out = super().state()
        out.update(latent_dim=self.latent_dim, size=self.size, random_shift=bool(self.random_shift))
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device) -> ConditionalGAN:
        """The task for sampling from a checkpoint's ``task_state`` (no data)."""
        task = super().from_state(state, device)
        task.latent_dim = int(state["latent_dim"])
        task.size = int(state["size"])
        task.random_shift = bool(state.get("random_shift", True))
        return task
