"""Training on any dataset spec: generated kinds, our files, CAMELS-format multi-field maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import cli
from engine.data.sources import LabelledMaps
from engine.params import ConfigError
from engine.runs import RunDir
from engine.train.checkpoint import load_checkpoint, load_network
from engine.train.settings import resolve_params
from tests.realdata import CAMELS

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "assets" / "samples" / "camels" / "Maps_Mtot_Sample_LH_z=0.00.npy"
REAL_PARAMS = CAMELS / "params_LH_IllustrisTNG.txt"

#: Tiny CPU settings on top of the smoke preset.
TINY = {
    "batch_size": 8,
    "steps_per_epoch": 3,
    "epochs": 1,
    "val_maps": 8,
    "width": 4,
    "num_threads": 1,
    "device": "cpu",
    "eval_maps": 0,
}


def _sets(overrides: dict) -> list[str]:
    return [arg for k, v in overrides.items() for arg in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def camels_dir(tmp_path_factory) -> Path:
    """CAMELS-format files of two fields for 10 simulations (15 maps of 32² each): the maps are
    cut from the shipped Mtot sample (the Mgas field a smoothed, rescaled copy), the parameter
    rows are the first 10 of the real CAMELS IllustrisTNG LH table, so the split by simulation
    has 8 / 1 / 1 simulations."""
    d = tmp_path_factory.mktemp("camels")
    rng = np.random.default_rng(0)
    sample = np.load(SAMPLE)  # (30, 64, 64): 2 simulations
    n_sims = 10
    idx = rng.integers(0, len(sample), size=15 * n_sims)
    tot = sample[idx, ::2, ::2].astype(np.float32)  # 32² maps
    gas = (0.16 * (tot + np.roll(tot, 1, axis=-1)) / 2).astype(np.float32)
    np.save(d / "Maps_Mtot_IllustrisTNG_LH_z=0.00.npy", tot)
    np.save(d / "Maps_Mgas_IllustrisTNG_LH_z=0.00.npy", gas)
    lines = REAL_PARAMS.read_text().splitlines()
    header = [ln for ln in lines if ln.startswith("#")][-1]
    rows = [ln for ln in lines if ln.strip() and not ln.startswith("#")][:n_sims]
    (d / "params_LH_IllustrisTNG.txt").write_text("\n".join([header, *rows]) + "\n")
    return d


def test_smoke_trains_on_camels_two_fields_all_six_parameters(camels_dir, tmp_path):
    spec = f"camels:{camels_dir / 'Maps_Mtot_IllustrisTNG_LH_z=0.00.npy'}?fields=Mtot,Mgas&log=true"
    source = LabelledMaps(spec, None)
    assert source.channels == 2
    assert source.names == ("omega_m", "sigma8", "A_SN1", "A_AGN1", "A_SN2", "A_AGN2")
    train_sims = set(source._head["simulation"].values.tolist())
    val_sims = set(source._read("val")["simulation"].values.tolist())
    assert train_sims and val_sims and not train_sims & val_sims  # split by simulation
    assert len(source.scale) == 2 and all(s > 0 for s in source.scale)

    run = RunDir(tmp_path / "camels")
    argv = ["train", "--preset", "smoke", "--dataset", spec, "--run-dir", str(run.path)]
    assert cli.main([*argv, *_sets({**TINY, "targets": "all"})]) == 0
    assert run.status()["state"] == "completed"
    config = json.loads((run.path / "config.json").read_text())
    assert config["data"]["channels"] == 2 and len(config["data"]["names"]) == 6
    val = {r["name"] for r in run.metrics() if r["split"] == "val"}
    assert {"loss", "rmse_omega_m", "rmse_A_AGN2"} <= val
    model, ckpt = load_network(run.path)
    assert ckpt["task"] == "regression" and ckpt["task_state"]["channels"] == 2
    assert model(torch.zeros(3, 2, 32, 32)).shape == (3, 12)


@pytest.mark.parametrize("preset", ["gan_smoke", "diffusion_smoke"])
def test_emulators_train_on_camels_fields_with_the_same_command(camels_dir, tmp_path, preset):
    """The GAN and diffusion tasks train on CAMELS multifield maps, conditioned on all six
    parameters (positive fields: modelled in ln x), and sample at a chosen point of all six."""
    from engine.evaluation.sampling import Emulator

    spec = f"camels:{camels_dir / 'Maps_Mtot_IllustrisTNG_LH_z=0.00.npy'}?fields=Mtot,Mgas"
    run = RunDir(tmp_path / preset)
    argv = ["train", "--preset", preset, "--dataset", spec, "--run-dir", str(run.path)]
    assert cli.main([*argv, "--set", "targets=all", "--set", "size=32"]) == 0
    assert run.status()["state"] == "completed"
    em = Emulator(run.path)
    assert em.names == ("omega_m", "sigma8", "A_SN1", "A_AGN1", "A_SN2", "A_AGN2")
    assert em.channel_names == ["Mtot", "Mgas"] and em.task.log_offsets == [0.0, 0.0]
    point = {n: (lo + hi) / 2 for n, lo, hi in zip(em.names, em.low, em.high, strict=True)}
    maps = em.sample(point, count=2, seed=1)
    assert maps.shape == (2, 2, 32, 32) and (maps.values > 0).all()  # ln x decodes to x > 0
    assert list(maps["channel"].values) == ["Mtot", "Mgas"]
    with pytest.raises(ConfigError, match="give A_SN1"):
        em.sample({"omega_m": 0.3, "sigma8": 0.8}, count=1)


def test_generated_spec_and_our_dataset_file(tmp_path):
    # a generated kind as the dataset: maps on the fly with the spec's settings and prior box
    params = resolve_params(
        "smoke", overrides={**TINY, "dataset": "lognormal?size=16&omega_m=0.2:0.4"}
    )
    assert params.kind == "lognormal" and params.size == 16 and params.dataset == ""
    assert (params.omega_m_min, params.omega_m_max) == (0.2, 0.4)
    with pytest.raises(ConfigError, match="option 'count' does not apply"):
        resolve_params("smoke", overrides={"dataset": "grf?count=8"})
    with pytest.raises(ConfigError, match="remove split= from the spec"):
        resolve_params("smoke", overrides={"dataset": "camels:/x.npy?split=test"})
    with pytest.raises(ConfigError, match="targets='A_SN1'"):
        resolve_params("smoke", overrides={"targets": "A_SN1"})

    # a dataset of the dataset verb, through the CLI flag
    data = tmp_path / "d.zarr"
    assert (
        cli.main(
            [
                "dataset",
                "--kind",
                "grf",
                "--size",
                "16",
                "--count",
                "40",
                "--omega-m",
                "0.2:0.4",
                "--sigma8",
                "0.7:0.9",
                "--seed",
                "3",
                "--out",
                str(data),
            ]
        )  # fmt: skip
        == 0
    )
    run = RunDir(tmp_path / "zarr")
    argv = ["train", "--preset", "smoke", "--dataset", str(data), "--run-dir", str(run.path)]
    assert cli.main([*argv, *_sets({**TINY, "eval_maps": 4})]) == 0
    status = run.status()
    assert status["state"] == "completed" and not status.get("error"), status
    ckpt = load_checkpoint(run.path)
    assert ckpt["task_state"]["prior_low"] == pytest.approx([0.2, 0.7])
    assert (run.path / "report.json").is_file()


def test_settings_are_composed_of_parts_and_configs_may_use_sections(tmp_path):
    from engine.params import user_settings
    from engine.tasks.regression import RegressionParams
    from engine.tasks.settings import DataParams, ModelParams
    from engine.train.settings import LoopParams, TrainParams

    assert TrainParams.parts == (LoopParams, ModelParams, RegressionParams, DataParams)
    names = user_settings(TrainParams)
    for part in TrainParams.parts:
        for name in user_settings(part):
            assert TrainParams.owner[name] is part
            mine, theirs = TrainParams.param[name], part.param[name]
            assert getattr(mine, "bounds", None) == getattr(theirs, "bounds", None)
            assert mine.default == theirs.default and mine.doc == theirs.doc
    assert len(names) == sum(len(user_settings(p)) for p in TrainParams.parts)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("loop: {lr: 0.003, epochs: 2}\nmodel: {model: resnet18, width: 8}\nsize: 16\n")
    from engine.params import load_config_file

    p = resolve_params("smoke", config=load_config_file(cfg))
    assert (p.lr, p.epochs, p.model, p.width, p.size) == (0.003, 2, "resnet18", 8, 16)
    assert p.part(LoopParams).lr == 0.003 and p.part(ModelParams).model == "resnet18"
    with pytest.raises(ConfigError, match="given twice"):
        resolve_params("smoke", config={"lr": 0.1, "loop": {"lr": 0.2}})


def test_resolved_settings_are_instances_of_train_params():
    from engine.train.settings import TrainParams, train_params_class

    assert train_params_class("regression") is TrainParams
    assert isinstance(resolve_params("smoke"), TrainParams)


def test_folder_dataset_trains_and_is_evaluated_on_its_test_split(tmp_path):
    from engine.params import FieldParams
    from engine.physics.slabs import generate

    folder = tmp_path / "maps"
    folder.mkdir()
    rng = np.random.default_rng(0)
    om, s8 = rng.uniform(0.2, 0.4, 40), rng.uniform(0.7, 0.9, 40)
    settings = FieldParams(kind="lognormal", size=16, box_size=100.0, count=40, seed=1)
    maps = generate(settings, omega_m=om, sigma8=s8).values
    lines = ["file,Omega_m,sigma_8,simulation"]
    for i in range(40):
        np.save(folder / f"m{i:03d}.npy", maps[i])
        lines.append(f"m{i:03d}.npy,{om[i]:.5f},{s8[i]:.5f},{i // 2}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    run = RunDir(tmp_path / "run")
    spec = f"folder:{folder}?box_size=100"
    argv = ["train", "--preset", "smoke", "--dataset", spec, "--run-dir", str(run.path)]
    assert cli.main([*argv, *_sets({**TINY, "eval_maps": 8})]) == 0
    status = run.status()
    assert status["state"] == "completed" and not status.get("error"), status
    report = json.loads((run.path / "report.json").read_text())
    assert report["transfer"] is None and report["n_maps"] == 4  # 2 test simulations × 2 maps
    # no P(k) theory for folder maps: the P(k) likelihood calibrated on the training maps instead
    assert set(report["methods"]) == {"network", "pk_calibrated"}


def test_too_small_datasets_say_why(tmp_path):
    with pytest.raises(ConfigError, match="at least 10 simulations"):
        LabelledMaps(f"quijote:{ROOT / 'assets' / 'samples' / 'quijote' / 'LH'}")
