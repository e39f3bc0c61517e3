"""t5x Adafactor (ORIGINAL.md §4.3) against hand-computed steps and torch.optim.Adafactor; the EMA."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from specdiff.models.presets import build_models
from specdiff.training.optim import EMA, Adafactor, build_optimizer, factored_dims, trainable_parameters

torch.set_num_threads(1)

LR, EPS1, EPS2 = 1e-3, 1e-30, 1e-3


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x * x)))


class Reference:
    """The original update in float64 numpy, written from the t5x formulas in the symmetric form
    V = outer(row means, col means) / mean (no choice of which dim is "row")."""

    def __init__(self, param: np.ndarray, factored: bool):
        self.param, self.factored, self.step = param.astype(np.float64), factored, 0
        self.r = self.c = self.v = 0.0
        self.last_clip = 1.0

    def update(self, grad: np.ndarray) -> np.ndarray:
        g = grad.astype(np.float64)
        decay = 1.0 - (self.step + 1.0) ** -0.8
        g2 = g * g + EPS1
        if self.factored:
            self.r = decay * self.r + (1 - decay) * g2.mean(axis=1)
            self.c = decay * self.c + (1 - decay) * g2.mean(axis=0)
            v = np.outer(self.r, self.c) / self.r.mean()
        else:
            self.v = decay * self.v + (1 - decay) * g2
            v = self.v
        y = g / np.sqrt(v)
        self.last_clip = max(1.0, rms(y) / 1.0)
        y = y / self.last_clip
        self.param = self.param - LR * max(EPS2, rms(self.param)) * y
        self.step += 1
        return self.param


def run_adafactor(param0: torch.Tensor, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    p = nn.Parameter(param0.clone())
    opt = Adafactor([p], lr=LR)
    out = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        out.append(p.detach().clone())
    return out


def test_factoring_rule_is_t5x_heuristic():
    assert factored_dims((768, 2048)) == (0, 1)
    assert factored_dims((2048, 768)) == (1, 0)
    assert factored_dims((128, 768)) == (0, 1)  # 128 is enough
    assert factored_dims((127, 768)) is None
    assert factored_dims((768,)) is None
    assert factored_dims((4, 200, 300)) == (1, 2)  # the two largest dims


@pytest.mark.parametrize(
    "shape, factored", [((256, 128), True), ((128, 300), True), ((64, 300), False), ((300,), False)]
)
def test_three_steps_match_hand_computation(shape, factored):
    gen = torch.Generator().manual_seed(sum(shape))
    param0 = torch.randn(shape, generator=gen) * 0.05
    # a few large entries make the factored update's RMS exceed 1, so update clipping is exercised
    grads = [torch.randn(shape, generator=gen) * (1 + 20 * (torch.rand(shape, generator=gen) > 0.99)) for _ in range(3)]
    ours = run_adafactor(param0, grads)
    ref = Reference(param0.double().numpy(), factored)
    update_size = LR * rms(param0.double().numpy())
    clips = []
    for step, g in enumerate(grads):
        expected = ref.update(g.double().numpy())
        clips.append(ref.last_clip)
        # float32 rounding of the parameters is ~1e-8; a wrong formula or clip changes updates by >1%
        np.testing.assert_allclose(ours[step].double().numpy(), expected, rtol=0, atol=1e-2 * update_size)
    if factored:
        assert max(clips) > 1.05, "test data should trigger update clipping"


def test_first_step_is_sign_times_scaled_lr_when_unfactored():
    # step 0: decay 0 so v = g^2 and y = sign(g) with RMS 1 (no clipping); scale = max(eps2, RMS(param))
    p0 = torch.tensor([0.3, -0.4, 0.0, 0.5])
    g = torch.tensor([2.0, -0.001, 5.0, -1.0])
    (p1,) = run_adafactor(p0, [g])
    expected = p0 - LR * rms(p0.double().numpy()) * torch.sign(g)
    assert torch.allclose(p1, expected, atol=1e-9)
    (z1,) = run_adafactor(torch.zeros(4), [g])  # zero parameters: the scale floor epsilon2
    assert torch.allclose(z1, -LR * EPS2 * torch.sign(g), atol=1e-12)


def test_matches_torch_adafactor_where_semantics_coincide():
    """torch.optim.Adafactor == t5x for vectors and for matrices with both dims >= 128 at lr <= 1/sqrt(step)."""
    gen = torch.Generator().manual_seed(3)
    for shape in [(256, 128), (300,)]:
        p0 = torch.randn(shape, generator=gen) * 0.1
        grads = [torch.randn(shape, generator=gen) for _ in range(4)]
        ours = run_adafactor(p0, grads)[-1]
        q = nn.Parameter(p0.clone())
        ref = torch.optim.Adafactor([q], lr=LR, eps=(EPS1, EPS2), d=1.0, beta2_decay=-0.8, weight_decay=0.0)
        for g in grads:
            q.grad = g.clone()
            ref.step()
        update_size = LR * float(p0.square().mean().sqrt())
        assert torch.allclose(ours, q.detach(), rtol=0, atol=1e-2 * update_size), shape
    # ...and differ for a small matrix: t5x keeps a full second moment, torch factors it
    p0 = torch.randn(64, 32, generator=gen) * 0.1
    grads = [torch.randn(64, 32, generator=gen) for _ in range(3)]
    ours = run_adafactor(p0, grads)[-1]
    q = nn.Parameter(p0.clone())
    ref = torch.optim.Adafactor([q], lr=LR, eps=(EPS1, EPS2))
    for g in grads:
        q.grad = g.clone()
        ref.step()
    assert (ours - q.detach()).abs().max() > 0.1 * LR * float(p0.square().mean().sqrt())


def test_state_dict_round_trip_continues_identically():
    gen = torch.Generator().manual_seed(4)
    shapes = [(200, 130), (50,)]
    params = [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(3)]
    opt = Adafactor(params)
    for step in range(2):
        for p, g in zip(params, grads[step]):
            p.grad = g
        opt.step()
    buffer = io.BytesIO()  # serialise, as a checkpoint does (state_dict() aliases the live tensors)
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    clones = [nn.Parameter(p.detach().clone()) for p in params]
    opt2 = Adafactor(clones)
    opt2.load_state_dict(saved)
    for group in (zip(params, grads[2]), zip(clones, grads[2])):
        for p, g in group:
            p.grad = g.clone()
    opt.step()
    opt2.step()
    for a, b in zip(params, clones):
        assert torch.equal(a, b)
    assert opt2.state[clones[0]]["step"] == 3 and "v_row" in opt2.state[clones[0]]


def test_frozen_position_tables_are_excluded():
    model = nn.ModuleList(build_models("tiny", d_model=32, num_layers=1, d_ff=64, num_heads=2, d_kv=16))
    opt = build_optimizer(model, "adafactor")
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    tables = [p for name, p in model.named_parameters() if name.endswith("position_encoding.weight")]
    assert len(tables) == 3 and not any(id(t) in in_opt for t in tables)
    assert len(in_opt) == len(trainable_parameters(model)) == sum(1 for p in model.parameters()) - 3
    adamw = build_optimizer(model, "adamw", lr=3e-4, weight_decay=0.01)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["lr"] == 3e-4
    with pytest.raises(ValueError):
        build_optimizer(model, "sgd")


def test_ema_warmup_and_average_by_hand():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = EMA(lin, decay=0.5)
    assert [ema.decay_at(n) for n in range(3)] == pytest.approx([0.1, 2 / 11, 0.25])
    assert ema.decay_at(100) == 0.5
    expected = np.zeros(2)
    for n, value in enumerate([1.0, 2.0, 4.0, 8.0, 16.0, 32.0]):
        with torch.no_grad():
            lin.weight.fill_(value)
        ema.update(lin)
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
    assert np.allclose(ema.shadow["weight"].numpy().ravel(), expected)
    copy = nn.Linear(2, 1, bias=False)
    ema.copy_to(copy)
    assert np.allclose(copy.weight.detach().numpy().ravel(), expected)
    restored = EMA(copy, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 6 and restored.decay == 0.5
    assert torch.equal(restored.shadow["weight"], ema.shadow["weight"])


def test_ema_without_warmup_uses_the_plain_decay():
    lin = nn.Linear(1, 1, bias=False)
    ema = EMA(lin, decay=0.999, warmup=False)
    start = float(lin.weight.detach())
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)
    assert float(ema.shadow["weight"]) == pytest.approx(0.999 * start + 0.001 * (start + 1.0))
