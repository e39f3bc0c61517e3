"""The decoder's low-noise expert: a conv denoiser that takes rows below a noise time, and its training."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import MICRO

from specdiff.audio.mel import mel_band_edges, mel_to_hertz
from specdiff.errors import SpecdiffError
from specdiff.midi.score_roll import EXTENDED_ROLL_FEATURES, SILENT_FEATURE, drum_feature, pitch_feature
from specdiff.models.decoder import FilmDecoder
from specdiff.models.low_noise_expert import RESIDUAL_SCALE, SCORE_PLANES, LowNoiseExpert, score_planes
from specdiff.models.presets import build_models
from specdiff.sampling.diffusion import alpha_sigma, x0_from_prediction
from specdiff.sampling.sampler import GuidedDenoiser
from specdiff.training.low_noise_expert import (
    CHECKPOINT_NAME,
    PAIRS_NAME,
    ExpertTrainSettings,
    decoder_with_expert,
    expert_loss,
    residual_pairs,
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


def test_score_planes_mark_onsets_on_their_harmonics_drums_and_silence():
    roll = torch.zeros(1, 8, EXTENDED_ROLL_FEATURES)
    roll[0, 2, pitch_feature("onset", 69)] = 1.0  # A4, 440 Hz
    roll[0, 5, drum_feature("onset", 38)] = 1.0
    roll[0, 7, SILENT_FEATURE] = 1.0
    planes = score_planes(roll)
    assert planes.shape == (1, 8, 128, SCORE_PLANES)
    tonal = planes[0, :, :, 0]
    assert tonal[2].max() == 1.0 and tonal[[0, 1, 3, 4, 5, 6, 7]].abs().max() == 0.0
    centres = torch.as_tensor(mel_to_hertz(mel_band_edges()[1:-1]))  # band b peaks at edge b + 1 (in mel)
    assert int(tonal[2].argmax()) == int((centres - 440.0).abs().argmin())  # the fundamental weighs most
    assert int((tonal[2] > 0).sum()) > 4  # and its harmonics are marked too
    assert torch.equal(planes[0, :, :, 1].sum(1), torch.tensor([0, 0, 0, 0, 0, 128, 0, 0.0]))
    assert torch.equal(planes[0, :, :, 2].sum(1), torch.tensor([0, 0, 0, 0, 0, 0, 0, 128.0]))
    assert score_planes(torch.zeros(1, 8, 6832))[..., 2].abs().max() == 0.0  # base layout: no silent feature


ESTIMATE = dict(EXPERT, low_noise_expert_anchor="estimate", low_noise_expert_planes=True)


def test_an_estimate_anchored_expert_denoises_around_the_first_steps_estimate():
    model = roll_model(**ESTIMATE)
    with torch.no_grad():
        for parameter in model.decoder.low_noise_expert.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    tokens, context, mask = inputs(1)
    roll = model.score_roll(tokens)
    denoiser = GuidedDenoiser(model.decoder, model.encode(tokens, context, mask), guidance_scale=2.0, score_roll=roll)
    g = torch.Generator().manual_seed(2)
    z1, z = torch.randn(1, 256, 128, generator=g), torch.randn(1, 256, 128, generator=g)
    with torch.no_grad():
        with pytest.raises(ValueError, match="expert_anchor"):
            denoiser(z, torch.tensor(0.3))  # no first step yet
        eps = denoiser(z1, torch.tensor(1.0))
        alpha, sigma = (float(v) for v in alpha_sigma(torch.tensor(1.0, dtype=torch.float64)))
        anchor = ((z1 - sigma * eps) / alpha).clamp(-1, 1)
        assert torch.allclose(denoiser.cache.expert_anchor, anchor, atol=1e-4)
        t, expert, planes = torch.tensor([0.3]), model.decoder.low_noise_expert, score_planes(roll)
        x0 = x0_from_prediction(expert.edm_output(z, t, anchor, planes), z, t, "edm")
        alpha, sigma = (float(v) for v in alpha_sigma(t.double()))
        got = (z - sigma * denoiser(z, torch.tensor(0.3))) / alpha
        assert torch.allclose(got, x0, atol=1e-3)
        prior = denoiser.cache.frame_prior[:1]
        assert not torch.allclose(
            got, x0_from_prediction(expert.edm_output(z, t, prior, planes), z, t, "edm"), atol=1e-3
        )


def test_anchor_and_planes_options_are_validated_and_kept():
    with pytest.raises(ValueError, match="low_noise_expert_anchor"):
        FilmDecoder(**MICRO, **ROLL, **dict(EXPERT, low_noise_expert_anchor="mean"))
    with pytest.raises(ValueError, match="need low_noise_expert_channels"):
        FilmDecoder(**MICRO, **ROLL, low_noise_expert_planes=True)
    decoder = FilmDecoder(**MICRO, **ROLL, **ESTIMATE)
    assert decoder.low_noise_expert.planes == SCORE_PLANES and decoder.low_noise_expert_anchor == "estimate"
    rebuilt = FilmDecoder(**json.loads(json.dumps(dict(decoder.config))))
    assert rebuilt.load_state_dict(decoder.state_dict(), strict=True) is not None
    merged = decoder_with_expert(roll_model().decoder, LowNoiseExpert(4, planes=SCORE_PLANES), 0.5, "estimate")
    assert merged.config["low_noise_expert_planes"] is True and merged.config["low_noise_expert_anchor"] == "estimate"


def test_estimate_pairs_hold_the_networks_first_estimate_and_the_planes():
    model = roll_model().eval()
    tokens, context, mask = inputs(1)
    item = {"tokens": tokens[0], "context": context[0], "context_mask": mask[0], "target": torch.rand(256, 128) - 0.5}
    pairs = residual_pairs(model, [item, item], windows=2, anchor="estimate", planes=True)
    assert set(pairs) == {"targets", "anchors", "planes"} and pairs["planes"].shape == (2, 256, 128, SCORE_PLANES)
    with torch.no_grad():
        cache = model.batch_cross_cache({k: torch.stack([v, v]) for k, v in item.items()})
        noise = torch.randn(2, 256, 128, generator=torch.Generator().manual_seed(0))
        out = model.decoder(None, noise, torch.ones(2), cross_cache=cache)
    expected = x0_from_prediction(out, noise, torch.ones(2), "edm").clamp(-1, 1)
    assert torch.allclose(pairs["anchors"], expected, atol=1e-4)
    assert torch.allclose(residual_pairs(model, [item], windows=1)["anchors"], cache.frame_prior[:1], atol=1e-5)
