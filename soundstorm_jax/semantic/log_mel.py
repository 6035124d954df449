"""A weight-free semantic front end: log-mel frames at 50 Hz, normalised per utterance.

Where no pretrained speech encoder can be had (offline, the embedded corpus),
k-means ids of log-mel frames stand in for HuBERT's: ``soundstorm prepare
--semantic log-mel --fit-kmeans 64``. ``LogMelConfig`` plays the part of a
``SpeechEncoderConfig`` (sample rate, hop, frame rate, receptive field, feature
width, ``frame_lengths``), so ``layer_features``, the dataset code and
``SoundStorm``'s in-step tokenization take it unchanged; its "weights"
(``log_mel_variables``) are the fixed Hann window and mel filterbank.

The frames are ``evaluation.features.log_mel``'s (the recognizer's features),
computed in jnp, batched with a padding mask: frame f is centred at
(f + 0.5) * hop samples, a clip of n samples has ceil(n / hop) frames, and
samples past a clip's length are zeros, exactly as for the clip alone. With
``normalize`` (the default) each mel band is brought to mean 0 and std 1 over
the clip's valid frames: the ids then follow the spectral shape of the sounds
more than a voice's fixed spectral tilt or the recording's level.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from soundstorm_jax.codec import spectral

NAME = "log-mel"
"""What ``--semantic`` (and ``load_semantic_tokenizer``) take in place of a checkpoint for these features."""


@dataclasses.dataclass(frozen=True)
class LogMelConfig:
    """Log-mel frames: ``n_mels`` bands of an ``n_fft``-point STFT every ``sample_rate / frame_rate`` samples."""
    sample_rate: int = 16000
    frame_rate: float = 50.0
    n_fft: int = 512      # 32 ms windows at 16 kHz
    n_mels: int = 40
    normalize: bool = True

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.frame_rate > 0:
            raise ValueError(f"frame_rate must be positive, got {self.frame_rate!r}")
        hop = self.sample_rate / self.frame_rate
        if hop != int(hop) or int(hop) < 2:
            raise ValueError(f"sample_rate / frame_rate must be a whole number of samples (at least 2), got "
                             f"{self.sample_rate} / {self.frame_rate:g} = {hop:g}")

    @property
    def hop_length(self) -> int:
        """Samples per frame."""
        return int(self.sample_rate / self.frame_rate)

    @property
    def receptive_field(self) -> int:
        """Samples a clip needs for one frame (one: a clip of n samples has ceil(n / hop) frames)."""
        return 1

    @property
    def hidden_size(self) -> int:
        """The features' width (the k-means' dimension), as ``SpeechEncoderConfig.hidden_size``."""
        return self.n_mels

    def frame_lengths(self, lengths) -> np.ndarray:
        """Valid frames ``(b,)`` of clips of ``lengths`` samples: ceil(n / hop)."""
        return -(-np.asarray(lengths, np.int64) // self.hop_length)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def log_mel_variables(config: LogMelConfig) -> dict:
    """``{'params': {'window': (n_fft,), 'mel_filters': (n_fft // 2 + 1, n_mels)}}`` float32: the fixed Hann window
    and mel filterbank (``codec.spectral``'s), the features' only "weights". Host arrays: nothing is compiled (the
    command checks its flags before anything compiles)."""
    n = np.arange(config.n_fft, dtype=np.float32)  # spectral.hann_window's periodic window, in numpy
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / config.n_fft)).astype(np.float32)
    filters = np.array(spectral.mel_filterbank_np(config.sample_rate, config.n_fft, config.n_mels), np.float32)
    return {"params": {"window": window, "mel_filters": filters}}


def param_shapes(config: LogMelConfig) -> dict:
    """The ``params`` shapes ``log_mel_variables(config)`` has."""
    return {"mel_filters": jax.ShapeDtypeStruct((config.n_fft // 2 + 1, config.n_mels), jnp.float32),
            "window": jax.ShapeDtypeStruct((config.n_fft,), jnp.float32)}


def log_mel_features(config: LogMelConfig, variables, audio: jax.Array,
                     lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """audio ``'b s'`` float, valid samples ``(b,)`` -> (features ``'b t n_mels'`` float32, valid frames ``'b t'``),
    ``t = ceil(s / hop)``. Traceable, no checks. Valid frames are what ``evaluation.features.log_mel`` gives for
    the clip alone (to float rounding); padded frames are zeros."""
    params = variables["params"]
    hop, n_fft = config.hop_length, config.n_fft
    b, s = audio.shape
    t = -(-s // hop)
    x = jnp.pad(audio.astype(jnp.float32), ((0, 0), (0, t * hop - s)))
    x = jnp.where(jnp.arange(t * hop)[None, :] < lengths[:, None], x, 0.0)  # The padding never reaches a frame.
    # Without its first hop/2 samples, centred STFT frame f of the clip sits at (f + 0.5) * hop; n_fft/2 zeros on
    # each side, and 1 + (t * hop - hop // 2) // hop = t frames come out.
    x = jnp.pad(x[:, hop // 2:], ((0, 0), (n_fft // 2, n_fft // 2)))
    index = jnp.arange(t)[:, None] * hop + jnp.arange(n_fft)[None, :]
    magnitude = jnp.abs(jnp.fft.rfft(x[:, index] * params["window"], axis=-1))       # (b, t, n_fft // 2 + 1)
    mel = jnp.matmul(magnitude, params["mel_filters"], precision=jax.lax.Precision.HIGHEST)
    features = jnp.log(jnp.maximum(mel, 1e-5))                                          # (b, t, n_mels)
    frames = (lengths + hop - 1) // hop
    mask = jnp.arange(t)[None, :] < frames[:, None]                                     # (b, t)
    weights = mask[..., None].astype(jnp.float32)
    if config.normalize:
        count = jnp.maximum(frames, 1)[:, None, None].astype(jnp.float32)
        mean = (features * weights).sum(axis=1, keepdims=True) / count
        std = jnp.sqrt((jnp.square(features - mean) * weights).sum(axis=1, keepdims=True) / count)
        features = (features - mean) / jnp.maximum(std, 1e-3)
    return features * weights, mask
