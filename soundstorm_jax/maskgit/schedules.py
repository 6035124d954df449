"""Mask-ratio schedules: ``t in [0, 1] -> fraction of tokens masked``.

``t = 0`` is the start of decoding (everything masked, ratio 1) and ``t = 1``
the end (ratio 0). Training draws ``t ~ U(0, 1)`` per example; decoding with
``S`` steps leaves ``floor(schedule((s + 1) / S) * N)`` tokens masked after
step ``s``, which reaches 0 at the last step for every schedule here.
"""
from __future__ import annotations

import math
from typing import Callable, Union

import jax
import jax.numpy as jnp

ScheduleFn = Callable[[jax.Array], jax.Array]
Schedule = Union[str, ScheduleFn]


def cosine_schedule(t: jax.Array) -> jax.Array:
    """MaskGIT's cosine schedule, ``cos(pi t / 2)`` (the paper's and our default)."""
    return jnp.cos(t * (math.pi / 2))


def linear_schedule(t: jax.Array) -> jax.Array:
    """``1 - t`` (soundstorm-pytorch's default)."""
    return 1.0 - t


SCHEDULES: dict[str, ScheduleFn] = {"cosine": cosine_schedule, "linear": linear_schedule}


def get_schedule(schedule: Schedule) -> ScheduleFn:
    """Resolve a schedule name or callable; unknown names raise ``ValueError``."""
    if callable(schedule):
        return schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)} or a callable t -> ratio, got {schedule!r}")
    return SCHEDULES[schedule]


def masked_count(schedule_fn: ScheduleFn, t: jax.Array, total: jax.Array) -> jax.Array:
    """``floor(schedule(t) * total)`` as int32, clipped to ``[0, total]``.

    The ratio is clipped to [0, 1] so a user schedule that overshoots can never
    ask for more tokens than exist.
    """
    ratio = jnp.clip(schedule_fn(jnp.asarray(t, jnp.float32)), 0.0, 1.0)
    return jnp.clip(jnp.floor(ratio * total).astype(jnp.int32), 0, total)
