r"""Evaluation of a classifier checkpoint (task ``classification``): predictions, the report.

The metrics (accuracy, ROC AUC, confusion matrix, ROC curves, calibration error, reliability
diagram; :func:`engine.evaluation.classification.classification_metrics`):
:mod:`engine.evaluation.classification`, which re-exports this module's public names.

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
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.data.classes import encode_labels, label_values
from engine.evaluation.classification import classification_metrics, roc_curves
from engine.evaluation.maps import clean_json
from engine.evaluation.predict import checkpoint_path, load_task_network
from engine.evaluation.schema import PREDICTIONS_FILE, REPORT_FILE, REPORT_VERSION
from engine.params import ConfigError

__all__ = [
    "CLASS_FIGURES",
    "LITERATURE",
    "check_images",
    "evaluate_classifier",
    "predict_classifier",
    "summary_lines",
    "write_class_predictions",
]

#: Task name of classifier checkpoints.
TASK = "classification"
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
