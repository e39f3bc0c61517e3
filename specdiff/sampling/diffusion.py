"""The continuous-time cosine log-SNR diffusion schedule of the original (spec §4.1).

Time ``t`` runs over [0, 1]; ``t = 0`` is (almost) clean data and ``t = 1`` is (almost) pure noise:

    logsnr(t) = -2 ln tan(a t + b),   b = arctan(e^-10),   a = arctan(e^10) - b,

so logSNR falls from +20 at t=0 to -20 at t=1. With ``alpha^2 = sigmoid(logsnr)`` and
``sigma^2 = sigmoid(-logsnr)`` this is exactly ``alpha = cos(a t + b)`` and ``sigma = sin(a t + b)``
(because ``sigmoid(-2 ln tan u) = 1 / (1 + tan^2 u) = cos^2 u``), i.e. the cosine schedule
``alpha^2 ~ cos^2(pi t / 2)`` with no 0.008 offset. We evaluate the cos/sin form in float64: it is the
same function and stays accurate where sigmoid(logsnr) is within 1e-9 of 1.

Used by the training objective (``specdiff.training.objective``) and by samplers (``posterior`` is one DDPM
ancestral step of the original ``SamplerConfig``: ``logvar_type="large"``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOGSNR_MAX = 20.0
#: ``b`` and ``a`` of spec §4.1: logsnr(0) = +20 and logsnr(1) = -20.
SCHEDULE_B = math.atan(math.exp(-LOGSNR_MAX / 2))
SCHEDULE_A = math.atan(math.exp(LOGSNR_MAX / 2)) - SCHEDULE_B


def _angle(t: Tensor) -> Tensor:
    return SCHEDULE_A * torch.as_tensor(t, dtype=torch.float64) + SCHEDULE_B


def logsnr(t: Tensor | float) -> Tensor:
    """``-2 ln tan(a t + b)`` (spec §4.1), in the dtype of ``t`` (float32 for Python floats)."""
    t = torch.as_tensor(t)
    out = -2.0 * torch.log(torch.tan(_angle(t)))
    return out.to(t.dtype if t.is_floating_point() else torch.float32)


def alpha_sigma(t: Tensor | float) -> tuple[Tensor, Tensor]:
    """``(alpha_t, sigma_t)`` with ``alpha^2 = sigmoid(logsnr(t))`` and ``alpha^2 + sigma^2 = 1``."""
    t = torch.as_tensor(t)
    angle = _angle(t)
    dtype = t.dtype if t.is_floating_point() else torch.float32
    return torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)


def _expand(coef: Tensor, like: Tensor) -> Tensor:
    """``[B]`` -> ``[B, 1, ..., 1]`` so a per-example coefficient broadcasts over ``like``."""
    return coef.to(device=like.device, dtype=like.dtype).reshape(coef.shape + (1,) * (like.dim() - coef.dim()))


def q_sample(x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Forward process ``z_t = alpha_t x0 + sigma_t eps`` with one time per example (``t`` is ``[B]``)."""
    alpha, sigma = alpha_sigma(t)
    return _expand(alpha, x0) * x0 + _expand(sigma, x0) * noise


def predict_x0(z_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """Invert the forward process for ``x0`` given an epsilon prediction: ``(z - sigma eps) / alpha``."""
    alpha, sigma = alpha_sigma(t)
    return (z_t - _expand(sigma, z_t) * eps) / _expand(alpha, z_t)


#: The data's standard deviation assumed by the "edm" preconditioning (scaled log-mel: ~0.51 on
#: the demo corpus).
SIGMA_DATA = 0.5


def edm_coefficients(t: Tensor) -> tuple[Tensor, Tensor]:
    """``(c_skip, c_out)`` of Karras et al. 2022 ("Elucidating the design space of diffusion-based
    generative models", EDM) in variance-preserving form, in float64: ``x0 = c_skip z + c_out F``
    with ``c_skip = alpha s^2 / D``, ``c_out = sigma s / sqrt(D)``, ``D = sigma^2 + alpha^2 s^2``,
    ``s = SIGMA_DATA``. At low noise ``x0 ~ z`` for free (the network need not learn to copy its
    input); at high noise ``x0 ~ s F``; the target of F has unit variance at every t."""
    alpha, sigma = alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
    d = sigma**2 + (alpha * SIGMA_DATA) ** 2
    return alpha * SIGMA_DATA**2 / d, sigma * SIGMA_DATA / d.sqrt()


def edm_prior_weight(t: Tensor) -> Tensor:
    """``(1 - c_skip alpha) / c_out`` (:func:`edm_coefficients`), in float64: an "edm" network that adds
    this times a prior mean ``p`` to its output ``F`` predicts ``x0 = c_skip z + (1 - c_skip alpha) p
    + c_out F``, i.e. the EDM preconditioning applied to the residual ``x0 - p``. The weight is
    ``sigma / (SIGMA_DATA sqrt(D))``: 0 at t = 0 (the clean input needs no prior), 1 / SIGMA_DATA
    at t = 1 (the estimate from pure noise starts at ``p``)."""
    alpha, sigma = alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
    return sigma / (SIGMA_DATA * (sigma**2 + (alpha * SIGMA_DATA) ** 2).sqrt())


def prediction_target(
    x0: Tensor, noise: Tensor, t: Tensor, prediction_type: str = "epsilon", z_t: Tensor | None = None
) -> Tensor:
    """What a network with this ``prediction_type`` should output for ``z_t = alpha x0 + sigma eps``:
    ``eps`` (the original), ``v = alpha eps - sigma x0`` (Salimans & Ho 2022), ``x0`` ("sample"),
    or ``F = (x0 - c_skip z) / c_out`` ("edm", :func:`edm_coefficients`; ``z_t``, when the caller
    already has it, saves recomputing :func:`q_sample`)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        alpha, sigma = alpha_sigma(t)
        return _expand(alpha, noise) * noise - _expand(sigma, x0) * x0
    if prediction_type == "edm":
        c_skip, c_out = edm_coefficients(t)
        z_t = q_sample(x0, t, noise) if z_t is None else z_t
        return (x0 - _expand(c_skip, x0) * z_t) / _expand(c_out, x0)
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def eps_from_prediction(prediction: Tensor, z_t: Tensor, t: Tensor, prediction_type: str = "epsilon") -> Tensor:
    """The eps implied by a network output, so that every sampler (which steps on eps) serves every
    prediction type: ``eps = sigma z + alpha v`` for v, ``(z - alpha x0) / sigma`` for x0, and for
    "edm" the same with ``x0 = c_skip z + c_out F``, written without the cancellation at low noise:
    ``eps = sigma z / D - alpha s F / sqrt(D)``."""
    if prediction_type == "epsilon":
        return prediction
    if prediction_type == "edm":
        alpha, sigma = alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
        d = sigma**2 + (alpha * SIGMA_DATA) ** 2
        return _expand(sigma / d, z_t) * z_t - _expand(alpha * SIGMA_DATA / d.sqrt(), z_t) * prediction
    alpha, sigma = alpha_sigma(t)
    alpha, sigma = _expand(alpha, z_t), _expand(sigma, z_t)
    if prediction_type == "v_prediction":
        return sigma * z_t + alpha * prediction
    if prediction_type == "sample":
        return (z_t - alpha * prediction) / sigma
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def x0_from_prediction(prediction: Tensor, z_t: Tensor, t: Tensor, prediction_type: str = "epsilon") -> Tensor:
    """The x0 a network output implies, computed directly for x0-type outputs ("sample": the output;
    "edm": ``c_skip z + c_out F``) instead of through eps, whose ``/ alpha`` amplifies rounding near
    t = 1 (where alpha ~ 5e-5)."""
    if prediction_type == "sample":
        return prediction
    if prediction_type == "edm":
        c_skip, c_out = edm_coefficients(t)
        return _expand(c_skip, z_t) * z_t + _expand(c_out, z_t) * prediction
    return predict_x0(z_t, t, eps_from_prediction(prediction, z_t, t, prediction_type))


def posterior(z_t: Tensor, x0: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``q(z_s | z_t, x0)`` for ``s < t`` (spec §4.1 sampler, ``logvar_type="large"``).

    With ``r = SNR_t / SNR_s``: ``mean = r (alpha_s / alpha_t) z_t + (1 - r) alpha_s x0`` and the "large"
    variance ``(1 - r) sigma_t^2`` (the forward step's variance). Careful: the original code calls the
    factor ``alpha_s / alpha_t`` "alpha_st"; it is the *inverse* of the usual alpha_{t|s} = alpha_t / alpha_s.
    Written with alpha_{t|s} the mean is the textbook ``alpha_{t|s} sigma_s^2 / sigma_t^2 z_t + ...``.
    """
    alpha_t, sigma_t = alpha_sigma(t)
    alpha_s, _ = alpha_sigma(s)
    r = torch.exp(logsnr(torch.as_tensor(t, dtype=torch.float64)) - logsnr(torch.as_tensor(s, dtype=torch.float64)))
    r = r.to(alpha_t.dtype)
    mean = _expand(r * alpha_s / alpha_t, z_t) * z_t + _expand((1 - r) * alpha_s, z_t) * x0
    variance = _expand((1 - r) * sigma_t**2, z_t)
    return mean, variance
