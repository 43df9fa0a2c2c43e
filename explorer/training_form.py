"""The launch form of the Training page: which settings of a task's composed
:class:`engine.train.settings.TrainParams` get widgets (by group), which apply to a kind, the
presets of each task and their values, and the model's size line. No Panel objects here:
:mod:`explorer.training` builds the widgets from these.
"""

from __future__ import annotations

import functools
import importlib.util

import param

from engine.kinds import get_kind
from engine.nn.registry import summary
from engine.params import ConfigError, set_values, to_dict, user_settings
from engine.tasks import TASKS, get_task
from engine.tasks.settings import ModelParams

# isort: split
# -- Training-side names: the ONE place where the explorer imports them ------------------------
# The training settings are composed per task (loop/model/task/data parts; flat names such as lr,
# width and kind stay valid). Every explorer module and test takes these names from here or
# from explorer.training, so a move or rename is one edit.
from engine.train.settings import (
    PRESETS,
    TRAIN_KINDS,
    TrainParams,
    flatten_sections,
    preset_task,
    resolve_params,
    train_params_class,
)

#: Settings with widgets on the page, by group, in display order (the others keep the preset's
#: values); names that TrainParams does not have are left out. Map settings show only for the
#: kinds they apply to (:func:`setting_applies`).
CONTROL_GROUPS = {
    "Maps": (
        "kind", "size", "box_size", "thickness", "redshift", "lpt_order",
        "fov", "n_gal", "sigma_e", "noise", "smoothing",
    ),
    "Model": ("model", "width"),
    "Training": ("epochs", "steps_per_epoch", "batch_size", "lr", "seed", "eval_maps"),
}  # fmt: skip
TRAIN_CONTROLS = tuple(
    n for names in CONTROL_GROUPS.values() for n in names if n in TrainParams.param
)
#: The task of runs and presets that name none.
REGRESSION = "regression"
#: Settings of a task's own part that the form leaves out: ``targets`` differs from
#: omega_m,sigma8 only with a dataset, which the form does not set.
FORM_EXCLUDED = frozenset({"targets"})


def _kind_settings(kind: str) -> frozenset[str]:
    """Names of the settings of ``kind``'s own settings class (engine.kinds)."""
    return frozenset(user_settings(get_kind(kind, TRAIN_KINDS).settings_class()))


def setting_applies(name: str, kind: str) -> bool:
    """True if TrainParams setting ``name`` is used for maps of ``kind``.

    A map setting (one of the settings class of some training kind) applies to the kinds whose
    class has it; any other setting (model, optimiser, ...) applies to all.
    """
    if name == "kind" or not any(name in _kind_settings(k) for k in TRAIN_KINDS):
        return True
    return kind in TRAIN_KINDS and name in _kind_settings(kind)


def task_available(task: str) -> bool:
    """True if the module of ``task`` (:data:`engine.tasks.TASKS`) exists (checked without
    importing it: a task's module may import heavy packages)."""
    module = TASKS.get(task, "").partition(":")[0]
    try:
        return bool(module) and importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_tasks() -> list[str]:
    """The tasks of :data:`engine.tasks.TASKS` whose module exists, in registry order."""
    return [t for t in TASKS if task_available(t)]


def presets_of(task: str) -> list[str]:
    """Presets of ``task``: those whose ``task`` entry names it (the regression presets name
    none), then ``default`` (the task's own defaults) when it is not among them."""
    names = [p for p in PRESETS if (preset_task(p) or REGRESSION) == task]
    return names if "default" in names else [*names, "default"]


def _has_widget(par: param.Parameter) -> bool:
    """True for the parameter types the form has a widget for."""
    if isinstance(par, param.ClassSelector):
        return False
    return isinstance(par, param.Selector | param.Integer | param.Number | param.Boolean) or (
        type(par) is param.String
    )


@functools.cache
def control_groups(task: str = REGRESSION) -> dict[str, tuple[str, ...]]:
    """Settings with widgets on the launch form of ``task``, by group, in display order.

    ``Maps`` and ``Training``: the names of :data:`CONTROL_GROUPS`; ``Model``: ``model`` and
    ``width`` for a task whose networks are registry models (:class:`ModelParams`), else every
    setting of the task's own model settings class; ``Task``: the settings of the task's own
    class (less :data:`FORM_EXCLUDED`), left out when empty.

    Raises
    ------
    ConfigError, ImportError
        Unknown task, or a task whose module cannot be imported.
    """
    cls = train_params_class(task)
    spec = get_task(task)
    model_cls = spec.model_params_class or ModelParams
    if model_cls is ModelParams:
        model = [n for n in CONTROL_GROUPS["Model"] if n in cls.param]
    else:
        model = [n for n in user_settings(model_cls) if _has_widget(cls.param[n])]
    own = [
        n
        for n in user_settings(spec.params_class)
        if n not in FORM_EXCLUDED and _has_widget(cls.param[n])
    ]
    groups = {
        "Maps": tuple(n for n in CONTROL_GROUPS["Maps"] if n in cls.param),
        "Model": tuple(model),
        "Task": tuple(own),
        "Training": tuple(n for n in CONTROL_GROUPS["Training"] if n in cls.param),
    }
    return {k: v for k, v in groups.items() if v}


def task_controls(task: str = REGRESSION) -> tuple[str, ...]:
    """All settings of :func:`control_groups` of ``task`` (:data:`TRAIN_CONTROLS` when the task
    cannot be imported)."""
    try:
        return tuple(n for names in control_groups(task).values() for n in names)
    except (ConfigError, ImportError):
        return TRAIN_CONTROLS


def uses_registry_model(settings: param.Parameterized) -> bool:
    """True if ``settings`` pick their network from the model registry (``model``, ``width``
    of :class:`ModelParams`), whose parameter count :func:`model_summary` shows."""
    owner = getattr(type(settings), "owner", {})
    return owner.get("model") is ModelParams and hasattr(settings, "model_kwargs")


def preset_values(preset: str, task: str = REGRESSION) -> dict:
    """Every setting of ``task`` with ``preset`` applied (:func:`engine.params.to_dict`).

    The checked settings of :func:`resolve_params`; for a preset whose settings do not check
    here (e.g. its data set is missing from this checkout), its values unchecked, so the form
    still shows them (:meth:`TrainingController.train` then says why it cannot launch).

    Raises
    ------
    ConfigError
        Unknown preset or task, or values outside their bounds.
    """
    try:
        return to_dict(resolve_params(preset, task=task))
    except ConfigError:
        if preset not in PRESETS:
            raise
        params = train_params_class(task)()
        set_values(
            params, flatten_sections({k: v for k, v in PRESETS[preset].items() if k != "task"})
        )
        return to_dict(params)


@functools.cache
def _summary(model: str, kwargs: tuple) -> str:
    return summary(model, **dict(kwargs))


def model_summary(settings: TrainParams) -> str:
    """One line with the parameter count of the settings' model, e.g. ``"cnn: 80.4 k parameters"``
    (:func:`engine.nn.registry.summary`, cached per model and model settings)."""
    try:
        return _summary(settings.model, tuple(sorted(settings.model_kwargs().items())))
    except ConfigError as exc:
        return f"{settings.model}: {exc}"
