"""Building blocks shared by the encoders and the decoder (T5.1.1 style: pre-RMSNorm, no biases,
unscaled attention logits, gated tanh-GELU feed-forward) and the frozen position tables."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EncodingAndMask = tuple[Tensor, Tensor]

# Additive mask values used by the reference implementations. They matter for exact parity:
# HF T5 encoders add finfo.min, so a fully masked row (the empty first context) attends uniformly
# instead of producing NaN; the diffusers decoder adds -1e10 to masked cross-attention keys.
DECODER_MASK_VALUE = -1e10


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """T5 layer norm: ``x * rsqrt(mean(x^2) + eps) * w`` with no mean subtraction and no bias."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: Tensor) -> Tensor:
        # Statistics in float32 even under half precision, as HF T5 / diffusers do.
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


def gelu_tanh(x: Tensor) -> Tensor:
    """The tanh approximation of GELU (flax ``nn.gelu`` default, HF ``gelu_new``)."""
    return F.gelu(x, approximate="tanh")


class GatedGeluFeedForward(nn.Module):
    """``wo(gelu_tanh(wi_0 x) * wi_1 x)``; HF T5 calls it ``DenseReluDense`` whatever the activation."""

    def __init__(self, d_model: int, d_ff: int, dropout_rate: float) -> None:
        super().__init__()
        self.wi_0 = nn.Linear(d_model, d_ff, bias=False)
        self.wi_1 = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.dropout = SequenceDropout(dropout_rate)

    def forward(self, x: Tensor) -> Tensor:
        return self.wo(self.dropout(gelu_tanh(self.wi_0(x)) * self.wi_1(x)))


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``[B, L, H*dk] -> [B, H, L, dk]``."""
    batch, length, inner = x.shape
    return x.view(batch, length, num_heads, inner // num_heads).transpose(1, 2)  # no -1: may be empty


def merge_heads(x: Tensor) -> Tensor:
    """``[B, H, L, dk] -> [B, L, H*dk]``."""
    batch, heads, length, d_kv = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * d_kv)


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, dropout_rate: float = 0.0) -> Tensor:
    """Unscaled dot-product attention (T5: scale 1.0).

    Inference goes through fused SDPA. In training, the original drops attention *weights* with one
    mask per (batch, head, key) shared by all queries (MSD ``layers.dot_product_attention``), which
    SDPA cannot express, so that path is written out.
    """
    if dropout_rate == 0.0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
    logits = q @ k.transpose(-1, -2)
    if bias is not None:
        logits = logits + bias
    weights = torch.softmax(logits, dim=-1)
    keep = torch.rand(weights.shape[:-2] + (1, weights.shape[-1]), device=q.device) >= dropout_rate
    weights = weights * keep.to(weights.dtype) / (1.0 - dropout_rate)
    return weights @ v


class SequenceDropout(nn.Module):
    """Dropout whose mask is shared along the sequence axis (flax ``broadcast_dims=(-2,)``).

    The original drops whole feature channels of an example, for every position at once (spec §3;
    MSD ``network.py``). diffusers/HF use element-wise dropout; only training is affected.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[:-2] + (1, x.shape[-1]), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)


# ---------------------------------------------------------------------------------------------
# Initialisation (training from scratch; loading a checkpoint overwrites all of it)
# ---------------------------------------------------------------------------------------------


def fixed_permuted_offset_table(max_len: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """The original ``fixed_permuted_offset`` position table (spec §3.1).

    Sinusoids with ``div_i = exp(-i ln(1e4) / (D/2 - 1))``, one random phase per band, then the D
    columns randomly permuted. It is frozen, so it must be stored with the weights.
    """
    half = dim // 2
    positions = torch.arange(max_len, dtype=torch.float64)[:, None]
    div = torch.exp(-torch.arange(half, dtype=torch.float64) * math.log(1e4) / (half - 1))[None, :]
    phase_sin = torch.rand(half, generator=generator, dtype=torch.float64) * 2 * math.pi
    phase_cos = torch.rand(half, generator=generator, dtype=torch.float64) * 2 * math.pi
    table = torch.cat([torch.sin(positions * div + phase_sin), torch.cos(positions * div + phase_cos)], dim=1)
    return table[:, torch.randperm(dim, generator=generator)].float()


def _head_dim(module: nn.Module) -> int:
    return int(getattr(module, "config", {}).get("d_kv", 64))


def _check_ff(feed_forward_proj: str, is_decoder: bool) -> None:
    if feed_forward_proj != "gated-gelu" or is_decoder:
        raise ValueError("only feed_forward_proj='gated-gelu' encoders (is_decoder=False) are supported")
