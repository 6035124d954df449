"""Local (sliding-window) self-attention transformer for the codec bottleneck.

Frame ``i`` attends to frames ``j`` with ``|i - j| < window`` (non-causal) or
``0 <= i - j < window`` (causal). Computed blockwise: frames are cut into blocks
of ``window``; each block attends to itself and its neighbour blocks, and the
exact band is then masked in. Memory is ``O(n * window)`` rather than ``O(n^2)``.
Rotary position embeddings make the scores depend on ``i - j`` only.
"""
from __future__ import annotations

from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def rotary(x: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
    """Rotate-half rotary embedding. x ``(b n h d)``, positions ``(n,)`` -> ``(b n h d)``."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # (n, d/2)
    angles = jnp.concatenate([angles, angles], axis=-1)[None, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def local_attention(q: jax.Array, k: jax.Array, v: jax.Array, window: int, causal: bool) -> jax.Array:
    """Banded attention. q, k, v ``(b n h d)`` -> ``(b n h d)``."""
    b, n, h, d = q.shape
    nb = -(-n // window)
    pad = nb * window - n

    def blocks(x):
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
        return einops.rearrange(x, 'b (nb w) h d -> b nb w h d', w=window)

    qb, kb, vb = blocks(q), blocks(k), blocks(v)

    def with_neighbours(x):
        # Previous (and, unless causal, next) block beside each block: (b nb c*w h d).
        zero = jnp.zeros_like(x[:, :1])
        parts = [jnp.concatenate([zero, x[:, :-1]], axis=1), x]
        if not causal:
            parts.append(jnp.concatenate([x[:, 1:], zero], axis=1))
        return jnp.concatenate(parts, axis=2)

    kc, vc = with_neighbours(kb), with_neighbours(vb)
    block_start = jnp.arange(nb) * window
    q_pos = block_start[:, None] + jnp.arange(window)[None, :]  # (nb, w)
    k_pos = block_start[:, None] - window + jnp.arange(kc.shape[2])[None, :]  # (nb, c*w)
    offset = q_pos[:, :, None] - k_pos[:, None, :]  # (nb, w, c*w)
    allowed = (k_pos[:, None, :] >= 0) & (k_pos[:, None, :] < n)
    allowed &= (offset >= 0) & (offset < window) if causal else (jnp.abs(offset) < window)

    scores = jnp.einsum('bkihd,bkjhd->bkhij', qb, kc).astype(jnp.float32) / jnp.sqrt(d).astype(jnp.float32)
    # A large finite value, not -inf: rows of padded queries may have no allowed key.
    scores = jnp.where(allowed[None, :, None], scores, -1e30)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum('bkhij,bkjhd->bkihd', weights, vc)
    return einops.rearrange(out, 'b nb w h d -> b (nb w) h d')[:, :n]


class LocalAttentionBlock(nn.Module):
    """Pre-norm local self-attention + pre-norm GELU feed-forward. ``(b n d) -> (b n d)``."""
    window: int
    heads: int = 8
    causal: bool = False
    ff_mult: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        if dim % self.heads:
            raise ValueError(f"attention dim {dim} must be divisible by heads={self.heads}")
        dense = lambda f, name, bias=True: nn.Dense(f, use_bias=bias, dtype=self.dtype, param_dtype=jnp.float32,
                                                     name=name)
        h = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32)(x)
        qkv = dense(3 * dim, 'qkv', bias=False)(h)
        q, k, v = (einops.rearrange(t, 'b n (h d) -> b n h d', h=self.heads) for t in jnp.split(qkv, 3, axis=-1))
        positions = jnp.arange(x.shape[1])
        q, k = rotary(q, positions), rotary(k, positions)
        attn = local_attention(q, k, v, self.window, self.causal)
        x = x + dense(dim, 'out')(einops.rearrange(attn, 'b n h d -> b n (h d)'))
        h = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32)(x)
        h = dense(dim, 'ff_out')(nn.gelu(dense(dim * self.ff_mult, 'ff_in')(h)))
        return x + h


class LocalTransformer(nn.Module):
    """``depth`` local attention blocks. ``(b n d) -> (b n d)``."""
    depth: int
    window: int
    heads: int = 8
    causal: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.depth):
            x = LocalAttentionBlock(self.window, heads=self.heads, causal=self.causal, dtype=self.dtype)(x)
        return x
