"""One definition of every setting.

Each user-facing setting is a ``param`` parameter on a ``param.Parameterized`` class here (or in
the module that owns it, e.g. ``engine.train.settings.TrainParams``): its default, bounds, allowed values
and doc (with the unit) are written once. The CLI flags, YAML/JSON config files, ``--set key=value``
overrides and the explorer's widgets are all derived from these classes by the helpers below.

Errors from bad values are :class:`ConfigError` with a one-line message naming the setting and its
allowed range, e.g. ``omega_m=1.5 is out of range: allowed 0.1 <= omega_m <= 0.9``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import param
import yaml

# ---------------------------------------------------------------------------------------------
# Errors and generic helpers
# ---------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A setting has a bad value; the message is one line naming the setting and what is allowed."""


def allowed(p: param.Parameter, name: str) -> str:
    """Describe the allowed values of parameter ``p`` (called ``name``) in words, for messages."""
    if isinstance(p, param.Selector) and not isinstance(p, param.ClassSelector):
        return "one of " + ", ".join(repr(o) for o in p.objects)
    if isinstance(p, param.Number):
        lo, hi = p.bounds if p.bounds is not None else (None, None)
        inc = getattr(p, "inclusive_bounds", (True, True))
        parts = []
        if lo is not None:
            parts.append(f"{lo} {'<=' if inc[0] else '<'} ")
        parts.append(name)
        if hi is not None:
            parts.append(f" {'<=' if inc[1] else '<'} {hi}")
        if lo is None and hi is None:
            kind = "an integer" if isinstance(p, param.Integer) else "a number"
            return kind
        return "".join(parts)
    if isinstance(p, param.Boolean):
        return "true or false"
    return type(p).__name__.lower()


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for messages, shortened to ``limit`` characters (one line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_integer(p: param.Parameter, name: str, value: str) -> int:
    """The integer written in ``value`` (``"64"``, ``"1e3"``, ``"2.0"``), else ConfigError.

    Digits are read exactly (``int``), other numbers through ``float``; NaN, infinities and
    numbers too large for a float (``"1e400"``) are refused in one line.
    """
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        f = float(text)
    except ValueError:
        raise ConfigError(
            f"{name}={_show(value)} is not an integer: allowed {allowed(p, name)}"
        ) from None
    if not math.isfinite(f):
        raise ConfigError(
            f"{name}={_show(value)} is not a finite integer: allowed {allowed(p, name)}"
        )
    if not f.is_integer():
        raise ConfigError(f"{name}={_show(value)} is not an integer: allowed {allowed(p, name)}")
    return int(f)


def _coerce(p: param.Parameter, name: str, value: Any) -> Any:
    """Convert ``value`` (possibly a string from the command line) to the type of ``p``.

    Values that cannot be converted are returned as they are, for :func:`check_value` to refuse;
    strings that are not numbers, NaN and infinities for integer settings raise at once.

    Raises
    ------
    ConfigError
        A string that is not a boolean, an integer or a number for such a setting.
    """
    if isinstance(value, str):
        if isinstance(p, param.Boolean):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name}={_show(value)} is not a boolean: use true or false")
        if isinstance(p, param.Integer):
            return _as_integer(p, name, value)
        if isinstance(p, param.Number):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(
                    f"{name}={_show(value)} is not a number: allowed {allowed(p, name)}"
                ) from None
        if isinstance(p, param.List):
            return [v for v in value.split(",") if v]
    if (
        isinstance(p, param.Integer)
        and isinstance(value, float)
        and math.isfinite(value)
        and value.is_integer()
    ):
        return int(value)
    return value


def set_values(obj: param.Parameterized, values: Mapping[str, Any]) -> param.Parameterized:
    """Set ``values`` on ``obj`` after checking every name and value.

    Raises
    ------
    ConfigError
        Unknown setting name (the message lists the known ones), value of the wrong type, or value
        out of bounds / not among the allowed objects. ``obj`` is left unchanged on error.
    """
    cls = type(obj)
    names = user_settings(cls)
    coerced = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise ConfigError(
                f"unknown setting {key!r} for {cls.__name__}; known settings: {', '.join(names)}"
            )
        p = cls.param[name]
        v = _coerce(p, name, value)
        check_value(p, name, v)
        coerced[name] = v
    obj.param.update(**coerced)
    return obj


def check_value(p: param.Parameter, name: str, value: Any) -> None:
    """Raise :class:`ConfigError` if ``value`` is not allowed for parameter ``p``."""
    if value is None and p.allow_None:
        return
    if isinstance(p, param.Selector) and not isinstance(p, param.ClassSelector):
        if value not in p.objects:
            raise ConfigError(
                f"{name}={_show(value)} is not allowed: {name} must be {allowed(p, name)}"
            )
        return
    if isinstance(p, param.Number):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}={_show(value)} is not a number: allowed {allowed(p, name)}")
        if not _finite(value, integer=isinstance(p, param.Integer)):  # NaN, inf, 1e400
            raise ConfigError(
                f"{name}={_show(value)} is not a finite number: allowed {allowed(p, name)}"
            )
        if isinstance(p, param.Integer) and not isinstance(value, int):
            raise ConfigError(
                f"{name}={_show(value)} is not an integer: allowed {allowed(p, name)}"
            )
        if p.bounds is not None:
            lo, hi = p.bounds
            inc = getattr(p, "inclusive_bounds", (True, True))
            bad = (lo is not None and (value < lo or (value == lo and not inc[0]))) or (
                hi is not None and (value > hi or (value == hi and not inc[1]))
            )
            if bad:
                raise ConfigError(
                    f"{name}={_show(value)} is out of range: allowed {allowed(p, name)}"
                )
        return
    try:
        p._validate(value)
    except Exception as exc:  # param's own message is multi-clause; keep it one line
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{name}={_show(value)} is not allowed: {msg}") from None


def _finite(value: int | float, integer: bool = False) -> bool:
    """True for a finite float, and for an int (that a float can hold unless ``integer``)."""
    if isinstance(value, int):
        return integer or abs(value) <= sys.float_info.max
    return math.isfinite(value)


def user_settings(cls: type[param.Parameterized]) -> list[str]:
    """Names of the user-facing settings of ``cls`` (all parameters except ``name``)."""
    return [n for n in cls.param if n != "name" and not cls.param[n].constant]


def from_attrs(cls: type[param.Parameterized], attrs: Mapping[str, Any]) -> param.Parameterized:
    """An instance of settings class ``cls`` from a DataArray's attrs: attrs that are not its
    settings (grid, cosmology, units, …) are ignored; numpy scalars (netCDF) become Python
    numbers.

    Raises
    ------
    ValueError
        A value outside a setting's bounds (param's check).
    """
    names = set(cls.param) - {"name"}
    values = {k: (v.item() if getattr(v, "ndim", None) == 0 else v) for k, v in attrs.items()}
    return cls(**{k: v for k, v in values.items() if k in names})


def to_dict(obj: param.Parameterized) -> dict[str, Any]:
    """Plain-JSON dict of every user-facing setting of ``obj``."""
    return {n: getattr(obj, n) for n in user_settings(type(obj))}


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` from ``--set``; values are read as YAML scalars.

    Raises
    ------
    ConfigError
        An item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like key=value")
        key, _, raw = item.partition("=")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict.

    Raises
    ------
    ConfigError
        File missing, unreadable, not a mapping at the top level, or a key that is not text.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"config file {str(path)!r} could not be read: {exc}".splitlines()[0]
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of setting: value")
    bad = next((k for k in data if not isinstance(k, str)), None)
    if bad is not None:
        raise ConfigError(
            f"config file {str(path)!r}: setting names must be text, got {str(bad)[:60]!r}"
        )
    return data


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type[param.Parameterized],
    aliases: Mapping[str, str] | None = None,
    skip: Iterable[str] = (),
) -> None:
    """Add one ``--flag`` per setting of ``cls`` to ``parser``, with help from the param doc.

    Flags are the setting names with ``_`` → ``-`` (``omega_m`` → ``--omega-m``), or
    ``aliases[name]``. Values are kept as strings (default ``None`` = not given) and converted and
    checked by :func:`set_values`, so errors name the setting and its range the same way for the
    CLI, config files and ``--set``.
    """
    aliases = dict(aliases or {})
    for name in user_settings(cls):
        if name in skip:
            continue
        p = cls.param[name]
        flag = "--" + aliases.get(name, name).replace("_", "-")
        doc = (p.doc or "").strip().replace("%", "%%")
        help_ = f"{doc} Default {p.default!r}; allowed {allowed(p, name)}."
        parser.add_argument(flag, dest=name, default=None, metavar=_metavar(p), help=help_)


def _metavar(p: param.Parameter) -> str:
    if isinstance(p, param.Selector):
        sep = "|" if any("," in str(o) for o in p.objects) else ","  # e.g. {delta|delta,theta}
        return "{" + sep.join(str(o) for o in p.objects) + "}"
    if isinstance(p, param.Integer):
        return "INT"
    if isinstance(p, param.Number):
        return "X"
    if isinstance(p, param.Boolean):
        return "BOOL"
    return "VALUE"


def from_namespace(cls: type[param.Parameterized], ns: argparse.Namespace) -> dict[str, Any]:
    """The settings of ``cls`` given on the command line (those not left at ``None``)."""
    return {n: getattr(ns, n) for n in user_settings(cls) if getattr(ns, n, None) is not None}


# ---------------------------------------------------------------------------------------------
# Physics settings
# ---------------------------------------------------------------------------------------------

#: Names of the cosmological parameters inferred from maps (varied per map), in this order.
PARAM_NAMES = ("omega_m", "sigma8")
#: Fiducial cosmology (dimensionless): the defaults of :class:`CosmologyParams` and the point of
#: fixed normalisations such as :meth:`engine.kinds.Kind.map_scale`.
FIDUCIAL = {"omega_m": 0.3, "sigma8": 0.8}
#: Prior box of the cosmological parameters used for training and parameter sliders.
OMEGA_M_BOUNDS = (0.1, 0.9)
SIGMA8_BOUNDS = (0.4, 1.2)


class CosmologyParams(param.Parameterized):
    """Flat ΛCDM cosmology (no massive neutrinos) of a linear matter power spectrum.

    ``omega_m`` and ``sigma8`` vary per map; the others are shared by a batch of maps.
    """

    omega_m = param.Number(
        FIDUCIAL["omega_m"],
        bounds=OMEGA_M_BOUNDS,
        step=0.01,
        doc="Total matter density today, Omega_m = Omega_c + Omega_b (dimensionless).",
    )
    sigma8 = param.Number(
        FIDUCIAL["sigma8"],
        bounds=SIGMA8_BOUNDS,
        step=0.01,
        doc="RMS of the linear density contrast in top-hat spheres of 8 Mpc/h at z=0 (dimensionless).",
    )
    omega_b = param.Number(
        0.049, bounds=(0.01, 0.09), doc="Baryon density today, Omega_b (dimensionless)."
    )
    h = param.Number(
        0.6711, bounds=(0.4, 1.0), doc="Dimensionless Hubble parameter, H0 / (100 km/s/Mpc)."
    )
    n_s = param.Number(
        0.9624, bounds=(0.8, 1.2), doc="Spectral index of the primordial power spectrum."
    )
    transfer_function = param.Selector(
        default="eisenstein_hu",
        objects=["eisenstein_hu", "boltzmann_camb"],
        doc="Linear transfer function computed by pyccl: Eisenstein & Hu (1998) fitting formula, "
        "or CAMB (needs the camb package).",
    )


class FieldParams(CosmologyParams):
    """Settings of a batch of 2D maps (slabs projected from a 3D linear density field)."""

    kind = param.Selector(
        default="grf",
        objects=["grf", "lognormal"],
        doc="Field kind: Gaussian random field or lognormal field with the same spectrum.",
    )
    size = param.Integer(
        256, bounds=(8, 4096), doc="Number of pixels per side of the square map (N)."
    )
    box_size = param.Number(
        256.0,
        bounds=(1.0, 1e5),
        softbounds=(10.0, 1000.0),
        step=1.0,
        inclusive_bounds=(True, True),
        doc="Side of the periodic square map in comoving Mpc/h (L).",
    )
    thickness = param.Number(
        10.0,
        bounds=(0.1, 1e5),
        softbounds=(1.0, 1000.0),
        step=1.0,
        doc="Thickness of the projected slab in comoving Mpc/h (Delta).",
    )
    redshift = param.Number(
        0.0, bounds=(0.0, 5.0), step=0.05, doc="Redshift of the slab; growth D(z) from pyccl."
    )
    smoothing = param.Number(
        0.0,
        bounds=(0.0, 100.0),
        softbounds=(0.0, 20.0),
        step=0.1,
        doc="Standard deviation of the Gaussian smoothing kernel in comoving Mpc/h (0: none).",
    )
    noise = param.Number(
        0.0,
        bounds=(0.0, 100.0),
        softbounds=(0.0, 5.0),
        step=0.01,
        doc="Standard deviation per pixel of the additive white noise, in units of the density "
        "contrast (0: none).",
    )
    seed = param.Integer(
        0, bounds=(0, 2**62), doc="Random seed: same seed gives the same maps on CPU."
    )
    count = param.Integer(8, bounds=(1, 1_000_000), doc="Number of maps to generate.")
