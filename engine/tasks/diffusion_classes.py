"""The class-labelled data of class-conditional diffusion (:mod:`engine.tasks.diffusion`,
"Classes"): :class:`ClassConditionedMaps`, images of a dataset with a per-sample class coord
(e.g. the substructure none/cdm/vortex of strong-lens images) and optional continuous labels,
read as the classification task reads them, with the conditioning row ``(P + 1)`` (the P
continuous labels, then the class index) and the images' layout that generated images copy.

The task that uses it is :class:`engine.tasks.diffusion.ConditionalDiffusion` (setting
``label``), which re-exports :class:`ClassConditionedMaps`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engine.data.classes import ClassMaps, choose_classes, encode_labels
from engine.params import ConfigError

__all__ = ["ClassConditionedMaps"]


def _plain_value(value):
    """An attr value as a plain JSON/pickle-safe scalar (numpy scalars unwrapped), or None for
    anything else (arrays, dicts)."""
    value = value.item() if getattr(value, "ndim", None) == 0 else value
    if isinstance(value, (bool, int, float, str)):
        return value
    return None


class ClassConditionedMaps(ClassMaps):
    """Images of a dataset with a per-sample class coord, and optional continuous labels, by
    split: the data of class-conditional diffusion (:mod:`engine.tasks.diffusion`, "Classes").

    The images, splits and class names are read as the classification task reads them
    (:class:`engine.tasks.classification.ClassMaps`, :func:`~engine.tasks.classification.
    choose_classes`, :func:`~engine.tasks.classification.encode_labels`); :meth:`split` gives
    what :class:`engine.tasks.regression.Regression` expects of a source.

    Parameters
    ----------
    spec : str
        A dataset spec without a ``split`` option.
    label : str
        The class coord (e.g. ``substructure``).
    names : sequence of str
        Continuous label coords conditioned on besides the class (may be empty).
    classes : sequence of str, optional
        The class order (the ``classes`` setting); None: the label's declared order
        (substructure: none, cdm, vortex) restricted to the train split's classes.

    Attributes
    ----------
    classes : tuple of str
    names : tuple of str
    low, high : list of float
        Min and max of each continuous label on the train split (physical units).
    scale : float or list of float
        Standard deviation of the train pixels (per channel with several), image units.
    pixel : float
        Pixel side (the ``pixel_scale`` attr in arcsec, else the x-coordinate spacing).

    Raises
    ------
    ConfigError
        As :class:`~engine.tasks.classification.ClassMaps`; unknown class names in the train or
        val split, one class only, a missing or constant continuous label.
    """

    def __init__(self, spec: str, label: str, names=(), classes=None, datasets_file=None):
        self.names = tuple(names)
        self._theta: dict[str, np.ndarray] = {}
        self._tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        super().__init__(spec, label, datasets_file)
        where = f"dataset={spec!r}"
        self.classes = choose_classes(self.values("train"), self.label, classes, where)
        maps = self.maps("train")
        theta = self._theta["train"]
        self.low, self.high = [], []
        for j, name in enumerate(self.names):
            lo, hi = float(theta[:, j].min()), float(theta[:, j].max())
            if not lo < hi:
                raise ConfigError(
                    f"{where} does not vary {name} (range [{lo:g}, {hi:g}]); it cannot be "
                    "conditioned on"
                )
            self.low.append(lo)
            self.high.append(hi)
        std = maps.double().std(dim=(0, 2, 3)).tolist()
        self.scale = float(std[0]) if self.channels == 1 else [float(v) for v in std]
        x = np.asarray(self._head["x"].values, np.float64) if "x" in self._head.coords else []
        spacing = abs(float(x[1] - x[0])) if len(x) > 1 else 1.0
        self.pixel = self.pixel_scale or spacing
        self.split("val")

    def _load(self, name: str):
        maps, values = super()._load(name)
        if not self.names:
            self._theta[name] = np.zeros((len(values), 0))
            return maps, values
        da = self._read(name)
        have = [
            str(c)
            for c, v in da.coords.items()
            if v.dims == ("sample",) and np.issubdtype(v.dtype, np.number)
        ]
        missing = [n for n in self.names if n not in have]
        if missing:
            raise ConfigError(
                f"dataset={self.dataset!r} has no label {missing[0]!r} (set targets=none to "
                f"condition on the class {self.label!r} alone); its labels: "
                + (", ".join(have) or "none")
            )
        theta = np.stack([np.asarray(da[n].values, np.float64) for n in self.names], axis=1)
        if not np.all(np.isfinite(theta)):
            raise ConfigError(f"dataset={self.dataset!r}: split {name!r} holds NaN labels")
        self._theta[name] = theta
        return maps, values

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw images ``(n, C, N, N) float32`` and conditioning ``(n, P + 1) float64`` of split
        ``name`` (CPU, loaded once): the P continuous labels (physical units) and, last, the
        class index in [0, K) as a float.

        Raises
        ------
        ConfigError
            An empty split, or class names outside :attr:`classes`.
        """
        if name not in self._tensors:
            values = self.values(name)
            where = f"dataset={self.dataset!r} ({name} split)"
            index = encode_labels(values, self.classes, where).double()[:, None]
            theta = torch.from_numpy(self._theta[name])
            self._tensors[name] = (self.maps(name), torch.cat([theta, index], dim=1))
        return self._tensors[name]

    def layout(self) -> dict[str, Any]:
        """How the images are written, for generated ones to match (plain values): ``name``
        (the DataArray's name), ``attrs`` (the train split's scalar attrs), ``x``, ``y`` (the
        pixel coords, e.g. arcsec) and their ``x_attrs``, ``y_attrs``."""
        head = self._head
        out: dict[str, Any] = {"name": str(head.name) if head.name is not None else "image"}
        attrs = {str(k): _plain_value(v) for k, v in head.attrs.items()}
        out["attrs"] = {k: v for k, v in attrs.items() if v is not None}
        for axis in ("x", "y"):
            coord = head.coords.get(axis)
            values = np.asarray(coord.values if coord is not None else [], np.float64)
            out[axis] = [float(v) for v in values]
            plain = {
                str(k): _plain_value(v)
                for k, v in (coord.attrs if coord is not None else {}).items()
            }
            out[f"{axis}_attrs"] = {k: v for k, v in plain.items() if v is not None}
        return out

    def describe(self) -> dict[str, Any]:
        """Plain summary for ``config.json``: kind, dataset, label, classes, images per class and
        split, continuous names and their box, channels, size, pixel scale."""
        counts = {}
        for split, (_maps, cond) in self._tensors.items():
            idx = cond[:, -1].long()
            counts[split] = {c: int((idx == i).sum()) for i, c in enumerate(self.classes)}
        return {
            "kind": self.kind,
            "dataset": self.dataset,
            "label": self.label,
            "classes": list(self.classes),
            "images": counts,
            "names": list(self.names),
            "prior_low": list(self.low),
            "prior_high": list(self.high),
            "map_scale": self.scale,
            "channels": self.channels,
            "size": self.size,
            "pixel_scale": self.pixel_scale,
        }
