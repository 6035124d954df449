"""A codec module bound to its variables: jitted ``encode``/``decode``, every input checked on the host first.

The base of ``SoundStreamCodec`` and ``EnCodecCodec``. Every check runs here,
before ``jax.jit`` is called: value checks (NaN/Inf audio, code range) need
concrete arrays, and a call that fails while tracing would still leave an
entry in the jit cache. Each new input shape compiles once.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from soundstorm_jax import validation


class HostCodec:
    """``codec.encode(audio (b, samples), sample_rate=None, num_levels=None)`` -> codes ``(b, frames, G * q)``
    int32; ``codec.decode(codes, length=None)`` -> audio ``(b, frames * hop)`` or ``(b, length)``.

    ``model`` is a codec module (``SoundStream``, ``EnCodec``) with ``encode``/``decode``
    methods and the ``Codec`` properties plus ``max_quantizers`` (levels ``decode``
    accepts); ``variables`` its trained variables (only ``collections`` are kept).
    ``compiler_options`` go to ``jax.jit`` (e.g. ``{'xla_backend_optimization_level': 0}``
    trades run time for compile time in tests).
    """

    collections: tuple[str, ...] = ("params",)

    def __init__(self, model, variables, compiler_options: dict | None = None):
        self.model = model
        self.variables = {k: v for k, v in variables.items() if k in self.collections}
        self.compiler_options = compiler_options
        cls = type(model)
        self._encode = jax.jit(lambda v, a, nl: model.apply(v, a, num_levels=nl, method=cls.encode),
                               static_argnums=2, compiler_options=compiler_options)
        self._decode = jax.jit(lambda v, c: model.apply(v, c, method=cls.decode), compiler_options=compiler_options)

    sample_rate = property(lambda self: self.model.sample_rate)
    hop_length = property(lambda self: self.model.hop_length)
    frame_rate = property(lambda self: self.model.frame_rate)
    num_quantizers = property(lambda self: self.model.num_quantizers)
    max_quantizers = property(lambda self: self.model.max_quantizers)
    codebook_size = property(lambda self: self.model.codebook_size)
    grouped_quantizers = property(lambda self: self.model.grouped_quantizers)

    def encode(self, audio, sample_rate: int | None = None, num_levels: int | None = None) -> jax.Array:
        validation.check_audio(audio)
        validation.check_sample_rate(sample_rate, self.sample_rate)
        validation.check_num_levels(num_levels, self.max_quantizers)
        return self._encode(self.variables, jnp.asarray(audio, jnp.float32), num_levels)

    def decode(self, codes, length: int | None = None) -> jax.Array:
        validation.check_codes(codes, codebook_size=self.codebook_size, num_quantizers=self.max_quantizers,
                               grouped_quantizers=self.grouped_quantizers, fewer_levels=True)
        validation.check_length(length, np.shape(codes)[1] * self.hop_length)
        audio = self._decode(self.variables, jnp.asarray(codes, jnp.int32))
        return audio if length is None else audio[:, :length]
