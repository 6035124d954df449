"""SEANet building blocks: padded 1-D convolutions, residual units, encoder/decoder blocks.

Layout is channels-last throughout: ``(b t c)``.

Padding: a convolution with kernel ``k``, dilation ``r`` and stride ``s`` gets
``r*(k-1) - (s-1)`` samples of zero padding in total, so an input of length
``t`` (a multiple of ``s``) gives exactly ``t / s`` outputs. ``causal=True`` puts
all of it on the left (an output never sees later samples); otherwise it is split
evenly. A transposed convolution with kernel ``2s`` and stride ``s`` makes
``(t+1)*s`` samples; ``s`` are cut, from the right when causal (so output
sample ``j`` depends only on inputs ``<= j / s``), half on each side otherwise.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def conv_padding(kernel_size: int, dilation: int, stride: int, causal: bool) -> tuple[int, int]:
    """(left, right) zero padding keeping ``out_len = in_len / stride``."""
    total = dilation * (kernel_size - 1) - (stride - 1)
    if total < 0:
        raise ValueError(f"kernel_size={kernel_size} with stride={stride} would skip samples; "
                         f"use kernel_size >= stride")
    return (total, 0) if causal else ((total + 1) // 2, total // 2)


class Conv1d(nn.Module):
    """Padded 1-D convolution ``(b t c_in) -> (b t/stride features)``."""
    features: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    causal: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = conv_padding(self.kernel_size, self.dilation, self.stride, self.causal)
        return nn.Conv(self.features, (self.kernel_size,), strides=(self.stride,), kernel_dilation=(self.dilation,),
                       padding=[pad], dtype=self.dtype, param_dtype=jnp.float32)(x)


class ConvTranspose1d(nn.Module):
    """Upsampling by ``stride`` with kernel ``2*stride``: ``(b t c_in) -> (b t*stride features)``."""
    features: int
    stride: int
    causal: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        t, s = x.shape[1], self.stride
        y = nn.ConvTranspose(self.features, (2 * s,), strides=(s,), padding='VALID', dtype=self.dtype,
                             param_dtype=jnp.float32)(x)  # (b, (t+1)*s, c)
        left = 0 if self.causal else s // 2
        return y[:, left:left + t * s]


class ResidualUnit(nn.Module):
    """ELU -> dilated conv k=7 -> ELU -> conv k=1, plus the input. ``(b t c) -> (b t c)``."""
    dilation: int
    causal: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        h = Conv1d(c, 7, dilation=self.dilation, causal=self.causal, dtype=self.dtype)(nn.elu(x))
        h = Conv1d(c, 1, causal=self.causal, dtype=self.dtype)(nn.elu(h))
        return x + h


class EncoderBlock(nn.Module):
    """Residual units (dilations 1, 3, 9) then a strided conv: ``(b t c) -> (b t/stride features)``."""
    features: int
    stride: int
    dilations: Sequence[int] = (1, 3, 9)
    causal: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for d in self.dilations:
            x = ResidualUnit(d, causal=self.causal, dtype=self.dtype)(x)
        return Conv1d(self.features, 2 * self.stride, stride=self.stride, causal=self.causal,
                      dtype=self.dtype)(nn.elu(x))


class DecoderBlock(nn.Module):
    """Transposed conv then residual units (dilations 1, 3, 9): ``(b t c) -> (b t*stride features)``."""
    features: int
    stride: int
    dilations: Sequence[int] = (1, 3, 9)
    causal: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ConvTranspose1d(self.features, self.stride, causal=self.causal, dtype=self.dtype)(nn.elu(x))
        for d in self.dilations:
            x = ResidualUnit(d, causal=self.causal, dtype=self.dtype)(x)
        return x
