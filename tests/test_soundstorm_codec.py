"""SoundStorm with a codec attached: raw-audio training, seconds=, waveforms out."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soundstorm_jax import SoundStorm
from soundstorm_jax.codec import SoundStream
from soundstorm_jax.maskgit.soundstorm import attach_codec_variables
from tiny import tiny_net

HOP = 4


def tiny_codec(**overrides):
    kwargs = dict(codebook_size=16, rq_num_quantizers=3, strides=(2, 2), channels=4, dim=16, target_sample_hz=400)
    return SoundStream(**dict(kwargs, **overrides))


@pytest.fixture(scope="module")
def setup():
    model = SoundStorm(tiny_net(), steps=3, soundstream=tiny_codec())
    audio = (0.1 * np.random.default_rng(0).normal(size=(2, 40))).astype(np.float32)
    variables = jax.jit(model.init)({"params": jax.random.key(0), "masking": jax.random.key(1)}, audio)
    return model, variables, audio


def test_raw_audio_loss_equals_the_loss_on_its_codes_and_leaves_the_codec_alone(setup):
    model, variables, audio = setup
    assert set(variables["params"]) == {"net", "codec"} and "codec" in variables["vq_stats"]
    codes = model.apply(variables, jnp.asarray(audio), method=lambda m, a: m.codec.encode(a))
    assert codes.shape == (2, 40 // HOP, 3)
    loss_fn = jax.jit(lambda v, x, k: model.apply(v, x, rngs={"masking": k})[0])
    np.testing.assert_allclose(loss_fn(variables, audio, jax.random.key(5)),
                               loss_fn(variables, np.asarray(codes), jax.random.key(5)), rtol=1e-6)
    grads = jax.jit(jax.grad(lambda p: loss_fn(dict(variables, params=p), audio, jax.random.key(5))))(
        variables["params"])
    codec_grads = jax.tree.leaves(nn.unbox(grads["codec"]))
    assert codec_grads and all(float(jnp.abs(g).max()) == 0.0 for g in codec_grads)
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(nn.unbox(grads["net"]))) > 0


def test_generate_seconds_returns_trimmed_waveforms(setup):
    model, variables, _ = setup
    waveforms, codes = model.generate(variables, seconds=0.1, batch_size=2, lengths=[10, 7], key=jax.random.key(0),
                                      return_codes=True)
    assert codes.shape == (2, 10, 3)                          # 0.1 s * 400 Hz // hop 4
    assert [w.shape for w in waveforms] == [(40,), (28,)]
    assert all(w.dtype == np.float32 and np.all(np.isfinite(w)) for w in waveforms)
    decoded = model.apply(variables, codes[:1], method=lambda m, c: m.codec.decode(c))
    np.testing.assert_allclose(waveforms[0], np.asarray(decoded)[0], atol=1e-6)
    only_codes = model.generate(variables, seconds=0.1, batch_size=2, key=jax.random.key(0), decode_audio=False)
    assert only_codes.shape == (2, 10, 3)


def test_attach_trained_codec_variables(setup):
    model, variables, audio = setup
    codec = tiny_codec()
    trained = jax.jit(codec.init)(jax.random.key(42), audio)
    merged = attach_codec_variables(variables, {k: trained[k] for k in ("params", "vq_stats")})
    ours = model.apply(merged, jnp.asarray(audio), method=lambda m, a: m.codec.encode(a))
    theirs = codec.apply(trained, jnp.asarray(audio), method=SoundStream.encode)
    np.testing.assert_array_equal(ours, theirs)
    other = jax.jit(tiny_codec(dim=8).init)(jax.random.key(1), audio)
    with pytest.raises(ValueError, match="do not match"):
        attach_codec_variables(variables, {"params": other["params"]})


def test_codec_errors(setup):
    model, variables, audio = setup
    with pytest.raises(ValueError, match="codebook_size: codec 32 != network 16; num_quantizers: codec 4 != network 3"):
        SoundStorm(tiny_net(), codec=tiny_codec(codebook_size=32, rq_num_quantizers=4))
    with pytest.raises(ValueError, match="not both"):
        SoundStorm(tiny_net(), codec=tiny_codec(), soundstream=tiny_codec())
    with pytest.raises(ValueError, match="no codec is attached"):
        SoundStorm(tiny_net()).init({"params": jax.random.key(0), "masking": jax.random.key(1)}, audio)
    bad = audio.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="audio must be finite"):
        model.apply(variables, bad, rngs={"masking": jax.random.key(0)})
    with pytest.raises(ValueError, match="mask must have shape"):
        model.apply(variables, audio, np.ones((2, 40), bool), rngs={"masking": jax.random.key(0)})
    with pytest.raises(ValueError, match="not both"):
        model.generate(variables, 10, seconds=1.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="seconds must be a positive"):
        model.generate(variables, seconds=-1.0, key=jax.random.key(0))
