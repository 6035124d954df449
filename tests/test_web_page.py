"""The page of `soundstorm serve` (soundstorm_jax/serving/web/) in a real headless Chromium.

The server runs in-process (uvicorn in a thread, on an ephemeral port of 127.0.0.1) around the tiny random
engine; Playwright drives Debian's Chromium (``apt-get install chromium``; Playwright's own browser download is
not needed) and finds elements by their labels and roles, as a screen reader would. Skips, with the reason,
without Playwright or a Chromium binary. ``SOUNDSTORM_SCREENSHOT=1`` also saves the page with a result to
docs/web_page.png.
"""
from __future__ import annotations

import base64
import io
import os
import pathlib
import re
import shutil
import threading
import time
import urllib.error
import urllib.request

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright: pip install playwright")
uvicorn = pytest.importorskip("uvicorn", reason="the server needs uvicorn")


def chromium_binary():
    """Debian's Chromium (or $SOUNDSTORM_CHROMIUM): Playwright drives it over CDP instead of its own download."""
    for name in (os.environ.get("SOUNDSTORM_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM = chromium_binary()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (apt-get install chromium)")

SCREENSHOT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "web_page.png"
SENTENCE = "Hello there."
BROWSER_FLAGS = [
    "--autoplay-policy=no-user-gesture-required",  # play() without a click
    "--use-fake-device-for-media-stream",          # a microphone that beeps
    "--use-fake-ui-for-media-stream",              # granted without the permission prompt
]


@pytest.fixture(scope="module")
def served():
    """(base URL, engine) of the server around the tiny engine, ready (its warm-up decoded)."""
    from soundstorm_jax.serving.server import make_app
    from tiny import tiny_engine

    engine = tiny_engine(max_frames=512)  # room for a voice prompt of a few tenths of a second (1000 frames/s)
    server = uvicorn.Server(uvicorn.Config(make_app(engine), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    url = "http://127.0.0.1:%d/" % server.servers[0].sockets[0].getsockname()[1]
    while True:  # /readyz answers 200 once the warm-up request has compiled and decoded, else 503 and why not.
        try:
            with urllib.request.urlopen(url + "readyz", timeout=5):
                break
        except urllib.error.HTTPError as e:
            reason = e.read().decode(errors="replace")
        except OSError as e:
            reason = str(e)
        assert "failed" not in reason and time.monotonic() < deadline, f"the server did not get ready: {reason}"
        time.sleep(0.2)
    yield url, engine
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(served, browser):
    """The page, loaded, with the model's description read; fails the test on any uncaught script error."""
    context = browser.new_context(viewport={"width": 900, "height": 900}, permissions=["microphone"])
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(served[0])
    sync_api.expect(page.get_by_role("button", name="Generate")).to_be_enabled()  # /v1/model was read
    yield page
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def frame_seconds(engine) -> float:
    return 1 / engine.frame_rate


def expected_seconds(engine, **fields) -> float:
    """What the engine makes of a request's length, asked directly (not through the page or the server)."""
    from soundstorm_jax.serving import parse_request
    return engine.resolve(parse_request(fields, allow_paths=False)).frames / engine.frame_rate


def wav_info(data: bytes):
    import soundfile
    return soundfile.info(io.BytesIO(data))


def blob_bytes(page, url: str) -> bytes:
    """The bytes behind a blob: URL of the page."""
    encoded = page.evaluate("""async (url) => {
        const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
        return btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(""));
    }""", url)
    return base64.b64decode(encoded)


def generate(page):
    """Clicks Generate; the server's JSON answer once the page has shown it."""
    with page.expect_response(re.compile(r"/v1/generate")) as answer:
        page.get_by_role("button", name="Generate").click()
    sync_api.expect(page.get_by_role("button", name="Generate")).to_be_enabled(timeout=120_000)  # shown
    return answer.value.json()


def test_page_shows_what_the_model_supports(page, served):
    _, engine = served
    description = engine.describe()
    sync_api.expect(page.get_by_role("status").first).to_contain_text("reads text")
    # The tiny model was trained with conditioning dropout: guidance is offered; the limits come from /v1/model.
    sync_api.expect(page.get_by_label("Guidance scale")).to_be_visible()
    assert page.get_by_label("Top-k").get_attribute("max") == str(description["codebook_size"])
    assert float(page.get_by_label("Length in seconds").get_attribute("max")) == description["max_seconds"]
    # Text sets the length: the seconds field steps aside while there is text.
    page.get_by_label("Text", exact=True).fill(SENTENCE)
    sync_api.expect(page.get_by_label("Length in seconds")).to_be_disabled()
    page.get_by_label("Text", exact=True).fill("")
    sync_api.expect(page.get_by_label("Length in seconds")).to_be_enabled()


def test_generate_plays_and_downloads(page, served):
    _, engine = served
    page.get_by_label("Text", exact=True).fill(SENTENCE)
    page.get_by_label("Seed").fill("7")
    body = generate(page)
    assert "error" not in body, body
    seconds = expected_seconds(engine, text=SENTENCE)
    assert abs(body["seconds"] - seconds) < frame_seconds(engine) / 2

    result = page.get_by_role("region", name="Result")
    sync_api.expect(result).to_be_visible()
    player = page.get_by_label("Generated audio")
    duration = player.evaluate("""(audio) => audio.readyState >= 1 ? audio.duration :
        new Promise((resolve) => audio.addEventListener("loadedmetadata", () => resolve(audio.duration)))""")
    assert abs(duration - body["seconds"]) <= frame_seconds(engine), (duration, body["seconds"])

    # It plays: the playing event fires and the clock moves (autoplay is allowed by a flag, no click needed).
    played = player.evaluate("""async (audio) => {
        const playing = new Promise((resolve) => audio.addEventListener("playing", () => resolve(true), {once: true}));
        await audio.play();
        await playing;
        const start = performance.now();
        while (audio.currentTime === 0 && !audio.ended && performance.now() - start < 5000) {
            await new Promise((resolve) => setTimeout(resolve, 20));
        }
        return {currentTime: audio.currentTime, ended: audio.ended};
    }""")
    assert played["currentTime"] > 0, played

    # The download is the WAV the server sent.
    link = page.get_by_role("link", name=re.compile(r"Download .*\.wav"))
    assert link.get_attribute("download") == "soundstorm-hello-there-seed7.wav"
    with page.expect_download() as download:
        link.click()
    data = pathlib.Path(download.value.path()).read_bytes()
    assert data == base64.b64decode(body["audio_base64"])
    info = wav_info(data)
    assert (info.samplerate, info.channels) == (engine.codec.sample_rate, 1)
    assert abs(info.frames / info.samplerate - body["seconds"]) < 1e-9

    image = page.get_by_role("img", name="Spectrogram of the generated audio")
    sync_api.expect(image).to_be_visible()
    assert image.evaluate("(img) => img.complete && img.naturalWidth > 0")
    metadata = dict(zip(result.locator("dt").all_inner_texts(), result.locator("dd").all_inner_texts()))
    assert metadata["Length"].startswith(f"{body['seconds']:.3f} s ({body['frames']} frames"), metadata
    assert metadata["Batch size"] == str(body["batch_size"]), metadata
    assert metadata["Decoded in"] == f"{body['decode_seconds']:.2f} s", metadata

    if os.environ.get("SOUNDSTORM_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_length_in_seconds_without_text(page, served):
    _, engine = served
    page.get_by_label("Length in seconds").fill("0.05")
    body = generate(page)
    assert "error" not in body, body
    assert abs(body["seconds"] - expected_seconds(engine, seconds=0.05)) < frame_seconds(engine) / 2
    sync_api.expect(page.get_by_role("link", name=re.compile(r"Download .*\.wav"))).to_have_attribute(
        "download", "soundstorm-seed0.wav")


def error_next_to(page, label: str):
    """The error message the input labelled `label` points to (aria-describedby)."""
    slot = page.get_by_label(label, exact=True).get_attribute("aria-describedby")
    return page.locator(f"#{slot}")


def test_server_error_is_shown_next_to_its_field(page, served):
    _, engine = served
    page.get_by_label("Text", exact=True).fill(SENTENCE)
    page.get_by_label("Top-k").fill("999")  # more than the codebook holds: the engine refuses it
    body = generate(page)
    assert body["field"] == "top_k", body
    message = error_next_to(page, "Top-k")
    sync_api.expect(message).to_be_visible()
    sync_api.expect(message).to_have_text(body["error"].removeprefix("top_k: "))  # the server's words
    assert f"[1, {engine.model.net.codebook_size}]" in body["error"]
    sync_api.expect(page.get_by_label("Top-k")).to_have_attribute("aria-invalid", "true")
    sync_api.expect(page.get_by_role("region", name="Result")).to_be_hidden()
    # The next attempt starts clean.
    page.get_by_label("Top-k").fill("")
    page.get_by_label("Prompt audio file").set_input_files(
        files=[{"name": "noise.wav", "mimeType": "audio/wav", "buffer": b"not audio at all"}])
    body = generate(page)
    assert body["field"] == "prompt_audio_base64", body
    sync_api.expect(error_next_to(page, "Top-k")).to_be_hidden()
    sync_api.expect(error_next_to(page, "Prompt audio file")).to_have_text(body["error"])
    assert "cannot read the audio" in body["error"]


def test_microphone_recording_becomes_a_wav_prompt(page, served):
    """Chromium's fake microphone (a beep), recorded by MediaRecorder and encoded to WAV by the page, prompts a
    generation: the output covers the prompt and the text."""
    _, engine = served
    page.get_by_role("button", name="Record with the microphone").click()
    stop = page.get_by_role("button", name="Stop recording")
    sync_api.expect(stop).to_be_visible()
    page.wait_for_timeout(250)
    stop.click()
    sync_api.expect(page.get_by_role("status").filter(has_text="Prompt:")).to_contain_text("recording")
    prompt = blob_bytes(page, page.get_by_label("Voice prompt preview").get_attribute("src"))
    info = wav_info(prompt)
    assert (info.samplerate, info.channels, info.subtype) == (engine.codec.sample_rate, 1, "PCM_16")
    assert 0.1 < info.frames / info.samplerate < 0.4, info

    page.get_by_label("Text", exact=True).fill(SENTENCE)
    body = generate(page)
    assert "error" not in body, body
    seconds = expected_seconds(engine, text=SENTENCE, prompt_audio_base64=base64.b64encode(prompt).decode())
    assert abs(body["seconds"] - seconds) < frame_seconds(engine) / 2
    sync_api.expect(page.get_by_role("region", name="Result")).to_be_visible()
