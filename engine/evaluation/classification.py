r"""Evaluation of classifiers (task ``classification``): metrics, predictions and the report.

Metrics (class probabilities ``probs (B, K)``, true classes ``labels (B,)`` in [0, K))
----------------------------------------------------------------------------------------
* :func:`accuracy` — fraction of images whose most probable class is the true one;
* :func:`auroc` — per-class one-vs-rest ROC AUC (the AUC of ``probs[:, k]`` separating class k
  from all others; torchmetrics ``multiclass_auroc``) and their mean, the macro AUC (Hand & Till
  2001 discuss multi-class AUCs; one-vs-rest macro is DeepLense's metric). A class with no
  positive or no negative image has no AUC (NaN, ``null`` in JSON) and is left out of the mean;
* :func:`confusion_matrix` — counts ``(K, K)``, rows the true class, columns the predicted one
  (torchmetrics ``multiclass_confusion_matrix``);
* :func:`roc_curves` — per class the false- and true-positive rates at every threshold
  (torchmetrics ``multiclass_roc``);
* :func:`expected_calibration_error` — ECE of the top-1 confidence in ``n_bins`` equal-width
  bins of [0, 1], ``Σ_b (n_b / B) |acc_b − conf_b|`` (Naeini et al. 2015, AAAI; Guo et al.
  2017, ICML, arXiv:1706.04599, eq. 3, 15 bins; torchmetrics
  ``multiclass_calibration_error``, norm ``l1``), and :func:`reliability` — the per-bin
  accuracy, mean confidence and counts of the reliability diagram (Guo et al. fig. 1).

Report (:func:`evaluate_classifier`; ``python -m engine evaluate --checkpoint CLASSIFIER``)
--------------------------------------------------------------------------------------------
``report.json``::

    {"version": 1, "task": "classification", "dataset": spec, "checkpoint": path,
     "n_maps": B, "kind": ..., "label": "substructure", "classes": ["none", "cdm", "vortex"],
     "metrics": {"accuracy", "auc_macro", "ece", "auc": {class: AUC | null}},
     "n_per_class": {class: count}, "confusion_matrix": {"rows": "true", "columns":
     "predicted", "classes": [...], "counts": [[...]]},
     "reliability": {"edges": [n_bins + 1], "confidence": [n_bins], "accuracy": [n_bins],
                     "count": [n_bins]},
     "literature": {DeepLense anchors: LITERATURE},
     "figures": {"roc", "confusion", "reliability"}, "predictions": "predictions.csv",
     "notes": [...], "created", "seconds"}

``predictions.csv`` (and ``predict``): :func:`write_class_predictions`. The figures:
:mod:`engine.evaluation.classification_figures`. Everything is written into a temporary
directory and moved into place (:func:`engine.outputs.staged_dir`), as for regression.

Images of another size or pixel scale than the classifier's training images are refused in one
line (:func:`check_images`; no resampling: a lens image's pixel scale sets the angular size of
the Einstein ring and of the substructure the network learnt).
"""

from __future__ import annotations

import csv
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.evaluation.maps import clean_json
from engine.evaluation.predict import checkpoint_path, load_task_network
from engine.evaluation.schema import PREDICTIONS_FILE, REPORT_FILE, REPORT_VERSION
from engine.params import ConfigError
from engine.tasks.classification import encode_labels, label_values, one_vs_rest_auc

__all__ = [
    "CLASS_FIGURES",
    "LITERATURE",
    "accuracy",
    "auroc",
    "check_images",
    "classification_metrics",
    "confusion_matrix",
    "evaluate_classifier",
    "expected_calibration_error",
    "predict_classifier",
    "reliability",
    "roc_curves",
    "summary_lines",
    "write_class_predictions",
]

#: Task name of classifier checkpoints.
TASK = "classification"
#: Bins of the calibration error and the reliability diagram (Guo et al. 2017 use 15).
N_BINS = 15
#: Figures of a classifier's evaluation (key of ``report["figures"]`` → path in its directory).
CLASS_FIGURES = {
    "roc": "figures/roc.png",
    "confusion": "figures/confusion.png",
    "reliability": "figures/reliability.png",
}
#: Context for the report: macro one-vs-rest AUCs reported by ML4SCI DeepLense on its own
#: simulated lens images (three classes no substructure / CDM subhalos / vortex or axion
#: substructure). Literature values, not targets: other simulations, noise and image sizes.
LITERATURE = {
    "what": "macro one-vs-rest ROC AUC of substructure classifiers on ML4SCI DeepLense "
    "simulations (literature values on other data, for context only)",
    "resnet_baseline_macro_auc": 0.90,
    "cvt_macro_auc": [0.97, 0.999],
    "sources": [
        "Alexander et al. 2020, ApJ 893, 15, arXiv:1909.07346 (DeepLense ResNet baseline)",
        "ML4SCI DeepLense transformer studies (convolutional vision transformer, CvT; GSoC "
        "2022-2023 reports on DeepLense models I-III)",
    ],
}


def _tensors(probs, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """``probs (B, K)`` float32 and ``labels (B,)`` int64 as CPU tensors.

    Raises
    ------
    ValueError
        Shapes that do not fit, an empty batch, or labels outside [0, K).
    """
    p = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if p.ndim != 2 or y.ndim != 1 or len(p) != len(y) or len(y) == 0:
        raise ValueError(f"probs {tuple(p.shape)} and labels {tuple(y.shape)} do not fit")
    if int(y.min()) < 0 or int(y.max()) >= p.shape[1]:
        raise ValueError(f"labels must lie in [0, {p.shape[1]})")
    return p, y


def accuracy(probs, labels) -> float:
    """Top-1 accuracy: the fraction of rows whose largest probability is at the true class.

    Parameters
    ----------
    probs : array (B, K) float
        Class probabilities (or any scores).
    labels : array (B,) int
        True classes in [0, K).

    Returns
    -------
    float in [0, 1].

    Raises
    ------
    ValueError
        Shapes that do not fit, or labels outside [0, K).
    """
    p, y = _tensors(probs, labels)
    return float((p.argmax(1) == y).double().mean())


def auroc(probs, labels) -> tuple[list[float], float]:
    """Per-class one-vs-rest ROC AUC and the macro AUC (module docstring).

    Parameters
    ----------
    probs : array (B, K) float
    labels : array (B,) int

    Returns
    -------
    per_class : list of float (K,)
        NaN for a class with no positive or no negative row.
    macro : float
        Mean over the classes with an AUC (NaN when none has one); with every class present it
        is torchmetrics' ``multiclass_auroc(average="macro")``.

    Raises
    ------
    ValueError
        Shapes that do not fit, or labels outside [0, K).
    """
    p, y = _tensors(probs, labels)
    per_class = one_vs_rest_auc(p, y, p.shape[1])
    defined = [a for a in per_class if math.isfinite(a)]
    return per_class, (float(np.mean(defined)) if defined else math.nan)


def confusion_matrix(probs, labels) -> np.ndarray:
    """Confusion matrix of the top-1 predictions, ``(K, K) int64``: entry ``[i, j]`` counts the
    rows of true class i predicted as class j (torchmetrics ``multiclass_confusion_matrix``).

    Raises
    ------
    ValueError
        Shapes that do not fit, or labels outside [0, K).
    """
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    p, y = _tensors(probs, labels)
    return multiclass_confusion_matrix(p.argmax(1), y, p.shape[1]).numpy().astype(np.int64)


def roc_curves(probs, labels) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """One-vs-rest ROC curve of every class (torchmetrics ``multiclass_roc``, exact
    thresholds).

    Returns
    -------
    list (K,) of (fpr, tpr) float64 arrays from (0, 0) to (1, 1), or None for a class without an
    AUC (no positive or no negative row).

    Raises
    ------
    ValueError
        Shapes that do not fit, or labels outside [0, K).
    """
    from torchmetrics.functional.classification import multiclass_roc

    p, y = _tensors(probs, labels)
    k = p.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fpr, tpr, _thresholds = multiclass_roc(p, y, k, thresholds=None)
    counts = torch.bincount(y, minlength=k)
    return [
        (fpr[i].double().numpy(), tpr[i].double().numpy()) if 0 < counts[i] < len(y) else None
        for i in range(k)
    ]


def expected_calibration_error(probs, labels, n_bins: int = N_BINS) -> float:
    """Expected calibration error of the top-1 confidence (module docstring; torchmetrics
    ``multiclass_calibration_error``, ``norm="l1"``).

    Parameters
    ----------
    probs : array (B, K) float
        Class probabilities (rows summing to 1).
    labels : array (B,) int
    n_bins : int
        Equal-width confidence bins of [0, 1].

    Returns
    -------
    float in [0, 1].

    Raises
    ------
    ValueError
        Shapes that do not fit, labels outside [0, K), or ``n_bins`` < 1.
    """
    from torchmetrics.functional.classification import multiclass_calibration_error

    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins} must be >= 1")
    p, y = _tensors(probs, labels)
    return float(multiclass_calibration_error(p, y, p.shape[1], n_bins=n_bins, norm="l1"))


def reliability(probs, labels, n_bins: int = N_BINS) -> dict[str, list]:
    """The reliability diagram: top-1 accuracy and mean confidence per confidence bin.

    Bin b holds the rows with top-1 confidence in ``[b/n, (b+1)/n)`` (confidence 1 in the last
    bin), as :func:`expected_calibration_error` bins them.

    Returns
    -------
    dict
        ``edges`` (n_bins + 1,), ``confidence`` and ``accuracy`` (n_bins,) floats (NaN for an
        empty bin), ``count`` (n_bins,) ints.

    Raises
    ------
    ValueError
        Shapes that do not fit, labels outside [0, K), or ``n_bins`` < 1.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins} must be >= 1")
    p, y = _tensors(probs, labels)
    conf, pred = p.double().max(1)
    correct = (pred == y).double()
    idx = (conf * n_bins).floor().long().clamp(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).double()
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = (conf_sum / count).numpy()
        mean_acc = (acc_sum / count).numpy()
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "confidence": mean_conf.tolist(),
        "accuracy": mean_acc.tolist(),
        "count": count.long().tolist(),
    }


def classification_metrics(
    probs, labels, classes: Sequence[str], n_bins: int = N_BINS
) -> dict[str, Any]:
    """Every metric of the report for one set of predictions.

    Parameters
    ----------
    probs : array (B, K) float
        Class probabilities, columns in the order of ``classes``.
    labels : array (B,) int
        True classes in [0, K).
    classes : sequence of str (K,)
    n_bins : int
        Bins of the calibration error and the reliability diagram.

    Returns
    -------
    dict
        ``metrics`` (``accuracy``, ``auc_macro``, ``ece``, ``auc`` {class: AUC or NaN}),
        ``n_per_class`` {class: count}, ``confusion_matrix`` (rows true, columns predicted),
        ``reliability`` (:func:`reliability`).

    Raises
    ------
    ValueError
        Shapes that do not fit, labels outside [0, K), or K != len(classes).
    """
    p, y = _tensors(probs, labels)
    if p.shape[1] != len(classes):
        raise ValueError(f"{p.shape[1]} probability columns for {len(classes)} classes")
    per_class, macro = auroc(p, y)
    counts = torch.bincount(y, minlength=len(classes)).tolist()
    return {
        "metrics": {
            "accuracy": accuracy(p, y),
            "auc_macro": macro,
            "ece": expected_calibration_error(p, y, n_bins),
            "auc": dict(zip(classes, per_class, strict=True)),
        },
        "n_per_class": dict(zip(classes, counts, strict=True)),
        "confusion_matrix": {
            "rows": "true",
            "columns": "predicted",
            "classes": list(classes),
            "counts": confusion_matrix(p, y).tolist(),
        },
        "reliability": reliability(p, y, n_bins),
    }


# ---------------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------------


def _same(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=0.0)


def check_images(maps, task) -> list[str]:
    """Refuse images a classifier cannot take; returns notes for what it can only assume.

    Parameters
    ----------
    maps : xarray.DataArray (sample, y, x) or (sample, channel, y, x)
        The images, with attrs (``pixel_scale`` in arcsec/pixel when known).
    task : engine.tasks.classification.Classification
        The classifier (``size``, ``channels``, ``pixel_scale`` of its training images).

    Returns
    -------
    list of str
        A note when the images or the classifier carry no pixel scale (then it cannot be checked).

    Raises
    ------
    ConfigError
        Images of another size, another number of channels or another pixel scale than the
        training images, or not square (one line).
    """
    dims = tuple(maps.dims)
    if dims[:1] != ("sample",) or dims[-2:] != ("y", "x") or maps.ndim not in (3, 4):
        raise ConfigError(
            f"images of dims {dims}: a classifier takes (sample, y, x) or (sample, channel, y, x)"
        )
    h, w = int(maps.sizes["y"]), int(maps.sizes["x"])
    c = int(maps.sizes.get("channel", 1))
    if (h, w) != (task.size, task.size) or c != task.channels:
        raise ConfigError(
            f"images of {c} channel{'s' if c != 1 else ''} x {h}x{w} pixels: the classifier was "
            f"trained on {task.channels} x {task.size}x{task.size} (images of another size are "
            "not resampled: write them at the training size and pixel scale)"
        )
    scale = maps.attrs.get("pixel_scale")
    if scale is not None and task.pixel_scale is not None:
        if not _same(float(scale), task.pixel_scale):
            raise ConfigError(
                f"images of {float(scale):g} arcsec/pixel: the classifier was trained on "
                f"{task.pixel_scale:g} arcsec/pixel (not resampled: the pixel scale sets the "
                "angular size of the ring and substructure it learnt)"
            )
        return []
    if scale is None and task.pixel_scale is not None:
        return [
            f"the images carry no pixel_scale: assumed the classifier's {task.pixel_scale:g} "
            "arcsec/pixel"
        ]
    return []


def _check_finite(batch: torch.Tensor, first: int) -> None:
    """Refuse a batch of images with NaN or inf pixels, naming the first such image."""
    bad = ~torch.isfinite(batch.reshape(batch.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        i = first + int(torch.nonzero(bad)[0, 0])
        raise ConfigError(f"image {i} holds NaN or inf pixels: the classifier needs finite images")


def predict_classifier(
    maps,
    checkpoint,
    device="cpu",
    batch_size: int = 256,
    strict: bool = True,
    scale: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Class probabilities of every image from a classifier checkpoint.

    The images are normalised with the checkpoint's fixed normalisation and passed through its
    network (:meth:`engine.tasks.classification.Classification.predict`).

    Parameters
    ----------
    maps : xarray.DataArray (sample, y, x) / (sample, channel, y, x), or array (B, N, N) /
        (B, C, N, N)
        Raw images in the units of the training images. A DataArray's class coord (the
        classifier's ``label``, e.g. ``substructure``) gives the true classes and its ``file``
        coord (folders) the file names.
    checkpoint : str or Path
        A ``.pt`` file or a run directory.
    device : str or torch.device
    batch_size : int
    strict : bool
        Check a DataArray's size, channels and pixel scale (:func:`check_images`); arrays are
        always checked for size and channels.
    scale : mapping, optional
        The ``predict`` verb's ``--box-size`` / ``--fov`` (regression's pixel scales): must be
        empty or None for a classifier.

    Returns
    -------
    dict
        ``probs`` (B, K) float64 (rows sum to 1), ``classes`` (K,) list of str, ``label`` (the
        class coord's name), ``notes`` (list of str), and when known ``truth`` (B,) str (true
        class names), ``file`` (B,) str.

    Raises
    ------
    ConfigError
        Missing or unreadable checkpoint or one of another task, images the classifier cannot
        take (:func:`check_images`), true classes it does not know, NaN/inf pixels, or a
        ``scale`` given.
    """
    if scale and any(v is not None for v in scale.values()):
        raise ConfigError(
            "--box-size and --fov are for regression networks: a classifier takes images at "
            "its training pixel scale (attr pixel_scale, arcsec/pixel)"
        )
    model, task, _ckpt = load_task_network(checkpoint, device, TASK)
    out: dict[str, Any] = {"classes": list(task.classes), "label": task.label, "notes": []}
    if hasattr(maps, "dims") and hasattr(maps, "attrs"):
        if strict:
            out["notes"] += check_images(maps, task)
        if task.label in maps.coords:
            where = f"images {str(maps.attrs.get('source', ''))!r}"
            truth = label_values(maps, task.label, where)
            encode_labels(truth, task.classes, where)
            out["truth"] = truth
        if "file" in maps.coords and maps["file"].dims == ("sample",):
            out["file"] = np.asarray(maps["file"].values).astype(str)
        maps = maps.values
    x = torch.as_tensor(np.asarray(maps, dtype=np.float32) if not torch.is_tensor(maps) else maps)
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or tuple(x.shape[1:]) != (task.channels, task.size, task.size):
        raise ConfigError(
            f"images of shape {tuple(x.shape)}: the classifier takes (B, {task.channels}, "
            f"{task.size}, {task.size}) (not resampled)"
        )
    probs = []
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size].float()
        _check_finite(batch, start)
        probs.append(task.predict(model, batch.to(device)).double().cpu())
    out["probs"] = torch.cat(probs).numpy()
    return out


def write_class_predictions(path, result: Mapping[str, Any]) -> Path:
    """Write one CSV row per image atomically (temporary file + ``os.replace``).

    Columns: ``sample`` (0-based index), ``file`` (when known), the true class under the
    label's name (e.g. ``substructure``, when known), ``p_<class>`` per class in the
    classifier's order (8 significant digits), ``predicted`` (the most probable class).

    Parameters
    ----------
    path : str or Path
        A ``.csv`` file in an existing directory.
    result : mapping
        :func:`predict_classifier`'s result.

    Returns
    -------
    Path

    Raises
    ------
    ConfigError
        A path not ending in .csv or in a directory that does not exist.
    """
    from engine.runs import atomic_write

    path = Path(path)
    if path.suffix != ".csv":
        raise ConfigError(f"--out {str(path)!r} must end in .csv")
    if not path.parent.is_dir():
        raise ConfigError(f"--out {str(path)!r}: directory {str(path.parent)!r} does not exist")
    probs, classes = np.asarray(result["probs"]), list(result["classes"])
    header = ["sample"]
    if "file" in result:
        header.append("file")
    truth = result.get("truth")
    if truth is not None:
        header.append(str(result.get("label") or "class"))
    header += [f"p_{c}" for c in classes] + ["predicted"]
    predicted = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    with atomic_write(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for i in range(len(probs)):
            row: list[Any] = [i]
            if "file" in result:
                row.append(result["file"][i])
            if truth is not None:
                row.append(truth[i])
            row += [f"{float(v):.8g}" for v in probs[i]]
            row.append(classes[int(predicted[i])])
            w.writerow(row)
    return path


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def _check_out(out_dir) -> Path | None:
    """The output directory, checked (or None)."""
    if out_dir is None:
        return None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a directory")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist")
    return out


def _device(device) -> str:
    from engine.device import default_device

    try:
        return str(default_device(str(device)))
    except (ValueError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0]
        raise ConfigError(f"--device {device!r}: {msg}") from None


def _load(dataset, count, datasets_file):
    """(images DataArray in memory, spec) of an evaluation."""
    from engine.data import open_spec

    if hasattr(dataset, "dims") and hasattr(dataset, "attrs"):
        da = dataset if count is None else dataset.isel(sample=slice(0, int(count)))
        return da, str(dataset.attrs.get("source", "<DataArray>"))
    spec = str(dataset)
    options = {} if count is None else {"count": count}
    da = open_spec(spec, datasets_file=datasets_file, **options)
    if "sample" not in da.dims or da.sizes["sample"] == 0:
        raise ConfigError(f"dataset {spec!r} holds no images")
    return da.load(), spec


def evaluate_classifier(
    dataset,
    checkpoint,
    out_dir=None,
    device: str = "cpu",
    count: int | None = None,
    seed: int | None = None,
    datasets_file=None,
    **_regression_options,
) -> tuple[dict[str, Any], dict[str, dict], np.ndarray, Any]:
    """Score a classifier checkpoint on labelled images; write the report (module docstring).

    Parameters
    ----------
    dataset : str or xarray.DataArray
        A dataset spec (e.g. ``lenses.zarr?split=test``, ``folder:DIR``) or images with the
        classifier's class coord.
    checkpoint : str or Path
        A ``.pt`` file or a run directory (its ``best.pt``).
    out_dir : str or Path, optional
        Directory for ``report.json``, ``predictions.csv`` and ``figures/``; None writes nothing.
    device : str
    count : int, optional
        Only the first ``count`` images.
    seed : int, optional
        Not used (no images are generated); accepted like every evaluator's options.
    datasets_file : str or Path, optional
        Datasets YAML of short names.
    **_regression_options
        The P(k)-likelihood options of the ``evaluate`` verb, not used for classifiers.

    Returns
    -------
    (report, {"network": predictions}, truth (B,) int64 class indices, images DataArray)

    Raises
    ------
    ConfigError
        Bad checkpoint, spec or output directory, images without the class coord, classes the
        classifier does not know, images it cannot take (:func:`check_images`) (one line).
    """
    from engine.evaluation.classification_figures import draw_class_figures

    t0 = time.perf_counter()
    ckpt = checkpoint_path(checkpoint)
    device = _device(device)
    out = _check_out(out_dir)
    da, spec = _load(dataset, count, datasets_file)
    result = predict_classifier(da, ckpt, device=device)
    classes, label = result["classes"], result["label"]
    if "truth" not in result:
        raise ConfigError(
            f"dataset {spec!r} has no class coord {label!r}: evaluation needs the true classes"
        )
    y = encode_labels(result["truth"], classes, f"dataset {spec!r}").numpy()
    scores = classification_metrics(result["probs"], y, classes)
    notes = list(result["notes"])
    missing = [c for c, a in scores["metrics"]["auc"].items() if not math.isfinite(a)]
    if missing:
        notes.append(
            "no AUC for class " + ", ".join(missing) + " (no image of it, or only images of it): "
            "the macro AUC averages the other classes"
        )
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "task": TASK,
        "dataset": spec,
        "checkpoint": str(ckpt),
        "n_maps": len(y),
        "kind": da.attrs.get("kind"),
        "label": label,
        "classes": classes,
        **scores,
        "literature": LITERATURE,
        "figures": {},
        "predictions": None,
        "notes": notes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": None,
    }
    results = {"network": result}
    if out is None:
        report["seconds"] = time.perf_counter() - t0
        return clean_json(report), results, y, da
    from engine.outputs import staged_dir
    from engine.runs import write_json_atomic

    with staged_dir(out, ("figures", PREDICTIONS_FILE, REPORT_FILE)) as tmp:
        (tmp / "figures").mkdir()
        write_class_predictions(tmp / PREDICTIONS_FILE, result)
        report["predictions"] = PREDICTIONS_FILE
        report["figures"] = dict(CLASS_FIGURES)
        draw_class_figures(clean_json(report), roc_curves(result["probs"], y), tmp)
        report["seconds"] = time.perf_counter() - t0
        report = clean_json(report)
        write_json_atomic(tmp / REPORT_FILE, report)
    return report, results, y, da


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """Text lines of a classifier's report for the terminal: accuracy, macro AUC, ECE, per-class
    AUC and counts, the confusion matrix."""
    m = report["metrics"]

    def f(v):
        return "-" if v is None else f"{v:.4f}"

    lines = [
        f"accuracy {f(m['accuracy'])}  macro AUC {f(m['auc_macro'])}  ECE {f(m['ece'])}",
        f"{'class':<12} {'n':>6} {'AUC':>7}",
    ]
    for c in report["classes"]:
        lines.append(f"{c:<12} {report['n_per_class'][c]:>6} {f(m['auc'][c]):>7}")
    cm = report["confusion_matrix"]["counts"]
    width = max(6, *(len(c) for c in report["classes"]))
    lines.append("confusion (rows true, columns predicted):")
    lines.append(" " * (width + 1) + " ".join(f"{c:>{width}}" for c in report["classes"]))
    for c, row in zip(report["classes"], cm, strict=True):
        lines.append(f"{c:>{width}} " + " ".join(f"{v:>{width}}" for v in row))
    lit = report.get("literature") or {}
    if lit:
        lines.append(
            f"literature (DeepLense, other data): ResNet macro AUC "
            f"{lit['resnet_baseline_macro_auc']}, CvT {lit['cvt_macro_auc'][0]}-"
            f"{lit['cvt_macro_auc'][1]}"
        )
    return lines
