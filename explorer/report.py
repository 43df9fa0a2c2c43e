"""Evaluation of a training run in the explorer: ``report.json`` and ``predictions.csv`` drawn live.

At the end of training the engine evaluates the run's best checkpoint on ``n_maps`` fresh maps
and writes, next to the run's other files::

    report.json       {"version", "dataset", "checkpoint", "n_maps", "kind", "map_settings",
                       "prior": {param: [lo, hi]}, "params": [...],
                       "methods": {method: {"label", "metrics": {param: {"rmse", "mae", "r2",
                                   "bias", "coverage_68", "coverage_95", "efficiency"}},
                                   "bins": {param: {"edges", "count", "rmse", "bias", "std"}}}},
                       "fisher": {"crb_sigma": {param: σ}, "bins": {param: [σ per bin]}} | null,
                       "figures": {...}, "predictions": "predictions.csv", "created", "seconds"}
    predictions.csv   sample, <param>_true, then per method and parameter
                      <method>_<param>_mean and <method>_<param>_std

Methods are ``network`` (the trained model) and ``pk_likelihood`` (the classical power-spectrum
likelihood); ``fisher`` holds the Cramér–Rao bound. Every key may be missing: a view shows what
is there. A ``predictions.csv`` with unprefixed ``<param>_mean`` columns (the ``predict`` verb's
format, :func:`engine.evaluation.predict.write_predictions`) is read as the network's.

:class:`EvaluationPanel` holds the evaluation of the open run (state in params) and draws it as a
comparison table and interactive HoloViews plots (not the report's PNG figures): truth against
prediction per parameter with both methods and the diagonal, and the RMSE per bin of the true
value with the Cramér–Rao σ. :meth:`EvaluationPanel.update` is cheap when nothing changed (two
``stat`` calls), so the training page calls it on every poll.

A report of another task (``"task"`` other than ``"regression"``, e.g. ``{"task": "gan",
"metrics": {"fid": 12.3, ...}}``) has no dedicated view: it is shown as a table of its scalar
metrics (:func:`scalar_metrics`), so a new task's evaluation appears with no explorer change.
A report without ``"task"`` is a regression report (the engine's reports before tasks).

Units: Ω_m and σ8 are dimensionless; RMSE, bias and σ_CRB are in the parameter's units;
coverages are fractions of maps whose truth lies inside the 68 % / 95 % interval.
"""

from __future__ import annotations

import math
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from engine.runs import ACTIVE_STATES, RunDir, read_json

hv.extension("bokeh", logo=False)  # registers hv.opts for the Bokeh backend (idempotent)

#: File names inside a run directory.
REPORT_FILE = "report.json"
PREDICTIONS_FILE = "predictions.csv"
#: Parameters assumed when a report does not list its own.
DEFAULT_PARAMS = ("omega_m", "sigma8")
#: Methods in display order, with their default labels and colours (others follow, in grey).
METHODS = {
    "network": ("network", "#1f77b4"),
    "pk_likelihood": ("P(k) likelihood", "#ff7f0e"),
}
OTHER_COLOR = "#7f7f7f"
CRB_LABEL = "Cramér–Rao bound"
#: Label of σ_CRB when the report says it is no bound (``fisher["bound"]`` false: non-Gaussian
#: maps, where it is the information of the power spectrum alone).
FISHER_PK_LABEL = "Fisher σ of P(k) (not a bound)"
CRB_COLOR = "#000000"
#: Display names of the parameters.
PARAM_LABELS = {"omega_m": "Ωₘ", "sigma8": "σ₈"}
#: Columns of the comparison table: (metric key in report.json, column title).
METRIC_COLUMNS = (
    ("rmse", "RMSE"),
    ("bias", "bias"),
    ("r2", "R²"),
    ("coverage_68", "coverage 68 %"),
    ("coverage_95", "coverage 95 %"),
    ("efficiency", "efficiency σ_CRB/RMSE"),
)

#: Task of a report without a ``task`` key (the regression evaluation's reports).
REGRESSION = "regression"
#: Keys of a report that describe the evaluation rather than score it: left out of the generic
#: table of a report without a ``metrics`` object.
META_KEYS = frozenset(
    {"version", "task", "dataset", "checkpoint", "kind", "created", "seconds", "figures",
     "predictions", "notes", "map_settings", "prior", "params"}
)  # fmt: skip

#: What the evaluation shows, for the page.
EXPLANATION = """\
**What you are looking at.** The trained network's best checkpoint and the classical
**P(k) likelihood** (fit of the measured power spectrum) estimate Ωₘ and σ₈ on the same fresh
test maps. For Gaussian fields the power spectrum holds all the information, so the P(k)
likelihood is the optimal baseline there; a network can only beat it on non-Gaussian maps
(lognormal, 2LPT, κ). The **Cramér–Rao bound** σ_CRB (from the Fisher matrix) is the smallest
error any unbiased estimator can reach; for non-Gaussian maps it is the information of the power
spectrum alone, which a network may beat. **Efficiency** = σ_CRB / RMSE: 1 is optimal.
Coverage is the fraction of maps whose truth lies in the predicted 68 % / 95 % interval
(calibrated: 0.68 / 0.95).
"""


def param_label(name: str) -> str:
    """Display name of parameter ``name`` (e.g. ``"omega_m" → "Ωₘ"``)."""
    return PARAM_LABELS.get(name, name)


def report_params(report: dict | None) -> list[str]:
    """Parameter names of a report (``report["params"]``, else :data:`DEFAULT_PARAMS`)."""
    names = (report or {}).get("params")
    return [str(n) for n in names] if isinstance(names, list) and names else list(DEFAULT_PARAMS)


def report_methods(report: dict | None) -> list[str]:
    """Method keys of a report in display order (known ones of :data:`METHODS` first)."""
    methods = (report or {}).get("methods")
    if not isinstance(methods, dict):
        return []
    return [m for m in METHODS if m in methods] + [m for m in methods if m not in METHODS]


def method_label(report: dict | None, method: str) -> str:
    """Label of ``method``: the report's ``label``, else the default of :data:`METHODS`."""
    entry = ((report or {}).get("methods") or {}).get(method) or {}
    return str(entry.get("label") or METHODS.get(method, (method,))[0])


def method_color(method: str) -> str:
    """Colour of ``method`` in the plots."""
    return METHODS.get(method, (method, OTHER_COLOR))[1]


def crb_label(report: dict | None) -> str:
    """Label of the report's σ_CRB: :data:`CRB_LABEL`, or :data:`FISHER_PK_LABEL` when the
    report marks it as no bound."""
    fisher = (report or {}).get("fisher") or {}
    return FISHER_PK_LABEL if fisher.get("bound") is False else CRB_LABEL


def _number(value) -> float:
    """``value`` as a float; NaN for None, strings and other non-numbers."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def report_task(report: dict | None) -> str:
    """Task of a report: its ``task`` key, else :data:`REGRESSION` (reports written before tasks
    had one are regression reports)."""
    task = (report or {}).get("task")
    return str(task) if task else REGRESSION


def is_regression(report: dict | None) -> bool:
    """True if ``report`` is drawn by the regression view (table, scatter and bin plots)."""
    return report_task(report) == REGRESSION


def _scalar(value) -> float | None:
    """``value`` as a float if it is a number (None: NaN); None for anything else."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return None
    return float(value)


def scalar_metrics(report: dict | None) -> pd.DataFrame:
    """Generic table of a report of any task: one row per scalar metric.

    The scalars of ``report["metrics"]`` (when it is an object), else of the whole report less
    :data:`META_KEYS`; nested objects are flattened to dotted names (``{"val": {"fid": 3}}`` →
    ``val.fid``), lists and strings are left out, ``null`` is NaN.

    Returns
    -------
    pandas.DataFrame
        Columns ``metric`` (str) and ``value`` (float), in the report's order.
    """
    report = report or {}
    metrics = report.get("metrics")
    if not isinstance(metrics, dict):
        metrics = {k: v for k, v in report.items() if k not in META_KEYS}
    rows: list[tuple[str, float]] = []

    def walk(prefix: str, obj) -> None:
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                walk(name, value)
            elif (number := _scalar(value)) is not None:
                rows.append((name, number))

    walk("", metrics)
    return pd.DataFrame(rows, columns=["metric", "value"])


def format_scalars(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`scalar_metrics` with values as strings of 4 significant digits (``—``: missing)."""
    out = table.copy()
    values = out["value"].astype(float)
    out["value"] = [("—" if not np.isfinite(v) else f"{v:.4g}") for v in values]
    return out


def read_predictions(path: str | Path) -> pd.DataFrame | None:
    """``predictions.csv`` as a DataFrame, or None when missing, empty or unreadable."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError):
        return None
    return frame if len(frame.columns) else None


def prediction_columns(
    frame: pd.DataFrame | None, params: list[str], methods: list[str]
) -> dict[str, dict[str, tuple[str, str | None]]]:
    """The ``(mean, std)`` columns of each method and parameter present in ``frame``.

    Method-prefixed columns ``<method>_<param>_mean`` (and ``_std``) are looked up for every
    method of ``methods`` and every other prefix found in the frame; plain ``<param>_mean``
    columns count as ``network``'s when no ``network_`` columns exist. A parameter also needs
    its ``<param>_true`` column. ``std`` is None when its column is missing.

    Returns
    -------
    dict
        ``{method: {param: (mean_column, std_column_or_None)}}``, methods without any column
        left out.
    """
    if frame is None:
        return {}
    cols = set(frame.columns)
    found_methods = list(methods)
    for c in frame.columns:
        for p in params:
            suffix = f"_{p}_mean"
            if c.endswith(suffix) and c[: -len(suffix)] and c[: -len(suffix)] not in found_methods:
                found_methods.append(c[: -len(suffix)])
    out: dict[str, dict[str, tuple[str, str | None]]] = {}
    for method in found_methods:
        for p in params:
            if f"{p}_true" not in cols:
                continue
            mean = f"{method}_{p}_mean"
            if mean not in cols and method == "network" and f"{p}_mean" in cols:
                if not any(c.startswith("network_") for c in cols):
                    mean = f"{p}_mean"
            if mean in cols:
                std = mean[: -len("mean")] + "std"
                out.setdefault(method, {})[p] = (mean, std if std in cols else None)
    return out


def metrics_table(report: dict | None) -> pd.DataFrame:
    """Comparison table: one row per method and parameter, plus a Cramér–Rao row per parameter.

    Columns: ``method``, ``parameter`` and the titles of :data:`METRIC_COLUMNS` (floats; NaN
    where the report has no value). The Cramér–Rao rows hold σ_CRB as their RMSE and
    efficiency 1 (the bound is efficient by definition).
    """
    params = report_params(report)
    methods = (report or {}).get("methods") or {}
    rows = []
    for p in params:
        for m in report_methods(report):
            metrics = ((methods.get(m) or {}).get("metrics") or {}).get(p) or {}
            row = {"method": method_label(report, m), "parameter": param_label(p)}
            row.update({title: _number(metrics.get(key)) for key, title in METRIC_COLUMNS})
            rows.append(row)
        crb = (((report or {}).get("fisher") or {}).get("crb_sigma") or {}).get(p)
        if crb is not None:
            row = {"method": crb_label(report), "parameter": param_label(p)}
            row.update({title: math.nan for _, title in METRIC_COLUMNS})
            row["RMSE"], row[METRIC_COLUMNS[-1][1]] = _number(crb), 1.0
            rows.append(row)
    columns = ["method", "parameter"] + [title for _, title in METRIC_COLUMNS]
    return pd.DataFrame(rows, columns=columns)


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with numbers as strings of 3 significant digits and ``—`` for missing ones."""
    out = table.copy()
    for col in out.columns[2:]:
        out[col] = [("—" if not np.isfinite(v) else f"{v:.3g}") for v in out[col].astype(float)]
    return out


def bin_frame(report: dict | None, name: str) -> pd.DataFrame:
    """RMSE per bin of the true value of parameter ``name``, long format for plotting.

    Columns ``centre`` (bin centre, parameter units), ``rmse``, ``count`` and ``series``
    (method label, or :func:`crb_label` for σ_CRB of ``report["fisher"]["bins"]``, count NaN).
    Methods without bins, and bins lists of the wrong length, are left out.
    """
    rows: list[tuple] = []
    methods = (report or {}).get("methods") or {}
    centres = None
    for m in report_methods(report):
        bins = ((methods.get(m) or {}).get("bins") or {}).get(name) or {}
        edges = np.asarray(bins.get("edges") or [], dtype=float)
        rmse = [_number(v) for v in bins.get("rmse") or []]
        if len(edges) < 2 or len(rmse) != len(edges) - 1:
            continue
        centres = 0.5 * (edges[1:] + edges[:-1])
        count = bins.get("count") or [math.nan] * len(rmse)
        label = method_label(report, m)
        rows += [(c, r, _number(n), label) for c, r, n in zip(centres, rmse, count, strict=False)]
    crb = (((report or {}).get("fisher") or {}).get("bins") or {}).get(name) or []
    if centres is not None and len(crb) == len(centres):
        crb_name = crb_label(report)
        rows += [(c, _number(s), math.nan, crb_name) for c, s in zip(centres, crb, strict=True)]
    return pd.DataFrame(rows, columns=["centre", "rmse", "count", "series"])


def scatter_plot(report: dict | None, frame: pd.DataFrame | None, name: str) -> hv.Overlay:
    """Truth against predicted mean of parameter ``name``, one colour per method, and the
    diagonal over the prior range (or the data's range)."""
    label = param_label(name)
    true_dim = hv.Dimension(f"{name}_true", label=f"true {label}")
    pred_dim = hv.Dimension("predicted", label=f"predicted {label}")
    columns = prediction_columns(frame, [name], report_methods(report))
    layers = []
    values = []
    for method, cols in columns.items():
        mean, std = cols[name]
        data = pd.DataFrame(
            {
                true_dim.name: frame[f"{name}_true"].astype(float),
                "predicted": frame[mean].astype(float),
                "std": frame[std].astype(float) if std else np.nan,
            }
        )
        values += [data[true_dim.name], data["predicted"]]
        layers.append(
            hv.Scatter(data, true_dim, [pred_dim, "std"], label=method_label(report, method)).opts(
                color=method_color(method), alpha=0.6, size=5, tools=["hover"]
            )
        )
    prior = ((report or {}).get("prior") or {}).get(name)
    if isinstance(prior, list) and len(prior) == 2:
        lo, hi = _number(prior[0]), _number(prior[1])
    elif values:
        joined = pd.concat(values)
        lo, hi = float(joined.min()), float(joined.max())
    else:
        lo, hi = 0.0, 1.0
    diagonal = hv.Curve([(lo, lo), (hi, hi)], true_dim, pred_dim, label="truth").opts(
        color="#444444", line_dash="dashed", line_width=1
    )
    return hv.Overlay([diagonal, *layers]).opts(
        title=f"{label}: prediction against truth",
        frame_width=330,
        frame_height=260,
        legend_position="top_left",
        show_grid=True,
    )


def bins_plot(report: dict | None, name: str) -> hv.Overlay:
    """RMSE of parameter ``name`` per bin of its true value for each method, and σ_CRB."""
    label = param_label(name)
    data = bin_frame(report, name)
    x = hv.Dimension("centre", label=f"true {label} (bin centre)")
    y = hv.Dimension("rmse", label=f"RMSE of {label}")
    colors = {method_label(report, m): method_color(m) for m in report_methods(report)}
    layers = []
    bound = crb_label(report)
    for series, rows in data.groupby("series", sort=False):
        dash = "dashed" if series == bound else "solid"
        color = CRB_COLOR if series == bound else colors.get(series, OTHER_COLOR)
        curve = hv.Curve(rows, x, [y, "count"], label=str(series)).opts(
            color=color, line_dash=dash, line_width=2, tools=["hover"]
        )
        layers.append(curve)
        if series != bound:
            layers.append(hv.Scatter(curve).opts(color=color, size=6, tools=["hover"]))
    if not layers:  # an empty overlay needs one element to carry its axes
        layers.append(hv.Curve([], x, y))
    return hv.Overlay(layers).opts(
        title=f"{label}: RMSE per bin of the truth",
        frame_width=330,
        frame_height=260,
        legend_position="bottom",  # the curves may run anywhere in the frame
        show_grid=True,
    )


def evaluation_state(run: RunDir | None, status: dict | None, report: dict | None) -> str:
    """``"ready"`` (a report), ``"pending"`` (the run may still write one) or ``"none"``.

    The engine writes ``report.json`` after the last training step while the run is still
    ``running`` (``engine.train.process.run_training``), so a run is pending while it is queued or
    running, and an ended run without a report has none.
    """
    if report is not None:
        return "ready"
    if run is not None and (status or {}).get("state") in ACTIVE_STATES:
        return "pending"
    return "none"


def _ready_markdown(report: dict) -> str:
    """The line of an evaluation that is there: maps, kind, dataset, time and notes."""
    task = report_task(report)
    n_maps = report.get("n_maps")
    if task == REGRESSION:
        parts = [f"**Evaluation** on {n_maps if n_maps is not None else '?'} test maps"]
    else:
        head = f"**Evaluation** of task `{task}`"
        parts = [head + (f" on {n_maps} test maps" if n_maps is not None else "")]
    if report.get("kind"):
        parts.append(f"kind `{report['kind']}`")
    if report.get("dataset"):
        parts.append(f"dataset `{report['dataset']}`")
    if report.get("seconds") is not None:
        parts.append(f"{_number(report['seconds']):.1f} s")
    notes = [str(n) for n in report.get("notes") or []]
    return " · ".join(parts) + "".join(f"\n\n*Note:* {n}" for n in notes)


def state_markdown(
    state: str, status: dict | None, report: dict | None, settings: dict | None = None
) -> str:
    """One Markdown line about the evaluation: what it was computed on, or why there is none.

    ``status`` is the run's status.json, ``settings`` its config.json settings (for
    ``eval_maps``, and ``task``: the pending line of a regression run names its baselines).
    """
    if state == "ready":
        return _ready_markdown(report or {})
    status, settings = status or {}, settings or {}
    if state == "pending":
        regression = str(settings.get("task") or REGRESSION) == REGRESSION
        step, total = status.get("step"), status.get("total_steps")
        if step is not None and total and step >= total:
            against = " against the P(k) likelihood" if regression else ""
            return f"**Evaluating** the best checkpoint{against} …"
        against = " against the P(k) likelihood and the Cramér–Rao bound" if regression else ""
        return (
            f"**Evaluation pending**: the engine evaluates the best checkpoint{against} when "
            "training ends."
        )
    error = str(status.get("error") or "")
    if status.get("state") == "died":
        reason = "the run died: its engine process is gone (killed, out of memory); resume it"
    elif status.get("state") in ("failed", "stopped"):
        reason = f"the run {status['state']}"
    elif error.startswith("evaluation"):
        reason = error
    elif settings.get("eval_maps") == 0:
        reason = "eval_maps = 0"
    else:
        reason = f"no {REPORT_FILE}"
    return f"**No evaluation** for this run ({reason})."


def _signature(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class EvaluationPanel(pn.viewable.Viewer):
    """The evaluation of one run: state in params, drawn as a table and HoloViews plots.

    :meth:`update` (re)reads ``report.json`` and ``predictions.csv`` of a run when the run or
    the files changed; the view follows ``report``, ``predictions`` and ``state``.
    """

    run_path = param.String(default=None, allow_None=True, doc="Directory of the run shown.")
    report = param.Dict(default=None, allow_None=True, doc="Contents of report.json.")
    predictions = param.DataFrame(default=None, allow_None=True, doc="predictions.csv.")
    state = param.Selector(
        default="none", objects=["none", "pending", "ready"], doc="See evaluation_state."
    )
    summary = param.String("", doc="Markdown line about the evaluation (state_markdown).")

    def __init__(self, **params):
        super().__init__(**params)
        self._seen: tuple | None = None

    def update(self, run: RunDir | None, status: dict | None = None) -> bool:
        """Show the evaluation of ``run`` (None: nothing); read files only when they changed.

        Returns True if anything was re-read.
        """
        path = None if run is None else str(run.path)
        seen = (path, (status or {}).get("state"))
        if run is not None:
            seen += (_signature(run.path / REPORT_FILE), _signature(run.path / PREDICTIONS_FILE))
        if seen == self._seen:
            return False
        self._seen = seen
        report = read_json(run.path / REPORT_FILE) if run is not None else None
        predictions = None
        if report is not None:
            pred = report.get("predictions") or PREDICTIONS_FILE
            predictions = read_predictions(run.path / str(pred))
        state = evaluation_state(run, status, report)
        settings = ((run.config() or {}).get("settings") or {}) if run is not None else {}
        with param.parameterized.batch_call_watchers(self):
            self.param.update(
                run_path=path,
                report=report,
                predictions=predictions,
                state=state,
                summary=state_markdown(state, status, report, settings),
            )
        return True

    def table(self) -> pd.DataFrame:
        """The table of the current report: :func:`metrics_table` for a regression report,
        else :func:`scalar_metrics`."""
        return (
            metrics_table(self.report)
            if is_regression(self.report)
            else scalar_metrics(self.report)
        )

    @param.depends("report", "predictions", "state")
    def _content(self):
        if self.state != "ready":
            return pn.Column()
        if not is_regression(self.report):
            return self._generic_content()
        params = report_params(self.report)
        scatters = [scatter_plot(self.report, self.predictions, p) for p in params]
        bins = [bins_plot(self.report, p) for p in params]
        table = pn.pane.DataFrame(
            format_table(self.table()), index=False, sizing_mode="stretch_width", max_height=400
        )
        plots = [table, pn.pane.Markdown(EXPLANATION, sizing_mode="stretch_width")]
        if self.predictions is not None:
            plots.append(self._layout(scatters))
        plots.append(self._layout(bins))
        return pn.Column(*plots, sizing_mode="stretch_width")

    def _generic_content(self) -> pn.Column:
        """A report of a task without a dedicated view: the table of its scalar metrics."""
        table = scalar_metrics(self.report)
        task = report_task(self.report)
        if table.empty:
            return pn.pane.Markdown(f"The `{task}` report holds no scalar metrics.")
        return pn.Column(
            pn.pane.Markdown(f"Scalar metrics of the `{task}` evaluation:", margin=(0, 5)),
            pn.pane.DataFrame(format_scalars(table), index=False, max_height=400),
            sizing_mode="stretch_width",
        )

    @staticmethod
    def _layout(plots: list[hv.Overlay]) -> pn.Row:
        """Plots side by side, each with its own axes (parameters have different ranges)."""
        return pn.Row(*(pn.pane.HoloViews(p, linked_axes=False) for p in plots))

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown(self.param.summary, margin=(0, 5), sizing_mode="stretch_width"),
            self._content,
            sizing_mode="stretch_width",
        )
