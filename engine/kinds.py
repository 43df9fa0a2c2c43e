"""Registry of map kinds: for each ``kind`` name, its settings class and its generator.

One place that the CLI (``python -m engine fields --kind …``), files (the ``kind`` attr of every
written DataArray) and the explorer use to go from a kind name to code. Modules are imported
lazily so that ``python -m engine --help`` stays fast.

=========  =============================  ==================================================
kind       settings                       output
=========  =============================  ==================================================
grf        engine.params.FieldParams      Gaussian slab maps δ (sample, y, x), Mpc/h
lognormal  engine.params.FieldParams      lognormal slab maps δ (sample, y, x), Mpc/h
2lpt       engine.lpt.LPTParams           1LPT/2LPT slabs (sample, y, x) or volumes
                                          (sample, z, y, x), Mpc/h
kappa      engine.lensing.KappaParams     flat-sky convergence κ (sample, y, x), arcmin
sky        engine.sky.SkyParams           HEALPix convergence κ (sample, pixel), RING order
=========  =============================  ==================================================
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import param

from engine.params import ConfigError, user_settings


@dataclass(frozen=True)
class Kind:
    """A map kind: ``module.<params>`` holds its settings, ``module.generate`` makes DataArrays."""

    name: str
    module: str
    params: str
    doc: str

    def settings_class(self) -> type[param.Parameterized]:
        """The param class of this kind's settings."""
        return getattr(importlib.import_module(self.module), self.params)

    def new_settings(self) -> param.Parameterized:
        """Default settings of this kind (``kind`` set to this kind's name)."""
        cls = self.settings_class()
        if "kind" in user_settings(cls):
            return cls(kind=self.name)
        return cls()

    def generate(self, settings, device=None):
        """``settings.count`` samples from ``settings.seed`` as an xarray.DataArray."""
        mod = importlib.import_module(self.module)
        if self.name == "sky":  # healpy synthesis runs on the CPU
            return mod.generate(settings)
        return mod.generate(settings, device=device)


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("grf", "engine.fields", "FieldParams", "Gaussian random field of a projected slab"),
        Kind("lognormal", "engine.fields", "FieldParams", "lognormal field of a projected slab"),
        Kind("2lpt", "engine.lpt", "LPTParams", "1LPT/2LPT particles on a mesh: volumes or slabs"),
        Kind("kappa", "engine.lensing", "KappaParams", "flat-sky weak-lensing convergence"),
        Kind("sky", "engine.sky", "SkyParams", "full-sky HEALPix weak-lensing convergence"),
    )
}


#: Kinds of flat maps and volumes (the ``fields`` verb); ``sky`` has a verb of its own.
FIELD_KINDS = tuple(k for k in KINDS if k != "sky")


def get_kind(name: str, allowed=tuple(KINDS)) -> Kind:
    """The :class:`Kind` called ``name``, which must be one of ``allowed``.

    Raises
    ------
    ConfigError
        Unknown or not allowed kind (the message lists the allowed ones).
    """
    if name not in allowed:
        raise ConfigError(
            f"kind={name!r} is not allowed: kind must be one of {', '.join(map(repr, allowed))}"
        )
    return KINDS[name]
