"""Log-mel frames aligned with the corpus's per-frame phoneme ids, and the overlap rule for comparing them.

The corpus labels frame f (at `frame_rate` Hz) with the phoneme sounding at its
centre, (f + 0.5) / frame_rate seconds, and an utterance of n samples has
ceil(n * frame_rate / sample_rate) frames (`data.phonemes`). `log_mel` makes
exactly those frames: the STFT (codec/spectral.py, centred frames) runs on the
audio without its first hop/2 samples, so its frame f is centred at
(f + 0.5) * hop samples, and the audio is zero-padded to a whole number of hops
first, so the frame count is the labels' count.

Features are log-mel magnitudes normalised per utterance and per mel band
(mean 0, std 1 over the utterance's frames): the recognizer then sees the
spectral shape of phonemes, not the recording's level or a voice's fixed
spectral tilt, which is what lets it transfer to a voice it was not trained on.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from soundstorm_jax.codec import spectral


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """How waveforms become recognizer inputs. `hop` = sample_rate / frame_rate must be a whole number."""
    sample_rate: int = 16000
    frame_rate: float = 50.0
    n_fft: int = 512     # 32 ms windows, as speech recognizers use
    n_mels: int = 40

    @property
    def hop(self) -> int:
        hop = self.sample_rate / self.frame_rate
        if hop != int(hop):
            raise ValueError(f"sample_rate {self.sample_rate} is not a whole number of frames at {self.frame_rate} Hz")
        return int(hop)


def num_frames(num_samples: int, config: FeatureConfig) -> int:
    """The corpus's frame count for `num_samples` samples: ceil(samples / hop)."""
    return -(-int(num_samples) // config.hop)


def raw_log_mel(audio: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """audio (t,) -> log mel magnitudes (1 + t // hop, n_mels), centred Hann frames as `spectral.stft`.

    numpy, not the jnp STFT: every utterance has its own length, and a compile per length would cost more
    than the transform itself.
    """
    pad = config.n_fft // 2
    x = np.pad(audio, (pad, pad))
    frames = 1 + (len(x) - config.n_fft) // config.hop
    index = np.arange(frames)[:, None] * config.hop + np.arange(config.n_fft)[None, :]
    window = np.asarray(spectral.hann_window(config.n_fft))
    magnitude = np.abs(np.fft.rfft(x[index] * window, axis=-1)).astype(np.float32)
    filters = np.asarray(spectral.mel_filterbank(config.sample_rate, config.n_fft, config.n_mels))
    return np.log(np.maximum(magnitude @ filters, 1e-5))


def log_mel(audio: np.ndarray, config: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """One waveform -> normalised log-mel frames aligned with its phoneme ids.

    Args:
      audio: float (samples,) in [-1, 1] at `config.sample_rate`.

    Returns:
      float32 (ceil(samples / hop), n_mels): frame f centred at (f + 0.5) * hop samples,
      each mel band at mean 0 and std 1 over the utterance.
    """
    audio = np.asarray(audio, np.float32).ravel()
    frames = num_frames(len(audio), config)
    if frames == 0:
        return np.zeros((0, config.n_mels), np.float32)
    hop = config.hop
    # Pad to whole hops, then drop the first hop/2 samples: centred STFT frame f of the result sits at
    # (f + 0.5) * hop of the original, and 1 + (frames * hop - hop/2) // hop = frames frames come out.
    padded = np.zeros(frames * hop, np.float32)
    padded[:len(audio)] = audio
    raw = raw_log_mel(padded[hop // 2:], config)[:frames]
    mean = raw.mean(axis=0, keepdims=True)
    std = raw.std(axis=0, keepdims=True)
    return ((raw - mean) / np.maximum(std, 1e-3)).astype(np.float32)



def overlap(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The common prefix of two frame sequences: (a[:n], b[:n]) with n = min(len(a), len(b)).

    Both start at the audio's first sample, so frame f of one is frame f of the
    other; frames past the shorter one have nothing to be compared with and are
    left out (not counted as errors).
    """
    n = min(len(a), len(b))
    return a[:n], b[:n]
