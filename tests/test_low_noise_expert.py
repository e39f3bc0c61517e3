"""The decoder's low-noise expert: a conv denoiser that takes rows below a noise time, and its training."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import MICRO

from specdiff.errors import SpecdiffError
from specdiff.models.decoder import FilmDecoder
from specdiff.models.low_noise_expert import RESIDUAL_SCALE, LowNoiseExpert
from specdiff.models.presets import build_models
from specdiff.sampling.diffusion import alpha_sigma, x0_from_prediction
from specdiff.sampling.sampler import GuidedDenoiser
from specdiff.training.low_noise_expert import (
    CHECKPOINT_NAME,
    PAIRS_NAME,
    ExpertTrainSettings,
    decoder_with_expert,
    expert_loss,
    train_low_noise_expert,
    warmup_cosine,
)
from specdiff.training.objective import SpectrogramDiffusionModel

torch.set_num_threads(1)
ROLL = dict(score_roll_features=6832, prediction_type="edm", spec_out_bias=True, score_prior=True)
EXPERT = dict(low_noise_expert_channels=4, low_noise_expert_below=0.5)


def roll_model(**decoder) -> SpectrogramDiffusionModel:
    return SpectrogramDiffusionModel(*build_models("tiny", seed=0, dropout_rate=0.0, **MICRO, **ROLL, **decoder))


def inputs(batch: int = 2):
    tokens = torch.zeros(batch, 64, dtype=torch.long)
    tokens[:, :6] = torch.tensor([1134, 1001, 1061, 1, 1145, 1001])
    return tokens, torch.zeros(batch, 256, 128), torch.zeros(batch, 256, dtype=torch.bool)


def test_an_untrained_expert_is_per_pixel_shrinkage_towards_the_prior():
    expert = LowNoiseExpert(4)
    g = torch.Generator().manual_seed(0)
    noisy, prior = torch.randn(2, 16, 128, generator=g), torch.randn(2, 16, 128, generator=g)
    t = torch.tensor([0.3, 0.7])
    alpha, sigma = (v.float()[:, None, None] for v in alpha_sigma(t.double()))
    # Hand-derived EDM skip for a residual of scale s: alpha s^2 / (alpha^2 s^2 + sigma^2).
    c_skip = alpha * RESIDUAL_SCALE**2 / (alpha**2 * RESIDUAL_SCALE**2 + sigma**2)
    with torch.no_grad():
        assert torch.allclose(expert(noisy, prior, t), c_skip * noisy, atol=1e-6)


def test_edm_output_gives_the_prior_plus_the_residual_estimate():
    expert = LowNoiseExpert(4)
    with torch.no_grad():
        for parameter in expert.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))  # a non-trivial expert
        g = torch.Generator().manual_seed(1)
        z, prior = torch.randn(2, 16, 128, generator=g), torch.randn(2, 16, 128, generator=g)
        t = torch.tensor([0.2, 0.6])
        alpha = alpha_sigma(t.double())[0].float()[:, None, None]
        x0 = x0_from_prediction(expert.edm_output(z, t, prior), z, t, "edm")
        assert torch.allclose(x0, prior + expert(z - alpha * prior, prior, t), atol=1e-4)


def test_the_expert_takes_rows_below_its_time_and_leaves_the_others():
    model = roll_model(**EXPERT)
    plain = roll_model()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "low_noise_expert" not in k})
    tokens, context, mask = inputs()
    z, t = torch.randn(2, 256, 128), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        mixed, reference = model(tokens, context, mask, z, t), plain(tokens, context, mask, z, t)
        assert torch.allclose(mixed[1], reference[1], atol=1e-5)  # t = 0.8: the transformer's output
        cache = model.decoder.prepare_cross_attention(model.encode(tokens, context, mask), model.score_roll(tokens))
        expert = model.decoder.low_noise_expert.edm_output(z, t, cache.frame_prior)
        assert torch.allclose(mixed[0], expert[0], atol=1e-5) and not torch.allclose(mixed[0], reference[0])
        below = model(tokens, context, mask, z, torch.tensor([0.3, 0.1]))  # all rows: no transformer pass
        assert torch.allclose(below[0], mixed[0], atol=1e-5)


def test_expert_options_are_validated_and_kept_in_the_config():
    with pytest.raises(ValueError, match="low_noise_expert_below"):
        FilmDecoder(**MICRO, **ROLL, low_noise_expert_channels=4)
    with pytest.raises(ValueError, match="score_prior"):
        FilmDecoder(**MICRO, **EXPERT)
    decoder = FilmDecoder(**MICRO, **ROLL, **EXPERT)
    assert decoder.config["low_noise_expert_below"] == 0.5
    assert "low_noise_expert_channels" not in FilmDecoder(**MICRO).config
    rebuilt = FilmDecoder(**json.loads(json.dumps(dict(decoder.config))))
    assert rebuilt.load_state_dict(decoder.state_dict(), strict=True) is not None


def test_guidance_is_skipped_where_the_expert_denoises():
    model = roll_model(**EXPERT)
    tokens, context, mask = inputs(1)
    encodings = model.encode(tokens, context, mask)
    roll = model.score_roll(tokens)
    guided = GuidedDenoiser(model.decoder, encodings, guidance_scale=3.0, score_roll=roll)
    plain = GuidedDenoiser(model.decoder, encodings, guidance_scale=1.0, score_roll=roll)
    z = torch.randn(1, 256, 128)
    with torch.no_grad():
        assert torch.allclose(guided(z, torch.tensor(0.2)), plain(z, torch.tensor(0.2)), atol=1e-5)
        assert not torch.allclose(guided(z, torch.tensor(0.9)), plain(z, torch.tensor(0.9)), atol=1e-4)


def test_decoder_with_expert_keeps_the_decoder_weights():
    decoder = roll_model().decoder
    expert = LowNoiseExpert(4)
    merged = decoder_with_expert(decoder, expert, 0.7)
    assert merged.config["low_noise_expert_below"] == 0.7 and merged.config["low_noise_expert_channels"] == 4
    for name, value in decoder.state_dict().items():
        assert torch.equal(merged.state_dict()[name], value)
    assert torch.equal(merged.low_noise_expert.inputs.weight, expert.inputs.weight)


def smooth_pairs(n: int = 8, frames: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets constant in time per bin around a zero prior: a local average denoises them far better
    than per-pixel shrinkage, so a trained expert must beat an untrained one."""
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(n, 1, 128, generator=g) * 0.8 - 0.4).expand(n, frames, 128).contiguous()
    return targets, torch.zeros(n, frames, 128)


def test_training_learns_to_denoise_and_resumes(tmp_path):
    targets, priors = smooth_pairs()
    torch.save({"targets": targets, "priors": priors}, tmp_path / PAIRS_NAME)  # the run folder's pairs cache
    settings = ExpertTrainSettings(channels=8, below=0.9, steps=60, windows=8, batch_size=4, crop_frames=16,
                                   learning_rate=5e-3, checkpoint_every=30)  # fmt: skip
    t = torch.full((8,), 0.5)
    with torch.no_grad():
        before = float(expert_loss(LowNoiseExpert(8), targets, priors, t, torch.Generator().manual_seed(9)))
    lines: list[str] = []
    expert = train_low_noise_expert(None, None, settings, tmp_path, log=lines.append)
    with torch.no_grad():
        after = float(expert_loss(expert, targets, priors, t, torch.Generator().manual_seed(9)))
    assert after < 0.7 * before
    assert (tmp_path / CHECKPOINT_NAME).is_file() and lines[-1].startswith("step 60/60")
    again: list[str] = []
    resumed = train_low_noise_expert(None, None, settings, tmp_path, log=again.append)
    assert again == ["resumed at step 60"]
    assert torch.equal(resumed.output.weight, expert.output.weight)
    with pytest.raises(SpecdiffError, match="other settings"):
        train_low_noise_expert(None, None, ExpertTrainSettings(channels=4), tmp_path)


def test_learning_rate_warms_up_then_decays_to_zero():
    assert warmup_cosine(0, 100) == pytest.approx(0.2 * 0.5 * (1 + torch.cos(torch.tensor(0.0)).item()))
    assert warmup_cosine(4, 100) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 0.04)).item()))
    assert warmup_cosine(100, 100) == pytest.approx(0.0, abs=1e-12)
