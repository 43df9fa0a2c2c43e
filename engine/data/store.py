"""On-disk datasets: maps with per-sample parameters from a prior box and a fixed split.

``python -m engine dataset --kind grf --omega-m 0.1:0.5 --sigma8 0.6:1.0 --size 64 --count 10000
--split 0.8,0.1,0.1 --seed 0 --out data.zarr`` writes one zarr store (:func:`write_dataset`):

* the kind's variable (``delta`` for grf/lognormal/2lpt, ``kappa`` for kappa) with the kind's
  own dims, coords and attrs (see :mod:`engine.kinds`), e.g. ``(sample, y, x) float32``;
* per-sample coords ``omega_m``, ``sigma8`` (dimensionless), uniform in the prior box given as
  ranges ``LO:HI`` (a plain number keeps that parameter fixed), drawn from the seed
  (:func:`draw_parameters`);
* per-sample coord ``split`` (int8; CF ``flag_values`` 0, 1, 2 / ``flag_meanings`` "train val
  test"): a fixed random assignment from the seed with the given fractions (:func:`split_labels`),
  made per *simulation*: kinds that cut several maps from one simulation (``pm`` with
  ``--slabs S``: maps b S … b S + S − 1 are the slabs of simulation b, per-sample coords
  ``simulation``, ``slab``, ``slab_start``) keep every simulation's maps in one split, and their
  parameters are drawn per simulation (:func:`draw_parameters`); ``--count`` counts maps;
* attrs of the kind plus ``seed`` (the dataset's), ``count``, ``chunk``, ``split_fractions``,
  ``omega_m_range`` and ``sigma8_range`` ([low, high], the prior box) and, for flat maps,
  ``map_scale`` (pixel std at Ω_m = 0.3, σ8 = 0.8 of the kind's theory: the fixed input
  normalisation that training uses, as on the fly).

The samples are generated and appended chunk by chunk (chunk ``i`` from its own seed derived from
``(seed, i)``, so the content depends on ``seed`` and ``chunk`` only, not on the device's batch
size) with a tqdm progress bar, into a temporary directory next to the output that is moved into
place with ``os.replace`` only when complete: an error or Ctrl-C leaves nothing half-written. An
existing output is replaced only with ``overwrite`` (``--overwrite``), and only then; a dataset
larger than the free disk space is refused before any work (:mod:`engine.outputs`).

Cost: kinds whose theory is cached per cosmology pay it per sample here — kappa computes one
pyccl C_ℓ (~0.2-0.4 s) per sample, so large kappa datasets take a while (once; the progress bar
shows it) — which is why training on the fly uses a finite set of prior points for kappa.

Range parsing (:func:`pop_ranges`) is shared with the ``fields`` verb, where ``--omega-m 0.1:0.5``
also means uniform per sample. Training reads the splits with :func:`load_split`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import param
import xarray as xr

from engine.params import ConfigError, check_value, to_dict

#: Split names, in the order of their codes in the ``split`` coord.
SPLITS = ("train", "val", "test")
#: Default split fractions (train, val, test).
DEFAULT_SPLIT = (0.8, 0.1, 0.1)
#: Settings that may be given as a range ``LO:HI`` (uniform per sample).
RANGE_SETTINGS = ("omega_m", "sigma8")
#: Samples generated and appended per chunk (default of ``--chunk``).
DEFAULT_CHUNK = 64
#: SeedSequence streams of the parameters, the split and the chunks' map seeds.
_STREAM_PARAMS, _STREAM_SPLIT, _STREAM_CHUNK = 101, 102, 103


# ---------------------------------------------------------------------------------------------
# Ranges, parameters, splits
# ---------------------------------------------------------------------------------------------


def parse_range(name: str, value: Any, p: param.Parameter) -> tuple[float, float] | None:
    """``value`` as a range ``(low, high)`` of setting ``name``, or None if it is not a range.

    A range is a string ``"LO:HI"`` or a two-element list/tuple (config files). Both ends are
    checked against the bounds of parameter ``p``.

    Raises
    ------
    ConfigError
        Unparsable ends, ends out of the setting's bounds, or ``LO >= HI``.
    """
    if isinstance(value, str) and ":" in value:
        parts = value.split(":")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        return None
    if len(parts) != 2:
        raise ConfigError(f"{name}={value!r} must be a number or a range LO:HI")
    try:
        lo, hi = (float(v) for v in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be a number or a range LO:HI") from None
    for v in (lo, hi):
        check_value(p, name, v)
    if not lo < hi:
        raise ConfigError(f"{name}={value!r}: the range LO:HI needs LO < HI")
    return lo, hi


def pop_ranges(
    cls: type[param.Parameterized],
    layer: Mapping[str, Any],
    names: Sequence[str] = RANGE_SETTINGS,
) -> tuple[dict[str, Any], dict[str, tuple[float, float]]]:
    """Split a ``{setting: value}`` layer into plain settings and ranges of ``names``.

    Returns
    -------
    rest : dict
        ``layer`` without the range values (for :func:`engine.params.set_values`).
    ranges : dict
        ``{name: (low, high)}`` for each setting of ``names`` given as a range.

    Raises
    ------
    ConfigError
        A malformed or out-of-bounds range (see :func:`parse_range`).
    """
    rest, ranges = {}, {}
    for key, value in layer.items():
        name = str(key).replace("-", "_")
        r = parse_range(name, value, cls.param[name]) if name in names else None
        if r is None:
            rest[key] = value
        else:
            ranges[name] = r
    return rest, ranges


def draw_parameters(
    settings: param.Parameterized, ranges: Mapping[str, tuple[float, float]], count: int, seed: int
) -> dict[str, np.ndarray]:
    """Per-sample parameters ``{name: (count,) float64}`` for :data:`RANGE_SETTINGS`.

    Uniform in ``ranges[name]`` for names given as ranges, drawn from ``seed`` (numpy
    ``SeedSequence([seed, stream])``, independent of the maps' random stream); the scalar
    ``getattr(settings, name)`` for the others. Same seed ⇒ same parameters. For settings with
    ``slabs`` = S > 1 (several maps per simulation, :class:`engine.physics.pm.PMParams`) one
    value is drawn per simulation (⌈count/S⌉ of them) and repeated for its S maps
    (:func:`maps_per_simulation`); S = 1 gives the draws of one value per map.
    """
    per = maps_per_simulation(settings)
    sims = -(-int(count) // per)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM_PARAMS]))
    out = {}
    for name in RANGE_SETTINGS:  # fixed order: the draws do not depend on which are ranges
        u = rng.random(sims)
        if name in ranges:
            lo, hi = ranges[name]
            out[name] = np.repeat(lo + (hi - lo) * u, per)[:count]
        else:
            out[name] = np.full(count, float(getattr(settings, name)))
    return out


def maps_per_simulation(settings: param.Parameterized) -> int:
    """Maps cut from one simulation: the ``slabs`` setting where the kind has it, else 1."""
    return int(getattr(settings, "slabs", 1))


def simulation_split(count: int, per_simulation: int, fractions, seed: int) -> np.ndarray:
    """Split codes (count,) int8 of ``count`` maps, ``per_simulation`` consecutive maps per
    simulation: :func:`split_labels` of the ⌈count/S⌉ simulations, repeated for their maps (so no
    simulation has maps in two splits; S = 1 gives :func:`split_labels` of the maps)."""
    sims = -(-int(count) // int(per_simulation))
    return np.repeat(split_labels(sims, fractions, seed), per_simulation)[:count]


def parse_split(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` (or a sequence) → checked (train, val, test) fractions.

    Raises
    ------
    ConfigError
        Not three numbers, a negative fraction, or fractions not summing to 1 (±1e-6).
    """
    try:
        parts = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        parts = []
    if len(parts) != 3 or any(not math.isfinite(f) or f < 0 for f in parts):
        raise ConfigError(f"--split {text!r} must be three fractions TRAIN,VAL,TEST >= 0")
    if abs(sum(parts) - 1) > 1e-6:
        raise ConfigError(f"--split {text!r}: the fractions must sum to 1, not {sum(parts):g}")
    return parts[0], parts[1], parts[2]


def split_labels(count: int, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Fixed random split of ``count`` samples: (count,) int8 codes into :data:`SPLITS`.

    ``round(f_train * count)`` samples are train, ``round(f_val * count)`` val (at most what is
    left), the rest test; which ones is a permutation drawn from ``seed``.
    """
    n_train = min(round(fractions[0] * count), count)
    n_val = min(round(fractions[1] * count), count - n_train)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM_SPLIT]))
    perm = rng.permutation(count)
    labels = np.full(count, 2, dtype=np.int8)
    labels[perm[:n_train]] = 0
    labels[perm[n_train : n_train + n_val]] = 1
    return labels


def _chunk_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), _STREAM_CHUNK, int(index)]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_dataset(
    kind_name: str,
    settings: param.Parameterized,
    ranges: Mapping[str, tuple[float, float]],
    out: str | Path,
    split: Sequence[float] = DEFAULT_SPLIT,
    chunk: int = DEFAULT_CHUNK,
    device=None,
    progress: bool | None = None,
    overwrite: bool = True,
) -> Path:
    """Generate ``settings.count`` samples of kind ``kind_name`` and write them to ``out`` (.zarr).

    Parameters
    ----------
    kind_name : str
        A kind of :data:`engine.kinds.FIELD_KINDS`.
    settings : the kind's settings
        ``count`` samples from ``seed``; ``omega_m`` / ``sigma8`` are used where not in ranges.
    ranges : mapping
        ``{"omega_m": (low, high), ...}``: uniform per sample (see :func:`draw_parameters`).
    out : str or Path
        Output ``.zarr`` directory, written chunk by chunk into a temporary directory next to it
        and moved into place when complete (:func:`engine.physics.slabs.save`).
    split : (train, val, test) fractions
    chunk : int
        Samples generated and appended per step (also the zarr chunk along ``sample``); rounded
        up to a whole number of simulations (a multiple of ``slabs``) for kinds with several maps
        per simulation.
    device : torch device, optional
        Default: CUDA when available, else CPU.
    progress : bool, optional
        tqdm bar over chunks; default when stderr is a terminal.
    overwrite : bool
        Whether an existing ``out`` may be replaced (only once the new one is complete).

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    ConfigError
        Bad output path (an existing one without ``overwrite``, a missing or unwritable
        directory, more than the free disk space; :func:`engine.outputs.check_output`), split or
        chunk, or bad settings for the kind (before anything is written; the temporary directory
        is removed on any error or interrupt).
    """
    from engine.kinds import FIELD_KINDS, get_kind
    from engine.outputs import check_output
    from engine.physics import slabs

    kind = get_kind(kind_name, FIELD_KINDS)
    out = Path(out)
    if out.suffix != ".zarr":
        raise ConfigError(f"--out {str(out)!r} must end in .zarr (datasets are zarr stores)")
    if chunk < 1:
        raise ConfigError(f"--chunk {chunk} must be >= 1")
    fractions = parse_split(split)
    per_sample = sample_bytes(settings)
    check_output(
        out,
        overwrite=overwrite,
        disk_bytes=int(settings.count) * per_sample,
        memory_bytes=2 * min(chunk, int(settings.count)) * per_sample,
    )
    kind.check_settings(settings)
    count, seed = int(settings.count), int(settings.seed)
    per = maps_per_simulation(settings)
    chunk = per * -(-int(chunk) // per)
    theta = draw_parameters(settings, ranges, count, seed)
    labels = simulation_split(count, per, fractions, seed)
    attrs = {
        "seed": seed,
        "count": count,
        "chunk": int(chunk),
        "split_fractions": list(fractions),
        **{f"{n}_range": [float(theta[n].min()), float(theta[n].max())] for n in RANGE_SETTINGS},
    }
    for name, (lo, hi) in ranges.items():
        attrs[f"{name}_range"] = [lo, hi]
    if progress is None:
        progress = sys.stderr.isatty()
    parts = _dataset_chunks(kind, settings, theta, labels, attrs, chunk, device, progress)
    slabs.save(parts, out, overwrite=overwrite)
    return out


def _dataset_chunks(kind, settings, theta, labels, attrs, chunk, device, progress):
    """The samples of :func:`write_dataset` as DataArrays of ``chunk`` samples, lazily: chunk
    ``i`` drawn from :func:`_chunk_seed` ``(seed, i)``, with the dataset's attrs and split."""
    from tqdm.auto import tqdm

    count, seed = int(settings.count), int(settings.seed)
    starts = range(0, count, chunk)
    for i, start in enumerate(tqdm(starts, disable=not progress, desc="dataset", unit="chunk")):
        sl = slice(start, min(start + chunk, count))
        part = type(settings)(**to_dict(settings))
        part.param.update(count=sl.stop - sl.start, seed=_chunk_seed(seed, i))
        da = kind.generate(
            part,
            device=device,
            omega_m=theta["omega_m"][sl],
            sigma8=theta["sigma8"][sl],
            progress=False,
        )
        if i == 0 and da.dims[1:] == ("y", "x") and kind.scale:
            attrs["map_scale"] = kind.map_scale(settings)
        if "simulation" in da.coords:  # numbered from 0 in each chunk: make them global
            first = start // maps_per_simulation(settings)
            da = da.assign_coords(simulation=da["simulation"] + first)
        da.attrs.update(attrs)
        yield da.assign_coords(
            split=(
                "sample",
                labels[sl],
                {"flag_values": [0, 1, 2], "flag_meanings": " ".join(SPLITS)},
            )
        )


def sample_bytes(settings: param.Parameterized) -> int:
    """Bytes of one written sample of a flat kind's ``settings``: float32 pixels, ``size`` per
    side in ``dim`` dimensions (2 unless the settings have ``dim``: 2lpt volumes) times the
    channels of ``fields`` (pm: "delta,theta" is 2), plus its per-sample coords (omega_m, sigma8
    float64, split int8, and simulation, slab, slab_start 8 bytes each with ``slabs`` > 1).

    For the checks of :func:`engine.outputs.check_output` before anything is generated.
    """
    channels = len(str(getattr(settings, "fields", "delta")).split(","))
    coords = 17 + (24 if maps_per_simulation(settings) > 1 else 0)
    return 4 * channels * int(settings.size) ** int(getattr(settings, "dim", 2)) + coords


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def open_dataset(path: str | Path) -> xr.DataArray:
    """The samples of a dataset written by :func:`write_dataset`, lazily (zarr-backed).

    Returns
    -------
    xarray.DataArray
        The first variable with a ``sample`` dimension, with its ``split`` coord and attrs.

    Raises
    ------
    ConfigError
        Missing path, not a zarr store, no sample variable, or no ``split`` coord (not a dataset
        of ``python -m engine dataset``).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"dataset {str(path)!r} does not exist")
    try:
        ds = xr.open_zarr(path, consolidated=False)
    except Exception as exc:  # zarr/xarray raise many kinds; report one line
        raise ConfigError(
            f"dataset {str(path)!r} is not a readable zarr store: {str(exc).splitlines()[0]}"
        ) from None
    names = [v for v in ds.data_vars if "sample" in ds[v].dims]
    if not names:
        raise ConfigError(f"dataset {str(path)!r} holds no variable with a 'sample' dimension")
    da = ds[names[0]]
    if "split" not in da.coords:
        raise ConfigError(
            f"dataset {str(path)!r} has no 'split' coord: write it with python -m engine dataset"
        )
    return da


def load_split(da: xr.DataArray, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Maps and parameters of one split, in file order (loaded into memory).

    Parameters
    ----------
    da : xarray.DataArray
        From :func:`open_dataset`.
    split : {"train", "val", "test"}

    Returns
    -------
    maps : numpy.ndarray (n, ...) float32
        The samples of the split, e.g. (n, N, N) maps.
    theta : numpy.ndarray (n, 2) float64
        Their (omega_m, sigma8), dimensionless.

    Raises
    ------
    ConfigError
        Unknown split name.
    """
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not allowed: split must be one of {SPLITS}")
    index = np.flatnonzero(da["split"].values == SPLITS.index(split))
    part = da.isel(sample=index)
    theta = np.stack([part[n].values.astype(np.float64) for n in RANGE_SETTINGS], axis=1)
    return np.asarray(part.values, dtype=np.float32), theta.reshape(len(index), 2)
