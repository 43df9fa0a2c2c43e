"""Outputs that never destroy data (engine.outputs): an existing output is refused without
--overwrite, the output is checked before any work (writable directory, disk and memory), writes
are atomic (also evaluate's directory of report, predictions and figures), and large ``fields``
requests are generated and written chunk by chunk with the maps of one batch."""

from __future__ import annotations

import json
import os
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from engine import cli, outputs
from engine.cli import fields as cli_fields
from engine.data import samples
from engine.evaluation import evaluate, regression_eval
from engine.kinds import Kind, get_kind
from engine.params import ConfigError
from engine.physics import slabs

FIELDS = ["fields", "--size", "16", "--count", "3", "--device", "cpu"]
EVALUATE = ["evaluate", "--dataset", "grf?size=16&count=10"]
Usage = namedtuple("Usage", "total used free")


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def _no_temporaries(directory: Path) -> None:
    hidden = [p.name for p in directory.rglob(".*")]
    assert hidden == [], hidden


@pytest.fixture
def no_generation(monkeypatch):
    """Generation fails the test: what is refused must be refused before any work."""

    def fail(*args, **kwargs):
        raise AssertionError("generation started")

    monkeypatch.setattr(Kind, "generate", fail)
    monkeypatch.setattr(Kind, "generate_batch", fail)


# ---------------------------------------------------------------------------------------------
# Existing outputs
# ---------------------------------------------------------------------------------------------


def test_fields_refuses_an_existing_directory_and_keeps_it(tmp_path, capsys, no_generation):
    out = tmp_path / "thesis.zarr"
    out.mkdir()
    (out / "chapter1.tex").write_text("years of work")
    assert cli.main([*FIELDS, "--out", str(out)]) == 2
    err = _error(capsys)
    assert str(out) in err and "--overwrite" in err
    assert (out / "chapter1.tex").read_text() == "years of work"
    _no_temporaries(tmp_path)


def test_fields_overwrite_replaces_only_when_complete(tmp_path, capsys):
    out = tmp_path / "maps.zarr"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert cli.main([*FIELDS, "--out", str(out), "--overwrite"]) == 0
    assert not (out / "old.txt").exists()
    assert slabs.load(out).sizes["sample"] == 3
    _no_temporaries(tmp_path)
    # an empty directory holds nothing to lose: no --overwrite needed
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    assert cli.main([*FIELDS, "--out", str(empty)]) == 0
    assert slabs.load(empty).sizes["sample"] == 3


@pytest.mark.parametrize(
    "argv",
    [
        ["fields", "--size", "16", "--count", "2", "--out", "{}.zarr"],
        ["fields", "--size", "16", "--count", "2", "--out", "{}.nc"],
        ["dataset", "--size", "16", "--count", "4", "--out", "{}.zarr"],
        ["sky", "--nside", "8", "--count", "1", "--out", "{}.nc"],
        ["predict", "--maps", "TMP", "--out", "{}.csv"],  # any existing maps path
        ["evaluate", "--dataset", "grf", "--out", "{}"],
        ["compare", "--datasets", "grf", "--out", "{}.csv"],
    ],
    ids=lambda a: a[0] + a[-1][2:],
)
def test_every_writing_verb_refuses_an_existing_output(tmp_path, capsys, argv, no_generation):
    path = Path(argv[-1].format(tmp_path / "old"))
    if path.suffix in (".zarr", ""):
        path.mkdir()
        (path / "keep").write_text("keep")
    else:
        path.write_text("keep")
    assert cli.main([*(str(tmp_path) if a == "TMP" else a for a in argv[:-1]), str(path)]) == 2
    err = _error(capsys)
    assert f"--out {str(path)!r} already exists: add --overwrite to replace it" in err
    assert (path / "keep" if path.is_dir() else path).read_text() == "keep"


def test_overwrite_flag_on_every_writing_verb():
    parser = cli.build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    for verb in ("fields", "dataset", "sky", "predict", "evaluate", "compare"):
        assert "--overwrite" in verbs[verb]._option_string_actions, verb
    assert "--overwrite" not in verbs["train"]._option_string_actions


def test_compare_refuses_a_non_empty_predictions_dir(tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "a.csv").write_text("old")
    argv = ["compare", "--datasets", "grf", "--out", str(tmp_path / "t.csv")]
    assert cli.main([*argv, "--predictions-dir", str(pred)]) == 2
    assert "--predictions-dir" in _error(capsys)
    assert (pred / "a.csv").read_text() == "old" and not (tmp_path / "t.csv").exists()


def test_samples_refuse_an_existing_folder(tmp_path, capsys):
    out = tmp_path / "samples"
    out.mkdir()
    (out / "mine.txt").write_text("mine")
    assert samples.main(["--out", str(out)]) == 2
    assert "--overwrite" in _error(capsys)
    assert [p.name for p in tmp_path.rglob("*")] == ["samples", "mine.txt"]


# ---------------------------------------------------------------------------------------------
# Checks before work: writable directory, disk, memory
# ---------------------------------------------------------------------------------------------


def test_unwritable_directory_is_refused_before_generation(
    tmp_path, capsys, monkeypatch, no_generation
):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    real_access = os.access
    if os.geteuid() == 0:  # root writes anywhere: pretend the permission bits hold
        monkeypatch.setattr(
            os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode)
        )
    try:
        for verb, name in (("fields", "m.zarr"), ("dataset", "d.zarr"), ("sky", "s.nc")):
            argv = [verb, "--count", "1", "--out", str(locked / name)]
            assert cli.main(argv) == 2
            assert "is not writable" in _error(capsys)
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []


def test_huge_request_is_refused_with_its_size(tmp_path, capsys, monkeypatch, no_generation):
    tib = 2**40
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: Usage(2 * tib, tib, tib))
    for verb in ("fields", "dataset"):
        argv = [verb, "--size", "4096", "--count", "1000000", "--device", "cpu"]
        assert cli.main([*argv, "--out", str(tmp_path / "big.zarr")]) == 2
        assert "needs about 61.0 TiB on disk, but only 1.0 TiB are free" in _error(capsys)
    # in memory (.nc, sky): the available memory is the limit
    monkeypatch.setattr(outputs, "available_memory", lambda: 2**30)
    argv = ["fields", "--size", "1024", "--count", "100", "--device", "cpu"]
    assert cli.main([*argv, "--out", str(tmp_path / "big.nc")]) == 2
    assert "needs about 1.2 GiB of memory, but only 1.0 GiB are available" in _error(capsys)
    sky = ["sky", "--nside", "2048", "--count", "100", "--out", str(tmp_path / "s.nc")]
    assert cli.main(sky) == 2
    assert "GiB of memory" in _error(capsys)
    assert list(tmp_path.iterdir()) == []
    # a .zarr output holds one chunk (whole generation batches) in memory at a time
    seen = {}

    def spy(path, **kwargs):
        seen.update(kwargs)
        raise ConfigError("checked")

    monkeypatch.setattr(cli_fields, "check_output", spy)
    monkeypatch.setattr(cli_fields, "CHUNK_BYTES", 1)  # one batch of 64 maps per chunk
    assert cli.main([*argv, "--out", str(tmp_path / "big.zarr")]) == 2
    per_map = 4 * 1024**2 + 17
    assert seen["disk_bytes"] == 100 * per_map and seen["memory_bytes"] == 2 * 64 * per_map


def test_check_output_messages(tmp_path):
    with pytest.raises(ConfigError, match="directory '.*nowhere' does not exist"):
        outputs.check_output(tmp_path / "nowhere" / "x.nc")
    path = tmp_path / "x.nc"
    assert outputs.check_output(path, disk_bytes=1) == path
    path.write_text("")
    with pytest.raises(ConfigError, match="--predictions-dir '.*x.nc' already exists"):
        outputs.check_output(path, flag="--predictions-dir")
    assert outputs.check_output(path, overwrite=True) == path
    assert outputs.format_bytes(512) == "512 B" and outputs.format_bytes(3 * 2**30) == "3.0 GiB"


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------


def test_staged_keeps_the_old_output_on_error(tmp_path):
    def make_dir(p: Path, text: str = "new") -> None:
        p.mkdir()
        (p / "data").write_text(text)

    for name, make in (("f.nc", Path.write_text), ("d.zarr", make_dir)):
        path = tmp_path / name
        with outputs.staged(path) as target:
            make(target, "old")
        with pytest.raises(RuntimeError), outputs.staged(path) as target:
            make(target, "new")
            raise RuntimeError("interrupted")
        assert (path / "data" if path.is_dir() else path).read_text() == "old"
        with pytest.raises(ConfigError, match="already exists"), outputs.staged(path, False) as t:
            make(t, "new")
        with outputs.staged(path) as target:
            make(target, "new")
        assert (path / "data" if path.is_dir() else path).read_text() == "new"
    _no_temporaries(tmp_path)


def _outputs_of(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _fail_figures(monkeypatch):
    def fail(report, truth, results, out_dir):
        assert (Path(out_dir) / "predictions.csv").exists()  # the new predictions are written
        raise OSError("disk died while drawing the figures")

    monkeypatch.setattr(regression_eval, "draw_figures", fail)


def test_interrupted_evaluate_keeps_the_old_report_and_predictions(tmp_path, capsys, monkeypatch):
    out = tmp_path / "ev"
    assert cli.main([*EVALUATE, "--seed", "1", "--out", str(out)]) == 0
    before = _outputs_of(out)
    assert {"report.json", "predictions.csv"} <= set(before) and len(before) == 5
    _fail_figures(monkeypatch)
    assert cli.main([*EVALUATE, "--seed", "2", "--out", str(out), "--overwrite"]) == 1
    assert "disk died" in capsys.readouterr().err
    assert _outputs_of(out) == before
    _no_temporaries(tmp_path)
    monkeypatch.undo()
    assert cli.main([*EVALUATE, "--seed", "2", "--out", str(out), "--overwrite"]) == 0
    after = _outputs_of(out)
    assert set(after) == set(before) and after["predictions.csv"] != before["predictions.csv"]
    assert json.loads(after["report.json"])["n_maps"] == 10
    _no_temporaries(tmp_path)


def test_evaluation_in_a_run_directory_keeps_its_other_files(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"weights")
    (run / "status.json").write_text("{}")
    spec = "grf?size=16&count=10"
    evaluate.evaluate(spec, out_dir=run, seed=1)
    before = _outputs_of(run)
    assert {"report.json", "predictions.csv", "checkpoints/best.pt"} <= set(before)
    _fail_figures(monkeypatch)
    with pytest.raises(OSError, match="disk died"):
        evaluate.evaluate(spec, out_dir=run, seed=2)
    assert _outputs_of(run) == before
    _no_temporaries(tmp_path)
    monkeypatch.undo()
    evaluate.evaluate(spec, out_dir=run, seed=2)
    after = _outputs_of(run)
    assert set(after) == set(before) and after["predictions.csv"] != before["predictions.csv"]
    assert after["checkpoints/best.pt"] == b"weights" and after["status.json"] == b"{}"
    _no_temporaries(tmp_path)


# ---------------------------------------------------------------------------------------------
# Chunked fields
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ["--kind", "grf", "--size", "16", "--count", "150", "--omega-m", "0.2:0.4"],
        ["--kind", "kappa", "--size", "16", "--count", "70"],
    ],
    ids=["grf", "kappa"],
)
def test_chunked_fields_are_the_maps_of_one_batch(tmp_path, monkeypatch, extra):
    argv = ["fields", *extra, "--seed", "3", "--device", "cpu"]
    assert cli.main([*argv, "--out", str(tmp_path / "one.nc")]) == 0  # in memory, one call
    monkeypatch.setattr(cli_fields, "CHUNK_BYTES", 1)  # one generation batch per chunk
    sizes = []
    chunks = cli_fields._chunks

    def counted(*args):
        for da in chunks(*args):
            sizes.append(da.sizes["sample"])
            yield da

    monkeypatch.setattr(cli_fields, "_chunks", counted)
    chunked = tmp_path / "chunked.zarr"
    assert cli.main([*argv, "--out", str(chunked)]) == 0
    kind = get_kind(extra[1])
    batch = kind.default_batch_size(kind.new_settings())
    count = int(extra[extra.index("--count") + 1])
    assert sizes == [batch] * (count // batch) + [count % batch]  # appended chunk by chunk
    one, many = slabs.load(tmp_path / "one.nc"), slabs.load(chunked)
    np.testing.assert_array_equal(many.values, one.values)
    assert set(many.coords) == set(one.coords)
    for name in many.coords:  # omega_m, sigma8 per sample; x, y (and kappa's mask)
        np.testing.assert_array_equal(many[name].values, one[name].values)
    plain = {k: np.asarray(v).tolist() for k, v in one.attrs.items()}  # .nc stores arrays
    assert {k: np.asarray(v).tolist() for k, v in many.attrs.items()} == plain
    _no_temporaries(tmp_path)
