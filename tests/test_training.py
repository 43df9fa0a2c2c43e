"""Units of the training stack: schedule, seeds, models, the task's data and objective."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from engine.data.sources import derive_seed
from engine.nn.registry import MODELS, build_model, count_parameters
from engine.params import ConfigError, FieldParams, user_settings
from engine.physics import slabs
from engine.tasks.regression import Regression as ParameterRegression
from engine.train.checkpoint import load_checkpoint
from engine.train.schedule import epoch_of, lr_at
from engine.train.settings import (
    PRESETS,
    TrainParams,
    preset_task,
    resolve_params,
    train_params_class,
)


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 1.0, 10, 110, 0.1) for s in range(110)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lrs[10] == 1.0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[60] == pytest.approx(0.55)  # half way down the cosine
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert lr_at(5, 2.0, 0, 0) == 2.0


def test_seeds_and_epochs():
    assert derive_seed(0, 1, 5) == derive_seed(0, 1, 5)
    assert len({derive_seed(0, 1, s) for s in range(100)} | {derive_seed(1, 1, 0)}) == 101
    assert 0 <= derive_seed(2**62, 2, 10**9) < 2**63
    assert [epoch_of(s, 4) for s in range(10)] == [0, 0, 0, 0, 0, 1, 1, 1, 1, 2]


def test_train_params_share_field_bounds_and_hide_per_map_settings():
    names = user_settings(TrainParams)
    assert {"omega_m", "sigma8", "count"}.isdisjoint(names)
    for name in ("kind", "box_size", "thickness", "smoothing", "noise", "redshift", "seed", "size"):
        assert name in names
        assert getattr(TrainParams.param[name], "bounds", None) == getattr(
            FieldParams.param[name], "bounds", None
        )
    assert TrainParams.param.omega_m_min.bounds == FieldParams.param.omega_m.bounds
    for name, preset in PRESETS.items():
        cls = train_params_class(preset_task(name) or "regression")
        assert set(preset) - {"task"} <= set(user_settings(cls)), name
        missing = preset.get("dataset") and not Path(preset["dataset"]).exists()
        resolve_params(name, overrides={"dataset": ""} if missing else None)


def test_cnn_is_small_periodic_and_registered():
    assert "cnn" in MODELS
    model = build_model("cnn", width=16, circular_padding=True).eval()
    assert count_parameters(model) < 100_000
    x = torch.randn(2, 1, 32, 32)
    out = model(x)
    assert out.shape == (2, 4) and out.dtype == torch.float32
    # Periodic padding + global pooling: a shift by a multiple of the total stride (8) is exact
    # up to float rounding.
    shifted = model(torch.roll(x, shifts=(8, -16), dims=(-2, -1)))
    torch.testing.assert_close(shifted, out, atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="model='resnet' is not allowed"):
        build_model("resnet")
    with pytest.raises(ConfigError, match="cannot be built"):
        build_model("cnn", depth=3)


def test_task_uses_one_global_scale_and_uniform_prior():
    params = resolve_params("smoke", overrides={"size": 16})
    task = ParameterRegression(params, torch.device("cpu"))
    x, y = task.sample(64, torch.Generator().manual_seed(3))
    assert x.shape == (64, 1, 16, 16) and y.shape == (64, 2)
    assert float(y.min()) >= 0 and float(y.max()) < 1
    # Same generator state again, by hand: the input is the map over ONE fixed scale.
    gen = torch.Generator().manual_seed(3)
    theta = task.to_physical(torch.rand((64, 2), generator=gen))
    maps = slabs.generate_maps(params, theta[:, 0], theta[:, 1], gen)
    torch.testing.assert_close(x[:, 0] * task.scale, maps)
    assert task.scale == slabs.map_scale(params)
    # ...so the map amplitude still carries sigma8.
    amp = x.std(dim=(1, 2, 3))
    corr = torch.corrcoef(torch.stack([amp, y[:, 1]]))[0, 1]
    assert corr > 0.5


def test_gaussian_nll():
    params = resolve_params("smoke")
    task = ParameterRegression(params, torch.device("cpu"))
    y = torch.tensor([[0.2, 0.7]])
    sigma = 0.1
    out = torch.tensor([[0.3, 0.7, math.log(sigma), math.log(sigma)]])
    z2 = ((0.2 - 0.3) / sigma) ** 2  # and 0 for sigma8
    expected = 0.5 * math.log(2 * math.pi) + math.log(sigma) + 0.5 * (z2 + 0) / 2
    assert float(task.loss(out, y)) == pytest.approx(expected, rel=1e-5)
    mean, std = task.predict(build_model("cnn", **params.model_kwargs()), torch.zeros(2, 32, 32))
    assert mean.shape == std.shape == (2, 2) and bool((std > 0).all())


# ---------------------------------------------------------------------------------------------
# Schedule, augmentations, data, fine-tuning, EMA, logging
# ---------------------------------------------------------------------------------------------

#: Tiny in-process settings: 16² maps, 8 maps per step, 4 steps per epoch, one CPU thread.
TINY = {
    "size": 16,
    "batch_size": 8,
    "steps_per_epoch": 4,
    "epochs": 2,
    "val_maps": 8,
    "width": 4,
    "log_every": 2,
    "num_threads": 1,
    "device": "cpu",
    "eval_maps": 0,
    "warmup_steps": 2,
}


def _trainer(tmp_path, name="run", **overrides):
    from engine.runs import RunDir
    from engine.train.loop import Trainer

    params = resolve_params("smoke", overrides={**TINY, **overrides})
    return Trainer(params, RunDir(tmp_path / name).create(), torch.device("cpu"), progress=False)


def test_sgdr_schedule_restarts_after_warmup():
    lr = [lr_at(s, 1.0, 2, 100, 0.0, restart_period=4, restart_mult=2.0) for s in range(2 + 28)]
    assert lr[:2] == pytest.approx([0.5, 1.0])
    # cycles of 4, 8, 16 updates after warm-up: back to the peak at each restart
    starts = [2, 6, 14]
    assert [lr[s] for s in starts] == pytest.approx([1.0, 1.0, 1.0])
    assert lr[2 + 2] == pytest.approx(0.5)  # half way through the first cycle
    assert lr[6 + 4] == pytest.approx(0.5) and lr[14 + 8] == pytest.approx(0.5)
    for a, b in zip(starts, [*starts[1:], 30], strict=True):
        assert all(x > y for x, y in zip(lr[a : b - 1], lr[a + 1 : b], strict=True))
    equal = [lr_at(s, 2.0, 0, 10, 0.1, restart_period=5) for s in range(15)]
    assert equal[:5] == pytest.approx(equal[5:10]) and equal[5:10] == pytest.approx(equal[10:])
    assert equal[4] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 5))))
    # restart_period=0 is the single cosine of before
    assert [lr_at(s, 1.0, 10, 110, 0.1, 0, 3.0) for s in range(110)] == [
        lr_at(s, 1.0, 10, 110, 0.1) for s in range(110)
    ]


def _symmetries(m: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for t in (m, m.transpose(-1, -2)):
        out += [t, t.flip(-2), t.flip(-1), t.flip(-2).flip(-1)]
    return out


def test_augment_maps_symmetries_noise_and_smoothing():
    from engine.data.augment import augment_maps

    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert augment_maps(x, torch.Generator()) is x
    a = augment_maps(x, torch.Generator().manual_seed(1), flips=True)
    b = augment_maps(x, torch.Generator().manual_seed(1), flips=True)
    assert torch.equal(a, b)
    seen = set()
    for i in range(len(x)):  # every output is one of the 8 symmetries of its input
        match = [k for k, s in enumerate(_symmetries(x[i])) if torch.equal(s, a[i])]
        assert match, i
        seen.add(match[0])
    assert seen == set(range(8))
    smooth = augment_maps(x, torch.Generator().manual_seed(2), smoothing=3.0)
    assert bool((smooth.std(dim=(1, 2, 3)) <= x.std(dim=(1, 2, 3)) + 1e-6).all())
    torch.testing.assert_close(smooth.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)))
    noisy = augment_maps(x, torch.Generator().manual_seed(3), noise=0.5)
    extra = (noisy - x).std(dim=(1, 2, 3))
    assert float(extra.max()) < 0.5 * 1.5 and float(extra.max()) > 0.25


def test_train_batch_is_the_same_for_any_row_split_and_shard_count():
    for shards in (1, 2, 4):
        params = resolve_params(
            "smoke",
            overrides={**TINY, "batch_shards": shards, "augment_flips": True, "augment_noise": 0.1},
        )
        task = ParameterRegression(params, torch.device("cpu"))
        x, y = task.train_batch(3)
        assert x.shape == (8, 1, 16, 16) and y.shape == (8, 2)
        parts = [task.train_batch(3, a, a + 4) for a in (0, 4)]  # two DDP ranks
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        assert not torch.equal(task.train_batch(4)[1], y)
    with pytest.raises(ConfigError, match="multiple of batch_shards=3"):
        resolve_params("smoke", overrides={**TINY, "batch_shards": 3})


def test_fixed_prior_points():
    params = resolve_params("smoke", overrides={**TINY, "prior_points": 3})
    task = ParameterRegression(params, torch.device("cpu"))
    _, y = task.sample(32, torch.Generator().manual_seed(0))
    assert len(torch.unique(y, dim=0)) <= 3
    assert {tuple(r) for r in y.tolist()} <= {tuple(r) for r in task.source.points.tolist()}
    val_y = torch.cat([b[1] for b in task.validation_data()])
    assert len(torch.unique(val_y, dim=0)) <= 3


def test_other_kinds_on_the_fly():
    lpt = resolve_params(
        "smoke", overrides={**TINY, "kind": "2lpt", "box_size": 128.0, "thickness": 16.0}
    )
    assert lpt.map_settings().dim == 2 and lpt.map_settings().lpt_order == 2
    x, y = ParameterRegression(lpt, torch.device("cpu")).train_batch(0)
    assert x.shape == (8, 1, 16, 16) and bool(torch.isfinite(x).all())
    kappa = resolve_params(
        "smoke",
        overrides={
            **TINY,
            "kind": "kappa",
            "fov": 2.0,
            "prior_points": 2,
            "matter_power": "linear",
        },
    )
    task = ParameterRegression(kappa, torch.device("cpu"))
    x, y = task.train_batch(0)
    assert x.shape == (8, 1, 16, 16) and 0.3 < float(x.std()) < 3.0
    assert task.pixel == pytest.approx(2.0 * 60 / 16)  # arcmin
    assert resolve_params("smoke", overrides={"kind": "kappa"}).resolved_prior_points == 256
    with pytest.raises(ConfigError, match=r"size=2048 is out of range.*kind='2lpt'"):
        resolve_params("smoke", overrides={"kind": "2lpt", "size": 2048, "box_size": 8000.0})
    with pytest.raises(ConfigError, match="python -m engine dataset --kind kappa"):
        resolve_params("smoke", overrides={"kind": "kappa", "prior_points": 257})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_stages_groups_and_freezing_work_for_every_model(name):
    from engine.train.finetune import frozen_parameters, model_stages, param_groups

    model = build_model(name, in_channels=1, n_params=2, width=4, circular_padding=True)
    stages = model_stages(model)
    names = [n for n, _ in model.named_parameters()]
    assert len(stages) >= 2
    assert sorted(n for _, ns in stages for n in ns) == sorted(names)  # each param once
    groups = param_groups(model, 0.5)
    assert [g["lr_scale"] for g in groups] == [
        0.5 ** (len(stages) - 1 - i) for i in range(len(stages))
    ]
    backbone = frozen_parameters(model, ["backbone"])
    assert backbone == set(names) - set(stages[-1][1])
    first = stages[0][0]
    assert frozen_parameters(model, [first]) == set(stages[0][1])
    with pytest.raises(ConfigError, match="freeze='nope' matches no parameter"):
        frozen_parameters(model, ["nope"])


def test_freeze_gradual_unfreezing_discriminative_lr_and_init_from(tmp_path):
    t = _trainer(tmp_path, freeze=["backbone"], unfreeze_every=1, lr_decay=0.5)
    lrs = {g["stage"]: g["lr_scale"] for g in t.optimizer.param_groups}
    assert lrs == {"features": 0.5, "head": 1.0}
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    for _ in range(4):  # epoch 0: only the head trains
        t.train_step()
    assert [g["lr"] for g in t.optimizer.param_groups] == pytest.approx(
        [0.5 * t.optimizer.param_groups[1]["lr"], t.optimizer.param_groups[1]["lr"]]
    )
    after = t.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("features."))
    assert not all(torch.equal(before[k], after[k]) for k in after if k.startswith("head."))
    t.train_step()  # epoch 1: the features are released
    assert not torch.equal(
        before["features.0.0.weight"], t.model.state_dict()["features.0.0.weight"]
    )
    path = t.save("last.pt")

    u = _trainer(tmp_path, "ft", init_from=str(path))
    u.load_weights(path)
    for k, v in u.model.state_dict().items():
        assert torch.equal(v, t.model.state_dict()[k]), k
    assert u.optimizer.state_dict()["state"] == {} and u.step == 0
    with pytest.raises(ConfigError, match="init_from=.*the settings ask for 'cnn'"):
        _trainer(tmp_path, "bad", width=8).load_weights(path)
    with pytest.raises(ConfigError, match="no trainable parameter"):
        _trainer(tmp_path, "all", freeze=["features", "head"])
    with pytest.raises(ConfigError, match="init_from='missing.pt'"):
        resolve_params("smoke", overrides={"init_from": "missing.pt"})


def test_ema_augmentation_sgdr_resume_is_bit_identical(tmp_path):
    from engine.runs import RunDir

    extra = {
        "ema_decay": 0.9,
        "augment_flips": True,
        "augment_noise": 0.2,
        "augment_smoothing": 10.0,
        "restart_period": 2,
        "batch_shards": 2,
        "freeze": ["backbone"],
        "unfreeze_every": 1,
        "tf32": True,
        "channels_last": True,  # no-ops on CPU
    }
    whole = _trainer(tmp_path, "whole", **extra)
    assert whole.fit() == "completed" and whole.step == 8
    assert not whole.channels_last
    parts = _trainer(tmp_path, "parts", **extra)
    assert parts.fit(lambda: parts.step == 3) == "stopped"
    resumed = _trainer(tmp_path, "parts", **extra)
    resumed.restore()
    assert resumed.step == 3 and resumed.fit() == "completed"
    a, b = whole.state()["networks"]["model"], resumed.state()["networks"]["model"]
    for key in ("state", "raw_state"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert whole.state()["best"] == resumed.state()["best"]
    net = load_checkpoint(RunDir(tmp_path / "whole").checkpoint_dir / "last.pt")["networks"]
    diff = [
        not torch.equal(net["model"]["state"][k], net["model"]["raw_state"][k]) for k in a["state"]
    ]
    assert any(diff)  # the network's state holds the EMA weights
    # validation used the EMA weights
    val = whole.task.validate({"model": whole.emas["model"].module}, whole.task.validation_data())
    rows = [r for r in RunDir(tmp_path / "whole").metrics() if r["split"] == "val"]
    assert [r["value"] for r in rows if r["name"] == "loss"][-1] == pytest.approx(val["loss"])


def test_tensorboard_missing_or_present(tmp_path, monkeypatch):
    import importlib.machinery
    import sys
    import types

    from engine.train import settings as training

    monkeypatch.setattr(training, "tensorboard_available", lambda: False)
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        resolve_params("smoke", overrides={**TINY, "tensorboard": True})

    scalars = []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            scalars.append("closed")

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    fake.__spec__ = importlib.machinery.ModuleSpec("torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    monkeypatch.setattr(training, "tensorboard_available", lambda: True)
    t = _trainer(tmp_path, tensorboard=True, epochs=1)
    assert t.fit() == "completed"
    tags = {s[0] for s in scalars if s != "closed"}
    assert {"train/loss", "train/lr", "val/loss", "val/rmse_sigma8"} <= tags
    assert scalars[-1] == "closed"


def test_inference_checkpoint_drops_optimiser_state_and_refuses_resume(tmp_path):
    """``python -m engine.train.checkpoint --inference``: what a shipped model keeps (the EMA
    weights used for inference) predicts the same; resuming from it is one line."""
    from engine.runs import RunDir
    from engine.train.checkpoint import for_inference, main

    t = _trainer(tmp_path, "full", ema_decay=0.9)
    assert t.fit() == "completed"
    path = RunDir(tmp_path / "full").checkpoint_dir / "last.pt"
    full = load_checkpoint(path)
    size = path.stat().st_size
    assert main(["--inference", str(path)]) == 0
    slim = load_checkpoint(path)
    assert slim["inference_only"] and slim["optimizers"] == {} and path.stat().st_size < size / 2
    for k, v in full["networks"]["model"]["state"].items():
        assert torch.equal(v, slim["networks"]["model"]["state"][k])
    assert "raw_state" not in slim["networks"]["model"]
    assert for_inference(full)["networks"]["model"].keys() == slim["networks"]["model"].keys()
    again = _trainer(tmp_path, "full", ema_decay=0.9)
    with pytest.raises(ConfigError, match="inference only"):
        again.restore()
