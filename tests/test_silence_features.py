"""The extended score roll (release decays, ``silent``), warm starts that widen it, and the
``mask_padding`` training option (frames past a piece end count in neither loss nor fits)."""

from __future__ import annotations

import math

import torch
from conftest import EDM, MICRO

from specdiff.midi.score_roll import (
    EXTENDED_ROLL_FEATURES,
    RELEASE_FRAMES,
    ROLL_FEATURES,
    SILENT_FEATURE,
    batch_rolls,
    family_feature,
    pitch_feature,
    release_feature,
    segment_roll,
)
from specdiff.midi.tokenizer import EOS_ID, PITCH_ID, PROGRAM_ID, SHIFT_ID, STEPS_PER_FRAME, VELOCITY_ID
from specdiff.models.presets import build_models
from specdiff.training.batches import collate_counted
from specdiff.training.objective import SpectrogramDiffusionModel, diffusion_loss
from specdiff.training.prior_fit import fit_score_prior
from specdiff.training.warm_start import ROLL_WEIGHTS, _widen_roll_weights

torch.set_num_threads(1)


def shift_to(frame: int) -> int:
    return SHIFT_ID + frame * STEPS_PER_FRAME


def one_note(start: int, end: int, pitch: int = 60, program: int = 40) -> list[int]:
    """A segment with one violin (program 40, family 5) note from frame ``start`` to ``end``,
    written by hand: tie section (empty), then shift, program, velocity, pitch on; shift, off."""
    from specdiff.midi.tokenizer import TIE_ID

    return [TIE_ID, shift_to(start), PROGRAM_ID + program, VELOCITY_ID + 1, PITCH_ID + pitch,
            shift_to(end), VELOCITY_ID + 0, PITCH_ID + pitch, EOS_ID]  # fmt: skip


def test_the_extended_roll_adds_release_decays_and_silence_to_the_base_one():
    tokens = one_note(10, 30)
    base, extended = segment_roll(tokens).numpy(), segment_roll(tokens, features=EXTENDED_ROLL_FEATURES).numpy()
    assert base.shape == (256, ROLL_FEATURES) and extended.shape == (256, EXTENDED_ROLL_FEATURES)
    assert (extended[:, :ROLL_FEATURES] == base).all()  # the base layout is a prefix
    assert extended[:10, SILENT_FEATURE].tolist() == [1.0] * 10  # before the note
    assert extended[10:30, SILENT_FEATURE].tolist() == [0.0] * 20  # while it sounds
    # its release rings on SILENT_GUARD_FRAMES (10) frames after it ends; then silence
    assert extended[30:40, SILENT_FEATURE].tolist() == [0.0] * 10
    assert extended[40:, SILENT_FEATURE].tolist() == [1.0] * 216
    for index, constant in enumerate(RELEASE_FRAMES):
        for column in (release_feature(index, pitch=60), release_feature(index, program=40)):
            assert extended[:30, column].tolist() == [0.0] * 30
            assert math.isclose(extended[30, column], 1.0)
            assert math.isclose(extended[30 + int(constant), column], math.exp(-1.0), rel_tol=1e-6)
    assert release_feature(0, program=40) == ROLL_FEATURES + 128 + 5  # the violin's family, 5
    assert extended[20, pitch_feature("sustain", 60)] == 1 and extended[20, family_feature("sustain", 40)] == 1
    # The CFG null condition (all PAD) stays all zero; an empty segment is all silent.
    assert not batch_rolls(torch.zeros(1, 16, dtype=torch.long), features=EXTENDED_ROLL_FEATURES).any()
    empty = segment_roll([EOS_ID], features=EXTENDED_ROLL_FEATURES)
    assert empty[:, SILENT_FEATURE].all() and empty.sum() == 256


def test_a_warm_start_widens_the_roll_weights_and_keeps_the_output():
    base = SpectrogramDiffusionModel(*build_models("tiny", seed=0, dropout_rate=0.0, **MICRO, **EDM,
                                                   score_roll_features=ROLL_FEATURES))  # fmt: skip
    wide = SpectrogramDiffusionModel(*build_models("tiny", seed=1, dropout_rate=0.0, **MICRO, **EDM,
                                                   score_roll_features=EXTENDED_ROLL_FEATURES))  # fmt: skip
    with torch.no_grad():
        base.decoder.score_prior_projection.weight.normal_()
    state, widened = _widen_roll_weights({"model": base.state_dict()}, wide.state_dict())
    assert widened == set(ROLL_WEIGHTS)
    wide.load_state_dict(state["model"])
    for key in ROLL_WEIGHTS:
        assert (wide.state_dict()[key][:, ROLL_FEATURES:] == 0).all()
    tokens = torch.tensor([one_note(10, 30) + [0] * 7])
    context, mask = torch.zeros(1, 256, 128), torch.zeros(1, 256, dtype=torch.bool)
    z, t = torch.randn(1, 256, 128), torch.tensor([0.6])
    with torch.no_grad():
        assert torch.allclose(wide(tokens, context, mask, z, t), base(tokens, context, mask, z, t), atol=1e-5)


def windows(valid: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Windows with one note each, real frames at a level and padding (-1) past ``valid``."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for k, n in enumerate(valid):
        target = torch.full((256, 128), -1.0)
        target[:n] = 0.3 + 0.05 * torch.randn(n, 128, generator=g)
        tokens = torch.zeros(2048, dtype=torch.long)
        tokens[:9] = torch.tensor(one_note(0, 256))  # the note is cut by the piece end: sounds to 256
        example = dict(tokens=tokens, context=torch.zeros(256, 128), target=target, target_valid=torch.tensor(n),
                       context_mask=torch.zeros(256, dtype=torch.bool))  # fmt: skip
        items.append((k, example))
    return collate_counted(items)


def test_mask_padding_leaves_padded_frames_out_of_the_loss():
    model = SpectrogramDiffusionModel(*build_models("tiny", seed=0, dropout_rate=0.0, **MICRO, **EDM,
                                                    score_roll_features=EXTENDED_ROLL_FEATURES))  # fmt: skip
    batch = windows([100, 256])
    t, noise, keep = torch.tensor([0.4, 0.7]), torch.randn(2, 256, 128), torch.ones(2, dtype=torch.bool)
    # Another target on the padding, with the noise that gives the same noisy input z_t: only the
    # training target of the padded frames differs.
    from specdiff.sampling.diffusion import alpha_sigma

    changed = {**batch, "target": batch["target"].clone()}
    changed["target"][0, 100:] = 0.9
    alpha, sigma = alpha_sigma(t[0])
    changed_noise = noise.clone()
    changed_noise[0, 100:] = (alpha * batch["target"][0, 100:] + sigma * noise[0, 100:] - alpha * 0.9) / sigma
    with torch.no_grad():
        masked = diffusion_loss(model, batch, t, noise, keep, mask_padding=True)
        masked_changed = diffusion_loss(model, changed, t, changed_noise, keep, mask_padding=True)
        plain = diffusion_loss(model, batch, t, noise, keep)
        plain_changed = diffusion_loss(model, changed, t, changed_noise, keep)
    assert torch.allclose(masked.loss_sum, masked_changed.loss_sum, rtol=1e-4)  # the padding does not count
    assert not torch.allclose(plain.loss_sum, plain_changed.loss_sum, rtol=1e-2)  # in the original it does
    assert masked.counted == (100 + 256) * 128 and plain.counted == 2 * 256 * 128


def test_mask_padding_keeps_the_padding_out_of_the_prior_fit():
    """Held notes cut by the piece end over -1 padding: fitted with the padding, the prior of a
    sounding frame is pulled towards silence; without it, it is the real frames' level."""

    class Windows:
        def __init__(self, batch):
            self.items = [{k: v[i] for k, v in batch.items() if k != "index"} for i in range(len(batch["index"]))]

        def __getitem__(self, i):
            return self.items[i]

    data = Windows(windows([64, 128, 192, 256], seed=1))
    decoder = build_models("tiny", seed=0, **MICRO, **EDM, score_roll_features=EXTENDED_ROLL_FEATURES)[2]
    roll = batch_rolls(torch.tensor([one_note(0, 256)]), features=EXTENDED_ROLL_FEATURES)

    def prior_level(mask_padding: bool) -> float:
        fit_score_prior(decoder, data, 4, ridge=1e-3, mask_padding=mask_padding)
        with torch.no_grad():
            prior = decoder.project_score_roll(roll, decoder.score_prior_projection.weight)
            return float((prior + decoder.score_prior_projection.bias).mean())

    assert abs(prior_level(True) - 0.3) < 0.02
    assert prior_level(False) < 0.0  # 3/8 of the "sounding" frames were padding at -1
