"""eSpeak NG through ctypes: text -> int16 speech at 22050 Hz + phoneme events.

The library comes from the `espeakng-loader` wheel (it ships libespeak-ng
and its voice data). eSpeak keeps global state in C (current voice, rate,
pitch, a callback), so every call here takes a lock and sets voice, rate and
pitch itself: callers see a function of its arguments.

Determinism: eSpeak's output also depends on hidden state its earlier calls
leave behind (pitch flutter phase, noise generator), so the same call twice
in one process can differ by a few samples. `synthesize_batch` therefore
runs a fresh worker process (this file as a script, which imports only
numpy, ctypes and espeakng_loader) that synthesizes a job list in order:
the same list gives the same bytes. `synthesize` is in-process and meant for
timing text at generation time, where a sample of jitter does not matter.

This module must stay importable on its own (no package imports): it is
also the worker's script.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
from typing import Iterator, Optional, Sequence

import numpy as np

SAMPLE_RATE = 22050
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_OPTION_PHONEME_EVENTS = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAM_RATE, _PARAM_PITCH = 1, 3
_CHARS_UTF8 = 1
MIN_RATE, MAX_RATE = 80, 450  # words per minute, eSpeak's limits.


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p),
                ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """espeak_EVENT on 64-bit Linux."""
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


@dataclasses.dataclass(frozen=True)
class Synthesis:
    """One utterance.

    Attributes:
      audio: int16 (samples,) at `SAMPLE_RATE`.
      phoneme_starts: int64 (phonemes,), the sample where each phoneme starts.
      phonemes: eSpeak mnemonics, e.g. "h", "'oU", "_:" (a pause).
    """
    audio: np.ndarray
    phoneme_starts: np.ndarray
    phonemes: tuple[str, ...]


def is_available() -> bool:
    """Whether the espeakng-loader wheel is installed."""
    try:
        import espeakng_loader  # noqa: F401
    except ImportError:
        return False
    return True


class _Engine:
    """The one process-wide eSpeak instance, behind a lock."""

    def __init__(self):
        import espeakng_loader
        self._lock = threading.Lock()
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                     espeakng_loader.get_data_path().encode(),
                                     _OPTION_PHONEME_EVENTS)
        if rate != SAMPLE_RATE:
            raise RuntimeError(f"espeak_Initialize returned {rate}, expected {SAMPLE_RATE} Hz")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []
        self._callback = _Callback(self._on_audio)  # Kept alive: C holds the pointer.
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib

    def _on_audio(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                self._events.append((events[i].sample, events[i].id.string.decode("ascii", "replace")))
            i += 1
        return 0  # 0 = keep synthesizing.

    def synthesize(self, text: str, voice: str, rate: int, pitch: int, seed: int) -> Synthesis:
        if not MIN_RATE <= rate <= MAX_RATE:
            raise ValueError(f"rate must be in [{MIN_RATE}, {MAX_RATE}] words/minute, got {rate}")
        if not 0 <= pitch <= 100:
            raise ValueError(f"pitch must be in [0, 100], got {pitch}")
        encoded = text.encode("utf-8")
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"eSpeak has no voice named {voice!r}")
            self._lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
            self._lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
            self._lib.espeak_ng_SetRandSeed(int(seed))
            self._chunks, self._events = [], []
            status = self._lib.espeak_Synth(encoded, len(encoded) + 1, 0, 0, 0, _CHARS_UTF8,
                                            None, None)
            chunks, events = self._chunks, self._events
            self._chunks, self._events = [], []
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status} for {text!r}")
        audio = np.concatenate(chunks) if chunks else np.zeros((0,), np.int16)
        starts = np.array([s for s, _ in events], np.int64)
        return Synthesis(audio.astype(np.int16), starts, tuple(p for _, p in events))


_engine: Optional[_Engine] = None
_engine_lock = threading.Lock()


def _get_engine() -> _Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _Engine()
        return _engine


def synthesize(text: str, *, voice: str = "en-us", rate: int = 175, pitch: int = 50,
               seed: int = 0) -> Synthesis:
    """Speaks `text` in this process (thread-safe; see the module docstring).

    Args:
      voice: an eSpeak voice, optionally with a variant: "en-us", "en-gb-x-rp+f3".
      rate: words per minute, 80..450.
      pitch: base pitch, 0..100.
      seed: eSpeak's noise generator seed.
    """
    return _get_engine().synthesize(text, voice, rate, pitch, seed)


@dataclasses.dataclass(frozen=True)
class Job:
    """One utterance for `synthesize_batch`; `out` is the .npz it writes."""
    text: str
    voice: str
    rate: int
    pitch: int
    seed: int
    out: str


def synthesize_batch(jobs: Sequence[Job]) -> Iterator[int]:
    """Synthesizes `jobs` in order in a fresh process; yields each finished index.

    Each job's `.npz` holds `audio` (int16), `phoneme_starts` (int64) and
    `phonemes` (str). A fresh process makes the bytes a function of `jobs`.
    """
    # -P: do not put this package folder on the worker's sys.path (no shadowing).
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen([sys.executable, "-P", os.path.abspath(__file__)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                                text=True)
        proc.stdin.write(json.dumps([dataclasses.asdict(j) for j in jobs]))
        proc.stdin.close()
        for line in proc.stdout:
            yield int(line)
        if proc.wait() != 0:
            errors.seek(0)
            raise RuntimeError(f"eSpeak worker failed (exit {proc.returncode}):\n{errors.read()}")


def _worker_main() -> None:
    for i, job in enumerate(json.load(sys.stdin)):
        result = synthesize(job["text"], voice=job["voice"], rate=job["rate"],
                            pitch=job["pitch"], seed=job["seed"])
        np.savez(job["out"], audio=result.audio, phoneme_starts=result.phoneme_starts,
                 phonemes=np.array(result.phonemes, dtype=str))
        print(i, flush=True)


if __name__ == "__main__":
    _worker_main()
