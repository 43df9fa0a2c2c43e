"""Linear theory against direct pyccl calls and against the definition of sigma8."""

import numpy as np
import pyccl as ccl
import pytest
import torch
from scipy.integrate import simpson

from engine.params import ConfigError
from engine.physics.cosmology import ccl_cosmology, linear_power_pyccl, power_table

K = np.logspace(np.log10(0.005), 1, 400)  # h/Mpc


@pytest.fixture(scope="module")
def table():
    return power_table()


@pytest.mark.parametrize(
    "omega_m, sigma8, redshift",
    [(0.3, 0.8, 0.0), (0.1, 0.6, 0.0), (0.5, 1.0, 1.0), (0.17, 0.93, 0.35), (0.88, 0.45, 4.0)],
)
def test_table_matches_pyccl(table, omega_m, sigma8, redshift):
    ref = linear_power_pyccl(K, ccl_cosmology(omega_m, sigma8), redshift)
    ours = table.power(torch.from_numpy(K), omega_m, sigma8, redshift).numpy()
    assert np.max(np.abs(ours / ref - 1)) < 5e-3


def test_table_batched_random_cosmologies(table):
    rng = np.random.default_rng(3)
    om = rng.uniform(0.1, 0.9, 6)
    s8 = rng.uniform(0.4, 1.2, 6)
    ours = table.power(torch.from_numpy(K), torch.from_numpy(om), torch.from_numpy(s8), 0.5).numpy()
    for i in range(6):
        ref = linear_power_pyccl(K, ccl_cosmology(om[i], s8[i]), 0.5)
        assert np.max(np.abs(ours[i] / ref - 1)) < 5e-3


def test_sigma8_from_top_hat_variance(table):
    """sigma8^2 = ∫ dk k^2 P(k) W^2(8k) / 2pi^2 with the real-space top-hat window."""
    k = np.logspace(-4, 2, 20000)
    for omega_m, sigma8 in [(0.3, 0.8), (0.15, 1.1)]:
        p = table.power(torch.from_numpy(k), omega_m, sigma8).numpy()
        x = 8.0 * k
        w = 3 * (np.sin(x) - x * np.cos(x)) / x**3
        var = simpson(k**3 * p * w**2 / (2 * np.pi**2), x=np.log(k))
        assert np.sqrt(var) == pytest.approx(sigma8, rel=2e-3)


def test_growth_matches_pyccl(table):
    for omega_m in (0.2, 0.3, 0.6):
        c = ccl_cosmology(omega_m, 0.8)
        for z in (0.5, 1.0, 3.0):
            ref = ccl.growth_factor(c, 1 / (1 + z)) / ccl.growth_factor(c, 1.0)
            assert float(table.growth(omega_m, z)) == pytest.approx(ref, rel=2e-3)
    # growth is below 1 in the past and the EdS limit D ~ a holds roughly at high z for omega_m=1
    assert float(table.growth(0.99, 3.0)) == pytest.approx(0.25, rel=0.02)


def test_amplitude_scales_as_sigma8_squared(table):
    k = torch.from_numpy(K)
    ratio = table.power(k, 0.3, 0.4) / table.power(k, 0.3, 0.8)
    assert torch.allclose(ratio, torch.full_like(ratio, 0.25), rtol=1e-12)


def test_bad_inputs(table):
    with pytest.raises(ConfigError, match="omega_m"):
        table.power(torch.from_numpy(K), 1.5, 0.8)
    with pytest.raises(ConfigError, match="omega_b"):
        ccl_cosmology(0.04, 0.8, omega_b=0.049)


def test_camb_choice_needs_camb():
    try:
        import camb  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install camb"):
            ccl_cosmology(0.3, 0.8, transfer_function="boltzmann_camb")
    else:
        pytest.skip("camb is installed")
