"""Tiny codec configurations and synthetic audio shared by the codec tests."""
from __future__ import annotations

import numpy as np

from soundstorm_jax.codec import CodecDiscriminator, CodecTrainConfig, SoundStream

SAMPLE_RATE = 16000
TRAIN_SAMPLES = 2048
TRAIN_BATCH = 4
TRAIN_STEPS = 40
# The tests run each program a few dozen times at most, so compile time (which the backend's
# optimisation passes dominate on this CPU) matters far more than run time.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def tiny_soundstream(**overrides) -> SoundStream:
    """hop 8, dim 16, 2 groups x 3 levels x 32 codes, one causal local-attention layer."""
    kw = dict(codebook_size=32, rq_num_quantizers=3, rq_groups=2, strides=(2, 4), channels=8, dim=16,
              attn_depth=1, attn_window_size=8, attn_heads=2, causal=True, quantizer_dropout=0.5)
    kw.update(overrides)
    return SoundStream(**kw)


def tiny_discriminator() -> CodecDiscriminator:
    return CodecDiscriminator(num_scales=2, wave_channels=4, wave_max_channels=32, wave_downsample=(4, 4),
                              stft_resolutions=((128, 32),), stft_channels=4, stft_max_channels=16)


def tiny_train_config() -> CodecTrainConfig:
    return CodecTrainConfig(codec=tiny_soundstream(), discriminator=tiny_discriminator(), mel_scales=(64, 256),
                            mel_bins=32, generator_lr=3e-3, discriminator_lr=1e-3, adversarial_start_step=20,
                            adversarial_weight=0.1, feature_matching_weight=0.3)


def simple_audio(rng: np.random.Generator, batch: int, samples: int) -> np.ndarray:
    """Tones (random pitch and level) plus a noise burst each: ``(batch, samples)`` float32 in [-1, 1]."""
    t = np.arange(samples) / SAMPLE_RATE
    freq = rng.uniform(100, 1500, (batch, 1))
    amp = rng.uniform(0.2, 0.5, (batch, 1))
    tone = amp * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi, (batch, 1)))
    start = rng.integers(0, samples // 2, (batch, 1))
    length = rng.integers(samples // 8, samples // 3, (batch, 1))
    idx = np.arange(samples)[None]
    burst = ((idx >= start) & (idx < start + length)) * rng.normal(0, 0.2, (batch, samples))
    return np.clip(tone + burst, -1, 1).astype(np.float32)


def compile_for_test(fn, *args, static_argnums=()):
    """``jax.jit(fn)`` compiled for ``args`` with ``FAST_COMPILE`` options."""
    import jax
    return jax.jit(fn, static_argnums=static_argnums).lower(*args).compile(compiler_options=FAST_COMPILE)


def run_once(fn, *args):
    """Compile ``fn`` for ``args`` (as ``compile_for_test``) and call it once."""
    return compile_for_test(fn, *args)(*args)
