r"""The map model and theory table shared by the P(k) likelihood and the Fisher bound.

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

A :class:`MapModel` (:func:`map_model`) holds the bins and the theory of maps made with one set
of settings; a :class:`TheoryTable` (:func:`theory_grid`, cached) tabulates ln μ_b on nodes
uniform in (ln Ω_m, ln σ8) over a prior box and interpolates it by Catmull–Rom cubic
convolution (with cubically extrapolated ghost nodes) with analytic derivatives. For fields,
and κ with linear matter power, μ = σ8² S(Ω_m) + N exactly, so two calls per Ω_m node fill
any σ8 resolution; κ with halofit needs a pyccl call per (Ω_m, σ8) node (~0.3 s each), hence a
coarser default grid. The likelihood is :mod:`engine.evaluation.likelihood`, the Fisher matrix
:mod:`engine.evaluation.fisher`.

Caveats: ``2lpt`` slabs are compared with the *linear* projected spectrum through the CIC windows
of the mesh (eq. 1' of :mod:`engine.physics.slabs`: exact along the line of sight, in-plane without
aliases) but without the LPT damping and nonlinear growth of :mod:`engine.physics.lpt`: use
``k_max`` ≲ k_N/4 there. Masked κ maps, 3D volumes and
HEALPix skies are not supported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.evaluation.schema import PARAMS
from engine.kinds import get_kind
from engine.lru import LRUCache
from engine.params import OMEGA_M_BOUNDS, SIGMA8_BOUNDS, ConfigError, to_dict
from engine.physics.stats import (
    bin_isotropic,
    default_edges,
    power_spectrum,
    rfft_weights,
    wavenumbers,
)

#: Inferred parameters, in the order of every (..., 2) array of engine.evaluation.
PARAM_NAMES = PARAMS
#: Default flat prior box ((Ω_m low, high), (σ8 low, high)), the training prior.
DEFAULT_PRIOR = ((0.1, 0.5), (0.6, 1.0))
#: Map kinds the P(k) likelihood supports (2lpt and pm only as 2D slabs, linear theory).
SUPPORTED_KINDS = ("grf", "lognormal", "2lpt", "pm", "kappa")
#: Bins whose expected power at (Ω_m, σ8) = (0.3, 0.8) is below this fraction of the mean power
#: over all modes (the white-noise level of the same pixel variance) are not used: float32 maps
#: have a rounding floor ~1e-15 of it (the tail of strong smoothing sinks below it).
DYNAMIC_RANGE = 1e-9


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
    kind : str
        The maps' kind (:mod:`engine.kinds`), whose theory this is: density kinds (k in h/Mpc,
        P in (Mpc/h)²) or κ (k = ℓ, C_ℓ in sr); :attr:`family` is the kind's family.
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
    kind: str
    size: int
    box: float
    edges: torch.Tensor
    k: torch.Tensor
    n_modes: torch.Tensor
    separable: bool

    @property
    def family(self) -> str:
        """The kind's family: "density" or "convergence" (:class:`engine.kinds.Kind`)."""
        return get_kind(self.kind).family

    @property
    def shape(self) -> tuple[int, int]:
        """Real-space shape (N, N)."""
        return (self.size, self.size)

    def mode_power(self, k: torch.Tensor, omega_m, sigma8) -> torch.Tensor:
        """Expected map spectrum at wavenumbers ``k`` (h/Mpc or ℓ), (B, ...) float64.

        Smoothing and noise included (the kind's :meth:`engine.kinds.Kind.mode_power`:
        :func:`engine.physics.slabs.theory_power` or :func:`engine.physics.lensing.map_cl`);
        ``omega_m``, ``sigma8`` tensors (B,) float64.
        """
        return get_kind(self.kind).mode_power(self.settings, k, omega_m, sigma8)

    def binned(self, omega_m: torch.Tensor, sigma8: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        """Expected binned spectrum μ_b for B cosmologies: (B, K) float64, (Mpc/h)² or sr.

        The kind's :meth:`engine.kinds.Kind.binned_theory` (mode-averaged like the estimator),
        evaluated in chunks of cosmologies to bound memory.
        """
        om = torch.as_tensor(omega_m, dtype=torch.float64).reshape(-1)
        s8 = torch.as_tensor(sigma8, dtype=torch.float64).reshape(-1)
        kind = get_kind(self.kind)
        chunk = chunk or max(1, 4_000_000 // (self.size * (self.size // 2 + 1)))
        out = []
        for i in range(0, om.numel(), chunk):
            o, s = om[i : i + chunk], s8[i : i + chunk]
            out.append(kind.binned_theory(self.settings, o, s, self.edges).power)
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
        return (type(self.settings).__name__, self.kind, items, tuple(self.edges.tolist()))


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
    name = getattr(settings, "kind", None)
    if name not in SUPPORTED_KINDS:
        raise ConfigError(
            f"kind={name!r} is not supported by the P(k) likelihood: kind must be one of "
            + ", ".join(map(repr, SUPPORTED_KINDS))
        )
    kind = get_kind(name)
    kind.check_spectrum(settings)
    box = kind.spectrum_box(settings)
    separable = kind.sigma8_squared_exact(settings)
    n = int(settings.size)
    edges = default_edges((n, n), box)
    kf = 2 * math.pi / box
    if k_max is not None:
        if not (math.isfinite(k_max) and k_max >= kf):
            unit = get_kind(name).k_unit or "ell"
            raise ConfigError(
                f"k_max={k_max:g} {unit} is below the fundamental mode k_f={kf:.4g}: no bin is left"
            )
        n_keep = int(math.floor(k_max / kf * (1 + 1e-9)))
        edges = edges[: min(n_keep, edges.numel() - 1) + 1]
    ones = torch.ones(n, n // 2 + 1, dtype=torch.float64)
    ps = bin_isotropic(ones, (n, n), box, edges)
    model = MapModel(settings, name, n, box, edges, ps.k, ps.n_modes, separable)
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
        model = MapModel(settings, name, n, box, edges, ps.k, ps.n_modes, separable)
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
    return get_kind(kind).settings_from_attrs(attrs)


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


def check_prior(prior) -> tuple[tuple[float, float], tuple[float, float]]:
    """A flat prior box checked and as floats: ((Ω_m min, max), (σ8 min, max)).

    Parameters
    ----------
    prior : pair of pairs of float
        Dimensionless bounds, within the settings' bounds ``OMEGA_M_BOUNDS`` and
        ``SIGMA8_BOUNDS`` of :mod:`engine.params`.

    Raises
    ------
    ConfigError
        Not a pair of (low, high) pairs, or bounds out of order or out of range.
    """
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


_CACHE: LRUCache[tuple] = LRUCache(8)


def theory_grid(model: MapModel, prior, grid: int, nodes: tuple[int, int] | None = None):
    """Cached (:class:`TheoryTable`, grid θ (G, 2), μ on the grid (G, K)) for ``model``.

    The posterior grid is ``grid × grid`` points uniform in Ω_m and σ8 with the prior edges as
    endpoints, Ω_m varying slowest (G = grid²). The last 8 tables are kept (thread-safe).

    Parameters
    ----------
    model : MapModel
    prior : ((float, float), (float, float))
        Checked prior box (:func:`check_prior`), dimensionless.
    grid : int
        Posterior grid points per parameter.
    nodes : (int, int), optional
        Table nodes in (Ω_m, σ8); default (64, 32) for separable theories, (12, 6) for κ with
        halofit (one pyccl call per node).

    Returns
    -------
    table : TheoryTable
    theta : torch.Tensor (G, 2) float64
        Grid points (Ω_m, σ8).
    mu : torch.Tensor (G, K) float64
        Interpolated μ_b at the grid points, (Mpc/h)² (slabs) or sr (κ).

    Raises
    ------
    ConfigError
        Fewer than 4 nodes per parameter, or a theory that is not positive in every bin.
    """
    if nodes is None:
        nodes = (64, 32) if model.separable else (12, 6)
    nodes = (int(nodes[0]), int(nodes[1]))
    if min(nodes) < 4:
        raise ConfigError(f"table nodes {nodes} must be >= 4 per parameter")
    key = (model.key(), prior, grid, nodes)

    def make() -> tuple:
        table = TheoryTable.build(model, prior, nodes)
        om = torch.linspace(*prior[0], grid, dtype=torch.float64)
        s8 = torch.linspace(*prior[1], grid, dtype=torch.float64)
        oo, ss = torch.meshgrid(om, s8, indexing="ij")
        theta = torch.stack([oo.reshape(-1), ss.reshape(-1)], dim=-1)
        return table, theta, table(theta[:, 0], theta[:, 1])

    return _CACHE.get_or_make(key, make)
