"""SoundStream: SEANet encoder -> (local attention) -> grouped residual VQ -> (local attention) -> decoder.

Shapes: audio ``(b t)`` float in [-1, 1] at ``target_sample_hz``; latents
``(b n dim)`` with ``n = ceil(t / hop_length)``; codes ``(b n (g q))`` int32,
group-major (see ``residual_vq``).

Variables: ``'params'`` (encoder, decoder, attention; trained by gradients) and
``'vq_stats'`` (EMA codebooks; updated only by ``__call__(train=True)`` under
``mutable=['vq_stats']``, with an rng stream ``'vq'``).

Two ways in:
  * the Linen methods ``encode``/``decode``/``__call__`` via ``model.apply`` (shape
    checks at trace time; value checks when the inputs are concrete);
  * ``SoundStreamCodec(model, variables)``: jitted ``encode``/``decode`` with all
    checks done on the host first (``host_codec.HostCodec``).

Both implement ``interface.Codec``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from soundstorm_jax import validation
from soundstorm_jax.codec.conv_layers import Conv1d, DecoderBlock, EncoderBlock
from soundstorm_jax.codec.host_codec import HostCodec
from soundstorm_jax.codec.local_attention import LocalTransformer
from soundstorm_jax.codec.residual_vq import GroupedResidualVQ

Dtype = Any


@flax.struct.dataclass
class SoundStreamOutput:
    """audio ``(b t)`` reconstruction trimmed to the input length; codes ``(b n (g q))`` (-1 = dropped
    level); commit_loss ``()``; num_levels ``(b,)`` levels used per example."""
    audio: jax.Array
    codes: jax.Array
    commit_loss: jax.Array
    num_levels: jax.Array


class SoundStream(nn.Module):
    """SoundStream codec (Zeghidour et al. 2021) as configured for SoundStorm: 16 kHz, 50 frames/s, 12 x 1024.

    Attributes:
      codebook_size: codes per codebook ``K``.
      rq_num_quantizers: residual levels ``Q`` per group.
      rq_groups: groups ``G`` of the grouped residual VQ (``dim % G == 0``).
      strides: encoder downsampling factors; ``hop_length = prod(strides)``.
      channels: base channel count ``C``; block ``i`` has ``C * channel_mults[i]`` channels.
      channel_mults: per-block multipliers; default ``(2, 4, 8, 16, ...)``, one per stride.
      dim: latent / codebook dimension.
      target_sample_hz: sample rate of the audio the codec expects.
      attn_window_size, attn_depth, attn_heads: local attention in the bottleneck (``attn_depth=0``: none).
      causal: causal padding everywhere (streamable) or centred.
      rq_decay, rq_kmeans_init, rq_kmeans_iters, rq_threshold_ema_dead_code: EMA codebook options.
      quantizer_dropout: probability that a training example keeps only ``k`` levels, ``k`` uniform in
        ``[quantizer_dropout_min_levels, Q]`` (1.0: the SoundStream paper; 0.5: DAC; 0: off).
      quantizer_dropout_per_example: draw ``k`` per example (True) or once per step.
      dtype: compute dtype of convolutions and attention (params and VQ stay float32).
    """
    codebook_size: int = 1024
    rq_num_quantizers: int = 12
    rq_groups: int = 1
    strides: Sequence[int] = (2, 4, 5, 8)
    channels: int = 32
    channel_mults: Sequence[int] | None = None
    dim: int = 512
    target_sample_hz: int = 16000
    attn_window_size: int = 128
    attn_depth: int = 0
    attn_heads: int = 8
    causal: bool = True
    rq_decay: float = 0.99
    rq_kmeans_init: bool = True
    rq_kmeans_iters: int = 10
    rq_threshold_ema_dead_code: float = 2.0
    quantizer_dropout: float = 0.5
    quantizer_dropout_min_levels: int = 1
    quantizer_dropout_per_example: bool = True
    dtype: Dtype = jnp.float32

    # ---- static facts (the ``Codec`` properties) -------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        """Hz of the audio, ``target_sample_hz``."""
        return self.target_sample_hz

    @property
    def hop_length(self) -> int:
        """Audio samples per code frame."""
        return int(math.prod(self.strides))

    @property
    def frame_rate(self) -> float:
        """Code frames per second."""
        return self.target_sample_hz / self.hop_length

    @property
    def num_quantizers(self) -> int:
        """Residual levels per group ``Q``."""
        return self.rq_num_quantizers

    @property
    def max_quantizers(self) -> int:
        """Levels per group ``decode`` accepts: all ``Q`` (fewer decode a lower bitrate)."""
        return self.rq_num_quantizers

    @property
    def grouped_quantizers(self) -> int:
        """Groups ``G`` of the grouped residual VQ, ``rq_groups``."""
        return self.rq_groups

    @property
    def num_code_columns(self) -> int:
        """Columns of a full code array, ``G * Q``."""
        return self.rq_num_quantizers * self.rq_groups

    def num_frames(self, num_samples: int) -> int:
        """Frames for audio of ``num_samples`` samples (padded up to a multiple of the hop)."""
        return -(-int(num_samples) // self.hop_length)

    def _mults(self) -> tuple[int, ...]:
        mults = tuple(self.channel_mults) if self.channel_mults is not None else tuple(
            2 ** (i + 1) for i in range(len(self.strides)))
        if len(mults) != len(self.strides):
            raise ValueError(f"channel_mults {mults} must have one entry per stride {tuple(self.strides)}")
        return mults

    # ---- submodules ---------------------------------------------------------------------------------------
    def setup(self):
        mults = self._mults()
        kw = dict(causal=self.causal, dtype=self.dtype)
        self.enc_in = Conv1d(self.channels, 7, **kw)
        self.enc_blocks = [EncoderBlock(self.channels * m, s, **kw) for m, s in zip(mults, self.strides)]
        self.enc_out = Conv1d(self.dim, 3, **kw)
        self.dec_in = Conv1d(self.channels * mults[-1], 7, **kw)
        dec_feats = [self.channels * m for m in (1,) + mults[:-1]][::-1]
        self.dec_blocks = [DecoderBlock(f, s, **kw) for f, s in zip(dec_feats, self.strides[::-1])]
        self.dec_out = Conv1d(1, 7, **kw)
        if self.attn_depth > 0:
            attn = dict(depth=self.attn_depth, window=self.attn_window_size, heads=self.attn_heads, **kw)
            self.enc_attn = LocalTransformer(**attn)
            self.dec_attn = LocalTransformer(**attn)
        self.quantizer = GroupedResidualVQ(
            num_quantizers=self.rq_num_quantizers, codebook_size=self.codebook_size, dim=self.dim,
            groups=self.rq_groups, decay=self.rq_decay, kmeans_init=self.rq_kmeans_init,
            kmeans_iters=self.rq_kmeans_iters, threshold_ema_dead_code=self.rq_threshold_ema_dead_code,
            dropout_prob=self.quantizer_dropout, dropout_min_levels=self.quantizer_dropout_min_levels,
            dropout_per_example=self.quantizer_dropout_per_example)

    # ---- latents ------------------------------------------------------------------------------------------
    def encode_latents(self, audio: jax.Array) -> jax.Array:
        """audio ``(b t)`` -> latents ``(b n dim)`` float32, ``n = ceil(t / hop)`` (audio zero-padded)."""
        validation.check_audio(audio)
        t = audio.shape[1]
        pad = self.num_frames(t) * self.hop_length - t
        x = jnp.pad(audio.astype(self.dtype), ((0, 0), (0, pad)))[..., None]
        x = self.enc_in(x)
        for block in self.enc_blocks:
            x = block(x)
        x = self.enc_out(nn.elu(x))
        if self.attn_depth > 0:
            x = self.enc_attn(x)
        return x.astype(jnp.float32)

    def decode_latents(self, latents: jax.Array) -> jax.Array:
        """latents ``(b n dim)`` -> audio ``(b n*hop)`` float32."""
        x = latents.astype(self.dtype)
        if self.attn_depth > 0:
            x = self.dec_attn(x)
        x = self.dec_in(x)
        for block in self.dec_blocks:
            x = block(x)
        return self.dec_out(nn.elu(x))[..., 0].astype(jnp.float32)

    # ---- public API -----------------------------------------------------------------------------------------
    def encode(self, audio: jax.Array, sample_rate: int | None = None, num_levels: int | None = None) -> jax.Array:
        """audio ``(b t)`` -> codes ``(b n (g q))`` int32; ``num_levels`` keeps the first levels per group;
        ``sample_rate`` (optional) is refused unless it is ``target_sample_hz``."""
        validation.check_sample_rate(sample_rate, self.sample_rate)
        validation.check_num_levels(num_levels, self.max_quantizers)
        return self.quantizer.embeddings_to_codes(self.encode_latents(audio), num_levels)

    def decode(self, codes: jax.Array, length: int | None = None) -> jax.Array:
        """codes ``(b n (g q'))``, ``q' <= Q`` -> audio ``(b n*hop)``, or ``(b length)`` when given."""
        validation.check_codes(codes, codebook_size=self.codebook_size, num_quantizers=self.max_quantizers,
                               grouped_quantizers=self.grouped_quantizers, fewer_levels=True)
        validation.check_length(length, codes.shape[1] * self.hop_length)
        audio = self.decode_latents(self.quantizer.codes_to_embeddings(codes))
        return audio if length is None else audio[:, :length]

    def __call__(self, audio: jax.Array, train: bool = False, num_levels=None) -> SoundStreamOutput:
        """audio ``(b t)`` -> ``SoundStreamOutput`` (reconstruction ``(b t)``, codes, commitment loss).

        ``train=True`` updates the EMA codebooks (needs ``mutable=['vq_stats']`` and rngs ``{'vq': key}``)
        and applies quantizer dropout; ``num_levels`` (int or ``(b,)``) forces the levels used.
        """
        latents = self.encode_latents(audio)
        q = self.quantizer(latents, train=train, num_levels=num_levels)
        recon = self.decode_latents(q.quantized)[:, :audio.shape[1]]
        return SoundStreamOutput(recon, q.codes, q.commit_loss, q.num_levels)


class SoundStreamCodec(HostCodec):
    """A trained SoundStream bound to its variables (``params`` and the EMA codebooks ``vq_stats``), with
    jitted, host-validated ``encode``/``decode`` (see ``HostCodec``): ``SoundStreamCodec(model, variables)``."""

    collections = ("params", "vq_stats")
