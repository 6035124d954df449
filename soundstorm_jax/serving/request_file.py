"""Request files: one JSON request per line -> one WAV (and/or codes) per request, and a report.

    {"name": "hello", "text": "Hello there.", "seed": 3}
    # a comment; blank lines are skipped too
    {"id": 7, "frames": 150, "prompt_audio": "voice.wav", "codes": true}

`read_request_file` parses the lines (no model needed: a caller can refuse an
unreadable file before loading one); `run_request_file` resolves them against
an `Engine`, groups them with `Engine.plan`, decodes batch by batch with
`Engine.run` and writes ``OUT/NAME.wav`` (``OUT/NAME.npy`` codes when the
request asks, `save_codes`, or the engine has no codec). A bad line is skipped
and reported with its number and field; it never stops the others. File names
in ``semantic``, ``prompt_codes`` and ``prompt_audio`` are relative to the
request file's folder.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Optional, Union

import numpy as np
from etils import epath

from soundstorm_jax import paths
from soundstorm_jax.serving.engine import CompileClock, Engine, Job
from soundstorm_jax.serving.requests import NAME_PATTERN, Request, RequestError, parse_request

REPORT_NAME = "report.json"


@dataclasses.dataclass(frozen=True)
class Line:
    """One request line that parsed: its 1-based number, the request and its output file stem."""
    number: int
    request: Request
    name: str


@dataclasses.dataclass(frozen=True)
class Failure:
    """A line skipped: its number, the offending field (None: the line as a whole) and why."""
    number: int
    field: Optional[str]
    message: str

    def as_dict(self) -> dict:
        return dict(line=self.number, field=self.field, message=self.message)


@dataclasses.dataclass(frozen=True)
class RequestFile:
    path: str
    base_dir: str                       # where the requests' relative file names are read from
    lines: tuple[Line, ...]             # the requests that parsed, in file order
    failures: tuple[Failure, ...]       # the lines that did not

    @property
    def read(self) -> int:
        return len(self.lines) + len(self.failures)


def _object_without_repeats(pairs: list) -> dict:
    """json.loads hook: a key given twice is an error (json keeps the last one silently)."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise RequestError(key, "given twice in this request")
        obj[key] = value
    return obj


def _parse_line(text: str) -> Request:
    try:
        obj = json.loads(text, object_pairs_hook=_object_without_repeats)
    except json.JSONDecodeError as e:
        raise RequestError(None, f"invalid JSON: {e.msg} at column {e.colno}") from None
    return parse_request(obj, allow_paths=True)


def _output_name(request: Request, number: int) -> tuple[str, Optional[str]]:
    """(file stem, the field it came from: 'name', 'id' or None for the line's default)."""
    if request.name is not None:
        return request.name, "name"
    if request.id is not None:
        name = str(request.id)
        if not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
            raise RequestError("id", f"{request.id!r} cannot be a file name (letters, digits, '.', '_', '-'); "
                                     f"give the request a \"name\" for its output file")
        return name, "id"
    return f"line_{number:04d}", None


def read_request_file(path: str) -> RequestFile:
    """Parses every request line of `path`; OSError when the file cannot be read.

    Blank lines and lines starting with ``#`` are skipped. A line that is not valid UTF-8 or JSON, has an
    unknown or bad field, or whose output name an earlier line already took, becomes a `Failure`.
    """
    data = epath.Path(path).read_bytes()
    base_dir = os.path.dirname(path if paths.is_remote(path) else os.path.abspath(path))
    lines, failures, taken = [], [], {}
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            failures.append(Failure(number, None, f"not UTF-8 text: byte {e.start + 1} is {raw[e.start]:#04x}"))
            continue
        text = text.removeprefix("\ufeff").strip() if number == 1 else text.strip()
        if not text or text.startswith("#"):
            continue
        try:
            request = _parse_line(text)
            name, field = _output_name(request, number)
            if name in taken:
                what = {"name": f"{name!r} is already the output name", "id": f"gives the output name {name!r}, "
                        f"already that", None: f"the default output name {name!r} is already that"}[field]
                raise RequestError(field or "name", f"{what} of line {taken[name]}; give each request its own "
                                                    f"\"name\"")
        except RequestError as e:
            failures.append(Failure(number, e.field, e.detail))
            continue
        taken[name] = number
        lines.append(Line(number, request, name))
    return RequestFile(path=path, base_dir=base_dir, lines=tuple(lines), failures=tuple(failures))


def _write(engine: Engine, line: Line, result, out_dir: str, save_codes: bool) -> list[str]:
    from soundstorm_jax.data.audio_io import write_wav
    from soundstorm_jax.data.codes_dataset import codes_dtype
    stem = os.path.join(out_dir, line.name)
    written = []
    if result.audio is None or save_codes or line.request.codes:
        with epath.Path(stem + ".npy").open("wb") as f:
            np.save(f, result.codes.astype(codes_dtype(engine.model.net.codebook_size)))
        written.append(stem + ".npy")
    if result.audio is not None:
        written.append(write_wav(stem + ".wav", result.audio, result.sample_rate))
    return written


def run_request_file(engine: Engine, requests: Union[str, RequestFile], out_dir: str, *, save_codes: bool = False,
                     progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Decodes every valid request of a request file into `out_dir` (created if needed) and returns the report
    (also written as ``out_dir/report.json``; see `report_lines` for the fields).

    `requests`: the file's path, or what `read_request_file` made of it. `progress(done, total)` is called
    once the requests are resolved (done 0) and after each batch is written, counting requests.
    """
    from soundstorm_jax.data.audio_io import make_output_dir
    start = time.perf_counter()
    if not isinstance(requests, RequestFile):
        requests = read_request_file(requests)
    make_output_dir(out_dir)
    failures = list(requests.failures)
    entries: dict[int, dict] = {}
    jobs: list[Job] = []
    line_of: dict[int, Line] = {}
    with CompileClock() as clock:
        for line in requests.lines:
            try:
                job = engine.resolve(line.request, base_dir=requests.base_dir)
            except RequestError as e:
                failures.append(Failure(line.number, e.field, e.detail))
                continue
            jobs.append(job)
            line_of[id(job)] = line
        batches = engine.plan(jobs)
        if progress is not None:
            progress(0, len(jobs))
        done, batch_reports = 0, []
        for index, batch in enumerate(batches):
            for job, result in zip(batch, engine.run(batch)):
                line = line_of[id(job)]
                entries[line.number] = dict(
                    line=line.number, id=line.request.id, name=line.name, batch=index, frames=job.frames,
                    seconds=result.seconds, notices=list(job.notices),
                    files=_write(engine, line, result, out_dir, save_codes))
            batch_reports.append(dict(lines=[line_of[id(job)].number for job in batch], size=len(batch),
                                      compiled_size=engine.batch_size(len(batch)),
                                      bucket_frames=engine.bucket(max(job.frames for job in batch))))
            done += len(batch)
            if progress is not None:
                progress(done, len(jobs))
    wall = time.perf_counter() - start
    results = [entries[n] for n in sorted(entries)]
    audio_seconds = None if engine.codec is None else sum(r["seconds"] for r in results)
    report = dict(
        requests_file=requests.path, out=out_dir,
        requests=dict(read=requests.read, done=len(results), failed=len(failures)),
        batches=batch_reports, frames=sum(r["frames"] for r in results), audio_seconds=audio_seconds,
        wall_seconds=wall, compile_seconds=clock.seconds,
        real_time_factor=wall / audio_seconds if audio_seconds else None,
        audio_seconds_per_second=audio_seconds / wall if audio_seconds is not None else None,
        results=results, failures=[f.as_dict() for f in sorted(failures, key=lambda f: f.number)])
    report["report"] = os.path.join(out_dir, REPORT_NAME)
    epath.Path(report["report"]).write_text(json.dumps(report, indent=1, sort_keys=True, default=str) + "\n")
    return report


def report_lines(report: dict) -> list[str]:
    """The report for people: totals, timing, each request's files and notices, each failure.

    Report fields: requests {read, done, failed}; batches [{lines, size, compiled_size (padded to a power of
    two), bucket_frames}]; frames and audio_seconds written; wall_seconds (resolving, decoding and writing,
    compiles included) and compile_seconds (JAX tracing + XLA compiling within it); real_time_factor
    (wall / audio seconds) and audio_seconds_per_second; results [{line, id, name, batch, frames, seconds,
    notices, files}]; failures [{line, field, message}]."""
    counts = report["requests"]
    sizes = ", ".join(str(b["size"]) for b in report["batches"]) or "none"
    lines = [f"{counts['done']} of {counts['read']} requests done, {counts['failed']} failed; "
             f"{len(report['batches'])} batches (sizes {sizes})"]
    timing = f"wall {report['wall_seconds']:.2f} s (compiling {report['compile_seconds']:.2f} s)"
    if report["audio_seconds"] is not None:
        timing += f" for {report['audio_seconds']:.2f} s of audio"
        if report["real_time_factor"] is not None:
            timing += (f": real-time factor {report['real_time_factor']:.3g}, "
                       f"{report['audio_seconds_per_second']:.3g} audio s per s")
    else:
        timing += f" for {report['frames']} frames (no codec: codes only)"
    lines.append(timing)
    for result in report["results"]:
        lines.extend(result["files"])
        lines.extend(f"note: line {result['line']}: {notice}" for notice in result["notices"])
    for failure in report["failures"]:
        field = "" if failure["field"] is None else f" {failure['field']}:"
        lines.append(f"failed: line {failure['line']}:{field} {failure['message']}")
    lines.append(f"report: {report['report']}")
    return lines
