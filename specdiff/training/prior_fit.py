"""Closed-form fits before training: the score prior and the local linear denoiser (ridge regression
over collated training windows)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from specdiff.errors import SpecdiffError
from specdiff.models.additive_prior import RELEASE_COLUMN_KINDS, programs_heard
from specdiff.models.decoder import INPUT_SKIP_KNOTS, FilmDecoder, noisy_residual
from specdiff.sampling.diffusion import (
    prediction_target,
    q_sample,
)
from specdiff.training.batches import collate_counted
from specdiff.training.objective import (
    SpectrogramDiffusionModel,
    _valid_rows,
    decoder_score_roll,
    roll_inputs,
)


def collated_windows(dataset: Any, indices: range, batch_size: int = 64) -> Iterator[dict[str, Tensor]]:
    """Items ``indices`` of ``dataset`` as collated batches (:func:`collate_counted`) of at most ``batch_size``."""
    for start in range(0, len(indices), batch_size):
        yield collate_counted([(i, dataset[i]) for i in indices[start : start + batch_size]])


@torch.no_grad()
def ridge_regression(pairs: Iterable[tuple[Tensor, Tensor]], ridge: float) -> Tensor:
    """Closed-form ridge fit of ``y`` on ``[x, 1]`` from batches of rows ``(x [N, D], y [N, K])``,
    accumulated as normal equations in float64. Returns ``[D + 1, K]``: the weights, then the
    intercept (which is not shrunk)."""
    gram = xty = None
    for x, y in pairs:
        x = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
        y = y.double()
        gram = x.T @ x if gram is None else gram + x.T @ x
        xty = x.T @ y if xty is None else xty + x.T @ y
    if gram is None:
        raise SpecdiffError("ridge regression needs at least one row")
    shrink = torch.full((gram.shape[0],), float(ridge), dtype=gram.dtype)
    shrink[-1] = 0.0
    return torch.linalg.solve(gram + torch.diag(shrink), xty)


@torch.no_grad()
def fit_score_prior(
    decoder: FilmDecoder,
    dataset: Any,
    windows: int,
    ridge: float = 10.0,
    batch_size: int = 64,
    mask_padding: bool = False,
) -> float:
    """Set ``decoder.score_prior_projection`` to the ridge-regression fit of each frame's target log-mel
    on its roll, over the first ``windows`` items of ``dataset``. Only the roll's shared columns (per
    pitch, per family, drums: ~700) are fitted, the per-(family, pitch) ones stay at zero, so the
    normal equations stay small; the bias takes the intercept. Returns the fit's mean absolute error
    (scaled units) on the first (up to) 256 of those windows. Why: the decoder learns the frame-local
    roll -> spectrogram map slowly on real data, a closed-form fit of it is cheap
    (``benchmarks/roll_ridge.py``). ``mask_padding``: frames past the piece end are left out."""
    from specdiff.midi.score_roll import TONAL_FEATURES

    def roll_of(batch: Mapping[str, Tensor]) -> Tensor:
        return decoder_score_roll(decoder, batch["tokens"], batch["context"], batch["context_mask"],
                                  **roll_inputs(batch))  # fmt: skip

    def rows(batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        x = roll_of(batch)[..., TONAL_FEATURES:].flatten(0, 1)
        y, keep = batch["target"].flatten(0, 1), _valid_rows(batch, mask_padding)
        return (x, y) if keep is None else (x[keep], y[keep])

    layer = decoder.score_prior_projection
    if layer is None:
        raise SpecdiffError("score_prior_fit needs a decoder with score_prior=true")
    solution = ridge_regression(
        (rows(b) for b in collated_windows(dataset, range(windows), batch_size)), ridge
    )  # [shared columns + 1, 128]
    layer.weight.zero_()
    layer.weight[:, TONAL_FEATURES:] = solution[:-1].T.to(layer.weight.dtype)
    layer.bias.copy_(solution[-1].to(layer.bias.dtype))
    error, count = 0.0, 0
    for batch in collated_windows(dataset, range(min(windows, 4 * batch_size)), batch_size):
        prior = decoder.project_score_roll(roll_of(batch), layer.weight) + layer.bias
        difference, keep = (prior - batch["target"]).abs().flatten(0, 1), _valid_rows(batch, mask_padding)
        difference = difference if keep is None else difference[keep]
        error += float(difference.sum())
        count += difference.numel()
    return error / max(count, 1)


def frames_before_onsets(roll: Tensor, frames: int) -> Tensor:
    """``[B, T, F]`` roll -> ``[B, T]`` bool: a tonal note or a drum hit starts within the next ``frames`` frames.

    Why: the log-mel frame i is centred on sample 320 (i + 1), so the frame before a note's onset frame already
    holds its attack (a lone TimGM6mb organ chord or snare hit at 1.00 s: frame 49 at 0.0 / +2.0 nat, frame 48 at
    the floor; the roll's onset is frame 50). A fit that reads such a frame as a release tail or a drum's
    decay learns a burst at the usual gap before the next note (a +10 nat spike 8 frames after an organ's
    note-off, ``benchmarks/results/program_release_lengths.md``)."""
    from specdiff.midi.score_roll import DRUM_KINDS, NUM_PITCHES, TONAL_FEATURES, TONAL_KINDS

    onset_block = TONAL_FEATURES // len(TONAL_KINDS) * TONAL_KINDS.index("onset")
    tonal = roll[..., onset_block : onset_block + TONAL_FEATURES // len(TONAL_KINDS)]
    drum_start = TONAL_FEATURES + NUM_PITCHES * DRUM_KINDS.index("onset")
    drums = roll[..., drum_start : drum_start + NUM_PITCHES]
    starts = (tonal > 0).any(dim=-1) | (drums > 0).any(dim=-1)  # [B, T]
    ahead = torch.zeros_like(starts)
    for k in range(1, frames + 1):
        ahead[:, :-k] |= starts[:, k:]
    return ahead


@torch.no_grad()
def prior_fit_rows(
    decoder: FilmDecoder, dataset: Any, windows: int, batch_size: int, mask_padding: bool, onset_guard: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """The rolls (float16), targets and timbre indices of the valid frames of the first ``windows`` items: the
    rows the template fits read (collect them once and pass them to each fit as ``rows``). For a prior with
    ``program_release_gains`` or ``program_release_decays`` each roll row ends with its 128
    :func:`~specdiff.models.additive_prior.programs_heard`
    columns (:func:`split_heard` takes them off). ``onset_guard`` > 0 leaves out the frames that many frames or
    fewer before an onset (:func:`frames_before_onsets`)."""
    rolls, targets, timbres = [], [], []
    for batch in collated_windows(dataset, range(windows), batch_size):
        roll = decoder_score_roll(
            decoder, batch["tokens"], batch["context"], batch["context_mask"], **roll_inputs(batch)
        )
        guarded = frames_before_onsets(roll, onset_guard).flatten() if onset_guard > 0 else None
        if getattr(decoder.additive_prior, "reads_heard", False):
            roll = torch.cat([roll, programs_heard(roll)], dim=-1)  # the rows lose the frame order it needs
        roll = roll.flatten(0, 1)
        target = batch["target"].flatten(0, 1)
        timbre = batch.get("timbre", torch.zeros(batch["target"].shape[0], dtype=torch.long))
        timbre = timbre[:, None].expand(-1, batch["target"].shape[1]).reshape(-1)
        keep = _valid_rows(batch, mask_padding)
        if guarded is not None:
            keep = ~guarded if keep is None else keep & ~guarded
        if keep is not None:
            roll, target, timbre = roll[keep], target[keep], timbre[keep]
        rolls.append(roll.half())  # envelope values in [0, 1] and log velocities: half is plenty
        targets.append(target.float())
        timbres.append(timbre)
    if not rolls or sum(len(r) for r in rolls) == 0:
        raise SpecdiffError("fitting the additive prior needs at least one frame")
    return torch.cat(rolls), torch.cat(targets), torch.cat(timbres)


def split_heard(prior: Any, roll: Tensor) -> tuple[Tensor, Tensor | None]:
    """Fit rows of :func:`prior_fit_rows` -> (the roll, its programs-heard columns or None)."""
    features = prior.roll_features
    return roll[:, :features], (roll[:, features:] if roll.shape[1] > features else None)


#: Kinds of frames the additive prior's fit can balance (:func:`frame_kinds`).
FRAME_KINDS = ("tonal", "release", "drums alone", "silent")


def frame_kinds(roll: Tensor) -> Tensor:
    """``[N, F]`` extended-layout roll rows -> ``[N]`` index into :data:`FRAME_KINDS`: a tonal note
    sounds; else one ended within 10 frames (its 0.4 s release decay above exp(-0.5)); else a drum hit
    decays; else silent (also rows with none of these, such as a drum hit's last frames past its span)."""
    from specdiff.midi.score_roll import DRUM_FEATURES, NUM_FAMILIES, NUM_PITCHES, ROLL_FEATURES, TONAL_FEATURES

    tonal = (roll[:, :TONAL_FEATURES] != 0).any(dim=1)
    slow_release = ROLL_FEATURES + (NUM_PITCHES + NUM_FAMILIES)  # the second release time constant
    release = roll[:, slow_release : slow_release + NUM_PITCHES + NUM_FAMILIES].amax(dim=1) > 0.6
    drums = (roll[:, TONAL_FEATURES : TONAL_FEATURES + DRUM_FEATURES] != 0).any(dim=1)
    kinds = torch.full((len(roll),), FRAME_KINDS.index("silent"), dtype=torch.long)
    kinds[drums] = FRAME_KINDS.index("drums alone")
    kinds[release] = FRAME_KINDS.index("release")
    kinds[tonal] = FRAME_KINDS.index("tonal")
    return kinds


def balanced_row_probabilities(roll: Tensor, balance: float) -> Tensor | None:
    """Sampling probabilities of the fit's rows: each row ``count(kind) ** -balance`` (normalised), so
    with ``balance`` 1 every kind of frame (:func:`frame_kinds`) weighs the same in the fit, with 0 every
    frame does (None: uniform)."""
    if balance <= 0:
        return None
    kinds = frame_kinds(roll)
    counts = torch.bincount(kinds, minlength=len(FRAME_KINDS)).double()
    weights = counts.clamp(min=1.0).pow(-float(balance))[kinds]
    return (weights / weights.sum()).float()


def _rows_l1(estimate: Callable[[Tensor], Tensor], index: Tensor, targets: Tensor, chunk: int = 8192) -> float:
    """The mean absolute error of ``estimate(rows)`` against ``targets[rows]`` over the rows ``index``,
    ``chunk`` rows at a time, without gradients (the fits' before / after report)."""
    with torch.no_grad():
        total = sum(float((estimate(part) - targets[part]).abs().sum()) for part in index.split(chunk))
    return total / (len(index) * targets.shape[1])


def fit_additive_prior(
    decoder: FilmDecoder,
    dataset: Any,
    windows: int,
    steps: int = 400,
    rows_per_step: int = 4096,
    learning_rate: float = 0.05,
    batch_size: int = 64,
    mask_padding: bool = False,
    seed: int = 0,
    balance: float = 0.0,
) -> tuple[float, float]:
    """Fit the decoder's additive prior (:class:`specdiff.models.additive_prior.AdditivePrior`) together
    with the linear prior's shared columns, its bias and the per-timbre prior offsets, by Adam on the L1 of
    the prior against each frame's target log-mel, over the first ``windows`` items of ``dataset``
    (``steps`` steps of ``rows_per_step`` random frames, cosine learning rate). The linear part starts at
    zero (a sum of power spectra and a log-linear correction are fitted as one); every parameter is
    stepped in natural-log units, as the additive prior's own (in the decoder's scaled units the linear
    part's steps would be 7.8x larger: measured, held-out x0 L1 1.128 instead of 1.043 nat,
    ``benchmarks/results/additive_prior.md``). Unlike the ridge fit this is not closed form: the power
    sum is not linear in its parameters. Returns ``(L1 before, L1 after)`` in scaled units on those
    frames (before: the decoder's linear prior as it was). ``mask_padding``: frames past the piece end
    are left out. ``balance`` > 0 draws the rows of each step with :func:`balanced_row_probabilities`.
    Why: drum hits with no tonal note near are 0.5% of the training frames, and an unbalanced L1 fit
    leaves them where their neighbours are (TimGM6mb, 5-9 frames after a hit: render -5.8 nat, the
    prior -2.9; ``benchmarks/results/drum_decay_idioms_0130.md``)."""
    from specdiff.audio.mel import NAT_PER_UNIT
    from specdiff.midi.score_roll import TONAL_FEATURES

    prior, linear = decoder.additive_prior, decoder.score_prior_projection
    if prior is None or linear is None:
        raise SpecdiffError("fitting the additive prior needs a decoder with score_prior and additive_prior")
    roll_rows, target_rows, timbre_rows = prior_fit_rows(decoder, dataset, windows, batch_size, mask_padding)
    shared = torch.nn.Parameter(torch.zeros(prior.roll_features - TONAL_FEATURES, linear.out_features))
    bias = torch.nn.Parameter(torch.zeros(linear.out_features))
    offsets = torch.nn.Parameter(torch.zeros(len(decoder.timbres) or 1, linear.out_features))

    def estimate(index: Tensor, additive: bool = True) -> Tensor:
        roll, heard = split_heard(prior, roll_rows[index].float())
        linear_part = (roll[:, TONAL_FEATURES:] @ shared + bias + offsets[timbre_rows[index]]) / NAT_PER_UNIT
        return prior(roll, timbre_rows[index], heard) + linear_part if additive else linear_part

    def error(additive: bool = True) -> float:
        every_row = torch.arange(len(roll_rows))
        return _rows_l1(lambda index: estimate(index, additive), every_row, target_rows, rows_per_step)

    with torch.no_grad():  # the linear prior as it stands, for the report
        shared.copy_(linear.weight[:, TONAL_FEATURES:].T.float() * NAT_PER_UNIT)
        bias.copy_(linear.bias.float() * NAT_PER_UNIT)
        if decoder.timbre_prior is not None:
            offsets.copy_(decoder.timbre_prior.weight.float() * NAT_PER_UNIT)
        before = error(additive=False)
        for value in (shared, bias, offsets):
            value.zero_()
    params = [*prior.parameters(), shared, bias] + ([offsets] if decoder.timbre_prior is not None else [])
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    generator = torch.Generator().manual_seed(seed)
    probabilities = balanced_row_probabilities(roll_rows, balance)
    with torch.enable_grad():
        for _ in range(steps):
            if probabilities is None:
                index = torch.randint(len(roll_rows), (rows_per_step,), generator=generator)
            else:
                index = torch.multinomial(probabilities, rows_per_step, replacement=True, generator=generator)
            loss = (estimate(index) - target_rows[index]).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    after = error()
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[:, TONAL_FEATURES:] = (shared.T / NAT_PER_UNIT).to(linear.weight.dtype)
        linear.bias.copy_((bias / NAT_PER_UNIT).to(linear.bias.dtype))
        if decoder.timbre_prior is not None:
            decoder.timbre_prior.weight.copy_((offsets / NAT_PER_UNIT).to(decoder.timbre_prior.weight.dtype))
    return before, after


def fit_drum_templates(
    decoder: FilmDecoder,
    dataset: Any,
    windows: int,
    steps: int = 300,
    rows_per_step: int = 2048,
    learning_rate: float = 0.05,
    batch_size: int = 64,
    mask_padding: bool = False,
    seed: int = 0,
    alone_share: float = 0.5,
    rows: tuple[Tensor, Tensor, Tensor] | None = None,
    onset_guard: int = 0,
) -> tuple[float, float]:
    """Refit only the additive prior's drum decay templates (the roll's rate and the faster ``drum_decay_powers``
    ones, the ``drum_decay_gates`` ones, and their per-timbre offsets with ``timbre_drum_decays``),
    everything else fixed, by Adam on the L1 of the whole prior against the target, each step's rows
    ``alone_share`` from "drums alone" frames (:func:`frame_kinds`) and the rest from any frame with a drum,
    over the first ``windows`` items of ``dataset``. Returns the L1 (scaled units) on the drums-alone frames
    before and after (``rows``: :func:`prior_fit_rows` of those windows, when the caller has them; else it collects
    them with ``onset_guard``). Why: in a fit
    over all frames the drum templates serve the frames where drums play
    with tonal notes, and 5-9 frames after a TimGM6mb hit with no tonal note near the prior sat 3 nat over
    the render; measured on the bundled model, this refit brings those tails 1.5 nat down at +0.7% L1 over
    all frames (``benchmarks/results/drum_decay_idioms_0130.md``). The network should then be fine-tuned on
    the new prior (its hits overshoot otherwise)."""
    from specdiff.midi.score_roll import DRUM_FEATURES, DRUM_KINDS, TONAL_FEATURES

    prior = _fitted_prior(decoder, "drum")
    if not 0.0 <= alone_share <= 1.0:
        raise SpecdiffError(f"the drums-alone share of the drum template fit must be in [0, 1], got {alone_share}")
    if rows is None:
        rows = prior_fit_rows(decoder, dataset, windows, batch_size, mask_padding, onset_guard)
    alone = (frame_kinds(rows[0]) == FRAME_KINDS.index("drums alone")).nonzero().flatten()
    with_drums = (rows[0][:, TONAL_FEATURES : TONAL_FEATURES + DRUM_FEATURES] != 0).any(dim=1).nonzero().flatten()
    if len(alone) == 0:
        raise SpecdiffError("fitting the drum templates needs training frames where drums play alone")
    # the decay kind only: the onset templates and every other parameter keep their fitted values
    mask = torch.zeros_like(prior.drum_templates)
    mask[DRUM_KINDS.index("decay")] = 1.0
    extra = (prior.fast_drum_templates, prior.gate_drum_templates, prior.timbre_drum_decays)
    extra = [parameter for parameter in extra if parameter is not None]
    return _fit_templates(decoder, rows, {prior.drum_templates: mask, **dict.fromkeys(extra)}, (alone, with_drums),
                          alone_share, steps, rows_per_step, learning_rate, seed)  # fmt: skip


def fit_release_templates(
    decoder: FilmDecoder,
    dataset: Any,
    windows: int,
    steps: int = 300,
    rows_per_step: int = 2048,
    learning_rate: float = 0.05,
    batch_size: int = 64,
    mask_padding: bool = False,
    seed: int = 0,
    quiet_share: float = 0.5,
    rows: tuple[Tensor, Tensor, Tensor] | None = None,
    onset_guard: int = 0,
    program_shrink: float = 0.0,
    columns: Sequence[str] = RELEASE_COLUMN_KINDS,
) -> tuple[float, float]:
    """Refit only the additive prior's release decay templates (the shared ones of the roll's release columns,
    the faster ``release_decay_powers`` ones, the ``release_gain_frames`` gains, their per-timbre and per-program
    offsets),
    everything else fixed, as :func:`fit_drum_templates` does for the drums: rows ``quiet_share`` from frames where
    a release decay rings and neither a tonal note nor a drum sounds, the rest from any frame with a release decay.
    Returns the L1 (scaled units) on those quiet frames before and after (``rows`` and ``onset_guard`` as for
    :func:`fit_drum_templates`). Why: the roll's fastest release lets the prior's log-mel fall 0.1 nat per frame
    after a note ends, a TimGM6mb release about 0.6 (``benchmarks/results/release_tails.md``).

    ``program_shrink`` > 0 adds ``program_shrink`` times the sum of squares of the per-program release offsets
    (``program_release_gains``, log power) to each step's loss, pulling each program's offsets towards its
    family's gains by as much as its own frames do not outweigh: a program heard releasing alone in only one or
    two of the fit's windows (on 1 500 windows, TimGM6mb's piano family: about 35 quiet frames at each frame
    after the note-off) gets its family's fade instead of that one event's.

    ``columns``: the kinds of release columns (``"pitch"``, ``"family"``) whose templates stay; the others are
    switched off (no power, held there) and the release is left to the rest (with neither: the
    ``release_gain_frames`` gains and their program offsets). Why: a per-pitch column knows neither family nor
    program, and a per-family one no program, so their fit is one fade for several instruments, and on the
    roll's decays exp(-t / 5) and exp(-t / 20) it falls at most 0.1 nat per frame: after a drawbar organ chord
    (digital silence 12 frames after its note-off in TimGM6mb) the bundled prior's per-pitch release columns
    still held the log-mel at -3.7 to -7 nat for 50 frames, where the render was at the floor (-11.5)."""
    from specdiff.midi.score_roll import DRUM_FEATURES, SILENT_FEATURE, TONAL_FEATURES
    from specdiff.models.additive_prior import RELEASE_SOURCE_START

    prior = _fitted_prior(decoder, "release")
    if prior.fast_release_templates is None and prior.release_gains is None:
        raise SpecdiffError("fitting the release templates needs a decoder with release_decay_powers or "
                            "release_gain_frames")  # fmt: skip
    if not 0.0 <= quiet_share <= 1.0:
        raise SpecdiffError(f"the quiet share of the release template fit must be in [0, 1], got {quiet_share}")
    if program_shrink < 0:
        raise SpecdiffError(f"the program offsets' shrinkage must be >= 0, got {program_shrink}")
    if set(columns) - set(RELEASE_COLUMN_KINDS):
        raise SpecdiffError(f"release template columns must be among {RELEASE_COLUMN_KINDS}, got {tuple(columns)}")
    if rows is None:
        rows = prior_fit_rows(decoder, dataset, windows, batch_size, mask_padding, onset_guard)
    first = TONAL_FEATURES + DRUM_FEATURES + RELEASE_SOURCE_START
    ringing = (rows[0][:, first:SILENT_FEATURE] > 0).any(dim=1)
    kinds = frame_kinds(rows[0])  # no tonal note and no drum: the release is all that sounds
    alone = (kinds == FRAME_KINDS.index("release")) | (kinds == FRAME_KINDS.index("silent"))
    quiet = (ringing & alone).nonzero().flatten()
    if len(quiet) == 0:
        raise SpecdiffError("fitting the release templates needs training frames where a release rings alone")
    mask = torch.zeros_like(prior.shared_templates)
    mask[RELEASE_SOURCE_START:] = 1.0  # the per-pitch and per-family templates keep their fitted values
    _switch_off_release_columns(prior, mask, columns)
    extra = (
        prior.fast_release_templates,
        prior.timbre_release_decays,
        prior.release_gains,
        prior.timbre_release_gains,
        prior.program_release_gains,
        prior.program_release_decays,
    )
    extra = [parameter for parameter in extra if parameter is not None]
    penalty = None
    if program_shrink > 0 and prior.program_release_gains is not None:
        penalty = partial(_weighted_sum_of_squares, prior.program_release_gains, program_shrink)
    return _fit_templates(decoder, rows, {prior.shared_templates: mask, **dict.fromkeys(extra)},
                          (quiet, ringing.nonzero().flatten()), quiet_share, steps, rows_per_step, learning_rate,
                          seed, penalty)  # fmt: skip


def fit_colour_templates(
    decoder: FilmDecoder,
    dataset: Any,
    windows: int,
    steps: int = 300,
    rows_per_step: int = 2048,
    learning_rate: float = 0.05,
    batch_size: int = 64,
    mask_padding: bool = False,
    seed: int = 0,
    rows: tuple[Tensor, Tensor, Tensor] | None = None,
    onset_guard: int = 0,
    tie_kinds: bool = False,
    shrink: float = 0.0,
) -> tuple[float, float]:
    """Refit only the additive prior's per-timbre program colours (``timbre_program_colours``), everything else
    fixed, by Adam on the L1 of the whole prior against the target over the frames where a tonal note sounds, as
    :func:`fit_drum_templates` does for the drums. Returns the L1 (scaled units) on those frames before and after
    (``rows`` and ``onset_guard`` as there). Why: the program colours were fitted on renders of two SoundFonts at
    once, so each program's spectrum is their mean (``benchmarks/results/timbre_bands_colours.md``); refitted on
    run N5 without network steps, the tonal frames' L1 fell 0.0992 -> 0.0883, but the whole model did not get better
    on validation music (``benchmarks/results/steps_table_val_timbre_colours.md``). ``tie_kinds``:
    one offset per timbre, program and bin for the onset, sustain and decay kinds alike (a colour, not an envelope:
    the network was trained on the prior's attack-to-sustain contrast). ``shrink`` > 0 adds that weight times the
    offsets' sum of squares to each step's loss (a program heard in few windows keeps the shared colour)."""
    prior = _fitted_prior(decoder, "colour")
    if prior.timbre_program_colours is None:
        raise SpecdiffError("fitting the per-timbre colours needs a decoder with timbre_program_colours")
    if rows is None:
        rows = prior_fit_rows(decoder, dataset, windows, batch_size, mask_padding, onset_guard)
    tonal = (frame_kinds(rows[0]) == FRAME_KINDS.index("tonal")).nonzero().flatten()
    if len(tonal) == 0:
        raise SpecdiffError("fitting the per-timbre colours needs training frames where a tonal note sounds")
    offsets = prior.timbre_program_colours
    # tied: equal gradients from equal starts, so Adam keeps the kinds' offsets equal
    tie = offsets.register_hook(lambda grad: grad.mean(dim=1, keepdim=True).expand_as(grad)) if tie_kinds else None
    penalty = partial(_weighted_sum_of_squares, offsets, shrink) if shrink > 0 else None
    try:
        return _fit_templates(decoder, rows, {offsets: None}, (tonal, tonal), 1.0, steps, rows_per_step,
                              learning_rate, seed, penalty)  # fmt: skip
    finally:
        if tie is not None:
            tie.remove()


def _switch_off_release_columns(prior: Any, mask: Tensor, columns: Sequence[str]) -> None:
    """Set the release templates of the kinds not in ``columns`` to no power and zero their rows of the fit's
    gradient ``mask`` (of ``prior.shared_templates``), so that they stay off."""
    from specdiff.models.additive_prior import NO_RELEASE_LOG_POWER, release_template_rows

    for kind in set(RELEASE_COLUMN_KINDS) - set(columns):
        with torch.no_grad():
            for rows in release_template_rows(kind):
                prior.shared_templates[rows] = NO_RELEASE_LOG_POWER
                mask[rows] = 0.0


def _weighted_sum_of_squares(parameter: Tensor, weight: float) -> Tensor:
    """``weight`` times the sum of squares of ``parameter`` (a template fit's penalty)."""
    return weight * parameter.float().pow(2).sum()


def _fitted_prior(decoder: FilmDecoder, what: str) -> Any:
    """The decoder's additive prior, checked to have the linear part its template fits need."""
    if decoder.additive_prior is None or decoder.score_prior_projection is None:
        raise SpecdiffError(f"fitting the {what} templates needs a decoder with score_prior and additive_prior")
    return decoder.additive_prior


def _fit_templates(
    decoder: FilmDecoder,
    rows: tuple[Tensor, Tensor, Tensor],
    parameters: dict[torch.nn.Parameter, Tensor | None],
    pools: tuple[Tensor, Tensor],
    first_share: float,
    steps: int,
    rows_per_step: int,
    learning_rate: float,
    seed: int,
    penalty: Callable[[], Tensor] | None = None,
) -> tuple[float, float]:
    """Adam on the L1 of the whole prior (linear + additive + timbre prior) against the target over
    ``rows`` (rolls, targets, timbres), plus ``penalty()`` when given, moving only ``parameters`` (each with a
    gradient mask, None: all of it); each step draws ``first_share`` of its rows from ``pools[0]``, the rest
    from ``pools[1]``. Returns the L1 on ``pools[0]`` before and after."""
    roll_rows, target_rows, timbre_rows = rows
    prior, linear = decoder.additive_prior, decoder.score_prior_projection

    def estimate(index: Tensor) -> Tensor:
        roll, heard = split_heard(prior, roll_rows[index].float())
        total = roll @ linear.weight.float().T + linear.bias.float() + prior(roll, timbre_rows[index], heard)
        if decoder.timbre_prior is not None:
            total = total + decoder.timbre_prior(timbre_rows[index]).float()
        return total

    first, second = pools
    before = _rows_l1(estimate, first, target_rows)
    optimizer = torch.optim.Adam(list(parameters), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    first_rows = int(round(rows_per_step * first_share))
    with torch.enable_grad():
        for _ in range(steps):
            index = torch.cat([first[torch.randint(len(first), (first_rows,), generator=generator)],
                               second[torch.randint(len(second), (rows_per_step - first_rows,),
                                                    generator=generator)]])  # fmt: skip
            loss = (estimate(index) - target_rows[index]).abs().mean()
            if penalty is not None:
                loss = loss + penalty()
            optimizer.zero_grad()
            loss.backward()
            for parameter, mask in parameters.items():
                if mask is not None:
                    parameter.grad.mul_(mask)
            optimizer.step()
    for parameter in decoder.parameters():  # the fit's gradients must not reach the first training step
        parameter.grad = None
    return before, _rows_l1(estimate, first, target_rows)


@torch.no_grad()
def fit_input_skip(
    model: SpectrogramDiffusionModel,
    dataset: Any,
    windows: int,
    ridge: float = 1.0,
    batch_size: int = 16,
    mask_padding: bool = False,
) -> list[tuple[float, float, float]]:
    """Fit the decoder's ``input_skip`` maps in closed form: per knot of
    :data:`specdiff.models.decoder.INPUT_SKIP_KNOTS`, the ridge regression (no intercept) of what the rest of
    the network misses, ``prediction_target - F``, on a window of the noisy residual
    ``z - alpha_t p`` around each frame, over the first ``windows`` items of ``dataset`` (one noise
    draw each; knot 0 is fitted at t = 0.02, a knot at t = 1 stays zero). Returns, per knot, ``(t, L1 before,
    L1 after)`` of the output on those windows. Why: the network does not learn this map by gradient
    steps (``benchmarks/results/noise_response.md``), and the linear fit is cheap and exact.
    ``mask_padding``: frames past the piece end are left out."""
    decoder = model.decoder
    layer = decoder.input_skip
    if layer is None:
        raise SpecdiffError("input_skip_fit needs a decoder with input_skip_frames > 0")
    channels, width = decoder.config["input_dims"], layer.kernel_size[0]
    layer.weight.zero_()
    was_training = model.training
    model.eval()  # no dropout in the fitted network's output
    batches = []
    for batch in collated_windows(dataset, range(windows), batch_size):
        batches.append((batch, model.batch_cross_cache(batch)))
    generator = torch.Generator().manual_seed(0)
    report = []
    for knot, knot_time in enumerate(INPUT_SKIP_KNOTS):
        if knot_time >= 1.0:
            continue  # pure noise says nothing about x0: that map stays zero
        fit_time = max(knot_time, 0.02)
        rows = []
        gram = torch.zeros(channels * width, channels * width, dtype=torch.float64)
        xty = torch.zeros(channels * width, channels, dtype=torch.float64)
        for batch, cache in batches:
            x0 = batch["target"]
            t = torch.full((x0.shape[0],), fit_time)
            noise = torch.randn(x0.shape, generator=generator)
            z = q_sample(x0, t, noise)
            miss = prediction_target(x0, noise, t, "edm", z) - decoder(None, z, t, cross_cache=cache).float()
            features = _frame_windows(noisy_residual(z, t, cache.frame_prior), width).double()
            miss = miss.reshape(-1, channels)
            keep = _valid_rows(batch, mask_padding)
            if keep is not None:
                features, miss = features[keep], miss[keep]
            gram += features.T @ features
            xty += features.T @ miss.double()
            rows.append((features, miss))
        solution = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=torch.float64), xty)
        # feature index c * width + f is input channel c at offset f, as Conv1d's weight[out, c, f]
        block = solution.T.reshape(channels, channels, width)
        layer.weight[knot * channels : (knot + 1) * channels] = block.to(layer.weight.dtype)
        before = sum(float(miss.abs().sum()) for _, miss in rows) / sum(miss.numel() for _, miss in rows)
        after = sum(float((miss.double() - f @ solution).abs().sum()) for f, miss in rows)
        report.append((fit_time, before, after / sum(miss.numel() for _, miss in rows)))
    model.train(was_training)
    return report


def _frame_windows(x: Tensor, width: int) -> Tensor:
    """``[B, T, C]`` -> ``[B * T, C * width]``: each frame's window of ``width`` frames (zero padded),
    ordered channel-major as a Conv1d weight ``[out, C, width]`` reads it."""
    padded = torch.nn.functional.pad(x.transpose(1, 2), (width // 2, width // 2))
    return padded.unfold(2, width, 1).permute(0, 2, 1, 3).reshape(-1, x.shape[2] * width)
