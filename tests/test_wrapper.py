"""ConformerWrapper: embeddings, conditioning, per-column heads."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soundstorm_jax.model import resample_in_time
from tiny import padding_mask, random_codes, tiny_net


def init(net, codes, **kwargs):
    return jax.jit(lambda: net.init(jax.random.key(0), codes, **kwargs))()


def test_logits_shape_and_column_selection():
    net = tiny_net(grouped_quantizers=2)
    codes = random_codes(0, (2, 10, 6))
    params = init(net, codes)
    apply = jax.jit(net.apply, static_argnames="return_embeddings")
    full, embeddings = apply(params, codes, return_embeddings=True)
    assert full.shape == (2, 10, 6, 16) and full.dtype == jnp.float32
    assert embeddings.shape == (2, 10, 6, 32)
    shared = apply(params, codes, columns=jnp.array([4, 1]))
    np.testing.assert_allclose(shared, full[:, :, [4, 1]], atol=1e-5)
    per_example = apply(params, codes, columns=jnp.array([[0, 3], [2, 5]]))
    np.testing.assert_allclose(per_example[0], full[0][:, [0, 3]], atol=1e-5)
    np.testing.assert_allclose(per_example[1], full[1][:, [2, 5]], atol=1e-5)
    # The self-conditioning source is the sum of every head's output.
    source = jax.jit(lambda p, c: net.apply(p, net.apply(p, c, method="hidden"), method="self_cond_source"))(
        params, codes)
    np.testing.assert_allclose(source, embeddings.sum(axis=2), atol=1e-4)


def test_group_embeddings_sum_levels_and_concatenate_groups():
    net = tiny_net(num_quantizers=2, grouped_quantizers=2)
    codes = random_codes(1, (1, 4, 4))
    params = init(net, codes)
    mask = jnp.ones((1, 4), bool)
    got = net.apply(params, codes, mask, method="embed_codes")
    p = nn.unbox(params)["params"]
    table = p["code_embed"]["embedding"]
    rows = codes + np.arange(4) * 17                      # one block of K + 1 ids per column
    group0 = table[rows[..., 0]] + table[rows[..., 1]]
    group1 = table[rows[..., 2]] + table[rows[..., 3]]
    projected = jnp.concatenate([group0, group1], -1) @ p["group_proj"]["kernel"] + p["group_proj"]["bias"]
    mean = projected.mean(-1, keepdims=True)
    var = ((projected - mean) ** 2).mean(-1, keepdims=True)
    expected = (projected - mean) / jnp.sqrt(var + 1e-5) * p["group_norm"]["scale"] + p["group_norm"]["bias"]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_padded_frames_are_read_as_mask_tokens():
    net = tiny_net()
    codes = random_codes(2, (1, 6, 3))
    params = init(net, codes)
    mask = jnp.asarray(padding_mask([4], 6))
    embedded = net.apply(params, codes, mask, method="embed_codes")
    with_mask_ids = codes.copy()
    with_mask_ids[0, 4:] = 16
    masked = net.apply(params, with_mask_ids, mask, method="embed_codes")
    np.testing.assert_allclose(embedded, masked)


def test_resampling_matches_linear_interpolation_and_excludes_padding():
    x = jax.random.normal(jax.random.key(0), (1, 5, 3))
    valid = jnp.ones((1, 5), bool)
    up = resample_in_time(x, valid, 10)
    # PyTorch's align_corners=False positions: src = (j + 0.5) / 2 - 0.5, clamped at 0.
    src = np.clip((np.arange(10) + 0.5) / 2 - 0.5, 0, None)
    expected = np.stack([np.interp(src, np.arange(5), np.asarray(x[0, :, c])) for c in range(3)], -1)
    np.testing.assert_allclose(up[0], expected, atol=1e-6)
    np.testing.assert_allclose(resample_in_time(x, valid, 5), x)

    # Padding never blends in: only the valid tokens' values matter.
    valid = jnp.asarray(padding_mask([3], 5))
    poisoned = x.at[:, 3:].set(1e6)
    np.testing.assert_allclose(resample_in_time(x, valid, 10), resample_in_time(poisoned, valid, 10), atol=1e-5)
    out = resample_in_time(x, valid, 10)
    np.testing.assert_allclose(out[0, 5], x[0, 2], atol=1e-6)   # the edge repeats the last valid token
    assert np.all(np.asarray(out[0, 7:]) == 0)                  # frames that only see padding are zero


def test_semantic_conditioning_at_twice_the_rate():
    net = tiny_net(num_semantic_token_ids=10, acoustic_per_semantic=2.0, semantic_pad_id=-1)
    codes = random_codes(3, (2, 12, 3))
    semantic = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, -1, -1, -1]])
    params = init(net, codes, semantic_ids=semantic)
    cond = jax.jit(lambda p, s: net.apply(p, s, 12, method="semantic_condition"))(params, semantic)
    assert cond.shape == (2, 12, 32)
    table = nn.unbox(params)["params"]["semantic_embed"]["embedding"]
    np.testing.assert_allclose(cond[0, 0], table[1], atol=1e-6)
    np.testing.assert_allclose(cond[0, 2], 0.75 * table[2] + 0.25 * table[1], atol=1e-6)
    # Three valid tokens cover frames 0..5 (frame 5 reads the last one, as at the end of an unpadded input);
    # the frames after them get no conditioning, however much padding follows.
    np.testing.assert_allclose(cond[1, 5], table[9], atol=1e-6)
    assert np.all(np.asarray(cond[1, 6:]) == 0)
    logits = jax.jit(lambda p: net.apply(p, codes, semantic_ids=semantic))(params)
    unconditioned = jax.jit(lambda p: net.apply(p, codes))(params)
    assert not np.allclose(logits, unconditioned)


def test_precomputed_condition_broadcasts_over_frames():
    net = tiny_net()
    codes = random_codes(4, (2, 8, 3))
    params = init(net, codes)
    cond = jax.random.normal(jax.random.key(1), (2, 32))
    a = net.apply(params, codes, cond=cond)
    b = net.apply(params, codes, cond=jnp.repeat(cond[:, None], 8, axis=1))
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(conformer=dict(dtype=jnp.bfloat16)), "set dtype on ConformerWrapper"),
    (dict(conformer=dict(colour="red")), "unknown options"),
    (dict(codebook_size=0), "codebook_size"),
    (dict(acoustic_per_semantic=0.0), "acoustic_per_semantic"),
])
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_net(**kwargs)


def test_every_parameter_has_logical_axis_names():
    """The trainer shards by rules over these names: no parameter may be left unannotated."""
    from soundstorm_jax import SoundStorm

    net = tiny_net(grouped_quantizers=2, num_semantic_token_ids=10,
                   conformer=dict(num_residual_streams=4, value_residual=True))
    model = SoundStorm(net, self_cond=True, self_token_critic=True)
    codes = random_codes(0, (1, 6, 6))
    variables = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "masking": jax.random.key(1)},
                                                  codes, semantic_ids=np.zeros((1, 3), np.int32)))
    leaves = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    unnamed = [leaf for leaf in leaves if not isinstance(leaf, nn.Partitioned)]
    assert not unnamed, f"{len(unnamed)} parameters without logical axis names"
    assert all(len(leaf.names) == leaf.value.ndim for leaf in leaves)
