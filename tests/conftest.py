"""What several test modules share: a MIDI file writer and diffusers' reference implementation.

Test modules import these helpers from here (``from conftest import midi_bytes``: pytest puts
``tests/`` on ``sys.path``); no test module imports another test module.
"""

from __future__ import annotations

import struct
import types
from collections.abc import Sequence
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------
# MIDI files (no third-party writer: the bytes are the Standard MIDI File format's)
# ---------------------------------------------------------------------------------------------

#: A track: (channel, program, notes), notes are (pitch, start s, end s) or (pitch, start s, end s, velocity).
Track = tuple[int, int, Sequence[tuple]]


def _varlen(value: int) -> bytes:
    out = [value & 0x7F]
    while value > 0x7F:
        value >>= 7
        out.append(0x80 | (value & 0x7F))
    return bytes(reversed(out))


def _track_chunk(channel: int, program: int, notes: Sequence[tuple], tpq: int) -> bytes:
    ticks_per_second = 2 * tpq  # no tempo event: the default 120 bpm, a beat is 0.5 s
    events = []
    for pitch, start, end, *rest in notes:
        velocity = rest[0] if rest else 100
        events.append((round(start * ticks_per_second), 0, bytes([0x90 | channel, pitch, velocity])))
        events.append((round(end * ticks_per_second), -1, bytes([0x80 | channel, pitch, 0])))  # offs first at a tick
    body, now = bytearray(_varlen(0) + bytes([0xC0 | channel, program])), 0
    for tick, _, message in sorted(events):
        body += _varlen(tick - now) + message
        now = tick
    body += _varlen(0) + b"\xff\x2f\x00"  # end of track
    return b"MTrk" + struct.pack(">I", len(body)) + bytes(body)


def smf_bytes(tracks: Sequence[Track], tpq: int = 480) -> bytes:
    """A Standard MIDI File at 120 bpm with one track per ``(channel, program, notes)`` (format 0 for
    one track, else format 1)."""
    chunks = b"".join(_track_chunk(channel, program, notes, tpq) for channel, program, notes in tracks)
    file_format = 0 if len(tracks) == 1 else 1
    return b"MThd" + struct.pack(">IHHH", 6, file_format, len(tracks), tpq) + chunks


def midi_bytes(notes: Sequence[tuple[int, float, float]], program: int = 0, tpq: int = 480) -> bytes:
    """A one-track MIDI file at 120 bpm; notes are (pitch, start s, end s), velocity 100."""
    return smf_bytes([(0, program, notes)], tpq)


def write_midi(path: Path, notes: Sequence[tuple[int, float, float]], program: int = 0) -> Path:
    """:func:`midi_bytes` written to ``path`` (its folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(midi_bytes(notes, program))
    return path


#: A C major arpeggio, 1.5 s of music (NoteSequence total_time = the last note-off).
ARPEGGIO = [(60, 0.0, 0.5), (64, 0.5, 1.0), (67, 1.0, 1.5)]

#: The smallest network sizes the model tests build (``build_models(**MICRO, ...)``).
MICRO = dict(d_model=32, num_layers=1, d_ff=64, num_heads=2, d_kv=16)
#: The bundled model's decoder options: EDM x0 output with its bias and the score prior.
EDM = dict(prediction_type="edm", spec_out_bias=True, score_prior=True)


# ---------------------------------------------------------------------------------------------
# ONNX inverters and Hugging Face Hub caches built by hand
# ---------------------------------------------------------------------------------------------


def write_onnx(path: Path, weights, input_name: str = "input_features", extra_input: bool = False) -> Path:
    """A graph with the official inverter's interface (ORIGINAL.md §6) computing a linear map per frame
    (``weights``: float32 ``[128, samples per frame]``). Skips the test without the onnx package."""
    import numpy as np

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", "frames", 128])]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("speaker", TensorProto.FLOAT, [1]))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "W"], ["per_frame"]),
            helper.make_node("Reshape", ["per_frame", "shape"], ["audio"]),  # 0 keeps the batch dim
        ],
        "linear_inverter",
        inputs,
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"])],
        initializer=[
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by any onnxruntime >= 1.10
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def make_hub_cache(cache: Path, repo_id: str, folder: Path, revision: str = "main") -> Path:
    """Put ``folder`` into a Hugging Face Hub cache as ``snapshot_download`` itself lays it out, and
    return the snapshot folder: ``cache/models--ORG--NAME/`` holding ``blobs/<hash>`` (the file
    contents), ``snapshots/<commit>/<path>`` (relative links to the blobs) and ``refs/<revision>``
    (the commit). The commit id is derived from the contents, so it is stable."""
    import hashlib
    import os

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + hashlib.sha256(path.read_bytes()).digest())
    commit = digest.hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for path in files:
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.write_bytes(path.read_bytes())
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


# ---------------------------------------------------------------------------------------------
# Pathological MIDI files (issue 26's probe): cheap to write, once costly to read. One track,
# tpq 480 at the default 120 bpm (a tick is 1/960 s), running status wherever it can be used:
# these are the densest files a byte budget allows. Pitches cycle over STRESS_PITCHES.
# ---------------------------------------------------------------------------------------------

STRESS_PITCHES = 48
TICKS_PER_SECOND = 960


def _one_track(body: bytes | bytearray, tpq: int = 480) -> bytes:
    body = bytes(body) + b"\x00\xff\x2f\x00"  # end of track
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq) + b"MTrk" + struct.pack(">I", len(body)) + body


def _stress_pitch(i: int) -> int:
    return 36 + i % STRESS_PITCHES


def pedal_storm_midi(num_notes: int, num_toggles: int, final_release_ticks: int = 100) -> bytes:
    """Held notes through a sustain-pedal storm (the probe's 29 000 notes / 615 000 toggles file).

    Note i starts at tick i, the notes stack on ``STRESS_PITCHES`` keys, nobody releases a key
    during the storm: pedal down at tick ``num_notes``, then up, down, ... one tick apart
    (``num_toggles`` changes, running status). Then every key is released (tick ``num_notes +
    num_toggles``) and, ``final_release_ticks`` later, the pedal goes up for good. Events:
    ``num_notes + num_toggles + min(num_notes, STRESS_PITCHES) + 2`` (end of track included).
    """
    body = bytearray()
    for i in range(num_notes):
        body += (b"\x00\x90" if i == 0 else b"\x01") + bytes([_stress_pitch(i), 100])
    for k in range(num_toggles):
        body += (b"\x01\xb0" if k == 0 else b"\x01") + bytes([64, 127 if k % 2 == 0 else 0])
    for p in range(min(num_notes, STRESS_PITCHES)):
        body += (b"\x01\x80" if p == 0 else b"\x00") + bytes([_stress_pitch(p), 0])
    body += bytes([final_release_ticks, 0xB0, 64, 0])
    return _one_track(body)


def held_under_one_pedal_midi(num_notes: int) -> bytes:
    """Many short notes under one pedal press: pedal down at tick 0, note i on at tick 2i and off
    one tick later, pitches cycling, pedal up one tick after the last note. Events: ``2 *
    num_notes + 3``."""
    body = bytearray(b"\x00\xb0\x40\x7f")
    for i in range(num_notes):
        body += (b"\x00\x90" if i == 0 else b"\x01") + bytes([_stress_pitch(i), 100, 1, _stress_pitch(i), 0])
    body += b"\x01\xb0\x40\x00"
    return _one_track(body)


def stacked_notes_one_press_midi(num_notes: int) -> bytes:
    """Notes stacked on a few keys, one pedal press (down and up) while they are held, then the
    keys released: note i starts at tick i, the pedal goes down at tick ``num_notes`` and up a
    tick later, every key is released at tick ``num_notes + 2``. Events: ``num_notes + 2 +
    min(num_notes, STRESS_PITCHES) + 1``."""
    body = bytearray()
    for i in range(num_notes):
        body += (b"\x00\x90" if i == 0 else b"\x01") + bytes([_stress_pitch(i), 100])
    body += b"\x01\xb0\x40\x7f\x01\x40\x00"
    for p in range(min(num_notes, STRESS_PITCHES)):
        body += (b"\x01\x80" if p == 0 else b"\x00") + bytes([_stress_pitch(p), 0])
    return _one_track(body)


# ---------------------------------------------------------------------------------------------
# diffusers' reference implementation (the 'parity' extra)
# ---------------------------------------------------------------------------------------------


def diffusers_reference() -> types.SimpleNamespace:
    """diffusers' spectrogram-diffusion classes, made to run with transformers 5.x; skips the test
    when the 'parity' extra is not installed.

    Fields: ``diffusers`` (the module), ``NotesEncoder``, ``ContEncoder``, ``Decoder``
    (``T5FilmDecoder``), ``Pipeline`` (``SpectrogramDiffusionPipeline``).
    """
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers", reason="parity tests need the 'parity' extra (transformers)")
    diffusers = pytest.importorskip("diffusers", reason="parity tests need the 'parity' extra (diffusers)")
    from diffusers.pipelines.deprecated.spectrogram_diffusion import SpectrogramContEncoder, SpectrogramNotesEncoder
    from diffusers.pipelines.deprecated.spectrogram_diffusion.pipeline_spectrogram_diffusion import (
        SpectrogramDiffusionPipeline,
    )

    # transformers 5.x dropped ModuleUtilsMixin.get_extended_attention_mask, which the diffusers
    # encoders still call; supply the 4.x behaviour (additive finfo.min on padding).
    def get_extended_attention_mask(self, mask, input_shape, dtype=None):
        dtype = dtype or torch.float32
        return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    for cls in (SpectrogramNotesEncoder, SpectrogramContEncoder):
        if not hasattr(cls, "get_extended_attention_mask"):
            cls.get_extended_attention_mask = get_extended_attention_mask
    return types.SimpleNamespace(
        diffusers=diffusers,
        NotesEncoder=SpectrogramNotesEncoder,
        ContEncoder=SpectrogramContEncoder,
        Decoder=diffusers.T5FilmDecoder,
        Pipeline=SpectrogramDiffusionPipeline,
    )
