"""Tests of the neural vocoder (specdiff/audio/vocoder.py) and its training code (specdiff/training/vocoder*.py)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from specdiff.audio.silence_gate import DEFAULT_GATE_ITERS
from specdiff.audio.vocoder import (
    ISTFTHead,
    Vocoder,
    VocoderConfig,
    VocoderInverter,
    find_vocoder_dir,
    load_vocoder,
)
from specdiff.audio.vocoder_onnx import export_onnx
from specdiff.errors import AudioError, ModelError, SpecdiffError

torch.set_num_threads(1)

TINY = VocoderConfig(dim=16, intermediate_dim=32, num_layers=2)


def tiny_vocoder(seed: int = 0) -> Vocoder:
    torch.manual_seed(seed)
    model = Vocoder(TINY).eval()
    # Non-trivial layer scales and head bias so every layer matters in the comparisons below.
    with torch.no_grad():
        for block in model.blocks:
            block.gamma.fill_(0.5)
        model.head.out.bias.normal_(0, 0.5)
    return model


def random_log_mel(batch: int, frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(math.log(1e-5), 2.0, size=(batch, frames, 128)).astype(np.float32)


def test_config_matches_front_end_constants():
    mel = pytest.importorskip("specdiff.audio.mel")
    c = VocoderConfig()
    assert (c.sample_rate, c.hop_length, c.n_mels) == (mel.SAMPLE_RATE, mel.HOP_LENGTH, mel.N_MELS)
    assert c.feature_min == pytest.approx(mel.MIN_VALUE) and c.feature_max == pytest.approx(mel.MAX_VALUE)


@pytest.mark.parametrize("frames", [1, 7, 33])
def test_output_is_exactly_frames_times_hop(frames):
    audio = tiny_vocoder()(torch.from_numpy(random_log_mel(2, frames)))
    assert audio.shape == (2, frames * 320)
    assert torch.isfinite(audio).all()


def test_batch_items_are_independent():
    model = tiny_vocoder()
    mel = torch.from_numpy(random_log_mel(3, 12))
    together = model(mel)
    alone = model(mel[1:2])
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-6)


def test_istft_head_inverts_the_matching_stft():
    """Analysis with torch.fft (frames centred on 320 i + 320, ORIGINAL.md §1) -> head.istft gives the signal back."""
    head = ISTFTHead(dim=4, n_fft=1280, hop_length=320, max_log_magnitude=7.0)
    frames = 25
    signal = torch.randn(2, frames * 320, dtype=torch.float32)
    padded = torch.nn.functional.pad(signal, (320, 1280))  # frame i starts at 320 i - 320
    windows = padded.unfold(-1, 1280, 320)[:, :frames] * torch.hann_window(1280)
    spectrum = torch.fft.rfft(windows.double()).transpose(1, 2)
    rebuilt = head.istft(spectrum.abs().float(), spectrum.angle().float())
    assert rebuilt.shape == signal.shape
    torch.testing.assert_close(rebuilt, signal, rtol=0, atol=1e-5)


def test_absolute_phase_turns_a_constant_output_into_a_steady_sinusoid():
    """Why the head uses absolute phase: the same output in every frame (what a convolutional backbone
    gives for a steady note) must be a steady tone. Bin 37 is not a multiple of n_fft / hop = 4,
    so in the frame-relative convention neighbouring frames cancel (half the amplitude is lost)."""
    head = ISTFTHead(dim=4, n_fft=1280, hop_length=320, max_log_magnitude=7.0, absolute_phase=True)
    frames = 20
    magnitude = torch.zeros(1, 641, frames)
    magnitude[0, 37] = 100.0
    phase = torch.full((1, 641, frames), 0.3)
    steady = head.istft(magnitude, phase + head.frame_phase(frames))[0].double()
    t = torch.arange(frames * 320, dtype=torch.float64)
    # Frame i's inverse DFT starts at output sample 320 i - 320; the windowed overlap-add divided by
    # the summed squared window scales the bin's 2 |X| / n_fft by sum(w) / sum(w^2) = 4/3.
    expected = (4 / 3) * (2 * 100 / 1280) * torch.cos(2 * math.pi * 37 * (t + 320) / 1280 + 0.3)
    inner = slice(640, -640)  # away from the edges, where fewer frames overlap
    torch.testing.assert_close(steady[inner], expected[inner], rtol=0, atol=1e-6)
    frame_relative = head.istft(magnitude, phase)[0].double()
    assert frame_relative[inner].pow(2).mean().sqrt() < 0.6 * expected[inner].pow(2).mean().sqrt()
    # Integer reduction: exact even where k * i * hop is far beyond float32's integers.
    late = head.frame_phase(100_000)[:, -1].double()
    k = torch.arange(641, dtype=torch.float64)
    exact = 2 * math.pi * k * 99_999 * 320 / 1280  # float64 holds these integers exactly
    torch.testing.assert_close(
        torch.polar(torch.ones_like(late), late), torch.polar(torch.ones_like(exact), exact), rtol=0, atol=1e-5
    )


def test_config_without_phase_key_loads_as_frame_relative():
    old = {k: v for k, v in VocoderConfig().to_dict().items() if k != "phase"}
    assert VocoderConfig.from_dict(old).phase == "frame" and VocoderConfig().phase == "absolute"
    assert Vocoder(VocoderConfig.from_dict(old)).head.absolute_phase is False
    with pytest.raises(ModelError):
        VocoderConfig.from_dict({**old, "phase": "sideways"})


def test_fft_and_onnx_paths_of_the_istft_agree(monkeypatch):
    """The PyTorch path (irfft + fold) equals the exported one (conv_transpose with the DFT basis)."""
    head = ISTFTHead(dim=4, n_fft=1280, hop_length=320, max_log_magnitude=7.0)
    generator = torch.Generator().manual_seed(0)
    magnitude = torch.rand(2, 641, 9, generator=generator)
    phase = (torch.rand(2, 641, 9, generator=generator) - 0.5) * 6.5
    fast = head.istft(magnitude, phase)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    exported = head.istft(magnitude, phase)
    assert fast.shape == exported.shape == (2, 9 * 320)
    torch.testing.assert_close(fast, exported, rtol=1e-4, atol=1e-5)


def test_istft_head_places_a_click_in_the_right_frame():
    """A single impulse-like frame spectrum (flat magnitude, linear phase) lands at its frame's centre."""
    head = ISTFTHead(dim=4, n_fft=1280, hop_length=320, max_log_magnitude=7.0)
    bins, frames, frame = 641, 10, 4
    magnitude = torch.zeros(1, bins, frames)
    magnitude[0, :, frame] = 1.0
    k = torch.arange(bins, dtype=torch.float32)
    phase = torch.zeros(1, bins, frames)
    phase[0, :, frame] = -2 * math.pi * k * 640 / 1280  # impulse at the middle of the 1280 window
    audio = head.istft(magnitude, phase)[0]
    assert int(audio.abs().argmax()) == 320 * frame + 320  # centre of analysis frame 4 (ORIGINAL.md §1)


def test_inverter_protocol():
    inverter = VocoderInverter(tiny_vocoder())
    assert inverter.sample_rate == 16000
    out = inverter(random_log_mel(2, 9))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 9 * 320)
    assert inverter(np.zeros((1, 0, 128), np.float32)).shape == (1, 0)
    with pytest.raises(ValueError):
        inverter(random_log_mel(1, 9)[0])  # [T, 128] without the batch axis


def test_refinement_off_is_the_network_alone():
    model = tiny_vocoder()
    mel = random_log_mel(2, 30)
    with torch.no_grad():
        expected = model(torch.from_numpy(mel)).numpy()
    np.testing.assert_array_equal(VocoderInverter(model, refine_iters=0, gate_iters=0)(mel), expected)
    assert VocoderInverter(model).gate_iters == DEFAULT_GATE_ITERS  # the silence gate is on by default
    with pytest.raises(ValueError):
        VocoderInverter(model, refine_iters=-1)
    with pytest.raises(ValueError):
        VocoderInverter(model, gate_iters=-1)


def _chord(seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(16000 * seconds), dtype=torch.float64) / 16000
    audio = sum(
        0.2 * torch.sin(2 * math.pi * f * t) * torch.exp(-k * t) for k, f in enumerate((220.0, 277.2, 329.6, 1760.0))
    )
    return audio.float()[None]


def test_refinement_keeps_a_perfect_networks_output():
    """Audio whose own log-mel is the input is a fixed point: consistent phase, mel already fitted."""
    from specdiff.audio.mel import log_mel

    noise = 1e-3 * torch.randn(16000, generator=torch.Generator().manual_seed(1))  # no band at the clip floor
    audio = _chord() + noise
    assert (log_mel(audio) > -11).all()
    refined = VocoderInverter(tiny_vocoder(), refine_iters=32).refine(audio, log_mel(audio))
    # The first 320 samples are seen by one window only (the iSTFT floors its envelope there).
    np.testing.assert_allclose(refined[0, 400:].numpy(), audio[0, 400:].numpy(), atol=2e-3)


def test_refinement_fits_the_mel_and_keeps_the_networks_phase():
    from specdiff.audio.mel import log_mel

    audio = _chord()
    target = log_mel(audio)
    rough = 0.5 * audio + 0.01 * torch.randn(audio.shape, generator=torch.Generator().manual_seed(0))  # wrong levels
    before = (log_mel(rough) - target).abs().mean().item()
    refined = VocoderInverter(tiny_vocoder(), refine_iters=8).refine(rough, target)
    after = (log_mel(refined) - target).abs().mean().item()
    assert after < 0.25 * before, (before, after)
    # Phase comes from the network's audio, not from a random start: the waveform itself is close.
    error = torch.linalg.norm(refined[0, 400:] - audio[0, 400:]) / torch.linalg.norm(audio[0, 400:])
    assert error < 0.2, error


def test_save_load_round_trip(tmp_path):
    model = tiny_vocoder()
    model.save_pretrained(tmp_path / "model" / "vocoder")
    config = json.loads((tmp_path / "model" / "vocoder" / "config.json").read_text())
    assert config["dim"] == 16 and config["model_type"] == "vocos"
    # Stored as fp16: the loaded model equals the original with its weights rounded to fp16.
    rounded = tiny_vocoder()
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.half().float())
    mel = random_log_mel(1, 20)
    assert find_vocoder_dir(tmp_path / "model") == tmp_path / "model" / "vocoder"
    loaded = load_vocoder(tmp_path / "model")  # the model folder, as load_inverter passes it
    np.testing.assert_allclose(loaded(mel), VocoderInverter(rounded)(mel), rtol=1e-5, atol=1e-6)
    direct = load_vocoder(tmp_path / "model" / "vocoder")  # or the vocoder folder itself
    np.testing.assert_allclose(direct(mel), loaded(mel), rtol=0, atol=0)


def test_load_errors(tmp_path):
    assert find_vocoder_dir(tmp_path) is None
    with pytest.raises(ModelError):
        load_vocoder(tmp_path)
    tiny_vocoder().save_pretrained(tmp_path / "v")
    config = json.loads((tmp_path / "v" / "config.json").read_text())
    config["dim"] = 24  # weights no longer fit
    (tmp_path / "v" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="do not match"):
        load_vocoder(tmp_path / "v")


def test_onnx_export_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = tiny_vocoder()
    try:
        path = export_onnx(model, tmp_path / "vocoder.onnx")
    except Exception as err:  # an exporter missing from this torch build
        pytest.skip(f"ONNX export unavailable: {err}")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_features"]
    for batch, frames in [(1, 5), (3, 40)]:  # neither is the export example's shape: axes are dynamic
        mel = random_log_mel(batch, frames, seed=frames)
        (audio,) = session.run(None, {"input_features": mel})
        assert audio.shape == (batch, frames * 320)
        with torch.no_grad():
            expected = model(torch.from_numpy(mel)).numpy()
        np.testing.assert_allclose(audio, expected, rtol=1e-4, atol=1e-5)
    # The official inverter's loader accepts it as is (one input named input_features, output 0).
    from specdiff.audio.inverters import OnnxInverter

    mel = random_log_mel(2, 17, seed=1)
    with torch.no_grad():
        expected = model(torch.from_numpy(mel)).numpy()
    np.testing.assert_allclose(OnnxInverter(path, num_threads=1)(mel), expected, rtol=1e-4, atol=1e-5)


def test_pipeline_from_pretrained_uses_the_folders_vocoder(tmp_path):
    """End to end: a model folder with vocoder/ -> from_pretrained picks it (auto) -> audio = vocoder(mel)."""
    pytest.importorskip("specdiff.pipeline.pipeline")
    from specdiff.audio.inverters import load_inverter
    from specdiff.midi.tokenizer import TokenizedMidi, midi_to_segments
    from specdiff.models.presets import build_models
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    tiny = dict(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=48)
    folder = SpectrogramDiffusionPipeline(*build_models("tiny", seed=0, **tiny)).save_pretrained(tmp_path / "model")
    tiny_vocoder().save_pretrained(folder / "vocoder")
    assert isinstance(load_inverter(folder), VocoderInverter)
    pipe = SpectrogramDiffusionPipeline.from_pretrained(folder)
    assert isinstance(pipe.inverter, VocoderInverter)
    midi = Path(__file__).parent / "data" / "tokenizer" / "bach_bwv66_6.mid"
    segments = midi_to_segments(midi).segments[:1]
    out = pipe(TokenizedMidi(segments, duration=2.0), num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0), show_progress=False)  # fmt: skip
    frames = out.mels.shape[1]
    assert out.audios.shape == (1, frames * 320) and np.isfinite(out.audios).all()
    expected = load_vocoder(folder)(out.mels.astype(np.float32))[0]
    # The pipeline inverts the untrimmed song and then cuts (and fades the last 50 ms): compare
    # before the cut's reach, 3 convolutions of kernel 7 (9 frames) plus the iSTFT overlap (2 frames).
    # The refinement's Griffin-Lim iterations each reach one frame further, and 32 momentum steps
    # grow the float rounding of differently shaped matmuls to ~1e-3 of full scale.
    keep = (frames - 12 - load_vocoder(folder).refine_iters - 1) * 320
    assert keep > 40 * 320
    np.testing.assert_allclose(out.audios[0, :keep], expected[:keep], rtol=1e-3, atol=2e-3)
    unrefined = load_vocoder(folder, refine_iters=0)
    pipe.inverter = unrefined
    out = pipe(TokenizedMidi(segments, duration=2.0), num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0), show_progress=False)  # fmt: skip
    keep = (frames - 12) * 320
    np.testing.assert_allclose(
        out.audios[0, :keep], unrefined(out.mels.astype(np.float32))[0, :keep], rtol=1e-4, atol=1e-5
    )
    # save_pretrained carries the vocoder along.
    copy = pipe.save_pretrained(tmp_path / "copy")
    assert find_vocoder_dir(copy) == copy / "vocoder"


# ---- training -----------------------------------------------------------------------------------


def _tone_clips(seconds: float = 2.0) -> list[np.ndarray]:
    t = np.arange(int(seconds * 16000)) / 16000
    a = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 660 * t) * (t % 0.5 < 0.25)
    b = 0.4 * np.sign(np.sin(2 * np.pi * 110 * t)) * np.exp(-3 * (t % 0.7))
    return [a.astype(np.float32), b.astype(np.float32)]


def test_loss_functions_are_zero_only_for_identical_audio():
    from specdiff.training.vocoder_losses import multi_resolution_stft_loss

    x = torch.from_numpy(np.stack(_tone_clips(0.5)))
    assert multi_resolution_stft_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert multi_resolution_stft_loss(0.5 * x, x).item() > 0.1


def test_segment_sampler_lengths_and_determinism():
    from specdiff.training.vocoder_data import SegmentSampler, features_and_target

    a, b = SegmentSampler(_tone_clips(), 8, seed=3), SegmentSampler(_tone_clips(), 8, seed=3)
    batch = a.sample(4)
    assert batch.shape == (4, 8 * 320 + 320)
    torch.testing.assert_close(batch, b.sample(4))
    pytest.importorskip("specdiff.audio.mel")
    mel, target = features_and_target(batch, 8)
    assert mel.shape == (4, 8, 128) and target.shape == (4, 8 * 320)


def _trainer(warmup_steps: int):
    from specdiff.training.vocoder import VocoderTrainConfig, VocoderTrainer

    config = VocoderTrainConfig(batch_size=2, segment_frames=8, warmup_steps=warmup_steps, lr=2e-3, lr_warmup_steps=1)
    return VocoderTrainer(TINY, config)


def test_a_few_steps_reduce_the_reconstruction_loss():
    pytest.importorskip("specdiff.audio.mel")
    from specdiff.training.vocoder_data import SegmentSampler, features_and_target
    from specdiff.training.vocoder_losses import mel_l1

    trainer = _trainer(warmup_steps=10_000)  # reconstruction losses only
    batch = SegmentSampler(_tone_clips(), 8, seed=0).sample(2)
    mel, real = features_and_target(batch, 8)

    def loss() -> float:
        with torch.no_grad():
            return mel_l1(trainer.generator(mel), real).item()

    before = loss()
    for _ in range(30):
        trainer.train_step(batch)
    assert loss() < 0.85 * before  # measured: ~0.75 after 25 steps


def test_magnitude_loss_is_zero_for_the_true_magnitude():
    from specdiff.training.vocoder_losses import magnitude_l1

    x = torch.from_numpy(np.stack(_tone_clips(0.5)))[:, : 20 * 320]
    spectrum = tiny_vocoder().head.stft(x)
    assert magnitude_l1(torch.log(spectrum.abs().clamp_min(1e-30)), spectrum).item() == pytest.approx(0.0, abs=1e-6)
    assert magnitude_l1(torch.log(0.5 * spectrum.abs().clamp_min(1e-30)), spectrum).item() > 0.3


def test_phase_vocoder_training_fits_the_magnitude():
    """With synthesis "phase_vocoder" the steps train the head's magnitude (the phase comes from it)."""
    pytest.importorskip("specdiff.audio.mel")
    from dataclasses import replace

    from specdiff.training.vocoder import VocoderTrainConfig, VocoderTrainer
    from specdiff.training.vocoder_data import SegmentSampler, features_and_target
    from specdiff.training.vocoder_losses import magnitude_l1

    config = VocoderTrainConfig(batch_size=2, segment_frames=8, warmup_steps=10_000, lr=2e-3, lr_warmup_steps=1)
    trainer = VocoderTrainer(replace(TINY, synthesis="phase_vocoder"), replace(config, magnitude_weight=45.0))
    batch = SegmentSampler(_tone_clips(), 8, seed=0).sample(2)
    mel, real = features_and_target(batch, 8)

    def loss() -> float:
        with torch.no_grad():
            return magnitude_l1(trainer.generator.spectrum(mel)[0], trainer.generator.head.stft(real)).item()

    before = loss()
    logs = [trainer.train_step(batch) for _ in range(30)]
    assert loss() < 0.9 * before and "loss/magnitude" in logs[-1]  # measured: 0.82 after 30 steps
    assert all(np.isfinite(v) for entry in logs for v in entry.values())


def test_magnitude_rise_loss_hand_values():
    from specdiff.training.vocoder_losses import magnitude_rise_loss

    def rise(fake: list[float], real: list[float]) -> float:
        return magnitude_rise_loss(torch.tensor([[fake]]), torch.tensor([[real]])).item()  # [1, 1, T]

    step, ramp = [0.0, 0.0, 4.0, 4.0], [0.0, 2.0, 4.0, 4.0]
    assert rise(ramp, step) == pytest.approx(4 / 3)  # rises [2, 2, 0] vs [0, 4, 0]: (2 + 2 + 0) / 3
    assert rise(step, ramp) == pytest.approx(4 / 3)  # symmetric
    assert rise(step, step) == 0.0 and rise(ramp, ramp) == 0.0
    assert rise([4.0, 0.0, 0.0, 0.0], [4.0, 4.0, 4.0, 0.0]) == 0.0  # falls are ignored, wherever they are
    assert rise([0.0, 4.0, 0.0], [0.0, 0.0, 0.0]) == pytest.approx(2.0)  # a rise then a fall: rises [4, 0]
    assert rise([1.0, 3.0, 3.0], [5.0, 7.0, 7.0]) == 0.0  # a level offset alone costs nothing
    # Time is the last axis and the mean runs over every element: [B=2, bins=2, T=3] -> 8 differences.
    fake = torch.zeros(2, 2, 3)
    fake[1, 0, 2] = 8.0  # a single rise of 8 (the real one is flat)
    assert magnitude_rise_loss(fake, torch.zeros(2, 2, 3)).item() == pytest.approx(8 / 8)
    assert magnitude_rise_loss(fake.transpose(1, 2), torch.zeros(2, 3, 2)).item() == 0.0  # along bins: none


def test_rise_weight_adds_exactly_weight_times_the_rise_loss():
    """rise_weight 0 leaves the generator loss as it was; > 0 adds weight * rise loss and nothing else."""
    pytest.importorskip("specdiff.audio.mel")
    from dataclasses import replace

    from specdiff.training.vocoder import VocoderTrainConfig, VocoderTrainer, synthesize
    from specdiff.training.vocoder_data import SegmentSampler, features_and_target
    from specdiff.training.vocoder_losses import floored_log_magnitudes, magnitude_rise_loss

    assert VocoderTrainConfig().rise_weight == 0.0
    config = VocoderTrainConfig(batch_size=2, segment_frames=8, warmup_steps=10_000, lr_warmup_steps=1)
    config = replace(config, magnitude_weight=45.0)
    vocoder_config = replace(TINY, synthesis="phase_vocoder")
    batch = SegmentSampler(_tone_clips(), 8, seed=0).sample(2)

    def first_step(rise_weight: float) -> tuple[dict[str, float], float]:
        trainer = VocoderTrainer(vocoder_config, replace(config, rise_weight=rise_weight))
        with torch.no_grad():  # the rise loss of the initial weights, computed independently
            mel, real = features_and_target(batch, config.segment_frames)
            log_magnitude = synthesize(trainer.generator, mel)[1]
            expected = magnitude_rise_loss(*floored_log_magnitudes(log_magnitude, trainer.generator.head.stft(real)))
        return trainer.train_step(batch), expected.item()

    off, expected = first_step(0.0)
    assert "loss/rise" not in off
    rest = config.mel_weight * off["loss/mel_l1"] + config.stft_weight * off["loss/mr_stft"]
    assert off["loss/generator"] == pytest.approx(rest + config.magnitude_weight * off["loss/magnitude"], rel=1e-6)
    on, _ = first_step(2.5)
    assert on["loss/rise"] == pytest.approx(expected, rel=1e-6) and expected > 0
    for key in ("loss/mel_l1", "loss/mr_stft", "loss/magnitude"):
        assert on[key] == off[key]  # same seed, same weights, same batch
    assert on["loss/generator"] == pytest.approx(off["loss/generator"] + 2.5 * on["loss/rise"], rel=1e-6)


def test_checkpoint_resume_restores_step_weights_and_randomness(tmp_path):
    pytest.importorskip("specdiff.audio.mel")
    from specdiff.training.vocoder_data import SegmentSampler

    first, sampler = _trainer(warmup_steps=1), SegmentSampler(_tone_clips(), 8, seed=1)
    for _ in range(2):  # one reconstruction-only step, one adversarial step
        first.train_step(sampler.sample(2))
    first.save_checkpoint(tmp_path / "checkpoint.pt", sampler)

    second, sampler2 = _trainer(warmup_steps=1), SegmentSampler(_tone_clips(), 8, seed=99)
    second.load_checkpoint(tmp_path / "checkpoint.pt", sampler2)
    assert second.step == 2
    for p, q in zip(first.generator.parameters(), second.generator.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # Same data stream and optimiser states: the next step gives the same weights in both.
    first.train_step(sampler.sample(2))
    second.train_step(sampler2.sample(2))
    for module in ("generator", "mpd", "mrd"):
        for p, q in zip(getattr(first, module).parameters(), getattr(second, module).parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


# ---- command line ---------------------------------------------------------------------------------


def _parser():
    from specdiff.commands.vocoder import add_vocode_arguments, add_vocoder_arguments

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_vocoder_arguments(sub)
    add_vocode_arguments(sub)
    return parser


def test_cli_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys, specdiff.commands.vocoder; "
        "print(sorted(m for m in ('torch', 'numpy', 'specdiff.audio.vocoder') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_train_vocoder_arguments():
    from specdiff.training.vocoder import VocoderTrainConfig

    args = _parser().parse_args(
        [
            "train-vocoder",
            "--midi-dir",
            "m",
            "--audio-dir",
            "a",
            "--audio-dir",
            "b",
            "--run-dir",
            "r",
            "--max-steps",
            "7",
        ]
    )
    assert args.max_steps == 7 and args.midi_dir == [Path("m")] and args.audio_dir == [Path("a"), Path("b")]
    assert args.lr is None and not args.demo_corpus  # None: VocoderTrainConfig's default applies
    assert args.rise_weight is None and VocoderTrainConfig().rise_weight == 0.0
    assert _parser().parse_args(["train-vocoder", "--run-dir", "r", "--rise-weight", "3"]).rise_weight == 3.0
    assert VocoderTrainConfig().lr == 5e-4
    with pytest.raises(SystemExit):
        _parser().parse_args(["train-vocoder", "--audio-dir", "a"])  # --run-dir is required


def test_train_vocoder_command_trains_resumes_and_exports(tmp_path):
    pytest.importorskip("specdiff.audio.mel")
    pytest.importorskip("specdiff.audio.files")
    import soundfile as sf

    for i, clip in enumerate(_tone_clips()):
        sf.write(tmp_path / f"clip{i}.wav", clip, 16000)
    common = [
        "train-vocoder",
        "--audio-dir",
        str(tmp_path),
        "--run-dir",
        str(tmp_path / "run"),
        "--no-progress",
        "--dim",
        "16",
        "--intermediate-dim",
        "32",
        "--num-layers",
        "2",
        "--batch-size",
        "2",
        "--segment-frames",
        "8",
        "--warmup-steps",
        "2",
        "--gan-batch-size",
        "1",
        "--checkpoint-every",
        "2",
    ]
    args = _parser().parse_args([*common, "--max-steps", "2"])
    assert args.func(args) == 0
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2 and state["vocoder_config"]["dim"] == 16
    args = _parser().parse_args([*common, "--max-steps", "4", "--dim", "32"])  # resumes: keeps dim 16
    assert args.func(args) == 0
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 4
    assert load_vocoder(tmp_path / "run").model.config.dim == 16
    # A warm start takes the given vocoder's architecture and weights, with step 0 and a new optimiser.
    source = load_vocoder(tmp_path / "run").model
    warm = [a if a != str(tmp_path / "run") else str(tmp_path / "warm") for a in common]
    args = _parser().parse_args([*warm, "--max-steps", "1", "--init-from", str(tmp_path / "run"), "--dim", "32"])
    assert args.func(args) == 0
    state = torch.load(tmp_path / "warm" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 1 and state["vocoder_config"]["dim"] == 16
    warm_weights = load_vocoder(tmp_path / "warm").model.state_dict()
    # one step at the start of the LR ramp (5e-4 / 500) barely moves them; a fresh init is far away
    assert all(torch.allclose(warm_weights[k], v, atol=1e-4) for k, v in source.state_dict().items())
    # --synthesis switches a warm start to the phase vocoder; the exported folder records it.
    pv = [a if a != str(tmp_path / "run") else str(tmp_path / "pv") for a in common]
    args = _parser().parse_args(
        [*pv, "--max-steps", "1", "--init-from", str(tmp_path / "run"), "--synthesis", "phase_vocoder"]
    )
    assert args.func(args) == 0
    assert load_vocoder(tmp_path / "pv").synthesis == "phase_vocoder"
    # --peak-frequency predicted switches the head's second output to frequency offsets, started at zero.
    pf = [a if a != str(tmp_path / "run") else str(tmp_path / "pf") for a in common]
    args = _parser().parse_args(
        [*pf, "--max-steps", "1", "--init-from", str(tmp_path / "pv"), "--peak-frequency", "predicted"]
        + ["--frequency-weight", "10", "--lr", "1e-9", "--frequency-channels", "8", "--frequency-bins", "50"]
    )
    assert args.func(args) == 0
    switched = load_vocoder(tmp_path / "pf").model
    assert switched.config.peak_frequency == "predicted" and switched.config.synthesis == "phase_vocoder"
    assert switched.peak_frequency is not None and load_vocoder(tmp_path / "pv").model.peak_frequency is None
    assert (switched.config.frequency_channels, switched.config.frequency_bins) == (8, 50)
    assert switched.peak_frequency.inp.out_channels == 8 and switched.peak_frequency.bins == 50
    before = load_vocoder(tmp_path / "pv").model.state_dict()
    for key, value in before.items():  # one step at lr 1e-9 from the warm start
        torch.testing.assert_close(switched.state_dict()[key], value, atol=1e-4, rtol=0)
    # --frequency-inputs mel+bands widens that network: the old inputs' weights kept, the new ones at zero.
    wide = [a if a != str(tmp_path / "run") else str(tmp_path / "wide") for a in common]
    args = _parser().parse_args(
        [*wide, "--max-steps", "1", "--init-from", str(tmp_path / "pf"), "--frequency-inputs", "mel+bands"]
        + ["--frequency-weight", "1", "--lr", "1e-9"]
    )
    assert args.func(args) == 0
    widened = load_vocoder(tmp_path / "wide").model
    assert widened.config.frequency_inputs == "mel+bands" and widened.peak_frequency.inp.in_channels == 9
    first = widened.peak_frequency.inp.weight
    torch.testing.assert_close(first[:, :5], switched.peak_frequency.inp.weight, atol=1e-4, rtol=0)
    assert first[:, 5:].abs().max() < 1e-4
    # --frequency-weight on a vocoder without the peak-frequency network would train nothing: refused.
    nofreq = [a if a != str(tmp_path / "run") else str(tmp_path / "nofreq") for a in common]
    args = _parser().parse_args(
        [*nofreq, "--max-steps", "1", "--init-from", str(tmp_path / "pv"), "--frequency-weight", "1"]
    )
    with pytest.raises(SpecdiffError, match="--peak-frequency predicted"):
        args.func(args)
    assert not (tmp_path / "nofreq" / "checkpoint.pt").exists()


def test_cache_audio_reads_the_train_songs_sources(tmp_path):
    pytest.importorskip("specdiff.data.cache")
    import soundfile as sf

    from specdiff.training.vocoder_data import cache_audio

    wav = tmp_path / "song.wav"
    sf.write(wav, _tone_clips(0.5)[0], 16000)
    songs = [
        {"id": "a", "split": "train", "source": f"{wav} + {tmp_path / 'song.mid'}"},
        {"id": "b", "split": "validation", "source": f"{wav} + {tmp_path / 'song.mid'}"},
        {"id": "c", "split": "train", "source": "SlakhMix-like source that cannot be read back"},
    ]
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "index.json").write_text(json.dumps({"format": 1, "songs": songs}))
    with pytest.warns(UserWarning, match="1 train songs"):
        assert cache_audio(tmp_path / "cache", tmp_path / "out") == [wav]
    assert cache_audio(tmp_path / "cache", tmp_path / "out", split="validation") == [wav]


def test_vocode_command(tmp_path):
    pytest.importorskip("specdiff.audio.files")
    pytest.importorskip("specdiff.audio.mel")
    import soundfile as sf

    tiny_vocoder().save_pretrained(tmp_path / "model" / "vocoder")
    np.save(tmp_path / "mel.npy", random_log_mel(1, 11)[0])
    args = _parser().parse_args(
        ["vocode", str(tmp_path / "mel.npy"), "-o", str(tmp_path / "a.wav"), "--vocoder", str(tmp_path / "model")]
    )
    assert args.func(args) == 0
    audio, rate = sf.read(tmp_path / "a.wav")
    assert rate == 16000 and audio.shape == (11 * 320,)

    sf.write(tmp_path / "in.wav", _tone_clips(0.5)[0][:7777], 16000)  # not a whole number of frames
    args = _parser().parse_args(
        ["vocode", str(tmp_path / "in.wav"), "-o", str(tmp_path / "b.wav"), "--vocoder", str(tmp_path / "model")]
    )
    args.func(args)
    assert sf.read(tmp_path / "b.wav")[0].shape == (7777,)

    # --refine-iters 0 --gate-iters 0: the network alone, exactly
    args = _parser().parse_args(["vocode", str(tmp_path / "mel.npy"), "-o", str(tmp_path / "d.wav"), "--vocoder",
                                 str(tmp_path / "model"), "--refine-iters", "0", "--gate-iters", "0"])  # fmt: skip
    args.func(args)
    with torch.no_grad():
        network = Vocoder.from_pretrained(tmp_path / "model" / "vocoder")(torch.from_numpy(random_log_mel(1, 11)))[0]
    from specdiff.audio.files import soft_limit

    expected = network.numpy()
    expected = soft_limit(expected) if np.abs(expected).max() > 1.0 else expected  # what save_wav does past full scale
    np.testing.assert_allclose(sf.read(tmp_path / "d.wav", dtype="float32")[0], expected, atol=1e-4)
    args.refine_iters = -1
    with pytest.raises(SpecdiffError):
        args.func(args)
    args.refine_iters, args.gate_iters = 0, -1
    with pytest.raises(SpecdiffError):
        args.func(args)

    np.save(tmp_path / "bad.npy", np.zeros((5, 64), np.float32))
    args = _parser().parse_args(
        ["vocode", str(tmp_path / "bad.npy"), "-o", str(tmp_path / "c.wav"), "--vocoder", str(tmp_path / "model")]
    )
    with pytest.raises(AudioError):
        args.func(args)


def test_vocode_defaults_to_the_bundled_vocoder(tmp_path):
    import soundfile as sf

    from specdiff.audio.files import soft_limit
    from specdiff.audio.vocoder import load_vocoder
    from specdiff.pipeline.default_model import default_model_path

    if default_model_path() is None:
        pytest.skip("the package ships no default model")
    mel = random_log_mel(1, 9)
    np.save(tmp_path / "mel.npy", mel[0])
    args = _parser().parse_args(["vocode", str(tmp_path / "mel.npy"), "-o", str(tmp_path / "a.wav")])
    assert args.vocoder is None and args.func(args) == 0
    expected = load_vocoder(default_model_path())(mel)[0]
    expected = soft_limit(expected) if np.abs(expected).max() > 1.0 else expected
    np.testing.assert_allclose(sf.read(tmp_path / "a.wav", dtype="float32")[0], expected, atol=1e-4)


def test_peak_frequency_config_key():
    old = {k: v for k, v in TINY.to_dict().items() if k != "peak_frequency"}
    assert VocoderConfig.from_dict(old).peak_frequency == "parabola" == VocoderConfig().peak_frequency
    assert VocoderConfig.from_dict({**old, "peak_frequency": "predicted"}).peak_frequency == "predicted"
    with pytest.raises(ModelError, match="peak_frequency"):
        VocoderConfig.from_dict({**old, "peak_frequency": "guess"})


def test_predicted_peak_frequencies_drive_the_inverters_phase_vocoder(tmp_path):
    """A 'predicted' vocoder gives the phase vocoder its peak-frequency network's offsets (tanh-bounded on
    the covered bins, NaN above: the parabola there), the magnitude unchanged; the same weights with the
    parabola everywhere give a different phase."""
    from dataclasses import replace

    from specdiff.audio.peak_frequency import MAX_FREQUENCY_OFFSET

    torch.manual_seed(0)
    config = replace(TINY, synthesis="phase_vocoder", peak_frequency="predicted", frequency_bins=100)
    model = Vocoder(config).eval()
    with torch.no_grad():
        model.peak_frequency.out.bias.fill_(3.0)  # offsets near the bound
    model.save_pretrained(tmp_path)
    loaded = load_vocoder(tmp_path, refine_iters=0, gate_iters=0)
    assert any(k.startswith("peak_frequency.") for k in loaded.model.state_dict())
    mel = random_log_mel(1, 12)
    with torch.no_grad():
        log_magnitude, offset = loaded.model.phase_vocoder_inputs(torch.from_numpy(mel))
        torch.testing.assert_close(log_magnitude, loaded.model.spectrum(torch.from_numpy(mel))[0])
    assert offset.shape == log_magnitude.shape and torch.isnan(offset[:, 100:]).all()
    assert offset[:, :100].abs().max() <= MAX_FREQUENCY_OFFSET and offset[:, :100].min() > 0.5
    head = loaded.model.head
    expected = head.istft(log_magnitude.exp(), head.peak_locked_phase(log_magnitude.exp(), frequency_offset=offset))
    np.testing.assert_allclose(loaded(mel)[0], expected[0].numpy(), atol=1e-5)
    parabola = VocoderInverter(loaded.model.with_config(replace(config, peak_frequency="parabola")), refine_iters=0)
    parabola.gate_iters = 0
    assert np.abs(parabola(mel) - loaded(mel)).max() > 1e-3
    with pytest.raises(ModelError, match="more than"):
        loaded.model.with_config(replace(config, dim=32))
    assert loaded.description == "phase vocoder (peak frequencies predicted), 0 mel-fit correction(s)"
    assert parabola.description.startswith("phase vocoder (peak frequencies from a parabola)")


def test_instantaneous_frequency_offset_hand_values():
    """A sinusoid at 20.3 bins: every bin of its main lobe reads 20.3 - k (hand-derived from the phase
    advance 2 pi 20.3 hop / n_fft per frame)."""
    from specdiff.training.vocoder_losses import instantaneous_frequency_offset

    head = Vocoder(TINY).head
    t = torch.arange(50 * 320, dtype=torch.float64) / 16000
    audio = torch.sin(2 * math.pi * 20.3 * 16000 / 1280 * t + 0.4).float()[None]
    offset = instantaneous_frequency_offset(head.stft(audio), 1280, 320)
    assert offset.shape == (1, 641, 50)
    expected = torch.tensor([1.3, 0.3, -0.7, -1.7])
    torch.testing.assert_close(offset[0, 19:23, 5:45], expected[:, None].expand(4, 40), atol=2e-3, rtol=0)


def test_frequency_weight_adds_exactly_weight_times_the_frequency_loss_and_trains_it():
    pytest.importorskip("specdiff.audio.mel")
    from dataclasses import replace

    from specdiff.training.vocoder import VocoderTrainConfig, VocoderTrainer, synthesize_with_frequency
    from specdiff.training.vocoder_data import SegmentSampler, features_and_target
    from specdiff.training.vocoder_losses import frequency_offset_loss

    assert VocoderTrainConfig().frequency_weight == 0.0
    config = VocoderTrainConfig(batch_size=2, segment_frames=8, warmup_steps=10_000, lr_warmup_steps=1, lr=2e-3)
    vocoder_config = replace(TINY, synthesis="phase_vocoder", peak_frequency="predicted")
    batch = SegmentSampler(_tone_clips(), 8, seed=0).sample(2)
    mel, real = features_and_target(batch, config.segment_frames)

    def frequency_loss(trainer) -> float:
        with torch.no_grad():
            offset = synthesize_with_frequency(trainer.generator, mel)[2]
            head = trainer.generator.head
            return frequency_offset_loss(offset, head.stft(real), head.n_fft, head.hop_length).item()

    off = VocoderTrainer(vocoder_config, config)
    on = VocoderTrainer(vocoder_config, replace(config, frequency_weight=3.0))
    expected = frequency_loss(on)
    logs_off, logs_on = off.train_step(batch), on.train_step(batch)
    assert "loss/frequency" not in logs_off and logs_on["loss/frequency"] == pytest.approx(expected, rel=1e-6)
    assert logs_on["loss/generator"] == pytest.approx(logs_off["loss/generator"] + 3.0 * expected, rel=1e-6)
    for _ in range(30):
        on.train_step(batch)
    assert frequency_loss(on) < 0.8 * expected
