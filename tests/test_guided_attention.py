"""The optional guided cross-attention loss (specdiff.training.guided_attention): token times, penalty, training."""

from __future__ import annotations

import math

import pytest
import torch

from specdiff.midi.tokenizer import EOS_ID, PITCH_ID, PROGRAM_ID, SHIFT_ID, TIE_ID, VELOCITY_ID
from specdiff.models.presets import build_models
from specdiff.training.guided_attention import (
    CrossAttentionRecorder,
    alignment_penalty_weights,
    guided_attention_penalty,
    note_spans,
    token_frames,
)
from specdiff.training.objective import (
    GuidedAttention,
    SpectrogramDiffusionModel,
    diffusion_loss,
    draw_diffusion_inputs,
)

torch.set_num_threads(1)
NAN = math.nan
# tie section (program 0, pitch 60, tie), then events at 100 ms and 1 s, EOS, PAD
TOKENS = torch.tensor([[PROGRAM_ID, PITCH_ID + 60, TIE_ID, SHIFT_ID + 10, VELOCITY_ID + 1, PITCH_ID + 62,
                        SHIFT_ID + 100, PITCH_ID + 64, EOS_ID, 0, 0]])  # fmt: skip


def test_token_frames_follow_the_last_absolute_shift():
    frames = token_frames(TOKENS)[0].tolist()
    expected = [NAN, NAN, NAN, 5.0, 5.0, 5.0, 50.0, 50.0, NAN, NAN, NAN]  # 10 ms steps, 20 ms frames
    assert all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(frames, expected))


def test_penalty_weights_are_zero_on_the_aligned_event_and_one_elsewhere():
    w = alignment_penalty_weights(TOKENS, num_context=3, num_frames=60, sigma=4.0)
    assert w.shape == (1, 60, 11 + 3)
    assert w[0, 5, 3] == 0.0 and w[0, 50, 7] == 0.0  # frame 5 <-> the 100 ms events, 50 <-> 1 s
    assert w[0, 9, 3] == pytest.approx(1 - math.exp(-16 / 32))  # one sigma away
    assert torch.all(w[0, :, [0, 1, 2, 8, 9, 10]] == 1.0)  # tie section, EOS, PAD: no time
    assert torch.all(w[0, :, 11:] == 1.0)  # context keys


def _spans(row: list[int]) -> list[tuple[float, float]]:
    start, end = note_spans(torch.tensor([row]))
    return list(zip(start[0].tolist(), end[0].tolist()))


def _same(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or x == y for p, q in zip(a, b) for x, y in zip(p, q))


def test_note_spans_run_from_each_onset_to_its_note_off():
    far = 1.0e4
    # the module's TOKENS: a tie note held through the segment, two onsets never released
    assert _same(_spans(TOKENS[0].tolist()), [(NAN, NAN), (-far, far), (NAN, NAN), (5, 5), (5, 5), (5, far),
                                             (50, 50), (50, far), (NAN, NAN), (NAN, NAN), (NAN, NAN)])  # fmt: skip
    # on at 100 ms, off at 400 ms: the pitch token spans frames 5..20; the off's tokens are instants
    row = [TIE_ID, SHIFT_ID + 10, VELOCITY_ID + 1, PITCH_ID + 62, SHIFT_ID + 40, VELOCITY_ID, PITCH_ID + 62, EOS_ID]
    assert _same(_spans(row), [(NAN, NAN), (5, 5), (5, 5), (5, 20), (20, 20), (20, 20), (20, 20), (NAN, NAN)])
    # a tie note released at 200 ms: from before the segment to frame 10
    row = [PROGRAM_ID, PITCH_ID + 60, TIE_ID, SHIFT_ID + 20, VELOCITY_ID, PITCH_ID + 60]
    assert _same(_spans(row)[:2], [(NAN, NAN), (-far, 10)])
    # an off of the same pitch on another program does not end the note
    row = [TIE_ID, SHIFT_ID + 10, PROGRAM_ID + 1, VELOCITY_ID + 1, PITCH_ID + 60,
           SHIFT_ID + 20, PROGRAM_ID, VELOCITY_ID, PITCH_ID + 60]  # fmt: skip
    assert _spans(row)[4] == (5, far)
    # a re-onset ends the previous note of that key
    row = [TIE_ID, SHIFT_ID + 10, VELOCITY_ID + 1, PITCH_ID + 60, SHIFT_ID + 30, PITCH_ID + 60]
    assert _spans(row)[3] == (5, 15) and _spans(row)[5] == (15, far)


def test_notes_target_weights_are_zero_while_the_note_sounds():
    row = torch.tensor([[TIE_ID, SHIFT_ID + 10, VELOCITY_ID + 1, PITCH_ID + 62, SHIFT_ID + 40, VELOCITY_ID,
                         PITCH_ID + 62, EOS_ID]])  # fmt: skip
    w = alignment_penalty_weights(row, num_context=2, num_frames=40, sigma=4.0, target="notes")
    assert torch.all(w[0, 5:21, 3] == 0.0)  # the whole note, onset to release
    assert w[0, 24, 3] == pytest.approx(1 - math.exp(-16 / 32)) and w[0, 1, 3] == pytest.approx(1 - math.exp(-16 / 32))
    onsets = alignment_penalty_weights(row, num_context=2, num_frames=40, sigma=4.0)
    assert onsets[0, 15, 3] > 0.9  # the onset target only knows the onset
    assert torch.all(w[0, :, [0, 7]] == 1.0) and torch.all(w[0, :, 8:] == 1.0)
    with pytest.raises(ValueError):
        alignment_penalty_weights(row, 2, 40, 4.0, target="offsets")


def _batch(batch_size: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tokens = torch.zeros(batch_size, 64, dtype=torch.long)
    for b in range(batch_size):  # an event every 20 frames
        row = []
        for k in range(12):
            row += [SHIFT_ID + 40 * k, VELOCITY_ID + 1, PITCH_ID + 40 + 3 * k + b]
        tokens[b, : len(row)] = torch.tensor(row)
    return {
        "tokens": tokens,
        "context": torch.rand(batch_size, 256, 128, generator=g) * 2 - 1,
        "context_mask": torch.ones(batch_size, 256, dtype=torch.bool),
        "target": torch.rand(batch_size, 256, 128, generator=g) * 2 - 1,
        "index": torch.arange(batch_size),
    }


def test_penalty_falls_towards_its_optimum_when_trained():
    torch.manual_seed(0)
    model = SpectrogramDiffusionModel(*build_models("tiny", seed=0, d_model=32, num_layers=1, num_heads=2, d_kv=16,
                                                    d_ff=64, dropout_rate=0.0))  # fmt: skip
    batch = _batch()
    t, noise, keep = draw_diffusion_inputs(batch["index"], 0, 0.0)
    recorder = CrossAttentionRecorder(model)

    def penalty() -> torch.Tensor:
        with recorder.recording():
            model(batch["tokens"], batch["context"], batch["context_mask"], torch.randn(2, 256, 128), t)
        return guided_attention_penalty(model, recorder, batch["tokens"], batch["context_mask"], heads=1)

    start = float(penalty())
    assert 0 < start <= 2 * 256  # at most one unit of mass per frame and example
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        optimizer.zero_grad()
        penalty().backward()
        optimizer.step()
    # The best any attention can do: all mass on the nearest event, frame by frame.
    best = float(alignment_penalty_weights(batch["tokens"], 256, 256, 4.0).min(dim=2).values.sum())
    end = float(penalty())
    assert best < end < start - 0.4 * (start - best), (best, end, start)
    # The hooks are gone after recording: a plain forward records nothing.
    recorder.layer_inputs.clear()
    model(batch["tokens"], batch["context"], batch["context_mask"], torch.randn(2, 256, 128), t)
    assert recorder.layer_inputs == []


def test_guided_loss_adds_to_the_objective_only_and_skips_dropped_examples():
    model = SpectrogramDiffusionModel(*build_models("tiny", seed=0, d_model=32, num_layers=1, num_heads=2, d_kv=16,
                                                    d_ff=64, dropout_rate=0.0))  # fmt: skip
    batch = _batch()
    t, noise, _ = draw_diffusion_inputs(batch["index"], 0, 0.0)
    with torch.no_grad():
        plain = diffusion_loss(model, batch, t, noise, torch.tensor([True, True]))
        guided = diffusion_loss(model, batch, t, noise, torch.tensor([True, True]), guide=GuidedAttention(2.0))
        dropped = diffusion_loss(model, batch, t, noise, torch.tensor([False, False]), guide=GuidedAttention(2.0))
        dropped_plain = diffusion_loss(model, batch, t, noise, torch.tensor([False, False]))
    assert float(guided.loss_sum) > float(plain.loss_sum)
    assert float(guided.error_sum) == pytest.approx(float(plain.error_sum), rel=1e-6)
    assert float(dropped.loss_sum) == pytest.approx(float(dropped_plain.loss_sum), rel=1e-6)  # no notes: no penalty


@pytest.mark.parametrize("target", ["onsets", "notes"])
def test_a_run_with_guided_attention_trains(tmp_path, target):
    from specdiff.errors import SpecdiffError
    from specdiff.training.config import TrainConfig
    from specdiff.training.loop import train

    config = TrainConfig.from_preset(
        "tiny", model=dict(d_model=32, num_layers=1, d_ff=64, num_heads=2, d_kv=16), data="synthetic",
        out_dir=str(tmp_path / "run"), batch_size=2, steps=2, log_every=1, val_every=0, sample_every=0,
        ckpt_every=2, tensorboard=False, num_threads=1, guided_attention=1.0, guided_attention_target=target,
    )  # fmt: skip
    records = train(config, progress=False)
    assert len(records) == 2 and all(math.isfinite(r.loss_sum) for r in records)
    with pytest.raises(SpecdiffError, match="guided attention target"):  # refused before any step
        train(config.replace(out_dir=str(tmp_path / "bad"), guided_attention_target="offsets"), progress=False)
    assert not (tmp_path / "bad" / "checkpoints").exists()
