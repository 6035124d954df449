"""Residual VQ, quantizer dropout and grouped residual VQ.

Residual VQ with ``Q`` levels: level 0 quantises the input, level ``q`` quantises
what levels ``< q`` left over; the quantised output is the sum of the levels'
code vectors. Using only the first ``k`` levels gives a coarser, lower-bitrate
reconstruction of the same input.

Grouped residual VQ with ``G`` groups splits the feature axis ``d`` into ``G``
slices of ``d / G``, each with its own ``Q``-level residual VQ.

Code layout (used everywhere in this package and by the SoundStorm wrapper):
``codes`` is ``(b, n, G*Q)`` int32, **group-major**: column ``g * Q + q`` holds
level ``q`` of group ``g``. ``einops.rearrange(codes, 'b n (g q) -> b n g q', g=G)``
separates them. A code of ``-1`` means "level not used" (quantizer dropout) and
decodes to the zero vector.

Quantizer dropout (training only): with probability ``dropout_prob`` an example
(or, with ``dropout_per_example=False``, the whole step) keeps only its first
``k`` levels, ``k`` uniform in ``[dropout_min_levels, Q]``; the rest are
left out of the output and the commitment loss and their codes are ``-1``.
All groups of an example share ``k``. The codebook statistics of a level are
still updated from every example: the residual that a level sees does not
depend on whether later levels are used, so the statistics stay unbiased.
"""
from __future__ import annotations

import einops
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from soundstorm_jax.codec.vector_quantizer import VectorQuantizer


@flax.struct.dataclass
class QuantizerOutput:
    """quantized ``(b n d)`` (straight-through), codes ``(b n (g q))`` int32 (-1 = dropped level),
    commit_loss ``()`` (sum over levels of the masked mean squared commitment error),
    num_levels ``(b,)`` int32 (levels used per example)."""
    quantized: jax.Array
    codes: jax.Array
    commit_loss: jax.Array
    num_levels: jax.Array


def draw_num_levels(key: jax.Array, batch: int, num_quantizers: int, *, prob: float, min_levels: int,
                    per_example: bool) -> jax.Array:
    """Levels to keep per example ``(b,)`` int32 for quantizer dropout."""
    k_drop, k_levels = jax.random.split(key)
    shape = (batch,) if per_example else (1,)
    drop = jax.random.bernoulli(k_drop, prob, shape)
    levels = jax.random.randint(k_levels, shape, min_levels, num_quantizers + 1)
    return jnp.broadcast_to(jnp.where(drop, levels, num_quantizers), (batch,)).astype(jnp.int32)


class ResidualVQ(nn.Module):
    """``num_quantizers`` EMA codebooks applied to successive residuals of x ``(b n d)``.

    ``__call__(x, train, num_levels=None)``: ``num_levels`` ``(b,)`` or int limits
    the levels used (overrides dropout); returns ``QuantizerOutput`` with codes
    ``(b n q)``.
    """
    num_quantizers: int
    codebook_size: int
    dim: int
    decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 10
    threshold_ema_dead_code: float = 2.0
    dropout_prob: float = 0.0
    dropout_min_levels: int = 1
    dropout_per_example: bool = True

    def setup(self):
        self.levels = [VectorQuantizer(self.codebook_size, self.dim, decay=self.decay, kmeans_init=self.kmeans_init,
                                       kmeans_iters=self.kmeans_iters,
                                       threshold_ema_dead_code=self.threshold_ema_dead_code)
                       for _ in range(self.num_quantizers)]

    def __call__(self, x: jax.Array, train: bool = False, num_levels=None) -> QuantizerOutput:
        b = x.shape[0]
        num_levels = self.resolve_num_levels(b, train, num_levels)
        residual = x.astype(jnp.float32)
        quantized_out = jnp.zeros_like(residual)
        codes, commit = [], jnp.zeros((), jnp.float32)
        for q, level in enumerate(self.levels):
            quantized, level_codes, _ = level(residual, train=train)
            used = (q < num_levels)  # (b,)
            quantized_out = quantized_out + jnp.where(used[:, None, None], quantized, 0.0)
            codes.append(jnp.where(used[:, None], level_codes, -1))
            # Per-example commitment error so dropped levels send no gradient to the encoder.
            per_example = jnp.mean((residual - jax.lax.stop_gradient(quantized)) ** 2, axis=(1, 2))
            commit = commit + jnp.sum(per_example * used) / jnp.maximum(jnp.sum(used), 1)
            residual = residual - jax.lax.stop_gradient(quantized)
        return QuantizerOutput(quantized_out.astype(x.dtype), jnp.stack(codes, axis=-1), commit, num_levels)

    def resolve_num_levels(self, batch: int, train: bool, num_levels) -> jax.Array:
        """``(b,)`` int32 levels per example: explicit, drawn by dropout, or all."""
        if num_levels is not None:
            return jnp.broadcast_to(jnp.asarray(num_levels, jnp.int32), (batch,))
        if train and self.dropout_prob > 0 and not self.is_initializing():
            return draw_num_levels(self.make_rng('vq'), batch, self.num_quantizers, prob=self.dropout_prob,
                                   min_levels=self.dropout_min_levels, per_example=self.dropout_per_example)
        return jnp.full((batch,), self.num_quantizers, jnp.int32)

    def codes_to_embeddings(self, codes: jax.Array) -> jax.Array:
        """codes ``(b n q')`` with ``q' <= Q`` (first ``q'`` levels; -1 = unused) -> ``(b n d)``."""
        if codes.shape[-1] > self.num_quantizers:
            raise ValueError(f"codes have {codes.shape[-1]} levels, this quantizer has {self.num_quantizers}")
        return sum(self.levels[q].lookup(codes[..., q]) for q in range(codes.shape[-1]))


class GroupedResidualVQ(nn.Module):
    """``groups`` independent residual VQs over slices of the feature axis.

    x ``(b n d)`` with ``d % groups == 0`` -> ``QuantizerOutput`` with codes
    ``(b n (g q))`` group-major. ``groups=1`` is a plain residual VQ.
    """
    num_quantizers: int
    codebook_size: int
    dim: int
    groups: int = 1
    decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 10
    threshold_ema_dead_code: float = 2.0
    dropout_prob: float = 0.0
    dropout_min_levels: int = 1
    dropout_per_example: bool = True

    def setup(self):
        if self.dim % self.groups:
            raise ValueError(f"dim={self.dim} must be divisible by groups={self.groups}")
        if not 1 <= self.dropout_min_levels <= self.num_quantizers:
            raise ValueError(f"dropout_min_levels must be in [1, {self.num_quantizers}], "
                             f"got {self.dropout_min_levels}")
        self.rvqs = [ResidualVQ(self.num_quantizers, self.codebook_size, self.dim // self.groups, decay=self.decay,
                                kmeans_init=self.kmeans_init, kmeans_iters=self.kmeans_iters,
                                threshold_ema_dead_code=self.threshold_ema_dead_code,
                                dropout_prob=self.dropout_prob, dropout_min_levels=self.dropout_min_levels,
                                dropout_per_example=self.dropout_per_example)
                     for _ in range(self.groups)]

    def __call__(self, x: jax.Array, train: bool = False, num_levels=None) -> QuantizerOutput:
        # One draw shared by all groups, so an example keeps the same levels everywhere.
        num_levels = self.rvqs[0].resolve_num_levels(x.shape[0], train, num_levels)
        slices = jnp.split(x, self.groups, axis=-1)
        outs = [rvq(s, train=train, num_levels=num_levels) for rvq, s in zip(self.rvqs, slices)]
        return QuantizerOutput(
            quantized=jnp.concatenate([o.quantized for o in outs], axis=-1),
            codes=jnp.concatenate([o.codes for o in outs], axis=-1),
            commit_loss=sum(o.commit_loss for o in outs),
            num_levels=num_levels,
        )

    def codes_to_embeddings(self, codes: jax.Array) -> jax.Array:
        """codes ``(b n (g q'))`` group-major, ``q' <= Q`` -> quantised embeddings ``(b n d)``."""
        per_group = einops.rearrange(codes, 'b n (g q) -> g b n q', g=self.groups)
        return jnp.concatenate([rvq.codes_to_embeddings(c) for rvq, c in zip(self.rvqs, per_group)], axis=-1)

    def embeddings_to_codes(self, x: jax.Array, num_levels: int | None = None) -> jax.Array:
        """x ``(b n d)`` -> codes ``(b n (g q))`` int32 (read-only, no codebook update).

        ``num_levels`` keeps only the first levels of each group: ``(b n (g num_levels))``.
        """
        codes = self(x, train=False).codes
        if num_levels is None or num_levels == self.num_quantizers:
            return codes
        per_group = einops.rearrange(codes, 'b n (g q) -> b n g q', g=self.groups)[..., :num_levels]
        return einops.rearrange(per_group, 'b n g q -> b n (g q)')
