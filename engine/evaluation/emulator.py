r"""Metrics of a map emulator: generated against simulator maps at the points of a parameter grid.

Pure functions on batches of maps (numpy or torch, float, ``(B, C, N, N)``; ``(B, N, N)`` is one
channel) that know nothing of the networks: the caller supplies the maps and, where needed, a
feature extractor or a parameter regressor. :func:`score_point` runs every metric at one grid
point, :func:`score_grid` makes the JSON-clean report with the pass/fail :data:`TARGETS`, and
:mod:`engine.evaluation.emulator_figures` draws it. The feature-space metrics (FID/KID, the
real–real floor, Inception FID, memorisation) live in :mod:`engine.evaluation.emulator_features`
and are re-exported here. Lengths are in the unit of ``box_size``
(Mpc/h for slabs, arcmin for κ maps) and k in its inverse (h/Mpc, 1/arcmin), with the Fourier
conventions of :mod:`engine.physics.stats`; k_max defaults to k_N/2 = π N / (2 L).

Every target has a noise floor that falls as 1/√B: a perfect generator scores ``frac_error`` ≈
``frac_error_floor`` (:func:`power_ratio`), |Δr| ≈ the ``band`` of :func:`cross_correlation`,
and FID ≈ the real–real floor; judge the targets at B large enough that the floors sit well below
them (for 64² maps: B ≈ 64 gives a P(k) floor of ≈ 0.03 and max |Δr| ≈ 0.02–0.08 at r = 0.6).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from engine.evaluation.emulator_features import (  # noqa: F401 - part of this module's API
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    MAX_PIXELS,
    MEMO_MAX_TRAIN,
    _maps,
    _pair,
    _pixels,
    _rms,
    extract_features,
    fid_kid,
    inception_fid,
    memorisation,
    real_real_floor,
)
from engine.evaluation.schema import PARAMS
from engine.nn.features import SummaryFeatures
from engine.params import ConfigError
from engine.physics.stats import peak_counts, pixel_pdf, power_spectrum

#: Version of the report of :func:`score_grid`.
EMULATOR_REPORT_VERSION = 1
#: Target: grid mean of |P_gen/P_real − 1| averaged over k ≤ k_N/2, every channel.
TARGET_POWER = 0.05
#: Target: grid mean of max |r_gen − r_real| over k ≤ k_N/2, every channel pair.
TARGET_CROSS = 0.05
#: Target: grid mean of the Kolmogorov–Smirnov statistic of the pixel PDFs, every channel.
TARGET_KS = 0.05
#: Target: grid mean of |bias_gen − bias_real| / RMSE_real of the regressor, every parameter.
TARGET_BIAS = 0.3
#: Target: grid-mean FID / grid-mean real–real floor.
TARGET_FID_FLOOR = 2.0
#: Floor of 1 + x before the logarithm of ``log=True`` PDFs (empty pixels δ = −1, or δ < −1).
LOG_FLOOR = 1e-3
#: Default peak thresholds: real pixel mean + ν × real pixel std.
PEAK_NU = (-1.0, 0.0, 1.0, 2.0, 3.0, 4.0)


def _k_max(n: int, box_size: float, k_max: float | None) -> float:
    if not box_size > 0:
        raise ConfigError(f"box_size must be > 0, got {box_size}")
    return math.pi * n / (2 * box_size) if k_max is None else float(k_max)


def power_ratio(gen, real, box_size: float, edges=None, k_max: float | None = None) -> dict:
    """Ratio R(k) = P̄_gen / P̄_real of the set-mean power spectra, per channel and k bin.

    Parameters
    ----------
    gen, real : array or torch.Tensor (B, C, N, N) or (B, N, N), float
        Generated and real maps (B ≥ 2 each, the two B may differ), same C and N.
    box_size : float
        Side L of the maps (Mpc/h or arcmin); k in its inverse.
    edges : array_like, optional
        k bin edges; default bins k_f wide (:func:`engine.physics.stats.default_edges`).
    k_max : float, optional
        Highest bin k in ``frac_error``; default k_N/2.

    Returns
    -------
    dict of numpy float64 (bins without modes dropped): ``k`` (K,); ``p_gen``, ``p_real`` (C, K)
    mean P̂ in (unit of L)²; ``ratio`` (C, K); ``band`` (C, K) = s/P̄_real · √(1/B_gen + 1/B_real),
    s the real maps' standard deviation of P̂: the 1σ scatter of R for a perfect generator;
    ``band_real`` = s/(√B_real P̄_real), the relative standard error of the real mean;
    ``frac_error`` (C,) = mean of |R − 1| over the bins with k ≤ k_max; ``frac_error_floor``
    (C,) = √(2/π) × mean ``band`` there (what a perfect generator scores on average); ``k_max``.

    Raises
    ------
    ConfigError
        Mismatched channels or sizes, fewer than 2 maps, ``box_size`` ≤ 0.
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
    ratio, band = pg / pr, rel_sd * math.sqrt(1 / len(g) + 1 / len(r))
    k = k[keep]
    low = k <= kmax
    nan = np.full(len(ratio), np.nan)
    return {
        "k": k,
        "p_gen": pg,
        "p_real": pr,
        "ratio": ratio,
        "band": band,
        "band_real": rel_sd / math.sqrt(len(r)),
        "frac_error": np.abs(ratio[:, low] - 1).mean(1) if low.any() else nan,
        "frac_error_floor": math.sqrt(2 / math.pi) * band[:, low].mean(1) if low.any() else nan,
        "k_max": kmax,
    }


def cross_correlation(gen, real, box_size: float, edges=None, k_max: float | None = None) -> dict:
    """Cross-correlation coefficient r_ab(k) = P̄_ab / √(P̄_aa P̄_bb) of every channel pair.

    From the set-mean (cross-)spectra (:func:`engine.physics.stats.power_spectrum`) of each set;
    dimensionless.

    Parameters
    ----------
    gen, real, box_size, edges, k_max
        As in :func:`power_ratio`; pairs need C ≥ 2.

    Returns
    -------
    dict of numpy float64: ``k`` (K,); ``pairs`` list of "a-b" (channel indices, a < b);
    ``r_gen``, ``r_real``, ``delta`` = r_gen − r_real (P, K); ``band`` (P, K) = (1 − r_real²)
    √(2/n_modes · (1/B_gen + 1/B_real)), the approximate 1σ of Δr for a perfect generator
    (Gaussian fields, Var r̂ ≈ (1 − r²)² / (number of independent modes)); ``max_abs_delta``
    (P,) = max |Δr| over k ≤ k_max; ``max_abs_delta_all`` (float; None for one channel); ``k_max``.

    Raises
    ------
    ConfigError
        As :func:`power_ratio`.
    """
    g, r = _pair(gen, real)
    kmax = _k_max(g.shape[-1], box_size, k_max)
    pairs = [(a, b) for a in range(g.shape[1]) for b in range(a + 1, g.shape[1])]

    def coeffs(x):
        auto = [power_spectrum(x[:, i], box_size, edges) for i in range(x.shape[1])]
        pa = [s.power.mean(0).cpu().numpy() for s in auto]
        out = [
            power_spectrum(x[:, a], box_size, edges, field2=x[:, b]).power.mean(0).cpu().numpy()
            / np.sqrt(pa[a] * pa[b])
            for a, b in pairs
        ]
        k = auto[0].k.cpu().numpy()
        return k, auto[0].n_modes.cpu().numpy(), np.array(out).reshape(len(pairs), len(k))

    k, modes, rg = coeffs(g)
    rr = coeffs(r)[2]
    keep = np.isfinite(k)
    k, modes, rg, rr = k[keep], modes[keep], rg[:, keep], rr[:, keep]
    delta, low = rg - rr, k <= kmax
    mad = np.abs(delta[:, low]).max(1) if low.any() and pairs else np.full(len(pairs), np.nan)
    return {
        "k": k,
        "pairs": [f"{a}-{b}" for a, b in pairs],
        "r_gen": rg,
        "r_real": rr,
        "delta": delta,
        "band": (1 - rr**2) * np.sqrt(2 / modes * (1 / len(g) + 1 / len(r))),
        "max_abs_delta": mad,
        "max_abs_delta_all": float(np.max(mad)) if pairs else None,
        "k_max": kmax,
    }


def pdf_distances(
    gen, real, log=False, bins: int = 64, max_pixels: int = MAX_PIXELS, seed: int = 0
) -> dict:
    """Pixel PDFs of generated and real maps on shared bins, and their KS and Wasserstein distances.

    Parameters
    ----------
    gen, real : array or torch.Tensor (B, C, N, N) or (B, N, N), float
    log : bool or sequence of bool (C,)
        Use y = ln(max(1 + x, :data:`LOG_FLOOR`)) instead of y = x (for all channels, or per
        channel: e.g. the density contrast δ but not the velocity divergence θ): the natural variable of a
        density contrast δ > −1; pixels with 1 + x below the floor (empty pixels δ = −1, or
        unphysical δ < −1) are clipped to it and counted in ``clipped_gen`` / ``clipped_real``.
    bins : int
        Histogram bins, equal width over the 0.1–99.9 percentiles of both sets' pixels together.
    max_pixels : int
        Pixels per set and channel used (a random subsample seeded by ``seed`` above).

    Returns
    -------
    dict of numpy: ``centers``, ``pdf_gen``, ``pdf_real`` (C, bins), density of y normalised over
    the shared range (:func:`engine.physics.stats.pixel_pdf`); ``ks`` (C,), the two-sample
    Kolmogorov–Smirnov statistic (scipy.stats.ks_2samp); ``wasserstein`` (C,), the 1-Wasserstein
    distance (scipy.stats.wasserstein_distance) divided by the real pixels' standard deviation of
    y (dimensionless); ``log``; with ``log`` also ``clipped_gen``, ``clipped_real`` (C,) fractions.

    Raises
    ------
    ConfigError
        As :func:`power_ratio`; ``bins`` < 1.
    """
    from scipy.stats import ks_2samp, wasserstein_distance

    g, r = _pair(gen, real)
    if bins < 1:
        raise ConfigError(f"bins must be >= 1, got {bins}")
    logs = [bool(v) for v in log] if isinstance(log, list | tuple | np.ndarray) else None
    logs = logs if logs is not None else [bool(log)] * g.shape[1]
    if len(logs) != g.shape[1]:
        raise ConfigError(f"log has {len(logs)} entries for maps of {g.shape[1]} channels")
    keys = ("centers", "pdf_gen", "pdf_real", "ks", "wasserstein")
    keys += ("clipped_gen", "clipped_real") if any(logs) else ()
    out: dict[str, list] = {k: [] for k in keys}
    for c in range(g.shape[1]):
        xg, xr = (_pixels(m[:, c], max_pixels, seed + i) for i, m in enumerate((g, r)))
        if any(logs) and not logs[c]:
            out["clipped_gen"].append(0.0)
            out["clipped_real"].append(0.0)
        if logs[c]:
            out["clipped_gen"].append(float(np.mean(1 + xg < LOG_FLOOR)))
            out["clipped_real"].append(float(np.mean(1 + xr < LOG_FLOOR)))
            xg, xr = (np.log(np.maximum(1 + x, LOG_FLOOR)) for x in (xg, xr))
        lo, hi = np.percentile(np.concatenate([xg, xr]), [0.1, 99.9])
        span = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
        for key, x in (("pdf_gen", xg), ("pdf_real", xr)):
            centers, density = pixel_pdf(x, bins=bins, value_range=span)
            out[key].append(density)
        out["centers"].append(centers)
        out["ks"].append(float(ks_2samp(xg, xr).statistic))
        sd = float(np.std(xr))
        out["wasserstein"].append(float(wasserstein_distance(xg, xr)) / (sd if sd > 0 else 1.0))
    return {
        "log": logs if len(set(logs)) > 1 else logs[0],
        **{k: np.asarray(v) for k, v in out.items()},
    }


def peak_count_distance(gen, real, thresholds=None) -> dict:
    """Mean peak counts per threshold bin of generated and real maps, and the χ² of the difference.

    Peaks are local maxima (:func:`engine.physics.stats.peak_counts`, periodic maps); the counts
    above the thresholds are differenced into the bins [t_i, t_{i+1}) and [t_T, ∞). With m the
    set-mean counts per map, s the real maps' standard deviation and B the set sizes,
    χ² = Σ (m_gen − m_real)² / (s² (1/B_gen + 1/B_real)) over the bins with s > 0 (diagonal:
    correlations between bins are ignored; ``dof`` = bins used).

    Parameters
    ----------
    gen, real : array or torch.Tensor (B, C, N, N) or (B, N, N), float
    thresholds : array_like (T,) or (C, T), optional
        Increasing thresholds in map units; default mean + ν std of the real pixels per channel,
        ν in :data:`PEAK_NU`.

    Returns
    -------
    dict of numpy: ``thresholds`` (C, T); ``mean_gen``, ``mean_real``, ``std_real`` (C, T) peaks
    per map and bin; ``chi2`` (C,) float; ``dof`` (C,) int.

    Raises
    ------
    ConfigError
        As :func:`power_ratio`; thresholds not increasing or not (T,) or (C, T).
    """
    g, r = _pair(gen, real)
    nc = g.shape[1]
    if thresholds is None:
        pix = r.transpose(0, 1).reshape(nc, -1).to(torch.float64)
        mu, sd = pix.mean(1).cpu().numpy(), pix.std(1).cpu().numpy()
        t = mu[:, None] + sd[:, None] * np.asarray(PEAK_NU)[None]
    else:
        t = np.asarray(thresholds, np.float64)
        t = np.broadcast_to(t, (nc, t.shape[-1])) if t.ndim == 1 else t
    if t.ndim != 2 or t.shape[0] != nc or np.any(np.diff(t, axis=1) <= 0):
        raise ConfigError(f"thresholds must be increasing, of shape (T,) or ({nc}, T)")

    def binned(x, tc):  # (B, T) peaks per bin from the (B, T) peaks above each threshold
        cum = peak_counts(x, tc).astype(np.float64)
        return cum - np.concatenate([cum[:, 1:], np.zeros((len(cum), 1))], axis=1)

    out: dict[str, list] = {k: [] for k in ("mean_gen", "mean_real", "std_real", "chi2", "dof")}
    for c in range(nc):
        ng, nr = binned(g[:, c], t[c]), binned(r[:, c], t[c])
        mg, mr, sr = ng.mean(0), nr.mean(0), nr.std(0, ddof=1)
        use = sr > 0
        var = sr[use] ** 2 * (1 / len(ng) + 1 / len(nr))
        chi2 = float(np.sum((mg - mr)[use] ** 2 / var))
        for key, v in zip(out, (mg, mr, sr, chi2, int(use.sum())), strict=True):
            out[key].append(v)
    return {"thresholds": np.array(t), **{k: np.asarray(v) for k, v in out.items()}}


def conditioning_metrics(
    predict_fn: Callable, gen_maps, real_maps, theta, names: Sequence[str] | None = None
) -> dict:
    """Does the generator honour its conditioning? A regressor predicts the parameters of both sets.

    With e = predicted mean − θ per map: bias = ⟨e⟩ and RMSE = √⟨e²⟩ per parameter and set;
    ``bias_ratio`` = |bias_gen| / RMSE_real and ``shift_ratio`` = |bias_gen − bias_real| /
    RMSE_real, the quantity of :data:`TARGET_BIAS`: it removes the regressor's own bias at θ
    (e.g. its pull towards the prior centre near the edges), which a perfect generator inherits.

    Parameters
    ----------
    predict_fn : callable
        A regressor trained on real maps: (B, C, N, N) tensor → (mean (B, P), std (B, P)) or the
        mean alone; called without gradients.
    gen_maps, real_maps : array or torch.Tensor (B, C, N, N) or (B, N, N), float
    theta : array_like (P,)
        Parameters of the grid point (dimensionless for Ω_m, σ8).
    names : sequence of str, optional
        Parameter names; default :data:`engine.evaluation.schema.PARAMS` for P = 2, else p0, p1….

    Returns
    -------
    dict name → {``bias_gen``, ``rmse_gen``, ``bias_real``, ``rmse_real``, ``bias_ratio``,
    ``shift_ratio``} (float, units of the parameter for bias and RMSE).

    Raises
    ------
    ConfigError
        As :func:`power_ratio`, or predictions not of shape (B, P).
    """
    g, r = _pair(gen_maps, real_maps)
    th = np.asarray(theta, np.float64).reshape(-1)
    if names is None:
        names = list(PARAMS) if th.size == 2 else [f"p{i}" for i in range(th.size)]
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
        (bg, br), (rg, rr) = ([f(e[:, j]) for e in errs] for f in (np.mean, _rms))
        out[name] = {"bias_gen": float(bg), "rmse_gen": rg, "bias_real": float(br), "rmse_real": rr}
        out[name]["bias_ratio"] = abs(bg) / rr if rr > 0 else math.inf
        out[name]["shift_ratio"] = abs(bg - br) / rr if rr > 0 else math.inf
    return out


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
    """Every metric of generated against real maps at one grid point.

    Parameters
    ----------
    gen, real : array or torch.Tensor (B, C, N, N) or (B, N, N), float
        Generated and simulator maps at the parameters ``theta``.
    box_size : float
        Side of the maps (Mpc/h or arcmin).
    theta : array_like (P,), optional
        Parameters of the point (recorded; needed with ``predict_fn``).
    predict_fn : callable, optional
        Regressor of :func:`conditioning_metrics` (skipped without it or ``theta``).
    feature : torch.nn.Module, callable, None or False
        Features of FID/KID: None → :class:`SummaryFeatures`; False → no FID.
    real_b : maps, optional
        An independent real set as large as ``gen``: FID(gen, real) is compared with the floor
        FID(real_b, real). Without it ``real`` is halved into R1, R2, and FID(gen[:h], R2) is
        compared with FID(R1, R2), h = min(B_real // 2, B_gen).
    train, heldout : maps, optional
        For :func:`memorisation` (skipped unless both are given).
    pdf_log, peak_thresholds, edges, k_max
        ``log`` of :func:`pdf_distances`, ``thresholds`` of :func:`peak_count_distance`, and
        the k binning of :func:`power_ratio` and :func:`cross_correlation`.
    inception : bool
        Also run :func:`inception_fid` (slow on a CPU).
    seed : int
        Seed of the PDF subsample and of the KID subsets.

    Returns
    -------
    dict: ``theta``, ``n_gen``, ``n_real``, ``power``, ``cross``, ``pdf``, ``peaks`` (the dicts
    of the functions above), ``fid`` ({``gen``, ``floor``: :func:`fid_kid` dicts, ``ratio`` =
    FID/floor, ``n`` maps per set, ``feature`` class name} or None), ``inception``,
    ``conditioning``, ``memorisation`` (None when not run).

    Raises
    ------
    ConfigError
        Bad shapes, too few maps (4 real maps for the floor without ``real_b``), as above.
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
                raise ConfigError(f"real_b has {len(rb)} maps and gen {len(g)}: sizes must match")
            sets = (g, r, rb)
        else:
            h = min(len(r) // 2, len(g))
            if h < 2:
                raise ConfigError(f"the FID floor needs 4 real maps (or real_b), got {len(r)}")
            sets = (g[:h], r[h : 2 * h], r[:h])
        fg, fr, fo = (extract_features(x, feat) for x in sets)
        res, floor = fid_kid(fg, fr, seed=seed), real_real_floor(fo, fr, seed=seed)
        ratio = res["fid"] / floor["fid"] if floor["fid"] > 0 else math.inf
        out["fid"] = {"gen": res, "floor": floor, "ratio": ratio, "n": len(fg)}
        out["fid"]["feature"] = type(feat).__name__
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
    "conditioning": (TARGET_BIAS, "grid mean of |bias_gen - bias_real| / RMSE_real, every param"),
    "fid": (TARGET_FID_FLOOR, "grid-mean FID / grid-mean real-real floor"),
}


def _grid_mean(points, get):
    vals = [np.asarray(v, np.float64) for v in map(get, points) if v is not None]
    return np.mean(vals, axis=0) if vals else None


def _grid_power_bias(points: Sequence[dict]) -> np.ndarray | None:
    """(C,) mean over k ≤ k_max of |⟨R(k) − 1⟩_grid|: the P(k) ratio error averaged over the
    grid points *before* its absolute value, so the scatter of a perfect generator averages down
    with the number of points and what remains is a systematic error (None if the points' k
    bins differ)."""
    ks = [np.asarray(p["power"]["k"]) for p in points]
    if any(k.shape != ks[0].shape or not np.allclose(k, ks[0]) for k in ks):
        return None
    mean = np.mean([np.asarray(p["power"]["ratio"], float) - 1 for p in points], axis=0)
    use = ks[0] <= float(points[0]["power"]["k_max"]) + 1e-12
    return np.abs(mean[:, use]).mean(axis=1)


def score_grid(points: Sequence[dict]) -> dict:
    """Report of an emulator over a grid of parameters: per-point metrics, grid means, targets.

    Parameters
    ----------
    points : sequence of dict
        :func:`score_point` results, one per grid point.

    Returns
    -------
    dict, JSON-clean (:func:`engine.evaluation.maps.clean_json`: non-finite → null): ``version``,
    ``n_points``, ``points``; ``means`` (grid means): ``power_frac_error``, ``power_floor``,
    ``power_grid_bias`` (:func:`_grid_power_bias`),
    ``pdf_ks``, ``pdf_wasserstein``, ``peak_chi2_dof`` (C,), ``cross_max_abs_delta`` (pairs,),
    ``fid``, ``fid_floor``, ``kid``, ``kid_floor``, ``memorisation_flagged`` (float),
    ``conditioning_shift_ratio``, ``conditioning_bias_ratio`` ({param: float}); ``targets``:
    {name of :data:`TARGETS`: {``value``, ``threshold``, ``pass`` (None when not measured),
    ``floor`` (what a perfect generator scores, where known: the power floor, FID ratio 1),
    ``definition``}}; ``passed``: every measured target passes (None when none was measured).

    Raises
    ------
    ConfigError
        No points.
    """
    from engine.evaluation.maps import clean_json

    if not points:
        raise ConfigError("score_grid: no grid points")

    def fid_mean(key, stat):
        return _grid_mean(points, lambda p: p["fid"][key][stat] if p.get("fid") else None)

    def cond(key):
        names = (points[0].get("conditioning") or {}).keys()
        get = lambda n: lambda p: ((p.get("conditioning") or {}).get(n) or {}).get(key)  # noqa: E731
        return {n: _grid_mean(points, get(n)) for n in names}

    pk = _grid_mean(points, lambda p: p["power"]["frac_error"])
    bias = _grid_power_bias(points)
    cr = _grid_mean(points, lambda p: p["cross"]["max_abs_delta"] if p["cross"]["pairs"] else None)
    ks = _grid_mean(points, lambda p: p["pdf"]["ks"])
    fid, floor, shift = fid_mean("gen", "fid"), fid_mean("floor", "fid"), cond("shift_ratio")
    means = {
        "power_frac_error": pk,
        "power_floor": _grid_mean(points, lambda p: p["power"]["frac_error_floor"]),
        "power_grid_bias": bias,
        "cross_max_abs_delta": cr,
        "pdf_ks": ks,
        "pdf_wasserstein": _grid_mean(points, lambda p: p["pdf"]["wasserstein"]),
        "peak_chi2_dof": _grid_mean(
            points, lambda p: p["peaks"]["chi2"] / np.maximum(p["peaks"]["dof"], 1)
        ),
        "fid": fid,
        "fid_floor": floor,
        "kid": fid_mean("gen", "kid_mean"),
        "kid_floor": fid_mean("floor", "kid_mean"),
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
    floors = {"power": means["power_floor"], "fid": 1.0}
    targets = {}
    for name, (thr, definition) in TARGETS.items():
        ok = None if values[name] is None else bool(np.all(np.asarray(values[name]) <= thr))
        targets[name] = {"value": values[name], "threshold": thr, "pass": ok}
        targets[name]["floor"] = floors.get(name)
        targets[name]["definition"] = definition
    measured = [t["pass"] for t in targets.values() if t["pass"] is not None]
    report = {"version": EMULATOR_REPORT_VERSION, "n_points": len(points), "points": list(points)}
    report.update(means=means, targets=targets, passed=all(measured) if measured else None)
    return clean_json(report)
