"""Dynamic batching: one decoding worker that gathers queued jobs into batches (asyncio).

Requests are resolved before they reach the batcher (a bad one fails alone).
`Batcher.submit` queues a `Job` (bounded: `QueueFull` when `max_queue` jobs
wait) and returns its `Done` once decoded. The worker takes the first queued
job, then every job that arrives within `window_s` of it (at most
`engine.max_batch` jobs in all; `window_s=0`: one job at a time, no batching),
groups them with `engine.plan` and decodes each group with `engine.run` in the
batcher's own thread (JAX releases the GIL: the event loop keeps serving meanwhile).
The engine gives every job of a group exactly what it gets alone.

A job whose caller stopped waiting (a timeout, a closed connection) is dropped
before its batch runs. `close` waits for the queue to empty (graceful shutdown).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import time
from typing import Optional

from soundstorm_jax.serving.engine import Engine, Job, Result
from soundstorm_jax.serving.requests import Request

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The queue holds `max_queue` jobs; `retry_after` is a guess of the seconds until there is room."""

    def __init__(self, max_queue: int, retry_after: int):
        super().__init__(f"the queue is full ({max_queue} requests waiting); retry in {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(RuntimeError):
    """The server is draining its queue before it exits and takes no new requests."""


@dataclasses.dataclass(frozen=True)
class Done:
    """A decoded job and how it was served."""
    result: Result
    batch_size: int          # jobs decoded together with this one (itself included; padding excluded)
    queue_seconds: float     # from queueing to the start of its batch
    decode_seconds: float    # its batch's engine.run


@dataclasses.dataclass
class _Pending:
    job: Job
    future: asyncio.Future
    queued_at: float


class Batcher:
    """Queues jobs and decodes them in batches on one worker task; create and use it inside one event loop."""

    def __init__(self, engine: Engine, *, window_s: float = 0.02, max_queue: int = 64):
        if not (isinstance(window_s, (int, float)) and math.isfinite(window_s) and window_s >= 0):
            raise ValueError(f"window_s must be a number >= 0, got {window_s!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be a positive int, got {max_queue!r}")
        self.engine, self.window_s, self.max_queue = engine, float(window_s), max_queue
        self.ready = False            # The warm-up request has been decoded.
        self.draining = False         # Shutting down: no new jobs.
        self.error: Optional[BaseException] = None   # Why the warm-up failed, if it did.
        self.batches = 0
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue)
        self._busy = False
        self._taken: list[_Pending] = []   # The jobs the worker holds (collecting or decoding).
        self._batch_seconds = 0.0     # Moving average of one batch's decode time (for Retry-After).
        self._worker: Optional[asyncio.Task] = None
        # Decoding has a thread of its own: it never waits behind requests being resolved in the default pool.
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="soundstorm-decode")

    # ---- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the worker: it warms the engine up (one tiny request), then serves the queue."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._serve(), name="soundstorm-batcher")

    async def close(self, timeout_s: Optional[float] = None) -> None:
        """Takes no new jobs, decodes those queued (at most `timeout_s`), then stops the worker."""
        self.draining = True
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._worker is not None and not self._worker.done() and (self._queue.qsize() or self._busy):
            if deadline is not None and time.monotonic() > deadline:
                log.warning("shutdown: %d queued requests left undecoded after %g s", self._queue.qsize(), timeout_s)
                break
            await asyncio.sleep(0.02)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):  # The cancellation we just asked for.
                await self._worker
        self._thread.shutdown(wait=False)
        left = self._taken + [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        for pending in left:  # Left behind by the timeout: their callers get ShuttingDown.
            if not pending.future.done():
                pending.future.set_exception(ShuttingDown("the server shut down before decoding this request"))

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def retry_after(self) -> int:
        """Seconds until the queue has probably drained a batch's worth (at least 1)."""
        batches = self._queue.qsize() / self.engine.max_batch + 1
        return max(1, math.ceil(batches * self._batch_seconds))

    # ---- jobs --------------------------------------------------------------------------------------

    async def submit(self, job: Job) -> Done:
        """Queues `job` and waits for it; QueueFull or ShuttingDown at once when it cannot be queued.

        Cancelling the wait (e.g. ``asyncio.wait_for``'s timeout) drops the job if it has not started."""
        if self.draining:
            raise ShuttingDown("the server is shutting down")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(job, future, time.monotonic()))
        except asyncio.QueueFull:
            raise QueueFull(self.max_queue, self.retry_after()) from None
        return await future

    async def _collect(self) -> list[_Pending]:
        """The first job waiting, then those arriving within the window after it was queued."""
        first = await self._queue.get()
        self._busy = True  # From here until its batches are decoded: close() waits for them.
        taken = self._taken = [first]
        limit = 1 if self.window_s == 0 else self.engine.max_batch
        deadline = first.queued_at + self.window_s
        while len(taken) < limit:
            if not self._queue.empty():  # Jobs that queued while the last batch ran join at once.
                taken.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                taken.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return taken

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def _serve(self) -> None:
        try:
            warm = await self._in_thread(self.engine.resolve, Request(frames=1))
            await self._in_thread(self.engine.run, [warm])
        except Exception as e:  # noqa: BLE001 - reported by /readyz; the queue fails fast below.
            log.exception("the warm-up request failed")
            self.error = e
        self.ready = self.error is None
        while True:
            taken = await self._collect()
            try:
                await self._decode(taken)
            except Exception as e:  # noqa: BLE001 - a bug must not stop the worker: fail these, serve the next.
                log.exception("the decoding worker failed")
                for p in taken:
                    if not p.future.done():
                        p.future.set_exception(e)
            finally:
                self._busy, self._taken = False, []

    async def _decode(self, taken: list[_Pending]) -> None:
        live = [p for p in taken if not p.future.done()]  # Callers that gave up are dropped here.
        if self.error is not None:
            for p in live:
                p.future.set_exception(RuntimeError(f"the engine failed its warm-up: {self.error}"))
            return
        by_job = {id(p.job): p for p in live}
        for group in self.engine.plan([p.job for p in live]):
            group = [by_job[id(job)] for job in group if not by_job[id(job)].future.done()]
            if not group:
                continue
            start = time.monotonic()
            try:
                results = await self._in_thread(self.engine.run, [p.job for p in group])
            except Exception as e:  # noqa: BLE001 - the batch's callers get the failure, the worker goes on.
                log.exception("decoding a batch of %d failed", len(group))
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            seconds = time.monotonic() - start
            self.batches += 1
            self._batch_seconds = seconds if self.batches == 1 else 0.8 * self._batch_seconds + 0.2 * seconds
            for p, result in zip(group, results):
                if not p.future.done():
                    p.future.set_result(Done(result, len(group), start - p.queued_at, seconds))
