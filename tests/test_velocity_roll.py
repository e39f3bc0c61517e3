"""The velocity roll layout (``specdiff.midi.velocity_roll``): per frame, the notes' velocity relative to the
piece's loudest note, from the notes (the tokens have one velocity bin), in training and in the pipeline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import EDM, MICRO, smf_bytes

from specdiff.midi.reader import Note
from specdiff.midi.score_roll import (
    CONTEXT_ROLL_FEATURES,
    PROGRAM_ROLL_FEATURES,
    ROLL_LAYOUTS,
    VELOCITY_FEATURES,
    VELOCITY_ROLL_FEATURES,
    add_context_level,
    batch_rolls,
)
from specdiff.midi.tokenizer import EOS_ID, PITCH_ID, PROGRAM_ID, SHIFT_ID, TIE_ID, VELOCITY_ID, midi_to_segments
from specdiff.midi.velocity_roll import (
    ANY_VELOCITY_COLUMN,
    DRUM_VELOCITY_COLUMN,
    add_velocity_levels,
    piece_max_velocity,
    velocity_block,
    velocity_spans,
)
from specdiff.models.presets import build_models
from specdiff.training.objective import SpectrogramDiffusionModel, decoder_score_roll

torch.set_num_threads(1)
NOTE = [TIE_ID, SHIFT_ID + 10, PROGRAM_ID + 40, VELOCITY_ID + 1, PITCH_ID + 60, SHIFT_ID + 30, EOS_ID]
VELOCITY_COLUMNS = slice(CONTEXT_ROLL_FEATURES, VELOCITY_ROLL_FEATURES)


def model_on(layout: int, seed: int = 0) -> SpectrogramDiffusionModel:
    return SpectrogramDiffusionModel(*build_models("tiny", seed=seed, dropout_rate=0.0, **MICRO, **EDM,
                                                   score_roll_features=layout))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The columns, by hand
# ---------------------------------------------------------------------------------------------


def test_layout_sizes():
    assert VELOCITY_FEATURES == 18 and VELOCITY_ROLL_FEATURES == CONTEXT_ROLL_FEATURES + 18 == 7268
    assert ROLL_LAYOUTS[-3:] == (CONTEXT_ROLL_FEATURES, VELOCITY_ROLL_FEATURES, PROGRAM_ROLL_FEATURES)
    assert PROGRAM_ROLL_FEATURES == VELOCITY_ROLL_FEATURES + 128 == 7396


def test_velocity_block_by_hand():
    """Frames are 20 ms: a note from 0.5 s to 1.0 s sounds on frames 25..49, in the window starting at
    frame 10 on rows 15..39."""
    notes = [
        Note(60, 0.5, 1.0, 64, 40, False),  # strings (family 5), velocity 64
        Note(48, 2.0, 3.0, 127, 33, False),  # the piece's loudest note: bass (family 4), rows 90..139
        Note(36, 0.6, 0.65, 32, 0, True),  # a drum hit on frame 30 (row 20) counts for 20 frames
        Note(67, 0.7, 0.8, 100, 41, False),  # strings again, louder, frames 35..39 (rows 25..29)
    ]
    assert piece_max_velocity(notes) == 127
    block = velocity_block(notes, 10, 127)
    assert block.shape == (256, VELOCITY_FEATURES) and block.dtype == np.float32
    strings, bass = block[:, 5], block[:, 4]
    drums, anything = block[:, DRUM_VELOCITY_COLUMN], block[:, ANY_VELOCITY_COLUMN]
    soft, loud, hit = math.log(64 / 127), math.log(100 / 127), math.log(32 / 127)
    expected = np.zeros(256, np.float32)
    expected[15:40] = soft
    expected[25:30] = loud  # the loudest note sounding in the frame
    np.testing.assert_array_equal(strings, expected)
    assert not bass.any()  # the loudest note: ln 1 = 0, like silence (the roll's presence features differ)
    assert np.array_equal(np.flatnonzero(drums), np.arange(20, 40))
    np.testing.assert_allclose(drums[20:40], hit)
    np.testing.assert_allclose(anything[15:40], np.maximum(expected[15:40], hit))
    assert not anything[:15].any() and not anything[40:].any()  # silence (and ln 1 on the bass frames) is 0
    others = [c for c in range(VELOCITY_FEATURES) if c not in (4, 5, DRUM_VELOCITY_COLUMN, ANY_VELOCITY_COLUMN)]
    assert not block[:, others].any()
    # The spans of the whole song give the same block for any window; a note before the window is cut.
    spans = velocity_spans(notes)
    assert spans.max_velocity == 127
    np.testing.assert_array_equal(velocity_block(spans, 10), block)
    np.testing.assert_array_equal(velocity_block(spans, 30)[:10, 5], expected[20:30])
    assert not velocity_block(notes, 1000, 127).any()  # past every note
    assert not velocity_block([Note(60, 0.0, 1.0, 90, 0, False)], 0).any()  # constant velocity: all 0


def test_velocity_columns_in_a_roll_batch():
    tokens = torch.tensor([NOTE + [0], [0] * 8])  # a segment and the CFG null row
    roll = batch_rolls(tokens, features=VELOCITY_ROLL_FEATURES)
    assert roll.shape == (2, 256, VELOCITY_ROLL_FEATURES)
    assert torch.equal(roll[..., :CONTEXT_ROLL_FEATURES], batch_rolls(tokens, features=CONTEXT_ROLL_FEATURES))
    assert not roll[..., VELOCITY_COLUMNS].any()  # tokens alone do not know velocities
    velocity = torch.full((2, 256, VELOCITY_FEATURES), -0.5)
    filled = add_velocity_levels(roll, velocity, tokens)
    assert torch.equal(filled[0, :, VELOCITY_COLUMNS], velocity[0])
    assert not filled[1].any()  # the null condition keeps an all-zero roll
    assert torch.equal(filled[..., :CONTEXT_ROLL_FEATURES], roll[..., :CONTEXT_ROLL_FEATURES])
    assert add_velocity_levels(roll, None, tokens) is roll  # nothing known: the columns stay 0
    context_roll = batch_rolls(tokens, features=CONTEXT_ROLL_FEATURES)
    assert add_velocity_levels(context_roll, velocity[..., :0], tokens) is context_roll  # other layouts
    # The context level fills its own columns of the velocity layout, and leaves the velocity ones.
    context, mask = torch.rand(2, 256, 128) * 2 - 1, torch.ones(2, 256, dtype=torch.bool)
    both = add_context_level(filled, context, mask, tokens)
    assert torch.equal(both[..., :CONTEXT_ROLL_FEATURES], add_context_level(context_roll, context, mask, tokens))
    assert torch.equal(both[..., VELOCITY_COLUMNS], filled[..., VELOCITY_COLUMNS])


def test_decoder_roll_fills_velocity_only_for_the_velocity_layout():
    tokens = torch.tensor([NOTE + [0], [0] * 8])
    context, mask = torch.rand(2, 256, 128) * 2 - 1, torch.ones(2, 256, dtype=torch.bool)
    velocity = torch.full((2, 256, VELOCITY_FEATURES), -1.0)
    for layout in ROLL_LAYOUTS[:-2]:  # the old layouts: bit-identical with or without velocities
        decoder = model_on(layout).decoder
        assert torch.equal(decoder_score_roll(decoder, tokens, context, mask, velocity),
                           decoder_score_roll(decoder, tokens, context, mask))  # fmt: skip
    for layout in (VELOCITY_ROLL_FEATURES, PROGRAM_ROLL_FEATURES):  # the velocity layout and the one after it
        decoder = model_on(layout).decoder
        roll = decoder_score_roll(decoder, tokens, context, mask, velocity)
        assert torch.equal(roll[0, :, VELOCITY_COLUMNS], velocity[0]) and not roll[1].any()
        assert torch.equal(roll[..., :CONTEXT_ROLL_FEATURES], add_context_level(
            batch_rolls(tokens, features=CONTEXT_ROLL_FEATURES), context, mask, tokens))  # fmt: skip
        assert torch.equal(roll[..., VELOCITY_ROLL_FEATURES:], batch_rolls(tokens, features=layout)[..., 7268:])


# ---------------------------------------------------------------------------------------------
# Training examples and the pipeline agree
# ---------------------------------------------------------------------------------------------


def song_midi(piano_velocity: int = 64, seconds: float = 12.0) -> bytes:
    """Piano (fading from velocity 105), bass and drums; the piano's first note has ``piano_velocity``."""
    parts = [
        (0, 0, [(0.1 + 0.6 * i, 0.5, 60 + i % 7, max(20, 110 - 5 * i)) for i in range(int(seconds / 0.6))]),
        (1, 33, [(0.3 + 1.0 * i, 0.9, 36 + i % 5, 90) for i in range(int(seconds))]),
        (9, 0, [(0.05 + 0.5 * i, 0.05, 36 + 2 * (i % 2), 70 + 3 * (i % 10)) for i in range(int(seconds * 2))]),
    ]
    parts[0][2][0] = (0.1, 0.5, 60, piano_velocity)
    # (start, length, pitch, velocity) -> the (pitch, start, end, velocity) notes of conftest.smf_bytes
    return smf_bytes([(channel, program, [(pitch, start, start + length, velocity)
                                          for start, length, pitch, velocity in notes])
                      for channel, program, notes in parts])  # fmt: skip


@pytest.fixture(scope="module")
def midi_cache(tmp_path_factory):
    """A feature cache of one song (its audio silent: only the notes matter here) and its MIDI file."""
    from specdiff.data.cache import build_cache
    from specdiff.data.songs import AudioMidiPair
    from specdiff.midi.tokenizer import num_frames_for

    folder = tmp_path_factory.mktemp("velocity")
    midi = folder / "song.mid"
    midi.write_bytes(song_midi())
    frames = num_frames_for(midi_to_segments(midi).duration)
    sf.write(folder / "song.wav", np.zeros(frames * 320, np.float32), 16000)
    pair = AudioMidiPair(song_id="song", split="train", midi=str(midi), audio=str(folder / "song.wav"))
    assert build_cache([pair], folder / "cache", workers=0, progress=False)["cached"] == 1
    return folder / "cache", midi, frames


def test_training_examples_and_the_pipeline_compute_the_same_columns(midi_cache):
    from specdiff.data.cache import ChunkDataset
    from specdiff.pipeline.inputs import song_input
    from specdiff.training.batches import collate_counted

    cache, midi, frames = midi_cache
    dataset = ChunkDataset(cache, seed=3)
    tokenized = midi_to_segments(midi)
    assert tokenized.notes is not None and int(tokenized.notes.velocity.max()) == 105
    for i in range(12):  # random windows: the cached notes and the pipeline's notes give the same block
        example, start = dataset[i], dataset.window(i)[2]
        assert example.velocity.shape == (256, VELOCITY_FEATURES) and example.velocity.dtype == torch.float32
        np.testing.assert_array_equal(example.velocity.numpy(), velocity_block(tokenized.notes, start))
    batch = collate_counted([(i, dataset[i]) for i in range(3)])
    assert batch["velocity"].shape == (3, 256, VELOCITY_FEATURES)
    # The pipeline's segments are windows at multiples of 256 frames: force the dataset onto them.
    segments, keep, blocks = song_input(midi, 256, velocity=True)
    assert len(blocks) == len(segments) == math.ceil(frames / 256) and song_input(midi, 256)[2] is None
    dataset.window = lambda s: (0, max(0, 256 * (s - 1)), 256 * s, min(256, frames - 256 * s))
    for s, (tokens, block) in enumerate(zip(segments, blocks)):
        example = dataset[s]
        assert example.tokens.tolist() == tokens  # the same window
        np.testing.assert_array_equal(example.velocity.numpy(), block)
        # what rings in: the pipeline's previous segment (roll_carry_in), nothing before the first
        assert example.carry_tokens.tolist() == (segments[s - 1] if s else [0] * 2048)
        assert int(example.carry_frames) == (256 if s else 0)
    assert blocks[1][:, 0].min() < blocks[0][:, 0].min() < 0  # the piano (family 0) fades


def test_the_velocity_layout_hears_velocities_and_the_old_ones_do_not(tmp_path):
    from specdiff.midi.tokenizer import TokenizedMidi
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    soft, loud = tmp_path / "soft.mid", tmp_path / "loud.mid"
    soft.write_bytes(song_midi(piano_velocity=30, seconds=6.0))
    loud.write_bytes(song_midi(piano_velocity=100, seconds=6.0))
    kw = dict(num_inference_steps=1, output_type="mel", show_progress=False, guidance_scale=2.0)

    def mel(pipe, song):
        return pipe(song, generator=torch.Generator().manual_seed(0), **kw).mels[0]

    def pipeline(layout):
        model = model_on(layout)
        return SpectrogramDiffusionPipeline(model.notes_encoder, model.continuous_encoder, model.decoder, "ddim")

    tokenized = midi_to_segments(loud)
    assert midi_to_segments(soft).segments == tokenized.segments  # one velocity bin: the same tokens
    old = pipeline(CONTEXT_ROLL_FEATURES)
    assert np.array_equal(mel(old, soft), mel(old, loud))
    pipe = pipeline(VELOCITY_ROLL_FEATURES)
    a, b = mel(pipe, soft), mel(pipe, loud)
    assert np.abs(a[:50] - b[:50]).mean() > 1e-3  # the changed note sounds in the first second
    # Without notes (bare token lists) the columns stay 0, as for a piece of constant velocity.
    constant = mel(pipe, TokenizedMidi(tokenized.segments, tokenized.duration, [Note(60, 0.0, 1.0, 80, 0, False)]))
    np.testing.assert_array_equal(constant, mel(pipe, tokenized.segments)[: len(constant)])
    assert np.abs(constant[:50] - b[:50]).mean() > 1e-3
    # Batched songs get their own columns.
    many = pipe.synthesize_many([soft, loud], generators=[0, 0], **kw)
    np.testing.assert_allclose(many[0].mels[0], a, atol=1e-5)
    np.testing.assert_allclose(many[1].mels[0], b, atol=1e-5)
    streamed = np.concatenate([s.mel for s in pipe.segments(loud, torch.Generator().manual_seed(0), 1, 2.0)])
    np.testing.assert_allclose(streamed[: len(b)], b, atol=1e-5)


def test_training_loss_passes_velocities_and_drops_them_with_the_tokens(midi_cache):
    from specdiff.data.cache import ChunkDataset
    from specdiff.training.batches import collate_counted
    from specdiff.training.objective import diffusion_loss, draw_diffusion_inputs

    cache, _, _ = midi_cache
    dataset = ChunkDataset(cache, seed=4)
    batch = collate_counted([(i, dataset[i]) for i in range(2)])
    model = model_on(VELOCITY_ROLL_FEATURES)
    model.eval()
    seen = []
    model.decoder.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["score_roll"]),
                                            with_kwargs=True)  # fmt: skip
    t, noise, _ = draw_diffusion_inputs(batch["index"], 0, 0.0)
    keep = torch.tensor([True, False])
    with torch.no_grad():
        diffusion_loss(model, batch, t, noise, keep)
        without = {key: value for key, value in batch.items() if key != "velocity"}
        diffusion_loss(model, without, t, noise, keep)
    roll, bare = seen
    assert torch.equal(roll[0, :, VELOCITY_COLUMNS], batch["velocity"][0]) and batch["velocity"][0].any()
    assert not roll[1].any()  # the CFG-dropped row: an all-zero roll
    assert not bare[..., VELOCITY_COLUMNS].any()
    assert torch.equal(roll[..., :CONTEXT_ROLL_FEATURES], bare[..., :CONTEXT_ROLL_FEATURES])


def test_cached_notes_keep_their_velocities(midi_cache):
    cache, _, _ = midi_cache
    stored = np.load(Path(cache) / "songs" / "song" / "notes.npy")
    assert stored["velocity"].max() == 105 and len(set(stored["velocity"].tolist())) > 5


def test_a_velocity_layout_model_trains_exports_and_synthesizes(midi_cache, tmp_path):
    """The whole path: a run on a feature cache (the score prior fitted on the roll with its velocity
    columns, rollouts, validation and a sample), its export, and the exported pipeline on the MIDI file."""
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline
    from specdiff.training.checkpoints import list_checkpoints
    from specdiff.training.config import TrainConfig
    from specdiff.training.export import export_pipeline
    from specdiff.training.loop import train

    cache, midi, frames = midi_cache
    model = dict(MICRO, score_roll_features=VELOCITY_ROLL_FEATURES, **EDM)
    config = TrainConfig.from_preset(
        "tiny", model=model, data=str(cache), out_dir=str(tmp_path / "run"), batch_size=2, steps=2, log_every=1,
        val_every=2, sample_every=2, ckpt_every=2, val_examples=2, tensorboard=False, num_threads=1, bf16=False,
        score_prior_fit=4, rollout_prob=0.5, context_drop_prob=0.5, mask_padding=True,
    )  # fmt: skip
    records = train(config, progress=False)
    assert len(records) == 2 and all(math.isfinite(r.loss) for r in records)
    folder = export_pipeline(list_checkpoints(tmp_path / "run")[-1], tmp_path / "exported")
    pipe = SpectrogramDiffusionPipeline.from_pretrained(folder, inverter=None)
    assert pipe.decoder.score_roll_features == VELOCITY_ROLL_FEATURES
    prior = pipe.decoder.score_prior_projection.weight[:, VELOCITY_COLUMNS]
    assert prior.abs().sum() > 0  # the closed-form prior fit uses the velocity columns
    out = pipe(midi, generator=torch.Generator().manual_seed(0), num_inference_steps=1, output_type="mel",
               show_progress=False)  # fmt: skip
    assert np.isfinite(out.mels[0]).all() and len(out.mels[0]) <= frames + 25


def test_the_trainer_runs_the_template_fits_its_config_asks_for(midi_cache, tmp_path, capsys):
    """A program-layout run with per-timbre program colours: the additive prior is fitted, then only the colours
    (``colour_template_fit_steps``), and the run says so with the fit's L1 before and after."""
    from specdiff.training.config import TrainConfig
    from specdiff.training.loop import train

    cache, _, _ = midi_cache
    model = dict(MICRO, score_roll_features=PROGRAM_ROLL_FEATURES, **EDM, additive_prior=True, gm_programs=True,
                 timbres=["TimGM6mb"], timbre_program_colours=True)  # fmt: skip
    config = TrainConfig.from_preset(
        "tiny", model=model, data=str(cache), out_dir=str(tmp_path / "run"), batch_size=2, steps=1, log_every=1,
        val_every=0, sample_every=0, ckpt_every=1, val_examples=2, tensorboard=False, num_threads=1, bf16=False,
        score_prior_fit=2, additive_prior_fit_windows=2, additive_prior_fit_steps=2, colour_template_fit_steps=3,
        mask_padding=True,
    )  # fmt: skip
    train(config, progress=False)
    printed = capsys.readouterr().out
    assert "additive + linear score prior fitted on 2 windows" in printed
    assert "per-timbre program colours refitted: L1 on tonal frames" in printed
