"""HiFi-GAN's multi-period discriminator: the fold, the shapes, columns judged apart, and the config path."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soundstorm_jax.codec import CodecDiscriminator, MultiPeriodDiscriminator, PeriodDiscriminator


def test_shapes_and_features():
    audio = jax.random.normal(jax.random.key(0), (2, 1000))
    disc = PeriodDiscriminator(3, channels=2, max_channels=8)
    variables = disc.init(jax.random.key(1), audio)
    logits, features = disc.apply(variables, audio)
    # 1000 samples reflect-padded to 1002 = 334 rows of 3; four stride-3 convs: 334 -> 112 -> 38 -> 13 -> 5.
    assert logits.shape == (2, 5, 3) and logits.dtype == jnp.float32
    assert [f.shape for f in features] == [(2, 112, 3, 2), (2, 38, 3, 8), (2, 13, 3, 8), (2, 5, 3, 8), (2, 5, 3, 8)]
    assert np.all(np.isfinite(np.asarray(logits)))


def test_each_column_is_judged_on_its_own_samples():
    """Changing the samples of column j (positions = j mod period) moves only column j's logits."""
    period, t = 5, 600
    audio = np.asarray(jax.random.normal(jax.random.key(0), (1, t)))
    disc = PeriodDiscriminator(period, channels=2, max_channels=4)
    variables = disc.init(jax.random.key(1), audio)
    base = np.asarray(disc.apply(variables, audio)[0])
    for column in range(period):
        changed = audio.copy()
        changed[0, column::period] += 1.0
        diff = np.abs(np.asarray(disc.apply(variables, changed)[0]) - base).max(axis=(0, 1))
        assert diff[column] > 0 and np.all(np.delete(diff, column) == 0), (column, diff)


def test_multi_period_and_codec_discriminator_outputs():
    audio = jax.random.normal(jax.random.key(0), (2, 512))
    mpd = MultiPeriodDiscriminator((2, 3, 5), channels=2, max_channels=4)
    outputs = mpd.apply(mpd.init(jax.random.key(1), audio), audio)
    assert [o[0].shape[-1] for o in outputs] == [2, 3, 5]

    plain = CodecDiscriminator(num_scales=1, wave_channels=2, wave_max_channels=4, wave_downsample=(4,),
                               stft_resolutions=((64, 16),), stft_channels=2, stft_max_channels=4, stft_dilations=(1,))
    with_periods = dataclasses.replace(plain, periods=(2, 3), period_channels=2, period_max_channels=4)
    variables = with_periods.init(jax.random.key(2), audio)
    assert set(variables["params"]) == {"multi_scale", "stft", "period"}
    assert set(variables["params"]["period"]) == {"period_2", "period_3"}
    plain_outputs = plain.apply(plain.init(jax.random.key(2), audio), audio)
    assert len(with_periods.apply(variables, audio)) == len(plain_outputs) + 2

    only = CodecDiscriminator(num_scales=0, stft_resolutions=(), periods=(2,), period_channels=2, period_max_channels=4)
    assert len(only.apply(only.init(jax.random.key(3), audio), audio)) == 1
    with pytest.raises(ValueError, match="needs num_scales > 0, an stft resolution or a period"):
        CodecDiscriminator(num_scales=0, stft_resolutions=()).init(jax.random.key(3), audio)
    with pytest.raises(ValueError, match="period >= 2 shorter than the audio"):
        PeriodDiscriminator(1).init(jax.random.key(3), audio)


def test_the_config_adds_the_period_discriminators():
    """`--config.model.discriminator.periods=(2,3)` reaches the training config; the shipped configs have none."""
    from soundstorm_jax.training.codec_task import codec_train_config
    from soundstorm_jax.training.config import load_config

    config = load_config("codec_tiny")
    assert tuple(codec_train_config(config).discriminator.periods) == ()
    config.model.discriminator.periods = (2, 3)
    config.model.discriminator.period_channels = 4
    disc = codec_train_config(config).discriminator
    assert tuple(disc.periods) == (2, 3) and disc.period_channels == 4
