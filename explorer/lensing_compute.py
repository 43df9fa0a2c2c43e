"""Lensing page, the pure compute: one strong-lens image from slider settings, its critical
curves and caustics, the shipped classifier's class probabilities, and the lens generators.

The physics is the ``strong_lens`` kind's (:mod:`engine.physics.strong_lens`): an SIE + external
shear lens at z_lens = 0.5 images a Sérsic source at z_source = 1 through an instrument preset
(:data:`engine.physics.strong_lens.PRESETS`), with the substructure of one class (none, cdm
subhaloes, an axion vortex). :class:`LensView` holds the page's settings (one definition of
each, its unit in the doc and in :data:`CONTROLS`' labels); :func:`compute` turns them into a
:class:`LensResult`:

* the macro model (θ_E, e1, e2, γ1, γ2, the source's R_sersic, n and position) is the sliders';
  the substructure is drawn by the kind's own :func:`~engine.physics.strong_lens.draw_parameters`
  from ``seed`` (image 0 of the run) with θ_E fixed to the slider's, so that subhaloes stay put
  (in units of θ_E) while the macro sliders move; the image is the kind's
  :func:`~engine.physics.strong_lens_image.render` (e⁻ s⁻¹ per pixel, noisy when ``noise``);
* critical curves and caustics of the whole lens model (macro + substructure) come from
  lenstronomy's ``LensModelExtensions.critical_curve_caustics`` on a grid of half a pixel over
  the image (cached per lens model, so moving the source or the seed of the noise does not
  recompute them), and the *cut* (the pseudo-caustic of a singular isothermal lens, where the
  image multiplicity changes without a critical curve) as the image of a tiny circle about the
  lens centre;
* class probabilities from a classifier run (task ``classification``) whose training images
  have the preset's size and pixel scale (:func:`find_classifier`), loaded once per server
  process (:func:`load_classifier`) and applied with its task's
  :meth:`~engine.tasks.classification.Classification.predict`.

Units: angles in arcsec, masses in M☉, pixels in e⁻ s⁻¹, times in seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import param

from engine.lru import LRUCache
from engine.params import ConfigError
from engine.physics.strong_lens import (
    CLASSES,
    PRESETS,
    StrongLensParams,
    draw_parameters,
    instrument,
)
from engine.physics.strong_lens_image import lens_components, render
from engine.physics.strong_lens_model import velocity_dispersion
from engine.runs import list_runs, read_json
from explorer.fieldlab_kinds import Control

#: Instrument presets offered on the page (64² images).
LENS_PRESETS = ("euclid", "hst")
#: AB magnitude of the source (the middle of the kind's default range, 22–24).
SOURCE_MAG = 23.0
#: Grid step of the critical-curve computation, in pixels of the image.
CURVE_GRID = 0.5
#: Radius (arcsec) of the circle about the lens centre whose image is the cut.
CUT_RADIUS = 1e-5
#: Points on the cut.
CUT_POINTS = 181
#: Critical-curve sets kept per server process.
CURVE_CACHE_SIZE = 64


def train_commands(preset: str) -> tuple[str, str]:
    """The commands that make a classifier for ``preset``: its dataset (64² images, 10⁴ per
    class) and the ``lens_resnet`` training into ``assets/models/`` (where the page finds it)."""
    if preset == "euclid":
        data, extra, run = "data/lenses64.zarr", "", "lens_resnet"
    else:
        data, run = f"data/lenses64_{preset}.zarr", f"lens_resnet_{preset}"
        extra = f" --set dataset={data}"
    return (
        f"python -m engine dataset --kind strong_lens --preset {preset} --substructure all "
        f"--size 64 --count 30000 --split 0.8,0.1,0.1 --seed 0 --out {data}",
        f"python -m engine train --preset lens_resnet{extra} --run-dir assets/models/{run}",
    )


class LensView(param.Parameterized):
    """Settings of the Lensing page: one lens, its source, substructure and instrument."""

    substructure = param.Selector(
        default="cdm",
        objects=list(CLASSES),
        doc="Dark-matter substructure: none, cdm (Poisson subhaloes) or vortex (a line mass).",
    )
    preset = param.Selector(
        default="euclid",
        objects=list(LENS_PRESETS),
        doc="Instrument: euclid (64² × 0.101 arcsec, PSF FWHM 0.16 arcsec) or hst (64² × 0.05 "
        "arcsec, FWHM 0.1 arcsec).",
    )
    theta_e = param.Number(
        1.0, bounds=(0.2, 2.0), step=0.01, doc="Einstein radius θ_E of the SIE, arcsec."
    )
    lens_e1 = param.Number(
        0.1, bounds=(-0.4, 0.4), step=0.01, doc="Ellipticity e1 of the SIE (lenstronomy)."
    )
    lens_e2 = param.Number(
        0.0, bounds=(-0.4, 0.4), step=0.01, doc="Ellipticity e2 of the SIE (lenstronomy)."
    )
    gamma1 = param.Number(0.0, bounds=(-0.2, 0.2), step=0.005, doc="External shear γ1.")
    gamma2 = param.Number(0.0, bounds=(-0.2, 0.2), step=0.005, doc="External shear γ2.")
    source_r_sersic = param.Number(
        0.2, bounds=(0.02, 1.0), step=0.01, doc="Half-light radius R_sersic of the source, arcsec."
    )
    source_x = param.Number(
        0.05, bounds=(-1.5, 1.5), step=0.01, doc="Source centre x (source plane), arcsec."
    )
    source_y = param.Number(
        0.1, bounds=(-1.5, 1.5), step=0.01, doc="Source centre y (source plane), arcsec."
    )
    source_n_sersic = param.Number(
        1.0, bounds=(0.5, 4.0), step=0.05, doc="Sérsic index n of the source."
    )
    subhalo_mean = param.Number(
        25.0, bounds=(0.0, 200.0), step=1.0, doc="Mean number of subhaloes (Poisson), cdm only."
    )
    log_mass_min = param.Number(
        6.0, bounds=(5.0, 11.0), step=0.1, doc="log10 of the lightest subhalo mass, M☉."
    )
    log_mass_max = param.Number(
        10.0, bounds=(5.0, 11.0), step=0.1, doc="log10 of the heaviest subhalo mass, M☉."
    )
    noise = param.Boolean(True, doc="Poisson and background noise (peak S/N 25).")
    seed = param.Integer(
        0, bounds=(0, 2**31 - 1), doc="Seed of the substructure draw and of the noise."
    )


#: The widgets of the page, in display order (labels with units; bounds in :class:`LensView`).
CONTROLS = (
    Control("substructure", "Substructure class", "class", options=tuple(CLASSES)),
    Control("preset", "Instrument", "preset", options=LENS_PRESETS),
    Control("theta_e", "Einstein radius θ_E (arcsec)", "θ<sub>E</sub>", "arcsec", 2),
    Control("lens_e1", "Lens ellipticity e₁", "e<sub>1</sub>", "", 2),
    Control("lens_e2", "Lens ellipticity e₂", "e<sub>2</sub>", "", 2),
    Control("gamma1", "External shear γ₁", "γ<sub>1</sub>", "", 3),
    Control("gamma2", "External shear γ₂", "γ<sub>2</sub>", "", 3),
    Control("source_r_sersic", "Source size R_sérsic (arcsec)", "R<sub>src</sub>", "arcsec", 2),
    Control("source_x", "Source x (arcsec)", "x<sub>src</sub>", "arcsec", 2),
    Control("source_y", "Source y (arcsec)", "y<sub>src</sub>", "arcsec", 2),
    Control("source_n_sersic", "Source Sérsic index n", "n<sub>src</sub>", "", 2),
    Control("subhalo_mean", "Subhaloes ⟨N⟩ (Poisson mean)", "⟨N<sub>sub</sub>⟩", "", 0),
    Control("log_mass_min", "Subhalo mass min log₁₀ M (M☉)", "log M<sub>min</sub>", "M☉", 1),
    Control("log_mass_max", "Subhalo mass max log₁₀ M (M☉)", "log M<sub>max</sub>", "M☉", 1),
    Control("noise", "Noise", "noise"),
    Control("seed", "Seed", "seed"),
)


def snapshot(view: LensView) -> LensView:
    """A copy of ``view`` for a worker thread (the widgets may change the original)."""
    return LensView(**{n: v for n, v in view.param.values().items() if n != "name"})


def engine_settings(view: LensView) -> StrongLensParams:
    """The ``strong_lens`` kind's settings of one image of ``view``: its preset, class, seed,
    noise and subhalo population, θ_E fixed to the slider's, the lens at the origin.

    Raises
    ------
    ConfigError
        A lightest subhalo mass above the heaviest.
    """
    if view.log_mass_min > view.log_mass_max:
        raise ConfigError(
            f"subhalo mass min log10 M = {view.log_mass_min:g} must not exceed max "
            f"log10 M = {view.log_mass_max:g}"
        )
    theta = float(view.theta_e)
    return StrongLensParams(
        preset=view.preset, substructure=view.substructure, seed=int(view.seed), count=1,
        workers=1, noise=bool(view.noise), theta_e_min=theta, theta_e_max=theta,
        lens_offset_max=0.0, subhalo_mean=float(view.subhalo_mean),
        subhalo_mass_min=10.0 ** float(view.log_mass_min),
        subhalo_mass_max=10.0 ** float(view.log_mass_max),
    )  # fmt: skip


def lens_parameters(view: LensView, settings: StrongLensParams) -> dict:
    """The drawn parameters of image 0 (:func:`engine.physics.strong_lens.draw_parameters`:
    the substructure from the seed) with the macro model and the source of the sliders."""
    p = draw_parameters(settings, 0, view.substructure)
    p.update(
        theta_e=float(view.theta_e), lens_x=0.0, lens_y=0.0,
        lens_e1=float(view.lens_e1), lens_e2=float(view.lens_e2),
        gamma1=float(view.gamma1), gamma2=float(view.gamma2),
        source_x=float(view.source_x), source_y=float(view.source_y), source_mag=SOURCE_MAG,
        source_r_sersic=float(view.source_r_sersic),
        source_n_sersic=float(view.source_n_sersic), source_e1=0.0, source_e2=0.0,
    )  # fmt: skip
    return p


# ---------------------------------------------------------------------------------------------
# Critical curves and caustics (lenstronomy)
# ---------------------------------------------------------------------------------------------

_curves: LRUCache[dict] = LRUCache(CURVE_CACHE_SIZE)


def _model_key(models, kwargs, window: float, grid: float) -> tuple:
    rows = tuple(tuple(sorted((k, round(float(v), 12)) for k, v in kw.items())) for kw in kwargs)
    return (tuple(models), rows, round(window, 9), round(grid, 9))


def critical_curves(models: list[str], kwargs: list[dict], window: float, grid: float) -> dict:
    """Critical curves, caustics and the cut of a lenstronomy lens model (cached per model).

    Parameters
    ----------
    models, kwargs : list
        lenstronomy ``lens_model_list`` and ``kwargs_lens`` (the first model is the main lens,
        whose ``center_x``/``center_y`` or the origin centres the cut).
    window : float
        Side of the square (arcsec, centred on 0) searched for critical curves.
    grid : float
        Grid step of the search, arcsec.

    Returns
    -------
    dict
        ``critical`` and ``caustic``: lists of (x, y) arrays (arcsec; the image and source
        plane), ``cut``: (x, y) arrays of the cut in the source plane.
    """
    key = _model_key(models, kwargs, window, grid)
    kept = _curves.get(key)
    if kept is not None:
        return kept
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LensModel.lens_model_extensions import LensModelExtensions

    lens = LensModel(list(models))
    ra, dec, ra_c, dec_c = LensModelExtensions(lens).critical_curve_caustics(
        kwargs, compute_window=window, grid_scale=grid
    )
    crit = [(np.asarray(x, float), np.asarray(y, float)) for x, y in zip(ra, dec, strict=True)]
    caus = [(np.asarray(x, float), np.asarray(y, float)) for x, y in zip(ra_c, dec_c, strict=True)]
    cx, cy = (float(kwargs[0].get(k, 0.0)) for k in ("center_x", "center_y"))
    phi = np.linspace(0.0, 2 * math.pi, CUT_POINTS)
    bx, by = lens.ray_shooting(cx + CUT_RADIUS * np.cos(phi), cy + CUT_RADIUS * np.sin(phi), kwargs)
    out = {"critical": crit, "caustic": caus, "cut": (np.asarray(bx), np.asarray(by))}
    return _curves.put(key, out)


# ---------------------------------------------------------------------------------------------
# Classifiers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierInfo:
    """A classifier run: where it is and what images it takes.

    Attributes
    ----------
    path : str
        Run directory.
    name : str
        Its name (the folder's).
    size : int
        Pixels per side of its training images.
    pixel_scale : float or None
        Arcsec per pixel of its training images (None: unknown).
    """

    path: str
    name: str
    size: int
    pixel_scale: float | None


def checkpoint_file(path: Path) -> Path | None:
    """The non-empty ``checkpoints/best.pt`` (else ``last.pt``) of run directory ``path``."""
    for n in ("best.pt", "last.pt"):
        f = path / "checkpoints" / n
        if f.is_file() and f.stat().st_size > 0:
            return f
    return None


def run_task(config: Mapping) -> str:
    """The task of a run's ``config.json`` (``task``, else ``settings.task``; '' if none)."""
    return str(config.get("task") or (config.get("settings") or {}).get("task") or "")


def classifier_info(path: str | Path) -> ClassifierInfo | None:
    """The :class:`ClassifierInfo` of run directory ``path`` if it is a classification run with
    a checkpoint (size and pixel scale from its ``config.json`` ``data``, else from the
    checkpoint's task state), else None."""
    path = Path(path)
    config = read_json(path / "config.json") or {}
    if run_task(config) != "classification" or checkpoint_file(path) is None:
        return None
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    if "size" not in data:
        from engine.train.checkpoint import load_checkpoint

        try:
            data = load_checkpoint(path).get("task_state") or {}
        except ConfigError:
            return None
    try:
        size = int(data["size"])
    except (KeyError, TypeError, ValueError):
        return None
    scale = data.get("pixel_scale")
    return ClassifierInfo(str(path), path.name, size, None if scale is None else float(scale))


def list_classifiers(*roots) -> list[ClassifierInfo]:
    """Classification runs directly under the folders ``roots`` (in their order; runs of one
    folder newest first); missing folders are skipped."""
    out = []
    for root in roots:
        if root:
            out += [c for run in list_runs(root) if (c := classifier_info(run.path))]
    return out


def find_classifier(classifiers: list[ClassifierInfo], preset: str) -> ClassifierInfo | None:
    """The first of ``classifiers`` trained on images of the preset's size and pixel scale
    (a classifier without a recorded pixel scale matches any)."""
    inst = PRESETS[preset]
    for c in classifiers:
        if c.size == inst.size and (
            c.pixel_scale is None or math.isclose(c.pixel_scale, inst.pixel_scale, rel_tol=1e-6)
        ):
            return c
    return None


def load_classifier(path: str | Path) -> tuple:
    """(network, classification task) of a classifier run, loaded once per server process
    (again when its checkpoint changes; :func:`engine.evaluation.predict.load_task_network`).

    Raises
    ------
    ConfigError
        Missing or unusable checkpoint, or one of another task.
    """
    from explorer.checkpoints import load_network

    return load_network(path, "classification")


def classify(path: str | Path, image: np.ndarray) -> dict[str, float]:
    """``{class: probability}`` of one image ``(N, N)`` (e⁻ s⁻¹ per pixel) from the classifier
    run ``path`` (its classes in its output order; the values sum to 1).

    Raises
    ------
    ConfigError
        An unusable checkpoint, or an image of another size than its training images.
    """
    import torch

    model, task = load_classifier(path)
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None]
    if tuple(x.shape[1:]) != (task.size, task.size):
        raise ConfigError(
            f"the classifier takes {task.size}² images, not {x.shape[-1]}² (not resampled)"
        )
    probs = task.predict(model, x)[0].double().cpu().numpy()
    return {str(c): float(p) for c, p in zip(task.classes, probs, strict=True)}


# ---------------------------------------------------------------------------------------------
# One update
# ---------------------------------------------------------------------------------------------


@dataclass
class LensResult:
    """One image of the Lensing page and what is drawn over it (:func:`compute`).

    Attributes
    ----------
    settings : dict
        The :class:`LensView` values of the image.
    image : ndarray (N, N) float32
        e⁻ s⁻¹ per pixel, row 0 at the bottom (y = −half + pixel/2).
    half : float
        Half the side of the image, arcsec (pixel centres 0 at the middle).
    pixel_scale : float
        Arcsec per pixel.
    params : dict
        Scalars of the draw and of the rendering: n_subhalo, subhalo_mass_total [M☉],
        magnification, background_rms [e⁻/s], velocity_dispersion [km/s], vortex_mass [M☉],
        vortex_length [arcsec], ...
    critical, caustic : list of (x, y) arrays
        Critical curves (image plane) and caustics (source plane), arcsec.
    cut : (x, y) arrays
        The cut in the source plane, arcsec.
    subhalo_x, subhalo_y, subhalo_mass : ndarray
        Subhalo positions [arcsec] and masses [M☉] (cdm), or the vortex's point masses.
    probs : dict or None
        ``{class: probability}`` of the classifier (None without one).
    classifier : str
        Name of the classifier run ('' without one).
    classifier_error : str
        One line when the classifier failed.
    seconds : dict
        Measured compute times: image, curves, classifier, total (s).
    """

    settings: dict
    image: np.ndarray
    half: float
    pixel_scale: float
    params: dict
    critical: list
    caustic: list
    cut: tuple
    subhalo_x: np.ndarray
    subhalo_y: np.ndarray
    subhalo_mass: np.ndarray
    probs: dict | None = None
    classifier: str = ""
    classifier_error: str = ""
    seconds: dict = field(default_factory=dict)


def compute(view: LensView, classifier: ClassifierInfo | None = None) -> LensResult:
    """The image of ``view``, its curves and, with ``classifier``, its class probabilities.

    Pure (no page state): safe in a worker thread on a :func:`snapshot`.

    Raises
    ------
    ConfigError
        Settings the kind refuses (:func:`engine_settings`).
    """
    t0 = time.perf_counter()
    settings = engine_settings(view)
    inst = instrument(settings)
    p = lens_parameters(view, settings)
    image, extra = render(settings, p, inst)
    t1 = time.perf_counter()
    models, kwargs = lens_components(settings, p)
    window = inst.size * inst.pixel_scale
    curves = critical_curves(models, kwargs, window, CURVE_GRID * inst.pixel_scale)
    t2 = time.perf_counter()
    if view.substructure == "vortex":  # its point masses, from the lens model
        sx = np.array([kw["center_x"] for kw in kwargs[2:]])
        sy = np.array([kw["center_y"] for kw in kwargs[2:]])
        sm = np.full(len(sx), p["vortex_mass"] / max(1, len(sx)))
    else:
        sx, sy, sm = (np.asarray(p[k], float) for k in ("subhalo_x", "subhalo_y", "subhalo_mass"))
    params = {k: v for k, v in p.items() if np.ndim(v) == 0}
    params.update(extra)
    params["velocity_dispersion"] = velocity_dispersion(
        p["theta_e"], settings.z_lens, settings.z_source
    )
    result = LensResult(
        settings={n: v for n, v in view.param.values().items() if n != "name"},
        image=np.asarray(image, dtype=np.float32), half=0.5 * window,
        pixel_scale=inst.pixel_scale, params=params, critical=curves["critical"],
        caustic=curves["caustic"], cut=curves["cut"], subhalo_x=sx, subhalo_y=sy,
        subhalo_mass=sm,
    )  # fmt: skip
    t3 = time.perf_counter()
    if classifier is not None:
        result.classifier = classifier.name
        try:
            result.probs = classify(classifier.path, result.image)
        except Exception as exc:  # noqa: BLE001 - a broken checkpoint: one line on the page
            result.classifier_error = _one_line(exc)
    t4 = time.perf_counter()
    result.seconds = {
        "image": t1 - t0, "curves": t2 - t1, "classifier": t4 - t3, "total": t4 - t0,
    }  # fmt: skip
    return result


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    msg = text.splitlines()[0] if text else ""
    if isinstance(exc, ConfigError):
        return msg or "bad settings"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
