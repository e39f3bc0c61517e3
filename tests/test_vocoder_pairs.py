"""Vocoder training on (given mel, audio) pairs: loading, aligned sampling, the trainer's use of the given
mel, and the two commands (prepare-vocoder-pairs, train-vocoder --paired-dir)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from specdiff.audio.mel import log_mel
from specdiff.errors import SpecdiffError
from specdiff.training.vocoder_data import HOP, PairedSegmentSampler, SegmentSampler, load_pairs


def _tone(seconds: float, frequency: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    envelope = np.minimum(1.0, t * 4)  # a rise, so that frames differ
    return (0.3 * envelope * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def test_load_pairs_matches_stems_and_cuts_to_the_common_length(tmp_path):
    audio = _tone(1.0)
    sf.write(tmp_path / "a.wav", audio, 16000, subtype="FLOAT")
    np.save(tmp_path / "a.npy", np.zeros((60, 128), np.float16))  # longer than the audio's 50 frames
    np.save(tmp_path / "orphan.npy", np.zeros((10, 128), np.float16))  # no audio beside it: skipped
    (pair,) = load_pairs([tmp_path])
    assert pair[1].shape == (50, 128) and pair[1].dtype == np.float32 and len(pair[0]) == 50 * HOP
    np.testing.assert_allclose(pair[0], audio[: 50 * HOP], atol=1e-6)
    np.save(tmp_path / "a.npy", np.zeros((60, 64), np.float32))
    with pytest.raises(SpecdiffError, match="128"):
        load_pairs([tmp_path])
    with pytest.raises(SpecdiffError, match="no"):
        load_pairs([tmp_path / "empty"])


def test_paired_segments_keep_the_mel_frames_of_their_audio():
    """With the audio's own log-mel as the given mel, every sampled mel equals the log-mel of the sampled
    audio (away from the segment's edges, where the STFT pads), and the audio is taken without gain."""
    audio = _tone(2.0, 300.0) + _tone(2.0, 1234.0)
    mel = log_mel(torch.from_numpy(audio)[None])[0].numpy()
    sampler = PairedSegmentSampler([(audio, mel)], 16, np.random.default_rng(0))
    clips, mels = sampler.sample(6)
    assert clips.shape == (6, 16 * HOP + HOP) and mels.shape == (6, 16, 128)
    for clip, given in zip(clips, mels):
        own = log_mel(clip[None])[0, :16]
        torch.testing.assert_close(own[2:-2], given[2:-2], atol=1e-3, rtol=0)
    with pytest.raises(SpecdiffError, match="longer"):
        PairedSegmentSampler([(audio[: 10 * HOP], mel[:10])], 16, np.random.default_rng(0))


def test_the_trainer_reads_the_given_mel_where_it_is_finite():
    from specdiff.audio.vocoder import VocoderConfig
    from specdiff.training.vocoder import TrainingBatches, VocoderTrainConfig, VocoderTrainer

    config = VocoderTrainConfig(batch_size=4, segment_frames=8, warmup_steps=10**6, lr=0.0, paired_share=0.5)
    audio = _tone(1.0)
    mel = log_mel(torch.from_numpy(audio)[None])[0].numpy()
    batches = TrainingBatches(SegmentSampler([audio], 8, seed=0), [(audio, mel - 3.0)], config)
    clips, given = batches.next()
    assert clips.shape == (4, 8 * HOP + HOP) and given.shape == (4, 8, 128)
    assert torch.isnan(given[:2]).all() and torch.isfinite(given[2:]).all()
    trainer = VocoderTrainer(VocoderConfig(dim=16, intermediate_dim=32, num_layers=1), config)
    seen = []
    original = trainer.generator.spectrum
    trainer.generator.spectrum = lambda mel: seen.append(mel.clone()) or original(mel)
    trainer.train_step(clips, given)
    (used,) = seen
    torch.testing.assert_close(used[2:], given[2:])  # the given (lowered) mel
    torch.testing.assert_close(used[:2], log_mel(clips[:2])[:, :8])  # the audio's own
    with pytest.raises(Exception, match="paired_share"):
        TrainingBatches(batches.sampler, [(audio, mel)], VocoderTrainConfig(paired_share=1.5))


def test_prepare_pairs_then_train_on_them(tmp_path):
    """prepare-vocoder-pairs writes a render and the model's mel per (MIDI, SoundFont), in the SoundFont's
    timbre, keeps them on a rerun; train-vocoder --paired-dir trains on them."""
    from conftest import ARPEGGIO, MICRO, write_midi

    from specdiff import cli
    from specdiff.data.render import default_soundfont, timbre_name
    from specdiff.models.presets import build_models
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    soundfont = default_soundfont()
    timbre = timbre_name(soundfont)
    model = tmp_path / "model"
    SpectrogramDiffusionPipeline(*build_models("tiny", seed=0, **MICRO, timbres=["Other", timbre])).save_pretrained(
        model
    )
    (model / "sampling.json").write_text('{"scheduler": "ddim", "num_inference_steps": 1, "guidance_scale": 1.0}')
    midi = write_midi(tmp_path / "midi" / "song.mid", ARPEGGIO)
    argv = ["prepare-vocoder-pairs", str(midi.parent), "-o", str(tmp_path / "pairs"), "--model", str(model)]
    assert cli.main([*argv, "--soundfont", str(soundfont), "--no-progress"]) == 0
    wav, npy = tmp_path / "pairs" / timbre / "song.wav", tmp_path / "pairs" / timbre / "song.npy"
    mel, audio = np.load(npy), sf.read(wav)[0]
    assert mel.dtype == np.float16 and mel.shape[1] == 128
    assert abs(len(mel) - len(audio) / HOP) <= 50  # the render keeps 1 s after the music, the model 0.5 s
    pipe = SpectrogramDiffusionPipeline.from_pretrained(model, inverter=None)
    pipe.timbre = timbre
    expected = pipe(str(midi), generator=torch.Generator().manual_seed(0), output_type="mel", progress=False).mels[0]
    np.testing.assert_allclose(mel.astype(np.float32), expected, atol=0.02)  # float16
    stamp = npy.stat().st_mtime_ns
    assert cli.main([*argv, "--soundfont", str(soundfont), "--no-progress"]) == 0
    assert npy.stat().st_mtime_ns == stamp  # kept, not regenerated

    (tmp_path / "real").mkdir()
    sf.write(tmp_path / "real" / "x.wav", _tone(1.0), 16000)
    run = tmp_path / "run"
    train = ["train-vocoder", "--audio-dir", str(tmp_path / "real"), "--paired-dir", str(tmp_path / "pairs")]
    train += ["--run-dir", str(run), "--no-progress", "--dim", "16", "--intermediate-dim", "32", "--num-layers", "1"]
    train += ["--batch-size", "2", "--segment-frames", "8", "--max-steps", "2", "--paired-share", "0.5"]
    assert cli.main(train) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2 and state["train_config"]["paired_share"] == 0.5
