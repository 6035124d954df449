"""One codec interface: SoundStream and EnCodec, as Flax modules and as host-side codecs, are ``Codec``s
with the same properties, and SoundStorm checks a codec against its network by those names."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codec_test_utils import FAST_COMPILE, simple_audio, tiny_soundstream
from soundstorm_jax import SoundStorm
from soundstorm_jax.codec import Codec, EnCodec, EnCodecCodec, SoundStream, SoundStreamCodec, load_encodec
from tiny import tiny_net

FIXTURE = Path(__file__).resolve().parents[1] / 'fixtures' / 'encodec_24khz.npz'
PROPERTIES = ("sample_rate", "hop_length", "frame_rate", "num_quantizers", "codebook_size", "grouped_quantizers")


@pytest.fixture(scope="module")
def soundstream_codec() -> SoundStreamCodec:
    """Freshly initialised weights: the interface's shapes and names, not reconstruction quality."""
    model = tiny_soundstream()
    variables = jax.jit(model.init)({"params": jax.random.key(0)}, jnp.zeros((1, 4 * model.hop_length)))
    return SoundStreamCodec(model, variables, compiler_options=FAST_COMPILE)


@pytest.fixture(scope="module")
def encodec_codec() -> EnCodecCodec:
    small = EnCodec(dimension=32, n_filters=4, target_bandwidths=(1.5, 3.0, 6.0), bandwidth=3.0)
    return load_encodec(FIXTURE, small, compiler_options=FAST_COMPILE)


@pytest.mark.parametrize("module, expected", [
    (SoundStream(), dict(sample_rate=16000, hop_length=320, frame_rate=50.0, num_quantizers=12,
                         codebook_size=1024, grouped_quantizers=1)),
    (tiny_soundstream(), dict(sample_rate=16000, hop_length=8, frame_rate=2000.0, num_quantizers=3,
                              codebook_size=32, grouped_quantizers=2)),
    (EnCodec(), dict(sample_rate=24000, hop_length=320, frame_rate=75.0, num_quantizers=8, codebook_size=1024,
                     grouped_quantizers=1)),
    (EnCodec(bandwidth=24.0), dict(sample_rate=24000, hop_length=320, frame_rate=75.0, num_quantizers=32,
                                   codebook_size=1024, grouped_quantizers=1)),
])
def test_codec_modules_implement_the_interface(module, expected):
    assert isinstance(module, Codec)
    assert {name: getattr(module, name) for name in PROPERTIES} == expected
    assert module.hop_length * module.frame_rate == module.sample_rate
    # The seed's constructor fields stay and agree with the interface's names.
    assert module.target_sample_hz == module.sample_rate


@pytest.mark.parametrize("codec_name", ["soundstream_codec", "encodec_codec"])
def test_host_codecs_implement_the_interface_and_round_trip(codec_name, request):
    codec = request.getfixturevalue(codec_name)
    assert isinstance(codec, Codec)
    assert {name: getattr(codec, name) for name in PROPERTIES} == {
        name: getattr(codec.model, name) for name in PROPERTIES}
    assert codec.hop_length * codec.frame_rate == codec.sample_rate
    # The shapes the interface promises: ceil(samples / hop) frames, G * Q columns; decode trims to `length`.
    samples = 3 * codec.hop_length + 5
    audio = simple_audio(np.random.default_rng(0), 2, samples)
    codes = np.asarray(codec.encode(audio, sample_rate=codec.sample_rate))
    assert codes.shape == (2, 4, codec.grouped_quantizers * codec.num_quantizers)
    assert codes.min() >= 0 and codes.max() < codec.codebook_size
    assert np.asarray(codec.decode(codes, length=samples)).shape == (2, samples)
    fewer = np.asarray(codec.encode(audio, num_levels=1))
    assert fewer.shape == (2, 4, codec.grouped_quantizers)
    assert np.asarray(codec.decode(fewer)).shape == (2, 4 * codec.hop_length)


def test_an_object_without_the_interface_is_not_a_codec():
    class NoGroups:  # everything but grouped_quantizers
        sample_rate, hop_length, frame_rate, num_quantizers, codebook_size = 16000, 320, 50.0, 3, 16

        def encode(self, audio, sample_rate=None, num_levels=None):
            return audio

        def decode(self, codes, length=None):
            return codes

    assert not isinstance(NoGroups(), Codec)
    with pytest.raises(ValueError, match="codec must implement soundstorm_jax.codec.Codec.*got NoGroups"):
        SoundStorm(tiny_net(), codec=NoGroups())


def test_soundstorm_names_every_layout_field_that_differs_from_the_network():
    with pytest.raises(ValueError, match=r"codebook_size: codec 32 != network 16; grouped_quantizers: codec 2 "
                                         r"!= network 1$"):
        SoundStorm(tiny_net(), codec=tiny_soundstream())
    SoundStorm(tiny_net(codebook_size=32, grouped_quantizers=2), codec=tiny_soundstream())
