"""Timbre conditioning, rolled-out training inputs, generated idiom pieces and the silence metric."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MICRO

from specdiff.errors import SpecdiffError
from specdiff.models.presets import build_models
from specdiff.sampling.diffusion import q_sample
from specdiff.training.batches import collate_counted
from specdiff.training.config import TrainConfig, apply_overrides
from specdiff.training.objective import (
    SpectrogramDiffusionModel,
    diffusion_loss,
    draw_rollout_times,
    parse_rollout_steps,
    rollout_inputs,
)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
ROLL = dict(score_roll_features=6832, prediction_type="edm", spec_out_bias=True, score_prior=True)


def roll_model(**decoder) -> SpectrogramDiffusionModel:
    return SpectrogramDiffusionModel(*build_models("tiny", seed=0, dropout_rate=0.0, **MICRO, **ROLL, **decoder))


def batch_of(n: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, 2048, dtype=torch.long)
    tokens[:, :6] = torch.tensor([1134, 1001, 1061, 1, 1145, 1001])  # a program, velocity, pitch, time, ...
    return {
        "tokens": tokens,
        "context": torch.rand(n, 256, 128, generator=g) * 2 - 1,
        "context_mask": torch.ones(n, 256, dtype=torch.bool),
        "target": torch.rand(n, 256, 128, generator=g) * 2 - 1,
    }


# ---------------------------------------------------------------------------------------------
# Timbre conditioning
# ---------------------------------------------------------------------------------------------


def test_timbre_tables_start_at_zero_so_a_warm_start_keeps_the_output():
    plain, timbred = roll_model(), roll_model(timbres=["TimGM6mb", "FluidR3_GM"])
    missing = timbred.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["decoder.timbre_embedding.weight", "decoder.timbre_prior.weight"]
    b = batch_of()
    z, t = torch.randn(3, 256, 128), torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        ref = plain(b["tokens"], b["context"], b["context_mask"], z, t)
        for index in (0, 1):
            out = timbred(b["tokens"], b["context"], b["context_mask"], z, t, torch.full((3,), index))
            assert torch.allclose(out, ref, atol=1e-5)


def test_each_timbre_changes_only_its_own_rows():
    model = roll_model(timbres=["A", "B"])
    with torch.no_grad():
        model.decoder.timbre_embedding.weight[1].normal_()
        model.decoder.timbre_prior.weight[1].fill_(0.3)
    b = batch_of()
    z, t = torch.randn(3, 256, 128), torch.full((3,), 0.7)
    with torch.no_grad():
        a = model(b["tokens"], b["context"], b["context_mask"], z, t, torch.tensor([0, 0, 0]))
        mixed = model(b["tokens"], b["context"], b["context_mask"], z, t, torch.tensor([0, 1, 0]))
        default = model(b["tokens"], b["context"], b["context_mask"], z, t)  # None: timbre 0
    assert torch.allclose(mixed[[0, 2]], a[[0, 2]], atol=1e-5)
    assert (mixed[1] - a[1]).abs().mean() > 1e-2
    assert torch.allclose(default, a, atol=1e-6)


def test_timbre_names_are_validated():
    decoder = roll_model(timbres=["A", "B"]).decoder
    assert decoder.timbres == ["A", "B"] and decoder.timbre_index("B") == 1 and decoder.timbre_index(None) == 0
    with pytest.raises(ValueError, match="unknown timbre 'C'; this model knows A, B"):
        decoder.timbre_index("C")
    with pytest.raises(ValueError, match="unique"):
        roll_model(timbres=["A", "A"])
    assert "timbres" not in roll_model().decoder.config  # the default stays out of config.json


def test_pipeline_timbre_property_and_guided_sampling(tmp_path):
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    model = roll_model(timbres=["A", "B"])
    with torch.no_grad():
        model.decoder.timbre_prior.weight[1].fill_(0.5)  # timbre B: a brighter prior everywhere
    pipe = SpectrogramDiffusionPipeline(model.notes_encoder, model.continuous_encoder, model.decoder, "ddim")
    assert pipe.timbres == ["A", "B"] and pipe.timbre is None
    with pytest.raises(SpecdiffError, match="unknown timbre 'C'; this model knows: A, B"):
        pipe.timbre = "C"
    tokens = [[1134, 1001, 1061, 1, 1145, 1001, 1]]
    mels = {}
    for name in ("A", "B"):
        pipe.timbre = name
        for guidance in (1.0, 2.0):
            out = pipe(tokens, num_inference_steps=1, guidance_scale=guidance, output_type="mel",
                       generator=torch.Generator().manual_seed(0), progress=False)  # fmt: skip
            mels[name, guidance] = torch.as_tensor(np.asarray(out.audios))
    for guidance in (1.0, 2.0):  # one step from pure noise = the prior (+ network), B's is higher
        assert float((mels["B", guidance] - mels["A", guidance]).mean()) > 0.1


def test_model_timbres_parse_from_the_command_line():
    config = apply_overrides(TrainConfig(), ["model.timbres=TimGM6mb,FluidR3_GM"])
    assert config.model["timbres"] == ["TimGM6mb", "FluidR3_GM"]


# ---------------------------------------------------------------------------------------------
# Rolled-out inputs
# ---------------------------------------------------------------------------------------------


class OracleX0(torch.nn.Module):
    """A "sample" predictor that knows the answer: its DDIM steps are exact."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0
        self.decoder = type("D", (), {"prediction_type": "sample"})()

    def forward(self, tokens, context, context_mask, z_t, t, timbre=None):
        return self.x0[: len(z_t)]


def test_rollout_with_an_exact_denoiser_lands_on_the_forward_process():
    b = batch_of(4)
    x0 = b["target"]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t, t_prev = torch.tensor([0.25, 0.5, 0.75, 0.9375]), torch.tensor([0.5, 0.75, 1.0, 1.0])
    z = rollout_inputs(OracleX0(x0), b["tokens"], b, b["context_mask"], x0, noise, t, t_prev)
    assert torch.allclose(z, q_sample(x0, t, noise), atol=1e-3)  # float32 schedule arithmetic


def test_rollout_times_lie_on_the_sampler_grids():
    rolled, t, t_prev = draw_rollout_times(range(4000), seed=3, prob=0.5, step_counts=[4, 16])
    assert 0.45 < float(rolled.float().mean()) < 0.55
    steps = torch.round(1 / (t_prev - t)).long()
    assert set(steps.tolist()) == {4, 16}
    k = t * steps
    assert torch.allclose(k, k.round(), atol=1e-4) and float(t.min()) > 0 and float(t_prev.max()) <= 1.0
    assert Counter((k.round().long())[steps == 4].tolist()).keys() == {1, 2, 3}
    again = draw_rollout_times(range(4000), seed=3, prob=0.5, step_counts=[4, 16])
    assert all(torch.equal(a, b) for a, b in zip((rolled, t, t_prev), again))
    assert parse_rollout_steps("4, 16") == [4, 16]
    with pytest.raises(SpecdiffError):
        parse_rollout_steps("1")


def test_rolled_rows_train_on_the_models_own_step_and_keep_gradients():
    model = roll_model()
    with torch.no_grad():
        model.decoder.spec_out.weight.normal_(std=0.05)  # a network whose step is not exact
    b = batch_of(4)
    noise = torch.randn(b["target"].shape, generator=torch.Generator().manual_seed(2))
    t, keep = torch.full((4,), 0.5), torch.ones(4, dtype=torch.bool)
    plain = diffusion_loss(model, b, t, noise, keep)
    rollout = (torch.tensor([False, True, False, True]), torch.full((4,), 0.5), torch.full((4,), 0.75))
    rolled = diffusion_loss(model, b, t, noise, keep, rollout=rollout)
    rolled.loss_sum.backward()
    assert float(rolled.loss_sum) != pytest.approx(float(plain.loss_sum))
    assert model.decoder.spec_out.weight.grad is not None
    none_rolled = (torch.zeros(4, dtype=torch.bool), torch.full((4,), 0.5), torch.full((4,), 0.75))
    assert float(diffusion_loss(model, b, t, noise, keep, rollout=none_rolled).loss_sum) == pytest.approx(
        float(plain.loss_sum), rel=1e-6
    )


# ---------------------------------------------------------------------------------------------
# Generated idioms and timbres in the cache
# ---------------------------------------------------------------------------------------------


def test_generated_pieces_are_deterministic_and_cover_the_idioms():
    from specdiff.data.idioms import STYLES, generate_piece, idiom_split, seed_for

    a, b = generate_piece(seed_for("idioms", 7)), generate_piece(seed_for("idioms", 7))
    assert a.dumps_midi() == b.dumps_midi()
    programs, drums, pedals, velocities, silent_bars = set(), 0, 0, [], 0
    for i in range(60):
        score = generate_piece(seed_for("idioms", i), seconds=20)
        for track in score.tracks:
            if track.is_drum:
                drums += 1
            else:
                programs.add(track.program)
            pedals += sum(1 for c in track.controls if c.number == 64)
            velocities += [n.velocity for n in track.notes]
    families = {p // 8 for p in programs}
    assert len(families) >= 14  # nearly every GM family (16) in 60 pieces
    assert drums >= 25 and pedals > 0
    assert min(velocities) < 30 and max(velocities) > 115
    for style in STYLES:  # every idiom generates notes
        assert sum(len(t.notes) for t in generate_piece(1, seconds=10, style=style.name).tracks) > 0
    splits = Counter(idiom_split(i) for i in range(2000))
    assert 60 < splits["test"] < 140 and 60 < splits["validation"] < 140
    del silent_bars


def _piece_digest(score) -> str:
    """A digest of everything a generated piece holds: tempo, tracks, notes and pedal events."""
    import hashlib

    h = hashlib.sha256()
    h.update(repr([(t.time, round(t.qpm, 6)) for t in score.tempos]).encode())
    for track in score.tracks:
        h.update(repr((track.name, track.program, track.is_drum)).encode())
        h.update(repr([(n.time, n.duration, n.pitch, n.velocity) for n in track.notes]).encode())
        h.update(repr([(c.time, c.number, c.value) for c in track.controls]).encode())
    return h.hexdigest()[:16]


#: Digests of generate_piece(seed) (30 s) made before generate_piece was split into helpers: the
#: feature caches and the idioms test split are these pieces, so a refactoring must keep every draw.
PIECE_DIGESTS = {
    0: "48391ce943ed53e9",
    1: "289328c598499b60",
    2: "9c2e40543c665807",
    3: "0eca314d60ede99f",
    42: "9bac26f376a9c8bb",
    1234: "5c3d6e2d5cabe7ad",
    364716688775956378: "394e5931244c17ab",
}
#: generate_piece(100 + i, seconds=12, style=STYLES[i].name), same origin.
STYLE_DIGESTS = {
    "blues": "761e12385131e386",
    "rock": "8a93b03fb8a04f73",
    "pop": "819df9a6ec0f2c4a",
    "funk": "f89e984d291a0be9",
    "latin": "bf7eb4341244225f",
    "jazz": "24d4018eb20a1369",
    "ambient": "45b3248bcb1a49ca",
    "sparse": "1e2f8e27d32c172d",
    "game": "81e583650cb6f6ff",
    "waltz": "0671cba067e2a046",
    "organ_pad": "4d79af4f53f75f88",
}


def test_generated_pieces_stay_the_same_for_a_seed():
    from specdiff.data.idioms import STYLES, generate_piece

    assert {seed: _piece_digest(generate_piece(seed)) for seed in PIECE_DIGESTS} == PIECE_DIGESTS
    styles = {
        st.name: _piece_digest(generate_piece(100 + i, seconds=12.0, style=st.name)) for i, st in enumerate(STYLES)
    }
    assert styles == STYLE_DIGESTS


def test_breaks_leave_the_kit_alone_and_let_hits_decay_into_silence():
    """The ``breaks`` set exists for what band music lacks: drum hits with nothing else sounding and
    time after them to decay. Counted from the scores (20 s each): most onsets are drums, lone hits
    use most GM drum keys, and many hits are followed by half a second or more without any onset."""
    from specdiff.data.idioms import GENERATORS, generate_break, idiom_split, seed_for
    from specdiff.data.songs import GENERATED_KINDS, discover

    assert GENERATORS["breaks"] is generate_break
    assert set(GENERATED_KINDS) == set(GENERATORS)  # every generator is a source of specdiff prepare
    a, b = generate_break(seed_for("breaks", 3)), generate_break(seed_for("breaks", 3))
    assert a.dumps_midi() == b.dumps_midi()
    drum_onsets, tonal_onsets, drum_keys, lone_hits = 0, 0, set(), 0
    for i in range(10):
        score = generate_break(seed_for("breaks", i), seconds=20).to("second")
        onsets = sorted((n.time, t.is_drum, n.pitch) for t in score.tracks for n in t.notes)
        for (time, is_drum, pitch), following in zip(onsets, onsets[1:] + [(float("inf"), False, 0)]):
            drum_onsets += is_drum
            tonal_onsets += not is_drum
            drum_keys |= {pitch} if is_drum else set()
            lone_hits += is_drum and following[0] - time >= 0.5
    assert drum_onsets > 4 * tonal_onsets > 0
    assert len(drum_keys) >= 30  # of the 47 GM drum keys
    assert lone_hits >= 50
    pieces = discover("breaks:4")
    assert [p.song_id for p in pieces] == [f"breaks/breaks_{i:04d}" for i in range(4)]
    assert {p.generator for p in pieces} == {"breaks"}
    assert [p.split for p in pieces] == [idiom_split(i) for i in range(4)]
    assert {p.generator for p in discover("idioms:2")} == {"idioms"}


def test_generated_pieces_do_not_depend_on_the_string_hash_seed():
    """The same seed gives the same piece in every process: a generator that iterates over a set of
    strings follows PYTHONHASHSEED (the test split then changed from run to run)."""
    import subprocess
    import sys

    code = ("import hashlib; from specdiff.data.idioms import generate_piece, seed_for; "
            "print(hashlib.md5(b''.join(generate_piece(seed_for('idioms', i), seconds=20).dumps_midi() "
            "for i in range(12))).hexdigest())")  # fmt: skip
    digests = set()
    for hash_seed in ("1", "2", "3"):
        env = {**__import__("os").environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_full_silences_occur_between_notes():
    from specdiff.data.idioms import generate_piece, seed_for

    gaps = 0
    for i in range(40):
        score = generate_piece(seed_for("idioms", i), seconds=30).to("second")
        spans = sorted((n.time, n.time + n.duration) for t in score.tracks for n in t.notes)
        end = spans[0][1]
        for start, stop in spans[1:]:
            gaps += start - end > 1.0
            end = max(end, stop)
    assert gaps >= 3


def test_idiom_cache_records_timbres_and_datasets_index_them(tmp_path):
    pytest.importorskip("tinysoundfont")
    from specdiff.data.cache import ChunkDataset, build_cache
    from specdiff.data.render import default_soundfont, timbre_name
    from specdiff.data.songs import idiom_pairs, with_soundfonts

    pairs = idiom_pairs(3, seconds=6.0)
    sf = str(default_soundfont())
    both = with_soundfonts(pairs, [sf, sf])  # the same SoundFont twice: ids must stay unique
    assert len({p.song_id for p in both}) == 6
    build_cache(pairs, tmp_path / "cache", workers=0, progress=False)
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert {s["timbre"] for s in index["songs"]} == {timbre_name(sf)}
    data = ChunkDataset(tmp_path / "cache", split=None, timbres=["other", timbre_name(sf)])
    assert int(data[0].timbre) == 1
    batch = collate_counted([(0, data[0]), (1, data[1])])
    assert batch["timbre"].tolist() == [1, 1]
    with pytest.raises(SpecdiffError, match="timbres"):
        ChunkDataset(tmp_path / "cache", split=None, timbres=["other"])


# ---------------------------------------------------------------------------------------------
# Silence metric
# ---------------------------------------------------------------------------------------------


def test_silence_scores_measure_ours_where_the_reference_is_silent():
    from specdiff.evaluation.metrics import silence_scores

    sr = 16000
    t = np.arange(2 * sr) / sr
    tone = 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    reference = tone.copy()
    reference[sr:] = 0.0  # the second half is silent
    quiet = silence_scores(reference, reference)
    assert quiet["silence_gap"] == pytest.approx(0.0) and 0.4 < quiet["silent_fraction"] < 0.6
    noisy = reference + 0.01 * np.random.default_rng(0).standard_normal(len(reference)).astype(np.float32)
    loud = silence_scores(noisy, reference)
    assert loud["silence_gap"] > 3.0  # noise at -40 dB sits several log units above the floor
    assert np.isnan(silence_scores(tone, tone)["silence_gap"])  # no silent frames


def test_rest_scores_measure_the_musics_rests_not_the_references_quiet_frames():
    from specdiff.evaluation.metrics import rest_frames, rest_scores
    from specdiff.midi.reader import Note

    # Notes: 0.0-0.5 s, then a drum hit at 2.5 s; rests (1 s margin): frames 75-124 (1.5-2.5 s) and
    # from 3.5 s (frame 175) to the end of 4 s (frame 200).
    notes = [Note(60, 0.0, 0.5, 100, 0, False), Note(36, 2.5, 2.6, 100, 0, True)]
    rests = rest_frames(notes, 200)
    assert np.flatnonzero(rests).tolist() == list(range(75, 125)) + list(range(175, 200))
    sr = 16000
    t = np.arange(4 * sr) / sr
    reference = (0.3 * np.sin(2 * np.pi * 261.6 * t)).astype(np.float32)
    reference[int(0.5 * sr) : int(2.5 * sr)] = 0.0  # the render rings nowhere in the rest ...
    reference[int(2.6 * sr) :] = 0.0
    silent = rest_scores(reference, reference, notes)
    assert silent["rest_gap"] == pytest.approx(0.0) and silent["reference_rest_level"] < -10
    assert 0.3 < silent["rest_fraction"] < 0.45
    noisy = reference + 0.01 * np.random.default_rng(0).standard_normal(len(reference)).astype(np.float32)
    assert rest_scores(noisy, reference, notes)["rest_gap"] > 3.0
    # ... and a note the reference renders silently is no rest: it does not count.
    muted = reference.copy()
    assert np.isnan(rest_scores(muted, muted, [Note(60, 0.0, 4.0, 100, 0, False)])["rest_gap"])


def test_min_noise_time_draws_and_rollout_grids_end_there():
    from specdiff.training.objective import draw_diffusion_inputs

    t, _, _ = draw_diffusion_inputs(range(2000), seed=3, drop_prob=0.1, shape=(1,), min_time=0.8)
    assert float(t.min()) >= 0.8 and float(t.max()) < 1.0 and float(t.mean()) == pytest.approx(0.9, abs=0.01)
    t0, _, _ = draw_diffusion_inputs(range(50), seed=3, drop_prob=0.1, shape=(1,))
    t1, _, _ = draw_diffusion_inputs(range(50), seed=3, drop_prob=0.1, shape=(1,), min_time=0.0)
    assert torch.equal(t0, t1)  # the original draw is unchanged
    rolled, t, t_prev = draw_rollout_times(range(4000), seed=3, prob=0.5, step_counts=[4], final_time=0.8)
    grid = [1.0, 0.8 + 0.4 / 3, 0.8 + 0.2 / 3, 0.8]  # a 4-step DDIM grid ending at 0.8
    pairs = {(round(float(a), 4), round(float(b), 4)) for a, b in zip(t, t_prev)}
    assert pairs == {(round(grid[j], 4), round(grid[j - 1], 4)) for j in (1, 2, 3)}


def test_context_drop_empties_the_context_of_drawn_rows_like_a_first_segment():
    from specdiff.training.objective import draw_context_drops, empty_context

    drops = draw_context_drops(range(4000), seed=3, prob=0.2)
    assert 0.17 < float(drops.float().mean()) < 0.23
    assert torch.equal(drops, draw_context_drops(range(4000), seed=3, prob=0.2))
    assert not draw_context_drops(range(100), seed=3, prob=0.0).any()
    mask = torch.ones(3, 4, dtype=torch.bool)
    batch = {"context": torch.ones(3, 4, 2), "context_mask": mask, "target": torch.ones(3)}
    out = empty_context(batch, torch.tensor([False, True, False]))
    assert torch.equal(out["context"][1], torch.zeros(4, 2)) and not out["context_mask"][1].any()
    assert torch.equal(out["context"][0], batch["context"][0]) and out["context_mask"][2].all()
    assert out["target"] is batch["target"]


def test_context_gain_jitter_moves_sounding_frames_by_the_drawn_decibels_and_keeps_silence():
    import math

    from specdiff.audio.mel import MIN_VALUE, scale_to_features
    from specdiff.training.objective import draw_context_gains, jitter_context_gain

    gains = draw_context_gains(range(4000), seed=3, jitter_db=6.0)
    assert float(gains.abs().max()) <= 6.0 and float(gains.min()) < -5.5 and float(gains.max()) > 5.5
    assert abs(float(gains.mean())) < 0.3  # symmetric
    assert torch.equal(gains, draw_context_gains(range(4000), seed=3, jitter_db=6.0))
    from specdiff.audio.mel import scale_features

    log_mel = torch.tensor([[[MIN_VALUE, -2.0, 3.9, 0.0]], [[MIN_VALUE, -2.0, 3.9, 0.0]]])
    context = scale_features(log_mel)  # the data sets' context: features scaled to [-1, 1]
    mask = torch.tensor([[True], [True]])
    batch = {"context": context, "context_mask": mask}
    out = jitter_context_gain(batch, torch.tensor([20.0, -20.0]))["context"]
    back = scale_to_features(out)
    step = math.log(10.0)  # 20 dB of amplitude on the natural-log magnitude mel
    assert out[0, 0, 0] == -1.0 and out[1, 0, 0] == -1.0  # silence stays silent
    assert math.isclose(float(back[0, 0, 1]), -2.0 + step, rel_tol=1e-5)
    assert math.isclose(float(back[1, 0, 1]), -2.0 - step, rel_tol=1e-5)
    assert float(out[0, 0, 2]) == 1.0  # clamped to the features' range
    masked = jitter_context_gain({"context": context, "context_mask": ~mask}, torch.tensor([20.0, -20.0]))
    assert torch.equal(masked["context"], context)  # frames outside the mask are not context


def test_band_offsets_measure_the_spectral_balance_per_group_of_bands():
    from specdiff.evaluation.metrics import BAND_OFFSET_KEYS, band_offsets

    rng = np.random.default_rng(0)
    reference = (0.1 * rng.standard_normal(16000)).astype(np.float32)  # white noise: every band well above the floor
    assert list(band_offsets(reference, reference).values()) == [0.0] * 4
    doubled = band_offsets(2 * reference, reference)  # log-mel of magnitudes: ln 2 louder in every band
    assert list(doubled) == list(BAND_OFFSET_KEYS)
    assert all(abs(v - np.log(2.0)) < 1e-3 for v in doubled.values())
    # a low-passed copy keeps the low bands and drops the top ones towards the floor
    smooth = np.convolve(reference, np.ones(8) / 8, mode="same").astype(np.float32)
    tilt = band_offsets(smooth, reference)
    assert abs(tilt["band_offset_1"]) < 0.5 and tilt["band_offset_4"] < -2.0


def test_song_gain_jitter_moves_context_and_target_together_and_spares_first_segments():
    import math

    from specdiff.audio.mel import MIN_VALUE, scale_features, scale_to_features
    from specdiff.training.objective import SONG_GAIN_SALT, draw_context_gains, jitter_song_gain

    log_mel = torch.tensor([[[MIN_VALUE, -2.0, 0.5]]]).repeat(3, 1, 1)  # [3 rows, 1 frame, 3 bins]
    features = scale_features(log_mel)
    mask = torch.tensor([[True], [True], [False]])  # the last row: a first segment (no context)
    batch = {"context": features.clone(), "context_mask": mask, "target": features.clone()}
    out = jitter_song_gain(batch, torch.tensor([20.0, -20.0, 20.0]))
    step = math.log(10.0)  # 20 dB of amplitude on the natural-log magnitude mel
    for key in ("context", "target"):
        back = scale_to_features(out[key])
        assert out[key][0, 0, 0] == -1.0 and out[key][1, 0, 0] == -1.0  # silence stays silent
        assert math.isclose(float(back[0, 0, 1]), -2.0 + step, rel_tol=1e-5)
        assert math.isclose(float(back[1, 0, 2]), 0.5 - step, rel_tol=1e-5)
        assert torch.equal(out[key][2], features[2])  # no context: nothing could tell the model the gain
    assert torch.equal(batch["target"], features)  # the input batch is not modified
    song = draw_context_gains(range(2000), seed=3, jitter_db=6.0, salt=SONG_GAIN_SALT)
    context = draw_context_gains(range(2000), seed=3, jitter_db=6.0)
    assert float(song.abs().max()) <= 6.0 and abs(float(torch.corrcoef(torch.stack([song, context]))[0, 1])) < 0.1


def test_training_samples_are_drawn_in_each_rows_timbre():
    from specdiff.training.validation import sample_spectrogram

    model = roll_model(timbres=["A", "B"])
    with torch.no_grad():
        model.decoder.timbre_prior.weight[1].fill_(0.3)  # timbre B: a louder prior
    b = batch_of(2)
    draw = lambda timbres: sample_spectrogram(model, {**b, "timbre": timbres}, 2, torch.Generator().manual_seed(0))  # noqa: E731
    first, both = draw(torch.tensor([0, 0])), draw(torch.tensor([0, 1]))
    assert torch.allclose(both[0], first[0], atol=1e-5)
    assert float((both[1] - first[1]).mean()) > 0.05
