"""Token-level sampling: filtering, Gumbel-max sampling, confidence ranking.

All functions work on logits ``(..., K)`` in fp32 and are pure; noise comes
from explicit keys, one per example, so a batch decodes exactly as its
examples would one by one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30  # finite, so that (logits + noise) arithmetic never makes NaNs


def top_k_filter(logits: jax.Array, k: int | None) -> jax.Array:
    """Keep exactly the ``k`` largest logits of the last axis, set the rest to -inf-like.

    Ties at the k-th largest value are broken towards the lower token id (the
    tokens ``lax.top_k`` returns), so exactly ``k`` tokens survive.
    """
    if k is None or k >= logits.shape[-1]:
        return logits
    _, kept_ids = jax.lax.top_k(logits, k)
    keep = jnp.put_along_axis(jnp.zeros(logits.shape, bool), kept_ids, True, axis=-1, inplace=False)
    return jnp.where(keep, logits, NEG_INF)


def top_p_filter(logits: jax.Array, p) -> jax.Array:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches ``p``.

    The most likely token is always kept, so ``p`` only needs to lie in (0, 1];
    ``p >= 1`` keeps every token (the fp32 cumulative mass can reach 1 before
    the tail does). Tokens tied with the least likely kept one are kept too.
    """
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # The smallest kept logit: the last one whose preceding mass is still below p.
    keep = (mass_before < p) | (p >= 1.0)
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, NEG_INF)


def per_example_gumbel(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Gumbel noise ``(b, *shape)`` with example ``i`` drawn from ``keys[i]`` only."""
    return jax.vmap(lambda key: jax.random.gumbel(key, shape))(keys)


def sample_tokens(keys: jax.Array, logits: jax.Array, temperature) -> tuple[jax.Array, jax.Array]:
    """Gumbel-max sampling at ``temperature`` (0 = argmax) from logits ``(b, ..., K)``.

    Returns the sampled ids and their log-probabilities under the (filtered)
    distribution at temperature 1, the MaskGIT confidence. At temperature 0
    no noise is drawn at all (a greedy pass skips the RNG, the costliest part
    of sampling on CPU).
    """
    def noisy(logits):
        # argmax(l / T + g) == argmax(l + T g) for T > 0.
        return jnp.argmax(logits + temperature * per_example_gumbel(keys, logits.shape[1:]), axis=-1)

    sampled = jax.lax.cond(temperature > 0, noisy, lambda l: jnp.argmax(l, axis=-1), logits)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return sampled.astype(jnp.int32), jnp.take_along_axis(log_probs, sampled[..., None], axis=-1)[..., 0]


def lowest_confidence(confidence: jax.Array, candidates: jax.Array, count: jax.Array) -> jax.Array:
    """The ``count[b]`` least confident candidates of each example.

    confidence, candidates: ``(b, t)``; count: ``(b,)``, at most the number of
    candidates. Returns a bool ``(b, t)`` with exactly ``count[b]`` True, all
    among the candidates.
    """
    scores = jnp.where(candidates, confidence, jnp.inf)
    rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    return (rank < count[:, None]) & candidates
