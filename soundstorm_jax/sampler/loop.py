"""The demasking loop: every level and every step as one ``lax.fori_loop``.

The loop knows nothing of the network. A :class:`Decoder` gives it a logits
function ``logits_fn(codes (b, n, c), columns (g,), carry) -> (logits (b, n, g, K),
carry)``, where ``carry`` is whatever the function threads from one pass to the
next (self-conditioning's previous outputs; None when nothing), and optionally
a critic ``critic_fn(codes (b, n, c), columns (g,)) -> (b, n, g)`` (high = likely
a wrong token). :func:`soundstorm_jax.sampler.generate` builds both from a
``SoundStorm`` and its variables.

Decoding runs over a precomputed pass schedule, one entry per forward pass:
level ``q`` gets ``steps[q]`` passes. At pass ``s`` of ``S`` on level q:

1. the logits function sees the current codes (levels above q are still
   [MASK], as in training) and returns logits for level q's columns only;
2. every still-masked level-q token is sampled at ``temperature * anneal``,
   ``anneal = 1 - s / (S - 1)``: exactly ``temperature`` at a level's first
   pass, falling linearly to 0 (greedy) at its last; a one-pass level is
   greedy (``anneal = 0``);
3. ``floor(schedule((s + 1) / S) * N)`` of them stay masked (none after the
   level's last pass, whatever ``schedule(1)`` is), the least confident:
   log-probability plus ``choice_temperature * anneal`` times Gumbel noise, or
   minus the critic's score; the rest are committed and never change again.

``N`` counts the level's tokens an example decodes: valid frames, minus the
acoustic prompt. Prompt tokens and padded frames never take part in the
ranking. ``decode_pass`` is the pure loop body, ``decode`` the loop.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

from soundstorm_jax.maskgit.schedules import ScheduleFn, masked_count
from soundstorm_jax.sampler.tokens import lowest_confidence, per_example_gumbel, sample_tokens, top_k_filter, \
    top_p_filter

LogitsFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]
CriticFn = Callable[[jax.Array, jax.Array], jax.Array]


@flax.struct.dataclass
class SamplingOptions:
    """Token filtering that changes the compiled program (static)."""

    top_k: int | None = None
    use_top_p: bool = False


@dataclasses.dataclass(frozen=True)
class Decoder:
    """The functions a pass calls and its static settings."""

    logits_fn: LogitsFn
    mask_id: int
    schedule: ScheduleFn
    options: SamplingOptions = SamplingOptions()
    critic_fn: CriticFn | None = None


@flax.struct.dataclass
class DecodePlan:
    """Everything a pass reads and never writes.

    ``b`` batch, ``n`` frames, ``c`` columns, ``g`` groups, ``P`` passes.
    """

    pass_level: jax.Array     # (P,) int32: the level decoded at each pass
    pass_columns: jax.Array   # (P, g) int32: that level's columns
    pass_step: jax.Array      # (P,) int32: the step within that level
    pass_total: jax.Array     # (P,) int32: the level's number of steps
    valid: jax.Array          # (b, n) bool: real (unpadded) frames
    fixed: jax.Array          # (b, n, c) bool: prompt tokens, kept as given
    keys: jax.Array           # (b,) per-example PRNG keys
    temperature: jax.Array    # () sampling temperature at a level's first pass
    choice_temperature: jax.Array  # () scale of the Gumbel noise added to confidences at a level's first pass
    top_p: jax.Array          # () nucleus mass (used when options.use_top_p)


@flax.struct.dataclass
class DecodeState:
    codes: jax.Array          # (b, n, c) int32, [MASK] where not decoded yet
    carry: Any                # what the logits function threads from pass to pass, or None


def pass_schedule(level_steps: tuple[int, ...], groups: int = 1) -> dict[str, jax.Array]:
    """The plan's ``pass_level``, ``pass_columns``, ``pass_step``, ``pass_total`` for per-level step counts.

    Columns are group-major: level ``q`` of group ``j`` is column ``j * Q + q``.
    """
    num_levels = len(level_steps)
    level = [q for q, steps in enumerate(level_steps) for _ in range(steps)]
    columns = [[q + j * num_levels for j in range(groups)] for q in level]
    step = [s for steps in level_steps for s in range(steps)]
    total = [steps for steps in level_steps for _ in range(steps)]
    arrays = dict(pass_level=level, pass_columns=columns, pass_step=step, pass_total=total)
    return {name: jnp.asarray(value, jnp.int32) for name, value in arrays.items()}


def anneal(step: jax.Array, total: jax.Array) -> jax.Array:
    """Temperature factor of pass ``step`` of ``total`` on a level: 1 at the first pass, 0 at the last.

    ``1 - step / (total - 1)``, and 0 for a one-pass level (greedy).
    """
    step, total = jnp.asarray(step, jnp.float32), jnp.asarray(total, jnp.float32)
    return jnp.where(total > 1, 1.0 - step / jnp.maximum(total - 1.0, 1.0), 0.0)


def level_candidates(plan: DecodePlan, state: DecodeState, columns: jax.Array, mask_id: int):
    """For the level at ``columns (g,)``: tokens an example decodes and those still masked, ``(b, n, g)``."""
    decodable = plan.valid[:, :, None] & ~jnp.take(plan.fixed, columns, axis=2)
    still_masked = decodable & (jnp.take(state.codes, columns, axis=2) == mask_id)
    return decodable, still_masked


def decode_pass(decoder: Decoder, plan: DecodePlan, state: DecodeState, i: jax.Array) -> DecodeState:
    """Pass ``i`` of the plan: the loop body."""
    b = state.codes.shape[0]
    s, total, columns = plan.pass_step[i], plan.pass_total[i], plan.pass_columns[i]
    decodable, still_masked = level_candidates(plan, state, columns, decoder.mask_id)

    logits, carry = decoder.logits_fn(state.codes, columns, state.carry)            # (b, n, g, K)
    logits = top_k_filter(logits, decoder.options.top_k)
    if decoder.options.use_top_p:
        logits = top_p_filter(logits, plan.top_p)

    keys = jax.vmap(lambda key: jax.random.fold_in(key, i))(plan.keys)
    sample_keys, choice_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    factor = anneal(s, total)
    sampled, confidence = sample_tokens(sample_keys, logits, plan.temperature * factor)
    current = jnp.take(state.codes, columns, axis=2)

    if decoder.critic_fn is not None:
        proposal = jnp.where(still_masked, sampled, current)
        # The critic scores how likely a token is wrong: confident = low score.
        confidence = -decoder.critic_fn(state.codes.at[:, :, columns].set(proposal), columns)
    confidence = confidence + plan.choice_temperature * factor * per_example_gumbel(choice_keys,
                                                                                    confidence.shape[1:])

    num_decodable = jnp.sum(decodable, axis=(1, 2), dtype=jnp.int32)
    num_masked = jnp.sum(still_masked, axis=(1, 2), dtype=jnp.int32)
    # min() only matters for a schedule that is not monotone: committed tokens stay committed.
    remain = jnp.minimum(masked_count(decoder.schedule, (s + 1).astype(jnp.float32) / total, num_decodable),
                         num_masked)
    # A level ends fully decoded even when the schedule does not reach 0 at t = 1.
    remain = jnp.where(s + 1 == total, 0, remain)
    keep_masked = lowest_confidence(confidence.reshape(b, -1), still_masked.reshape(b, -1), remain)
    keep_masked = keep_masked.reshape(still_masked.shape)

    new_level = jnp.where(still_masked & ~keep_masked, sampled, current)
    return DecodeState(codes=state.codes.at[:, :, columns].set(new_level), carry=carry)


def decode(decoder: Decoder, plan: DecodePlan, state: DecodeState) -> DecodeState:
    """All passes of the plan as one ``lax.fori_loop``."""
    body = lambda i, st: decode_pass(decoder, plan, st, i)
    return jax.lax.fori_loop(0, plan.pass_level.shape[0], body, state)
