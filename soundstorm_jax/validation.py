"""Host-side checks of user inputs, run before anything is traced or compiled.

Shapes and dtypes are checked always (also while tracing, which happens before
compilation); values are checked whenever the array is concrete, i.e. on every
eager call and on every batch a trainer validates before its jitted step.
Every error names the argument and what was expected.
"""
from __future__ import annotations

import jax
import numpy as np


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def is_floating(x) -> bool:
    return np.issubdtype(_dtype(x), np.floating)


def _dtype(x) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def check_codes(codes, *, codebook_size: int, num_columns: int, mask=None, allow_mask_id: bool = False,
                name: str = "codes") -> None:
    """codes ``(b, n, c)`` integer, ``c == num_columns``, values in ``[0, codebook_size)`` on valid frames.

    ``allow_mask_id`` admits ``codebook_size`` ([MASK]) as a value.
    """
    shape = tuple(np.shape(codes))
    if len(shape) != 3:
        raise ValueError(f"{name} must have shape (batch, frames, levels), got shape {shape}")
    if not np.issubdtype(_dtype(codes), np.integer):
        raise ValueError(f"{name} must be integer code ids, got dtype {_dtype(codes)}")
    b, n, c = shape
    if c != num_columns:
        raise ValueError(f"{name} has {c} levels in its last axis, expected {num_columns} "
                         f"(num_quantizers * grouped_quantizers)")
    if b == 0 or n == 0:
        raise ValueError(f"{name} must have at least one example and one frame, got shape {shape}")
    if mask is not None:
        check_mask(mask, (b, n))
    if is_concrete(codes) and (mask is None or is_concrete(mask)):
        values = np.asarray(codes)
        valid = np.ones((b, n), bool) if mask is None else np.asarray(mask)
        upper = codebook_size + 1 if allow_mask_id else codebook_size
        bad = valid[:, :, None] & ((values < 0) | (values >= upper))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name} must lie in [0, {upper}) on valid frames; found {int(values[where])} "
                             f"at (batch, frame, level) {where}")


def check_mask(mask, expected_shape: tuple[int, int], name: str = "mask") -> None:
    """mask ``(b, n)`` boolean, True = valid frame, at least one valid frame per example."""
    shape = tuple(np.shape(mask))
    if shape != tuple(expected_shape):
        raise ValueError(f"{name} must have shape (batch, frames) = {tuple(expected_shape)}, got {shape}")
    if _dtype(mask) != np.bool_:
        raise ValueError(f"{name} must be boolean (True = valid frame), got dtype {_dtype(mask)}")
    if is_concrete(mask):
        empty = np.flatnonzero(~np.asarray(mask).any(axis=-1))
        if empty.size:
            raise ValueError(f"{name} marks every frame of example(s) {empty.tolist()} as padding; "
                             f"each example needs at least one valid frame")


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
