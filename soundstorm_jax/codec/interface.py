"""The codec interface: what SoundStorm, the sampler, the data pipeline and the command line use of a codec.

Two kinds of object implement it, for SoundStream and EnCodec alike:

  * the Flax modules (``SoundStream``, ``EnCodec``): ``encode``/``decode`` run inside
    other traced code (``SoundStorm(net, codec=...)``, ``model.apply(..., method='encode')``);
  * the host-side codecs bound to their variables (``SoundStreamCodec``, ``EnCodecCodec``,
    see ``host_codec``): jitted ``encode``/``decode`` with every input checked first;
    what ``load_codec`` and ``load_encodec`` return.

The layout fields carry the names ``ConformerWrapper`` uses for the codes it reads
(``codebook_size``, ``num_quantizers``, ``grouped_quantizers``), so a codec and a
network match when those three are equal.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import jax


@runtime_checkable
class Codec(Protocol):
    """Audio ``(b, samples)`` float in [-1, 1] at ``sample_rate`` <-> codes ``(b, frames, G * Q)`` int32.

    ``frames = ceil(samples / hop_length)`` (audio is zero-padded to whole frames);
    codes are group-major: column ``g * Q + q`` is level ``q`` of group ``g``, values
    in ``[0, codebook_size)``.
    """

    @property
    def sample_rate(self) -> int:
        """Hz of the audio ``encode`` takes and ``decode`` returns."""

    @property
    def hop_length(self) -> int:
        """Audio samples per code frame."""

    @property
    def frame_rate(self) -> float:
        """Code frames per second, ``sample_rate / hop_length``."""

    @property
    def num_quantizers(self) -> int:
        """Residual levels per group ``Q`` that ``encode`` emits by default."""

    @property
    def codebook_size(self) -> int:
        """Codes per level ``K``."""

    @property
    def grouped_quantizers(self) -> int:
        """Groups ``G`` of a grouped residual VQ (1 for a plain one)."""

    def encode(self, audio, sample_rate: int | None = None, num_levels: int | None = None) -> jax.Array:
        """audio ``(b, samples)`` -> codes ``(b, frames, G * q)``; ``q = num_levels`` or ``num_quantizers``.

        ``sample_rate`` (optional) is the audio's rate, refused when it is not the codec's.
        """

    def decode(self, codes, length: int | None = None) -> jax.Array:
        """codes ``(b, frames, G * q)`` (the first ``q`` levels of each group) -> audio ``(b, frames * hop_length)``,
        or ``(b, length)`` when ``length`` is given."""
