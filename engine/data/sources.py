"""Training data: maps with labels, generated on the training device or read from any dataset.

A task (:mod:`engine.tasks`) trains on a *source* of labelled maps:

* :class:`GeneratedMaps` — maps of a kind of :mod:`engine.kinds` made on the fly on the training
  device, their labels (omega_m, sigma8) uniform in a prior box (or among fixed prior points);
* :class:`LabelledMaps` — maps of any dataset spec of :mod:`engine.data` (our ``.zarr``/``.nc``
  files, ``camels:``, ``quijote:``, ``folder:``, ``des:``) with per-sample label coords, read
  once per split. The splits are the readers' own, by simulation (no simulation is in two
  splits); a file of ``python -m engine fields`` without splits is split map by map with the
  same fixed rule (:func:`engine.data._common.split_groups`).

Both expose the label box ``low``/``high`` (physical units; targets are normalised to [0, 1]
by it), the fixed input normalisation ``scale`` (map units; one number, or one per channel) and
the pixel size ``pixel`` (the kind's length unit: Mpc/h, or arcmin for κ).

Seeds
-----
:func:`derive_seed` makes the independent random streams of a run from its seed: ``STREAM_INIT``
(network initialisation), ``STREAM_TRAIN`` (the batch of each step), ``STREAM_VAL`` (the fixed
validation maps), ``STREAM_POINTS`` (fixed prior points), ``STREAM_DATA`` (the per-pass
permutation of a dataset's train split) and ``STREAM_EVAL`` (the end-of-training test maps).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.kinds import get_kind
from engine.params import PARAM_NAMES, ConfigError, to_dict, user_settings

#: Seed streams of :func:`derive_seed`.
STREAM_INIT, STREAM_TRAIN, STREAM_VAL, STREAM_POINTS, STREAM_DATA, STREAM_EVAL = range(6)
#: Per-sample coords that are bookkeeping, never labels.
NOT_LABELS = ("simulation", "map_index", "split", "tile", "sample", "axis", "slab", "slab_start")


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``(seed, *keys)`` (numpy ``SeedSequence``); pure function."""
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def epoch_rows(
    perms: dict[int, torch.Tensor], seed: int, count: int, start: int, n: int
) -> torch.Tensor:
    """Rows of a split of ``count`` samples for global sample positions ``start .. start+n-1``
    of a training stream: each pass over the split is a permutation seeded with
    ``derive_seed(seed, STREAM_DATA, pass)``, so a resumed run continues the same order.

    Parameters
    ----------
    perms : dict
        Cache pass → permutation ``(count,) int64``, updated in place (at most three kept).
    seed, count, start, n : int

    Returns
    -------
    torch.Tensor (n,) int64
    """
    pos = torch.arange(start, start + n)
    passes = pos // count
    rows = torch.empty(n, dtype=torch.long)
    for e in passes.unique().tolist():
        if e not in perms:
            if len(perms) > 2:
                perms.pop(min(perms))
            gen = torch.Generator().manual_seed(derive_seed(seed, STREAM_DATA, e))
            perms[e] = torch.randperm(count, generator=gen)
        sel = passes == e
        rows[sel] = perms[e][pos[sel] % count]
    return rows


def scale_maps(maps: torch.Tensor, scale) -> torch.Tensor:
    """``maps (B, C, N, N)`` divided by ``scale``: a float, or a (C,) sequence, one per channel."""
    if isinstance(scale, float | int):
        return maps / float(scale)
    s = torch.as_tensor(scale, dtype=maps.dtype, device=maps.device)
    return maps / s.view(1, -1, 1, 1)


class GeneratedMaps:
    """Maps of one kind generated on the fly, labels uniform in a prior box.

    Parameters
    ----------
    kind : str
        A flat kind with a torch hot path (``grf``, ``lognormal``, ``2lpt``, ``kappa``).
    settings : param.Parameterized
        The kind's checked settings (:meth:`engine.kinds.Kind.new_settings`).
    low, high : sequence of float
        Prior box of (omega_m, sigma8), dimensionless.
    prior_points : int
        0: every map draws its own point; else the maps' points are drawn among this many fixed
        points, themselves uniform in the box from ``derive_seed(seed, STREAM_POINTS)``.
    seed : int
    device : torch.device

    Raises
    ------
    ConfigError
        The kind cannot be generated on the fly.
    """

    names = PARAM_NAMES
    channels = 1
    dataset = None

    def __init__(self, kind, settings, low, high, prior_points: int, seed: int, device):
        self.kind = kind
        self.settings = settings
        self.low, self.high = [float(v) for v in low], [float(v) for v in high]
        self.device = torch.device(device)
        k = get_kind(kind)
        fields = getattr(settings, "fields", None)
        self.channels = len(str(fields).split(",")) if fields else 1
        scale = k.map_scale(settings)
        self.scale = float(scale) if isinstance(scale, float | int) else [float(v) for v in scale]
        self.pixel = k.pixel_size(settings)
        self.points = None
        if prior_points:
            gen = torch.Generator().manual_seed(derive_seed(seed, STREAM_POINTS))
            self.points = torch.rand((prior_points, 2), generator=gen).to(self.device)
        self._low = torch.tensor(self.low, dtype=torch.float32, device=self.device)
        self._high = torch.tensor(self.high, dtype=torch.float32, device=self.device)

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` maps and their labels.

        Returns
        -------
        maps : torch.Tensor (n, C, N, N) float32
            Raw maps (map units), on the source's device (C = :attr:`channels`).
        y : torch.Tensor (n, 2) float32
            Labels normalised to the box, in [0, 1).
        """
        if self.points is not None:
            idx = torch.randint(len(self.points), (n,), generator=generator, device=self.device)
            y = self.points[idx]
        else:
            y = torch.rand((n, 2), generator=generator, device=self.device)
        theta = self._low + (self._high - self._low) * y
        maps = get_kind(self.kind).generate_batch(
            self.settings, theta[:, 0], theta[:, 1], generator, self.device
        )
        return (maps.unsqueeze(1) if maps.ndim == 3 else maps), y

    def describe(self) -> dict[str, Any]:
        """Plain summary for ``config.json``."""
        return {
            "kind": self.kind,
            "dataset": None,
            "names": list(self.names),
            "prior_low": self.low,
            "prior_high": self.high,
            "prior_points": 0 if self.points is None else len(self.points),
            "map_scale": self.scale,
            "channels": self.channels,
        }

    def map_config(self) -> dict[str, Any]:
        """``{"kind": ..., setting: value}``: the settings of the maps (for checkpoints)."""
        return {"kind": self.kind, **to_dict(self.settings)}


def with_split(spec: str, split: str) -> str:
    """``spec`` with the option ``split=<split>`` added (``?`` or ``&``)."""
    return f"{spec}{'&' if '?' in spec else '?'}split={split}"


def _labels(da, names: Sequence[str] | None) -> list[str]:
    """The label coords to use: ``names``, or with None every numeric per-sample coord."""
    have = [
        str(c)
        for c, v in da.coords.items()
        if v.dims == ("sample",) and c not in NOT_LABELS and np.issubdtype(v.dtype, np.number)
    ]
    if names is None:  # every label: omega_m, sigma8 first, then the others in the data's order
        if not have:
            raise ConfigError(f"dataset {da.attrs.get('source', '')!r} has no label coords")
        return [n for n in PARAM_NAMES if n in have] + [n for n in have if n not in PARAM_NAMES]
    missing = [n for n in names if n not in have]
    if missing:
        raise ConfigError(
            f"dataset {da.attrs.get('source', '')!r} has no label {missing[0]!r}; its labels: "
            + (", ".join(have) or "none")
        )
    return list(names)


class LabelledMaps:
    """Maps of a dataset spec with per-sample labels, split by simulation (module docstring).

    Parameters
    ----------
    spec : str
        Any dataset spec of :func:`engine.data.open_spec` except generated kinds, without a
        ``split`` option (the source reads train, val and test itself).
    names : sequence of str or None
        Label coords to use as targets (e.g. ``("omega_m", "sigma8")``); None: every numeric
        per-sample coord of the data (e.g. the six CAMELS parameters).
    datasets_file : str, optional
        Datasets YAML for short names.

    Attributes
    ----------
    kind, names, channels, low, high, scale, pixel
        ``low``/``high``: the dataset's ``<name>_range`` attrs when present (datasets of
        ``python -m engine dataset``), else the min/max of the train split's labels. ``scale``:
        the dataset's ``map_scale`` attr, else the standard deviation of the train maps (per
        channel with several channels), a fixed normalisation recorded in checkpoints.

    Raises
    ------
    ConfigError
        Unreadable spec, a ``split`` option in it, missing labels, a label that does not vary,
        maps that are not square 2D maps, an empty train or val split.
    """

    def __init__(self, spec: str, names=None, datasets_file=None):
        from engine.data import open_spec, parse_spec, resolve_name

        self.dataset = spec
        full = resolve_name(spec, datasets_file)
        prefix, _target, options = parse_spec(full)
        if "split" in options:
            raise ConfigError(
                f"dataset={spec!r}: training reads the train, val and test splits itself; "
                "remove split= from the spec"
            )
        self._spec, self._open = full, open_spec
        self._split_by_map = False
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        try:
            head = open_spec(with_split(full, "train"))
        except ConfigError as exc:
            if "has no splits" not in str(exc):
                raise
            self._split_by_map = True
            head = open_spec(full)
        self.attrs = dict(head.attrs)
        if head.dims[-2:] != ("y", "x") or head.sizes["y"] != head.sizes["x"] or head.ndim > 4:
            raise ConfigError(
                f"dataset={spec!r} holds samples of dims {head.dims}; training needs square maps "
                "(sample, y, x) or (sample, channel, y, x)"
            )
        self.kind = str(self.attrs.get("kind", prefix))
        self.names = tuple(_labels(head, names))
        self.channels = int(head.sizes.get("channel", 1))
        x = head["x"].values
        self.pixel = float(x[1] - x[0]) if len(x) > 1 else 1.0
        self._head = head
        maps, theta = self.split("train")
        self.low, self.high = self._box(theta)
        if "map_scale" in self.attrs and self.channels == 1:
            self.scale = float(self.attrs["map_scale"])
        else:
            std = maps.double().std(dim=(0, 2, 3)).tolist()
            self.scale = float(std[0]) if self.channels == 1 else [float(s) for s in std]
        self.split("val")

    def _box(self, theta: torch.Tensor) -> tuple[list[float], list[float]]:
        low, high = [], []
        for j, name in enumerate(self.names):
            rng = self.attrs.get(f"{name}_range")
            lo, hi = (
                (float(rng[0]), float(rng[1]))
                if rng is not None
                else (float(theta[:, j].min()), float(theta[:, j].max()))
            )
            if not lo < hi:
                raise ConfigError(
                    f"dataset={self.dataset!r} does not vary {name} (range [{lo:g}, {hi:g}]); "
                    "it cannot be a training target"
                )
            low.append(lo)
            high.append(hi)
        return low, high

    def _read(self, name: str):
        if not self._split_by_map:
            return self._head if name == "train" else self._open(with_split(self._spec, name))
        from engine.data._common import split_groups

        head = self._head
        if "simulation" in head.coords and head["simulation"].dims == ("sample",):
            # maps cut from one simulation (e.g. the slabs of a pm run) stay in one split
            sims, which = np.unique(head["simulation"].values, return_inverse=True)
            keep = np.isin(which.reshape(-1), split_groups(len(sims), name))
            return head.isel(sample=np.flatnonzero(keep))
        return head.isel(sample=split_groups(head.sizes["sample"], name))

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw maps ``(n, C, N, N) float32`` and labels ``(n, P) float64`` of a split (CPU,
        loaded once).

        Raises
        ------
        ConfigError
            An empty split.
        """
        if name not in self._splits:
            try:
                da = self._read(name)
                if da.sizes["sample"] == 0:
                    raise ConfigError(f"no maps in split {name!r}")
            except ConfigError as exc:
                hint = (
                    " (training needs a train and a val split; the readers split by simulation "
                    "80/10/10 %, so a dataset needs at least 10 simulations, or files for a "
                    "folder without a simulation column)"
                    if "split" in str(exc)
                    else ""
                )
                raise ConfigError(f"dataset={self.dataset!r}: {exc}{hint}") from None
            maps = np.asarray(da.values, dtype=np.float32)
            if maps.ndim == 3:
                maps = maps[:, None]
            theta = np.stack([np.asarray(da[n].values, np.float64) for n in self.names], axis=1)
            self._splits[name] = torch.from_numpy(maps), torch.from_numpy(theta)
        return self._splits[name]

    def describe(self) -> dict[str, Any]:
        """Plain summary for ``config.json``."""
        n = {s: len(v[0]) for s, v in self._splits.items()}
        return {
            "kind": self.kind,
            "dataset": self.dataset,
            "names": list(self.names),
            "prior_low": self.low,
            "prior_high": self.high,
            "prior_points": 0,
            "map_scale": self.scale,
            "channels": self.channels,
            "maps": n,
        }

    def map_config(self) -> dict[str, Any]:
        """``{"kind": ..., setting: value}`` of the maps, from the attrs (the kind's settings
        class when the kind is one of :mod:`engine.kinds`, else the attrs that describe the
        pixel grid)."""
        out: dict[str, Any] = {"kind": self.kind}
        names: list[str] = ["size", "box_size", "fov", "thickness", "redshift", "units"]
        with contextlib.suppress(ConfigError):
            names = user_settings(get_kind(self.kind).settings_class())
        for name in names:
            if name in self.attrs and name not in ("seed", "count", *PARAM_NAMES):
                value = self.attrs[name]
                value = value.item() if hasattr(value, "item") else value
                out[name] = None if (name == "mask" and value == "") else value
        if self.channels > 1 and "fields" in self.attrs:
            out["fields"] = self.attrs["fields"]
        return out


def is_generated(spec: str) -> bool:
    """True when ``spec`` names a generated kind (``grf``, ``lognormal?size=64``, ...)."""
    from engine.data import parse_spec

    return bool(spec) and not Path(spec).exists() and parse_spec(spec)[0] == "synthetic"
