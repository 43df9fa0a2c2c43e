"""Networks of engine.nn: shapes, gradients, sizes, periodic symmetry, multi-channel input, the
hybrid's P(k), the shipped checkpoints."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.nn.blocks import LOG_STD_MAX, LOG_STD_MIN
from engine.nn.hybrid import InputTransform, LogPowerSpectrum, set_map_scale
from engine.nn.registry import (
    MODELS,
    build_model,
    count_parameters,
    model_options,
    summary,
)
from engine.params import ConfigError
from engine.physics import stats

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "assets" / "models").glob("*/checkpoints/best.pt"))

COMMON = ("in_channels", "n_params", "width", "circular_padding")


def _maps(b: int, c: int, n: int, seed: int = 0) -> torch.Tensor:
    """(b, c, n, n) float32 test maps with a red spectrum (smoothed white noise plus noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, n, n, generator=g)
    smooth = torch.fft.irfft2(torch.fft.rfft2(x) * 0.3, s=(n, n))
    smooth = smooth + torch.roll(smooth, 1, -1) + torch.roll(smooth, 1, -2)
    return smooth + 0.1 * torch.randn(b, c, n, n, generator=g)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_takes_the_common_kwargs(name):
    assert set(COMMON) <= set(model_options(name))
    model = build_model(name)
    assert model.min_size >= 1 and model.total_stride >= 1


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(("c", "n"), [(1, 32), (3, 64)])
def test_forward_shape_finite_and_batch_independent(name, c, n):
    model = build_model(name, in_channels=c, n_params=2, width=8).eval()
    x = _maps(2, c, n)
    with torch.no_grad():
        out = model(x)
        single = model(x[1:])
    assert out.shape == (2, 4) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(single, out[1:], atol=1e-5, rtol=1e-5)  # GroupNorm: per map
    if name != "cnn":  # the new models squash their log-stds into the task's range
        assert (out[:, 2:] > LOG_STD_MIN).all() and (out[:, 2:] < LOG_STD_MAX).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_reach_every_parameter_and_the_input(name):
    model = build_model(name, in_channels=2, width=8)
    x = _maps(2, 2, 32).requires_grad_(True)
    model(x).square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_resnet18_parameter_counts():
    # The body (BasicBlocks) of our ResNet-18 at width 64 is torchvision's resnet18 without its
    # 7x7 stem conv (9,408) + stem BN (128) and 1000-class fc (513,000): 11,689,512 in total
    # (torchvision docs); GroupNorm has the same affine parameters as BatchNorm.
    model = build_model("resnet18", width=64)
    body = count_parameters(model) - count_parameters(model.head) - count_parameters(model.stem)
    assert body == 11_689_512 - 9_408 - 128 - 513_000
    n16 = count_parameters(build_model("resnet18", width=16))
    n32 = count_parameters(build_model("resnet18", width=32))
    assert 0.65e6 < n16 < 0.8e6 and 2.7e6 < n32 < 3.0e6
    cbam = count_parameters(build_model("resnet_cbam", width=16))
    assert 1.0 < cbam / n16 < 1.05  # CBAM is light
    assert 50e3 < count_parameters(build_model("hybrid", width=16)) < 200e3
    assert summary("resnet18", width=32) == "resnet18: 2.83 M parameters"
    assert summary("cnn") == "cnn: 78.8 k parameters"


@pytest.mark.parametrize(
    ("name", "kwargs", "n"),
    [
        ("cnn", {}, 32),
        ("resnet18", {}, 32),
        ("resnet_cbam", {}, 32),
        ("hybrid", {}, 32),
        ("resnet18", {"stem": "large"}, 64),
    ],
)
def test_circular_padding_gives_invariance_to_periodic_shifts_by_the_total_stride(name, kwargs, n):
    model = build_model(name, width=8, in_channels=2, circular_padding=True, **kwargs).eval()
    s = model.total_stride
    x = _maps(2, 2, n)
    with torch.no_grad():
        out = model(x)
        shifted = model(torch.roll(x, shifts=(s, -2 * s % n), dims=(-2, -1)))
        off_grid = model(torch.roll(x, shifts=(1, 0), dims=(-2, -1)))
    torch.testing.assert_close(shifted, out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(off_grid, out, atol=1e-5, rtol=1e-5)  # the test can fail


def test_zero_padding_breaks_shift_invariance():
    model = build_model("resnet18", width=8, circular_padding=False).eval()
    x = _maps(2, 1, 32)
    with torch.no_grad():
        shifted = model(torch.roll(x, shifts=(8, 8), dims=(-2, -1)))
        assert not torch.allclose(shifted, model(x), atol=1e-5)


def test_resnets_see_the_map_amplitude_which_groupnorm_alone_removes():
    x = _maps(2, 1, 32)
    with torch.no_grad():
        cnn = build_model("cnn", width=8).eval()  # the baseline: norm right after conv 1
        torch.testing.assert_close(cnn(3 * x), cnn(x), atol=1e-4, rtol=1e-4)
        for name in ("resnet18", "resnet_cbam", "hybrid"):
            model = build_model(name, width=8).eval()
            assert (model(3 * x) - model(x)).abs().max() > 1e-3, name


def test_hybrid_log_spectrum_is_the_stats_estimator_up_to_a_constant():
    n, box = 32, 100.0  # Mpc/h; the model works in pixel units, P_pix = P * (n / box)**2
    model = build_model("hybrid", in_channels=3, width=8, n_k_bins=8).eval()
    x = _maps(2, 3, n, seed=1)
    seen = {}
    model.spectrum_mlp.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    with torch.no_grad():
        model(x)
    branch_input = seen["x"].reshape(2, 3, 8)
    edges = torch.tensor(model.spectrum.edges(n), dtype=torch.float64) * n / box  # h/Mpc
    ref = stats.power_spectrum(x.double(), box, edges=edges, dim=2).power  # (2, 3, 8), (Mpc/h)^2
    expected = (ref.log() + 2 * math.log(n / box)).float()
    torch.testing.assert_close(branch_input, expected, atol=1e-4, rtol=1e-4)
    # with one bin per k_f the bins are exactly the stats module's default bins
    full = LogPowerSpectrum(n_k_bins=n // 2)
    default = stats.default_edges((n, n), box)
    torch.testing.assert_close(torch.tensor(full.edges(n), dtype=torch.float64) * n / box, default)
    ref = stats.power_spectrum(x[:, :1].double(), box, dim=2).power
    torch.testing.assert_close(
        full.log_power(x[:, :1]), (ref.log() + 2 * math.log(n / box)).float(), atol=1e-4, rtol=1e-4
    )


def test_log_spectrum_calibration_and_size_checks():
    assert build_model("hybrid", n_k_bins=16).min_size == 32
    spec = LogPowerSpectrum(in_channels=1, n_k_bins=16)
    x = _maps(8, 1, 32)
    spec.calibrate(x)
    z = spec(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(1, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(1, 16), atol=1e-4, rtol=0)
    assert set(dict(spec.named_buffers())) == {"shift", "scale"}  # saved with the model state
    with pytest.raises(ValueError, match="at least 32 pixels"):
        spec(_maps(1, 1, 16))
    with pytest.raises(ValueError, match="square"):
        spec(torch.zeros(1, 1, 32, 64))


def test_state_dict_round_trip_rebuilds_the_same_model():
    kwargs = {"in_channels": 1, "n_params": 2, "width": 8, "circular_padding": True}
    model = build_model("hybrid", **kwargs).eval()
    model.spectrum.calibrate(_maps(4, 1, 32))
    clone = build_model("hybrid", **kwargs).eval()
    clone.load_state_dict(model.state_dict())
    x = _maps(2, 1, 32, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x))


def test_registry_errors_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="model='vit' is not allowed") as err:
        build_model("vit")
    assert "resnet_cbam" in str(err.value) and "\n" not in str(err.value)
    for name, bad in [
        ("resnet18", {"depth": 3}),
        ("resnet18", {"stem": "huge"}),
        ("resnet_cbam", {"norm": "layer"}),
        ("hybrid", {"n_k_bins": 0}),
        ("cnn", {"width": 0}),
    ]:
        with pytest.raises(ConfigError, match=f"model='{name}' cannot be built") as err:
            build_model(name, **bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        summary("vit")
    with pytest.raises(ConfigError):
        model_options("vit")


def test_log1p_input_transform_sees_the_raw_density_contrast():
    scale = 2.5  # map units: the model receives delta / scale
    delta = torch.tensor([[[[-1.0, -0.5, 0.0, 3.0]]]])
    model = build_model("hybrid_log", width=8, n_k_bins=2)
    assert set_map_scale(model, scale) == 1 and set_map_scale(build_model("hybrid"), scale) == 0
    out = model.input(delta / scale)
    eps = model.input.eps
    torch.testing.assert_close(out, torch.log1p(delta.clamp_min(eps - 1.0)))
    assert math.isclose(float(out[0, 0, 0, 0]), math.log(eps), rel_tol=1e-5)  # empty CIC cell
    assert "input.map_scale" in model.state_dict()  # saved: inference undoes the same scale
    assert "input.map_scale" not in build_model("hybrid").state_dict()  # default unchanged
    torch.testing.assert_close(InputTransform("none")(delta), delta)
    with pytest.raises(ConfigError, match="input_transform='sqrt'"):
        build_model("hybrid", input_transform="sqrt")
    with pytest.raises(ConfigError, match="log_eps"):
        build_model("hybrid_log", log_eps=0.0)


def test_lognormal_maps_become_gaussian_under_the_log_transform():
    gauss = 1.2 * _maps(4, 1, 32) / _maps(4, 1, 32).std()
    delta = torch.exp(gauss - gauss.var() / 2) - 1  # a lognormal field, δ > −1
    scale = 1.7  # the task's map scale: the model receives δ / scale
    model = build_model("hybrid_log", width=8)
    set_map_scale(model, scale)
    torch.testing.assert_close(
        model.input(delta / scale), gauss - gauss.var() / 2, atol=1e-5, rtol=1e-5
    )


def test_spectrum_calibration_happens_once_on_the_first_training_batch():
    model = build_model("hybrid_std", width=8)
    assert not bool(model.spectrum_calibrated)
    x = _maps(8, 1, 32)
    model.eval()(x)  # evaluation never calibrates
    assert not bool(model.spectrum_calibrated)
    model.train()(x)
    assert bool(model.spectrum_calibrated)
    z = model.spectrum(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(1, 16), atol=1e-5, rtol=0)
    shift = model.spectrum.shift.clone()
    model(3 * _maps(8, 1, 32, seed=5))  # later batches leave it alone
    torch.testing.assert_close(model.spectrum.shift, shift)
    clone = build_model("hybrid_std", width=8)
    clone.load_state_dict(model.state_dict())
    assert bool(clone.spectrum_calibrated)
    torch.testing.assert_close(clone.spectrum.shift, shift)


def test_pooled_conv_branch_is_cheaper_and_keeps_the_shapes():
    full = build_model("hybrid", width=8)
    pooled = build_model("hybrid", width=8, conv_pool=4)
    assert pooled.total_stride == 4 * full.total_stride
    assert count_parameters(pooled) == count_parameters(full)
    x = _maps(2, 1, 64)
    assert pooled.eval()(x).shape == (2, 4)
    with pytest.raises(ConfigError, match="conv_pool"):
        build_model("hybrid", conv_pool=0)


def test_trainer_gives_the_input_transform_the_task_map_scale(tmp_path):
    from engine.runs import RunDir
    from engine.train.loop import Trainer
    from engine.train.settings import resolve_params

    params = resolve_params("smoke", overrides={"kind": "lognormal", "model": "hybrid_log"})
    run = RunDir(tmp_path / "run")
    run.create()
    trainer = Trainer(params, run, torch.device("cpu"), progress=False)
    scale = trainer.task.scale
    assert scale > 0 and float(trainer.model.input.map_scale) == pytest.approx(scale)
    state = trainer.state()["networks"]["model"]["state"]
    assert float(state["input.map_scale"]) == pytest.approx(scale)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("n_params", [2, 6])
def test_every_model_takes_multi_channel_maps_and_any_number_of_parameters(
    name, in_channels, n_params
):
    model = build_model(name, in_channels=in_channels, n_params=n_params, width=8)
    x = _maps(2, in_channels, 32)
    out = model.train()(x)  # training mode: the hybrids calibrate on this batch
    assert out.shape == (2, 2 * n_params) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 2 * n_params)
    # each channel reaches the output
    for c in range(in_channels):
        bumped = x.clone()
        bumped[:, c] *= 2.0
        with torch.no_grad():
            assert (model(bumped) - model(x)).abs().max() > 1e-6, c
    with pytest.raises((RuntimeError, ValueError)):  # the wrong number of channels is an error
        model(_maps(2, in_channels + 1, 32))


def test_hybrid_spectrum_branch_is_per_channel():
    model = build_model("hybrid_log", in_channels=3, width=8, n_k_bins=8)
    assert model.spectrum.shift.shape == (3, 8)
    assert model.spectrum_mlp[0].in_features == 3 * 8
    set_map_scale(model, 2.0)
    x = _maps(4, 3, 32)
    model.train()(x)  # calibrates: standardised per channel and bin
    z = model.spectrum(model.input(x))
    torch.testing.assert_close(z.mean(0), torch.zeros(3, 8), atol=1e-5, rtol=0)
    # ln(1 + δ) acts on every channel alike; each channel's spectrum is its own
    single = LogPowerSpectrum(1, 8).log_power(model.input(x[:, 2:3]))
    torch.testing.assert_close(model.spectrum.log_power(model.input(x))[:, 2:3], single)


def test_shipped_checkpoints_load_strictly():
    names = {p.parent.parent.name for p in SHIPPED}
    assert {"grf64", "lognormal64", "2lpt64", "pm64", "pm32"} <= names, names
    for path in SHIPPED:
        ck = torch.load(path, weights_only=True)
        if ck.get("format") == 2 and ck.get("task") in ("gan", "diffusion"):  # emulators
            from engine.evaluation.sampling import Emulator

            em = Emulator(path)
            steps = 2 if em.task_name == "diffusion" else None
            if em.classes:  # class-conditional (lens_diffusion): one class at a time
                maps = em.sample(count=2, seed=0, steps=steps, label=em.classes[-1])
            else:
                maps = em.sample({"omega_m": 0.3, "sigma8": 0.8}, count=2, seed=0, steps=steps)
            size = em.map_config["size"]
            assert maps.shape[-2:] == (size, size) and np.isfinite(maps.values).all(), path
            continue
        if ck.get("format") == 2 and ck.get("task") == "classification":  # lens_resnet
            from engine.train.checkpoint import load_network

            net, ckpt = load_network(path)
            assert ckpt["task_state"]["classes"] == ["none", "cdm", "vortex"], path
            size = ckpt["map_settings"]["size"]
            with torch.no_grad():
                out = net.eval()(_maps(2, 1, size))
            assert out.shape == (2, 3) and torch.isfinite(out).all(), path
            continue
        if ck.get("format") == 2 and ck.get("task") == "delensing":  # delens512, delens512_qe(it)
            from engine.train.checkpoint import load_network

            net, ckpt = load_network(path)
            assert ckpt["task_state"]["nside"] == 512, path
            m = ckpt["task_state"]["margin"]
            c = len(ckpt["task_state"]["inputs"])  # Q, U (+ the QE template with qe_input)
            assert c == (4 if ckpt["task_state"].get("qe_input") else 2), path
            cal = ckpt["task_state"].get("qe_calibration")  # delens512_qeit(_n5): iterated QE's
            noise = ckpt["task_state"]["sky_attrs"]["noise"]  # calibrated at the training noise
            assert cal is None or (cal["nside"], cal["noise"]) == (512, noise), path
            with torch.no_grad():  # one window of padded faces: (1, C, 64 + 2m, 64 + 2m)
                out = net.eval().forward_faces(torch.randn(1, c, 64 + 2 * m, 64 + 2 * m), m)
            assert out.shape == (1, 2, 64, 64) and torch.isfinite(out).all(), path
            continue
        if ck.get("format") == 2:  # written by this engine (pm64, pm32): read as it is
            from engine.train.checkpoint import load_network

            net, ckpt = load_network(path)
            assert ckpt["task"] == "regression"
            assert ckpt["task_state"]["names"] == ["omega_m", "sigma8"]
            size = ckpt["map_settings"]["size"]
            with torch.no_grad():
                out = net.eval()(_maps(2, 1, size))
            assert out.shape == (2, 4) and torch.isfinite(out).all(), path
            continue
        model = build_model(ck["model_name"], **ck["model_kwargs"])
        model.load_state_dict(ck["model_state"], strict=True)
        n = 64
        with torch.no_grad():
            out = model.eval()(_maps(2, ck["model_kwargs"]["in_channels"], n))
        assert out.shape == (2, 2 * ck["model_kwargs"]["n_params"]), path
        assert torch.isfinite(out).all(), path
        # the engine reads these format-1 files as format 2 (engine.train.checkpoint.upgrade)
        from engine.train.checkpoint import load_network

        net, ckpt = load_network(path)
        assert ckpt["format"] == 2 and ckpt["task"] == "regression"
        assert ckpt["task_state"]["names"] == ["omega_m", "sigma8"]
        with torch.no_grad():
            torch.testing.assert_close(net(_maps(2, 1, n)), model(_maps(2, 1, n)))


def test_the_package_itself_imports_nothing():
    code = "import sys, engine.nn; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
