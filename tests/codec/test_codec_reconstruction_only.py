"""Reconstruction-only codec training (both GAN weights 0): the discriminators are skipped, not just zero-weighted."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from codec_test_utils import TRAIN_BATCH, TRAIN_SAMPLES, compile_for_test, simple_audio, tiny_train_config
from soundstorm_jax.codec import codec_train_step, init_codec_train_state
from soundstorm_jax.codec.train_step import codec_losses, uses_discriminator


def test_zero_gan_weights_skip_the_discriminators():
    config = dataclasses.replace(tiny_train_config(), adversarial_weight=0.0, feature_matching_weight=0.0,
                                 adversarial_start_step=0)
    assert not uses_discriminator(config) and uses_discriminator(tiny_train_config())
    audio = jnp.asarray(simple_audio(np.random.default_rng(0), TRAIN_BATCH, TRAIN_SAMPLES))
    state = init_codec_train_state(config, jax.random.PRNGKey(0), audio)
    step = compile_for_test(codec_train_step, state, audio, jax.random.PRNGKey(1))
    new_state, metrics = step(state, audio, jax.random.PRNGKey(1))
    metrics = jax.device_get(metrics)
    # Generator loss is exactly mel + commitment; the discriminators get no gradient and keep their weights.
    np.testing.assert_allclose(metrics['generator_loss'], metrics['mel_loss'] + metrics['commit_loss'], rtol=1e-6)
    assert metrics['discriminator_grad_norm'] == 0.0 and metrics['discriminator_loss'] == 0.0
    assert metrics['generator_grad_norm'] > 0.0
    for old, new in zip(jax.tree_util.tree_leaves(state.params['discriminator']),
                        jax.tree_util.tree_leaves(new_state.params['discriminator'])):
        np.testing.assert_array_equal(old, new)
    # No discriminator convolution is left in the compiled step: it is much smaller than the GAN step's.
    gan_state = init_codec_train_state(tiny_train_config(), jax.random.PRNGKey(0), audio)
    gan_hlo = jax.jit(codec_train_step).lower(gan_state, audio, jax.random.PRNGKey(1)).as_text()
    mel_hlo = jax.jit(codec_train_step).lower(state, audio, jax.random.PRNGKey(1)).as_text()
    assert mel_hlo.count("convolution") < gan_hlo.count("convolution")


def test_waveform_weight_adds_the_weighted_l1_of_the_waveform_to_the_generator_loss():
    config = dataclasses.replace(tiny_train_config(), adversarial_weight=0.0, feature_matching_weight=0.0)
    audio = jnp.asarray(simple_audio(np.random.default_rng(0), TRAIN_BATCH, TRAIN_SAMPLES))
    state = init_codec_train_state(config, jax.random.PRNGKey(0), audio)
    losses = jax.jit(codec_losses, static_argnums=0)
    plain = losses(config, state.params, state.vq_stats, audio, jax.random.PRNGKey(1), state.step)
    weighted = losses(dataclasses.replace(config, waveform_weight=7.0), state.params, state.vq_stats, audio,
                      jax.random.PRNGKey(1), state.step)
    metrics = jax.device_get(weighted[2][0])
    assert metrics['waveform_l1'] > 0
    np.testing.assert_allclose(weighted[0], plain[0] + 7.0 * metrics['waveform_l1'], rtol=1e-5)
    np.testing.assert_allclose(metrics['mel_loss'], jax.device_get(plain[2][0])['mel_loss'], rtol=1e-6)
