r"""A simulation-calibrated P(k) likelihood of (Ω_m, σ8), for labelled maps of any origin.

The linear-theory likelihood (:mod:`engine.evaluation.likelihood`) needs the maps' theory, which
the project has only for its own Gaussian/lognormal/2LPT/κ generators. Survey analyses instead
calibrate the likelihood of a summary statistic on simulations (an *emulator* of its mean and
a covariance estimated from the simulations). This module does that for the binned power
spectrum, on any labelled dataset that :func:`engine.data.open_spec` reads (generated kinds, our
``.zarr``/``.nc`` files, ``folder:``, ``camels:``, ``quijote:``, …).

Data vector
-----------
For a map of N² pixels over a side L (Mpc/h; or a field of view θ in degrees, L = θ in radians
and k = ℓ), the binned spectrum P̂_b of :func:`engine.physics.stats.power_spectrum` (the
existing hot path; estimator and normalisation in that module's docstring) in the bins
:func:`calibration_bins`: the k_f-wide bins of the linear-theory likelihood (centred on
k_f, 2k_f, … ; k_f = 2π/L) up to ``k_max`` (default the Nyquist k_N = πN/L), merged, when there
are more than ``max_bins`` (default :data:`DEFAULT_MAX_BINS`), into at most ``max_bins`` bins
of nearly equal width in ln k (the low-k bins stay k_f wide; every bin holds ≥ 8 modes in 2D).
The data vector is y_b = ln P̂_b (dimensionless; float64).

Emulator of the mean
--------------------
E[y_b | θ] ≈ m_b(θ) = Σ_j c_jb f_j(θ), f = the monomials of total degree ≤ ``degree`` (default 2:
1, u, v, u², uv, v², p = 6 coefficients per bin) of the scaled log-parameters

    u = 2 (ln Ω_m − ln Ω_m,lo) / (ln Ω_m,hi − ln Ω_m,lo) − 1,   v = the same for σ8,

(lo, hi) the range of the training labels, fitted by ordinary least squares over the n training
maps, C = (Xᵀ X)⁻¹ Xᵀ Y. A quadratic in ln θ rather than θ: for a Gaussian field without noise
ln P = 2 ln σ8 + g(Ω_m) exactly, so the σ8 dependence is exact and only the Ω_m shape is
approximated (a quadratic in σ8 itself misses ~0.01 in ln P at the prior edges). Modelling the
mean of ln P̂ directly (not ln of the mean) makes the emulator unbiased for the statistic used.

Covariance and Hartlap correction
---------------------------------
From the residuals R = Y − X C of the same n maps (ν = n − p degrees of freedom),

    Σ̂ = Rᵀ R / ν                                                    (K × K),

θ-independent (for a Gaussian field Var ln P̂_b ≈ 2/n_b at any θ). Σ̂⁻¹ is a biased estimate of
Σ⁻¹; the unbiased precision is (Hartlap, Simon & Schneider 2007, A&A 464, 399, eq. 17)

    Ψ = h Σ̂⁻¹,   h = (n − K − 2) / (n − 1)

for a covariance about the sample mean (ν = n − 1). About a fitted mean with p coefficients the
scatter matrix is Wishart with ν = n − p degrees of freedom and the same argument gives
h = (ν − K − 1) / ν (:func:`hartlap_factor`, equal to eq. 17 for p = 1). It needs ν > K + 1,
i.e. n > K + p + 1 maps (n > K + 2 for p = 1): :func:`fit_calibration` refuses fewer in one line.
Maps of one simulation (CAMELS: 15 slices; Quijote: slabs of a box) are not independent; their
correlated scatter is part of Σ̂, but the effective n is smaller than the number of maps.
Labels other than (Ω_m, σ8) (e.g. the CAMELS feedback parameters) vary in the training set and
act as nuisance parameters: their effect on P̂ is part of the scatter, i.e. marginalised over
the training distribution.

Posterior
---------
Gaussian likelihood in y, flat prior on the box ``prior`` (the linear-theory likelihood's box
and grid: ``grid × grid`` points uniform in Ω_m and σ8 with the edges as endpoints,
:func:`engine.evaluation.theory.theory_grid`),

    −2 ln L(θ) = (y − m(θ))ᵀ Ψ (y − m(θ)),

evaluated for all maps at once ((B, K) × (K, K) × (K, G) matrix products, float64 torch on the
CPU). The maximum θ̂ (``map``) is refined from the grid's best point by projected Gauss–Newton
steps; the posterior mean, std and correlation are moments on the grid, or, where the grid
does not resolve the Laplace covariance F⁻¹ = (Jᵀ Ψ J)⁻¹ (J = ∂m/∂θ at θ̂), on the local whitened
21 × 21 grid of the linear-theory likelihood (:data:`engine.evaluation.likelihood.LOCAL_POINTS`;
``refined`` True). Outside the training labels' range the emulator extrapolates.

On Gaussian maps its posterior agrees with the exact likelihood of the binned spectrum
(P̂_b ~ μ_b χ²_{n_b}/n_b, the ``gamma`` option of the linear-theory likelihood) and is wider by
about 1/n_b per bin (Var ln P̂_b = ψ'(n_b/2) ≈ 2/n_b (1 + 1/n_b): the price of a Gaussian in
ln P̂, ~10 % in σ(Ω_m) for 32² maps); on non-Gaussian maps its covariance includes the
non-Gaussian and bin-to-bin scatter that the Gaussian covariance 2μ²/n_b misses
(``tests/test_calibrated.py``).

Fitting and validation
----------------------
:func:`~engine.evaluation.calibrated_fit.fit_calibration` fits the emulator and Σ̂ on all n maps
after a held-out check on 20 % of them (``validation``; :mod:`engine.evaluation.calibrated_fit`).

Storage and reuse
-----------------
A :class:`Calibration` is a small JSON file (:meth:`Calibration.save`, :func:`load_calibration`;
format below), written where the user asks (``predict --save-calibration FILE``) and, for every
fit by :func:`calibrate`, in a cache keyed by the training data: ``$ENGINE_CALIBRATIONS`` if
set, else ``$XDG_CACHE_HOME/cosmo-engine/calibrations`` (default ``~/.cache/…``), file
``pk_<sha1 of the key>.json``. The key is the training spec (without ``split``/``count``/
``seed``), the map settings it is generated or read with (``like``), the fit options and, for
paths, the size and modification time of the file or of the folder's entries, so an edited
dataset is refitted. Fits are also kept in memory per process, so ``compare`` fits once per
training dataset, not once per pair. A cache that cannot be written is skipped silently.

File format (JSON, ``"format": "pk-calibration"``, ``"version": 1``)::

    {"format", "version", "spec": training spec, "n_maps": n, "n_bins": K, "degree": d,
     "geometry": {"unit": "Mpc/h" | "deg", "side": L or θ, "size": N, "units": map units},
     "edges": [K+1] (h/Mpc or ℓ), "k": [K] mean |k| per bin, "n_modes": [K],
     "theta_range": {"omega_m": [lo, hi], "sigma8": [lo, hi]} (training labels),
     "coef": [p][K] emulator coefficients, "cov": [K][K] residual covariance Σ̂,
     "hartlap": h, "validation": {...} | null, "engine_version", "created"}

Applying a calibration to maps of another geometry (pixel count, side, length unit) or other
map units is refused with a one-line :class:`~engine.params.ConfigError`; settings that do not
change the geometry (smoothing, noise, slab thickness, simulator) are the user's to match, as
for any emulator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.evaluation.schema import PARAMS
from engine.params import ConfigError
from engine.physics.stats import default_edges, power_spectrum

__all__ = [
    "CACHE_ENV",
    "CALIBRATION_SEED",
    "Calibration",
    "DEFAULT_COUNT",
    "DEFAULT_DEGREE",
    "DEFAULT_MAX_BINS",
    "Geometry",
    "calibration_bins",
    "features",
    "hartlap_factor",
]

#: File format name and version of a stored calibration.
FORMAT, VERSION = "pk-calibration", 1
#: Default number of merged bins (:func:`calibration_bins`).
DEFAULT_MAX_BINS = 16
#: Default total degree of the emulator polynomial in (ln Ω_m, ln σ8).
DEFAULT_DEGREE = 2
#: Maps generated to calibrate on a generated kind (network trained on the fly): with K = 16
#: bins the noise of Σ̂ widens parameter errors by ~3 % (Dodelson & Schneider 2013, PRD 88,
#: 063537), and 512 maps of the slowest kind (2lpt, 64²) take ~2 min on 2 CPU cores.
DEFAULT_COUNT = 512
#: Seed of those maps (evaluation maps use other seeds: 12345 by default, or the run's).
CALIBRATION_SEED = 271828
#: Environment variable naming the calibration cache folder.
CACHE_ENV = "ENGINE_CALIBRATIONS"
#: Maps measured per FFT batch.
BATCH = 256
#: Length units of the pixel-scale attrs.
_SCALES = {"box_size": "Mpc/h", "fov": "deg"}


# ---------------------------------------------------------------------------------------------
# Geometry, bins, features, Hartlap
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """The pixel grid and units a calibration applies to.

    Attributes
    ----------
    unit : {"Mpc/h", "deg"}
        Length unit of ``side``: slab maps (attr ``box_size``) or flat-sky maps (attr ``fov``).
    side : float
        Side of the square map in ``unit``.
    size : int
        Pixels per side N.
    units : str
        Units of the pixel values (attr ``units``, e.g. "dimensionless").
    """

    unit: str
    side: float
    size: int
    units: str

    @classmethod
    def of(cls, da, scale: Mapping[str, float | None] | None = None) -> Geometry:
        """The geometry of maps ``da`` (sample, y, x) from their attrs, or ``scale``
        (``{"box_size": L}`` in Mpc/h or ``{"fov": θ}`` in degrees) for maps without one.

        Raises
        ------
        ConfigError
            Maps that are not (sample, y, x) and square, or without a pixel scale.
        """
        src = da.attrs.get("source", da.attrs.get("kind", "the maps"))
        if tuple(da.dims[-2:]) != ("y", "x") or da.sizes["y"] != da.sizes["x"] or da.ndim != 3:
            raise ConfigError(
                f"maps of {src!r} have dims {dict(da.sizes)}: the calibrated P(k) likelihood "
                "needs square one-channel maps (sample, y, x)"
            )
        attrs = dict(da.attrs)
        for key, value in (scale or {}).items():
            if value is not None:
                attrs[key] = value
        units = str(attrs.get("units", "dimensionless"))
        for key, unit in _SCALES.items():
            if attrs.get(key) is not None:
                side = float(attrs[key])
                if not (math.isfinite(side) and side > 0):
                    raise ConfigError(f"maps of {src!r} have {key}={side!r}: not a side > 0")
                return cls(unit, side, int(da.sizes["x"]), units)
        raise ConfigError(
            f"maps of {src!r} have no pixel scale (attr box_size in Mpc/h or fov in degrees), "
            "which the calibrated P(k) likelihood needs: add ?box_size=MPC_H or ?fov=DEG to "
            "a folder spec, or give --box-size/--fov"
        )

    @property
    def box(self) -> float:
        """Side of the periodic map for :mod:`engine.physics.stats`: Mpc/h, or radians (k = ℓ)."""
        return self.side if self.unit == "Mpc/h" else math.radians(self.side)

    def text(self) -> str:
        """E.g. ``"64² over 128 Mpc/h, dimensionless"``."""
        return f"{self.size}² over {self.side:g} {self.unit}, {self.units}"

    def check(self, other: Geometry, what: str = "the maps") -> None:
        """Refuse ``other`` (the maps') unless it is this geometry (one line).

        Raises
        ------
        ConfigError
            Another pixel count, side (relative 1e-6), length unit or map units.
        """
        same = (
            self.unit == other.unit
            and self.size == other.size
            and math.isclose(self.side, other.side, rel_tol=1e-6)
            and self.units == other.units
        )
        if not same:
            raise ConfigError(
                f"the calibration is for maps of {self.text()}, but {what} are "
                f"{other.text()}: calibrate on maps of the same geometry"
            )


def calibration_bins(
    size: int, box: float, k_max: float | None = None, max_bins: int | None = DEFAULT_MAX_BINS
) -> torch.Tensor:
    """Bin edges of the calibrated likelihood (module docstring): (K+1,) float64, h/Mpc or ℓ.

    Parameters
    ----------
    size : int
        Pixels per side N (≥ 4).
    box : float
        Side L of the map (Mpc/h, or radians for κ).
    k_max : float, optional
        Highest centre of the k_f-wide bins kept (h/Mpc or ℓ); default the Nyquist k_N = πN/L.
    max_bins : int or None
        Merge into at most this many bins, nearly uniform in ln k (None: no merging).

    Raises
    ------
    ConfigError
        ``k_max`` below the fundamental mode k_f = 2π/L, or ``max_bins`` < 2.
    """
    edges = default_edges((size, size), box)
    kf = 2 * math.pi / box
    if k_max is not None:
        if not (math.isfinite(k_max) and k_max >= kf):
            raise ConfigError(
                f"k_max={k_max:g} is below the fundamental mode k_f={kf:.4g}: no bin is left"
            )
        n_keep = int(math.floor(k_max / kf * (1 + 1e-9)))
        edges = edges[: min(n_keep, edges.numel() - 1) + 1]
    n = edges.numel() - 1
    if max_bins is not None:
        if int(max_bins) < 2:
            raise ConfigError(f"max_bins={max_bins!r} must be >= 2")
        if n > max_bins:
            idx = np.unique(np.round(np.geomspace(1, n + 1, int(max_bins) + 1)).astype(int)) - 1
            edges = edges[torch.as_tensor(idx)]
    return edges


def _monomials(degree: int) -> list[tuple[int, int]]:
    """Exponents (a, b) of u^a v^b with a + b ≤ degree, by total degree then a descending."""
    return [(t - b, b) for t in range(degree + 1) for b in range(t + 1)]


def _scaled(theta: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """(u (..., 2) in [-1, 1] over [lo, hi] in ln θ, du/dθ (..., 2))."""
    span = (hi.log() - lo.log()) / 2
    return (theta.log() - lo.log()) / span - 1, 1 / (span * theta)


def features(
    theta: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, degree: int, grad: bool = False
):
    """Emulator features f(θ) (module docstring): (..., p) float64, and with ``grad`` their
    derivatives ∂f/∂(Ω_m, σ8) (..., p, 2).

    ``theta`` (..., 2) float64 (Ω_m, σ8) > 0; ``lo``, ``hi`` (2,) the training labels' range.
    """
    uv, duv = _scaled(theta, lo, hi)
    (u, v), (du, dv) = uv.unbind(-1), duv.unbind(-1)
    powers = _monomials(degree)
    f = torch.stack([u**a * v**b for a, b in powers], dim=-1)
    if not grad:
        return f
    zero = torch.zeros_like(u)
    fu = [a * u ** (a - 1) * v**b * du if a else zero for a, b in powers]
    fv = [b * u**a * v ** (b - 1) * dv if b else zero for a, b in powers]
    return f, torch.stack([torch.stack(fu, -1), torch.stack(fv, -1)], dim=-1)


def hartlap_factor(n_sims: int, n_bins: int, n_fit: int = 1) -> float:
    """Debiasing factor h of an inverse covariance estimated from simulations.

    h = (n − n_fit − K − 1) / (n − n_fit): for a covariance about the sample mean (n_fit = 1)
    this is (n − K − 2)/(n − 1), Hartlap, Simon & Schneider (2007, A&A 464, 399, eq. 17); about
    a mean fitted with n_fit coefficients the residuals have ν = n − n_fit degrees of freedom
    and h = (ν − K − 1)/ν (module docstring).

    Parameters
    ----------
    n_sims : int
        Independent realisations n.
    n_bins : int
        Length K of the data vector.
    n_fit : int
        Coefficients of the fitted mean per bin (1: the sample mean).

    Returns
    -------
    float in (0, 1).

    Raises
    ------
    ConfigError
        n ≤ K + n_fit + 1 (h ≤ 0: the covariance cannot be inverted reliably).
    """
    n, k, p = int(n_sims), int(n_bins), int(n_fit)
    if n - p - k - 1 <= 0:
        need = k + p + 2
        raise ConfigError(
            f"{n} maps are too few to estimate the covariance of {k} bins"
            + (f" about an emulator of {p} coefficients" if p > 1 else "")
            + f" (Hartlap et al. 2007 need n > {need - 1}): give at least {need} labelled maps "
            "or fewer bins (max_bins, k_max)"
        )
    return (n - p - k - 1) / (n - p)


# ---------------------------------------------------------------------------------------------
# The calibration
# ---------------------------------------------------------------------------------------------


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


@dataclass(frozen=True, eq=False)
class Calibration:
    """A fitted calibrated P(k) likelihood (module docstring); build with
    :func:`fit_calibration`, :func:`calibrate` or :func:`load_calibration`.

    Attributes
    ----------
    spec : str
        The training data's dataset spec (or a description).
    geometry : Geometry
    edges : torch.Tensor (K+1,) float64
        Bin edges, h/Mpc (slabs) or ℓ (flat-sky maps).
    k, n_modes : torch.Tensor (K,) float64
        Mean |k| and full-plane modes per bin.
    degree : int
        Total degree of the emulator polynomial.
    theta_lo, theta_hi : torch.Tensor (2,) float64
        Range of the training labels (Ω_m, σ8), the emulator's scaling.
    coef : torch.Tensor (p, K) float64
        Emulator coefficients of :func:`features`.
    cov : torch.Tensor (K, K) float64
        Residual covariance Σ̂ of ln P̂ (ν = n − p).
    n_maps : int
    hartlap : float
        h of :func:`hartlap_factor`; the precision is Ψ = h Σ̂⁻¹.
    validation : dict or None
        Held-out check (module docstring), None when too few maps to hold some out.
    created, engine_version : str
    path : str or None
        The file it was loaded from or last saved to (not stored in the file).
    """

    spec: str
    geometry: Geometry
    edges: torch.Tensor
    k: torch.Tensor
    n_modes: torch.Tensor
    degree: int
    theta_lo: torch.Tensor
    theta_hi: torch.Tensor
    coef: torch.Tensor
    cov: torch.Tensor
    n_maps: int
    hartlap: float
    validation: dict | None = None
    created: str = ""
    engine_version: str = ""
    path: str | None = field(default=None, compare=False)

    def __eq__(self, other) -> bool:
        """Equal when the stored documents are (every number exactly; ``path`` aside)."""
        return isinstance(other, Calibration) and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable-looking arrays inside: not hashable

    @property
    def n_bins(self) -> int:
        """Number of bins K."""
        return int(self.coef.shape[1])

    @property
    def precision(self) -> torch.Tensor:
        """Ψ = h Σ̂⁻¹, (K, K) float64 (Hartlap-corrected)."""
        return self.hartlap * torch.linalg.inv(self.cov)

    def mean_log_power(self, theta: torch.Tensor, grad: bool = False):
        """Emulated mean m(θ) of ln P̂ (..., K) float64 at θ (..., 2); with ``grad`` also
        ∂m/∂(Ω_m, σ8) (..., K, 2)."""
        out = features(theta, self.theta_lo, self.theta_hi, self.degree, grad)
        if not grad:
            return out @ self.coef
        f, df = out
        return f @ self.coef, torch.einsum("...pi,pk->...ki", df, self.coef)

    def measure(self, maps: torch.Tensor) -> torch.Tensor:
        """ln P̂_b of maps (B, N, N): (B, K) float64.

        Raises
        ------
        ConfigError
            A map with a non-positive or non-finite binned power (e.g. a constant map).
        """
        y = _log_spectra(maps, self.geometry.box, self.edges)
        return y

    def summary(self) -> dict[str, Any]:
        """The report's ``calibration`` entry: spec, file, n_maps, n_bins, degree, geometry,
        k range, theta range, Hartlap factor, validation."""
        return {
            "spec": self.spec,
            "file": self.path,
            "n_maps": self.n_maps,
            "n_bins": self.n_bins,
            "degree": self.degree,
            "geometry": self.geometry.__dict__.copy(),
            "k_range": [float(self.edges[0]), float(self.edges[-1])],
            "theta_range": {
                n: [float(self.theta_lo[j]), float(self.theta_hi[j])] for j, n in enumerate(PARAMS)
            },
            "hartlap": self.hartlap,
            "validation": self.validation,
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of the file format (module docstring)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "spec": self.spec,
            "n_maps": self.n_maps,
            "n_bins": self.n_bins,
            "degree": self.degree,
            "geometry": self.geometry.__dict__.copy(),
            "edges": self.edges.tolist(),
            "k": self.k.tolist(),
            "n_modes": self.n_modes.tolist(),
            "theta_range": {
                n: [float(self.theta_lo[j]), float(self.theta_hi[j])] for j, n in enumerate(PARAMS)
            },
            "coef": self.coef.tolist(),
            "cov": self.cov.tolist(),
            "hartlap": self.hartlap,
            "validation": self.validation,
            "engine_version": self.engine_version,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str | None = None) -> Calibration:
        """Rebuild from :meth:`to_dict`'s document.

        Raises
        ------
        ConfigError
            Another format or version, missing keys, or inconsistent shapes (one line).
        """
        where = f"calibration file {path!r}" if path else "calibration"
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ConfigError(f"{where} is not a P(k) calibration (format {FORMAT!r})")
        if d.get("version") != VERSION:
            raise ConfigError(f"{where} has version {d.get('version')!r}; this engine reads 1")
        try:
            g = d["geometry"]
            geometry = Geometry(str(g["unit"]), float(g["side"]), int(g["size"]), str(g["units"]))
            rng = d["theta_range"]
            cal = cls(
                spec=str(d["spec"]),
                geometry=geometry,
                edges=_t(d["edges"]),
                k=_t(d["k"]),
                n_modes=_t(d["n_modes"]),
                degree=int(d["degree"]),
                theta_lo=_t([rng[n][0] for n in PARAMS]),
                theta_hi=_t([rng[n][1] for n in PARAMS]),
                coef=_t(d["coef"]),
                cov=_t(d["cov"]),
                n_maps=int(d["n_maps"]),
                hartlap=float(d["hartlap"]),
                validation=d.get("validation"),
                created=str(d.get("created", "")),
                engine_version=str(d.get("engine_version", "")),
                path=path,
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"{where} is damaged: {type(exc).__name__}: {exc}") from None
        k = cal.edges.numel() - 1
        p = len(_monomials(cal.degree))
        shapes_ok = (
            cal.coef.shape == (p, k)
            and cal.cov.shape == (k, k)
            and cal.k.shape == cal.n_modes.shape == (k,)
            and 0 < cal.hartlap < 1
        )
        if not shapes_ok:
            raise ConfigError(f"{where} is damaged: inconsistent shapes of edges, coef and cov")
        return cal

    def save(self, path: str | Path) -> Calibration:
        """Write the JSON file atomically; returns the calibration with ``path`` set.

        Raises
        ------
        ConfigError
            A path not ending in .json, or in a missing directory.
        """
        from engine.runs import write_json_atomic

        p = Path(path)
        if p.suffix != ".json":
            raise ConfigError(f"calibration file {str(p)!r} must end in .json")
        if not p.parent.is_dir():
            raise ConfigError(
                f"calibration file {str(p)!r}: directory {str(p.parent)!r} does not exist"
            )
        write_json_atomic(p, self.to_dict())
        return _with_path(self, str(p))


def _with_path(cal: Calibration, path: str | None) -> Calibration:
    from dataclasses import replace

    return replace(cal, path=path)


def _log_spectra(
    maps: torch.Tensor, box: float, edges: torch.Tensor, first: int = 0
) -> torch.Tensor:
    """ln P̂_b (B, K) float64 of maps (B, N, N), measured in batches of :data:`BATCH`
    (``first``: index of the first map, for messages)."""
    out = []
    for i in range(0, maps.shape[0], BATCH):
        p = power_spectrum(maps[i : i + BATCH].to(torch.float64), box, edges).power
        if not bool((p > 0).all() & torch.isfinite(p).all()):
            bad = int(((p <= 0) | ~torch.isfinite(p)).any(-1).nonzero()[0, 0]) + i + first
            raise ConfigError(
                f"map {bad} has a binned power spectrum that is zero or not finite (a constant "
                "map, or NaN/inf pixels): ln P cannot be taken"
            )
        out.append(p.log())
    return torch.cat(out)


def _as_maps(da, first: int = 0) -> tuple[torch.Tensor, np.ndarray | None]:
    """(maps (B, N, N) float64 tensor, labels (B, 2) float64 or None) of a DataArray."""
    x = torch.from_numpy(np.asarray(da.values, dtype=np.float64))
    if not bool(torch.isfinite(x).all()):
        bad = first + int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(-1).nonzero()[0, 0])
        raise ConfigError(f"map {bad} holds NaN or inf pixels")
    truth = None
    if "omega_m" in da.coords and "sigma8" in da.coords:
        truth = np.stack(
            [np.asarray(da["omega_m"], np.float64), np.asarray(da["sigma8"], np.float64)], -1
        ).reshape(-1, 2)
    return x, truth
