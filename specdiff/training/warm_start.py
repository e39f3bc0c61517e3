"""Warm starts: a model folder's weights as a training state dict, widening the score-roll weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from specdiff.training.objective import SpectrogramDiffusionModel

# ---------------------------------------------------------------------------------------------
# Warm starts
# ---------------------------------------------------------------------------------------------


def pipeline_folder_state_dict(folder: str | Path) -> dict[str, Tensor]:
    """The float32 state dict of :class:`SpectrogramDiffusionModel` held by a pipeline folder."""
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    pipe = SpectrogramDiffusionPipeline.from_pretrained(folder, inverter=None)
    model = SpectrogramDiffusionModel(pipe.notes_encoder, pipe.continuous_encoder, pipe.decoder)
    return {name: value.float() for name, value in model.state_dict().items()}


#: Decoder weights whose columns are the score roll's features (``specdiff.midi.score_roll``).
ROLL_WEIGHTS = ("decoder.score_projection.weight", "decoder.score_prior_projection.weight")


def _widen_roll_weights(state: dict[str, Any], target: dict[str, Tensor]) -> tuple[dict[str, Any], set[str]]:
    """A warm start from a model on a roll layout into one on a wider layout (base -> extended ->
    context-level -> velocity, ``specdiff.midi.score_roll.ROLL_LAYOUTS``): the roll weights get zero
    columns for the added features (so the model starts with the old one's output). Returns the state
    and the keys widened."""
    from specdiff.midi.score_roll import ROLL_LAYOUTS

    model_state, widened = dict(state["model"]), set()
    for key in ROLL_WEIGHTS:
        old, new = model_state.get(key), target.get(key)
        if old is None or new is None or old.shape == new.shape:
            continue
        # Each layout extends the one before it (score_roll.py), so a narrower one is a prefix.
        wider = old.shape[-1] in ROLL_LAYOUTS and new.shape[-1] in ROLL_LAYOUTS and new.shape[-1] > old.shape[-1]
        if wider and new.shape[:-1] == old.shape[:-1]:
            model_state[key] = torch.cat([old, old.new_zeros(*old.shape[:-1], new.shape[-1] - old.shape[-1])], -1)
            widened.add(key)
    return {**state, "model": model_state}, widened


#: Log power (natural log) an added drum decay template starts at, relative to the fastest existing one's:
#: exp(-8) of a template whose envelope is already the smaller one adds under 0.001 nat where it sounds, so a
#: warm start that adds a decay power keeps the source's output; yet the fit's Adam steps (0.05 each) reach a
#: useful level within its 300 steps, which they would not from a template set at -60.
ADDED_TEMPLATE_LOG_POWER = -8.0


def add_drum_envelopes(state: dict[str, Any], target: dict[str, Tensor]) -> tuple[dict[str, Any], set[str]]:
    """A warm start into a decoder with more drum envelopes than its source: more ``drum_decay_powers`` (the
    source's first, the new ones appended, faster than them) or ``drum_decay_gates`` the source lacks. Each
    added template starts at the fastest existing decay template plus :data:`ADDED_TEMPLATE_LOG_POWER`, and
    the per-timbre offsets of the added envelopes at zero, so the model begins with (nearly) the source's
    output; the drum template fit (``drum_template_fit_steps``) then fits them. Likewise ``release_decay_powers``
    a source lacks: each release column's faster templates start at its own release template plus
    :data:`ADDED_TEMPLATE_LOG_POWER` (their per-timbre offsets are zero-started parameters). ``release_gain_frames``
    a source lacks start at the additive prior's own initial gains (not the source's output: fit them with
    ``release_template_fit_steps``). Returns the state and the keys extended."""
    model_state, extended = dict(state["model"]), set()
    prefix = "decoder.additive_prior."
    fast = model_state.get(prefix + "fast_drum_templates")
    slow = model_state.get(prefix + "drum_templates")
    if slow is None:
        return state, extended
    fastest = (fast[-1:] if fast is not None else slow[-1:]) + ADDED_TEMPLATE_LOG_POWER  # the decay kind is last
    added = 0
    for name in ("fast_drum_templates", "gate_drum_templates"):
        old, new = model_state.get(prefix + name), target.get(prefix + name)
        if new is None or (old is not None and old.shape == new.shape):
            continue
        have = 0 if old is None else old.shape[0]
        if (old is not None and old.shape[1:] != new.shape[1:]) or have > new.shape[0]:
            continue  # load_state_dict reports the mismatch
        start = fastest.expand(new.shape[0] - have, *new.shape[1:])
        model_state[prefix + name] = start.clone() if old is None else torch.cat([old, start])
        extended.add(prefix + name)
        added += new.shape[0] - have
    release = target.get(prefix + "fast_release_templates")
    shared = model_state.get(prefix + "shared_templates")
    if release is not None and prefix + "fast_release_templates" not in model_state and shared is not None:
        from specdiff.models.additive_prior import RELEASE_SOURCE_START

        # each release power starts under its column's own release template, as the added drum envelopes do
        start = shared[RELEASE_SOURCE_START:] + ADDED_TEMPLATE_LOG_POWER
        model_state[prefix + "fast_release_templates"] = start[None].expand(release.shape[0], -1, -1).clone()
        extended.add(prefix + "fast_release_templates")
    gains = target.get(prefix + "release_gains")
    if gains is not None and prefix + "release_gains" not in model_state:
        # the module's own start (a guess the release fit moves: release_template_fit_steps)
        model_state[prefix + "release_gains"] = gains.clone()
        extended.add(prefix + "release_gains")
    offsets_key = prefix + "timbre_drum_decays"
    offsets, wanted = model_state.get(offsets_key), target.get(offsets_key)
    if added and offsets is not None and wanted is not None and offsets.shape != wanted.shape:
        # the envelopes' order: the roll's decay, the powers, the gates; the source's powers end its offsets
        powers_before = 1 + (0 if fast is None else fast.shape[0])
        fast_new = target.get(prefix + "fast_drum_templates")
        powers_after = 1 + (0 if fast_new is None else fast_new.shape[0])
        zeros = offsets.new_zeros(offsets.shape[0], wanted.shape[1] - offsets.shape[1], *offsets.shape[2:])
        split = [offsets[:, :powers_before], zeros[:, : powers_after - powers_before], offsets[:, powers_before:],
                 zeros[:, powers_after - powers_before :]]  # fmt: skip
        model_state[offsets_key] = torch.cat(split, 1)
        extended.add(offsets_key)
    return {**state, "model": model_state}, extended


def reads_gm_programs(path: Path, state: dict[str, Any]) -> bool:
    """Whether the warm start's source (a pipeline folder or a training checkpoint ``state``) has the
    decoder's ``gm_programs`` extension."""
    import json

    if path.is_dir():
        config_path = path / "decoder" / "config.json"
        decoder = json.loads(config_path.read_text()) if config_path.is_file() else {}
    else:
        decoder = (state.get("model_configs") or {}).get("decoder") or {}
    return bool(decoder.get("gm_programs", False))


def slakh_to_gm_programs(model_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The weights of a model that read Slakh classes, rewritten for reading General MIDI programs
    (the decoder's ``gm_programs``) so that it starts with the same output: each program's token
    embedding row and program columns (``score_roll.PROGRAM_ROLL_FEATURES``) start as its class's, and the
    roll's families 12-15, where Slakh folds every program from 88 up into class 88 (family 11), start as
    family 11 (their tonal, family, release and velocity columns, the additive prior's colours). Exact
    where a frame holds at most one family of 11-15 (family features are maxima over their notes)."""
    from specdiff.midi.reader import program_to_slakh
    from specdiff.midi.score_roll import (
        CONTEXT_ROLL_FEATURES,
        DRUM_FEATURES,
        PROGRAM_ROLL_FEATURES,
        RELEASE_FRAMES,
        TONAL_FEATURES,
        TONAL_KINDS,
        VELOCITY_ROLL_FEATURES,
        family_feature,
        release_feature,
        tonal_feature,
    )
    from specdiff.midi.tokenizer import PROGRAM_ID

    state = dict(model_state)
    key = "notes_encoder.token_embedder.weight"
    if key in state:
        table = state[key].clone()
        table[[PROGRAM_ID + p for p in range(128)]] = table[[PROGRAM_ID + program_to_slakh(p) for p in range(128)]]
        state[key] = table
    folded = [8 * family for family in range(12, 16)]  # a program of each family that class 88 held
    tonal_pairs = [(tonal_feature(kind, new, pitch), tonal_feature(kind, 88, pitch))
                   for kind in TONAL_KINDS for new in folded for pitch in range(128)]  # fmt: skip
    # the shared columns (one additive prior template each): per family, and the families' release decays
    shared_pairs = [(family_feature(kind, new), family_feature(kind, 88)) for kind in TONAL_KINDS for new in folded]
    shared_pairs += [(release_feature(i, program=new), release_feature(i, program=88))
                     for i in range(len(RELEASE_FRAMES)) for new in folded]  # fmt: skip
    pairs = tonal_pairs + shared_pairs
    for key in ROLL_WEIGHTS:
        if key not in state:
            continue
        weight, width = state[key].clone(), state[key].shape[-1]
        layout_pairs = list(pairs)
        if width >= VELOCITY_ROLL_FEATURES:
            layout_pairs += [(CONTEXT_ROLL_FEATURES + new // 8, CONTEXT_ROLL_FEATURES + 11) for new in folded]
        if width == PROGRAM_ROLL_FEATURES:
            layout_pairs += [
                (VELOCITY_ROLL_FEATURES + p, VELOCITY_ROLL_FEATURES + program_to_slakh(p)) for p in range(128)
            ]
        destination, source = zip(*layout_pairs)
        weight[:, list(destination)] = weight[:, list(source)]
        state[key] = weight
    shared = state.get("decoder.additive_prior.shared_templates")  # one row per shared roll column
    if shared is not None:
        offset = TONAL_FEATURES + DRUM_FEATURES
        shared = shared.clone()
        destination, source = zip(*shared_pairs)
        shared[[d - offset for d in destination]] = shared[[s - offset for s in source]]
        state["decoder.additive_prior.shared_templates"] = shared
    colours = state.get("decoder.additive_prior.family_colours")
    if colours is not None:
        colours = colours.clone()
        colours[:, 12:16] = colours[:, 11:12]
        state["decoder.additive_prior.family_colours"] = colours
    programs = state.get("decoder.additive_prior.program_colours")
    if programs is not None:
        state["decoder.additive_prior.program_colours"] = programs[[program_to_slakh(p) for p in range(128)]].clone()
    return state
