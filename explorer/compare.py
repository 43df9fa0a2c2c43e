"""Compare page: trained models and the P(k) likelihood on every dataset, and why models fail.

The page reads a table of ``python -m engine compare`` (:func:`engine.evaluation.compare.compare`:
one row per model, dataset, method and parameter, with RMSE, bias, R², coverages, efficiency,
``transfer``, ``error``, ``predictions`` and ``checkpoint`` columns) and the per-pair
predictions it wrote with ``--predictions-dir``. A fresh clone shows the precomputed
comparison of the shipped models on the sample datasets (``assets/compare/table.csv``, made by
``make compare-samples``) at once; tables of earlier recomputations (``runs/compare-*/``) can
be picked from a list.

Above the long table, a models × datasets matrix (:func:`explorer.compare_views.matrix_layers`)
colours each pair by the RMSE of a chosen parameter or by its efficiency σ_CRB/RMSE, with the
P(k) likelihood as a last row; clicking a cell selects that pair. The page opens on the best
in-domain pair (:func:`explorer.compare_views.default_row`: a network on maps of the kind it
was trained on, highest mean efficiency), not on whatever row comes first.

Selecting a row (in the matrix or the table) shows, for that (model, dataset) pair:

* truth against prediction per parameter (:func:`explorer.report.scatter_plot`);
* predictions per distinct cosmology as box plots (maps grouped by their true (Ω_m, σ8): CAMELS
  CV/1P-style sets hold many maps per cosmology), at most
  :data:`explorer.compare_views.MAX_GROUPS` groups;
* a few maps of the dataset (read with :func:`engine.data.open_spec`,
  :data:`explorer.compare_views.N_EXAMPLES` maps) with their true and predicted values (mean
  over the tiles of a map after domain transfer);
* the domain gap (:func:`engine.data.transfer.domain_gap`): P(k) and pixel PDF of the network's
  training kind against the dataset's maps on the network's pixel grid, in the same units.

**Recompute** starts ``python -m engine compare`` for the checkpoints and datasets of the shown
table as a separate process (``subprocess.Popen(start_new_session=True)``, like the training
page), writing ``runs/compare-<time>/table.csv`` and its predictions; a periodic callback per
session opens the new table when the process has ended. Nothing heavy runs in the server: the
views read small CSV files, a handful of maps and a few dozen generated ones.

Dataset specs and checkpoint paths in a table are relative to the working directory of the
server (the repository root for ``panel serve explorer``); ``predictions`` paths are relative
to the table's folder. Units: Ω_m and σ8 dimensionless; k in h/Mpc (slabs) or ℓ (κ), P(k) in
(Mpc/h)² or sr; map values δ or κ (dimensionless).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from engine.params import ConfigError
from engine.runs import REPO_ROOT
from explorer.compare_views import (
    EXPLANATION,
    MATRIX_METRICS,
    PARAMS,
    box_plot,
    checkpoint_kind,
    cosmology_groups,
    dataset_label,
    default_row,
    display_table,
    example_frame,
    examples_view,
    gap_plots,
    gap_view,
    matrix_frame,
    matrix_layers,
    pair_predictions,
    pair_report,
    pair_view,
)
from explorer.polling import SessionPolling
from explorer.report import METRIC_COLUMNS, param_label, scatter_plot
from explorer.training import default_runs_root
from explorer.widgets import label, look

hv.extension("bokeh", logo=False)  # registers hv.opts for the Bokeh backend (idempotent)

#: The precomputed comparison shipped with the repository.
SHIPPED_TABLE = REPO_ROOT / "assets" / "compare" / "table.csv"
#: Environment variable overriding the shipped table (tests, other installations).
TABLE_ENV = "EXPLORER_COMPARE_TABLE"
#: Prefix of the folders of recomputed comparisons in the runs folder.
RUN_PREFIX = "compare-"
#: Columns a comparison table must have (engine.evaluation.schema.COMPARE_COLUMNS; older
#: tables may lack the others).
REQUIRED = ("model", "dataset", "method", "param", "rmse")
#: Generated and target maps of the domain-gap view.
GAP_MAPS = 16
#: Default number of maps per dataset of Recompute.
DEFAULT_COUNT = 64


def default_table() -> Path:
    """The shipped table: ``$EXPLORER_COMPARE_TABLE`` if set, else ``assets/compare/table.csv``."""
    return Path(os.environ.get(TABLE_ENV) or SHIPPED_TABLE)


def list_tables(shipped: str | Path | None, runs_root: str | Path | None) -> dict[str, str]:
    """Tables to choose from: ``{label: path}``, the shipped one first, then the other shipped
    tables in its subfolders (``assets/compare/transfer/table.csv``: the 2LPT/PM cross
    comparison), then the recomputed ones (``<runs_root>/compare-*/table.csv``, newest first).
    Missing files are left out."""
    out: dict[str, str] = {}
    if shipped and Path(shipped).is_file():
        out[f"shipped: {Path(shipped).parent.name}/{Path(shipped).name}"] = str(shipped)
        for extra in sorted(Path(shipped).parent.glob(f"*/{Path(shipped).name}")):
            out[f"shipped: {extra.parent.name}/{extra.name}"] = str(extra)
    if runs_root and Path(runs_root).is_dir():
        found = sorted(Path(runs_root).glob(f"{RUN_PREFIX}*/table.csv"), reverse=True)
        out.update({f"{p.parent.name}": str(p) for p in found})
    return out


def read_table(path: str | Path) -> pd.DataFrame:
    """A comparison CSV of ``python -m engine compare`` with the optional columns filled in.

    Returns
    -------
    pandas.DataFrame
        Columns of :data:`engine.evaluation.schema.COMPARE_COLUMNS` (missing optional ones
        empty); text columns hold ``""`` for empty cells, metrics NaN.

    Raises
    ------
    ConfigError
        Missing or unreadable file, or a file without the columns of :data:`REQUIRED`.
    """
    from engine.evaluation.schema import COMPARE_COLUMNS

    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"comparison table {str(path)!r} is not readable: {exc}") from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"comparison table {str(path)!r} lacks columns {', '.join(missing)} "
            "(write it with python -m engine compare)"
        )
    for col in COMPARE_COLUMNS:
        if col not in frame.columns:
            frame[col] = np.nan
    for col in ("model", "dataset", "method", "param", "transfer", "error", "predictions"):
        frame[col] = frame[col].astype(object).fillna("").astype(str)
    frame["checkpoint"] = frame["checkpoint"].astype(object).fillna("").astype(str)
    return frame.reset_index(drop=True)


class ComparePage(SessionPolling, pn.viewable.Viewer):
    """Compare page state: the table shown, the selected pair and what is derived from it.

    :meth:`select_row` (the table's selection calls it) reads the pair's predictions, example
    maps and domain gap; :meth:`recompute` starts an engine ``compare`` process and
    :meth:`poll` (every ``period`` ms in a served session, see :meth:`start`) opens its table
    when it is done.
    """

    runs_root = param.String(doc="Runs folder: recomputed tables go to <runs_root>/compare-*/.")
    shipped = param.String(doc="The shipped table (default_table()).")
    table_path = param.Selector(default=None, objects=[], allow_None=True, doc="Table shown.")
    table = param.DataFrame(default=None, allow_None=True, doc="The table (read_table).")
    row = param.Integer(default=None, allow_None=True, doc="Selected row of the table.")
    predictions = param.DataFrame(default=None, allow_None=True, doc="The pair's predictions.")
    examples = param.List(default=[], doc="[(map 2D array, extent, title)] of example maps.")
    gap = param.Dict(default=None, allow_None=True, doc="domain_gap() of the pair.")
    gap_message = param.String("", doc="Why there is no domain gap view.")
    message = param.String("", doc="Feedback of the last action.")
    count = param.Integer(DEFAULT_COUNT, bounds=(1, 4096), doc="Maps per dataset (Recompute).")
    running = param.Boolean(False, doc="A Recompute process of this page is running.")
    period = param.Integer(1000, bounds=(100, None), doc="Polling period, ms.")
    visible = param.Boolean(
        True, doc="The page is shown: example maps and domain gap are read only while it is."
    )
    loading = param.Boolean(False, doc="Example maps and domain gap are being read.")
    kinds = param.Dict(default={}, doc="{model: training kind} of the table's networks.")
    matrix_metric = param.Selector(
        default="rmse", objects=MATRIX_METRICS, doc="Colour of the matrix: RMSE or efficiency."
    )
    matrix_param = param.Selector(
        default=PARAMS[0],
        objects={param_label(p): p for p in PARAMS},
        doc="Parameter whose RMSE or efficiency colours the matrix.",
    )

    def __init__(self, runs_root: str | Path | None = None, shipped=None, doc=None, **params):
        """``doc``: the session's Bokeh document; with one, the example maps and the domain
        gap are read in a worker thread and applied on the document's next tick."""
        root = str(runs_root if runs_root is not None else default_runs_root())
        super().__init__(runs_root=root, shipped=str(shipped or default_table()), **params)
        self._doc = doc
        self._proc: subprocess.Popen | None = None
        self._out: Path | None = None
        self._callback = None
        self._derived_for: tuple | None = None
        self._table_widget: pn.widgets.Tabulator | None = None
        self._view = None
        self.refresh_tables()

    # -- state -------------------------------------------------------------------------------

    def refresh_tables(self) -> None:
        """Re-list the tables; open the first one when none is open."""
        names = list_tables(self.shipped, self.runs_root)
        if self.table_path is not None and self.table_path not in names.values():
            names[Path(self.table_path).parent.name] = self.table_path
        if names != self.param.table_path.names:
            self.param.table_path.objects = names
        if self.table_path is None and names:
            self.table_path = next(iter(names.values()))
        elif not names:
            self.message = (
                f"No comparison table: {self.shipped} is missing. Run `make compare-samples` "
                "or press Recompute."
            )

    @param.depends("table_path", watch=True, on_init=False)
    def _load_table(self) -> None:
        table = None
        if self.table_path is not None:
            try:
                table = read_table(self.table_path)
            except ConfigError as exc:
                self.message = str(exc)
        kinds = {} if table is None else self._model_kinds(table)
        self.param.update(kinds=kinds, table=table)
        self.select_row(default_row(table, kinds))

    def _model_kinds(self, table: pd.DataFrame) -> dict[str, str]:
        """Training kind of each network model of ``table``: from its run directory's
        config.json (:func:`explorer.compare_views.checkpoint_kind`), else from the checkpoint
        of its first evaluated row; models with neither are left out."""
        kinds: dict[str, str] = {}
        nets = table[(table["method"] == "network") & (table["checkpoint"] != "")]
        for model, rows in nets.groupby("model", sort=False):
            kind = checkpoint_kind(rows["checkpoint"].iloc[0])
            evaluated = rows[rows["error"] == ""]
            if kind is None and len(evaluated):
                kind = (self._like(evaluated.iloc[0]) or {}).get("kind")
            if kind:
                kinds[str(model)] = str(kind)
        return kinds

    def matrix(self) -> pd.DataFrame:
        """Cells of the models × datasets matrix as shown now
        (:func:`explorer.compare_views.matrix_frame`)."""
        return matrix_frame(self.table, self.matrix_metric, self.matrix_param, self.kinds)

    def select_cell(self, model: str, dataset: str) -> bool:
        """Select the table row of matrix cell (``model`` row label, ``dataset`` column label)
        for the matrix's parameter; False when there is no such cell."""
        cells = self.matrix()
        hit = cells[(cells["model"] == model) & (cells["dataset"] == dataset)]
        if not len(hit):
            return False
        self.select_row(int(hit["row"].iloc[0]))
        return True

    @property
    def selected(self) -> pd.Series | None:
        """The selected row of :attr:`table`, or None."""
        if self.table is None or self.row is None or not 0 <= self.row < len(self.table):
            return None
        return self.table.iloc[self.row]

    def select_row(self, row: int | None) -> None:
        """Select row ``row`` of the table: read the pair's predictions (and, while the page is
        :attr:`visible`, its example maps and domain gap: :meth:`update_derived`)."""
        with param.parameterized.batch_call_watchers(self):
            self.row = row
            r = self.selected
            self.predictions = None if r is None else pair_predictions(self.table_path, r)
        self.update_derived()

    @param.depends("visible", watch=True)
    def update_derived(self) -> None:
        """Read the selected pair's example maps and domain gap, once per (table, row), while
        the page is visible: at once without a document, else in a worker thread."""
        key = (self.table_path, self.row)
        if not self.visible or key == self._derived_for:
            return
        self._derived_for = key
        r, predictions = self.selected, self.predictions

        def work():
            return self._examples(r, predictions), *self._gap(r)

        def apply(result) -> None:
            if self._derived_for == key:
                examples, gap, message = result
                self.param.update(examples=examples, gap=gap, gap_message=message, loading=False)

        if self._doc is None:
            apply(work())
            return
        self.loading = True
        doc = self._doc

        def run() -> None:
            try:
                result = work()
            except Exception as exc:  # noqa: BLE001 - shown in the page, never kills the server
                result = ([], None, f"No domain gap view: {type(exc).__name__}: {exc}")
            doc.add_next_tick_callback(lambda: apply(result))

        threading.Thread(target=run, daemon=True, name="compare-derived").start()

    def _network_row(self, r: pd.Series) -> pd.Series | None:
        """The row whose network's maps the views use: ``r`` itself for a network row; for a
        P(k)-likelihood row the network named in its ``checkpoint`` (generated kinds), else the
        dataset's first evaluated network; None when there is none."""
        if r["method"] == "network":
            return r if r["checkpoint"] and not r["error"] else None
        same = self.table[
            (self.table["dataset"] == r["dataset"])
            & (self.table["method"] == "network")
            & (self.table["checkpoint"] != "")
            & (self.table["error"] == "")
        ]
        if r["checkpoint"]:  # a P(k) row on one network's generated maps: that network's row
            same = same[same["checkpoint"] == r["checkpoint"]]
        return same.iloc[0] if len(same) else None

    def _like(self, r: pd.Series) -> dict | None:
        from engine.evaluation.predict import checkpoint_like

        net = self._network_row(r)
        if net is None:
            return None
        try:
            return checkpoint_like(net["checkpoint"])
        except ConfigError:
            return None

    def _examples(self, r: pd.Series | None, predictions: pd.DataFrame | None) -> list:
        if r is None:
            return []
        from engine.data import open_spec, parse_spec

        shown = example_frame(predictions, r["method"])
        if not len(shown):
            return []
        n = int(shown["source_sample"].max()) + 1
        try:
            if parse_spec(r["dataset"])[0] == "synthetic":  # generated: same maps need same count
                n = max(n, int(np.nan_to_num(pd.to_numeric(r["n_maps"], errors="coerce"))))
            da = open_spec(r["dataset"], like=self._like(r), count=max(n, 1))
        except (ConfigError, OSError, ValueError):
            return []
        if "channel" in da.dims:
            da = da.isel(channel=0)
        out = []
        for rec in shown.itertuples():
            if rec.source_sample >= da.sizes["sample"]:
                continue
            img = np.asarray(da.isel(sample=int(rec.source_sample)).values, dtype=np.float32)
            x = np.asarray(da["x"].values, float) if "x" in da.coords else np.arange(img.shape[1])
            y = np.asarray(da["y"].values, float) if "y" in da.coords else np.arange(img.shape[0])
            dx = float(x[1] - x[0]) if len(x) > 1 else 1.0
            dy = float(y[1] - y[0]) if len(y) > 1 else 1.0
            bounds = (x[0] - dx / 2, y[0] - dy / 2, x[-1] + dx / 2, y[-1] + dy / 2)
            parts = [
                f"{param_label(p)} {getattr(rec, p + '_true'):.3f}→{getattr(rec, p + '_pred'):.3f}"
                for p in PARAMS
            ]
            out.append((img, bounds, f"map {rec.source_sample}: " + ", ".join(parts)))
        return out

    def _gap(self, r: pd.Series | None) -> tuple[dict | None, str]:
        if r is None:
            return None, ""
        from engine.data import open_spec
        from engine.data.transfer import domain_gap

        if r["method"] == "network" and r["error"]:
            return None, f"No domain gap view: {r['error']}"
        like = self._like(r)
        if like is None:
            return None, "No domain gap view: no network could be evaluated on this dataset."
        try:
            target = open_spec(r["dataset"], like=like, count=GAP_MAPS)
            gap = domain_gap(target, like, count=GAP_MAPS, bins=40)
        except (ConfigError, OSError, ValueError) as exc:
            return None, f"No domain gap view: {exc}"
        return gap, ""

    # -- recompute ---------------------------------------------------------------------------

    def compare_command(self, out_dir: Path) -> list[str]:
        """``python -m engine compare`` for the checkpoints and datasets of the shown table."""
        table = self.table if self.table is not None else pd.DataFrame(columns=["dataset"])
        ckpts = list(dict.fromkeys(c for c in table.get("checkpoint", []) if c))
        datasets = list(dict.fromkeys(table["dataset"]))
        if not datasets:
            raise ConfigError("nothing to recompute: the table names no datasets")
        cmd = [sys.executable, "-m", "engine", "compare", "--checkpoints", *ckpts]
        cmd += ["--datasets", *datasets, "--count", str(self.count)]
        cmd += ["--out", str(out_dir / "table.csv")]
        return cmd + ["--predictions-dir", str(out_dir / "predictions")]

    def recompute(self) -> subprocess.Popen | None:
        """Start ``python -m engine compare`` in ``<runs_root>/compare-<time>/`` (own session,
        output in ``engine.log``); returns the process, or None when one is still running."""
        if self._proc is not None and self._proc.poll() is None:
            self.message = "A comparison is still running."
            return None
        out = Path(self.runs_root) / f"{RUN_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            cmd = self.compare_command(out)
        except ConfigError as exc:
            self.message = str(exc)
            return None
        out.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        with open(out / "engine.log", "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                cwd=os.getcwd(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._out = out
        self.running = True
        self.message = f"Comparing in {out} (pid {self._proc.pid}) …"
        return self._proc

    def poll(self) -> bool:
        """Open the table of a finished Recompute; returns True when one was opened."""
        if self._proc is None or self._proc.poll() is None:
            return False
        code, out = self._proc.returncode, self._out
        self._proc, self.running = None, False
        table = out / "table.csv"
        if code != 0 or not table.is_file():
            self.message = f"Comparison failed (exit {code}); see {out / 'engine.log'}."
            return False
        self.refresh_tables()
        self.table_path = str(table)
        self.message = f"Comparison done: {table}."
        return True

    # -- views -------------------------------------------------------------------------------

    def _tabulator(self) -> pn.widgets.Tabulator:
        """The long table, made once; it follows :attr:`table` and :attr:`row`."""
        if self._table_widget is not None:
            return self._table_widget
        from bokeh.models.widgets.tables import NumberFormatter

        fmt = NumberFormatter(format="0.000", nan_format="—")
        widget = pn.widgets.Tabulator(
            self._display_frame(),
            selectable=1,
            disabled=True,
            show_index=False,
            sizing_mode="stretch_width",
            max_height=360,
            formatters={title: fmt for _, title in METRIC_COLUMNS},
            selection=[] if self.row is None else [self.row],
        )

        def on_select(event) -> None:
            if event.new and event.new[0] != self.row:
                self.select_row(int(event.new[0]))

        widget.param.watch(on_select, "selection")
        self._table_widget = widget
        return widget

    def _display_frame(self) -> pd.DataFrame:
        return display_table(self.table if self.table is not None else read_empty())

    @param.depends("table", watch=True)
    def _show_table(self) -> None:
        if self._table_widget is not None:
            self._table_widget.value = self._display_frame()
            self._show_selection()

    @param.depends("row", watch=True)
    def _show_selection(self) -> None:
        selection = [] if self.row is None else [self.row]
        if self._table_widget is not None and self._table_widget.selection != selection:
            self._table_widget.selection = selection

    @param.depends("table")
    def _table_view(self):
        if self.table is None:
            return pn.pane.Markdown(self.message or "No comparison table.")
        return self._tabulator()

    def _matrix_layer(self, index: int, **_params) -> hv.Element:
        """Layer ``index`` of :func:`explorer.compare_views.matrix_layers` of the current state."""
        cells = self.matrix()
        return matrix_layers(cells, self.matrix_metric, self.matrix_param, self.row)[index]

    def _on_matrix_tap(self, x=None, y=None) -> None:
        """A click on the matrix: (x, y) are the cell's dataset and model labels."""
        if isinstance(x, str) and isinstance(y, str):
            self.select_cell(y, x)

    def matrix_view(self) -> hv.DynamicMap:
        """The models × datasets heatmap, its selected cell and values (one DynamicMap each:
        a Tap stream reaches only a DynamicMap of one element); a click selects the cell's pair.
        Table and selection update it in place; the colour scale is fixed per plot, so the
        page makes a new one when the metric or the parameter changes (:meth:`_matrix_pane`)."""
        state = hv.streams.Params(self, ["table", "kinds", "row"])
        heat, outline, labels = (
            hv.DynamicMap(partial(self._matrix_layer, i), streams=[state]) for i in range(3)
        )
        hv.streams.Tap(source=heat).add_subscriber(self._on_matrix_tap)
        return heat * outline * labels

    @param.depends("matrix_metric", "matrix_param")
    def _matrix_pane(self) -> pn.pane.HoloViews:
        return pn.pane.HoloViews(self.matrix_view(), linked_axes=False)

    @param.depends("predictions", "row")
    def _pair_view(self):
        return pair_view(self.selected, self.predictions)

    @param.depends("examples")
    def _examples_view(self):
        return examples_view(self.examples)

    @param.depends("gap", "gap_message", "loading")
    def _gap_view(self):
        return gap_view(self.gap, self.gap_message, self.loading)

    def __panel__(self):
        """The page, built once: rendering it again adds no widgets, watchers or callbacks."""
        if self._view is None:
            self._view = self._build_view()
        return self._view

    def _build_view(self) -> pn.Column:
        tables = pn.widgets.Select.from_param(self.param.table_path, **label("Comparison table"))
        count = pn.widgets.IntInput.from_param(self.param.count, **label("maps per dataset"))
        button = pn.widgets.Button(
            **label("↻ Recompute"), **look("primary"), disabled=self.param.running
        )
        button.on_click(lambda _event: self.recompute())
        choice = dict(**look("primary", "outline"))
        metric = pn.widgets.RadioButtonGroup.from_param(
            self.param.matrix_metric, **label("Colour"), **choice
        )
        name = pn.widgets.RadioButtonGroup.from_param(
            self.param.matrix_param, **label("Parameter"), **choice
        )
        return pn.Column(
            pn.Row(tables, count, pn.Column(pn.Spacer(height=18), button)),
            pn.pane.Markdown(self.param.message, sizing_mode="stretch_width"),
            pn.Row(metric, name),
            self._matrix_pane,
            self._table_view,
            pn.pane.Markdown(EXPLANATION, sizing_mode="stretch_width"),
            self._pair_view,
            self._examples_view,
            self._gap_view,
            sizing_mode="stretch_width",
        )


def read_empty() -> pd.DataFrame:
    """An empty table with the columns of :func:`read_table`."""
    from engine.evaluation.schema import COMPARE_COLUMNS

    return pd.DataFrame({c: pd.Series(dtype=object) for c in COMPARE_COLUMNS})


__all__ = [
    "ComparePage",
    "box_plot",
    "cosmology_groups",
    "dataset_label",
    "default_row",
    "display_table",
    "example_frame",
    "gap_plots",
    "list_tables",
    "matrix_frame",
    "matrix_layers",
    "pair_predictions",
    "pair_report",
    "read_table",
    "scatter_plot",
]
