"""Figures of a classifier's evaluation: PNG files under ``<out>/figures/`` (matplotlib, Agg).

* roc: one-vs-rest ROC curve of every class (true- against false-positive rate), its AUC in the
  legend, the diagonal of a random classifier;
* confusion: the confusion matrix, rows the true class, columns the predicted one, coloured by
  the fraction of the row, with the counts written in;
* reliability: top-1 accuracy against mean confidence per confidence bin (Guo et al. 2017, ICML,
  fig. 1), the diagonal of perfect calibration, and the number of images per bin below.

File names: :data:`engine.evaluation.classification_eval.CLASS_FIGURES`; metrics:
:mod:`engine.evaluation.classification`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.evaluation.figures import _save


def _figure(width: float = 6.0, height: float = 5.0):
    """A figure with fixed margins (no layout engine) on the Agg canvas."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.14, right=0.96, bottom=0.12, top=0.92)
    return fig


def draw_class_figures(report: Mapping[str, Any], curves, out_dir) -> None:
    """Write the PNG figures of ``report["figures"]`` (roc, confusion, reliability) under
    ``out_dir``, each atomically.

    Parameters
    ----------
    report : mapping
        The classifier's report (``classes``, ``metrics``, ``confusion_matrix``,
        ``reliability``, ``figures``), JSON-clean (null for NaN).
    curves : list (K,) of (fpr, tpr) arrays or None
        The one-vs-rest ROC curves (:func:`engine.evaluation.classification.roc_curves`).
    out_dir : str or Path
        Directory of the report; ``figures/`` must exist.
    """
    out_dir = Path(out_dir)
    files = report["figures"]
    _save(roc_figure(report, curves), out_dir / files["roc"])
    _save(confusion_figure(report), out_dir / files["confusion"])
    _save(reliability_figure(report), out_dir / files["reliability"])


def roc_figure(report: Mapping[str, Any], curves):
    """One-vs-rest ROC curves ``[(fpr, tpr) or None per class]`` with their AUC (a matplotlib
    Figure)."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    aucs = report["metrics"]["auc"]
    for name, curve in zip(report["classes"], curves, strict=True):
        if curve is None:
            continue
        fpr, tpr = curve
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {aucs[name]:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="random")
    macro = report["metrics"]["auc_macro"]
    title = "one-vs-rest ROC" + ("" if macro is None else f", macro AUC {macro:.3f}")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def confusion_figure(report: Mapping[str, Any]):
    """The confusion matrix, coloured by row fraction, counts written in (a Figure)."""
    cm = np.asarray(report["confusion_matrix"]["counts"], dtype=float)
    classes = report["classes"]
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            color = "white" if frac[i, j] > 0.6 else "black"
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", color=color, fontsize=10)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted class", ylabel="true class")
    acc = report["metrics"]["accuracy"]
    ax.set_title("confusion matrix" + ("" if acc is None else f", accuracy {acc:.3f}"))
    return fig


def reliability_figure(report: Mapping[str, Any]):
    """Reliability diagram (accuracy against confidence per bin) and counts (a Figure)."""
    rel = report["reliability"]
    edges = np.asarray(rel["edges"], float)
    centres = 0.5 * (edges[1:] + edges[:-1])
    width = np.diff(edges)
    acc = np.array([np.nan if v is None else v for v in rel["accuracy"]], float)
    conf = np.array([np.nan if v is None else v for v in rel["confidence"]], float)
    fig = _figure(6.0, 6.0)
    top = fig.add_axes((0.14, 0.36, 0.82, 0.56))
    bottom = fig.add_axes((0.14, 0.08, 0.82, 0.2), sharex=top)
    ok = np.isfinite(acc)
    top.bar(centres[ok], acc[ok], width=width[ok], edgecolor="k", alpha=0.7, label="accuracy")
    top.plot(conf[ok], acc[ok], "o", color="C3", ms=4, label="(mean confidence, accuracy)")
    top.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ece = report["metrics"]["ece"]
    top.set(ylabel="top-1 accuracy", xlim=(0, 1), ylim=(0, 1))
    top.set_title("reliability" + ("" if ece is None else f", ECE {ece:.3f}"))
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(centres, rel["count"], width=width, edgecolor="k", color="0.6")
    bottom.set(xlabel="top-1 confidence", ylabel="images")
    return fig
