"""The Transformer encoder of HuBERT / wav2vec 2.0: convolutional positions, post-norm or pre-norm layers.

``TransformerEncoder`` follows transformers' ``Wav2Vec2Encoder`` (post-norm, the
base models) and ``Wav2Vec2EncoderStableLayerNorm`` (pre-norm, the large ones):

* padded frames are zeroed, then ``x = x + GELU(conv(x))``: a grouped 1-d
  convolution over time (kernel 128, 16 groups, ``k // 2`` zeros each side and
  the last output dropped when ``k`` is even) whose weight is weight-normed over
  its kernel axis; the importer folds the norm into a plain kernel;
* post-norm: LayerNorm, then layers ``x = LN(x + attn(x)); x = LN(x + ff(x))``;
  pre-norm: layers ``x = x + attn(LN(x)); x = x + ff(LN(x))`` and a LayerNorm
  after the last layer;
* attention: q, k, v, out projections with biases, queries scaled by
  ``head_dim ** -0.5``, padded keys masked; feed-forward Linear -> GELU -> Linear.

Hidden state ``k`` is ``hidden_states[k]`` of transformers 5 (``output_hidden_states``):
0 is the first layer's input, ``k`` the output of layer ``k``, never the pre-norm
layout's final LayerNorm -- also what fairseq's ``output_layer=k`` returns (the
``HubertWithKmeans`` features). ``last_hidden_state`` (transformers' model output)
is the last hidden state, through the final LayerNorm in the pre-norm layout.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from soundstorm_jax.model.layers import constrain, partitioned
from soundstorm_jax.semantic.config import SpeechEncoderConfig
from soundstorm_jax.semantic.features import gelu, torch_layer_norm

Dtype = Any


def _dense(features: int, names: tuple[str, str], dtype: Dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, name=name,
                    kernel_init=partitioned(nn.initializers.lecun_normal(), names),
                    bias_init=partitioned(nn.initializers.zeros_init(), names[-1:]))


class PositionalConv(nn.Module):
    """hidden ``'b n d'`` -> ``GELU(grouped conv)`` ``'b n d'`` (same length; the caller adds it)."""

    config: SpeechEncoderConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        k, groups, d = cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups, cfg.hidden_size
        kernel = self.param("kernel", partitioned(nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
                                                  (None, None, "embed")), (k, d // groups, d))
        bias = self.param("bias", partitioned(nn.initializers.zeros_init(), ("embed",)), (d,))
        # PyTorch pads k//2 on both sides; an even kernel then yields one frame too many, which it drops.
        padding = (k // 2, k // 2 - (1 - k % 2))
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype), (1,), [padding],
                                         dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=groups)
        return gelu(y + bias.astype(self.dtype))


class SelfAttention(nn.Module):
    """``'b n d'`` and a key mask ``'b n'`` -> ``'b n d'``; kernels ``(d, h, dh)``, ``(h, dh, d)`` (the Conformer's)."""

    config: SpeechEncoderConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        cfg = self.config
        d, h, dh = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
        x = x.astype(self.dtype)

        def project(name):
            kernel = self.param(f"{name}_kernel", partitioned(nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)),
                                                              ("embed", "heads", "kv")), (d, h, dh))
            bias = self.param(f"{name}_bias", partitioned(nn.initializers.zeros_init(), ("heads", "kv")), (h, dh))
            return jnp.einsum("bnd,dhk->bnhk", x, kernel.astype(self.dtype)) + bias.astype(self.dtype)

        q, k, v = project("query") * dh ** -0.5, project("key"), project("value")
        q, k, v = (constrain(t, ("batch", "length", "heads", "kv")) for t in (q, k, v))
        logits = jnp.einsum("bqhk,bshk->bhqs", q, k).astype(jnp.float32)
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqs,bshk->bqhk", probs, v)
        kernel = self.param("out_kernel", partitioned(nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
                                                      ("heads", "kv", "embed")), (h, dh, d))
        bias = self.param("out_bias", partitioned(nn.initializers.zeros_init(), ("embed",)), (d,))
        return jnp.einsum("bnhk,hkd->bnd", out, kernel.astype(self.dtype)) + bias.astype(self.dtype)


class EncoderLayer(nn.Module):
    """One Transformer layer, post-norm (``do_stable_layer_norm=False``) or pre-norm: ``'b n d'`` -> ``'b n d'``."""

    config: SpeechEncoderConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        cfg = self.config
        attention = SelfAttention(cfg, self.dtype, name="attention")
        norm = torch_layer_norm(cfg.hidden_size, cfg.layer_norm_eps, "embed", name="layer_norm")
        final_norm = torch_layer_norm(cfg.hidden_size, cfg.layer_norm_eps, "embed", name="final_layer_norm")
        intermediate = _dense(cfg.intermediate_size, ("embed", "mlp"), self.dtype, "intermediate")
        output = _dense(cfg.hidden_size, ("mlp", "embed"), self.dtype, "output")

        def feed_forward(y):
            return output(constrain(gelu(intermediate(y)), ("batch", "length", "mlp")))

        if cfg.do_stable_layer_norm:
            x = x + attention(norm(x), mask)
            x = x + feed_forward(final_norm(x))
        else:
            x = norm(x + attention(x, mask))
            x = final_norm(x + feed_forward(x))
        return constrain(x.astype(self.dtype), ("batch", "length", "embed"))


class TransformerEncoder(nn.Module):
    """hidden ``'b n d'``, frame mask ``'b n'`` -> hidden states ``0..last`` (each ``'b n d'``), stopping at ``last``.

    With ``final_norm`` (and ``last`` the top layer) the pre-norm layout's final LayerNorm is applied to the
    last state: transformers' ``last_hidden_state``.
    """

    config: SpeechEncoderConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, last: int, final_norm: bool = False) -> list[jax.Array]:
        cfg = self.config
        x = jnp.where(mask[:, :, None], x, 0).astype(self.dtype)  # the convolution must see zeros past the end
        x = x + PositionalConv(cfg, self.dtype, name="pos_conv")(x)
        norm = torch_layer_norm(cfg.hidden_size, cfg.layer_norm_eps, "embed", name="layer_norm")
        if not cfg.do_stable_layer_norm:  # post-norm: the LayerNorm comes before the first layer
            x = norm(x).astype(self.dtype)
        states = [x]
        for i in range(last):
            x = EncoderLayer(cfg, self.dtype, name=f"layer{i}")(x, mask)
            states.append(x)
        if cfg.do_stable_layer_norm and (final_norm or self.is_initializing()):
            states[-1] = norm(x).astype(self.dtype)
        return states
