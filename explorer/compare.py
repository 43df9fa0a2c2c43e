"""Compare page: trained models and the P(k) likelihood on every dataset, and why models fail.

The page reads a table of ``python -m engine compare`` (:func:`engine.evaluation.evaluate.compare`: one
row per model, dataset, method and parameter, with RMSE, bias, R², coverages, efficiency,
``transfer``, ``error``, ``predictions`` and ``checkpoint`` columns) and the per-pair
predictions it wrote with ``--predictions-dir``. A fresh clone shows the precomputed
comparison of the shipped models on the sample datasets (``assets/compare/table.csv``, made by
``make compare-samples``) at once; tables of earlier recomputations (``runs/compare-*/``) can
be picked from a list.

Selecting a row shows, for that (model, dataset) pair:

* truth against prediction per parameter (:func:`explorer.report.scatter_plot`);
* predictions per distinct cosmology as box plots (maps grouped by their true (Ω_m, σ8): CAMELS
  CV/1P-style sets hold many maps per cosmology), :data:`MAX_GROUPS` groups at most;
* a few maps of the dataset (read with :func:`engine.data.open_spec`, :data:`N_EXAMPLES` maps)
  with their true and predicted values (mean over the tiles of a map after domain transfer);
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
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from engine.params import ConfigError
from engine.runs import REPO_ROOT
from explorer.polling import SessionPolling
from explorer.report import METRIC_COLUMNS, param_label, read_predictions, scatter_plot
from explorer.training import default_runs_root
from explorer.widgets import label, look

hv.extension("bokeh", logo=False)  # registers hv.opts for the Bokeh backend (idempotent)

#: The precomputed comparison shipped with the repository.
SHIPPED_TABLE = REPO_ROOT / "assets" / "compare" / "table.csv"
#: Environment variable overriding the shipped table (tests, other installations).
TABLE_ENV = "EXPLORER_COMPARE_TABLE"
#: Prefix of the folders of recomputed comparisons in the runs folder.
RUN_PREFIX = "compare-"
#: Columns a comparison table must have (engine.evaluation.evaluate.COMPARE_COLUMNS, older tables may lack
#: the others).
REQUIRED = ("model", "dataset", "method", "param", "rmse")
#: Parameters in display order.
PARAMS = ("omega_m", "sigma8")
#: At most this many cosmologies in the box plots (those with the most maps).
MAX_GROUPS = 12
#: Example maps shown per dataset.
N_EXAMPLES = 4
#: Generated and target maps of the domain-gap view.
GAP_MAPS = 16
#: Default number of maps per dataset of Recompute.
DEFAULT_COUNT = 64

EXPLANATION = """\
**What you are looking at.** Each row scores one estimator of Ωₘ and σ₈ on one dataset: a
trained network (*model*) or the classical **P(k) likelihood**. A network only knows the maps
it was trained on: the kind of field (Gaussian, lognormal, 2LPT, κ), the box and pixel size,
the slab thickness, smoothing and noise. Maps of other simulations (CAMELS with baryons,
Quijote N-body, DES κ) are first put on the network's pixel grid (*transfer*: area-averaged
or Fourier-interpolated, then cut into tiles of its size) — pairs that cannot be matched
(other units, a smaller box) show the reason in *error*. Even on the right grid the maps can
differ in their power spectrum and one-point PDF: the **domain gap** plot compares them. Where
the gap is large the network extrapolates and its predictions are biased, usually towards the
middle of its prior or beyond it, however good it is on its own kind. The P(k) likelihood
runs only where the project has the maps' theory (its own kinds).
"""


def default_table() -> Path:
    """The shipped table: ``$EXPLORER_COMPARE_TABLE`` if set, else ``assets/compare/table.csv``."""
    return Path(os.environ.get(TABLE_ENV) or SHIPPED_TABLE)


def list_tables(shipped: str | Path | None, runs_root: str | Path | None) -> dict[str, str]:
    """Tables to choose from: ``{label: path}``, the shipped one first, then the recomputed ones
    (``<runs_root>/compare-*/table.csv``, newest first). Missing files are left out."""
    out: dict[str, str] = {}
    if shipped and Path(shipped).is_file():
        out[f"shipped: {Path(shipped).parent.name}/{Path(shipped).name}"] = str(shipped)
    if runs_root and Path(runs_root).is_dir():
        found = sorted(Path(runs_root).glob(f"{RUN_PREFIX}*/table.csv"), reverse=True)
        out.update({f"{p.parent.name}": str(p) for p in found})
    return out


def read_table(path: str | Path) -> pd.DataFrame:
    """A comparison CSV of ``python -m engine compare`` with the optional columns filled in.

    Returns
    -------
    pandas.DataFrame
        Columns of :data:`engine.evaluation.evaluate.COMPARE_COLUMNS` (missing optional ones empty); text
        columns hold ``""`` for empty cells, metrics NaN.

    Raises
    ------
    ConfigError
        Missing or unreadable file, or a file without the columns of :data:`REQUIRED`.
    """
    from engine.evaluation.evaluate import COMPARE_COLUMNS

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
        frame[col] = frame[col].fillna("").astype(str)
    frame["checkpoint"] = frame["checkpoint"].fillna("").astype(str)
    return frame.reset_index(drop=True)


def dataset_label(spec: str) -> str:
    """Short name of a dataset spec for tables: prefix, last path part and options, e.g.
    ``camels:Maps_Mtot_Sample_LH_z=0.00.npy?delta=true``."""
    target, sep, query = str(spec).partition("?")
    prefix, colon, rest = target.partition(":")
    path = rest if colon and len(prefix) > 1 else target
    name = path.rstrip("/").rsplit("/", 1)[-1] or path
    head = f"{prefix}:" if colon and len(prefix) > 1 else ""
    if head == "quijote:" or head == "folder:":  # folder names say little: keep one more part
        parts = path.rstrip("/").rsplit("/", 2)
        name = "/".join(parts[-2:]) if len(parts) > 1 else name
    return head + name + (sep + query if query else "")


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as shown: model, dataset (:func:`dataset_label`), parameter, the metric titles
    of :data:`explorer.report.METRIC_COLUMNS`, maps, transfer and error; same row order."""
    out = pd.DataFrame(
        {
            "model": table["model"],
            "dataset": [dataset_label(s) for s in table["dataset"]],
            "parameter": [param_label(p) for p in table["param"]],
        }
    )
    for key, title in METRIC_COLUMNS:
        out[title] = pd.to_numeric(table[key], errors="coerce")
    out["maps"] = pd.to_numeric(table["n_maps"], errors="coerce").fillna(0).astype(int)
    out["transfer"] = table["transfer"]
    out["error"] = table["error"]
    return out


def pair_report(row: pd.Series) -> dict:
    """A minimal report dict of one table row for :func:`explorer.report.scatter_plot`: the
    row's method labelled with its model name."""
    label = "P(k) likelihood" if row["method"] == "pk_likelihood" else str(row["model"])
    return {"methods": {str(row["method"]): {"label": label}}, "params": list(PARAMS)}


def pair_predictions(table_path: str | Path, row: pd.Series) -> pd.DataFrame | None:
    """The predictions CSV of a row (column ``predictions``, relative to the table's folder),
    or None when it has none or it cannot be read."""
    rel = str(row.get("predictions") or "")
    if not rel:
        return None
    path = Path(rel) if Path(rel).is_absolute() else Path(table_path).parent / rel
    return read_predictions(path)


def cosmology_groups(
    frame: pd.DataFrame, method: str, name: str, max_groups: int = MAX_GROUPS
) -> pd.DataFrame:
    """Predictions of parameter ``name`` grouped by the maps' true cosmology, for box plots.

    Maps with equal true (Ω_m, σ8) form one group; the ``max_groups`` groups with the most maps
    are kept (ties: the first in the file), in order of the true value of ``name``.

    Returns
    -------
    pandas.DataFrame
        Columns ``cosmology`` (label "Ωₘ=0.300 σ₈=0.800"), ``truth`` (true ``name``),
        ``predicted`` (``<method>_<name>_mean``) and ``n`` (maps in the group); empty when the
        columns are missing.
    """
    cols = ["cosmology", "truth", "predicted", "n"]
    mean = f"{method}_{name}_mean"
    needed = ("omega_m_true", "sigma8_true", f"{name}_true", mean)
    if frame is None or any(c not in frame.columns for c in needed):
        return pd.DataFrame(columns=cols)
    key = (
        frame["omega_m_true"].round(6).astype(str) + "|" + frame["sigma8_true"].round(6).astype(str)
    )
    sizes = key.value_counts(sort=True)
    keep = list(sizes.index[:max_groups])
    sel = frame[key.isin(keep)]
    sel_key = key[key.isin(keep)]
    out = pd.DataFrame(
        {
            "cosmology": [
                f"Ωₘ={o:.3f} σ₈={s:.3f}"
                for o, s in zip(sel["omega_m_true"], sel["sigma8_true"], strict=True)
            ],
            "truth": sel[f"{name}_true"].astype(float).to_numpy(),
            "predicted": sel[mean].astype(float).to_numpy(),
            "n": sel_key.map(sizes).to_numpy(),
        }
    )
    return out.sort_values(["truth", "cosmology"], kind="stable").reset_index(drop=True)


def box_plot(groups: pd.DataFrame, name: str, method_label: str) -> hv.Overlay:
    """Box plots of the predictions per cosmology of parameter ``name``, true values as red
    dashes."""
    label = param_label(name)
    x = hv.Dimension("cosmology", label="true cosmology")
    y = hv.Dimension("predicted", label=f"predicted {label}")
    boxes = hv.BoxWhisker(groups, x, y, label=method_label).opts(
        box_fill_color="#9ecae1", xrotation=35, tools=["hover"]
    )
    truth = groups.drop_duplicates("cosmology")[["cosmology", "truth"]]
    marks = hv.Scatter(truth, x, ("truth", f"true {label}"), label="truth").opts(
        color="#d62728", marker="dash", size=18, line_width=3
    )
    return hv.Overlay([boxes, marks]).opts(
        title=f"{label}: predictions per cosmology",
        frame_width=330,
        frame_height=240,
        show_grid=True,
        legend_position="top_left",
    )


def gap_plots(gap: dict) -> list[hv.Overlay]:
    """P(k) (log-log, mean ± 1σ over maps) and pixel PDF of the training kind and the target
    data from :func:`engine.data.transfer.domain_gap`."""
    kx = hv.Dimension("k", label="ℓ" if gap["k_units"] == "ell" else f"k ({gap['k_units']})")
    py = hv.Dimension("P", label=f"P ({gap['pk_units']})")
    series = (
        ("train", f"training maps ({gap['kind']})", "#1f77b4"),
        ("target", f"dataset ({gap['target_kind']})", "#d62728"),
    )
    pk_layers, pdf_layers = [], []
    k = np.asarray(gap["k"], float)
    for key, text, color in series:
        mean = np.asarray(gap[f"pk_{key}_mean"], float)
        std = np.asarray(gap[f"pk_{key}_std"], float)
        ok = (k > 0) & (mean > 0)
        lo = np.maximum(mean - std, mean * 1e-3)
        pk_layers.append(
            hv.Spread((k[ok], mean[ok], mean[ok] - lo[ok], std[ok]), kx, [py, "lo", "hi"]).opts(
                color=color, alpha=0.2
            )
        )
        pk_layers.append(
            hv.Curve((k[ok], mean[ok]), kx, py, label=text).opts(color=color, line_width=2)
        )
        pdf_layers.append(
            hv.Curve(
                (gap["pdf_x"], gap[f"pdf_{key}"]),
                hv.Dimension("value", label=f"pixel value ({gap['units_train'] or 'map units'})"),
                hv.Dimension("density", label="probability density"),
                label=text,
            ).opts(color=color, line_width=2)
        )
    opts = dict(frame_width=330, frame_height=240, show_grid=True, legend_position="bottom_left")
    return [
        hv.Overlay(pk_layers).opts(
            title="Domain gap: power spectrum", logx=True, logy=True, tools=["hover"], **opts
        ),
        hv.Overlay(pdf_layers).opts(title="Domain gap: pixel PDF", **opts),
    ]


def example_frame(frame: pd.DataFrame | None, method: str, n: int = N_EXAMPLES) -> pd.DataFrame:
    """Truth and mean prediction (over tiles) of the first ``n`` source maps of a predictions
    frame: columns ``source_sample``, ``<param>_true``, ``<param>_pred`` (NaN when missing)."""
    cols = ["source_sample"] + [f"{p}_{s}" for p in PARAMS for s in ("true", "pred")]
    if frame is None or not len(frame):
        return pd.DataFrame(columns=cols)
    src = frame["source_sample"] if "source_sample" in frame.columns else frame["sample"]
    data = pd.DataFrame({"source_sample": src.astype(int)})
    for p in PARAMS:
        data[f"{p}_true"] = frame.get(f"{p}_true", np.nan)
        data[f"{p}_pred"] = frame.get(f"{method}_{p}_mean", np.nan)
    out = data.groupby("source_sample", sort=True).mean().reset_index()
    return out.head(n)[cols]


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
        self.table = table
        ok = [] if table is None else list(np.flatnonzero(table["error"].to_numpy() == ""))
        self.select_row(int(ok[0]) if ok else (0 if table is not None and len(table) else None))

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
        from engine.evaluation.evaluate import checkpoint_like

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
        from bokeh.models.widgets.tables import NumberFormatter

        frame = display_table(self.table if self.table is not None else read_empty())
        fmt = NumberFormatter(format="0.000", nan_format="—")
        widget = pn.widgets.Tabulator(
            frame,
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
        return widget

    @param.depends("table")
    def _table_view(self):
        if self.table is None:
            return pn.pane.Markdown(self.message or "No comparison table.")
        return self._tabulator()

    @param.depends("predictions", "row")
    def _pair_view(self):
        r = self.selected
        if r is None:
            return pn.Column()
        head = f"**{r['model']}** on `{r['dataset']}`"
        if r["transfer"]:
            head += f" · transfer: {r['transfer']}"
        items = [pn.pane.Markdown(head, sizing_mode="stretch_width")]
        if r["error"]:
            items.append(pn.pane.Alert(f"Not evaluated: {r['error']}", alert_type="warning"))
        if self.predictions is None:
            return pn.Column(*items, sizing_mode="stretch_width")
        rep = pair_report(r)
        scatters = [scatter_plot(rep, self.predictions, p) for p in PARAMS]
        method_label = rep["methods"][r["method"]]["label"]
        boxes = [
            box_plot(cosmology_groups(self.predictions, r["method"], p), p, method_label)
            for p in PARAMS
        ]
        items += [
            pn.Row(*(pn.pane.HoloViews(p, linked_axes=False) for p in scatters)),
            pn.Row(*(pn.pane.HoloViews(p, linked_axes=False) for p in boxes)),
        ]
        return pn.Column(*items, sizing_mode="stretch_width")

    @param.depends("examples")
    def _examples_view(self):
        if not self.examples:
            return pn.Column()
        plots = [
            hv.Image(img, bounds=bounds, kdims=["x", "y"]).opts(
                cmap="viridis", frame_width=180, frame_height=180, title=title, fontsize={"title": 8},
                xaxis=None, yaxis=None, tools=["hover"],
            )
            for img, bounds, title in self.examples
        ]  # fmt: skip
        return pn.Column(
            pn.pane.Markdown("**Example maps** (true → predicted)"),
            pn.Row(*(pn.pane.HoloViews(p, linked_axes=False) for p in plots)),
        )

    @param.depends("gap", "gap_message", "loading")
    def _gap_view(self):
        if self.loading:
            return pn.pane.Markdown("*Reading example maps and the domain gap …*")
        if self.gap is None:
            return pn.pane.Markdown(self.gap_message or "", sizing_mode="stretch_width")
        g = self.gap
        text = (
            f"**Domain gap**: {g['n_train']} generated `{g['kind']}` maps (the network's training "
            f"kind) against {g['n_target']} maps of the dataset on the network's grid "
            f"({g['size']}² pixels over {g['side']:g} {'Mpc/h' if g['k_units'] != 'ell' else 'deg'})."
        )
        plots = gap_plots(g)
        return pn.Column(
            pn.pane.Markdown(text, sizing_mode="stretch_width"),
            pn.Row(*(pn.pane.HoloViews(p, linked_axes=False) for p in plots)),
        )

    def __panel__(self):
        tables = pn.widgets.Select.from_param(self.param.table_path, **label("Comparison table"))
        count = pn.widgets.IntInput.from_param(self.param.count, **label("maps per dataset"))
        button = pn.widgets.Button(
            **label("↻ Recompute"), **look("primary"), disabled=self.param.running
        )
        button.on_click(lambda _event: self.recompute())
        return pn.Column(
            pn.Row(tables, count, pn.Column(pn.Spacer(height=18), button)),
            pn.pane.Markdown(self.param.message, sizing_mode="stretch_width"),
            self._table_view,
            pn.pane.Markdown(EXPLANATION, sizing_mode="stretch_width"),
            self._pair_view,
            self._examples_view,
            self._gap_view,
            sizing_mode="stretch_width",
        )


def read_empty() -> pd.DataFrame:
    """An empty table with the columns of :func:`read_table`."""
    from engine.evaluation.evaluate import COMPARE_COLUMNS

    return pd.DataFrame({c: pd.Series(dtype=object) for c in COMPARE_COLUMNS})


__all__ = [
    "ComparePage",
    "box_plot",
    "cosmology_groups",
    "dataset_label",
    "display_table",
    "example_frame",
    "gap_plots",
    "list_tables",
    "pair_predictions",
    "read_table",
]
