"""SemanticTokenizer: ids from the transformers fixture's features, pooling, loading from files, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from soundstorm_jax.semantic import (KMeansCodebook, SpeechEncoderConfig, fairseq_name, hubert_large,
                                     import_speech_encoder, mean_pool, nearest_center)
from soundstorm_jax.semantic.tokenizer import SemanticTokenizer, load_semantic_tokenizer
from soundstorm_jax.semantic.weights import _CONVERT, _entries, infer_config
from soundstorm_jax.semantic.encoder import param_shapes

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "hubert_base_tiny.npz"
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def config(fixture):
    return SpeechEncoderConfig.from_transformers(json.loads(str(fixture["config"]))["transformers_config"])


@pytest.fixture(scope="module")
def codebook(fixture):
    """Centres = 8 of the layer-1 frames (of different clips and times), so every id is used."""
    frames = fixture["hidden"][1][[0, 0, 0, 1, 1, 2, 2, 0], [3, 20, 41, 5, 30, 2, 19, 70]]
    return KMeansCodebook(frames)


@pytest.fixture(scope="module")
def tokenizer(fixture, config, codebook):
    return SemanticTokenizer(config, import_speech_encoder(FIXTURE, config), codebook, layer=1,
                             compiler_options=FAST_COMPILE)


def test_ids_are_the_nearest_centres_of_the_reference_features(fixture, tokenizer, codebook):
    ids, lengths = tokenizer.tokenize(fixture["audio"], sample_rate=16000, lengths=fixture["lengths"],
                                      return_lengths=True)
    ids = np.asarray(ids)
    assert ids.dtype == np.int32 and ids.shape == (3, 79)
    np.testing.assert_array_equal(lengths, fixture["frame_lengths"])
    expected = np.asarray(nearest_center(fixture["hidden"][1], codebook.centers))
    valid = np.arange(79)[None, :] < lengths[:, None]
    np.testing.assert_array_equal(ids[valid], expected[valid])
    assert (ids[~valid] == -1).all() and len(np.unique(ids[valid])) == 8
    assert (tokenizer.sample_rate, tokenizer.rate, tokenizer.vocab_size, tokenizer.hop_length) == (16000, 800.0, 8, 20)


def test_pooling_halves_the_rate(fixture, config, codebook, tokenizer):
    pooled = SemanticTokenizer(config, tokenizer.variables, codebook, layer=1, pool=2, pad_id=99,
                               compiler_options=FAST_COMPILE)
    assert pooled.rate == tokenizer.rate / 2 and pooled.hop_length == 40
    ids, lengths = pooled.tokenize(fixture["audio"], lengths=fixture["lengths"], return_lengths=True)
    mask = np.arange(79)[None, :] < fixture["frame_lengths"][:, None]
    features, pooled_mask = mean_pool(fixture["hidden"][1], mask, 2)
    expected = np.where(pooled_mask, np.asarray(nearest_center(features, codebook.centers)), 99)
    np.testing.assert_array_equal(np.asarray(ids), expected)
    np.testing.assert_array_equal(lengths, np.asarray(pooled_mask).sum(-1))


def test_load_from_files(fixture, config, codebook, tokenizer, tmp_path):
    codebook.save(tmp_path / "km.npz")
    transformers_config = json.loads(str(fixture["config"]))["transformers_config"]
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(transformers_config))
    (tmp_path / "model" / "model.safetensors").write_bytes(FIXTURE.with_suffix(".safetensors").read_bytes())
    loaded = load_semantic_tokenizer(tmp_path / "model", tmp_path / "km.npz", layer=1, compiler_options=FAST_COMPILE)
    assert loaded.config == config
    audio = fixture["audio"][:, :900]
    np.testing.assert_array_equal(np.asarray(loaded.tokenize(audio)), np.asarray(tokenizer.tokenize(audio)))


def test_config_is_inferred_from_a_checkpoint():
    large = hubert_large()
    shapes = param_shapes(large)
    fake = {}
    for name, path, kind in _entries(large, shapes):
        target = shapes
        for key in path:
            target = target[key]
        fake[name + (".weight" if kind == "weight_norm" else "")] = np.broadcast_to(
            np.float32(0), _CONVERT[kind][0](tuple(target.shape)))
    assert infer_config(fake) == large
    assert infer_config({fairseq_name(k, large): v for k, v in fake.items()}) == large
    with np.load(FIXTURE) as data:  # the tiny model's kernels are not the released ones
        tiny = {k[6:]: data[k] for k in data.files if k.startswith("param/")}
    with pytest.raises(ValueError, match=r"cannot infer the conv strides for conv kernels \(10, 3, 2\).*config="):
        infer_config(tiny)


def test_bad_input_is_refused_before_compiling(fixture, tokenizer):
    tokenizer.tokenize(fixture["audio"][:2, :800])
    compiled = tokenizer._tokenize._cache_size()
    audio = fixture["audio"][:2, :800]
    nan = audio.copy()
    nan[1, 5] = np.nan
    cases = [
        (dict(audio=audio, sample_rate=24000), r"sample_rate=24000 Hz differs from the semantic tokenizer's 16000 Hz"),
        (dict(audio=nan), r"audio must be finite"),
        (dict(audio=np.zeros((2, 0), np.float32)), r"audio must have at least one example and one sample"),
        (dict(audio=audio[0]), r"audio must have shape \(batch, samples\)"),
        (dict(audio=audio, lengths=np.array([800, 20])), r"audio rows \[1\] hold \[20\] samples, fewer than one "
                                                         r"frame of the encoder \(30 samples"),
        (dict(audio=audio[:, :20]), r"audio rows \[0, 1\] hold \[20, 20\] samples, fewer than one frame"),
        (dict(audio=audio, lengths=np.array([800, 900])), r"lengths must lie in \[1, 800\]"),
        (dict(audio=audio, lengths=np.array([800.0, 700.0])), r"lengths must be integer"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            tokenizer.tokenize(**kwargs)
    assert tokenizer._tokenize._cache_size() == compiled


def test_bad_setup_names_the_argument(fixture, config, codebook, tokenizer, tmp_path):
    variables = tokenizer.variables
    with pytest.raises(ValueError, match=r"kmeans has centres of dimension 31, but layer 1 of this encoder gives "
                                         r"32-dim features"):
        SemanticTokenizer(config, variables, KMeansCodebook(np.zeros((4, 31), np.float32)), layer=1)
    with pytest.raises(ValueError, match=r"layer must be a hidden-state index in \[0, 2\].*got 3"):
        SemanticTokenizer(config, variables, codebook, layer=3)
    with pytest.raises(ValueError, match=r"pad_id must be an int outside the ids \[0, 8\), got 3"):
        SemanticTokenizer(config, variables, codebook, layer=1, pad_id=3)
    with pytest.raises(ValueError, match="pool must be a positive int"):
        SemanticTokenizer(config, variables, codebook, layer=1, pool=0)
    with pytest.raises(ValueError, match=r"variables do not fit SpeechEncoder\(config\)"):
        SemanticTokenizer(config.replace(num_hidden_layers=3), variables, codebook, layer=1)
    codebook.save(tmp_path / "km.npz")
    other = config.replace(hidden_size=48, num_conv_pos_embedding_groups=4)
    with pytest.raises(ValueError, match=r"kmeans has centres of dimension 32, but layer 1 of this encoder gives 48"):
        load_semantic_tokenizer(FIXTURE, tmp_path / "km.npz", layer=1, config=other)
    KMeansCodebook(np.zeros((4, 48), np.float32)).save(tmp_path / "km48.npz")
    with pytest.raises(ValueError, match=r"^checkpoint: the transformers checkpoint does not fit .*misshaped"):
        load_semantic_tokenizer(FIXTURE, tmp_path / "km48.npz", layer=1, config=other)
    with pytest.raises(ValueError, match=r"layer must be a hidden-state index in \[0, 2\].*got -1"):
        load_semantic_tokenizer(FIXTURE, tmp_path / "km.npz", layer=-1, config=config)
