"""Frame-aligned score conditioning: the roll of hand-built notes, the decoder option, CFG, folders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from specdiff.midi.reader import Note
from specdiff.midi.score_roll import (
    DRUM_DECAY_FRAMES,
    EXTENDED_ROLL_FEATURES,
    RELEASE_FRAMES,
    ROLL_FEATURES,
    TONAL_DECAY_FRAMES,
    CarryIn,
    batch_rolls,
    drum_feature,
    family_feature,
    pitch_feature,
    release_feature,
    segment_notes,
    segment_roll,
    tonal_feature,
)
from specdiff.midi.tokenizer import notes_to_segments
from specdiff.models.decoder import DECODER_EXTENSIONS, FilmDecoder
from specdiff.models.presets import build_models
from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline
from specdiff.sampling.diffusion import eps_from_prediction, prediction_target, q_sample
from specdiff.sampling.sampler import GuidedDenoiser, unconditional
from specdiff.training.objective import (
    SpectrogramDiffusionModel,
    decoder_score_roll,
    diffusion_loss,
    initialise_output,
)

torch.set_num_threads(1)
TINY = dict(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=48)

# A piano C4 at 0.1-0.5 s, a violin (program 40) E4 from 4.0 s into the next segment, a kick at 1.0 s.
NOTES = [Note(60, 0.1, 0.5, 100, 0, False), Note(64, 4.0, 6.0, 100, 40, False), Note(36, 1.0, 1.01, 100, 0, True)]


@pytest.fixture(scope="module")
def segments() -> list[list[int]]:
    return notes_to_segments(NOTES, 7.0)


def test_roll_of_hand_built_notes(segments):
    # Frames are 20 ms: 0.1 s -> frame 5, 0.5 s -> 25, 1.0 s -> 50, 4.0 s -> 200; 6.0 s is frame 44
    # of the second segment (6.0 - 5.12 = 0.88 s).
    assert segment_notes(segments[0]) == ([(0, 60, 5, 25), (40, 64, 200, 256)], [(36, 50)])
    assert segment_notes(segments[1]) == ([(40, 64, None, 44)], [])

    roll = segment_roll(segments[0]).numpy()
    assert roll.shape == (256, ROLL_FEATURES)
    piano_on, piano_sus = tonal_feature("onset", 0, 60), tonal_feature("sustain", 0, 60)
    assert np.flatnonzero(roll[:, piano_on]).tolist() == [5]
    assert np.flatnonzero(roll[:, piano_sus]).tolist() == list(range(5, 25))
    decay = roll[:, tonal_feature("decay", 0, 60)]
    assert decay[5] == 1.0 and decay[4] == 0.0 and decay[25] == 0.0
    assert decay[15] == pytest.approx(math.exp(-10 / TONAL_DECAY_FRAMES))
    # Violin (program 40, family 5): sounds to the end of the segment.
    assert np.flatnonzero(roll[:, tonal_feature("sustain", 40, 64)]).tolist() == list(range(200, 256))
    assert np.flatnonzero(roll[:, tonal_feature("onset", 40, 64)]).tolist() == [200]
    kick = roll[:, drum_feature("decay", 36)]
    assert np.flatnonzero(roll[:, drum_feature("onset", 36)]).tolist() == [50]
    assert kick[50] == 1.0 and kick[52] == pytest.approx(math.exp(-2 / DRUM_DECAY_FRAMES)) and kick[49] == 0.0
    # The shared features repeat each tonal note's columns per pitch and per family.
    for kind in ("onset", "sustain", "decay"):
        assert np.array_equal(roll[:, pitch_feature(kind, 60)], roll[:, tonal_feature(kind, 0, 60)])
        assert np.array_equal(roll[:, family_feature(kind, 40)], roll[:, tonal_feature(kind, 40, 64)])
    # Nothing else is on: 3 x (1 + 20 + 20) piano, 3 x (1 + 56 + 56) violin, 1 + 20 drum entries.
    assert np.count_nonzero(roll) == 3 * (41 + 113) + 21

    tied = segment_roll(segments[1]).numpy()  # the violin continues: sustain from frame 0, no onset
    assert np.flatnonzero(tied[:, tonal_feature("sustain", 40, 64)]).tolist() == list(range(44))
    assert not tied[:, tonal_feature("onset", 40, 64)].any() and not tied[:, tonal_feature("decay", 40, 64)].any()
    assert np.count_nonzero(tied) == 3 * 44


def test_carried_notes_ring_into_the_next_segment():
    # A piano C4 from 5.0 s (frame 250) into the next segment, a piano E4 ending at 5.0 s, a snare at 5.08 s
    # (frame 254). In the second segment the tied C4's decay continues from its onset 6 frames before,
    # the E4's release decays from its end 6 frames before, the snare's decay from 2 frames before.
    notes = [Note(60, 5.0, 6.0, 100, 0, False), Note(64, 4.9, 5.0, 100, 0, False), Note(38, 5.08, 5.1, 100, 0, True)]
    first, second = notes_to_segments(notes, 7.0)
    alone = segment_roll(second, features=EXTENDED_ROLL_FEATURES).numpy()
    carried = segment_roll(second, features=EXTENDED_ROLL_FEATURES, previous=first).numpy()
    frames = np.arange(256)
    tied_decay = carried[:, tonal_feature("decay", 0, 60)]
    assert not alone[:, tonal_feature("decay", 0, 60)].any()
    np.testing.assert_allclose(tied_decay[:44], np.exp(-(frames[:44] + 6) / TONAL_DECAY_FRAMES), rtol=1e-6)
    assert not tied_decay[44:].any()  # the note ends at 6.0 s, frame 44
    assert np.array_equal(carried[:, pitch_feature("decay", 60)], tied_decay)  # the shared columns follow
    for index, constant in enumerate(RELEASE_FRAMES):
        release = carried[:, release_feature(index, pitch=64)]
        np.testing.assert_allclose(release, np.exp(-(frames + 6) / constant), rtol=1e-5)
        assert not alone[:, release_feature(index, pitch=64)].any()
    snare = carried[:, drum_feature("decay", 38)]
    np.testing.assert_allclose(snare[:18], np.exp(-(frames[:18] + 2) / DRUM_DECAY_FRAMES), rtol=1e-6)
    assert not snare[18:].any() and not carried[:, drum_feature("onset", 38)].any()  # 20-frame span, no onset
    # Nothing else changes; a first segment (nothing before it) and an all-PAD row carry nothing in.
    changed = np.flatnonzero((carried != alone).any(axis=0))
    assert set(changed) <= {tonal_feature("decay", 0, 60), pitch_feature("decay", 60), family_feature("decay", 0),
                            drum_feature("decay", 38), *[release_feature(i, pitch=64) for i in range(2)],
                            *[release_feature(i, program=0) for i in range(2)]}  # fmt: skip
    assert np.array_equal(segment_roll(first, previous=[0] * 2048).numpy(), segment_roll(first).numpy())
    pad = torch.zeros(1, 2048, dtype=torch.long)
    assert not batch_rolls(pad, carry=CarryIn(torch.tensor([first]), [256])).any()
    # A shorter stretch before the segment (a song's first frames) places the same notes by its length.
    [short] = notes_to_segments([Note(62, 0.0, 3.0, 100, 0, False)], 3.0)
    late = segment_roll(second, features=EXTENDED_ROLL_FEATURES, previous=short, previous_frames=150).numpy()
    assert late[0, release_feature(1, pitch=62)] == pytest.approx(1.0)  # ended at the stretch's end


def test_roll_carry_in_is_a_decoder_option_the_roll_reads():
    with pytest.raises(ValueError, match="roll_carry_in"):
        FilmDecoder(**TINY, roll_carry_in=True)
    notes = [Note(60, 5.0, 6.0, 100, 0, False)]
    first, second = notes_to_segments(notes, 7.0)
    tokens, carry = torch.tensor([second]), CarryIn(torch.tensor([first]), torch.tensor([256]))
    plain = FilmDecoder(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES)
    reading = FilmDecoder(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES, roll_carry_in=True)
    assert reading.config["roll_carry_in"] is True and "roll_carry_in" not in plain.config
    assert torch.equal(decoder_score_roll(plain, tokens, carry=carry), decoder_score_roll(plain, tokens))
    with_carry = decoder_score_roll(reading, tokens, carry=carry)
    assert with_carry[0, 0, tonal_feature("decay", 0, 60)] == pytest.approx(math.exp(-6 / TONAL_DECAY_FRAMES))


def test_the_pipeline_carries_the_previous_segment_into_the_roll(segments):
    plain = _score_model(features=EXTENDED_ROLL_FEATURES)
    reading = _score_model(features=EXTENDED_ROLL_FEATURES, roll_carry_in=True)
    reading.load_state_dict(plain.state_dict())  # the same weights: only the roll differs
    kw = dict(num_inference_steps=1, output_type="mel", show_progress=False, guidance_scale=1.0, scheduler="ddim")

    def mel(model):
        pipe = SpectrogramDiffusionPipeline(model.notes_encoder, model.continuous_encoder, model.decoder)
        return pipe(segments, generator=torch.Generator().manual_seed(0), **kw).mels[0]

    a, b = mel(plain), mel(reading)
    np.testing.assert_array_equal(a[:256], b[:256])  # the first segment: nothing rings in
    assert np.abs(a[256:300] - b[256:300]).mean() > 1e-4  # the violin tied in keeps its decay
    # Streaming and batched songs (of different lengths) carry the same segments in.
    pipe = SpectrogramDiffusionPipeline(reading.notes_encoder, reading.continuous_encoder, reading.decoder)
    streamed = np.concatenate([part.mel for part in pipe.segments(segments, torch.Generator().manual_seed(0), 1, 1.0,
                                                                   "ddim")])  # fmt: skip
    np.testing.assert_allclose(streamed[: len(b)], b, atol=1e-5)
    many = pipe.synthesize_many([segments[:1], segments], generators=[0, 0], **kw)
    np.testing.assert_allclose(many[1].mels[0], b, atol=1e-5)
    np.testing.assert_allclose(many[0].mels[0], b[: len(many[0].mels[0])], atol=1e-5)


def test_roll_families_and_padding():
    assert tonal_feature("onset", 7, 60) == tonal_feature("onset", 0, 60)  # same GM family
    assert tonal_feature("onset", 8, 60) != tonal_feature("onset", 0, 60)
    pad = torch.zeros(2, 2048, dtype=torch.long)  # the CFG null condition: no tokens, no roll
    assert not batch_rolls(pad).any()


def test_roll_follows_the_tokens_for_random_notes():
    rng = np.random.default_rng(0)
    for _ in range(5):
        notes = []
        for _ in range(int(rng.integers(1, 12))):
            start = float(rng.uniform(0, 5.0))
            notes.append(Note(int(rng.integers(30, 90)), start, start + float(rng.uniform(0.05, 2)), 100,
                              int(rng.choice([0, 24, 40, 56])), False))  # fmt: skip
        [tokens] = notes_to_segments(notes, 5.1)
        tonal, _ = segment_notes(tokens)
        # Every note appears with its onset frame: 10 ms steps rounded, two steps per frame.
        expected = sorted((n.program, n.pitch, int(round(n.start * 100)) // 2) for n in notes)
        assert sorted((p, q, onset) for p, q, onset, _ in tonal) == expected


def test_original_decoder_is_unchanged_by_the_options():
    plain = FilmDecoder(**TINY)
    assert set(plain.config) == {"input_dims", "targets_length", "max_decoder_noise_time", "d_model", "num_layers",
                                 "num_heads", "d_kv", "d_ff", "dropout_rate"}  # fmt: skip
    assert plain.score_projection is None and plain.spec_out.bias is None
    assert not any("score" in k for k in plain.state_dict())
    explicit = FilmDecoder(**TINY, **DECODER_EXTENSIONS)  # the defaults, spelled out: still the original
    assert explicit.config == plain.config and explicit.state_dict().keys() == plain.state_dict().keys()
    with pytest.raises(ValueError, match="prediction_type"):
        FilmDecoder(**TINY, prediction_type="x0")


def test_sparse_projection_equals_the_dense_product(segments):
    decoder = FilmDecoder(**TINY, score_roll_features=ROLL_FEATURES)
    roll = batch_rolls(torch.tensor(segments))
    dense = roll @ decoder.score_projection.weight.t()
    assert torch.allclose(decoder.project_score_roll(roll), dense, atol=1e-6)


def _score_model(features: int = ROLL_FEATURES, **extra) -> SpectrogramDiffusionModel:
    return SpectrogramDiffusionModel(*build_models("tiny", seed=0, score_roll_features=features, **TINY, **extra))


def test_roll_changes_the_output_and_cfg_drops_it_with_the_tokens(segments):
    model = _score_model().eval()
    tokens = torch.tensor(segments)
    context, mask = torch.zeros(2, 256, 128), torch.zeros(2, 256, dtype=torch.bool)
    encodings = model.encode(tokens, context, mask)
    z, t = torch.randn(2, 256, 128), torch.full((2,), 0.5)
    with torch.no_grad():
        with_roll = model.decoder(encodings, z, t, score_roll=model.score_roll(tokens))
        without = model.decoder(encodings, z, t)
        assert not torch.allclose(with_roll, without)
        # Guidance: the conditional half has the roll, the null half neither tokens nor roll.
        guided = GuidedDenoiser(model.decoder, encodings, 2.0, score_roll=model.score_roll(tokens))(z, t[:1])
        uncond = model.decoder(unconditional(encodings), z, t)
        assert torch.allclose(guided, 2.0 * with_roll - uncond, atol=1e-5)
    # Training: a dropped example (tokens all PAD) gets an all-zero roll.
    assert not model.score_roll(tokens * 0).any()


def test_prediction_types_round_trip_to_eps():
    x0, noise, t = torch.rand(3, 4, 5) * 2 - 1, torch.randn(3, 4, 5), torch.tensor([0.1, 0.5, 0.9])
    z = q_sample(x0, t, noise)
    for kind in ("epsilon", "v_prediction", "sample", "edm"):
        target = prediction_target(x0, noise, t, kind)
        assert torch.allclose(eps_from_prediction(target, z, t, kind), noise, atol=1e-4), kind


def test_zero_output_init_and_loss_for_v_prediction(segments):
    model = _score_model(prediction_type="sample", spec_out_bias=True)
    initialise_output(model.decoder, "zero")
    assert not model.decoder.spec_out.weight.any() and torch.all(model.decoder.spec_out.bias == -1.0)
    model = _score_model(prediction_type="v_prediction")
    initialise_output(model.decoder, "zero")
    batch = {
        "tokens": torch.tensor(segments),
        "context": torch.zeros(2, 256, 128),
        "context_mask": torch.zeros(2, 256, dtype=torch.bool),
        "target": torch.full((2, 256, 128), -1.0),
    }
    t, noise = torch.tensor([0.3, 0.8]), torch.randn(2, 256, 128)
    out = diffusion_loss(model, batch, t, noise, torch.tensor([True, False]))
    # A zero output predicts v = 0: the objective is |v| summed; the logged error is that of eps = sigma z.
    v = prediction_target(batch["target"], noise, t, "v_prediction")
    assert float(out.loss_sum.detach()) == pytest.approx(float(v.abs().sum()), rel=1e-5)
    out.loss_sum.backward()
    assert model.decoder.spec_out.weight.grad.abs().sum() > 0


def test_score_folder_round_trip(segments, tmp_path):
    model = _score_model(prediction_type="v_prediction", spec_out_bias=True)
    pipe = SpectrogramDiffusionPipeline(model.notes_encoder, model.continuous_encoder, model.decoder)
    folder = pipe.save_pretrained(tmp_path / "model")
    config = json.loads((folder / "decoder" / "config.json").read_text())
    assert config["score_roll_features"] == ROLL_FEATURES and config["prediction_type"] == "v_prediction"
    loaded = SpectrogramDiffusionPipeline.from_pretrained(folder, inverter=None)
    assert loaded.decoder.score_projection is not None
    kw = dict(num_inference_steps=3, output_type="mel", show_progress=False, guidance_scale=2.0)
    for scheduler in ("original", "dpmsolver++"):
        before = pipe(segments, generator=torch.Generator().manual_seed(0), scheduler=scheduler, **kw).mels
        after = loaded(segments, generator=torch.Generator().manual_seed(0), scheduler=scheduler, **kw).mels
        assert np.array_equal(before, after) and np.isfinite(before).all()
    # Streaming sees the same roll as the whole-song call.
    streamed = np.concatenate([seg.mel for seg in loaded.segments(segments, generator=torch.Generator().manual_seed(0),
                                                                  num_inference_steps=3, guidance_scale=2.0,
                                                                  scheduler="original")])  # fmt: skip
    whole = loaded(segments, generator=torch.Generator().manual_seed(0), scheduler="original", **kw).mels[0]
    assert np.allclose(streamed, whole, atol=1e-5)


def test_a_decoder_with_another_roll_layout_is_refused():
    from specdiff.errors import ModelError

    notes, context, _ = build_models("tiny", seed=0, **TINY)
    with pytest.raises(ModelError, match="score roll of 100 features"):
        SpectrogramDiffusionPipeline(notes, context, FilmDecoder(**TINY, score_roll_features=100))


def test_warm_start_from_a_score_folder_builds_the_same_decoder(tmp_path):
    from specdiff.training.config import TrainConfig
    from specdiff.training.export import model_from_path, with_folder_decoder_options
    from specdiff.training.warm_start import pipeline_folder_state_dict

    model = _score_model(prediction_type="sample", spec_out_bias=True)
    folder = SpectrogramDiffusionPipeline(model.notes_encoder, model.continuous_encoder, model.decoder).save_pretrained(
        tmp_path / "model"
    )
    config = with_folder_decoder_options(TrainConfig(model=dict(TINY), init_from=str(folder)))
    assert config.model == {
        **TINY,
        "score_roll_features": ROLL_FEATURES,
        "prediction_type": "sample",
        "spec_out_bias": True,
    }
    rebuilt = SpectrogramDiffusionModel(*build_models("tiny", **config.model))
    rebuilt.load_state_dict(pipeline_folder_state_dict(folder), strict=True)
    loaded = model_from_path(folder)  # what the benchmarks load: same networks, eval mode
    assert not loaded.training and loaded.decoder.prediction_type == "sample"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), rebuilt.state_dict().values()))
    # An original folder adds nothing; an explicit setting wins over the folder's.
    plain = SpectrogramDiffusionPipeline(*build_models("tiny", **TINY)).save_pretrained(tmp_path / "plain")
    assert with_folder_decoder_options(TrainConfig(model=dict(TINY), init_from=str(plain))).model == TINY
    mine = TrainConfig(model={**TINY, "prediction_type": "v_prediction"}, init_from=str(folder))
    assert with_folder_decoder_options(mine).model["prediction_type"] == "v_prediction"


# ---- score prior (model.score_prior: the roll's linear x0 estimate added to an "edm" output) ----


def test_prior_weight_gives_the_prior_at_pure_noise_and_nothing_at_clean_input():
    from specdiff.sampling.diffusion import SIGMA_DATA, alpha_sigma, edm_coefficients, edm_prior_weight

    t = torch.tensor([0.0, 0.3, 0.7, 1.0])
    c_skip, c_out = edm_coefficients(t)
    alpha, _ = alpha_sigma(t.double())
    # The defining identity: weight * c_out == 1 - c_skip * alpha (x0 = c_skip z + (1 - c_skip alpha) p + c_out F)
    assert torch.allclose(edm_prior_weight(t) * c_out, 1 - c_skip * alpha, atol=1e-12)
    assert float(edm_prior_weight(t)[0]) < 1e-3 and float(edm_prior_weight(t)[-1]) == pytest.approx(1 / SIGMA_DATA)


def test_score_prior_needs_the_roll_and_the_edm_output():
    with pytest.raises(ValueError, match="score_prior"):
        FilmDecoder(**TINY, score_prior=True)
    with pytest.raises(ValueError, match="score_prior"):
        FilmDecoder(**TINY, score_roll_features=ROLL_FEATURES, prediction_type="sample", score_prior=True)


def test_a_zero_prior_changes_nothing_and_a_fitted_one_is_the_estimate_from_pure_noise(segments):
    from specdiff.sampling.diffusion import alpha_sigma, edm_coefficients

    plain = _score_model(prediction_type="edm", spec_out_bias=True).eval()
    prior = _score_model(prediction_type="edm", spec_out_bias=True, score_prior=True).eval()
    missing, unexpected = prior.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and set(missing) == {"decoder.score_prior_projection.weight",
                                               "decoder.score_prior_projection.bias"}  # fmt: skip
    assert not prior.decoder.score_prior_projection.weight.any()  # starts at zero
    tokens = torch.tensor(segments)
    context, mask = torch.zeros(2, 256, 128), torch.zeros(2, 256, dtype=torch.bool)
    z, t = torch.randn(2, 256, 128), torch.tensor([0.4, 0.999])
    with torch.no_grad():
        assert torch.equal(prior(tokens, context, mask, z, t), plain(tokens, context, mask, z, t))
        # With a zero network output, the x0 estimate is c_skip z + (1 - c_skip alpha) p: p itself at t ~ 1.
        initialise_output(prior.decoder, "zero")
        layer = prior.decoder.score_prior_projection
        layer.weight.normal_()
        layer.bias.fill_(-0.5)
        out = prior(tokens, context, mask, z, t)
        c_skip, c_out = edm_coefficients(t)
        alpha, _ = alpha_sigma(t.double())
        x0 = c_skip[:, None, None] * z + c_out[:, None, None] * out.double()
        p = prior.score_roll(tokens) @ layer.weight.t() + layer.bias
        assert torch.allclose(x0, c_skip[:, None, None] * z + (1 - c_skip * alpha)[:, None, None] * p, atol=1e-4)
        assert torch.allclose(x0[1].float(), p[1], atol=2e-3)
        # The null condition of CFG (an all-zero roll) gets the bias alone.
        null = prior.decoder(unconditional(prior.encode(tokens, context, mask)), z, t, score_roll=torch.zeros_like(
            prior.score_roll(tokens)))  # fmt: skip
        assert torch.allclose(c_out[1] * null[1].double() + c_skip[1] * z[1], torch.full_like(z[1], -0.5).double()
                              * (1 - c_skip[1] * alpha[1]) + c_skip[1] * z[1], atol=1e-4)  # fmt: skip


def test_fit_score_prior_recovers_a_linear_map_of_the_shared_roll_columns():
    from specdiff.midi.score_roll import TONAL_FEATURES, pitch_feature
    from specdiff.training.prior_fit import fit_score_prior

    rng = np.random.default_rng(0)

    class Windows:  # targets that are exactly bias + one spectral template per sounding pitch
        def __init__(self):
            self.template = torch.from_numpy(rng.uniform(0.0, 0.5, (128, 128)).astype(np.float32))
            self.items = []
            for _ in range(24):
                notes = [Note(int(rng.integers(40, 80)), float(s), float(s + rng.uniform(0.2, 1.0)), 100,
                              int(rng.integers(0, 64)), False) for s in rng.uniform(0, 4.5, 6)]  # fmt: skip
                tokens = torch.tensor(notes_to_segments(notes, 5.12)[0])
                roll = batch_rolls(tokens[None])[0]
                sustain = roll[:, pitch_feature("sustain", 0) : pitch_feature("sustain", 0) + 128]
                target = (-0.8 + sustain @ self.template).clamp(max=1.0)
                self.items.append(dict(tokens=tokens, context=torch.zeros(256, 128),
                                       context_mask=torch.zeros(256, dtype=torch.bool), target=target))  # fmt: skip

        def __getitem__(self, i):
            return self.items[i]

    windows = Windows()
    decoder = FilmDecoder(**TINY, score_roll_features=ROLL_FEATURES, prediction_type="edm", score_prior=True)
    error = fit_score_prior(decoder, windows, 24, ridge=1e-3, batch_size=8)
    assert error < 0.01  # the map is recovered (a constant would leave ~0.1)
    assert decoder.score_prior_projection.bias.mean().item() == pytest.approx(-0.8, abs=0.02)
    assert not decoder.score_prior_projection.weight[:, :TONAL_FEATURES].any()  # per-family columns left at zero


def test_score_prior_folder_round_trip(segments, tmp_path):
    model = _score_model(prediction_type="edm", spec_out_bias=True, score_prior=True)
    torch.nn.init.normal_(model.decoder.score_prior_projection.weight, std=0.1)
    pipe = SpectrogramDiffusionPipeline(model.notes_encoder, model.continuous_encoder, model.decoder)
    folder = pipe.save_pretrained(tmp_path / "model")
    assert json.loads((folder / "decoder" / "config.json").read_text())["score_prior"] is True
    loaded = SpectrogramDiffusionPipeline.from_pretrained(folder, inverter=None)
    kw = dict(num_inference_steps=2, output_type="mel", show_progress=False, guidance_scale=1.5, scheduler="ddim")
    before = pipe(segments, generator=torch.Generator().manual_seed(0), **kw).mels
    after = loaded(segments, generator=torch.Generator().manual_seed(0), **kw).mels
    assert np.array_equal(before, after) and np.isfinite(before).all()
    # Batching two songs (concatenated caches) and streaming give the same segments as one song alone.
    other = notes_to_segments([Note(48, 0.5, 2.0, 100, 40, False)], 3.0)
    kw.pop("output_type")
    both = loaded.synthesize_many([segments, other], generators=[0, 1], output_type="mel", **kw)
    alone = loaded(other, generator=torch.Generator().manual_seed(1), output_type="mel", **kw).mels

    def close(a, b):  # equal up to batch-dependent float rounding (as in test_speed_equivalence)
        return np.abs(a - b).max() <= 1e-3 * max(1.0, np.abs(b).max())

    assert close(both[0].mels, after) and close(both[1].mels, alone)
    streamed = np.concatenate([seg.mel for seg in loaded.segments(segments, generator=torch.Generator().manual_seed(0),
                                                                  **kw)])  # fmt: skip
    assert close(streamed, after[0])
