"""Residual VQ properties: EMA updates, dead codes, k-means init, dropout, grouping, levels vs error."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codec_test_utils import compile_for_test, run_once
from soundstorm_jax.codec import GroupedResidualVQ, ResidualVQ, VectorQuantizer, draw_num_levels, kmeans


def _blobs(rng: np.random.Generator, centres: np.ndarray, per_centre: int, spread: float = 0.05) -> np.ndarray:
    x = np.repeat(centres, per_centre, axis=0) + spread * rng.normal(size=(len(centres) * per_centre,
                                                                          centres.shape[1]))
    return rng.permutation(x).astype(np.float32)


def _stats(codebook, cluster_size, embed_sum=None, initted=True):
    codebook = jnp.asarray(codebook, jnp.float32)
    cluster_size = jnp.asarray(cluster_size, jnp.float32)
    embed_sum = codebook * cluster_size[:, None] if embed_sum is None else jnp.asarray(embed_sum)
    return {'vq_stats': {'embed': codebook, 'embed_sum': embed_sum, 'cluster_size': cluster_size,
                         'initted': jnp.asarray(initted)}}


def test_ema_update_moves_exactly_the_used_codes():
    rng = np.random.default_rng(0)
    k, d, decay = 8, 3, 0.9
    codebook = rng.normal(size=(k, d)).astype(np.float32) * 3
    cluster_size = rng.uniform(5, 10, k).astype(np.float32)
    # Data near codes 1, 4 and 6 only.
    x = _blobs(rng, codebook[[1, 4, 6]], 5, spread=0.1)[None]  # (1, 15, d)
    vq = VectorQuantizer(k, d, decay=decay, kmeans_init=False, threshold_ema_dead_code=0.0)
    (quantized, codes, commit), new = run_once(
        lambda v, x: vq.apply(v, x, train=True, mutable=['vq_stats'], rngs={'vq': jax.random.key(0)}),
        _stats(codebook, cluster_size), jnp.asarray(x))
    new = jax.tree.map(np.asarray, new['vq_stats'])

    assigned = np.argmin(((x[0, :, None] - codebook[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(np.asarray(codes[0]), assigned)
    assert set(assigned) == {1, 4, 6}
    counts = np.bincount(assigned, minlength=k).astype(np.float32)
    sums = np.zeros((k, d), np.float32)
    np.add.at(sums, assigned, x[0])
    exp_size = decay * cluster_size + (1 - decay) * counts
    exp_sum = decay * codebook * cluster_size[:, None] + (1 - decay) * sums
    np.testing.assert_allclose(new['cluster_size'], exp_size, rtol=1e-6)
    np.testing.assert_allclose(new['embed_sum'], exp_sum, rtol=1e-5, atol=1e-6)
    used = counts > 0
    np.testing.assert_allclose(new['embed'][used], exp_sum[used] / exp_size[used, None], rtol=1e-5)
    # Unused codes keep their vectors bit for bit; used codes moved.
    np.testing.assert_array_equal(new['embed'][~used], codebook[~used])
    assert np.all(np.abs(new['embed'][used] - codebook[used]).max(axis=1) > 1e-4)
    # Outputs were computed with the codebook before the update, straight-through in value.
    np.testing.assert_allclose(np.asarray(quantized[0]), codebook[assigned], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(commit), np.mean((x[0] - codebook[assigned]) ** 2), rtol=1e-5)


def test_dead_codes_are_replaced_by_batch_vectors_and_live_codes_are_not():
    rng = np.random.default_rng(1)
    k, d, decay, threshold = 8, 4, 0.8, 2.0
    codebook = rng.normal(size=(k, d)).astype(np.float32) * 3
    # Codes 0-3 well used so far; codes 4-7 barely, and the batch only uses 0 and 2.
    cluster_size = np.array([10, 10, 10, 10, 2.2, 2.4, 0.1, 5.0], np.float32)
    x = _blobs(rng, codebook[[0, 2]], 6, spread=0.1)[None]
    vq = VectorQuantizer(k, d, decay=decay, kmeans_init=False, threshold_ema_dead_code=threshold)
    _, new = run_once(lambda v, x: vq.apply(v, x, train=True, mutable=['vq_stats'], rngs={'vq': jax.random.key(3)}),
                      _stats(codebook, cluster_size), jnp.asarray(x))
    new = jax.tree.map(np.asarray, new['vq_stats'])
    after_ema = decay * cluster_size + (1 - decay) * np.bincount(
        np.argmin(((x[0, :, None] - codebook[None]) ** 2).sum(-1), axis=1), minlength=k)
    dead = after_ema < threshold
    np.testing.assert_array_equal(dead, [False, False, False, False, True, True, True, False])
    # Dead codes: a vector of this batch, cluster size reset to the threshold, consistent sum.
    for code in np.flatnonzero(dead):
        assert np.min(np.abs(x[0] - new['embed'][code]).max(axis=1)) == 0.0, f"code {code} not a batch vector"
        assert new['cluster_size'][code] == threshold
        np.testing.assert_allclose(new['embed_sum'][code], new['embed'][code] * threshold, rtol=1e-6)
    # Live codes: exactly the plain EMA result (unused live codes 1, 3, 7 unchanged).
    np.testing.assert_allclose(new['cluster_size'][~dead], after_ema[~dead], rtol=1e-6)
    np.testing.assert_array_equal(new['embed'][[1, 3, 7]], codebook[[1, 3, 7]])


def test_kmeans_init_runs_once_on_the_first_training_batch():
    rng = np.random.default_rng(2)
    d, k = 2, 4
    centres_a = np.array([[5, 5], [-5, 5], [5, -5], [-5, -5]], np.float32)
    centres_b = centres_a + np.float32(20.0)
    vq = VectorQuantizer(k, d, decay=0.99, kmeans_init=True, kmeans_iters=10, threshold_ema_dead_code=0.0)
    batch_a = jnp.asarray(_blobs(rng, centres_a, 50)[None])
    variables = run_once(vq.init, jax.random.key(0), batch_a)
    assert not bool(variables['vq_stats']['initted'])
    # init does not fit the codebook; the first training call does.
    assert np.abs(np.asarray(variables['vq_stats']['embed'])).max() < 10

    train = compile_for_test(lambda v, x, key: vq.apply(v, x, train=True, mutable=['vq_stats'], rngs={'vq': key}),
                             variables, batch_a, jax.random.key(1))
    _, v1 = train(variables, batch_a, jax.random.key(1))
    embed = np.asarray(v1['vq_stats']['embed'])
    assert bool(v1['vq_stats']['initted'])
    # Each blob centre got one code (k-means, not random data points) and cluster sizes are the blob sizes.
    dist = np.abs(embed[:, None] - centres_a[None]).max(-1)
    assert sorted(np.argmin(dist, axis=1).tolist()) == [0, 1, 2, 3]
    assert dist.min(axis=1).max() < 0.05
    np.testing.assert_allclose(np.sort(np.asarray(v1['vq_stats']['cluster_size'])), [50] * 4, rtol=1e-6)

    # A second batch from elsewhere only nudges the codebook by EMA: no second k-means.
    _, v2 = train(v1, jnp.asarray(_blobs(rng, centres_b, 50)[None]), jax.random.key(2))
    embed2 = np.asarray(v2['vq_stats']['embed'])
    # k-means on batch B would put codes on B's centres (>= 9 away from every A centre).
    assert np.abs(embed2[:, None] - centres_b[None]).max(-1).min() > 5
    moved = np.abs(embed2 - embed).max(axis=1)
    assert moved.max() < 1.0 and (moved == 0).sum() == 3  # B all lands on one code; the others are untouched
    assert bool(v2['vq_stats']['initted'])


def test_kmeans_function_finds_separated_clusters():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 4)).astype(np.float32) * 10
    x = jnp.asarray(_blobs(rng, centres, 20, spread=0.01))
    found, counts = run_once(lambda key, x: kmeans(key, x, 3, 10), jax.random.key(0), x)
    assert np.abs(np.sort(np.asarray(found), axis=0) - np.sort(centres, axis=0)).max() < 0.05
    np.testing.assert_array_equal(np.sort(np.asarray(counts)), [20, 20, 20])


@pytest.fixture(scope="module")
def trained_rvq():
    """A 4-level RVQ fitted by a few EMA steps on Gaussian data, plus held-out data."""
    rvq = ResidualVQ(num_quantizers=4, codebook_size=16, dim=4, decay=0.8, threshold_ema_dead_code=0.5)
    rng = np.random.default_rng(4)
    data = lambda: jnp.asarray(rng.normal(size=(4, 64, 4)).astype(np.float32))
    variables = run_once(rvq.init, jax.random.key(0), data())
    train = compile_for_test(lambda v, x, key: rvq.apply(v, x, train=True, mutable=['vq_stats'], rngs={'vq': key})[1],
                             variables, data(), jax.random.key(0))
    for i in range(5):
        variables = train(variables, data(), jax.random.key(i))
    return rvq, variables, data()


def test_reconstruction_error_decreases_with_levels(trained_rvq):
    rvq, variables, held_out = trained_rvq
    errors = run_once(lambda v, x: [jnp.mean((rvq.apply(v, x, num_levels=n).quantized - x) ** 2) for n in range(1, 5)],
                      variables, held_out)
    errors = [float(e) for e in errors]
    base = float(jnp.mean(held_out ** 2))
    assert errors[0] < 0.7 * base, (base, errors)
    assert all(b < 0.9 * a for a, b in zip(errors, errors[1:])), errors


def test_quantizer_dropout_uses_only_the_first_k_levels(trained_rvq):
    rvq_plain, variables, x = trained_rvq
    rvq = rvq_plain.clone(dropout_prob=1.0, dropout_min_levels=2)

    def run(v, x, key):
        out, _ = rvq.apply(v, x, train=True, mutable=['vq_stats'], rngs={'vq': key})
        full = rvq.apply(v, x, train=False)
        # Per-example level counts forced to what dropout drew, without dropout.
        forced = rvq.apply(v, x, num_levels=out.num_levels)
        return out, full, forced, rvq.apply(v, out.codes, method='codes_to_embeddings')

    out, full, forced, from_codes = run_once(run, variables, x, jax.random.key(7))
    levels = np.asarray(out.num_levels)
    assert levels.min() >= 2 and levels.max() <= 4 and len(set(levels.tolist())) > 1, levels
    codes, full_codes = np.asarray(out.codes), np.asarray(full.codes)
    for b, k in enumerate(levels):
        np.testing.assert_array_equal(codes[b, :, :k], full_codes[b, :, :k])
        assert (codes[b, :, k:] == -1).all()
    # The output is the sum of the first k levels only.
    np.testing.assert_allclose(np.asarray(out.quantized), np.asarray(forced.quantized), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.quantized), np.asarray(from_codes), atol=1e-5)
    assert np.abs(np.asarray(out.quantized) - np.asarray(full.quantized)).max() > 1e-3


def test_dropout_draws_per_example_or_per_step():
    def draw_all(keys):
        draw = lambda **kw: jax.vmap(lambda k: draw_num_levels(k, 8, 6, **kw))(keys)
        return (draw(prob=1.0, min_levels=2, per_example=True), draw(prob=1.0, min_levels=1, per_example=False),
                draw(prob=0.0, min_levels=1, per_example=True))

    draws, per_step, never = map(np.asarray, run_once(draw_all, jax.random.split(jax.random.key(0), 20)))
    assert draws.min() == 2 and draws.max() == 6
    assert any(len(set(row)) > 1 for row in draws)
    assert all(len(set(row)) == 1 for row in per_step) and len(set(per_step[:, 0])) > 1
    np.testing.assert_array_equal(np.asarray(never), 6)


def test_grouped_codes_are_group_major_and_decode_to_the_quantized_output():
    groups, q, dim = 2, 3, 8
    grvq = GroupedResidualVQ(num_quantizers=q, codebook_size=8, dim=dim, groups=groups, kmeans_init=False)
    single = ResidualVQ(num_quantizers=q, codebook_size=8, dim=dim // groups, kmeans_init=False)
    x = jax.random.normal(jax.random.key(0), (2, 5, dim))

    def run(x):
        variables = grvq.init(jax.random.key(1), x)
        out = grvq.apply(variables, x)
        own = [single.apply({'vq_stats': variables['vq_stats'][f'rvqs_{g}']}, x[..., g * 4:(g + 1) * 4])
               for g in range(groups)]
        emb = grvq.apply(variables, out.codes, method='codes_to_embeddings')
        coarse = grvq.apply(variables, x, num_levels=1, method='embeddings_to_codes')
        return out, own, emb, coarse

    out, own, emb, coarse = run_once(run, x)
    assert out.codes.shape == (2, 5, groups * q) and out.codes.dtype == jnp.int32
    for g in range(groups):
        np.testing.assert_array_equal(np.asarray(out.codes[..., g * q:(g + 1) * q]), np.asarray(own[g].codes))
        np.testing.assert_allclose(np.asarray(out.quantized[..., g * 4:(g + 1) * 4]), np.asarray(own[g].quantized),
                                   atol=1e-6)
    np.testing.assert_allclose(np.asarray(emb), np.asarray(out.quantized), atol=1e-5)
    # The first level of each group alone: columns (g0 q0, g1 q0).
    np.testing.assert_array_equal(np.asarray(coarse), np.asarray(out.codes[..., ::q]))


def test_training_without_mutable_stats_is_refused():
    vq = VectorQuantizer(4, 2)
    x = jnp.ones((1, 3, 2))
    variables = {'vq_stats': {'embed': jnp.zeros((4, 2)), 'embed_sum': jnp.zeros((4, 2)),
                              'cluster_size': jnp.ones((4,)), 'initted': jnp.asarray(True)}}
    with pytest.raises(ValueError, match="mutable=\\['vq_stats'\\]"):
        vq.apply(variables, x, train=True, rngs={'vq': jax.random.key(0)})
