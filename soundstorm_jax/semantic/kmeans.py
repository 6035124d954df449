"""k-means codebooks for semantic tokens: mini-batch fitting in JAX, nearest-centre ids, files, pooling.

* ``fit_kmeans(features, num_clusters)``: greedy k-means++ seeding on the first
  ``init_size`` vectors, then mini-batch updates in which every centre is the
  running mean of all vectors ever assigned to it (scikit-learn's
  ``MiniBatchKMeans`` rule, learning rate ``1 / count``). ``features`` is an
  array ``'n d'`` (``num_epochs`` shuffled passes) or an iterable of batches
  ``'m d'`` (one pass; e.g. a generator over a dataset's encoder features), so the
  data never has to fit in memory. Batches are padded to ``batch_size`` with
  zero-weight rows, so one program serves every batch. With ``mesh=`` each
  batch's rows are split over the mesh's data axes and the centres replicated:
  every device assigns its share and the per-centre sums are reduced across
  devices inside the one compiled update (GSPMD), the same fit on any mesh.
* ``KMeansCodebook.assign``: each frame's nearest centre in L2 distance, as
  audiolm-pytorch's ``HubertWithKmeans`` (and scikit-learn's ``predict``) do;
  ``'... d'`` -> ``'...'`` int32.
* files: ``save``/``load_kmeans`` (``.npz`` with ``centers``), and
  ``load_kmeans`` of a scikit-learn ``KMeans``/``MiniBatchKMeans`` saved with
  joblib (what ``HubertWithKmeans`` loads; needs joblib and scikit-learn, only for
  that path) or a bare ``.npy`` of centres.
* ``mean_pool``: average ``factor`` consecutive valid frames (50 Hz -> 25 Hz with
  ``factor=2``, the paper's semantic-token rate) before assignment.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from soundstorm_jax import paths


def squared_distances(x: jax.Array, centers: jax.Array) -> jax.Array:
    """``'n d'``, ``'k d'`` -> ``'n k'``: ``||c||^2 - 2 x.c``, i.e. squared L2 distance minus ``||x||^2``.

    Leaving out ``||x||^2`` (constant per row) is what scikit-learn's ``predict`` does
    too; computing the same float32 expression makes near-ties break the same way.
    """
    dots = jnp.einsum("nd,kd->nk", x, centers, precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(centers * centers, axis=-1)[None, :] - 2.0 * dots


def nearest_center(features: jax.Array, centers: jax.Array) -> jax.Array:
    """features ``'... d'``, centres ``'k d'`` -> ids ``'...'`` int32 of the nearest centre (L2; ties: lowest id)."""
    flat = features.reshape(-1, features.shape[-1]).astype(jnp.float32)
    ids = jnp.argmin(squared_distances(flat, centers.astype(jnp.float32)), axis=-1)
    return ids.astype(jnp.int32).reshape(features.shape[:-1])


def mean_pool(features: jax.Array, mask: jax.Array, factor: int) -> tuple[jax.Array, jax.Array]:
    """``'b n d'``, mask ``'b n'`` -> (``'b m d'``, ``'b m'``), ``m = ceil(n / factor)``.

    Each output frame averages the valid frames among its ``factor`` inputs; it is
    valid when at least one of them is (a clip's last, partial group keeps its
    frames' mean, as ``ceil`` keeps the last code frame of a codec).
    """
    b, n, d = features.shape
    m = -(-n // factor)
    pad = m * factor - n
    weights = jnp.pad(mask, ((0, 0), (0, pad))).astype(jnp.float32).reshape(b, m, factor, 1)
    x = jnp.pad(features.astype(jnp.float32), ((0, 0), (0, pad), (0, 0))).reshape(b, m, factor, d)
    count = weights.sum(axis=2)
    pooled = (x * weights).sum(axis=2) / jnp.maximum(count, 1.0)
    return pooled.astype(features.dtype), count[..., 0] > 0


@dataclass(frozen=True)
class KMeansCodebook:
    """``centers`` ``(k, d)`` float32; ``assign(features '... d') -> '...'`` int32 ids in ``[0, k)``."""

    centers: np.ndarray

    def __post_init__(self):
        centers = np.asarray(self.centers)
        if centers.ndim != 2 or centers.shape[0] < 1 or centers.shape[1] < 1:
            raise ValueError(f"centers must have shape (num_clusters, dim), got {centers.shape}")
        if not np.all(np.isfinite(centers)):
            raise ValueError("centers must be finite")
        object.__setattr__(self, "centers", centers.astype(np.float32))

    @property
    def num_clusters(self) -> int:
        return int(self.centers.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centers.shape[1])

    def assign(self, features) -> jax.Array:
        if np.shape(features)[-1:] != (self.dim,):
            raise ValueError(f"features must have {self.dim} channels in their last axis (the centres' dim), "
                             f"got shape {np.shape(features)}")
        return _assign(jnp.asarray(features), jnp.asarray(self.centers))

    def inertia(self, features) -> float:
        """Sum of squared distances of ``features 'n d'`` to their nearest centres."""
        x = jnp.asarray(features, jnp.float32).reshape(-1, self.dim)
        return float(jnp.sum(jnp.maximum(jnp.min(squared_distances(x, jnp.asarray(self.centers)), -1)
                                         + jnp.sum(x * x, -1), 0.0)))

    def save(self, path) -> None:
        """An ``.npz`` with ``centers`` (``load_kmeans`` reads it back)."""
        with epath.Path(path).open("wb") as f:
            np.savez(f, centers=self.centers)


_assign = jax.jit(nearest_center)


def load_kmeans(path) -> KMeansCodebook:
    """``.npz`` (``centers``, as ``save`` writes), ``.npy`` (the centres), or a joblib-saved scikit-learn k-means."""
    path = os.fspath(path)
    if not epath.Path(path).is_file():
        raise FileNotFoundError(f"k-means file {path!r} does not exist")
    if path.endswith(".npz"):
        with np.load(paths.readable(path), allow_pickle=False) as data:
            if "centers" not in data.files:
                raise ValueError(f"k-means file {path!r} has no 'centers' array (it holds {data.files})")
            return KMeansCodebook(data["centers"])
    if path.endswith(".npy"):
        return KMeansCodebook(np.load(paths.readable(path), allow_pickle=False))
    try:
        import joblib
        import sklearn  # noqa: F401  (unpickling the estimator needs it)
        del sklearn
    except ImportError as err:
        raise ImportError(f"reading the scikit-learn k-means file {path!r} needs joblib and scikit-learn "
                          f"(pip install scikit-learn); or save its centres once where they are installed: "
                          f"np.save('centers.npy', joblib.load({path!r}).cluster_centers_), which loads without "
                          f"them") from err
    estimator = joblib.load(paths.readable(path))
    centers = getattr(estimator, "cluster_centers_", None)
    if centers is None:
        raise ValueError(f"{path!r} holds a {type(estimator).__name__} without cluster_centers_; expected a fitted "
                         f"scikit-learn KMeans or MiniBatchKMeans")
    return KMeansCodebook(np.asarray(centers))


@functools.partial(jax.jit, static_argnums=2)
def greedy_kmeans_plus_plus(key: jax.Array, x: jax.Array, num_clusters: int) -> jax.Array:
    """Greedy k-means++ seeding (scikit-learn's): x ``'n d'`` -> centres ``'k d'``.

    Each step draws ``2 + log(k)`` candidates with probability proportional to the
    squared distance to the nearest centre so far and keeps the one that lowers the
    total most; plain k-means++ (one draw) now and then seeds two centres in one
    cluster and none in another, which mini-batch updates do not repair.
    """
    n = x.shape[0]
    trials = 2 + int(np.log(num_clusters))
    sq = jnp.sum(x * x, axis=-1)

    def to(point):  # squared distances of every x to `point` ('... d' -> '... n')
        return jnp.maximum(sq + jnp.sum(point * point, -1)[..., None]
                           - 2 * jnp.einsum("nd,...d->...n", x, point, precision=jax.lax.Precision.HIGHEST), 0.0)

    first = x[jax.random.randint(jax.random.fold_in(key, 0), (), 0, n)]
    centers = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(first)

    def pick(i, carry):
        centers, closest = carry
        # log(0) = -inf: points already chosen are not drawn again; the floor keeps the draw defined.
        idx = jax.random.categorical(jax.random.fold_in(key, i), jnp.log(closest + 1e-30), shape=(trials,))
        candidates = jnp.minimum(closest[None], to(x[idx]))  # (trials, n)
        best = jnp.argmin(candidates.sum(-1))
        return centers.at[i].set(x[idx[best]]), candidates[best]

    centers, _ = jax.lax.fori_loop(1, num_clusters, pick, (centers, to(first)))
    return centers


@jax.jit
def _minibatch_update(centers, counts, batch, weights):
    """One mini-batch: assign, then move each centre to the running mean of everything it was ever given."""
    dist = squared_distances(batch, centers)
    ids = jnp.argmin(dist, axis=-1)
    onehot = jax.nn.one_hot(ids, centers.shape[0], dtype=jnp.float32) * weights[:, None]
    got = onehot.sum(axis=0)
    sums = jnp.einsum("nk,nd->kd", onehot, batch, precision=jax.lax.Precision.HIGHEST)
    counts = counts + got
    centers = centers + (sums - got[:, None] * centers) / jnp.maximum(counts, 1.0)[:, None]
    inertia = jnp.sum(weights * jnp.maximum(jnp.min(dist, -1) + jnp.sum(batch * batch, -1), 0.0))
    return centers, counts, inertia


def _batches(features, batch_size: int, num_epochs: int, rng: np.random.Generator) -> Iterable[np.ndarray]:
    if isinstance(features, (np.ndarray, jax.Array)):
        data = np.asarray(features, np.float32)
        for _ in range(num_epochs):
            order = rng.permutation(len(data))
            for start in range(0, len(data), batch_size):
                yield data[order[start:start + batch_size]]
    else:
        for batch in features:
            batch = np.asarray(batch, np.float32)
            for start in range(0, len(batch), batch_size):
                yield batch[start:start + batch_size]


def fit_kmeans(features, num_clusters: int, *, batch_size: int = 4096, num_epochs: int = 10,
               init_size: int | None = None, seed: int = 0, mesh=None,
               batch_axes: tuple[str, ...] = ("data", "fsdp")) -> KMeansCodebook:
    """Mini-batch k-means with k-means++ seeding on an array ``'n d'`` or an iterable of batches ``'m d'``.

    ``init_size`` vectors (default ``max(3 * num_clusters, batch_size)``, taken from
    the first batches) seed the centres; ``num_epochs`` applies to an array only.
    ``mesh`` (a ``jax.sharding.Mesh``): the batch rows are split over its ``batch_axes`` (those it has; the
    batch size must divide by their product), the centres replicated; None runs on one device.
    """
    rows = replicated = None
    if mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec
        axes = tuple(a for a in batch_axes if a in mesh.shape)
        ways = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if batch_size % ways:
            raise ValueError(f"batch_size={batch_size} must divide by the {ways} ways the mesh splits rows "
                             f"over {axes}")
        rows, replicated = NamedSharding(mesh, PartitionSpec(axes or None)), NamedSharding(mesh, PartitionSpec())
    if not isinstance(num_clusters, (int, np.integer)) or num_clusters < 1:
        raise ValueError(f"num_clusters must be a positive int, got {num_clusters!r}")
    if isinstance(features, (np.ndarray, jax.Array)) and len(features) < num_clusters:
        raise ValueError(f"features hold {len(features)} vectors, fewer than num_clusters={num_clusters}")
    rng = np.random.default_rng(seed)
    init_size = max(3 * num_clusters, batch_size) if init_size is None else init_size
    stream = iter(_batches(features, batch_size, num_epochs, rng))
    seen, total = [], 0
    for batch in stream:
        if batch.ndim != 2 or not np.all(np.isfinite(batch)):
            raise ValueError(f"features must be finite batches of shape (vectors, dim), got a batch of shape "
                             f"{batch.shape}" + ("" if batch.ndim != 2 else " with NaN or Inf"))
        seen.append(batch)
        total += len(batch)
        if total >= init_size:
            break
    if total < num_clusters:
        raise ValueError(f"features hold {total} vectors, fewer than num_clusters={num_clusters}")
    sample = np.concatenate(seen)
    centers = greedy_kmeans_plus_plus(jax.random.key(seed), jnp.asarray(sample[:init_size]), num_clusters)
    counts = jnp.zeros((num_clusters,), jnp.float32)
    if mesh is not None:
        centers, counts = jax.device_put((centers, counts), replicated)
    dim = sample.shape[1]
    for batch in [*seen, *stream]:
        if batch.ndim != 2 or batch.shape[1] != dim:
            raise ValueError(f"every features batch must have shape (vectors, {dim}), got {batch.shape}")
        weights = np.zeros(batch_size, np.float32)
        weights[:len(batch)] = 1.0
        padded = np.zeros((batch_size, dim), np.float32)
        padded[:len(batch)] = batch
        if mesh is not None:
            padded, weights = jax.device_put((padded, weights), rows)
        centers, counts, _ = _minibatch_update(centers, counts, jnp.asarray(padded), jnp.asarray(weights))
    return KMeansCodebook(np.asarray(centers))
