"""The convolutional feature extractor and the feature projection of HuBERT / wav2vec 2.0.

``ConvFeatureExtractor``: audio ``'b s'`` -> features ``'b n c'`` through strided
1-d convolutions without padding, each followed by GELU; the base models put a
per-channel GroupNorm (``num_groups == channels``) after the first convolution
only, the large ones a LayerNorm over channels after every convolution.

Padding: frame ``j`` of a layer sees input frames ``j*s .. j*s+k-1``, all valid
whenever ``j`` is below the layer's valid length, so the convolutions never mix
padding into valid frames. The GroupNorm is the exception: it normalises each
channel over *time*, and transformers (like fairseq) take the statistics over
the whole padded row, so a clip's features there depend on how much padding it
got. Here the statistics are taken over each example's valid frames only, which
gives every clip of a batch exactly the features it gets alone, unpadded.

Parameters carry logical axis names (conv channels ``'mlp'``, the projection
``('mlp', 'embed')``) so they shard by the Conformer's rules.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from soundstorm_jax.model.layers import constrain, partitioned
from soundstorm_jax.semantic.config import SpeechEncoderConfig

Dtype = Any


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, PyTorch's ``nn.functional.gelu`` default and transformers' ``'gelu'``."""
    return jax.nn.gelu(x, approximate=False)


def frame_lengths(config: SpeechEncoderConfig, lengths: jax.Array, upto: int | None = None) -> jax.Array:
    """``config.frame_lengths`` on traced lengths ``(b,)``: valid frames after the first ``upto`` convolutions."""
    for k, s in list(zip(config.conv_kernel, config.conv_stride))[:upto]:
        lengths = jnp.maximum((lengths - k) // s + 1, 0)
    return lengths


def length_mask(lengths: jax.Array, size: int) -> jax.Array:
    """``(b,)`` valid lengths -> ``(b, size)`` bool, True on each row's first ``lengths`` positions."""
    return jnp.arange(size)[None, :] < lengths[:, None]


def torch_layer_norm(features: int, eps: float, axis_name: str, name: str) -> nn.LayerNorm:
    """``nn.LayerNorm`` with PyTorch's numerics (two-pass variance) and logical names on its parameters."""
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=jnp.float32, name=name,
                        scale_init=partitioned(nn.initializers.ones_init(), (axis_name,)),
                        bias_init=partitioned(nn.initializers.zeros_init(), (axis_name,)))


class MaskedGroupNorm(nn.Module):
    """GroupNorm with one group per channel over the valid frames of each example: ``'b n c'`` -> ``'b n c'``."""

    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", partitioned(nn.initializers.ones_init(), ("mlp",)), (channels,))
        bias = self.param("bias", partitioned(nn.initializers.zeros_init(), ("mlp",)), (channels,))
        x32 = x.astype(jnp.float32)
        weight = mask[:, :, None].astype(jnp.float32)
        count = jnp.maximum(weight.sum(axis=1, keepdims=True), 1.0)
        mean = (x32 * weight).sum(axis=1, keepdims=True) / count
        var = (jnp.square(x32 - mean) * weight).sum(axis=1, keepdims=True) / count  # two-pass, as PyTorch
        return ((x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias).astype(x.dtype)


class ConvFeatureExtractor(nn.Module):
    """audio ``'b s'`` and valid sample counts ``(b,)`` -> features ``'b n c'`` (``n`` = frames of ``s`` samples)."""

    config: SpeechEncoderConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, audio: jax.Array, lengths: jax.Array) -> jax.Array:
        cfg = self.config
        x = audio.astype(self.dtype)[:, :, None]
        c_in = 1
        for i, (c_out, k, s) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)):
            kernel = self.param(f"conv{i}_kernel", partitioned(nn.initializers.he_normal(in_axis=(0, 1), out_axis=2),
                                                               (None, None, "mlp")), (k, c_in, c_out))
            x = jax.lax.conv_general_dilated(x, kernel.astype(self.dtype), (s,), "VALID",
                                             dimension_numbers=("NWC", "WIO", "NWC"))
            if cfg.conv_bias:
                x = x + self.param(f"conv{i}_bias", partitioned(nn.initializers.zeros_init(), ("mlp",)),
                                   (c_out,)).astype(self.dtype)
            if cfg.feat_extract_norm == "group" and i == 0:
                mask = length_mask(frame_lengths(cfg, lengths, upto=1), x.shape[1])
                x = MaskedGroupNorm(name="norm0")(x, mask)
            elif cfg.feat_extract_norm == "layer":
                x = torch_layer_norm(c_out, 1e-5, "mlp", name=f"norm{i}")(x).astype(self.dtype)
            x = gelu(x)
            c_in = c_out
        return constrain(x, ("batch", "length", "mlp"))


class FeatureProjection(nn.Module):
    """features ``'b n c'`` -> hidden states ``'b n d'``: optional LayerNorm over ``c``, then a Linear ``c -> d``."""

    config: SpeechEncoderConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        cfg = self.config
        if cfg.feat_proj_layer_norm:
            features = torch_layer_norm(cfg.conv_dim[-1], cfg.layer_norm_eps, "mlp", name="layer_norm")(features)
        x = nn.Dense(cfg.hidden_size, dtype=self.dtype, name="projection",
                     kernel_init=partitioned(nn.initializers.lecun_normal(), ("mlp", "embed")),
                     bias_init=partitioned(nn.initializers.zeros_init(), ("embed",)))(features)
        return constrain(x, ("batch", "length", "embed"))
