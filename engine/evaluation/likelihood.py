r"""Classical inference of (Ω_m, σ8) from maps: the binned P(k) likelihood and the Fisher bound.

Data and model
--------------
For each map the data vector is its binned power spectrum P̂_b (:func:`engine.physics.stats.power_spectrum`,
bins k_f wide centred on k_f, 2k_f, … up to the Nyquist k_N = πN/L, or up to ``k_max``), and
the model is the expected binned spectrum of a map made with the same settings,

    μ_b(θ) = ``binned_theory(settings, Ω_m, σ8)``,      θ = (Ω_m, σ8),

with smoothing, white noise and slab projection for the ``grf``, ``lognormal`` and ``2lpt`` slab
maps (:func:`engine.physics.slabs.binned_theory`, k in h/Mpc, P in (Mpc/h)²) and C_ℓ with shape noise and
smoothing for ``kappa`` maps (:func:`engine.physics.lensing.binned_theory`, box = field of view in
radians, k = ℓ, C_ℓ in sr). Bins whose expected power is below :data:`DYNAMIC_RANGE` of the
mean power of the map are dropped (the float32 rounding floor of the maps lies ~1e-15 below it;
only the far tail of strong smoothing reaches it).

Likelihood and its covariance
-----------------------------
Gaussian in P̂ with the Gaussian-field covariance of :mod:`engine.physics.stats`,

    −2 ln L(θ) = Σ_b (P̂_b − μ_b(θ))² / σ_b²,    σ_b² = 2 μ_b(θ̂)² / n_b,

and a flat prior on the box ``prior`` in (Ω_m, σ8). **The covariance does not depend on θ**: it
is held fixed at the maximum θ̂ of the likelihood itself (self-consistently: θ̂ is where the score
Σ_b (n_b/2)(P̂_b − μ_b) ∂μ_b / μ_b² vanishes, found by Fisher scoring). Why not a θ-dependent
covariance with its log-determinant: for a Gaussian field the covariance carries no information
that the mean does not already carry, but a Gaussian likelihood with C(θ) adds ½ Tr[C⁻¹C,i C⁻¹C,j]
= Σ_b 2 ∂_i ln μ_b ∂_j ln μ_b to its Fisher matrix, spurious information that makes posteriors too
narrow, worst for bins with few modes (Carron 2013, A&A 551, A88). A covariance fixed at an
arbitrary fiducial avoids that but gives an inefficient estimator far from the fiducial (the
prior box spans a factor 2.8 in σ8²); fixed at θ̂ it is both. Its maximum θ̂ is also the maximum
of the exact likelihood of a Gaussian field's binned spectrum, P̂_b ~ μ_b χ²_{n_b} / n_b (the
"gamma" option, −ln L = Σ_b (n_b/2)(P̂_b/μ_b + ln μ_b)), because both have the same score at θ̂;
their widths differ at the level of the observed vs expected information (the Gaussian one has
the curvature of the expected Fisher matrix at θ̂).

Algorithm (:func:`pk_likelihood_predict`, all maps at once, float64 torch on the CPU)
----------------------------------------------------------------------------------------
0. A :class:`TheoryTable` of ln μ_b on nodes uniform in (ln Ω_m, ln σ8) over the prior box, one
   batched theory call, interpolated by Catmull–Rom cubic convolution (with cubically
   extrapolated ghost nodes) with analytic derivatives. For fields, and κ with linear matter
   power, μ = σ8² S(Ω_m) + N exactly, so two calls per Ω_m node fill any σ8 resolution; κ with
   halofit needs a pyccl call per (Ω_m, σ8) node (~0.3 s each), hence a coarser default grid.
   The table is cached per settings, prior, bins and node numbers.
1. The gamma log-likelihood on the ``grid × grid`` posterior grid (uniform in Ω_m and σ8,
   endpoints on the prior edges) for all maps: one (B, K) × (K, G) matrix product. Its argmax
   is the starting point of
2. Fisher scoring (projected onto the prior box) to the maximum θ̂ (reported as ``map``).
3. The Gaussian posterior with σ_b fixed at θ̂ on the same grid, normalised; posterior mean and
   standard deviation per parameter and the correlation are its moments. Sums over a uniform
   grid converge exponentially for smooth posteriors (Poisson summation: the aliasing error is
   exp(−2π² mᵀD⁻¹ΣD⁻¹m) for the reciprocal-lattice vectors m, D the grid steps, Σ the posterior
   covariance), so when the Laplace covariance Σ = F(θ̂)⁻¹ is not resolved (min over small
   integer m of mᵀD⁻¹ΣD⁻¹m < 1, i.e. the posterior is narrower than a grid cell along some
   lattice direction: large maps), the moments come instead from a local 21 × 21 grid in the
   whitened coordinates z = L⁻¹(θ − θ̂), |z_i| ≤ 5, Σ = LLᵀ (``refined`` is True for those maps).

Fisher matrix and Cramér–Rao bound
----------------------------------
For a Gaussian random field on the periodic grid, the modes k and −k form one complex Gaussian
variable with independent real and imaginary parts of variance P(k)/2 each (in the units of
:mod:`engine.physics.stats`), and the self-conjugate (Nyquist) modes one real variable of variance P(k).
A zero-mean Gaussian variable x of variance s²(θ) has Fisher information ½ ∂_i ln s² ∂_j ln s²
(Tegmark, Taylor & Heavens 1997, ApJ 480, 22: F = ½ Tr[C⁻¹C,i C⁻¹C,j] for zero-mean Gaussian
data, here with a diagonal C).
A complex mode pair therefore holds 2 × ½ (∂ ln P)² and a self-conjugate mode ½ (∂ ln P)²: with
the **full-plane** mode count of :mod:`engine.physics.stats` (k and −k counted separately) every mode
carries exactly ½,

    F_ij = ½ Σ_{full-plane modes k in the bins} ∂_i ln P_map(k) ∂_j ln P_map(k),            (F)

P_map including smoothing and noise. This is the exact information of the map (all of it is in
the spectrum for a Gaussian field) and is what :func:`fisher_matrix` sums mode by mode. Binned,
it becomes Σ_b (n_b/2) ∂_i ln μ_b ∂_j ln μ_b, the Fisher matrix of the likelihood above, equal
to (F) up to the variation of P and ∂ ln P inside a bin (``binned=True``; it can come out slightly
larger, as 2μ_b²/n_b underestimates the variance of a bin over which P varies: ~1 % for steep
κ spectra, ~0.1 % for slabs). For lognormal, 2LPT and lognormal κ maps (F) is only the
information of the spectrum under Gaussian covariance, not a bound. Note that a known smoothing
of a noiseless map changes no ∂ ln P and loses no information; noise does.

Derivatives are central finite differences of the theory (relative steps ``FD_STEP``; one-sided
at the parameter bounds) or, for the slab kinds, forward-mode autograd through the interpolated
theory of :func:`engine.physics.slabs.theory_power` (``derivative="autograd"``); the tests check that
they agree.

Caveats: ``2lpt`` slabs are compared with the *linear* projected spectrum through the CIC windows
of the mesh (eq. 1' of :mod:`engine.physics.slabs`: exact along the line of sight, in-plane without
aliases) but without the LPT damping and nonlinear growth of :mod:`engine.physics.lpt`: use
``k_max`` ≲ k_N/4 there. Masked κ maps, 3D volumes and
HEALPix skies are not supported.
"""

from __future__ import annotations

import csv
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.params import OMEGA_M_BOUNDS, SIGMA8_BOUNDS, ConfigError, to_dict
from engine.physics.stats import (
    bin_isotropic,
    default_edges,
    power_spectrum,
    rfft_weights,
    wavenumbers,
)

#: Inferred parameters, in the order of every (..., 2) array of this module.
PARAM_NAMES = ("omega_m", "sigma8")
#: Default flat prior box ((Ω_m low, high), (σ8 low, high)), the training prior.
DEFAULT_PRIOR = ((0.1, 0.5), (0.6, 1.0))
#: Map kinds the P(k) likelihood supports (2lpt only as 2D slabs).
SUPPORTED_KINDS = ("grf", "lognormal", "2lpt", "kappa")
#: Relative finite-difference steps of the theory derivatives, per theory family.
FD_STEP = {"slab": 1e-4, "kappa": 1e-2}
#: Half-width (in posterior standard deviations) and points per axis of the refined local grid.
LOCAL_HALF_WIDTH, LOCAL_POINTS = 5.0, 21
#: Bins whose expected power at (Ω_m, σ8) = (0.3, 0.8) is below this fraction of the mean power
#: over all modes (the white-noise level of the same pixel variance) are not used: float32 maps
#: have a rounding floor ~1e-15 of it (the tail of strong smoothing sinks below it).
DYNAMIC_RANGE = 1e-9
#: Likelihood choices of :func:`pk_likelihood_predict`.
LIKELIHOODS = ("gaussian", "gamma")


# ---------------------------------------------------------------------------------------------
# Map model: settings -> bins, measured spectra and theory
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapModel:
    """The binned spectrum and its theory for maps made with one set of settings.

    Build with :func:`map_model`.

    Attributes
    ----------
    settings : FieldParams, LPTParams or KappaParams
    family : {"slab", "kappa"}
        Which theory: :mod:`engine.physics.slabs` (k in h/Mpc, P in (Mpc/h)²) or :mod:`engine.physics.lensing`
        (k = ℓ, C_ℓ in sr).
    size : int
        Pixels per side N.
    box : float
        Side of the periodic map: Mpc/h (slabs) or radians (κ), the ``box_size`` of
        :mod:`engine.physics.stats`.
    edges : torch.Tensor (K+1,) float64
        Bin edges (h/Mpc or ℓ).
    k : torch.Tensor (K,) float64
        Mean |k| (or ℓ) of the modes of each bin.
    n_modes : torch.Tensor (K,) float64
        Full-plane modes per bin.
    separable : bool
        μ = σ8² S(Ω_m) + N(Ω_m) exactly (linear theory): fields, κ with linear matter power.
    """

    settings: object
    family: str
    size: int
    box: float
    edges: torch.Tensor
    k: torch.Tensor
    n_modes: torch.Tensor
    separable: bool

    @property
    def shape(self) -> tuple[int, int]:
        """Real-space shape (N, N)."""
        return (self.size, self.size)

    def mode_power(self, k: torch.Tensor, omega_m, sigma8) -> torch.Tensor:
        """Expected map spectrum at wavenumbers ``k`` (h/Mpc or ℓ), (B, ...) float64.

        Smoothing and noise included (:func:`engine.physics.slabs.theory_power` or
        :func:`engine.physics.lensing.map_cl`); ``omega_m``, ``sigma8`` tensors (B,) float64.
        """
        if self.family == "slab":
            from engine.physics import slabs

            return slabs.theory_power(self.settings, k, omega_m, sigma8)
        from engine.physics import lensing

        om = torch.as_tensor(omega_m).detach().cpu().numpy()
        s8 = torch.as_tensor(sigma8).detach().cpu().numpy()
        return lensing.map_cl(self.settings, k, om, s8)

    def binned(self, omega_m: torch.Tensor, sigma8: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        """Expected binned spectrum μ_b for B cosmologies: (B, K) float64, (Mpc/h)² or sr.

        The theory of :func:`engine.physics.slabs.binned_theory` / :func:`engine.physics.lensing.binned_theory`
        (mode-averaged like the estimator), evaluated in chunks of cosmologies to bound memory.
        """
        om = torch.as_tensor(omega_m, dtype=torch.float64).reshape(-1)
        s8 = torch.as_tensor(sigma8, dtype=torch.float64).reshape(-1)
        if self.family == "slab":
            from engine.physics.slabs import binned_theory
        else:
            from engine.physics.lensing import binned_theory
        chunk = chunk or max(1, 4_000_000 // (self.size * (self.size // 2 + 1)))
        out = []
        for i in range(0, om.numel(), chunk):
            o, s = om[i : i + chunk], s8[i : i + chunk]
            if self.family == "kappa":
                o, s = o.numpy(), s.numpy()
            out.append(binned_theory(self.settings, o, s, self.edges).power)
        return torch.cat(out).reshape(om.numel(), -1)

    def measure(self, maps: torch.Tensor) -> torch.Tensor:
        """Binned spectra P̂_b of maps (B, N, N): (B, K) float64, (Mpc/h)² or sr."""
        return power_spectrum(maps, self.box, self.edges).power

    def modes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """|k| (M,) and full-plane weights (M,) (1 or 2) of the stored real-FFT modes in the bins."""
        kmag = wavenumbers(self.shape, self.box)
        w = rfft_weights(self.shape).expand_as(kmag)
        sel = (kmag >= self.edges[0]) & (kmag < self.edges[-1]) & (kmag > 0)
        return kmag[sel], w[sel]

    def key(self) -> tuple:
        """Hashable identity of the theory (settings except per-map ones, and the bins)."""
        skip = {"omega_m", "sigma8", "count", "seed", "name"}
        items = tuple(
            sorted((k, repr(v)) for k, v in to_dict(self.settings).items() if k not in skip)
        )
        return (type(self.settings).__name__, self.family, items, tuple(self.edges.tolist()))


def map_model(settings, k_max: float | None = None) -> MapModel:
    """The :class:`MapModel` of maps made with ``settings``, using bins up to ``k_max``.

    Bins above ``k_max`` and, from the first such bin on, bins whose expected power at
    (Ω_m, σ8) = (0.3, 0.8) is below :data:`DYNAMIC_RANGE` × the mean power over all modes are
    dropped (module docstring), so the bins are always k_f … some k_cut.

    Parameters
    ----------
    settings : FieldParams (grf, lognormal), LPTParams (2lpt, ``dim=2``) or KappaParams
    k_max : float, optional
        Highest bin centre kept, h/Mpc (slabs) or ℓ (κ); default the Nyquist k_N = πN/L.

    Raises
    ------
    ConfigError
        Unsupported kind (sky, 3D volumes, masked κ), settings outside the theory tables, or a
        ``k_max`` below the fundamental mode.
    """
    from engine.params import FieldParams
    from engine.physics import lensing, slabs

    kind = getattr(settings, "kind", None)
    if isinstance(settings, lensing.KappaParams):
        if settings.mask:
            raise ConfigError(
                "masked kappa maps are not supported by the P(k) likelihood: the spectrum of a "
                "masked map is not map_cl (use unmasked maps)"
            )
        lensing.check_resolution(settings)
        family, box = "kappa", lensing.fov_radians(settings)
        separable = settings.matter_power == "linear"
    elif isinstance(settings, FieldParams) and kind in ("grf", "lognormal", "2lpt"):
        if kind == "2lpt" and getattr(settings, "dim", 2) != 2:
            raise ConfigError(
                "2lpt volumes (dim=3) are not supported by the P(k) likelihood: use slab maps (dim=2)"
            )
        slabs.check_resolution(settings)
        family, box, separable = "slab", float(settings.box_size), True
    else:
        raise ConfigError(
            f"kind={kind!r} is not supported by the P(k) likelihood: kind must be one of "
            + ", ".join(map(repr, SUPPORTED_KINDS))
        )
    n = int(settings.size)
    edges = default_edges((n, n), box)
    kf = 2 * math.pi / box
    if k_max is not None:
        if not (math.isfinite(k_max) and k_max >= kf):
            unit = "ell" if family == "kappa" else "h/Mpc"
            raise ConfigError(
                f"k_max={k_max:g} {unit} is below the fundamental mode k_f={kf:.4g}: no bin is left"
            )
        n_keep = int(math.floor(k_max / kf * (1 + 1e-9)))
        edges = edges[: min(n_keep, edges.numel() - 1) + 1]
    ones = torch.ones(n, n // 2 + 1, dtype=torch.float64)
    ps = bin_isotropic(ones, (n, n), box, edges)
    model = MapModel(settings, family, n, box, edges, ps.k, ps.n_modes, separable)
    # drop the bins below the float32 floor: μ_b < DYNAMIC_RANGE × (mean power over all modes)
    fid = torch.tensor([0.3], dtype=torch.float64), torch.tensor([0.8], dtype=torch.float64)
    kmag = wavenumbers((n, n), box)
    p_all = model.mode_power(kmag, *fid)[0] * rfft_weights((n, n))
    mean_power = float((p_all.sum() - p_all[0, 0]) / (n * n - 1))
    low = (model.binned(*fid)[0] < DYNAMIC_RANGE * mean_power).nonzero()
    if low.numel():
        n_keep = int(low[0])
        if n_keep == 0:
            raise ConfigError(
                "every bin of these maps is below the float32 precision floor of the map "
                "(smoothing too strong for the pixel size)"
            )
        edges = edges[: n_keep + 1]
        ps = bin_isotropic(ones, (n, n), box, edges)
        model = MapModel(settings, family, n, box, edges, ps.k, ps.n_modes, separable)
    return model


def settings_from_attrs(attrs: dict):
    """Rebuild the settings maps were made with from their attrs (``kind`` picks the class).

    Uses the kinds registry (:mod:`engine.kinds`): :func:`engine.physics.slabs.settings_from_attrs` for
    grf/lognormal, :func:`engine.physics.lensing.settings_from_attrs` for kappa, the LPTParams settings
    for 2lpt.

    Raises
    ------
    ConfigError
        No ``kind`` attr, or a kind the P(k) likelihood does not support.
    """
    from engine.kinds import KINDS

    kind = attrs.get("kind")
    if kind is None:
        raise ConfigError(
            "the maps carry no 'kind' attr: they were not written by 'python -m engine fields'"
        )
    if kind not in SUPPORTED_KINDS:
        raise ConfigError(
            f"kind={kind!r} is not supported by the P(k) likelihood: kind must be one of "
            + ", ".join(map(repr, SUPPORTED_KINDS))
        )
    if kind in ("grf", "lognormal"):
        from engine.physics.slabs import settings_from_attrs as from_attrs

        return from_attrs(attrs)
    if kind == "kappa":
        from engine.physics.lensing import settings_from_attrs as from_attrs

        return from_attrs(attrs)
    cls = KINDS[kind].settings_class()
    names = set(cls.param) - {"name"}
    values = {}
    for k, v in attrs.items():
        if k in names:
            values[k] = v.item() if isinstance(v, np.generic) else v
    return cls(**values)


# ---------------------------------------------------------------------------------------------
# Theory table
# ---------------------------------------------------------------------------------------------


def _cubic_weights(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Catmull–Rom weights (..., 4) and their t-derivatives for nodes i−1, i, i+1, i+2."""
    t2, t3 = t * t, t * t * t
    w = torch.stack(
        [
            0.5 * (-t + 2 * t2 - t3),
            0.5 * (2 - 5 * t2 + 3 * t3),
            0.5 * (t + 4 * t2 - 3 * t3),
            0.5 * (-t2 + t3),
        ],
        dim=-1,
    )
    dw = torch.stack(
        [
            0.5 * (-1 + 4 * t - 3 * t2),
            0.5 * (-10 * t + 9 * t2),
            0.5 * (1 + 8 * t - 9 * t2),
            0.5 * (-2 * t + 3 * t2),
        ],
        dim=-1,
    )
    return w, dw


def _pad_ghosts(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Add one cubically extrapolated ghost node at each end of ``dim`` (needs ≥ 4 nodes)."""
    n = x.shape[dim]
    a = [x.select(dim, i) for i in range(4)]
    b = [x.select(dim, n - 1 - i) for i in range(4)]
    lo = 4 * a[0] - 6 * a[1] + 4 * a[2] - a[3]
    hi = 4 * b[0] - 6 * b[1] + 4 * b[2] - b[3]
    return torch.cat([lo.unsqueeze(dim), x, hi.unsqueeze(dim)], dim=dim)


@dataclass(frozen=True)
class TheoryTable:
    """ln μ_b tabulated on nodes uniform in (ln Ω_m, ln σ8), with cubic interpolation.

    Attributes
    ----------
    ln_om0, dln_om : float
        ln Ω_m of the first node and the node spacing.
    ln_s80, dln_s8 : float
        Same for σ8.
    ln_mu : torch.Tensor (n_om + 2, n_s8 + 2, K) float64
        ln μ_b at the nodes, padded with one extrapolated ghost node per side.
    """

    ln_om0: float
    dln_om: float
    ln_s80: float
    dln_s8: float
    ln_mu: torch.Tensor

    @classmethod
    def build(cls, model: MapModel, prior, nodes: tuple[int, int]) -> TheoryTable:
        """Tabulate ``model``'s binned theory over the ``prior`` box on ``nodes`` = (n_om, n_s8)."""
        (om_lo, om_hi), (s8_lo, s8_hi) = prior
        n_om, n_s8 = nodes
        ln_om = torch.linspace(math.log(om_lo), math.log(om_hi), n_om, dtype=torch.float64)
        ln_s8 = torch.linspace(math.log(s8_lo), math.log(s8_hi), n_s8, dtype=torch.float64)
        om, s8 = ln_om.exp(), ln_s8.exp()
        if model.separable:  # μ = σ8² S + N: two theory calls per Ω_m node
            mu1 = model.binned(om, torch.full_like(om, 1.0))
            mu2 = model.binned(om, torch.full_like(om, 0.5))
            signal = (mu1 - mu2) / 0.75
            noise = (mu1 - signal).clamp(min=0.0)
            mu = s8[None, :, None] ** 2 * signal[:, None, :] + noise[:, None, :]
        else:
            oo, ss = torch.meshgrid(om, s8, indexing="ij")
            mu = model.binned(oo.reshape(-1), ss.reshape(-1)).reshape(n_om, n_s8, -1)
        if not bool((mu > 0).all()):
            raise ConfigError(
                "the theory spectrum is not positive in every bin: check the settings"
            )
        ln_mu = _pad_ghosts(_pad_ghosts(mu.log(), 0), 1)
        return cls(
            float(ln_om[0]),
            float(ln_om[1] - ln_om[0]),
            float(ln_s8[0]),
            float(ln_s8[1] - ln_s8[0]),
            ln_mu,
        )

    def __call__(self, omega_m: torch.Tensor, sigma8: torch.Tensor, grad: bool = False):
        """Interpolated μ_b at (Ω_m, σ8) of any shape (...).

        Returns
        -------
        mu : torch.Tensor (..., K) float64
        dmu : torch.Tensor (..., K, 2) float64, only with ``grad``: ∂μ_b/∂(Ω_m, σ8).
        """
        n_om, n_s8, k = self.ln_mu.shape[0] - 2, self.ln_mu.shape[1] - 2, self.ln_mu.shape[2]
        tu = (omega_m.log() - self.ln_om0) / self.dln_om
        tv = (sigma8.log() - self.ln_s80) / self.dln_s8
        iu = tu.floor().long().clamp(0, n_om - 2)
        iv = tv.floor().long().clamp(0, n_s8 - 2)
        wu, dwu = _cubic_weights(tu - iu)
        wv, dwv = _cubic_weights(tv - iv)
        offs = torch.arange(4, device=iu.device)
        flat = (iu[..., None, None] + offs[:, None]) * (n_s8 + 2) + (iv[..., None, None] + offs)
        taps = self.ln_mu.reshape(-1, k)[flat]  # (..., 4, 4, K); padded node j+1 = node j
        ln_mu = torch.einsum("...a,...b,...abk->...k", wu, wv, taps)
        mu = ln_mu.exp()
        if not grad:
            return mu
        d_u = (
            torch.einsum("...a,...b,...abk->...k", dwu, wv, taps)
            / (self.dln_om * omega_m)[..., None]
        )
        d_v = (
            torch.einsum("...a,...b,...abk->...k", wu, dwv, taps)
            / (self.dln_s8 * sigma8)[..., None]
        )
        return mu, mu[..., None] * torch.stack([d_u, d_v], dim=-1)


def _check_prior(prior) -> tuple[tuple[float, float], tuple[float, float]]:
    try:
        (a, b), (c, d) = prior
        out = ((float(a), float(b)), (float(c), float(d)))
    except (TypeError, ValueError):
        raise ConfigError(
            "prior must be ((omega_m_min, omega_m_max), (sigma8_min, sigma8_max))"
        ) from None
    for name, (lo, hi), (blo, bhi) in zip(
        PARAM_NAMES, out, (OMEGA_M_BOUNDS, SIGMA8_BOUNDS), strict=True
    ):
        if not (blo <= lo < hi <= bhi):
            raise ConfigError(
                f"prior of {name} ({lo:g}, {hi:g}) must satisfy {blo} <= low < high <= {bhi}"
            )
    return out


_CACHE: OrderedDict = OrderedDict()
_CACHE_LOCK = threading.Lock()


def theory_grid(model: MapModel, prior, grid: int, nodes: tuple[int, int] | None = None):
    """Cached (:class:`TheoryTable`, grid θ (G, 2), μ on the grid (G, K)) for ``model``.

    The posterior grid is ``grid × grid`` points uniform in Ω_m and σ8 with the prior edges as
    endpoints, Ω_m varying slowest (G = grid²). ``nodes`` default: (64, 32) for separable
    theories, (12, 6) for κ with halofit (one pyccl call per node).
    """
    if nodes is None:
        nodes = (64, 32) if model.separable else (12, 6)
    nodes = (int(nodes[0]), int(nodes[1]))
    if min(nodes) < 4:
        raise ConfigError(f"table nodes {nodes} must be >= 4 per parameter")
    key = (model.key(), prior, grid, nodes)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        table = TheoryTable.build(model, prior, nodes)
        om = torch.linspace(*prior[0], grid, dtype=torch.float64)
        s8 = torch.linspace(*prior[1], grid, dtype=torch.float64)
        oo, ss = torch.meshgrid(om, s8, indexing="ij")
        theta = torch.stack([oo.reshape(-1), ss.reshape(-1)], dim=-1)
        mu = table(theta[:, 0], theta[:, 1])
        _CACHE[key] = (table, theta, mu)
        while len(_CACHE) > 8:
            _CACHE.popitem(last=False)
        return _CACHE[key]


# ---------------------------------------------------------------------------------------------
# Likelihood
# ---------------------------------------------------------------------------------------------


def _as_maps(maps, settings):
    """(maps (B, N, N) float tensor on the CPU, settings, truth (B, 2) or None) of the input."""
    truth = None
    if hasattr(maps, "dims") and hasattr(maps, "attrs"):  # xarray.DataArray
        if settings is None:
            settings = settings_from_attrs(dict(maps.attrs))
        if "omega_m" in maps.coords and "sigma8" in maps.coords:
            truth = np.stack(
                [np.asarray(maps["omega_m"], np.float64), np.asarray(maps["sigma8"], np.float64)],
                axis=-1,
            ).reshape(-1, 2)
        if maps.ndim != 3:
            raise ConfigError(
                f"maps of dims {tuple(maps.dims)} are not supported: the P(k) likelihood needs "
                "2D maps (sample, y, x)"
            )
        maps = maps.values
    if settings is None:
        raise ConfigError("settings are needed for maps without attrs (pass settings=...)")
    x = torch.as_tensor(np.asarray(maps) if not torch.is_tensor(maps) else maps)
    if x.ndim == 2:
        x = x.unsqueeze(0)
    n = int(settings.size)
    if x.ndim != 3 or tuple(x.shape[1:]) != (n, n):
        raise ConfigError(
            f"maps of shape {tuple(x.shape)} do not match the settings: expected (B, {n}, {n})"
        )
    if not x.is_floating_point():
        x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ConfigError("maps hold NaN or infinite pixels")
    return x.detach().cpu(), settings, truth


def _gamma_loglike(p: torch.Tensor, half: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """ln L = −Σ_b (n_b/2)(P̂_b/μ_b + ln μ_b) for maps p (B, K) at points mu (..., G, K)."""
    if mu.ndim == 2:
        return -((p * half) @ (1 / mu).T + (half * mu.log()).sum(-1))
    return -torch.einsum("bk,bgk->bg", p * half, 1 / mu) - (half * mu.log()).sum(-1)


def _gauss_loglike(p: torch.Tensor, wts: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """ln L = −½ Σ_b w_b (P̂_b − μ_b)², w (B, K) per map, at points mu (G, K) or (B, G, K)."""
    if mu.ndim == 2:
        chi2 = (wts * p * p).sum(-1, keepdim=True) - 2 * (wts * p) @ mu.T + wts @ (mu * mu).T
        return -0.5 * chi2
    return -0.5 * (wts[:, None, :] * (p[:, None, :] - mu) ** 2).sum(-1)


def _moments(logp: torch.Tensor, theta: torch.Tensor):
    """Mean (B, 2), std (B, 2), correlation (B,) of weights exp(logp) (B, G) at theta (…, G, 2)."""
    logp = torch.nan_to_num(logp, nan=-math.inf)
    w = torch.exp(logp - logp.max(dim=-1, keepdim=True).values)
    w = w / w.sum(-1, keepdim=True)
    th = theta if theta.ndim == 3 else theta[None]
    mean = torch.einsum("bg,bgi->bi", w, th.expand(w.shape[0], -1, -1))
    d = th - mean[:, None, :]
    cov = torch.einsum("bg,bgi,bgj->bij", w, d, d)
    std = cov.diagonal(dim1=-2, dim2=-1).clamp(min=0).sqrt()
    corr = cov[:, 0, 1] / (std[:, 0] * std[:, 1]).clamp(min=1e-300)
    return mean, std, corr


def _fisher_scoring(p, half, table, theta, lo, hi, cell, max_iter=30):
    """Maximise the gamma likelihood (same maximum as the self-consistent Gaussian) in the box.

    Projected Fisher scoring: a coordinate at a bound whose step points outwards is frozen and
    the other one solved alone; steps are limited to 3 grid cells. Returns θ̂ (B, 2).
    """
    for _ in range(max_iter):
        mu, dmu = table(theta[:, 0], theta[:, 1], grad=True)
        w = half / (mu * mu)
        g = torch.einsum("bk,bk,bki->bi", w, p - mu, dmu)
        f = torch.einsum("bk,bki,bkj->bij", w, dmu, dmu)
        det = f[:, 0, 0] * f[:, 1, 1] - f[:, 0, 1] ** 2
        step = (
            torch.stack(
                [
                    f[:, 1, 1] * g[:, 0] - f[:, 0, 1] * g[:, 1],
                    f[:, 0, 0] * g[:, 1] - f[:, 0, 1] * g[:, 0],
                ],
                dim=-1,
            )
            / det.clamp(min=1e-300)[:, None]
        )
        single = g / f.diagonal(dim1=-2, dim2=-1).clamp(min=1e-300)
        blocked = ((theta <= lo) & (step < 0)) | ((theta >= hi) & (step > 0))
        step = torch.where(blocked[:, [1, 0]], single, step)  # other coordinate frozen
        step = torch.where(blocked, torch.zeros_like(step), step)
        step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
        step = torch.maximum(torch.minimum(step, 3 * cell), -3 * cell)
        new = torch.maximum(torch.minimum(theta + step, hi), lo)
        done = bool(((new - theta).abs() <= 1e-9 * cell).all())
        theta = new
        if done:
            break
    return theta


def _resolved(cov: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """True where the grid of steps ``cell`` (2,) resolves a Gaussian of covariance cov (B, 2, 2).

    Poisson summation: the relative error of grid moments is ~exp(−2π² mᵀD⁻¹ΣD⁻¹m) for the
    integer vectors m ≠ 0; resolved means mᵀD⁻¹ΣD⁻¹m ≥ 1 (error ≲ 3e-9) for all |m_i| ≤ 3.
    Non-finite or non-positive covariances (unconstrained maps) count as resolved.
    """
    r = torch.arange(-3, 4, dtype=torch.float64)
    m = torch.cartesian_prod(r, r)
    m = m[(m != 0).any(-1)] / cell
    q = torch.einsum("mi,bij,mj->bm", m, cov, m).min(-1).values
    ok = torch.isfinite(cov).all(-1).all(-1) & (cov[:, 0, 0] > 0) & (cov[:, 1, 1] > 0)
    return (q >= 1) | ~ok


def pk_likelihood_predict(
    maps,
    settings=None,
    prior=DEFAULT_PRIOR,
    grid: int = 64,
    k_max: float | None = None,
    likelihood: str = "gaussian",
    batch_size: int = 1024,
    table_nodes: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """Posterior of (Ω_m, σ8) per map from its binned P(k) (module docstring for the method).

    Parameters
    ----------
    maps : torch.Tensor or numpy.ndarray (B, N, N), or xarray.DataArray (sample, y, x)
        Maps as generated (δ for slabs, κ for lensing), float.
    settings : FieldParams, LPTParams or KappaParams, optional
        The settings the maps were made with; default rebuilt from a DataArray's attrs
        (:func:`settings_from_attrs`).
    prior : ((float, float), (float, float))
        Flat prior box ((Ω_m min, max), (σ8 min, max)).
    grid : int
        Posterior grid points per parameter (grid² in all), >= 8.
    k_max : float, optional
        Highest bin centre used (h/Mpc, or ℓ for κ); default the Nyquist wavenumber.
    likelihood : {"gaussian", "gamma"}
        Gaussian with the covariance 2μ(θ̂)²/n_b fixed at the maximum θ̂ (default), or the exact
        likelihood of a Gaussian field's binned spectrum (χ² with n_b degrees of freedom).
    batch_size : int
        Maps processed together (memory ~ batch_size × grid² × 8 bytes × a few).
    table_nodes : (int, int), optional
        Nodes (Ω_m, σ8) of the :class:`TheoryTable` (:func:`theory_grid` defaults).

    Returns
    -------
    dict of numpy.ndarray, float64 unless noted, parameters in the order of :data:`PARAM_NAMES`
    (both dimensionless):
        ``mean`` (B, 2) posterior mean; ``std`` (B, 2) posterior standard deviation;
        ``map`` (B, 2) maximum of the likelihood in the prior box (= maximum a posteriori);
        ``corr`` (B,) posterior correlation of Ω_m and σ8; ``refined`` (B,) bool, moments from
        the local whitened grid; ``truth`` (B, 2) true parameters, only for DataArrays with
        omega_m / sigma8 coords.

    Raises
    ------
    ConfigError
        Unsupported kind or settings, maps of the wrong shape or with non-finite pixels, a bad
        prior, grid, k_max or likelihood.
    """
    if likelihood not in LIKELIHOODS:
        raise ConfigError(
            f"likelihood={likelihood!r} is not allowed: likelihood must be one of "
            + ", ".join(map(repr, LIKELIHOODS))
        )
    if not isinstance(grid, int | np.integer) or not 8 <= grid <= 1024:
        raise ConfigError(f"grid={grid!r} is out of range: allowed 8 <= grid <= 1024")
    prior = _check_prior(prior)
    x, settings, truth = _as_maps(maps, settings)
    model = map_model(settings, k_max)
    table, theta_g, mu_g = theory_grid(model, prior, int(grid), table_nodes)
    half = model.n_modes / 2
    lo = torch.tensor([prior[0][0], prior[1][0]], dtype=torch.float64)
    hi = torch.tensor([prior[0][1], prior[1][1]], dtype=torch.float64)
    cell = (hi - lo) / (grid - 1)
    z1 = torch.linspace(-LOCAL_HALF_WIDTH, LOCAL_HALF_WIDTH, LOCAL_POINTS, dtype=torch.float64)
    z = torch.cartesian_prod(z1, z1)  # (L, 2) whitened offsets
    out = {k: [] for k in ("mean", "std", "map", "corr", "refined")}
    for start in range(0, x.shape[0], batch_size):
        p = model.measure(x[start : start + batch_size])
        # 1. gamma likelihood on the grid -> start point; 2. Fisher scoring -> θ̂
        theta0 = theta_g[_gamma_loglike(p, half, mu_g).argmax(-1)]
        theta_hat = _fisher_scoring(p, half, table, theta0, lo, hi, cell)
        mu_hat, dmu = table(theta_hat[:, 0], theta_hat[:, 1], grad=True)
        wts = half / (mu_hat * mu_hat)  # 1 / σ_b², covariance fixed at θ̂
        fisher = torch.einsum("bk,bki,bkj->bij", wts, dmu, dmu)
        cov = torch.linalg.inv(fisher + 1e-300 * torch.eye(2, dtype=torch.float64))
        # 3. posterior moments on the grid, or on a local whitened grid where it is too coarse
        if likelihood == "gaussian":
            logp = _gauss_loglike(p, wts, mu_g)
        else:
            logp = _gamma_loglike(p, half, mu_g)
        mean, std, corr = _moments(logp, theta_g)
        fine = ~_resolved(cov, cell)
        chol, info = torch.linalg.cholesky_ex(cov)
        fine &= info == 0  # (a covariance that is not positive definite keeps the grid moments)
        if bool(fine.any()):
            idx = fine.nonzero().reshape(-1)
            for c in range(0, idx.numel(), 16):
                j = idx[c : c + 16]
                th = theta_hat[j, None, :] + torch.einsum("lj,bij->bli", z, chol[j])
                inside = ((th >= lo) & (th <= hi)).all(-1)
                mu_l = table(th[..., 0].clamp(lo[0], hi[0]), th[..., 1].clamp(lo[1], hi[1]))
                if likelihood == "gaussian":
                    lp = _gauss_loglike(p[j], wts[j], mu_l)
                else:
                    lp = _gamma_loglike(p[j], half, mu_l)
                lp = torch.where(inside, lp, torch.full_like(lp, -math.inf))
                mean[j], std[j], corr[j] = _moments(lp, th)
        out["mean"].append(mean)
        out["std"].append(std)
        out["map"].append(theta_hat)
        out["corr"].append(corr)
        out["refined"].append(fine)
    result = {k: torch.cat(v).numpy() for k, v in out.items()}
    if truth is not None:
        result["truth"] = truth
    return result


# ---------------------------------------------------------------------------------------------
# Fisher matrix and Cramér–Rao bound
# ---------------------------------------------------------------------------------------------


def _params(omega_m, sigma8) -> tuple[torch.Tensor, torch.Tensor, bool]:
    scalar = np.ndim(omega_m) == 0 and np.ndim(sigma8) == 0
    om = torch.atleast_1d(torch.as_tensor(omega_m, dtype=torch.float64)).reshape(-1)
    s8 = torch.atleast_1d(torch.as_tensor(sigma8, dtype=torch.float64)).reshape(-1)
    om, s8 = torch.broadcast_tensors(om, s8)
    from engine.physics.slabs import check_parameters

    check_parameters(om, s8)
    return om.contiguous(), s8.contiguous(), scalar


def _fd_log_derivatives(fn, om, s8, step: float) -> torch.Tensor:
    """∂ ln f / ∂(Ω_m, σ8) by central differences (one-sided at the bounds): (B, 2, ...)."""
    out = []
    for i, (v, (blo, bhi)) in enumerate(
        zip((om, s8), (OMEGA_M_BOUNDS, SIGMA8_BOUNDS), strict=True)
    ):
        h = step * v
        up, dn = (v + h).clamp(max=bhi), (v - h).clamp(min=blo)
        args_up = (up, s8) if i == 0 else (om, up)
        args_dn = (dn, s8) if i == 0 else (om, dn)
        f_up, f_dn = fn(*args_up).log(), fn(*args_dn).log()
        dv = (up - dn).reshape(-1, *([1] * (f_up.ndim - 1)))
        out.append((f_up - f_dn) / dv)
    return torch.stack(out, dim=1)


def log_power_derivatives(
    settings,
    omega_m,
    sigma8,
    k_max: float | None = None,
    derivative: str = "fd",
    step: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """∂ ln P_map(k) / ∂(Ω_m, σ8) on every stored real-FFT mode in the bins.

    Parameters
    ----------
    settings, k_max
        As :func:`map_model`.
    omega_m, sigma8 : float or array_like (B,)
    derivative : {"fd", "autograd"}
        Central finite differences of the theory with relative step ``step`` (default
        :data:`FD_STEP` of the theory family), or forward-mode autograd through
        :func:`engine.physics.slabs.theory_power` (slab kinds only).

    Returns
    -------
    d : torch.Tensor (B, 2, M) float64 (or (2, M) for scalar parameters), per unit Ω_m / σ8.
    weights : torch.Tensor (M,) float64
        Full-plane modes each stored mode stands for (1 or 2), see :mod:`engine.physics.stats`.

    Raises
    ------
    ConfigError
        Unknown ``derivative``, autograd for κ, or the errors of :func:`map_model`.
    """
    model = map_model(settings, k_max)
    om, s8, scalar = _params(omega_m, sigma8)
    kmag, weights = model.modes()
    if derivative == "fd":
        step = FD_STEP[model.family] if step is None else float(step)
        d = _fd_log_derivatives(lambda o, s: model.mode_power(kmag, o, s), om, s8, step)
    elif derivative == "autograd":
        if model.family != "slab":
            raise ConfigError(
                "derivative='autograd' needs a torch theory: only the slab kinds (grf, lognormal, "
                "2lpt) have one; use derivative='fd' for kappa"
            )

        import torch.autograd.forward_ad as fwad

        cols = []
        for i in range(2):
            with fwad.dual_level():
                args = [om, s8]
                args[i] = fwad.make_dual(args[i], torch.ones_like(args[i]))
                ln_p = model.mode_power(kmag, *args).log()
                cols.append(fwad.unpack_dual(ln_p).tangent)
        d = torch.stack(cols, dim=1)
    else:
        raise ConfigError(
            f"derivative={derivative!r} is not allowed: derivative must be one of 'fd', 'autograd'"
        )
    return (d[0] if scalar else d), weights


def fisher_matrix(
    settings,
    omega_m,
    sigma8,
    k_max: float | None = None,
    binned: bool = False,
    derivative: str = "fd",
    step: float | None = None,
) -> np.ndarray:
    """Fisher matrix of (Ω_m, σ8) for one map, from all its Fourier modes in the bins.

    F_ij = ½ Σ_modes ∂_i ln P_map ∂_j ln P_map over full-plane modes (module docstring, eq. F),
    smoothing and noise included; or, with ``binned``, Σ_b (n_b/2) ∂_i ln μ_b ∂_j ln μ_b of the
    binned theory (the information the binned Gaussian likelihood assumes it has).

    Parameters
    ----------
    settings : FieldParams, LPTParams or KappaParams
    omega_m, sigma8 : float or array_like (B,)
        Fiducial parameters.
    k_max : float, optional
        Highest bin centre (h/Mpc or ℓ); default Nyquist. The modes are those of the bins.
    binned : bool
    derivative, step
        As :func:`log_power_derivatives` (binned: finite differences only).

    Returns
    -------
    numpy.ndarray (2, 2) float64, or (B, 2, 2) for array parameters; units 1/parameter².
    """
    if binned:
        model = map_model(settings, k_max)
        om, s8, scalar = _params(omega_m, sigma8)
        if derivative != "fd":
            raise ConfigError("binned=True supports derivative='fd' only")
        step = FD_STEP[model.family] if step is None else float(step)
        d = _fd_log_derivatives(model.binned, om, s8, step)  # (B, 2, K)
        f = torch.einsum("bik,k,bjk->bij", d, model.n_modes / 2, d)
    else:
        d, w = log_power_derivatives(settings, omega_m, sigma8, k_max, derivative, step)
        scalar = d.ndim == 2
        d = d.reshape(-1, 2, w.numel())
        f = torch.einsum("bim,m,bjm->bij", d, w / 2, d)
    f = f.numpy()
    return f[0] if scalar else f


def cramer_rao(settings, omega_m, sigma8, k_max: float | None = None, **kwargs) -> np.ndarray:
    """Marginalised Cramér–Rao bounds σ_i = √(F⁻¹)_ii of (Ω_m, σ8) for one map.

    Parameters as :func:`fisher_matrix` (``kwargs`` passed on). Returns numpy.ndarray (2,)
    float64, or (B, 2) for array parameters; dimensionless (units of Ω_m and σ8).
    """
    f = fisher_matrix(settings, omega_m, sigma8, k_max, **kwargs)
    return np.sqrt(np.diagonal(np.linalg.inv(f), axis1=-2, axis2=-1))


def efficiency(pred_mean, truth, settings, k_max: float | None = None) -> np.ndarray:
    """Efficiency per parameter of an estimator: σ_CRB / RMSE over test maps.

    With the bound evaluated at each map's true parameters, efficiency_i = 1 / √⟨(e_i/σ_CRB,i)²⟩
    (e the estimation error), which is σ_CRB / RMSE when σ_CRB is the same for all maps. An
    unbiased estimator has efficiency ≤ 1 (up to the scatter of the test set, relative standard
    error ≈ 1/√(2B)); use test maps away from the prior edges, where a prior can beat the bound.

    Parameters
    ----------
    pred_mean, truth : array_like (B, 2)
        Estimates and true values of (Ω_m, σ8).
    settings : FieldParams, LPTParams or KappaParams
    k_max : float, optional
        As :func:`fisher_matrix` (use the estimator's).

    Returns
    -------
    numpy.ndarray (2,) float64, dimensionless.
    """
    pred = np.asarray(pred_mean, np.float64).reshape(-1, 2)
    true = np.asarray(truth, np.float64).reshape(-1, 2)
    if pred.shape != true.shape or pred.shape[0] == 0:
        raise ConfigError(f"pred_mean {pred.shape} and truth {true.shape} must be equal (B, 2)")
    sigma = cramer_rao(settings, true[:, 0], true[:, 1], k_max).reshape(-1, 2)
    return 1.0 / np.sqrt(np.mean(((pred - true) / sigma) ** 2, axis=0))


# ---------------------------------------------------------------------------------------------
# Networks and output
# ---------------------------------------------------------------------------------------------

#: Map settings that a network's training maps and the maps it is applied to must share.
NETWORK_SETTINGS = (
    "kind",
    "size",
    "box_size",
    "fov",
    "thickness",
    "redshift",
    "smoothing",
    "noise",
    "sigma_e",
    "n_gal",
)


def _same(a, b) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(a) == str(b)


def predict_network(
    maps, checkpoint, device="cpu", batch_size: int = 256, strict: bool = True
) -> dict[str, np.ndarray]:
    """Posterior mean and std of (Ω_m, σ8) from a trained network checkpoint.

    Loads the model with :func:`engine.train.training.load_model`, divides the maps by the
    checkpoint's ``map_scale`` and maps the outputs (normalised means and log-stds) to physical
    units with the checkpoint's prior box, through
    :meth:`engine.train.training.ParameterRegression.predict`.

    Parameters
    ----------
    maps : torch.Tensor or numpy.ndarray (B, N, N), or xarray.DataArray (sample, y, x)
        Raw maps (not normalised).
    checkpoint : str or Path
        A ``best.pt`` / ``last.pt`` of a training run.
    device : str or torch.device
    batch_size : int
    strict : bool
        For DataArrays with a ``kind`` attr, refuse maps whose settings
        (:data:`NETWORK_SETTINGS`) differ from those of the network's training maps.

    Returns
    -------
    dict: ``mean``, ``std`` (B, 2) float64 in the order of :data:`PARAM_NAMES`, and ``truth``
    (B, 2) for DataArrays with omega_m / sigma8 coords.

    Raises
    ------
    ConfigError
        Missing or unreadable checkpoint, a checkpoint of another task, mismatched settings.
    """
    from engine.train.training import ParameterRegression, load_model

    try:
        model, ckpt = load_model(checkpoint, device)
    except (KeyError, RuntimeError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"checkpoint {str(checkpoint)!r} holds no usable model: {msg}") from None
    if ckpt.get("task", "parameter_regression") != "parameter_regression":
        raise ConfigError(
            f"checkpoint {str(checkpoint)!r} is of task {ckpt.get('task')!r}, "
            "not parameter_regression"
        )
    if tuple(ckpt.get("param_names", PARAM_NAMES)) != PARAM_NAMES:
        raise ConfigError(f"checkpoint predicts {ckpt.get('param_names')}, not {PARAM_NAMES}")
    trained = ckpt.get("map_settings") or ckpt.get("config") or {}
    truth = None
    if hasattr(maps, "dims") and hasattr(maps, "attrs"):
        if strict and "kind" in maps.attrs:
            bad = [
                f"{k}={maps.attrs[k]!r} (network: {trained[k]!r})"
                for k in NETWORK_SETTINGS
                if k in maps.attrs and k in trained and not _same(maps.attrs[k], trained[k])
            ]
            if bad:
                raise ConfigError(
                    "the maps differ from the network's training maps: " + ", ".join(bad)
                )
        if "omega_m" in maps.coords and "sigma8" in maps.coords:
            truth = np.stack(
                [np.asarray(maps["omega_m"], np.float64), np.asarray(maps["sigma8"], np.float64)],
                axis=-1,
            ).reshape(-1, 2)
        maps = maps.values
    x = torch.as_tensor(np.asarray(maps) if not torch.is_tensor(maps) else maps)
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim not in (3, 4):
        raise ConfigError(f"maps of shape {tuple(x.shape)} are not (B, N, N) or (B, C, N, N)")
    # The task's prediction path without its data set-up (which may need the training dataset):
    # ``predict`` uses only the device, the map scale and the prior box.
    task = object.__new__(ParameterRegression)
    task.device = torch.device(device)
    task.scale = float(ckpt["map_scale"])
    task.low = torch.tensor(ckpt["prior_low"], dtype=torch.float32, device=task.device)
    task.high = torch.tensor(ckpt["prior_high"], dtype=torch.float32, device=task.device)
    means, stds = [], []
    for start in range(0, x.shape[0], batch_size):
        mean, std = task.predict(model, x[start : start + batch_size])
        means.append(mean.double().cpu())
        stds.append(std.double().cpu())
    out = {"mean": torch.cat(means).numpy(), "std": torch.cat(stds).numpy()}
    if truth is not None:
        out["truth"] = truth
    return out


def write_predictions(
    path,
    result: dict,
    names: Sequence[str] = PARAM_NAMES,
    truth=None,
    extra: dict | None = None,
) -> Path:
    """Write one CSV row per map atomically (temporary file + ``os.replace``).

    Columns: ``sample``; ``<name>_true`` for each parameter when ``result`` has ``truth``; then
    per parameter ``<name>_mean``, ``<name>_std`` and, when ``result`` has ``map``,
    ``<name>_map``. Values with 8 significant digits.

    ``result`` may also map method names to such dicts (several methods on the same maps, e.g.
    ``{"network": ..., "pk_likelihood": ...}`` of ``engine.evaluation.evaluate``): then the columns are
    ``sample``, ``<name>_true`` (from the first method that has ``truth``) and, per method in
    order, ``<method>_<name>_mean``, ``<method>_<name>_std`` (and ``<method>_<name>_map``).

    ``truth`` (B, len(names)), when given, replaces the results' ``truth``; ``extra`` maps column
    names to (B,) arrays written right after ``sample`` (e.g. the tile indices of
    ``engine.evaluation.evaluate``).

    Raises
    ------
    ConfigError
        A path not ending in .csv or in a directory that does not exist, or methods with
        different numbers of maps.
    """
    from engine.runs import atomic_write

    path = Path(path)
    if path.suffix != ".csv":
        raise ConfigError(f"--out {str(path)!r} must end in .csv")
    if not path.parent.is_dir():
        raise ConfigError(f"--out {str(path)!r}: directory {str(path.parent)!r} does not exist")
    groups = [("", result)] if "mean" in result else [(f"{m}_", r) for m, r in result.items()]
    if truth is None:
        truth = next((r["truth"] for _, r in groups if "truth" in r), None)
    n_maps = {len(r["mean"]) for _, r in groups}
    if len(n_maps) > 1:
        raise ConfigError(f"the methods predicted different numbers of maps: {sorted(n_maps)}")
    cols = [(np.asarray(v)[:, None], 0, k) for k, v in (extra or {}).items()]
    if truth is not None:
        cols += [(truth, j, f"{names[j]}_true") for j in range(len(names))]
    for prefix, r in groups:
        keys = [k for k in ("mean", "std", "map") if k in r]
        cols += [(r[k], j, f"{prefix}{names[j]}_{k}") for j in range(len(names)) for k in keys]
    with atomic_write(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["sample"] + [c[2] for c in cols])
        for i in range(n_maps.pop() if n_maps else 0):
            w.writerow([i] + [f"{float(a[i][j]):.8g}" for a, j, _ in cols])
    return path
