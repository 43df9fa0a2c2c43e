"""Comparison of checkpoints and the P(k) likelihoods on several datasets: one long table.

:func:`compare` evaluates every (checkpoint, dataset) pair with
:func:`engine.evaluation.evaluate.evaluate` (through the checkpoint's task,
:func:`engine.evaluation.evaluate.evaluator_for`) and writes one row per (model, dataset,
method, param), columns :data:`engine.evaluation.schema.COMPARE_COLUMNS`; the ``compare`` verb
and the explorer's Compare page read it. :func:`format_table` is the text table of one report.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.evaluation.evaluate import run_evaluation
from engine.evaluation.maps import transfer_text
from engine.evaluation.predict import checkpoint_name, write_predictions
from engine.evaluation.schema import (
    COMPARE_COLUMNS,
    METRIC_KEYS,
    PARAMS,
    PK_CAL_MODEL,
    PK_MODEL,
)
from engine.params import ConfigError


def _rows(
    model: str,
    dataset: str,
    method: str,
    report: Mapping[str, Any],
    predictions: str | None = None,
    maps_of: str | None = None,
) -> list[dict]:
    rows = []
    for name in PARAMS:
        m = report["methods"][method]["metrics"][name]
        rows.append(
            {
                "model": model,
                "dataset": dataset,
                "method": method,
                "param": name,
                **{k: m.get(k) for k in METRIC_KEYS},
                "n_maps": report["n_maps"],
                "transfer": transfer_text(report.get("transfer")) or None,
                "error": None,
                "predictions": predictions,
                "checkpoint": report.get("checkpoint_arg") if method == "network" else maps_of,
            }
        )
    return rows


def _error_rows(
    model: str, dataset: str, method: str, message: str, checkpoint: str | None = None
) -> list[dict]:
    return [
        {
            **dict.fromkeys(COMPARE_COLUMNS),
            "model": model,
            "dataset": dataset,
            "method": method,
            "param": name,
            "n_maps": 0,
            "error": message,
            "checkpoint": checkpoint,
        }
        for name in PARAMS
    ]


def predictions_name(model: str, dataset: str) -> str:
    """File name of a (model, dataset) pair's predictions in ``--predictions-dir``:
    ``<model>__<readable part of the spec>-<8 hex of its SHA-1>.csv`` (safe characters only,
    unique per spec)."""
    import hashlib
    import re

    safe = lambda text: re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")  # noqa: E731
    target = dataset.split("?", 1)[0].rstrip("/")
    short = safe(target.rsplit("/", 1)[-1].rsplit(":", 1)[-1])[:40] or "maps"
    digest = hashlib.sha1(dataset.encode()).hexdigest()[:8]
    return f"{safe(model)[:40] or 'model'}__{short}-{digest}.csv"


def write_pair_predictions(path, results: Mapping[str, dict], truth, maps) -> None:
    """Write one (model, dataset) pair's predictions as CSV (atomically).

    Columns ``sample`` (row of the evaluated maps), ``source_sample`` (map of the dataset it
    comes from: differs from ``sample`` after tiling), ``tile_y``/``tile_x`` (after tiling),
    ``omega_m_true``, ``sigma8_true`` and per method ``<method>_<param>_mean`` / ``_std``
    (dimensionless), the layout of ``predictions.csv`` that :mod:`explorer.report` reads
    (:func:`engine.evaluation.predict.write_predictions`, which also adds ``<method>_<param>_map`` for the
    P(k) likelihood).
    """
    coords = maps.coords
    source = coords["source_sample"].values if "source_sample" in coords else np.arange(len(truth))
    extra = {"source_sample": np.asarray(source)}
    extra.update({k: np.asarray(coords[k].values) for k in ("tile_y", "tile_x") if k in coords})
    write_predictions(path, dict(results), truth=truth, extra=extra)


def compare(
    checkpoints: Sequence[str | Path],
    datasets: Sequence[str],
    count: int | None = None,
    seed: int | None = None,
    device: str = "cpu",
    datasets_file: str | Path | None = None,
    pk_likelihood: bool = True,
    out: str | Path | None = None,
    on_error: str = "skip",
    predictions_dir: str | Path | None = None,
    pk_calibrated: bool | None = None,
):
    """Metrics of every checkpoint on every dataset, and of the P(k) likelihoods, as one table.

    For each dataset spec, each checkpoint is evaluated (:func:`engine.evaluation.evaluate.evaluate`; generated kinds take
    each checkpoint's map settings and prior; other data go through domain transfer,
    :func:`engine.evaluation.maps.transfer_maps`); for generated kinds (``grf``, …: other maps for every network, made
    with its settings) the P(k) likelihood runs on each network's maps, as model
    ``"pk-likelihood [<model> maps]"`` with that checkpoint in ``checkpoint``; otherwise the P(k)
    likelihood is evaluated once per dataset, on the maps of
    the first checkpoint that could be evaluated without domain transfer, else on the
    dataset's own maps (no checkpoint), as rows of model :data:`PK_MODEL`. It runs only for
    kinds whose theory the project has (grf, lognormal, 2lpt, kappa: generated maps and our
    files); for camels, quijote, des and folder data its rows carry the reason in ``error``.

    The calibrated P(k) likelihood (:mod:`engine.evaluation.calibrated`) runs on every labelled
    dataset: with each checkpoint, on the maps that network sees and calibrated on its training
    data (model ``"pk-calibrated [<model>]"``, that checkpoint in ``checkpoint``; one fit per
    training dataset, cached, whatever the number of datasets), and, when no checkpoint could be
    evaluated on a dataset (or none is given), once on the dataset's own maps calibrated on its
    train split (model :data:`~engine.evaluation.schema.PK_CAL_MODEL`). Where it cannot run (too
    few training maps for the bins, another geometry) its rows carry the reason in ``error``.

    Parameters
    ----------
    checkpoints : sequence of str or Path
        ``.pt`` files or run directories (may be empty: P(k) likelihood only).
    datasets : sequence of str
        Dataset specs or short names.
    count, seed, device, datasets_file
        As :func:`engine.evaluation.evaluate.evaluate` (``count`` counts the dataset's maps, before tiling).
    pk_likelihood : bool
        Add the P(k)-likelihood rows.
    pk_calibrated : bool, optional
        Add the calibrated P(k)-likelihood rows; default ``pk_likelihood``.
    out : str or Path, optional
        Also write the table as CSV (atomically; must end in .csv).
    on_error : {"skip", "raise"}
        A failing (checkpoint, dataset) pair gives rows with empty metrics and the one-line
        message in column ``error`` ("skip"; any exception, e.g. of a damaged checkpoint, so
        the other pairs are still evaluated), or raises ("raise").
    predictions_dir : str or Path, optional
        Directory (created) for one CSV of predictions per evaluated pair
        (:func:`write_pair_predictions`, named by :func:`predictions_name`); column
        ``predictions`` of the table holds its path relative to ``out``'s directory (or the
        absolute path without ``out``).

    Returns
    -------
    pandas.DataFrame
        Long format, columns :data:`COMPARE_COLUMNS` (model, dataset, method ∈ {network,
        pk_likelihood, pk_calibrated}, param ∈ {omega_m, sigma8}, the metrics of the module docstring, n_maps
        (maps evaluated, tiles after domain transfer), transfer (:func:`engine.evaluation.maps.transfer_text`, empty
        when the maps were used as they are), error, predictions, checkpoint (as given; empty
        for the P(k) likelihood)), one row per (model, dataset, method, param).

    Raises
    ------
    ConfigError
        No datasets, a bad ``on_error`` or output path, or (``on_error="raise"``) any error of
        :func:`engine.evaluation.evaluate.evaluate`, or a checkpoint of a task evaluation does not
        know.
    """
    import pandas as pd

    if on_error not in ("skip", "raise"):
        raise ConfigError(f"on_error={on_error!r} is not allowed: use 'skip' or 'raise'")
    if not datasets:
        raise ConfigError("--datasets needs at least one dataset spec")
    out, pred_dir = _check_outputs(out, predictions_dir)
    pairs = _Pairs(
        {"count": count, "seed": seed, "device": device, "datasets_file": datasets_file},
        out,
        pred_dir,
        on_error,
    )
    with_cal = pk_likelihood if pk_calibrated is None else bool(pk_calibrated)
    rows: list[dict] = []
    for spec in datasets:
        rows += _dataset_rows(pairs, spec, checkpoints, pk_likelihood, with_cal, datasets_file)
    table = pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))
    if out is not None:
        from engine.runs import atomic_write

        with atomic_write(out) as f:
            table.to_csv(f, index=False, float_format="%.6g")
    return table


def _check_outputs(out, predictions_dir) -> tuple[Path | None, Path | None]:
    """Checked (table path, predictions directory (created)) of :func:`compare`."""
    if out is not None:
        out = Path(out)
        if out.suffix != ".csv":
            raise ConfigError(f"--out {str(out)!r} must end in .csv")
        if not out.parent.is_dir():
            raise ConfigError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist")
    pred_dir = None if predictions_dir is None else Path(predictions_dir)
    if pred_dir is not None:
        if pred_dir.exists() and not pred_dir.is_dir():
            raise ConfigError(f"--predictions-dir {str(pred_dir)!r} is not a directory")
        try:
            pred_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--predictions-dir {str(pred_dir)!r}: {exc}") from None
    return out, pred_dir


class _Pairs:
    """Evaluates (dataset, checkpoint) pairs for :func:`compare` and writes their predictions."""

    def __init__(self, options: dict, out: Path | None, pred_dir: Path | None, on_error: str):
        self.options, self.out, self.pred_dir, self.on_error = options, out, pred_dir, on_error

    def failure(self, exc: Exception) -> str:
        """The one-line message of a failed pair for the ``error`` column (re-raises ``exc``
        with ``on_error="raise"``).

        Any ``Exception`` of a pair is recorded: damaged checkpoints and data files raise many
        kinds; messages of other errors than ConfigError start with the exception's type.
        (``KeyboardInterrupt`` is not an ``Exception``: it still stops the comparison.)
        """
        if self.on_error == "raise":
            raise exc
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        if isinstance(exc, ConfigError):
            return first or "error"
        return f"{type(exc).__name__}: {first}" if first else type(exc).__name__

    def run(self, spec, ckpt, model, with_pk, with_cal=False):
        """(report, relative predictions path or None) of one pair.

        Raises ConfigError for a map emulator's or a classifier's checkpoint (compare scores
        parameter inference; their reports come from ``evaluate``)."""
        if ckpt is not None:
            from engine.evaluation.predict import checkpoint_task
            from engine.evaluation.sampling import GENERATOR_TASKS

            task = checkpoint_task(ckpt)
            if task in GENERATOR_TASKS:
                raise ConfigError(
                    f"checkpoint {str(ckpt)!r} is a map emulator (task {task!r}); compare scores "
                    "parameter inference: score it with python -m engine evaluate --checkpoint "
                    f"{ckpt} --dataset GRID"
                )
            if task == "classification":
                raise ConfigError(
                    f"checkpoint {str(ckpt)!r} is a classifier; compare scores parameter "
                    "inference: score it with python -m engine evaluate --checkpoint "
                    f"{ckpt} --dataset SPEC"
                )
        rep, results, truth, maps = run_evaluation(
            spec,
            ckpt,
            verb="compare",
            pk_likelihood=with_pk,
            pk_calibrated=with_cal,
            **self.options,
        )
        rep["checkpoint_arg"] = None if ckpt is None else str(ckpt)
        rel = None
        if self.pred_dir is not None and results:
            path = self.pred_dir / predictions_name(model, spec)
            write_pair_predictions(path, results, truth, maps)
            rel = os.path.relpath(path, self.out.parent) if self.out is not None else str(path)
        return rep, rel


def _pk_rows(model, spec, rep, rel, maps_of=None) -> list[dict]:
    """The P(k)-likelihood rows of a report, or error rows with its notes."""
    if "pk_likelihood" in rep["methods"]:
        return _rows(model, spec, "pk_likelihood", rep, rel, maps_of)
    note = "; ".join(n for n in rep.get("notes") or [] if "calibrated P(k)" not in n)
    return _error_rows(model, spec, "pk_likelihood", note or "not run")


def _cal_rows(model, spec, rep, rel, maps_of=None) -> list[dict]:
    """The calibrated P(k)-likelihood rows of a report, or error rows with the reason."""
    if "pk_calibrated" in rep["methods"]:
        return _rows(model, spec, "pk_calibrated", rep, rel, maps_of)
    notes = [n for n in rep.get("notes") or [] if n.startswith("calibrated P(k) skipped")]
    return _error_rows(model, spec, "pk_calibrated", "; ".join(notes) or "not run", maps_of)


def _dataset_rows(
    pairs: _Pairs, spec, checkpoints, pk_likelihood, pk_calibrated, datasets_file
) -> list[dict]:
    """The rows of one dataset spec: every checkpoint, and the P(k) likelihoods (see
    :func:`compare` for which maps they run on)."""
    from engine.data import parse_spec, resolve_name

    rows: list[dict] = []
    pk_done = not pk_likelihood
    evaluated = 0  # checkpoints evaluated on this dataset
    # generated kinds are made with each checkpoint's own map settings: every network sees
    # other maps, so the P(k) likelihood runs on each network's maps (model label names them)
    try:
        synthetic = parse_spec(resolve_name(spec, datasets_file))[0] == "synthetic"
    except ConfigError:
        synthetic = False
    for ckpt in checkpoints:
        name = checkpoint_name(ckpt)
        with_pk = pk_likelihood if synthetic else not pk_done
        try:
            rep, rel = pairs.run(spec, ckpt, name, with_pk, pk_calibrated)
        except Exception as exc:  # any failure of one pair must not lose the table
            rows += _error_rows(name, spec, "network", pairs.failure(exc), str(ckpt))
            continue
        evaluated += 1
        rows += _rows(name, spec, "network", rep, rel)
        if pk_calibrated:
            rows += _cal_rows(f"{PK_CAL_MODEL} [{name}]", spec, rep, rel, str(ckpt))
        if synthetic and pk_likelihood:
            pk_done = True
            rows += _pk_rows(f"{PK_MODEL} [{name} maps]", spec, rep, rel, str(ckpt))
        elif not pk_done and rep.get("transfer") is None:
            pk_done = True
            rows += _pk_rows(PK_MODEL, spec, rep, rel)
    with_cal = pk_calibrated and evaluated == 0
    if not pk_done or with_cal:
        try:
            rep, rel = pairs.run(spec, None, PK_MODEL, not pk_done, with_cal)
        except Exception as exc:  # as above
            msg = pairs.failure(exc)
            if not pk_done:
                rows += _error_rows(PK_MODEL, spec, "pk_likelihood", msg)
            if with_cal:
                rows += _error_rows(PK_CAL_MODEL, spec, "pk_calibrated", msg)
            return rows
        if "pk_likelihood" in rep["methods"]:
            rows += _rows(PK_MODEL, spec, "pk_likelihood", rep, rel)
        elif not pk_done:
            notes = [n for n in rep.get("notes") or [] if n.startswith("P(k) likelihood")]
            note = "; ".join(notes or rep.get("notes") or []) or "not run"
            rows += _error_rows(PK_MODEL, spec, "pk_likelihood", note)
        if with_cal:
            rows += _cal_rows(PK_CAL_MODEL, spec, rep, rel)
    return rows


def format_table(report: Mapping[str, Any]) -> str:
    """A small text table of a report: method × parameter with RMSE, bias, R², coverage 68 %,
    efficiency (``-`` where null)."""

    def fmt(v, spec=".4g"):
        return "-" if v is None else format(v, spec)

    lines = [
        f"{'method':<16} {'param':<8} {'RMSE':>9} {'bias':>10} {'R2':>7} {'cov68':>6} {'eff':>6}"
    ]
    for m, entry in report["methods"].items():
        for name in report["params"]:
            s = entry["metrics"][name]
            lines.append(
                f"{m:<16} {name:<8} {fmt(s['rmse']):>9} {fmt(s['bias'], '+.3g'):>10} "
                f"{fmt(s['r2'], '.3f'):>7} {fmt(s['coverage_68'], '.2f'):>6} "
                f"{fmt(s['efficiency'], '.2f'):>6}"
            )
    return "\n".join(lines)
