"""Mask-ratio schedules: ``t in [0, 1] -> fraction of tokens masked``.

``t = 0`` is the start of decoding (everything masked, ratio 1) and ``t = 1``
the end (ratio 0). Training draws ``t ~ U(0, 1)`` per example; decoding with
``S`` steps leaves ``floor(schedule((s + 1) / S) * N)`` tokens masked after
step ``s`` and none after the last step, whatever ``schedule(1)`` is.

Also here, because the model and the sampler both read it: ``resolve_steps``,
the per-level step counts of a ``steps`` setting.
"""
from __future__ import annotations

import math
from typing import Callable, Union

import jax
import jax.numpy as jnp
import numpy as np

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


def resolve_steps(steps, num_levels: int) -> tuple[int, ...]:
    """Decoding steps per level ``(num_levels,)``: an int is that many on the first level and one pass on
    every later level; a tuple or list gives one count per level. Anything else is a ``ValueError``."""
    if isinstance(steps, (tuple, list)):
        if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in steps):
            raise ValueError(f"steps must be ints, got {steps!r}")
        steps = tuple(int(s) for s in steps)
        if len(steps) != num_levels:
            raise ValueError(f"steps has {len(steps)} entries, expected one per level (num_quantizers={num_levels})")
        if min(steps) < 1:
            raise ValueError(f"steps must all be positive, got {steps}")
        return steps
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int or a tuple of per-level ints, got {steps!r}")
    return (int(steps),) + (1,) * (num_levels - 1)
