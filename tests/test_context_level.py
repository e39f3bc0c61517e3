"""The context-level roll layout: the level of a segment's context, per mel band, as roll columns
(``specdiff.midi.score_roll.add_context_level``), and warm starts into it."""

from __future__ import annotations

import pytest
import torch
from conftest import EDM, MICRO

from specdiff.midi.score_roll import (
    CONTEXT_LEVEL_FEATURES,
    CONTEXT_ROLL_FEATURES,
    CONTEXT_TAIL_FRAMES,
    EXTENDED_ROLL_FEATURES,
    PROGRAM_ROLL_FEATURES,
    VELOCITY_FEATURES,
    VELOCITY_ROLL_FEATURES,
    add_context_level,
    batch_rolls,
)
from specdiff.midi.tokenizer import EOS_ID, PITCH_ID, PROGRAM_ID, SHIFT_ID, TIE_ID, VELOCITY_ID
from specdiff.models.presets import build_models
from specdiff.training.objective import SpectrogramDiffusionModel
from specdiff.training.warm_start import ROLL_WEIGHTS, _widen_roll_weights

torch.set_num_threads(1)
NOTE = [TIE_ID, SHIFT_ID + 10, PROGRAM_ID + 40, VELOCITY_ID + 1, PITCH_ID + 60, SHIFT_ID + 30, EOS_ID]


def test_context_columns_hold_the_tail_level_per_band_and_the_empty_flag():
    tokens = torch.tensor([NOTE + [0], NOTE + [0], [0] * 8])  # a full context, an empty one, the null row
    roll = batch_rolls(tokens, features=CONTEXT_ROLL_FEATURES)
    assert roll.shape == (3, 256, EXTENDED_ROLL_FEATURES + CONTEXT_LEVEL_FEATURES)
    assert torch.equal(roll[0, :, :EXTENDED_ROLL_FEATURES], batch_rolls(tokens[:1], features=EXTENDED_ROLL_FEATURES)[0])
    assert not roll[:, :, EXTENDED_ROLL_FEATURES:].any()  # tokens alone do not know the context
    context = torch.full((3, 256, 128), -1.0)
    valid = 200  # valid frames are a prefix; the tail is frames [184, 200)
    context[0, valid - CONTEXT_TAIL_FRAMES : valid, 5] = 0.5
    context[0, : valid - CONTEXT_TAIL_FRAMES, 5] = 0.9  # before the tail: not counted
    context[0, valid:, 5] = 0.9  # past the valid frames: not counted
    context[0, valid - CONTEXT_TAIL_FRAMES : valid, 7] = -0.8  # -9.96 nat: under the -8 floor
    context[0, valid - 8 : valid, 9] = 0.0  # half of the tail at 0, half silent
    mask = torch.zeros(3, 256, dtype=torch.bool)
    mask[0, :valid] = True
    mask[2, :valid] = True
    filled = add_context_level(roll, context, mask, tokens)
    level = filled[..., EXTENDED_ROLL_FEATURES:]
    # the floor, -8 nat, in the scaled units of [ln 1e-5, 4] -> [-1, 1]: -1 + 2 * 3.5129 / 15.5129
    floor = -1.0 + 2.0 * (-8.0 + 11.512925) / 15.512925
    assert abs(floor - -0.547107) < 1e-5
    assert torch.allclose(level[0, :, 5], torch.full((256,), 0.5 - floor))  # on every frame
    assert not level[0, :, 6].any()  # a silent band (-1) is 0
    assert not level[0, :, 7].any()  # so is an inaudible floor above silence
    assert torch.allclose(level[0, :, 9], torch.full((256,), (0.0 - floor) / 2))  # the tail's mean
    assert level[0, :, -1].eq(0).all()  # not empty
    assert level[1, :, :-1].eq(0).all() and level[1, :, -1].eq(1).all()  # the first segment's empty context
    assert not level[2].any()  # the CFG null condition keeps an all-zero roll
    assert torch.equal(filled[..., :EXTENDED_ROLL_FEATURES], roll[..., :EXTENDED_ROLL_FEATURES])
    extended = batch_rolls(tokens, features=EXTENDED_ROLL_FEATURES)
    assert add_context_level(extended, context, mask) is extended  # other layouts: unchanged


@pytest.mark.parametrize("narrow, wide", [(EXTENDED_ROLL_FEATURES, CONTEXT_ROLL_FEATURES),
                                          (EXTENDED_ROLL_FEATURES, VELOCITY_ROLL_FEATURES),
                                          (CONTEXT_ROLL_FEATURES, VELOCITY_ROLL_FEATURES),
                                          (VELOCITY_ROLL_FEATURES, PROGRAM_ROLL_FEATURES)])  # fmt: skip
def test_a_warm_start_into_a_wider_layout_keeps_the_output(narrow, wide):
    old = SpectrogramDiffusionModel(*build_models("tiny", seed=0, dropout_rate=0.0, **MICRO, **EDM,
                                                  score_roll_features=narrow))  # fmt: skip
    new = SpectrogramDiffusionModel(*build_models("tiny", seed=1, dropout_rate=0.0, **MICRO, **EDM,
                                                  score_roll_features=wide))  # fmt: skip
    with torch.no_grad():
        old.decoder.score_prior_projection.weight.normal_()
    state, widened = _widen_roll_weights({"model": old.state_dict()}, new.state_dict())
    assert widened == set(ROLL_WEIGHTS)
    new.load_state_dict(state["model"])
    tokens = torch.tensor([NOTE + [0]])
    context, mask = torch.rand(1, 256, 128) * 2 - 1, torch.ones(1, 256, dtype=torch.bool)
    z, t = torch.randn(1, 256, 128), torch.tensor([0.6])
    velocity = {"velocity": torch.full((1, 256, VELOCITY_FEATURES), -0.5)}  # the velocity layout's columns
    with torch.no_grad():
        before = old(tokens, context, mask, z, t, **velocity)
        assert torch.allclose(new(tokens, context, mask, z, t, **velocity), before, atol=1e-5)
        new.decoder.score_prior_projection.weight[:, narrow:] = 0.1
        assert not torch.allclose(new(tokens, context, mask, z, t, **velocity), before, atol=1e-3)
        if narrow == CONTEXT_ROLL_FEATURES:  # only velocity columns were added: without velocities they are 0
            assert torch.allclose(new(tokens, context, mask, z, t), before, atol=1e-5)


def test_the_pipeline_gives_later_segments_their_context_level():
    """Band-level weights of the score prior change a later segment (its context is the first one's
    output) and leave the first segment (empty context: band columns zero) exactly as it was."""
    import numpy as np

    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    model = SpectrogramDiffusionModel(*build_models("tiny", seed=0, dropout_rate=0.0, **MICRO, **EDM,
                                                    score_roll_features=CONTEXT_ROLL_FEATURES))  # fmt: skip
    pipe = SpectrogramDiffusionPipeline(model.notes_encoder, model.continuous_encoder, model.decoder, "ddim")
    song = [NOTE, NOTE]
    kw = dict(num_inference_steps=1, output_type="mel", show_progress=False, guidance_scale=1.0)
    before = pipe(song, generator=torch.Generator().manual_seed(0), **kw).mels[0]
    with torch.no_grad():
        band_columns = slice(EXTENDED_ROLL_FEATURES, CONTEXT_ROLL_FEATURES - 1)
        model.decoder.score_prior_projection.weight[:, band_columns] = 0.05
    after = pipe(song, generator=torch.Generator().manual_seed(0), **kw).mels[0]
    assert np.array_equal(before[:256], after[:256])  # the first segment has no context
    assert np.abs(before[256:] - after[256:]).mean() > 1e-3
