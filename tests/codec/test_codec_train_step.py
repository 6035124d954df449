"""The codec training step: a tiny SoundStream learns simple audio; losses stay finite; state is complete."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from soundstorm_jax.codec import hinge_discriminator_loss, hinge_generator_loss, feature_matching_loss, \
    codec_from_state

from codec_test_utils import SAMPLE_RATE, TRAIN_BATCH, TRAIN_SAMPLES, simple_audio


def test_training_lowers_mel_reconstruction_loss(trained_codec):
    _, _, history, eval_after_first, eval_final = trained_codec
    mel = np.array([m['mel_loss'] for m in history])
    first, last = mel[:5].mean(), mel[-5:].mean()
    assert last < 0.6 * first, f"mel loss went from {first:.2f} (first 5 steps) to {last:.2f} (last 5)"
    assert eval_final < 0.6 * eval_after_first, (eval_after_first, eval_final)


def test_all_training_metrics_finite_and_adversarial_terms_active(trained_codec):
    config, _, history, _, _ = trained_codec
    for i, metrics in enumerate(history):
        bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
        assert not bad, f"step {i}: non-finite metrics {bad}"
    # Hinge losses: D loss in [0, 4] (2 per term at most near init), G loss >= 0.
    assert all(0.0 <= m['discriminator_loss'] for m in history)
    assert all(0.0 <= m['adversarial_loss'] for m in history)
    # Before adversarial_start_step the generator loss is mel + commitment only; after, it includes adv + fm.
    s = config.adversarial_start_step
    before, after = history[s - 1], history[s]
    np.testing.assert_allclose(before['generator_loss'], before['mel_loss'] + before['commit_loss'], rtol=1e-5)
    expected_after = (after['mel_loss'] + after['commit_loss'] + config.adversarial_weight * after['adversarial_loss']
                      + config.feature_matching_weight * after['feature_matching_loss'])
    np.testing.assert_allclose(after['generator_loss'], expected_after, rtol=1e-5)
    # The discriminator learns to tell the (still poor) reconstructions apart.
    assert np.mean([m['discriminator_loss'] for m in history[-5:]]) < np.mean(
        [m['discriminator_loss'] for m in history[:5]])


def test_state_holds_both_param_groups_and_initialised_codebooks(trained_codec):
    config, state, history, _, _ = trained_codec
    assert int(state.step) == len(history)
    assert set(state.params) == {'generator', 'discriminator'}
    initted = [bool(v) for path, v in jax.tree_util.tree_leaves_with_path(state.vq_stats)
               if path[-1].key == 'initted']
    q, g = config.codec.rq_num_quantizers, config.codec.rq_groups
    assert len(initted) == q * g and all(initted)
    # Quantizer dropout (p = 0.5) was active: some steps used fewer than all levels on average.
    assert min(m['levels_used'] for m in history) < q


def test_discriminator_and_generator_losses_on_trained_discriminator(trained_codec):
    config, state, _, _, _ = trained_codec
    codec = codec_from_state(state)
    real = jnp.asarray(simple_audio(np.random.default_rng(7), TRAIN_BATCH, TRAIN_SAMPLES))
    fake = codec.decode(codec.encode(real, sample_rate=SAMPLE_RATE), length=TRAIN_SAMPLES)
    disc = jax.jit(lambda p, x: config.discriminator.apply({'params': p}, x))
    real_out, fake_out = disc(state.params['discriminator'], real), disc(state.params['discriminator'], fake)
    # 2 wave scales + 1 STFT resolution.
    assert len(real_out) == 3
    d_loss = hinge_discriminator_loss([r for r, _ in real_out], [f for f, _ in fake_out])
    g_loss = hinge_generator_loss([f for f, _ in fake_out])
    fm = feature_matching_loss([r for _, r in real_out], [f for _, f in fake_out])
    for name, value in [('d', d_loss), ('g', g_loss), ('fm', fm)]:
        assert np.isfinite(float(value)) and float(value) >= 0.0, (name, value)
    assert float(fm) > 0.0  # reconstructions are not perfect after a few dozen steps
    # Feature matching of a signal with itself is exactly zero.
    assert float(feature_matching_loss([r for _, r in real_out], [r for _, r in real_out])) == 0.0
