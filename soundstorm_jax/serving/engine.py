"""Requests -> batches -> codes and audio: what request files and the server share.

``Engine.resolve`` turns a parsed `Request` into a `Job` on the host (text to
phonemes, prompt audio through the codec, the length in frames), checking
everything against the model, so a bad request fails alone and before any
compilation. ``Engine.plan`` groups jobs into batches that one compiled program
can decode together; ``Engine.run`` decodes one such batch.

Exactness: a job decodes with its own key, its own length and prompt, so its
codes do not depend on the rest of its batch. Jobs share a batch only when
they share what the program holds per batch: the frame bucket (the sampler's
noise is drawn over the padded length), the step schedule, the sampling
options and whether semantic conditioning is used. Batch sizes are rounded up
to a power of two (padding with copies of the first job, dropped afterwards),
so a long-running service compiles one program per (bucket, batch size,
options) and no more.

Audio is decoded at the bucket's length, padded frames repeating the last
valid one, then cut to the job's frames x hop: a job's audio is the same alone
or batched. (`soundstorm generate` decodes each sample at its exact length; the
codes agree, the last frames' audio of a non-causal codec may differ slightly.)
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import math
import os
import re
from typing import Any, Optional, Sequence

import numpy as np

from soundstorm_jax.sampler.generate import DEFAULT_FRAME_BUCKET
from soundstorm_jax.serving.requests import Request, RequestError

DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_FRAMES = 4096


@dataclasses.dataclass(frozen=True)
class Job:
    """A request resolved to the model's inputs."""
    request: Request
    frames: int                         # valid output frames
    semantic: Optional[np.ndarray]      # (tokens,) int32, or None
    prompt: Optional[np.ndarray]        # (prompt frames, levels) int32, or None
    notices: tuple[str, ...] = ()       # things the user should know (e.g. a resampled prompt)


@dataclasses.dataclass(frozen=True)
class Result:
    job: Job
    codes: np.ndarray                   # (frames, levels)
    audio: Optional[np.ndarray]         # (samples,) float32, None without a codec
    sample_rate: Optional[int]

    @property
    def seconds(self) -> Optional[float]:
        return None if self.audio is None else len(self.audio) / self.sample_rate


def request_key(seed: int) -> np.ndarray:
    """The key of a request with `seed`: ``split(PRNGKey(seed), 1)[0]``, i.e. sample 0 of ``generate --seed``."""
    import jax
    return np.asarray(jax.random.split(jax.random.PRNGKey(seed), 1)[0])


def text_semantic_ids(text: str, voice: str, config, net, field: str = "text") -> np.ndarray:
    """English text -> (tokens,) phoneme ids at the model's semantic rate (``config.data.semantic_rate``)."""
    rate = config.data.get("semantic_rate") if config is not None else None
    if not net.num_semantic_token_ids or not rate:
        raise RequestError(field, "needs a model trained on semantic tokens (phoneme ids, e.g. the embedded "
                                  "corpus); this one has no semantic conditioning (config.model."
                                  "num_semantic_token_ids / config.data.semantic_rate are unset)")
    from soundstorm_jax.data import phonemize
    try:
        return phonemize(text, voice=voice, frame_rate=float(rate)).frame_ids.astype(np.int32)
    except (ValueError, RuntimeError) as e:
        raise RequestError("voice" if "voice" in str(e).lower() else field, str(e)) from None


def prompt_semantic_ids(prompt_text: Optional[str], voice: str, config, net, frames: int) -> np.ndarray:
    """(tokens,) semantic ids covering a prompt's `frames`: its text's phonemes stretched over them, else the
    pad id (the prompt's frames unconditioned)."""
    tokens = max(1, math.ceil(frames / net.acoustic_per_semantic - 1e-9))
    if prompt_text is None:
        return np.full((tokens,), net.semantic_pad_id, np.int32)
    ids = text_semantic_ids(prompt_text, voice, config, net, field="prompt_text")
    return ids[np.arange(tokens) * len(ids) // tokens]


def read_audio_bytes(data: bytes, field: str, sample_rate: int, notices: list) -> np.ndarray:
    """Audio file bytes -> mono float32 at `sample_rate` (another rate is resampled, with a notice)."""
    import soundfile

    from soundstorm_jax.data.audio_io import resample
    try:
        audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types; all mean "unreadable".
        reason = re.sub(r"^Error opening <[^>]*>: ", "", str(e))  # soundfile names the in-memory buffer.
        raise RequestError(field, f"cannot read the audio ({reason.strip() or type(e).__name__}); send a WAV, "
                                  f"FLAC, OGG or MP3 file") from None
    if audio.shape[0] == 0:
        raise RequestError(field, "the audio has no samples")
    audio = audio.mean(axis=1)
    if not np.all(np.isfinite(audio)):
        raise RequestError(field, f"the audio has {int(np.sum(~np.isfinite(audio)))} NaN/Inf samples")
    if rate != sample_rate:
        notices.append(f"{field} is at {rate} Hz; resampled to the codec's {sample_rate} Hz")
        audio = resample(audio, rate, sample_rate)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


class CompileClock:
    """Seconds JAX spends tracing, lowering and compiling, while in its ``with`` block (jax.monitoring)."""
    EVENTS = ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_trace_duration",
              "/jax/core/compile/jaxpr_to_mlir_module_duration")

    def __init__(self):
        self.seconds = 0.0

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        del kwargs
        if event in self.EVENTS:
            self.seconds += duration

    def __enter__(self):
        import jax
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        import jax
        jax.monitoring.unregister_event_duration_listener(self._listen)


class Engine:
    """A loaded SoundStorm (+ codec) that resolves, batches and decodes requests."""

    def __init__(self, model, variables, *, config=None, codec=None, mesh=None, max_batch: int = DEFAULT_MAX_BATCH,
                 max_frames: int = DEFAULT_MAX_FRAMES, frame_bucket: int = DEFAULT_FRAME_BUCKET):
        for name, value in (("max_batch", max_batch), ("max_frames", max_frames), ("frame_bucket", frame_bucket)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if codec is not None:
            from soundstorm_jax.maskgit.soundstorm import check_codec_matches
            check_codec_matches(codec, model.net)
        self.model, self.variables, self.config, self.codec, self.mesh = model, variables, config, codec, mesh
        self.max_batch, self.max_frames, self.frame_bucket = max_batch, max_frames, frame_bucket

    @classmethod
    def load(cls, path: str, *, codec: Any = None, step: Optional[int] = None, mesh=None, **options) -> "Engine":
        """From an export or a training workdir; `codec`: a codec, a codec workdir/export, or None (an export's
        own codec when it has one)."""
        from soundstorm_jax.training import restore
        model, variables, config = restore.load_soundstorm(path, step, mesh=mesh)
        if isinstance(codec, (str, os.PathLike)):
            codec = restore.load_codec(os.fspath(codec))
        elif codec is None:
            from soundstorm_jax import export
            codec = export.load(path).codec if export.is_export(path) else None
        return cls(model, variables, config=config, codec=codec, mesh=mesh, **options)

    # ---- one request -------------------------------------------------------------------------------

    @property
    def frame_rate(self) -> Optional[float]:
        return None if self.codec is None else self.codec.sample_rate / self.codec.hop_length

    def describe(self) -> dict:
        """What a client needs to know to build requests (the server's /v1/model)."""
        net = self.model.net
        return dict(levels=net.num_quantizers, codebook_size=net.codebook_size,
                    semantic_vocabulary=net.num_semantic_token_ids, frame_rate=self.frame_rate,
                    sample_rate=None if self.codec is None else self.codec.sample_rate,
                    text=bool(net.num_semantic_token_ids and self.config is not None
                              and self.config.data.get("semantic_rate")),
                    guidance=bool(self.model.cond_drop_prob), max_frames=self.max_frames,
                    max_seconds=None if self.codec is None else self.max_frames / self.frame_rate,
                    max_batch=self.max_batch, frame_bucket=self.frame_bucket)

    def _steps(self, request: Request) -> tuple[int, ...]:
        from soundstorm_jax.maskgit.schedules import resolve_steps
        try:
            return tuple(resolve_steps(self.model.steps if request.steps is None else request.steps,
                                       self.model.net.num_quantizers))
        except ValueError as e:
            raise RequestError("steps", f"{e} (the model has {self.model.net.num_quantizers} levels)") from None

    def _array(self, field: str, value, base_dir: Optional[str], ndim: int) -> np.ndarray:
        if isinstance(value, str):
            from soundstorm_jax import paths
            path = value if base_dir is None or os.path.isabs(value) or "://" in value else \
                os.path.join(base_dir, value)
            try:
                array = np.load(paths.readable(path), allow_pickle=False)
            except Exception as e:
                raise RequestError(field, f"cannot read {path!r} as a .npy array: {e}") from None
            if not np.issubdtype(array.dtype, np.integer):
                raise RequestError(field, f"{path!r} must hold integers, got dtype {array.dtype}")
        else:
            try:
                array = np.asarray(value, np.int64)
            except OverflowError:  # A value beyond int64 is out of every range below; say so, not a traceback.
                raise RequestError(field, "holds an integer too large for int64") from None
        if array.ndim != ndim or array.size == 0:
            raise RequestError(field, f"must have shape {'(tokens,)' if ndim == 1 else '(frames, levels)'}, "
                                      f"got {array.shape}")
        return array

    def _prompt(self, request: Request, base_dir: Optional[str], notices: list) -> Optional[np.ndarray]:
        net = self.model.net
        if request.prompt_codes is not None:
            prompt = self._array("prompt_codes", request.prompt_codes, base_dir, 2)
            if prompt.shape[1] > net.num_columns:
                raise RequestError("prompt_codes", f"has {prompt.shape[1]} levels but the model has "
                                                   f"{net.num_columns}")
            if prompt.min() < 0 or prompt.max() >= net.codebook_size:
                raise RequestError("prompt_codes", f"holds values in [{prompt.min()}, {prompt.max()}] but the "
                                                   f"model's codes lie in [0, {net.codebook_size})")
            return prompt.astype(np.int32)
        field = "prompt_audio" if request.prompt_audio is not None else "prompt_audio_base64"
        if request.prompt_audio is None and request.prompt_audio_base64 is None:
            return None
        if self.codec is None:
            raise RequestError(field, "needs a codec to encode the prompt (load the model with one)")
        if request.prompt_audio is not None:
            from soundstorm_jax import paths
            path = request.prompt_audio if base_dir is None or os.path.isabs(request.prompt_audio) else \
                os.path.join(base_dir, request.prompt_audio)
            try:
                with open(paths.readable(path), "rb") as f:
                    data = f.read()
            except OSError as e:
                raise RequestError(field, f"cannot read {path!r}: {e.strerror or e}") from None
        else:
            try:
                data = base64.b64decode(request.prompt_audio_base64, validate=True)
            except (binascii.Error, ValueError) as e:
                raise RequestError(field, f"is not valid base64: {e}") from None
        audio = read_audio_bytes(data, field, self.codec.sample_rate, notices)
        if len(audio) < self.codec.hop_length:
            raise RequestError(field, f"is shorter than one codec frame ({self.codec.hop_length} samples)")
        return np.asarray(self.codec.encode(audio[None], sample_rate=self.codec.sample_rate))[0].astype(np.int32)

    def resolve(self, request: Request, *, base_dir: Optional[str] = None) -> Job:
        """The request checked against the model and turned into inputs; RequestError naming the field.

        `base_dir`: the folder relative file names are read from (request files)."""
        from soundstorm_jax import validation
        from soundstorm_jax.model.wrapper import semantic_frames
        model, net = self.model, self.model.net
        self._steps(request)
        if request.top_k is not None and request.top_k > net.codebook_size:
            raise RequestError("top_k", f"must lie in [1, {net.codebook_size}] (the model's codebook size), "
                                        f"got {request.top_k}")
        if request.guidance_scale is not None and not model.cond_drop_prob:
            raise RequestError("guidance_scale", "needs a model trained with conditioning dropout; this one was "
                                                 "trained without it")
        if request.seconds is not None and self.codec is None:
            raise RequestError("seconds", "needs a codec for the frame rate; give frames")
        notices: list[str] = []
        semantic = None
        if request.text is not None:
            semantic = text_semantic_ids(request.text, request.voice, self.config, net)
        elif request.semantic is not None:
            semantic = self._array("semantic", request.semantic, base_dir, 1)
            try:
                validation.check_semantic_ids(semantic[None], batch=1, num_semantic_token_ids=net.num_semantic_token_ids,
                                              pad_id=net.semantic_pad_id, name="semantic")
            except ValueError as e:
                raise RequestError("semantic", str(e).removeprefix("semantic ")) from None
            semantic = semantic.astype(np.int32)
        prompt = self._prompt(request, base_dir, notices)
        if request.text is not None and prompt is not None:
            # The text is what follows the prompt: the prompt's frames get its own phonemes (or none).
            semantic = np.concatenate([prompt_semantic_ids(request.prompt_text, request.voice, self.config, net,
                                                           len(prompt)), semantic])
        if request.frames is not None:
            frames, field = request.frames, "frames"
        elif request.seconds is not None:
            frames, field = max(1, int(request.seconds * self.codec.sample_rate // self.codec.hop_length)), "seconds"
        else:
            field = "text" if request.text is not None else "semantic"
            frames = semantic_frames(len(semantic), net.acoustic_per_semantic)
        if frames > self.max_frames:
            limit = f"{self.max_frames} frames" + ("" if self.codec is None else
                                                   f" ({self.max_frames / self.frame_rate:.3g} s)")
            raise RequestError(field, f"asks for {frames} frames; this engine allows at most {limit}")
        if prompt is not None and len(prompt) > frames:
            which = next(f for f in ("prompt_codes", "prompt_audio", "prompt_audio_base64")
                         if getattr(request, f) is not None)
            raise RequestError(which, f"has {len(prompt)} frames but the output has only {frames} ({field}); "
                                      f"ask for a longer output or give a shorter prompt")
        return Job(request=request, frames=int(frames), semantic=semantic, prompt=prompt, notices=tuple(notices))

    # ---- batches -----------------------------------------------------------------------------------

    def bucket(self, frames: int) -> int:
        return int(math.ceil(frames / self.frame_bucket) * self.frame_bucket)

    def batch_key(self, job: Job) -> tuple:
        """Jobs with equal keys can share a batch (see the module docstring)."""
        r = job.request
        return (self.bucket(job.frames), self._steps(r), r.temperature, r.top_k, r.top_p, r.guidance_scale,
                job.semantic is not None)

    def batch_size(self, jobs: int) -> int:
        """The compiled batch size for `jobs` jobs: the next power of two (at most max_batch)."""
        return min(1 << max(jobs - 1, 0).bit_length(), self.max_batch)

    def plan(self, jobs: Sequence[Job]) -> list[list[Job]]:
        """Jobs grouped by batch key, each group in chunks of at most max_batch (group order: first seen)."""
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            groups.setdefault(self.batch_key(job), []).append(job)
        return [group[i:i + self.max_batch] for group in groups.values()
                for i in range(0, len(group), self.max_batch)]

    def run(self, jobs: Sequence[Job]) -> list[Result]:
        """Decode jobs sharing one batch key as one batch; one Result per job, in order."""
        import jax

        from soundstorm_jax.sampler.generate import generate
        if not jobs:
            return []
        keys = {self.batch_key(job) for job in jobs}
        if len(keys) != 1 or len(jobs) > self.max_batch:
            raise ValueError(f"run() takes at most max_batch={self.max_batch} jobs with one batch key "
                             f"(Engine.plan makes such groups); got {len(jobs)} jobs with {len(keys)} keys")
        net, r = self.model.net, jobs[0].request
        padded = list(jobs) + [jobs[0]] * (self.batch_size(len(jobs)) - len(jobs))
        options = dict(key=jax.numpy.asarray(np.stack([request_key(job.request.seed) for job in padded])),
                       lengths=[job.frames for job in padded], steps=self._steps(r), temperature=r.temperature,
                       top_k=r.top_k, top_p=r.top_p, guidance_scale=r.guidance_scale,
                       frame_bucket=self.frame_bucket, batch_size=len(padded))
        if any(job.prompt is not None for job in padded):
            options["prompt"] = [job.prompt for job in padded]
        if jobs[0].semantic is not None:
            tokens = max(len(job.semantic) for job in padded)
            options["semantic_ids"] = np.stack([np.pad(job.semantic, (0, tokens - len(job.semantic)),
                                                       constant_values=net.semantic_pad_id) for job in padded])
        n = max(job.frames for job in padded)
        codes = np.asarray(generate(self.model, self.variables, n, mesh=self.mesh, decode_audio=False, **options))
        audio = self._decode(codes, [job.frames for job in padded]) if self.codec is not None else None
        return [Result(job=job, codes=codes[i, :job.frames], sample_rate=None if audio is None else
                       self.codec.sample_rate, audio=None if audio is None else
                       audio[i, :job.frames * self.codec.hop_length]) for i, job in enumerate(jobs)]

    def _decode(self, codes: np.ndarray, frames: list[int]) -> np.ndarray:
        """(b, n, levels) codes (padding -1) -> (b, bucket x hop) audio; padding repeats the last valid frame."""
        bucket = self.bucket(codes.shape[1])
        index = np.minimum(np.arange(bucket)[None, :], np.asarray(frames)[:, None] - 1)   # (b, bucket)
        filled = np.take_along_axis(codes, index[:, :, None], axis=1)
        return np.asarray(self.codec.decode(filled.astype(np.int32)))

    def generate(self, requests: Sequence[Request], *, base_dir: Optional[str] = None) -> list[Result]:
        """Resolve, plan and run `requests` (all valid) in one call; results in the requests' order."""
        jobs = [self.resolve(request, base_dir=base_dir) for request in requests]
        results = {}
        for batch in self.plan(jobs):
            for job, result in zip(batch, self.run(batch)):
                results[id(job)] = result
        return [results[id(job)] for job in jobs]
