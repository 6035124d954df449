"""``SpeechEncoder``: HuBERT / wav2vec 2.0 in Flax Linen, raw 16 kHz audio -> hidden states of any layer.

``SpeechEncoder(config).apply(variables, audio 'b s', lengths (b,), output_layer=k)``
returns ``(hidden 'b n d', frame_mask 'b n')``: transformers' ``hidden_states[k]``
(``0 <= k <= num_hidden_layers``; = fairseq's ``output_layer=k``; see ``transformer``)
for frames ``n = frames(s)``. Layers above ``k`` are not computed.
``output_layer='last'`` is transformers' ``last_hidden_state`` (the top layer,
through the final LayerNorm of the pre-norm layout); ``output_layer=None`` returns
every hidden state stacked, ``'(L+1) b n d'``.

Batches: ``lengths`` (default: every row is full) gives each clip's valid
samples; frame ``j`` of a clip is valid when ``j < frames(length)``
(transformers' ``_get_feat_extract_output_lengths``), and valid frames come out
exactly as for the clip alone, unpadded (the tests check it). Padded frames are
returned as zeros.

``init_speech_encoder`` makes random variables (logically partitioned like the
Conformer's: unbox with ``flax.linen.unbox`` or shard with the trainer's rules);
``import_speech_encoder`` (in ``weights``) imports a transformers or fairseq
checkpoint.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from soundstorm_jax.semantic.config import SpeechEncoderConfig
from soundstorm_jax.semantic.features import (ConvFeatureExtractor, FeatureProjection, frame_lengths,
                                              length_mask)
from soundstorm_jax.semantic.transformer import TransformerEncoder

Dtype = Any


LAST = "last"


def check_output_layer(output_layer, config: SpeechEncoderConfig, name: str = "layer") -> None:
    """A hidden-state index: an int in ``[0, num_hidden_layers]`` (0 = the first layer's input), or ``'last'``."""
    top = config.num_hidden_layers
    if output_layer == LAST:
        return
    if isinstance(output_layer, bool) or not isinstance(output_layer, int) or not 0 <= output_layer <= top:
        raise ValueError(f"{name} must be a hidden-state index in [0, {top}] for this {top}-layer encoder "
                         f"(0 = the first layer's input, k = layer k's output) or 'last' (last_hidden_state), "
                         f"got {output_layer!r}")


class SpeechEncoder(nn.Module):
    """audio ``'b s'`` (float, 16 kHz), valid samples ``(b,)`` -> (hidden ``'b n d'``, or ``'(L+1) b n d'`` for
    every layer, and the frame mask ``'b n'``)."""

    config: SpeechEncoderConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, audio: jax.Array, lengths: jax.Array | None = None,
                 output_layer: int | str | None = None) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        if output_layer is not None:
            check_output_layer(output_layer, cfg, name="output_layer")
        if lengths is None:
            lengths = jnp.full(audio.shape[:1], audio.shape[1], jnp.int32)
        features = ConvFeatureExtractor(cfg, self.dtype, name="feature_extractor")(audio, lengths)
        mask = length_mask(frame_lengths(cfg, lengths), features.shape[1])
        hidden = FeatureProjection(cfg, self.dtype, name="feature_projection")(features)
        # Initialisation builds every layer whatever layer is asked for.
        top = cfg.num_hidden_layers
        last = top if output_layer in (None, LAST) or self.is_initializing() else output_layer
        encoder = TransformerEncoder(cfg, self.dtype, name="encoder")
        states = encoder(hidden, mask, last, final_norm=output_layer == LAST)
        states = [jnp.where(mask[:, :, None], s, 0) for s in states]
        out = jnp.stack(states) if output_layer is None else states[top if output_layer == LAST else output_layer]
        return out, mask


def init_speech_encoder(config: SpeechEncoderConfig, key: jax.Array, samples: int | None = None) -> dict:
    """Random variables ``{'params': ...}`` (``nn.Partitioned``-boxed, carrying logical axis names)."""
    samples = config.receptive_field if samples is None else samples
    return SpeechEncoder(config).init(key, jnp.zeros((1, samples), jnp.float32))


def param_shapes(config: SpeechEncoderConfig) -> dict:
    """The unboxed ``params`` shapes of ``SpeechEncoder(config)`` (``jax.eval_shape``: nothing is computed)."""
    boxed = jax.eval_shape(lambda: init_speech_encoder(config, jax.random.key(0)))  # The key traced: no compile.
    return nn.unbox(boxed)["params"]
