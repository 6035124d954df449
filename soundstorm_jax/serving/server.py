"""`soundstorm serve`'s HTTP API: a Starlette app over one `Engine` and its `Batcher`, run by uvicorn.

    POST /v1/generate[?format=json|wav][&spectrogram=1]   one request (JSON, `serving.requests`) -> audio
    GET  /healthz    200 while the process serves
    GET  /readyz     200 once the engine is warmed up; 503 before, and while shutting down
    GET  /v1/model   engine.describe() plus the server's limits under "server"
    GET  /, /static/...   the web page (the folder `web/` next to this module)

A request is parsed (`parse_request`, no file names) and resolved against the
model in a thread, so a bad one gets its 400 alone, before it is queued; then
it waits in the batcher's bounded queue (503 + Retry-After when full) for at
most `request_timeout_s` (504). Errors are JSON, ``{"error": message, "field":
name or null}``. Shutdown (SIGTERM/SIGINT through uvicorn): /readyz turns 503 and
new requests get 503, those received and queued are decoded, then it exits.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import signal
import urllib.parse
import uuid
from typing import Callable, Optional

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from soundstorm_jax.serving.batcher import Batcher, QueueFull, ShuttingDown
from soundstorm_jax.serving.engine import Engine
from soundstorm_jax.serving.requests import RequestError, parse_request

log = logging.getLogger(__name__)

WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
DEFAULT_MAX_BODY_BYTES = 16 * 2 ** 20   # Room for a prompt of a minute of 16-bit 44.1 kHz WAV, base64.
DEFAULT_REQUEST_TIMEOUT_S = 120.0       # A first request of a new bucket or batch size compiles (seconds).


class _Refused(Exception):
    """An HTTP error response: `status`, the message and the field (None: the request as a whole)."""

    def __init__(self, status: int, message: str, field: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message, "field": self.field}, self.status, headers=self.headers)


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """(samples,) float audio -> a 16-bit PCM mono WAV file's bytes (clipped to [-1, 1], NaN -> 0)."""
    import soundfile
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(np.nan_to_num(np.asarray(audio, np.float32)), -1.0, 1.0), int(sample_rate),
                    subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def _flag(request: HttpRequest, name: str) -> bool:
    value = request.query_params.get(name, "0").lower()
    if value not in ("0", "1", "true", "false"):
        raise _Refused(400, f"query parameter {name} must be 0 or 1, got {value!r}", name)
    return value in ("1", "true")


async def _read_body(request: HttpRequest, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes (header, then while reading)."""
    too_large = _Refused(413, f"the request body exceeds the server's limit of {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refused(400, f"Content-Length must be a number of bytes, got {declared!r}", "Content-Length")
        if int(declared) > limit:
            raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # A client may send more than it declared, or no length at all (chunked).
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _header_value(value) -> str:
    """A client's id as a header value: percent-encoded outside printable ASCII (no header injection)."""
    return urllib.parse.quote(str(value), safe="!#$&'()*+,/:;=?@[]~ ")


def make_app(engine: Engine, *, batch_window_ms: float = 20, max_queue: int = 64,
             max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
             web_dir: str = WEB_DIR) -> Starlette:
    """The server's app; its batcher starts (and warms the engine up) with the app's lifespan.

    `batch_window_ms`: how long the worker waits for more requests after the first (0: no batching);
    `max_queue`: requests waiting at most (then 503); `request_timeout_s`: from queueing to decoded (then 504)."""
    for name, value, low in (("batch_window_ms", batch_window_ms, 0), ("request_timeout_s", request_timeout_s, 1e-9),
                             ("max_body_bytes", max_body_bytes, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
            raise ValueError(f"{name} must be a number >= {low:g}, got {value!r}")
    if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
        raise ValueError(f"max_queue must be a positive int, got {max_queue!r}")
    limits = dict(batch_window_ms=batch_window_ms, max_queue=max_queue, max_body_bytes=int(max_body_bytes),
                  request_timeout_s=request_timeout_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        batcher = app.state.batcher = Batcher(engine, window_s=batch_window_ms / 1000, max_queue=max_queue)
        batcher.start()
        try:
            yield
        finally:
            app.state.draining = True
            # uvicorn has waited for the open requests; what is still queued belongs to clients gone or timed out.
            await batcher.close(timeout_s=request_timeout_s)

    async def generate(request: HttpRequest) -> Response:
        try:
            batcher = getattr(request.app.state, "batcher", None)
            if batcher is None:  # The app runs without its lifespan (an ASGI server with lifespan off).
                raise _Refused(503, "the server has not started its decoding worker", headers={"Retry-After": "1"})
            return await _generate(request, engine, batcher, limits)
        except _Refused as e:
            return e.response()

    async def healthz(request: HttpRequest) -> Response:
        del request
        return JSONResponse({"status": "ok"})

    async def readyz(request: HttpRequest) -> Response:
        batcher: Optional[Batcher] = getattr(request.app.state, "batcher", None)
        if request.app.state.draining:
            return JSONResponse({"ready": False, "reason": "shutting down"}, 503)
        if batcher is None or not batcher.ready:
            reason = "warming up" if batcher is None or batcher.error is None else \
                f"the warm-up request failed: {batcher.error}"
            return JSONResponse({"ready": False, "reason": reason}, 503)
        return JSONResponse({"ready": True})

    async def model(request: HttpRequest) -> Response:
        del request
        return JSONResponse(dict(engine.describe(), server=limits))

    async def index(request: HttpRequest) -> Response:
        del request
        page = os.path.join(web_dir, "index.html")
        if not os.path.isfile(page):
            raise HTTPException(404, f"no web page here ({page} is missing); the API is under /v1")
        return FileResponse(page)

    async def http_error(request: HttpRequest, exc: HTTPException) -> Response:
        del request
        return JSONResponse({"error": exc.detail, "field": None}, exc.status_code, headers=exc.headers)

    async def internal_error(request: HttpRequest, exc: Exception) -> Response:
        del request
        log.error("internal error", exc_info=exc)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}", "field": None}, 500)

    routes = [Route("/v1/generate", generate, methods=["POST"]), Route("/healthz", healthz), Route("/readyz", readyz),
              Route("/v1/model", model), Route("/", index),
              Mount("/static", StaticFiles(directory=web_dir, check_dir=False), name="static")]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: internal_error})
    app.state.draining = False
    app.state.limits = limits
    return app


async def _generate(request: HttpRequest, engine: Engine, batcher: Batcher, limits: dict) -> Response:
    fmt = request.query_params.get("format", "json")
    if fmt not in ("json", "wav"):
        raise _Refused(400, f"query parameter format must be json or wav, got {fmt!r}", "format")
    spectrogram = _flag(request, "spectrogram")
    if engine.codec is None and fmt == "wav":
        raise _Refused(400, "format=wav needs audio, and this model has no codec: use format=json for the codes",
                       "format")
    if spectrogram and (engine.codec is None or fmt == "wav"):
        raise _Refused(400, "spectrogram=1 needs audio (a codec) and format=json", "spectrogram")
    if request.app.state.draining:
        raise _Refused(503, "the server is shutting down", headers={"Retry-After": "5"})
    body = await _read_body(request, limits["max_body_bytes"])
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError; deep nesting recurses.
        raise _Refused(400, f"the body is not valid JSON: {str(e) or type(e).__name__}") from None
    try:
        parsed = parse_request(obj, allow_paths=False)
        job = await asyncio.to_thread(engine.resolve, parsed)
    except RequestError as e:
        raise _Refused(400, e.detail, e.field) from None
    try:
        done = await asyncio.wait_for(batcher.submit(job), limits["request_timeout_s"])
    except QueueFull as e:
        raise _Refused(503, str(e), headers={"Retry-After": str(e.retry_after)}) from None
    except ShuttingDown as e:
        raise _Refused(503, str(e), headers={"Retry-After": "5"}) from None
    except asyncio.TimeoutError:
        raise _Refused(504, f"not decoded within the server's timeout of {limits['request_timeout_s']:g} s "
                            f"({batcher.queued} requests queued)") from None
    result = done.result
    rid = parsed.id if parsed.id is not None else uuid.uuid4().hex
    audio = None if result.audio is None else await asyncio.to_thread(wav_bytes, result.audio, result.sample_rate)
    if fmt == "wav":
        return Response(audio, media_type="audio/wav", headers={
            "X-Request-Id": _header_value(rid), "X-Frames": str(result.job.frames),
            "X-Seconds": f"{result.seconds:.6g}", "X-Batch-Size": str(done.batch_size)})
    payload = dict(id=rid, frames=result.job.frames, seconds=result.seconds, sample_rate=result.sample_rate,
                   audio_base64=None if audio is None else base64.b64encode(audio).decode("ascii"),
                   notices=list(result.job.notices), batch_size=done.batch_size,
                   queue_seconds=round(done.queue_seconds, 6), decode_seconds=round(done.decode_seconds, 6))
    if parsed.codes or audio is None:  # Without a codec the codes are the answer.
        payload["codes"] = result.codes.tolist()
    if spectrogram:
        payload["spectrogram_png_base64"] = await asyncio.to_thread(_spectrogram_png, result.audio,
                                                                    result.sample_rate, rid)
    return JSONResponse(payload)


def _spectrogram_png(audio: np.ndarray, sample_rate: int, rid: str) -> str:
    from soundstorm_jax.cli import spectrogram
    png = spectrogram.spectrogram_png(audio, sample_rate, title=f"request {rid}")
    return base64.b64encode(png).decode("ascii")


# ---- running it ------------------------------------------------------------------------------------------

class Server(uvicorn.Server):
    """uvicorn's server, whose signal handler also turns /readyz to 503 and refuses new requests at once.

    uvicorn re-raises a SIGTERM/SIGINT after its graceful shutdown, so the process would die by the signal;
    a server stopped on purpose exits normally instead (`stop_signal` says which signal stopped it)."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.stop_signal: Optional[int] = None

    def handle_exit(self, sig: int, frame) -> None:
        del frame
        self.config.app.state.draining = True
        if self.stop_signal is None:
            self.stop_signal = sig
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # A second Ctrl-C: stop waiting for open requests.
        else:
            self.should_exit = True

    @property
    def port(self) -> Optional[int]:
        """The port it listens on (also when asked for port 0), once started."""
        return self.servers[0].sockets[0].getsockname()[1] if self.started and self.servers else None


def make_server(app: Starlette, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "warning",
                access_log: bool = False) -> Server:
    """A `Server` for `app`; ``server.run()`` serves until SIGTERM/SIGINT (main thread) or ``handle_exit``."""
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=None)
    return Server(config)


def run(server: Server, on_ready: Optional[Callable[[str], None]] = None) -> None:
    """Serves until SIGTERM/SIGINT (in the main thread) or ``server.handle_exit``; `on_ready(url)` once it listens
    and the warm-up request is decoded. Raises RuntimeError when the warm-up fails (the server then stops)."""
    app = server.config.app
    failed: list[BaseException] = []

    async def announce():
        while True:
            batcher = getattr(app.state, "batcher", None)
            if server.started and batcher is not None and (batcher.ready or batcher.error is not None):
                break
            await asyncio.sleep(0.02)
        if batcher.error is not None:
            failed.append(batcher.error)
            server.should_exit = True
        elif on_ready is not None:
            on_ready(f"http://{server.config.host}:{server.port}")

    async def main():
        task = asyncio.create_task(announce())
        try:
            await server.serve()
        finally:
            task.cancel()

    asyncio.run(main())
    if failed:
        raise RuntimeError(f"the warm-up request failed: {type(failed[0]).__name__}: {failed[0]}")
