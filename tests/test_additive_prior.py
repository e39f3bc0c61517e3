"""The additive score prior: hand-computed spectra of one and two notes, the decoder option, its fit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from specdiff.audio.mel import MAX_VALUE, MIN_VALUE
from specdiff.midi.reader import Note
from specdiff.midi.score_roll import (
    CONTEXT_ROLL_FEATURES,
    EXTENDED_ROLL_FEATURES,
    PROGRAM_ROLL_FEATURES,
    ROLL_FEATURES,
    SILENT_FEATURE,
    TONAL_FEATURES,
    VELOCITY_ROLL_FEATURES,
    batch_rolls,
    drum_feature,
    pitch_feature,
    segment_roll,
    tonal_feature,
)
from specdiff.midi.tokenizer import notes_to_segments
from specdiff.models.additive_prior import AdditivePrior
from specdiff.models.decoder import DECODER_EXTENSIONS, FilmDecoder

torch.set_num_threads(1)
TINY = dict(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=48)
NAT_PER_UNIT = (MAX_VALUE - MIN_VALUE) / 2


def _nat(scaled: torch.Tensor) -> np.ndarray:
    return MIN_VALUE + (scaled.detach().double().numpy() + 1.0) * NAT_PER_UNIT


def _prior(layout: int = VELOCITY_ROLL_FEATURES) -> AdditivePrior:
    prior = AdditivePrior(layout)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for p in (prior.pitch_templates, prior.family_colours, prior.drum_templates, prior.shared_templates):
            p.copy_(torch.from_numpy(rng.uniform(-3.0, 1.0, p.shape).astype(np.float32)))
        prior.velocity_slope.fill_(1.5)
        prior.floors.copy_(torch.tensor([[-16.0] * 128, [-22.0] * 128]))
    return prior


def test_one_note_is_its_template_plus_family_colour_and_velocity():
    prior = _prior()
    roll = torch.zeros(1, VELOCITY_ROLL_FEATURES)
    program, pitch, envelope, velocity = 40, 64, 0.6, math.log(80 / 100)  # a violin (family 5) at 0.6 sustain
    roll[0, tonal_feature("sustain", program, pitch)] = envelope
    roll[0, CONTEXT_ROLL_FEATURES + program // 8] = velocity
    kind = 1  # sustain
    power = (envelope * np.exp(prior.pitch_templates[kind, pitch].double().detach().numpy()
                               + prior.family_colours[kind, program // 8].double().detach().numpy() + 1.5 * velocity)
             + np.exp(-16.0))  # fmt: skip
    expected = np.clip(0.5 * np.log(power), MIN_VALUE, MAX_VALUE)
    assert np.allclose(_nat(prior(roll))[0], expected, atol=1e-4)


def test_notes_add_as_power_not_as_log_spectra():
    prior = _prior()
    with torch.no_grad():
        prior.family_colours.zero_()
        prior.pitch_templates[:, 60].fill_(2.0)  # log power 2: log-mel 1.0 per note
        prior.pitch_templates[:, 67].fill_(2.0)
    one, two = torch.zeros(1, VELOCITY_ROLL_FEATURES), torch.zeros(1, VELOCITY_ROLL_FEATURES)
    one[0, tonal_feature("sustain", 0, 60)] = 1.0
    two[0, tonal_feature("sustain", 0, 60)] = two[0, tonal_feature("sustain", 0, 67)] = 1.0
    gain = _nat(prior(two)) - _nat(prior(one))
    assert np.allclose(gain, 0.5 * math.log(2.0), atol=1e-3)  # 3 dB, where log spectra would add 1.0 nat


def test_silent_frames_sit_on_their_floor_and_drums_have_templates():
    prior = _prior()
    silent = torch.zeros(1, VELOCITY_ROLL_FEATURES)
    silent[0, SILENT_FEATURE] = 1.0
    assert np.allclose(_nat(prior(silent)), -11.0, atol=1e-4)  # 0.5 * -22
    kick = torch.zeros(1, VELOCITY_ROLL_FEATURES)
    kick[0, drum_feature("onset", 36)] = 1.0
    expected = 0.5 * np.log(np.exp(prior.drum_templates[0, 36].double().detach().numpy()) + np.exp(-16.0))
    assert np.allclose(_nat(prior(kick))[0], np.clip(expected, MIN_VALUE, MAX_VALUE), atol=1e-4)
    with pytest.raises(ValueError, match="extended roll layout"):
        AdditivePrior(ROLL_FEATURES)


def test_decoder_option_defaults_to_off_and_round_trips_through_its_config():
    assert DECODER_EXTENSIONS["additive_prior"] is False
    assert "additive_prior" not in FilmDecoder(**TINY).config  # an original config is unchanged
    with pytest.raises(ValueError, match="additive_prior"):
        FilmDecoder(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES, prediction_type="edm", additive_prior=True)
    kw = dict(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES, prediction_type="edm", score_prior=True,
              additive_prior=True)  # fmt: skip
    decoder = FilmDecoder(**kw)
    config = json.loads(json.dumps(decoder.config))
    assert config["additive_prior"] is True
    rebuilt = FilmDecoder.from_config(config)
    rebuilt.load_state_dict(decoder.state_dict())  # strict: the same keys
    assert rebuilt.additive_prior is not None and rebuilt.additive_prior.context_level is None


def test_fit_recovers_power_summed_note_spectra():
    """Targets made as the power sum of one random spectrum per pitch: the fitted prior gets within a
    fraction of the L1 that the linear (log-domain) ridge fit of the same frames leaves."""
    from specdiff.training.prior_fit import fit_additive_prior, fit_score_prior

    rng = np.random.default_rng(1)
    template = rng.uniform(-4.0, 1.0, (128, 128))  # log-mel (nat) per pitch

    class Windows:
        def __init__(self):
            self.items = []
            for _ in range(24):
                notes = [Note(int(rng.integers(40, 80)), float(s), float(s + rng.uniform(0.3, 1.5)), 100, 0, False)
                         for s in rng.uniform(0, 4.5, 16)]  # fmt: skip
                tokens = torch.tensor(notes_to_segments(notes, 5.12)[0])
                roll = batch_rolls(tokens[None], 256, EXTENDED_ROLL_FEATURES)[0].double().numpy()
                sustain = roll[:, pitch_feature("sustain", 0) : pitch_feature("sustain", 0) + 128]
                nat = 0.5 * np.log((sustain > 0) @ np.exp(2 * template) + np.exp(2 * MIN_VALUE))
                target = (np.clip(nat, MIN_VALUE, MAX_VALUE) - MIN_VALUE) / NAT_PER_UNIT - 1.0
                self.items.append(dict(tokens=tokens, context=torch.zeros(256, 128),
                                       context_mask=torch.zeros(256, dtype=torch.bool),
                                       target=torch.from_numpy(target.astype(np.float32))))  # fmt: skip

        def __getitem__(self, i):
            return self.items[i]

    windows = Windows()
    linear = FilmDecoder(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES, prediction_type="edm", score_prior=True)
    ridge_error = fit_score_prior(linear, windows, 24, ridge=1e-3, batch_size=8)
    decoder = FilmDecoder(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES, prediction_type="edm", score_prior=True,
                          additive_prior=True)  # fmt: skip
    before, after = fit_additive_prior(decoder, windows, 24, steps=300, rows_per_step=512, batch_size=8)
    assert after < 0.6 * ridge_error, (after, ridge_error)
    # the fit lives in the decoder: its prior on a window is the fitted estimate
    item = windows[0]
    roll = batch_rolls(item["tokens"][None], 256, EXTENDED_ROLL_FEATURES)
    with torch.no_grad():
        estimate = decoder.additive_prior(roll)[0] + roll[0] @ decoder.score_prior_projection.weight.T \
            + decoder.score_prior_projection.bias  # fmt: skip
    assert float((estimate - item["target"]).abs().mean()) < 0.6 * ridge_error


def test_faster_drum_decays_add_their_own_templates_to_the_power_sum():
    """With ``drum_decay_powers`` a drum's decay power is ``d * exp(T) + d**k * exp(T_k)`` (hand-computed),
    so the fit can make a hit fall faster than the roll's exp(-t / 5 frames) lets one template fall."""
    prior = AdditivePrior(VELOCITY_ROLL_FEATURES, drum_decay_powers=(4.0, 10.0))
    rng = np.random.default_rng(2)
    with torch.no_grad():
        for p in (prior.drum_templates, prior.fast_drum_templates):
            p.copy_(torch.from_numpy(rng.uniform(-3.0, 1.0, p.shape).astype(np.float32)))
        prior.floors.copy_(torch.tensor([[-16.0] * 128, [-22.0] * 128]))
    envelope = 0.5  # 3.5 frames after a hit
    roll = torch.zeros(1, VELOCITY_ROLL_FEATURES)
    roll[0, drum_feature("decay", 38)] = envelope
    templates = [prior.drum_templates[1, 38], prior.fast_drum_templates[0, 38], prior.fast_drum_templates[1, 38]]
    weights = [envelope, envelope**4, envelope**10]
    power = sum(w * np.exp(t.double().detach().numpy()) for w, t in zip(weights, templates)) + np.exp(-16.0)
    assert np.allclose(_nat(prior(roll))[0], np.clip(0.5 * np.log(power), MIN_VALUE, MAX_VALUE), atol=1e-4)
    # a faster decay's share shrinks as the envelope falls: at d = 0.5 the k = 10 template adds < 0.1%
    assert weights[2] < 1e-3


def test_drum_decay_powers_are_a_checked_decoder_option():
    kw = dict(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES, prediction_type="edm", score_prior=True)
    assert DECODER_EXTENSIONS["drum_decay_powers"] == []
    plain = FilmDecoder(**kw, additive_prior=True)
    assert "drum_decay_powers" not in plain.config and plain.additive_prior.fast_drum_templates is None
    with pytest.raises(ValueError, match="needs additive_prior"):
        FilmDecoder(**kw, drum_decay_powers=[3.0])
    for bad in ([1.0], [0.5], [3.0, 3.0]):
        with pytest.raises(ValueError, match="above 1"):
            FilmDecoder(**kw, additive_prior=True, drum_decay_powers=bad)
    decoder = FilmDecoder(**kw, additive_prior=True, drum_decay_powers=[3, 10])
    config = json.loads(json.dumps(decoder.config))
    assert config["drum_decay_powers"] == [3.0, 10.0]
    rebuilt = FilmDecoder.from_config(config)
    rebuilt.load_state_dict(decoder.state_dict())  # strict: the same keys
    assert rebuilt.additive_prior.fast_drum_templates.shape == (2, 128, 128)


def test_drum_decay_powers_parse_from_the_training_command_line():
    from specdiff.errors import SpecdiffError
    from specdiff.training.config import TrainConfig, apply_overrides

    config = apply_overrides(TrainConfig(), ["model.drum_decay_powers=3,10"])
    assert config.model["drum_decay_powers"] == [3.0, 10.0]
    with pytest.raises(SpecdiffError, match="drum_decay_powers"):
        apply_overrides(TrainConfig(), ["model.drum_decay_powers=fast"])


def test_frame_kinds_and_balanced_row_probabilities():
    """A piano note over 0-1 s and a snare hit at 2 s: tonal frames 0-49, the release tail while the
    0.4 s release decay exp(-(t - 50) / 20) stays above 0.6 (frames 50-60), the hit's decay span of
    20 frames (100-119), silence elsewhere; balance 1 gives each kind the same total probability."""
    from specdiff.training.prior_fit import FRAME_KINDS, balanced_row_probabilities, frame_kinds

    notes = [Note(60, 0.0, 1.0, 100, 0, False), Note(38, 2.0, 2.1, 100, 0, True)]
    roll = batch_rolls(torch.tensor(notes_to_segments(notes, 5.12)[0])[None], 256, EXTENDED_ROLL_FEATURES)[0]
    expected = torch.full((256,), FRAME_KINDS.index("silent"))
    expected[:50] = FRAME_KINDS.index("tonal")
    expected[50:61] = FRAME_KINDS.index("release")
    expected[100:120] = FRAME_KINDS.index("drums alone")
    assert torch.equal(frame_kinds(roll), expected)
    assert balanced_row_probabilities(roll, 0.0) is None
    probabilities = balanced_row_probabilities(roll, 1.0)
    per_kind = torch.zeros(len(FRAME_KINDS)).index_add_(0, expected, probabilities)
    assert torch.allclose(per_kind, torch.full((4,), 0.25), atol=1e-6)
    half = balanced_row_probabilities(roll, 0.5)  # one of 20 drum frames weighs sqrt(175 / 20) of one of 175 silent
    assert torch.allclose(half[100] / half[200], torch.tensor((175 / 20) ** 0.5), atol=1e-4)


def _snare_windows(count: int, two_timbres: bool = False) -> list[dict]:
    """``count`` training windows of ten snare hits each (window w shifted by w * 10 ms) whose target is at 0
    nat on each hit's frame and at the floor elsewhere; with ``two_timbres`` the odd windows are timbre 1 and
    ring at 0 nat for 6 frames from each hit (the even ones: timbre 0, the hit's frame only)."""
    windows = []
    for w in range(count):
        notes = [Note(38, 0.5 * k + 0.01 * w, 0.5 * k + 0.1, 100, 0, True) for k in range(10)]
        ring = 6 if two_timbres and w % 2 else 1
        nat = np.full((256, 128), MIN_VALUE)
        for k in range(10):
            hit = int(round((0.5 * k + 0.01 * w) * 50))
            nat[hit : hit + ring] = 0.0
        target = (nat - MIN_VALUE) / NAT_PER_UNIT - 1.0
        window = dict(tokens=torch.tensor(notes_to_segments(notes, 5.12)[0]), context=torch.zeros(256, 128),
                      context_mask=torch.zeros(256, dtype=torch.bool),
                      target=torch.from_numpy(target.astype(np.float32)))  # fmt: skip
        if two_timbres:
            window["timbre"] = torch.tensor(w % 2)
        windows.append(window)
    return windows


def test_drum_template_fit_moves_only_the_drum_decay_templates_and_fits_fast_decays():
    """Targets where each snare hit is loud on its frame only and at the floor after it: the refit lowers the
    drums-alone L1 (measured 1.17 -> 0.72; the decay envelopes cannot fall to the floor in one frame, so not to
    zero), and leaves every other parameter (and the onset templates) as it was."""
    from specdiff.training.prior_fit import fit_drum_templates

    decoder = FilmDecoder(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES, prediction_type="edm", score_prior=True,
                          additive_prior=True, drum_decay_powers=[10])  # fmt: skip
    fixed = {k: v.clone() for k, v in decoder.state_dict().items() if "drum_templates" not in k}
    onset_templates = decoder.additive_prior.drum_templates[0].detach().clone()
    before, after = fit_drum_templates(decoder, _snare_windows(6), 6, steps=150, rows_per_step=256, batch_size=3)
    assert after < 0.7 * before, (before, after)
    state = decoder.state_dict()
    assert all(torch.equal(state[k], v) for k, v in fixed.items())
    assert torch.equal(decoder.additive_prior.drum_templates[0], onset_templates)
    assert all(p.grad is None for p in decoder.parameters())


def test_program_columns_mark_where_each_program_sounds():
    """The program layout is the velocity layout plus one column per MIDI program: 1 on the frames where
    a tonal note of that program sounds (its sustain), never for drums."""
    notes = [
        Note(60, 0.10, 0.50, 100, 16, False),
        Note(48, 0.30, 0.90, 100, 19, False),
        Note(38, 0.2, 0.3, 100, 0, True),
    ]
    tokens = notes_to_segments(notes, 1.0)[0]
    wide = segment_roll(tokens, features=PROGRAM_ROLL_FEATURES)
    narrow = segment_roll(tokens, features=VELOCITY_ROLL_FEATURES)
    assert torch.equal(wide[:, :VELOCITY_ROLL_FEATURES], narrow)
    programs = wide[:, VELOCITY_ROLL_FEATURES:]
    assert programs.shape == (256, 128) and set(programs.unique().tolist()) == {0.0, 1.0}
    assert programs[:, 16].nonzero().flatten().tolist() == list(range(5, 25))  # 0.1 s to 0.5 s, 50 frames/s
    assert programs[:, 19].nonzero().flatten().tolist() == list(range(15, 45))
    assert programs.sum(dim=0).nonzero().flatten().tolist() == [16, 19]  # the snare has no program column
    assert torch.equal(programs[:, 16], wide[:, tonal_feature("sustain", 16, 60)])


def test_program_colours_start_at_zero_and_colour_only_their_programs_frames():
    """Zero program colours give exactly the velocity layout's prior (a warm start keeps the output);
    a program's colour moves only the frames where it sounds, as much as the same change of its
    family's colour would when it plays alone, and half as much in log power (the mean over the
    family's sounding programs) when another program of the family sounds with it."""
    prior = AdditivePrior(PROGRAM_ROLL_FEATURES)
    reference = _prior()
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            dict(prior.named_parameters())[name].copy_(parameter)
    assert prior.program_colours is not None and not prior.program_colours.any()
    assert AdditivePrior(VELOCITY_ROLL_FEATURES).program_colours is None
    roll = torch.zeros(3, PROGRAM_ROLL_FEATURES)
    for row in range(3):
        roll[row, tonal_feature("sustain", 16, 60)] = 1.0  # a drawbar organ note (family 2) on every frame
    roll[1, VELOCITY_ROLL_FEATURES + 16] = 1.0  # frame 1: only program 16 of family 2 sounds
    roll[2, VELOCITY_ROLL_FEATURES + 16] = roll[2, VELOCITY_ROLL_FEATURES + 19] = 1.0  # frame 2: 16 and 19
    assert torch.equal(prior(roll), reference(roll[:, :VELOCITY_ROLL_FEATURES]))
    before = prior.log_power(roll).detach()
    with torch.no_grad():
        prior.program_colours[16] = -0.8
        family = AdditivePrior(PROGRAM_ROLL_FEATURES)
        family.load_state_dict(reference.state_dict(), strict=False)
        family.family_colours[:, 2] += -0.8
    after = prior.log_power(roll).detach()
    assert torch.equal(after[0], before[0])  # no program column: no program colour
    assert torch.allclose(after[1], family.log_power(roll[1:2])[0], atol=1e-5)
    with torch.no_grad():
        family.family_colours[:, 2] += 0.4  # net -0.4: the mean of -0.8 (program 16) and 0 (program 19)
    assert torch.allclose(after[2], family.log_power(roll[2:3])[0], atol=1e-5)


def test_timbre_drum_decays_start_exact_and_offset_only_their_timbres_decays():
    """Zero-started offsets give the shared prior's output; an offset of -30 nat on timbre 1's decay
    templates leaves its hit frame the onset template plus the floor (hand-computed) and timbre 0 as it was."""
    shared = AdditivePrior(VELOCITY_ROLL_FEATURES, drum_decay_powers=(4.0, 10.0))
    per_timbre = AdditivePrior(VELOCITY_ROLL_FEATURES, drum_decay_powers=(4.0, 10.0), timbres=2)
    rng = np.random.default_rng(3)
    with torch.no_grad():
        for p in (shared.drum_templates, shared.fast_drum_templates):
            p.copy_(torch.from_numpy(rng.uniform(-3.0, 1.0, p.shape).astype(np.float32)))
        shared.floors.copy_(torch.tensor([[-16.0] * 128, [-22.0] * 128]))
    assert per_timbre.timbre_drum_decays.shape == (2, 3, 128, 128)
    per_timbre.load_state_dict({**shared.state_dict(), "timbre_drum_decays": torch.zeros(2, 3, 128, 128)})
    roll = torch.zeros(2, 4, VELOCITY_ROLL_FEATURES)  # [songs, frames, features]
    roll[:, :, drum_feature("onset", 36)] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    roll[:, :, drum_feature("decay", 36)] = torch.tensor([1.0, 0.8, 0.5, 0.2])
    timbre = torch.tensor([0, 1])
    assert torch.allclose(per_timbre(roll, timbre), shared(roll), atol=1e-5)
    assert torch.allclose(per_timbre(roll), shared(roll), atol=1e-5)  # None: timbre 0
    with torch.no_grad():
        per_timbre.timbre_drum_decays[1] = -30.0
    out = per_timbre(roll, timbre)
    assert torch.allclose(out[0], shared(roll)[0], atol=1e-5)
    onset = np.exp(shared.drum_templates[0, 36].double().detach().numpy())
    expected = np.clip(0.5 * np.log(onset + np.exp(-16.0)), MIN_VALUE, MAX_VALUE)
    assert np.allclose(_nat(out[1, 0]), expected, atol=1e-3)
    assert _nat(out[1, 1:]).max() < -7.9  # after the hit only the floor is left: 0.5 * -16 nat


def test_timbre_drum_decays_are_a_checked_decoder_option_that_reads_the_timbre():
    kw = dict(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES, prediction_type="edm", score_prior=True)
    assert DECODER_EXTENSIONS["timbre_drum_decays"] is False
    with pytest.raises(ValueError, match="timbre_drum_decays needs"):
        FilmDecoder(**kw, additive_prior=True, timbre_drum_decays=True)
    decoder = FilmDecoder(**kw, additive_prior=True, timbres=["a", "b"], timbre_drum_decays=True)
    config = json.loads(json.dumps(decoder.config))
    assert config["timbre_drum_decays"] is True
    FilmDecoder.from_config(config).load_state_dict(decoder.state_dict())  # strict: the same keys
    with torch.no_grad():
        decoder.additive_prior.timbre_drum_decays[1] = -30.0
    notes = [Note(36, 0.1, 0.2, 100, 0, True)]
    tokens = torch.tensor(notes_to_segments(notes, 5.12)[0])[None].expand(2, -1)
    roll = batch_rolls(tokens, 256, EXTENDED_ROLL_FEATURES)
    encodings = [(torch.zeros(2, 4, 32), torch.ones(2, 4, dtype=torch.bool))]
    prior = decoder.prepare_cross_attention(encodings, roll, torch.tensor([0, 1])).frame_prior
    after_hit = slice(8, 20)  # the hit is at frame 5; its decay envelope spans 20 frames
    assert bool((prior[1, after_hit] < prior[0, after_hit] - 1e-3).all())
    assert torch.equal(prior[0, :5], prior[1, :5])  # before the hit: no drum, no difference


def test_drum_template_fit_gives_each_timbre_its_own_tail():
    """Two timbres play the same snare hits; timbre 0's render falls to the floor right after each hit,
    timbre 1's rings at 0 nat for 5 frames. Shared decay templates must split the difference; per-timbre
    offsets fit both (drums-alone L1 1.03 before the fit; after it, measured 0.81 shared, 0.56 per timbre)."""
    from specdiff.training.prior_fit import fit_drum_templates

    kw = dict(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES, prediction_type="edm", score_prior=True,
              additive_prior=True, drum_decay_powers=[3, 10], timbres=["dead", "ringing"])  # fmt: skip
    results, windows = {}, _snare_windows(4, two_timbres=True)
    for option in (False, True):
        torch.manual_seed(0)
        decoder = FilmDecoder(**kw, timbre_drum_decays=option)
        results[option] = fit_drum_templates(decoder, windows, 4, steps=100, rows_per_step=256, batch_size=4)
    assert results[True][1] < 0.8 * results[False][1], results


def test_a_warm_start_that_adds_a_faster_drum_decay_keeps_the_output():
    """Powers (3, 10) -> (3, 10, 25): the added templates start 8 nat of log power under the k = 10 ones and
    their timbre offsets at zero, so the prior moves by under 0.001 nat; the state then loads strictly."""
    from specdiff.training.warm_start import add_drum_envelopes

    kw = dict(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES, prediction_type="edm", score_prior=True,
              additive_prior=True, timbres=["a", "b"], timbre_drum_decays=True)  # fmt: skip
    source = FilmDecoder(**kw, drum_decay_powers=[3, 10])
    rng = np.random.default_rng(5)
    with torch.no_grad():
        for p in (source.additive_prior.drum_templates, source.additive_prior.fast_drum_templates):
            p.copy_(torch.from_numpy(rng.uniform(-3.0, 1.0, p.shape).astype(np.float32)))
    target = FilmDecoder(**kw, drum_decay_powers=[3, 10, 25])
    state = {"model": {f"decoder.{k}": v for k, v in source.state_dict().items()}}
    wanted = {f"decoder.{k}": v for k, v in target.state_dict().items()}
    state, extended = add_drum_envelopes(state, wanted)
    assert extended == {"decoder.additive_prior.fast_drum_templates", "decoder.additive_prior.timbre_drum_decays"}
    target.load_state_dict({k.removeprefix("decoder."): v for k, v in state["model"].items()})  # strict
    notes = [Note(38, 0.1, 0.2, 100, 0, True), Note(60, 2.0, 3.0, 80, 0, False)]
    roll = batch_rolls(torch.tensor(notes_to_segments(notes, 5.12)[0])[None], 256, EXTENDED_ROLL_FEATURES)
    for timbre in (0, 1):
        index = torch.tensor([timbre])
        before, after = source.additive_prior(roll, index), target.additive_prior(roll, index)
        assert float((_nat(after) - _nat(before)).max()) < 1e-3


def test_drum_decay_gates_add_a_box_over_the_hits_first_frames():
    """Gate k: the hit's frames 0..k-1 (envelope exp(-t / 5) > exp(-(k - 0.5) / 5)) get exp(T_k) of power,
    the frames after it nothing; and a warm start from a model without gates nearly keeps the
    output (the gate templates start 8 nat of log power under the fastest decay template)."""
    from specdiff.training.warm_start import add_drum_envelopes

    kw = dict(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES, prediction_type="edm", score_prior=True,
              additive_prior=True, timbres=["a", "b"], timbre_drum_decays=True, drum_decay_powers=[3])  # fmt: skip
    with pytest.raises(ValueError, match="drum_decay_gates"):
        FilmDecoder(**kw, drum_decay_gates=[0])
    source, target = FilmDecoder(**kw), FilmDecoder(**kw, drum_decay_gates=[2, 6])
    config = json.loads(json.dumps(target.config))
    assert config["drum_decay_gates"] == [2, 6]
    rng = np.random.default_rng(6)
    with torch.no_grad():
        for p in (source.additive_prior.drum_templates, source.additive_prior.fast_drum_templates):
            p.copy_(torch.from_numpy(rng.uniform(-3.0, 1.0, p.shape).astype(np.float32)))
        offsets = torch.randn(2, 2, 128, 128, generator=torch.Generator().manual_seed(0))  # seeded: order-free
        source.additive_prior.timbre_drum_decays.copy_(offsets)
    state = {"model": {f"decoder.{k}": v for k, v in source.state_dict().items()}}
    wanted = {f"decoder.{k}": v for k, v in target.state_dict().items()}
    state, extended = add_drum_envelopes(state, wanted)
    assert "decoder.additive_prior.gate_drum_templates" in extended
    target.load_state_dict({k.removeprefix("decoder."): v for k, v in state["model"].items()})  # strict
    notes = [Note(38, 0.1, 0.2, 100, 0, True)]
    roll = batch_rolls(torch.tensor(notes_to_segments(notes, 5.12)[0])[None], 256, EXTENDED_ROLL_FEATURES)
    for timbre in (0, 1):
        index = torch.tensor([timbre])
        before, after = source.additive_prior(roll, index), target.additive_prior(roll, index)
        assert float((_nat(after) - _nat(before)).max()) < 0.01  # measured 0.005 / 0.005 (seeded offsets)
    # the gates' own envelopes: the hit is at frame 5
    prior = target.additive_prior
    drums = roll[0, :, TONAL_FEATURES : TONAL_FEATURES + 2 * 128].reshape(256, 2, 128)
    gates = prior._extra_envelopes(drums)[:, 1:, 38]  # after the one power
    assert torch.equal(gates[:, 0].nonzero().flatten(), torch.tensor([5, 6]))
    assert torch.equal(gates[:, 1].nonzero().flatten(), torch.arange(5, 11))


def _chord_window(w: int, program: int, slope: float, spacing: float, tail: int) -> dict:
    """Window ``w`` of five C major chords of ``program`` (0.3 s each, ``spacing`` s apart) whose target is at 0 nat
    while a chord sounds, falls ``slope`` nat per frame for ``tail`` frames after it ends and sits at the floor
    after that."""
    starts = [spacing * k + 0.01 * w for k in range(5)]
    notes = [Note(pitch, s, s + 0.3, 100, program, False) for s in starts for pitch in (60, 64, 67)]
    nat = np.full((256, 128), MIN_VALUE)
    for s in starts:
        on, off = int(s * 50), int((s + 0.3) * 50)
        nat[on:off] = 0.0
        for t in range(tail):
            nat[off + t] = max(-slope * (t + 1), MIN_VALUE)
    target = (nat - MIN_VALUE) / NAT_PER_UNIT - 1.0
    return dict(tokens=torch.tensor(notes_to_segments(notes, 5.12)[0]), context=torch.zeros(256, 128),
                context_mask=torch.zeros(256, dtype=torch.bool),
                target=torch.from_numpy(target.astype(np.float32)))  # fmt: skip


def _chord_windows(count: int) -> list[dict]:
    """``count`` windows of five piano chords (C major, 0.3 s each, 0.5 s apart) whose target is at 0 nat while
    a chord sounds, falls 1 nat per frame after it ends and sits at the floor after that (a fast release)."""
    return [_chord_window(w, program=0, slope=1.0, spacing=0.5, tail=12) for w in range(count)]


def test_faster_release_decays_add_their_own_templates_to_the_power_sum():
    """With ``release_decay_powers`` a release column's power is ``r * exp(T) + r**k * exp(T_k)`` (hand-computed)
    plus each timbre's offsets on both; the other shared columns keep their one template."""
    from specdiff.midi.score_roll import release_feature
    from specdiff.models.additive_prior import RELEASE_SOURCE_START

    prior = AdditivePrior(VELOCITY_ROLL_FEATURES, timbres=2, release_decay_powers=(6.0,))
    rng = np.random.default_rng(7)
    with torch.no_grad():
        for p in (prior.shared_templates, prior.fast_release_templates):
            p.copy_(torch.from_numpy(rng.uniform(-3.0, 1.0, p.shape).astype(np.float32)))
        prior.timbre_release_decays[1].copy_(torch.from_numpy(rng.uniform(-2.0, 0.0, (2, 288, 128)).astype(np.float32)))
        prior.floors.copy_(torch.tensor([[-16.0] * 128, [-22.0] * 128]))
    assert prior.fast_release_templates.shape == (1, 288, 128) and prior.timbre_release_decays.shape == (2, 2, 288, 128)
    column, envelope = release_feature(1, pitch=64), 0.7
    index = column - (TONAL_FEATURES + 2 * 128)  # its row among the shared templates
    roll = torch.zeros(2, VELOCITY_ROLL_FEATURES)
    roll[:, column] = envelope
    roll[:, pitch_feature("sustain", 60)] = 1.0  # a shared per-pitch column: one template, no offsets
    out = _nat(prior(roll, torch.tensor([0, 1])))
    pitch_template = prior.shared_templates[pitch_feature("sustain", 60) - TONAL_FEATURES - 256].double().detach()
    for timbre in (0, 1):
        slow, fast = prior.shared_templates[index], prior.fast_release_templates[0, index - RELEASE_SOURCE_START]
        offsets = prior.timbre_release_decays[timbre, :, index - RELEASE_SOURCE_START].double().detach().numpy()
        power = (envelope * np.exp(slow.double().detach().numpy() + offsets[0])
                 + envelope**6 * np.exp(fast.double().detach().numpy() + offsets[1])
                 + np.exp(pitch_template.numpy())
                 + np.exp(-16.0))  # fmt: skip
        assert np.allclose(out[timbre], np.clip(0.5 * np.log(power), MIN_VALUE, MAX_VALUE), atol=1e-4)


def test_release_decay_powers_are_a_checked_decoder_option_and_a_warm_start_keeps_the_output():
    """The option needs the additive prior, parses from the command line, round-trips through config.json;
    a warm start from a model without it starts each faster template 8 nat of log power under its column's
    release template (timbre offsets zero), so the prior moves by under 0.001 nat, and loads strictly."""
    from specdiff.errors import SpecdiffError
    from specdiff.training.config import TrainConfig, apply_overrides
    from specdiff.training.warm_start import add_drum_envelopes

    kw = dict(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES, prediction_type="edm", score_prior=True)
    assert DECODER_EXTENSIONS["release_decay_powers"] == []
    with pytest.raises(ValueError, match="release_decay_powers needs additive_prior"):
        FilmDecoder(**kw, release_decay_powers=[3.0])
    with pytest.raises(ValueError, match="release_decay_powers must be"):
        FilmDecoder(**kw, additive_prior=True, release_decay_powers=[1.0])
    assert apply_overrides(TrainConfig(), ["model.release_decay_powers=3,10"]).model["release_decay_powers"] == [3, 10]
    with pytest.raises(SpecdiffError, match="release_decay_powers"):
        apply_overrides(TrainConfig(), ["model.release_decay_powers=fast"])
    kw.update(additive_prior=True, timbres=["a", "b"], timbre_drum_decays=True)
    source, target = FilmDecoder(**kw), FilmDecoder(**kw, release_decay_powers=[3, 10])
    config = json.loads(json.dumps(target.config))
    assert config["release_decay_powers"] == [3.0, 10.0]
    FilmDecoder.from_config(config).load_state_dict(target.state_dict())  # strict: the same keys
    rng = np.random.default_rng(8)
    with torch.no_grad():
        source.additive_prior.shared_templates.copy_(torch.from_numpy(rng.uniform(-3.0, 1.0, (720, 128))))
    state = {"model": {f"decoder.{k}": v for k, v in source.state_dict().items()}}
    wanted = {f"decoder.{k}": v for k, v in target.state_dict().items()}
    state, extended = add_drum_envelopes(state, wanted)
    assert extended == {"decoder.additive_prior.fast_release_templates"}
    loaded = {k.removeprefix("decoder."): v for k, v in state["model"].items()}
    missing = target.load_state_dict(loaded, strict=False).missing_keys
    assert missing == ["additive_prior.timbre_release_decays"]  # zero-started: the trainer accepts its absence
    notes = [Note(60, 0.1, 0.5, 100, 0, False), Note(64, 2.0, 2.2, 80, 40, False)]
    roll = batch_rolls(torch.tensor(notes_to_segments(notes, 5.12)[0])[None], 256, EXTENDED_ROLL_FEATURES)
    for timbre in (0, 1):
        index = torch.tensor([timbre])
        before, after = source.additive_prior(roll, index), target.additive_prior(roll, index)
        assert float((_nat(after) - _nat(before)).max()) < 1e-3


def test_release_template_fit_moves_only_the_release_templates_and_fits_fast_releases():
    """Chords whose target falls 1 nat per frame after they end: the roll's slowest release cannot follow, a
    fitted power can; the refit lowers the L1 on the quiet release frames (measured 0.82 -> 0.39) and leaves
    every other parameter (the shared per-pitch and per-family templates too) as it was."""
    from specdiff.errors import SpecdiffError
    from specdiff.models.additive_prior import RELEASE_SOURCE_START
    from specdiff.training.prior_fit import fit_release_templates

    decoder = FilmDecoder(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES, prediction_type="edm", score_prior=True,
                          additive_prior=True, release_decay_powers=[3, 10])  # fmt: skip
    with pytest.raises(SpecdiffError, match="release_decay_powers"):
        fit_release_templates(FilmDecoder(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES, prediction_type="edm",
                                          score_prior=True, additive_prior=True), _chord_windows(1), 1)  # fmt: skip
    moving = ("shared_templates", "fast_release_templates")
    fixed = {k: v.clone() for k, v in decoder.state_dict().items() if not k.endswith(moving)}
    shared_before = decoder.additive_prior.shared_templates[:RELEASE_SOURCE_START].detach().clone()
    before, after = fit_release_templates(decoder, _chord_windows(6), 6, steps=150, rows_per_step=256, batch_size=3)
    assert after < 0.5 * before, (before, after)
    state = decoder.state_dict()
    assert all(torch.equal(state[k], v) for k, v in fixed.items())
    assert torch.equal(decoder.additive_prior.shared_templates[:RELEASE_SOURCE_START], shared_before)
    assert all(p.grad is None for p in decoder.parameters())


def _released_roll(ends: dict[tuple[str, int], float]) -> torch.Tensor:
    """One program-layout row whose release columns say each (``"pitch"`` or ``"family"``, index) ended that many
    frames ago (both time constants)."""
    from specdiff.midi.score_roll import RELEASE_FRAMES, release_feature

    roll = torch.zeros(PROGRAM_ROLL_FEATURES)
    for (by, index), frames in ends.items():
        for clock, constant in enumerate(RELEASE_FRAMES):
            column = release_feature(clock, pitch=index) if by == "pitch" else release_feature(clock, program=8 * index)
            roll[column] = math.exp(-frames / constant)
    return roll


def test_release_gains_keep_a_released_notes_held_spectrum_under_its_family_gain():
    """With ``release_gain_frames`` K a (family, pitch) whose release columns ring adds ``exp(P_sustain[p] +
    F_sustain[f] + G[f, t] + offset[timbre, f, t])`` at ``t = max(t_family, t_pitch)`` frames after its end
    (hand-computed), nothing from K frames on, and nothing for a pitch whose family column is silent."""
    prior = AdditivePrior(PROGRAM_ROLL_FEATURES, timbres=2, release_gain_frames=8)
    rng = np.random.default_rng(11)
    with torch.no_grad():
        prior.shared_templates.fill_(-60.0)  # the release columns' own templates out of the way
        prior.floors.fill_(-40.0)
        for p in (prior.pitch_templates, prior.family_colours, prior.release_gains, prior.timbre_release_gains):
            p.copy_(torch.from_numpy(rng.uniform(-2.0, 1.0, p.shape).astype(np.float32)))
    assert prior.release_gains.shape == (16, 8) and prior.timbre_release_gains.shape == (2, 16, 8)
    sustain = 1  # TONAL_KINDS: onset, sustain, decay
    pitch_spectrum = prior.pitch_templates[sustain].double().detach().numpy()
    colour = prior.family_colours[sustain].double().detach().numpy()
    gains = prior.release_gains.double().detach().numpy()
    offsets = prior.timbre_release_gains.double().detach().numpy()

    def expected(pairs: list[tuple[int, int, int]], timbre: int) -> np.ndarray:
        power = np.exp(-40.0) + sum(np.exp(pitch_spectrum[p] + colour[f] + gains[f, t] + offsets[timbre, f, t])
                                    for f, p, t in pairs)  # fmt: skip
        return np.clip(0.5 * np.log(power), MIN_VALUE, MAX_VALUE)

    rows = torch.stack([
        _released_roll({("pitch", 60): 3, ("family", 0): 3}),  # a piano C4 ended 3 frames ago
        _released_roll({("pitch", 60): 2, ("family", 0): 5}),  # the older end counts: 5 frames
        _released_roll({("pitch", 60): 2, ("family", 4): 2, ("pitch", 40): 6, ("family", 0): 6}),  # two notes
    ])  # fmt: skip
    for timbre in (0, 1):
        out = _nat(prior(rows, torch.tensor([timbre])))
        assert np.allclose(out[0], expected([(0, 60, 3)], timbre), atol=1e-4)
        assert np.allclose(out[1], expected([(0, 60, 5)], timbre), atol=1e-4)
        # the cross pairs (family 4, pitch 40) and (family 0, pitch 60) count from the older end: 6 frames
        pairs = [(4, 60, 2), (0, 40, 6), (4, 40, 6), (0, 60, 6)]
        assert np.allclose(out[2], expected(pairs, timbre), atol=1e-4)
    late = torch.stack([_released_roll({("pitch", 60): 8, ("family", 0): 8}), _released_roll({("pitch", 60): 1})])
    assert np.allclose(_nat(prior(late)), expected([], 0), atol=1e-4)


def test_release_gain_frames_is_a_checked_decoder_option_whose_warm_start_loads():
    """The option needs the additive prior and a frame count, parses from the command line, round-trips through
    config.json; a warm start from a model without it takes the module's initial gains (a guess the release fit
    moves: 1 nat of log-mel down at the end, then 0.5 per frame) and leaves only the zero-started timbre offsets
    missing."""
    from specdiff.training.config import TrainConfig, apply_overrides
    from specdiff.training.warm_start import add_drum_envelopes

    kw = dict(**TINY, score_roll_features=PROGRAM_ROLL_FEATURES, prediction_type="edm", score_prior=True)
    assert DECODER_EXTENSIONS["release_gain_frames"] == 0
    with pytest.raises(ValueError, match="release_gain_frames needs additive_prior"):
        FilmDecoder(**kw, release_gain_frames=16)
    for bad in (-1, 251, 2.5):
        with pytest.raises(ValueError, match="release_gain_frames must be"):
            FilmDecoder(**kw, additive_prior=True, release_gain_frames=bad)
    assert apply_overrides(TrainConfig(), ["model.release_gain_frames=48"]).model["release_gain_frames"] == 48
    kw.update(additive_prior=True, timbres=["a", "b"], timbre_drum_decays=True)
    source, target = FilmDecoder(**kw), FilmDecoder(**kw, release_gain_frames=48)
    config = json.loads(json.dumps(target.config))
    assert config["release_gain_frames"] == 48 and "release_gain_frames" not in source.config
    FilmDecoder.from_config(config).load_state_dict(target.state_dict())  # strict: the same keys
    gains = target.additive_prior.release_gains.detach()
    assert torch.allclose(gains[3, :4], torch.tensor([-2.0, -3.0, -4.0, -5.0]))  # log power: 2x the nat
    state = {"model": {f"decoder.{k}": v for k, v in source.state_dict().items()}}
    state, extended = add_drum_envelopes(state, {f"decoder.{k}": v for k, v in target.state_dict().items()})
    assert extended == {"decoder.additive_prior.release_gains"}
    loaded = {k.removeprefix("decoder."): v for k, v in state["model"].items()}
    assert target.load_state_dict(loaded, strict=False).missing_keys == ["additive_prior.timbre_release_gains"]


def test_release_template_fit_fits_the_release_gains_to_a_fast_release():
    """The chords whose target falls 1 nat per frame after they end: with release gains (and no faster release
    powers) the release fit lowers the L1 on the quiet release frames (measured 0.82 -> 0.38) and moves only the
    release templates and gains."""
    from specdiff.training.prior_fit import fit_release_templates

    decoder = FilmDecoder(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES, prediction_type="edm", score_prior=True,
                          additive_prior=True, release_gain_frames=16)  # fmt: skip
    with torch.no_grad():
        decoder.additive_prior.pitch_templates.fill_(0.0)  # a held note at 0 nat, as the target's chords
    moving = ("shared_templates", "release_gains")
    fixed = {k: v.clone() for k, v in decoder.state_dict().items() if not k.endswith(moving)}
    before, after = fit_release_templates(decoder, _chord_windows(6), 6, steps=150, rows_per_step=256, batch_size=3)
    assert after < 0.5 * before, (before, after)
    state = decoder.state_dict()
    assert all(torch.equal(state[k], v) for k, v in fixed.items())


def test_template_fits_take_precomputed_rows_and_give_the_same_fit():
    """The trainer collects the fit windows' rolls once for both template fits (``prior_fit_rows``, ~5 GB at 1 500
    windows): a fit given those rows ends where a fit that collects its own does, parameter for parameter."""
    from specdiff.training.prior_fit import fit_release_templates, prior_fit_rows

    kw = dict(**TINY, score_roll_features=EXTENDED_ROLL_FEATURES, prediction_type="edm", score_prior=True,
              additive_prior=True, release_gain_frames=16)  # fmt: skip
    windows = _chord_windows(3)
    own, given = FilmDecoder(**kw), FilmDecoder(**kw)
    given.load_state_dict(own.state_dict())
    rows = prior_fit_rows(given, windows, 3, batch_size=3, mask_padding=False)
    assert len(rows[0]) == 3 * 256 and rows[0].dtype == torch.float16
    first = fit_release_templates(own, windows, 3, steps=20, rows_per_step=128, batch_size=3)
    second = fit_release_templates(given, windows, 3, steps=20, rows_per_step=128, batch_size=3, rows=rows)
    assert first == second
    assert all(torch.equal(a, b) for a, b in zip(own.state_dict().values(), given.state_dict().values()))


def test_program_release_gains_offset_a_released_family_by_the_programs_heard():
    """With ``program_release`` a released (family, pitch) also gets the mean per-program offset of the family's
    programs heard (hand-computed): none heard, one, two, and a program of another family, which adds nothing."""
    from specdiff.models.additive_prior import programs_heard

    prior = AdditivePrior(PROGRAM_ROLL_FEATURES, release_gain_frames=8, program_release=True)
    rng = np.random.default_rng(5)
    with torch.no_grad():
        prior.shared_templates.fill_(-60.0)
        prior.floors.fill_(-40.0)
        for p in (prior.pitch_templates, prior.family_colours, prior.release_gains, prior.program_release_gains):
            p.copy_(torch.from_numpy(rng.uniform(-2.0, 1.0, p.shape).astype(np.float32)))
    assert prior.program_release_gains.shape == (128, 8)
    sustain = 1
    pitch_spectrum = prior.pitch_templates[sustain].double().detach().numpy()
    colour = prior.family_colours[sustain].double().detach().numpy()
    gains = prior.release_gains.double().detach().numpy()
    programs = prior.program_release_gains.double().detach().numpy()

    def expected(offset: float) -> np.ndarray:  # an organ (family 2) C4 ended 3 frames ago
        power = np.exp(-40.0) + np.exp(pitch_spectrum[60] + colour[2] + gains[2, 3] + offset)
        return np.clip(0.5 * np.log(power), MIN_VALUE, MAX_VALUE)

    row = _released_roll({("pitch", 60): 3, ("family", 2): 3})
    for heard_programs, offset in (((), 0.0), ((16,), programs[16, 3]), ((16, 19), 0.5 * (programs[16, 3] +
                                   programs[19, 3])), ((0,), 0.0)):  # fmt: skip
        heard = torch.zeros(1, 128)
        heard[0, list(heard_programs)] = 1.0
        assert np.allclose(_nat(prior(row[None], heard=heard))[0], expected(offset), atol=1e-4), heard_programs
    # programs_heard: what has sounded at or before each frame of the segment; forward computes it for [B, T, F]
    roll = row.repeat(1, 5, 1)
    roll[0, 1, VELOCITY_ROLL_FEATURES + 16] = roll[0, 3, VELOCITY_ROLL_FEATURES + 19] = 1.0
    heard = programs_heard(roll)
    assert heard[0, :, 16].tolist() == [0, 1, 1, 1, 1] and heard[0, :, 19].tolist() == [0, 0, 0, 1, 1]
    assert heard[0].sum().item() == 6
    assert torch.equal(prior(roll), prior(roll[0], heard=heard[0])[None])


def test_program_release_gains_is_a_checked_option_whose_warm_start_loads():
    """The option needs release gains and the program layout, parses from the command line, round-trips through
    config.json, and a warm start from a model without it misses only the zero-started offsets."""
    from specdiff.training.config import TrainConfig, apply_overrides

    kw = dict(**TINY, prediction_type="edm", score_prior=True, additive_prior=True)
    assert DECODER_EXTENSIONS["program_release_gains"] is False
    with pytest.raises(ValueError, match="program_release_gains needs release_gain_frames"):
        FilmDecoder(**kw, score_roll_features=PROGRAM_ROLL_FEATURES, program_release_gains=True)
    with pytest.raises(ValueError, match="program roll layout"):
        FilmDecoder(**kw, score_roll_features=VELOCITY_ROLL_FEATURES, release_gain_frames=8, program_release_gains=True)
    overrides = ["model.program_release_gains=true"]
    assert apply_overrides(TrainConfig(), overrides).model["program_release_gains"] is True
    kw.update(score_roll_features=PROGRAM_ROLL_FEATURES, release_gain_frames=8)
    source, target = FilmDecoder(**kw), FilmDecoder(**kw, program_release_gains=True)
    config = json.loads(json.dumps(target.config))
    assert config["program_release_gains"] is True and "program_release_gains" not in source.config
    FilmDecoder.from_config(config).load_state_dict(target.state_dict())  # strict: the same keys
    missing = target.load_state_dict(source.state_dict(), strict=False).missing_keys
    assert missing == ["additive_prior.program_release_gains"]
    roll = torch.rand(2, 256, PROGRAM_ROLL_FEATURES)
    assert torch.equal(source.additive_prior(roll), target.additive_prior(roll))  # zero offsets: the same prior


def _organ_windows(count: int) -> list[dict]:
    """``count`` windows of organ chords (as :func:`_chord_windows`, 0.8 s apart), alternately of GM program 16,
    whose target falls 2 nat per frame after a chord ends, and 19, whose target falls 0.25 nat per frame: one
    family, two releases."""
    return [_chord_window(w, *((16, 2.0) if w % 2 == 0 else (19, 0.25)), spacing=0.8, tail=25) for w in range(count)]


def test_release_fit_with_program_gains_tells_two_organs_apart():
    """Two organs of one family, one falling silent fast and one slowly: the release fit with per-program offsets
    ends with a third of the L1 on the quiet release frames of the fit with family gains alone, and moves the offsets
    of those two programs only (the fit's rows carry their programs-heard columns)."""
    from specdiff.training.prior_fit import fit_release_templates, prior_fit_rows

    kw = dict(**TINY, score_roll_features=PROGRAM_ROLL_FEATURES, prediction_type="edm", score_prior=True,
              additive_prior=True, release_gain_frames=32)  # fmt: skip
    family, programs = FilmDecoder(**kw), FilmDecoder(**kw, program_release_gains=True)
    programs.load_state_dict(family.state_dict(), strict=False)
    windows = _organ_windows(6)
    rows = prior_fit_rows(programs, windows, 6, batch_size=3, mask_padding=False)
    assert rows[0].shape[1] == PROGRAM_ROLL_FEATURES + 128
    errors = {}
    for name, decoder in (("family", family), ("programs", programs)):
        with torch.no_grad():
            decoder.additive_prior.pitch_templates.fill_(0.0)
        errors[name] = fit_release_templates(
            decoder, windows, 6, steps=200, rows_per_step=256, learning_rate=0.3, batch_size=3
        )
    assert errors["programs"][1] < 0.5 * errors["family"][1], errors  # measured 0.118 against 0.380
    moved = programs.additive_prior.program_release_gains.detach().abs().sum(dim=1).nonzero().flatten().tolist()
    assert moved == [16, 19]


def test_frames_before_onsets_marks_the_frames_that_hold_the_next_attack():
    """A tonal onset at frame 3 and a drum hit at frame 5 of a 7-frame roll: with a guard of 1 the frames just
    before them are marked, with 2 the two frames before each; tied notes (no onset column) mark nothing."""
    from specdiff.midi.score_roll import drum_feature, tonal_feature
    from specdiff.training.prior_fit import frames_before_onsets

    roll = torch.zeros(1, 7, PROGRAM_ROLL_FEATURES)
    roll[0, 3, tonal_feature("onset", 40, 60)] = 1.0
    roll[0, 5, drum_feature("onset", 38)] = 1.0
    roll[0, :, tonal_feature("sustain", 0, 48)] = 1.0
    assert frames_before_onsets(roll, 1)[0].tolist() == [False, False, True, False, True, False, False]
    assert frames_before_onsets(roll, 2)[0].tolist() == [False, True, True, True, True, False, False]


def test_program_shrink_pulls_the_program_offsets_towards_the_family_gains():
    """The same two organs: with ``program_shrink`` the fitted offsets are smaller than without (a penalty on
    their sum of squares), and a negative weight is refused."""
    from specdiff.errors import SpecdiffError
    from specdiff.training.prior_fit import fit_release_templates

    kw = dict(**TINY, score_roll_features=PROGRAM_ROLL_FEATURES, prediction_type="edm", score_prior=True,
              additive_prior=True, release_gain_frames=32, program_release_gains=True)  # fmt: skip
    windows = _organ_windows(4)
    sizes = {}
    for shrink in (0.0, 1e-2):
        decoder = FilmDecoder(**kw)
        torch.manual_seed(0)
        with torch.no_grad():
            decoder.additive_prior.pitch_templates.fill_(0.0)
        fit_release_templates(decoder, windows, 4, steps=120, rows_per_step=256, learning_rate=0.3, batch_size=2,
                              program_shrink=shrink)  # fmt: skip
        sizes[shrink] = float(decoder.additive_prior.program_release_gains.detach().pow(2).sum())
    assert sizes[1e-2] < 0.5 * sizes[0.0], sizes
    with pytest.raises(SpecdiffError, match="shrinkage"):
        fit_release_templates(FilmDecoder(**kw), windows, 4, steps=1, batch_size=2, program_shrink=-1.0)


def test_release_fit_switches_off_the_release_columns_it_is_not_given():
    """With ``columns=("family",)`` the release fit switches the per-pitch release templates off and holds them
    there while the per-family ones move, and a released note then adds no power through its pitch's columns;
    with ``columns=()`` both kinds are off; an unknown kind is refused."""
    from specdiff.errors import SpecdiffError
    from specdiff.midi.score_roll import release_feature
    from specdiff.models.additive_prior import NO_RELEASE_LOG_POWER, release_template_rows
    from specdiff.training.prior_fit import fit_release_templates

    kw = dict(**TINY, score_roll_features=PROGRAM_ROLL_FEATURES, prediction_type="edm", score_prior=True,
              additive_prior=True, release_gain_frames=32, program_release_gains=True)  # fmt: skip
    for columns in (("family",), ()):
        decoder = FilmDecoder(**kw)
        prior = decoder.additive_prior
        before = prior.shared_templates.detach().clone()
        fit_release_templates(decoder, _organ_windows(4), 4, steps=20, rows_per_step=256, learning_rate=0.3,
                              batch_size=2, columns=columns)  # fmt: skip
        after = prior.shared_templates.detach()
        for rows in release_template_rows("pitch"):
            assert torch.all(after[rows] == NO_RELEASE_LOG_POWER)
        for rows in release_template_rows("family"):
            if columns:
                assert not torch.equal(after[rows], before[rows])
            else:
                assert torch.all(after[rows] == NO_RELEASE_LOG_POWER)
    roll = torch.zeros(2, PROGRAM_ROLL_FEATURES)
    roll[1, release_feature(0, pitch=60)] = roll[1, release_feature(1, pitch=60)] = 0.5
    with torch.no_grad():
        out = prior(roll)
    assert torch.allclose(out[0], out[1])
    with pytest.raises(SpecdiffError, match="columns"):
        fit_release_templates(FilmDecoder(**kw), _organ_windows(4), 4, steps=1, batch_size=2, columns=("note",))


def test_program_release_decays_scale_the_family_release_templates_of_the_programs_heard():
    """Zero offsets leave the prior as it was (a warm start is exact); an offset of ln 2 on program 19's fast
    release equals twice that family column's value; a wrong layout is refused; the release fit moves the
    offsets of the two organs it hears and no other program's."""
    from specdiff.midi.score_roll import release_feature
    from specdiff.training.prior_fit import fit_release_templates

    kw = dict(**TINY, score_roll_features=PROGRAM_ROLL_FEATURES, prediction_type="edm", score_prior=True,
              additive_prior=True, release_gain_frames=32, program_release_gains=True)  # fmt: skip
    plain, scaled = FilmDecoder(**kw), FilmDecoder(**kw, program_release_decays=True)
    missing, _ = scaled.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["additive_prior.program_release_decays"]
    roll = torch.zeros(1, 3, PROGRAM_ROLL_FEATURES)
    roll[0, 0, VELOCITY_ROLL_FEATURES + 19] = 1.0  # program 19 heard from frame 0 on
    roll[0, 1:, release_feature(0, program=19)] = 0.3
    with torch.no_grad():
        assert torch.equal(plain.additive_prior(roll), scaled.additive_prior(roll))
        scaled.additive_prior.program_release_decays[19, 0] = math.log(2.0)
        doubled = roll.clone()
        doubled[0, 1:, release_feature(0, program=19)] = 0.6
        assert torch.allclose(scaled.additive_prior(roll), plain.additive_prior(doubled), atol=1e-6)
    with pytest.raises(ValueError, match="program_release_decays"):
        FilmDecoder(**{**kw, "score_roll_features": VELOCITY_ROLL_FEATURES, "program_release_gains": False},
                    program_release_decays=True)  # fmt: skip
    decoder = FilmDecoder(**kw, program_release_decays=True)
    fit_release_templates(decoder, _organ_windows(4), 4, steps=20, rows_per_step=256, learning_rate=0.3,
                          batch_size=2, columns=("family",))  # fmt: skip
    moved = (decoder.additive_prior.program_release_decays.detach() != 0).any(dim=1).nonzero().flatten().tolist()
    assert moved == [16, 19]


def test_timbre_program_colours_are_each_timbres_own_offsets_on_the_program_colours():
    """Hand-computed: a violin's sustain under timbre 1 gets ``exp`` of timbre 1's sustain offset for program 40
    on its power, the mean of the offsets of the family's two sounding programs when a viola (41) joins it,
    and timbre 0 keeps the shared colours; zero offsets leave the decoder as it was (a warm start is exact)."""
    prior = AdditivePrior(PROGRAM_ROLL_FEATURES, colour_timbres=2)
    rng = np.random.default_rng(3)
    with torch.no_grad():
        for p in (prior.pitch_templates, prior.family_colours, prior.program_colours):
            p.copy_(torch.from_numpy(rng.uniform(-2.0, 1.0, p.shape).astype(np.float32)))
        prior.floors.fill_(-60.0)
        prior.timbre_program_colours[1, 1, 40] = 0.8  # timbre 1, sustain, violin
        prior.timbre_program_colours[1, 1, 41] = -0.4  # timbre 1, sustain, viola
        prior.timbre_program_colours[1, 0, 40] = 5.0  # an onset offset: no onset sounds here
    roll = torch.zeros(2, PROGRAM_ROLL_FEATURES)
    roll[:, tonal_feature("sustain", 40, 64)] = 0.5
    roll[:, VELOCITY_ROLL_FEATURES + 40] = 1.0
    roll[1, VELOCITY_ROLL_FEATURES + 41] = 1.0  # the viola's column: the family's colour is the mean of both
    shared = prior.log_power(roll, torch.tensor([0, 0]))
    own = prior.log_power(roll, torch.tensor([1, 1]))
    with torch.no_grad():
        expected = torch.tensor([0.8, (0.8 - 0.4) / 2])[:, None].expand(2, 128)
        assert torch.allclose(own - shared, expected, atol=1e-5)
    kw = dict(**TINY, score_roll_features=PROGRAM_ROLL_FEATURES, prediction_type="edm", score_prior=True,
              additive_prior=True, timbres=["a", "b"])  # fmt: skip
    plain, coloured = FilmDecoder(**kw), FilmDecoder(**kw, timbre_program_colours=True)
    missing, _ = coloured.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["additive_prior.timbre_program_colours"]
    with torch.no_grad():
        rolls = roll[None].expand(2, -1, -1)
        assert torch.equal(plain.additive_prior(rolls, torch.tensor([0, 1])),
                           coloured.additive_prior(rolls, torch.tensor([0, 1])))  # fmt: skip
    with pytest.raises(ValueError, match="timbre_program_colours"):
        FilmDecoder(**{**kw, "timbres": []}, timbre_program_colours=True)


def test_colour_fit_moves_only_the_per_timbre_colours_towards_each_timbres_level():
    """Piano chord windows of two timbres, timbre 1's target 1.5 nat louder while a chord sounds: the colour refit
    lowers the L1 on tonal frames, raises timbre 1's piano offsets over timbre 0's (a sustained chord: the
    sustain kind's, by about the 1.5 nat the targets differ, 3 in log power: measured 2.8), moves no other
    program's and no other parameter; with ``tie_kinds`` it moves the three kinds' offsets alike; ``shrink`` holds
    them nearer zero."""
    from specdiff.training.prior_fit import fit_colour_templates

    windows = []
    for w in range(6):
        window = _chord_window(w, program=0, slope=1.0, spacing=0.5, tail=12)
        if w % 2:
            loud = window["target"] > -1.0 + 1e-3  # above the floor: the chords and their tails
            window["target"] = torch.where(loud, window["target"] + 1.5 / NAT_PER_UNIT, window["target"])
        window["timbre"] = torch.tensor(w % 2)
        windows.append(window)
    decoder = FilmDecoder(**TINY, score_roll_features=PROGRAM_ROLL_FEATURES, prediction_type="edm", score_prior=True,
                          additive_prior=True, timbres=["a", "b"], timbre_program_colours=True)  # fmt: skip
    fixed = {k: v.clone() for k, v in decoder.state_dict().items() if "timbre_program_colours" not in k}
    before, after = fit_colour_templates(decoder, windows, 6, steps=150, rows_per_step=256, learning_rate=0.05,
                                         batch_size=3)  # fmt: skip
    assert after < 0.8 * before, (before, after)
    offsets = decoder.additive_prior.timbre_program_colours.detach().clone()
    sustain = offsets[:, 1, 0].mean(dim=1)  # [timbres]: the piano's sustain offset (log power), mean over bins
    assert 2.4 < float(sustain[1] - sustain[0]) < 3.6, sustain
    moved = (offsets != 0).any(dim=3).any(dim=1).any(dim=0).nonzero().flatten().tolist()
    assert moved == [0]
    state = decoder.state_dict()
    assert all(torch.equal(state[k], v) for k, v in fixed.items())
    assert all(p.grad is None for p in decoder.parameters())
    assert not torch.equal(offsets[:, 0], offsets[:, 1])  # untied: the onset's offset is its own
    fit_colour_templates(decoder, windows, 6, steps=20, rows_per_step=256, batch_size=3, tie_kinds=True)
    tied = decoder.additive_prior.timbre_program_colours.detach() - offsets  # what the tied fit moved
    assert float(tied.abs().max()) > 0.01
    assert torch.allclose(tied[:, 0], tied[:, 1], atol=1e-6) and torch.allclose(tied[:, 1], tied[:, 2], atol=1e-6)
    shrunk = FilmDecoder(**TINY, score_roll_features=PROGRAM_ROLL_FEATURES, prediction_type="edm", score_prior=True,
                         additive_prior=True, timbres=["a", "b"], timbre_program_colours=True)  # fmt: skip
    shrunk.load_state_dict({k: v for k, v in fixed.items()}, strict=False)
    fit_colour_templates(shrunk, windows, 6, steps=150, rows_per_step=256, batch_size=3, shrink=1e-3)
    pulled = shrunk.additive_prior.timbre_program_colours.detach()[:, 1, 0].mean(dim=1)
    assert 0.0 < float(pulled[1] - pulled[0]) < 0.7 * float(sustain[1] - sustain[0]), (pulled, sustain)
