r"""Particle-mesh (PM) N-body density fields, FastPM-style, batched in torch.

Pipeline (one call of :func:`generate_volumes`, everything on the chosen device, float32 FFTs;
array axes (z, y, x), lengths in Mpc/h, k in h/Mpc, δ dimensionless):

1. **Initial conditions at a_start** (:func:`initial_conditions`). The Gaussian linear modes of
   :func:`engine.physics.lpt.linear_modes` at the *output* redshift (pyccl amplitude
   σ8² D(z)² P_lin; same seed ⇒ the same white noise, hence the same modes, as the ``2lpt`` kind
   at that redshift) are scaled back to a_start by the growth ratio D(a_start)/D(a_out) of
   step 3, so that linear growth lands exactly on pyccl's D(z_out)² P_lin. The 2LPT
   displacements Ψ = Ψ1 + Ψ2 of :func:`engine.physics.lpt.displacement` (exact ik gradient,
   D2/D1² of Bouchet et al. 1995, as the ``2lpt`` kind) give the particle positions x = q + Ψ
   (one particle per cell of the N³ lattice, q at the cell centres), and the FastPM momenta

       p = a² E(a) [f1(a) Ψ1 + f2(a) Ψ2]                (Mpc/h; p = a³ E dx/da),

   with f1 = d ln D1/d ln a of step 3 and f2 = d ln D2/d ln a = 2 f1 + (3/143)(1 − Ω_m(a)), the
   logarithmic derivative of the same Bouchet et al. (1995) fit D2 = −(3/7) D1² Ω_m(a)^(−1/143).
   ``lpt_order=1`` starts from the Zel'dovich approximation (Ψ2 = 0).
2. **Force** (:func:`pm_force`). The particles are deposited with cloud-in-cell
   (:func:`engine.physics.mesh` deposit core; Hockney & Eastwood 1988) on the force mesh of
   M = ``mesh_ratio``·N cells per side (cell c_m = L/M), δ = counts/n̄ − 1 with n̄ = N³/M³
   (mass conserved exactly: periodic wrap, every particle deposits weight 1). In Fourier space

       F̃_k = i k̃ δ_k / k²,     k̃_a = [8 sin(k_a c_m) − sin(2 k_a c_m)] / (6 c_m),

   i.e. F̃ = −∇φ̃ with the exact Green's function of ∇²φ̃ = δ (φ̃_k = −δ_k/k², k = 0 removed) and
   the fourth-order (4-point) central finite-difference gradient k̃ ≈ k (1 − k⁴c_m⁴/30), the
   gradient of FastPM's finite-difference force kernels (Feng et al. 2016) and the default of
   jaxpm (``jaxpm.kernels.gradient_kernel``). Chosen because (i) it is what the reference PM
   codes do, so our spectra can be compared with theirs at equal mesh and steps (tests: 3e-5),
   and (ii) it goes to zero at the mesh Nyquist frequency, damping the force where CIC aliasing
   makes the mesh density unreliable (k ≳ k_N/2) instead of keeping it at full strength as i k
   would. The force is read back at the particles with the same CIC weights (no deconvolution,
   as FastPM and jaxpm), which with the odd gradient conserves momentum: Σ F = 0. The physical
   force is F = (3/2) Ω_m F̃ (comoving Poisson equation in units H0 = 1, lengths Mpc/h): the
   equations of motion in the scale factor are dx/da = p / (a³ E), dp/da = F / (a² E).
3. **Time stepping** (:func:`evolve`): kick-drift-kick leapfrog on stages a_i linear in a from
   a_start to a_out (``steps`` steps), half steps at a_{i+½} = √(a_i a_{i+1}) (as FastPM's
   ``leapfrog``), with FastPM's modified factors (Feng et al. 2016, MNRAS 463, 2273,
   arXiv:1603.00476, §2.3): a drift from a0 to a1 with p taken at a_c moves

       Δx = p · [D(a1) − D(a0)] / G_f(a_c),          G_f(a) = a³ E(a) dD/da = a² E f D,

   and a kick from a0 to a1 with F taken at a_c adds

       Δp = F · [G_f(a1) − G_f(a0)] / (a_c² E(a_c) g_f(a_c)) = F̃ · [G_f(a1) − G_f(a0)] / D(a_c),

   where g_f = dG_f/da = (3/2) Ω_m D / (a² E) by the linear growth equation
   d(a³ E dD/da)/da = (3/2) Ω_m D / (a² E). In linear theory (x − q = D Ψ_0, p = G_f Ψ_0,
   F̃ = D Ψ_0 for an exact force) both updates are exact, so linear growth is exact for any number
   of steps; the two kicks around each force evaluation are merged into one.

   Growth, rate and expansion are those of flat ΛCDM with radiation neglected (matter + Λ,
   the same background as :func:`engine.physics.cosmology.omega_m_at`), in closed form, per
   sample, in float64: E(a) = √(Ω_m a⁻³ + 1 − Ω_m),

       D(a) = a ₂F₁(1/3, 1; 11/6; −a³ (1 − Ω_m)/Ω_m)       (Percival 2005, A&A 443, 819;
                                                            Heath 1977, MNRAS 179, 351),
       f(a) = 1 + (6/11) z ₂F₁(4/3, 2; 17/6; z) / ₂F₁(1/3, 1; 11/6; z),   z = −a³ (1 − Ω_m)/Ω_m,

   normalised to D → a at early times (only ratios enter). For a ≥ 0.1 they agree with pyccl
   (``ccl.growth_factor``, ``growth_rate``, ``h_over_h0``, which also integrate radiation) to
   0.2 % in D(a)/D(0.1), f and E at Ω_m = 0.3 (0.6 % at Ω_m = 0.1; tests/test_pm.py).
4. **Output**: the final particles deposited with CIC on the N³ mesh
   (:func:`engine.physics.mesh.lattice_deposit`, the same mesh and window as the ``2lpt`` kind), so
   δ on large scales is the linear spectrum times the CIC window W²(k), like 2LPT. 3D volumes
   (B, N, N, N) or 2D slab maps (B, N, N) (:func:`engine.physics.mesh.project_slab`) with
   smoothing and noise as :mod:`engine.physics.lpt`.
5. **Second channel** (``fields="delta,theta"``): the velocity divergence of the mass-weighted
   peculiar velocity, in units of a H f,

       θ = −∇·[(1 + δ) v] / (a H f)                    (dimensionless; comoving ∇ in h/Mpc),

   v = a dx/dt the peculiar velocity, H = H0 E(a), f = d ln D/d ln a, all at a_out. By the
   continuity equation ∂δ/∂t + ∇·[(1 + δ) v]/a = 0 (Peebles 1980, *The Large-Scale Structure of
   the Universe*, §9; Bernardeau et al. 2002, Phys. Rep. 367, 1, eq. 13) θ = ∂δ/∂ln D, the
   growth rate of the density in units of the linear one; in linear theory δ ∝ D, ∂δ/∂t = H f δ
   and θ = δ (same spectrum D² P_lin, correlation 1). With FastPM's momenta p = a³ E dx/da (units
   H0 = 1), v = a² H dx/da = H0 p / a, so u ≡ v/(a H f) = p / (a² E f) in Mpc/h (:func:`scaled_velocity`;
   in linear theory u = Ψ, the displacement). The momenta are those of the last kick, at a_out.
   (1 + δ) u is painted with the same CIC kernel on the N³ output mesh
   (:func:`engine.physics.mesh.lattice_paint`: each particle deposits its u, no division by the
   density, so empty cells hold 0), its divergence is the exact spectral derivative i k with
   the Nyquist planes zeroed (:func:`velocity_divergence`), and the θ volume is projected,
   smoothed and cut into slabs exactly as δ. ``noise`` is added to δ only (it models the noise
   of a density map; θ stays noise-free, and the random stream is the same as for δ alone, so
   the δ channel equals the ``fields="delta"`` output bit for bit).
6. **Several slabs per simulation** (``slabs`` = S, dim=2): slab k of each volume spans
   [k L/S, k L/S + Δ) on ``axis`` (evenly spaced, non-overlapping: S Δ ≤ L), so one simulation
   gives S maps, ordered simulation-major (coords ``simulation``, ``slab``, ``slab_start``).
   ``count`` counts maps (⌈count/S⌉ simulations); the maps of one simulation share their
   (Ω_m, σ8). Slab 0 is the ``slabs=1`` map of the same simulation.

What the θ channel looks like (tests/test_pm_fields.py; Ω_m = 0.3, σ8 = 0.8):

* z = 2, 32³ particles in 250 Mpc/h (force mesh 64³, 5 steps), 16 volumes: the CIC-deconvolved
  P_θ(k) follows D² P_lin (pyccl) for k ≤ k_N/4 (χ² = 4.1 for 3 bins; δ: 5.2), the
  cross-spectrum over the δ spectrum is 1 within 0.3 % there (it tests the units: a missing f
  would be 3 % off) and the δ–θ correlation r(k) is 0.9997, 0.998, 0.995 in those bins and 0.988
  at k_N/4. Towards k_N the painted momenta of particles still close to the lattice respond less
  than CIC, so P_θ/P_δ rises to 1.05 at k_N/4 and 1.2 at k_N/2 (θ deconvolved by W² is then too
  high; r is 0.93 at k_N/2).
* z = 0 (32³ particles in 128 Mpc/h, 10 steps): r(k) falls from 0.997 at 0.06 h/Mpc to 0.95 at
  0.11 h/Mpc and 0.7–0.4 for k ≥ k_N/2, and P_θ > P_δ for k ≳ 0.1 h/Mpc (×1.9 at k_N/4, ×4 at
  k_N/2; θ = ∂δ/∂ln D and nonlinear δ grows faster than D). In halos θ is dominated by
  the virial motions of the few particles per cell (a discreteness term that shrinks with more
  particles). The emulator maps (64³ particles in 128 Mpc/h, 8 Mpc/h slabs, z = 0, Ω_m in
  [0.1, 0.5], σ8 in [0.6, 1]; benchmarks/emulator_data.py) have std δ ≈ 2.1 but std θ ≈ 8,
  with tails to −650 and +1100 in 512 maps, and the maps' δ–θ correlation is 0.85 at
  0.06 h/Mpc, 0.7 at 0.25 and 0.5 at 0.6 h/Mpc (the 3D small-scale θ power projects onto the
  maps' large scales). Smoothing (``smoothing``) acts on both channels.

What PM fields look like against theory (tests/test_pm.py; Ω_m = 0.3, σ8 = 0.8, 10 steps from
a = 0.1):

* Large scales: at z = 2 and k ≤ k_N/4 the CIC-deconvolved P(k) is D(z)² P_lin from pyccl
  (χ² over seeded volumes, force mesh 2N); the ratio of large-scale spectra at two redshifts is
  (D(z1)/D(z2))².
* The force mesh: on the particle mesh (``mesh_ratio=1``) particles start on the mesh nodes and
  the deposit of a small displacement is a central difference, so the force of a mode is
  sin(kc)/(kc) × k̃/k of the exact one (c = L/N: −11 % at k_N/4); together with the CIC
  smoothing later on, P(k) at z = 2 is 3 %, 7 % and 20 % below that of ``mesh_ratio=2`` at
  k_N/8, k_N/4 and k_N/2 (64³ particles in 500 Mpc/h). ``mesh_ratio=2`` (FastPM's usual boost
  of 2) is within 1 % of the exact force for k ≤ k_N/4.
* Nonlinear scales, z = 0, 64³ in 256 Mpc/h, force mesh 128³: P / P_lin follows halofit
  (pyccl) within a few per cent for 0.1–0.4 h/Mpc (k_N/8–k_N/2) and falls 10 % short at
  k_N/2–3k_N/4 (mesh softening); with ``mesh_ratio=1`` it falls 4 %, 20 % and 40 % short of
  halofit at 0.16, 0.3 and 0.5 h/Mpc; 2LPT from the same seed stays ~5 % below linear theory.
* Against jaxpm (0.1.6) from the same initial particles, 32³ in 128 Mpc/h, z = 0, k ≤ k_N/2:
  FastPM stepping with jaxpm's force and growth functions agrees to 3e-5 in P(k); jaxpm's
  converged ODE integration (adaptive Dormand–Prince) is matched to better than 1 % by our 10
  steps.

Speed (one volume, 10 steps, CPU, torch 2 threads, ``python -m benchmarks`` rows
``pm_64cube_10steps`` and ``pm_128cube_10steps``): 64³ particles 0.47 s, 128³ 4.2 s with
``mesh_ratio=1`` (jaxpm with the same mesh and steps: 0.92 s and 9.8 s); ``mesh_ratio=2`` takes
about 2.5× (64³: 1.0–1.2 s). Memory: about (128 + 32·mesh_ratio³) bytes per particle at the
peak (measured 146 and 352).
"""

from __future__ import annotations

import numpy as np
import param
import torch
import xarray as xr

from engine.params import ConfigError, from_attrs, to_dict
from engine.physics import slabs
from engine.physics.generation import generate_samples
from engine.physics.lpt import (
    LPTParams,
    particle_positions,
    slab_particles,
)
from engine.physics.lpt import to_dataarray as lpt_dataarray
from engine.physics.mesh import (
    gaussian_smooth,
    lattice_deposit,
    project_slab,
)
from engine.physics.pm_dynamics import (  # noqa: F401 - the integrator, re-exported
    _broadcast,
    _mesh_cells,
    check_settings,
    drift_factor,
    evolve,
    force_kernels,
    generate_displacements,
    generate_volumes,
    growth_d1,
    growth_rate_f1,
    hubble_e,
    initial_conditions,
    kick_factor,
    momentum_growth,
    output_scale_factor,
    pm_force,
    stages,
)
from engine.physics.pm_velocity import scaled_velocity, velocity_divergence

__all__ = [
    "PMParams",
    "binned_theory",
    "check_settings",
    "default_batch_size",
    "drift_factor",
    "evolve",
    "generate",
    "generate_batch",
    "generate_displacements",
    "generate_volumes",
    "growth_d1",
    "growth_rate_f1",
    "hubble_e",
    "initial_conditions",
    "kick_factor",
    "linear_twin",
    "map_scale",
    "momentum_growth",
    "particle_positions",
    "pm_force",
    "scaled_velocity",
    "settings_from_attrs",
    "slab_particles",
    "stages",
    "theory_power",
    "to_dataarray",
    "velocity_divergence",
]


class PMParams(LPTParams):
    """Settings of a batch of particle-mesh N-body density volumes or projected slab maps.

    Inherits the cosmology, ``box_size``, ``thickness``, ``redshift`` (the output redshift),
    ``smoothing``, ``noise``, ``seed``, ``count``, ``dim`` and ``axis`` of
    :class:`~engine.physics.lpt.LPTParams` (same bounds and docs); ``lpt_order`` is the order of
    the initial conditions at ``a_start``.
    """

    kind = param.Selector(
        default="pm",
        objects=["pm"],
        constant=True,
        doc="Field kind: particle-mesh N-body particles deposited on a mesh (fixed).",
    )
    size = param.Integer(
        64,
        bounds=(8, 1024),
        doc="Particles per side (N): N³ particles, output density on an N³ mesh; the force "
        "mesh has mesh_ratio·N cells per side. Memory grows as N³: about "
        "(128 + 32 mesh_ratio³) bytes per particle at the peak.",
    )
    lpt_order = param.Integer(
        2,
        bounds=(1, 2),
        doc="Order of the Lagrangian perturbation theory initial conditions at a_start: "
        "1 = Zel'dovich approximation, 2 = 2LPT.",
    )
    steps = param.Integer(
        10,
        bounds=(1, 200),
        doc="Number of kick-drift-kick steps, linear in the scale factor a, from a_start to the "
        "output redshift (FastPM factors: linear growth is exact for any number; Feng et al. "
        "2016). Cost grows linearly with it.",
    )
    a_start = param.Number(
        0.1,
        bounds=(0.01, 0.5),
        step=0.01,
        doc="Scale factor of the 2LPT initial conditions (dimensionless, z_start = 1/a_start − 1); "
        "must be smaller than the output 1/(1 + redshift).",
    )
    mesh_ratio = param.Integer(
        1,
        bounds=(1, 2),
        doc="Force-mesh cells per side over particles per side (1 or 2). 1 is fastest but its "
        "force is weak near the mesh scale (P(k) 7 % low at k_N/4, 20 % at k_N/2 at z = 2); 2 "
        "(FastPM's usual boost) follows linear theory to k_N/4 and halofit to about k_N/2 at "
        "z = 0, for about 2.5× the time.",
    )
    fields = param.Selector(
        default="delta",
        objects=["delta", "delta,theta"],
        doc="Channels of the output: 'delta' = the density contrast alone, maps (sample, y, x); "
        "'delta,theta' adds the projected velocity divergence theta = -div[(1+delta) v]/(a H f) "
        "of the same simulation (dimensionless, = delta in linear theory) as a second channel, "
        "(sample, channel, y, x).",
    )
    slabs = param.Integer(
        1,
        bounds=(1, 1024),
        doc="Slab maps cut from each simulated volume (dim=2): slab k of a simulation spans "
        "[k L/slabs, k L/slabs + Delta) on the line of sight (evenly spaced, non-overlapping: "
        "slabs*thickness <= box_size). count counts maps, so count/slabs simulations are run "
        "(the last one gives fewer maps when count is not a multiple of slabs).",
    )


# ---------------------------------------------------------------------------------------------
# Checks and the linear theory of the kind
# ---------------------------------------------------------------------------------------------


def linear_twin(settings: PMParams) -> LPTParams:
    """The ``2lpt`` settings with the same mesh, slab, redshift and cosmology.

    PM and 2LPT maps share their linear theory (the linear spectrum at ``redshift`` through the
    CIC windows of the N³ mesh, :mod:`engine.physics.slabs` eq. 1'), which
    :func:`engine.physics.slabs.mesh_cells` applies to kind ``2lpt``.
    """
    names = set(LPTParams.param) - {"name", "kind"}
    return LPTParams(**{k: v for k, v in to_dict(settings).items() if k in names})


def theory_power(settings: PMParams, k, omega_m, sigma8) -> torch.Tensor:
    """Expected P(k) of a PM slab map in (Mpc/h)² (linear theory): that of its
    :func:`linear_twin` (:func:`engine.physics.slabs.theory_power`)."""
    return slabs.theory_power(linear_twin(settings), k, omega_m, sigma8)


def binned_theory(settings: PMParams, omega_m, sigma8, edges=None, deconvolved: bool = False):
    """Binned linear theory of PM slab maps, CIC windows included: that of its
    :func:`linear_twin` (:func:`engine.physics.slabs.binned_theory`; P in (Mpc/h)², k in h/Mpc).
    Nonlinear growth makes PM maps exceed it at k ≳ 0.1 h/Mpc at low redshift."""
    return slabs.binned_theory(linear_twin(settings), omega_m, sigma8, edges, deconvolved)


def map_scale(settings: PMParams) -> float:
    """Linear-theory standard deviation per pixel at the fiducial cosmology (dimensionless),
    as for 2LPT (:func:`engine.physics.slabs.map_scale` of the :func:`linear_twin`)."""
    return slabs.map_scale(linear_twin(settings))


# ---------------------------------------------------------------------------------------------
# The velocity-divergence channel
# ---------------------------------------------------------------------------------------------


def channel_names(settings: PMParams) -> tuple[str, ...]:
    """The output channels of ``settings.fields``: ("delta",) or ("delta", "theta")."""
    return tuple(settings.fields.split(","))


# ---------------------------------------------------------------------------------------------
# Several slabs per simulation, the hot path and the boundary
# ---------------------------------------------------------------------------------------------


def slab_starts(settings: PMParams) -> np.ndarray:
    """Lower faces k L / slabs (k = 0 … slabs−1) of the slabs cut from one volume, Mpc/h
    (float64 (slabs,)); slab k spans [k L/slabs, k L/slabs + Δ) on ``axis``."""
    return np.arange(settings.slabs) * (settings.box_size / settings.slabs)


def simulation_parameters(omega_m, sigma8, slabs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-simulation parameters of a batch of maps: those of maps 0, S, 2S, … (S = ``slabs``).

    Parameters
    ----------
    omega_m, sigma8 : torch.Tensor (B,)
        One value per map; the maps b S … b S + S − 1 are the slabs of simulation b and must
        share their values (:func:`engine.data.store.draw_parameters` draws them so).
    slabs : int

    Returns
    -------
    omega_m, sigma8 : torch.Tensor (⌈B/S⌉,) of the input dtype.

    Raises
    ------
    ConfigError
        Maps of one simulation with different parameters.
    """
    om = torch.as_tensor(omega_m).reshape(-1)
    s8 = torch.as_tensor(sigma8).reshape(-1)
    if slabs == 1:
        return om, s8
    for name, v in (("omega_m", om), ("sigma8", s8)):
        first = v[::slabs]
        if not torch.equal(first.repeat_interleave(slabs)[: len(v)], v):
            raise ConfigError(
                f"slabs={slabs}: the {slabs} maps of a simulation share one {name}, but this "
                f"batch gives them different values; repeat each simulation's value {slabs} times"
            )
    return om[::slabs], s8[::slabs]


def _to_maps(volumes: torch.Tensor, settings: PMParams, count: int) -> torch.Tensor:
    """Slab maps (count, N, N) of volumes (V, N, N, N): simulation-major, slab k of volume v at
    index v·slabs + k (slabs=1: exactly :func:`engine.physics.mesh.project_slab`)."""
    box, dz, axis = settings.box_size, settings.thickness, settings.axis
    if settings.slabs == 1:
        return project_slab(volumes, dz, box, axis)
    maps = [project_slab(volumes, dz, box, axis, float(s)) for s in slab_starts(settings)]
    return torch.stack(maps, dim=1).flatten(0, 1)[:count]


def generate_batch(
    settings: PMParams,
    omega_m: torch.Tensor,
    sigma8: torch.Tensor,
    generator: torch.Generator,
    device=None,
) -> torch.Tensor:
    """The output of :func:`generate` for one batch, as torch tensors (the training hot path).

    :func:`initial_conditions` and :func:`evolve` for one volume per simulation
    (:func:`simulation_parameters`: ⌈B/slabs⌉ volumes), δ of the final particles
    (:func:`engine.physics.mesh.lattice_deposit`) and, with ``fields="delta,theta"``, θ of
    :func:`velocity_divergence` from the momenta at a_out; then for ``dim=2``
    :func:`engine.physics.mesh.project_slab` of every channel (``thickness``, ``axis``; with
    ``slabs`` > 1 at each of :func:`slab_starts`), Gaussian smoothing exp(−k²σ_s²/2) of every
    channel (σ_s = ``smoothing`` Mpc/h), and white noise of standard deviation ``noise`` per
    cell/pixel added to δ only (``noise`` models the noise of a density map; θ stays noise-free,
    and the generator is consumed exactly as for ``fields="delta"``), as
    :func:`engine.physics.lpt.generate_batch`. The δ channel is bit-identical to the output of
    ``fields="delta"`` from the same generator state.

    Parameters
    ----------
    settings : PMParams
    omega_m, sigma8 : torch.Tensor (B,)
        One value per map (the slabs of one simulation share theirs).
    generator : torch.Generator
        On ``device``; consumes N³ normal draws per simulation (and B N² more with noise).
    device : torch.device or str, optional
        Default: the generator's device.

    Returns
    -------
    torch.Tensor float32 on ``device``: (B, N, N) maps for ``dim=2`` or (B, N, N, N) volumes for
    ``dim=3``; with ``fields="delta,theta"`` a channel axis after the batch, (B, 2, N, N) or
    (B, 2, N, N, N), channel 0 = δ, 1 = θ. Maps b·slabs + k are slab k of simulation b.

    Raises
    ------
    ConfigError
        As :func:`generate_volumes`, a slab thicker than the box, slabs that overlap, maps of a
        simulation with different parameters.
    """
    device = torch.device(device) if device is not None else generator.device
    count = int(torch.as_tensor(omega_m).numel())
    om, s8 = simulation_parameters(omega_m, sigma8, settings.slabs)
    psi, p = initial_conditions(settings, om, s8, generator, device)
    psi, p = evolve(psi, p, om, settings)
    box = settings.box_size
    theta = None
    if "theta" in channel_names(settings):
        theta = velocity_divergence(psi, scaled_velocity(p, om, output_scale_factor(settings)), box)
    del p
    channels = [lattice_deposit(psi, box)]
    del psi
    if theta is not None:
        channels.append(theta)
    d = settings.dim
    for c, out in enumerate(channels):
        if d == 2:
            out = _to_maps(out, settings, count)
        if settings.smoothing > 0:
            out = gaussian_smooth(out, settings.smoothing, box, d)
        channels[c] = out
    if settings.noise > 0:
        channels[0] = channels[0] + settings.noise * torch.randn(
            channels[0].shape, generator=generator, device=device, dtype=torch.float32
        )
    return channels[0] if len(channels) == 1 else torch.stack(channels, dim=1)


def default_batch_size(settings: PMParams) -> int:
    """Maps (or volumes) per torch call: ``slabs`` per volume, with as many volumes as keep one
    batch ≲ 1 GiB (peak ≲ 128 + 32 r³ bytes per particle, r = mesh_ratio; measured 146 and 352
    bytes for r = 1, 2; the θ channel's ~40 bytes per particle come after the force's peak)."""
    per_particle = 128 + 32 * settings.mesh_ratio**3
    return settings.slabs * max(1, min(64, (1 << 30) // (per_particle * settings.size**3)))


def generate(
    settings: PMParams,
    omega_m=None,
    sigma8=None,
    device=None,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> xr.DataArray:
    """Generate ``settings.count`` PM volumes or slab maps from ``settings.seed`` as a DataArray.

    Parameters and output as :func:`engine.physics.lpt.generate` (dims (sample, z, y, x) for
    ``dim=3``, else (sample, y, x); coords in Mpc/h), with kind="pm", the PM settings
    (steps, a_start, mesh_ratio, fields, slabs) and ``force_mesh`` (cells per side) in attrs;
    with ``fields="delta,theta"`` a ``channel`` dim after ``sample`` (:func:`to_dataarray`).
    ``count`` counts maps: ⌈count/slabs⌉ simulations; per-map ``omega_m``/``sigma8`` arrays must
    repeat each simulation's value ``slabs`` times; ``batch_size`` (maps) is rounded up to a
    multiple of ``slabs``.

    Raises
    ------
    ConfigError
        Bad parameter values, a cell size outside the theory table, a slab thicker than the box,
        a_start ≥ 1/(1+redshift), slabs that overlap or slabs > 1 with dim=3, maps of one
        simulation with different parameters.
    """
    return generate_samples(
        settings,
        generate_batch,
        to_dataarray,
        omega_m=omega_m,
        sigma8=sigma8,
        device=device,
        batch_size=batch_size or default_batch_size(settings),
        progress=progress,
        check=check_settings,
        desc="pm",
    )


#: Units and descriptions of the output channels (attrs ``channel_units``, ``long_name``).
CHANNEL_UNITS = {"delta": "dimensionless", "theta": "dimensionless"}
CHANNEL_NAMES = {
    "delta": "density contrast delta",
    "theta": "velocity divergence theta = -div[(1+delta) v]/(a H f) (= delta in linear theory)",
}


def to_dataarray(data: np.ndarray, settings: PMParams, omega_m, sigma8) -> xr.DataArray:
    """Wrap the output of :func:`generate_batch` in the boundary DataArray of :func:`generate`.

    As :func:`engine.physics.lpt.to_dataarray` (every setting in attrs, kind="pm"), plus
    ``force_mesh`` = mesh_ratio·size and a PM ``long_name``. With ``fields="delta,theta"``:
    DataArray "maps" of dims (sample, channel, y, x) (or (sample, channel, z, y, x)), coord
    ``channel`` = ["delta", "theta"], attrs ``fields`` = "delta,theta" (a setting) and
    ``channel_units`` = "dimensionless,dimensionless" (comma-separated, in channel order).
    With ``slabs`` > 1: per-sample coords ``simulation`` (int64, index of the volume in this
    output, map // slabs), ``slab`` (int64, map % slabs) and ``slab_start`` (float64, Mpc/h,
    the slab's lower face on ``axis``).

    Parameters
    ----------
    data : numpy.ndarray float32
        (B, N, N), (B, N, N, N), (B, 2, N, N) or (B, 2, N, N, N) as :func:`generate_batch`.
    settings : PMParams
    omega_m, sigma8 : array_like (B,)

    Returns
    -------
    xarray.DataArray float32 ("delta" for one channel, "maps" for two).
    """
    names = channel_names(settings)
    what = "volume" if settings.dim == 3 else "slab"
    if len(names) == 1:
        da = lpt_dataarray(data, settings, omega_m, sigma8)
    else:
        first = lpt_dataarray(data[:, 0], settings, omega_m, sigma8)
        da = xr.DataArray(
            np.asarray(data, dtype=np.float32),
            dims=(first.dims[0], "channel", *first.dims[1:]),
            coords={**first.coords, "channel": ("channel", np.asarray(names, dtype=object))},
            name="maps",
            attrs=first.attrs,
        )
        da.attrs["channel_units"] = ",".join(CHANNEL_UNITS[c] for c in names)
    da.attrs.update(
        force_mesh=settings.mesh_ratio * settings.size,
        long_name=" and ".join(CHANNEL_NAMES[c] for c in names)
        + f" of a particle-mesh N-body {what}",
    )
    if settings.slabs > 1:
        index = np.arange(da.sizes["sample"])
        da = da.assign_coords(
            simulation=("sample", (index // settings.slabs).astype(np.int64)),
            slab=("sample", (index % settings.slabs).astype(np.int64)),
            slab_start=(
                "sample",
                slab_starts(settings)[index % settings.slabs],
                {"units": "Mpc/h"},
            ),
        )
    return da


def settings_from_attrs(attrs: dict) -> PMParams:
    """Rebuild the PMParams a DataArray was generated with, from its attrs.

    Attrs that are not settings (grid, cosmology, units, …) are ignored; numpy scalars (netCDF)
    become Python numbers.
    """
    return from_attrs(PMParams, attrs)
