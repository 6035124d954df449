"""One EMA codebook: nearest-code quantisation, k-means init, dead-code replacement.

The codebook is *not* a parameter: it lives in the ``'vq_stats'`` variable
collection and changes only through the exponential-moving-average update below,
never through gradients. Training calls the module with ``train=True`` and
``mutable=['vq_stats']`` and an rng stream ``'vq'``; evaluation is read-only.

Per training call, in this order:
  1. first call only (``initted`` is False): k-means (k-means++ seeding, Lloyd
     iterations) on the batch's vectors sets the codebook (``kmeans_init=True``),
     so codes start where the data is;
  2. every vector is assigned its nearest code (with the codebook as it is now);
  3. EMA update: ``cluster_size <- d * cluster_size + (1 - d) * counts`` and
     ``embed_sum <- d * embed_sum + (1 - d) * sum of assigned vectors``; a code
     used in this batch moves to ``embed_sum / cluster_size``, an unused code
     keeps its vector (its two statistics decay together);
  4. dead codes (``cluster_size < threshold_ema_dead_code``) are replaced by
     random vectors of this batch, with ``cluster_size = threshold`` so they get
     a few steps to attract data before they count as dead again.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def squared_distances(x: jax.Array, codebook: jax.Array) -> jax.Array:
    """x ``(n d)``, codebook ``(k d)`` -> squared Euclidean distances ``(n k)``."""
    return (jnp.sum(x * x, axis=-1, keepdims=True) - 2.0 * x @ codebook.T
            + jnp.sum(codebook * codebook, axis=-1)[None, :])


def nearest_code(x: jax.Array, codebook: jax.Array) -> jax.Array:
    """x ``(n d)`` -> index of the nearest code ``(n,)`` int32."""
    return jnp.argmin(squared_distances(x, codebook), axis=-1).astype(jnp.int32)


def sample_vectors(key: jax.Array, x: jax.Array, num: int) -> jax.Array:
    """``num`` rows of x ``(n d)`` drawn at random; without replacement when ``n >= num``."""
    n = x.shape[0]
    if n >= num:
        idx = jax.random.permutation(key, n)[:num]
    else:
        idx = jax.random.randint(key, (num,), 0, n)
    return x[idx]


def kmeans_plus_plus(key: jax.Array, x: jax.Array, num_clusters: int) -> jax.Array:
    """k-means++ seeding: x ``(n d)`` -> initial centroids ``(k d)``.

    Each next centroid is a data vector drawn with probability proportional to its
    squared distance to the nearest centroid so far, so well-separated clusters
    each get a seed (plain random seeding often puts two in one cluster).
    """
    n = x.shape[0]
    first = x[jax.random.randint(jax.random.fold_in(key, 0), (), 0, n)]
    centroids = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(first)
    min_d2 = jnp.sum((x - first) ** 2, axis=-1)

    def pick(i, carry):
        centroids, min_d2 = carry
        # log(0) = -inf excludes chosen vectors; the tiny floor keeps the draw defined when all are chosen.
        idx = jax.random.categorical(jax.random.fold_in(key, i), jnp.log(min_d2 + 1e-30))
        centroids = centroids.at[i].set(x[idx])
        return centroids, jnp.minimum(min_d2, jnp.sum((x - x[idx]) ** 2, axis=-1))

    centroids, _ = jax.lax.fori_loop(1, num_clusters, pick, (centroids, min_d2))
    return centroids


def kmeans(key: jax.Array, x: jax.Array, num_clusters: int, num_iters: int) -> tuple[jax.Array, jax.Array]:
    """Lloyd's k-means on x ``(n d)`` with k-means++ seeding -> (centroids ``(k d)``, cluster sizes ``(k,)``).

    An empty cluster keeps its centroid.
    """
    centroids = kmeans_plus_plus(key, x, num_clusters)

    def assign(c):
        onehot = jax.nn.one_hot(nearest_code(x, c), num_clusters, dtype=x.dtype)
        return onehot.sum(axis=0), onehot.T @ x

    def step(_, c):
        counts, sums = assign(c)
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], c)

    centroids = jax.lax.fori_loop(0, num_iters, step, centroids)
    counts, _ = assign(centroids)
    return centroids, counts


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantiser with an EMA codebook of ``codebook_size`` x ``dim``.

    ``__call__(x (b n d), train)`` -> ``(quantized (b n d), codes (b n) int32, commit_loss ())``.
    ``quantized`` carries straight-through gradients to ``x``; ``commit_loss`` is
    ``mean((x - sg(quantized))**2)`` (unweighted; the caller weights it).
    """
    codebook_size: int
    dim: int
    decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 10
    threshold_ema_dead_code: float = 2.0

    def setup(self):
        def init_codebook():
            # Used as-is only when kmeans_init=False; otherwise overwritten by k-means.
            return jax.random.normal(self.make_rng('params'), (self.codebook_size, self.dim), jnp.float32)

        self.embed = self.variable('vq_stats', 'embed', init_codebook)
        self.embed_sum = self.variable('vq_stats', 'embed_sum', lambda: self.embed.value)
        self.cluster_size = self.variable('vq_stats', 'cluster_size',
                                          lambda: jnp.ones((self.codebook_size,), jnp.float32))
        self.initted = self.variable('vq_stats', 'initted', lambda: jnp.asarray(not self.kmeans_init))

    @property
    def codebook(self) -> jax.Array:
        """``(k d)`` float32."""
        return self.embed.value

    def lookup(self, codes: jax.Array) -> jax.Array:
        """codes ``(...)`` int -> code vectors ``(... d)``; a negative code gives the zero vector."""
        vectors = self.embed.value[jnp.clip(codes, 0, self.codebook_size - 1)]
        return jnp.where((codes >= 0)[..., None], vectors, 0.0)

    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
        if x.shape[-1] != self.dim:
            raise ValueError(f"VectorQuantizer expects last axis {self.dim}, got shape {x.shape}")
        lead = x.shape[:-1]
        x = x.astype(jnp.float32)
        flat = x.reshape(-1, self.dim)
        updating = train and not self.is_initializing()
        if updating and not self.is_mutable_collection('vq_stats'):
            raise ValueError("train=True updates the EMA codebooks: call apply(..., mutable=['vq_stats'])")
        if updating and self.kmeans_init:
            self._init_from_kmeans_once(jax.lax.stop_gradient(flat))

        codebook = self.embed.value
        codes = nearest_code(jax.lax.stop_gradient(flat), codebook)
        quantized = codebook[codes]
        if updating:
            self._ema_update(jax.lax.stop_gradient(flat), codes)
            self._replace_dead_codes(jax.lax.stop_gradient(flat))

        commit_loss = jnp.mean((flat - jax.lax.stop_gradient(quantized)) ** 2)
        # Straight-through: forward value is the code, gradient flows to x unchanged.
        quantized = flat + jax.lax.stop_gradient(quantized - flat)
        return quantized.reshape(*lead, self.dim), codes.reshape(lead), commit_loss

    def _init_from_kmeans_once(self, flat: jax.Array) -> None:
        key = self.make_rng('vq')

        def run_kmeans(_):
            centroids, counts = kmeans(key, flat, self.codebook_size, self.kmeans_iters)
            return centroids, centroids * counts[:, None], counts

        def keep(_):
            return self.embed.value, self.embed_sum.value, self.cluster_size.value

        embed, embed_sum, cluster_size = jax.lax.cond(self.initted.value, keep, run_kmeans, None)
        self.embed.value, self.embed_sum.value, self.cluster_size.value = embed, embed_sum, cluster_size
        self.initted.value = jnp.asarray(True)

    def _ema_update(self, flat: jax.Array, codes: jax.Array) -> None:
        onehot = jax.nn.one_hot(codes, self.codebook_size, dtype=jnp.float32)
        counts = onehot.sum(axis=0)
        d = self.decay
        cluster_size = d * self.cluster_size.value + (1.0 - d) * counts
        embed_sum = d * self.embed_sum.value + (1.0 - d) * (onehot.T @ flat)
        used = counts > 0
        # A used code has cluster_size >= (1 - d) > 0, so the division is safe where it is kept.
        mean = embed_sum / jnp.maximum(cluster_size, 1e-12)[:, None]
        self.embed.value = jnp.where(used[:, None], mean, self.embed.value)
        self.embed_sum.value = embed_sum
        self.cluster_size.value = cluster_size

    def _replace_dead_codes(self, flat: jax.Array) -> None:
        threshold = self.threshold_ema_dead_code
        if threshold <= 0:
            return
        dead = self.cluster_size.value < threshold
        samples = sample_vectors(self.make_rng('vq'), flat, self.codebook_size)
        self.embed.value = jnp.where(dead[:, None], samples, self.embed.value)
        self.embed_sum.value = jnp.where(dead[:, None], samples * threshold, self.embed_sum.value)
        self.cluster_size.value = jnp.where(dead, threshold, self.cluster_size.value)
