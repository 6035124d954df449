"""The SoundStorm training mask, drawn independently for every example.

Following the paper (Borsos et al. 2023, section 3.2), per example:

1. a prompt boundary ``t`` uniform over the valid frames (frames ``< t`` are
   the prompt: fully visible, never in the loss);
2. a level ``q`` uniform over the ``Q`` residual levels;
3. a ratio ``p = schedule(u)``, ``u ~ U(0, 1)``; exactly
   ``max(1, floor(p * N))`` of the ``N`` level-``q`` tokens after the prompt
   are chosen as targets (``N = frames after the prompt * groups``);
4. levels above ``q`` are [MASK] after the prompt, levels below are visible.

Padded frames (``mask == False``) are never chosen. Unlike soundstorm-pytorch,
which draws the prompt and level once per batch, every example gets its own.
Valid frames must come first (``mask`` a prefix per example: right padding
only), which ``validation.check_mask`` enforces at every entry point.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from soundstorm_jax.maskgit.schedules import ScheduleFn


@flax.struct.dataclass
class TrainingMask:
    """One batch's draw. Shapes: ``b`` batch, ``n`` frames, ``g`` groups."""

    prompt_end: jax.Array   # (b,) int32: frames < prompt_end are the prompt
    level: jax.Array        # (b,) int32: the residual level q being trained
    ratio: jax.Array        # (b,) float32: schedule(u), the target mask ratio
    num_targets: jax.Array  # (b,) int32: max(1, floor(ratio * eligible tokens))
    targets: jax.Array      # (b, n, g) bool: level-q tokens that are predicted


def draw_training_mask(key: jax.Array, mask: jax.Array, num_levels: int, groups: int,
                       schedule_fn: ScheduleFn) -> TrainingMask:
    """Draw prompt boundaries, levels, ratios and target tokens for ``mask (b, n)``."""
    b, n = mask.shape
    k_prompt, k_level, k_time, k_order = jax.random.split(key, 4)
    num_valid = jnp.sum(mask, axis=-1, dtype=jnp.int32)
    prompt_end = jax.random.randint(k_prompt, (b,), 0, jnp.maximum(num_valid, 1))
    level = jax.random.randint(k_level, (b,), 0, num_levels)
    ratio = jnp.clip(schedule_fn(jax.random.uniform(k_time, (b,))), 0.0, 1.0)

    after_prompt = mask & (jnp.arange(n)[None, :] >= prompt_end[:, None])           # (b, n)
    eligible = jnp.repeat(after_prompt[:, :, None], groups, axis=2).reshape(b, n * groups)
    num_eligible = jnp.sum(eligible, axis=-1, dtype=jnp.int32)
    # At least one eligible token always exists: prompt_end < number of valid frames.
    num_targets = jnp.maximum(jnp.floor(ratio * num_eligible).astype(jnp.int32), 1)

    # A uniformly random subset of exactly num_targets eligible tokens: rank
    # random scores, with ineligible tokens pushed behind every eligible one.
    scores = jnp.where(eligible, jax.random.uniform(k_order, (b, n * groups)), 2.0)
    rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    targets = (rank < num_targets[:, None]) & eligible
    return TrainingMask(prompt_end=prompt_end, level=level, ratio=ratio, num_targets=num_targets,
                        targets=targets.reshape(b, n, groups))


def column_levels(num_levels: int, groups: int) -> jax.Array:
    """Residual level of every code column ``(groups * num_levels,)``; columns are group-major."""
    return jnp.tile(jnp.arange(num_levels), groups)


def masked_inputs(codes: jax.Array, mask: jax.Array, draw: TrainingMask, target_values: jax.Array,
                  mask_id: int, num_levels: int, groups: int) -> jax.Array:
    """The network's input for one draw: ``codes (b, n, c)`` -> ``(b, n, c)``.

    ``target_values (b, n, g)`` are what the level-q targets show (usually
    [MASK], or the BERT-style kept/random tokens). Levels above ``q`` are
    [MASK] after the prompt; padded frames are [MASK].
    """
    b, n, c = codes.shape
    levels = column_levels(num_levels, groups)[None, None, :]                 # (1, 1, c)
    q = draw.level[:, None, None]
    after_prompt = jnp.arange(n)[None, :, None] >= draw.prompt_end[:, None, None]
    # Spread the per-group targets over their columns (group-major layout).
    targets = jnp.repeat(draw.targets, num_levels, axis=2) & (levels == q)
    values = jnp.repeat(target_values, num_levels, axis=2)
    x = jnp.where(targets, values, codes)
    x = jnp.where((levels > q) & after_prompt, mask_id, x)
    return jnp.where(mask[:, :, None], x, mask_id)
