"""The pipeline (ORIGINAL.md §5): folder layout round trips, parity with diffusers' pipeline, the song loop.

Tiny random networks keep every test fast. The reference side (optional ``parity`` extra) is
diffusers' own ``SpectrogramNotesEncoder`` / ``SpectrogramContEncoder`` / ``T5FilmDecoder`` /
``DDPMScheduler`` and its ``SpectrogramDiffusionPipeline``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import diffusers_reference

from specdiff.constants import SCHEDULERS
from specdiff.errors import MidiError, ModelError, SpecdiffError
from specdiff.midi.tokenizer import TokenizedMidi, midi_to_segments
from specdiff.models.presets import build_models
from specdiff.pipeline.inputs import RELEASE_TAIL_SECONDS
from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

torch.set_num_threads(1)

DATA = Path(__file__).parent / "data" / "tokenizer"
TINY = dict(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=48)
STEPS = 3
TOL = 1e-4


@pytest.fixture(scope="module")
def segments() -> list[list[int]]:
    return midi_to_segments(DATA / "bach_bwv66_6.mid").segments[:2]


@pytest.fixture(scope="module")
def pipe() -> SpectrogramDiffusionPipeline:
    return SpectrogramDiffusionPipeline(*build_models("tiny", seed=0, **TINY))


def run(pipe, tokens, seed=0, **kw):
    kw = {"num_inference_steps": STEPS, "output_type": "mel", "show_progress": False, **kw}
    return pipe(tokens, generator=torch.Generator().manual_seed(seed), **kw)


class ConstantInverter:
    """Stand-in inverter: 0.5 everywhere, 320 samples per frame; records what it was given."""

    sample_rate = 16000

    def __init__(self):
        self.inputs = []

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        self.inputs.append(mel.shape)
        return np.full((mel.shape[0], mel.shape[1] * 320), 0.5, np.float32)


# ---------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------


def test_save_then_load_round_trip_gives_identical_output(pipe, segments, tmp_path):
    folder = pipe.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "SpectrogramDiffusionPipeline"
    assert index["notes_encoder"] == ["diffusers", "SpectrogramNotesEncoder"]
    assert index["continuous_encoder"] == ["diffusers", "SpectrogramContEncoder"]
    assert index["decoder"] == ["diffusers", "T5FilmDecoder"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    for name in ("notes_encoder", "continuous_encoder", "decoder"):
        assert (folder / name / "diffusion_pytorch_model.safetensors").is_file()
    loaded = SpectrogramDiffusionPipeline.from_pretrained(folder, inverter=None)
    for name in ("notes_encoder", "continuous_encoder", "decoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert not getattr(loaded, name).training
    assert not loaded.decoder.position_encoding.weight.requires_grad
    assert loaded.scheduler_config["beta_schedule"] == "squaredcos_cap_v2"
    before = run(pipe, segments, guidance_scale=2.0).mels
    after = run(loaded, segments, guidance_scale=2.0).mels
    assert np.array_equal(before, after)

    # Saving again replaces the folder (atomically), and unrelated folders are never overwritten.
    pipe.save_pretrained(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match="refusing to overwrite"):
        pipe.save_pretrained(other)
    assert (other / "keep.txt").read_text() == "mine"


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


def test_broken_folders_raise_model_error(pipe, tmp_path):
    with pytest.raises(ModelError) as err:
        SpectrogramDiffusionPipeline.from_pretrained(tmp_path / "nowhere")
    assert "not found" in _one_line(err)
    with pytest.raises(ModelError) as err:
        SpectrogramDiffusionPipeline.from_pretrained(tmp_path)
    assert "model_index.json" in _one_line(err)

    good = pipe.save_pretrained(tmp_path / "good")

    def broken(name, edit):
        folder = tmp_path / name
        pipe.save_pretrained(folder)
        edit(folder)
        with pytest.raises(ModelError) as err:
            SpectrogramDiffusionPipeline.from_pretrained(folder, inverter=None)
        return _one_line(err)

    import shutil

    assert "decoder" in broken("no_decoder", lambda f: shutil.rmtree(f / "decoder"))
    assert "cannot read the weights" in broken(
        "corrupt", lambda f: (f / "decoder" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    )
    assert "no weights" in broken(
        "no_weights", lambda f: (f / "decoder" / "diffusion_pytorch_model.safetensors").unlink()
    )

    def bad_config(f):
        config = json.loads((f / "decoder" / "config.json").read_text())
        (f / "decoder" / "config.json").write_text(json.dumps({**config, "mystery": 1}))

    assert "does not fit FilmDecoder" in broken("bad_config", bad_config)

    def wrong_size(f):
        config = json.loads((f / "notes_encoder" / "config.json").read_text())
        (f / "notes_encoder" / "config.json").write_text(json.dumps({**config, "d_ff": 64}))

    assert "shape" in broken("wrong_size", wrong_size)
    assert "bad.json" not in broken("bad_json", lambda f: (f / "model_index.json").write_text("{"))
    assert SpectrogramDiffusionPipeline.from_pretrained(good, inverter=None) is not None


# ---------------------------------------------------------------------------------------------
# Parity with diffusers (optional extra)
# ---------------------------------------------------------------------------------------------


def _diffusers_reference():
    reference = diffusers_reference()
    return reference.diffusers, reference.NotesEncoder, reference.ContEncoder, reference.Pipeline


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """diffusers' pipeline with tiny random networks, saved by diffusers itself (.bin weights)."""
    diffusers, RefNotes, RefCont, Reference = _diffusers_reference()
    shared = dict(dropout_rate=0.1, **TINY)
    notes = RefNotes(max_length=2048, vocab_size=1536, feed_forward_proj="gated-gelu", is_decoder=False, **shared)
    cont = RefCont(
        input_dims=128, targets_context_length=256, feed_forward_proj="gated-gelu", is_decoder=False, **shared
    )
    # The class default max_decoder_noise_time (2000) is not the checkpoint's (ORIGINAL.md §9.1).
    dec = diffusers.T5FilmDecoder(input_dims=128, targets_length=256, max_decoder_noise_time=20000.0, **shared)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial weights everywhere, norms and position tables included
        for module in (notes, cont, dec):
            for p in module.state_dict().values():
                p.copy_(
                    torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(p.shape[-1])) + (1.0 if p.ndim == 1 else 0.0)
                )
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", beta_start=0.0001, beta_end=0.02,
        clip_sample=True, clip_sample_range=1.0, prediction_type="epsilon", variance_type="fixed_large",
    )  # fmt: skip
    ref = Reference(notes.eval(), cont.eval(), dec.eval(), scheduler, melgan=None)
    ref.set_progress_bar_config(disable=True)
    folder = tmp_path_factory.mktemp("diffusers") / "model"
    ref.save_pretrained(folder, safe_serialization=False)
    return ref, folder


def test_folder_written_by_diffusers_loads_strictly(reference):
    ref, folder = reference
    assert (folder / "decoder" / "diffusion_pytorch_model.bin").is_file()
    ours = SpectrogramDiffusionPipeline.from_pretrained(folder, inverter=None)
    for name in ("notes_encoder", "continuous_encoder", "decoder"):
        a, b = getattr(ref, name).state_dict(), getattr(ours, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ours.scheduler_config["variance_type"] == "fixed_large"


def test_ddpm_without_guidance_reproduces_diffusers_pipeline(reference, segments):
    ref, folder = reference
    ours = SpectrogramDiffusionPipeline.from_pretrained(folder, inverter=None)
    expected = ref(
        segments, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS, output_type="mel"
    ).audios
    got = run(ours, segments, scheduler="ddpm", guidance_scale=1.0).audios
    assert got.shape == expected.shape == (1, 512, 128)
    assert np.abs(got - expected).max() <= TOL
    # A different seed gives a clearly different song: the comparison is not vacuous.
    other = run(ours, segments, seed=1, scheduler="ddpm", guidance_scale=1.0).audios
    assert np.abs(other - expected).max() > 0.1


def test_diffusers_components_load_our_folder(pipe, reference, tmp_path):
    diffusers, RefNotes, RefCont, Reference = _diffusers_reference()
    _, their_folder = reference
    folder = pipe.save_pretrained(tmp_path / "ours")
    ours_index = json.loads((folder / "model_index.json").read_text())
    their_index = json.loads((their_folder / "model_index.json").read_text())
    for key in ("_class_name", "notes_encoder", "continuous_encoder", "decoder", "scheduler", "melgan"):
        assert ours_index[key] == their_index[key], key
    for name, cls in (
        ("notes_encoder", RefNotes),
        ("continuous_encoder", RefCont),
        ("decoder", diffusers.T5FilmDecoder),
    ):
        module = cls.from_pretrained(folder / name)
        a, b = module.state_dict(), getattr(pipe, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert diffusers.T5FilmDecoder.from_pretrained(folder / "decoder").config.max_decoder_noise_time == 20000.0
    assert diffusers.DDPMScheduler.from_pretrained(folder / "scheduler").config.variance_type == "fixed_large"
    try:  # the whole pipeline resolves its classes only where note-seq is installed
        import note_seq  # noqa: F401
    except ImportError:
        return
    loaded = Reference.from_pretrained(folder)
    assert type(loaded.decoder).__name__ == "T5FilmDecoder" and loaded.melgan is None


# ---------------------------------------------------------------------------------------------
# The song loop
# ---------------------------------------------------------------------------------------------


def test_output_is_trimmed_to_the_music_plus_release_tail(pipe, segments):
    whole = run(pipe, segments).mels  # bare token lists: whole segments, like diffusers
    assert whole.shape == (1, 512, 128)
    trimmed = run(pipe, TokenizedMidi(segments, duration=6.0)).mels
    keep = math.ceil((6.0 + RELEASE_TAIL_SECONDS) * 50)
    assert trimmed.shape == (1, keep, 128) and keep == 325
    assert np.array_equal(trimmed, whole[:, :keep])  # trimming cuts, it does not change the song
    calls = []
    short = run(pipe, TokenizedMidi(segments, duration=1.0), callback=lambda i, mel: calls.append(i)).mels
    assert calls == [0]  # the second segment lies past the tail: not generated at all
    assert short.shape == (1, 75, 128) and np.array_equal(short, whole[:, :75])


def test_audio_output_through_the_inverter(segments):
    inverter = ConstantInverter()
    pipe = SpectrogramDiffusionPipeline(*build_models("tiny", seed=0, **TINY), inverter=inverter)
    out = run(pipe, TokenizedMidi(segments, duration=6.0), output_type="np")
    assert inverter.inputs == [(1, 512, 128)]  # the untrimmed song, inverted once
    assert out.audios.shape == (1, 325 * 320) and out.audios.dtype == np.float32
    assert out.mels.shape == (1, 325, 128)
    fade = int(0.05 * 16000)
    assert np.all(out.audios[0, :-fade] == 0.5)  # untouched before the fade-out
    assert out.audios[0, -1] == 0.0 and np.all(np.diff(out.audios[0, -fade:]) <= 0)
    (audios,) = run(pipe, segments, output_type="np", return_dict=False)
    assert audios.shape == (1, 512 * 320) and np.all(audios == 0.5)  # whole segments: no fade


def test_audio_without_inverter_fails_before_sampling(pipe, segments):
    calls = []
    with pytest.raises(ModelError, match="inverter"):
        run(pipe, segments, output_type="np", callback=lambda i, mel: calls.append(i))
    assert calls == []


def test_same_seed_same_output_and_seeds_differ(pipe, segments):
    a = run(pipe, segments, seed=3).mels
    b = run(pipe, segments, seed=3).mels
    c = run(pipe, segments, seed=4).mels
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.isfinite(a).all() and a.min() >= math.log(1e-5) - 1e-4 and a.max() <= 4.0 + 1e-4


def test_callback_mirrors_diffusers(pipe, segments):
    seen = []
    out = run(pipe, segments, callback=lambda i, mel: seen.append((i, mel.shape, mel.copy())))
    assert [(i, shape) for i, shape, _ in seen] == [(0, (1, 256, 128)), (1, (1, 512, 128))]
    assert np.array_equal(seen[-1][2], out.mels)
    seen.clear()
    run(pipe, segments, callback=lambda i, mel: seen.append(i), callback_steps=2)
    assert seen == [0]
    with pytest.raises(SpecdiffError):
        run(pipe, segments, callback_steps=0)


def test_plan_says_what_a_call_will_do(pipe, segments):
    from specdiff.midi.tokenizer import TokenizedMidi

    plan = pipe.plan(segments, num_inference_steps=STEPS, scheduler="ddpm")
    assert (plan.segments, plan.frames, plan.steps) == (len(segments), len(segments) * 256, STEPS)
    assert plan.max_steps == pipe.scheduler_config.get("num_train_timesteps", 1000)
    assert pipe.plan(segments, scheduler="original").max_steps is None
    short = pipe.plan(TokenizedMidi(segments, 1.0))  # one second of music: one segment, trimmed
    assert short.segments == 1 and short.frames == 75 and short.total_steps == short.steps
    out = run(pipe, TokenizedMidi(segments, 1.0))
    assert out.mels.shape[1] == short.frames


def test_callback_on_step_end_sees_every_step_and_can_cancel(pipe, segments):
    plain = run(pipe, segments)
    seen = []

    def record(p, step_index, timestep, callback_kwargs):
        assert p is pipe and set(callback_kwargs) == {"latents"}
        seen.append(step_index)
        return callback_kwargs

    out = run(pipe, segments, callback_on_step_end=record)
    steps = len(seen) // 2
    assert steps >= 1 and seen == [*range(steps), *range(steps)]  # two segments, each step once
    assert np.array_equal(out.mels, plain.mels)  # returning the latents unchanged changes nothing

    class Stop(Exception):
        pass

    def stop(p, step_index, timestep, callback_kwargs):
        raise Stop

    with pytest.raises(Stop):
        run(pipe, segments, callback_on_step_end=stop)


def test_progress_bar_counts_all_steps_and_can_be_off(pipe, segments, capsys):
    run(pipe, segments, show_progress=False)
    run(pipe, segments, progress=False)  # the CLI's spelling
    assert capsys.readouterr().err == ""
    run(pipe, segments, show_progress=True)
    err = capsys.readouterr().err
    assert f"{2 * STEPS}/{2 * STEPS}" in err


def test_guidance_batches_cond_and_uncond_and_caches_cross_attention(pipe, segments):
    batches, prepared = [], []
    hook = pipe.decoder.register_forward_pre_hook(
        lambda m, args, kwargs: batches.append(kwargs["decoder_input_tokens"].shape[0]), with_kwargs=True
    )
    original_prepare = pipe.decoder.prepare_cross_attention
    pipe.decoder.prepare_cross_attention = lambda enc: prepared.append(enc[0][0].shape[0]) or original_prepare(enc)
    try:
        guided = run(pipe, segments, guidance_scale=2.0).mels
        assert batches == [2] * (2 * STEPS) and prepared == [2, 2]  # one cache per segment
        batches.clear(), prepared.clear()
        plain = run(pipe, segments, guidance_scale=1.0).mels
        assert batches == [1] * (2 * STEPS) and prepared == [1, 1]
    finally:
        hook.remove()
        del pipe.decoder.prepare_cross_attention
    assert not np.allclose(guided, plain)


def test_segments_stream_the_same_mels(segments):
    inverter = ConstantInverter()
    pipe = SpectrogramDiffusionPipeline(*build_models("tiny", seed=0, **TINY), inverter=inverter)
    song = TokenizedMidi(segments, duration=6.0)
    whole = run(pipe, song).mels
    parts = list(pipe.segments(song, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS))
    assert [p.index for p in parts] == [0, 1] and [p.start_time for p in parts] == [0.0, 5.12]
    assert np.array_equal(np.concatenate([p.mel for p in parts])[None], whole)
    assert [p.audio.shape for p in parts] == [(256 * 320,), (69 * 320,)]


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_runs_in_the_pipeline(pipe, segments, name):
    if name != "original":
        pytest.importorskip("diffusers")
    out = run(pipe, segments[:1], scheduler=name, num_inference_steps=2).mels
    assert out.shape == (1, 256, 128) and np.isfinite(out).all()


def test_midi_path_input(pipe):
    path = DATA / "single_note.mid"
    tokenized = midi_to_segments(path)
    out = run(pipe, str(path), num_inference_steps=1)
    frames = min(256 * len(tokenized.segments), math.ceil((tokenized.duration + RELEASE_TAIL_SECONDS) * 50))
    assert out.mels.shape == (1, frames, 128)
    assert np.array_equal(out.mels, run(pipe, tokenized, num_inference_steps=1).mels)


def test_bad_inputs(pipe, segments):
    with pytest.raises(MidiError, match="no token segments"):
        run(pipe, [])
    with pytest.raises(MidiError, match="vocabulary"):
        run(pipe, [[5, 1536]])
    with pytest.raises(MidiError):
        run(pipe, [[0] * 2049])
    with pytest.raises(SpecdiffError, match="output_type"):
        run(pipe, segments, output_type="wav")
    with pytest.raises(SpecdiffError, match="unknown scheduler"):
        run(pipe, segments, scheduler="euler")


# ---------------------------------------------------------------------------------------------
# The sampler settings a model folder recommends (sampling.json)
# ---------------------------------------------------------------------------------------------


def _decoder_batches(pipe, call) -> list[int]:
    """The decoder batch size of every step ``call()`` runs (2 per step with guidance)."""
    batches: list[int] = []
    hook = pipe.decoder.register_forward_pre_hook(
        lambda _m, args, kw: batches.append(kw["decoder_input_tokens"].shape[0]), with_kwargs=True
    )
    try:
        call()
    finally:
        hook.remove()
    return batches


def test_sampling_json_sets_the_defaults_of_calls_and_round_trips(pipe, segments, tmp_path):
    from specdiff.pipeline.folder import SAMPLING_FILE
    from specdiff.pipeline.sampling_settings import SamplingSettings

    folder = pipe.save_pretrained(tmp_path / "plain")
    assert not (folder / SAMPLING_FILE).exists()  # the library defaults are not written out
    assert SpectrogramDiffusionPipeline.from_pretrained(folder).sampling == SamplingSettings()
    (folder / SAMPLING_FILE).write_text(
        json.dumps({"scheduler": "original", "num_inference_steps": 2, "guidance_scale": 1.0, "_note": "measured"})
    )
    loaded = SpectrogramDiffusionPipeline.from_pretrained(folder)
    assert loaded.sampling == SamplingSettings("original", 2, 1.0) and loaded.scheduler == "original"
    # Unset arguments take the folder's settings: 2 steps per segment, no guidance (batch 1).
    out = {}
    batches = _decoder_batches(
        loaded,
        lambda: out.setdefault(
            "mel",
            loaded(segments, generator=torch.Generator().manual_seed(0), output_type="mel", show_progress=False).mels,
        ),
    )
    assert batches == [1] * 2 * len(segments)
    np.testing.assert_array_equal(out["mel"], run(loaded, segments, num_inference_steps=2, guidance_scale=1.0).mels)
    # An explicit argument wins over the folder's.
    assert _decoder_batches(loaded, lambda: run(loaded, segments[:1], num_inference_steps=1, guidance_scale=2.0)) == [2]
    # Saved again, the settings travel with the folder.
    again = loaded.save_pretrained(tmp_path / "again")
    assert SpectrogramDiffusionPipeline.from_pretrained(again).sampling == loaded.sampling


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '["a"]',
        '{"scheduler": "euler"}',
        '{"num_inference_steps": 0}',
        '{"guidance_scale": -1}',
        '{"steps": 20}',
        '{"num_inference_steps": 2.5}',
    ],
)
def test_bad_sampling_json_is_a_model_error(pipe, tmp_path, content):
    from specdiff.pipeline.folder import SAMPLING_FILE

    folder = pipe.save_pretrained(tmp_path / "model")
    (folder / SAMPLING_FILE).write_text(content)
    with pytest.raises(ModelError, match="sampling.json"):
        SpectrogramDiffusionPipeline.from_pretrained(folder)


def test_the_guidance_schedule_of_sampling_json_holds_the_first_steps_guidance(segments):
    from specdiff.pipeline.sampling_settings import SamplingSettings

    def mel(schedule, steps):
        settings = SamplingSettings("ddim", steps, 2.0, final_noise_time=0.5, guidance_schedule=schedule)
        pipe = SpectrogramDiffusionPipeline(*build_models("tiny", seed=0, **TINY), sampling=settings)
        return run(pipe, segments[:1], num_inference_steps=steps).audios

    # One step: only the first step, guided either way; two: the second step is not guided afresh.
    assert np.allclose(mel("first", 1), mel("every", 1), atol=1e-5)
    assert not np.allclose(mel("first", 2), mel("every", 2), atol=1e-3)


def test_the_guidance_ceiling_of_sampling_json_reaches_every_guided_call(segments):
    from specdiff.audio.mel import MIN_VALUE
    from specdiff.pipeline.sampling_settings import SamplingSettings

    def pipe_with(ceiling):
        settings = SamplingSettings("ddim", 2, 2.0, final_noise_time=0.5, guidance_ceiling=ceiling)
        return SpectrogramDiffusionPipeline(*build_models("tiny", seed=0, **TINY), sampling=settings)

    # A ceiling 100 log-mel units under every bin's conditional maximum leaves nothing but silence
    # (the x0 estimate is capped far below the [-1, 1] range and clipped to its floor) ...
    silent = run(pipe_with(-100.0), segments[:1]).audios
    assert np.allclose(silent, MIN_VALUE)
    # ... while plain guidance, and any unguided call, make sound.
    assert not np.allclose(run(pipe_with(None), segments[:1]).audios, MIN_VALUE)
    assert not np.allclose(run(pipe_with(-100.0), segments[:1], guidance_scale=1.0).audios, MIN_VALUE)
