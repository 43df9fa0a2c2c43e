"""Conditional diffusion (engine.tasks.diffusion, engine.nn.unet): the U-Net, the scheduler use
against values computed by hand, training through the CLI, resume, sampling from checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from engine import cli
from engine.nn.registry import build_model
from engine.params import ConfigError
from engine.runs import RunDir
from engine.tasks import task_from_checkpoint
from engine.tasks.diffusion import ConditionalDiffusion, make_scheduler
from engine.train.checkpoint import build_network, load_checkpoint
from engine.train.settings import resolve_params

#: One CPU thread, no evaluation: the smoke preset as the tests run it.
FAST = {"num_threads": 1, "device": "cpu"}


def _sets(overrides: dict) -> list[str]:
    return [arg for k, v in overrides.items() for arg in ("--set", f"{k}={v}")]


def _train(run_dir, *extra: str, **overrides) -> int:
    argv = ["train", "--preset", "diffusion_smoke", "--run-dir", str(run_dir)]
    return cli.main([*argv, *extra, *_sets({**FAST, **overrides})])


# -- the network ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("size", [16, 32])
def test_unet_shapes_and_conditioning(channels, size):
    torch.manual_seed(0)
    net = build_model(
        "diffusion_unet", channels=channels, size=size, n_params=2, width=8, levels=3
    ).eval()
    x = torch.randn(3, channels, size, size)
    t = torch.tensor([0, 500, 999])
    y = torch.rand(3, 2)
    with torch.no_grad():
        out = net(x, t, y)
        other = net(x, t, y.flip(0))
        scalar_t = net(x, torch.tensor(500), y)
    assert out.shape == x.shape and out.dtype == torch.float32
    # every map's prediction depends on its parameters (and on t)
    assert all((out[i] - other[i]).abs().max() > 1e-4 for i in (0, 2))
    assert (scalar_t[1] - out[1]).abs().max() < 1e-5 and (scalar_t[0] - out[0]).abs().max() > 1e-4


def test_unet_is_periodic_and_checks_its_size():
    torch.manual_seed(0)
    kwargs = {"channels": 2, "size": 32, "n_params": 2, "width": 8, "levels": 3}
    x, t, y = torch.randn(2, 2, 32, 32), torch.tensor([10, 700]), torch.rand(2, 2)
    shift = (4, -8)  # multiples of 2**(levels - 1) = 4

    def roll_error(net):
        with torch.no_grad():
            a = net(torch.roll(x, shift, (-2, -1)), t, y)
            b = torch.roll(net(x, t, y), shift, (-2, -1))
        return float((a - b).abs().max() / b.abs().max())

    assert roll_error(build_model("diffusion_unet", **kwargs).eval()) < 1e-5
    zeros = build_model("diffusion_unet", circular_padding=False, **kwargs).eval()
    assert roll_error(zeros) > 1e-3  # zero padding: the edges are walls
    with pytest.raises(ConfigError, match="size=18 must be a multiple of 2\\*\\*\\(levels-1\\)=4"):
        build_model("diffusion_unet", size=18, levels=3)


# -- the scheduler, against values computed by hand ----------------------------------------------


class ZeroNet(nn.Module):
    """A dummy denoiser that predicts 0 (no noise, or no velocity) for 1-channel 8² maps."""

    channels, size = 1, 8

    def forward(self, x, t, y):
        assert t.shape == (len(x),) and y.shape == (len(x), 2)
        return torch.zeros_like(x)


def _task(prediction_type: str, beta_schedule: str, steps: int = 2) -> ConditionalDiffusion:
    """A diffusion task rebuilt from a hand-written task state (T = 1000)."""
    sched = make_scheduler(1000, beta_schedule, prediction_type)
    state = {
        "names": ["omega_m", "sigma8"],
        "prior_low": [0.1, 0.6],
        "prior_high": [0.5, 1.0],
        "map_scale": 1.0,
        "channels": 1,
        "kind": "grf",
        "channel_names": ["channel_0"],
        "log_offsets": [None],
        "u_mean": [0.0],
        "u_std": [1.0],
        "scheduler": dict(sched.config),
        "sampler": "ddim",
        "sample_steps": steps,
        "val_sample_steps": 1,
        "val_generated": 16,
    }
    return ConditionalDiffusion.from_state(state, "cpu")


def _alpha_bar(beta_schedule: str, T: int = 1000) -> np.ndarray:
    """ᾱ_t, t = 0 … T−1, float64: linear β (Ho et al. 2020) or the capped cosine schedule
    (Nichol & Dhariwal 2021, eq. 17, β ≤ 0.999)."""
    if beta_schedule == "linear":
        beta = np.linspace(1e-4, 0.02, T)
    else:
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        beta = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    return np.cumprod(1 - beta)


def _ddim_by_hand(x_T: torch.Tensor, a: np.ndarray, timesteps, prediction_type: str):
    """DDIM (η = 0, Song et al. 2021 eq. 12) of a model that predicts 0, in float64."""
    x = x_T.double()
    for i, t in enumerate(timesteps):
        a_t = a[t]
        a_p = a[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        if prediction_type == "epsilon":  # x̂0 = x/√ᾱ_t, ε̂ = 0
            x0, eps = x / math.sqrt(a_t), 0 * x
        else:  # v̂ = 0: x̂0 = √ᾱ_t x, ε̂ = √(1−ᾱ_t) x
            x0, eps = math.sqrt(a_t) * x, math.sqrt(1 - a_t) * x
        x = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p) * eps
    return x


@pytest.mark.parametrize(
    "prediction_type, beta_schedule, steps, timesteps",
    [
        ("epsilon", "linear", 1, [999]),
        ("epsilon", "linear", 2, [999, 499]),
        ("v_prediction", "squaredcos_cap_v2", 2, [999, 499]),
        ("v_prediction", "linear", 4, [999, 749, 499, 249]),
    ],
)
def test_ddim_with_a_zero_model_matches_the_hand_computation(
    prediction_type, beta_schedule, steps, timesteps
):
    task = _task(prediction_type, beta_schedule, steps)
    a = _alpha_bar(beta_schedule)
    np.testing.assert_allclose(task.scheduler.alphas_cumprod.double().numpy(), a, rtol=2e-5)
    y = torch.rand(3, 2)
    calls = []
    out = task.sample_normalised(
        {"unet": ZeroNet()},
        y,
        torch.Generator().manual_seed(5),
        progress=lambda i, n: calls.append((i, n)),
    )
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    want = _ddim_by_hand(x_T, a, timesteps, prediction_type)
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-6)
    assert calls == [(i, steps) for i in range(1, steps + 1)]
    if prediction_type == "epsilon":  # the closed form: x_T / √ᾱ_{T−1}
        torch.testing.assert_close(
            out.double(), x_T.double() / math.sqrt(a[999]), rtol=1e-4, atol=0
        )


def test_scheduler_config_round_trips_and_bad_schedules_are_refused():
    from diffusers import DDPMScheduler

    task = _task("v_prediction", "squaredcos_cap_v2")
    state = task.state()
    assert state["scheduler"]["prediction_type"] == "v_prediction"
    again = DDPMScheduler.from_config(state["scheduler"])
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(again.config) == public(task.scheduler.config) == state["scheduler"]
    assert ConditionalDiffusion.from_state(state, "cpu").state() == state
    with pytest.raises(ConfigError, match="prediction_type='epsilon' is ill-conditioned"):
        resolve_params("diffusion_smoke", overrides={"prediction_type": "epsilon"})
    resolve_params(
        "diffusion_smoke", overrides={"prediction_type": "epsilon", "beta_schedule": "linear"}
    )
    with pytest.raises(ConfigError, match="sample_steps=200 must be at most train_timesteps=100"):
        resolve_params("diffusion_smoke", overrides={"sample_steps": 200, "train_timesteps": 100})
    with pytest.raises(ConfigError, match="sampler='ddpm' is not allowed"):
        resolve_params("diffusion_smoke", overrides={"sampler": "ddpm"})
    with pytest.raises(ConfigError, match="steps=0 must be in \\[1, 1000\\]"):
        task.sample_normalised({"unet": ZeroNet()}, torch.rand(1, 2), torch.Generator(), steps=0)
    with pytest.raises(ConfigError, match="levels=4 needs a map size that is a multiple of 8"):
        resolve_params("diffusion_smoke", overrides={"size": 20, "levels": 4})
    params = resolve_params("diffusion_smoke", overrides={"size": 20, "levels": 3})
    with pytest.raises(ConfigError, match="levels=4 needs .* 20 pixels wide .*levels ≤ 3"):
        params.levels = 4  # as if the size came from a dataset
        ConditionalDiffusion(params, torch.device("cpu")).network_specs()


@pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning"
)  # diffusers, numpy 2
def test_dpm_sampler_is_deterministic_and_honours_steps():
    task = _task("v_prediction", "squaredcos_cap_v2", steps=5)
    y, calls = torch.rand(2, 2), []

    def draw(seed):
        return task.sample_normalised(
            {"unet": ZeroNet()},
            y,
            torch.Generator().manual_seed(seed),
            sampler="dpm",
            progress=lambda i, n: calls.append(n),
        )

    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.isfinite(a).all()
    assert calls == [5] * 15


class GaussianNet(nn.Module):
    """The exact v-prediction denoiser of maps whose pixels are independent N(0, s²): for
    x_t = √ᾱ x0 + √(1−ᾱ) ε, E[x0 | x_t] = √ᾱ s² x_t / (ᾱ s² + 1 − ᾱ) and
    E[v | x_t] = √ᾱ E[ε | x_t] − √(1−ᾱ) E[x0 | x_t] (Salimans & Ho 2022, v = √ᾱ ε − √(1−ᾱ) x0)."""

    channels, size = 1, 8

    def __init__(self, s: float, alpha_bar: torch.Tensor):
        super().__init__()
        self.s, self.alpha_bar = s, alpha_bar.double()

    def forward(self, x, t, y):
        a = self.alpha_bar[t].view(-1, 1, 1, 1)
        xd = x.double()
        x0 = a.sqrt() * self.s**2 * xd / (a * self.s**2 + 1 - a)
        eps = (xd - a.sqrt() * x0) / (1 - a).sqrt()
        return (a.sqrt() * eps - (1 - a).sqrt() * x0).float()


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("sampler, steps", [("ddim", 400), ("dpm", 25), ("sde", 25)])
def test_samplers_with_the_exact_denoiser_draw_the_data_distribution(sampler, steps):
    """With the exact denoiser of N(0, s²) pixels each sampler must draw pixels of variance s²
    (s = 2.5: a scale the standardised maps' tails reach): 128 maps × 64 pixels, so the sample
    variance's relative standard error is √(2/8192) = 1.6 %; tolerance 5 % (3σ). DDIM, first
    order, needs many steps (25: 0.87 of the variance, 100: 0.97); 400 steps do not divide
    T = 1000, where diffusers' DDIMScheduler.step drew 0.69 of it. The SDE sampler draws fresh
    noise each step: same seed ⇒ same maps, another sampler ⇒ other maps."""
    task = _task("v_prediction", "squaredcos_cap_v2", steps=steps)
    net = GaussianNet(2.5, task.scheduler.alphas_cumprod)
    y = torch.rand(128, 2)
    x = task.sample_normalised({"unet": net}, y, torch.Generator().manual_seed(0), sampler=sampler)
    var = x.double().var().item()
    assert abs(var / 2.5**2 - 1) < 0.05, (sampler, var)
    assert abs(x.double().mean().item()) < 3 * 2.5 / math.sqrt(x.numel())
    if sampler == "sde":
        again, other = (
            task.sample_normalised({"unet": net}, y, torch.Generator().manual_seed(0), sampler=s)
            for s in ("sde", "dpm")
        )
        torch.testing.assert_close(again, x)  # seeded: reproducible
        assert not torch.allclose(again, other)  # the step noise makes other maps


# -- training, resume and sampling through the engine --------------------------------------------


def test_smoke_run_trains_validates_and_samples_from_its_checkpoint(tmp_path):
    from engine.evaluation.sampling import Emulator

    run = RunDir(tmp_path / "run")
    assert _train(run.path) == 0
    assert run.status()["state"] == "completed"
    rows = run.metrics()
    train = [r["value"] for r in rows if (r["split"], r["name"]) == ("train", "loss")]
    val = {(r["epoch"], r["name"]): r["value"] for r in rows if r["split"] == "val"}
    assert len(train) == 2 and all(math.isfinite(v) for v in train)
    assert {(e, n) for e in (0, 1) for n in ("loss", "fid", "fid_floor", "pk_error")} <= set(val)
    assert all(math.isfinite(v) for v in val.values())

    ckpt = load_checkpoint(run.checkpoint_dir / "best.pt")
    assert ckpt["task"] == "diffusion" and set(ckpt["networks"]) == {"unet"}
    entry = ckpt["networks"]["unet"]
    assert entry["name"] == "diffusion_unet" and "raw_state" in entry  # EMA weights in "state"
    assert entry["kwargs"]["size"] == 16 and entry["kwargs"]["channels"] == 1
    task = task_from_checkpoint(ckpt)
    nets = {name: build_network(e) for name, e in ckpt["networks"].items()}
    theta = torch.tensor([[0.3, 0.8]] * 5)
    calls = []

    def draw(seed, **kw):
        return task.generate(nets, theta, torch.Generator().manual_seed(seed), **kw)

    maps = draw(0, steps=3, batch_size=2, progress=lambda i, n: calls.append((i, n)))
    assert maps.shape == (5, 1, 16, 16) and maps.dtype == torch.float32
    assert calls == [(i, 9) for i in range(1, 10)]  # 3 steps × 3 batches
    assert torch.equal(maps, draw(0, steps=3, batch_size=2))
    assert not torch.equal(maps, draw(1, steps=3, batch_size=2))
    # map units: the decoded network-space samples (the same draws)
    y = task.normalise(theta)
    x = task.sample_normalised(nets, y[:2], torch.Generator().manual_seed(0), steps=3)
    torch.testing.assert_close(maps[:2], task.decode(x))
    assert not torch.allclose(maps[:2], x)  # grf maps: standardised by their train std
    # the default number of steps is the setting (8 in the preset), and the Emulator's view
    em = Emulator(run.path)
    calls.clear()
    da = em.sample(
        {"omega_m": 0.3, "sigma8": 0.8}, count=2, seed=3, progress=lambda i, n: calls.append(n)
    )
    assert calls == [8] * 8 and da.attrs["sample_steps"] == 8 and da.shape[-2:] == (16, 16)
    # the sampler: the model's setting by default, DPM-Solver++ on request (other maps from the
    # same noise), an unknown one refused in one line
    assert em.default_sampler == "ddim" and da.attrs["sampler"] == "ddim"
    dpm = em.sample({"omega_m": 0.3, "sigma8": 0.8}, count=2, seed=3, sampler="dpm")
    assert dpm.attrs["sampler"] == "dpm" and not np.array_equal(dpm.values, da.values)
    np.testing.assert_array_equal(
        dpm.values, em.sample({"omega_m": 0.3, "sigma8": 0.8}, count=2, seed=3, sampler="dpm")
    )
    with pytest.raises(ConfigError, match="sampler='euler' is not allowed: one of ddim, dpm, sde"):
        em.sample({"omega_m": 0.3, "sigma8": 0.8}, sampler="euler")


def test_resume_reaches_the_same_weights(tmp_path):
    # A constant learning rate (no warm-up, no decay), so the schedule of the shorter first part
    # is the same as the whole run's; the noise, time steps, data and EMA follow the step.
    constant = {"warmup_steps": 0, "final_lr_fraction": 1.0}
    whole, parts = RunDir(tmp_path / "whole"), RunDir(tmp_path / "parts")
    assert _train(whole.path, **constant) == 0
    assert _train(parts.path, epochs=1, **constant) == 0
    assert load_checkpoint(parts.checkpoint_dir / "last.pt")["step"] == 5
    argv = ["train", "--run-dir", str(parts.path), "--resume", "--set", "epochs=2"]
    assert cli.main(argv) == 0
    a = load_checkpoint(whole.checkpoint_dir / "last.pt")
    b = load_checkpoint(parts.checkpoint_dir / "last.pt")
    assert a["step"] == b["step"] == 10
    for key in ("state", "raw_state"):
        sa, sb = a["networks"]["unet"][key], b["networks"]["unet"][key]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (key, k)
    assert a["best"] == b["best"] and a["task_state"] == b["task_state"]
