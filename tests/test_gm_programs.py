"""The ``gm_programs`` extension: General MIDI programs kept from the MIDI file to the model.

The original maps every program to its Slakh class (34 classes; 88 and up all become 88). A decoder with
``gm_programs`` reads the programs as they are: the reader, the tokenizer, the pipeline, the training data
and the warm start follow that flag, and a warm start from a Slakh model keeps its output.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import EDM, MICRO, smf_bytes

from specdiff.errors import SpecdiffError
from specdiff.midi.reader import Note, midi_to_notes, program_to_slakh
from specdiff.midi.score_roll import PROGRAM_ROLL_FEATURES
from specdiff.midi.tokenizer import DRUM_ID, PROGRAM_ID, midi_to_segments
from specdiff.models.presets import build_models
from specdiff.training.objective import SpectrogramDiffusionModel

torch.set_num_threads(1)

#: Programs whose Slakh class differs from themselves, across families (organ, guitar, strings, FX).
PROGRAMS = (17, 30, 46, 100)


def _song() -> bytes:
    """One held note on each of :data:`PROGRAMS`, one after the other, and a snare hit."""
    tracks = [(k, p, [(60 + k, 0.5 * k, 0.5 * k + 1.0)]) for k, p in enumerate(PROGRAMS)]
    return smf_bytes([*tracks, (9, 0, [(38, 0.0, 0.1)])])


def _program_tokens(tokens) -> set[int]:
    return {t - PROGRAM_ID for t in tokens if PROGRAM_ID <= t < DRUM_ID}


def test_the_reader_and_tokenizer_keep_gm_programs_only_when_asked():
    data = _song()
    slakh, _ = midi_to_notes(data)
    gm, _ = midi_to_notes(data, slakh_programs=False)
    assert sorted(n.program for n in gm if not n.is_drum) == sorted(PROGRAMS)
    assert sorted(n.program for n in slakh if not n.is_drum) == sorted(program_to_slakh(p) for p in PROGRAMS)
    assert sorted(program_to_slakh(p) for p in PROGRAMS) == [16, 29, 46, 88]  # 46 is a class of its own
    original, kept = midi_to_segments(data), midi_to_segments(data, slakh_programs=False)
    assert original.slakh_programs and not kept.slakh_programs
    assert _program_tokens(original.segments[0]) == {16, 29, 46, 88}
    assert _program_tokens(kept.segments[0]) == set(PROGRAMS)
    # only the program tokens differ: the same events in the same order
    mapped = [PROGRAM_ID + program_to_slakh(t - PROGRAM_ID) if PROGRAM_ID <= t < DRUM_ID else t
              for t in kept.segments[0]]  # fmt: skip
    assert mapped == original.segments[0]


def _gm_model(seed: int = 0, gm: bool = True) -> SpectrogramDiffusionModel:
    model = SpectrogramDiffusionModel(*build_models("tiny", seed=seed, dropout_rate=0.0, **MICRO, **EDM,
                                                    score_roll_features=PROGRAM_ROLL_FEATURES, additive_prior=True,
                                                    gm_programs=gm))  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every table random, so that a column copied wrong shows
        for name, parameter in model.decoder.named_parameters():
            if "additive_prior" in name or "score" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


def test_a_gm_pipeline_tokenizes_with_gm_programs_and_refuses_slakh_tokens():
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    model = _gm_model()
    pipe = SpectrogramDiffusionPipeline(model.notes_encoder, model.continuous_encoder, model.decoder, "ddim")
    assert not pipe.slakh_programs
    assert _program_tokens(pipe.tokenize(_song()).segments[0]) == set(PROGRAMS)
    kw = dict(num_inference_steps=1, output_type="mel", show_progress=False, guidance_scale=1.0)
    with pytest.raises(SpecdiffError, match="General MIDI programs"):
        pipe(midi_to_segments(_song()), **kw)
    assert pipe(pipe.tokenize(_song()), **kw).mels[0].shape[-1] == 128
    original = SpectrogramDiffusionPipeline(*build_models("tiny", seed=0, dropout_rate=0.0, **MICRO), "ddim")
    assert original.slakh_programs
    with pytest.raises(SpecdiffError, match="Slakh classes"):
        original(midi_to_segments(_song(), slakh_programs=False), **kw)


def test_a_warm_start_from_slakh_classes_keeps_the_output():
    """The rewritten weights read the GM tokens and rolls as the Slakh model read its own: each program
    starts as its class (token embedding, program columns) and families 12-15 as family 11."""
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline
    from specdiff.training.warm_start import slakh_to_gm_programs

    slakh_model = _gm_model(seed=3, gm=False)
    gm_model = _gm_model(seed=4, gm=True)
    gm_model.load_state_dict(slakh_to_gm_programs(slakh_model.state_dict()))
    kw = dict(num_inference_steps=1, output_type="mel", show_progress=False, guidance_scale=1.0)
    outputs = []
    for model in (slakh_model, gm_model):
        pipe = SpectrogramDiffusionPipeline(model.notes_encoder, model.continuous_encoder, model.decoder, "ddim")
        outputs.append(pipe(pipe.tokenize(_song()), generator=torch.Generator().manual_seed(0), **kw).mels[0])
    assert np.abs(outputs[0] - outputs[1]).max() < 1e-4
    untouched = _gm_model(seed=4, gm=True)  # without the rewrite the GM model reads programs its own way
    pipe = SpectrogramDiffusionPipeline(untouched.notes_encoder, untouched.continuous_encoder, untouched.decoder,
                                        "ddim")  # fmt: skip
    other = pipe(pipe.tokenize(_song()), generator=torch.Generator().manual_seed(0), **kw).mels[0]
    assert np.abs(other - outputs[0]).max() > 1e-2


def test_the_training_data_maps_programs_unless_the_model_reads_gm(tmp_path):
    from specdiff.data.cache import CACHE_FORMAT, ChunkDataset, notes_to_array

    notes = [Note(60, 0.0, 1.0, 100, 100, False), Note(64, 0.0, 1.0, 100, 17, False), Note(38, 0.0, 0.1, 90, 5, True)]
    cache = tmp_path / "cache"
    song = cache / "songs" / "a"
    song.mkdir(parents=True)
    np.save(song / "notes.npy", notes_to_array(notes))
    np.save(song / "mel.npy", np.full((100, 128), -5.0, np.float16))
    meta = {"id": "a", "split": "train", "frames": 100, "total_time": 1.0, "num_notes": 3, "source": "test"}
    (song / "meta.json").write_text(json.dumps({**meta, "programs": "gm"}))
    index = {"format": CACHE_FORMAT, "songs": [{**meta, "programs": "gm"}]}
    (cache / "index.json").write_text(json.dumps(index))
    original = ChunkDataset(cache)
    gm = ChunkDataset(cache, slakh_programs=False)
    assert [n.program for n in original.notes(0)] == [88, 16, 5]  # the drum keeps its program
    assert [n.program for n in gm.notes(0)] == [100, 17, 5]
    index["songs"] = [meta]  # a cache made before: Slakh classes, no "programs"
    (cache / "index.json").write_text(json.dumps(index))
    assert [n.program for n in ChunkDataset(cache).notes(0)] == [88, 16, 5]
    with pytest.raises(SpecdiffError, match="Slakh classes"):
        ChunkDataset(cache, slakh_programs=False)


def test_a_cache_is_opened_for_a_trained_decoder_with_its_programs_and_timbres():
    from specdiff.training.batches import decoder_dataset_options

    gm = build_models("tiny", seed=0, dropout_rate=0.0, **MICRO, **EDM, score_roll_features=PROGRAM_ROLL_FEATURES,
                      additive_prior=True, gm_programs=True, timbres=["TimGM6mb", "FluidR3_GM"])[2]  # fmt: skip
    assert decoder_dataset_options(gm) == {"timbres": ["TimGM6mb", "FluidR3_GM"], "slakh_programs": False}
    original = build_models("tiny", seed=0, dropout_rate=0.0, **MICRO)[2]
    assert decoder_dataset_options(original) == {"timbres": [], "slakh_programs": True}
