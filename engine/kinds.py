"""Registry of map kinds: for each ``kind`` name, its settings class and its generator.

One place that the CLI (``python -m engine fields --kind …``), files (the ``kind`` attr of every
written DataArray) and the explorer use to go from a kind name to code. Modules are imported
lazily so that ``python -m engine --help`` stays fast.

=========  =============================  ==================================================
kind       settings                       output
=========  =============================  ==================================================
grf        engine.params.FieldParams      Gaussian slab maps δ (sample, y, x), Mpc/h
lognormal  engine.params.FieldParams      lognormal slab maps δ (sample, y, x), Mpc/h
2lpt       engine.physics.lpt.LPTParams           1LPT/2LPT slabs (sample, y, x) or volumes
                                          (sample, z, y, x), Mpc/h
kappa      engine.physics.lensing.KappaParams     flat-sky convergence κ (sample, y, x), arcmin
sky        engine.physics.sky.SkyParams           HEALPix convergence κ (sample, pixel), RING order
=========  =============================  ==================================================

Kinds of flat maps also name their torch hot path (:meth:`Kind.generate_batch`: ``(B, N, N)``
maps on the device from a ``torch.Generator``), their settings check and their fixed input
normalisation (:meth:`Kind.map_scale`), used by training on the fly (``engine.train.training``).
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
    #: Function of ``module``: ``(settings, omega_m, sigma8, generator, device) -> tensor``
    #: (the torch hot path; "" when the kind has none).
    batch: str = ""
    #: Function of ``module``: ``(settings) -> None``, raising ConfigError for unusable settings.
    check: str = ""
    #: Dotted path of ``(settings) -> float``: expected pixel std at the fiducial cosmology.
    scale: str = ""

    def settings_class(self) -> type[param.Parameterized]:
        """The param class of this kind's settings."""
        return getattr(importlib.import_module(self.module), self.params)

    def new_settings(self) -> param.Parameterized:
        """Default settings of this kind (``kind`` set to this kind's name)."""
        cls = self.settings_class()
        if "kind" in user_settings(cls):
            return cls(kind=self.name)
        return cls()

    def generate(self, settings, device=None, **kwargs):
        """``settings.count`` samples from ``settings.seed`` as an xarray.DataArray.

        ``kwargs`` go to the module's ``generate`` (e.g. per-sample ``omega_m``, ``sigma8``
        arrays of length ``count``).
        """
        mod = importlib.import_module(self.module)
        if self.name == "sky":  # healpy synthesis runs on the CPU
            return mod.generate(settings, **kwargs)
        return mod.generate(settings, device=device, **kwargs)

    def generate_batch(self, settings, omega_m, sigma8, generator, device=None):
        """A batch of samples as a torch tensor, one per (omega_m, sigma8) pair.

        Parameters
        ----------
        settings : the kind's settings (:meth:`settings_class`)
        omega_m, sigma8 : torch.Tensor (B,)
        generator : torch.Generator
            On ``device``; same generator state ⇒ same batch on CPU.

        Returns
        -------
        torch.Tensor (B, N, N) float32 for flat maps ((B, N, N, N) for 2lpt volumes, dim=3).

        Raises
        ------
        ConfigError
            The kind has no torch hot path, or bad settings/parameters.
        """
        if not self.batch:
            raise ConfigError(f"kind={self.name!r} has no batched torch generator")
        fn = getattr(importlib.import_module(self.module), self.batch)
        return fn(settings, omega_m, sigma8, generator, device)

    def check_settings(self, settings) -> None:
        """Raise :class:`ConfigError` for settings this kind cannot generate (e.g. pixels finer
        than the theory tables); no-op for kinds without a check."""
        if self.check:
            getattr(importlib.import_module(self.module), self.check)(settings)

    def map_scale(self, settings) -> float:
        """Expected standard deviation per pixel at Ω_m = 0.3, σ8 = 0.8 (map units), the fixed
        input normalisation of networks.

        Raises
        ------
        ConfigError
            The kind defines no scale.
        """
        if not self.scale:
            raise ConfigError(f"kind={self.name!r} defines no map scale")
        module, _, name = self.scale.rpartition(".")
        return float(getattr(importlib.import_module(module), name)(settings))


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "grf",
            "engine.physics.slabs",
            "FieldParams",
            "Gaussian random field of a projected slab",
            batch="generate_maps",
            check="check_resolution",
            scale="engine.physics.slabs.map_scale",
        ),
        Kind(
            "lognormal",
            "engine.physics.slabs",
            "FieldParams",
            "lognormal field of a projected slab",
            batch="generate_maps",
            check="check_resolution",
            scale="engine.physics.slabs.map_scale",
        ),
        # The 2LPT scale is the linear-theory std of the same slab (engine.physics.slabs): a fixed
        # normalisation close to the LPT maps' own std, which is all a network input needs.
        Kind(
            "2lpt",
            "engine.physics.lpt",
            "LPTParams",
            "1LPT/2LPT particles on a mesh: volumes or slabs",
            batch="generate_batch",
            check="check_settings",
            scale="engine.physics.slabs.map_scale",
        ),
        Kind(
            "kappa",
            "engine.physics.lensing",
            "KappaParams",
            "flat-sky weak-lensing convergence",
            batch="generate_maps",
            check="check_resolution",
            scale="engine.physics.lensing.map_scale",
        ),
        Kind("sky", "engine.physics.sky", "SkyParams", "full-sky HEALPix weak-lensing convergence"),
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
