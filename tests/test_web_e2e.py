"""The web page end to end in headless Chromium: upload a MIDI file, follow the job, play the result.

Needs Playwright's Python package and a system Chromium (never Playwright's own download):

    pip install playwright          # the Python side only; do NOT run `playwright install`
    apt-get install -y chromium     # Debian's browser, used through executable_path

Without either the tests skip and say which is missing. ``SPECDIFF_CHROMIUM`` overrides the path.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the `serve` extra is not installed (pip install 'specdiff[serve]')")
pytest.importorskip("uvicorn", reason="the `serve` extra is not installed (pip install 'specdiff[serve]')")
pytest.importorskip("multipart", reason="the `serve` extra is not installed (pip install 'specdiff[serve]')")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install playwright; no `playwright install`)"
)
torch = pytest.importorskip("torch")

from specdiff.models.presets import build_models  # noqa: E402
from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline  # noqa: E402
from specdiff.server import png  # noqa: E402
from specdiff.server.app import create_app, running_server  # noqa: E402
from specdiff.server.config import ServeConfig  # noqa: E402
from specdiff.server.synth import Synthesizer  # noqa: E402

torch.set_num_threads(1)

TINY = dict(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=48)
EXAMPLE = Path(__file__).parent / "data" / "tokenizer" / "bach_bwv66_6.mid"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_MS = 60_000


def find_chromium() -> tuple[str | None, str]:
    """(path of a system Chromium, or None and why not)."""
    path = os.environ.get("SPECDIFF_CHROMIUM")
    if path:
        return (path, "") if os.access(path, os.X_OK) else (None, f"SPECDIFF_CHROMIUM={path} is not an executable")
    found = next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)
    return found, "" if found else "no system Chromium found (apt-get install -y chromium, or set SPECDIFF_CHROMIUM)"


def midi_bytes(notes: list[tuple[int, float, float]], tpq: int = 480) -> bytes:
    """Format-0 Standard MIDI File at 120 bpm; notes are (pitch, start s, end s)."""

    def varlen(value: int) -> bytes:
        out = [value & 0x7F]
        while value > 0x7F:
            value >>= 7
            out.append(0x80 | (value & 0x7F))
        return bytes(reversed(out))

    events = sorted([(round(s * 2 * tpq), 1, bytes([0x90, p, 100])) for p, s, _ in notes]
                    + [(round(e * 2 * tpq), 0, bytes([0x80, p, 0])) for p, _, e in notes])  # fmt: skip
    body, now = bytearray(b"\x00\xc0\x00"), 0
    for tick, _, message in events:
        body += varlen(tick - now) + message
        now = tick
    body += b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq) + b"MTrk" + struct.pack(">I", len(body)) + bytes(body)


class MeanInverter:
    """Cheap stand-in inverter: each frame's mean log-mel, squashed into [-1, 1], for 320 samples."""

    sample_rate = 16000

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        return np.repeat(np.tanh(mel.mean(-1) / 4.0), 320, axis=-1).astype(np.float32)


@pytest.fixture(scope="module")
def browser():
    executable, why_not = find_chromium()
    if executable is None:
        pytest.skip(why_not)
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=executable, args=["--autoplay-policy=no-user-gesture-required", "--mute-audio"]
            )
        except sync_api.Error as err:
            pytest.skip(f"Chromium at {executable} does not start under Playwright: {str(err).splitlines()[0]}")
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    pipe = SpectrogramDiffusionPipeline(*build_models("tiny", seed=0, **TINY), inverter=MeanInverter())
    synthesizer = Synthesizer(pipe, draw_spectrogram=lambda mel, path, title: png.write_spectrogram_png(mel, path))
    config = ServeConfig(default_steps=2, workdir=tmp_path_factory.mktemp("work"), examples=[EXAMPLE])
    with running_server(create_app(synthesizer, config, model_name="tiny-test")) as url:
        yield url
    synthesizer.close()


@pytest.fixture
def page(browser, base_url):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(base_url)
    page.wait_for_selector("body[data-state=ready]")
    yield page
    context.close()


def test_upload_synthesize_and_play(page, tmp_path):
    song = tmp_path / "arpeggio.mid"
    song.write_bytes(midi_bytes([(60, 0.0, 0.4), (64, 0.4, 0.8), (67, 0.8, 1.2), (72, 1.2, 1.6)]))
    assert "tiny-test" in page.inner_text("#model-info")
    page.set_input_files("#midi-file", str(song))
    page.fill("#steps", "3")
    page.fill("#seed", "11")
    page.click("#submit")
    page.wait_for_selector("body[data-state=done]")

    state = page.inner_text("#state")
    assert state.startswith("Done:") and "seed 11" in state
    assert page.eval_on_selector("#progress", "p => p.value") == 1
    assert "arpeggio.mid: 3 steps" in page.inner_text("#result-info")

    # The piano roll shows the four notes: some pixels differ from the background.
    page.wait_for_selector("#roll-panel:not([hidden])")
    lit = page.evaluate("""() => {
        const c = document.getElementById('piano-roll');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] > 60 || d[i + 1] > 60 || d[i + 2] > 60) n++;
        return n;
    }""")
    assert lit > 50

    # The spectrogram picture loaded: 1.6 s + 0.5 s release tail = 105 frames, 10 columns each.
    page.wait_for_function("document.getElementById('spectrogram').complete")
    assert page.eval_on_selector("#spectrogram", "img => img.naturalWidth") == 1050

    # The audio plays to its end in the page's own player.
    duration = page.evaluate("""() => new Promise((resolve, reject) => {
        const player = document.getElementById('player');
        player.addEventListener('ended', () => resolve(player.duration));
        player.addEventListener('error', () => reject(new Error('audio error ' + player.error.code)));
        player.play().catch(reject);
    })""")
    assert duration == pytest.approx(2.1, abs=0.01)
    assert page.eval_on_selector("#player", "p => p.currentTime") == pytest.approx(2.1, abs=0.05)
    if os.environ.get("SPECDIFF_E2E_SCREENSHOT"):
        page.screenshot(path=os.environ["SPECDIFF_E2E_SCREENSHOT"], full_page=True)


def test_a_bad_file_shows_the_servers_reason(page, tmp_path):
    bad = tmp_path / "notes.mid"
    bad.write_bytes(b"not a MIDI file")
    page.set_input_files("#midi-file", str(bad))
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    assert "notes.mid: not a MIDI file" in page.inner_text("#error")
    assert page.get_attribute("body", "data-state") == "error"


def test_pick_a_bundled_example(page):
    page.check('input[name="source"][value="example"]')
    assert page.is_disabled("#midi-file") and not page.is_disabled("#example")
    page.select_option("#example", EXAMPLE.name)
    page.fill("#steps", "1")
    page.click("#submit")
    page.wait_for_selector("body[data-state=done]")
    assert page.inner_text("#result-info").startswith(f"{EXAMPLE.name}: 1 steps")
    assert page.eval_on_selector("#player", "p => p.src").endswith("/audio.wav")


def test_a_page_on_another_origin_cannot_submit_jobs(browser, base_url):
    """A form POST and a no-cors fetch from a foreign page reach the server but are refused (403)."""
    import json
    import urllib.request

    def submitted() -> int:
        with urllib.request.urlopen(f"{base_url}/api/health") as response:
            return json.load(response)["submitted"]

    before = submitted()
    attacker = f"""<!doctype html><html><body>
      <form id="f" method="post" enctype="multipart/form-data" action="{base_url}/api/jobs">
        <input name="example" value="{EXAMPLE.name}"><input name="steps" value="1">
      </form></body></html>"""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.route("http://evil.example/**", lambda route: route.fulfill(body=attacker, content_type="text/html"))
        page.goto("http://evil.example/")
        status = page.evaluate(f"""async () => {{
            const form = new FormData();
            form.append("example", "{EXAMPLE.name}");
            try {{
                await fetch("{base_url}/api/jobs", {{method: "POST", mode: "no-cors", body: form}});
            }} catch (err) {{ return "failed: " + err.message; }}  // the refused connection may close early
            return "sent";
        }}""")
        assert status in ("sent", "failed: Failed to fetch")
        with page.expect_navigation():
            page.eval_on_selector("#f", "f => f.submit()")
        assert "cross-origin request refused" in page.inner_text("body")
    finally:
        context.close()
    assert submitted() == before


def test_docs_render_with_the_network_blocked(browser, base_url):
    """Swagger UI draws the API from local files only: every request off the server is aborted."""
    context = browser.new_context()
    blocked = []

    def only_local(route):
        if route.request.url.startswith(base_url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    try:
        context.route("**/*", only_local)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{base_url}/docs")
        page.wait_for_selector(".swagger-ui .info .title")
        assert "specdiff" in page.inner_text(".swagger-ui .info .title")
        page.wait_for_selector(".opblock-summary-path[data-path='/api/jobs']")
    finally:
        context.close()
    assert blocked == []


def test_narrow_screen_layout_and_a_cleared_error(page, tmp_path):
    """At 400 px the music controls stay inside the form, each radio button sits by its control,
    and a refused file's message goes away once another file is chosen."""
    page.set_viewport_size({"width": 400, "height": 900})
    boxes = page.evaluate("""() => {
        const box = (el) => el.getBoundingClientRect();
        const form = box(document.getElementById('job-form'));
        const out = (id) => box(document.getElementById(id)).right - form.right;
        const radio = box(document.querySelector('input[name="source"][value="example"]'));
        const select = box(document.getElementById('example'));
        return {example: out('example'), limits: out('limits'), file: out('midi-file'),
                gap: Math.hypot(select.left - radio.right, select.top - radio.top)};
    }""")
    assert boxes["example"] <= 0 and boxes["limits"] <= 0 and boxes["file"] <= 0, boxes
    assert boxes["gap"] < 200, boxes

    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"not a MIDI file")
    page.set_input_files("#midi-file", str(bad))
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    good = tmp_path / "good.mid"
    good.write_bytes(midi_bytes([(60, 0.0, 0.5)]))
    page.set_input_files("#midi-file", str(good))
    assert page.is_hidden("#error")


def test_a_foreign_page_cannot_frame_the_app(browser, base_url):
    """Clickjacking: a page of another origin that frames the app gets no app in the frame (CSP
    ``frame-ancestors 'self'``), so there is nothing to click; a page of the app's own origin may.
    The foreign page is ``localhost`` framing ``127.0.0.1`` (two origins, both loopback, so the
    browser's private-network rules play no part)."""
    assert "127.0.0.1" in base_url
    foreign = base_url.replace("127.0.0.1", "localhost") + "/evil.html"
    attacker = f"""<!doctype html><html><body>
      <iframe id="app" src="{base_url}/" width="900" height="700"></iframe></body></html>"""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.route(foreign, lambda route: route.fulfill(body=attacker, content_type="text/html"))
        page.goto(foreign)
        page.wait_for_timeout(1000)
        framed = [f for f in page.frames if f != page.main_frame]
        assert len(framed) == 1 and framed[0].query_selector("#submit") is None

        # Control: the same frame in a page of the app's own origin shows the app.
        own = context.new_page()
        own.set_default_timeout(TIMEOUT_MS)
        own.goto(f"{base_url}/api/health")
        own.evaluate(f"""() => {{ const f = document.createElement('iframe'); f.src = '{base_url}/';
            document.body.appendChild(f); }}""")
        for _ in range(100):  # (not wait_for_function: the page's CSP forbids eval, rightly)
            if len(own.frames) == 2:
                break
            own.wait_for_timeout(50)
        own.frames[1].wait_for_selector("#submit")
    finally:
        context.close()


def test_a_new_error_clears_the_previous_result_and_the_page_states_retention(page, tmp_path):
    limits = page.inner_text("#limits")
    assert "after they are first played or downloaded" in limits and "Results are kept for" in limits
    page.check('input[name="source"][value="example"]')
    page.select_option("#example", EXAMPLE.name)
    page.fill("#steps", "1")
    page.click("#submit")
    page.wait_for_selector("body[data-state=done]")
    assert page.is_visible("#result")
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"not a MIDI file")
    page.set_input_files("#midi-file", str(bad))
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    assert not page.is_visible("#result") and not page.is_visible("#roll-panel")
    assert page.get_attribute("#player", "src") is None
