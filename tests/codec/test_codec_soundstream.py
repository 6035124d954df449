"""SoundStream: shapes for several strides and lengths, round trip and trimming, causality, bad input."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codec_test_utils import FAST_COMPILE, SAMPLE_RATE, run_once, simple_audio, tiny_soundstream
from soundstorm_jax.codec import SoundStream, SoundStreamCodec, codec_from_state
from soundstorm_jax.codec.conv_layers import Conv1d, ConvTranspose1d


def test_default_config_matches_the_paper():
    model = SoundStream()
    assert model.hop_length == 320 and model.target_sample_hz == 16000 and model.frame_rate == 50.0
    assert model.num_quantizers == 12 and model.codebook_size == 1024 and model.num_code_columns == 12


@pytest.mark.parametrize("strides, length, groups, causal, attn_depth, dtype", [
    ((2, 2), 1, 1, True, 0, jnp.float32),
    ((2, 2), 37, 1, False, 1, jnp.float32),
    ((2, 4), 64, 2, True, 1, jnp.bfloat16),
    ((2, 4), 65, 2, False, 0, jnp.float32),
    ((3, 5), 149, 1, True, 1, jnp.float32),
    ((2, 4, 5), 1000, 2, False, 0, jnp.bfloat16),
])
def test_shapes_for_strides_and_lengths(strides, length, groups, causal, attn_depth, dtype):
    """Traced only (no compile): shapes of init, encode, decode and the training forward."""
    model = tiny_soundstream(strides=strides, rq_groups=groups, causal=causal, attn_depth=attn_depth,
                             attn_window_size=3, dtype=dtype)
    hop = math.prod(strides)
    frames = -(-length // hop)
    audio = jax.ShapeDtypeStruct((3, length), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), audio)
    codes = jax.eval_shape(lambda v, a: model.apply(v, a, method='encode'), variables, audio)
    assert codes.shape == (3, frames, groups * model.num_quantizers) and codes.dtype == jnp.int32
    decoded = jax.eval_shape(lambda v, c: model.apply(v, c, method='decode'), variables, codes)
    assert decoded.shape == (3, frames * hop) and decoded.dtype == jnp.float32
    trimmed = jax.eval_shape(lambda v, c: model.apply(v, c, length, method='decode'), variables, codes)
    assert trimmed.shape == (3, length)
    coarse = jax.eval_shape(lambda v, a: model.apply(v, a, num_levels=2, method='encode'), variables, audio)
    assert coarse.shape == (3, frames, groups * 2)
    out, _ = jax.eval_shape(lambda v, a: model.apply(v, a, train=True, mutable=['vq_stats'],
                                                     rngs={'vq': jax.random.key(0)}), variables, audio)
    assert out.audio.shape == (3, length) and out.codes.shape == (3, frames, groups * model.num_quantizers)
    assert out.num_levels.shape == (3,) and out.commit_loss.shape == ()
    assert model.hop_length == hop and model.num_frames(length) == frames
    # Parameters stay float32 whatever the compute dtype.
    assert {p.dtype for p in jax.tree.leaves(variables['params'])} == {jnp.dtype(jnp.float32)}


@pytest.fixture(scope="module")
def codec(trained_codec) -> SoundStreamCodec:
    return codec_from_state(trained_codec[1], compiler_options=FAST_COMPILE)


def test_codec_properties(codec):
    assert (codec.sample_rate, codec.hop_length, codec.frame_rate) == (16000, 8, 2000.0)
    assert (codec.num_quantizers, codec.codebook_size, codec.grouped_quantizers) == (3, 32, 2)


def test_encode_decode_round_trip_pads_and_trims(codec):
    audio = simple_audio(np.random.default_rng(5), 2, 203)  # 203 = 25 hops + 3 samples
    codes = codec.encode(audio, sample_rate=SAMPLE_RATE)
    assert codes.shape == (2, 26, 6) and codes.dtype == jnp.int32
    assert int(codes.min()) >= 0 and int(codes.max()) < 32
    full = codec.decode(codes)
    trimmed = codec.decode(codes, length=203)
    assert full.shape == (2, 208) and trimmed.shape == (2, 203)
    np.testing.assert_array_equal(np.asarray(trimmed), np.asarray(full[:, :203]))
    assert np.isfinite(np.asarray(full)).all()
    # Encoding pads with zeros: the explicitly zero-padded clip gives the same codes.
    padded = np.pad(audio, ((0, 0), (0, 5)))
    np.testing.assert_array_equal(np.asarray(codec.encode(padded)), np.asarray(codes))
    # Fewer levels: the first level of each group (group-major columns 0 and 3) decodes too.
    coarse = codec.decode(np.asarray(codes)[..., [0, 3]], length=203)
    assert coarse.shape == (2, 203) and np.isfinite(np.asarray(coarse)).all()
    assert np.abs(np.asarray(coarse) - np.asarray(trimmed)).max() > 1e-4


def test_causal_codec_does_not_look_ahead(codec):
    """Changing audio from frame 10 on leaves codes of frames < 10 alone; likewise for decoding."""
    hop = codec.hop_length
    audio = simple_audio(np.random.default_rng(6), 2, 26 * hop)  # same shapes as the round trip: no new compile
    changed = audio.copy()
    changed[:, 10 * hop:] = np.random.default_rng(7).uniform(-1, 1, (2, 16 * hop))
    codes, codes_changed = np.asarray(codec.encode(audio)), np.asarray(codec.encode(changed))
    np.testing.assert_array_equal(codes[:, :10], codes_changed[:, :10])
    assert (codes[:, 10:] != codes_changed[:, 10:]).any()
    decoded, decoded_changed = np.asarray(codec.decode(codes)), np.asarray(codec.decode(codes_changed))
    np.testing.assert_allclose(decoded[:, :10 * hop], decoded_changed[:, :10 * hop], atol=1e-6)
    assert np.abs(decoded[:, 10 * hop:] - decoded_changed[:, 10 * hop:]).max() > 1e-4


@pytest.mark.parametrize("causal", [True, False])
def test_conv_padding_keeps_length_and_causality(causal):
    """Impulse responses of a strided conv and a transposed conv: lengths t/s and t*s, causal or centred."""
    stride, t = 4, 32
    down, up = Conv1d(2, 2 * stride, stride=stride, causal=causal), ConvTranspose1d(2, stride, causal=causal)
    impulse = jnp.zeros((1, t, 1)).at[0, 16].set(1.0)
    frames = jnp.zeros((1, t // stride, 1)).at[0, 4].set(1.0)

    def run(impulse, frames):
        key = jax.random.key(0)
        return (down.apply(down.init(key, impulse), impulse), up.apply(up.init(key, frames), frames))

    y_down, y_up = run_once(run, impulse, frames)
    assert y_down.shape == (1, t // stride, 2) and y_up.shape == (1, t * stride // stride, 2)
    hit_down = np.flatnonzero(np.abs(np.asarray(y_down[0])).max(-1) > 0)
    hit_up = np.flatnonzero(np.abs(np.asarray(y_up[0])).max(-1) > 0)
    if causal:
        # Output frame j sees samples < (j + 1) * stride only; sample 16 reaches frames 4 and 5.
        assert hit_down.tolist() == [4, 5]
        # Frame 4 reaches output samples [16, 24) and nothing earlier.
        assert hit_up.min() == 16 and hit_up.max() < 24
    else:
        # Centred: sample 16 reaches frame 3 (looks ahead) and 4.
        assert hit_down.tolist() == [3, 4]
        assert hit_up.min() == 16 - stride // 2 and hit_up.max() < 24 + stride // 2


BAD_AUDIO = [
    (np.full((2, 50), np.nan, np.float32), "audio must be finite"),
    (np.concatenate([np.zeros((1, 9)), [[np.inf]]], axis=1).astype(np.float32),
     r"found inf at \(batch, sample\) \(0, 9\)"),
    (np.zeros(50, np.float32), r"shape \(batch, samples\).*audio\[None\]"),
    (np.zeros((1, 1, 50), np.float32), r"audio must have shape \(batch, samples\)"),
    (np.zeros((2, 0), np.float32), "at least one example and one sample"),
    (np.zeros((2, 50), np.int16), "must be floating point"),
]


@pytest.mark.parametrize("audio, message", BAD_AUDIO)
def test_bad_audio_is_refused_before_compiling(codec, audio, message):
    compiled_before = codec._encode._cache_size()
    with pytest.raises(ValueError, match=message):
        codec.encode(audio)
    assert codec._encode._cache_size() == compiled_before


def test_wrong_sample_rate_is_refused(codec):
    with pytest.raises(ValueError, match="sample_rate=44100 Hz differs.*sample rate, 16000 Hz.*resample"):
        codec.encode(np.zeros((1, 80), np.float32), sample_rate=44100)


def _codes(levels=6, frames=3, value=1, dtype=np.int32):
    return np.full((2, frames, levels), value, dtype)


BAD_CODES = [
    (_codes(value=32), r"codes must lie in \[0, 32\); found 32 at \(batch, frame, level\) \(0, 0, 0\)"),
    (_codes(value=-1), r"found -1"),
    (_codes(levels=8), "too many levels: 8 columns = 4 levels x 2 groups.*at most 3 levels"),
    (_codes(levels=3), "multiple of groups=2"),
    (_codes(dtype=np.float32), "must be integer code ids"),
    (np.zeros((2, 8), np.int32), r"shape \(batch, frames, levels\)"),
    (_codes(frames=0), "at least one example, frame and level"),
]


@pytest.mark.parametrize("codes, message", BAD_CODES)
def test_bad_codes_are_refused_before_compiling(codec, codes, message):
    compiled_before = codec._decode._cache_size()
    with pytest.raises(ValueError, match=message):
        codec.decode(codes)
    assert codec._decode._cache_size() == compiled_before


def test_bad_trim_length_and_num_levels_are_refused(codec):
    with pytest.raises(ValueError, match=r"length must be in \[1, 24\]"):
        codec.decode(_codes(), length=25)
    with pytest.raises(ValueError, match="length must be a Python int"):
        codec.decode(_codes(), length=2.5)
    with pytest.raises(ValueError, match=r"num_levels must be in \[1, 3\]"):
        codec.encode(np.zeros((1, 80), np.float32), num_levels=4)


def test_linen_methods_check_shapes_while_tracing(codec):
    """The checks also guard ``model.apply`` under ``jax.jit``: they run at trace time, before compiling."""
    model, variables = codec.model, codec.variables
    with pytest.raises(ValueError, match=r"audio must have shape \(batch, samples\)"):
        jax.jit(lambda v, a: model.apply(v, a, method='encode'))(variables, jnp.zeros((4,)))
    with pytest.raises(ValueError, match="too many levels"):
        jax.jit(lambda v, c: model.apply(v, c, method='decode'))(variables, jnp.zeros((1, 2, 8), jnp.int32))
