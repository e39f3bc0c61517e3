"""Optimisers for training (ORIGINAL.md §4.3): t5x Adafactor as the original used it, AdamW, and a weight EMA.

``Adafactor`` follows ``t5x/adafactor.py`` with the original's settings: factored second moments,
``decay_rate=0.8`` (beta2_t = 1 - (step + 1)^-0.8 for a 0-based step), ``multiply_by_parameter_scale``
(the LR is scaled by ``max(epsilon2, RMS(param))``), no momentum (``beta1=None``), update clipping at
RMS 1.0, ``epsilon1=1e-30``, ``epsilon2=1e-3``, no weight decay, constant LR 1e-3.

How it differs from ``torch.optim.Adafactor`` (which coincides for matrices whose two dims are both
>= 128, and for vectors, up to where epsilon1 enters and while ``lr <= 1/sqrt(step)``):

- t5x adds epsilon1 to every squared gradient before averaging; torch clamps the variance estimate;
- t5x factors only when the *second largest* dim is >= ``min_dim_size_to_factor`` (128) and factors the
  two largest dims; torch factors every tensor with >= 2 dims over its last two dims;
- torch uses a relative step size ``min(lr, 1/sqrt(step))``; t5x uses ``lr`` itself;
- torch's weight decay is ``lr * weight_decay``; t5x's is absolute (unused by the original anyway).

Our ``nn.Linear`` weights are ``[out, in]`` where flax kernels are ``[in, out]``; the factored estimate
``v_row v_col / mean(v_row)`` is symmetric in the two dims, so the update is the same up to rounding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


def _rms(x: Tensor) -> Tensor:
    return x.square().mean().sqrt()


def factored_dims(shape: tuple[int, ...], min_dim_size_to_factor: int = 128) -> tuple[int, int] | None:
    """t5x's heuristic: ``(d1, d0)`` = (second largest, largest) dim when the second largest is big enough.

    ``v_row`` averages the squared gradient over ``d0`` and ``v_col`` over ``d1``.
    """
    if len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda d: shape[d])  # stable, like np.argsort on 2 dims
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return order[-2], order[-1]


class Adafactor(torch.optim.Optimizer):
    """t5x Adafactor (ORIGINAL.md §4.3). Defaults are the original's; ``beta1`` adds t5x-style momentum.

    State per parameter: ``step`` (0-based count of applied updates) and either ``v_row``/``v_col``
    (factored) or ``v``; plus ``m`` when ``beta1`` is set. Everything is computed in float32.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        decay_rate: float = 0.8,
        step_offset: int = 0,
        multiply_by_parameter_scale: bool = True,
        beta1: float | None = None,
        clipping_threshold: float | None = 1.0,
        weight_decay_rate: float | None = None,
        min_dim_size_to_factor: int = 128,
        epsilon1: float = 1e-30,
        epsilon2: float = 1e-3,
        factored: bool = True,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        defaults = dict(
            lr=lr, decay_rate=decay_rate, step_offset=step_offset,
            multiply_by_parameter_scale=multiply_by_parameter_scale, beta1=beta1,
            clipping_threshold=clipping_threshold, weight_decay_rate=weight_decay_rate,
            min_dim_size_to_factor=min_dim_size_to_factor, epsilon1=epsilon1, epsilon2=epsilon2,
            factored=factored,
        )  # fmt: skip
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state: dict[str, Any] = {"step": 0}
        dims = factored_dims(tuple(p.shape), group["min_dim_size_to_factor"]) if group["factored"] else None
        if dims is not None:
            d1, d0 = dims
            state["v_row"] = torch.zeros(p.shape[:d0] + p.shape[d0 + 1 :], dtype=torch.float32, device=p.device)
            state["v_col"] = torch.zeros(p.shape[:d1] + p.shape[d1 + 1 :], dtype=torch.float32, device=p.device)
        else:
            state["v"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
        if group["beta1"] is not None:
            state["m"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
        return state

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch.optim.Optimizer API)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adafactor does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state.update(self._init_state(p, group))
                self._update(p, p.grad, state, group)
        return loss

    @staticmethod
    def _update(p: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """One t5x ``apply_param_gradient`` for one parameter."""
        grad = grad.float()
        param = p.float()
        step = state["step"] - group["step_offset"]
        decay = 1.0 - (step + 1.0) ** (-group["decay_rate"])
        mixing = 1.0 - decay

        update_scale: Tensor | float = group["lr"]
        if group["multiply_by_parameter_scale"]:
            update_scale = update_scale * torch.clamp(_rms(param), min=group["epsilon2"])

        grad_sqr = grad * grad + group["epsilon1"]
        if "v_row" in state:
            d1, d0 = factored_dims(tuple(p.shape), group["min_dim_size_to_factor"])
            v_row = state["v_row"].mul_(decay).add_(grad_sqr.mean(dim=d0), alpha=mixing)
            v_col = state["v_col"].mul_(decay).add_(grad_sqr.mean(dim=d1), alpha=mixing)
            reduced_d1 = d1 - (1 if d0 < d1 else 0)  # d1's index in v_row (d0 removed)
            row_factor = (v_row / v_row.mean(dim=reduced_d1, keepdim=True)).rsqrt()
            col_factor = v_col.rsqrt()
            y = grad * row_factor.unsqueeze(d0) * col_factor.unsqueeze(d1)
        else:
            v = state["v"].mul_(decay).add_(grad_sqr, alpha=mixing)
            y = grad * v.rsqrt()

        if group["clipping_threshold"] is not None:
            y = y / torch.clamp(_rms(y) / group["clipping_threshold"], min=1.0)

        subtrahend = update_scale * y
        if group["beta1"] is not None:
            subtrahend = state["m"].mul_(group["beta1"]).add_(subtrahend, alpha=1.0 - group["beta1"])
        if group["weight_decay_rate"] is not None:
            param = param * (1.0 - group["weight_decay_rate"])
        p.copy_(param - subtrahend)
        state["step"] += 1


def trainable_parameters(model: nn.Module) -> list[Tensor]:
    """Parameters that the optimiser updates: the frozen position tables (``requires_grad=False``) are left out."""
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(
    model: nn.Module,
    name: str = "adafactor",
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    embedding_lr_scale: float = 1.0,
) -> torch.optim.Optimizer:
    """``"adafactor"`` (the original, ORIGINAL.md §4.3) or ``"adamw"`` over the trainable parameters, constant LR.

    ``embedding_lr_scale != 1``: the trainable embedding tables (the notes encoder's token
    embeddings) get ``lr * embedding_lr_scale``. They start at unit scale (T5), so at the matrices'
    LR each row moves by a small fraction of its norm per update, and a row only learns in the
    batches whose segments hold its token. Every parameter group carries ``lr_scale`` (its LR
    relative to the base LR) for schedules.
    """
    params = trainable_parameters(model)
    if embedding_lr_scale != 1.0:
        embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.weight.requires_grad}
        params = [
            {"params": [p for p in params if id(p) not in embeddings], "lr_scale": 1.0},
            {"params": [p for p in params if id(p) in embeddings], "lr": lr * embedding_lr_scale,
             "lr_scale": embedding_lr_scale},
        ]  # fmt: skip
    if name == "adafactor":
        return Adafactor(params, lr=lr, weight_decay_rate=weight_decay or None)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adafactor' or 'adamw'")


class EMA:
    """Exponential moving average of a model's trainable parameters, used for sampling and export.

    ``shadow = d * shadow + (1 - d) * param`` after each optimiser step, with the warm-up
    ``d_n = min(decay, (1 + n) / (10 + n))`` for the n-th update (0-based) when ``warmup`` is on, so
    the average is not dominated by the random initial weights early in training.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {
            name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad
        }

    def decay_at(self, n: int) -> float:
        """The decay used for the n-th (0-based) update."""
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.decay_at(self.num_updates)
        params = dict(model.named_parameters())
        shadows = list(self.shadow.values())
        torch._foreach_lerp_(shadows, [params[name].detach().float() for name in self.shadow], weight)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's trainable parameters with the averages."""
        params = dict(model.named_parameters())
        for name, value in self.shadow.items():
            params[name].copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state does not match the model: {sorted(missing)[:5]}")
        self.decay, self.warmup, self.num_updates = state["decay"], state["warmup"], state["num_updates"]
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
