"""EnCodec 24 kHz (Défossez et al. 2022) in Flax Linen, for weights imported from the PyTorch ``encodec`` package.

Shapes: audio ``(b t)`` float in [-1, 1] at 24 kHz, mono; latents ``(b n 128)``
with ``n = ceil(t / 320)`` (75 frames per second); codes ``(b n q)`` int32 in
``[0, 1024)``, level-major residual order (column ``q`` is level ``q``).

Bandwidth: level ``q`` costs ``log2(1024) * 75 / 1000 = 0.75`` kbps, so the model's
``target_bandwidths`` 1.5, 3, 6, 12, 24 kbps use 2, 4, 8, 16, 32 levels. ``bandwidth``
(a field; default 6 kbps, the usual choice for speech generation) sets
``num_quantizers``, the levels ``encode`` emits. ``decode`` takes any number of levels
up to ``max_quantizers`` (32): residual VQ codes for fewer levels are a prefix of the
codes for more.

Variables: ``{'params': {'encoder': ..., 'decoder': ..., 'codebooks': (32, 1024, 128)}}``,
made by ``encodec_import.import_encodec_state_dict`` from a PyTorch state dict. The
default fields are the ``encodec`` package's 24 kHz model (causal, reflect padding,
weight norm folded in at import, 2-layer LSTMs, no input renormalisation, no
segmenting). Two ways in, as for ``SoundStream``: the Linen methods through
``model.apply``, or ``EnCodecCodec(model, variables)`` with host-side checks and jit;
both implement ``interface.Codec``.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from soundstorm_jax import validation
from soundstorm_jax.codec.encodec_layers import SEANetDecoder, SEANetEncoder
from soundstorm_jax.codec.host_codec import HostCodec


class EnCodec(nn.Module):
    """EnCodec codec; every default equals the ``encodec`` package's ``encodec_model_24khz``.

    Attributes:
      target_sample_hz: sample rate of the audio (mono).
      dimension: latent / codebook dimension.
      n_filters, n_residual_layers, ratios, kernel_size, last_kernel_size, residual_kernel_size,
      dilation_base, compress, true_skip, lstm_layers, causal, pad_mode, trim_right_ratio: the SEANet
        encoder/decoder arguments of the ``encodec`` package (``ratios`` in decoder order; the encoder
        downsamples in reverse order; ``hop_length = prod(ratios)``).
      codebook_size: codes per residual level.
      target_bandwidths: the bandwidths (kbps) the model supports; the largest fixes ``max_quantizers``.
      bandwidth: the bandwidth ``encode`` uses (one of ``target_bandwidths``).
    """
    target_sample_hz: int = 24000
    dimension: int = 128
    n_filters: int = 32
    n_residual_layers: int = 1
    ratios: Sequence[int] = (8, 5, 4, 2)
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    true_skip: bool = False
    lstm_layers: int = 2
    causal: bool = True
    pad_mode: str = 'reflect'
    trim_right_ratio: float = 1.0
    codebook_size: int = 1024
    target_bandwidths: Sequence[float] = (1.5, 3.0, 6.0, 12.0, 24.0)
    bandwidth: float = 6.0

    # ---- static facts (the ``Codec`` properties) -------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        """Hz of the audio, ``target_sample_hz``."""
        return self.target_sample_hz

    @property
    def hop_length(self) -> int:
        """Audio samples per code frame."""
        return int(math.prod(self.ratios))

    @property
    def frame_rate(self) -> float:
        """Code frames per second."""
        return self.target_sample_hz / self.hop_length

    @property
    def kbps_per_level(self) -> float:
        """Bandwidth of one residual level (the ``encodec`` package rounds the frame rate up)."""
        return math.log2(self.codebook_size) * math.ceil(self.target_sample_hz / self.hop_length) / 1000

    @property
    def max_quantizers(self) -> int:
        """Residual levels the model holds (those of its largest target bandwidth)."""
        return int(1000 * max(self.target_bandwidths) // (math.ceil(self.target_sample_hz / self.hop_length) * 10))

    def levels_for_bandwidth(self, bandwidth: float) -> int:
        """Residual levels for ``bandwidth`` kbps, which must be one of ``target_bandwidths``."""
        if bandwidth not in tuple(self.target_bandwidths):
            raise ValueError(f"bandwidth={bandwidth} kbps is not supported; choose one of "
                             f"{tuple(self.target_bandwidths)} kbps")
        return max(1, int(math.floor(bandwidth / self.kbps_per_level)))

    @property
    def num_quantizers(self) -> int:
        """Levels ``encode`` emits at ``bandwidth``."""
        return self.levels_for_bandwidth(self.bandwidth)

    @property
    def grouped_quantizers(self) -> int:
        """EnCodec's residual VQ has one group."""
        return 1

    def num_frames(self, num_samples: int) -> int:
        """Frames for audio of ``num_samples`` samples."""
        return -(-int(num_samples) // self.hop_length)

    # ---- submodules ---------------------------------------------------------------------------------------
    def setup(self):
        seanet = dict(dimension=self.dimension, n_filters=self.n_filters, n_residual_layers=self.n_residual_layers,
                      ratios=tuple(self.ratios), kernel_size=self.kernel_size, last_kernel_size=self.last_kernel_size,
                      residual_kernel_size=self.residual_kernel_size, dilation_base=self.dilation_base,
                      compress=self.compress, true_skip=self.true_skip, lstm_layers=self.lstm_layers,
                      causal=self.causal, pad_mode=self.pad_mode)
        self.encoder = SEANetEncoder(**seanet)
        self.decoder = SEANetDecoder(trim_right_ratio=self.trim_right_ratio, **seanet)
        self.codebooks = self.param('codebooks', nn.initializers.normal(1.0),
                                    (self.max_quantizers, self.codebook_size, self.dimension))

    # ---- latents ------------------------------------------------------------------------------------------
    def encode_latents(self, audio: jax.Array) -> jax.Array:
        """audio ``(b t)`` -> latents ``(b ceil(t/hop) dimension)`` float32 (the encoder pads by reflection)."""
        validation.check_audio(audio)
        return self.encoder(audio.astype(jnp.float32)[..., None])

    def decode_latents(self, latents: jax.Array) -> jax.Array:
        """latents ``(b n dimension)`` -> audio ``(b n*hop)`` float32."""
        return self.decoder(latents.astype(jnp.float32))[..., 0]

    def quantize(self, latents: jax.Array, num_levels: int) -> jax.Array:
        """Greedy residual VQ with Euclidean codebooks: latents ``(b n d)`` -> codes ``(b n num_levels)`` int32."""
        residual, codes = latents, []
        for level in range(num_levels):
            book = self.codebooks[level]  # (K, d)
            # Negative squared distance in the reference's expanded form; argmax takes the first best code.
            # Full-precision matmul: the choice is discrete, so reduced precision (TF32, bf16 passes) would flip codes.
            cross = jnp.einsum('bnd,kd->bnk', residual, book, precision=jax.lax.Precision.HIGHEST)
            score = -(jnp.sum(residual ** 2, -1, keepdims=True) - 2 * cross + jnp.sum(book ** 2, -1))
            idx = jnp.argmax(score, axis=-1).astype(jnp.int32)
            residual = residual - book[idx]
            codes.append(idx)
        return jnp.stack(codes, axis=-1)

    def dequantize(self, codes: jax.Array) -> jax.Array:
        """codes ``(b n q)`` -> latents ``(b n d)``: the sum of each level's code vector."""
        out = jnp.zeros(codes.shape[:2] + (self.dimension,), jnp.float32)
        for level in range(codes.shape[-1]):
            out = out + self.codebooks[level][codes[..., level]]
        return out

    # ---- public API -----------------------------------------------------------------------------------------
    def encode(self, audio: jax.Array, sample_rate: int | None = None, num_levels: int | None = None) -> jax.Array:
        """audio ``(b t)`` -> codes ``(b ceil(t/hop) q)`` int32, ``q = num_levels or num_quantizers``;
        ``sample_rate`` (optional) is refused unless it is ``target_sample_hz``."""
        validation.check_sample_rate(sample_rate, self.sample_rate)
        validation.check_num_levels(num_levels, self.max_quantizers)
        return self.quantize(self.encode_latents(audio), self.num_quantizers if num_levels is None else num_levels)

    def decode(self, codes: jax.Array, length: int | None = None) -> jax.Array:
        """codes ``(b n q)``, ``q <= max_quantizers`` -> audio ``(b n*hop)``, or ``(b length)`` when given."""
        validation.check_codes(codes, codebook_size=self.codebook_size, num_quantizers=self.max_quantizers,
                               fewer_levels=True)
        validation.check_length(length, codes.shape[1] * self.hop_length)
        audio = self.decode_latents(self.dequantize(codes))
        return audio if length is None else audio[:, :length]

    def __call__(self, audio: jax.Array) -> jax.Array:
        """audio ``(b t)`` -> reconstruction ``(b t)`` at ``bandwidth`` (the reference model's ``forward``)."""
        return self.decode(self.encode(audio), length=audio.shape[1])


class EnCodecCodec(HostCodec):
    """An EnCodec bound to its variables, with jitted, host-validated ``encode``/``decode`` (see ``HostCodec``).

    ``codec = EnCodecCodec(EnCodec(bandwidth=6.0), variables)``: ``encode`` emits ``num_quantizers`` levels
    (those of ``bandwidth``), ``decode`` takes up to ``max_quantizers``. ``codec.with_bandwidth(24.0)`` gives
    the same weights at another bandwidth.
    """

    def __init__(self, model: EnCodec, variables, compiler_options: dict | None = None):
        model.levels_for_bandwidth(model.bandwidth)  # a bad bandwidth fails here, not at the first call
        super().__init__(model, variables, compiler_options)

    bandwidth = property(lambda self: self.model.bandwidth)

    def with_bandwidth(self, bandwidth: float) -> EnCodecCodec:
        """The same weights emitting the levels of ``bandwidth`` kbps (one of the model's target bandwidths)."""
        return EnCodecCodec(self.model.clone(bandwidth=bandwidth), self.variables, self.compiler_options)
