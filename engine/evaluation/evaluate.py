r"""Evaluation of a checkpoint and/or the P(k) likelihood on labelled maps: the report.

:func:`evaluate` resolves a dataset spec (:func:`engine.data.open_spec`; generated kinds follow
the checkpoint's map settings and prior box), predicts every map with a trained network
(:func:`engine.evaluation.predict.predict_network`) and with the binned P(k) likelihood
(:func:`engine.evaluation.likelihood.pk_likelihood_predict`, kinds grf, lognormal, 2lpt slabs
and kappa; skipped with a note otherwise), scores both against the true values
(:mod:`engine.evaluation.metrics`) and against the Cramér–Rao bound
(:mod:`engine.evaluation.fisher`), and writes ``report.json``, ``predictions.csv`` and
``figures/*.png`` (schema: :mod:`engine.evaluation.schema`; figures:
:mod:`engine.evaluation.figures`). :func:`engine.evaluation.compare.compare` loops over
checkpoints × datasets into one long table.

Two classical baselines
-----------------------
``pk_likelihood`` (label "P(k) likelihood") is the binned P(k) likelihood with the maps' own
linear/halofit theory: exact for the Gaussian and lognormal kinds, k ≤ k_N/4 for 2lpt slabs, and
absent for maps of other origin (camels, quijote, des, folder). ``pk_calibrated`` ("calibrated
P(k)") is the simulation-calibrated P(k) likelihood of :mod:`engine.evaluation.calibrated`,
which runs on any labelled maps: its emulator and covariance are fitted on the network's
training data (the checkpoint's ``config["dataset"]``, or maps generated with its settings when
it was trained on the fly: :func:`engine.evaluation.predict.checkpoint_training_spec`), on the
evaluated dataset's own train split without a checkpoint (a note says when the evaluated maps
include it), or on ``calibration=`` (a file or a spec); fits are cached per training spec
(:func:`engine.evaluation.calibrated_use.calibrate`). Its maps are those the network sees (after
domain transfer: the network's grid, which is its training data's). ``python -m engine train`` runs :func:`evaluate` at
the end of a completed run.

Tasks
-----
A checkpoint records its task; :data:`EVALUATORS` maps a task name to what evaluation does for
it (:class:`Evaluator`: predict, evaluate): ``"regression"`` (older checkpoints:
``"parameter_regression"``), and the map emulators ``"gan"`` and ``"diffusion"``
(:func:`engine.evaluation.emulator_eval.evaluate_emulator`: the emulator report; for a
class-conditional diffusion checkpoint, e.g. strong-lens images by substructure, the per-class
report of :func:`engine.evaluation.lens_eval.evaluate_class_emulator`, which it dispatches to;
``predict`` refuses them), and ``"classification"``
(:mod:`engine.evaluation.classification`: class probabilities, accuracy, ROC AUC, confusion
matrix, calibration), and ``"delensing"`` (:mod:`engine.evaluation.delensing_eval`: A_res, r
and the baselines on full skies); :func:`evaluator_for` refuses a checkpoint of another task in one line, for the
``predict``, ``evaluate`` and ``compare`` verbs alike.

Domain transfer, and which methods run on which maps: :mod:`engine.evaluation.maps`. The
regression report itself (maps, predictions, the likelihoods, the bound, the files):
:mod:`engine.evaluation.regression_eval`, re-exported here as :func:`evaluate_regression`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.evaluation.classification_eval import evaluate_classifier, predict_classifier
from engine.evaluation.delensing_eval import evaluate_delenser
from engine.evaluation.emulator_eval import evaluate_emulator, refuse_predict
from engine.evaluation.maps import (
    SYNTHETIC_KINDS,
)
from engine.evaluation.predict import (
    checkpoint_task,
    predict_network,
)
from engine.evaluation.regression_eval import evaluate_regression
from engine.params import ConfigError

#: Public names.
__all__ = [
    "EVALUATORS",
    "Evaluator",
    "SYNTHETIC_KINDS",
    "evaluate",
    "evaluate_regression",
    "evaluator_for",
    "run_evaluation",
]


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluator:
    """What evaluation does for the checkpoints of one task.

    Attributes
    ----------
    predict : callable
        ``predict(maps, checkpoint, device=..., strict=...) -> {"mean", "std"[, "truth"]}``:
        per-map predictions, (B, P) float64 arrays (:func:`engine.evaluation.predict.
        predict_network` for regression); a classifier's gives ``{"probs", "classes"[,
        "truth"]}`` instead (:func:`engine.evaluation.classification_eval.predict_classifier`).
    evaluate : callable
        ``evaluate(dataset, checkpoint, **options) -> (report, results, truth, maps)``: the
        report of :mod:`engine.evaluation.schema` and what :mod:`engine.evaluation.compare`
        writes per pair (:func:`evaluate_regression`).
    """

    predict: Callable[..., dict]
    evaluate: Callable[..., tuple]


def evaluator_for(checkpoint: str | Path | None, verb: str = "evaluate") -> Evaluator:
    """The :class:`Evaluator` of a checkpoint's task (regression for ``checkpoint=None``: the
    P(k) likelihood alone).

    Parameters
    ----------
    checkpoint : str or Path or None
        A ``.pt`` file or run directory.
    verb : str
        The verb named in the error message (predict, evaluate, compare).

    Raises
    ------
    ConfigError
        Missing or unreadable checkpoint, or a task not in :data:`EVALUATORS`, e.g.
        ``checkpoint 'g.pt' is of task 'gan'; evaluate knows: regression``.
    """
    if checkpoint is None:
        return EVALUATORS["regression"]
    task = checkpoint_task(checkpoint)
    if task not in EVALUATORS:
        raise ConfigError(
            f"checkpoint {str(checkpoint)!r} is of task {task!r}; "
            f"{verb} knows: {', '.join(EVALUATORS)}"
        )
    return EVALUATORS[task]


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def evaluate(
    dataset,
    checkpoint: str | Path | None = None,
    out_dir: str | Path | None = None,
    pk_likelihood: bool = True,
    device: str = "cpu",
    count: int | None = None,
    seed: int | None = None,
    datasets_file: str | Path | None = None,
    grid: int = 64,
    k_max: float | None = None,
    pk_calibrated: bool | None = None,
    calibration=None,
) -> dict[str, Any]:
    """Evaluate a network and/or the P(k) likelihoods on labelled maps; write the report.

    The checkpoint's task picks the evaluation (:func:`evaluator_for`; regression:
    :func:`evaluate_regression`).

    Parameters
    ----------
    dataset : str or xarray.DataArray
        A spec of :func:`engine.data.open_spec` (generated kinds follow the checkpoint's map
        settings and prior box) or maps ``(sample, y, x)`` with ``omega_m``/``sigma8`` coords.
    checkpoint : str or Path, optional
        A ``.pt`` checkpoint or a run directory (its ``checkpoints/best.pt``); None: P(k)
        likelihood only.
    out_dir : str or Path, optional
        Directory (created) for ``report.json``, ``predictions.csv`` and ``figures/``; None
        writes nothing.
    pk_likelihood : bool
        Also run the P(k) likelihood (supported kinds only; otherwise a note).
    device : str
        Torch device of the network (``cpu``, ``cuda[:i]``).
    count, seed : int, optional
        Options ``count`` / ``seed`` of the spec (number of maps; seed of generated maps).
    datasets_file : str or Path, optional
        Datasets YAML of short names (:func:`engine.data.named_specs`).
    grid : int
        Posterior grid of the likelihood per parameter.
    k_max : float, optional
        Highest bin centre of the likelihood and the Fisher bound (h/Mpc, or ℓ for κ); default
        the Nyquist wavenumber, except k_N/4 for 2lpt maps (linear theory; see
        :mod:`engine.evaluation.theory`). Given, it also cuts the calibrated likelihood's bins.
    pk_calibrated : bool, optional
        Also run the calibrated P(k) likelihood (module docstring; failures become a note);
        default ``pk_likelihood`` (on grf and lognormal maps it sits beside the exact
        linear-theory likelihood, which it should match).
    calibration : str or Path or Calibration, optional
        The calibration to use: a ``.json`` file of one, or the dataset spec to fit it on;
        default the network's training data, else the dataset's train split.

    Returns
    -------
    dict
        The report (:mod:`engine.evaluation.schema`), as written to ``report.json``.

    Raises
    ------
    ConfigError
        Bad spec, file or checkpoint, a checkpoint of a task evaluation does not know, maps
        without labels, maps that do not match the network, no method to run, or an output
        directory that cannot be created, maps that domain transfer refuses
        (:func:`transfer_maps`) (one line).
    """
    return run_evaluation(
        dataset,
        checkpoint,
        out_dir=out_dir,
        pk_likelihood=pk_likelihood,
        device=device,
        count=count,
        seed=seed,
        datasets_file=datasets_file,
        grid=grid,
        k_max=k_max,
        pk_calibrated=pk_calibrated,
        calibration=calibration,
    )[0]


def run_evaluation(dataset, checkpoint, verb: str = "evaluate", **options) -> tuple:
    """:func:`evaluate` through the checkpoint's :class:`Evaluator`, with what it predicted.

    Parameters
    ----------
    dataset, checkpoint
        As :func:`evaluate`.
    verb : str
        Verb named when the checkpoint's task is refused (:func:`evaluator_for`).
    **options
        The other keyword arguments of :func:`evaluate`.

    Returns
    -------
    (report, results, truth, maps)
        As :func:`evaluate_regression`.

    Raises
    ------
    ConfigError
        As :func:`evaluate`.
    """
    return evaluator_for(checkpoint, verb).evaluate(dataset, checkpoint, **options)


#: The evaluations by task name (a checkpoint's ``task``; see :func:`evaluator_for`).
EVALUATORS: dict[str, Evaluator] = {
    "regression": Evaluator(predict=predict_network, evaluate=evaluate_regression),
    "gan": Evaluator(predict=refuse_predict, evaluate=evaluate_emulator),
    "diffusion": Evaluator(predict=refuse_predict, evaluate=evaluate_emulator),
    "classification": Evaluator(predict=predict_classifier, evaluate=evaluate_classifier),
    # predict of a delenser writes FITS maps (engine.evaluation.delensing_eval.predict_delenser,
    # called by the predict verb directly); this entry refuses per-map arrays
    "delensing": Evaluator(predict=refuse_predict, evaluate=evaluate_delenser),
}
