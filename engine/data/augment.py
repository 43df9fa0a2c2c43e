"""Physics-preserving augmentations of batches of periodic square maps (training only)."""

from __future__ import annotations

import math

import torch


def augment_maps(
    x: torch.Tensor,
    generator: torch.Generator,
    flips: bool = False,
    noise: float = 0.0,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Random physics-preserving transforms of a batch of periodic square maps.

    Parameters
    ----------
    x : torch.Tensor (B, C, N, N) float32
        Maps (any units), on the generator's device. Every channel of a map gets the same
        symmetry and smoothing (channels are fields of the same sky or volume).
    generator : torch.Generator
        All random draws come from it, in this order (each only when enabled): the symmetries
        (B, 3), the smoothing scales (B,), the noise levels (B,) and the noise field (B, C, N, N).
    flips : bool
        Each map gets one of the 8 symmetries of the square uniformly (a transpose, a flip of y
        and a flip of x, each with probability 1/2: identity, three 90° rotations and four
        reflections). For statistically isotropic fields on a periodic square these map the
        ensemble to itself and the pixel lattice (centres (i+½)L/N) to itself.
    noise : float
        Each map gets white Gaussian noise with standard deviation per pixel uniform in
        ``[0, noise]``, in the units of ``x``.
    smoothing : float
        Each map is convolved with a periodic Gaussian of standard deviation uniform in
        ``[0, smoothing]`` pixels: Fourier modes times exp(−k²σ²/2), k in radians per pixel.

    Returns
    -------
    torch.Tensor, shape, dtype and device of ``x`` (``x`` itself when nothing is enabled).
    """
    b, n = x.shape[0], x.shape[-1]
    dev = x.device
    if flips:
        bits = torch.randint(0, 2, (b, 3), generator=generator, device=dev).bool()
        t, fy, fx = (bits[:, i].view(b, 1, 1, 1) for i in range(3))
        x = torch.where(t, x.transpose(-1, -2), x)
        x = torch.where(fy, x.flip(-2), x)
        x = torch.where(fx, x.flip(-1), x)
    if smoothing > 0:
        sigma = smoothing * torch.rand((b,), generator=generator, device=dev)
        ky = 2 * math.pi * torch.fft.fftfreq(n, device=dev)
        kx = 2 * math.pi * torch.fft.rfftfreq(n, device=dev)
        k2 = ky[:, None] ** 2 + kx[None, :] ** 2
        kernel = torch.exp(-0.5 * k2 * sigma.view(b, 1, 1, 1) ** 2)
        x = torch.fft.irfft2(torch.fft.rfft2(x) * kernel, s=(n, n))
    if noise > 0:
        level = noise * torch.rand((b,), generator=generator, device=dev)
        field = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
        x = x + level.view(b, 1, 1, 1) * field
    return x
