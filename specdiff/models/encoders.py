"""The notes encoder and the context encoder (spec §3), in the Hugging Face T5 encoder layout."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from specdiff.models.config import ConfigMixin, register_to_config
from specdiff.models.initialisation import init_weights
from specdiff.models.layers import (
    EncodingAndMask,
    GatedGeluFeedForward,
    RMSNorm,
    SequenceDropout,
    _check_ff,
    attend,
    merge_heads,
    split_heads,
)

# ---------------------------------------------------------------------------------------------
# Encoders (HF T5 block layout)
# ---------------------------------------------------------------------------------------------


class T5SelfAttention(nn.Module):
    """HF ``T5Attention`` without relative position bias: projections ``q, k, v, o``."""

    def __init__(self, d_model: int, num_heads: int, d_kv: int, dropout_rate: float) -> None:
        super().__init__()
        inner = num_heads * d_kv
        self.num_heads = num_heads
        self.dropout_rate = dropout_rate
        self.q = nn.Linear(d_model, inner, bias=False)
        self.k = nn.Linear(d_model, inner, bias=False)
        self.v = nn.Linear(d_model, inner, bias=False)
        self.o = nn.Linear(inner, d_model, bias=False)

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        h = self.num_heads
        p = self.dropout_rate if self.training else 0.0
        out = attend(split_heads(self.q(x), h), split_heads(self.k(x), h), split_heads(self.v(x), h), bias, p)
        return self.o(merge_heads(out))


class T5LayerSelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_kv: int, dropout_rate: float) -> None:
        super().__init__()
        self.SelfAttention = T5SelfAttention(d_model, num_heads, d_kv, dropout_rate)
        self.layer_norm = RMSNorm(d_model)
        self.dropout = SequenceDropout(dropout_rate)

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        return x + self.dropout(self.SelfAttention(self.layer_norm(x), bias))


class T5LayerFF(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout_rate: float) -> None:
        super().__init__()
        self.DenseReluDense = GatedGeluFeedForward(d_model, d_ff, dropout_rate)
        self.layer_norm = RMSNorm(d_model)
        self.dropout = SequenceDropout(dropout_rate)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.dropout(self.DenseReluDense(self.layer_norm(x)))


class EncoderBlock(nn.Module):
    """One HF ``T5Block`` of an encoder: ``layer.0`` self-attention, ``layer.1`` feed-forward."""

    def __init__(self, d_model: int, num_heads: int, d_kv: int, d_ff: int, dropout_rate: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            [T5LayerSelfAttention(d_model, num_heads, d_kv, dropout_rate), T5LayerFF(d_model, d_ff, dropout_rate)]
        )

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        return self.layer[1](self.layer[0](x, bias))


def encoder_attention_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Key-padding mask ``[B, L]`` -> additive bias ``[B, 1, 1, L]`` with ``finfo.min`` on padding.

    Using finfo.min (as HF T5 does) rather than -inf keeps a fully masked row finite: it attends
    uniformly, which is what the reference does for the empty first-segment context (spec §9.6).
    """
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    bias = bias.masked_fill(~mask.bool(), torch.finfo(dtype).min)
    return bias[:, None, None, :]


class _T5Encoder(ConfigMixin, nn.Module):
    """Shared stack: ``x -> dropout -> N x EncoderBlock -> RMSNorm -> dropout``. ``config``: the
    constructor's arguments (:func:`specdiff.models.config.register_to_config`)."""

    def _build_stack(
        self, positions: int, d_model: int, num_layers: int, num_heads: int, d_kv: int, d_ff: int, dropout_rate: float
    ) -> None:
        """Everything after the subclass's input layer, then the initial weights: the frozen position
        table of ``positions`` entries and the block stack (registered in the checkpoints' order)."""
        self.position_encoding = nn.Embedding(positions, d_model)
        self.position_encoding.weight.requires_grad = False
        self.dropout_pre = SequenceDropout(dropout_rate)
        self.encoders = nn.ModuleList(
            [EncoderBlock(d_model, num_heads, d_kv, d_ff, dropout_rate) for _ in range(num_layers)]
        )
        self.layer_norm = RMSNorm(d_model)
        self.dropout_post = nn.Dropout(dropout_rate)
        init_weights(self)

    def _run_stack(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.dropout_pre(x)
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):
            # Autocast runs attention in its dtype: float32's finfo.min would become -inf in
            # float16 and a fully masked row (the empty first context, a silent segment) NaN.
            dtype = torch.get_autocast_dtype(x.device.type)
        bias = encoder_attention_bias(mask, dtype)
        for block in self.encoders:
            x = block(x, bias)
        return self.dropout_post(self.layer_norm(x))


class NotesEncoder(_T5Encoder):
    """T5 encoder over MIDI event tokens (spec §3.2; diffusers ``SpectrogramNotesEncoder``).

    ``forward(tokens [B, L], mask [B, L]) -> (encoding [B, L, D], mask)``. ``L`` may be shorter than
    ``max_length``: padding is masked out, so running only over the real tokens (then padding the
    mask) gives the same encodings for the real positions.
    """

    @register_to_config
    def __init__(
        self,
        max_length: int = 2048,
        vocab_size: int = 1536,
        d_model: int = 768,
        dropout_rate: float = 0.1,
        num_layers: int = 12,
        num_heads: int = 12,
        d_kv: int = 64,
        d_ff: int = 2048,
        feed_forward_proj: str = "gated-gelu",
        is_decoder: bool = False,
    ) -> None:
        super().__init__()
        _check_ff(feed_forward_proj, is_decoder)
        self.token_embedder = nn.Embedding(vocab_size, d_model)
        self._build_stack(max_length, d_model, num_layers, num_heads, d_kv, d_ff, dropout_rate)

    def forward(self, encoder_input_tokens: Tensor, encoder_inputs_mask: Tensor) -> EncodingAndMask:
        length = encoder_input_tokens.shape[1]
        positions = torch.arange(length, device=encoder_input_tokens.device)
        # No sqrt(D) scaling of the embedding (spec §3.2).
        x = self.token_embedder(encoder_input_tokens) + self.position_encoding(positions)
        return self._run_stack(x, encoder_inputs_mask), encoder_inputs_mask


class ContinuousEncoder(_T5Encoder):
    """T5 encoder over the previous segment's scaled log-mel (spec §3.3; ``SpectrogramContEncoder``).

    Positions are *terminal relative* as in the original (MSD): ``arange(T)`` rolled by the number of
    valid frames, so the last valid frame always gets position ``T-1``. diffusers' port rolls along
    the wrong axis (a no-op); the two agree for empty and full contexts, the only ones its pipeline uses.
    """

    @register_to_config
    def __init__(
        self,
        input_dims: int = 128,
        targets_context_length: int = 256,
        d_model: int = 768,
        dropout_rate: float = 0.1,
        num_layers: int = 12,
        num_heads: int = 12,
        d_kv: int = 64,
        d_ff: int = 2048,
        feed_forward_proj: str = "gated-gelu",
        is_decoder: bool = False,
    ) -> None:
        super().__init__()
        _check_ff(feed_forward_proj, is_decoder)
        self.input_proj = nn.Linear(input_dims, d_model, bias=False)
        self._build_stack(targets_context_length, d_model, num_layers, num_heads, d_kv, d_ff, dropout_rate)

    def forward(self, encoder_inputs: Tensor, encoder_inputs_mask: Tensor) -> EncodingAndMask:
        x = self.input_proj(encoder_inputs)
        x = x + self.position_encoding(terminal_relative_positions(encoder_inputs_mask))
        return self._run_stack(x, encoder_inputs_mask), encoder_inputs_mask


def terminal_relative_positions(mask: Tensor) -> Tensor:
    """Per example, ``roll(arange(T), n_valid)`` i.e. ``(i - n_valid) mod T`` (spec §3.3)."""
    length = mask.shape[-1]
    n_valid = mask.long().sum(-1, keepdim=True)
    return (torch.arange(length, device=mask.device)[None, :] - n_valid) % length
