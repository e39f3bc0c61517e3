"""Guided cross-attention: an optional training-only loss that teaches the decoder *when* notes are.

A spectrogram frame at time f sounds like the notes whose events lie around f, but the decoder
has to discover that from absolute position tables and absolute shift tokens alone: with the
original objective its cross-attention stays diffuse for a long time, and a short run learns an
unconditional model (measured here: the same eps error with and without the notes after ~2k
steps of a tiny model). Attention-based TTS had the same slow alignment and solved it with a
guided attention loss (Tachibana et al. 2018, "Efficiently trainable text-to-speech system based
on deep convolutional networks with guided attention"): penalise attention far from the expected
alignment. Here the expected alignment is known exactly from the tokens, so a few heads (the
first ``heads`` of every decoder cross-attention layer) are pushed to attend, from frame f, to
note events whose time is within about ``sigma`` frames of f (``target="onsets"``), or to the
tokens of the notes that sound at f (``target="notes"``: a note-on's pitch token stands for its
whole note, from onset to its note-off, and a tie-section pitch token for a note held from before
the segment), so that every frame of a held note has something to attend to.

Only training changes. The network, its output (eps), the checkpoint layout and every sampler are
the same; the other heads, and the guided heads beyond the penalty, learn freely.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from specdiff.midi.tokenizer import (
    DRUM_ID,
    EOS_ID,
    PITCH_ID,
    PROGRAM_ID,
    SHIFT_ID,
    STEPS_PER_FRAME,
    TIE_ID,
    VELOCITY_ID,
)
from specdiff.models.layers import split_heads

#: What the guided heads should attend to (see the module docstring).
TARGETS = ("onsets", "notes")
#: Frame "time" of a note held from before the segment / past its end (far outside any segment).
_FAR = 1.0e4


def token_frames(tokens: Tensor) -> Tensor:
    """Frame time of every note token ``[B, L]`` (float; NaN where a token has no time).

    A shift token holds an absolute offset within the segment (ORIGINAL.md §2.4), in steps of 10 ms; the
    event tokens after it (program, velocity, pitch, drum) happen then. Tokens of the tie section
    (before any shift), EOS and PAD have no time.
    """
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    is_shift = (tokens >= SHIFT_ID) & (tokens < PITCH_ID)
    last_shift = torch.where(is_shift, positions, torch.full_like(positions, -1)).cummax(dim=1).values
    steps = (tokens - SHIFT_ID).gather(1, last_shift.clamp(min=0)).to(torch.float32)
    timed = (last_shift >= 0) & (tokens >= SHIFT_ID) & (tokens != EOS_ID)
    return torch.where(timed, steps / STEPS_PER_FRAME, torch.full_like(steps, math.nan))


def note_spans(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """``(start, end)`` frames ``[B, L]`` of what every note token stands for (NaN: nothing timed).

    Shift, program, velocity, drum and note-off pitch tokens stand for their event's instant
    (``start == end``, as :func:`token_frames`). A note-on pitch token stands for its note: from its
    time to the matching note-off of the same program and pitch (or a re-onset), or past the
    segment's end when there is none. A tie-section pitch token (a note held from before the
    segment, ORIGINAL.md §2.3) spans from before the segment to its note-off. Tie-section programs, the
    tie token, EOS and PAD have no time.
    """
    rows = tokens.detach().cpu().tolist()
    start = torch.full(tokens.shape, math.nan)
    end = torch.full(tokens.shape, math.nan)
    for b, row in enumerate(rows):
        time, velocity, program, in_tie = 0.0, 1, 0, True
        open_notes: dict[tuple[int, int], int] = {}  # (program, pitch) -> position of its token
        for i, tok in enumerate(row):
            if tok == EOS_ID or tok < SHIFT_ID:
                break
            if tok == TIE_ID:
                in_tie = False
                continue
            if PROGRAM_ID <= tok < DRUM_ID:
                program = tok - PROGRAM_ID
                if in_tie:
                    continue
            elif PITCH_ID <= tok < VELOCITY_ID:
                key = (program, tok - PITCH_ID)
                if in_tie:
                    start[b, i], open_notes[key] = -_FAR, i
                    continue
                if key in open_notes:  # a note-off (or a re-onset) ends the open note
                    end[b, open_notes.pop(key)] = time
                if velocity > 0:
                    start[b, i], open_notes[key] = time, i
                    continue
            elif SHIFT_ID <= tok < PITCH_ID:
                time, in_tie = (tok - SHIFT_ID) / STEPS_PER_FRAME, False
            elif VELOCITY_ID <= tok < TIE_ID:
                velocity = tok - VELOCITY_ID
            start[b, i] = end[b, i] = time
        for i in open_notes.values():
            end[b, i] = _FAR
    return start.to(tokens.device), end.to(tokens.device)


def target_spans(tokens: Tensor, target: str = "onsets") -> tuple[Tensor, Tensor]:
    """``(start, end)`` frames ``[B, L]`` the guided heads should attend each token at (NaN: never):
    an instant ``start == end ==`` :func:`token_frames` for ``"onsets"``, :func:`note_spans` for
    ``"notes"``."""
    if target == "onsets":
        times = token_frames(tokens)
        return times, times
    if target == "notes":
        return note_spans(tokens)
    raise ValueError(f"unknown guided attention target {target!r}; choose one of {', '.join(TARGETS)}")


def _weights_from_spans(start: Tensor, end: Tensor, num_context: int, num_frames: int, sigma: float) -> Tensor:
    frames = torch.arange(num_frames, device=start.device, dtype=torch.float32)[None, :, None]
    start, end = start[:, None, :], end[:, None, :]  # [B, 1, L]
    distance = torch.clamp(torch.maximum(start - frames, frames - end), min=0.0)  # 0 inside; NaN stays NaN
    near = torch.exp(-(distance**2) / (2.0 * sigma**2))
    w_notes = 1.0 - torch.nan_to_num(near, nan=0.0)  # NaN time -> weight 1
    w_context = torch.ones(start.shape[0], num_frames, num_context, device=start.device)
    return torch.cat([w_notes, w_context], dim=2)


def alignment_penalty_weights(
    tokens: Tensor, num_context: int, num_frames: int, sigma: float, target: str = "onsets"
) -> Tensor:
    """``W [B, T, L + C]``: ``1 - exp(-d^2 / (2 sigma^2))`` on timed note keys and 1 on every other
    key (untimed note tokens, the context encoder's keys). ``d``: the frame's distance to the
    token's time (``target="onsets"``) or to its span (``"notes"``, :func:`note_spans`; 0 inside),
    see :func:`target_spans`."""
    return _weights_from_spans(*target_spans(tokens, target), num_context, num_frames, sigma)


class CrossAttentionRecorder:
    """Records, during one forward pass of ``SpectrogramDiffusionModel``, what the guided heads need:
    both encoders' outputs and every decoder cross-attention layer's input. Hooks (not model code)
    keep the networks untouched and work through DDP's wrapper."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.encodings: dict[str, Tensor] = {}
        self.layer_inputs: list[Tensor] = []

    @contextlib.contextmanager
    def recording(self) -> Iterator[CrossAttentionRecorder]:
        self.encodings.clear()
        self.layer_inputs.clear()
        handles = [
            self.model.notes_encoder.register_forward_hook(
                lambda _m, _a, out: self.encodings.__setitem__("notes", out[0])
            ),
            self.model.continuous_encoder.register_forward_hook(
                lambda _m, _a, out: self.encodings.__setitem__("context", out[0])
            ),
        ]
        for layer in self.model.decoder.decoders:
            handles.append(layer.layer[1].register_forward_pre_hook(lambda _m, args: self.layer_inputs.append(args[0])))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()


def guided_attention_penalty(
    model: nn.Module,
    recorder: CrossAttentionRecorder,
    tokens: Tensor,
    context_mask: Tensor,
    heads: int = 1,
    sigma: float = 4.0,
    target: str = "onsets",
) -> Tensor:
    """Sum over examples and frames of the guided heads' attention mass times the alignment
    penalty, averaged over the guided heads and layers. Examples without a timed note (CFG-dropped
    ones included) add nothing. ``tokens``/``context_mask``: what the model was given."""
    notes, context = recorder.encodings["notes"], recorder.encodings["context"]
    keys_in = torch.cat([notes, context], dim=1)
    mask = torch.cat([tokens > 0, context_mask.bool()], dim=1)
    start, end = target_spans(tokens, target)  # once: the notes target parses the tokens in Python
    rows = torch.isfinite(start).any(dim=1)
    if not bool(rows.any()):
        return keys_in.new_zeros(()).float()
    num_frames = recorder.layer_inputs[0].shape[1]
    weights = _weights_from_spans(start[rows], end[rows], context.shape[1], num_frames, sigma)[:, None]  # [R, 1, T, K]
    bias = torch.zeros(mask[rows].shape, device=keys_in.device).masked_fill(~mask[rows], -1e9)[:, None, None, :]
    total = keys_in.new_zeros(()).float()
    for layer, y in zip(model.decoder.decoders, recorder.layer_inputs):
        cross = layer.layer[1]
        attention = cross.attention
        num_heads = attention.num_heads
        q = split_heads(attention.to_q(cross.layer_norm(y[rows])), num_heads)[:, :heads]
        k = split_heads(attention.to_k(keys_in[rows]), num_heads)[:, :heads]
        probs = torch.softmax((q @ k.transpose(-1, -2)).float() + bias, dim=-1)  # unscaled, as T5 (ORIGINAL.md §3)
        total = total + (probs * weights).sum() / heads
    return total / len(model.decoder.decoders)
