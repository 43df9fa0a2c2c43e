"""P(k) likelihood (engine.evaluation.likelihood), Fisher matrix and Cramér–Rao bound
(engine.evaluation.fisher), network predictions (engine.evaluation.predict) and the predict verb.

The statistical tests use one fixed-seed set of Gaussian maps (grf, 64², L = 1024 Mpc/h,
Δ = 100 Mpc/h) with (Ω_m, σ8) uniform in [0.25, 0.35] × [0.75, 0.85], ≥ 5 σ_CRB inside the prior
box (0.1, 0.5) × (0.6, 1.0). With N maps the RMSE has a relative standard error ≈ 1/√(2N)
(3.5 % for N = 400) and the coverage of the 68 % interval a binomial error √(0.68·0.32/N)
(2.3 %): the tolerances below are ~4 of those.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from engine import cli
from engine.evaluation import fisher, likelihood, predict, theory
from engine.params import ConfigError, FieldParams
from engine.physics import slabs

N_MAPS = 400
SETTINGS = dict(kind="grf", size=64, box_size=1024.0, thickness=100.0)


@pytest.fixture(scope="module")
def gaussian_run():
    """(settings, truth (N, 2), predictions dict, σ_CRB at each truth (N, 2))."""
    settings = FieldParams(**SETTINGS)
    gen = torch.Generator().manual_seed(2024)
    om = 0.25 + 0.10 * torch.rand(N_MAPS, generator=gen, dtype=torch.float64)
    s8 = 0.75 + 0.10 * torch.rand(N_MAPS, generator=gen, dtype=torch.float64)
    maps = slabs.generate_maps(settings, om, s8, gen)
    pred = likelihood.pk_likelihood_predict(maps, settings)
    truth = torch.stack([om, s8], dim=-1).numpy()
    crb = fisher.cramer_rao(settings, om, s8)
    return settings, truth, pred, crb


def test_pk_likelihood_is_nearly_unbiased_and_efficient(gaussian_run):
    settings, truth, pred, crb = gaussian_run
    assert pred["mean"].shape == pred["std"].shape == pred["map"].shape == (N_MAPS, 2)
    assert not pred["refined"].any()  # σ_CRB ≈ (0.019, 0.010) is resolved by the 64² grid
    err = pred["mean"] - truth
    # posterior-mean bias of a skewed posterior is O(σ²/θ): a small fraction of σ
    assert np.all(np.abs(err.mean(0)) < 0.3 * crb.mean(0)), (err.mean(0), crb.mean(0))
    assert np.all(np.abs((pred["map"] - truth).mean(0)) < 0.15 * crb.mean(0))
    eff = fisher.efficiency(pred["mean"], truth, settings)
    eff_map = fisher.efficiency(pred["map"], truth, settings)
    print(f"efficiency (posterior mean) {eff.round(3)}, (MAP) {eff_map.round(3)}")
    # a Gaussian field's information is all in P(k): efficiency 1 within the RMSE error (3.5 %)
    assert np.all((eff > 0.85) & (eff < 1.15)), eff
    assert np.all((eff_map > 0.85) & (eff_map < 1.15)), eff_map


def test_posterior_std_matches_scatter_and_covers(gaussian_run):
    _, truth, pred, crb = gaussian_run
    z = (pred["mean"] - truth) / pred["std"]
    coverage = (np.abs(z) <= 1).mean(0)
    print(f"68% coverage {coverage}, rms z {np.sqrt((z**2).mean(0)).round(3)}")
    assert np.all(np.abs(coverage - 0.6827) < 4 * math.sqrt(0.68 * 0.32 / N_MAPS)), coverage
    assert np.all(np.abs(np.sqrt((z**2).mean(0)) - 1) < 0.15)
    # the posterior width is the Cramér–Rao σ (Gaussian covariance at θ̂ = expected Fisher)
    np.testing.assert_allclose(pred["std"].mean(0), crb.mean(0), rtol=0.1)


def test_posterior_correlation_is_the_fisher_one(gaussian_run):
    settings, truth, pred, _ = gaussian_run
    cov = np.linalg.inv(fisher.fisher_matrix(settings, truth[:50, 0], truth[:50, 1]))
    rho = cov[:, 0, 1] / np.sqrt(cov[:, 0, 0] * cov[:, 1, 1])
    # per map it is the correlation at θ̂, not at the truth: compare on average
    assert abs(pred["corr"][:50].mean() - rho.mean()) < 0.05
    assert np.all(np.abs(pred["corr"][:50] - rho) < 0.2)


def test_gamma_likelihood_has_the_same_maximum(gaussian_run):
    settings, _, pred, _ = gaussian_run
    gen = torch.Generator().manual_seed(2024)
    om = 0.25 + 0.10 * torch.rand(N_MAPS, generator=gen, dtype=torch.float64)
    s8 = 0.75 + 0.10 * torch.rand(N_MAPS, generator=gen, dtype=torch.float64)
    maps = slabs.generate_maps(settings, om[:40], s8[:40], gen)
    gauss = likelihood.pk_likelihood_predict(maps, settings)
    gamma = likelihood.pk_likelihood_predict(maps, settings, likelihood="gamma")
    np.testing.assert_allclose(gamma["map"], gauss["map"], atol=1e-9)
    assert np.all(np.abs(gamma["mean"] - gauss["mean"]) < 0.25 * gauss["std"])


def test_local_grid_matches_a_fine_global_grid():
    settings = FieldParams(**SETTINGS)
    gen = torch.Generator().manual_seed(7)
    maps = slabs.generate_maps(settings, torch.full((6,), 0.3), torch.full((6,), 0.8), gen)
    coarse = likelihood.pk_likelihood_predict(maps, settings, grid=16)  # cells > σ(σ8)
    fine = likelihood.pk_likelihood_predict(maps, settings, grid=160)
    assert coarse["refined"].all() and not fine["refined"].any()
    np.testing.assert_allclose(coarse["map"], fine["map"], atol=1e-7)
    np.testing.assert_allclose(coarse["mean"], fine["mean"], atol=0.01 * fine["std"].min())
    np.testing.assert_allclose(coarse["std"], fine["std"], rtol=0.01)
    np.testing.assert_allclose(coarse["corr"], fine["corr"], atol=0.01)


def test_theory_table_interpolates_the_binned_theory():
    settings = FieldParams(**dict(SETTINGS, smoothing=8.0, noise=0.05))
    model = theory.map_model(settings)
    table, theta, mu_grid = theory.theory_grid(model, theory.DEFAULT_PRIOR, 32)
    rng = np.random.default_rng(0)
    om = torch.from_numpy(rng.uniform(0.1, 0.5, 50))
    s8 = torch.from_numpy(rng.uniform(0.6, 1.0, 50))
    exact = model.binned(om, s8)
    # the theory is itself a C¹ cubic in ln Ω_m (engine.physics.cosmology): its jumps of the second
    # derivative limit the interpolation to ~3e-4, far below its 1e-3 accuracy against pyccl
    np.testing.assert_allclose(table(om, s8).numpy(), exact.numpy(), rtol=5e-4)
    np.testing.assert_allclose(mu_grid[:3].numpy(), model.binned(*theta[:3].T).numpy(), rtol=5e-4)
    # analytic derivatives of the interpolant against finite differences of the theory
    _, dmu = table(om[:5], s8[:5], grad=True)
    h = 1e-5
    d_om = (model.binned(om[:5] + h, s8[:5]) - model.binned(om[:5] - h, s8[:5])) / (2 * h)
    d_s8 = (model.binned(om[:5], s8[:5] + h) - model.binned(om[:5], s8[:5] - h)) / (2 * h)
    for got, want in ((dmu[..., 0], d_om), (dmu[..., 1], d_s8)):
        scale = want.abs().max(-1, keepdim=True).values  # ∂μ crosses zero in some bins
        assert float(((got - want).abs() / scale).max()) < 1e-3


def test_fisher_scales_with_area_and_drops_with_noise_and_smoothing():
    small = FieldParams(**dict(SETTINGS, size=32, box_size=512.0))
    big = FieldParams(**dict(SETTINGS, size=64, box_size=1024.0))  # 4x the area, same pixels
    f_small = fisher.fisher_matrix(small, 0.3, 0.8)
    f_big = fisher.fisher_matrix(big, 0.3, 0.8)
    # noiseless: ∂ ln P / ∂σ8 = 2/σ8 on every mode, so F_σ8σ8 = ½ (2/σ8)² × full-plane modes
    for s, f in ((small, f_small), (big, f_big)):
        n_modes = float(theory.map_model(s).n_modes.sum())
        assert f[1, 1] == pytest.approx(0.5 * (2 / 0.8) ** 2 * n_modes, rel=1e-6)
    # F ∝ area (mode count ∝ L²) up to the discreteness of the rings and the extra k_f/2 shell
    # of low-k modes of the larger box (Ω_m information from the turnover): σ_CRB halves
    np.testing.assert_allclose(f_big, 4 * f_small, rtol=0.1)
    np.testing.assert_allclose(
        fisher.cramer_rao(big, 0.3, 0.8), fisher.cramer_rao(small, 0.3, 0.8) / 2, rtol=0.1
    )
    noisy = fisher.fisher_matrix(FieldParams(**dict(SETTINGS, noise=0.02)), 0.3, 0.8)
    noisier = fisher.fisher_matrix(FieldParams(**dict(SETTINGS, noise=0.5)), 0.3, 0.8)
    both = FieldParams(**dict(SETTINGS, noise=0.02, smoothing=20.0))
    smooth_noisy = fisher.fisher_matrix(both, 0.3, 0.8)
    for more, less in ((f_big, noisy), (noisy, noisier), (noisy, smooth_noisy)):
        assert np.all(np.linalg.eigvalsh(more - less) > 0)  # strictly less information
    assert np.all(np.linalg.eigvalsh(noisier) > 0)
    # a known smoothing of a noiseless map loses nothing: ∂ ln P is unchanged mode by mode
    smooth = fisher.fisher_matrix(FieldParams(**dict(SETTINGS, smoothing=20.0)), 0.3, 0.8)
    np.testing.assert_allclose(smooth, f_big, rtol=1e-9)
    # binned information (the likelihood's) is the per-mode sum to 0.5 % for slabs
    np.testing.assert_allclose(fisher.fisher_matrix(big, 0.3, 0.8, binned=True), f_big, rtol=5e-3)
    # batched fiducials = one by one; k_max keeps fewer modes
    fb = fisher.fisher_matrix(big, [0.3, 0.25], [0.8, 0.85])
    np.testing.assert_allclose(fb[0], f_big, rtol=1e-12)
    kf = 2 * math.pi / big.box_size
    f_low = fisher.fisher_matrix(big, 0.3, 0.8, k_max=8 * kf)
    assert np.all(np.linalg.eigvalsh(f_big - f_low) > 0)
    sigma = fisher.cramer_rao(big, 0.3, 0.8)
    np.testing.assert_allclose(sigma, np.sqrt(np.diag(np.linalg.inv(f_big))))


def test_finite_difference_and_autograd_derivatives_agree():
    settings = FieldParams(**dict(SETTINGS, smoothing=6.0, noise=0.03))
    d_fd, w = fisher.log_power_derivatives(settings, [0.3, 0.21], [0.8, 0.9])
    d_ad, w2 = fisher.log_power_derivatives(
        settings, [0.3, 0.21], [0.8, 0.9], derivative="autograd"
    )
    assert d_fd.shape == (2, 2, w.numel()) and torch.equal(w, w2)
    assert set(w.unique().tolist()) <= {1.0, 2.0}
    np.testing.assert_allclose(d_fd.numpy(), d_ad.numpy(), rtol=1e-5, atol=1e-6)
    f_fd = fisher.fisher_matrix(settings, 0.3, 0.8)
    f_ad = fisher.fisher_matrix(settings, 0.3, 0.8, derivative="autograd")
    np.testing.assert_allclose(f_fd, f_ad, rtol=1e-6)
    # σ8 enters as σ8² times the signal: ∂ ln P / ∂σ8 = (2/σ8) P_signal / P_map ≤ 2/σ8
    assert float(d_ad[0, 1].max()) <= 2 / 0.8 + 1e-9


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg
    return msg


def test_bad_input_raises_one_line_config_errors():
    from engine.physics.lensing import KappaParams
    from engine.physics.lpt import LPTParams
    from engine.physics.sky import SkyParams

    s = FieldParams(**dict(SETTINGS, size=16, box_size=256.0))
    maps = torch.zeros(2, 16, 16)
    cases = [
        (lambda: theory.map_model(SkyParams()), "not supported"),
        (lambda: theory.map_model(LPTParams(dim=3)), "volumes"),
        (lambda: theory.map_model(KappaParams(mask="m.npy")), "masked"),
        (lambda: theory.map_model(s, k_max=1e-4), "below the fundamental"),
        (lambda: likelihood.pk_likelihood_predict(torch.zeros(2, 8, 8), s), "do not match"),
        (lambda: likelihood.pk_likelihood_predict(maps * math.nan, s), "NaN"),
        (lambda: likelihood.pk_likelihood_predict(maps, s, prior=((0.05, 0.5), (0.6, 1))), "prior"),
        (lambda: likelihood.pk_likelihood_predict(maps, s, prior=(0.1, 0.5)), "prior"),
        (lambda: likelihood.pk_likelihood_predict(maps, s, grid=4), "grid"),
        (lambda: likelihood.pk_likelihood_predict(maps, s, likelihood="x"), "likelihood"),
        (lambda: likelihood.pk_likelihood_predict(maps), "settings"),
        (lambda: fisher.fisher_matrix(s, 0.3, 0.8, derivative="x"), "derivative"),
        (lambda: fisher.fisher_matrix(s, 0.05, 0.8), "omega_m"),
        (lambda: fisher.efficiency(np.zeros((3, 2)), np.zeros((2, 2)), s), "pred_mean"),
        (lambda: theory.settings_from_attrs({"size": 8}), "kind"),
        (lambda: theory.settings_from_attrs({"kind": "sky"}), "not supported"),
    ]
    for fn, text in cases:
        with pytest.raises(ConfigError) as exc:
            fn()
        assert text in _one_line(exc), (text, str(exc.value))


def test_dataarray_input_and_other_kinds():
    from engine.physics import lpt
    from engine.physics.lpt import LPTParams

    lpt_settings = LPTParams(size=32, box_size=512.0, thickness=64.0, count=3, seed=1)
    da = lpt.generate(lpt_settings, device="cpu")
    rebuilt = theory.settings_from_attrs(dict(da.attrs))
    assert isinstance(rebuilt, LPTParams) and rebuilt.thickness == 64.0 and rebuilt.dim == 2
    kf = 2 * math.pi / 512.0
    out = likelihood.pk_likelihood_predict(da, k_max=4 * kf, grid=24)  # linear theory: low k only
    assert out["truth"].shape == out["mean"].shape == (3, 2)
    lo, hi = np.array([0.1, 0.6]), np.array([0.5, 1.0])
    assert np.all((out["mean"] > lo) & (out["mean"] < hi) & (out["std"] > 0))

    ln = slabs.generate(FieldParams(**dict(SETTINGS, kind="lognormal", count=4, seed=2)))
    out = likelihood.pk_likelihood_predict(ln)
    assert np.all(np.abs(out["mean"] - out["truth"]) < 5 * out["std"])


def test_kappa_maps_with_linear_matter_power():
    from engine.physics import lensing

    ks = lensing.KappaParams(size=32, fov=5.0, matter_power="linear", count=6, seed=3)
    da = lensing.generate(ks, device="cpu")
    out = likelihood.pk_likelihood_predict(da, table_nodes=(6, 4), grid=32)
    assert np.all(np.isfinite(out["mean"])) and np.all(out["std"] > 0)
    assert np.all(np.abs(out["mean"] - out["truth"]) < 4 * out["std"])
    f = fisher.fisher_matrix(ks, 0.3, 0.8)
    assert f.shape == (2, 2) and np.all(np.linalg.eigvalsh(f) > 0)
    with pytest.raises(ConfigError, match="autograd"):
        fisher.fisher_matrix(ks, 0.3, 0.8, derivative="autograd")


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_verb_writes_one_row_per_map(tmp_path, capsys):
    maps = tmp_path / "maps.zarr"
    args = ["--size", "32", "--box", "512", "--thickness", "100", "--count", "5", "--seed", "4"]
    assert cli.main(["fields", *args, "--device", "cpu", "--out", str(maps)]) == 0
    out = tmp_path / "preds.csv"
    capsys.readouterr()
    assert cli.main(["predict", "--maps", str(maps), "--out", str(out), "--grid", "32"]) == 0
    assert "wrote 5 predictions (pk-likelihood; rmse omega_m=" in capsys.readouterr().out
    rows = _read_csv(out)
    assert len(rows) == 5 and [r["sample"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert list(rows[0]) == [
        "sample",
        "omega_m_true",
        "sigma8_true",
        "omega_m_mean",
        "omega_m_std",
        "omega_m_map",
        "sigma8_mean",
        "sigma8_std",
        "sigma8_map",
    ]
    assert float(rows[0]["omega_m_true"]) == pytest.approx(0.3)
    assert all(float(r["sigma8_std"]) > 0 for r in rows)
    assert not list(tmp_path.glob(".preds.csv*"))  # no temporary file left

    bad = [
        (["--maps", str(tmp_path / "none.zarr"), "--out", str(out)], "does not exist"),
        (["--maps", str(maps), "--out", str(tmp_path / "p.txt")], "must end in .csv"),
        (["--maps", str(maps), "--out", str(out), "--prior", "1,2"], "--prior"),
        (["--maps", str(maps), "--out", str(out), "--method", "network"], "--checkpoint"),
    ]
    for argv, text in bad:
        assert cli.main(["predict", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and text in err, err


def test_predict_verb_rejects_unsupported_kinds(tmp_path, capsys):
    vol = tmp_path / "vol.nc"
    argv = ["fields", "--kind", "2lpt", "--size", "16", "--box", "256", "--dim", "3"]
    assert cli.main([*argv, "--count", "1", "--device", "cpu", "--out", str(vol)]) == 0
    capsys.readouterr()
    assert cli.main(["predict", "--maps", str(vol), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not supported" in err


def test_network_predictions_use_the_checkpoint_scale_and_prior(tmp_path, capsys):
    from engine.nn.registry import build_model
    from engine.params import to_dict
    from engine.train.checkpoint import save_checkpoint

    settings = FieldParams(**dict(SETTINGS, size=32, box_size=512.0, count=4, seed=5))
    kwargs = {"in_channels": 1, "n_params": 2, "width": 4, "circular_padding": True}
    torch.manual_seed(0)
    model = build_model("cnn", **kwargs).eval()
    ckpt = tmp_path / "best.pt"
    scale = slabs.map_scale(settings)
    save_checkpoint(
        {
            "model_name": "cnn",
            "model_kwargs": kwargs,
            "model_state": model.state_dict(),
            "task": "parameter_regression",
            "param_names": ["omega_m", "sigma8"],
            "prior_low": [0.1, 0.6],
            "prior_high": [0.5, 1.0],
            "map_scale": scale,
            "map_settings": {"kind": "grf", **to_dict(settings)},
        },
        ckpt,
    )
    da = slabs.generate(settings)
    out = predict.predict_network(da, ckpt)
    with torch.no_grad():
        raw = model(torch.from_numpy(da.values).unsqueeze(1) / scale).double()
    low, width = torch.tensor([0.1, 0.6]), torch.tensor([0.4, 0.4])
    np.testing.assert_allclose(out["mean"], (low + width * raw[:, :2]).numpy(), rtol=1e-5)
    assert out["std"].shape == (4, 2) and np.all(out["std"] > 0)
    np.testing.assert_allclose(out["truth"][:, 0], 0.3)

    maps = tmp_path / "maps.nc"
    slabs.save(da, maps)
    csv_out = tmp_path / "net.csv"
    argv = ["predict", "--method", "network", "--checkpoint", str(ckpt), "--maps", str(maps)]
    assert cli.main([*argv, "--out", str(csv_out)]) == 0
    rows = _read_csv(csv_out)
    assert len(rows) == 4 and "omega_m_map" not in rows[0]
    assert float(rows[1]["sigma8_mean"]) == pytest.approx(out["mean"][1, 1], rel=1e-6)

    other = slabs.generate(FieldParams(**dict(SETTINGS, size=32, box_size=256.0, count=1)))
    with pytest.raises(ConfigError, match="box_size"):
        predict.predict_network(other, ckpt)


def _regression_checkpoint(tmp_path):
    """(checkpoint path, maps file) of a tiny untrained cnn for 32² grf maps, in the format of
    engine 0.1 (task ``parameter_regression``)."""
    from engine.nn.registry import build_model
    from engine.params import to_dict
    from engine.train.checkpoint import save_checkpoint

    settings = FieldParams(**dict(SETTINGS, size=32, box_size=512.0, count=3, seed=7))
    kwargs = {"in_channels": 1, "n_params": 2, "width": 4, "circular_padding": True}
    torch.manual_seed(0)
    ckpt = tmp_path / "regression.pt"
    save_checkpoint(
        {
            "model_name": "cnn",
            "model_kwargs": kwargs,
            "model_state": build_model("cnn", **kwargs).state_dict(),
            "task": "parameter_regression",
            "param_names": ["omega_m", "sigma8"],
            "prior_low": [0.1, 0.6],
            "prior_high": [0.5, 1.0],
            "map_scale": slabs.map_scale(settings),
            "map_settings": {"kind": "grf", **to_dict(settings)},
        },
        ckpt,
    )
    maps = tmp_path / "maps.nc"
    slabs.save(slabs.generate(settings), maps)
    return ckpt, maps


def test_predict_verb_with_a_checkpoint_uses_the_network(tmp_path, capsys):
    ckpt, maps = _regression_checkpoint(tmp_path)
    out = tmp_path / "net.csv"
    argv = ["predict", "--checkpoint", str(ckpt), "--maps", str(maps), "--out", str(out)]
    assert cli.main(argv) == 0
    assert "wrote 3 predictions (network; rmse" in capsys.readouterr().out
    rows = _read_csv(out)
    assert len(rows) == 3 and "omega_m_map" not in rows[0]  # the likelihood writes a MAP column
    expected = predict.predict_network(slabs.load(maps), ckpt)["mean"]
    assert float(rows[2]["omega_m_mean"]) == pytest.approx(expected[2, 0], rel=1e-6)

    # the P(k) likelihood takes no checkpoint: refused in one line, nothing written
    out2 = tmp_path / "pk.csv"
    assert cli.main([*argv[:-1], str(out2), "--method", "pk-likelihood"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "uses no checkpoint" in err and not out2.exists()


def test_checkpoints_of_other_tasks_are_refused_in_one_line(tmp_path, capsys):
    from engine.evaluation import compare, evaluate
    from engine.train.checkpoint import FORMAT, load_checkpoint, save_checkpoint

    regression, maps = _regression_checkpoint(tmp_path)
    assert evaluate.evaluator_for(regression) is evaluate.EVALUATORS["regression"]
    other = load_checkpoint(regression)  # the current format, of a task evaluation lacks
    other.update(format=FORMAT, task="segmentation", task_state={})
    other["networks"] = {"unet": other["networks"]["model"]}
    ckpt = tmp_path / "other.pt"
    save_checkpoint(other, ckpt)
    for verb in ("predict", "evaluate"):
        argv = {
            "predict": ["predict", "--checkpoint", str(ckpt), "--maps", str(maps)],
            "evaluate": ["evaluate", "--checkpoint", str(ckpt), "--dataset", str(maps)],
        }[verb]
        assert cli.main([*argv, "--out", str(tmp_path / f"{verb}.csv")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"is of task 'segmentation'; {verb} knows: regression" in err, err
    with pytest.raises(ConfigError, match="is of task 'segmentation'; predict knows: regression"):
        predict.predict_network(slabs.load(maps), ckpt)
    table = compare.compare([ckpt], [str(maps)], pk_likelihood=False)
    assert table["error"].str.contains("is of task 'segmentation'; compare knows: regression").all()
