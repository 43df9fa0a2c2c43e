"""Views and pure helpers of the Compare page (:mod:`explorer.compare`).

The long table's labels, the models × datasets matrix (:func:`matrix_frame`,
:func:`matrix_plot`), the default selection (:func:`default_row`) and the plots of a selected
(model, dataset) pair: truth against prediction, predictions per cosmology, example maps and the
domain gap. Everything here works on the comparison table (a DataFrame of
:func:`explorer.compare.read_table`) and plain data; the engine calls (reading maps, loading
checkpoints, the domain gap) stay in :mod:`explorer.compare`.

In-domain pairs: a network is *in domain* on a dataset of the kind it was trained on
(:func:`dataset_kind` of the spec equals the training kind read from the checkpoint's run
directory, :func:`checkpoint_kind`); anything else asks it to extrapolate. Units: Ω_m and σ8
dimensionless; RMSE in parameter units; efficiency σ_CRB/RMSE dimensionless (1: at the
Cramér–Rao bound).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn

from explorer.report import METRIC_COLUMNS, param_label, read_predictions, scatter_plot

hv.extension("bokeh", logo=False)  # registers hv.opts for the Bokeh backend (idempotent)

#: Parameters in display order.
PARAMS = ("omega_m", "sigma8")
#: At most this many cosmologies in the box plots (those with the most maps).
MAX_GROUPS = 12
#: Example maps shown per dataset.
N_EXAMPLES = 4
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
    """P(k) (log-log, mean ± 1σ over maps), the ratio of the mean P(k) (dataset / training
    kind, 1 = no gap) and the pixel PDF of the training kind and the target data from
    :func:`engine.data.transfer.domain_gap`."""
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
    train = np.asarray(gap["pk_train_mean"], float)
    target = np.asarray(gap["pk_target_mean"], float)
    ok = (k > 0) & (train > 0) & (target > 0)
    ratio = hv.Curve(
        (k[ok], target[ok] / train[ok]), kx, hv.Dimension("ratio", label="P dataset / P training")
    ).opts(color="#d62728", line_width=2)
    one = hv.HLine(1.0).opts(color="black", line_dash="dashed", line_width=1)
    return [
        hv.Overlay(pk_layers).opts(
            title="Domain gap: power spectrum", logx=True, logy=True, tools=["hover"], **opts
        ),
        hv.Overlay([ratio, one]).opts(
            title="Domain gap: P(k) ratio",
            logx=True,
            tools=["hover"],
            **{**opts, "legend_position": "top_left"},
        ),  # fmt: skip
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


# ---------------------------------------------------------------------------------------------
# In-domain pairs and the default selection
# ---------------------------------------------------------------------------------------------


def dataset_kind(spec: str) -> str:
    """Kind of the maps of a dataset spec: the reader's prefix (``camels``, ``quijote``, ``des``,
    ``folder``, …), the kind name of a generated dataset (``grf``, ``lognormal?size=64`` →
    ``grf``, ``lognormal``), or ``"file"`` for a path to one of our files."""
    target = str(spec).partition("?")[0].strip()
    prefix, colon, _ = target.partition(":")
    if colon and len(prefix) > 1:
        return prefix
    if "/" in target or "." in target:
        return "file"
    return target


def checkpoint_kind(checkpoint: str | Path) -> str | None:
    """Kind of the maps a checkpoint was trained on, from its run directory's ``config.json``
    (``settings.kind``): ``checkpoint`` is the run directory or a ``.pt`` file in its
    ``checkpoints/``; None when there is no readable config."""
    path = Path(str(checkpoint))
    for run in (path, path.parent.parent) if path.suffix == ".pt" else (path,):
        try:
            config = json.loads((run / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        kind = (config.get("settings") or {}).get("kind") if isinstance(config, dict) else None
        if kind:
            return str(kind)
    return None


def in_domain(table: pd.DataFrame, kinds: dict[str, str]) -> np.ndarray:
    """Boolean per row: an evaluated network row on a dataset of the kind its model was trained
    on (``kinds``: ``{model: training kind}``)."""
    return np.array(
        [
            m == "network" and not e and kinds.get(model) == dataset_kind(d)
            for model, d, m, e in zip(
                table["model"], table["dataset"], table["method"], table["error"], strict=True
            )
        ],
        dtype=bool,
    )


def default_row(table: pd.DataFrame | None, kinds: dict[str, str]) -> int | None:
    """Row a table opens on: the best in-domain pair, else the first evaluated row.

    Best = the (model, dataset) in-domain pair (:func:`in_domain`) with the highest efficiency
    σ_CRB/RMSE, averaged over its parameters (scale-free, so pairs of different kinds compare);
    pairs without an efficiency come after, by the lowest mean RMSE. The pair's first row (its
    first parameter) is returned. Without in-domain pairs: the first row without an error, else
    row 0; None for an empty table.
    """
    if table is None or not len(table):
        return None
    ok = table[in_domain(table, kinds)]
    best: tuple | None = None
    for _, rows in ok.groupby(["model", "dataset"], sort=False):
        eff = pd.to_numeric(rows["efficiency"], errors="coerce").mean()
        rmse = pd.to_numeric(rows["rmse"], errors="coerce").mean()
        key = (-eff if np.isfinite(eff) else math.inf, rmse if np.isfinite(rmse) else math.inf)
        if best is None or key < best[0]:
            best = (key, int(rows.index[0]))
    if best is not None:
        return best[1]
    evaluated = np.flatnonzero(table["error"].to_numpy() == "")
    return int(evaluated[0]) if len(evaluated) else 0


# ---------------------------------------------------------------------------------------------
# Models × datasets matrix
# ---------------------------------------------------------------------------------------------

#: Colour of the matrix: {selector label: table column}.
MATRIX_METRICS = {"RMSE": "rmse", "efficiency σ_CRB/RMSE": "efficiency"}
#: Row label of the P(k) likelihood in the matrix.
PK_ROW = "P(k) likelihood"
MATRIX_COLUMNS = ["model", "dataset", "value", "text", "error", "domain", "row"]


def matrix_labels(specs) -> dict[str, str]:
    """Column labels of the matrix: :func:`dataset_label` without its ``?options`` where that
    stays unique, else with them."""
    specs = list(dict.fromkeys(specs))
    short = {s: dataset_label(s).partition("?")[0] for s in specs}
    if len(set(short.values())) < len(specs):
        return {s: dataset_label(s) for s in specs}
    return short


def _cell(r: pd.Series, idx, model: str, label: str, metric: str, domain: str) -> dict:
    value = float(pd.to_numeric(r[metric], errors="coerce")) if not r["error"] else math.nan
    if r["error"]:
        text = "✕"
    elif np.isfinite(value):
        text = f"{value:.3g}" + ("*" if domain == "in domain" else "")
    else:
        text = "—"
    error = str(r["error"])
    error = error if len(error) <= 160 else error[:157] + "…"
    return {"model": model, "dataset": label, "value": value, "text": text, "error": error,
            "domain": domain, "row": int(idx)}  # fmt: skip


def _pk_pick(cands: pd.DataFrame, spec: str, kinds: dict, ckpt_model: dict) -> pd.DataFrame:
    """The P(k)-likelihood rows of one dataset to show: on the maps of a model trained on the
    dataset's kind (the maps its in-domain network sees), else any evaluated one, else all."""
    ok = cands[cands["error"] == ""]
    kind = dataset_kind(spec)
    native = ok[[kinds.get(ckpt_model.get(c)) == kind for c in ok["checkpoint"]]]
    return native if len(native) else ok if len(ok) else cands


def matrix_frame(
    table: pd.DataFrame | None, metric: str = "rmse", param: str = "omega_m", kinds=None
) -> pd.DataFrame:
    """Cells of the models × datasets matrix for ``metric`` (a column: rmse, efficiency) of
    parameter ``param``.

    One cell per network model and dataset it was run on, and a :data:`PK_ROW` row: for each
    dataset the P(k) likelihood of :func:`_pk_pick`. ``kinds`` is ``{model: training kind}``.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`MATRIX_COLUMNS`: ``model`` (row label), ``dataset`` (column label,
        :func:`matrix_labels`), ``value`` (NaN for pairs that were not evaluated), ``text``
        (value to 3 digits, ``*`` in domain, ``✕`` not evaluated), ``error``, ``domain``
        ("in domain" / "out of domain" / "") and ``row`` (index of the table row a click
        selects); models in table order, then the P(k) row.
    """
    if table is None or not len(table):
        return pd.DataFrame(columns=MATRIX_COLUMNS)
    kinds = kinds or {}
    labels = matrix_labels(table["dataset"])
    sel = table[table["param"] == param]
    nets = sel[sel["method"] == "network"]
    cells, seen = [], set()
    for idx, r in nets.iterrows():
        if (r["model"], r["dataset"]) in seen:
            continue
        seen.add((r["model"], r["dataset"]))
        native = kinds.get(r["model"]) == dataset_kind(r["dataset"])
        domain = "in domain" if native else ("out of domain" if r["model"] in kinds else "")
        cells.append(_cell(r, idx, r["model"], labels[r["dataset"]], metric, domain))
    pk = sel[sel["method"] == "pk_likelihood"]
    ckpt_model = {c: m for m, c in zip(nets["model"], nets["checkpoint"], strict=True) if c}
    for spec in dict.fromkeys(pk["dataset"]):
        pick = _pk_pick(pk[pk["dataset"] == spec], spec, kinds, ckpt_model)
        cells.append(_cell(pick.iloc[0], pick.index[0], PK_ROW, labels[spec], metric, ""))
    return pd.DataFrame(cells, columns=MATRIX_COLUMNS)


def _matrix_colors(values: pd.Series, metric: str) -> dict:
    """Colour options: RMSE on a log scale (low is good), efficiency 0…1 (1: at the bound;
    above 1, possible where the bound is P(k)'s information only, saturates)."""
    if metric == "efficiency":
        return dict(cmap="RdYlGn", clim=(0.0, 1.0), logz=False)
    finite = values[np.isfinite(values) & (values > 0)]
    clim = (float(finite.min()), float(finite.max())) if len(finite) else (1e-3, 1.0)
    if clim[0] == clim[1]:
        clim = (clim[0] / 2, clim[1] * 2)
    return dict(cmap="RdYlGn_r", clim=clim, logz=True)


def matrix_layers(
    frame: pd.DataFrame, metric: str = "rmse", param: str = "omega_m", selected: int | None = None
) -> list[hv.Element]:
    """The layers of the matrix: heatmap of :func:`matrix_frame` (carrying the title and size),
    an outline of the cell of table row ``selected``, and the values written in the cells.
    Grey cells were not evaluated (hover shows why)."""
    title = next((k for k, v in MATRIX_METRICS.items() if v == metric), metric)
    models = list(dict.fromkeys(frame["model"]))
    datasets = list(dict.fromkeys(frame["dataset"]))
    x = hv.Dimension("dataset", values=datasets)
    y = hv.Dimension("model", values=models[::-1])  # Bokeh's first factor is at the bottom
    value = hv.Dimension("value", label=f"{title} of {param_label(param)}")
    data = frame.astype({"value": float})
    heat = hv.HeatMap(data, [x, y], [value, "text", "error", "domain"]).opts(
        **_matrix_colors(data["value"], metric),
        colorbar=True,
        clipping_colors={"NaN": "#e6e6e6"},
        tools=["hover"],
        line_color="white",
        xrotation=20,
        title=f"{title} of {param_label(param)}: models × datasets (* in domain; click a cell)",
        frame_width=max(320, 120 * len(datasets)),
        frame_height=max(120, 40 * len(models)),
        framewise=True,
    )
    chosen = data[data["row"] == selected] if selected is not None else data.iloc[:0]
    outline = hv.HeatMap(chosen, [x, y], [value]).opts(
        fill_alpha=0, line_color="black", line_width=3, colorbar=False, tools=[]
    )
    labels = hv.Labels(data, [x, y], "text").opts(text_font_size="9pt", text_color="black")
    return [heat, outline, labels]


def matrix_plot(
    frame: pd.DataFrame, metric: str = "rmse", param: str = "omega_m", selected: int | None = None
) -> hv.Overlay:
    """:func:`matrix_layers` overlaid (the page draws them as one DynamicMap each, so that a
    click on the heatmap reaches its ``hv.streams.Tap``)."""
    return hv.Overlay(matrix_layers(frame, metric, param, selected))


# ---------------------------------------------------------------------------------------------
# The selected pair
# ---------------------------------------------------------------------------------------------


def pair_view(r: pd.Series | None, predictions: pd.DataFrame | None) -> pn.Column:
    """Header of a selected row, why it was not evaluated, and its scatter and box plots."""
    if r is None:
        return pn.Column()
    head = f"**{r['model']}** on `{r['dataset']}`"
    if r["transfer"]:
        head += f" · transfer: {r['transfer']}"
    items = [pn.pane.Markdown(head, sizing_mode="stretch_width")]
    if r["error"]:
        items.append(pn.pane.Alert(f"Not evaluated: {r['error']}", alert_type="warning"))
    if predictions is None:
        return pn.Column(*items, sizing_mode="stretch_width")
    rep = pair_report(r)
    scatters = [scatter_plot(rep, predictions, p) for p in PARAMS]
    method_label = rep["methods"][r["method"]]["label"]
    boxes = [
        box_plot(cosmology_groups(predictions, r["method"], p), p, method_label) for p in PARAMS
    ]
    items += [
        pn.Row(*(pn.pane.HoloViews(p, linked_axes=False) for p in scatters)),
        pn.Row(*(pn.pane.HoloViews(p, linked_axes=False) for p in boxes)),
    ]
    return pn.Column(*items, sizing_mode="stretch_width")


def examples_view(examples: list) -> pn.Column:
    """Example maps ``[(image, bounds, title)]`` side by side."""
    if not examples:
        return pn.Column()
    plots = [
        hv.Image(img, bounds=bounds, kdims=["x", "y"]).opts(
            cmap="viridis", frame_width=180, frame_height=180, title=title, fontsize={"title": 8},
            xaxis=None, yaxis=None, tools=["hover"],
        )
        for img, bounds, title in examples
    ]  # fmt: skip
    return pn.Column(
        pn.pane.Markdown("**Example maps** (true → predicted)"),
        pn.Row(*(pn.pane.HoloViews(p, linked_axes=False) for p in plots)),
    )


def gap_view(gap: dict | None, message: str = "", loading: bool = False):
    """The domain gap (:func:`gap_plots`) with its description, or why there is none."""
    if loading:
        return pn.pane.Markdown("*Reading example maps and the domain gap …*")
    if gap is None:
        return pn.pane.Markdown(message or "", sizing_mode="stretch_width")
    g = gap
    text = (
        f"**Domain gap**: {g['n_train']} generated `{g['kind']}` maps (the network's training "
        f"kind) against {g['n_target']} maps of the dataset on the network's grid "
        f"({g['size']}² pixels over {g['side']:g} {'Mpc/h' if g['k_units'] != 'ell' else 'deg'})."
    )
    return pn.Column(
        pn.pane.Markdown(text, sizing_mode="stretch_width"),
        pn.Row(*(pn.pane.HoloViews(p, linked_axes=False) for p in gap_plots(g))),
    )
