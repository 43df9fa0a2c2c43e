r"""Metrics of classifiers (task ``classification``): accuracy, ROC AUC, confusion, calibration.

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

The evaluation of a classifier checkpoint (predictions, ``report.json``, ``predictions.csv``,
terminal summary) that uses them: :mod:`engine.evaluation.classification_eval`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine.tasks.classification import one_vs_rest_auc

__all__ = [
    "accuracy",
    "auroc",
    "classification_metrics",
    "confusion_matrix",
    "expected_calibration_error",
    "reliability",
    "roc_curves",
]

#: Bins of the calibration error and the reliability diagram (Guo et al. 2017 use 15).
N_BINS = 15


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
