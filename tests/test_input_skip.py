"""The decoder's local-input extensions: ``input_context`` and the fitted ``input_skip`` denoiser."""

from __future__ import annotations

import pytest
import torch
from conftest import MICRO

from specdiff.models.decoder import INPUT_SKIP_KNOTS, FilmDecoder, knot_weights, noisy_residual
from specdiff.models.presets import build_models
from specdiff.sampling.diffusion import alpha_sigma, edm_coefficients, q_sample, x0_from_prediction
from specdiff.training.config import TrainConfig, apply_overrides
from specdiff.training.objective import SpectrogramDiffusionModel
from specdiff.training.prior_fit import _frame_windows, fit_input_skip

torch.set_num_threads(1)
ROLL = dict(score_roll_features=6832, prediction_type="edm", spec_out_bias=True, score_prior=True)


def roll_model(**decoder) -> SpectrogramDiffusionModel:
    return SpectrogramDiffusionModel(*build_models("tiny", seed=0, dropout_rate=0.0, **MICRO, **ROLL, **decoder))


def smooth_windows(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Windows whose target is constant in time per bin (plus a little jitter): a local average of the
    noisy input denoises them far better than per-pixel shrinkage."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(2048, dtype=torch.long)
    tokens[:6] = torch.tensor([1134, 1001, 1061, 1, 1145, 1001])
    items = []
    for _ in range(n):
        level = torch.rand(1, 128, generator=g) * 1.6 - 0.8
        target = level + 0.02 * torch.randn(256, 128, generator=g)
        items.append(dict(tokens=tokens, context=torch.zeros(256, 128), context_mask=torch.zeros(256, dtype=torch.bool),
                          target=target))  # fmt: skip
    return items


def test_knot_weights_are_hat_functions():
    w = knot_weights(torch.tensor([0.0, 0.1, 0.15, 0.42, 1.0, 1.5]))
    assert torch.allclose(w.sum(1), torch.ones(6, dtype=torch.float64))
    assert w[0, 0] == 1 and w[4, -1] == 1 and w[5, -1] == 1  # on a knot, and clamped beyond the last
    assert w[1, 1] == pytest.approx(1.0, abs=1e-6)  # float32 0.1 sits on the knot 0.1
    assert w[2, 1] == pytest.approx(0.5) and w[2, 2] == pytest.approx(0.5)  # halfway from 0.1 to 0.2
    i = INPUT_SKIP_KNOTS.index(0.35)
    assert w[3, i] == pytest.approx((0.5 - 0.42) / 0.15) and w[3, i + 1] == pytest.approx((0.42 - 0.35) / 0.15)


def test_zero_started_extensions_keep_a_warm_started_output():
    plain = roll_model()
    extended = roll_model(input_context_frames=5, input_skip_frames=3)
    missing = extended.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["decoder.input_context.weight", "decoder.input_skip.weight"]
    b = smooth_windows(2, 0)
    tokens = torch.stack([x["tokens"] for x in b])
    context, mask = torch.stack([x["context"] for x in b]), torch.stack([x["context_mask"] for x in b])
    z, t = torch.randn(2, 256, 128), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        assert torch.allclose(extended(tokens, context, mask, z, t), plain(tokens, context, mask, z, t), atol=1e-5)


def test_input_skip_options_are_validated():
    with pytest.raises(ValueError, match="odd"):
        FilmDecoder(**MICRO, **ROLL, input_skip_frames=4)
    with pytest.raises(ValueError, match="edm"):
        FilmDecoder(**MICRO, input_skip_frames=3)
    decoder = FilmDecoder(**MICRO, **ROLL, input_skip_frames=3)
    assert decoder.config["input_skip_frames"] == 3 and "input_skip_frames" not in FilmDecoder(**MICRO).config
    config = apply_overrides(TrainConfig(), ["model.input_skip_frames=9", "input_skip_fit=64"])
    assert config.model["input_skip_frames"] == 9 and config.input_skip_fit == 64


def test_conv_weight_layout_matches_the_fitted_feature_windows():
    """The fit solves for ``windows @ W``; writing W into the Conv1d must give the same map."""
    decoder = FilmDecoder(**MICRO, **ROLL, input_skip_frames=3)
    g = torch.Generator().manual_seed(0)
    solution = torch.randn(128 * 3, 128, generator=g, dtype=torch.float64)
    with torch.no_grad():
        decoder.input_skip.weight.zero_()
        decoder.input_skip.weight[:128] = solution.T.reshape(128, 128, 3).float()  # knot 0, as the fit writes it
        x = torch.randn(2, 256, 128, generator=g)
        out = decoder.input_skip_output(x, torch.zeros(2), None)  # t = 0: knot 0 alone; no prior
    expected = (_frame_windows(x, 3).double() @ solution).reshape(2, 256, 128)
    assert torch.allclose(out.double(), expected, atol=1e-3)


def test_noisy_residual_removes_the_scaled_prior():
    z, p, t = torch.randn(2, 4, 3), torch.randn(2, 4, 3), torch.tensor([0.2, 0.7])
    alpha, _ = alpha_sigma(t)
    assert torch.allclose(noisy_residual(z, t, p), z - alpha[:, None, None] * p, atol=1e-6)
    assert noisy_residual(z, t, None) is z


def test_fit_input_skip_denoises_smooth_targets():
    model = roll_model(input_skip_frames=5)
    report = fit_input_skip(model, smooth_windows(16, 1), windows=16, ridge=1.0, batch_size=8)
    assert [t for t, _, _ in report] == [max(k, 0.02) for k in INPUT_SKIP_KNOTS if k < 1.0]
    assert all(after < 0.8 * before for t, before, after in report if 0.05 < t < 0.9)
    weight = model.decoder.input_skip.weight.detach()
    assert int(weight[-128:].abs().sum()) == 0 and float(weight[:-128].abs().sum()) > 0  # the t = 1 map stays zero
    assert model.training  # the fit restores the mode it found

    # On windows it never saw, the one-step x0 error no longer carries the noise the EDM skip
    # passes through (its regression on the noise, "leak", would be c_skip * sigma without it).
    model.eval()
    held_out = smooth_windows(6, 2)
    x0 = torch.stack([w["target"] for w in held_out])
    tokens = torch.stack([w["tokens"] for w in held_out])
    context, mask = torch.stack([w["context"] for w in held_out]), torch.stack([w["context_mask"] for w in held_out])
    t = torch.full((6,), 0.5)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    z = q_sample(x0, t, noise)
    with torch.no_grad():
        error = x0_from_prediction(model(tokens, context, mask, z, t), z, t, "edm") - x0
    leak = float((error * noise).sum() / (noise * noise).sum())
    c_skip, _ = edm_coefficients(torch.tensor(0.5))
    ignore = float(c_skip * alpha_sigma(torch.tensor(0.5, dtype=torch.float64))[1])
    assert leak < 0.3 * ignore
