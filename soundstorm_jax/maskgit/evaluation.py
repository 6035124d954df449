"""Held-out accuracy per residual level, and the unigram baseline it must beat.

`level_accuracy` scores a trained SoundStorm the way the sampler meets each
level: the first `prompt_frames` frames are given on every level (the acoustic
prompt), the levels below `q` are given on every frame (they were decoded
before), and level `q` and everything above it are [MASK] after the prompt.
The greedy prediction (argmax) of level `q` is compared with the true codes on
the valid frames after the prompt. This is the situation of each level's first
decoding pass, the hardest one (later levels are decoded in one pass).

`unigram_accuracy` is what a model that ignored its inputs would score: it
always predicts each level's most frequent code in the training data.
"""
from __future__ import annotations

from functools import partial
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np


@partial(jax.jit, static_argnames=("model", "prompt_frames"))
def _level_hits(model, variables, codes, valid, semantic_ids, prompt_frames: int):
    """-> (hits (Q,), counts (Q,)) for a batch: codes (b, n, c) int32, valid (b, n) bool, semantic_ids (b, m)."""
    net = model.net
    b, n, c = codes.shape
    q_levels = net.num_quantizers
    level_of_column = jnp.arange(c) % q_levels                       # (c,)
    after_prompt = (jnp.arange(n) >= prompt_frames)[None, :, None]  # (1, n, 1)
    scored = valid & (jnp.arange(n) >= prompt_frames)[None, :]       # (b, n)
    condition = None if semantic_ids is None else model.apply(
        variables, semantic_ids, None, n, method=type(model).conditioning)

    def one_level(q):
        hidden_levels = (level_of_column >= q)[None, None, :] & after_prompt
        inputs = jnp.where(hidden_levels, net.mask_id, codes)
        logits, _ = model.apply(variables, inputs, valid, net.columns_of_level(q), condition,
                                method=type(model).decode_logits)       # (b, n, g, K)
        truth = codes[:, :, net.columns_of_level(q)]                      # (b, n, g)
        hits = (jnp.argmax(logits, axis=-1) == truth) & scored[:, :, None]
        return hits.sum(), scored.sum() * truth.shape[-1]

    hits, counts = jax.lax.map(one_level, jnp.arange(q_levels))
    return hits, counts


def level_accuracy(model, variables, examples: Iterable[dict], *, prompt_frames: int,
                   batch_size: int = 4, frame_multiple: int = 64) -> np.ndarray:
    """Greedy accuracy per level ``(Q,)`` over `examples`, each {'codes': (n, c), 'semantic_ids': (m,)}.

    Examples are padded (and masked) to a multiple of `frame_multiple` frames
    and batched, so a handful of shapes are compiled. Semantic ids are
    resampled to each example's length by the model, as in training.
    """
    net = model.net
    examples = list(examples)
    if not examples:
        raise ValueError("level_accuracy needs at least one example")
    hits = np.zeros(net.num_quantizers, np.int64)
    counts = np.zeros(net.num_quantizers, np.int64)
    use_semantic = net.num_semantic_token_ids is not None
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        longest = max(len(e["codes"]) for e in chunk)
        n = int(np.ceil(longest / frame_multiple) * frame_multiple)
        codes = np.zeros((batch_size, n, net.num_columns), np.int32)
        valid = np.zeros((batch_size, n), bool)
        semantic = None
        if use_semantic:
            # As wide as the codes, like the training batches: with one semantic token per frame
            # (acoustic_per_semantic=1) the model's resampling is then the identity.
            semantic = np.full((batch_size, n), net.semantic_pad_id, np.int32)
        for i, e in enumerate(chunk):  # Rows past the chunk stay invalid: they count nothing.
            codes[i, :len(e["codes"])] = e["codes"]
            valid[i, :len(e["codes"])] = True
            if use_semantic:
                ids = np.asarray(e["semantic_ids"])[:n]
                semantic[i, :len(ids)] = ids
        h, c = _level_hits(model, variables, jnp.asarray(codes), jnp.asarray(valid),
                           None if semantic is None else jnp.asarray(semantic), int(prompt_frames))
        hits += np.asarray(h)
        counts += np.asarray(c)
    if counts.min() == 0:
        raise ValueError(f"no frame after the first prompt_frames={prompt_frames} to score; use a shorter prompt")
    return hits / counts


def unigram_accuracy(train_codes: Iterable[np.ndarray], held_out_codes: Iterable[np.ndarray], *,
                     num_quantizers: int, codebook_size: int, prompt_frames: int = 0) -> np.ndarray:
    """Accuracy per level ``(Q,)`` of always predicting each level's most frequent training code.

    Codes are ``(n, c)`` arrays with columns group-major (column = g * Q + q),
    scored on the same frames as `level_accuracy` (after `prompt_frames`).
    """
    counts = np.zeros((num_quantizers, codebook_size), np.int64)
    for codes in train_codes:
        codes = np.asarray(codes)
        for col in range(codes.shape[1]):
            counts[col % num_quantizers] += np.bincount(codes[:, col], minlength=codebook_size)
    most_frequent = counts.argmax(axis=1)  # (Q,)
    hits = np.zeros(num_quantizers, np.int64)
    total = np.zeros(num_quantizers, np.int64)
    for codes in held_out_codes:
        codes = np.asarray(codes)[prompt_frames:]
        for col in range(codes.shape[1]):
            q = col % num_quantizers
            hits[q] += int((codes[:, col] == most_frequent[q]).sum())
            total[q] += codes.shape[0]
    if total.min() == 0:
        raise ValueError("unigram_accuracy needs held-out frames after the prompt")
    return hits / total


def accuracy_table(model_accuracy: np.ndarray, baseline: np.ndarray) -> list[dict]:
    """Rows {'level', 'accuracy', 'unigram', 'ratio'} for reports (levels counted from 1)."""
    return [dict(level=q + 1, accuracy=float(a), unigram=float(u), ratio=float(a / u) if u > 0 else None)
            for q, (a, u) in enumerate(zip(model_accuracy, baseline))]


__all__ = ["accuracy_table", "level_accuracy", "unigram_accuracy"]
