"""Discriminators for adversarial codec training.

* ``WaveDiscriminator``: MelGAN-style 1-D convs with grouped, strided layers on a waveform.
* ``MultiScaleDiscriminator``: one ``WaveDiscriminator`` per scale on the raw
  waveform and its 2x and 4x average-pooled versions.
* ``STFTDiscriminator``: 2-D convs over a complex STFT (real and imaginary parts
  as two channels, layout ``(b frames freqs 2)``), strided along frequency.
* ``MultiResolutionSTFTDiscriminator``: one ``STFTDiscriminator`` per (n_fft, hop).
* ``PeriodDiscriminator``: HiFi-GAN's period sub-discriminator: the waveform folded
  into ``period`` columns ``(b t/period period)``, 2-D convs along time only, so each
  column (every ``period``-th sample) is judged on its own; ``MultiPeriodDiscriminator``:
  one per period (HiFi-GAN: 2, 3, 5, 7, 11), for the periodic structure of voiced speech.
* ``CodecDiscriminator``: all of the above (the period ones only when given periods).

Every discriminator maps audio ``(b t)`` to a list of ``(logits, features)``,
one entry per sub-discriminator: ``logits`` an array of any shape, ``features``
a list of the hidden activations used for feature matching.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from soundstorm_jax.codec.spectral import stft

Dtype = Any
DiscriminatorOutput = list[tuple[jax.Array, list[jax.Array]]]


def _lrelu(x):
    return nn.leaky_relu(x, 0.2)


class WaveDiscriminator(nn.Module):
    """Waveform ``(b t)`` -> ``(logits (b t'), features)``; downsamples by ``prod(downsample)``."""
    channels: int = 16
    max_channels: int = 1024
    downsample: Sequence[int] = (4, 4, 4, 4)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, audio: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        conv = lambda f, k, s=1, g=1: nn.Conv(f, (k,), strides=(s,), padding=[((k - 1) // 2, (k - 1) // 2)],
                                              feature_group_count=g, dtype=self.dtype, param_dtype=jnp.float32)
        x = audio[..., None].astype(self.dtype)
        features = []
        x = _lrelu(conv(self.channels, 15)(x))
        features.append(x)
        ch = self.channels
        for factor in self.downsample:
            out = min(ch * factor, self.max_channels)
            # Grouped convs (4 input channels per group, as MelGAN) keep the wide layers cheap.
            groups = max(1, math.gcd(ch, out) // 4)
            x = _lrelu(conv(out, factor * 10 + 1, factor, groups)(x))
            features.append(x)
            ch = out
        x = _lrelu(conv(ch, 5)(x))
        features.append(x)
        logits = conv(1, 3)(x)[..., 0]
        return logits.astype(jnp.float32), features


class MultiScaleDiscriminator(nn.Module):
    """``num_scales`` waveform discriminators on audio average-pooled 1x, 2x, 4x, ..."""
    num_scales: int = 3
    channels: int = 16
    max_channels: int = 1024
    downsample: Sequence[int] = (4, 4, 4, 4)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, audio: jax.Array) -> DiscriminatorOutput:
        outputs = []
        x = audio[..., None]
        for i in range(self.num_scales):
            if i > 0:
                x = nn.avg_pool(x, (4,), strides=(2,), padding=((1, 1),), count_include_pad=False)
            outputs.append(WaveDiscriminator(self.channels, self.max_channels, self.downsample, self.dtype,
                                             name=f'scale_{i}')(x[..., 0]))
        return outputs


class STFTDiscriminator(nn.Module):
    """Complex STFT of audio ``(b t)`` -> ``(logits (b frames' freqs' ), features)``.

    EnCodec-style: conv (3, 9) -> convs (3, 9) stride (1, 2) with time dilations
    ``dilations`` -> conv (3, 3) -> conv (3, 3) to one logit channel.
    """
    n_fft: int = 1024
    hop: int = 256
    channels: int = 32
    max_channels: int = 1024
    dilations: Sequence[int] = (1, 2, 4)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, audio: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        spec = stft(audio, self.n_fft, self.hop)
        x = jnp.stack([spec.real, spec.imag], axis=-1).astype(self.dtype)  # (b frames freqs 2)
        conv = lambda f, k, s=(1, 1), d=(1, 1): nn.Conv(f, k, strides=s, kernel_dilation=d, padding='SAME',
                                                        dtype=self.dtype, param_dtype=jnp.float32)
        features = []
        x = _lrelu(conv(self.channels, (3, 9))(x))
        features.append(x)
        ch = self.channels
        for i, d in enumerate(self.dilations):
            ch = min(self.channels * 2 ** (i + 1), self.max_channels)
            x = _lrelu(conv(ch, (3, 9), (1, 2), (d, 1))(x))
            features.append(x)
        x = _lrelu(conv(ch, (3, 3))(x))
        features.append(x)
        logits = conv(1, (3, 3))(x)[..., 0]
        return logits.astype(jnp.float32), features


class MultiResolutionSTFTDiscriminator(nn.Module):
    """One ``STFTDiscriminator`` per ``(n_fft, hop)`` in ``resolutions``."""
    resolutions: Sequence[tuple[int, int]] = ((1024, 256), (2048, 512), (512, 128))
    channels: int = 32
    max_channels: int = 1024
    dilations: Sequence[int] = (1, 2, 4)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, audio: jax.Array) -> DiscriminatorOutput:
        return [STFTDiscriminator(n_fft, hop, self.channels, self.max_channels, self.dilations, dtype=self.dtype,
                                  name=f'stft_{n_fft}_{hop}')(audio)
                for n_fft, hop in self.resolutions]


class PeriodDiscriminator(nn.Module):
    """Waveform ``(b t)`` -> ``(logits (b t' period), features)``, the waveform folded into ``period`` columns.

    ``t`` is reflect-padded up to a multiple of ``period`` (at most ``period - 1`` samples); then
    ``num_layers`` convs (5, 1) stride (3, 1) with channels ``channels * 4**i`` (capped at
    ``max_channels``), a conv (5, 1) and a conv (3, 1) to one logit channel.
    """
    period: int
    channels: int = 32
    max_channels: int = 1024
    num_layers: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, audio: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        b, t = audio.shape
        if self.period < 2 or t <= self.period:
            raise ValueError(f"PeriodDiscriminator needs a period >= 2 shorter than the audio ({t} samples), "
                             f"got period {self.period}")
        x = jnp.pad(audio, ((0, 0), (0, -t % self.period)), mode='reflect')
        x = x.reshape(b, -1, self.period, 1).astype(self.dtype)  # (b t/period period 1)
        conv = lambda f, k, s=1: nn.Conv(f, (k, 1), strides=(s, 1), padding=(((k - 1) // 2, (k - 1) // 2), (0, 0)),
                                         dtype=self.dtype, param_dtype=jnp.float32)
        features = []
        for i in range(self.num_layers):
            x = _lrelu(conv(min(self.channels * 4 ** i, self.max_channels), 5, 3)(x))
            features.append(x)
        x = _lrelu(conv(x.shape[-1], 5)(x))
        features.append(x)
        logits = conv(1, 3)(x)[..., 0]
        return logits.astype(jnp.float32), features


class MultiPeriodDiscriminator(nn.Module):
    """One ``PeriodDiscriminator`` per period in ``periods``."""
    periods: Sequence[int] = (2, 3, 5, 7, 11)
    channels: int = 32
    max_channels: int = 1024
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, audio: jax.Array) -> DiscriminatorOutput:
        return [PeriodDiscriminator(p, self.channels, self.max_channels, dtype=self.dtype, name=f'period_{p}')(audio)
                for p in self.periods]


class CodecDiscriminator(nn.Module):
    """Multi-scale waveform + multi-resolution STFT (+ multi-period) discriminators: audio ``(b t)`` -> list.

    The defaults are the full-size SoundStream/EnCodec settings; tests shrink the channel counts.
    """
    num_scales: int = 3
    wave_channels: int = 16
    wave_max_channels: int = 1024
    wave_downsample: Sequence[int] = (4, 4, 4, 4)
    stft_resolutions: Sequence[tuple[int, int]] = ((1024, 256), (2048, 512), (512, 128))
    stft_channels: int = 32
    stft_max_channels: int = 1024
    stft_dilations: Sequence[int] = (1, 2, 4)
    periods: Sequence[int] = ()  # HiFi-GAN's (2, 3, 5, 7, 11) adds its multi-period discriminator
    period_channels: int = 32
    period_max_channels: int = 1024
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, audio: jax.Array) -> DiscriminatorOutput:
        outputs = []
        if self.num_scales > 0:
            outputs += MultiScaleDiscriminator(self.num_scales, self.wave_channels, self.wave_max_channels,
                                               self.wave_downsample, self.dtype, name='multi_scale')(audio)
        if self.stft_resolutions:
            outputs += MultiResolutionSTFTDiscriminator(self.stft_resolutions, self.stft_channels,
                                                        self.stft_max_channels, self.stft_dilations, self.dtype,
                                                        name='stft')(audio)
        if self.periods:
            outputs += MultiPeriodDiscriminator(self.periods, self.period_channels, self.period_max_channels,
                                                self.dtype, name='period')(audio)
        if not outputs:
            raise ValueError("CodecDiscriminator needs num_scales > 0, an stft resolution or a period")
        return outputs
