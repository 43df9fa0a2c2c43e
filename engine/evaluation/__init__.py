"""Evaluation of trained checkpoints and of the classical estimators, per task.

Modules (imports point down this list; no cycles, checked by import-linter):

* :mod:`engine.evaluation.compare` — every checkpoint × dataset as one long table.
* :mod:`engine.evaluation.evaluate` — :func:`~engine.evaluation.evaluate.evaluate` (report.json,
  predictions.csv, figures) and the registry of evaluations by task,
  :data:`~engine.evaluation.evaluate.EVALUATORS` (today: ``regression``).
* :mod:`engine.evaluation.figures` — the PNG figures of a report.
* :mod:`engine.evaluation.maps` — the evaluated maps: loading, checks against a network, domain
  transfer to its pixel grid.
* :mod:`engine.evaluation.fisher` — Fisher matrix, Cramér–Rao bound, efficiency.
* :mod:`engine.evaluation.likelihood` — the binned P(k) likelihood of (Ω_m, σ8).
* :mod:`engine.evaluation.theory` — map model and theory table of the likelihood and the bound.
* :mod:`engine.evaluation.predict` — network predictions from checkpoints, predictions CSV; the
  only module that imports the training side (checkpoints, tasks).
* :mod:`engine.evaluation.metrics` — RMSE, bias, R², coverage, calibration (numpy only).
* :mod:`engine.evaluation.schema` — file names, report keys and table columns (torch-free: the
  explorer reads it).

This package's ``__init__`` imports nothing, so importing the schema stays cheap.
"""
