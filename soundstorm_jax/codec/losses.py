"""Codec training losses: hinge GAN losses, feature matching, multi-scale mel reconstruction.

Discriminator outputs are lists of ``(logits, features)`` as produced by
``discriminators.CodecDiscriminator``; every loss here averages over the
sub-discriminators so its scale does not grow with their number.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from soundstorm_jax.codec.spectral import mel_spectrogram


def _mean(values: Sequence[jax.Array]) -> jax.Array:
    return sum(values) / len(values)


def _safe_norm(x: jax.Array) -> jax.Array:
    """L2 norm over the last axis, exactly 0 at 0 with a finite (zero) gradient there."""
    sq = jnp.sum(x * x, axis=-1)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def hinge_discriminator_loss(real_logits: Sequence[jax.Array], fake_logits: Sequence[jax.Array]) -> jax.Array:
    """``mean_d [ mean relu(1 - D(x)) + mean relu(1 + D(G(x))) ]``."""
    return _mean([jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f))
                  for r, f in zip(real_logits, fake_logits, strict=True)])


def hinge_generator_loss(fake_logits: Sequence[jax.Array]) -> jax.Array:
    """``mean_d mean relu(1 - D(G(x)))`` (SoundStream's generator adversarial loss)."""
    return _mean([jnp.mean(jax.nn.relu(1.0 - f)) for f in fake_logits])


def feature_matching_loss(real_features: Sequence[Sequence[jax.Array]],
                          fake_features: Sequence[Sequence[jax.Array]]) -> jax.Array:
    """Mean over discriminators and layers of ``mean |f_real - f_fake|``; real features carry no gradient."""
    per_disc = [_mean([jnp.mean(jnp.abs(jax.lax.stop_gradient(r) - f)) for r, f in zip(rs, fs, strict=True)])
                for rs, fs in zip(real_features, fake_features, strict=True)]
    return _mean(per_disc)


def multiscale_mel_loss(target: jax.Array, estimate: jax.Array, sample_rate: int,
                        scales: Sequence[int] = (64, 128, 256, 512, 1024, 2048), n_mels: int = 64,
                        eps: float = 1e-5) -> jax.Array:
    """SoundStream's reconstruction loss on audio ``(b t)``, averaged over scales.

    For window ``s`` (hop ``s/4``): ``mean |M - M'| + sqrt(s/2) * mean_frames ||log M - log M'||_2``
    with ``M`` the mel magnitude spectrogram (``n_mels`` bins, at most ``s/2 + 1``).
    """
    per_scale = []
    for s in scales:
        bins = min(n_mels, s // 2 + 1)
        m_t = mel_spectrogram(target, sample_rate, s, s // 4, bins)
        m_e = mel_spectrogram(estimate, sample_rate, s, s // 4, bins)
        l1 = jnp.mean(jnp.abs(m_t - m_e))
        log_diff = jnp.log(m_t + eps) - jnp.log(m_e + eps)
        l2_log = jnp.mean(_safe_norm(log_diff))
        per_scale.append(l1 + jnp.sqrt(s / 2.0) * l2_log)
    return _mean(per_scale)
