"""Samplers (ORIGINAL.md §4.1, §5.1): the original log-SNR DDPM sampler, diffusers adapters, and CFG.

Expectations are derived independently: closed-form schedule values, the textbook Gaussian
posterior q(z_s | z_t, x0) written with alpha_{t|s}, an exactly solvable one-point data set, and
diffusers' own DDPMScheduler run side by side.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from specdiff.audio.mel import NAT_PER_UNIT
from specdiff.errors import SpecdiffError
from specdiff.sampling import diffusion
from specdiff.sampling import sampler as S

torch.set_num_threads(1)

SHAPE = (1, 256, 128)
B = math.atan(math.exp(-10.0))  # ORIGINAL.md §4.1
A = math.atan(math.exp(10.0)) - B


def alpha_sigma_ref(t: float) -> tuple[float, float]:
    """alpha^2 = sigmoid(logsnr), logsnr = -2 ln tan(a t + b), in float64 (ORIGINAL.md §4.1)."""
    lsnr = -2.0 * math.log(math.tan(A * t + B))
    return math.sqrt(1 / (1 + math.exp(-lsnr))), math.sqrt(1 / (1 + math.exp(lsnr)))


def perfect_eps(x_star: torch.Tensor, sampler) -> callable:
    """The exact eps-predictor for data that is the single point x_star, on the sampler's schedule."""

    def eps(z: torch.Tensor, noise_time: torch.Tensor) -> torch.Tensor:
        if isinstance(sampler, S.CosineLogSNRSampler):
            a, s = alpha_sigma_ref(float(noise_time))
        else:
            t = round(float(noise_time) * sampler.num_train_timesteps)
            abar = float(getattr(sampler, "scheduler", sampler).alphas_cumprod[t])  # DDIMSampler: its own
            a, s = math.sqrt(abar), math.sqrt(1 - abar)
        return (z - a * x_star) / s

    return eps


# ---------------------------------------------------------------------------------------------
# The schedule
# ---------------------------------------------------------------------------------------------


def test_schedule_endpoints_and_midpoint():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    lsnr = S.logsnr(t)
    assert lsnr[0].item() == pytest.approx(20.0, abs=1e-6)
    assert lsnr[-1].item() == pytest.approx(-20.0, abs=1e-6)
    assert torch.all(lsnr[1:] < lsnr[:-1])  # strictly decreasing: more noise with time
    alpha, sigma = S.alpha_sigma(torch.tensor(0.5, dtype=torch.float64))
    assert alpha.item() ** 2 == pytest.approx(0.5, abs=1e-12)  # a/2 + b = pi/4 exactly
    alpha, sigma = S.alpha_sigma(t)
    assert torch.allclose(alpha**2, torch.sigmoid(lsnr), atol=1e-12)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t), atol=1e-12)
    for tt in (0.1, 0.37, 0.9):
        a, s = alpha_sigma_ref(tt)
        assert S.alpha_sigma(torch.tensor(tt, dtype=torch.float64))[0].item() == pytest.approx(a, rel=1e-12)


def test_original_timesteps_and_noise_time():
    sampler = S.CosineLogSNRSampler()
    sampler.set_timesteps(4)
    assert sampler.timesteps.tolist() == [1.0, 0.75, 0.5, 0.25]
    assert sampler.noise_time(sampler.timesteps[1]).dtype == torch.float32
    assert sampler.noise_time(sampler.timesteps[1]).item() == 0.75
    with pytest.raises(ValueError):
        sampler.step(torch.zeros(SHAPE), 0.6, torch.zeros(SHAPE))  # not one of its times


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------


def test_one_step_matches_textbook_posterior():
    n, i = 4, 2  # t = 0.75 -> s = 0.5
    t, s = (i + 1) / n, i / n
    g = torch.Generator().manual_seed(0)
    z = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    eps = torch.randn(SHAPE, generator=g, dtype=torch.float64) * 3  # large: x0 needs clipping
    sampler = S.CosineLogSNRSampler()
    sampler.set_timesteps(n)
    out = sampler.step(eps.float(), sampler.timesteps[n - 1 - i], z.float(), generator=torch.Generator().manual_seed(7))

    a_t, s_t = alpha_sigma_ref(t)
    a_s, s_s = alpha_sigma_ref(s)
    x0 = ((z - s_t * eps) / a_t).clamp(-1, 1)
    assert (x0.abs() == 1).float().mean() > 0.1  # the clip is exercised
    a_ts = a_t / a_s  # q(z_t | z_s) = N(a_ts z_s, var_ts)
    var_ts = s_t**2 - a_ts**2 * s_s**2
    mean = a_ts * s_s**2 / s_t**2 * z + a_s * var_ts / s_t**2 * x0
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7)).double()
    expected = mean + math.sqrt(var_ts) * noise  # "large" variance = the forward step's variance
    assert torch.allclose(out.pred_original_sample.double(), x0, atol=1e-5)
    assert (out.prev_sample.double() - expected).abs().max() < 1e-5


def test_last_step_returns_clipped_x0_without_noise():
    sampler = S.CosineLogSNRSampler()
    sampler.set_timesteps(10)
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    a, s = alpha_sigma_ref(0.1)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    out = sampler.step(eps, sampler.timesteps[-1], z, generator=g)
    assert torch.equal(g.get_state(), state)  # no noise drawn
    assert torch.allclose(out.prev_sample, ((z - s * eps) / a).clamp(-1, 1), atol=1e-6)


@pytest.mark.parametrize(
    "name, steps",
    [("original", 1), ("original", 7), ("ddpm", 1), ("ddpm", 7), ("ddim", 7), ("dpmsolver++", 7), ("unipc", 7)],
)
def test_perfect_predictor_recovers_the_single_data_point(name, steps):
    # Data = one point x*: the exact eps-predictor makes every x0 prediction x*, so any correct
    # sampler ends exactly on x* (the noise it adds is along directions the predictor removes).
    # float64: at t=1, alpha ~ 5e-5 and float32 cancellation in (z - sigma eps) / alpha would show.
    # (The diffusers solvers keep float32 tables, so their 1-step runs are not exact; not tested.)
    if name != "original":
        pytest.importorskip("diffusers")
    x_star = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.8 - 0.9
    sampler = S.make_scheduler(name)
    g = torch.Generator().manual_seed(1)
    noise = S.randn(SHAPE, g, "cpu", torch.float64)
    out = S.sample_loop(sampler, perfect_eps(x_star, sampler), noise, steps, g)
    assert (out - x_star).abs().max() < 1e-5


def test_same_generator_same_samples():
    def toy_eps(z, noise_time):  # any smooth function of (z, t)
        return torch.tanh(z * 0.7 + noise_time)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return S.sample_loop(S.CosineLogSNRSampler(), toy_eps, S.randn(SHAPE, g, "cpu"), 6, g)

    assert torch.equal(run(3), run(3))
    assert not torch.allclose(run(3), run(4))


# ---------------------------------------------------------------------------------------------
# diffusers adapters
# ---------------------------------------------------------------------------------------------


def test_ddpm_adapter_reproduces_diffusers_ddpm_scheduler():
    diffusers = pytest.importorskip("diffusers")
    config = {k: v for k, v in S.OFFICIAL_SCHEDULER_CONFIG.items() if not k.startswith("_")}
    reference = diffusers.DDPMScheduler(**config)
    ours = S.make_scheduler("ddpm")
    for sched in (reference, ours):
        sched.set_timesteps(100)
    assert reference.timesteps.tolist() == list(range(990, -1, -10))  # "leading" (ORIGINAL.md §5.1)
    assert ours.timesteps.tolist() == reference.timesteps.tolist()

    def toy_eps(z, t):
        return torch.sin(3 * z) * (1 - t)

    g_ref, g_ours = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x_ref = torch.randn(SHAPE, generator=g_ref)
    x_ours = S.randn(SHAPE, g_ours, "cpu")
    for t in reference.timesteps:
        # The diffusers pipeline feeds the decoder t / num_train_timesteps (ORIGINAL.md §5.1).
        x_ref = reference.step(toy_eps(x_ref, t / 1000), t, x_ref, generator=g_ref).prev_sample
        nt = ours.noise_time(t)
        assert nt.dtype == torch.float32 and nt == t / 1000
        x_ours = ours.step(toy_eps(x_ours, nt), t, x_ours, generator=g_ours).prev_sample
    assert torch.equal(x_ours, x_ref)


@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_native_ddim_is_diffusers_ddim_step_for_step(steps):
    # DDIMSampler exists so that the bundled model (1 DDIM step) needs no diffusers import; it must
    # give diffusers' DDIMScheduler's numbers exactly, with make_scheduler's config.
    diffusers = pytest.importorskip("diffusers")
    config = {k: v for k, v in S.OFFICIAL_SCHEDULER_CONFIG.items() if not k.startswith("_")}
    config.update(trained_betas=S.model_schedule_betas(1000), timestep_spacing="trailing")
    accepted = set(inspect.signature(diffusers.DDIMScheduler.__init__).parameters)
    reference = S.DiffusersSampler(
        diffusers.DDIMScheduler(**{k: v for k, v in config.items() if k in accepted}),
        final_x0=True,
        noise_times=S.model_schedule_noise_times(1000),
    )
    ours = S.make_scheduler("ddim")
    assert isinstance(ours, S.DDIMSampler)

    def toy_eps(z, t):
        return torch.sin(3 * z) * (1 - t) + 0.3 * z

    results = []
    for sampler in (reference, ours):
        g = torch.Generator().manual_seed(5)
        results.append(S.sample_loop(sampler, toy_eps, S.randn(SHAPE, g, "cpu"), steps, g))
        assert [int(t) for t in sampler.timesteps] == [int(t) for t in reference.timesteps]
    assert torch.equal(results[0], results[1])
    assert results[1].abs().max() <= 1.0  # ends on the clipped x0


def test_solver_configs():
    pytest.importorskip("diffusers")
    dpm = S.make_scheduler("dpmsolver++")
    assert type(dpm.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.solver_order == 2
    assert dpm.config.beta_schedule == "squaredcos_cap_v2"  # from the checkpoint's config (betas replaced)
    for name in ("ddim", "dpmsolver++", "unipc"):
        s = S.make_scheduler(name)
        s.set_timesteps(10)
        assert int(s.timesteps[0]) == 999  # "trailing": the first step starts from pure noise
    with pytest.raises(SpecdiffError, match="unknown scheduler"):
        S.make_scheduler("euler")
    assert isinstance(S.make_scheduler("original"), S.CosineLogSNRSampler)


def test_solvers_run_on_the_models_own_schedule():
    pytest.importorskip("diffusers")
    for name in ("ddim", "dpmsolver++", "unipc"):
        sampler = S.make_scheduler(name)
        assert sampler.config.trained_betas is not None
        table = getattr(sampler, "scheduler", sampler).alphas_cumprod.double()
        for t in (1, 10, 250, 500, 900, 990, 999):
            a, _ = alpha_sigma_ref(t / 1000)  # ORIGINAL.md §4.1, no 0.008 offset
            assert table[t].item() == pytest.approx(a**2, rel=1e-5)
            assert sampler.noise_time(t).item() == pytest.approx(t / 1000, abs=1e-7)
        # t = 0: the table's alpha_bar stays below 1 in float32; the noise time is the matching one.
        a0, _ = alpha_sigma_ref(sampler.noise_time(0).item())
        assert table[0].item() < 1.0 and a0**2 == pytest.approx(table[0].item(), abs=1e-9)
    # "ddpm" stays the checkpoint's Nichol schedule: diffusers' pipeline, step for step.
    ddpm = S.make_scheduler("ddpm")
    assert ddpm.config.trained_betas is None and ddpm.noise_time(500).item() == 0.5
    assert ddpm.scheduler.alphas_cumprod[500].item() == pytest.approx(0.4923, abs=1e-4)  # ORIGINAL.md §5.1 table


@pytest.mark.parametrize("name, steps", [("ddim", 7), ("dpmsolver++", 7), ("unipc", 7), ("ddpm", 20)])
def test_model_schedule_matters_for_a_network_trained_on_it(name, steps):
    # The exact eps-predictor of the *continuous* schedule the network was trained on (ORIGINAL.md §4.1):
    # on the model schedule every solver lands on the data point; on the checkpoint's Nichol
    # schedule it does not (its alpha_bar differs by up to 25% where t -> 1, and by 1e-4 at t=0).
    pytest.importorskip("diffusers")
    x_star = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.8 - 0.9

    def trained_eps(z, noise_time):
        a, s = alpha_sigma_ref(float(noise_time))
        return (z - a * x_star) / s

    errors = {}
    for model_schedule in (True, False):
        sampler = S.make_scheduler(name, model_schedule=model_schedule)
        g = torch.Generator().manual_seed(1)
        out = S.sample_loop(sampler, trained_eps, S.randn(SHAPE, g, "cpu", torch.float64), steps, g)
        errors[model_schedule] = (out - x_star).abs().max().item()
    assert errors[True] < 1e-5
    assert errors[False] > 1e-2


def test_randn_with_one_generator_per_row():
    gens = [torch.Generator().manual_seed(s) for s in (3, 4, 5)]
    rows = S.randn((3, 2, 4), gens, "cpu")
    for i, seed in enumerate((3, 4, 5)):
        assert torch.equal(rows[i : i + 1], S.randn((1, 2, 4), torch.Generator().manual_seed(seed), "cpu"))
    with pytest.raises(ValueError):
        S.randn((2, 2, 4), gens, "cpu")


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def decoder_and_encodings():
    from specdiff.models.decoder import FilmDecoder

    torch.manual_seed(0)
    dec = FilmDecoder(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=48).eval()
    g = torch.Generator().manual_seed(1)
    notes = (torch.randn(1, 40, 32, generator=g), torch.tensor([[True] * 30 + [False] * 10]))
    context = (torch.randn(1, 256, 32, generator=g), torch.ones(1, 256, dtype=torch.bool))
    return dec, [notes, context]


def test_guidance_one_is_the_plain_conditional_prediction(decoder_and_encodings):
    dec, encodings = decoder_and_encodings
    z, t = torch.randn(SHAPE), torch.tensor(0.3)
    with torch.no_grad():
        guided = S.GuidedDenoiser(dec, encodings, guidance_scale=1.0)(z, t)
        plain = dec(encodings, z, t.reshape(1))
    assert not S.GuidedDenoiser(dec, encodings, 1.0).guided  # no unconditional pass at all
    assert (guided - plain).abs().max() < 1e-5


def test_guidance_combines_conditional_and_zeroed_unconditional(decoder_and_encodings):
    dec, encodings = decoder_and_encodings
    z, t = torch.randn(SHAPE), torch.tensor(0.6)
    calls = []
    hook = dec.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(kwargs["decoder_input_tokens"].shape[0]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            guided = S.GuidedDenoiser(dec, encodings, guidance_scale=2.5)(z, t)
    finally:
        hook.remove()
    assert calls == [2]  # cond + uncond in one batched decoder call
    with torch.no_grad():
        cond = dec(encodings, z, t.reshape(1))
        # Unconditional (ORIGINAL.md §4.1): every encoding and mask times zero.
        uncond = dec([(e * 0, m & False) for e, m in encodings], z, t.reshape(1))
    assert (guided - (2.5 * cond - 1.5 * uncond)).abs().max() < 1e-4
    assert (cond - uncond).abs().max() > 1e-3  # guidance actually changes something


def test_cap_guided_x0_caps_each_bin_at_the_conditional_maximum_plus_the_ceiling():
    # Two frames, three bins. Conditional maxima per bin: 0.2, -0.5, 0.9 (the 1.5 is clipped to 1).
    cond = torch.tensor([[[0.2, -0.9, 1.5], [-0.4, -0.5, 0.3]]])
    guided = torch.tensor([[[0.5, -1.0, 0.95], [0.1, -0.45, -0.2]]])
    capped = S.cap_guided_x0(guided, cond, ceiling=0.0)
    # Hand-derived: min(guided, per-bin cap (0.2, -0.5, 1.0)).
    assert torch.equal(capped, torch.tensor([[[0.2, -1.0, 0.95], [0.1, -0.5, -0.2]]]))
    lowered = S.cap_guided_x0(guided, cond, ceiling=-0.1)  # caps 0.1, -0.6, 0.9
    assert torch.allclose(lowered, torch.tensor([[[0.1, -1.0, 0.9], [0.1, -0.6, -0.2]]]))


def test_cap_guided_x0_lift_caps_each_element_at_the_conditional_value_plus_the_lift():
    cond = torch.tensor([[[0.2, -0.9, 1.5], [-0.4, -0.5, 0.3]]])
    guided = torch.tensor([[[0.5, -1.0, 0.95], [0.1, -0.45, -0.2]]])
    # Hand-derived: min(guided, cond + 0.1) element by element; lowering passes.
    lifted = S.cap_guided_x0(guided, cond, ceiling=None, lift=0.1)
    assert torch.allclose(lifted, torch.tensor([[[0.3, -1.0, 0.95], [-0.3, -0.45, -0.2]]]))
    both = S.cap_guided_x0(guided, cond, ceiling=-0.1, lift=0.1)  # and the ceiling's caps 0.1, -0.6, 0.9
    assert torch.allclose(both, torch.tensor([[[0.1, -1.0, 0.9], [-0.3, -0.6, -0.2]]]))


def test_guidance_lift_keeps_the_guided_x0_within_the_lift_of_the_conditional_one(decoder_and_encodings):
    dec, encodings = decoder_and_encodings
    z, t = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4)), torch.tensor(0.6)
    alpha, sigma = (float(v) for v in diffusion.alpha_sigma(0.6))
    with torch.no_grad():
        cond = dec(encodings, z, t.reshape(1))
        plain = S.GuidedDenoiser(dec, encodings, guidance_scale=2.5)(z, t)
        lifted = S.GuidedDenoiser(dec, encodings, guidance_scale=2.5, guidance_lift=0.0)(z, t)
    x0 = {name: (z - sigma * eps) / alpha for name, eps in (("cond", cond), ("plain", plain), ("lifted", lifted))}
    assert bool((x0["plain"] > x0["cond"] + 1e-3).any())  # plain guidance lifts somewhere ...
    assert float((x0["lifted"] - x0["cond"]).max()) < 1e-4  # ... with lift 0 nowhere
    lowered = x0["plain"] <= x0["cond"]  # where guidance lowers, nothing changes
    assert (x0["lifted"] - x0["plain"])[lowered].abs().max() < 1e-4


def test_capped_guidance_is_plain_guidance_where_nothing_reaches_the_ceiling(decoder_and_encodings):
    # The combination moves to x0 space to apply the cap; with a ceiling nothing reaches it is the
    # same affine mix, so the eps must equal plain CFG's.
    dec, encodings = decoder_and_encodings
    z, t = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)), torch.tensor(0.6)
    with torch.no_grad():
        plain = S.GuidedDenoiser(dec, encodings, guidance_scale=2.5)(z, t)
        roomy = S.GuidedDenoiser(dec, encodings, guidance_scale=2.5, guidance_ceiling=1e6)(z, t)
    assert (plain - roomy).abs().max() < 1e-4


def test_capped_guidance_keeps_the_x0_estimate_under_the_conditional_bin_maxima(decoder_and_encodings):
    dec, encodings = decoder_and_encodings
    z, t = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)), torch.tensor(0.6)
    alpha, sigma = (float(v) for v in diffusion.alpha_sigma(0.6))
    ceiling = -0.3  # natural-log mel
    with torch.no_grad():
        cond = dec(encodings, z, t.reshape(1))
        plain = S.GuidedDenoiser(dec, encodings, guidance_scale=2.5)(z, t)
        capped = S.GuidedDenoiser(dec, encodings, guidance_scale=2.5, guidance_ceiling=ceiling)(z, t)
    x0 = {name: (z - sigma * eps) / alpha for name, eps in (("cond", cond), ("plain", plain), ("capped", capped))}
    cap = x0["cond"].clamp(-1, 1).amax(dim=-2, keepdim=True) + ceiling / NAT_PER_UNIT
    assert bool((x0["plain"] > cap + 1e-3).any())  # plain guidance overshoots somewhere ...
    assert float((x0["capped"] - cap).max()) < 1e-4  # ... the capped one nowhere
    below = x0["plain"] <= cap  # and where plain guidance stays under the cap, nothing changes
    assert (x0["capped"] - x0["plain"])[below].abs().max() < 1e-4


def test_unconditional_zeroes_encodings_and_masks():
    enc = [(torch.randn(1, 5, 4), torch.ones(1, 5, dtype=torch.bool))]
    [(e, m)] = S.unconditional(enc)
    assert torch.equal(e, torch.zeros(1, 5, 4)) and m.dtype == torch.bool and not m.any()


def test_ddim_final_noise_time_spreads_steps_down_to_it_and_ends_on_its_x0():
    # final_noise_time = 0.8: 4 steps at noise times 1, 0.933, 0.867, 0.8 (hand-derived table indices);
    # each step is the DDIM update to the next of them, and the last one's clipped x0 is the sample.
    sampler = S.make_scheduler("ddim", final_noise_time=0.8)
    sampler.set_timesteps(4)
    assert [int(t) for t in sampler.timesteps] == [999, 932, 866, 799]
    alphas = sampler.alphas_cumprod
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)) * 0.1
    out = sampler.step(eps, 932, z)
    x0 = ((z - (1 - alphas[932]).sqrt() * eps) / alphas[932].sqrt()).clamp(-1, 1)
    assert torch.allclose(out.prev_sample, alphas[866].sqrt() * x0 + (1 - alphas[866]).sqrt() * eps, atol=1e-6)
    last = sampler.step(eps, 799, z)
    assert torch.allclose(last.prev_sample, ((z - (1 - alphas[799]).sqrt() * eps) / alphas[799].sqrt()).clamp(-1, 1))
    one = S.make_scheduler("ddim", final_noise_time=0.8)
    one.set_timesteps(1)  # one step is the plain one-step DDIM from pure noise
    assert [int(t) for t in one.timesteps] == [999]
    with pytest.raises(SpecdiffError, match="at most 201 steps"):
        sampler.set_timesteps(500)  # more steps than table entries between 1 and 0.8
    with pytest.raises(ValueError):
        S.make_scheduler("ddim", final_noise_time=1.0)


def test_ddim_final_noise_time_near_zero_ends_on_the_first_table_entry():
    # 0.0001 * 1000 rounds to 0, and index 0 - 1 = -1 would pick the schedule's last entry (t = 1):
    # the final x0 would divide by sqrt(alpha_bar(1)) ~ 4.5e-5. The grid stops at index 0 instead.
    sampler = S.make_scheduler("ddim", final_noise_time=0.0001)
    sampler.set_timesteps(4)
    # noise times 1, 0.6667, 0.3334, 0.0001 -> table indices round(1000 t) - 1, the last clamped to 0
    assert [int(t) for t in sampler.timesteps] == [999, 666, 332, 0]
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)) * 0.1
    alphas = sampler.alphas_cumprod
    last = sampler.step(eps, 0, z)
    assert torch.allclose(last.prev_sample, ((z - (1 - alphas[0]).sqrt() * eps) / alphas[0].sqrt()).clamp(-1, 1))


def test_final_noise_time_comes_from_the_model_folder(tmp_path):
    from specdiff.pipeline.sampling_settings import SamplingSettings, read_sampling_settings, write_sampling_settings

    write_sampling_settings(tmp_path, SamplingSettings("ddim", 4, 1.0, final_noise_time=0.8))
    assert read_sampling_settings(tmp_path).final_noise_time == 0.8
    with pytest.raises(ValueError):
        SamplingSettings(final_noise_time=-0.1)


def test_guidance_held_from_the_first_step_is_that_steps_x0_offset_on_the_conditional_estimate(decoder_and_encodings):
    dec, encodings = decoder_and_encodings
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    t1, t2 = torch.tensor(0.9), torch.tensor(0.5)
    (a1, s1), (a2, s2) = ((float(v) for v in diffusion.alpha_sigma(t)) for t in (0.9, 0.5))
    held = S.GuidedDenoiser(dec, encodings, guidance_scale=2.5, guidance_lift=0.0, guidance_schedule="first")
    with torch.no_grad():
        first = held(z1, t1)
        every = S.GuidedDenoiser(dec, encodings, guidance_scale=2.5, guidance_lift=0.0)(z1, t1)
        assert (first - every).abs().max() < 1e-5  # the first step is the usual guided one ...
        assert not held.guided and held.batch == 1  # ... after it only the conditional rows run
        second = held(z2, t2)
        cond1, cond2 = dec(encodings, z1, t1.reshape(1)), dec(encodings, z2, t2.reshape(1))
    offset = ((z1 - s1 * first) - (z1 - s1 * cond1)) / a1  # guided minus conditional x0 at the first step
    assert float(offset.abs().max()) > 1e-2 and float(offset.max()) < 1e-4  # lift 0: guidance only lowers
    x0_second, x0_cond2 = (z2 - s2 * second) / a2, (z2 - s2 * cond2) / a2
    assert (x0_second - (x0_cond2 + offset)).abs().max() < 1e-4
    with pytest.raises(ValueError, match="guidance_schedule"):
        S.GuidedDenoiser(dec, encodings, guidance_scale=2.5, guidance_schedule="last")


def test_first_rows_of_a_guided_cache_is_the_conditional_cache(decoder_and_encodings):
    dec, encodings = decoder_and_encodings
    # a second row with no valid key at all (as the null condition can be): the cache keeps only row 0's keys
    conditions = [(torch.cat([e, e * 0.5]), torch.cat([m, torch.zeros_like(m)])) for e, m in encodings]
    z, t = torch.randn(1, *SHAPE[1:]), torch.tensor([0.4])
    with torch.no_grad():
        both = dec.prepare_cross_attention(conditions)
        assert both.rows is not None and both.rows.tolist() == [0]
        cut = both.first_rows(1)
        alone = dec.prepare_cross_attention(encodings)
        assert torch.allclose(dec(None, z, t, cross_cache=cut), dec(None, z, t, cross_cache=alone), atol=1e-6)
    with pytest.raises(ValueError, match="first_rows"):
        alone.first_rows(2)
