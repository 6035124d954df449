"""Semantic ids for a codes dataset: what ``soundstorm prepare --semantic`` computes beside the codes.

* ``make_semantic_fn(tokenizer, sample_rate)``: a ``CodesDataset`` ``semantic_fn``.
  It gets the padded batches the codec encodes (at the dataset's rate), cuts
  each clip back to its own samples, resamples it to the encoder's 16 kHz when
  the dataset is at another rate, re-pads the batch and tokenizes it; each
  clip's ids are what ``tokenizer.tokenize`` gives for that clip alone (the
  encoder's valid frames do not depend on padding).
* ``dataset_features``: a layer's (pooled) features of an audio dataset's
  clips, batched the same way, to fit a k-means on (``fit_dataset_kmeans``),
  and ``fitted_kmeans``, which reuses a codebook fitted earlier on the same
  features (a JSON record beside it says what it was fitted on) or fits and
  saves one.
* ``semantic_identity`` / ``semantic_metadata``: what the codes dataset
  records (its provenance, so other ids make it stale) and exposes to training
  (``semantic_rate``, ``semantic_vocab_size``; ``model_from_data`` turns them
  into ``num_semantic_token_ids`` and ``acoustic_per_semantic``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np
from etils import epath

from soundstorm_jax.data import audio_io, provenance
from soundstorm_jax.semantic.config import SpeechEncoderConfig
from soundstorm_jax.semantic.kmeans import KMeansCodebook, fit_kmeans, load_kmeans
from soundstorm_jax.semantic.log_mel import NAME as LOG_MEL
from soundstorm_jax.semantic.log_mel import LogMelConfig
from soundstorm_jax.semantic.tokenizer import SemanticTokenizer, layer_features

PAD_FRAMES = 32
"""Re-padded batches are a multiple of this many encoder tokens long, so few lengths compile."""

MAX_FIT_VECTORS = 200_000
"""At most this many feature vectors (about 67 min of 50 Hz frames; 600 MB at 768 dims) to fit a k-means on."""


def tree_sha256(tree: Any) -> str:
    """sha256 of a pytree's leaves: their paths, dtypes, shapes and bytes (the same weights in another file
    format hash alike; other weights under the same file name do not)."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.asarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _encoder_batch(audio: np.ndarray, lengths: np.ndarray, sample_rate: int, encoder_rate: int, multiple: int,
                   min_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """A dataset batch ``'b s'`` at ``sample_rate`` with valid samples ``(b,)`` -> (``'b s2'`` at ``encoder_rate``,
    valid samples ``(b,)``), each clip resampled alone; rows too short for one frame (padding rows) keep 0."""
    clips = [audio[i, :int(n)] for i, n in enumerate(lengths)]
    if sample_rate != encoder_rate:
        clips = [audio_io.resample(c, sample_rate, encoder_rate) if len(c) else c for c in clips]
    counts = np.array([len(c) for c in clips], np.int64)
    width = multiple * math.ceil(max(int(counts.max()), min_samples) / multiple)
    batch = np.zeros((len(clips), width), np.float32)
    for i, clip in enumerate(clips):
        batch[i, :len(clip)] = clip
    return batch, np.where(counts >= min_samples, counts, 0)


def make_semantic_fn(tokenizer: SemanticTokenizer, sample_rate: int) -> Callable[[np.ndarray, np.ndarray], tuple]:
    """A ``CodesDataset`` ``semantic_fn``: (audio ``'b s'`` at ``sample_rate``, valid samples ``(b,)``) ->
    (ids ``'b t'`` int32, tokens per clip ``(b,)``); clips shorter than one encoder frame get 0 tokens."""
    multiple = PAD_FRAMES * tokenizer.hop_length
    field = tokenizer.config.receptive_field

    def semantic_ids(audio: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch, valid = _encoder_batch(audio, lengths, sample_rate, tokenizer.sample_rate, multiple, field)
        # Rows without a frame are tokenized whole (zeros) and their ids dropped: the batch keeps one shape.
        ids = tokenizer.tokenize(batch, lengths=np.where(valid > 0, valid, batch.shape[1]).astype(np.int32))
        return np.asarray(ids), np.where(valid > 0, tokenizer.num_tokens(valid), 0)

    return semantic_ids


@functools.lru_cache(maxsize=8)
def _jitted_features(config: SpeechEncoderConfig, layer, pool: int):
    return jax.jit(functools.partial(layer_features, config, layer, pool))


def dataset_features(config: SpeechEncoderConfig, variables, layer, pool: int, audio_source, *, split: str = "train",
                     batch_size: int = 8, max_vectors: int = MAX_FIT_VECTORS, seed: int = 0,
                     progress: Callable = lambda it, **_: it) -> np.ndarray:
    """Valid feature vectors ``'n d'`` of ``layer`` (pooled over ``pool`` frames) of the clips of an audio dataset's
    ``split``, in a seeded random order of clips, until ``max_vectors`` (the data a k-means is fitted on)."""
    source = audio_source.as_data_source(split)
    sample_rate = int((audio_source.info.metadata or {}).get("sample_rate") or config.sample_rate)
    features_of = _jitted_features(config, layer, int(pool))
    order = np.random.default_rng(seed).permutation(len(source))
    multiple = PAD_FRAMES * config.hop_length * int(pool)
    found, total = [], 0
    for start in progress(range(0, len(order), batch_size), desc="features for k-means", unit="batch"):
        records = [source[int(i)] for i in order[start:start + batch_size]]
        audio = np.zeros((batch_size, max(len(r["audio"]) for r in records)), np.float32)
        lengths = np.zeros(batch_size, np.int64)
        for i, record in enumerate(records):
            audio[i, :len(record["audio"])] = audio_io.int16_to_float(record["audio"])
            lengths[i] = len(record["audio"])
        batch, valid = _encoder_batch(audio, lengths, sample_rate, config.sample_rate, multiple,
                                      config.receptive_field)
        features, mask = features_of(variables, batch, np.where(valid > 0, valid, batch.shape[1]).astype(np.int32))
        mask = np.asarray(mask) & (valid > 0)[:, None]
        found.append(np.asarray(features)[mask])
        total += len(found[-1])
        if total >= max_vectors:
            break
    return np.concatenate(found)[:max_vectors] if found else np.zeros((0, config.hidden_size), np.float32)


def fit_dataset_kmeans(config: SpeechEncoderConfig, variables, layer, pool: int, audio_source, num_clusters: int, *,
                       batch_size: int = 8, max_vectors: int = MAX_FIT_VECTORS, seed: int = 0,
                       progress: Callable = lambda it, **_: it) -> tuple[KMeansCodebook, int]:
    """(k-means codebook with ``num_clusters`` centres, vectors it was fitted on) of an audio dataset's training
    features (``dataset_features``); fewer vectors than centres is a ValueError naming ``num_clusters``."""
    features = dataset_features(config, variables, layer, pool, audio_source, batch_size=batch_size,
                                max_vectors=max_vectors, seed=seed, progress=progress)
    if len(features) < num_clusters:
        raise ValueError(f"num_clusters={num_clusters} is more than the {len(features)} feature vectors of the "
                         f"audio dataset's training clips; fit fewer centres or use more audio")
    return fit_kmeans(features, num_clusters, batch_size=min(4096, len(features)), seed=seed), len(features)


def fitted_kmeans(path: str, fitted_on: Mapping[str, Any], fit: Callable[[], tuple[KMeansCodebook, int]], *,
                  overwrite: bool = False) -> tuple[KMeansCodebook, bool]:
    """(codebook, reused): the one saved at ``path`` (``.npz``) when its record (``path`` with ``.json``) says it was
    fitted on ``fitted_on``, else ``fit()``'s, saved there with that record. A codebook there fitted on something
    else raises ``StaleDatasetError`` naming the differences, unless ``overwrite``."""
    record_path = epath.Path(os.fspath(path)[:-len(".npz")] + ".json")
    wanted = provenance.jsonable(dict(fitted_on))
    if epath.Path(path).exists() and record_path.exists():
        stored = json.loads(record_path.read_text()).get("fitted_on")
        changes = provenance.mapping_changes("kmeans", "it was fitted on", stored, wanted)
        if not changes:
            return load_kmeans(path), True
        if not overwrite:
            raise provenance.StaleDatasetError(os.fspath(path), changes)
    codebook, vectors = fit()
    record_path.unlink(missing_ok=True)  # A codebook without its record is never reused (a fit that stopped).
    codebook.save(path)
    record_path.write_text(json.dumps(dict(fitted_on=wanted, vectors=int(vectors)), indent=2, sort_keys=True))
    return codebook, False


def semantic_identity(tokenizer: SemanticTokenizer, *, checkpoint: str, kmeans: str,
                      encoder_sha256: Optional[str] = None) -> dict:
    """What a codes dataset records of its semantic ids (JSON-able): the checkpoint (absolute) and a sha256 of its
    weights, the layer, pooling, the k-means file and a sha256 of its centres, vocabulary and rate. A
    ``LogMelTokenizer`` records ``checkpoint='log-mel'`` and its ``LogMelConfig`` as ``log_mel``."""
    log_mel = isinstance(tokenizer.config, LogMelConfig)
    identity = dict(checkpoint=LOG_MEL if log_mel else provenance.absolute_path(os.fspath(checkpoint)),
                    weights_sha256=encoder_sha256 or tree_sha256(tokenizer.variables),
                    layer=tokenizer.layer, pool=tokenizer.pool,
                    kmeans=provenance.absolute_path(os.fspath(kmeans)),
                    kmeans_sha256=hashlib.sha256(np.ascontiguousarray(tokenizer.kmeans.centers).tobytes()).hexdigest(),
                    vocab_size=tokenizer.vocab_size, rate=float(tokenizer.rate), sample_rate=tokenizer.sample_rate)
    if log_mel:
        identity["log_mel"] = tokenizer.config.to_dict()
    return identity


def semantic_metadata(tokenizer: SemanticTokenizer, identity: Mapping[str, Any]) -> dict:
    """The codes dataset's metadata entries for its k-means ids (training reads ``semantic_rate`` and
    ``semantic_vocab_size``; ``semantic`` says where they came from)."""
    return dict(semantic_rate=float(tokenizer.rate), semantic_vocab_size=int(tokenizer.vocab_size),
                semantic=dict(kind="kmeans", **{k: identity[k] for k in ("checkpoint", "layer", "pool", "kmeans")}))
