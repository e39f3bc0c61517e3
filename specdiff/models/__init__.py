"""The three networks of Spectrogram Diffusion (spec §3): notes encoder, context encoder, FiLM decoder.

Everything is T5.1.1 style: pre-RMSNorm, no biases, attention logits *not* scaled by 1/sqrt(d_k)
(T5 folds that into the query initialisation), gated tanh-GELU feed-forward, and frozen absolute
position tables that are random permuted, phase-shifted sinusoids (so they live in the state dict).

Parameter names and shapes equal the official diffusers checkpoint
(`google/music-spectrogram-diffusion`, spec §3.5), so its weights load with ``strict=True``:

- encoders use Hugging Face T5 names (``encoders.{i}.layer.0.SelfAttention.q`` ...),
- the decoder uses diffusers names (``decoders.{i}.layer.0.attention.to_q`` ...).

Constructor keyword arguments equal the keys of each subfolder's ``config.json``: each network records
them as ``config`` (``config.register_to_config``) and is rebuilt by ``from_config``.

Modules: ``config`` (the config helper), ``layers`` (shared blocks), ``encoders``, ``decoder`` (with
``additive_prior``, one of its extensions),
``initialisation``, ``presets``.
Importing this package imports none of its modules.
"""
