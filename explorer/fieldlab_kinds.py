"""Field lab, the kinds: which settings each kind shows, its explanation, and the pure update.

A :class:`KindView` per kind names the :class:`Control` s shown as widgets (generated from the
engine's param definitions: bounds, defaults and docs are written once, in the engine), the
settings shown only in the readout, its "What you are looking at" text and its *measure* function
(:mod:`explorer.fieldlab_measure`, and :func:`measure_pm` here), the only kind-specific code.
:func:`compute` is the pure field-lab update: settings in,
:class:`~explorer.fieldlab_measure.FieldLabResult` out.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import param
import torch

from engine.kinds import FIELD_KINDS, KINDS
from engine.params import ConfigError
from engine.physics import mesh, pm, slabs, stats
from engine.physics.cosmology import growth_factor, k_equality
from explorer.fieldlab_measure import (
    K_PLOT,
    FieldLabResult,
    _seeded,
    _slab_style,
    _spectra,
    measure_kappa,
    measure_lpt,
    measure_patch,
    measure_projected,
    plain_settings,
    summarize,
)

#: Map sizes offered in the size selector (pixels per side) of the projected-slab kinds.
SIZES = (64, 128, 256, 512)
#: Particles (and mesh cells) per side offered for 2LPT and PM.
LPT_SIZES = (32, 64, 128)
#: Numbers of PM time steps offered (one step already gets linear growth right).
PM_STEPS = (1, 2, 5, 10, 20, 40)
#: Map sizes offered for κ.
KAPPA_SIZES = (128, 256, 512)

# ---------------------------------------------------------------------------------------------
# Kinds: what each one shows
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Control:
    """One setting shown as a widget (bounds and defaults come from its param definition).

    Attributes
    ----------
    name : str
        Attribute of the settings object.
    label : str
        Widget label, with the unit in parentheses.
    symbol : str
        Name in the readout table (HTML).
    unit : str
        Unit in the readout table.
    digits : int, optional
        Decimals of the slider and the table (default: ``{:g}``).
    options : tuple or dict, optional
        Discrete choices (values, or {label: value}) shown as buttons instead of a slider.
    """

    name: str
    label: str
    symbol: str
    unit: str = ""
    digits: int | None = None
    options: tuple | dict | None = None

    def format(self, value) -> str:
        """The value as shown in the readout table."""
        if isinstance(self.options, dict):
            names = {v: k for k, v in self.options.items()}
            return names.get(value, str(value))
        if self.digits is not None and isinstance(value, (int, float)):
            return f"{value:.{self.digits}f}"
        return f"{value:g}" if isinstance(value, float) else str(value)


OMEGA_M = Control("omega_m", "Ωₘ  matter density", "Ω<sub>m</sub>", "–", 3)
SIGMA8 = Control("sigma8", "σ₈  amplitude", "σ<sub>8</sub>", "–", 3)
SEED = Control("seed", "Seed", "seed")
H = Control("h", "h", "h", "–", 4)
REDSHIFT = Control("redshift", "Redshift z", "redshift z", "", 2)
BOX = Control("box_size", "Box L (Mpc/h)", "box L", "Mpc/h")
THICKNESS = Control("thickness", "Slab thickness Δ (Mpc/h)", "slab Δ", "Mpc/h")
SLAB_SMOOTHING = Control("smoothing", "Smoothing σₛ (Mpc/h)", "smoothing σ<sub>s</sub>", "Mpc/h", 2)


@dataclass(frozen=True)
class KindView:
    """How the field lab shows one kind.

    Attributes
    ----------
    kind : str
        Kind name (``engine.kinds`` registry, or "patch").
    title : str
        Label on the kind selector.
    controls : tuple of Control
        Settings with a widget, in display order.
    table : tuple of Control
        Further settings shown only in the readout table.
    explanation : str
        Markdown of the "What you are looking at" text.
    measure : callable
        settings → dict of the kind-specific :class:`FieldLabResult` fields (map, style, k, pk,
        pk_expected, pk_sigma, k_theory, pk_theory, noise_theory, markers, derived).
    """

    kind: str
    title: str
    controls: tuple
    table: tuple
    explanation: str
    measure: Callable[[param.Parameterized], dict]


SLAB_TEXT = """
### What you are looking at

**Map.** The density contrast δ = ρ/ρ̄ − 1 of a slab of thickness Δ, projected along the line
of sight from a linear (Gaussian, or lognormal) matter density field, on a periodic square of
side L. Red is overdense, blue underdense.

**P(k).** Its measured power spectrum (dots) against the theory for the same modes (band: the
expected value ± the 1σ cosmic-variance scatter √(2/n<sub>modes</sub>)) and the smooth curve

P<sub>map</sub>(k) = P<sub>2D</sub>(k) e<sup>−k²σ<sub>s</sub>²</sup> + σ<sub>n</sub>²(L/N)²,
&nbsp; P<sub>2D</sub>(k) = ∫ dk<sub>z</sub>/2π P<sub>3D</sub>(√(k²+k<sub>z</sub>²)) sinc²(k<sub>z</sub>Δ/2).

* **Ω<sub>m</sub> changes the shape** of P(k): the turnover sits at the scale of
  matter–radiation equality, k<sub>eq</sub> ∝ Ω<sub>m</sub>h (dashed line), which moves right as
  Ω<sub>m</sub> grows, tilting the spectrum.
* **σ<sub>8</sub> changes the amplitude**: P ∝ σ<sub>8</sub>², the whole curve moves up or down.
* **Smoothing** with a Gaussian of σ<sub>s</sub> (Mpc/h) suppresses small scales by
  e<sup>−k²σ<sub>s</sub>²</sup>.
* **Noise** of σ<sub>n</sub> per pixel adds a flat floor σ<sub>n</sub>²(L/N)².

Points stop at the Nyquist wavenumber πN/L; the lowest is the fundamental 2π/L.

**PDF and peaks.** The one-point distribution of δ: Gaussian for `grf`; skewed with a long tail
to high densities and δ > −1 for `lognormal`. Peaks are pixels higher than their 8 neighbours;
N(>νσ) counts those above ν standard deviations.
"""

LPT_TEXT = """
### What you are looking at

**Particles.** N³ particles start on a cubic lattice and move by Lagrangian perturbation theory:
the **Zel'dovich** displacement Ψ₁ = −∇φ₁ with ∇²φ₁ = δ<sub>L</sub> (1LPT, linear in the
initial field) plus, for 2LPT, the **second-order** term Ψ₂ = (D₂/D₁²)∇φ₂, sourced by the tidal
field, ∇²φ₂ = Σ<sub>i<j</sub>[φ₁,<sub>ii</sub>φ₁,<sub>jj</sub> − φ₁,<sub>ij</sub>²]. They are
deposited on the N³ mesh with **cloud-in-cell** (CIC) weights and the slab [0, Δ) is averaged
along the line of sight.

**Why δ is skewed.** Particles stream out of voids and pile up in sheets and filaments: δ is
bounded below by −1 but not above, so the PDF grows a tail to high densities (skewness
S₃ = ⟨δ³⟩/σ⁴ ≈ 4 + γ₁ for 1LPT and 34/7 + γ₁ for 2LPT at tree level) — compare the
skewness in the readout for the two orders.

**Redshift.** The initial field is scaled to the slab's redshift by the growth factor: the
linear spectrum drops as D(z)², so higher z gives a fainter, more Gaussian map.

**P(k).** Measured on the CIC map divided by the CIC window sinc²(k<sub>x</sub>c/2)
sinc²(k<sub>y</sub>c/2) (c = L/N), against the projected linear theory at the same z and Δ
(the same curve as for `grf`). Trust the comparison below k<sub>N</sub>/4 (the lattice and
aliasing affect the deconvolution above it); LPT itself falls a few per cent below linear
theory from k ≈ 0.05 h/Mpc at z = 0 (Zel'dovich damping).
"""

PM_TEXT = """
### What you are looking at

**Particles.** N³ particles start on a cubic lattice at the scale factor a<sub>start</sub>
(z = 9 by default), displaced by 2LPT (or Zel'dovich) from the same Gaussian initial field as
the `2lpt` kind, and are then moved by **gravity** in a particle-mesh (PM) N-body simulation:
at each step they are deposited on a mesh with cloud-in-cell weights, the Poisson equation
∇²φ = (3/2)Ω<sub>m</sub>δ is solved by FFT, and the force −∇φ is read back at the particles.
Time steps are kick-drift-kick in the scale factor with **FastPM**'s modified factors (Feng et al.
2016), which make linear growth exact for any number of steps — try 1 step against 40.

**Why it differs from 2LPT.** LPT moves particles on straight lines and lets them stream
through each other; gravity pulls them back into haloes. So PM maps have denser, more compact
knots, thinner filaments and emptier voids, and a more skewed PDF.

**P(k).** Measured on the CIC map divided by the CIC window, against the same projected linear
theory as `2lpt`. It agrees on large scales (below k<sub>N</sub>/4); at low redshift PM grows
*more* power than linear theory on small scales (nonlinear clustering) where LPT had less, until
the force mesh softens gravity near its Nyquist scale: the "(2N)³" force mesh halves the force
cell and follows linear theory to k<sub>N</sub>/4 (the N³ one is ~7 % low there at z = 2).
"""

KAPPA_TEXT = """
### What you are looking at

**Map.** The weak-lensing **convergence** κ: the projected matter density contrast along the
line of sight, weighted by the lensing kernel of sources distributed as n(z) (a DES Y3-like
distribution, mean z 0.63), κ(θ) = ∫ dχ q(χ) δ(χ θ, χ), q ∝ Ω<sub>m</sub> χ ∫ n(χ′)(χ′−χ)/χ′.
Axes in arcmin on a periodic flat patch of side "field of view".

**C<sub>ℓ</sub>.** Plotted as ℓ(ℓ+1)C<sub>ℓ</sub>/2π against ℓ. Theory: the Limber-approximation
spectrum from pyccl (halofit nonlinear matter power), plus **shape noise**
N<sub>ℓ</sub> = σ<sub>e</sub>²/n<sub>gal</sub> (n<sub>gal</sub> per steradian; dotted), both
multiplied by the smoothing kernel e<sup>−ℓ²σ<sub>s</sub>²</sup> with σ<sub>s</sub> in arcmin
(marker at ℓ = 1/σ<sub>s</sub>). The amplitude scales roughly as σ<sub>8</sub>²Ω<sub>m</sub>^1.5
(more matter lenses more, and σ<sub>8</sub> is the clustering amplitude).

**PDF and peaks.** A Gaussian field, or a shifted lognormal one with κ > −κ₀ and a high-κ tail;
shape noise pulls the PDF towards a Gaussian. Peak counts above ν σ are a classic
non-Gaussian probe of σ<sub>8</sub> and Ω<sub>m</sub>.
"""

PATCH_TEXT = """
### What you are looking at

A gnomonic patch cut from the sky page (bilinear interpolation of the HEALPix pixels), shown
with the same tools: its flat-sky C<sub>ℓ</sub> as ℓ(ℓ+1)C<sub>ℓ</sub>/2π, pixel PDF and peak
counts. A patch is not periodic and the interpolation smooths below the HEALPix pixel scale,
so its spectrum follows the sky's theory (for a synthesized κ sky) only well above the pixel
scale; unobserved pixels are set to 0.
"""

#: Controls and table rows of the projected-slab kinds (grf and lognormal share them).
SLAB_CONTROLS = (
    OMEGA_M,
    SIGMA8,
    SLAB_SMOOTHING,
    Control("noise", "Noise σₙ (δ per pixel)", "noise σ<sub>n</sub>", "δ per pixel", 3),
    SEED,
    Control("size", "Map size N (pixels)", "map size N", "pixels", options=SIZES),
)
SLAB_TABLE = (BOX, THICKNESS, REDSHIFT, H)


def measure_pm(s: pm.PMParams) -> dict:
    """PM slab: CIC map δ; P(k) deconvolved by the 2D CIC window against the linear theory.

    As :func:`explorer.fieldlab_measure.measure_lpt`, with :func:`engine.physics.pm.generate_batch`
    making the map and :func:`engine.physics.pm.binned_theory` (the 2LPT linear theory of the
    same mesh, deconvolved) as the expected band.
    """
    om, s8, gen = _seeded(s)
    settings = s if s.dim == 2 else pm.PMParams(**{**plain_settings(s), "dim": 2})
    delta = pm.generate_batch(settings, om, s8, gen, device="cpu")[0]
    n, box = s.size, s.box_size
    k_theory = np.geomspace(*K_PLOT, 300)
    pk_theory = pm.theory_power(s, torch.from_numpy(k_theory), s.omega_m, s.sigma8).numpy()
    k_eq, k_nyq = k_equality(s.omega_m, s.h), math.pi * n / box
    growth = growth_factor(s, s.omega_m, s.redshift)
    return dict(
        map=delta.numpy(),
        style=_slab_style(
            s, "PM N-body density contrast δ (CIC)", "projected linear theory × D²(z)"
        ),
        markers=((k_eq, "k_eq"), (k_nyq / 4, "k_N/4")),
        derived=(
            ("growth D(z)/D(0)", f"{growth:.3f}", "–"),
            ("k<sub>eq</sub>", f"{k_eq:.4f}", "h/Mpc"),
            ("particles", f"{n}³", ""),
            ("force-mesh cells", f"{s.mesh_ratio * n}³", ""),
        ),
        **_spectra(
            stats.power_spectrum(mesh.deconvolve_cic(delta, dim=2), box),
            pm.binned_theory(s, s.omega_m, s.sigma8, deconvolved=True),
            k_theory,
            pk_theory,
            slabs.noise_power(s) * np.ones_like(k_theory),
        ),
    )


KIND_VIEWS: dict[str, KindView] = {
    v.kind: v
    for v in (
        KindView("grf", "GRF", SLAB_CONTROLS, SLAB_TABLE, SLAB_TEXT, measure_projected),
        KindView("lognormal", "lognormal", SLAB_CONTROLS, SLAB_TABLE, SLAB_TEXT, measure_projected),
        KindView(
            "2lpt",
            "2LPT",
            (
                OMEGA_M,
                SIGMA8,
                REDSHIFT,
                Control(
                    "lpt_order", "Order", "order", "", options={"1LPT (Zel'dovich)": 1, "2LPT": 2}
                ),
                Control(
                    "size", "Particles per side N", "particles N", "per side", options=LPT_SIZES
                ),
                BOX,
                THICKNESS,
                SLAB_SMOOTHING,
                SEED,
            ),
            (H,),
            LPT_TEXT,
            measure_lpt,
        ),
        KindView(
            "pm",
            "PM N-body",
            (
                OMEGA_M,
                SIGMA8,
                REDSHIFT,
                Control("steps", "Time steps", "time steps", "", options=PM_STEPS),
                Control(
                    "lpt_order",
                    "Initial conditions",
                    "initial conditions",
                    "",
                    options={"1LPT (Zel'dovich)": 1, "2LPT": 2},
                ),
                Control(
                    "size", "Particles per side N", "particles N", "per side", options=LPT_SIZES
                ),
                Control(
                    "mesh_ratio",
                    "Force mesh",
                    "force mesh",
                    "",
                    options={"N³ (fast)": 1, "(2N)³ (accurate)": 2},
                ),
                BOX,
                THICKNESS,
                SLAB_SMOOTHING,
                SEED,
            ),
            (H, Control("a_start", "", "a<sub>start</sub>", "", 3)),
            PM_TEXT,
            measure_pm,
        ),
        KindView(
            "kappa",
            "κ WL",
            (
                OMEGA_M,
                SIGMA8,
                Control("n_gal", "Galaxies n_gal (arcmin⁻²)", "n<sub>gal</sub>", "arcmin⁻²"),
                Control("sigma_e", "Shape noise σₑ", "σ<sub>e</sub>", "per component", 2),
                Control("smoothing", "Smoothing σₛ (arcmin)", "smoothing σ<sub>s</sub>", "arcmin"),
                Control("fov", "Field of view (deg)", "field of view", "deg", 1),
                Control("distribution", "Distribution", "distribution"),
                Control("size", "Map size N (pixels)", "map size N", "pixels", options=KAPPA_SIZES),
                SEED,
            ),
            (Control("matter_power", "", "matter power"), Control("nz", "", "source n(z)")),
            KAPPA_TEXT,
            measure_kappa,
        ),
        KindView(
            "patch",
            "patch",
            (),
            (
                Control("source", "", "source"),
                Control("lon", "", "centre lon", "deg", 2),
                Control("lat", "", "centre lat", "deg", 2),
                Control("fov", "", "field of view", "deg", 2),
                Control("size", "", "size N", "pixels"),
                Control("units", "", "units"),
            ),
            PATCH_TEXT,
            measure_patch,
        ),
    )
}


def kind_view(kind: str) -> KindView:
    """The :class:`KindView` of ``kind``; ConfigError for kinds the field lab cannot show."""
    if kind not in KIND_VIEWS:
        raise ConfigError(
            f"kind={kind!r} is not shown by the field lab: one of {', '.join(KIND_VIEWS)}"
        )
    return KIND_VIEWS[kind]


# ---------------------------------------------------------------------------------------------
# The pure update
# ---------------------------------------------------------------------------------------------


def compute(settings: param.Parameterized, pdf_bins: int = 80) -> FieldLabResult:
    """Make one seeded map of ``settings.kind`` on the CPU and measure it: the field-lab update.

    Parameters
    ----------
    settings : FieldParams, LPTParams, KappaParams or ExternalMap
        Settings of the kind (:data:`KIND_VIEWS`); the map is made with ``settings.seed``.
    pdf_bins : int
        Histogram bins of the pixel PDF (over the 0.1–99.9 percentile range of the values).

    Returns
    -------
    FieldLabResult

    Raises
    ------
    ConfigError
        Settings the generator rejects (e.g. a lognormal target with ξ ≤ −1, a cell size outside
        the theory table, a slab thicker than the box).
    """
    t0 = time.perf_counter()
    part = kind_view(settings.kind).measure(settings)
    result = summarize(part, plain_settings(settings), pdf_bins)
    return dataclasses.replace(result, seconds=time.perf_counter() - t0)


def warm(settings: param.Parameterized | None = None) -> float:
    """Build the theory tables (pyccl, a few s once per process) by one update of each kind.

    ``settings`` given: only that update. Returns seconds.
    """
    t0 = time.perf_counter()
    todo = [settings] if settings is not None else [KINDS[k].new_settings() for k in FIELD_KINDS]
    for s in todo:
        compute(s)
    return time.perf_counter() - t0
