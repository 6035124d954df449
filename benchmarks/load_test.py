"""Load test of `soundstorm serve`: concurrent clients against the server, with dynamic batching on and off.

    python benchmarks/load_test.py                                  # the tiny random engine, in this process
    python benchmarks/load_test.py --requests 96 --clients 16
    python benchmarks/load_test.py --model runs/export --codec runs/export/codec

Starts the server itself (uvicorn in a thread of this process, 127.0.0.1 on a
free port) once per batching window (--windows, default 20 ms and 0 = off),
each time around the same engine, whose programs for every (bucket, batch size)
the mix needs are compiled first so no run pays for compiling. Then --clients
clients (asyncio + httpx) send --requests requests of mixed lengths (each
client sends its next request when the last is answered). Bounded: at most
--max-requests requests and --deadline-s seconds in all.

Prints one JSON object: the machine, and per window the latency percentiles
(p50/p95/p99), requests/s, audio seconds per second and the histogram of the
responses' batch_size; and the checks: no request lost or answered twice, each
response's id and frames those of its request, and every request's audio (codes
without a codec) the same byte for byte with batching on and off.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import pathlib
import sys
import threading
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="an export or workdir (default: the tiny random engine)")
    parser.add_argument("--codec", default=None, help="with --model: its codec workdir/export")
    parser.add_argument("--requests", type=int, default=64, help="requests per run (default 64)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--windows", default="20,0", help="batching windows in ms, one run each (default 20,0)")
    parser.add_argument("--max-batch", type=int, default=8, help="the engine's max batch (default 8)")
    parser.add_argument("--deadline-s", type=float, default=300.0, help="give up after this long in all (default 300)")
    parser.add_argument("--max-requests", type=int, default=2000, help="refuse --requests above this (default 2000)")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= args.max_requests:
        parser.error(f"--requests must lie in [1, {args.max_requests}] (--max-requests), got {args.requests}")
    if args.clients < 1:
        parser.error(f"--clients must be positive, got {args.clients}")
    try:
        args.windows = [float(w) for w in args.windows.split(",")]
    except ValueError:
        parser.error(f"--windows must be comma-separated numbers of milliseconds, got {args.windows!r}")
    if not args.windows or min(args.windows) < 0:
        parser.error(f"--windows must be numbers >= 0, got {args.windows}")
    return args


def load_engine(args):
    from soundstorm_jax.serving import Engine
    if args.model is None:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from tiny import tiny_engine
        return tiny_engine(max_batch=args.max_batch), "tiny random engine (tests/tiny.py)"
    return Engine.load(args.model, codec=args.codec, max_batch=args.max_batch), args.model


def request_mix(engine, count: int) -> list[dict]:
    """`count` requests: lengths cycling over a quarter to twice the frame bucket (two buckets), seeds 0..count-1."""
    bucket = engine.frame_bucket
    lengths = [max(1, min(engine.max_frames, int(bucket * f))) for f in (0.25, 0.5, 1.0, 0.75, 1.5, 2.0)]
    return [dict(id=f"r{i:04d}", frames=lengths[i % len(lengths)], seed=i) for i in range(count)]


def precompile(engine, requests: list[dict]) -> float:
    """Decodes every (bucket, power-of-two batch size) the mix can form once; the seconds it took."""
    from soundstorm_jax.serving import parse_request
    start = time.perf_counter()
    by_bucket = {}
    for r in requests:
        by_bucket.setdefault(engine.bucket(r["frames"]), r)
    for r in by_bucket.values():
        job = engine.resolve(parse_request(r, allow_paths=False))
        size = 1
        while size <= engine.max_batch:
            engine.run([job] * size)
            size *= 2
    return time.perf_counter() - start


class Served:
    """uvicorn serving `app` on 127.0.0.1 (a free port) in a thread, until `stop`."""

    def __init__(self, app):
        from soundstorm_jax.serving.server import make_server
        self.app, self.server = app, make_server(app, host="127.0.0.1", port=0)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 120
        while not (self.server.started and getattr(self.app.state, "batcher", None) and self.app.state.batcher.ready):
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not get ready within 120 s")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.server.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(60)


async def drive(url: str, requests: list[dict], clients: int) -> tuple[list[dict], float]:
    """Every request sent once by `clients` concurrent clients; (one record per answer, wall seconds)."""
    import httpx
    todo = collections.deque(requests)
    records = []

    async def client(http):
        while todo:
            request = todo.popleft()
            start = time.perf_counter()
            response = await http.post(f"{url}/v1/generate", json=request)
            seconds = time.perf_counter() - start
            try:
                body = response.json()
            except ValueError:
                body = {"error": response.text}
            records.append(dict(request=request, status=response.status_code, latency=seconds, body=body))

    start = time.perf_counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return records, time.perf_counter() - start


def summarize(records: list[dict], wall: float, requests: list[dict], window_ms: float) -> dict:
    """Figures of one run, and the records' checks (lost, duplicated, mixed-up answers)."""
    ok = [r for r in records if r["status"] == 200]
    latencies = np.asarray([r["latency"] for r in ok])
    answered = collections.Counter(r["body"].get("id") for r in ok)
    sent = {r["id"] for r in requests}
    mixed = [r["request"]["id"] for r in ok if r["body"]["id"] != r["request"]["id"]
             or r["body"]["frames"] != r["request"]["frames"]]
    audio_seconds = sum(r["body"]["seconds"] or 0 for r in ok)
    histogram = collections.Counter(r["body"]["batch_size"] for r in ok)
    return dict(
        batch_window_ms=window_ms, requests=len(requests), answered=len(ok),
        errors=collections.Counter(str(r["status"]) for r in records if r["status"] != 200),
        lost=len(sent - set(answered)), duplicated=sum(n - 1 for n in answered.values() if n > 1),
        mixed_up=len(mixed), wall_seconds=round(wall, 3),
        latency_seconds={f"p{q}": round(float(np.percentile(latencies, q)), 4) for q in (50, 95, 99)}
        if len(latencies) else None,
        requests_per_second=round(len(ok) / wall, 2), audio_seconds_per_second=round(audio_seconds / wall, 4),
        batch_size_histogram={str(k): histogram[k] for k in sorted(histogram)},
        mean_batch_size=round(float(np.mean([r["body"]["batch_size"] for r in ok])), 3) if ok else None)


def answer_digests(records: list[dict]) -> dict:
    """id -> SHA-256 of its answer: the WAV (base64), or the codes of a model without a codec."""
    return {r["body"]["id"]: hashlib.sha256((r["body"]["audio_base64"] or json.dumps(r["body"]["codes"])).encode())
            .hexdigest() for r in records if r["status"] == 200}


def main(argv=None, engine=None) -> dict:
    """Runs the load test and prints its JSON report (also returned); `engine`: serve this one instead of loading
    (--model and --max-batch are then ignored)."""
    args = parse_args(argv)
    from soundstorm_jax.serving.server import make_app
    began = time.perf_counter()
    engine, source = load_engine(args) if engine is None else (engine, "given engine")
    requests = request_mix(engine, args.requests)
    compile_seconds = precompile(engine, requests)
    runs, digests = [], []
    for window in args.windows:
        left = args.deadline_s - (time.perf_counter() - began)
        if left <= 0:
            raise SystemExit(f"load test: --deadline-s {args.deadline_s:g} s passed before the {window:g} ms run")
        with Served(make_app(engine, batch_window_ms=window, max_queue=max(64, args.clients))) as url:
            try:
                records, wall = asyncio.run(asyncio.wait_for(drive(url, requests, args.clients), left))
            except asyncio.TimeoutError:
                raise SystemExit(f"load test: --deadline-s {args.deadline_s:g} s passed during the {window:g} ms "
                                 f"run") from None
        runs.append(summarize(records, wall, requests, window))
        digests.append(answer_digests(records))
    same_answers = all(d == digests[0] for d in digests[1:]) and len(digests[0]) == len(requests)
    report = dict(
        benchmark="load_test", machine=machine(), engine=source, describe=engine.describe(),
        clients=args.clients, requests=args.requests,
        frames_mix=sorted({r["frames"] for r in requests}), compile_seconds=round(compile_seconds, 2), runs=runs,
        checks=dict(no_lost=all(r["lost"] == 0 for r in runs), no_duplicated=all(r["duplicated"] == 0 for r in runs),
                    no_mixed_up=all(r["mixed_up"] == 0 for r in runs), no_errors=all(not r["errors"] for r in runs),
                    same_answers_across_windows=same_answers),
        total_seconds=round(time.perf_counter() - began, 2))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    result = main()
    sys.exit(0 if all(result["checks"].values()) else 1)
