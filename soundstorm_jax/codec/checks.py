"""Host-side checks of codec inputs, raised before anything is traced or compiled.

Shape and dtype checks run always (also while tracing, which precedes
compilation); value checks (NaN/Inf, code range) run whenever the array is
concrete, i.e. on every eager call and every call through ``SoundStreamCodec``.
Each error names the argument and says what was expected.
"""
from __future__ import annotations

import jax
import numpy as np


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _dtype(x) -> np.dtype:
    dtype = getattr(x, "dtype", None)
    return np.dtype(dtype if dtype is not None else np.asarray(x).dtype)


def check_audio(audio, name: str = "audio") -> None:
    """audio ``(b, samples)`` floating point, at least one example and one sample, finite."""
    shape = tuple(np.shape(audio))
    if len(shape) != 2:
        hint = "; for a single clip pass audio[None]" if len(shape) == 1 else ""
        raise ValueError(f"{name} must have shape (batch, samples), got shape {shape}{hint}")
    if not np.issubdtype(_dtype(audio), np.floating):
        raise ValueError(f"{name} must be floating point in [-1, 1], got dtype {_dtype(audio)}; "
                         f"convert integer PCM first, e.g. pcm.astype(np.float32) / 32768")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} must have at least one example and one sample, got shape {shape}")
    if _is_concrete(audio):
        values = np.asarray(audio)
        bad = ~np.isfinite(values)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name} must be finite; found {values[where]} at (batch, sample) {where}")


def check_sample_rate(sample_rate, expected: int, name: str = "sample_rate") -> None:
    """A given sample rate must equal the codec's."""
    if sample_rate is not None and int(sample_rate) != int(expected):
        raise ValueError(f"{name}={sample_rate} Hz differs from the codec's target_sample_hz={expected}; "
                         f"resample the audio to {expected} Hz first (e.g. with soundfile + scipy.signal."
                         f"resample_poly(audio, {expected}, {sample_rate}, axis=-1))")


def check_codes(codes, *, codebook_size: int, num_quantizers: int, groups: int, name: str = "codes") -> None:
    """codes ``(b, frames, groups * q')`` integer, ``1 <= q' <= num_quantizers``, values in ``[0, codebook_size)``."""
    shape = tuple(np.shape(codes))
    if len(shape) != 3:
        raise ValueError(f"{name} must have shape (batch, frames, levels), got shape {shape}")
    if not np.issubdtype(_dtype(codes), np.integer):
        raise ValueError(f"{name} must be integer code ids, got dtype {_dtype(codes)}")
    b, n, c = shape
    if b == 0 or n == 0 or c == 0:
        raise ValueError(f"{name} must have at least one example, frame and level, got shape {shape}")
    if c % groups:
        raise ValueError(f"{name} has {c} columns in its last axis, expected a multiple of groups={groups} "
                         f"(layout group-major, groups * levels)")
    if c // groups > num_quantizers:
        raise ValueError(f"{name} has too many levels: {c} columns = {c // groups} levels x {groups} groups, "
                         f"the codec has at most {num_quantizers} levels ({num_quantizers * groups} columns)")
    if _is_concrete(codes):
        values = np.asarray(codes)
        bad = (values < 0) | (values >= codebook_size)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name} must lie in [0, {codebook_size}); found {int(values[where])} "
                             f"at (batch, frame, level) {where}")


def check_length(length, max_length: int, name: str = "length") -> None:
    """Trim length: a positive int not above the decoded length."""
    if length is None:
        return
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
        raise ValueError(f"{name} must be a Python int (samples to keep), got {type(length).__name__}")
    if not 0 < length <= max_length:
        raise ValueError(f"{name} must be in [1, {max_length}] (frames * hop_length), got {length}")
