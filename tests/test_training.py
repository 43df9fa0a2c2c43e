"""Units of the training stack: schedule, seeds, models, the task's data and objective."""

from __future__ import annotations

import math

import pytest
import torch

from engine import fields
from engine.models import MODELS, build_model, count_parameters
from engine.params import ConfigError, FieldParams, user_settings
from engine.training import (
    PRESETS,
    ParameterRegression,
    TrainParams,
    derive_seed,
    epoch_of,
    lr_at,
    resolve_params,
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
        assert set(preset) <= set(names), name
        resolve_params(name)


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
    maps = fields.generate_maps(params, theta[:, 0], theta[:, 1], gen)
    torch.testing.assert_close(x[:, 0] * task.scale, maps)
    assert task.scale == fields.map_scale(params)
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
