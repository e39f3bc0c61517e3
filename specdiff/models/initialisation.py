"""Initialisation for training from scratch (loading a checkpoint overwrites all of it), and
``skip_weight_init`` for building networks whose weights are about to be loaded."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from specdiff.models.layers import RMSNorm, _head_dim, fixed_permuted_offset_table

#: Initial std of each score-roll feature's embedding (see init_weights).
SCORE_PROJECTION_INIT_STD = 0.3


#: ``torch.nn.init`` functions that :func:`skip_weight_init` turns into no-ops while it is active
#: (what the built-in layers' ``reset_parameters`` and our :func:`init_weights` call).
_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)  # fmt: skip
_skip_init_lock = threading.Lock()
_skipping_init = False


def _keep(tensor: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return tensor


@contextlib.contextmanager
def skip_weight_init(device: str | torch.device | None = "meta") -> Iterator[None]:
    """Build modules without initialising their weights, for weights that are loaded right after.

    Inside the block, ``torch.nn.init``'s functions and :func:`init_weights` do nothing, and new
    tensors go to ``device`` (default ``"meta"``: no memory at all; load the weights with
    ``load_state_dict(..., assign=True)``). Like ``init_empty_weights`` / ``no_init_weights`` of
    accelerate and transformers. Besides the work, this skips an import: random initialisation
    on the meta device runs Python reference kernels that import ``torch._dynamo`` (~2 s of a cold
    start). The ``torch.nn.init`` functions are process-wide, so the block holds a lock (blocks run
    one at a time), and a model built by another thread meanwhile would be left uninitialised.
    """
    global _skipping_init
    with _skip_init_lock:
        saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS if hasattr(nn.init, name)}
        _skipping_init = True
        try:
            for name in saved:
                setattr(nn.init, name, _keep)
            with torch.device(device) if device is not None else contextlib.nullcontext():
                yield
        finally:
            for name, function in saved.items():
                setattr(nn.init, name, function)
            _skipping_init = False


@torch.no_grad()
def init_weights(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """T5X-style initialisation: fan-in scaled normals, query scaled by 1/sqrt(d_kv) (no logit scaling).
    Does nothing inside :func:`skip_weight_init`."""
    if _skipping_init:
        return
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            # flax variance_scaling(1.0, "fan_in", "truncated_normal"): the std of a normal truncated
            # at 2 sigma is 0.8796 sigma, so sigma is raised to keep the variance at 1/fan_in.
            std = sub.in_features**-0.5
            if name.endswith((".q", ".to_q")):
                std /= math.sqrt(_head_dim(module))  # T5 folds the 1/sqrt(d_k) logit scale into q
            if name.endswith("score_projection"):
                # A roll row has ~10 nonzero entries among thousands: fan-in scaling would make the
                # score's contribution ~0.03 RMS against ~1 for the other inputs (measured in
                # benchmarks/results/trainability.md), so each entry starts with unit-ish weight.
                std = SCORE_PROJECTION_INIT_STD
            if name.endswith("score_prior_projection"):
                sub.weight.zero_()  # the prior starts at 0 (training fits it: train.fit_score_prior)
                sub.bias.zero_()
                continue
            sigma = std / 0.87962566103423978
            nn.init.trunc_normal_(sub.weight, std=sigma, a=-2 * sigma, b=2 * sigma, generator=generator)
            if sub.bias is not None:
                sub.bias.zero_()
        elif isinstance(sub, nn.Embedding):
            if name.endswith("position_encoding"):
                sub.weight.copy_(fixed_permuted_offset_table(*sub.weight.shape, generator=generator))
            else:
                nn.init.normal_(sub.weight, std=1.0, generator=generator)
        elif isinstance(sub, RMSNorm):
            sub.weight.fill_(1.0)
