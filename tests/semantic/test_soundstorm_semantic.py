"""SoundStorm with a semantic tokenizer attached: semantic ids computed from raw audio inside the step.

The tiny random-weight HuBERT fixture (16 kHz, 800 tokens/s) with a k-means of 8 of its layer-1 frames, a tiny
16 kHz codec (hop 4: 4000 frames/s, so 5 frames per token) and a tiny network.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soundstorm_jax import SoundStorm
from soundstorm_jax.codec import SoundStream
from soundstorm_jax.semantic import KMeansCodebook, SemanticTokenizer, SpeechEncoderConfig, import_speech_encoder
from tiny import tiny_net

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "hubert_base_tiny.npz"


def tiny_codec(sample_rate=16000):
    return SoundStream(codebook_size=16, rq_num_quantizers=3, strides=(2, 2), channels=4, dim=16,
                       target_sample_hz=sample_rate)


@pytest.fixture(scope="module")
def tokenizer():
    with np.load(FIXTURE) as data:
        config = SpeechEncoderConfig.from_transformers(json.loads(str(data["config"]))["transformers_config"])
        centres = data["hidden"][1][[0, 0, 0, 1, 1, 2, 2, 0], [3, 20, 41, 5, 30, 2, 19, 70]]
    return SemanticTokenizer(config, import_speech_encoder(FIXTURE, config), KMeansCodebook(centres), layer=1)


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = SoundStorm(tiny_net(num_semantic_token_ids=8, acoustic_per_semantic=5.0), steps=3, codec=tiny_codec(),
                       wav2vec=tokenizer)  # the seed's keyword
    with np.load(FIXTURE) as data:
        audio = data["audio"][:2, :800].astype(np.float32)
    variables = jax.jit(model.init)({"params": jax.random.key(0), "masking": jax.random.key(1)}, audio)
    return model, variables, audio


def test_ids_computed_in_the_step_are_the_tokenizers_and_give_the_same_loss(setup, tokenizer):
    model, variables, audio = setup
    assert model.semantic_tokenizer is tokenizer and model.wav2vec is None
    assert set(variables["params"]) == {"net", "codec"}  # The tokenizer's weights are not trained.
    assert set(variables["semantic_tokenizer"]) == {"encoder", "centers"}
    mask = np.arange(200)[None, :] < np.array([200, 150])[:, None]  # 150 frames x hop 4 = 600 samples
    lengths = np.array([800, 600], np.int32)
    in_step = jax.jit(lambda v, a, n: model.apply(v, a, n, method=SoundStorm.tokenize_semantic))(
        variables, audio, lengths)
    expected = np.asarray(tokenizer.tokenize(audio, lengths=lengths))
    np.testing.assert_array_equal(np.asarray(in_step), expected)
    assert (expected[1, tokenizer.num_tokens([600])[0]:] == -1).all() and (expected[0] >= 0).all()

    codes = np.asarray(model.apply(variables, jnp.asarray(audio), method=lambda m, a: m.codec.encode(a)))
    from_audio = jax.jit(lambda v, a, m, k: model.apply(v, a, m, rngs={"masking": k})[0])
    from_ids = jax.jit(lambda v, c, m, s, k: model.apply(v, c, m, semantic_ids=s, rngs={"masking": k})[0])
    loss = from_audio(variables, audio, mask, jax.random.key(5))
    assert loss == from_ids(variables, codes, mask, expected, jax.random.key(5))
    # The ids condition the loss: other ids give another one.
    assert loss != from_ids(variables, codes, mask, (expected + 1) % 8, jax.random.key(5))
    # No gradient reaches the tokenizer (its ids still shape the loss: see above).
    grads = jax.jit(jax.grad(lambda t: from_audio(dict(variables, semantic_tokenizer=t), audio, mask,
                                                  jax.random.key(5))))(variables["semantic_tokenizer"])
    assert len(jax.tree.leaves(grads)) > 2 and all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_generate_takes_the_semantic_ids_from_audio(setup, tokenizer):
    model, variables, audio = setup
    clips = [audio[0], audio[1, :600]]
    from_audio = model.generate(variables, semantic_audio=clips, key=jax.random.key(0), decode_audio=False)
    ids = np.asarray(tokenizer.tokenize(audio, lengths=np.array([800, 600])))
    np.testing.assert_array_equal(model.semantic_audio_ids(variables, clips), ids)
    from_ids = model.generate(variables, semantic_ids=ids, key=jax.random.key(0), decode_audio=False)
    np.testing.assert_array_equal(np.asarray(from_audio), np.asarray(from_ids))
    valid = tokenizer.num_tokens([800, 600]) * 5  # 5 codec frames per token
    assert from_audio.shape == (2, valid[0], 3)
    assert (np.asarray(from_audio)[1, valid[1]:] == -1).all() and (np.asarray(from_audio)[1, :valid[1]] >= 0).all()
    with pytest.raises(ValueError, match="give semantic_ids or semantic_audio"):
        model.generate(variables, semantic_audio=clips, semantic_ids=ids, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"semantic_audio clips \[1\] hold \[20\] samples, fewer than one frame"):
        model.semantic_audio_ids(variables, [audio[0], audio[1, :20]])
    with pytest.raises(ValueError, match=r"semantic_audio\[1\] must be finite"):
        model.semantic_audio_ids(variables, [audio[0], np.full(600, np.nan, np.float32)])


def test_mismatched_tokenizers_are_refused_naming_what_differs(tokenizer):
    net = tiny_net(num_semantic_token_ids=8, acoustic_per_semantic=5.0)
    cases = [
        (dict(net=tiny_net(num_semantic_token_ids=9, acoustic_per_semantic=5.0), codec=tiny_codec()),
         r"vocabulary: tokenizer 8 ids != network num_semantic_token_ids 9"),
        (dict(net=tiny_net(num_semantic_token_ids=8, acoustic_per_semantic=2.0), codec=tiny_codec()),
         r"rate: codec 4000 frames/s / tokenizer 800 tokens/s = 5 frames per token != network "
         r"acoustic_per_semantic 2"),
        (dict(net=net, codec=tiny_codec(24000)), r"sample rate: codec 24000 Hz != tokenizer 16000 Hz"),
        (dict(net=net), r"semantic_tokenizer tokenizes raw audio, whose codes need a codec"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            SoundStorm(semantic_tokenizer=tokenizer, **kwargs)
    with pytest.raises(ValueError, match="give the semantic tokenizer once"):
        SoundStorm(net, codec=tiny_codec(), semantic_tokenizer=tokenizer, wav2vec=tokenizer)
    with pytest.raises(ValueError, match="semantic_tokenizer must be a soundstorm_jax.semantic.SemanticTokenizer"):
        SoundStorm(net, codec=tiny_codec(), semantic_tokenizer=object())
    model = SoundStorm(net, codec=tiny_codec(), semantic_tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"audio has 20 samples, fewer than one frame of the semantic tokenizer"):
        model.check_inputs(np.zeros((1, 20), np.float32))
    with pytest.raises(ValueError, match="semantic_audio needs a semantic tokenizer attached"):
        SoundStorm(net, codec=tiny_codec()).semantic_audio_ids({}, np.zeros((1, 800), np.float32))
