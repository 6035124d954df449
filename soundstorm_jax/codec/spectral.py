"""STFT and mel spectrogram in jnp (no librosa).

``stft(x (b t), n_fft, hop)`` -> complex ``(b frames (n_fft/2 + 1))``, periodic
Hann window, centred frames (``n_fft/2`` zeros each side), ``frames = 1 + t // hop``.
``mel_filterbank`` uses the HTK mel scale with area-normalised (Slaney)
triangles, i.e. ``librosa.filters.mel(htk=True, norm='slaney')``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def hann_window(length: int) -> jax.Array:
    """Periodic Hann window ``(length,)`` (the STFT convention)."""
    n = jnp.arange(length, dtype=jnp.float32)
    return 0.5 - 0.5 * jnp.cos(2.0 * jnp.pi * n / length)


def frame_signal(x: jax.Array, frame_length: int, hop: int) -> jax.Array:
    """x ``(b t)`` -> centred, zero-padded frames ``(b (1 + t // hop) frame_length)``."""
    pad = frame_length // 2
    x = jnp.pad(x, ((0, 0), (pad, pad)))
    num_frames = 1 + (x.shape[1] - frame_length) // hop
    idx = jnp.arange(num_frames)[:, None] * hop + jnp.arange(frame_length)[None, :]
    return x[:, idx]


def stft(x: jax.Array, n_fft: int, hop: int) -> jax.Array:
    """x ``(b t)`` float -> complex64 ``(b frames (n_fft // 2 + 1))``."""
    frames = frame_signal(x.astype(jnp.float32), n_fft, hop) * hann_window(n_fft)
    return jnp.fft.rfft(frames, axis=-1)


def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank_np(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                      fmax: float | None = None) -> np.ndarray:
    """`mel_filterbank` as a read-only host array (numpy callers, e.g. the spectrogram pictures)."""
    fmax = sample_rate / 2.0 if fmax is None else fmax
    return _mel_filterbank_np(int(sample_rate), int(n_fft), int(n_mels), float(fmin), float(fmax))


@functools.lru_cache(maxsize=64)
def _mel_filterbank_np(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - lower[None]) / (center - lower)[None]
    falling = (upper[None] - freqs[:, None]) / (upper - center)[None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (upper - lower))[None]  # equal area per filter
    weights = weights.astype(np.float32)
    weights.flags.writeable = False  # Cached and shared: no caller may change it.
    return weights


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> jax.Array:
    """Triangular mel filters ``(n_fft // 2 + 1, n_mels)`` float32."""
    return jnp.asarray(mel_filterbank_np(sample_rate, n_fft, n_mels, fmin, fmax))


def mel_spectrogram(x: jax.Array, sample_rate: int, n_fft: int, hop: int, n_mels: int) -> jax.Array:
    """x ``(b t)`` -> mel magnitude spectrogram ``(b frames n_mels)`` (power 1)."""
    magnitude = jnp.abs(stft(x, n_fft, hop))
    return magnitude @ mel_filterbank(sample_rate, n_fft, n_mels)
