r"""Gaussian and lognormal random fields with a given power spectrum on a periodic square grid.

Used by every flat-map kind (:mod:`engine.physics.slabs` for density slabs in Mpc/h,
:mod:`engine.physics.lensing` for κ maps in radians). Conventions of :mod:`engine.physics.stats`:
a map of N² pixels of side L has pixel area a = (L/N)², Fourier modes δ_k of the unnormalised
FFT, and ⟨|δ_k|²⟩ = N² P(k) / a for a field of spectrum P, so that ``power_spectrum`` returns P.

Fields are generated directly from their Fourier amplitudes on the discrete periodic grid: white
noise drawn in Fourier space (:func:`hermitian_white_noise`), filtered by √(P/a)
(:func:`gaussian_from_power`, or :func:`gaussian_from_amplitude` given the modes' standard
deviation n√(P/a) once per distinct spectrum); no aliasing or pixel window to correct.

Lognormal fields (:func:`lognormal_from_power`; Coles & Jones 1991, MNRAS 248, 1; shifted form of
Hilbert, Hartlap & Schneider 2011, A&A 536, A85, eq. 2): δ = s (exp(G − σ_G²/2) − 1) > −s. The
target correlation function ξ on the periodic grid is mapped to the Gaussian one by
ξ_G = ln(1 + ξ/s²) (Coles & Jones eq. 8 inverted), whose spectrum P_G generates G. Where P_G is
negative (the lognormal transform of the target is not positive definite, which happens for large
variance on small scales) it is set to zero; the map's spectrum then falls slightly short of the
target on those scales. The k = 0 mode of G is zero, so ⟨δ⟩ = 0 in expectation (each map's mean
scatters around zero).
"""

from __future__ import annotations

import math

import torch

from engine.params import ConfigError


def _symmetrise_columns_(x: torch.Tensor) -> torch.Tensor:
    """Make the k_x = 0 (and, for even n, Nyquist) columns of half-plane modes Hermitian, in place.

    X(−k_y) = X(k_y)* on those columns, the self-conjugate modes real; E|X|² is unchanged (the
    pair average is divided by √2). ``x`` is (B, n, n//2+1) complex; returns ``x``.
    """
    n = x.shape[-2]
    neg = (-torch.arange(n, device=x.device)) % n
    cols = x[:, :, :: n // 2] if n % 2 == 0 else x[:, :, :1]  # view of the columns 0 (and n/2)
    cols.copy_((cols + cols.index_select(1, neg).conj()) / math.sqrt(2.0))
    return x


def hermitian_white_noise(batch: int, n: int, generator, device=None) -> torch.Tensor:
    """Real FFT of unit white noise drawn directly in Fourier space.

    Statistically identical to ``torch.fft.rfft2`` of n² independent N(0, 1) pixels, without the
    FFT: every mode has E|X|² = n², modes on the k_x = 0 and Nyquist columns are made Hermitian
    (X(−k_y) = X(k_y)*) and the self-conjugate ones real, so any inverse real FFT (CPU or cuFFT)
    is well defined.

    Parameters
    ----------
    batch : int
        Number of fields B.
    n : int
        Pixels per side.
    generator : torch.Generator
        On ``device``; consumes B·n·(n//2+1) complex normal draws.
    device : torch.device or str, optional

    Returns
    -------
    torch.Tensor (B, n, n//2+1) complex64, dimensionless.
    """
    x = torch.randn(
        (batch, n, n // 2 + 1), generator=generator, device=device, dtype=torch.complex64
    )
    return _symmetrise_columns_(x).mul_(n)


def gaussian_from_amplitude(amplitude: torch.Tensor, batch: int, generator) -> torch.Tensor:
    """Gaussian random fields whose Fourier modes are unit white noise × ``amplitude``.

    The hot path of the generators: one complex normal draw per half-plane mode (the stream of
    :func:`hermitian_white_noise`), the Hermitian fix of two columns, one in-place multiply and
    one inverse real FFT per field. Fields sharing a spectrum share one amplitude (broadcast, no
    per-field copy).

    Parameters
    ----------
    amplitude : torch.Tensor (B or 1, n, n//2+1) float32
        n √(P/a) T: the standard deviation n √(P/a) of the modes of a field of spectrum P
        (module conventions, a the pixel area), times an optional filter T.
    batch : int
        Number of fields B.
    generator : torch.Generator
        On ``amplitude``'s device; consumes B·n·(n//2+1) complex normal draws.

    Returns
    -------
    torch.Tensor (B, n, n) float32: the fields of :func:`gaussian_from_power`.
    """
    n = amplitude.shape[-2]
    x = torch.randn(
        (batch, n, n // 2 + 1), generator=generator, device=amplitude.device, dtype=torch.complex64
    )
    x = _symmetrise_columns_(x).mul_(amplitude)
    return torch.fft.irfft2(x, s=(n, n))


def gaussian_from_power(
    power: torch.Tensor, n: int, pix_area: float, generator, transfer: torch.Tensor | None = None
) -> torch.Tensor:
    """Gaussian random fields with a given spectrum on the periodic grid (module conventions).

    Parameters
    ----------
    power : torch.Tensor (B, n, n//2+1), real
        Target spectrum on the real-FFT modes, in units of ``pix_area`` (e.g. (Mpc/h)² or sr).
    n : int
        Pixels per side.
    pix_area : float
        Pixel area (L/n)², same length unit as ``power``.
    generator : torch.Generator
        On ``power``'s device.
    transfer : torch.Tensor (n, n//2+1), optional
        Extra filter applied to the modes (e.g. a smoothing kernel), saving a separate FFT pass.

    Returns
    -------
    torch.Tensor (B, n, n) float32 whose Fourier modes have variance n² P T² / pix_area, i.e.
    ⟨P̂⟩ = P T² for :func:`engine.physics.stats.power_spectrum`: white noise filtered by √(P / a) T.
    """
    amp = (n * torch.sqrt(power / pix_area)).to(torch.float32)
    if transfer is not None:
        amp = amp * transfer.to(torch.float32)
    return gaussian_from_amplitude(amp, power.shape[0], generator)


def lognormal_from_power(
    power: torch.Tensor, n: int, pix_area: float, generator, shift: float = 1.0
) -> torch.Tensor:
    """Shifted lognormal fields δ = s (exp(G − σ_G²/2) − 1) > −s with target spectrum ``power``.

    The Gaussian field G has the spectrum P_G = a·rfft2(ln(1 + ξ/s²)) with ξ = irfft2(P)/a the
    target correlation on the periodic grid (Coles & Jones 1991; shifted form of Hilbert, Hartlap &
    Schneider 2011, A&A 536, A85, eq. 2); negative P_G is set to zero and P_G(k=0) = 0 (module
    docstring). ``shift=1`` is the usual lognormal density field. Shapes and units as
    :func:`gaussian_from_power`.

    Raises
    ------
    ConfigError
        ξ ≤ −s² somewhere: no lognormal field with this shift has the target spectrum.
    """
    xi = torch.fft.irfft2(power, s=(n, n)) / (pix_area * shift**2)
    if bool((xi <= -1).any()):
        raise ConfigError(
            f"the target correlation xi <= -shift^2 = {-(shift**2):.3g} somewhere, which no "
            "lognormal field can have; use a Gaussian field, a smaller amplitude or a larger shift"
        )
    pg = torch.fft.rfft2(torch.log1p(xi)).real * pix_area
    pg = pg.clamp(min=0.0)
    pg[..., 0, 0] = 0.0
    g = gaussian_from_power(pg, n, pix_area, generator)
    var_g = (torch.fft.irfft2(pg, s=(n, n))[..., 0, 0] / pix_area).to(torch.float32)
    return shift * torch.expm1(g - 0.5 * var_g[:, None, None])
