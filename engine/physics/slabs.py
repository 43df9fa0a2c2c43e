r"""Batched generation of 2D maps of the projected matter density, in torch on any device.

Kinds
-----
``grf``
    Gaussian random field of the density contrast averaged through a slab of thickness Δ (Mpc/h)
    cut from a large volume, on N² pixels of a periodic square of side L (Mpc/h). Its expected
    2D power spectrum is the projected linear spectrum (DESIGN.md)

        P_2D(k) = ∫ dk_z/2π P_3D(√(k² + k_z²)) sinc²(k_z Δ / 2),                       (1)

    in (Mpc/h)², where sinc x = sin x / x is the transform of the top-hat slab profile, and
    P_3D(k, z) = σ8² D(z)² P_lin(k, 0 | Ω_m, σ8=1) from :mod:`engine.physics.cosmology`.
``lognormal``
    Lognormal field δ = exp(G − σ_G²/2) − 1 > −1 with the same target spectrum (Coles & Jones
    1991, MNRAS 248, 1; :func:`engine.physics.randomfields.lognormal_from_power`, which documents
    the mapping ξ_G = ln(1 + ξ) and its clipping of negative Gaussian power on small scales).

Both kinds then get optional Gaussian smoothing, multiplying Fourier modes by exp(−k²σ_s²/2)
(σ_s in Mpc/h), and additive white noise of standard deviation σ_n per pixel. The expected map
spectrum (:func:`theory_power`) is therefore

    P_map(k) = P_2D(k) exp(−k² σ_s²) + σ_n² (L/N)².                                     (2)

Fourier conventions are those of :mod:`engine.physics.stats`. Fields are generated directly from
their Fourier amplitudes on the discrete periodic grid (:mod:`engine.physics.randomfields`: no
aliasing or pixel window to correct); :func:`generate` is the shared loop of
:mod:`engine.physics.generation` around the hot path :func:`generate_maps`.

Numerical integration of (1): the projected spectrum of each ω_m node of the
:class:`~engine.physics.cosmology.LinearPowerTable` is integrated once per thickness (cached) on a
k_z grid that resolves both the sinc² oscillations (16 points per period 2π/Δ) and the baryon
wiggles (steps ≤ 0.005 h/Mpc at small k_z, 2 % at large k_z); beyond u = k_zΔ/2 = 20π sinc² is
replaced by its mean 1/(2u²). 3D power beyond k = 100 h/Mpc is neglected. Batches are then
interpolated exactly like the 3D table (cubic in ln Ω_m, linear in ln k).

Mesh slabs (``2lpt``, :mod:`engine.physics.lpt`): a map averaged over the cells j of a mesh (cell
c = L/N, centres z_j, overlap weights w_j of :func:`engine.physics.mesh.slab_weights`) of a
cloud-in-cell density is the continuous field integrated against K(z) = Σ_j w_j Λ(z − z_j)/c
(Λ the CIC triangle), so eq. (1) holds with sinc²(k_zΔ/2) replaced by the exact line-of-sight
window

    |K(k_z)|² = |Σ_j w_j e^{−i k_z z_j}|² sinc⁴(k_z c/2),                              (1')

integrated on a uniform k_z grid (16 points per period 2π/max(Δ, c), up to k_z = 6π/c where
sinc⁴ < 2e-4). The in-plane CIC window W²(k) = sinc⁴(k_x c/2) sinc⁴(k_y c/2) of the map's own
pixels multiplies the binned expectation (:func:`binned_theory`, without its aliases: a few per
cent towards k_N); the map is otherwise linear theory (no LPT damping or nonlinear growth).
"""

from __future__ import annotations

import functools
import math
import threading
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import engine
from engine.params import FIDUCIAL, ConfigError, FieldParams, to_dict
from engine.physics.cosmology import (
    BUILD_LOCK,
    K_MAX,
    K_MIN,
    N_OM,
    _catmull_rom_weights,
    check_parameters,
    table_for,
)
from engine.physics.generation import generate_samples
from engine.physics.mesh import (
    cic_window,
    slab_weights,
    wavenumber_grid,
    wavenumber_shells,
    wavenumbers,
)
from engine.physics.randomfields import gaussian_from_amplitude, lognormal_from_power
from engine.physics.stats import bin_isotropic, rfft_weights

#: Number of log-spaced k nodes of the projected-spectrum tables.
N_K2D = 512

# ---------------------------------------------------------------------------------------------
# Theory
# ---------------------------------------------------------------------------------------------


def _kz_grid(thickness: float) -> tuple[np.ndarray, np.ndarray]:
    """k_z nodes (h/Mpc) and trapezoid weights × sinc²(k_z Δ/2) for eq. (1), float64."""
    period = 2 * math.pi / thickness
    k_switch = 40 * math.pi / thickness  # u = 20 pi
    kz = [0.0]
    while kz[-1] < min(k_switch, K_MAX):
        z = kz[-1]
        kz.append(z + min(period / 16, max(0.005, 0.02 * z)))
    kz = np.asarray(kz)
    u = kz * thickness / 2
    sinc2 = np.sinc(u / np.pi) ** 2
    w = np.zeros_like(kz)
    dk = np.diff(kz)
    w[:-1] += dk / 2
    w[1:] += dk / 2
    w *= sinc2
    if kz[-1] < K_MAX:  # tail with the period-averaged sinc^2 = 1 / (2 u^2), log-spaced nodes
        tail = np.exp(np.linspace(math.log(kz[-1]), math.log(K_MAX), 200))
        ut = tail * thickness / 2
        f = 1 / (2 * ut**2)
        wt = np.zeros_like(tail)
        dt = np.diff(tail)
        wt[:-1] += dt / 2
        wt[1:] += dt / 2
        kz = np.concatenate([kz, tail[1:]])
        w = np.concatenate([w[:-1], [w[-1] + wt[0] * f[0]], (wt * f)[1:]])
    return kz, w / math.pi  # ∫_{-∞}^{∞} dk_z / 2π = (1/π) ∫_0^∞ dk_z


def _mesh_kz_grid(thickness: float, n: int, box_size: float) -> tuple[np.ndarray, np.ndarray]:
    """k_z nodes (h/Mpc) and trapezoid weights × the mesh window (1') / π, float64."""
    c = box_size / n
    w_j = slab_weights(n, thickness, box_size).numpy()
    keep = w_j > 0
    z_j = ((np.arange(n) + 0.5) * c)[keep]
    step = 2 * math.pi / max(thickness, c) / 16
    kz = np.arange(0.0, min(6 * math.pi / c, K_MAX) + step, step)
    phase = np.exp(-1j * kz[:, None] * (z_j - z_j.mean())[None, :])
    window = np.abs(phase @ w_j[keep]) ** 2 * np.sinc(kz * c / (2 * math.pi)) ** 4
    w = np.full_like(kz, step)
    w[0] = w[-1] = step / 2
    return kz, w * window / math.pi


def mesh_cells(settings) -> tuple[int, float] | None:
    """(N, L) of the mesh behind a slab map made by depositing particles (kinds ``2lpt`` and
    ``pm``), else None."""
    if getattr(settings, "kind", None) in ("2lpt", "pm"):
        return int(settings.size), float(settings.box_size)
    return None


def _projected_table(table, thickness: float, cells: tuple[int, float] | None = None):
    """ln P_2D(k_nodes | ω_m node, σ8=1, z=0) of shape (N_OM, N_K2D), float64, eq. (1) or, for a
    mesh slab ``cells = (N, L)``, eq. (1'); cached."""
    with BUILD_LOCK:
        return _build_projected_table(table, thickness, cells)


@functools.lru_cache(maxsize=32)
def _build_projected_table(table, thickness: float, cells=None) -> torch.Tensor:
    ln_k2 = torch.linspace(math.log(K_MIN), math.log(K_MAX), N_K2D, dtype=torch.float64)
    kz, w = _kz_grid(thickness) if cells is None else _mesh_kz_grid(thickness, *cells)
    kz, w = torch.from_numpy(kz), torch.from_numpy(w)
    k3 = torch.sqrt(torch.exp(ln_k2)[:, None] ** 2 + kz[None, :] ** 2)  # (N_K2D, Q)
    t = (k3.log() - float(table.ln_k[0])) / table._dlnk
    i = t.floor().long().clamp(0, table.ln_k.numel() - 2)
    frac = t - i
    inside = k3 <= K_MAX
    out = torch.empty(N_OM, N_K2D, dtype=torch.float64)
    for j in range(N_OM):
        row = table.ln_p[j]
        p3 = torch.exp(row[i] + (row[i + 1] - row[i]) * frac) * inside
        out[j] = (p3 * w).sum(-1).log()
    return out


def projected_power(settings: FieldParams, k, omega_m, sigma8) -> torch.Tensor:
    """Projected linear spectrum P_2D(k) of eq. (1) in (Mpc/h)², at ``settings.redshift``.

    For mesh slabs (kind ``2lpt``) the line-of-sight window is that of eq. (1'), the in-plane
    CIC window is not included (see :func:`binned_theory`).

    Parameters
    ----------
    settings : FieldParams
        Uses thickness (Mpc/h), redshift and the cosmology settings (omega_b, h, n_s, transfer);
        size and box_size for mesh slabs.
    k : torch.Tensor (...), h/Mpc
    omega_m, sigma8 : float or torch.Tensor (B,)

    Returns
    -------
    torch.Tensor (B, ...) float64 (or (...) for scalar parameters), on k's device.
    """
    table = table_for(settings)
    k = torch.as_tensor(k)
    scalar = np.ndim(omega_m) == 0
    om = torch.atleast_1d(torch.as_tensor(omega_m, dtype=torch.float64)).to(k.device)
    s8 = torch.atleast_1d(torch.as_tensor(sigma8, dtype=torch.float64)).to(k.device)
    check_parameters(om, s8)
    tab2 = _projected_table(table, float(settings.thickness), mesh_cells(settings)).to(k.device)
    idx, wom = _catmull_rom_weights(om.log(), float(table.ln_om[0]), table._dlnom, N_OM)
    ln_p = (tab2[idx] * wom[..., None]).sum(-2)  # (B, N_K2D)
    ln_d = (table._ln_growth_nodes(float(settings.redshift)).to(k.device)[idx] * wom).sum(-1)
    dln = (math.log(K_MAX) - math.log(K_MIN)) / (N_K2D - 1)
    t = (k.to(torch.float64).clamp(K_MIN, K_MAX).log() - math.log(K_MIN)) / dln
    i = t.floor().long().clamp(0, N_K2D - 2).reshape(-1)
    frac = (t.reshape(-1) - i).unsqueeze(0)
    lo, hi = ln_p[:, i], ln_p[:, i + 1]
    p = torch.exp(lo + (hi - lo) * frac + 2 * ln_d[:, None]) * (s8**2)[:, None]
    p = p.reshape(om.shape[0], *k.shape)
    return p[0] if scalar else p


def theory_power(settings: FieldParams, k, omega_m, sigma8) -> torch.Tensor:
    """Expected power spectrum of a generated map, eq. (2), in (Mpc/h)².

    Projected linear spectrum times the smoothing kernel squared, plus the white-noise level
    σ_n² (L/N)². Shapes as :func:`projected_power`.
    """
    k = torch.as_tensor(k)
    p = projected_power(settings, k, omega_m, sigma8)
    k64 = k.to(torch.float64)
    p = p * torch.exp(-(k64**2) * settings.smoothing**2)
    return p + noise_power(settings)


def noise_power(settings: FieldParams) -> float:
    """White-noise level of the map spectrum, σ_n² (L/N)² in (Mpc/h)² (the last term of eq. 2)."""
    return settings.noise**2 * (settings.box_size / settings.size) ** 2


def binned_theory(settings: FieldParams, omega_m, sigma8, edges=None, deconvolved: bool = False):
    """Theory of eq. (2) averaged over the Fourier modes of each bin, exactly as the estimator.

    For mesh slabs (kind ``2lpt``) the signal is multiplied mode by mode by the in-plane CIC
    window W²(k) (:func:`engine.physics.mesh.cic_window`, no aliases); with ``deconvolved`` it is
    instead the expectation for maps divided by W in Fourier space
    (:func:`engine.physics.mesh.deconvolve_cic`): the signal without the window and the white
    noise amplified to σ_n²(L/N)²/W². ``deconvolved`` does nothing for other kinds.

    Parameters
    ----------
    settings : FieldParams or LPTParams
        As :func:`theory_power`; size N and box_size L (Mpc/h) set the modes.
    omega_m, sigma8 : float or torch.Tensor (B,)
    edges : array_like (K+1,), optional
        Bin edges in h/Mpc; default :func:`engine.physics.stats.default_edges`.
    deconvolved : bool

    Returns
    -------
    engine.physics.stats.PowerSpectrum
        ``power`` (K,) or (B, K) float64 in (Mpc/h)²: the expectation of
        ``engine.physics.stats.power_spectrum(map, settings.box_size, edges).power`` for maps
        generated with ``settings`` (before the lognormal clipping caveat of
        :mod:`engine.physics.randomfields`).

    Raises
    ------
    ConfigError
        Parameters out of range.
    """
    shape = (settings.size, settings.size)
    kmag = wavenumbers(shape, settings.box_size)
    p = theory_power(settings, kmag, omega_m, sigma8)
    if mesh_cells(settings) is not None:
        noise = noise_power(settings)
        window = cic_window(shape).to(p.device)
        p = p - noise + noise / window if deconvolved else (p - noise) * window + noise
    return bin_isotropic(p, shape, settings.box_size, edges)


def map_extent(settings: FieldParams) -> float:
    """Side L of the square map (or box) in Mpc/h: ``settings.box_size``."""
    return float(settings.box_size)


def check_resolution(settings: FieldParams) -> None:
    """Raise :class:`ConfigError` if the map's k range leaves the theory table [1e-4, 100] h/Mpc."""
    k_max = math.pi * settings.size / settings.box_size * math.sqrt(2)
    if k_max > K_MAX:
        raise ConfigError(
            f"pixel size box_size/size={settings.box_size / settings.size:.3g} Mpc/h is too small: "
            f"the theory covers k <= {K_MAX:g} h/Mpc, so box_size/size must be >= "
            f"{math.pi * math.sqrt(2) / K_MAX:.3g} Mpc/h"
        )
    if 2 * math.pi / settings.box_size < K_MIN:
        raise ConfigError(
            f"box_size={settings.box_size} Mpc/h is too large: the theory covers k >= {K_MIN} h/Mpc"
        )


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def check_spectrum(settings) -> None:
    """Raise :class:`ConfigError` unless maps made with ``settings`` have the flat-map theory
    spectrum of :func:`theory_power`: 2D slab maps (2lpt ``dim=2``) inside the theory tables.

    Raises
    ------
    ConfigError
        2lpt volumes (``dim=3``), or pixels outside the tables (:func:`check_resolution`).
    """
    if getattr(settings, "dim", 2) != 2:
        raise ConfigError(
            "2lpt volumes (dim=3) are not supported by the P(k) likelihood: use slab maps (dim=2)"
        )
    check_resolution(settings)


def is_gaussian(settings) -> bool:
    """True for Gaussian maps (kind grf), whose P(k) holds all their information."""
    return getattr(settings, "kind", "") == "grf"


#: Mode amplitudes of single-cosmology grf batches (:func:`_grf_amplitude`), oldest first: at
#: most 8 of them and 64 MiB.
_AMPLITUDES: dict[tuple, torch.Tensor] = {}
_AMPLITUDES_LOCK = threading.Lock()
_AMPLITUDES_MAX = (8, 64 * 2**20)


def _grf_amplitude(settings: FieldParams, pairs: torch.Tensor) -> torch.Tensor:
    """Standard deviation of the Fourier modes of grf maps: n √(P_2D/a) exp(−k²σ_s²/2).

    P_2D of eq. (1) (zero at k = 0), a = (L/N)² the pixel area and σ_s the smoothing: the
    ``amplitude`` of :func:`engine.physics.randomfields.gaussian_from_amplitude`. The spectrum is
    evaluated once per distinct cosmology of the batch and distinct |k| of the grid
    (:func:`engine.physics.mesh.wavenumber_shells`). Batches of one cosmology share one row,
    cached per (cosmology table, thickness, redshift, smoothing, N, L, device, Ω_m, σ8).

    Parameters
    ----------
    settings : FieldParams
        As :func:`generate_maps` (kind ``grf``).
    pairs : torch.Tensor (B, 2) float64
        (Ω_m, σ8) of each map, on the maps' device.

    Returns
    -------
    torch.Tensor (1 or B, N, N//2+1) float32 on ``pairs``' device; do not modify (cached).
    """
    n, box, device = settings.size, settings.box_size, pairs.device
    single = len(pairs) > 0 and bool((pairs == pairs[0]).all())
    key = None
    if single:
        key = (table_for(settings), float(settings.thickness), float(settings.redshift))
        key += (float(settings.smoothing), n, float(box), str(device), *pairs[0].tolist())
        amp = _AMPLITUDES.get(key)
        if amp is not None:
            return amp
        uniq, inverse = pairs[:1], None
    else:
        uniq, inverse = torch.unique(pairs, dim=0, return_inverse=True)
    kval, shell = wavenumber_shells(n, box, device)
    power = projected_power(settings, kval, uniq[:, 0], uniq[:, 1])  # (U, S)
    power[:, 0] = 0.0  # k = 0
    amp = (n * torch.sqrt(power / (box / n) ** 2)).to(torch.float32)
    if settings.smoothing > 0:
        amp = amp * torch.exp(-0.5 * (kval * settings.smoothing) ** 2).to(torch.float32)
    if inverse is not None:
        amp = amp.index_select(0, inverse)
    amp = amp.index_select(1, shell.reshape(-1)).reshape(-1, *shell.shape)
    if key is not None and amp.nbytes <= _AMPLITUDES_MAX[1]:
        with _AMPLITUDES_LOCK:
            while len(_AMPLITUDES) >= _AMPLITUDES_MAX[0] or (
                sum(a.nbytes for a in _AMPLITUDES.values()) + amp.nbytes > _AMPLITUDES_MAX[1]
            ):
                _AMPLITUDES.pop(next(iter(_AMPLITUDES)))
            _AMPLITUDES[key] = amp
    return amp


def generate_maps(
    settings: FieldParams,
    omega_m: torch.Tensor,
    sigma8: torch.Tensor,
    generator: torch.Generator,
    device=None,
) -> torch.Tensor:
    """Generate a batch of maps, one per (omega_m, sigma8) pair.

    Parameters
    ----------
    settings : FieldParams
        kind, size N, box_size L (Mpc/h), thickness Δ (Mpc/h), redshift, smoothing (Mpc/h),
        noise (per pixel) and the shared cosmology settings. ``settings.omega_m``, ``sigma8``,
        ``count`` and ``seed`` are ignored.
    omega_m, sigma8 : torch.Tensor (B,)
        Parameters of each map.
    generator : torch.Generator
        Source of randomness, on ``device``; same generator state ⇒ same maps on CPU.
    device : torch.device or str, optional
        Default: the generator's device.

    Returns
    -------
    torch.Tensor (B, N, N) float32 on ``device``: density contrast δ (dimensionless), with
    y along dim 1 and x along dim 2, pixel (i, j) centred at ((j + ½) L/N, (i + ½) L/N).

    Raises
    ------
    ConfigError
        Parameters out of range, a pixel scale outside the theory table, or a lognormal target
        with ξ ≤ −1.
    """
    device = torch.device(device) if device is not None else generator.device
    check_resolution(settings)
    n, box = settings.size, settings.box_size
    pix_area = (box / n) ** 2
    om = torch.as_tensor(omega_m, dtype=torch.float64).reshape(-1).to(device)
    s8 = torch.as_tensor(sigma8, dtype=torch.float64).reshape(-1).to(device)
    pairs = torch.stack([om, s8], dim=1)
    if settings.kind == "grf":
        delta = gaussian_from_amplitude(_grf_amplitude(settings, pairs), len(pairs), generator)
    elif settings.kind == "lognormal":
        # theory once per distinct cosmology of the batch and distinct |k|
        uniq, inverse = torch.unique(pairs, dim=0, return_inverse=True)
        kval, shell = wavenumber_shells(n, box, device)
        power = projected_power(settings, kval, uniq[:, 0], uniq[:, 1])  # (U, S)
        power[:, 0] = 0.0  # k = 0
        delta = lognormal_from_power(power[:, shell][inverse], n, pix_area, generator)
        if settings.smoothing > 0:
            kernel = torch.exp(-0.5 * (kval * settings.smoothing) ** 2).to(torch.float32)
            delta = torch.fft.irfft2(torch.fft.rfft2(delta) * kernel[shell], s=(n, n))
    else:
        raise ConfigError(
            f"kind={settings.kind!r} is not allowed: kind must be one of 'grf', 'lognormal'"
        )
    if settings.noise > 0:
        delta = delta + settings.noise * torch.randn(
            delta.shape, generator=generator, device=device, dtype=torch.float32
        )
    return delta


def map_scale(settings: FieldParams) -> float:
    """Expected standard deviation per pixel of maps at the fiducial cosmology
    (:data:`engine.params.FIDUCIAL`: Ω_m = 0.3, σ8 = 0.8), dimensionless.

    σ² = Σ_k P_map(k) / L² over all modes (:mod:`engine.physics.stats` conventions), eq. (2); a
    fixed input normalisation for networks.
    """
    n = settings.size
    kmag = wavenumber_grid(n, settings.box_size, torch.device("cpu"))
    p = theory_power(settings, kmag, FIDUCIAL["omega_m"], FIDUCIAL["sigma8"]).clone()
    p[0, 0] = 0.0
    return float(torch.sqrt((p * rfft_weights((n, n))).sum() / settings.box_size**2))


def generate(
    settings: FieldParams,
    omega_m=None,
    sigma8=None,
    device=None,
    batch_size: int = 64,
    progress: bool | None = None,
) -> xr.DataArray:
    """Generate ``settings.count`` maps from ``settings.seed`` as a labelled DataArray.

    Parameters
    ----------
    settings : FieldParams
    omega_m, sigma8 : float or array_like (count,), optional
        Per-sample parameters; default the scalar ``settings.omega_m`` / ``settings.sigma8``.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU. (Same seed ⇒ same maps on CPU; CUDA maps are
        reproducible on the same GPU but differ from CPU ones.)
    batch_size : int
        Maps generated per torch call.
    progress : bool, optional
        tqdm progress bar; default only when stderr is a terminal and count > batch_size.

    Returns
    -------
    xarray.DataArray "delta" (sample, y, x) float32, coords x, y in Mpc/h (pixel centres),
    per-sample coords omega_m and sigma8, and attrs with every setting needed to recompute the
    theory (kind, omega_b, h, n_s, transfer_function, redshift, box_size, thickness, smoothing,
    noise, size, seed, units, engine_version).

    Raises
    ------
    ConfigError
        Bad parameter values (see :func:`generate_maps`).
    """
    return generate_samples(
        settings,
        generate_maps,
        to_dataarray,
        omega_m=omega_m,
        sigma8=sigma8,
        device=device,
        batch_size=batch_size,
        progress=progress,
        check=check_resolution,
    )


def to_dataarray(maps: np.ndarray, settings: FieldParams, omega_m, sigma8) -> xr.DataArray:
    """Wrap maps (B, N, N) in the boundary DataArray described in :func:`generate`."""
    n, box = settings.size, settings.box_size
    centres = (np.arange(n) + 0.5) * box / n
    attrs = {k: v for k, v in to_dict(settings).items() if k not in ("omega_m", "sigma8", "count")}
    attrs.update(
        units="dimensionless",
        long_name="density contrast delta of a projected slab",
        coordinate_units="Mpc/h",
        engine_version=engine.__version__,
    )
    return xr.DataArray(
        maps.astype(np.float32),
        dims=("sample", "y", "x"),
        coords={
            "x": ("x", centres, {"units": "Mpc/h"}),
            "y": ("y", centres, {"units": "Mpc/h"}),
            "omega_m": ("sample", np.asarray(omega_m, dtype=np.float64)),
            "sigma8": ("sample", np.asarray(sigma8, dtype=np.float64)),
        },
        name="delta",
        attrs=attrs,
    )


def settings_from_attrs(attrs: dict) -> FieldParams:
    """Rebuild the FieldParams a DataArray was generated with, from its attrs."""
    names = set(FieldParams.param) - {"name"}
    return FieldParams(**{k: v for k, v in attrs.items() if k in names})


def save(da, path, overwrite: bool = True) -> Path:
    """Write samples to ``path`` (.zarr directory or .nc file) atomically.

    The data go to a temporary directory next to ``path`` first and are moved into place with
    ``os.replace`` only when complete (:func:`engine.outputs.staged`), so an interrupted write
    never leaves a half-written output, and an older ``path`` is replaced only then.

    Parameters
    ----------
    da : xarray.DataArray or iterable of xarray.DataArray
        The samples, or consecutive chunks of them along ``sample`` (generated lazily, e.g. by a
        generator: only one chunk is held in memory); chunks need a .zarr store, where they are
        appended one by one.
    path : str or Path
        Output ``.zarr`` or ``.nc``.
    overwrite : bool
        Whether an existing ``path`` may be replaced.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ConfigError
        Suffix other than .zarr / .nc, chunks for a .nc file, no chunks, a parent directory that
        does not exist, or an existing ``path`` without ``overwrite``.
    """
    from engine.outputs import check_output, staged

    path = Path(path)
    if path.suffix not in (".zarr", ".nc"):
        raise ConfigError(f"--out {str(path)!r} must end in .zarr or .nc")
    chunked = not isinstance(da, xr.DataArray)
    if chunked and path.suffix != ".zarr":
        raise ConfigError(f"--out {str(path)!r}: samples written in chunks need a .zarr store")
    check_output(path, overwrite=overwrite)
    with staged(path, overwrite=overwrite) as target:
        n = 0
        for n, chunk in enumerate([da] if not chunked else da, start=1):
            ds = chunk.to_dataset(name=chunk.name or "delta")
            if path.suffix == ".nc":
                ds.to_netcdf(target)
            elif n == 1:
                ds.to_zarr(target, mode="w", consolidated=False)
            else:
                ds.to_zarr(target, append_dim="sample", consolidated=False)
        if n == 0:
            raise ConfigError(f"--out {str(path)!r}: no samples to write")
    return path


def load(path) -> xr.DataArray:
    """Read samples written by :func:`save`: the first variable with a ``sample`` dimension.

    Works for every kind of :mod:`engine.kinds`: maps (sample, y, x), volumes (sample, z, y, x)
    and HEALPix skies (sample, pixel).

    Raises
    ------
    ConfigError
        Missing file or no suitable variable.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"maps file {str(path)!r} does not exist")
    ds = xr.open_zarr(path, consolidated=False) if path.suffix == ".zarr" else xr.open_dataset(path)
    names = [v for v in ds.data_vars if "sample" in ds[v].dims]
    if not names:
        raise ConfigError(f"{str(path)!r} holds no variable with a 'sample' dimension")
    return ds[names[0]].load()
