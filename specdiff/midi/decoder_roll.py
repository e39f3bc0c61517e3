"""The frame-aligned roll a score-conditioned decoder takes for a batch of segments, whatever its layout.

One place composes the layouts of ``specdiff.midi.score_roll`` so training (``specdiff.training.objective``)
and synthesis (``specdiff.pipeline.pipeline``) build the same roll: the tokens' roll
(:func:`~specdiff.midi.score_roll.batch_rolls`), then the context-level columns
(:func:`~specdiff.midi.score_roll.add_context_level`) and the velocity columns
(:func:`~specdiff.midi.velocity_roll.add_velocity_levels`) of the layouts that have them.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from specdiff.midi.score_roll import CarryIn, add_context_level, batch_rolls
from specdiff.midi.velocity_roll import add_velocity_levels


def decoder_roll(
    tokens: Tensor | Sequence[Tensor],
    num_frames: int,
    features: int,
    context: Tensor | None = None,
    context_mask: Tensor | None = None,
    velocity: Tensor | None = None,
    zero_null_rows: bool = True,
    carry: CarryIn | None = None,
) -> Tensor | None:
    """The roll ``[B, num_frames, features]`` of token rows on the layout ``features`` (None for 0, the
    original architecture), on the context's device when a context is given: its context-level columns
    from ``context`` (scaled, ``[B, T_c, 128]``) and ``context_mask`` when both are given, its velocity
    columns from ``velocity`` (``[B, num_frames, 18]``) when given. ``zero_null_rows``: all-PAD token rows
    (the CFG null condition of training) keep all-zero columns; the pipeline, whose guided denoiser
    zeroes the null branch itself, passes False. ``carry``: what rings into each row from the frames before
    it (:class:`~specdiff.midi.score_roll.CarryIn`; None: each row is read alone)."""
    if not features:
        return None
    roll = batch_rolls(tokens, num_frames, features, carry)
    null_rows_of = tokens if zero_null_rows else None
    if context is not None and context_mask is not None:
        roll = add_context_level(roll.to(context.device), context, context_mask, null_rows_of)
    return add_velocity_levels(roll, velocity, null_rows_of)


__all__ = ["decoder_roll"]
