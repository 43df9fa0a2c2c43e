"""Param-level tests of the Compare page (explorer.compare): no browser, no engine process.

Tables and predictions are written by the tests from known numbers; the example maps and the
domain gap read a folder of maps written here and a tiny checkpoint-free ``like`` (a real
checkpoint is only needed for the gap of a network row, patched here to a known ``like``).
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import pytest

from engine.evaluation.schema import COMPARE_COLUMNS
from engine.params import ConfigError
from explorer import compare, compare_views
from explorer.compare import ComparePage

#: Network's map settings of the fake table's model: 16² grf over 50 Mpc/h.
LIKE = {"kind": "grf", "size": 16, "box_size": 50.0, "omega_m_range": [0.1, 0.5]}
#: Three cosmologies with 4 maps each (a CV-style set), 32² over 100 Mpc/h → 2 × 2 tiles of 16².
COSMOLOGIES = [(0.2, 0.7), (0.3, 0.8), (0.4, 0.9)]


def _folder(path):
    """A folder dataset: 12 maps (4 per cosmology) with labels.csv."""
    path.mkdir()
    rng = np.random.default_rng(0)
    lines = ["file,omega_m,sigma8"]
    for i in range(12):
        om, s8 = COSMOLOGIES[i // 4]
        np.save(path / f"m{i:02d}.npy", (0.1 * rng.standard_normal((32, 32))).astype(np.float32))
        lines.append(f"m{i:02d}.npy,{om},{s8}")
    (path / "labels.csv").write_text("\n".join(lines) + "\n")
    return f"folder:{path}?box_size=100"


def _predictions(path) -> pd.DataFrame:
    """Predictions of 48 tiles (12 maps × 4): network off by +0.01, tiles of map i together."""
    n = 48
    src = np.repeat(np.arange(12), 4)
    truth = np.array([COSMOLOGIES[i // 4] for i in src])
    frame = pd.DataFrame(
        {
            "sample": np.arange(n),
            "source_sample": src,
            "omega_m_true": truth[:, 0],
            "sigma8_true": truth[:, 1],
            "network_omega_m_mean": truth[:, 0] + 0.01 + 0.001 * (np.arange(n) % 4),
            "network_omega_m_std": 0.02,
            "network_sigma8_mean": truth[:, 1] - 0.01,
            "network_sigma8_std": 0.02,
        }
    )
    frame.to_csv(path, index=False)
    return frame


def _table(tmp_path, spec: str) -> tuple:
    """table.csv: the fake network on the folder (with predictions), an error row and the
    P(k)-likelihood error rows; returns (path, frame)."""
    (tmp_path / "pred").mkdir()
    _predictions(tmp_path / "pred" / "net__folder.csv")
    rows = []
    for p, rmse in (("omega_m", 0.0115), ("sigma8", 0.01)):
        base = dict.fromkeys(COMPARE_COLUMNS)
        rows.append(
            {
                **base,
                "model": "net",
                "dataset": spec,
                "method": "network",
                "param": p,
                "rmse": rmse,
                "bias": 0.01,
                "r2": 0.9,
                "coverage_68": 1.0,
                "coverage_95": 1.0,
                "n_maps": 48,
                "transfer": "area-average: 32² over 100 Mpc/h → 16² over 50 Mpc/h, 4 tiles/map",
                "predictions": "pred/net__folder.csv",
                "checkpoint": "net.pt",
            }
        )
        rows.append(
            {**base, "model": "big", "dataset": spec, "method": "network", "param": p,
             "n_maps": 0, "error": "maps cover 100 Mpc/h, smaller than 1000", "checkpoint": "big.pt"}
        )  # fmt: skip
        rows.append(
            {**base, "model": "pk-likelihood", "dataset": spec, "method": "pk_likelihood",
             "param": p, "n_maps": 0, "error": "P(k) likelihood skipped: 'folder' maps"}
        )  # fmt: skip
    path = tmp_path / "table.csv"
    frame = pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))
    frame.to_csv(path, index=False)
    return path, frame


@pytest.fixture
def page(tmp_path, monkeypatch):
    spec = _folder(tmp_path / "maps")
    path, _ = _table(tmp_path, spec)

    def fake_like(ckpt):
        if ckpt != "net.pt":
            raise ConfigError(f"checkpoint {ckpt!r} does not exist")
        return dict(LIKE)

    monkeypatch.setattr("engine.evaluation.predict.checkpoint_like", fake_like)
    return ComparePage(runs_root=tmp_path / "runs", shipped=path)


def test_table_loads_and_first_evaluated_row_is_selected(page):
    assert page.table is not None and len(page.table) == 6
    shown = compare.display_table(page.table)
    assert list(shown.columns[:3]) == ["model", "dataset", "parameter"]
    assert shown["dataset"][0].startswith("folder:") and shown["dataset"][0].endswith(
        "?box_size=100"
    )
    assert shown["RMSE"][0] == pytest.approx(0.0115) and np.isnan(shown["RMSE"][1])
    assert shown["error"][1].startswith("maps cover") and shown["maps"][0] == 48
    assert page.row == 0 and page.selected["model"] == "net"
    assert isinstance(page.__panel__(), pn.Column)
    assert isinstance(page._tabulator(), pn.widgets.Tabulator)


def test_selection_gives_scatter_and_box_plot_data(page):
    assert page.predictions is not None and len(page.predictions) == 48
    groups = compare.cosmology_groups(page.predictions, "network", "omega_m")
    # three cosmologies of 16 tiles each, ordered by the truth
    assert list(groups.drop_duplicates("cosmology")["truth"]) == [0.2, 0.3, 0.4]
    assert set(groups["n"]) == {16} and len(groups) == 48
    assert groups["predicted"].iloc[0] == pytest.approx(0.21)
    assert len(compare.cosmology_groups(page.predictions, "network", "omega_m", 2)) == 32
    assert isinstance(compare.box_plot(groups, "omega_m", "net"), hv.Overlay)
    # the scatter of explorer.report reads the pair's predictions with the model's label
    scatter = compare.scatter_plot(compare.pair_report(page.selected), page.predictions, "sigma8")
    (points,) = [el for el in scatter if isinstance(el, hv.Scatter)]
    assert points.label == "net" and len(points.data) == 48
    # example maps: the first maps of the folder with their mean prediction over tiles
    ex = compare.example_frame(page.predictions, "network")
    assert list(ex["source_sample"]) == [0, 1, 2, 3]
    assert ex["omega_m_pred"][0] == pytest.approx(0.2115)
    assert len(page.examples) == 4
    img, bounds, title = page.examples[0]
    assert img.shape == (32, 32) and bounds[2] == pytest.approx(100.0)
    assert "0.200→0.212" in title


def test_domain_gap_view_builds_for_network_rows_and_explains_others(page):
    gap = page.gap
    assert gap is not None and page.gap_message == ""
    assert gap["kind"] == "grf" and gap["target_kind"] == "folder" and gap["size"] == 16
    assert gap["n_target"] == compare.GAP_MAPS and len(gap["pdf_x"]) == 40
    plots = compare.gap_plots(gap)
    assert len(plots) == 3 and all(isinstance(p, hv.Overlay) for p in plots)  # P, ratio, PDF
    assert isinstance(page._gap_view(), pn.Column)
    page.select_row(1)  # the 1000 Mpc/h network: not evaluated, and no gap (no checkpoint)
    assert page.predictions is None and page.examples == [] and page.gap is None
    assert page.gap_message.startswith("No domain gap view")
    page.select_row(2)  # P(k) likelihood row: the gap of the dataset's first network
    assert page.gap is not None and page.gap["kind"] == "grf"


def test_maps_and_gap_wait_until_the_page_is_shown(page, tmp_path):
    hidden = ComparePage(runs_root=tmp_path / "runs", shipped=page.shipped, visible=False)
    assert hidden.predictions is not None and hidden.examples == [] and hidden.gap is None
    hidden.visible = True  # the app sets it when the Compare tab opens
    assert len(hidden.examples) == 4 and hidden.gap is not None


def test_recompute_command_and_missing_table(page, tmp_path, monkeypatch):
    cmd = page.compare_command(tmp_path / "runs" / "compare-x")
    assert cmd[1:4] == ["-m", "engine", "compare"]
    i = cmd.index("--checkpoints")
    assert cmd[i + 1 : cmd.index("--datasets")] == ["net.pt", "big.pt"]
    assert cmd[cmd.index("--count") + 1] == "64"
    assert cmd[-1].endswith("compare-x/predictions")
    # a recomputed table in the runs folder is listed after the shipped one
    done = tmp_path / "runs" / "compare-20990101-000000"
    done.mkdir(parents=True)
    (done / "table.csv").write_text((tmp_path / "table.csv").read_text())
    page.refresh_tables()
    assert list(page.param.table_path.objects)[1] == str(done / "table.csv")
    empty = ComparePage(runs_root=tmp_path / "none", shipped=tmp_path / "missing.csv")
    assert empty.table is None and "make compare-samples" in empty.message
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="lacks columns"):
        compare.read_table(bad)


# ---------------------------------------------------------------------------------------------
# Default selection (best in-domain pair) and the models × datasets matrix
# ---------------------------------------------------------------------------------------------


def _domain_table(tmp_path) -> tuple:
    """Two networks with run dirs (config.json: kind grf, lognormal) on grf, lognormal and a
    folder they cannot read, and the P(k) likelihood on each network's maps; the first row is
    an out-of-domain pair with R² = −70 (as the shipped table's first row)."""
    for name, kind in (("grfnet", "grf"), ("lnnet", "lognormal")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(f'{{"settings": {{"kind": "{kind}"}}}}')
    # (model, dataset, method, rmse per param, efficiency per param, r2, checkpoint, error)
    pairs = [
        ("lnnet", "grf", "network", (0.9, 0.5), (0.05, 0.1), -70.0, "lnnet", ""),
        ("grfnet", "grf", "network", (0.02, 0.01), (0.9, 0.95), 0.9, "grfnet", ""),
        ("pk [grfnet]", "grf", "pk_likelihood", (0.017, 0.009), (1.0, 1.0), 0.9, "grfnet", ""),
        ("pk [lnnet]", "grf", "pk_likelihood", (0.04, 0.04), (0.4, 0.3), 0.8, "lnnet", ""),
        ("grfnet", "lognormal", "network", (0.5, 0.3), (0.05, 0.05), -3.0, "grfnet", ""),
        ("lnnet", "lognormal", "network", (0.03, 0.06), (1.5, 1.2), 0.9, "lnnet", ""),
        ("pk [grfnet]", "lognormal", "pk_likelihood", (0.2, 0.2), (0.1, 0.1), 0.1, "grfnet", ""),
        ("pk [lnnet]", "lognormal", "pk_likelihood", (0.09, 0.13), (0.7, 0.5), 0.7, "lnnet", ""),
        ("grfnet", "folder:maps?box_size=100", "network", (None,) * 2, (None,) * 2, None,
         "grfnet", "maps cover 100 Mpc/h"),
        ("pk-likelihood", "folder:maps?box_size=100", "pk_likelihood", (None,) * 2, (None,) * 2,
         None, "", "P(k) likelihood skipped"),
    ]  # fmt: skip
    rows = []
    for model, dataset, method, rmse, eff, r2, ckpt, error in pairs:
        for i, p in enumerate(("omega_m", "sigma8")):
            rows.append(
                {**dict.fromkeys(COMPARE_COLUMNS), "model": model, "dataset": dataset,
                 "method": method, "param": p, "rmse": rmse[i], "efficiency": eff[i], "r2": r2,
                 "n_maps": 0 if error else 64, "error": error,
                 "checkpoint": str(tmp_path / ckpt) if ckpt else ""}
            )  # fmt: skip
    path = tmp_path / "domain.csv"
    pd.DataFrame(rows, columns=list(COMPARE_COLUMNS)).to_csv(path, index=False)
    return path, compare.read_table(path)


def test_page_opens_on_the_best_in_domain_pair(tmp_path):
    path, table = _domain_table(tmp_path)
    assert compare_views.checkpoint_kind(tmp_path / "lnnet") == "lognormal"
    assert compare_views.checkpoint_kind(tmp_path / "lnnet/checkpoints/best.pt") == ("lognormal")
    assert compare_views.dataset_kind("lognormal?size=64") == "lognormal"
    assert compare_views.dataset_kind("folder:maps?box_size=100") == "folder"
    page = ComparePage(runs_root=tmp_path / "runs", shipped=path, visible=False)
    assert page.kinds == {"lnnet": "lognormal", "grfnet": "grf"}
    # not row 0 (lnnet on grf, R² = −70): lnnet on lognormal has the highest mean efficiency
    # of the in-domain pairs (1.35 against grfnet on grf's 0.925); its first parameter's row
    r = page.selected
    assert (r["model"], r["dataset"], r["param"]) == ("lnnet", "lognormal", "omega_m")
    assert page.row == 10
    # without efficiencies the lowest mean RMSE wins (grfnet on grf: 0.015 against 0.045)
    no_eff = table.assign(efficiency=np.nan)
    assert compare.default_row(no_eff, page.kinds) == 2
    # no in-domain pair (unknown kinds): the first evaluated row, as before
    assert compare.default_row(table, {}) == 0
    assert compare.default_row(None, {}) is None


def test_matrix_of_models_and_datasets(tmp_path):
    path, table = _domain_table(tmp_path)
    page = ComparePage(runs_root=tmp_path / "runs", shipped=path, visible=False)
    cells = page.matrix()
    assert list(dict.fromkeys(cells["model"])) == ["lnnet", "grfnet", compare_views.PK_ROW]
    assert list(dict.fromkeys(cells["dataset"])) == ["grf", "lognormal", "folder:maps"]

    def cell(model, dataset):
        (hit,) = cells[(cells["model"] == model) & (cells["dataset"] == dataset)].itertuples()
        return hit

    assert cell("lnnet", "grf").value == pytest.approx(0.9)
    assert cell("lnnet", "grf").domain == "out of domain"
    assert cell("grfnet", "grf").text == "0.02*" and cell("grfnet", "grf").domain == "in domain"
    # the P(k) row: on the maps of the network trained on the dataset's kind
    assert cell(compare_views.PK_ROW, "grf").value == pytest.approx(0.017)
    assert cell(compare_views.PK_ROW, "lognormal").value == pytest.approx(0.09)
    folder = cell("grfnet", "folder:maps")
    assert np.isnan(folder.value) and folder.text == "✕" and "100 Mpc/h" in folder.error
    # the selectors: efficiency of σ₈
    page.param.update(matrix_metric="efficiency", matrix_param="sigma8")
    cells = page.matrix()
    assert cell("lnnet", "lognormal").value == pytest.approx(1.2)
    assert set(table.loc[cells["row"], "param"]) == {"sigma8"}
    # a click on a cell selects its pair (for the matrix's parameter)
    page._on_matrix_tap(x="grf", y=compare_views.PK_ROW)
    r = page.selected
    assert (r["model"], r["dataset"], r["param"]) == ("pk [grfnet]", "grf", "sigma8")
    assert page.select_cell("grfnet", "lognormal") and page.selected["model"] == "grfnet"
    assert not page.select_cell("nobody", "grf")
    assert page._tabulator().selection == [page.row]  # the long table follows the matrix
    # the heatmap draws with the first model at the top and the selected cell outlined
    plot = hv.renderer("bokeh").get_plot(page.matrix_view())
    assert list(plot.state.y_range.factors)[::-1] == ["lnnet", "grfnet", compare_views.PK_ROW]
    heat, outline, labels = compare_views.matrix_plot(page.matrix(), "rmse", "sigma8", page.row)
    assert len(outline) == 1 and outline.data["row"].iloc[0] == page.row
    assert "✕" in list(labels.data["text"])
    root = pn.panel(page).get_root()  # the whole page builds, matrix included
    assert pn.panel(page).get_root() is not root and page.__panel__() is page.__panel__()
