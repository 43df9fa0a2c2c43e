"""The conditional GAN: networks (shapes, conditioning, spectral norm, periodicity), the task
through ``python -m engine train`` (metrics, checkpoints, resume), sampling from a checkpoint,
a two-channel dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from engine import cli
from engine.nn.gan import Discriminator, Generator, UpConv
from engine.nn.registry import build_model, count_parameters
from engine.params import ConfigError
from engine.runs import RunDir
from engine.tasks import task_from_checkpoint
from engine.tasks.gan import ConditionalGAN, roll_maps
from engine.train.checkpoint import build_network, load_checkpoint
from engine.train.settings import resolve_params

#: On top of the gan_smoke preset: one CPU thread, EMA on (the generator's weights averaged).
SMOKE = {"num_threads": 1, "device": "cpu", "ema_decay": 0.9}


def _sets(overrides: dict) -> list[str]:
    return [arg for k, v in overrides.items() for arg in ("--set", f"{k}={v}")]


def _train(run: RunDir, *extra: str, **overrides) -> int:
    argv = ["train", "--preset", "gan_smoke", "--run-dir", str(run.path), *extra]
    return cli.main([*argv, *_sets({**SMOKE, **overrides})])


@pytest.mark.parametrize("circular", [True, False])
def test_upconv_is_nearest_upsampling_then_conv(circular):
    torch.manual_seed(0)
    up = UpConv(3, 5, circular)
    x = torch.randn(2, 3, 6, 6)
    big = F.interpolate(x, scale_factor=2, mode="nearest")
    pad = F.pad(big, (1, 1, 1, 1), mode="circular" if circular else "constant")
    ref = F.conv2d(pad, up.weight, up.bias)
    assert torch.allclose(up(x), ref, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("size", [16, 32, 64])
def test_network_shapes(channels, size):
    g = build_model("gan_generator", channels=channels, size=size, width=8, latent_dim=16)
    d = build_model("gan_discriminator", channels=channels, size=size, width=8)
    z, y = torch.randn(3, 16), torch.rand(3, 2)
    x = g(z, y)
    assert x.shape == (3, channels, size, size) and x.dtype == torch.float32
    out = d(x, y)
    assert out.shape == (3,) and out.dtype == torch.float32


def test_sizes_and_errors():
    g = Generator(channels=2, size=64, width=32)
    d = Discriminator(channels=2, size=64, width=32)
    assert count_parameters(g) < 1_000_000 and count_parameters(d) < 1_000_000
    with pytest.raises(ConfigError, match="size=48 must be a power of two"):
        Generator(size=48)
    with pytest.raises(ConfigError, match="size=4 must be a power of two ≥ 8"):
        build_model("gan_discriminator", size=4)
    with pytest.raises(ConfigError, match="width=0 must be a positive integer"):
        Generator(width=0)
    with pytest.raises(ConfigError, match="size=24 must be a power of two"):
        resolve_params("gan_smoke", overrides={"size": 24})
    with pytest.raises(ConfigError, match="objective="):
        resolve_params("gan_smoke", overrides={"objective": "minimax"})
    with pytest.raises(ConfigError, match="augment_noise=0.1 must be 0 for a generator"):
        resolve_params("gan_smoke", overrides={"augment_noise": 0.1})
    with pytest.raises(ConfigError, match="preset='gan_smoke' is a preset of task 'gan'"):
        resolve_params("gan_smoke", task="regression")


def test_fakes_of_a_row_range_are_those_of_the_whole_batch():
    # DDP: each process generates its rows of the same fakes (latents drawn for the full batch)
    params = resolve_params("gan_smoke", overrides={"val_maps": 8})
    task = ConditionalGAN(params, "cpu")
    g = task.build_networks()["generator"].eval()
    y = torch.rand(8, 2)
    with torch.no_grad():
        whole = task._fake(g, y, torch.Generator().manual_seed(3), (0, 8), 8)
        part = task._fake(g, y[4:], torch.Generator().manual_seed(3), (4, 8), 8)
    assert torch.allclose(whole[4:], part, atol=1e-5)
    assert task.optimizer_options("discriminator") == {"betas": (0.0, 0.9), "lr_scale": 2.0}
    assert task.optimizer_options("generator")["lr_scale"] == 1.0


def test_conditioning_spectral_norm_and_periodicity():
    torch.manual_seed(0)
    g = Generator(size=16, width=8, latent_dim=16).eval()
    d = Discriminator(size=16, width=8)
    z = torch.randn(1, 16).repeat(2, 1)
    y = torch.tensor([[0.1, 0.2], [0.9, 0.7]])
    with torch.no_grad():
        x = g(z, y)
        assert not torch.allclose(x[0], x[1], atol=1e-4)  # same z, other parameters
        assert torch.allclose(g(z[:1], y[:1]), x[:1], atol=1e-5)  # per map: no batch statistics
    # spectral norm on every convolution and linear layer of the discriminator
    layers = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
    assert all("SpectralNorm" in type(m.parametrizations.weight[0]).__name__ for m in layers)
    assert not any(parametrize.is_parametrized(m) for m in g.modules())
    d.eval()
    with torch.no_grad():
        # periodic padding, pooling to 4x4 and a sum over pixels: D is invariant under periodic
        # shifts by multiples of its total stride (16 / 4 = 4 pixels)
        x = torch.randn(2, 1, 16, 16)
        shifted = torch.roll(x, shifts=(4, -8), dims=(-2, -1))
        assert torch.allclose(d(x, y), d(shifted, y), atol=1e-4)
        assert not torch.allclose(d(x, y), d(x, y.flip(0)), atol=1e-4)  # the projection term
    s = torch.tensor([[1, 2], [0, 5]])
    x = torch.randn(2, 3, 8, 8)
    out = roll_maps(x, s)
    for b in range(2):
        assert torch.equal(out[b], torch.roll(x[b], tuple(s[b].tolist()), dims=(-2, -1)))


def test_gan_smoke_trains_checkpoints_resumes_and_samples(tmp_path):
    whole, parts = RunDir(tmp_path / "whole"), RunDir(tmp_path / "parts")
    # constant lr after warm-up, so the schedule of a 1-epoch run is that of a 2-epoch one
    flat = {"final_lr_fraction": 1.0}
    assert _train(whole, **flat) == 0
    assert whole.status()["state"] == "completed"
    rows = whole.metrics()
    train = {r["name"] for r in rows if r["split"] == "train"}
    assert {"loss", "loss_d", "loss_g", "grad_norm_d", "grad_norm_g", "logit_real"} <= train
    val = [r for r in rows if r["split"] == "val"]
    assert {"fid", "fid_floor", "pk_error"} <= {r["name"] for r in val}
    assert all(np.isfinite(r["value"]) for r in rows)
    ckpt = load_checkpoint(whole.checkpoint_dir / "last.pt")
    assert ckpt["task"] == "gan" and ckpt["step"] == 10
    nets = ckpt["networks"]
    assert list(nets) == ["generator", "discriminator"]
    assert nets["generator"]["name"] == "gan_generator"
    assert nets["discriminator"]["name"] == "gan_discriminator"
    assert "raw_state" in nets["generator"] and "raw_state" not in nets["discriminator"]
    assert ckpt["optimizers"]["discriminator"]["param_groups"][0]["betas"] == (0.0, 0.9)
    assert (whole.checkpoint_dir / "best.pt").is_file()
    assert not (whole.path / "report.json").exists()  # eval_maps 0: no regression evaluation

    # 1 epoch, then --resume to 2 epochs: the same weights as the uninterrupted run
    assert _train(parts, **flat, epochs=1) == 0
    argv = ["train", "--run-dir", str(parts.path), "--resume", "--set", "epochs=2"]
    assert cli.main(argv) == 0
    resumed = load_checkpoint(parts.checkpoint_dir / "last.pt")
    assert resumed["step"] == 10
    for name in ("generator", "discriminator"):
        a, b = nets[name], resumed["networks"][name]
        for key in ("state", "raw_state"):
            for k in a.get(key, {}):
                assert torch.equal(a[key][k], b[key][k]), (name, key, k)

    # sampling from the checkpoint: map units, right shape, same seed => same maps
    task = task_from_checkpoint(ckpt)
    assert isinstance(task, ConditionalGAN) and task.latent_dim == 8 and task.size == 16
    g = build_network(nets["generator"])
    theta = [[0.3, 0.8], [0.2, 0.7], [0.45, 0.95]]

    def draw(seed: int) -> torch.Tensor:
        return task.generate({"generator": g}, theta, torch.Generator().manual_seed(seed))

    maps = draw(1)
    assert maps.shape == (3, 1, 16, 16) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all()
    assert torch.equal(maps, draw(1)) and not torch.equal(maps, draw(2))
    y = task.normalise(torch.tensor(theta))
    with torch.no_grad():
        raw = task.sample_normalised({"generator": g}, y, torch.Generator().manual_seed(1))
    assert torch.allclose(maps, task.decode(raw))  # in map units
    with pytest.raises(ConfigError, match="omega_m must be in"):
        draw_bad = [[0.9, 0.8]]
        task.generate({"generator": g}, draw_bad, torch.Generator())


def test_wgan_gp_r1_and_several_discriminator_steps(tmp_path):
    run = RunDir(tmp_path / "wgan")
    settings = {"objective": "wgan-gp", "r1_gamma": 1.0, "d_steps": 2, "epochs": 1}
    assert _train(run, **settings) == 0
    rows = [r for r in run.metrics() if r["split"] == "train"]
    names = {r["name"] for r in rows}
    assert {"penalty_gp", "penalty_r1", "loss_d", "loss_g"} <= names
    assert all(np.isfinite(r["value"]) for r in rows)


def _two_channel_dataset(path, n: int = 40, size: int = 16) -> None:
    """A dataset file of (delta, theta) maps in the layout of ``python -m engine dataset``:
    ``(sample, channel, y, x)``, per-sample omega_m, sigma8 and split; delta a lognormal field
    whose amplitude grows with sigma8, theta a Gaussian one scaled by omega_m."""
    import xarray as xr

    rng = np.random.default_rng(0)
    om = rng.uniform(0.2, 0.4, n)
    s8 = rng.uniform(0.7, 0.9, n)
    g = rng.standard_normal((n, size, size))
    g = (g + np.roll(g, 1, -1) + np.roll(g, 1, -2)) / np.sqrt(3)
    sig = s8[:, None, None]
    delta = np.exp(sig * g - sig**2 / 2) - 1
    theta = om[:, None, None] * rng.standard_normal((n, size, size))
    maps = np.stack([delta, theta], axis=1).astype(np.float32)
    split = np.zeros(n, np.int8)
    split[-10:-5], split[-5:] = 1, 2
    pix = (np.arange(size) + 0.5) * 2.0
    da = xr.DataArray(
        maps,
        dims=("sample", "channel", "y", "x"),
        coords={
            "y": pix,
            "x": pix,
            "omega_m": ("sample", om),
            "sigma8": ("sample", s8),
            "split": ("sample", split),
        },
        attrs={
            "kind": "pm",
            "fields": "delta,theta",
            "units": "dimensionless",
            "omega_m_range": [0.2, 0.4],
            "sigma8_range": [0.7, 0.9],
        },
        name="fields",
    )
    da.to_dataset().to_zarr(path, consolidated=False)


def test_two_channel_dataset(tmp_path):
    data = tmp_path / "pm2c.zarr"
    _two_channel_dataset(data)
    run = RunDir(tmp_path / "two")
    assert _train(run, dataset=str(data), epochs=1, augment_flips=True) == 0
    assert run.status()["state"] == "completed"
    ckpt = load_checkpoint(run.path)
    state = ckpt["task_state"]
    assert state["channels"] == 2 and state["channel_names"] == ["delta", "theta"]
    assert state["log_offsets"] == [1.0, None]  # ln(1 + delta), theta linear
    assert ckpt["networks"]["generator"]["kwargs"]["channels"] == 2
    task = task_from_checkpoint(ckpt)
    g = build_network(ckpt["networks"]["generator"])
    maps = task.generate({"generator": g}, [[0.3, 0.8]] * 4, torch.Generator().manual_seed(0))
    assert maps.shape == (4, 2, 16, 16)
    assert (maps[:, 0] > -1).all()  # a density contrast, back in map units


def test_log_epsilon_moves_empty_pixels_next_to_the_sparse_ones(tmp_path):
    """ln(1 + ε + δ): the fitted offset is 1 + ε, an empty pixel (δ = −1) encodes to ln ε
    (standardised), decodes back to −1, and network values below it decode to −1, not below."""
    data = tmp_path / "pm2c.zarr"
    _two_channel_dataset(data)
    run = RunDir(tmp_path / "eps")
    assert _train(run, dataset=str(data), epochs=1, log_epsilon=0.1) == 0
    task = task_from_checkpoint(load_checkpoint(run.path))
    assert task.log_offsets == [pytest.approx(1.1), None]
    maps = torch.zeros(3, 2, 4, 4)
    maps[0, 0, 0, 0], maps[1, 0, 1, 1] = -1.0, 5.0
    x = task.encode(maps)
    m, s = task.u_mean[0], task.u_std[0]
    assert float(x[0, 0, 0, 0]) == pytest.approx((math.log(0.1) - m) / s, rel=1e-5)
    torch.testing.assert_close(task.decode(x), maps, atol=1e-5, rtol=1e-5)
    below = x.clone()
    below[2, 0] = (math.log(0.01) - m) / s  # δ = −1.09 before the clip
    assert torch.equal(task.decode(below)[2, 0], torch.full((4, 4), -1.0))
