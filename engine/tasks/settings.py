"""Settings every task shares: the network (:class:`ModelParams`) and the training data
(:class:`DataParams`), plus :func:`compose`, which joins setting classes into one flat class.

One definition of each setting: the map settings of :class:`DataParams` are those of
:class:`engine.params.FieldParams` or copied from the settings class of the kind that owns them
(:class:`engine.physics.lpt.LPTParams`, :class:`engine.physics.pm.PMParams`,
:class:`engine.physics.lensing.KappaParams`), with the
same bounds, defaults and docs. The training settings of a run
(:class:`engine.train.settings.TrainParams`) are composed from the loop's, the model's, the
task's and the data's classes; the CLI flags, YAML configs and the explorer's forms are
generated from that composition.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

import param

from engine.kinds import get_kind
from engine.nn.registry import MODELS
from engine.params import (
    OMEGA_M_BOUNDS,
    PARAM_NAMES,
    SIGMA8_BOUNDS,
    ConfigError,
    FieldParams,
    set_values,
    user_settings,
)
from engine.physics.lensing import KappaParams
from engine.physics.limber import CL_CACHE_SIZE
from engine.physics.lpt import LPTParams
from engine.physics.pm import PMParams

#: Map kinds that can be generated on the fly (2D maps of :mod:`engine.kinds`).
TRAIN_KINDS = ("grf", "lognormal", "2lpt", "pm", "kappa")
#: Fixed prior points of kind kappa on the fly: the size of the C_ell cache of engine.physics.limber.
KAPPA_MAX_POINTS = CL_CACHE_SIZE


def borrow(cls: type[param.Parameterized], name: str, note: str = "") -> param.Parameter:
    """A copy of setting ``name`` of ``cls`` (same default, bounds and doc, so the setting stays
    defined once, there), ``note`` appended to its doc."""
    p = copy.copy(cls.param[name])
    if note:
        p.doc = f"{p.doc} {note}"
    return p


class ComposedParams(param.Parameterized):
    """Base of classes made by :func:`compose`: flat settings, each owned by one part class."""

    #: The part classes, in order.
    parts: ClassVar[tuple[type[param.Parameterized], ...]] = ()
    #: ``{setting: part class}``.
    owner: ClassVar[dict[str, type[param.Parameterized]]] = {}

    def part(self, cls: type[param.Parameterized]) -> param.Parameterized:
        """An instance of part class ``cls`` holding this object's values of its settings."""
        obj = cls()
        with param.parameterized.discard_events(obj):
            for n in user_settings(cls):
                setattr(obj, n, getattr(self, n))
        return obj

    def check(self):
        """Check each part's settings together (``check()`` of every part that has one).

        Raises
        ------
        ConfigError
            The first part's inconsistency (see the parts' ``check``).
        """
        for cls in self.parts:
            if hasattr(cls, "check"):
                cls.check(self)
        return self


def compose(name: str, *parts: type[param.Parameterized], doc: str = "") -> type:
    """A :class:`ComposedParams` subclass whose settings are those of ``parts`` (copied, so each
    is still defined once, in its part). A part's ``check(self)`` method is called on the
    composed object by :meth:`ComposedParams.check` (it reads settings by name).

    Raises
    ------
    TypeError
        Two parts define the same setting.
    """
    ns: dict[str, Any] = {"__doc__": doc, "parts": tuple(parts)}
    owner: dict[str, type] = {}
    for cls in parts:
        for n in user_settings(cls):
            if n in owner:
                raise TypeError(
                    f"setting {n!r} is defined by both {owner[n].__name__} and {cls.__name__}"
                )
            owner[n] = cls
            ns[n] = copy.copy(cls.param[n])
    ns["owner"] = owner
    return type(name, (ComposedParams,), ns)


class ModelParams(param.Parameterized):
    """The network: a name of the model registry and its keyword arguments (the task adds the
    input channels and outputs)."""

    model = param.Selector(
        default="cnn", objects=list(MODELS), doc="Network, by name in engine.nn.registry.MODELS."
    )
    width = param.Integer(
        16, bounds=(1, 512), doc="Channels of the network's first stage (doubling per stage)."
    )
    circular_padding = param.Boolean(
        True, doc="Periodic padding in convolutions (the maps are periodic); zeros otherwise."
    )

    def model_kwargs(self, in_channels: int, n_outputs: int) -> dict[str, Any]:
        """Keyword arguments of ``build_model(self.model, ...)`` (plain values)."""
        return {
            "in_channels": int(in_channels),
            "n_params": int(n_outputs),
            "width": self.width,
            "circular_padding": self.circular_padding,
        }


_KIND_2LPT = "(Kinds 2lpt and pm.)"
_KIND_PM = "(Kind pm only.)"
_KIND_KAPPA = "(Kind kappa only.)"


class DataParams(FieldParams):
    """Training data: maps of a kind generated on the fly, or any dataset spec.

    The map settings (kind, size, box_size, thickness, redshift, smoothing, noise) and the shared
    cosmology are those of :class:`FieldParams`; the settings of kinds 2lpt and kappa are copied
    from their classes, and :meth:`map_settings` checks them with that kind's bounds. omega_m
    and sigma8 are drawn per map, uniformly in the prior box (or among ``prior_points`` fixed
    points of it), so ``omega_m``, ``sigma8``, ``count`` and ``seed`` are not settings here.
    """

    omega_m = param.Number(constant=True, doc="Not used: drawn per map from the prior box.")
    sigma8 = param.Number(constant=True, doc="Not used: drawn per map from the prior box.")
    count = param.Integer(constant=True, doc="Not used: see batch_size and val_maps.")
    seed = param.Integer(constant=True, doc="Not used: the run's seed is a loop setting.")
    kind = param.Selector(
        default="grf",
        objects=list(TRAIN_KINDS),
        doc="Map kind (engine.kinds): grf or lognormal projected slabs, 2lpt or pm (particle-mesh "
        "N-body) slab maps (dim=2) or kappa flat-sky convergence maps, generated on the fly on "
        "the training device.",
    )
    size = param.Integer(64)
    box_size = param.Number(
        doc="Side of the periodic square map in comoving Mpc/h (L). (Kinds grf, lognormal, 2lpt, pm.)"
    )
    thickness = param.Number(
        doc="Thickness of the projected slab in comoving Mpc/h (Delta). "
        "(Kinds grf, lognormal, 2lpt, pm.)"
    )
    redshift = param.Number(
        doc="Redshift of the slab; growth D(z) from pyccl. (Kinds grf, lognormal, 2lpt, pm.)"
    )
    noise = param.Number(
        doc="Standard deviation per pixel of the additive white noise, in units of the density "
        "contrast (0: none). (Kinds grf, lognormal, 2lpt, pm; kappa: see sigma_e and n_gal.)"
    )
    smoothing = param.Number(
        doc="Standard deviation of the Gaussian smoothing kernel in the map's length unit: "
        "comoving Mpc/h for grf, lognormal, 2lpt; arcmin for kappa (0: none)."
    )
    lpt_order = borrow(LPTParams, "lpt_order", _KIND_2LPT)
    axis = borrow(LPTParams, "axis", _KIND_2LPT)
    steps = borrow(PMParams, "steps", _KIND_PM)
    a_start = borrow(PMParams, "a_start", _KIND_PM)
    mesh_ratio = borrow(PMParams, "mesh_ratio", _KIND_PM)
    fov = borrow(KappaParams, "fov", _KIND_KAPPA)
    distribution = borrow(KappaParams, "distribution", _KIND_KAPPA)
    lognormal_shift = borrow(KappaParams, "lognormal_shift", _KIND_KAPPA)
    nz = borrow(KappaParams, "nz", _KIND_KAPPA)
    matter_power = borrow(KappaParams, "matter_power", _KIND_KAPPA)
    n_gal = borrow(KappaParams, "n_gal", _KIND_KAPPA)
    sigma_e = borrow(KappaParams, "sigma_e", _KIND_KAPPA)
    mask = borrow(KappaParams, "mask", _KIND_KAPPA)

    omega_m_min = param.Number(
        0.1, bounds=OMEGA_M_BOUNDS, step=0.01, doc="Lower edge of the uniform prior of Omega_m."
    )
    omega_m_max = param.Number(
        0.5, bounds=OMEGA_M_BOUNDS, step=0.01, doc="Upper edge of the uniform prior of Omega_m."
    )
    sigma8_min = param.Number(
        0.6, bounds=SIGMA8_BOUNDS, step=0.01, doc="Lower edge of the uniform prior of sigma8."
    )
    sigma8_max = param.Number(
        1.0, bounds=SIGMA8_BOUNDS, step=0.01, doc="Upper edge of the uniform prior of sigma8."
    )
    prior_points = param.Integer(
        0,
        bounds=(0, 1_000_000),
        doc="Number of fixed (omega_m, sigma8) points, drawn once from the seed uniformly in the "
        "prior box, that every map's parameters are drawn from; 0: each map draws its own point "
        f"from the continuous prior, except for kind kappa, where 0 means {KAPPA_MAX_POINTS} points "
        "(each new cosmology costs a pyccl C_l call of ~0.2-0.4 s, cached for at most "
        f"{KAPPA_MAX_POINTS}; for a continuous kappa prior write a dataset with "
        "'python -m engine dataset --kind kappa' and train on it).",
    )
    dataset = param.String(
        "",
        doc="Dataset spec to train on (engine.data: a .zarr/.nc file of 'python -m engine "
        "dataset' or 'fields', camels:PATH?fields=Mgas,HI, quijote:DIR, folder:DIR, des:FITS, "
        "a short name of a datasets YAML, or a generated kind such as lognormal?size=64): "
        "batches from its train split, validation on its val split, the end-of-training "
        "evaluation on its test split; splits are by simulation. The map settings, prior box "
        "and prior_points here are then not used (a generated kind's spec options override "
        "the map settings). Empty: maps of 'kind' generated on the fly.",
    )
    augment_flips = param.Boolean(
        False,
        doc="Augmentation: give every training map a random symmetry of the square (flips and "
        "90-degree rotations; exact for statistically isotropic periodic maps; a kappa mask "
        "moves with its map).",
    )
    augment_noise = param.Number(
        0.0,
        bounds=(0.0, 100.0),
        doc="Augmentation: extra white noise per training map, standard deviation per pixel "
        "uniform in [0, augment_noise], in the map's units (density contrast or convergence; "
        "0: none).",
    )
    augment_smoothing = param.Number(
        0.0,
        bounds=(0.0, 100.0),
        doc="Augmentation: extra Gaussian smoothing per training map, standard deviation uniform "
        "in [0, augment_smoothing] in the map's length unit (comoving Mpc/h, or arcmin for "
        "kappa; 0: none).",
    )
    val_maps = param.Integer(
        512,
        bounds=(1, 1_000_000),
        doc="Maps in the fixed validation set (generated once; with a dataset, its val split "
        "is the validation set).",
    )
    eval_maps = param.Integer(
        512,
        bounds=(0, 100_000),
        doc="Maps of the evaluation run when training completes (not when stopped or failed): "
        "the best checkpoint and the P(k) likelihood on a fresh test set of the run's own kind "
        "and map settings with parameters uniform in the prior box (with a dataset: the first "
        "eval_maps maps of its test split), written to report.json, predictions.csv and "
        "figures/ in the run directory (engine.evaluation); 0: no evaluation. Kind kappa costs "
        "a pyccl C_l per map (~0.3 s each).",
    )

    def check(self) -> None:
        """Check the data settings together (each alone is checked when set).

        Raises
        ------
        ConfigError
            An empty prior box; map settings outside the kind's bounds or theory tables
            (:meth:`map_settings`); too many prior points for kappa; a dataset spec that does not
            parse or a file that does not exist.
        """
        for name in PARAM_NAMES:
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if not lo < hi:
                raise ConfigError(
                    f"{name}_min={lo} must be smaller than {name}_max={hi} (the prior box)"
                )
        if self.dataset:
            _check_dataset_spec(self.dataset)
            return
        DataParams.map_settings(self)
        limit = get_kind(self.kind).cosmology_limit()
        if limit and self.prior_points > limit:
            raise ConfigError(
                f"prior_points={self.prior_points} is too many for kind={self.kind!r} on the fly "
                f"(at most {limit}: its theory is cached per cosmology); for more cosmologies "
                f"write a dataset (python -m engine dataset --kind {self.kind} --omega-m LO:HI "
                "--sigma8 LO:HI ...) and train with dataset=PATH"
            )

    def map_settings(self) -> param.Parameterized:
        """The settings of the kind's own class (:mod:`engine.kinds`) for on-the-fly maps.

        Every setting of that class that is also a setting here is copied (2lpt: ``dim=2``),
        then checked with that class's bounds and the kind's check.

        Raises
        ------
        ConfigError
            A value outside the kind's bounds (e.g. size > 1024 for 2lpt) or unusable settings.
        """
        kind = get_kind(self.kind, TRAIN_KINDS)
        settings = kind.new_settings()
        cls = type(settings)
        mine = set(user_settings(DataParams))
        values = {n: getattr(self, n) for n in user_settings(cls) if n in mine and n != "kind"}
        if "dim" in user_settings(cls):
            values["dim"] = 2
        try:
            set_values(settings, values)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (for kind={self.kind!r})") from None
        kind.check_settings(settings)
        return settings

    def resolved_prior_points(self) -> int:
        """``prior_points`` with 0 resolved: the kind's cosmology limit on the fly
        (:meth:`engine.kinds.Kind.cosmology_limit`; :data:`KAPPA_MAX_POINTS` for kind kappa)."""
        if self.prior_points == 0 and not self.dataset:
            return get_kind(self.kind).cosmology_limit()
        return self.prior_points


def _check_dataset_spec(spec: str) -> None:
    """Refuse a dataset spec that cannot be a training set (cheap checks, no data read)."""
    from engine.data import parse_spec, resolve_name

    full = resolve_name(spec)
    prefix, target, options = parse_spec(full)
    if prefix == "synthetic":
        return
    if prefix == "file" and not Path(target).exists():
        raise ConfigError(
            f"dataset={spec!r} does not exist (write one with python -m engine dataset ... "
            "--out PATH.zarr)"
        )
    if "split" in options:
        raise ConfigError(
            f"dataset={spec!r}: training reads the train, val and test splits itself; remove "
            "split= from the spec"
        )
