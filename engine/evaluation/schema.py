"""What evaluation writes and the explorer reads: file names, keys and columns (torch-free).

This module imports no torch (checked by import-linter), so the explorer and other light
readers can use it without loading the engine's numerical stack.

report.json (version 1)
-----------------------
Written by :func:`engine.evaluation.evaluate.evaluate` to ``<out>/report.json``::

    {"version": 1, "dataset": "<spec>", "checkpoint": "<path>" | null, "n_maps": int,
     "kind": "grf", "map_settings": {"kind": ..., setting: value},
     "transfer": {"from": {"unit": "Mpc/h" | "deg", "side", "size", "pixel"}, "to": {...},
                  "method": "area-average" | "fourier" | "none", "tiles_per_map": int} | null,
     "prior": {"omega_m": [lo, hi], "sigma8": [lo, hi]}, "params": ["omega_m", "sigma8"],
     "methods": {
        "network": {"label": "<model name>",
                    "metrics": {"omega_m": {"rmse", "mae", "r2", "bias", "coverage_68",
                                            "coverage_95", "efficiency": float | null,
                                            "efficiency_maps": int},
                                "sigma8": {...}},
                    "bins": {"omega_m": {"edges": [9], "count": [8], "rmse": [8],
                                         "bias": [8], "std": [8]}, "sigma8": {...}},
                    "calibration": {"levels": [...], "omega_m": [...], "sigma8": [...]}},
        "pk_likelihood": {same, "label": "P(k) likelihood"},
        "pk_calibrated": {same, "label": "calibrated P(k)"}},
     "calibration": {"spec": training data of the calibration, "file": path | null,
                     "n_maps", "n_bins", "degree", "geometry": {"unit", "side", "size",
                     "units"}, "k_range": [k_lo, k_hi], "theta_range": {"omega_m": [lo, hi],
                     "sigma8": [lo, hi]}, "hartlap", "validation": {...} | null} | null,
     "fisher": {"crb_sigma": {"omega_m": σ_CRB at the prior centre, "sigma8": ...},
                "bins": {"omega_m": [σ_CRB at each bin centre, the other parameter at the
                                     prior centre], "sigma8": [...]},
                "method": "modes" | "binned", "bound": bool} | null,
     "figures": {"scatter": "figures/scatter.png", "bins": "figures/bins.png",
                 "coverage": "figures/coverage.png"},
     "k_max": highest bin centre used (h/Mpc or ℓ) | null (Nyquist),
     "predictions": "predictions.csv", "notes": ["why a method or the bound is missing", ...],
     "created": "<ISO 8601 UTC time>", "seconds": float}

``n_maps`` counts the evaluated maps (tiles after domain transfer). Methods missing from
``methods`` were not run (no checkpoint, ``pk_likelihood=False``, or a kind the likelihood does
not support: see ``notes``). ``pk_calibrated`` is the simulation-calibrated P(k) likelihood of
:mod:`engine.evaluation.calibrated`, fitted on the network's training data (or the dataset's own
train split, or ``calibration=``), described by ``report["calibration"]``. Non-finite numbers are written as null. Paths in ``figures`` and
``predictions`` are relative to the report's directory; without ``out_dir`` nothing is written,
``figures`` is {} and ``predictions`` null. The metrics are defined in
:mod:`engine.evaluation.metrics`, σ_CRB in :mod:`engine.evaluation.fisher`.

predictions.csv
---------------
``sample``, ``omega_m_true``, ``sigma8_true``, then per method ``<method>_<param>_mean`` and
``<method>_<param>_std`` (and ``<method>_<param>_map`` for the two P(k) likelihoods); the ``predict``
verb writes unprefixed ``<param>_mean`` / ``_std`` columns for its one method
(:func:`engine.evaluation.predict.write_predictions`). All values dimensionless.

Comparison table (``python -m engine compare``)
-----------------------------------------------
One row per (model, dataset, method, param), columns :data:`COMPARE_COLUMNS`
(:func:`engine.evaluation.compare.compare`).
"""

from __future__ import annotations

#: Version of the report.json schema.
REPORT_VERSION = 1
#: Files of an evaluation, relative to its directory.
REPORT_FILE, PREDICTIONS_FILE = "report.json", "predictions.csv"
#: Figures of an evaluation (key of ``report["figures"]`` -> path relative to its directory).
FIGURES = {
    "scatter": "figures/scatter.png",
    "bins": "figures/bins.png",
    "coverage": "figures/coverage.png",
}
#: Inferred parameters, in the order of every (B, 2) array of engine.evaluation (dimensionless).
PARAMS = ("omega_m", "sigma8")
#: Methods of a report: a trained network, the binned P(k) likelihood (linear theory), the
#: simulation-calibrated P(k) likelihood.
METHODS = ("network", "pk_likelihood", "pk_calibrated")
#: Labels of the methods that have a fixed one (a network is labelled by its model name).
LABELS = {"pk_likelihood": "P(k) likelihood", "pk_calibrated": "calibrated P(k)"}
#: Model name of the P(k)-likelihood rows of the comparison table.
PK_MODEL = "pk-likelihood"
#: Model name of the calibrated P(k)-likelihood rows of the comparison table.
PK_CAL_MODEL = "pk-calibrated"
#: Metric keys per method and parameter in ``report["methods"][m]["metrics"][param]`` and
#: columns of the comparison table (definitions: :mod:`engine.evaluation.metrics`).
METRIC_KEYS = ("rmse", "mae", "r2", "bias", "coverage_68", "coverage_95", "efficiency")
#: Columns of the comparison table, in order.
COMPARE_COLUMNS = (
    "model",
    "dataset",
    "method",
    "param",
    *METRIC_KEYS,
    "n_maps",
    "transfer",
    "error",
    "predictions",
    "checkpoint",
)
