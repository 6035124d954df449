"""LogMelTokenizer: weight-free log-mel frames' k-means ids with SemanticTokenizer's interface.

The features are `evaluation.features.log_mel`'s (per clip, numpy); the tokenizer computes them batched in jnp.
Small settings keep the compiles short: 16 kHz, 800 frames/s (hop 20), a 64-point FFT, 8 mel bands.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soundstorm_jax import SoundStorm
from soundstorm_jax.codec import SoundStream
from soundstorm_jax.evaluation.features import FeatureConfig, log_mel
from soundstorm_jax.semantic import (KMeansCodebook, LogMelConfig, LogMelTokenizer, SemanticTokenizer,
                                     load_semantic_tokenizer, log_mel_features, log_mel_variables)
from soundstorm_jax.semantic.dataset import make_semantic_fn, semantic_identity
from tiny import tiny_net

CONFIG = LogMelConfig(sample_rate=16000, frame_rate=800.0, n_fft=64, n_mels=8)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
LENGTHS = (1000, 733, 40, 1)


def speech_like(seed: int, samples: int) -> np.ndarray:
    """A few chirps with an envelope: frames that differ from each other."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    tone = np.sin(2 * np.pi * (300 + 3000 * rng.random() * t) * t) + 0.3 * rng.normal(size=samples)
    return (0.3 * tone * (1 + np.sin(2 * np.pi * 7 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def clips():
    return [speech_like(i, n) for i, n in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def padded(clips):
    """(audio (4, 1000) with loud noise past each clip, lengths (4,))."""
    audio = np.random.default_rng(9).uniform(-1, 1, (len(clips), max(LENGTHS))).astype(np.float32)
    for i, clip in enumerate(clips):
        audio[i, :len(clip)] = clip
    return audio, np.array(LENGTHS, np.int32)


@pytest.fixture(scope="module")
def tokenizer(clips):
    frames = np.concatenate([log_mel(c, FeatureConfig(16000, 800.0, 64, 8)) for c in clips[:2]])
    centres = frames[np.linspace(0, len(frames) - 1, 12).astype(int)]  # 12 frames of the clips: ids all used
    return LogMelTokenizer(KMeansCodebook(centres), CONFIG, compiler_options=FAST_COMPILE)


def test_features_are_the_packages_log_mel_whatever_the_padding(clips, padded):
    audio, lengths = padded
    features, mask = log_mel_features(CONFIG, log_mel_variables(CONFIG), jnp.asarray(audio), jnp.asarray(lengths))
    assert features.shape == (4, 50, 8) and mask.shape == (4, 50)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), [50, 37, 2, 1])  # ceil(n / 20)
    for i, clip in enumerate(clips):
        expected = log_mel(clip, FeatureConfig(16000, 800.0, 64, 8))
        np.testing.assert_allclose(np.asarray(features[i, :len(expected)]), expected, atol=2e-5)
        assert not np.asarray(features[i, len(expected):]).any()  # padded frames are zeros
    raw = LogMelConfig(sample_rate=16000, frame_rate=800.0, n_fft=64, n_mels=8, normalize=False)
    unnormalised, _ = log_mel_features(raw, log_mel_variables(raw), jnp.asarray(audio[:1]), jnp.asarray(lengths[:1]))
    assert float(jnp.abs(unnormalised[0].mean(0)).max()) > 1.0  # normalising is what centres the bands


def test_ids_alone_equal_ids_batched_and_padding_never_changes_them(clips, padded, tokenizer):
    audio, lengths = padded
    ids, counts = tokenizer.tokenize(audio, sample_rate=16000, lengths=lengths, return_lengths=True)
    ids = np.asarray(ids)
    assert ids.dtype == np.int32 and ids.shape == (4, 50)
    np.testing.assert_array_equal(counts, [50, 37, 2, 1])
    for i, clip in enumerate(clips):
        alone = np.asarray(tokenizer.tokenize(clip[None]))
        np.testing.assert_array_equal(ids[i, :counts[i]], alone[0])
        assert (ids[i, counts[i]:] == -1).all()
    other = audio.copy()
    other[np.arange(audio.shape[1])[None, :] >= lengths[:, None]] = 0.0  # other padding, same ids
    np.testing.assert_array_equal(np.asarray(tokenizer.tokenize(other, lengths=lengths)), ids)
    assert len(np.unique(ids[0])) > 6  # the clip's frames fall to several centres


def test_rate_vocabulary_and_pooling(tokenizer):
    assert isinstance(tokenizer, SemanticTokenizer) and tokenizer.layer is None
    assert (tokenizer.sample_rate, tokenizer.rate, tokenizer.vocab_size, tokenizer.hop_length) == (16000, 800.0, 12, 20)
    np.testing.assert_array_equal(tokenizer.num_tokens([1, 20, 21, 1000]), [1, 1, 2, 50])
    pooled = LogMelTokenizer(tokenizer.kmeans, CONFIG, pool=2, pad_id=99, compiler_options=FAST_COMPILE)
    assert (pooled.rate, pooled.hop_length) == (400.0, 40)
    ids, counts = pooled.tokenize(np.ones((1, 50), np.float32) * 0.1, return_lengths=True)
    assert ids.shape == (1, 2) and list(counts) == [2]
    default = LogMelTokenizer(KMeansCodebook(np.zeros((4, 40), np.float32)))
    assert (default.sample_rate, default.rate, default.hop_length, default.config.n_fft) == (16000, 50.0, 320, 512)
    assert isinstance(load_semantic_tokenizer("log-mel", default.kmeans), LogMelTokenizer)


def test_dataset_ids_and_identity(clips, tokenizer):
    """make_semantic_fn (a dataset at 8 kHz: each clip resampled alone) and what the codes dataset records."""
    from soundstorm_jax.data import audio_io
    semantic_ids = make_semantic_fn(tokenizer, 8000)
    low = [audio_io.resample(c, 16000, 8000) for c in clips[:2]]
    batch = np.zeros((3, 500), np.float32)
    batch[0, :500], batch[1, :len(low[1])] = low[0], low[1]
    ids, counts = semantic_ids(batch, np.array([500, len(low[1]), 0]))
    assert list(counts) == [50, 37, 0]
    for i, clip in enumerate(low):
        alone = np.asarray(tokenizer.tokenize(audio_io.resample(clip, 8000, 16000)[None]))[0]
        np.testing.assert_array_equal(ids[i, :counts[i]], alone)
    identity = semantic_identity(tokenizer, checkpoint="log-mel", kmeans="km.npz")
    assert identity["checkpoint"] == "log-mel" and identity["layer"] is None and identity["log_mel"]["n_mels"] == 8


def test_bad_input_names_the_argument(tokenizer):
    with pytest.raises(ValueError, match=r"sample_rate=24000 Hz differs from the semantic tokenizer's 16000 Hz"):
        tokenizer.tokenize(np.zeros((1, 100), np.float32), sample_rate=24000)
    with pytest.raises(ValueError, match=r"audio must be finite; found nan at \(batch, sample\) \(0, 3\)"):
        tokenizer.tokenize(np.where(np.arange(100) == 3, np.nan, 0.0)[None].astype(np.float32))
    with pytest.raises(ValueError, match=r"audio must have at least one example and one sample"):
        tokenizer.tokenize(np.zeros((1, 0), np.float32))
    with pytest.raises(ValueError, match=r"for a single clip pass audio\[None\]"):
        tokenizer.tokenize(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 100\]"):
        tokenizer.tokenize(np.zeros((2, 100), np.float32), lengths=np.array([100, 0]))
    with pytest.raises(ValueError, match=r"kmeans has centres of dimension 5, but log-mel with n_mels=8 gives 8-dim"):
        LogMelTokenizer(KMeansCodebook(np.zeros((3, 5), np.float32)), CONFIG)
    with pytest.raises(ValueError, match=r"pad_id must be an int outside the ids \[0, 12\), got 0"):
        LogMelTokenizer(tokenizer.kmeans, CONFIG, pad_id=0)
    with pytest.raises(ValueError, match=r"config must be a LogMelConfig"):
        LogMelTokenizer(tokenizer.kmeans, FeatureConfig())
    with pytest.raises(ValueError, match=r"sample_rate / frame_rate must be a whole number of samples"):
        LogMelConfig(frame_rate=75.0, sample_rate=16000)
    with pytest.raises(ValueError, match=r"n_mels must be a positive int, got 0"):
        LogMelConfig(n_mels=0)


def test_soundstorm_tokenizes_log_mel_in_the_step(tokenizer):
    """SoundStorm(semantic_tokenizer=LogMelTokenizer) as with a HuBERT tokenizer: a 16 kHz codec with hop 4
    (4000 frames/s) over 800 tokens/s: 5 frames per token."""
    codec = SoundStream(codebook_size=16, rq_num_quantizers=3, strides=(2, 2), channels=4, dim=16,
                        target_sample_hz=16000)
    model = SoundStorm(tiny_net(num_semantic_token_ids=12, acoustic_per_semantic=5.0), steps=2, codec=codec,
                       semantic_tokenizer=tokenizer)
    audio = np.stack([speech_like(5, 800), speech_like(6, 800)])
    variables = jax.jit(model.init)({"params": jax.random.key(0), "masking": jax.random.key(1)}, audio)
    assert set(variables["semantic_tokenizer"]) == {"encoder", "centers"}
    assert set(variables["params"]) == {"net", "codec"}  # the window and filterbank are not trained
    lengths = np.array([800, 600], np.int32)
    in_step = jax.jit(lambda v, a, n: model.apply(v, a, n, method=SoundStorm.tokenize_semantic))(
        variables, audio, lengths)
    np.testing.assert_array_equal(np.asarray(in_step), np.asarray(tokenizer.tokenize(audio, lengths=lengths)))
