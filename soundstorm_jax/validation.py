"""Host-side checks of user inputs, run before anything is traced or compiled.

One module for every entry point: the SoundStorm objective and sampler (codes,
masks, conditioning) and the codecs (audio, sample rate, codes, trim length).
Shapes and dtypes are checked always (also while tracing, which happens before
compilation); values are checked whenever the array is concrete, i.e. on every
eager call, every call through a host-side codec (``SoundStreamCodec``,
``EnCodecCodec``) and every batch a trainer validates before its jitted step.
Every error names the argument and what was expected.
"""
from __future__ import annotations

import jax
import numpy as np


def is_concrete(x) -> bool:
    """True unless ``x`` is a tracer (inside ``jit``/``grad``), i.e. when its values can be read."""
    return not isinstance(x, jax.core.Tracer)


def is_floating(x) -> bool:
    return np.issubdtype(_dtype(x), np.floating)


def _dtype(x) -> np.dtype:
    dtype = getattr(x, "dtype", None)
    return np.dtype(dtype if dtype is not None else np.asarray(x).dtype)


def check_audio(audio, name: str = "audio") -> None:
    """audio ``(b, samples)`` floating point, at least one example and one sample, finite."""
    shape = tuple(np.shape(audio))
    if len(shape) != 2:
        hint = "; for a single clip pass audio[None]" if len(shape) == 1 else ""
        raise ValueError(f"{name} must have shape (batch, samples), got shape {shape}{hint}")
    if not is_floating(audio):
        raise ValueError(f"{name} must be floating point in [-1, 1], got dtype {_dtype(audio)}; "
                         f"convert integer PCM first, e.g. pcm.astype(np.float32) / 32768")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} must have at least one example and one sample, got shape {shape}")
    if is_concrete(audio):
        values = np.asarray(audio)
        bad = ~np.isfinite(values)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name} must be finite; found {values[where]} at (batch, sample) {where}")


def check_sample_rate(sample_rate, expected: int, name: str = "sample_rate") -> None:
    """A given sample rate (None: not given) must equal the codec's ``expected`` one."""
    if sample_rate is not None and int(sample_rate) != int(expected):
        raise ValueError(f"{name}={sample_rate} Hz differs from the codec's sample rate, {expected} Hz; "
                         f"resample the audio to {expected} Hz first (e.g. with soundfile + scipy.signal."
                         f"resample_poly(audio, {expected}, {sample_rate}, axis=-1))")


def check_num_levels(num_levels, max_levels: int, name: str = "num_levels") -> None:
    """Levels per group to encode (None: the codec's default): an int in ``[1, max_levels]``."""
    if num_levels is None:
        return
    if isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)) or not (
            1 <= num_levels <= max_levels):
        raise ValueError(f"{name} must be in [1, {max_levels}], got {num_levels!r}")


def check_length(length, max_length: int, name: str = "length") -> None:
    """Trim length (None: keep all): a positive int not above the decoded length ``max_length``."""
    if length is None:
        return
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
        raise ValueError(f"{name} must be a Python int (samples to keep), got {type(length).__name__}")
    if not 0 < length <= max_length:
        raise ValueError(f"{name} must be in [1, {max_length}] (frames * hop_length), got {length}")


def check_codes(codes, *, codebook_size: int, num_quantizers: int, grouped_quantizers: int = 1,
                fewer_levels: bool = False, mask=None, allow_mask_id: bool = False, name: str = "codes") -> None:
    """codes ``(b, n, G * q)`` integer, group-major (column ``g * q + level``), values in ``[0, codebook_size)``.

    ``q == num_quantizers`` (the columns a network reads), or with ``fewer_levels``
    ``1 <= q <= num_quantizers`` (a codec decodes the first levels of each group).
    ``mask`` ``(b, n)`` bool: values are checked on valid frames only (padding may
    hold anything). ``allow_mask_id`` admits ``codebook_size`` ([MASK]) as a value.
    """
    shape = tuple(np.shape(codes))
    if len(shape) != 3:
        raise ValueError(f"{name} must have shape (batch, frames, levels), got shape {shape}")
    if not np.issubdtype(_dtype(codes), np.integer):
        raise ValueError(f"{name} must be integer code ids, got dtype {_dtype(codes)}")
    b, n, c = shape
    if b == 0 or n == 0 or c == 0:
        raise ValueError(f"{name} must have at least one example, frame and level, got shape {shape}")
    groups, columns = grouped_quantizers, num_quantizers * grouped_quantizers
    if not fewer_levels and c != columns:
        raise ValueError(f"{name} has {c} levels in its last axis, expected {columns} "
                         f"(num_quantizers={num_quantizers} x grouped_quantizers={groups})")
    if c % groups:
        raise ValueError(f"{name} has {c} columns in its last axis, expected a multiple of groups={groups} "
                         f"(layout group-major, groups * levels)")
    if c // groups > num_quantizers:
        raise ValueError(f"{name} has too many levels: {c} columns = {c // groups} levels x {groups} groups, "
                         f"expected at most {num_quantizers} levels ({columns} columns)")
    if mask is not None:
        check_mask(mask, (b, n))
    if is_concrete(codes) and (mask is None or is_concrete(mask)):
        values = np.asarray(codes)
        valid = np.ones((b, n), bool) if mask is None else np.asarray(mask)
        upper = codebook_size + 1 if allow_mask_id else codebook_size
        bad = valid[:, :, None] & ((values < 0) | (values >= upper))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            on_valid = "" if mask is None else " on valid frames"
            raise ValueError(f"{name} must lie in [0, {upper}){on_valid}; found {int(values[where])} "
                             f"at (batch, frame, level) {where}")


def check_mask(mask, expected_shape: tuple[int, int], name: str = "mask") -> None:
    """mask ``(b, n)`` boolean, True = valid frame: each example's valid frames come first (right padding only)
    and there is at least one.

    The prompt boundary (training and generation) and the cuDNN attention path
    count valid frames from frame 0, so left padding or holes are refused.
    """
    shape = tuple(np.shape(mask))
    if shape != tuple(expected_shape):
        raise ValueError(f"{name} must have shape (batch, frames) = {tuple(expected_shape)}, got {shape}")
    if _dtype(mask) != np.bool_:
        raise ValueError(f"{name} must be boolean (True = valid frame), got dtype {_dtype(mask)}")
    if is_concrete(mask):
        values = np.asarray(mask)
        empty = np.flatnonzero(~values.any(axis=-1))
        if empty.size:
            raise ValueError(f"{name} marks every frame of example(s) {empty.tolist()} as padding; "
                             f"each example needs at least one valid frame")
        prefix = np.arange(values.shape[-1]) < values.sum(axis=-1, keepdims=True)
        holes = np.flatnonzero((values != prefix).any(axis=-1))
        if holes.size:
            raise ValueError(f"{name} must mark a prefix of valid frames (padding on the right only), but "
                             f"example(s) {holes.tolist()} have padding before a valid frame (left padding or a "
                             f"hole)")


def check_semantic_ids(semantic_ids, *, batch: int, num_semantic_token_ids: int | None, pad_id: int,
                       name: str = "semantic_ids") -> None:
    """semantic ids ``(b, m)`` integer in ``[0, num_semantic_token_ids)`` or ``pad_id``."""
    if num_semantic_token_ids is None:
        raise ValueError(f"{name} were given but the network has no semantic conditioning; "
                         f"set ConformerWrapper(num_semantic_token_ids=...)")
    shape = tuple(np.shape(semantic_ids))
    if len(shape) != 2 or shape[0] != batch:
        raise ValueError(f"{name} must have shape (batch={batch}, tokens), got {shape}")
    if not np.issubdtype(_dtype(semantic_ids), np.integer):
        raise ValueError(f"{name} must be integer ids, got dtype {_dtype(semantic_ids)}")
    if shape[1] == 0:
        raise ValueError(f"{name} must hold at least one token, got shape {shape}")
    if is_concrete(semantic_ids):
        ids = np.asarray(semantic_ids)
        bad = (ids != pad_id) & ((ids < 0) | (ids >= num_semantic_token_ids))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name} must lie in [0, {num_semantic_token_ids}) or equal the pad id {pad_id}; "
                             f"found {int(ids[where])} at (batch, token) {where}")


def check_cond(cond, *, batch: int, frames: int, dim: int, name: str = "cond") -> None:
    """Precomputed conditioning ``(b, n, d)`` or ``(b, d)``, finite."""
    shape = tuple(np.shape(cond))
    if shape not in ((batch, frames, dim), (batch, dim)):
        raise ValueError(f"{name} must have shape (batch, frames, dim) = {(batch, frames, dim)} "
                         f"or (batch, dim) = {(batch, dim)}, got {shape}")
    if is_concrete(cond) and not np.all(np.isfinite(np.asarray(cond))):
        raise ValueError(f"{name} contains NaN or Inf")
