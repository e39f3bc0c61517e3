"""The networks: checkpoint layout (ORIGINAL.md §3.5) and numerical parity with the reference classes.

The reference classes are diffusers' ``T5FilmDecoder`` and its transformers-based
``SpectrogramNotesEncoder`` / ``SpectrogramContEncoder`` (optional ``parity`` extra). Both sides
get the same random weights; we require max |diff| <= 1e-4 in float32.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import diffusers_reference
from torch import nn

from specdiff.models.decoder import CrossAttentionCache, FilmDecoder, timestep_embedding
from specdiff.models.encoders import ContinuousEncoder, NotesEncoder, terminal_relative_positions
from specdiff.models.layers import fixed_permuted_offset_table
from specdiff.models.presets import PRESETS, build_models, count_parameters

torch.set_num_threads(1)

SMALL = dict(d_model=64, num_layers=2, num_heads=4, d_kv=16, d_ff=96, dropout_rate=0.1)
TOL = 1e-4


def notes_config(**kw):
    return dict(max_length=2048, vocab_size=1536, feed_forward_proj="gated-gelu", is_decoder=False, **SMALL, **kw)


def cont_config(**kw):
    return dict(
        input_dims=128, targets_context_length=256, feed_forward_proj="gated-gelu", is_decoder=False, **SMALL, **kw
    )


def decoder_config(**kw):
    return dict(input_dims=128, targets_length=256, max_decoder_noise_time=20000.0, **SMALL, **kw)


def random_tokens(batch: int, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(batch, 2048, dtype=torch.long)
    for b, n in enumerate(lengths):
        tokens[b, :n] = torch.randint(3, 1391, (n,), generator=g)
    return tokens, tokens > 0


# ------------------------------------------------------------------------------------------
# Layout of the official checkpoint (no reference library needed)
# ------------------------------------------------------------------------------------------


def test_base_preset_matches_official_checkpoint_sizes():
    # ORIGINAL.md §3.5: parameter totals of google/music-spectrogram-diffusion
    with torch.device("meta"):
        notes, cont, dec = build_models("base", seed=None)
    assert count_parameters(notes) == 87_706_368
    assert count_parameters(cont) == 85_248_768
    assert count_parameters(dec) == 238_710_528
    frozen = sum(m.position_encoding.weight.numel() for m in (notes, cont, dec))
    assert frozen == 1_966_080
    assert sum(count_parameters(m, trainable_only=True) for m in (notes, cont, dec)) == 411_665_664 - frozen


def test_base_preset_key_shapes_follow_spec_table():
    with torch.device("meta"):
        notes, cont, dec = build_models("base", seed=None)
    n, c, d = (dict((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in (notes, cont, dec))
    assert n["token_embedder.weight"] == (1536, 768)
    assert n["position_encoding.weight"] == (2048, 768)
    assert n["encoders.11.layer.0.SelfAttention.q.weight"] == (768, 768)
    assert n["encoders.11.layer.1.DenseReluDense.wi_0.weight"] == (2048, 768)
    assert n["encoders.11.layer.1.DenseReluDense.wo.weight"] == (768, 2048)
    assert c["input_proj.weight"] == (768, 128) and c["position_encoding.weight"] == (256, 768)
    assert d["conditioning_emb.0.weight"] == (3072, 768)
    assert d["conditioning_emb.2.weight"] == (3072, 3072)
    assert d["decoders.11.layer.0.FiLMLayer.scale_bias.weight"] == (1536, 3072)
    assert d["decoders.11.layer.0.attention.to_out.0.weight"] == (768, 768)
    assert d["decoders.11.layer.1.attention.to_k.weight"] == (768, 768)
    assert d["decoders.11.layer.2.film.scale_bias.weight"] == (1536, 3072)
    assert d["spec_out.weight"] == (128, 768)
    assert len(n) == 3 + 12 * 9 and len(d) == 6 + 12 * 16


def test_position_tables_are_frozen_and_small_preset_size():
    with torch.device("meta"):
        notes, cont, dec = build_models("small", seed=None)
    for m in (notes, cont, dec):
        assert not m.position_encoding.weight.requires_grad
    total = sum(count_parameters(m) for m in (notes, cont, dec))
    assert abs(total / 1e6 - 104.0) < 0.5  # ORIGINAL.md §3.5: small_with_context is about 104.0M


def test_fixed_permuted_offset_table_is_a_permuted_phase_shifted_sinusoid():
    g = torch.Generator().manual_seed(3)
    table = fixed_permuted_offset_table(64, 16, generator=g).double()
    # Every column is sin or cos of pos*div + phase for one of the 8 frequencies: the sequence
    # c[p+1] + c[p-1] = 2 cos(div) c[p] holds for any phase.
    div = torch.exp(-torch.arange(8, dtype=torch.float64) * math.log(1e4) / 7)
    for col in table.T:
        ratios = (col[2:] + col[:-2]) / (2 * col[1:-1])
        ok = [torch.allclose(ratios[col[1:-1].abs() > 0.2], torch.cos(f), atol=1e-4) for f in div]
        assert sum(ok) >= 1
    assert table.abs().max() <= 1.0


def test_terminal_relative_positions():
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[1, :3] = True
    mask[2, :] = True
    pos = terminal_relative_positions(mask)
    assert pos[0].tolist() == list(range(8))  # empty context: identity
    assert pos[2].tolist() == list(range(8))  # full context: identity
    assert pos[1].tolist() == [5, 6, 7, 0, 1, 2, 3, 4]  # last valid frame (index 2) gets position 7


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 0.25, 0.99])
    emb = timestep_embedding(t * 20000, 768, 20000.0)
    inv = torch.exp(-torch.arange(384, dtype=torch.float64) * math.log(20000) / 383)
    angles = (t.double() * 20000)[:, None] * inv
    expected = torch.cat([angles.sin(), angles.cos()], dim=1)
    assert torch.allclose(emb.double(), expected, atol=2e-3)  # fp32 angles up to 2e4 rad
    assert emb[0, :384].abs().max() == 0 and emb[0, 384:].eq(1).all()


# ------------------------------------------------------------------------------------------
# Properties our speed-ups rely on
# ------------------------------------------------------------------------------------------


def test_notes_encoder_over_real_tokens_only_equals_padded():
    torch.manual_seed(0)
    enc = NotesEncoder(**notes_config()).eval()
    tokens, mask = random_tokens(2, [37, 120])
    full, _ = enc(tokens, mask)
    short, _ = enc(tokens[:, :120], mask[:, :120])
    assert (full[0, :37] - short[0, :37]).abs().max() < 1e-5
    assert (full[1, :120] - short[1, :120]).abs().max() < 1e-5


def test_decoder_cache_and_trimmed_keys_equal_full_computation():
    torch.manual_seed(0)
    notes = NotesEncoder(**notes_config()).eval()
    dec = FilmDecoder(**decoder_config()).eval()
    tokens, mask = random_tokens(1, [50])
    ctx = torch.rand(1, 256, 128) * 2 - 1
    ctx_mask = torch.ones(1, 256, dtype=torch.bool)
    cont = ContinuousEncoder(**cont_config()).eval()
    with torch.no_grad():
        full = [notes(tokens, mask), cont(ctx, ctx_mask)]
        trimmed = [notes(tokens[:, :50], mask[:, :50]), cont(ctx, ctx_mask)]
        z = torch.randn(1, 256, 128)
        t = torch.tensor([0.37])
        reference = dec(full, z, t)
        cached = dec(None, z, t, cross_cache=dec.prepare_cross_attention(trimmed))
    assert (reference - cached).abs().max() < 1e-5


def test_cross_attention_output_is_zero_when_all_keys_masked():
    # MSD zero_activations_if_masked: the unconditional CFG pass must not see the encodings at all.
    torch.manual_seed(0)
    dec = FilmDecoder(**decoder_config()).eval()
    z, t = torch.randn(1, 256, 128), torch.tensor([0.5])
    encodings = torch.randn(1, 300, 64)
    no_keys = torch.zeros(1, 300, dtype=torch.bool)
    with torch.no_grad():
        a = dec([(encodings, no_keys)], z, t)
        b = dec([(encodings * 7.0 + 3.0, no_keys)], z, t)
        # Remove cross-attention entirely: same result as all keys masked.
        for layer in dec.decoders:
            layer.layer[1].attention.to_out[0].weight.zero_()
        c = dec([(encodings, torch.ones(1, 300, dtype=torch.bool))], z, t)
    assert torch.equal(a, b)
    assert (a - c).abs().max() < 1e-5


def test_cache_batch_helpers():
    torch.manual_seed(0)
    dec = FilmDecoder(**decoder_config()).eval()
    e = [(torch.randn(2, 10, 64), torch.tensor([[True] * 10, [True] * 4 + [False] * 6]))]
    cache = dec.prepare_cross_attention(e)
    both = CrossAttentionCache.cat([cache, cache.repeat(2)])
    assert both.batch_size == 6 and both.any_key.flatten().tolist() == [1.0] * 6
    z, t = torch.randn(6, 256, 128), torch.rand(6)
    with torch.no_grad():
        out = dec(None, z, t, cross_cache=both)
        first = dec(e, z[:2], t[:2])
    assert (out[:2] - first).abs().max() < 1e-5


def test_build_models_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = build_models("tiny", seed=1, d_model=32, num_layers=1, d_ff=32, num_heads=2, d_kv=16)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_models("tiny", seed=1, d_model=32, num_layers=1, d_ff=32, num_heads=2, d_kv=16)
    for x, y in zip(a, b):
        for (k, v), (_, w) in zip(x.state_dict().items(), y.state_dict().items()):
            assert torch.equal(v, w), k
    assert set(PRESETS) == {"tiny", "small", "base"}


# ------------------------------------------------------------------------------------------
# Parity with the reference implementations (optional extra)
# ------------------------------------------------------------------------------------------


def _reference_classes():
    reference = diffusers_reference()
    return reference.NotesEncoder, reference.ContEncoder, reference.Decoder


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial random weights everywhere (including norms and the frozen tables)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.state_dict().values():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(p.shape[-1])) + (1.0 if p.ndim == 1 else 0.0))


def _load_reference_into_ours(reference: torch.nn.Module, ours: torch.nn.Module) -> None:
    ref_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert ref_shapes == our_shapes
    ours.load_state_dict(reference.state_dict(), strict=True)


def test_notes_encoder_parity_with_diffusers():
    RefNotes, _, _ = _reference_classes()
    ref = RefNotes(**notes_config()).eval()
    _randomize(ref, 1)
    ours = NotesEncoder(**notes_config()).eval()
    _load_reference_into_ours(ref, ours)
    tokens, mask = random_tokens(2, [300, 2048], seed=1)
    with torch.no_grad():
        expected, _ = ref(encoder_input_tokens=tokens, encoder_inputs_mask=mask)
        got, _ = ours(tokens, mask)
    assert (expected[mask] - got[mask]).abs().max() <= TOL


@pytest.mark.parametrize("valid", [256, 0])
def test_continuous_encoder_parity_with_diffusers(valid):
    # diffusers rolls positions along the batch axis (a no-op), which agrees with the original's
    # terminal-relative positions exactly for full and empty contexts (ORIGINAL.md §3.3).
    _, RefCont, _ = _reference_classes()
    ref = RefCont(**cont_config()).eval()
    _randomize(ref, 2)
    ours = ContinuousEncoder(**cont_config()).eval()
    _load_reference_into_ours(ref, ours)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 256, 128, generator=g) * 2 - 1
    mask = torch.zeros(1, 256, dtype=torch.bool)
    mask[:, :valid] = True
    with torch.no_grad():
        expected, _ = ref(encoder_inputs=x, encoder_inputs_mask=mask)
        got, _ = ours(x, mask)
    assert (expected - got).abs().max() <= TOL


def test_continuous_encoder_partial_context_uses_terminal_relative_positions():
    # For a partial context we differ from diffusers on purpose: feeding the reference explicitly
    # rolled inputs reproduces the original's positions (ORIGINAL.md §3.3).
    _, RefCont, _ = _reference_classes()
    ref = RefCont(**cont_config()).eval()
    _randomize(ref, 3)
    ours = ContinuousEncoder(**cont_config()).eval()
    _load_reference_into_ours(ref, ours)
    valid = 100
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 256, 128, generator=g) * 2 - 1
    mask = torch.zeros(1, 256, dtype=torch.bool)
    mask[:, :valid] = True
    with torch.no_grad():
        got, _ = ours(x, mask)
        # Reference with the position table rolled so that position index i reads row (i - valid) % 256.
        ref.position_encoding.weight.copy_(torch.roll(ours.position_encoding.weight, shifts=valid, dims=0))
        expected, _ = ref(encoder_inputs=x, encoder_inputs_mask=mask)
    assert (expected[:, :valid] - got[:, :valid]).abs().max() <= TOL


def test_decoder_parity_with_diffusers():
    _, _, RefDecoder = _reference_classes()
    ref = RefDecoder(**decoder_config()).eval()
    _randomize(ref, 4)
    ours = FilmDecoder(**decoder_config()).eval()
    _load_reference_into_ours(ref, ours)
    g = torch.Generator().manual_seed(4)
    notes = torch.randn(2, 2048, 64, generator=g)
    notes_mask = torch.zeros(2, 2048, dtype=torch.bool)
    notes_mask[0, :400] = True
    notes_mask[1, :1500] = True
    ctx = torch.randn(2, 256, 64, generator=g)
    ctx_mask = torch.tensor([[False] * 256, [True] * 256])
    z = torch.randn(2, 256, 128, generator=g)
    t = torch.tensor([0.99, 0.013])
    with torch.no_grad():
        expected = ref([(notes, notes_mask), (ctx, ctx_mask)], z, t)
        got = ours([(notes, notes_mask), (ctx, ctx_mask)], z, t)
        cached = ours(
            None,
            z,
            t,
            cross_cache=ours.prepare_cross_attention([(notes[:, :1500], notes_mask[:, :1500]), (ctx, ctx_mask)]),
        )
    assert (expected - got).abs().max() <= TOL
    assert (expected - cached).abs().max() <= TOL


def test_training_mode_dropout_is_active_and_eval_is_deterministic():
    torch.manual_seed(0)
    dec = FilmDecoder(**decoder_config())
    e = [(torch.randn(1, 10, 64), torch.ones(1, 10, dtype=torch.bool))]
    z, t = torch.randn(1, 256, 128), torch.tensor([0.5])
    dec.train()
    assert not torch.equal(dec(e, z, t), dec(e, z, t))
    dec.eval()
    assert torch.equal(dec(e, z, t), dec(e, z, t))


def test_training_dropout_is_shared_along_the_sequence_like_the_original():
    from specdiff.models.layers import SequenceDropout

    drop = SequenceDropout(0.5).train()
    x = torch.ones(3, 40, 16)
    y = drop(x)
    # One keep/drop decision per (example, channel), the same at every position.
    assert torch.equal(y, y[:, :1, :].expand_as(y))
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(drop.eval()(x), x)


def test_skip_weight_init_builds_on_meta_without_init_and_restores_torch_init():
    from specdiff.models.initialisation import skip_weight_init

    before = {name: getattr(nn.init, name) for name in ("normal_", "trunc_normal_", "kaiming_uniform_")}
    probe = torch.ones(2)
    with skip_weight_init():
        decoder = FilmDecoder(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64, timbres=["a", "b"])
        assert nn.init.normal_(probe) is probe  # a no-op inside
    assert probe.tolist() == [1.0, 1.0]
    assert all(p.is_meta for p in decoder.parameters())
    assert {name: getattr(nn.init, name) for name in before} == before  # restored
    # Outside, initialisation runs again (a normal draw changes the tensor).
    assert nn.init.normal_(torch.ones(64), generator=torch.Generator().manual_seed(0)).std() > 0.5
    with pytest.raises(RuntimeError), skip_weight_init():  # restored after an error too
        raise RuntimeError("boom")
    assert {name: getattr(nn.init, name) for name in before} == before
    fresh = FilmDecoder(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64)
    assert float(fresh.spec_out.weight.std()) > 0.01
