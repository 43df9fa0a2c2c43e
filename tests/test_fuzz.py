"""Property-based tests (hypothesis): random setting values and damaged files.

The only outcomes allowed are a result or a one-line :class:`~engine.params.ConfigError` (exit
code 2 on the command line): never a traceback, another exception, or a message over several
lines. Covered: :func:`engine.params.set_values` on the map settings of every kind,
:func:`engine.train.settings.resolve_params` (training settings), ``engine.cli.main`` for the
generating verbs, ``train``, ``predict``, ``evaluate`` and ``compare`` (in-process; every command
is refused in the end, by a missing output directory or an unknown setting, so nothing is
generated or trained), and :func:`engine.data.open_spec` on damaged ``.npy``, ``.nc``, ``.zarr``
and Quijote/CAMELS/folder data and on random option values.

The examples are derandomised (same examples on every run, no example database) and few
(:data:`FUZZ`), so the suite is stable in CI and takes about 20 s.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from engine import cli
from engine.params import ConfigError, FieldParams, check_value, set_values, user_settings

#: Settings of every fuzz test: few deterministic examples, no deadline (first calls import and
#: set up pyccl), no example database written into the repository.
FUZZ = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Values that broke the parsers before, or sit on an edge.
EDGE_TEXT = [
    "nan",
    "NaN",
    "-nan",
    "inf",
    "-inf",
    "Infinity",
    ".inf",
    ".nan",
    "1e400",
    "-1e400",
    "1e-400",
    "5e-324",
    "9" * 400,
    "9" * 5000,
    "",
    " ",
    "0x10",
    "1_000",
    "1:2",
    "0.5:0.1",
    "nan:inf",
    "1:2:3",
    ":",
    "\u0663",  # ARABIC-INDIC DIGIT THREE: int() reads it
    "\x00",
    "a\nb",
    "true",
    "[1, 2]",
    "{a: 1}",
    "2020-01-01",
    "~",
]
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 10**400, 2**63, -1, 0, 1]),
)
TEXT = st.one_of(
    st.sampled_from(EDGE_TEXT),
    NUMBERS.map(str),
    st.text(max_size=12),
    st.tuples(NUMBERS, NUMBERS).map(lambda t: f"{t[0]}:{t[1]}"),
)
VALUES = st.one_of(
    NUMBERS,
    TEXT,
    st.booleans(),
    st.none(),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _one_line(exc: BaseException) -> None:
    """A user error's message: a non-empty single line."""
    text = str(exc)
    assert text.strip() and "\n" not in text and "\r" not in text, repr(text)


def _cli(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of ``engine.cli.main(argv)`` run in this process."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return code, err.getvalue()


def _assert_result_or_user_error(code: int, err: str) -> None:
    """The only outcomes of a command: 0, or 2 with one line ``error: ...`` on stderr."""
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and "Traceback" not in err, err


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def _settings_classes() -> list[type]:
    from engine.kinds import KINDS

    classes = {FieldParams}
    classes.update(k.settings_class() for k in KINDS.values())
    return sorted(classes, key=lambda c: c.__name__)


FIELD_SETTINGS = [(cls, n) for cls in _settings_classes() for n in user_settings(cls)]


@FUZZ
@given(target=st.sampled_from(FIELD_SETTINGS), value=VALUES)
@example((FieldParams, "size"), float("nan"))
@example((FieldParams, "seed"), "inf")
@example((FieldParams, "count"), 10**400)
def test_set_values_gives_a_valid_setting_or_one_line(target, value):
    cls, name = target
    obj = cls()
    before = getattr(obj, name)
    try:
        set_values(obj, {name: value})
    except ConfigError as exc:
        _one_line(exc)
        assert getattr(obj, name) == before or before != before  # unchanged on error
        return
    got = getattr(obj, name)
    check_value(cls.param[name], name, got)  # what was set is allowed
    if isinstance(got, float):
        assert math.isfinite(got)


def _train_settings() -> list[str]:
    from engine.train.settings import train_params_class

    return user_settings(train_params_class("regression"))


@FUZZ
@given(name=st.sampled_from(_train_settings()), value=VALUES, as_flag=st.booleans())
def test_training_settings_resolve_or_fail_in_one_line(name, value, as_flag):
    from engine.train.settings import resolve_params

    layer = {name: str(value) if as_flag else value}
    try:
        params = resolve_params("smoke", **({"flags": layer} if as_flag else {"overrides": layer}))
    except ConfigError as exc:
        _one_line(exc)
        return
    for n in _train_settings():
        v = getattr(params, n)
        assert not isinstance(v, float) or math.isfinite(v), (n, v)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A module-wide folder (hypothesis runs many examples per test)."""
    return tmp_path_factory.mktemp("fuzz")


def _flags(cls) -> list[str]:
    from engine.cli import ALIASES

    return ["--" + ALIASES.get(n, n).replace("_", "-") for n in user_settings(cls) if n != "kind"]


def _verb_flags() -> list[tuple[str, str]]:
    from engine.kinds import get_kind

    fields = _flags(get_kind("grf").settings_class())
    sky = _flags(get_kind("sky").settings_class())
    return (
        [("fields", f) for f in fields]
        + [("dataset", f) for f in (*fields, "--split", "--chunk")]
        + [("sky", f) for f in (*sky, "--patch", "--patch-fov", "--patch-size", "--field")]
    )


@FUZZ
@given(verb_flag=st.sampled_from(_verb_flags()), value=TEXT, via_set=st.booleans())
@example(("fields", "--size"), "nan", False)  # the defects of the issue, always run
@example(("fields", "--count"), "nan", False)
@example(("fields", "--seed"), "inf", False)
@example(("fields", "--size"), ".inf", True)
@example(("dataset", "--count"), "1e400", False)
@example(("sky", "--nside"), "nan", False)
def test_generating_verbs_take_any_value_in_one_line(workdir, verb_flag, value, via_set):
    verb, flag = verb_flag
    name = flag[2:].replace("-", "_")
    arg = ["--set", f"{name}={value}"] if via_set else [f"{flag}={value}"]
    suffix = ".nc" if verb == "sky" else ".zarr"
    out = workdir / "missing" / f"out{suffix}"  # refused last: nothing is generated
    code, err = _cli([verb, *arg, "--out", str(out)])
    _assert_result_or_user_error(code, err)
    assert code == 2 and not out.parent.exists()


@FUZZ
@given(name=st.sampled_from(_train_settings()), value=TEXT)
@example("epochs", "inf")
@example("epochs", ".nan")
def test_train_takes_any_set_value_in_one_line(workdir, name, value):
    run = workdir / "run"
    # an unknown setting after the fuzzed one: refused before any training
    argv = ["train", "--preset", "smoke", "--run-dir", str(run), "--set", f"{name}={value}"]
    code, err = _cli([*argv, "--set", "zz_not_a_setting=1"])
    _assert_result_or_user_error(code, err)
    assert code == 2 and not run.exists()


EVALUATION_FLAGS = {
    "predict": ["--grid", "--k-max", "--prior", "--box-size", "--fov", "--method", "--device"],
    "evaluate": ["--count", "--seed", "--k-max", "--device", "--dataset"],
    "compare": ["--count", "--seed", "--device", "--datasets"],
}


@FUZZ
@given(
    verb_flag=st.sampled_from([(v, f) for v, fs in EVALUATION_FLAGS.items() for f in fs]),
    value=TEXT,
)
def test_evaluation_verbs_take_any_value_in_one_line(workdir, verb_flag, value):
    verb, flag = verb_flag
    missing = workdir / "missing"
    base = {
        "predict": ["--maps", str(missing / "maps.zarr"), "--out", str(missing / "p.csv")],
        "evaluate": ["--dataset", "grf", "--out", str(missing / "ev")],
        "compare": ["--datasets", "grf", "--out", str(missing / "t.csv")],
    }[verb]
    code, err = _cli([verb, *base, f"{flag}={value}"])
    _assert_result_or_user_error(code, err)
    assert not missing.exists()


# ---------------------------------------------------------------------------------------------
# Damaged files through engine.data.open_spec
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(workdir):
    """Small valid datasets of every file format, by name: (folder, spec relative to it)."""
    from engine.physics import slabs

    root = workdir / "pristine"
    da = slabs.generate(FieldParams(size=16, box_size=64.0, count=2))
    rng = np.random.default_rng(0)
    sets = {}
    for suffix in (".zarr", ".nc"):
        (root / suffix[1:]).mkdir(parents=True)
        slabs.save(da, root / suffix[1:] / f"maps{suffix}")
        sets[suffix[1:]] = f"{{}}/maps{suffix}"
    cam = root / "camels"
    cam.mkdir()
    np.save(cam / "Maps_Mtot_IllustrisTNG_LH_z=0.00.npy", rng.random((15, 16, 16)) + 0.1)
    (cam / "params_LH_IllustrisTNG.txt").write_text(
        "# Om sigma8 SN1 AGN1 SN2 AGN2\n0.3 0.8 1 1 1 1\n"
    )
    sets["camels"] = "camels:{}/Maps_Mtot_IllustrisTNG_LH_z=0.00.npy?delta=true"
    folder = root / "folder"
    folder.mkdir()
    for i in range(2):
        np.save(folder / f"m{i}.npy", rng.random((16, 16)).astype(np.float32))
    (folder / "labels.csv").write_text("file,omega_m,sigma8\nm0.npy,0.3,0.8\nm1.npy,0.2,0.7\n")
    sets["folder"] = "folder:{}?box_size=25"
    qj = root / "quijote"
    for i in range(2):
        (qj / str(i)).mkdir(parents=True)
        np.save(qj / str(i) / "df_m_16_CIC_z=0.npy", rng.random((16, 16, 16)).astype(np.float32))
    (qj / "latin_hypercube_params.txt").write_text("0.3 0.05 0.7 0.96 0.8\n0.2 0.05 0.7 0.96 0.7\n")
    sets["quijote"] = "quijote:{}?box=100&thickness=25"
    return root, sets


def _damage(data: bytes, how: str, where: float, seed: int) -> bytes:
    """``data`` emptied, truncated at fraction ``where``, overwritten with random bytes, or with
    a few bytes changed from ``where`` on."""
    rng = np.random.default_rng(seed)
    if how == "empty":
        return b""
    if how == "truncate":
        return data[: int(where * len(data))]
    if how == "random":
        return rng.bytes(max(1, int(where * 2 * len(data))))
    b = bytearray(data)
    start = int(where * len(b))
    for i in range(start, min(len(b), start + 1 + seed % 16)):
        b[i] = int(rng.integers(256))
    return bytes(b)


_copies = itertools.count()


@FUZZ
@given(
    dataset=st.sampled_from(["zarr", "nc", "camels", "folder", "quijote"]),
    pick=st.integers(0, 10**6),
    how=st.sampled_from(["empty", "truncate", "random", "flip"]),
    where=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_damaged_files_open_or_fail_in_one_line(pristine, dataset, pick, how, where, seed):
    from engine.data import open_spec

    root, sets = pristine
    copy = root.parent / f"copy{next(_copies)}"  # a new path: no cached file handles
    shutil.copytree(root / dataset, copy)
    files = sorted(p for p in copy.rglob("*") if p.is_file())
    victim = files[pick % len(files)]
    victim.write_bytes(_damage(victim.read_bytes(), how, where, seed))
    try:
        da = open_spec(sets[dataset].format(copy))
        da.load()
    except ConfigError as exc:
        _one_line(exc)
        event("refused")  # (--hypothesis-show-statistics shows how many)
    else:
        assert da.ndim >= 3 and "sample" in da.dims
        event("opened")
    finally:
        shutil.rmtree(copy, ignore_errors=True)


@FUZZ
@given(
    dataset=st.sampled_from(["zarr", "nc"]),
    pick=st.integers(0, 10**6),
    how=st.sampled_from(["empty", "truncate", "random", "flip"]),
    where=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_predict_on_damaged_maps_files_is_a_result_or_one_line(
    pristine, dataset, pick, how, where, seed
):
    root, sets = pristine
    copy = root.parent / f"copy{next(_copies)}"
    shutil.copytree(root / dataset, copy)
    files = sorted(p for p in copy.rglob("*") if p.is_file())
    victim = files[pick % len(files)]
    victim.write_bytes(_damage(victim.read_bytes(), how, where, seed))
    maps = sets[dataset].format(copy)
    try:
        code, err = _cli(["predict", "--maps", maps, "--out", str(copy / "p.csv"), "--grid", "8"])
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    _assert_result_or_user_error(code, err)
    event(f"exit code {code}")


def _option_targets() -> list[tuple[str, str]]:
    from engine.data import camels, folder, quijote, synthetic

    generated = ("seed", "omega_m", "sigma8", "noise", "smoothing", "redshift", "box_size")
    return (
        [("camels", o) for o in camels.OPTIONS]
        + [("folder", o) for o in folder.OPTIONS]
        + [("quijote", o) for o in quijote.OPTIONS]
        + [("zarr", o) for o in synthetic.FILE_OPTIONS]
        + [("grf", o) for o in generated]
        + [(d, "not_an_option") for d in ("camels", "folder", "quijote", "zarr", "grf")]
    )


@FUZZ
@given(target=st.sampled_from(_option_targets()), value=TEXT)
def test_spec_options_take_any_value_in_one_line(pristine, target, value):
    from engine.data import open_spec

    root, sets = pristine
    dataset, option = target
    if dataset == "grf":
        spec, options = "grf", {"count": "2", "size": "16", option: value}
    else:
        spec, options = sets[dataset].format(root / dataset), {option: value}
    try:
        open_spec(spec, **options).load()
    except ConfigError as exc:
        _one_line(exc)
        event("refused")
    else:
        event("opened")
