"""The model size presets: ``build_models`` (``tiny``, ``small``, ``base``) and ``count_parameters``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from specdiff.models.decoder import DECODER_EXTENSIONS, FilmDecoder
from specdiff.models.encoders import ContinuousEncoder, NotesEncoder

# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------


def _preset(d_model: int, num_heads: int, d_ff: int, layers: int, d_kv: int = 64) -> dict[str, dict[str, Any]]:
    shared = dict(d_model=d_model, num_heads=num_heads, d_kv=d_kv, d_ff=d_ff, num_layers=layers, dropout_rate=0.1)
    return {
        "notes_encoder": dict(max_length=2048, vocab_size=1536, feed_forward_proj="gated-gelu", **shared),
        "continuous_encoder": dict(
            input_dims=128, targets_context_length=256, feed_forward_proj="gated-gelu", **shared
        ),
        "decoder": dict(input_dims=128, targets_length=256, max_decoder_noise_time=20000.0, **shared),
    }


#: Model sizes. ``base`` and ``small`` are the released ``*_with_context`` models (spec §3.1);
#: ``tiny`` trains on a laptop CPU.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "base": _preset(768, 12, 2048, 12),
    "small": _preset(512, 6, 1024, 8),
    "tiny": _preset(256, 4, 512, 4),
}


def build_models(
    preset: str = "tiny", seed: int | None = 0, **overrides: Any
) -> tuple[NotesEncoder, ContinuousEncoder, FilmDecoder]:
    """Freshly initialised ``(notes_encoder, continuous_encoder, decoder)`` of a preset.

    ``overrides`` (e.g. ``d_model=64, num_layers=2``) apply to all three networks where they fit;
    the decoder's extensions (``DECODER_EXTENSIONS``: ``score_roll_features``, ``prediction_type``,
    ``spec_out_bias``) to the decoder.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    accepted = {
        name: set(cfg) | (set(DECODER_EXTENSIONS) if name == "decoder" else set())
        for name, cfg in PRESETS[preset].items()
    }
    configs = {
        name: {**cfg, **{k: v for k, v in overrides.items() if k in accepted[name]}}
        for name, cfg in PRESETS[preset].items()
    }
    with torch.random.fork_rng(devices=[]):  # seed without touching the caller's global RNG
        if seed is not None:
            torch.manual_seed(seed)
        return (
            NotesEncoder(**configs["notes_encoder"]),
            ContinuousEncoder(**configs["continuous_encoder"]),
            FilmDecoder(**configs["decoder"]),
        )


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (the frozen position tables count unless ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
