"""Reading and writing audio files: the one reader behind the datasets and the command line.

Every audio file the package reads goes through `read_audio`: decode with
`soundfile` (WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...), mix down to mono, check the samples
are finite, resample to the caller's rate when asked, and return float32 in
[-1, 1] or int16 (what the datasets store). Every failure raises `AudioError`
naming the file, so a bad file in a folder of thousands is found at once.
"""
from __future__ import annotations

import io
import math
import os
from typing import Callable, Optional

import numpy as np
import soundfile
from etils import epath

from soundstorm_jax import paths

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".caf", ".w64", ".au")
"""The file name endings (lower case) a folder of audio is searched for (`soundstorm prepare`, `find_audio_files`):
the formats `soundfile` reads, as `encode` and `--prompt-audio` do (MP3 needs libsndfile >= 1.1)."""
INT16_SCALE = 32767.0


class AudioError(ValueError):
    """A file that cannot become a training waveform; the message names it."""


class SampleRateError(AudioError):
    """A file at another rate than the one needed, with resampling not allowed.

    ``rate`` is the file's rate, ``target_rate`` the one asked for and ``path`` the
    file, so a caller can say how to fix it in its own terms (the command line names
    its flag).
    """

    def __init__(self, message: str, rate: int, target_rate: int, path: Optional[str] = None):
        super().__init__(message)
        self.rate, self.target_rate, self.path = rate, target_rate, path


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited polyphase resampling (Kaiser-windowed sinc, scipy).

    Args:
      audio: float waveform, shape (samples,).
      source_rate, target_rate: sample rates in Hz.

    Returns:
      float32 waveform, shape (ceil(samples * target_rate / source_rate),).
    """
    if source_rate == target_rate:
        return np.asarray(audio, np.float32)
    if source_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {source_rate} -> {target_rate}")
    from scipy import signal  # Imported here: only resampling needs scipy.

    g = math.gcd(int(source_rate), int(target_rate))
    up, down = int(target_rate) // g, int(source_rate) // g
    out = signal.resample_poly(np.asarray(audio, np.float64), up, down)
    return out.astype(np.float32)


def float_to_int16(audio: np.ndarray) -> np.ndarray:
    """Quantises a float waveform in [-1, 1] to int16; values beyond are clipped."""
    return np.round(np.clip(audio, -1.0, 1.0) * INT16_SCALE).astype(np.int16)


def int16_to_float(audio: np.ndarray) -> np.ndarray:
    """Inverse of `float_to_int16` (up to rounding): int16 -> float32 in [-1, 1]."""
    return np.asarray(audio, np.float32) / INT16_SCALE


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> str:
    """Writes a float waveform (clipped to [-1, 1], NaN -> 0) as a 16-bit mono WAV; returns the path.

    Raises `AudioError` naming the file when it cannot be written.
    """
    audio = np.clip(np.nan_to_num(np.asarray(audio, np.float32)), -1.0, 1.0)
    try:
        if paths.is_remote(path):  # soundfile seeks back to finish a WAV header: encode in memory, upload once.
            encoded = io.BytesIO()
            soundfile.write(encoded, audio, int(sample_rate), subtype="PCM_16", format="WAV")
            epath.Path(path).write_bytes(encoded.getvalue())
        else:
            soundfile.write(os.fspath(path), audio, int(sample_rate), subtype="PCM_16")
    except Exception as e:  # soundfile raises several types (RuntimeError, OSError, ...).
        raise AudioError(f"cannot write {os.fspath(path)!r}: {e}") from e
    return os.fspath(path)


def make_output_dir(path: str | os.PathLike) -> str:
    """Creates a folder to write into; `AudioError` when it cannot be created or is not writable."""
    if paths.is_remote(path):  # Object stores have no folders to create or permissions to ask in advance.
        return os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise AudioError(f"cannot create output folder {os.fspath(path)!r}: {e.strerror or e}") from e
    if not os.access(path, os.W_OK):
        raise AudioError(f"output folder {os.fspath(path)!r} is not writable")
    return os.fspath(path)


def write_waveforms(waveforms, out_dir: str | os.PathLike, sample_rate: int, *,
                    prefix: str = "sample") -> list[str]:
    """One WAV per waveform, `out_dir/{prefix}_{i:03d}.wav` (folder created); the paths in order."""
    make_output_dir(out_dir)
    return [write_wav(os.path.join(out_dir, f"{prefix}_{i:03d}.wav"), w, sample_rate)
            for i, w in enumerate(waveforms)]


def read_audio(
    path: str | os.PathLike,
    target_sample_rate: Optional[int] = None,
    *,
    allow_resample: bool = True,
    dtype=np.float32,
    on_resample: Optional[Callable[[int], None]] = None,
) -> tuple[np.ndarray, int]:
    """Reads one audio file as a mono waveform.

    Args:
      path: an audio file soundfile can decode.
      target_sample_rate: the rate the caller needs; None keeps the file's own.
      allow_resample: when the file's rate differs from `target_sample_rate`,
        resample (True) or raise `SampleRateError` (False).
      dtype: np.float32 (values in [-1, 1], clipped) or np.int16 (quantised).
      on_resample: called with the file's rate just before it is resampled.

    Returns:
      (audio, sample_rate): array of shape (samples,) and `dtype`, and its rate in Hz.

    Raises:
      AudioError: the file cannot be decoded, is empty or holds NaN/Inf samples;
        `SampleRateError` when it has the wrong rate and `allow_resample` is False.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.int16):
        raise ValueError(f"dtype must be float32 or int16, got {dtype}")
    path = os.fspath(path)
    try:
        data, rate = soundfile.read(paths.readable(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types; all mean "unreadable".
        raise AudioError(f"cannot read audio file {path!r}: {e}") from e
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path!r} has no samples")
    # Mono: the mean over channels keeps the level of a centred source.
    audio = data.mean(axis=1)
    if not np.all(np.isfinite(audio)):
        bad = int(np.sum(~np.isfinite(audio)))
        raise AudioError(f"audio file {path!r} has {bad} NaN/Inf samples")
    if target_sample_rate is not None and rate != target_sample_rate:
        if not allow_resample:
            raise SampleRateError(
                f"audio file {path!r} has sample rate {rate} Hz but {target_sample_rate} Hz is "
                f"needed; pass allow_resample=True to resample it, or convert the file",
                rate, target_sample_rate, path)
        if on_resample is not None:
            on_resample(rate)
        audio = resample(audio, rate, target_sample_rate)
        rate = target_sample_rate
    if dtype == np.int16:
        return float_to_int16(audio), int(rate)
    return np.clip(audio, -1.0, 1.0).astype(np.float32), int(rate)
