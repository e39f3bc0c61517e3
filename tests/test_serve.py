"""`specdiff serve` over real HTTP on loopback, with a tiny random model.

What is checked: a job's WAV equals a direct pipeline call with the same settings and seed; progress
is reported step by step (polling and server-sent events); bad, oversized and too-long uploads and
bad settings get clear 4xx answers without reaching the queue; concurrent submissions are each
either refused with 429 or finished (none lost); cancellation of waiting and running jobs; results
expire; the OpenAPI schema and the page are served; the CLI side builds an app from a model folder.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import io
import json
import math
import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the `serve` extra is not installed (pip install 'specdiff[serve]')")
pytest.importorskip("uvicorn", reason="the `serve` extra is not installed (pip install 'specdiff[serve]')")
pytest.importorskip("multipart", reason="the `serve` extra is not installed (pip install 'specdiff[serve]')")
httpx = pytest.importorskip("httpx", reason="the tests talk HTTP with httpx (pip install httpx)")
torch = pytest.importorskip("torch")

from conftest import midi_bytes  # noqa: E402

from specdiff.errors import SpecdiffError  # noqa: E402
from specdiff.midi.reader import midi_to_notes  # noqa: E402
from specdiff.midi.tokenizer import midi_to_segments  # noqa: E402
from specdiff.models.presets import build_models  # noqa: E402
from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline  # noqa: E402
from specdiff.server import png  # noqa: E402
from specdiff.server.app import create_app, running_server  # noqa: E402
from specdiff.server.config import ServeConfig  # noqa: E402
from specdiff.server.jobs import Job, JobQueue, JobSettings, JobState  # noqa: E402
from specdiff.server.synth import Synthesizer, read_midi  # noqa: E402

torch.set_num_threads(1)

TINY = dict(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=48)
STEPS = 2
SR = 16000
DATA = Path(__file__).parent / "data" / "tokenizer"
TIMEOUT = 60.0


# ---------------------------------------------------------------------------------------------
# MIDI files made here (no third-party writer: the bytes are the Standard MIDI File spec's)
# ---------------------------------------------------------------------------------------------


SONG = midi_bytes([(60, 0.0, 0.4), (64, 0.4, 0.8), (67, 0.8, 1.2)])  # 1.2 s: one segment
SONG_SECONDS = 1.2


# ---------------------------------------------------------------------------------------------
# A tiny model with a cheap inverter whose audio depends on the mel (so seeds matter)
# ---------------------------------------------------------------------------------------------


class MeanInverter:
    """Stand-in inverter: each frame's mean log-mel, squashed into [-1, 1], held for 320 samples."""

    sample_rate = SR

    def __init__(self):
        self.fail_with: Exception | None = None
        self.gain = 1.0  # > 1: audio over full scale, for the limiter test

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        if self.fail_with is not None:
            raise self.fail_with
        return (self.gain * np.repeat(np.tanh(mel.mean(-1) / 4.0), 320, axis=-1)).astype(np.float32)


@pytest.fixture(scope="module")
def pipe() -> SpectrogramDiffusionPipeline:
    return SpectrogramDiffusionPipeline(*build_models("tiny", seed=0, **TINY), inverter=MeanInverter())


class Gate:
    """Holds the worker at its next denoising step until opened (a decoder pre-hook)."""

    def __init__(self, pipe):
        self.open_event, self.reached = threading.Event(), threading.Event()
        self.handle = pipe.decoder.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.reached.set()
        assert self.open_event.wait(TIMEOUT), "the test never opened the gate"

    def open(self):
        self.open_event.set()
        self.handle.remove()


@pytest.fixture
def serve(pipe, tmp_path):
    """``serve(**config) -> (client, app)``: a server on loopback for this test only."""
    stack = []

    def start(**overrides):
        config = ServeConfig(**{"default_steps": STEPS, "workdir": tmp_path / "work", **overrides})
        # The plain PNG writer: matplotlib takes ~1 s a picture (tested once, directly, below).
        synthesizer = Synthesizer(pipe, draw_spectrogram=lambda mel, path, title: png.write_spectrogram_png(mel, path))
        app = create_app(synthesizer, config, model_name="tiny-test")
        context = running_server(app)
        url = context.__enter__()
        client = httpx.Client(base_url=url, timeout=TIMEOUT)
        stack.append((client, context, synthesizer))
        return client, app

    yield start
    for client, context, synthesizer in reversed(stack):
        client.close()
        context.__exit__(None, None, None)
        synthesizer.close()


def submit(client, data: bytes = SONG, name: str = "song.mid", **settings):
    fields = {k: str(v) for k, v in {"steps": STEPS, **settings}.items()}
    return client.post("/api/jobs", files={"midi": (name, data, "audio/midi")}, data=fields)


def wait_until(client, job_id: str, states=("done", "failed", "cancelled")) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        status = client.get(f"/api/jobs/{job_id}").json()
        if status["state"] in states:
            return status
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not reach {states}: {status}")


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile

    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return audio, rate


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def test_job_audio_equals_a_direct_pipeline_call_with_the_same_settings(serve, pipe):
    client, _ = serve()
    response = submit(client, steps=3, guidance=1.5, seed=7, scheduler="original")
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/api/jobs/{job['id']}"
    assert job["settings"] == {"steps": 3, "guidance": 1.5, "seed": 7, "scheduler": "original"}
    assert job["midi"] == {"name": "song.mid", "duration_s": SONG_SECONDS, "notes": 3, "segments": 1}
    status = wait_until(client, job["id"])
    assert status["state"] == "done", status["error"]
    assert status["progress"] == {"step": 3, "total_steps": 3, "segments_done": 1, "total_segments": 1,
                                  "fraction": 1.0}  # fmt: skip

    wav = client.get(status["links"]["audio"])
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    audio, rate = read_wav(wav.content)
    expected = pipe(midi_to_segments(SONG), generator=torch.Generator().manual_seed(7), num_inference_steps=3,
                    guidance_scale=1.5, show_progress=False).audios[0]  # fmt: skip
    assert rate == SR and audio.shape == expected.shape
    np.testing.assert_allclose(audio, expected, atol=1.5 / 32768)  # 16-bit PCM quantization
    assert status["audio_seconds"] == pytest.approx(len(expected) / SR)
    assert status["sample_rate"] == SR

    picture = client.get(status["links"]["spectrogram"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert picture.content[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", picture.content[16:24])
    frames = round(status["audio_seconds"] * 50)  # 85: repeated to ceil(1000 / 85) = 12 columns each
    assert (width, height) == (frames * 12, 128 * png.BIN_HEIGHT)


def test_notes_endpoint_gives_the_notes_the_model_sees(serve):
    client, _ = serve()
    job = submit(client).json()
    roll = client.get(job["links"]["notes"]).json()
    notes, total = midi_to_notes(SONG)
    assert roll["duration_s"] == pytest.approx(total)
    assert [(n["pitch"], n["start"], n["end"], n["program"], n["is_drum"]) for n in roll["notes"]] == [
        (n.pitch, pytest.approx(n.start, abs=1e-4), pytest.approx(n.end, abs=1e-4), n.program, n.is_drum) for n in notes
    ]
    wait_until(client, job["id"])


def test_read_midi_tokens_equal_midi_to_segments():
    data = (DATA / "bach_bwv66_6.mid").read_bytes()
    tokenized, roll = read_midi(data, "bach.mid", max_seconds=600, max_bytes=10**6)
    reference = midi_to_segments(data)
    assert tokenized.segments == reference.segments
    assert tokenized.duration == reference.duration
    assert len(roll) == len(midi_to_notes(data)[0])


def test_progress_streams_as_server_sent_events_until_done(serve):
    client, _ = serve()
    job = submit(client, steps=4, data=midi_bytes([(60, 0.0, 6.0)])).json()  # 6.5 s: two segments
    assert job["midi"]["segments"] == 2
    statuses = []
    with client.stream("GET", job["links"]["events"]) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                assert event == "status"
                statuses.append(json.loads(line[5:]))
    states = [s["state"] for s in statuses]
    assert states[-1] == "done" and set(states) <= {"queued", "running", "done"}
    steps = [s["progress"]["step"] for s in statuses]
    assert steps == sorted(steps) and steps[-1] == 8
    assert statuses[-1]["links"]["audio"].endswith("/audio.wav")


def test_same_seed_gives_the_same_audio_and_another_seed_does_not(serve):
    client, _ = serve()
    ids = [submit(client, seed=seed).json()["id"] for seed in (5, 5, 6)]
    wavs = []
    for job_id in ids:
        assert wait_until(client, job_id)["state"] == "done"
        wavs.append(client.get(f"/api/jobs/{job_id}/audio.wav").content)
    assert wavs[0] == wavs[1]
    assert wavs[0] != wavs[2]


def test_a_missing_seed_is_drawn_and_reported(serve):
    client, _ = serve()
    job = submit(client).json()
    assert isinstance(job["settings"]["seed"], int) and 0 <= job["settings"]["seed"] < 2**31
    wait_until(client, job["id"])


def test_bundled_example_can_be_chosen_by_name(serve):
    example = DATA / "bach_bwv66_6.mid"
    client, _ = serve(examples=[example])
    assert client.get("/api/info").json()["examples"] == [{"name": example.name}]
    job = client.post("/api/jobs", data={"example": example.name, "steps": "1", "seed": "0"}).json()
    assert job["midi"]["name"] == example.name
    assert job["midi"]["duration_s"] == pytest.approx(midi_to_segments(example).duration, abs=1e-3)
    assert wait_until(client, job["id"])["state"] == "done"


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

NO_NOTES = b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", 4) + b"\x00\xff\x2f\x00"


@pytest.mark.parametrize("data, message", [
    (b"this is not a MIDI file at all", "not a MIDI file"),
    (SONG[:30], "song.mid"),  # truncated inside the track
    (NO_NOTES, "no notes"),
    (b"", "song.mid"),
])  # fmt: skip
def test_bad_midi_is_refused_with_400_and_one_line(serve, data, message):
    client, _ = serve()
    response = submit(client, data=data)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert message in detail and "\n" not in detail
    assert client.get("/api/health").json()["submitted"] == 0


def test_too_long_music_is_refused(serve):
    client, _ = serve(max_midi_seconds=2.0)
    response = submit(client, data=midi_bytes([(60, 0.0, 3.0)]))
    assert response.status_code == 400
    assert "too long" in response.json()["detail"]
    assert submit(client, data=midi_bytes([(60, 0.0, 1.5)])).status_code == 202


def test_neither_or_both_sources_and_unknown_examples_are_refused(serve):
    client, _ = serve(examples=[DATA / "bach_bwv66_6.mid"])
    neither = client.post("/api/jobs", data={"steps": "1"})
    assert neither.status_code == 400 and "either" in neither.json()["detail"]
    both = client.post("/api/jobs", files={"midi": ("a.mid", SONG)}, data={"example": "bach_bwv66_6.mid"})
    assert both.status_code == 400
    unknown = client.post("/api/jobs", data={"example": "../../etc/passwd"})
    assert unknown.status_code == 404 and "unknown example" in unknown.json()["detail"]


def test_oversized_uploads_are_refused_with_413(serve):
    client, _ = serve(max_upload_bytes=1000)
    padded = SONG + b"\0" * 4000  # under the form's allowance: caught after parsing
    huge = SONG + b"\0" * 200_000  # over it: refused from Content-Length before reading the body
    for data in (padded, huge):
        response = submit(client, data=data)
        assert response.status_code == 413, response.text
        assert "limit is 1000 bytes" in response.json()["detail"]

    # A chunked upload (no Content-Length) is counted as it arrives.
    boundary = "specdiffboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"midi\"; filename=\"big.mid\"\r\n"
            "Content-Type: audio/midi\r\n\r\n").encode()  # fmt: skip

    def body():
        yield head
        for _ in range(50):
            yield b"\0" * 4096
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post("/api/jobs", content=body(),
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    assert response.status_code == 413
    assert "limit is 1000 bytes" in response.json()["detail"]
    assert client.get("/api/health").json()["submitted"] == 0
    assert submit(client).status_code == 202  # the server is fine afterwards


@pytest.mark.parametrize("settings", [
    {"steps": 0}, {"steps": 1001}, {"steps": "many"}, {"guidance": -1}, {"guidance": "nan"},
    {"guidance": "inf"}, {"seed": -1}, {"seed": 2**63}, {"scheduler": "euler"},
])  # fmt: skip
def test_bad_settings_are_refused_with_422(serve, settings):
    client, _ = serve(max_steps=1000)
    response = submit(client, **settings)
    assert response.status_code == 422, response.text
    assert client.get("/api/health").json()["submitted"] == 0


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_guidance_is_refused_as_not_finite(serve, value):
    client, _ = serve()
    response = submit(client, guidance=value)
    assert response.status_code == 422
    messages = response.json()["detail"]
    assert "finite number" in messages and "less than" not in messages


def test_diffusers_schedulers_are_limited_to_their_training_timesteps(serve):
    if importlib.util.find_spec("diffusers") is None:
        pytest.skip("the diffusers schedulers need diffusers")
    client, _ = serve(max_steps=5000)
    response = submit(client, steps=1001, scheduler="ddim")
    assert response.status_code == 422
    assert "at most 1000 steps" in response.json()["detail"]


def test_unknown_jobs_are_404(serve):
    client, _ = serve()
    for method, path in [("GET", "/api/jobs/nope"), ("GET", "/api/jobs/nope/audio.wav"),
                         ("GET", "/api/jobs/nope/events"), ("POST", "/api/jobs/nope/cancel"),
                         ("DELETE", "/api/jobs/nope")]:  # fmt: skip
        response = client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert "nope" in response.json()["detail"]


# ---------------------------------------------------------------------------------------------
# The queue: concurrency, limits, cancellation, failures, expiry
# ---------------------------------------------------------------------------------------------


def test_concurrent_submissions_all_finish(serve):
    client, _ = serve(max_queued=8)
    seeds = [0, 1, 2, 3, 0, 1, 2, 3]
    with concurrent.futures.ThreadPoolExecutor(len(seeds)) as pool:
        responses = list(pool.map(lambda seed: submit(client, seed=seed), seeds))
    assert [r.status_code for r in responses] == [202] * len(seeds)
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == len(ids)
    statuses = [wait_until(client, job_id) for job_id in ids]
    assert [s["state"] for s in statuses] == ["done"] * len(seeds)
    wavs = [client.get(s["links"]["audio"]).content for s in statuses]
    assert wavs[:4] == wavs[4:]  # equal seeds, equal audio: no job got another's settings
    assert len(set(wavs[:4])) == 4
    health = client.get("/api/health").json()
    assert (health["submitted"], health["done"], health["failed"], health["refused"]) == (8, 8, 0, 0)


def test_a_full_queue_refuses_with_429_and_loses_nothing(serve, pipe):
    client, _ = serve(max_queued=2)
    gate = Gate(pipe)
    try:
        first = submit(client).json()
        assert gate.reached.wait(TIMEOUT)  # the first job holds the model
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            responses = list(pool.map(lambda seed: submit(client, seed=seed), range(5)))
    finally:
        gate.open()
    codes = sorted(r.status_code for r in responses)
    assert codes == [202, 202, 429, 429, 429]
    for refused in (r for r in responses if r.status_code == 429):
        assert "queue is full" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) > 0
    accepted = [first["id"]] + [r.json()["id"] for r in responses if r.status_code == 202]
    assert [wait_until(client, job_id)["state"] for job_id in accepted] == ["done"] * 3
    health = client.get("/api/health").json()
    assert (health["submitted"], health["refused"], health["done"]) == (3, 3, 3)


def test_queue_position_counts_the_jobs_ahead(serve, pipe):
    client, _ = serve()
    gate = Gate(pipe)
    try:
        running = submit(client).json()
        assert gate.reached.wait(TIMEOUT)
        waiting = [submit(client).json() for _ in range(3)]
        assert client.get(f"/api/jobs/{running['id']}").json()["state"] == "running"
        assert [client.get(f"/api/jobs/{j['id']}").json()["queue_position"] for j in waiting] == [0, 1, 2]
        early = client.get(f"/api/jobs/{waiting[0]['id']}/audio.wav")
        assert early.status_code == 409 and "queued" in early.json()["detail"]
    finally:
        gate.open()
    for job in [running, *waiting]:
        wait_until(client, job["id"])


def test_cancel_a_waiting_and_a_running_job(serve, pipe):
    client, _ = serve()
    gate = Gate(pipe)
    try:
        running = submit(client, steps=4).json()
        assert gate.reached.wait(TIMEOUT)
        waiting = submit(client).json()
        cancelled = client.post(f"/api/jobs/{waiting['id']}/cancel").json()
        assert cancelled["state"] == "cancelled" and cancelled["error"] == "cancelled by the client"
        asked = client.post(f"/api/jobs/{running['id']}/cancel").json()
        assert asked["state"] == "running" and asked["cancel_requested"]
    finally:
        gate.open()
    status = wait_until(client, running["id"])
    assert status["state"] == "cancelled" and status["error"] == "cancelled by the client"
    assert status["progress"]["step"] < status["progress"]["total_steps"]  # it stopped early
    assert client.get(f"/api/jobs/{running['id']}/audio.wav").status_code == 409
    assert "links" in status and "audio" not in status["links"]
    # The worker goes on with the next job.
    after = submit(client).json()
    assert wait_until(client, after["id"])["state"] == "done"
    # Cancelling a finished job changes nothing.
    assert client.post(f"/api/jobs/{after['id']}/cancel").json()["state"] == "done"


def test_a_failing_job_reports_why_and_the_worker_goes_on(serve, pipe):
    client, _ = serve()
    pipe.inverter.fail_with = RuntimeError("inverter exploded")
    try:
        failed = wait_until(client, submit(client).json()["id"])
    finally:
        pipe.inverter.fail_with = None
    assert failed["state"] == "failed"
    assert failed["error"] == "internal error: RuntimeError: inverter exploded"
    assert client.get(f"/api/jobs/{failed['id']}/audio.wav").status_code == 409
    assert wait_until(client, submit(client).json()["id"])["state"] == "done"


def test_delete_forgets_the_job_and_its_files(serve, tmp_path):
    client, _ = serve()
    job = wait_until(client, submit(client).json()["id"])
    folder = tmp_path / "work" / job["id"]
    assert (folder / "audio.wav").is_file()
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert client.get(f"/api/jobs/{job['id']}").status_code == 404
    assert not folder.exists()


def test_results_expire_after_the_ttl(serve, tmp_path):
    client, _ = serve(result_ttl=0.4)
    job = wait_until(client, submit(client).json()["id"])
    assert job["expires_at"] == pytest.approx(job["finished_at"] + 0.4)
    time.sleep(0.6)
    response = client.get(f"/api/jobs/{job['id']}")
    assert response.status_code == 404 and "expired" in response.json()["detail"]
    assert not (tmp_path / "work" / job["id"]).exists()


def test_fetched_results_expire_sooner(serve):
    client, _ = serve(result_ttl=60, fetched_ttl=1.5)  # room for three requests on a loaded machine
    job = wait_until(client, submit(client).json()["id"])
    assert job["expires_at"] == pytest.approx(job["finished_at"] + 60)
    assert client.get(job["links"]["audio"]).status_code == 200
    assert client.get(job["links"]["audio"], headers={"Range": "bytes=0-99"}).status_code == 206  # <audio> seeks
    assert client.get(f"/api/jobs/{job['id']}").json()["expires_at"] < job["finished_at"] + 50
    time.sleep(1.8)
    assert client.get(f"/api/jobs/{job['id']}").status_code == 404


def stub_jobs(queue: JobQueue, names: list[str]) -> list[Job]:
    """Jobs without token segments, named (id and MIDI name) ``names``, each with its folder in ``queue``."""
    return [Job(id=name, settings=JobSettings(1, 1.0, 0, "original"), midi=None, midi_name=name,
                folder=queue.new_folder(name)) for name in names]  # fmt: skip


def test_job_queue_without_http_fails_jobs_with_reasons_and_keeps_running(tmp_path):
    def runner(job, queue):
        if job.midi_name == "user-error":
            raise SpecdiffError("bad input\nsecond line")
        if job.midi_name == "bug":
            raise KeyError("oops")
        queue.update(job, step=1)

    queue = JobQueue(runner, tmp_path, max_queued=10)
    queue.start()
    try:
        jobs = stub_jobs(queue, ["user-error", "bug", "fine"])
        for job in jobs:
            queue.submit(job)
        deadline = time.monotonic() + TIMEOUT
        while not all(j.state.terminal for j in jobs) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        queue.stop()
    assert [(j.state, j.error) for j in jobs] == [
        (JobState.FAILED, "bad input; second line"),
        (JobState.FAILED, "internal error: KeyError: 'oops'"),
        (JobState.DONE, None),
    ]
    assert not (tmp_path / "user-error").exists()  # nothing of a failed job is kept
    assert (tmp_path / "fine").is_dir()


def test_stopping_the_queue_cancels_waiting_jobs(tmp_path):
    started, release = threading.Event(), threading.Event()

    def runner(job, queue):
        started.set()
        release.wait(TIMEOUT)
        job.check_cancelled()

    queue = JobQueue(runner, tmp_path)
    queue.start()
    jobs = stub_jobs(queue, ["j0", "j1"])
    for job in jobs:
        queue.submit(job)
    assert started.wait(TIMEOUT)
    threading.Timer(0.2, release.set).start()
    queue.stop()
    assert [(j.state, j.error) for j in jobs] == [(JobState.CANCELLED, "the server is shutting down")] * 2


# ---------------------------------------------------------------------------------------------
# Schema, page, CLI side
# ---------------------------------------------------------------------------------------------


def test_openapi_schema_describes_the_api(serve):
    client, _ = serve()
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"post"} <= set(paths["/api/jobs"])
    assert {"get", "delete"} <= set(paths["/api/jobs/{job_id}"])
    for path in ("/api/jobs/{job_id}/events", "/api/jobs/{job_id}/audio.wav", "/api/jobs/{job_id}/spectrogram.png",
                 "/api/jobs/{job_id}/notes", "/api/info", "/api/health"):  # fmt: skip
        assert "get" in paths[path], path
    assert "post" in paths["/api/jobs/{job_id}/cancel"]
    post = paths["/api/jobs"]["post"]
    assert {"202", "400", "413", "422", "429"} <= set(post["responses"])
    form_ref = post["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].split("/")[-1]
    fields = schema["components"]["schemas"][form_ref]["properties"]
    assert {"midi", "example", "steps", "guidance", "seed", "scheduler"} <= set(fields)
    assert client.get("/docs").status_code == 200


def test_the_routes_come_from_api_routers_included_in_the_app(pipe):
    """create_app only assembles: every route is an APIRouter's, reachable by name in the app."""
    from fastapi import APIRouter

    from specdiff.server.routes import jobs, pages, results, service
    from specdiff.server.routes.submit import submit_router
    from specdiff.server.state import ServerState

    config = ServeConfig(default_steps=STEPS)
    app = create_app(Synthesizer(pipe), config, model_name="tiny-test")
    assert isinstance(app.state.server, ServerState) and app.state.queue is app.state.server.queue
    routers = [service.router, submit_router(config), jobs.router, results.router, pages.router]
    assert all(isinstance(router, APIRouter) for router in routers)
    from_routers = {(route.path, method) for router in routers for route in router.routes for method in route.methods}
    documented = {(path, method.upper()) for path, ops in app.openapi()["paths"].items() for method in ops}
    assert documented == {(path, method) for path, method in from_routers if path.startswith("/api/")}
    for router in routers:
        for route in router.routes:
            params = {"job_id": "abc"} if "{job_id}" in route.path else {}
            assert app.url_path_for(route.name, **params) == route.path.replace("{job_id}", "abc")


def test_the_page_and_its_files_are_served(serve):
    client, _ = serve()
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        assert asset in page.text
        response = client.get(asset)
        assert response.status_code == 200 and kind in response.headers["content-type"]
    for element_id in ("midi-file", "steps", "guidance", "seed", "submit", "player", "spectrogram", "piano-roll"):
        assert f'id="{element_id}"' in page.text


def test_info_reports_limits_and_defaults(serve):
    client, _ = serve(max_upload_bytes=12345, max_midi_seconds=30, default_guidance=1.0)
    info = client.get("/api/info").json()
    assert info["model"] == "tiny-test" and info["sample_rate"] == SR
    assert info["segment_seconds"] == pytest.approx(5.12)
    assert info["limits"]["max_upload_bytes"] == 12345 and info["limits"]["max_midi_seconds"] == 30
    assert info["defaults"] == {"steps": STEPS, "guidance": 1.0, "scheduler": "original"}
    assert "original" in info["schedulers"]


def test_cli_builds_the_app_from_a_model_folder(pipe, tmp_path):
    import argparse

    from specdiff.commands import serve as serve_cli

    parser = argparse.ArgumentParser()
    serve_cli.add_serve_arguments(parser.add_subparsers(dest="command"))
    defaults = parser.parse_args(["serve"])
    assert (defaults.host, defaults.port, defaults.func) == ("127.0.0.1", 8000, serve_cli.run_serve)

    folder = SpectrogramDiffusionPipeline(*build_models("tiny", seed=0, **TINY)).save_pretrained(tmp_path / "model")
    args = parser.parse_args(["serve", "--model", str(folder), "--device", "cpu", "--inverter", "griffinlim",
                              "--max-queued", "3", "--max-upload-mb", "0.5", "--steps", "7", "--max-notes", "900",
                              "--max-kept", "5", "--max-kept-mb", "1"])  # fmt: skip
    app = serve_cli.build_app(args)
    assert app.state.config.max_queued == 3
    assert (app.state.config.max_notes, app.state.config.max_kept_results) == (900, 5)
    assert app.state.config.max_kept_bytes == 2**20
    with running_server(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        assert client.get("/api/info").json()["model"] == "model"  # the folder's name, not its path
    assert app.state.config.max_upload_bytes == 2**19
    assert app.state.config.default_steps == 7
    app.state.synthesizer.close()

    missing = parser.parse_args(["serve", "--model", str(tmp_path / "nowhere")])
    with pytest.raises(SpecdiffError, match="model folder not found"):
        serve_cli.build_app(missing)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--port", "70000"])


def test_no_model_at_all_is_a_clear_error(monkeypatch):
    import argparse

    from specdiff.commands import serve as serve_cli
    from specdiff.pipeline import default_model

    monkeypatch.setattr(default_model, "default_model_path", lambda: None)
    parser = argparse.ArgumentParser()
    serve_cli.add_serve_arguments(parser.add_subparsers(dest="command"))
    with pytest.raises(SpecdiffError, match="--model"):
        serve_cli.build_app(parser.parse_args(["serve"]))


def test_loopback_detection():
    from specdiff.server.guards import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.5.0.1", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.2", "::", "example.org"))


def test_default_examples_are_existing_midi_files():
    from specdiff.commands.serve import default_examples

    for path in default_examples():
        assert path.is_file() and path.suffix == ".mid"


# ---------------------------------------------------------------------------------------------
# The matplotlib-free spectrogram picture
# ---------------------------------------------------------------------------------------------


def test_spectrogram_picture_uses_plotting_and_falls_back_without_matplotlib(tmp_path, monkeypatch):
    from specdiff.server.synth import save_spectrogram

    mel = np.linspace(-11, 4, 60 * 128, dtype=np.float32).reshape(60, 128)
    if importlib.util.find_spec("matplotlib") is not None:
        save_spectrogram(mel, tmp_path / "plot.png", "song.mid")
        width, height = struct.unpack(">II", (tmp_path / "plot.png").read_bytes()[16:24])
        assert (width, height) == (1000, 400)  # specdiff.evaluation.plotting's size, not the plain picture's
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: import raises
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    save_spectrogram(mel, tmp_path / "plain.png", "song.mid")
    assert (tmp_path / "plain.png").read_bytes() == png.encode_png(png.spectrogram_image(mel))


def test_fallback_png_decodes_to_the_heat_map(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    mel = np.full((1200, 128), math.log(1e-5), np.float32)
    mel[:, 0] = 4.0  # the lowest mel bin at full level
    mel[600:, 127] = 4.0  # the highest bin, second half only
    path = png.write_spectrogram_png(mel, tmp_path / "s.png")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (128 * png.BIN_HEIGHT, 1200, 3)
    bright, dark = (252, 253, 191), (0, 0, 4)  # the ends of magma
    assert (image[-png.BIN_HEIGHT :] == bright).all()  # low frequencies at the bottom
    assert (image[: png.BIN_HEIGHT, :600] == dark).all() and (image[: png.BIN_HEIGHT, 600:] == bright).all()
    assert (image[png.BIN_HEIGHT : -png.BIN_HEIGHT] == dark).all()
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]  # no temporary file left


def test_fallback_png_averages_long_songs_down_in_time():
    mel = np.zeros((png.MAX_WIDTH * 3 + 1, 128), np.float32)
    # 6001 frames: averaged in groups of ceil(6001 / 2000) = 4, so ceil(6001 / 4) = 1501 columns.
    assert png.spectrogram_image(mel).shape[1] == 1501
    # 300 frames: each repeated ceil(1000 / 300) = 4 times; the repeats are equal columns.
    ramp = np.repeat(np.linspace(-11, 4, 300, dtype=np.float32)[:, None], 128, axis=1)
    image = png.spectrogram_image(ramp)
    assert image.shape[1] == 1200
    assert (image[:, 0::4] == image[:, 3::4]).all() and (image[:, :-4:4] != image[:, 4::4]).any()
    assert png.colorize(np.array([0.0, 0.5, 1.0])).tolist() == [[0, 0, 4], [183, 55, 121], [252, 253, 191]]


def test_a_temporary_workdir_is_made_at_startup_and_removed_at_shutdown(pipe):
    synthesizer = Synthesizer(pipe, draw_spectrogram=lambda mel, path, title: png.write_spectrogram_png(mel, path))
    app = create_app(synthesizer, ServeConfig(default_steps=STEPS))
    try:
        with running_server(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            workdir = app.state.queue.workdir
            assert workdir.name.startswith("specdiff-serve-") and workdir.is_dir()
            job = wait_until(client, submit(client).json()["id"])
            assert (workdir / job["id"] / "audio.wav").is_file()
        assert not workdir.exists()
    finally:
        synthesizer.close()


def test_shutdown_ends_progress_streams_promptly_with_a_shutdown_event(pipe, capfd):
    synthesizer = Synthesizer(pipe, draw_spectrogram=lambda mel, path, title: png.write_spectrogram_png(mel, path))
    app = create_app(synthesizer, ServeConfig(default_steps=STEPS))
    context = running_server(app)
    url = context.__enter__()
    gate = Gate(pipe)
    stopper = threading.Thread(target=context.__exit__, args=(None, None, None))
    try:
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            job = submit(client, steps=4).json()
            assert gate.reached.wait(TIMEOUT)  # the job is running, held at its first step
            events = []
            with client.stream("GET", job["links"]["events"]) as stream:
                for line in stream.iter_lines():
                    if line.startswith("event:"):
                        events.append(line.split(":", 1)[1].strip())
                        if events == ["status"]:
                            started = time.monotonic()
                            stopper.start()  # the server stops with the client still following
                    elif line.startswith("data:") and events[-1] == "shutdown":
                        assert json.loads(line[5:]) == {"detail": "the server is shutting down"}
        assert events == ["status", "shutdown"]
        gate.open()  # the worker leaves its step and sees the queue's stop
        stopper.join(TIMEOUT)
        elapsed = time.monotonic() - started
        assert not stopper.is_alive()
        # Under running_server's 2 s graceful timeout: the stream ended, uvicorn cancelled nothing.
        assert elapsed < 1.5, f"shutdown took {elapsed:.2f} s"
    finally:
        gate.open()
        if stopper.ident is None:  # failed before the server was told to stop
            context.__exit__(None, None, None)
        else:
            stopper.join(TIMEOUT)
        synthesizer.close()
    err = capfd.readouterr().err
    assert "CancelledError" not in err and "timeout graceful shutdown exceeded" not in err
    with capfd.disabled():
        print(f"\nshutdown took {elapsed:.2f} s")


# ---------------------------------------------------------------------------------------------
# Bounded memory and disk: note cap, results on disk, eviction by count and bytes, a load test
# ---------------------------------------------------------------------------------------------


def dense_midi(num_notes: int, seconds: float = 100.0, tpq: int = 480) -> bytes:
    """A format-0 MIDI file of ``num_notes`` short notes in chords of up to 48 over ``seconds``, written
    compactly (running status, note-off as velocity 0): 340k notes take about 2 MB, like the issue's file."""
    chord = 48
    groups = -(-num_notes // chord)
    gap = max(2, round(seconds * 2 * tpq) // groups)  # ticks from one chord to the next
    wait = bytes([0x80 | ((gap - 1) >> 7), (gap - 1) & 0x7F]) if gap > 128 else bytes([gap - 1])  # varlen
    body = bytearray()
    for g in range(groups):
        pitches = [36 + p for p in range(min(chord, num_notes - g * chord))]
        for k, pitch in enumerate(pitches):  # onsets together...
            # The status byte once (note-on, channel 0); running status after it.
            body += b"\x00\x90" if g == k == 0 else (b"\x00" if k else wait)
            body += bytes([pitch, 100])
        for k, pitch in enumerate(pitches):  # ...released one tick later
            body += bytes([0 if k else 1, pitch, 0])
    body += b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq) + b"MTrk" + struct.pack(">I", len(body)) + bytes(body)


def rss_bytes() -> int:
    """This process's resident set size (the server runs in a thread of it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_too_many_notes_are_refused_with_400(serve):
    client, _ = serve(max_notes=100)
    response = submit(client, data=dense_midi(150, seconds=5.0), name="dense.mid")
    assert response.status_code == 400, response.text
    assert response.json()["detail"] == "dense.mid: more than 100 notes (this server's limit)"
    assert client.get("/api/info").json()["limits"]["max_notes"] == 100
    assert submit(client, data=dense_midi(100, seconds=5.0)).status_code == 202


def test_notes_live_on_disk_and_finished_jobs_drop_their_tokens(serve, tmp_path):
    client, app = serve()
    job = wait_until(client, submit(client).json()["id"])
    kept = app.state.queue.get(job["id"])
    assert kept.midi is None  # the token segments went with the synthesis
    assert not hasattr(kept, "notes") and kept.note_count == 3
    on_disk = json.loads((tmp_path / "work" / job["id"] / "notes.json").read_text())
    assert on_disk == client.get(job["links"]["notes"]).json()
    assert [n["pitch"] for n in on_disk["notes"]] == [60, 64, 67]
    assert kept.result_bytes == sum(p.stat().st_size for p in (tmp_path / "work" / job["id"]).iterdir())


def test_oldest_finished_results_are_evicted_by_count_with_410(serve, tmp_path):
    client, _ = serve(max_kept_results=2)
    ids = [wait_until(client, submit(client).json()["id"])["id"] for _ in range(3)]
    gone = client.get(f"/api/jobs/{ids[0]}")
    assert gone.status_code == 410 and "evicted" in gone.json()["detail"]
    assert client.get(f"/api/jobs/{ids[0]}/audio.wav").status_code == 410
    assert not (tmp_path / "work" / ids[0]).exists()
    assert [client.get(f"/api/jobs/{i}").status_code for i in ids[1:]] == [200, 200]
    health = client.get("/api/health").json()
    assert (health["kept"], health["evicted"]) == (2, 1)
    assert client.get("/api/jobs/never-was").status_code == 404  # unknown ids stay 404


def test_a_cancelled_job_never_evicts_another_result(serve, pipe):
    client, _ = serve(max_kept_results=2)
    kept = [wait_until(client, submit(client).json()["id"])["id"] for _ in range(2)]
    gate = Gate(pipe)
    try:
        running = submit(client).json()["id"]
        assert gate.reached.wait(TIMEOUT)
        waiting = submit(client).json()["id"]
        assert client.post(f"/api/jobs/{waiting}/cancel").json()["state"] == "cancelled"
        assert [client.get(f"/api/jobs/{i}/audio.wav").status_code for i in kept] == [200, 200]
        assert client.get(f"/api/jobs/{waiting}").json()["state"] == "cancelled"
    finally:
        gate.open()
    wait_until(client, running)  # a third result: now the oldest one goes
    assert client.get(f"/api/jobs/{kept[0]}").status_code == 410
    assert client.get(f"/api/jobs/{kept[1]}").status_code == 200


def test_oldest_finished_results_are_evicted_by_bytes_but_never_the_newest(serve, tmp_path):
    client, _ = serve(max_kept_bytes=1)  # every result is over it
    first = wait_until(client, submit(client).json()["id"])
    assert client.get(first["links"]["audio"]).status_code == 200  # the newest result is always kept
    second = wait_until(client, submit(client).json()["id"])
    assert client.get(f"/api/jobs/{first['id']}").status_code == 410
    assert client.get(second["links"]["audio"]).status_code == 200
    health = client.get("/api/health").json()
    assert health["kept"] == 1 and health["kept_bytes"] > 0
    assert sorted(p.name for p in (tmp_path / "work").iterdir() if p.is_dir()) == [second["id"]]


#: The load tests' documented ceiling: the server's resident memory may grow by at most this much
#: over its warmed-up size while dense uploads are refused and uploads at the note cap are synthesized
#: and kept. (Before the bounds, six 340k-note jobs added 900 MB.)
LOAD_RSS_CEILING_BYTES = 150 * 2**20


def _load_test(client, dense_uploads: int, capped_jobs: int, max_notes: int) -> dict:
    """Submit ``dense_uploads`` 340k-note files (refused: too many notes) and ``capped_jobs`` files at
    the note cap (synthesized, kept); return the RSS figures."""
    import gc

    dense = dense_midi(340_000)
    assert 1.8e6 < len(dense) < 2 * 2**20  # under the 2 MiB upload limit, as in the issue
    capped = dense_midi(max_notes)
    wait_until(client, submit(client, data=capped, steps=1).json()["id"])  # warm up allocator and model
    gc.collect()
    before = peak = rss_bytes()
    for _ in range(dense_uploads):
        response = submit(client, data=dense, name="dense.mid", steps=1)
        assert response.status_code == 400 and "notes" in response.json()["detail"]
        peak = max(peak, rss_bytes())
    for _ in range(capped_jobs):
        job = wait_until(client, submit(client, data=capped, steps=1).json()["id"])
        assert job["state"] == "done" and job["midi"]["notes"] == max_notes
        peak = max(peak, rss_bytes())
    gc.collect()
    return {"before": before, "peak": peak, "after": rss_bytes()}


def test_load_dense_uploads_keep_memory_bounded(serve):
    client, _ = serve()
    max_notes = client.get("/api/info").json()["limits"]["max_notes"]
    figures = _load_test(client, dense_uploads=3, capped_jobs=4, max_notes=max_notes)
    print("load test RSS (MiB):", {k: round(v / 2**20, 1) for k, v in figures.items()})
    assert figures["peak"] - figures["before"] < LOAD_RSS_CEILING_BYTES, figures


@pytest.mark.slow
def test_load_many_dense_uploads_keep_memory_bounded(serve):
    client, _ = serve(max_kept_results=32)
    max_notes = client.get("/api/info").json()["limits"]["max_notes"]
    figures = _load_test(client, dense_uploads=20, capped_jobs=40, max_notes=max_notes)
    print("load test RSS (MiB):", {k: round(v / 2**20, 1) for k, v in figures.items()})
    assert figures["peak"] - figures["before"] < LOAD_RSS_CEILING_BYTES, figures
    assert client.get("/api/health").json()["kept"] <= 32


# ---------------------------------------------------------------------------------------------
# Admission before work
# ---------------------------------------------------------------------------------------------


class CountingReader:
    """Stands in for ``read_midi`` in the app: counts calls, optionally slow, then does the real work."""

    def __init__(self, delay: float = 0.0):
        self.calls, self.delay, self.lock = 0, delay, threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        return read_midi(*args, **kwargs)


def test_a_full_queue_refuses_before_parsing_the_upload(serve, pipe, monkeypatch):
    from specdiff.server import app as app_module

    client, _ = serve(max_queued=1)
    gate = Gate(pipe)
    try:
        running = submit(client).json()
        assert gate.reached.wait(TIMEOUT)
        waiting = submit(client).json()
        reader = CountingReader()
        monkeypatch.setattr(app_module, "read_midi", reader)
        started = time.monotonic()
        refused = submit(client, data=dense_midi(340_000), name="dense.mid")
        assert refused.status_code == 429 and "queue is full" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) > 0
        assert reader.calls == 0  # refused before the form was parsed or the MIDI read
        assert time.monotonic() - started < 2.0
        assert client.get("/api/health").json()["refused"] == 1
    finally:
        gate.open()
    for job in (running, waiting):
        assert wait_until(client, job["id"])["state"] == "done"


def test_the_last_place_is_reserved_before_parsing_and_parsing_is_off_the_event_loop(serve, pipe, monkeypatch):
    from specdiff.server import app as app_module

    client, _ = serve(max_queued=1, max_parse_seconds=30.0)  # the stand-in reader takes 1 s
    gate = Gate(pipe)
    reader = CountingReader(delay=1.0)
    try:
        running = submit(client).json()
        assert gate.reached.wait(TIMEOUT)
        monkeypatch.setattr(app_module, "read_midi", reader)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            uploads = [pool.submit(submit, client, seed=seed) for seed in (1, 2)]
            time.sleep(0.3)  # both uploads have arrived; one is being parsed
            started = time.monotonic()
            assert client.get("/api/health").status_code == 200
            assert time.monotonic() - started < 0.5  # the event loop is not busy parsing
            codes = sorted(f.result().status_code for f in uploads)
        assert codes == [202, 429]
        assert reader.calls == 1  # the refused upload was never parsed
    finally:
        gate.open()
    assert wait_until(client, running["id"])["state"] == "done"


# ---------------------------------------------------------------------------------------------
# Cross-site protection: Host (DNS rebinding) and Origin
# ---------------------------------------------------------------------------------------------


def test_foreign_host_headers_are_refused(serve):
    client, _ = serve()
    port = client.base_url.port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
        response = client.get("/api/info", headers={"Host": host})
        assert response.status_code == 400, host
        assert "--allow-host" in response.json()["detail"]
        assert client.post("/api/jobs", headers={"Host": host}, files={"midi": ("a.mid", SONG)}).status_code == 400
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "127.0.0.2"):
        assert client.get("/api/info", headers={"Host": host}).status_code == 200, host
    assert client.get("/api/health").json()["submitted"] == 0


def test_allowed_hosts_flag_accepts_more_names(serve):
    client, _ = serve(allowed_hosts=["music.lan"])
    assert client.get("/api/info", headers={"Host": "music.lan:8000"}).status_code == 200
    assert client.get("/api/info", headers={"Host": "evil.example"}).status_code == 400
    anything, _ = serve(allowed_hosts=["*"])
    assert anything.get("/api/info", headers={"Host": "evil.example"}).status_code == 200


def test_state_changing_requests_from_other_origins_are_refused(serve):
    client, _ = serve()
    own = str(client.base_url).rstrip("/")
    for origin in ("http://evil.example", "null", f"{own}.evil.example", own.replace("http:", "https:"),
                   "http://localhost:1"):  # fmt: skip
        response = submit_with(client, {"Origin": origin})
        assert response.status_code == 403, origin
        assert "--allow-origin" in response.json()["detail"]
    assert submit_with(client, {"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client.get("/api/health").json()["submitted"] == 0
    job = submit_with(client, {"Origin": own})  # the page itself
    assert job.status_code == 202, job.text
    assert submit(client).status_code == 202  # programs send no Origin
    job_id = job.json()["id"]
    assert client.post(f"/api/jobs/{job_id}/cancel", headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.delete(f"/api/jobs/{job_id}", headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.get(f"/api/jobs/{job_id}", headers={"Origin": "http://evil.example"}).status_code == 200
    wait_until(client, job_id)


def test_allowed_origins_flag_accepts_another_origin(serve):
    client, _ = serve(allowed_origins=["http://localhost:3000/"])
    assert submit_with(client, {"Origin": "http://localhost:3000"}).status_code == 202
    assert submit_with(client, {"Origin": "http://localhost:3001"}).status_code == 403


def submit_with(client, headers: dict) -> httpx.Response:
    fields = {"steps": str(STEPS)}
    return client.post("/api/jobs", files={"midi": ("song.mid", SONG, "audio/midi")}, data=fields, headers=headers)


def test_host_policy_for_wildcard_and_named_addresses():
    from specdiff.server.guards import HostPolicy, split_host

    assert split_host("[::1]:8000") == ("::1", 8000) and split_host("Localhost.:80") == ("localhost", 80)
    everywhere = HostPolicy("0.0.0.0")
    assert all(everywhere.allows(h) for h in ("192.168.1.5", "localhost", "::1", "10.0.0.1"))
    assert not everywhere.allows("evil.example")
    lan = HostPolicy("192.168.1.5", ["music.lan"])
    assert lan.allows("192.168.1.5") and lan.allows("music.lan")
    assert not lan.allows("localhost") and not lan.allows("10.0.0.1") and not lan.allows("evil.example")


# ---------------------------------------------------------------------------------------------
# Offline documentation, favicon
# ---------------------------------------------------------------------------------------------


def test_docs_pages_reference_no_external_url(serve):
    import re

    from specdiff.server.docs import bundled_assets

    client, _ = serve()
    if bundled_assets() is None:
        pytest.skip("fastapi-offline is not installed (the `serve` extra)")
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", response.text, re.I), page
        assets = re.findall(r"""(?:src|href)=["'](/[^"']+)["']""", response.text)
        assert assets, page
        for asset in assets:
            assert client.get(asset).status_code == 200, asset
    assert "swagger-ui-bundle.js" in client.get("/docs").text


def test_docs_fallback_without_the_assets_package(serve, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi_offline", None)  # as if not installed
    client, _ = serve()
    page = client.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text and "http" not in page.text


def test_favicon_is_served(serve):
    client, _ = serve()
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.text.startswith("<svg")


# ---------------------------------------------------------------------------------------------
# Never silently limited audio
# ---------------------------------------------------------------------------------------------


def test_the_job_says_when_the_soft_limiter_shaped_the_audio(serve, pipe):
    from specdiff.audio.files import LIMITER_CEILING, LIMITER_NOTE

    client, _ = serve()
    plain = wait_until(client, submit(client, seed=3).json()["id"])
    assert plain["limited"] is False and plain["limiter_note"] is None
    assert 0 < plain["audio_peak"] <= 1.0
    pipe.inverter.gain = 4.0 / plain["audio_peak"]  # the same audio, four times over full scale
    try:
        loud = wait_until(client, submit(client, seed=3).json()["id"])
    finally:
        pipe.inverter.gain = 1.0
    assert loud["state"] == "done"
    assert loud["limited"] is True and loud["audio_peak"] == pytest.approx(4.0, rel=1e-3)
    assert loud["limiter_note"] == LIMITER_NOTE
    audio, _ = read_wav(client.get(loud["links"]["audio"]).content)
    assert np.abs(audio).max() <= LIMITER_CEILING + 1e-4  # soft-limited, never hard-clipped at 1.0


# ---------------------------------------------------------------------------------------------
# Round 2: security headers, token, HEAD, one error shape, costly uploads
# ---------------------------------------------------------------------------------------------


def test_every_answer_carries_the_security_headers(serve):
    client, _ = serve()
    answers = [client.get("/"), client.get("/api/info"), client.get("/api/jobs/nope"), client.get("/docs"),
               client.post("/api/jobs", headers={"Origin": "http://evil.example"}, data={"example": "x"})]  # fmt: skip
    assert [a.status_code for a in answers] == [200, 200, 404, 200, 403]
    for answer in answers:
        csp = answer.headers["content-security-policy"]
        assert "frame-ancestors 'self'" in csp and "object-src 'none'" in csp
        assert answer.headers["x-frame-options"] == "SAMEORIGIN"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
    # The page runs only its own scripts; only the docs pages (FastAPI's inline starter) may inline.
    assert "'unsafe-inline'" not in answers[0].headers["content-security-policy"]
    assert "script-src 'self' 'unsafe-inline'" in answers[3].headers["content-security-policy"]


def test_head_on_the_page(serve):
    client, _ = serve()
    head, get = client.head("/"), client.get("/")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"] == "text/html; charset=utf-8"
    assert client.head("/favicon.ico").status_code == 200


def test_bad_settings_get_one_line_that_does_not_echo_the_upload(serve):
    client, _ = serve()
    secret = b"MThd-not-really-" + b"x" * 5000
    answer = client.post("/api/jobs", files={"midi": ("", secret, "audio/midi")}, data={"steps": "many"})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and detail.startswith("invalid request: ") and "steps" in detail
    assert "xxxx" not in answer.text and len(answer.content) < 1000


def test_a_token_guards_every_request_and_the_page_keeps_it(serve):
    client, _ = serve(token="s3cret", bind_host="0.0.0.0", allowed_hosts=["*"])
    assert client.get("/api/info").status_code == 401
    assert client.get("/api/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
    refused = submit(client)
    assert refused.status_code == 401 and "token" in refused.json()["detail"]
    assert client.get("/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/static/app.js").status_code == 200  # the page's own files need none
    # Opening the printed URL sets a cookie; the page's later requests (fetch, audio, events) carry it.
    page = client.get("/?token=s3cret")
    assert page.status_code == 200 and "HttpOnly" in page.headers["set-cookie"]
    assert "SameSite=Strict" in page.headers["set-cookie"]
    assert client.get("/api/info").status_code == 200  # httpx keeps the cookie, as a browser does
    job = submit(client)
    assert job.status_code == 202


def test_serve_makes_a_token_off_loopback_only():
    from specdiff.commands.serve import resolve_token

    class Args:
        token = None
        host = "0.0.0.0"

    args = Args()
    made = resolve_token(args)
    assert made and len(made) >= 32 and resolve_token(args) == made  # once per run: URL and server agree
    args.host = "127.0.0.1"
    args._generated_token = None
    assert resolve_token(args) is None
    args.token = "given"
    assert resolve_token(args) == "given"
    with pytest.raises(ValueError, match="token"):
        ServeConfig(token=" ")


def test_a_pedal_storm_is_refused_by_the_event_budget(serve):
    from conftest import pedal_storm_midi

    client, app = serve(max_events=2_000)
    answer = submit(client, pedal_storm_midi(200, 5_000), name="storm.mid")
    assert answer.status_code == 400
    detail = answer.json()["detail"]
    assert detail.startswith("storm.mid") and "this server's limit" in detail
    assert app.state.queue.free_places() == app.state.config.max_queued  # no place kept


def test_an_upload_over_the_parse_budget_is_refused(serve):
    from conftest import pedal_storm_midi

    client, app = serve(max_parse_seconds=1e-9)
    answer = submit(client, pedal_storm_midi(200, 5_000), name="slow.mid")
    assert answer.status_code == 400
    assert "took more than" in answer.json()["detail"] and "this server's limit" in answer.json()["detail"]
    assert not list((app.state.queue.workdir).glob("*/notes.json"))  # nothing written for it


def test_a_parse_ticket_stops_on_shutdown_cancel_and_deadline(tmp_path):
    from specdiff.errors import MidiError
    from specdiff.server.uploads import ParseTicket, UploadCancelled

    stopping = threading.Event()
    ticket = ParseTicket("a.mid", 60.0, stopping)
    ticket.check()  # within budget: nothing
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "notes.json").write_text("{}")
    ticket.keep_folder(folder)
    ticket.cancel()  # the request went away: what the parse wrote goes with it
    assert not folder.exists()
    with pytest.raises(UploadCancelled, match="cancelled"):
        ticket.check()
    late = tmp_path / "late"
    late.mkdir()
    with pytest.raises(UploadCancelled):
        ticket.keep_folder(late)  # written after the cancel: removed at once
    assert not late.exists()

    with pytest.raises(MidiError, match="more than"):
        ParseTicket("b.mid", 1e-9, stopping).check()
    stopping.set()
    with pytest.raises(UploadCancelled, match="shutting down"):
        ParseTicket("c.mid", 60.0, stopping).check()


def test_serve_logs_each_warning_once_and_its_job_lines(capsys):
    import logging

    from specdiff.cli import _LogHandler
    from specdiff.commands.serve import configure_logging

    package = logging.getLogger("specdiff")
    cli_handler = _LogHandler(logging.WARNING)  # what `specdiff` installs for every command
    package.addHandler(cli_handler)
    serve_logger = logging.getLogger("specdiff.serve")
    before = list(serve_logger.handlers)
    try:
        configure_logging(quiet=False)
        configure_logging(quiet=False)  # idempotent
        logging.getLogger("specdiff.audio.files").warning("out.wav: peak 1.30 exceeds full scale")
        serve_logger.info("job abc queued")
        err = capsys.readouterr().err
    finally:
        package.removeHandler(cli_handler)
        serve_logger.handlers[:] = before
        serve_logger.setLevel(logging.NOTSET)
    assert err.count("peak 1.30 exceeds full scale") == 1
    assert err.count("job abc queued") == 1


def test_progress_streams_are_capped_per_client(serve, pipe):
    client, app = serve(max_streams_per_client=2)
    gate = Gate(pipe)
    try:
        job = submit(client).json()["id"]
        assert gate.reached.wait(TIMEOUT)
        url = f"/api/jobs/{job}/events"
        with client.stream("GET", url) as first, client.stream("GET", url) as second:
            assert first.status_code == second.status_code == 200
            refused = client.get(url)
            assert refused.status_code == 429 and "poll GET" in refused.json()["detail"]
            assert client.get(f"/api/jobs/{job}").status_code == 200  # polling still works
        for _ in range(100):  # the closed streams are noticed within a few polls
            if not app.state.open_streams:
                break
            time.sleep(0.05)
        assert not app.state.open_streams
        with client.stream("GET", url) as again:
            assert again.status_code == 200
    finally:
        gate.open()
    wait_until(client, job)


def test_half_sent_headers_are_cut_after_the_header_timeout(serve, pipe):
    import socket

    client, _ = serve(header_timeout=0.5)
    host, port = client.base_url.host, client.base_url.port
    slow = socket.create_connection((host, port))
    silent = socket.create_connection((host, port))
    try:
        slow.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        slow.settimeout(10)
        silent.settimeout(10)
        started = time.monotonic()
        assert slow.recv(1024) == b"" and silent.recv(1024) == b""  # closed by the server
        assert time.monotonic() - started < 5
    finally:
        slow.close()
        silent.close()
    # A request that lasts longer than the timeout once its headers are in is not cut: a progress
    # stream open for 1 s, then the job ends and the stream delivers it.
    gate = Gate(pipe)
    try:
        job = submit(client).json()["id"]
        assert gate.reached.wait(TIMEOUT)
        with client.stream("GET", f"/api/jobs/{job}/events") as answer:
            time.sleep(1.0)
            gate.open()
            assert '"state": "done"' in answer.read().decode()
    finally:
        gate.open()


# ---------------------------------------------------------------------------------------------
# Results that survive a restart (--workdir: job metadata in SQLite)
# ---------------------------------------------------------------------------------------------


def _service(pipe, workdir, **overrides):
    config = ServeConfig(**{"default_steps": STEPS, "workdir": workdir, **overrides})
    synthesizer = Synthesizer(pipe, draw_spectrogram=lambda mel, path, title: png.write_spectrogram_png(mel, path))
    return create_app(synthesizer, config, model_name="tiny-test"), synthesizer


def test_a_restart_serves_finished_jobs_and_forgets_only_what_expired(pipe, tmp_path):
    workdir = tmp_path / "work"
    app, synthesizer = _service(pipe, workdir)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        done = wait_until(client, submit(client, seed=3).json()["id"])
        audio = client.get(done["links"]["audio"]).content
        notes = client.get(done["links"]["notes"]).json()
    synthesizer.close()
    (workdir / "stray-folder-x1").mkdir()  # not a job folder (name): kept
    orphan = workdir / "AAAAAAAAAAAAAAAA"  # a job folder no record knows (a crash mid-upload)
    orphan.mkdir()
    (orphan / "notes.json").write_text("{}")

    app, synthesizer = _service(pipe, workdir)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        again = client.get(f"/api/jobs/{done['id']}").json()
        assert again["state"] == "done" and again["settings"]["seed"] == 3
        assert client.get(done["links"]["audio"]).content == audio
        assert client.get(done["links"]["notes"]).json() == notes
        assert client.get("/api/health").json()["kept"] == 1
        second = wait_until(client, submit(client).json()["id"])
        assert client.delete(f"/api/jobs/{second['id']}").status_code == 204  # deleted: not restored
    synthesizer.close()
    assert (workdir / "stray-folder-x1").is_dir() and not orphan.exists()
    from specdiff.server.store import JobStore

    store = JobStore(workdir)
    assert [r["id"] for r in store.records()] == [done["id"]]
    store.close()

    # The same TTL after a restart: with a result TTL already over, the job is gone, files too.
    app, synthesizer = _service(pipe, workdir, result_ttl=1e-3)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        assert client.get(f"/api/jobs/{done['id']}").status_code == 404
    synthesizer.close()
    assert not (workdir / done["id"]).exists()


def test_jobs_running_or_queued_at_a_crash_come_back_as_interrupted(tmp_path):
    started, release = threading.Event(), threading.Event()

    def runner(job, queue):
        started.set()
        release.wait(TIMEOUT)

    crashed = JobQueue(runner, tmp_path, persistent=True)
    crashed.start()
    jobs = stub_jobs(crashed, ["job0", "job1"])
    for job in jobs:
        crashed.submit(job)
    assert started.wait(TIMEOUT)
    try:
        # A second process on the same folder, while the first never stopped (as after a kill -9).
        restarted = JobQueue(runner, tmp_path, persistent=True)
        restarted.start()
        try:
            for job in jobs:
                back = restarted.get(job.id)
                assert back.state is JobState.FAILED and back.error.startswith("interrupted")
                assert not back.folder.exists()
        finally:
            restarted.stop()
    finally:
        release.set()
        crashed.stop()


def test_without_a_workdir_nothing_is_stored(pipe):
    config = ServeConfig(default_steps=STEPS)  # a temporary folder, removed at shutdown
    synthesizer = Synthesizer(pipe, draw_spectrogram=lambda mel, path, title: png.write_spectrogram_png(mel, path))
    app = create_app(synthesizer, config, model_name="tiny-test")
    assert app.state.queue.persistent is False
    with running_server(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        assert wait_until(client, submit(client).json()["id"])["state"] == "done"
        workdir = app.state.queue.workdir
        assert not (workdir / "jobs.sqlite3").exists() and not list(workdir.glob("*.sqlite3*"))
    synthesizer.close()
    assert not workdir.exists()  # the temporary folder went with the server


def test_shutdown_during_a_parse_is_prompt_and_leaves_no_files(pipe, tmp_path, monkeypatch, capfd):
    """The probe's case: a slow parse while the server stops. Now the parse checks the stop flag,
    the client gets 503 (or the connection closes), no traceback, no job folder or notes.json."""
    from specdiff.server import app as app_module

    parsing = threading.Event()

    def endless_reader(*args, check_cancelled=None, **kwargs):
        parsing.set()
        while True:  # a parse that would take minutes, checking its ticket as the parser does
            check_cancelled()
            time.sleep(0.01)

    monkeypatch.setattr(app_module, "read_midi", endless_reader)
    workdir = tmp_path / "work"
    app, synthesizer = _service(pipe, workdir, max_parse_seconds=600.0)
    answers = []
    with running_server(app) as url:
        client = httpx.Client(base_url=url, timeout=TIMEOUT)

        def upload():
            try:
                answers.append(submit(client).status_code)
            except httpx.HTTPError as err:  # the server closed the connection while stopping
                answers.append(type(err).__name__)

        thread = threading.Thread(target=upload)
        thread.start()
        assert parsing.wait(TIMEOUT)
        stopped_at = time.monotonic()
    shutdown_seconds = time.monotonic() - stopped_at
    thread.join(TIMEOUT)
    client.close()
    synthesizer.close()
    # Well under the server's 2 s graceful-shutdown limit, which the old parse ran into.
    assert shutdown_seconds < 1.9, shutdown_seconds
    assert answers == [503]
    assert not [p for p in workdir.iterdir() if p.is_dir()]  # no job folder, no notes.json
    err = capfd.readouterr().err
    assert "Traceback" not in err and "CancelledError" not in err


def test_serve_flags_reach_the_config():
    import argparse

    from specdiff.commands.serve import add_serve_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser.add_subparsers())
    args = parser.parse_args(["serve", "--max-streams-per-client", "3", "--header-timeout", "2.5",
                              "--max-events", "1000", "--max-parse-seconds", "0.5", "--token", "abc",
                              "--steps", "2", "--guidance", "1.0", "--scheduler", "ddim"])  # fmt: skip
    config = config_from_args(args)
    assert (config.max_streams_per_client, config.header_timeout) == (3, 2.5)
    assert (config.max_events, config.max_parse_seconds, config.token) == (1000, 0.5, "abc")
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--header-timeout", "0"])


def test_serve_limit_flags_are_generated_from_the_config():
    import argparse
    import dataclasses

    from specdiff.commands.serve import LIMIT_FLAGS, add_serve_arguments, config_from_args
    from specdiff.server.config import ServeConfig

    fields = {f.name for f in dataclasses.fields(ServeConfig)}
    assert {flag.field for flag in LIMIT_FLAGS} <= fields
    assert len({flag.field for flag in LIMIT_FLAGS}) == len(LIMIT_FLAGS)
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser.add_subparsers())
    page = ["--steps", "2", "--guidance", "1.0", "--scheduler", "ddim"]  # filled from sampling.json by run_serve
    defaults, config = ServeConfig(), config_from_args(parser.parse_args(["serve", *page]))
    for flag in LIMIT_FLAGS:  # no flag given: every limit is the config's own default, of its type
        value, default = getattr(config, flag.field), getattr(defaults, flag.field)
        assert value == default and type(value) is type(default), flag.option
    config = config_from_args(parser.parse_args(["serve", *page, "--max-upload-mb", "3", "--max-kept-mb", "0.5",
                                                 "--max-queued", "0", "--max-steps", "40"]))  # fmt: skip
    assert (config.max_upload_bytes, config.max_kept_bytes) == (3 * 2**20, 2**19)
    assert (config.max_queued, config.max_steps) == (0, 40)
