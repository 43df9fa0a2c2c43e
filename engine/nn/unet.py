"""The denoising network of the diffusion task (:mod:`engine.tasks.diffusion`): diffusers'
``UNet2DModel`` conditioned on continuous parameters, on discrete classes, or on both.

:class:`ConditionalUNet` maps a noisy map ``x_t (B, C, N, N)``, its diffusion time step
``t (B,)`` (integer, ``0 ≤ t < train_timesteps``) and normalised parameters ``y (B, P)`` in
[0, 1] to a map ``(B, C, N, N)`` float32: the network's *prediction* in the parametrisation
the task trains it for (the noise ε of Ho et al. 2020, or the velocity ``v = √ᾱ_t ε − √(1−ᾱ_t)
x_0`` of Salimans & Ho 2022; the network itself does not know which). The schedule lives in the
task's scheduler, never here (diffusers' split of weights and schedule).

Conditioning
------------
The continuous parameters enter through the UNet's class-embedding input, which is added to the
time embedding that every residual block receives (scale/shift of its features): the UNet is
built with ``class_embed_type="identity"`` and :class:`ParamEmbedding` (Fourier features of
``y``, then a two-layer MLP) gives the ``(B, 4·width)`` float32 ``class_labels``. The other
choices of diffusers are worse for continuous labels (diffusers issue #10257):
``num_class_embeds`` is an ``nn.Embedding`` of integer classes; ``"timestep"`` passes the labels
through the sinusoidal projection of time steps, whose frequencies are made for magnitudes
0–1000, so y ∈ [0, 1] would only reach its lowest, nearly constant frequencies (and the
labels must then be ``(B,)``, one parameter). This is the conditioning of Mudur et al. 2023
(arXiv:2312.07534, conditional diffusion of CAMELS maps on cosmological parameters): an
embedding of the parameters added to the time embedding.

Discrete classes (``n_classes = K > 0``; e.g. the substructure none/cdm/vortex of strong-lens
images) enter as integer ``labels (B,)`` in [0, K): with no continuous parameters
(``n_params = 0``) through diffusers' own class embedding (``class_embed_type=None,
num_class_embeds=K``: an ``nn.Embedding`` added to the time embedding); with both, as the sum
``ParamEmbedding(y) + nn.Embedding(labels)`` through ``class_embed_type="identity"``. With
``null_class=True`` the embedding has one more row, index K, the "no class" of classifier-free
guidance (Ho & Salimans 2022, "Classifier-free diffusion guidance", arXiv:2207.12598, §3.2):
the task trains on it with probability ``p_uncond`` and mixes the two predictions at sampling.

Periodic maps
-------------
diffusers' convolutions pad with zeros (the right choice for images that are not periodic, such as
strong-lens images: ``circular_padding=False``). With ``circular_padding=True`` (default) every
convolution with padding (input, residual blocks, stride-2 downsampling, post-upsampling and
output convolutions) is switched to ``padding_mode="circular"`` after construction; nearest
upsampling, 1×1 shortcuts, group norms and attention are translation-equivariant by themselves.
The network is then exactly equivariant to periodic shifts by multiples of ``2**(levels - 1)``
pixels (tests/test_diffusion.py). With ``circular_padding=False`` the maps' edges look like
walls to the network.

Sizes: ``width=32, levels=3, layers_per_block=1, attention=True`` at 64², 2 channels has about
2.8 M parameters (``python -c "from engine.nn.registry import summary; print(summary(
'diffusion_unet', channels=2, size=64))"``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ConditionalUNet", "ParamEmbedding", "level_channels"]


def level_channels(width: int, levels: int) -> list[int]:
    """Channels of each resolution level: ``width · min(2**i, 4)`` for level ``i`` (the
    resolution halves from one level to the next)."""
    return [int(width) * min(2**i, 4) for i in range(int(levels))]


def _norm_groups(width: int) -> int:
    """Groups of the group norms: the largest of 8, 4, 2, 1 dividing ``width`` (every level's
    channels are multiples of ``width``)."""
    return next(g for g in (8, 4, 2, 1) if width % g == 0)


class ParamEmbedding(nn.Module):
    """Embedding of normalised continuous parameters: Fourier features, then an MLP.

    Features per parameter: ``y``, ``sin(2^k π y)`` and ``cos(2^k π y)`` for ``k = 0 ..
    frequencies−1`` (fixed, no weights; the lowest frequency spans the unit box once, so the
    features separate any two points of [0, 1]); then ``Linear → SiLU → Linear`` to ``dim``.

    Parameters
    ----------
    n_params : int
        P, the number of conditioning parameters.
    dim : int
        Output width (the UNet's time-embedding width).
    frequencies : int
        Octaves of the Fourier features.

    Input ``(B, P)`` float (normalised to [0, 1]); output ``(B, dim)`` float32.
    """

    def __init__(self, n_params: int, dim: int, frequencies: int = 4):
        super().__init__()
        self.n_params = int(n_params)
        self.register_buffer(
            "freqs", math.pi * 2.0 ** torch.arange(int(frequencies)), persistent=False
        )
        n_in = self.n_params * (1 + 2 * int(frequencies))
        self.mlp = nn.Sequential(nn.Linear(n_in, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = y.float()
        arg = y[..., None] * self.freqs  # (B, P, F)
        feats = torch.cat([y, arg.sin().flatten(1), arg.cos().flatten(1)], dim=1)
        return self.mlp(feats)


class ConditionalUNet(nn.Module):
    """diffusers' ``UNet2DModel`` conditioned on continuous parameters and/or discrete classes
    (module docstring).

    Keyword-only plain-valued arguments, so a checkpoint rebuilds it by name
    (``build_model("diffusion_unet", **kwargs)``).

    Parameters
    ----------
    channels : int
        C, map channels (input and output).
    size : int
        N, map side in pixels; a multiple of ``2**(levels - 1)``.
    n_params : int
        P, conditioning parameters (0: classes only).
    width : int
        Channels of the first level (``block_out_channels = width·(1, 2, 4, 4, …)``); the
        time embedding has ``4·width``.
    levels : int
        Resolution levels (N, N/2, …, N/2**(levels−1)).
    layers_per_block : int
        Residual blocks per level on the way down (one more on the way up, as in diffusers).
    attention : bool
        Self-attention at the lowest resolution (down, middle and up blocks); else the middle
        block has none either.
    circular_padding : bool
        Periodic padding in every convolution (module docstring); zeros otherwise.
    frequencies : int
        Octaves of the Fourier features of the parameters (:class:`ParamEmbedding`).
    n_classes : int
        K, discrete classes of the ``labels`` (0: none).
    null_class : bool
        One more class embedding, index K: "no class" (classifier-free guidance); needs K > 0.

    Raises
    ------
    ValueError
        ``size`` not a multiple of ``2**(levels - 1)``, a non-positive size, neither parameters
        nor classes, or ``null_class`` without classes.
    """

    def __init__(
        self,
        *,
        channels: int = 1,
        size: int = 64,
        n_params: int = 2,
        width: int = 32,
        levels: int = 3,
        layers_per_block: int = 1,
        attention: bool = True,
        circular_padding: bool = True,
        frequencies: int = 4,
        n_classes: int = 0,
        null_class: bool = False,
    ):
        super().__init__()
        from diffusers import UNet2DModel

        stride = 2 ** (int(levels) - 1)
        if int(levels) < 1 or int(width) < 1 or int(channels) < 1:
            raise ValueError("channels, width and levels must be at least 1")
        if int(n_params) < 0 or int(n_classes) < 0 or int(n_params) + int(n_classes) < 1:
            raise ValueError(
                "the U-Net needs conditioning: n_params >= 1 parameters and/or n_classes >= 1 "
                "classes (neither may be negative)"
            )
        if null_class and int(n_classes) < 1:
            raise ValueError("null_class needs n_classes >= 1")
        if int(size) < stride or int(size) % stride:
            raise ValueError(
                f"size={size} must be a multiple of 2**(levels-1)={stride} (levels={levels})"
            )
        self.channels, self.size, self.n_params = int(channels), int(size), int(n_params)
        self.n_classes = int(n_classes)
        #: Index of the "no class" embedding (classifier-free guidance), or None.
        self.null_class = self.n_classes if null_class else None
        chans = level_channels(width, levels)
        down = ["DownBlock2D"] * len(chans)
        up = ["UpBlock2D"] * len(chans)
        if attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        temb = 4 * int(width)
        n_embeds = self.n_classes + (1 if null_class else 0)
        if self.n_params:
            self.embed = ParamEmbedding(self.n_params, temb, frequencies)
            if self.n_classes:
                self.class_embed = nn.Embedding(n_embeds, temb)
            class_options = {"class_embed_type": "identity"}
        else:  # classes only: diffusers' own class embedding
            class_options = {"class_embed_type": None, "num_class_embeds": n_embeds}
        self.unet = UNet2DModel(
            sample_size=self.size,
            in_channels=self.channels,
            out_channels=self.channels,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            block_out_channels=tuple(chans),
            layers_per_block=int(layers_per_block),
            norm_num_groups=_norm_groups(int(width)),
            attention_head_dim=None,  # one head of the level's width
            add_attention=bool(attention),
            time_embedding_dim=temb,
            **class_options,
        )
        if circular_padding:
            for m in self.unet.modules():
                if isinstance(m, nn.Conv2d) and any(p > 0 for p in m.padding):
                    m.padding_mode = "circular"

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The prediction ``(B, C, N, N)`` float32 for noisy maps ``x (B, C, N, N)`` float.

        Parameters
        ----------
        x : torch.Tensor (B, C, N, N) float
        t : torch.Tensor (B,) or 0-d
            Time steps, integer or float in [0, train_timesteps).
        y : torch.Tensor (B, P) float, optional
            Normalised parameters in [0, 1]; may be None (or (B, 0)) when P = 0.
        labels : torch.Tensor (B,) int, optional
            Class indices in [0, K) (K = the null class when there is one); needed when K > 0.

        Raises
        ------
        ValueError
            ``y`` or ``labels`` of the wrong shape, missing, or labels out of range.
        """
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        if self.n_params:
            if y is None or y.ndim != 2 or y.shape[1] != self.n_params:
                shape = None if y is None else tuple(y.shape)
                raise ValueError(f"y must be (B, {self.n_params}); got {shape}")
        elif y is not None and (y.ndim != 2 or y.shape[1] != 0):
            raise ValueError(f"this U-Net takes no parameters (n_params=0); got y {tuple(y.shape)}")
        if self.n_classes:
            top = self.n_classes + (1 if self.null_class is not None else 0)
            if labels is None or labels.shape != (b,):
                shape = None if labels is None else tuple(labels.shape)
                raise ValueError(f"labels must be (B,) = ({b},) class indices; got {shape}")
            labels = labels.to(x.device, torch.long)
            if bool(((labels < 0) | (labels >= top)).any()):
                raise ValueError(f"labels must lie in [0, {top})")
        elif labels is not None:
            raise ValueError("this U-Net has no classes (n_classes=0); labels must be None")
        if not self.n_params:
            return self.unet(x, t, class_labels=labels).sample
        emb = self.embed(y.to(x.device))
        if self.n_classes:
            emb = emb + self.class_embed(labels)
        return self.unet(x, t, class_labels=emb).sample
