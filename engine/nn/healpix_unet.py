"""The HEALPix U-Net: a 2-D U-Net (Ronneberger et al. 2015) on the 12 base faces padded from
their neighbours (:mod:`engine.nn.healpix` holds the face geometry, the padding and the crops;
its module docstring explains the design and the sources).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.nn.blocks import ConvBlock
from engine.nn.healpix import _nside_of, pad_faces, unpad_faces

__all__ = ["HealpixUNet"]


class _Down(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            ConvBlock(c_in, c_out, circular=False), ConvBlock(c_out, c_out, circular=False)
        )


class _Up(nn.Module):
    """Nearest ×2 (children copy their parent) → 3×3 conv block, concat skip, two conv blocks."""

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.up = ConvBlock(c_in, c_out, circular=False)
        self.fuse = _Down(c_out + c_skip, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.fuse(torch.cat([x, skip], dim=1))


class HealpixUNet(nn.Module):
    """U-Net on padded HEALPix faces, NESTED ``(B, C_in, npix) → (B, C_out, npix)`` float32.

    Module docstring: design, sources, face axes, gap handling. Built by name with
    ``build_model("healpix_unet", in_channels=…, out_channels=…, …)``.

    Parameters
    ----------
    in_channels : int
        ``C_in`` input channels (e.g. 2: lensed Q, U).
    out_channels : int
        ``C_out`` output channels; with ``residual`` at most ``C_in``.
    width : int
        Channels of the first level; level ``i`` has ``width · 2**i``.
    levels : int
        Number of 2×2 poolings (``≥ 1``); ``nside`` must be a multiple of ``2**levels``.
    margin : int, optional
        Padding ``m`` of every face in pixels, a multiple of ``2**levels``; default
        ``4 · 2**levels``. The forward pass uses ``min(margin, nside)`` (:meth:`margin_for`).
    residual : bool
        Output ``x[:, :C_out]`` + U-Net output; the output convolution starts at zero (the
        untrained network is the identity).
    face_batch : int
        At most this many padded faces go through the U-Net at once in :meth:`forward` (memory;
        the result does not depend on it, all statistics being per face).

    Raises
    ------
    ValueError
        Non-positive sizes, a margin that is not a non-negative multiple of ``2**levels``, or
        ``residual`` with ``out_channels > in_channels`` (one line).
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 2,
        width: int = 16,
        levels: int = 4,
        margin: int | None = None,
        residual: bool = True,
        face_batch: int = 12,
    ):
        super().__init__()
        for name, v in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("width", width),
            ("levels", levels),
            ("face_batch", face_batch),
        ):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.levels, self.stride = int(levels), 2 ** int(levels)
        if margin is None:
            margin = 4 * self.stride
        if isinstance(margin, bool) or int(margin) != margin or margin < 0 or margin % self.stride:
            raise ValueError(
                f"margin={margin!r} must be a non-negative multiple of 2**levels={self.stride}"
            )
        if residual and out_channels > in_channels:
            raise ValueError(
                f"residual=True needs out_channels={out_channels} <= in_channels={in_channels}"
            )
        self.margin, self.residual, self.face_batch = int(margin), bool(residual), int(face_batch)
        chans = [int(width) * 2**i for i in range(self.levels + 1)]
        self.down = nn.ModuleList(
            [_Down(self.in_channels if i == 0 else chans[i - 1], chans[i]) for i in range(levels)]
        )
        self.bottom = _Down(chans[-2], chans[-1])
        self.up = nn.ModuleList(
            [_Up(chans[i + 1], chans[i], chans[i]) for i in reversed(range(self.levels))]
        )
        self.head = nn.Conv2d(chans[0], self.out_channels, 1)
        if self.residual:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def margin_for(self, nside: int) -> int:
        """Margin used at ``nside``: ``min(self.margin, nside)`` (pixels).

        Raises
        ------
        ValueError
            ``nside`` is not a multiple of ``2**levels`` (one line naming both).
        """
        nside = int(nside)
        if nside < self.stride or nside % self.stride:
            raise ValueError(
                f"nside={nside} must be a multiple of 2**levels={self.stride} (levels={self.levels})"
            )
        return min(self.margin, nside)

    def unet(self, x: torch.Tensor) -> torch.Tensor:
        """The plain U-Net ``(N, C_in, H, W) → (N, C_out, H, W)``, ``H, W`` multiples of
        ``2**levels`` (no residual, no crop)."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.avg_pool2d(x, 2)
        x = self.bottom(x)
        for block in self.up:
            x = block(x, skips.pop())
        return self.head(x)

    def forward_faces(self, x: torch.Tensor, margin: int | None = None) -> torch.Tensor:
        """Padded face crops ``(N, C_in, h + 2m, w + 2m)`` → their centres ``(N, C_out, h, w)``.

        What training calls on :func:`crop_padded` crops. ``h + 2m`` and ``w + 2m`` must be
        multiples of ``2**levels``.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, C_in, h + 2m, w + 2m)`` float.
        margin : int, optional
            ``m``; default ``self.margin``.

        Raises
        ------
        ValueError
            Wrong channel count or sizes not multiples of ``2**levels``.
        """
        m = self.margin if margin is None else int(margin)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W); got {tuple(x.shape)}")
        hh, ww = x.shape[-2:]
        if hh % self.stride or ww % self.stride or hh <= 2 * m or ww <= 2 * m:
            raise ValueError(
                f"padded crops {hh}×{ww} must be multiples of 2**levels={self.stride} "
                f"larger than 2·margin={2 * m}"
            )
        y = self.unet(x)[..., m : hh - m, m : ww - m]
        if self.residual:
            y = y + x[:, : self.out_channels, m : hh - m, m : ww - m]
        return y

    def forward(self, x: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """NESTED skies ``(B, C_in, npix)`` float → ``(B, C_out, npix)`` float32.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, C_in, npix)`` NESTED skies.
        tile : int, optional
            Run the U-Net on ``tile`` × ``tile`` windows of each face (plus the margin from the
            padded face), as training does on crops, instead of on whole faces. Use the
            training crop size: GroupNorm's statistics then match those of training (a network
            trained on 128² windows and run on whole 512² faces at nside 512 left large-scale
            B power in its output: A_res 5.8 at ℓ ≈ 30 against 1.0 tiled). A divisor of nside
            and a multiple of ``2**levels``.

        Raises
        ------
        ValueError
            Wrong shape or channels, ``npix`` not ``12·nside²``, ``nside`` not a multiple of
            ``2**levels``, a tile that does not divide nside.
        """
        if x.ndim != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, npix); got {tuple(x.shape)}")
        nside = _nside_of(x.shape[-1])
        m = self.margin_for(nside)
        faces = pad_faces(x.float(), m)
        if tile is None or int(tile) >= nside:
            out = torch.cat(
                [self.forward_faces(chunk, m) for chunk in faces.split(self.face_batch)], dim=0
            )
            return unpad_faces(out, nside, 0)
        c = int(tile)
        if c < 1 or nside % c or c % self.stride:
            raise ValueError(
                f"tile={tile} must divide nside={nside} and be a multiple of 2**levels={self.stride}"
            )
        out = faces.new_empty(faces.shape[0], self.out_channels, nside, nside)
        for i in range(0, nside, c):
            rows = faces[:, :, i : i + c + 2 * m]
            for j in range(0, nside, c):
                win = rows[:, :, :, j : j + c + 2 * m]
                out[:, :, i : i + c, j : j + c] = torch.cat(
                    [self.forward_faces(chunk, m) for chunk in win.split(self.face_batch)], dim=0
                )
        return unpad_faces(out, nside, 0)
