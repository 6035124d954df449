"""Small building blocks shared by the Conformer and its wrapper.

Every parameter carries logical axis names (``nn.with_logical_partitioning``)
so the trainer can shard by rules: ``batch, length, embed, heads, kv, mlp,
vocab, levels, layers``. Norms follow PyTorch's numerics (eps 1e-5, two-pass
variance) so imported checkpoints reproduce the reference's outputs.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# PyTorch nn.Linear / nn.Embedding inits are close to these; exact init does not
# matter for parity (weights are imported), only for training from scratch.
default_kernel_init = nn.initializers.lecun_normal()
default_embed_init = nn.initializers.normal(stddev=1.0)


def partitioned(init_fn, names: Sequence[str | None]):
    """An initializer whose parameter is annotated with logical axis names."""
    return nn.with_logical_partitioning(init_fn, tuple(names))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Logical sharding constraint on an activation (no-op without rules)."""
    return nn.with_logical_constraint(x, tuple(names))


def swish(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(x)


def dense(features: int, names: tuple[str | None, str | None], *, use_bias: bool = True,
          dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Dense:
    """``nn.Dense`` with logically partitioned kernel ``(in, out)`` and bias ``(out,)``."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=partitioned(default_kernel_init, names),
        bias_init=partitioned(nn.initializers.zeros_init(), names[-1:]),
        name=name,
    )


def layer_norm(*, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, use_bias: bool = True,
               axis_name: str = "embed", name: str | None = None) -> nn.LayerNorm:
    """LayerNorm with PyTorch's epsilon and exact two-pass variance."""
    return nn.LayerNorm(
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=param_dtype,
        use_bias=use_bias,
        use_fast_variance=False,
        scale_init=partitioned(nn.initializers.ones_init(), (axis_name,)),
        bias_init=partitioned(nn.initializers.zeros_init(), (axis_name,)),
        name=name,
    )


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels with a gain and no bias (the Conformer conv module's).

    Variance is clamped below rather than offset by eps, matching the reference:
    ``(x - mean) * rsqrt(max(var, eps)) * gamma`` with eps 1e-6 in fp32 and 1e-4
    in lower precision.
    """

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param("scale", partitioned(nn.initializers.ones_init(), ("mlp",)), (x.shape[-1],),
                           self.param_dtype)
        eps = 1e-6 if jnp.dtype(self.dtype) == jnp.float32 else 1e-4
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(jnp.maximum(var, eps)) * gamma.astype(jnp.float32)
        return y.astype(self.dtype)


def rotary_angles(length: int, dim_head: int, theta: float = 10000.0) -> jax.Array:
    """Rotary angles ``(n, dim_head)`` in fp32, rotate-half layout (frequencies repeated)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dim_head, 2, dtype=jnp.float32) / dim_head))
    positions = jnp.arange(length, dtype=jnp.float32)
    freqs = jnp.einsum("i,j->ij", positions, inv_freq)
    return jnp.concatenate([freqs, freqs], axis=-1)


def apply_rotary(x: jax.Array, angles: jax.Array) -> jax.Array:
    """Rotate ``x (b, n, h, d)`` by ``angles (n, d)``; computed in fp32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated_half = jnp.concatenate([-x2, x1], axis=-1)
    cos = jnp.cos(angles)[None, :, None, :]
    sin = jnp.sin(angles)[None, :, None, :]
    return (x32 * cos + rotated_half * sin).astype(x.dtype)
