"""ConformerWrapper: codec tokens in, per-level logits out.

Input codes are ``(b, n, c)`` with ``c = groups * levels`` columns laid out
group-major (column ``g * levels + q`` is level ``q`` of group ``g``). Each
column has its own slice of one embedding table with ``codebook_size + 1`` ids,
the last being [MASK]. A frame's embeddings are summed over levels within a
group and concatenated across groups (then projected back to ``d``), so one
frame is one position of the Conformer. Each column has its own output head:
``Linear(d, d)`` -> shared LayerNorm -> ``Linear(d, codebook_size)``.

Heads can be evaluated for any subset of columns (``columns``), which is what
lets the training loss and the sampler compute only the level they need.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from soundstorm_jax.model.conformer import Conformer
from soundstorm_jax.model.layers import (
    Dtype,
    constrain,
    default_embed_init,
    default_kernel_init,
    dense,
    layer_norm,
    partitioned,
)


def resample_in_time(embeddings: jax.Array, valid: jax.Array, target_length: int,
                     frames_per_token: float | None = None) -> jax.Array:
    """Linearly resample ``(b, m, d)`` embeddings to ``(b, target_length, d)``, padding excluded.

    Output frame ``j`` reads position ``(j + 0.5) / frames_per_token - 0.5``
    (PyTorch's ``interpolate(mode='linear', align_corners=False)`` positions),
    clamped to ``[0, last]``, ``last`` an example's last valid input; padded
    inputs (``valid == False``) get zero weight and the remaining weights are
    renormalised, so padding never blends into valid frames. An example's
    ``L = last + 1`` inputs cover ``ceil(L * frames_per_token)`` frames; the
    frames after them are zero.

    ``frames_per_token`` None is ``target_length / m``: with no padding the
    reference's resampling to ``target_length`` frames. Given (a fixed rate
    ratio), an example's output depends only on its own inputs, never on how
    much padding follows them.
    """
    b, m, _ = embeddings.shape
    rate = target_length / m if frames_per_token is None else float(frames_per_token)
    if rate == 1.0:  # Frame j is input j: no weights to build.
        keep = min(m, target_length)
        x = jnp.where(valid[:, :keep, None], embeddings[:, :keep], 0.0)
        return jnp.pad(x, ((0, 0), (0, target_length - keep), (0, 0)))
    inputs = jnp.arange(m)
    length = jnp.max(jnp.where(valid, inputs + 1, 0), axis=-1)                      # (b,) L: up to the last valid
    src = (jnp.arange(target_length, dtype=jnp.float32) + 0.5) * (1.0 / rate) - 0.5  # (t,)
    src = jnp.clip(src[None, :], 0.0, jnp.maximum(length - 1, 0)[:, None].astype(jnp.float32))  # (b, t)
    lo = jnp.floor(src).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, m - 1)
    w_hi = src - lo
    weights = (jax.nn.one_hot(lo, m) * (1.0 - w_hi)[..., None] + jax.nn.one_hot(hi, m) * w_hi[..., None])  # (b, t, m)
    weights = weights * valid[:, None, :].astype(jnp.float32)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    weights = jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 0.0)
    # Frames covered by L inputs, computed on the host exactly as semantic_frames does (float64 ceil).
    covered_frames = jnp.asarray([semantic_frames(count, rate) for count in range(m + 1)], jnp.int32)   # (m + 1,)
    covered = jnp.arange(target_length)[None, :] < covered_frames[length][:, None]                       # (b, t)
    weights = jnp.where(covered[..., None], weights, 0.0)
    return jnp.einsum("btm,bmd->btd", weights.astype(embeddings.dtype), embeddings)


def semantic_frames(num_semantic: int, acoustic_per_semantic: float) -> int:
    """Acoustic frames covered by ``num_semantic`` semantic tokens (ceil, as the reference)."""
    return int(math.ceil(num_semantic * acoustic_per_semantic - 1e-9))


class ConformerWrapper(nn.Module):
    """Embeddings + rotary Conformer + per-column output heads.

    Attributes:
      codebook_size: codes per level ``K``; id ``K`` is [MASK].
      num_quantizers: residual levels ``Q`` per group.
      conformer: keyword arguments of :class:`Conformer` (``dim`` and ``depth`` at least).
      grouped_quantizers: groups ``G`` of a grouped residual VQ (columns ``c = G * Q``).
      num_semantic_token_ids: size of the semantic vocabulary; None disables semantic conditioning.
      semantic_pad_id: the id marking semantic padding.
      acoustic_per_semantic: acoustic frames per semantic token (2.0 for 25 Hz -> 50 Hz).
      dtype / param_dtype: compute and parameter dtypes of the whole network.
    """

    codebook_size: int
    num_quantizers: int
    conformer: Mapping[str, Any]
    grouped_quantizers: int = 1
    num_semantic_token_ids: int | None = None
    semantic_pad_id: int = -1
    acoustic_per_semantic: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        conformer = dict(self.conformer)
        for key in ("dtype", "param_dtype"):
            if key in conformer:
                raise ValueError(f"conformer[{key!r}]: set {key} on ConformerWrapper, which applies it to the whole network")
        for key in ("dim", "depth"):
            if key not in conformer:
                raise ValueError(f"conformer must give {key!r}, e.g. conformer=dict(dim=512, depth=2)")
        unknown = set(conformer) - set(Conformer.__dataclass_fields__) - {"parent", "name"}
        if unknown:
            raise ValueError(f"conformer has unknown options {sorted(unknown)}")
        object.__setattr__(self, "conformer", FrozenDict(conformer))
        for name in ("codebook_size", "num_quantizers", "grouped_quantizers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.num_semantic_token_ids is not None and self.num_semantic_token_ids < 1:
            raise ValueError(f"num_semantic_token_ids must be positive or None, got {self.num_semantic_token_ids!r}")
        if not self.acoustic_per_semantic > 0:
            raise ValueError(f"acoustic_per_semantic must be > 0, got {self.acoustic_per_semantic!r}")
        super().__post_init__()

    # Static facts about the layout, used by the objective, the sampler and the checks.
    @property
    def dim(self) -> int:
        return int(self.conformer["dim"])

    @property
    def num_columns(self) -> int:
        return self.num_quantizers * self.grouped_quantizers

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    def columns_of_level(self, level):
        """Column indices ``(G,)`` holding residual level ``level`` in every group."""
        return jnp.arange(self.grouped_quantizers) * self.num_quantizers + level

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d, c, k = self.dim, self.num_columns, self.codebook_size
        self.trunk = Conformer(**self.conformer, **kw)
        self.code_embed = nn.Embed((k + 1) * c, d, embedding_init=partitioned(default_embed_init, ("vocab", "embed")),
                                   **kw)
        if self.grouped_quantizers > 1:
            self.group_proj = dense(d, ("mlp", "embed"), **kw)
            self.group_norm = layer_norm(**kw)
        if self.num_semantic_token_ids is not None:
            self.semantic_embed = nn.Embed(self.num_semantic_token_ids, d,
                                           embedding_init=partitioned(default_embed_init, ("vocab", "embed")), **kw)
        self.head_kernel = self.param("head_kernel", partitioned(default_kernel_init, ("embed", "levels", None)),
                                      (d, c, d), self.param_dtype)
        self.head_bias = self.param("head_bias", partitioned(nn.initializers.zeros_init(), ("levels", None)), (c, d),
                                    self.param_dtype)
        self.head_norm = layer_norm(**kw)
        self.logits_kernel = self.param("logits_kernel", partitioned(nn.initializers.lecun_normal(in_axis=1, out_axis=2),
                                                                     ("levels", "embed", "vocab")), (c, d, k),
                                        self.param_dtype)
        self.logits_bias = self.param("logits_bias", partitioned(nn.initializers.zeros_init(), ("levels", "vocab")),
                                      (c, k), self.param_dtype)

    # ---- inputs -------------------------------------------------------------------------------

    def embed_codes(self, codes: jax.Array, mask: jax.Array) -> jax.Array:
        """codes ``(b, n, c)`` (ids in ``[0, K]``, K = [MASK]) -> frame embeddings ``(b, n, d)``."""
        b, n, c = codes.shape
        # Padded frames may hold anything (e.g. a pad value): look them up as [MASK].
        codes = jnp.where(mask[:, :, None], codes, self.mask_id)
        ids = codes + jnp.arange(c) * (self.codebook_size + 1)
        x = self.code_embed(ids)  # (b, n, c, d)
        x = x.reshape(b, n, self.grouped_quantizers, self.num_quantizers, self.dim).sum(axis=3)
        x = x.reshape(b, n, self.grouped_quantizers * self.dim)
        if self.grouped_quantizers > 1:
            x = self.group_norm(self.group_proj(x))
        return x

    def semantic_condition(self, semantic_ids: jax.Array, num_frames: int) -> jax.Array:
        """Semantic ids ``(b, m)`` (pad = ``semantic_pad_id``) -> conditioning ``(b, num_frames, d)``.

        Embeddings are resampled at ``acoustic_per_semantic`` frames per token,
        padding excluded (:func:`resample_in_time`): an example's conditioning
        depends on its own tokens only, not on how much padding the batch
        gives it, and is zero after the ``semantic_frames(L, acoustic_per_semantic)``
        frames its tokens (up to the last valid one, ``L``) cover.
        """
        valid = semantic_ids != self.semantic_pad_id
        x = self.semantic_embed(jnp.where(valid, semantic_ids, 0))
        return resample_in_time(x, valid, num_frames, self.acoustic_per_semantic)

    # ---- trunk and heads ----------------------------------------------------------------------

    def hidden(self, codes, mask=None, *, semantic_ids=None, cond=None, sum_embeds=None, drop_condition=None,
               deterministic: bool = True) -> jax.Array:
        """The Conformer's output ``(b, n, d)`` for codes ``(b, n, c)``.

        ``cond`` is a precomputed conditioning ``(b, n, d)`` or ``(b, d)``;
        ``sum_embeds`` (self-conditioning) is added likewise; ``drop_condition``
        ``(b,)`` removes the semantic and ``cond`` conditioning of chosen
        examples (classifier-free guidance).
        """
        b, n, _ = codes.shape
        if mask is None:
            mask = jnp.ones((b, n), dtype=bool)
        x = self.embed_codes(codes, mask)
        condition = jnp.zeros_like(x)
        if semantic_ids is not None:
            if self.num_semantic_token_ids is None:
                raise ValueError("semantic_ids were given but the ConformerWrapper has num_semantic_token_ids=None")
            condition = condition + self.semantic_condition(semantic_ids, n).astype(x.dtype)
        if cond is not None:
            condition = condition + (cond[:, None, :] if cond.ndim == 2 else cond).astype(x.dtype)
        if drop_condition is not None:
            condition = jnp.where(drop_condition[:, None, None], 0.0, condition)
        x = x + condition
        if sum_embeds is not None:
            x = x + sum_embeds.astype(x.dtype)
        x = constrain(x, ("batch", "length", "embed"))
        return self.trunk(x, mask, deterministic=deterministic)

    def head_embeddings(self, hidden: jax.Array, columns: jax.Array | None = None) -> jax.Array:
        """Per-column head outputs before the logits: ``(b, n, d)`` -> ``(b, n, c', d)``.

        ``columns`` selects heads: None for all, ``(c',)`` shared by the batch, or
        ``(b, c')`` per example.
        """
        kernel, bias = self.head_kernel.astype(self.dtype), self.head_bias.astype(self.dtype)
        if columns is None:
            return jnp.einsum("bnd,dce->bnce", hidden, kernel) + bias
        if columns.ndim == 1:
            return jnp.einsum("bnd,dce->bnce", hidden, kernel[:, columns]) + bias[columns]
        return jnp.einsum("bnd,dbce->bnce", hidden, kernel[:, columns]) + bias[columns][:, None]

    def logits_from_embeddings(self, embeddings: jax.Array, columns: jax.Array | None = None) -> jax.Array:
        """Head outputs ``(b, n, c', d)`` -> logits ``(b, n, c', K)`` in fp32 (same ``columns`` as above)."""
        x = self.head_norm(embeddings)
        kernel, bias = self.logits_kernel.astype(self.dtype), self.logits_bias.astype(self.dtype)
        if columns is None:
            logits = jnp.einsum("bncd,cdk->bnck", x, kernel) + bias
        elif columns.ndim == 1:
            logits = jnp.einsum("bncd,cdk->bnck", x, kernel[columns]) + bias[columns]
        else:
            logits = jnp.einsum("bncd,bcdk->bnck", x, kernel[columns]) + bias[columns][:, None]
        return constrain(logits.astype(jnp.float32), ("batch", "length", None, "vocab"))

    def all_heads(self, hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Every column's logits ``(b, n, c, K)`` (fp32) and head outputs ``(b, n, c, d)`` from ``(b, n, d)``.

        The same numbers as ``logits_from_embeddings(head_embeddings(hidden))``, computed as one chain of
        plain 2-d matmuls per column (head, norm, logits): the column-batched einsums make XLA transpose
        their operands, which on a CPU costs more than the matmuls themselves.
        """
        kernel, bias = self.head_kernel.astype(self.dtype), self.head_bias.astype(self.dtype)
        logits_kernel, logits_bias = self.logits_kernel.astype(self.dtype), self.logits_bias.astype(self.dtype)
        embeddings, logits = [], []
        for c in range(self.num_columns):
            e = hidden @ kernel[:, c] + bias[c]
            embeddings.append(e)
            logits.append(self.head_norm(e) @ logits_kernel[c] + logits_bias[c])
        logits = jnp.stack(logits, axis=2).astype(jnp.float32)
        return constrain(logits, ("batch", "length", None, "vocab")), jnp.stack(embeddings, axis=2)

    def self_cond_source(self, hidden: jax.Array) -> jax.Array:
        """Sum over all columns of the head outputs, ``(b, n, d)``: the self-conditioning signal.

        Equals ``head_embeddings(hidden).sum(2)`` at the cost of one ``d x d`` matmul.
        """
        kernel = jnp.sum(self.head_kernel, axis=1).astype(self.dtype)
        return hidden @ kernel + jnp.sum(self.head_bias, axis=0).astype(self.dtype)

    def __call__(self, codes, mask=None, *, semantic_ids=None, cond=None, sum_embeds=None, columns=None,
                 deterministic: bool = True, return_embeddings: bool = False):
        """codes ``(b, n, c)`` -> logits ``(b, n, c', K)`` (fp32) for the selected columns.

        With ``return_embeddings`` also returns the head outputs ``(b, n, c', d)``.
        """
        hidden = self.hidden(codes, mask, semantic_ids=semantic_ids, cond=cond, sum_embeds=sum_embeds,
                             deterministic=deterministic)
        if columns is None:
            logits, embeddings = self.all_heads(hidden)
        else:
            embeddings = self.head_embeddings(hidden, columns)
            logits = self.logits_from_embeddings(embeddings, columns)
        return (logits, embeddings) if return_embeddings else logits
