"""EnCodec's SEANet encoder/decoder in Flax Linen, laid out so PyTorch ``encodec`` weights import exactly.

Layout is channels-last: ``(b t c)``. The padding rules follow the ``encodec``
package (its ``SConv1d`` / ``SConvTranspose1d``), because the 24 kHz model was
trained with them and they change the numbers:

* a convolution (kernel ``k``, stride ``s``, dilation ``d``) pads ``p = d*(k-1) - (s-1)``
  samples, all on the left when causal (else ``p - p//2`` left, ``p//2`` right), plus
  ``extra`` samples on the right so that the last window is complete
  (``extra = ceil((t - k + p) / s) * s + k - p - t``); padding is a mirror image
  (``'reflect'``, excluding the edge sample) or zeros (``'constant'``). Reflection needs
  more samples than the pad width, so a too-short input is first zero-extended on the
  right and that extension is cut off again after reflecting.
* a transposed convolution (kernel ``k``, stride ``s``) makes ``(t-1)*s + k`` samples
  and drops ``k - s`` of them: ``ceil((k-s) * trim_right_ratio)`` from the right when
  causal, the rest from the left (non-causal: ``(k-s)//2`` right, the rest left).
* weight normalisation is folded into plain kernels by the importer, so no layer here
  carries a norm.

Kernels are stored as ``(k, c_in, c_out)`` for both kinds of convolution; the
transposed one flips its kernel in time when applied (PyTorch's transposed
convolution is the adjoint of a correlation).
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

_DIMS = ('NWC', 'WIO', 'NWC')


def extra_right_padding(length: int, kernel_size: int, stride: int, padding_total: int) -> int:
    """Zeros/mirror samples to add on the right so the strided convolution's last window is full."""
    frames = -(-(length - kernel_size + padding_total) // stride) + 1
    return (frames - 1) * stride + kernel_size - padding_total - length


def pad_time(x: jax.Array, left: int, right: int, mode: str) -> jax.Array:
    """Pad ``(b t c)`` along time by mirroring (``'reflect'``) or with zeros (``'constant'``)."""
    if left == right == 0:
        return x
    if mode == 'constant':
        return jnp.pad(x, ((0, 0), (left, right), (0, 0)))
    if mode != 'reflect':
        raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {mode!r}")
    short = max(left, right) - x.shape[1] + 1  # reflection needs length > pad width
    if short > 0:
        x = jnp.pad(x, ((0, 0), (0, short), (0, 0)))
    y = jnp.pad(x, ((0, 0), (left, right), (0, 0)), mode='reflect')
    return y[:, :y.shape[1] - short] if short > 0 else y


class PaddedConv1d(nn.Module):
    """``encodec``'s streamable convolution: ``(b t c_in) -> (b ceil(t/stride) features)``."""
    features: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    causal: bool = True
    pad_mode: str = 'reflect'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, d = self.kernel_size, self.stride, self.dilation
        kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, x.shape[-1], self.features))
        bias = self.param('bias', nn.initializers.zeros, (self.features,))
        total = d * (k - 1) - (s - 1)
        extra = extra_right_padding(x.shape[1], k, s, total)
        left = total if self.causal else total - total // 2
        x = pad_time(x, left, total - left + extra, self.pad_mode)
        y = jax.lax.conv_general_dilated(x, kernel, (s,), 'VALID', rhs_dilation=(d,), dimension_numbers=_DIMS)
        return y + bias


class PaddedConvTranspose1d(nn.Module):
    """``encodec``'s streamable transposed convolution: ``(b t c_in) -> (b t*stride features)``."""
    features: int
    kernel_size: int
    stride: int
    causal: bool = True
    trim_right_ratio: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel_size, self.stride
        kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, x.shape[-1], self.features))
        bias = self.param('bias', nn.initializers.zeros, (self.features,))
        # Upsampling = correlation of the s-dilated input, zero-padded by k-1, with the time-flipped kernel.
        y = jax.lax.conv_general_dilated(x, kernel[::-1], (1,), [(k - 1, k - 1)], lhs_dilation=(s,),
                                         dimension_numbers=_DIMS) + bias  # (b, (t-1)*s + k, c)
        total = k - s
        right = math.ceil(total * self.trim_right_ratio) if self.causal else total // 2
        return y[:, total - right:y.shape[1] - right]


class LSTMLayer(nn.Module):
    """One unidirectional LSTM layer (PyTorch gate order i, f, g, o; zero initial state), ``(b t c) -> (b t c)``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        w_in = self.param('kernel_ih', nn.initializers.lecun_normal(), (c, 4 * c))
        w_rec = self.param('kernel_hh', nn.initializers.orthogonal(), (c, 4 * c))
        bias = self.param('bias', nn.initializers.zeros, (4 * c,))  # PyTorch's bias_ih + bias_hh
        x_gates = jnp.swapaxes(x @ w_in + bias, 0, 1)  # (t, b, 4c): the input part of every step at once

        def step(carry, gates_in):
            h, cell = carry
            i, f, g, o = jnp.split(gates_in + h @ w_rec, 4, axis=-1)
            cell = jax.nn.sigmoid(f) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(cell)
            return (h, cell), h

        zeros = jnp.zeros((x.shape[0], c), x_gates.dtype)
        _, hs = jax.lax.scan(step, (zeros, zeros), x_gates)
        return jnp.swapaxes(hs, 0, 1)


class SkipLSTM(nn.Module):
    """Stacked LSTM plus a skip connection around the whole stack (``encodec``'s ``SLSTM``)."""
    num_layers: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        for i in range(self.num_layers):
            h = LSTMLayer(name=f'layer{i}')(h)
        return h + x


class ResnetBlock(nn.Module):
    """ELU -> conv(k_0, dilation_0) to ``c/compress`` -> ... -> ELU -> conv back to ``c``, plus a shortcut
    (identity when ``true_skip``, else a 1x1 convolution)."""
    kernel_sizes: Sequence[int] = (3, 1)
    dilations: Sequence[int] = (1, 1)
    compress: int = 2
    true_skip: bool = False
    causal: bool = True
    pad_mode: str = 'reflect'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        h = x
        last = len(self.kernel_sizes) - 1
        for i, (k, d) in enumerate(zip(self.kernel_sizes, self.dilations)):
            h = PaddedConv1d(c if i == last else c // self.compress, k, dilation=d, causal=self.causal,
                             pad_mode=self.pad_mode, name=f'conv{i}')(nn.elu(h))
        skip = x if self.true_skip else PaddedConv1d(c, 1, causal=self.causal, pad_mode=self.pad_mode,
                                                      name='shortcut')(x)
        return skip + h


class SEANetBase(nn.Module):
    """Fields shared by the encoder and decoder (the ``encodec`` package's SEANet arguments)."""
    dimension: int = 128
    n_filters: int = 32
    n_residual_layers: int = 1
    ratios: Sequence[int] = (8, 5, 4, 2)
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    true_skip: bool = False
    lstm_layers: int = 2
    causal: bool = True
    pad_mode: str = 'reflect'

    def _resnet_args(self, j: int) -> dict:
        """Arguments of the ``j``-th residual block of a stage (dilation ``dilation_base ** j``)."""
        return dict(kernel_sizes=(self.residual_kernel_size, 1), dilations=(self.dilation_base ** j, 1),
                    compress=self.compress, true_skip=self.true_skip, causal=self.causal, pad_mode=self.pad_mode)


class SEANetEncoder(SEANetBase):
    """audio ``(b t 1)`` -> latents ``(b ceil(t/hop) dimension)``; downsamples by ``ratios`` in reverse order."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = dict(causal=self.causal, pad_mode=self.pad_mode)
        x = PaddedConv1d(self.n_filters, self.kernel_size, name='conv_in', **conv)(x)
        width = self.n_filters
        for i, ratio in enumerate(reversed(tuple(self.ratios))):
            for j in range(self.n_residual_layers):
                x = ResnetBlock(name=f'block{i}_res{j}', **self._resnet_args(j))(x)
            width *= 2
            x = PaddedConv1d(width, 2 * ratio, stride=ratio, name=f'block{i}_down', **conv)(nn.elu(x))
        if self.lstm_layers:
            x = SkipLSTM(self.lstm_layers, name='lstm')(x)
        return PaddedConv1d(self.dimension, self.last_kernel_size, name='conv_out', **conv)(nn.elu(x))


class SEANetDecoder(SEANetBase):
    """latents ``(b n dimension)`` -> audio ``(b n*hop 1)``; upsamples by ``ratios`` in order."""
    trim_right_ratio: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = dict(causal=self.causal, pad_mode=self.pad_mode)
        width = self.n_filters * 2 ** len(self.ratios)
        x = PaddedConv1d(width, self.kernel_size, name='conv_in', **conv)(x)
        if self.lstm_layers:
            x = SkipLSTM(self.lstm_layers, name='lstm')(x)
        for i, ratio in enumerate(self.ratios):
            width //= 2
            x = PaddedConvTranspose1d(width, 2 * ratio, ratio, self.causal, self.trim_right_ratio,
                                      name=f'block{i}_up')(nn.elu(x))
            for j in range(self.n_residual_layers):
                x = ResnetBlock(name=f'block{i}_res{j}', **self._resnet_args(j))(x)
        return PaddedConv1d(1, self.last_kernel_size, name='conv_out', **conv)(nn.elu(x))
