"""The codec training step: a tiny SoundStream learns simple audio; losses stay finite; state is complete."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from codec_test_utils import TRAIN_BATCH, TRAIN_SAMPLES, run_once, simple_audio
from soundstorm_jax.codec import feature_matching_loss, hinge_discriminator_loss, hinge_generator_loss


def test_training_lowers_mel_reconstruction_loss(trained_codec):
    _, _, history, eval_after_first, eval_final = trained_codec
    mel = np.array([m['mel_loss'] for m in history])
    first, last = mel[:5].mean(), mel[-5:].mean()
    # Seen here: about 195 -> 105 over 40 steps (x0.54) and 203 -> 100 on held-out audio (x0.49).
    assert last < 0.7 * first, f"mel loss went from {first:.2f} (first 5 steps) to {last:.2f} (last 5)"
    assert eval_final < 0.65 * eval_after_first, (eval_after_first, eval_final)


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
    rng = np.random.default_rng(7)
    real = jnp.asarray(simple_audio(rng, TRAIN_BATCH, TRAIN_SAMPLES))
    fake = 0.5 * real + jnp.asarray(rng.normal(0, 0.05, real.shape).astype(np.float32))

    def losses(params, real, fake):
        real_out = config.discriminator.apply({'params': params}, real)
        fake_out = config.discriminator.apply({'params': params}, fake)
        real_feats, fake_feats = [r for _, r in real_out], [f for _, f in fake_out]
        return (len(real_out),
                hinge_discriminator_loss([r for r, _ in real_out], [f for f, _ in fake_out]),
                hinge_generator_loss([f for f, _ in fake_out]),
                feature_matching_loss(real_feats, fake_feats),
                feature_matching_loss(real_feats, real_feats))

    d_loss, g_loss, fm, fm_self = run_once(lambda *a: losses(*a)[1:], state.params['discriminator'], real, fake)
    for name, value in [('d', d_loss), ('g', g_loss), ('fm', fm)]:
        assert np.isfinite(float(value)) and float(value) >= 0.0, (name, value)
    assert float(fm) > 0.0
    assert float(fm_self) == 0.0  # feature matching of a signal with itself


def test_discriminator_structure():
    """2 waveform scales (raw, 2x pooled) + 1 STFT resolution; waveform logits shrink by the downsampling."""
    from codec_test_utils import tiny_discriminator
    disc = tiny_discriminator()
    audio = jax.ShapeDtypeStruct((2, 1024), jnp.float32)
    params = jax.eval_shape(disc.init, jax.random.key(0), audio)
    outputs = jax.eval_shape(disc.apply, params, audio)
    assert len(outputs) == 3
    (raw_logits, raw_feats), (pooled_logits, _), (stft_logits, stft_feats) = outputs
    assert raw_logits.shape == (2, 1024 // 16) and pooled_logits.shape == (2, 512 // 16)
    assert len(raw_feats) == 4  # input conv, 2 strided convs, final conv
    # STFT (n_fft 128, hop 32): 1 + 1024 // 32 frames, 65 bins halved by 3 stride-2 layers.
    assert stft_logits.shape == (2, 33, 9) and len(stft_feats) == 5


def test_init_is_traceable_for_sharded_initialisation():
    """The trainer gets the state's shapes without running anything (then jits it with out_shardings)."""
    import functools
    from codec_test_utils import tiny_train_config
    from soundstorm_jax.codec import init_codec_train_state
    config = tiny_train_config()
    shapes = jax.eval_shape(functools.partial(init_codec_train_state, config), jax.random.key(0),
                            jax.ShapeDtypeStruct((2, 256), jnp.float32))
    assert shapes.config is config and shapes.step.shape == ()
    assert set(shapes.params) == {'generator', 'discriminator'}
    embed = shapes.vq_stats['quantizer']['rvqs_1']['levels_2']['embed']
    assert embed.shape == (32, 8)  # codebook_size x (dim / groups)


def test_each_parameter_group_gets_only_its_own_loss_gradient():
    """The generator loss has no gradient w.r.t. the discriminators and vice versa."""
    import dataclasses
    from codec_test_utils import tiny_soundstream, tiny_train_config
    from soundstorm_jax.codec import CodecDiscriminator, codec_losses, init_codec_train_state
    config = dataclasses.replace(
        tiny_train_config(),
        codec=tiny_soundstream(strides=(2,), channels=4, dim=8, rq_groups=1, rq_num_quantizers=2, attn_depth=0),
        discriminator=CodecDiscriminator(num_scales=1, wave_channels=4, wave_max_channels=8, wave_downsample=(4,),
                                         stft_resolutions=((64, 16),), stft_channels=2, stft_max_channels=4,
                                         stft_dilations=(1,), periods=(3,), period_channels=2, period_max_channels=4),
        adversarial_start_step=0, mel_scales=(64,))
    audio = jnp.asarray(simple_audio(np.random.default_rng(3), 2, 256))
    state = init_codec_train_state(config, jax.random.key(0), audio)

    def grads(params, vq_stats, audio, key):
        # One forward pass, two backward passes (vmapped): rows are grad(g_loss) and grad(d_loss).
        both, vjp = jax.vjp(lambda p: codec_losses(config, p, vq_stats, audio, key, jnp.asarray(1))[:2], params)
        return jax.vmap(vjp)((jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])))[0]

    per_loss = run_once(grads, state.params, state.vq_stats, audio, jax.random.key(1))
    g_only, d_only = jax.tree.map(lambda x: x[0], per_loss), jax.tree.map(lambda x: x[1], per_loss)
    zero = lambda t: all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(t))
    # By linearity grad(g + d) = grad(g) + grad(d); with no cross terms each group sees only its own loss.
    assert zero(g_only['discriminator']) and zero(d_only['generator'])
    assert not zero(g_only['generator']) and not zero(d_only['discriminator'])


def test_learning_rates_are_constant_or_decay_along_a_cosine_to_a_tenth(trained_codec):
    import dataclasses
    from soundstorm_jax.codec.train_step import learning_rate
    from soundstorm_jax.training.codec_task import codec_train_config
    from soundstorm_jax.training.config import load_config

    config, _, history, _, _ = trained_codec
    assert config.lr_decay_steps is None
    assert {h['generator_lr'] for h in history} == {np.float32(config.generator_lr)}  # logged: the rate used
    schedule = learning_rate(dataclasses.replace(config, lr_decay_steps=10), 1e-3)
    np.testing.assert_allclose([schedule(s) for s in (0, 5, 10, 20)], [1e-3, 5.5e-4, 1e-4, 1e-4], rtol=1e-5)
    run_config = load_config("demo_codec")
    assert codec_train_config(run_config).lr_decay_steps is None  # the config's default: constant
    run_config.optimizer.decay_steps = 7
    assert codec_train_config(run_config).lr_decay_steps == 7
