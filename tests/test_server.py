"""`soundstorm serve`'s HTTP server, in this process on the tiny random engine: dynamic batching that gives each
client exactly what it gets alone, errors naming the field, the limits (413, 503, 504), readiness and a graceful
shutdown. Real sockets (uvicorn on 127.0.0.1, an ephemeral port) where requests must overlap; Starlette's
TestClient otherwise."""
import base64
import concurrent.futures
import contextlib
import io
import json
import os
import signal
import socket
import sys
import threading
import time
import warnings

import httpx
import numpy as np
import pytest
import soundfile
from PIL import Image
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():  # Starlette 1.x would rather its TestClient ran on httpx2; httpx serves as well.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from soundstorm_jax.cli import spectrogram
from soundstorm_jax.serving import Engine
from soundstorm_jax.serving.server import make_app, make_server
from tiny import SAMPLE_RATE, tiny_engine


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


class Gated:
    """The engine, with `run` held until `gate` opens (`running` tells a batch has reached it)."""

    def __init__(self, engine, *, open_: bool = True):
        self._engine, self.gate, self.running = engine, threading.Event(), threading.Event()
        if open_:
            self.gate.set()

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def run(self, jobs):
        self.running.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return self._engine.run(jobs)


def wait_for(condition, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@contextlib.contextmanager
def serving(app, *, ready=True, gated=None):
    """uvicorn serving `app` on 127.0.0.1 (ephemeral port) in a thread: yields (base URL, server); stops it after
    (opening `gated`'s gate first, so a failing test does not leave its requests hanging)."""
    server = make_server(app, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="the server to start")
    if ready:
        wait_for(lambda: app.state.batcher.ready, what="the warm-up")
    try:
        yield f"http://127.0.0.1:{server.port}", server
    finally:
        if gated is not None:
            gated.gate.set()
        if not server.should_exit:
            server.handle_exit(signal.SIGTERM, None)
        thread.join(60)
        assert not thread.is_alive(), "the server did not stop"


@contextlib.contextmanager
def client(app):
    with TestClient(app) as c:
        wait_for(lambda: c.get("/readyz").status_code == 200, what="readiness")
        yield c


def post_all(url, bodies, params=None):
    """Sends every body at once (one thread each); the responses in order."""
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: httpx.post(f"{url}/v1/generate", json=b, params=params, timeout=120), bodies))


def wav(response_json):
    return base64.b64decode(response_json["audio_base64"])


# ---- batching -------------------------------------------------------------------------------------------------

REQUESTS = [dict(id="a", frames=12, seed=1), dict(id="b", frames=27, seed=2, prompt_codes=[[1, 2, 3]] * 5),
            dict(id="c", frames=20, seed=1, temperature=0.7), dict(id="d", frames=32, seed=9, codes=True),
            dict(id="e", frames=20, seed=1, codes=True), dict(id="f", frames=7, seed=4)]


def test_concurrent_requests_are_batched_and_get_what_they_get_alone(engine):
    app = make_app(engine, batch_window_ms=300)  # Wide: the clients' threads start over tens of ms on a busy CPU.
    with serving(app) as (url, _):
        together = post_all(url, REQUESTS)
        alone = [httpx.post(f"{url}/v1/generate", json=r, timeout=120) for r in REQUESTS]
    unbatched = make_app(engine, batch_window_ms=0)
    with serving(unbatched) as (url, _):
        one_by_one = post_all(url, REQUESTS)
    for request, *responses in zip(REQUESTS, together, alone, one_by_one):
        assert [r.status_code for r in responses] == [200] * 3, [r.text for r in responses]
        got = [r.json() for r in responses]
        assert [g["id"] for g in got] == [request["id"]] * 3
        assert [g["frames"] for g in got] == [request["frames"]] * 3
        assert wav(got[0]) == wav(got[1]) == wav(got[2])  # Byte for byte, batched or not.
        assert ("codes" in got[0]) == request.get("codes", False)
        if request.get("codes"):
            assert got[0]["codes"] == got[1]["codes"] and np.shape(got[0]["codes"]) == (request["frames"], 3)
        assert got[1]["batch_size"] == got[2]["batch_size"] == 1
    sizes = [r.json()["batch_size"] for r in together]
    # "c" (temperature 0.7) has its own batch key; the five others share one bucket and options: one batch of 4
    # (max_batch) and the rest, or smaller ones if a client came late, but never all alone.
    assert max(sizes) > 1 and sizes[2] == 1, sizes
    assert wav(together[0].json()) != wav(together[4].json())  # Same seed, other length: other audio.


def test_wav_format_headers_and_spectrogram(engine):
    with client(make_app(engine)) as c:
        response = c.post("/v1/generate", params={"format": "wav"}, json=dict(id="héllo\nX-Evil: 1", frames=24))
        assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
        assert response.headers["x-request-id"] == "h%C3%A9llo%0AX-Evil: 1" and "x-evil" not in response.headers
        assert (response.headers["x-frames"], response.headers["x-seconds"], response.headers["x-batch-size"]) == \
            ("24", "0.024", "1")
        audio, rate = soundfile.read(io.BytesIO(response.content), dtype="int16")
        assert rate == SAMPLE_RATE and audio.shape == (24 * 8,)
        assert soundfile.info(io.BytesIO(response.content)).subtype == "PCM_16"
        json_response = c.post("/v1/generate", params={"spectrogram": "1"}, json=dict(frames=24)).json()
        assert wav(json_response) == response.content  # The same request, as JSON: the same file.
        assert json_response["sample_rate"] == SAMPLE_RATE and json_response["seconds"] == 0.024
        assert json_response["notices"] == [] and json_response["queue_seconds"] >= 0
        with Image.open(io.BytesIO(base64.b64decode(json_response["spectrogram_png_base64"]))) as image:
            assert image.format == "PNG" and image.size == (800, 300)
            got = np.asarray(image.convert("RGB"), np.int32)
        # The sample's picture, drawn here from its 16-bit WAV: the same title (the request's id), axes and colour
        # bar; in the axes, a spectrogram (the tiny model's quiet audio loses its faint bins to the rounding).
        figure = spectrogram.figure(audio.astype(np.float32) / 32768, SAMPLE_RATE,
                                    title=f"request {json_response['id']}")
        expected = spectrogram.to_rgb(figure)
        x0, y0, x1, y1 = np.round(figure.axes[0].bbox.extents).astype(int)
        inside = np.zeros(got.shape[:2], bool)
        inside[300 - y1:300 - y0, x0:x1] = True
        np.testing.assert_array_equal(got[~inside], expected[~inside])
        assert len(np.unique(got[inside], axis=0)) > 20


# ---- bad input ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, params, field, message", [
    (b"{", {}, None, "not valid JSON"),
    (b"\xff\xfe", {}, None, "not valid JSON"),
    (b"[" * 50000, {}, None, "not valid JSON"),
    (b"[1, 2]", {}, None, "must be a JSON object"),
    (b'{"frame": 10}', {}, "frame", "did you mean 'frames'"),
    (b'{"seed": 1}', {}, "frames", "give the length"),
    (b'{"frames": 10000}', {}, "frames", "at most 200 frames"),
    (b'{"frames": 10, "top_k": 99}', {}, "top_k", "codebook size"),
    (b'{"frames": 10, "temperature": -1}', {}, "temperature", "must lie in"),
    (b'{"frames": 4, "prompt_codes": [[1, 2, 3], [1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 1, 1]]}', {},
     "prompt_codes", "has 5 frames but the output has only 4"),
    (b'{"frames": 4, "prompt_codes": [[100000000000000000000000, 1, 2]]}', {}, "prompt_codes", "too large"),
    (b'{"frames": 8, "prompt_codes": "prompt.npy"}', {}, "prompt_codes", "request files only"),
    (b'{"frames": 8, "prompt_audio": "/etc/passwd"}', {}, "prompt_audio", "request files only"),
    (b'{"frames": 8, "prompt_audio_base64": "not base64!"}', {}, "prompt_audio_base64", "not valid base64"),
    (b'{"frames": 8, "prompt_audio_base64": "AAAA"}', {}, "prompt_audio_base64", "cannot read the audio"),
    (b'{"frames": 8, "steps": [1, 2]}', {}, "steps", "levels"),
    (b'{"text": "   "}', {}, "text", "non-empty"),
    (b'{"frames": 8}', {"format": "mp3"}, "format", "json or wav"),
    (b'{"frames": 8}', {"spectrogram": "yes"}, "spectrogram", "0 or 1"),
    (b'{"frames": 8}', {"format": "wav", "spectrogram": "1"}, "spectrogram", "format=json"),
])
def test_bad_requests_get_400_naming_the_field(engine, bad_client, body, params, field, message):
    response = bad_client.post("/v1/generate", content=body, params=params)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field and message in response.json()["error"], response.json()


@pytest.fixture(scope="module")
def bad_client(engine):
    with client(make_app(engine)) as c:
        yield c


def test_a_bad_request_leaves_the_next_one_untouched(bad_client):
    good = dict(frames=16, seed=5)
    before = bad_client.post("/v1/generate", json=good).json()
    assert bad_client.post("/v1/generate", json=dict(good, top_k=1000)).status_code == 400
    assert wav(bad_client.post("/v1/generate", json=good).json()) == wav(before)


def test_a_body_over_the_limit_gets_413(engine):
    with client(make_app(engine, max_body_bytes=200)) as c:
        big = {"frames": 8, "prompt_codes": [[1, 2, 3]] * 40}
        assert c.post("/v1/generate", json=big).status_code == 413  # Refused from its Content-Length.
        chunks = (b'{"frames": 8, "id": "' + b"x" * 100 + b'"' if i == 0 else b" " * 100 for i in range(3))
        response = c.post("/v1/generate", content=chunks)  # No Content-Length: refused while reading.
        assert response.status_code == 413 and "200 bytes" in response.json()["error"]
        assert c.post("/v1/generate", json={"frames": 8}).status_code == 200


# ---- limits ---------------------------------------------------------------------------------------------------

def test_a_full_queue_gets_503_with_retry_after(engine):
    gated = Gated(engine)
    app = make_app(gated, batch_window_ms=0, max_queue=1)
    with serving(app, gated=gated) as (url, _), concurrent.futures.ThreadPoolExecutor(2) as pool:
        gated.gate.clear()
        gated.running.clear()
        first = pool.submit(httpx.post, f"{url}/v1/generate", json=dict(frames=8, id=1), timeout=60)
        wait_for(gated.running.is_set, what="the first request to decode")
        second = pool.submit(httpx.post, f"{url}/v1/generate", json=dict(frames=8, id=2), timeout=60)
        wait_for(lambda: app.state.batcher.queued == 1, what="the second request to queue")
        refused = httpx.post(f"{url}/v1/generate", json=dict(frames=8, id=3), timeout=60)
        assert refused.status_code == 503 and "queue is full" in refused.json()["error"]
        assert int(refused.headers["retry-after"]) >= 1
        gated.gate.set()
        assert [f.result().status_code for f in (first, second)] == [200, 200]
        assert [f.result().json()["id"] for f in (first, second)] == [1, 2]


def test_a_request_waiting_past_the_timeout_gets_504(engine):
    gated = Gated(engine)
    app = make_app(gated, batch_window_ms=0, request_timeout_s=0.5)
    with serving(app, gated=gated) as (url, _):
        gated.gate.clear()
        late = post_all(url, [dict(frames=8, id="decoding"), dict(frames=8, id="queued")])
        assert [r.status_code for r in late] == [504, 504]
        assert "timeout of 0.5 s" in late[0].json()["error"]
        gated.gate.set()
        wait_for(lambda: app.state.batcher.queued == 0, what="the queue to empty")
        assert httpx.post(f"{url}/v1/generate", json=dict(frames=8), timeout=60).status_code == 200


# ---- health, shutdown -----------------------------------------------------------------------------------------

def test_ready_after_the_warm_up_and_information_about_the_model(engine, tmp_path):
    gated = Gated(engine, open_=False)
    (tmp_path / "index.html").write_text("<h1>SoundStorm</h1>")
    (tmp_path / "app.js").write_text("console.log(1)")
    app = make_app(gated, max_queue=7, web_dir=str(tmp_path))
    with serving(app, ready=False, gated=gated) as (url, _):
        assert httpx.get(f"{url}/healthz").status_code == 200
        not_ready = httpx.get(f"{url}/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["reason"] == "warming up"
        gated.gate.set()
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, what="readiness")
        model = httpx.get(f"{url}/v1/model").json()
        assert model["sample_rate"] == SAMPLE_RATE and model["levels"] == 3 and model["max_frames"] == 200
        assert model["server"]["max_queue"] == 7 and model["server"]["batch_window_ms"] == 20
        assert httpx.get(f"{url}/").text == "<h1>SoundStorm</h1>"
        assert httpx.get(f"{url}/static/app.js").text == "console.log(1)"
        missing = httpx.get(f"{url}/static/nothing.js")
        assert missing.status_code == 404 and "error" in missing.json()
        assert httpx.get(f"{url}/v1/generate").status_code == 405


def test_shutdown_finishes_the_requests_in_flight_and_queued(engine):
    gated = Gated(engine)
    app = make_app(gated, batch_window_ms=0)
    with serving(app, gated=gated) as (url, server), concurrent.futures.ThreadPoolExecutor(2) as pool:
        gated.gate.clear()
        gated.running.clear()
        decoding = pool.submit(httpx.post, f"{url}/v1/generate", json=dict(frames=8, id="in flight"), timeout=60)
        wait_for(gated.running.is_set, what="the first request to decode")
        queued = pool.submit(httpx.post, f"{url}/v1/generate", json=dict(frames=9, id="queued"), timeout=60)
        wait_for(lambda: app.state.batcher.queued == 1, what="the second request to queue")
        server.handle_exit(signal.SIGTERM, None)  # What uvicorn's SIGTERM handler calls.
        # New requests are refused: /readyz and /v1/generate on the app say so, and the socket closes.
        direct = TestClient(app)  # Outside `with`: the same app and state, without a lifespan of its own.
        assert direct.get("/readyz").status_code == 503
        refused = direct.post("/v1/generate", json=dict(frames=8))
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        wait_for(lambda: not server.servers or all(not s.is_serving() for s in server.servers), what="closing")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz")
        gated.gate.set()
        assert [r.result().status_code for r in (decoding, queued)] == [200, 200]
        assert [r.result().json()["frames"] for r in (decoding, queued)] == [8, 9]
    assert server.stop_signal == signal.SIGTERM


def test_a_model_without_a_codec_returns_codes(engine):
    codes_only = Engine(engine.model, engine.variables, config=engine.config, codec=None, max_batch=4,
                        max_frames=200, frame_bucket=32)
    with client(make_app(codes_only)) as c:
        got = c.post("/v1/generate", json=dict(frames=12, seed=3)).json()
        assert got["audio_base64"] is None and got["sample_rate"] is None and got["seconds"] is None
        asked = c.post("/v1/generate", json=dict(frames=12, seed=3, codes=True))  # Asking changes nothing.
        assert np.shape(got["codes"]) == (12, 3) and got["codes"] == asked.json()["codes"]
        wav_response = c.post("/v1/generate", params={"format": "wav"}, json=dict(frames=12))
        assert wav_response.status_code == 400 and wav_response.json()["field"] == "format"
        seconds = c.post("/v1/generate", json=dict(seconds=0.1))
        assert seconds.status_code == 400 and seconds.json()["field"] == "seconds"
        assert c.get("/v1/model").json()["sample_rate"] is None
    with client(make_app(engine)) as c:  # The same request with the codec: the same codes.
        assert c.post("/v1/generate", json=dict(frames=12, seed=3, codes=True)).json()["codes"] == got["codes"]


# ---- the command line, the load test --------------------------------------------------------------------------

def test_serve_flags_are_checked_before_loading(tmp_path):
    from test_cli_messages import bad_input
    assert "--batch-window-ms must be a number >= 0" in bad_input("serve", tmp_path, "--batch-window-ms", "-1")
    assert "--max-queue must be a positive integer" in bad_input("serve", tmp_path, "--max-queue", "0")
    assert "--timeout must be a number > 0" in bad_input("serve", tmp_path, "--timeout", "0")
    assert "--port must lie in [0, 65535]" in bad_input("serve", tmp_path, "--port", "65536")
    assert "--mesh" in bad_input("serve", tmp_path, "--mesh", "rows=2")
    assert "does not exist" in bad_input("serve", tmp_path / "missing")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert "Address already in use" in bad_input("serve", tmp_path, "--port", port)


def test_load_test_smoke(engine):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import load_test
    printed = io.StringIO()  # Not capsys: uvicorn's log handlers would keep its stream after the test closes it.
    with contextlib.redirect_stdout(printed):
        report = load_test.main(["--requests", "12", "--clients", "4", "--windows", "50,0"], engine=engine)
    assert json.loads(printed.getvalue()) == report
    assert all(report["checks"].values()), report["checks"]
    batched, alone = report["runs"]
    assert sum(batched["batch_size_histogram"].values()) == sum(alone["batch_size_histogram"].values()) == 12
    assert alone["batch_size_histogram"] == {"1": 12} and batched["mean_batch_size"] > 1
    assert set(report["machine"]) >= {"platform", "cpu_count"} and batched["latency_seconds"]["p50"] > 0
