"""The networks of the conditional GAN task (:mod:`engine.tasks.gan`): a generator of periodic
maps ``(B, C, N, N)`` conditioned on normalised parameters, and a projection discriminator.

Both are conditioned on parameters ``y (B, P)`` normalised to the label box, ``y ∈ [0, 1]``
(``engine.tasks.regression.Regression``); they see ``2y − 1 ∈ [−1, 1]``. The maps are the
task's standardised network-space maps (zero mean, unit variance per channel), so the
generator's output is linear (unbounded).

Generator (:class:`Generator`)
------------------------------
``z (B, latent_dim)`` and the parameter embedding ``e = MLP(2y − 1)`` (``embed_dim``) →
``Linear([z, e])`` → a ``4×4`` feature map → residual up-blocks to ``N/2 × N/2`` → conditional
norm, LeakyReLU(0.2) → nearest ×2 upsampling + 3×3 convolution to ``C`` channels at ``N × N``.

* Up-block (BigGAN-style pre-activation residual block, Brock et al. 2019, ICLR,
  arXiv:1809.11096, fig. 15, with one convolution after the upsampling): ``h → CGN → act →
  up ×2 + conv3×3 → CGN → act → conv3×3 → + noise``, plus the shortcut ``up ×2(conv1×1 h)``.
* Noise injection (Karras et al. 2019, StyleGAN, CVPR, arXiv:1812.04948, sec. 2.2): each
  up-block adds a white-noise map of its resolution, times a learned strength per channel
  (initially 0). Stochastic small-scale structure then comes from the noise, shaped by the
  following convolutions, instead of being unpacked from ``z`` through the upsamplings; the
  noise is an input (``forward(z, y, noise)``, :attr:`Generator.noise_dim` numbers per map),
  so the caller's seed fixes the maps.
* Conditional group norm (CGN): GroupNorm without affine parameters, then a feature-wise
  affine transform predicted from the parameter embedding, ``h·(1 + γ(e)) + β(e)`` — FiLM
  (Perez et al. 2018, AAAI, arXiv:1709.07871) on a conditional normalisation (de Vries et al.
  2017, NeurIPS, arXiv:1707.00683, who condition BatchNorm). Group norm rather than batch norm:
  statistics per map, so a map does not depend on the batch it is drawn in, and the EMA
  generator needs no running statistics. γ and β start at zero (identity).
* Upsampling: nearest neighbour then a 3×3 convolution ("resize-convolution", Odena et al.
  2016, Distill, "Deconvolution and checkerboard artifacts"; no checkerboard of transposed
  convolutions). :class:`UpConv` computes it exactly at the input resolution: each of the four
  output phases reads only 2×2 input pixels, so the four phases are one convolution with 2×2
  kernels to ``4·c_out`` channels, then interleaved (a pixel shuffle, Shi et al. 2016, CVPR,
  arXiv:1609.05158). Same result, 2.25× fewer multiply-adds than convolving the upsampled map,
  on 4× fewer, wider pixels (which CPUs convolve faster).
* Channels: ``width·16/r`` at resolution ``r`` (``width`` at 16×16), at most ``4·width``, at
  least 4 — few channels at the high resolutions, where the cost is. The last layer is linear:
  each 2×2 block of output pixels is a linear function of the ``N/2`` features around it.

Discriminator (:class:`Discriminator`)
--------------------------------------
``x (B, C, N, N)`` → pixel unshuffle to ``(B, 4C, N/2, N/2)`` (lossless) → 3×3 convolution →
residual down-blocks (SNGAN, Miyato et al. 2018, ICLR, arXiv:1802.05957, appendix B: pre-
activation, two 3×3 convolutions, 2×2 average pooling; shortcut conv1×1 + pooling) to 4×4 → one
block without pooling → LeakyReLU(0.2) → sum over pixels ``φ(x)`` → projection output
(Miyato & Koyama 2018, ICLR, arXiv:1802.05637, eq. 3 with a continuous embedding):
``D(x, y) = w·φ(x) + b + ⟨E(2y − 1), φ(x)⟩``, ``E`` a two-layer MLP. Spectral normalisation
(Miyato et al. 2018; torch's ``parametrizations.spectral_norm``, one power iteration per
training forward) on every convolution and linear layer. Channels as in the generator
(``width·16/r``, at most ``4·width``).

Periodic maps: every convolution with a spatial kernel pads periodically when
``circular_padding`` (default), so both networks are equivariant to periodic shifts by
multiples of their total stride; nearest upsampling, pixel (un)shuffle, 1×1 convolutions, group
norms and average pooling need no padding.

Sizes at 64², 2 channels, ``width=32``, ``latent_dim=64``, ``embed_dim=64`` (channels 128,
64, 32, 16 at 4², 8², 16², 32²): generator 0.47 M parameters, 18 M multiply-adds per map;
discriminator 0.61 M parameters, 50 M multiply-adds per map (``python -c "from
engine.nn.registry import summary; print(summary('gan_generator', channels=2, size=64))"``;
multiply-adds from ``torch.utils.flop_counter``). Sampling speed (eval mode, batch 256, 64²,
2 channels, this project's 2-core Xeon with AVX-512): 0.30–0.38 CPU-seconds per batch, i.e.
1300–1700 maps/s for two unhindered threads (about 730 maps/s on one core); wall-clock rates
are lower while other processes share the cores.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from engine.params import ConfigError

__all__ = [
    "CondGroupNorm",
    "DBlock",
    "Discriminator",
    "GBlock",
    "Generator",
    "UpConv",
    "check_size",
    "level_channels",
]

#: Negative slope of the LeakyReLU activations of both networks.
SLOPE = 0.2


def level_channels(resolution: int, width: int) -> int:
    """Channels of both networks at a resolution: ``width·16/resolution`` (``width`` at 16×16),
    at most ``4·width``, at least 4.

    Parameters
    ----------
    resolution : int
        Side of the feature map in pixels (a power of two).
    width : int
        Channels at 16×16.

    Returns
    -------
    int
    """
    return int(max(4, min(4 * width, width * 16 // resolution)))


def check_size(size: int) -> None:
    """Raise ConfigError unless ``size`` is a power of two ≥ 8 (the networks work on 4×4 maps
    at their coarsest)."""
    if (
        isinstance(size, bool)
        or not isinstance(size, numbers.Integral)
        or size < 8
        or size & (size - 1)
    ):
        raise ConfigError(
            f"size={size!r} must be a power of two ≥ 8 for a GAN (8, 16, 32, 64, ...)"
        )


def _check_positive(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(f"{name}={value!r} must be a positive integer")


def _groups(channels: int) -> int:
    """Groups of a group norm: gcd(channels, 8)."""
    return math.gcd(int(channels), 8)


def _conv3(c_in: int, c_out: int, circular: bool, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(
        c_in, c_out, 3, padding=1, padding_mode="circular" if circular else "zeros", bias=bias
    )


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, SLOPE)


def add_upsampled(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``a + up(s)``, ``up`` the nearest-neighbour ×2 upsampling, by broadcasting (no upsampled
    copy of ``s``): ``a (B, C, 2H, 2W)``, ``s (B, C, H, W)`` → ``(B, C, 2H, 2W)``."""
    b, c, h, w = s.shape
    out = a.reshape(b, c, h, 2, w, 2) + s.reshape(b, c, h, 1, w, 1)
    return out.reshape(b, c, 2 * h, 2 * w)


class UpConv(nn.Module):
    """Nearest-neighbour ×2 upsampling followed by a 3×3 convolution, computed at the input
    resolution (module docstring).

    Output pixel ``(2i + a, 2j + b)`` of ``conv3×3(up(x))`` reads the upsampled pixels at rows
    ``2i + a + d``, ``d ∈ {−1, 0, 1}``, i.e. the input rows ``i + ⌊(a + d)/2⌋``: for phase
    ``a = 0`` the taps ``d = 0, 1`` both fall on row ``i`` and ``d = −1`` on row ``i − 1``; for
    ``a = 1`` the taps ``d = −1, 0`` fall on row ``i`` and ``d = 1`` on row ``i + 1`` (the same
    for columns). So phase ``(a, b)`` is a convolution of ``x`` with a 2×2 kernel (the taps of
    :attr:`weight` that fall on the same input pixel, summed) over input rows ``i − 1 + a, i + a``
    and columns ``j − 1 + b, j + b``: one 2×2 convolution to ``4·c_out`` channels of ``x`` padded
    by one pixel gives all four phases, ``(H + 1) × (W + 1)`` each, and phase ``(a, b)`` is its
    window starting at ``(a, b)``. Periodic padding by one input pixel is periodic padding of
    the upsampled map by two pixels, of which the 3×3 kernel reads one: the result equals
    ``conv3×3(up(x))`` with periodic (or zero) padding exactly, up to float rounding.

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels.
    circular : bool
        Periodic padding; zeros otherwise.
    bias : bool
        Learnable bias per output channel.

    Input ``(B, c_in, H, W)`` float32; output ``(B, c_out, 2H, 2W)`` float32. The parameters are
    those of the equivalent ``nn.Conv2d(c_in, c_out, 3)`` (``weight (c_out, c_in, 3, 3)``,
    ``bias (c_out,)``), with its initialisation.
    """

    def __init__(self, c_in: int, c_out: int, circular: bool = True, bias: bool = True):
        super().__init__()
        self.circular = bool(circular)
        ref = nn.Conv2d(c_in, c_out, 3, bias=bias)  # torch's default initialisation
        self.weight = nn.Parameter(ref.weight.detach().clone())
        self.bias = nn.Parameter(ref.bias.detach().clone()) if bias else None
        # mix[a, o, d]: tap d (−1, 0, 1) of the upsampled grid → input offset o (−1, 0, 1)
        mix = torch.zeros(2, 3, 3)
        mix[0, 0, 0] = mix[0, 1, 1] = mix[0, 1, 2] = 1.0
        mix[1, 1, 0] = mix[1, 1, 1] = mix[1, 2, 2] = 1.0
        self.register_buffer("mix", mix, persistent=False)

    def phase_kernels(self) -> torch.Tensor:
        """The 2×2 kernels of the four phases, ``(4·c_out, c_in, 2, 2)``, channel ``4c + 2a + b``
        for output channel ``c`` and phase ``(a, b)``; phase ``(a, b)`` reads input rows
        ``i − 1 + a, i + a`` and columns ``j − 1 + b, j + b``."""
        m = self.mix.to(self.weight.dtype)
        w = torch.einsum("aot,bps,cits->cabiop", m, m, self.weight)  # (c, 2, 2, c_in, 3, 3)
        w = torch.stack(
            [torch.stack([w[:, a, p, :, a : a + 2, p : p + 2] for p in (0, 1)], 1) for a in (0, 1)],
            1,
        )  # (c, 2, 2, c_in, 2, 2)
        c_out, c_in = self.weight.shape[:2]
        return w.reshape(4 * c_out, c_in, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, c_in, H, W) → (B, c_out, 2H, 2W)``."""
        b, _, h, w = x.shape
        c_out = self.weight.shape[0]
        xp = F.pad(x, (1, 1, 1, 1), mode="circular" if self.circular else "constant")
        bias = None if self.bias is None else self.bias.repeat_interleave(4)
        y = F.conv2d(xp, self.phase_kernels(), bias).view(b, c_out, 2, 2, h + 1, w + 1)
        rows = [
            torch.stack([y[:, :, a, p, a : a + h, p : p + w] for p in (0, 1)], dim=-1)
            for a in (0, 1)
        ]  # each (B, c_out, H, W, 2)
        out = torch.stack(rows, dim=3)  # (B, c_out, H, 2, W, 2)
        return out.reshape(b, c_out, 2 * h, 2 * w)


class CondGroupNorm(nn.Module):
    """Group norm (no affine weights) followed by a FiLM transform of the conditioning
    embedding: ``GN(h)·(1 + γ(e)) + β(e)``, ``(γ, β) = Linear(e)`` initialised to zero.

    Parameters
    ----------
    channels : int
        Channels of ``h``; ``gcd(channels, 8)`` groups.
    embed_dim : int
        Width of ``e``.

    Input ``h (B, channels, H, W)``, ``e (B, embed_dim)``; output like ``h``.
    """

    def __init__(self, channels: int, embed_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels, affine=False)
        self.film = nn.Linear(embed_dim, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(e)[:, :, None, None].chunk(2, dim=1)
        return torch.addcmul(beta, self.norm(h), 1.0 + gamma)


class GBlock(nn.Module):
    """Residual up-block of the generator: ``UpConv(act(CGN(h)))`` → ``conv3×3(act(CGN(·)))``
    → ``+ s_c·n`` (noise injection) plus ``up(conv1×1(h))`` (the 1×1 shortcut only when the
    channels change).

    The norm and activation of the first branch run before the upsampling (nearest upsampling
    leaves group-norm statistics unchanged, so this is exact and 4× cheaper). Noise injection
    (Karras et al. 2019, StyleGAN, CVPR, arXiv:1812.04948, sec. 2): one white-noise map ``n``
    per map, added to every channel ``c`` with a learned strength ``s_c`` (initially 0).

    Input ``h (B, c_in, H, W)``, ``e (B, embed_dim)``, ``noise (B, 1, 2H, 2W)`` or None (no
    noise); output ``(B, c_out, 2H, 2W)``.
    """

    def __init__(self, c_in: int, c_out: int, embed_dim: int, circular: bool):
        super().__init__()
        self.norm1 = CondGroupNorm(c_in, embed_dim)
        self.up = UpConv(c_in, c_out, circular)
        self.norm2 = CondGroupNorm(c_out, embed_dim)
        self.conv = _conv3(c_out, c_out, circular)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.noise_strength = nn.Parameter(torch.zeros(1, c_out, 1, 1))

    def forward(
        self, h: torch.Tensor, e: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        a = self.up(_act(self.norm1(h, e)))
        a = self.conv(_act(self.norm2(a, e)))
        if noise is not None:
            a = torch.addcmul(a, self.noise_strength, noise)
        return add_upsampled(a, self.skip(h))


class Generator(nn.Module):
    """Conditional generator of periodic maps (module docstring).

    Keyword-only plain-valued arguments, so a checkpoint rebuilds it by name
    (``build_model("gan_generator", **kwargs)``).

    Parameters
    ----------
    latent_dim : int
        Width of the latent vector ``z`` (standard normal).
    n_params : int
        P, conditioning parameters.
    channels : int
        C, map channels.
    size : int
        N, map side in pixels: a power of two ≥ 8.
    width : int
        Channels at 16×16 (``width·16/r`` at resolution r, between 4 and ``4·width``).
    embed_dim : int
        Width of the parameter embedding that conditions every norm.
    circular_padding : bool
        Periodic padding in every 3×3 convolution; zeros otherwise.
    noise : bool
        Noise injection after every up-block (:class:`GBlock`): ``forward`` then reads
        :attr:`noise_dim` standard-normal numbers per map.

    Raises
    ------
    ConfigError
        ``size`` not a power of two ≥ 8, or a non-positive integer argument.

    Notes
    -----
    ``forward(z, y, noise=None)``: ``z (B, latent_dim)`` float32, ``y (B, P)`` float32 in
    [0, 1], ``noise (B, noise_dim)`` float32 standard normal (None: drawn from torch's global
    generator; pass it for reproducible maps) → maps ``(B, C, N, N)`` float32 in the task's
    standardised network space (dimensionless).
    """

    def __init__(
        self,
        *,
        latent_dim: int = 64,
        n_params: int = 2,
        channels: int = 1,
        size: int = 64,
        width: int = 32,
        embed_dim: int = 64,
        circular_padding: bool = True,
        noise: bool = True,
    ):
        super().__init__()
        check_size(size)
        _check_positive(
            latent_dim=latent_dim,
            n_params=n_params,
            channels=channels,
            width=width,
            embed_dim=embed_dim,
        )
        self.latent_dim, self.n_params, self.channels, self.size = (
            int(latent_dim),
            int(n_params),
            int(channels),
            int(size),
        )
        circular = bool(circular_padding)
        res = [4 * 2**i for i in range(int(math.log2(size)) - 2)]  # 4 .. N/2
        chans = [level_channels(r, width) for r in res]
        self.c0 = chans[0]
        self.embed = nn.Sequential(
            nn.Linear(n_params, embed_dim),
            nn.SiLU(),
            nn.Linear(embed_dim, embed_dim),
            nn.SiLU(),
        )
        self.stem = nn.Linear(latent_dim + embed_dim, 16 * self.c0)
        self.blocks = nn.ModuleList(
            GBlock(a, b, embed_dim, circular) for a, b in zip(chans[:-1], chans[1:], strict=True)
        )
        self.norm = CondGroupNorm(chans[-1], embed_dim)
        self.out = UpConv(chans[-1], channels, circular)
        self.noise = bool(noise)
        #: Resolutions of the injected noise maps (the outputs of the up-blocks, 8 .. N/2).
        self.noise_sizes = res[1:] if self.noise else []

    @property
    def noise_dim(self) -> int:
        """Standard-normal numbers per map of ``forward``'s ``noise`` (0 without noise)."""
        return sum(r * r for r in self.noise_sizes)

    def forward(
        self, z: torch.Tensor, y: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``z (B, latent_dim)``, ``y (B, P)`` in [0, 1], ``noise (B, noise_dim)`` →
        ``(B, C, N, N)`` float32."""
        b = z.shape[0]
        e = self.embed(2.0 * y.float() - 1.0)
        h = self.stem(torch.cat([z.float(), e], dim=1)).view(b, self.c0, 4, 4)
        maps: list[torch.Tensor | None] = [None] * len(self.blocks)
        if self.noise:
            if noise is None:
                noise = torch.randn((b, self.noise_dim), device=z.device)
            parts = noise.float().split([r * r for r in self.noise_sizes], dim=1)
            maps = [n.view(b, 1, r, r) for n, r in zip(parts, self.noise_sizes, strict=True)]
        for block, n in zip(self.blocks, maps, strict=True):
            h = block(h, e, n)
        return self.out(_act(self.norm(h, e)))


class DBlock(nn.Module):
    """Residual down-block of the discriminator (SNGAN): ``conv3×3(act(conv3×3(act(h))))``,
    then 2×2 average pooling when ``down``, plus the shortcut ``pool(conv1×1(h))`` (the 1×1
    convolution when the channels change). Spectral norm on every convolution.

    Input ``(B, c_in, H, W)``; output ``(B, c_out, H/2, W/2)`` (``down``) or ``(B, c_out, H, W)``.
    """

    def __init__(self, c_in: int, c_out: int, down: bool, circular: bool):
        super().__init__()
        self.down = bool(down)
        self.conv1 = spectral_norm(_conv3(c_in, c_out, circular))
        self.conv2 = spectral_norm(_conv3(c_out, c_out, circular))
        self.skip = spectral_norm(nn.Conv2d(c_in, c_out, 1)) if c_in != c_out else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.conv2(_act(self.conv1(_act(h))))
        s = self.skip(h)
        if self.down:
            a, s = F.avg_pool2d(a, 2), F.avg_pool2d(s, 2)
        return a + s


class Discriminator(nn.Module):
    """Projection discriminator with spectral normalisation for periodic maps (module
    docstring).

    Keyword-only plain-valued arguments (``build_model("gan_discriminator", **kwargs)``).

    Parameters
    ----------
    n_params : int
        P, conditioning parameters.
    channels : int
        C, map channels.
    size : int
        N, map side in pixels: a power of two ≥ 8.
    width : int
        Channels at 16×16 (``width·16/r`` at resolution r, between 4 and ``4·width``).
    embed_dim : int
        Hidden width of the parameter embedding of the projection term.
    circular_padding : bool
        Periodic padding in every 3×3 convolution; zeros otherwise.

    Raises
    ------
    ConfigError
        ``size`` not a power of two ≥ 8, or a non-positive integer argument.

    Notes
    -----
    ``forward(x, y)``: maps ``x (B, C, N, N)`` float32 (network space), ``y (B, P)`` in [0, 1]
    → logits ``(B,)`` float32 (real > fake).
    """

    def __init__(
        self,
        *,
        n_params: int = 2,
        channels: int = 1,
        size: int = 64,
        width: int = 32,
        embed_dim: int = 64,
        circular_padding: bool = True,
    ):
        super().__init__()
        check_size(size)
        _check_positive(n_params=n_params, channels=channels, width=width, embed_dim=embed_dim)
        self.n_params, self.channels, self.size = int(n_params), int(channels), int(size)
        circular = bool(circular_padding)
        res = [size // 2 // 2**i for i in range(int(math.log2(size)) - 2)]  # N/2 .. 4
        chans = [level_channels(r, width) for r in res]
        self.stem = spectral_norm(_conv3(4 * channels, chans[0], circular))
        blocks = [DBlock(a, b, True, circular) for a, b in zip(chans[:-1], chans[1:], strict=True)]
        blocks.append(DBlock(chans[-1], chans[-1], False, circular))
        self.blocks = nn.Sequential(*blocks)
        self.embed = nn.Sequential(
            spectral_norm(nn.Linear(n_params, embed_dim)),
            nn.LeakyReLU(SLOPE),
            spectral_norm(nn.Linear(embed_dim, chans[-1])),
        )
        self.linear = spectral_norm(nn.Linear(chans[-1], 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x (B, C, N, N)``, ``y (B, P)`` in [0, 1] → ``(B,)`` float32."""
        h = self.blocks(self.stem(F.pixel_unshuffle(x, 2)))
        phi = _act(h).sum(dim=(-2, -1))
        proj = (self.embed(2.0 * y.to(phi.dtype) - 1.0) * phi).sum(dim=1)
        return (self.linear(phi).squeeze(1) + proj).float()
