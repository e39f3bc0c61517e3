"""The cosine log-SNR schedule (ORIGINAL.md §4.1) against hand-derived values and textbook Gaussian algebra."""

from __future__ import annotations

import math

import pytest
import torch

from specdiff.sampling.diffusion import SCHEDULE_A, SCHEDULE_B, alpha_sigma, logsnr, posterior, predict_x0, q_sample

torch.set_num_threads(1)


def reference_logsnr(t: float) -> float:
    b = math.atan(math.exp(-10.0))
    a = math.atan(math.exp(10.0)) - b
    return -2.0 * math.log(math.tan(a * t + b))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_constants_and_endpoints():
    assert SCHEDULE_B == pytest.approx(math.atan(math.exp(-10)), abs=0)
    assert SCHEDULE_A + SCHEDULE_B == pytest.approx(math.atan(math.exp(10)), abs=1e-15)
    ends = logsnr(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert ends.tolist() == pytest.approx([20.0, -20.0], abs=1e-9)


@pytest.mark.parametrize("t", [0.0, 0.013, 0.25, 0.5, 0.77, 0.9, 0.999])
def test_logsnr_and_alpha_match_the_formula(t):
    assert float(logsnr(torch.tensor(t, dtype=torch.float64))) == pytest.approx(
        reference_logsnr(t), rel=1e-12, abs=1e-12
    )
    alpha, sigma = alpha_sigma(torch.tensor([t], dtype=torch.float64))
    assert float(alpha) ** 2 == pytest.approx(sigmoid(reference_logsnr(t)), rel=1e-12)
    assert float(sigma) ** 2 == pytest.approx(sigmoid(-reference_logsnr(t)), rel=1e-9, abs=1e-15)


def test_alpha_bar_table_of_the_spec():
    # ORIGINAL.md §5.1 table, "original alpha_bar(t/1000)" column
    alpha, _ = alpha_sigma(torch.tensor([0.5, 0.9, 0.99]))
    assert (alpha**2).tolist() == pytest.approx([0.5000, 0.0245, 2.48e-4], rel=5e-3)


def test_logsnr_decreases_and_keeps_dtype():
    t = torch.linspace(0, 1, 101)
    values = logsnr(t)
    assert values.dtype == torch.float32
    assert bool((values[1:] < values[:-1]).all())
    alpha, sigma = alpha_sigma(t)
    assert alpha.dtype == torch.float32
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t), atol=1e-6)


def test_q_sample_uses_one_time_per_example_and_inverts():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 5, 4, generator=gen) * 2 - 1
    noise = torch.randn(3, 5, 4, generator=gen)
    t = torch.tensor([0.1, 0.5, 0.95])
    z = q_sample(x0, t, noise)
    for i in range(3):
        a = math.cos(SCHEDULE_A * float(t[i]) + SCHEDULE_B)
        s = math.sin(SCHEDULE_A * float(t[i]) + SCHEDULE_B)
        assert torch.allclose(z[i], a * x0[i] + s * noise[i], atol=1e-6)
    assert torch.allclose(predict_x0(z, t, noise), x0, atol=1e-5)


def test_posterior_matches_the_gaussian_posterior():
    """q(z_s | z_t, x0) from the textbook formulas with alpha_{t|s} = alpha_t/alpha_s (VDM eq. 3-5)."""
    t, s = torch.tensor([0.7, 0.3], dtype=torch.float64), torch.tensor([0.6, 0.25], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    x0 = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    mean, var = posterior(z, x0, t, s)
    for i in range(2):
        a_t, a_s = math.cos(SCHEDULE_A * t[i].item() + SCHEDULE_B), math.cos(SCHEDULE_A * s[i].item() + SCHEDULE_B)
        var_t, var_s = 1 - a_t**2, 1 - a_s**2
        a_ts = a_t / a_s
        var_ts = var_t - a_ts**2 * var_s  # variance of q(z_t | z_s)
        expected_mean = a_ts * var_s / var_t * z[i] + a_s * var_ts / var_t * x0[i]
        assert torch.allclose(mean[i], expected_mean, atol=1e-12)
        # "large" variance = the forward step's variance (beta_t), not the posterior's
        assert float(var[i].flatten()[0]) == pytest.approx(var_ts, rel=1e-10)
