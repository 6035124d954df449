"""The demasking loop: every level and every step as one ``lax.fori_loop``.

Decoding runs over a precomputed pass schedule, one entry per forward pass:
level ``q`` gets ``steps[q]`` passes. At pass ``(q, s)`` of ``S`` on level q:

1. the network sees the current codes (levels above q are still [MASK], as in
   training) and computes logits for level q's columns only;
2. every still-masked level-q token is sampled (temperature annealed linearly
   to 0 at the level's last step, so one-step levels are greedy);
3. exactly ``floor(schedule((s + 1) / S) * N)`` of them stay masked, the least
   confident (log-probability plus annealed Gumbel noise, or the token
   critic's score); the rest are committed and never change again.

``N`` counts the level's tokens an example decodes: valid frames, minus the
acoustic prompt. Prompt tokens and padded frames never take part in the
ranking. State and plan are small dataclasses; ``decode_pass`` is the pure
loop body, ``decode`` the loop.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from soundstorm_jax.maskgit.schedules import get_schedule, masked_count
from soundstorm_jax.sampler.tokens import lowest_confidence, per_example_gumbel, sample_tokens, top_k_filter, \
    top_p_filter


@flax.struct.dataclass
class SamplingOptions:
    """What changes the compiled program (static), apart from the shapes."""

    top_k: int | None = None
    use_top_p: bool = False
    use_guidance: bool = False
    use_critic: bool = False


@flax.struct.dataclass
class DecodePlan:
    """Everything a pass reads and never writes. ``b`` batch, ``n`` frames, ``c`` columns, ``P`` passes."""

    pass_level: jax.Array     # (P,) int32: the level decoded at each pass
    pass_step: jax.Array      # (P,) int32: the step within that level
    pass_total: jax.Array     # (P,) int32: the level's number of steps
    valid: jax.Array          # (b, n) bool: real (unpadded) frames
    fixed: jax.Array          # (b, n, c) bool: prompt tokens, kept as given
    keys: jax.Array           # (b,) per-example PRNG keys
    condition: Any            # (b, n, d) conditioning or None
    temperature: jax.Array    # () sampling temperature at a level's first step
    choice_temperature: jax.Array  # () scale of the Gumbel noise added to confidences
    top_p: jax.Array          # () nucleus mass (used when options.use_top_p)
    guidance_scale: jax.Array  # () classifier-free guidance scale (used when options.use_guidance)


@flax.struct.dataclass
class DecodeState:
    codes: jax.Array          # (b, n, c) int32, [MASK] where not decoded yet
    self_cond_source: Any     # (b or 2b, n, d) previous pass's head-output sum, or None
    has_source: jax.Array     # () bool: False until the first pass has run


def pass_schedule(level_steps: tuple[int, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(pass_level, pass_step, pass_total)`` arrays for per-level step counts."""
    level = [q for q, steps in enumerate(level_steps) for _ in range(steps)]
    step = [s for steps in level_steps for s in range(steps)]
    total = [steps for steps in level_steps for _ in range(steps)]
    return tuple(jnp.asarray(x, jnp.int32) for x in (level, step, total))


def level_candidates(plan: DecodePlan, state: DecodeState, columns: jax.Array, mask_id: int):
    """For the level at ``columns (g,)``: tokens an example decodes and those still masked, ``(b, n, g)``."""
    decodable = plan.valid[:, :, None] & ~jnp.take(plan.fixed, columns, axis=2)
    still_masked = decodable & (jnp.take(state.codes, columns, axis=2) == mask_id)
    return decodable, still_masked


def decode_pass(model, variables, plan: DecodePlan, options: SamplingOptions, state: DecodeState,
                i: jax.Array) -> DecodeState:
    """One forward pass of the sampler: the loop body. ``model`` is a ``SoundStorm``."""
    net = model.net
    b, n, _ = state.codes.shape
    q, s, total = plan.pass_level[i], plan.pass_step[i], plan.pass_total[i]
    columns = q + jnp.arange(net.grouped_quantizers) * net.num_quantizers         # (g,)
    decodable, still_masked = level_candidates(plan, state, columns, net.mask_id)

    logits, source = _logits(model, variables, plan, options, state, columns)        # (b, n, g, K)
    logits = top_k_filter(logits, options.top_k)
    if options.use_top_p:
        logits = top_p_filter(logits, plan.top_p)

    keys = jax.vmap(lambda key: jax.random.fold_in(key, i))(plan.keys)
    sample_keys, choice_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    anneal = 1.0 - (s + 1).astype(jnp.float32) / total       # 0 at a level's last step
    sampled, confidence = sample_tokens(sample_keys, logits, plan.temperature * anneal)
    current = jnp.take(state.codes, columns, axis=2)
    proposal = jnp.where(still_masked, sampled, current)

    if options.use_critic:
        critic_codes = state.codes.at[:, :, columns].set(proposal)
        # The critic scores how likely a token is wrong: confident = low score.
        confidence = -model.apply(variables, critic_codes, plan.valid, columns, plan.condition,
                                  method=type(model).critic_logits)
    confidence = confidence + plan.choice_temperature * anneal * per_example_gumbel(choice_keys, confidence.shape[1:])

    num_decodable = jnp.sum(decodable, axis=(1, 2), dtype=jnp.int32)
    num_masked = jnp.sum(still_masked, axis=(1, 2), dtype=jnp.int32)
    schedule_fn = get_schedule(model.schedule)
    # min() only matters for a schedule that is not monotone: committed tokens stay committed.
    remain = jnp.minimum(masked_count(schedule_fn, (s + 1).astype(jnp.float32) / total, num_decodable), num_masked)
    keep_masked = lowest_confidence(confidence.reshape(b, -1), still_masked.reshape(b, -1), remain)
    keep_masked = keep_masked.reshape(still_masked.shape)

    new_level = jnp.where(still_masked & ~keep_masked, sampled, current)
    codes = state.codes.at[:, :, columns].set(new_level)
    return DecodeState(codes=codes, self_cond_source=source, has_source=jnp.ones((), bool))


def _logits(model, variables, plan, options, state, columns):
    """Level logits for the current codes, with classifier-free guidance when asked."""
    def run(codes, valid, condition, drop):
        return model.apply(variables, codes, valid, columns, condition, drop, state.self_cond_source,
                           state.has_source, method=type(model).decode_logits)

    if not options.use_guidance:
        return run(state.codes, plan.valid, plan.condition, None)
    # Conditional and unconditional halves in one batch; self-conditioning keeps both histories.
    b = state.codes.shape[0]
    twice = lambda x: None if x is None else jnp.concatenate([x, x])
    drop = jnp.concatenate([jnp.zeros((b,), bool), jnp.ones((b,), bool)])
    logits, source = run(twice(state.codes), twice(plan.valid), twice(plan.condition), drop)
    conditional, unconditional = logits[:b], logits[b:]
    return unconditional + plan.guidance_scale * (conditional - unconditional), source


def decode(model, variables, plan: DecodePlan, options: SamplingOptions, state: DecodeState) -> DecodeState:
    """All passes as one ``lax.fori_loop``."""
    body = lambda i, st: decode_pass(model, variables, plan, options, st, i)
    return jax.lax.fori_loop(0, plan.pass_level.shape[0], body, state)
