r"""Labelled image datasets for classifiers: the class names of a dataset's per-sample class
coord, their order and their encoding as indices, and :class:`ClassMaps`, the images and class
names of a dataset by split. Used by the classification task (:mod:`engine.tasks.classification`,
which re-exports these names and holds the settings, the network, the input normalisation, the
augmentation and the objective), the class-conditional diffusion task
(:mod:`engine.tasks.diffusion`) and the classifier evaluations
(:mod:`engine.evaluation.classification`, :mod:`engine.evaluation.lens_eval`).

Data
----
A labelled dataset (setting ``dataset``; no maps on the fly): a ``.zarr``/``.nc`` file of
``python -m engine dataset --kind strong_lens`` (dims ``(sample, y, x)``, per-sample text coord
``substructure``, attrs ``kind``, ``pixel_scale`` in arcsec per pixel), a ``folder:`` of ``.npy``
images with a ``labels.csv`` (``file,substructure``; :mod:`engine.data.folder`), or any spec of
:mod:`engine.data` whose samples carry a per-sample class coord. The setting ``label`` names that
coord (default ``substructure``); its values are read as text (integers become ``"0"``, ``"1"``,
…). Batches come from the train split, validation from the val split, the end-of-training
evaluation from the test split (the readers' splits; a file without splits is split map by map
with :func:`engine.data._common.split_groups`, as for regression).

Classes
-------
The class names and their order (the network's output columns; ``p_<class>`` columns of
``predict``) are fixed once, from the train split, and saved in the task state: the setting
``classes`` when given (comma-separated); else the declared order of the label
(:data:`CLASS_ORDERS`: ``substructure`` → none, cdm, vortex) restricted to the classes present
when every value is one of them; else the sorted unique values. A value of the train, val or
test split outside the classes, a train split of one class, or a val split of fewer than two
classes is refused in one line (:class:`~engine.params.ConfigError`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine.data.sources import with_split
from engine.params import ConfigError, user_settings

#: Declared class orders of known label coords (the output order when the data's classes are
#: among them): the dark-matter substructure of strong-lens images (engine.physics.strong_lens).
CLASS_ORDERS: dict[str, tuple[str, ...]] = {"substructure": ("none", "cdm", "vortex")}


def class_names(text: str) -> tuple[str, ...] | None:
    """``"none, cdm,vortex"`` → ``("none", "cdm", "vortex")``; empty text → None (automatic).

    Raises
    ------
    ConfigError
        Fewer than two names, or a repeated name.
    """
    names = tuple(t.strip() for t in str(text).split(",") if t.strip())
    if not names:
        return None
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"classes={text!r} must be at least two distinct comma-separated names")
    return names


def encode_labels(values: Sequence[str], classes: Sequence[str], where: str) -> torch.Tensor:
    """Class names → indices into ``classes``, ``(n,) int64``.

    Raises
    ------
    ConfigError
        A value that is not one of ``classes`` (one line naming up to three such values, the
        classes, and ``where``).
    """
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in values} - set(index))
    if unknown:
        shown = ", ".join(map(repr, unknown[:3])) + (" …" if len(unknown) > 3 else "")
        raise ConfigError(
            f"{where}: unknown class names {shown}; the classes are {', '.join(classes)}"
        )
    return torch.tensor([index[str(v)] for v in values], dtype=torch.long)


def label_values(da, label: str, where: str) -> np.ndarray:
    """The per-sample class coord ``label`` of a DataArray as text, ``(n,) str``.

    Integer classes become their decimal text; floats that are integers too (``1.0`` → ``"1"``).

    Raises
    ------
    ConfigError
        No such per-sample coord (one line listing the per-sample coords there are), or empty or
        non-finite values.
    """
    coord = da.coords.get(label)
    if coord is None or coord.dims != ("sample",):
        have = [str(c) for c, v in da.coords.items() if v.dims == ("sample",)]
        raise ConfigError(
            f"{where} has no class coord {label!r} (set label=NAME); its per-sample coords: "
            + (", ".join(have) or "none")
        )
    raw = np.asarray(coord.values)
    if np.issubdtype(raw.dtype, np.floating):
        if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
            raise ConfigError(f"{where}: class coord {label!r} holds non-integer numbers")
        raw = raw.astype(np.int64)
    values = np.array([str(v).strip() for v in raw.tolist()], dtype=str)
    if values.size and (values == "").any():
        raise ConfigError(f"{where}: class coord {label!r} holds empty names")
    return values


def choose_classes(
    values: np.ndarray, label: str, given: Sequence[str] | None, where: str
) -> tuple[str, ...]:
    """The class names in output order (module docstring, "Classes").

    Raises
    ------
    ConfigError
        Values outside ``given``, or fewer than two classes among ``values``.
    """
    present = sorted(set(values.tolist()))
    if given is not None:
        encode_labels(present, given, where)
        classes = tuple(given)
    else:
        declared = CLASS_ORDERS.get(label, ())
        if present and set(present) <= set(declared):
            classes = tuple(c for c in declared if c in present)
        else:
            classes = tuple(present)
    if len(present) < 2:
        raise ConfigError(
            f"{where}: the train split holds {len(present)} class"
            f"{'' if len(present) == 1 else 'es'} of {label!r} ({', '.join(present) or 'none'}); "
            "a classifier needs at least two"
        )
    return classes


class ClassMaps:
    """Images of a dataset spec with a per-sample class coord, by split (module docstring).

    Parameters
    ----------
    spec : str
        A dataset spec of :func:`engine.data.open_spec` without a ``split`` option.
    label : str
        The class coord.
    datasets_file : str, optional
        Datasets YAML for short names.

    Attributes
    ----------
    kind : str
        ``attrs["kind"]`` (e.g. ``strong_lens``, ``folder``).
    channels, size : int
        C and N of the ``(C, N, N)`` images.
    pixel_scale : float or None
        Arcsec per pixel (``attrs["pixel_scale"]``), None when the data has none.
    attrs : dict
        The train split's attrs.

    Raises
    ------
    ConfigError
        Unreadable spec, a ``split`` option, samples that are not square images ``(sample, y,
        x)`` / ``(sample, channel, y, x)``, no class coord, an empty train or val split.
    """

    def __init__(self, spec: str, label: str, datasets_file=None):
        from engine.data import open_spec, parse_spec, resolve_name

        self.dataset = spec
        self.label = label
        full = resolve_name(spec, datasets_file)
        _prefix, _target, options = parse_spec(full)
        if "split" in options:
            raise ConfigError(
                f"dataset={spec!r}: training reads the train, val and test splits itself; "
                "remove split= from the spec"
            )
        self._spec, self._open = full, open_spec
        self._split_by_map = False
        self._splits: dict[str, tuple[torch.Tensor, np.ndarray]] = {}
        try:
            head = open_spec(with_split(full, "train"))
        except ConfigError as exc:
            if "has no splits" not in str(exc):
                raise
            self._split_by_map = True
            head = open_spec(full)
        dims = tuple(head.dims)
        if dims not in (("sample", "y", "x"), ("sample", "channel", "y", "x")) or (
            head.sizes["y"] != head.sizes["x"]
        ):
            raise ConfigError(
                f"dataset={spec!r} holds samples of dims {dims} and shape {tuple(head.shape)}; "
                "a classifier needs square images (sample, y, x) or (sample, channel, y, x)"
            )
        self._head = head
        self.attrs = dict(head.attrs)
        self.kind = str(self.attrs.get("kind", _prefix))
        self.channels = int(head.sizes.get("channel", 1))
        self.size = int(head.sizes["x"])
        scale = self.attrs.get("pixel_scale")
        self.pixel_scale = float(scale) if scale is not None else None
        self.values("train")

    def _read(self, name: str):
        if not self._split_by_map:
            return self._head if name == "train" else self._open(with_split(self._spec, name))
        from engine.data._common import split_groups

        head = self._head
        return head.isel(sample=split_groups(head.sizes["sample"], name))

    def _load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            da = self._read(name)
            if da.sizes["sample"] == 0:
                raise ConfigError(f"no maps in split {name!r}")
        except ConfigError as exc:
            hint = (
                " (training needs a train and a val split; a file without splits is split map "
                "by map 80/10/10 %, a folder file by file: at least 10 images)"
                if "split" in str(exc)
                else ""
            )
            raise ConfigError(f"dataset={self.dataset!r}: {exc}{hint}") from None
        values = label_values(da, self.label, f"dataset={self.dataset!r}")
        maps = np.asarray(da.values, dtype=np.float32)
        if maps.ndim == 3:
            maps = maps[:, None]
        if maps.shape[1:] != (self.channels, self.size, self.size):
            raise ConfigError(
                f"dataset={self.dataset!r}: split {name!r} holds images of shape "
                f"{maps.shape[1:]}, the train split {(self.channels, self.size, self.size)}"
            )
        if not np.all(np.isfinite(maps)):
            raise ConfigError(f"dataset={self.dataset!r}: split {name!r} holds NaN or inf pixels")
        return maps, values

    def values(self, name: str) -> np.ndarray:
        """The class names ``(n,) str`` of split ``name`` (loads the split once)."""
        if name not in self._splits:
            maps, values = self._load(name)
            self._splits[name] = torch.from_numpy(maps), values
        return self._splits[name][1]

    def maps(self, name: str) -> torch.Tensor:
        """Raw images ``(n, C, N, N) float32`` of split ``name`` (CPU, loaded once)."""
        self.values(name)
        return self._splits[name][0]

    def map_config(self) -> dict[str, Any]:
        """``{"kind": ..., setting: value}`` of the images from the attrs: the kind's settings
        (when :mod:`engine.kinds` knows the kind) or ``size``, ``pixel_scale``, ``preset``,
        ``units``; ``size`` and ``pixel_scale`` always when known."""
        from engine.kinds import get_kind

        out: dict[str, Any] = {"kind": self.kind}
        names: list[str] = ["size", "pixel_scale", "preset", "units", "fov", "box_size"]
        with contextlib.suppress(ConfigError):
            names = user_settings(get_kind(self.kind).settings_class())
        for name in names:
            if name in self.attrs and name not in ("seed", "count"):
                value = self.attrs[name]
                out[name] = value.item() if hasattr(value, "item") else value
        out["size"] = self.size
        if self.pixel_scale is not None:
            out["pixel_scale"] = self.pixel_scale
        return out
