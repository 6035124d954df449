"""Hyper-connection residual streams (Zhu et al. 2024, arXiv 2409.19606).

The PyTorch reference wraps every Conformer sublayer in the ``hyper-connections``
package's ``HyperConnections`` (4 streams by default). We implement the same
mathematics with the streams as an explicit axis, ``(b, n, s, d)``, instead of
folding them into the batch, so shapes stay readable and shardable:

    normed  = rmsnorm(streams)                                   (b n s d)
    alpha   = tanh(normed @ dynamic_alpha) * alpha_scale + static_alpha   (b n s 1+s)
    mixed   = einsum('b n s t, b n s d -> b n t d', alpha, streams)
    branch_input, residuals = mixed[..., 0, :], mixed[..., 1:, :]
    beta    = tanh(normed @ dynamic_beta) * beta_scale + static_beta      (b n s)
    streams = residuals + beta[..., None] * branch(branch_input)[:, :, None, :]

``static_alpha`` starts as ``[e_r | I]``: the branch reads one stream ``r``
(drawn from the init key, as the reference draws it at random) and every stream
keeps itself. With one stream the block uses plain residuals instead.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from soundstorm_jax.model.layers import Dtype, partitioned


def _static_alpha_init(key: jax.Array, shape: tuple[int, int], dtype: Dtype = jnp.float32) -> jax.Array:
    num_streams = shape[0]
    read_stream = jax.random.randint(key, (), 0, num_streams)
    read = jax.nn.one_hot(read_stream, num_streams, dtype=dtype)[:, None]
    return jnp.concatenate([read, jnp.eye(num_streams, dtype=dtype)], axis=1)


def _constant_init(value: float):
    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.full(shape, value, dtype)

    return init


class HyperConnection(nn.Module):
    """Reads a sublayer's input from the residual streams and writes its output back.

    Use as ``branch_input, write = hc.read(streams)`` then ``streams = write(out)``;
    split in two so the caller runs its own sublayer in between.
    """

    num_streams: int
    dim: int
    param_dtype: Dtype = jnp.float32

    def setup(self):
        s, d = self.num_streams, self.dim
        self.norm_scale = self.param("norm_scale", partitioned(nn.initializers.zeros_init(), ("embed",)),
                                     (d,), self.param_dtype)
        self.static_alpha = self.param("static_alpha", partitioned(_static_alpha_init, (None, None)),
                                       (s, s + 1), self.param_dtype)
        self.dynamic_alpha = self.param("dynamic_alpha", partitioned(nn.initializers.zeros_init(), ("embed", None)),
                                        (d, s + 1), self.param_dtype)
        self.dynamic_alpha_scale = self.param("dynamic_alpha_scale", partitioned(_constant_init(1e-2), ()),
                                              (), self.param_dtype)
        self.static_beta = self.param("static_beta", partitioned(nn.initializers.ones_init(), (None,)),
                                      (s,), self.param_dtype)
        self.dynamic_beta = self.param("dynamic_beta", partitioned(nn.initializers.zeros_init(), ("embed",)),
                                       (d,), self.param_dtype)
        self.dynamic_beta_scale = self.param("dynamic_beta_scale", partitioned(_constant_init(1e-2), ()),
                                             (), self.param_dtype)

    def _rmsnorm(self, streams: jax.Array) -> jax.Array:
        # F.normalize(x) * sqrt(d) * (gamma + 1), with F.normalize's 1e-12 floor.
        norm = jnp.sqrt(jnp.sum(jnp.square(streams), axis=-1, keepdims=True))
        return streams / jnp.maximum(norm, 1e-12) * (self.dim ** 0.5) * (self.norm_scale + 1.0)

    def read(self, streams: jax.Array):
        """``streams (b, n, s, d)`` -> ``branch_input (b, n, d)`` and a ``write`` function."""
        dtype = streams.dtype
        streams32 = streams.astype(jnp.float32)
        normed = self._rmsnorm(streams32)
        alpha = jnp.tanh(normed @ self.dynamic_alpha) * self.dynamic_alpha_scale + self.static_alpha
        beta = jnp.tanh(normed @ self.dynamic_beta) * self.dynamic_beta_scale + self.static_beta
        # s and s + 1 are tiny: broadcast multiply-adds fuse, where a batched
        # (b n)-many 4x5 matmul would not (measured 10x slower backward on CPU).
        mixed = sum(alpha[:, :, i, :, None] * streams32[:, :, i, None, :] for i in range(self.num_streams))
        branch_input, residuals = mixed[:, :, 0, :], mixed[:, :, 1:, :]

        def write(branch_output: jax.Array) -> jax.Array:
            out = residuals + beta[..., None] * branch_output.astype(jnp.float32)[:, :, None, :]
            return out.astype(dtype)

        return branch_input.astype(dtype), write
