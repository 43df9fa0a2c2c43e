"""Helpers shared by the native-format readers of :mod:`engine.data` (options, labels, splits).

Options of a spec arrive as strings; these functions turn them into numbers or flags and raise a
one-line :class:`~engine.params.ConfigError` naming the dataset and the option when they cannot.

Splits by simulation (:func:`split_groups`)
-------------------------------------------
Readers of data made of several maps per simulation (CAMELS: 15 maps; Quijote: several slabs)
split by **simulation**, never by map, so that no simulation has maps in two splits: the
simulations 0 … S−1 are permuted with ``numpy.random.default_rng(SPLIT_SEED)`` and the first
⌊0.8 S⌋ go to ``train``, the next ⌊0.1 S⌋ to ``val`` and the rest (≈ 10 %) to ``test`` — the
fractions of :data:`engine.data.store.DEFAULT_SPLIT`. The permutation depends on S only, so a
file always gets the same split. ``all`` keeps every simulation in file order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import numpy as np

from engine.params import ConfigError

#: Seed of the permutation of simulations behind the splits (fixed: same file ⇒ same split).
SPLIT_SEED = 20240905
#: Split fractions (train, val); test takes the rest.
SPLIT_FRACTIONS = (0.8, 0.1)
#: Allowed values of the ``split`` option.
SPLITS = ("train", "val", "test", "all")

#: Column names of parameter tables → the project's names (compared case-insensitively, with
#: "-" and " " read as "_"). Unknown columns keep their own name.
LABEL_ALIASES = {
    "om": "omega_m",
    "omega_m": "omega_m",
    "omegam": "omega_m",
    "omega_matter": "omega_m",
    "sigma8": "sigma8",
    "sigma_8": "sigma8",
    "s8": "sigma8",
    "ob": "omega_b",
    "omega_b": "omega_b",
    "omegab": "omega_b",
    "h": "h",
    "ns": "n_s",
    "n_s": "n_s",
    "sn1": "A_SN1",
    "a_sn1": "A_SN1",
    "sn2": "A_SN2",
    "a_sn2": "A_SN2",
    "agn1": "A_AGN1",
    "a_agn1": "A_AGN1",
    "agn2": "A_AGN2",
    "a_agn2": "A_AGN2",
}


def label_name(column: str) -> str:
    """The project's name of a parameter column (``Om`` → ``omega_m``, ``sigma_8`` → ``sigma8``).

    Unknown names are kept (non-identifier characters replaced by ``_``).
    """
    key = re.sub(r"[\s\-]+", "_", column.strip()).lower()
    if key in LABEL_ALIASES:
        return LABEL_ALIASES[key]
    return re.sub(r"\W+", "_", column.strip()) or "column"


def reject_unknown(where: str, unknown: Mapping[str, object], allowed: Iterable[str]) -> None:
    """Raise ConfigError for the first unknown option, listing the allowed ones."""
    if unknown:
        raise ConfigError(
            f"{where}: unknown option {next(iter(unknown))!r}; allowed: {', '.join(allowed)}"
        )


def as_int(value, name: str, where: str, low: int = 1, high: int | None = None) -> int:
    """``int(value)`` within [low, high], else ConfigError naming ``name``."""
    try:
        n = int(str(value).strip())
    except ValueError:
        n = None
    if n is None or n < low or (high is not None and n > high):
        bound = f"an integer >= {low}" + ("" if high is None else f" and <= {high}")
        raise ConfigError(f"{where}: {name}={value!r} must be {bound}")
    return n


def as_float(value, name: str, where: str, low: float | None = None, high=None) -> float:
    """``float(value)``, finite, in (low, high] when given, else ConfigError naming ``name``."""
    try:
        x = float(str(value).strip())
    except ValueError:
        x = math.nan
    ok = math.isfinite(x) and (low is None or x > low) and (high is None or x <= high)
    if not ok:
        rng = "" if low is None else f" > {low:g}"
        rng += "" if high is None else f" and <= {high:g}"
        raise ConfigError(f"{where}: {name}={value!r} must be a finite number{rng}")
    return x


def as_bool(value, name: str, where: str) -> bool:
    """``true/false/1/0/yes/no`` → bool, else ConfigError naming ``name``."""
    s = str(value).strip().lower()
    if s in ("true", "1", "yes", "on"):
        return True
    if s in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{where}: {name}={value!r} must be true or false")


def as_count(value, where: str) -> int | None:
    """The ``count`` option: None when not given, else an integer >= 1 (ConfigError otherwise)."""
    return None if value is None else as_int(value, "count", where)


def as_split(value, where: str) -> str:
    """Check a ``split`` option (one of :data:`SPLITS`)."""
    s = "all" if value is None else str(value).strip()
    if s not in SPLITS:
        raise ConfigError(f"{where}: split={value!r} is not allowed: one of {', '.join(SPLITS)}")
    return s


def split_groups(n_groups: int, split: str) -> np.ndarray:
    """Indices of the simulations (groups) in a split, sorted (module docstring for the rule).

    Parameters
    ----------
    n_groups : int
        Number of simulations S >= 1.
    split : {"train", "val", "test", "all"}

    Returns
    -------
    numpy.ndarray (S_split,) int64, ascending; possibly empty for tiny S.
    """
    if split == "all":
        return np.arange(n_groups, dtype=np.int64)
    perm = np.random.default_rng(SPLIT_SEED).permutation(n_groups)
    n_train = int(math.floor(SPLIT_FRACTIONS[0] * n_groups))
    n_val = int(math.floor(SPLIT_FRACTIONS[1] * n_groups))
    parts = {
        "train": perm[:n_train],
        "val": perm[n_train : n_train + n_val],
        "test": perm[n_train + n_val :],
    }
    return np.sort(parts[split]).astype(np.int64)


def split_simulations(n_sims: int, split: str, where: str) -> np.ndarray:
    """Indices of the simulations kept by ``split`` (:func:`split_groups`), never empty.

    Parameters
    ----------
    n_sims : int
        Number of simulations S >= 1.
    split : {"train", "val", "test", "all"}
    where : str
        How the dataset is named in messages.

    Returns
    -------
    numpy.ndarray (S_split,) int64, ascending, S_split >= 1.

    Raises
    ------
    ConfigError
        No simulation falls in ``split`` (tiny S), naming ``where``, the split and S.
    """
    sims = split_groups(n_sims, split)
    if sims.size == 0:
        raise ConfigError(f"{where} has no simulations in split {split!r} ({n_sims} in all)")
    return sims


def xy_coords(centres: np.ndarray, units: str) -> dict[str, tuple]:
    """``x`` and ``y`` coords of square maps: the pixel centres (n,) in ``units``, both axes."""
    return {"x": ("x", centres, {"units": units}), "y": ("y", centres, {"units": units})}


def label_coords(
    coords: dict[str, tuple], columns: list[str], table: np.ndarray, rows: np.ndarray
) -> None:
    """Add one per-sample coord per table column (row ``rows[i]`` for sample i), in place.

    Parameters
    ----------
    coords : dict
        Coords being built; a column whose name is already a coord is skipped.
    columns : list of str (C,)
        Column names of ``table`` (e.g. from :func:`read_table`).
    table : numpy.ndarray (R, C) float64
        Parameter table, one row per simulation.
    rows : numpy.ndarray (S,) int
        Table row of each sample.
    """
    for j, col in enumerate(columns):
        if col not in coords:
            coords[col] = ("sample", table[rows, j])


def read_table(path, where: str) -> tuple[list[str], np.ndarray]:
    """A whitespace-separated numeric table with a ``#`` header line of column names.

    The header is the last comment line before the data (e.g. ``# Om sigma8 SN1 AGN1 SN2
    AGN2`` of the CAMELS tables, ``# Omega_m Omega_b h n_s sigma_8`` of Quijote's); its names are
    mapped by :func:`label_name`. Without a header the columns are named ``col0``, ``col1``, ….

    Returns
    -------
    names : list of str (C,)
    values : numpy.ndarray (R, C) float64

    Raises
    ------
    ConfigError
        Missing or unreadable file, non-numeric or ragged rows, NaN/inf values, no rows, or a
        header whose number of names differs from the number of columns.
    """
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{where}: parameter file {str(p)!r} does not exist")
    header: list[str] | None = None
    rows: list[list[float]] = []
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                s = line.strip()
                if not s:
                    continue
                if s.startswith("#"):
                    if not rows:
                        names = s.lstrip("#").replace(",", " ").split()
                        header = names or header
                    continue
                try:
                    rows.append([float(v) for v in s.replace(",", " ").split()])
                except ValueError:
                    raise ConfigError(
                        f"parameter file {str(p)!r} line {lineno} is not numeric: {s[:60]!r}"
                    ) from None
    except OSError as exc:
        raise ConfigError(f"parameter file {str(p)!r} is not readable: {exc}") from None
    if not rows:
        raise ConfigError(f"parameter file {str(p)!r} has no rows of numbers")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ConfigError(f"parameter file {str(p)!r} has rows of different lengths {widths}")
    values = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ConfigError(f"parameter file {str(p)!r} holds NaN or inf values")
    width = values.shape[1]
    if header is None:
        names = [f"col{j}" for j in range(width)]
    elif len(header) != width:
        raise ConfigError(
            f"parameter file {str(p)!r}: header names {len(header)} columns but rows have {width}"
        )
    else:
        names = [label_name(n) for n in header]
    return names, values


def first_line(exc: BaseException) -> str:
    """First line of an exception's message (or its type name)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_finite(block: np.ndarray, where: str, first_index: int = 0, what: str = "map") -> None:
    """Raise ConfigError naming the first sample of ``block`` (B, …) holding NaN or inf."""
    bad = ~np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0]) + first_index
        raise ConfigError(f"{where}: {what} {i} holds NaN or inf values")


class LazyMaps:
    """Factory of lazily indexed (S, …) float32 arrays for :class:`xarray.Variable`.

    ``read(rows)`` returns the samples ``rows`` (an int64 array of sample indices) in full,
    shape ``(len(rows), *shape[1:])``; xarray's outer indexing of the other axes is applied
    afterwards, so only the requested samples are ever read from disk.
    """

    @staticmethod
    def variable(dims: tuple[str, ...], shape: tuple[int, ...], read):
        """An ``xarray.Variable`` of ``dims`` whose data are read by ``read`` when used."""
        import xarray as xr
        from xarray.backends import BackendArray
        from xarray.core import indexing

        class _Backend(BackendArray):
            def __init__(self):
                self.shape = tuple(shape)
                self.dtype = np.dtype(np.float32)

            def __getitem__(self, key):
                return indexing.explicit_indexing_adapter(
                    key, self.shape, indexing.IndexingSupport.OUTER, self._raw
                )

            def _raw(self, key: tuple) -> np.ndarray:
                sel = np.arange(self.shape[0])[key[0]]
                block = np.asarray(read(np.atleast_1d(sel).astype(np.int64)), dtype=np.float32)
                rest = key[1:]
                for axis in range(len(rest), 0, -1):  # outer indexing, last axis first
                    k = rest[axis - 1]
                    if isinstance(k, slice):
                        block = block[(slice(None),) * axis + (k,)]
                    else:
                        block = np.take(block, k, axis=axis)
                return block[0] if np.ndim(sel) == 0 else block

        return xr.Variable(dims, indexing.LazilyIndexedArray(_Backend()))


def open_npy(path, where: str) -> np.ndarray:
    """Memory-map a float .npy array (nothing is read yet); callers check its shape.

    Parameters
    ----------
    path : Path
    where : str
        How the file is named in messages, e.g. ``"CAMELS maps 'x.npy'"``.

    Returns
    -------
    numpy.ndarray (memmap) of a floating dtype.

    Raises
    ------
    ConfigError
        Missing file, not a readable .npy, or not a float array.
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{where} does not exist")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError / OSError / UnpicklingError
        raise ConfigError(f"{where} is not a readable .npy file: {first_line(exc)}") from None
    if not np.issubdtype(arr.dtype, np.floating):
        raise ConfigError(f"{where} must hold a float array, got {arr.dtype} {arr.shape}")
    return arr
