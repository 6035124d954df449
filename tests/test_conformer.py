"""The rotary Conformer: shapes, options, padding, scan vs unrolled, precision."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soundstorm_jax import Conformer
from soundstorm_jax.model import ConvModule
from soundstorm_jax.model.depthwise import depthwise_conv1d
from soundstorm_jax.model.layers import apply_rotary, rotary_angles
from tiny import TINY_CONFORMER, padding_mask


def run(conformer: Conformer, x, mask, params=None, seed=0):
    if params is None:
        params = jax.jit(conformer.init)(jax.random.key(seed), x, mask)
    return params, jax.jit(conformer.apply)(params, x, mask)


def inputs(b=2, n=12, d=32, seed=0, lengths=None):
    x = jax.random.normal(jax.random.key(seed), (b, n, d))
    mask = padding_mask(lengths if lengths is not None else [n] * b, n)
    return x, jnp.asarray(mask)


@pytest.mark.parametrize("options", [
    dict(),
    dict(num_residual_streams=4, value_residual=True),
    dict(conv_causal=True, conv_kernel_size=4),
    dict(remat_policy="full"),
    dict(remat_policy="dots_no_batch", scan_layers=False),
    dict(attention_impl="einsum"),
])
def test_shapes_and_finite(options):
    conformer = Conformer(**dict(TINY_CONFORMER, **options))
    x, mask = inputs(lengths=[12, 7])
    params, y = run(conformer, x, mask)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))
    # Parameters are stacked over layers (one scan body) and logically annotated.
    kernel = params["params"]["layers"]["ff1"]["wi"]["kernel"]
    assert isinstance(kernel, nn.Partitioned) and kernel.names == ("layers", "embed", "mlp")
    assert kernel.value.shape == (TINY_CONFORMER["depth"], 32, 64)


@pytest.mark.parametrize("options", [dict(), dict(num_residual_streams=4, value_residual=True)])
def test_scan_and_unrolled_give_the_same_outputs(options):
    x, mask = inputs(lengths=[12, 9])
    params, scanned = run(Conformer(**dict(TINY_CONFORMER, **options)), x, mask)
    _, unrolled = run(Conformer(**dict(TINY_CONFORMER, scan_layers=False, **options)), x, mask, params)
    np.testing.assert_allclose(scanned, unrolled, atol=1e-5)


@pytest.mark.parametrize("options", [dict(), dict(num_residual_streams=4, value_residual=True),
                                     dict(conv_causal=True)])
def test_padding_never_reaches_valid_frames(options):
    """Valid frames' outputs do not depend on how much padding follows or what it holds."""
    conformer = Conformer(**dict(TINY_CONFORMER, **options))
    x, _ = inputs(b=1, n=10)
    params, short = run(conformer, x, jnp.ones((1, 10), bool))
    garbage = 100.0 * jax.random.normal(jax.random.key(7), (1, 6, 32))
    padded = jnp.concatenate([x, garbage], axis=1)
    _, long = run(conformer, padded, jnp.asarray(padding_mask([10], 16)), params)
    np.testing.assert_allclose(short[0], long[0, :10], atol=1e-5)


def test_layers_differ_and_depth_matters():
    x, mask = inputs()
    _, one = run(Conformer(**dict(TINY_CONFORMER, depth=1)), x, mask)
    _, two = run(Conformer(**dict(TINY_CONFORMER, depth=2)), x, mask)
    assert not np.allclose(one, two)


def test_depthwise_conv_ignores_padding_and_matches_grouped_conv():
    conv = ConvModule(dim=8, kernel_size=5)
    x = jax.random.normal(jax.random.key(0), (1, 9, 8))
    mask = jnp.asarray(padding_mask([6], 9))
    params = conv.init(jax.random.key(1), x, mask)
    out = conv.apply(params, x, mask)
    poisoned = x.at[:, 6:].set(1e6)
    np.testing.assert_allclose(out[:, :6], conv.apply(params, poisoned, mask)[:, :6], atol=1e-5)

    # Our shifted-sum depthwise conv equals XLA's grouped convolution ("same" padding).
    p = nn.unbox(params)["params"]
    h = jax.random.normal(jax.random.key(2), (1, 9, 16))
    kernel, bias = p["depthwise_kernel"], p["depthwise_bias"]
    assert kernel.shape == (5, 16)
    ours = depthwise_conv1d(h, kernel, bias, (2, 2))
    reference = jax.lax.conv_general_dilated(h, kernel[:, None, :], (1,), [(2, 2)],
                                             dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=16) + bias
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_attention_with_dropout_path_matches_fused_path_when_deterministic():
    """The spelled-out attention (used for attention dropout) equals jax.nn.dot_product_attention."""
    from soundstorm_jax.model import Attention

    x, mask = inputs(lengths=[12, 5])
    angles = rotary_angles(12, 8)
    fused = Attention(32, heads=2, dim_head=8)
    # A vanishing dropout rate takes the explicit path while keeping every weight.
    explicit = Attention(32, heads=2, dim_head=8, dropout=1e-30, deterministic=False)
    params = fused.init(jax.random.key(0), x, mask, angles)
    out_fused, _ = fused.apply(params, x, mask, angles)
    out_explicit, _ = explicit.apply(params, x, mask, angles, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_allclose(out_fused, out_explicit, atol=1e-5)


def test_einsum_attention_equals_dot_product_attention():
    x, mask = inputs(lengths=[12, 7])
    params, fused = run(Conformer(**TINY_CONFORMER), x, mask)
    _, spelled = run(Conformer(**dict(TINY_CONFORMER, attention_impl="einsum")), x, mask, params)
    valid = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(fused)[valid], np.asarray(spelled)[valid], atol=1e-5)


def test_depthwise_conv_gradient_is_exact():
    """The hand-written backward pass equals autodiff of the plain shifted sum."""
    from soundstorm_jax.model.depthwise import shifted_sum

    for padding, n in [((2, 2), 9), ((4, 0), 9), ((2, 1), 9), ((0, 3), 9), ((3, 3), 2)]:
        k = sum(padding) + 1
        x = jax.random.normal(jax.random.key(0), (2, n, 5))
        w = jax.random.normal(jax.random.key(1), (k, 5))
        b = jax.random.normal(jax.random.key(2), (5,))
        ours = jax.grad(lambda *a: jnp.sum(jnp.sin(depthwise_conv1d(*a, padding))), argnums=(0, 1, 2))(x, w, b)
        plain = jax.grad(lambda x, w, b: jnp.sum(jnp.sin(shifted_sum(x, w, padding) + b)), argnums=(0, 1, 2))(x, w, b)
        for got, want in zip(ours, plain):
            np.testing.assert_allclose(got, want, atol=1e-5)


def test_depthwise_kernel_gradient_fft_equals_slices():
    """The CPU kernel gradient (an FFT cross-correlation) equals the k reductions used elsewhere."""
    from soundstorm_jax.model.depthwise import fft_size, kernel_gradient_by_fft, kernel_gradient_by_slices

    assert [fft_size(m) for m in (1, 7, 1039, 1054)] == [1, 8, 1080, 1080]
    for padding, n in [((15, 15), 100), ((15, 14), 37), ((30, 0), 64), ((0, 6), 5), ((4, 4), 3)]:
        k = sum(padding) + 1
        x = jax.random.normal(jax.random.key(0), (3, n, 4))
        grad = jax.random.normal(jax.random.key(1), (3, n, 4))
        np.testing.assert_allclose(kernel_gradient_by_fft(x, grad, padding, k),
                                   kernel_gradient_by_slices(x, grad, padding, k), atol=2e-4, rtol=1e-5)
    # platform_dependent needs both branches to give one type: float32, whatever the activations' dtype.
    x, grad = x.astype(jnp.bfloat16), grad.astype(jnp.bfloat16)
    assert kernel_gradient_by_fft(x, grad, (4, 4), 9).dtype == jnp.float32
    assert kernel_gradient_by_slices(x, grad, (4, 4), 9).dtype == jnp.float32


def test_spelled_attention_gradient_equals_autodiff():
    """The written-out attention backward equals autodiff of the plain softmax attention, masks included."""
    from soundstorm_jax.model.conformer import _attention_probs, spelled_attention

    def plain(q, k, v, mask):
        return jnp.einsum("bhqs,bshk->bqhk", _attention_probs(q, k, mask), v)

    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, weights = (jax.random.normal(key, (3, 7, 2, 4)) for key in keys)
    mask = jnp.arange(7)[None, :] < jnp.array([7, 4, 0])[:, None]   # full, padded, every key masked
    np.testing.assert_allclose(spelled_attention(q, k, v, mask), plain(q, k, v, mask), atol=1e-6)
    loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v, mask)) * weights)  # noqa: E731
    ours = jax.grad(loss(spelled_attention), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(plain), argnums=(0, 1, 2))(q, k, v)
    for got, expected in zip(ours, want):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.any(np.asarray(ours[1])[1, 4:])  # padded keys get no gradient


def test_rotary_is_relative():
    """Rotated q.k depends only on the distance between positions."""
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))
    angles = rotary_angles(10, 8)
    qs = apply_rotary(jnp.tile(q, (1, 10, 1, 1)), angles)
    ks = apply_rotary(jnp.tile(k, (1, 10, 1, 1)), angles)
    dots = jnp.einsum("bihd,bjhd->ij", qs, ks)
    np.testing.assert_allclose(dots[0, 3], dots[4, 7], rtol=1e-5)
    np.testing.assert_allclose(dots[2, 2], dots[9, 9], rtol=1e-5)


def test_bf16_compute_with_fp32_params():
    conformer = Conformer(**dict(TINY_CONFORMER, dtype=jnp.bfloat16, num_residual_streams=4, value_residual=True))
    x, mask = inputs(lengths=[12, 8])
    params, y = run(conformer, x, mask)
    assert y.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nn.unbox(params)))
    _, y32 = run(Conformer(**dict(TINY_CONFORMER, num_residual_streams=4, value_residual=True)), x, mask, params)
    np.testing.assert_allclose(y.astype(jnp.float32), y32, atol=0.15)


@pytest.mark.parametrize("bad, message", [
    (dict(attention_impl="flash"), "attention_impl"),
    (dict(remat_policy="some"), "remat_policy"),
    (dict(dim_head=7), "dim_head"),
    (dict(depth=0), "depth"),
])
def test_bad_options(bad, message):
    with pytest.raises(ValueError, match=message):
        Conformer(**dict(TINY_CONFORMER, **bad))
