"""A voice measure: is a clip closer to its prompt's voice than to the corpus's other voices?

A clip's voice embedding (`voice_embedding`, (2 * n_mels + 2,)) is its
long-term spectrum and its pitch: the mean and standard deviation of each
log-mel band over its speech frames (formants, vocal tract length, spectral
tilt), and the median and spread of log F0 over its voiced frames (eSpeak's
voices differ in pitch as much as in formants). What a sentence says moves
these statistics too, so distances are measured after within-speaker
whitening (`fit_voice_space`, WCCN as in speaker verification): the
covariance of embeddings around their own speaker's mean, estimated on the
training voices only and shrunk towards its diagonal (the tiny corpus has
fewer utterances than dimensions), is mapped to the identity. Directions in
which one speaker's utterances vary (content) then count little, directions
in which only voices differ count a lot.

Each corpus voice is enrolled as the mean whitened embedding of its clips
(`enroll`); `voice_rank` ranks the voices by distance to a clip and returns
the rank of the expected one (1 = nearest) and its margin: the distance to
the nearest other voice minus the distance to the expected one (> 0: closer
to the expected voice than to any other; in whitened units).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from soundstorm_jax.evaluation import features as features_lib

F0_RANGE_HZ = (60.0, 400.0)
_VOICED = 0.5       # normalised autocorrelation peak above which a frame counts as voiced
_SPEECH_DB = 35.0   # frames within this many dB of the clip's loudest count as speech
_SHRINK = 0.5       # weight of the diagonal in the within-speaker covariance


def log_f0(audio: np.ndarray, config: features_lib.FeatureConfig = features_lib.FeatureConfig()) -> np.ndarray:
    """log F0 (Hz) of the voiced frames of one waveform (float (samples,)) -> float (voiced frames,).

    Autocorrelation pitch: 64 ms frames at the feature hop, the lag of the
    highest normalised autocorrelation peak within F0_RANGE_HZ; a frame is
    voiced when that peak exceeds 0.5.
    """
    audio = np.asarray(audio, np.float64).ravel()
    size = int(0.064 * config.sample_rate)
    if len(audio) < size:
        return np.zeros(0)
    starts = np.arange(0, len(audio) - size + 1, config.hop)
    frames = audio[starts[:, None] + np.arange(size)[None]]
    frames = frames - frames.mean(axis=1, keepdims=True)
    spectrum = np.fft.rfft(frames, n=2 * size, axis=1)
    corr = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :size]
    # Divide by the overlap's length as well as the energy, so long lags are not penalised.
    corr = corr / np.maximum(corr[:, :1], 1e-12) * size / (size - np.arange(size))[None]
    low, high = int(config.sample_rate / F0_RANGE_HZ[1]), int(config.sample_rate / F0_RANGE_HZ[0])
    lag = low + np.argmax(corr[:, low:high], axis=1)
    peak = corr[np.arange(len(corr)), lag]
    voiced = peak > _VOICED
    return np.log(config.sample_rate / lag[voiced])


def median_f0(audio: np.ndarray, config: features_lib.FeatureConfig = features_lib.FeatureConfig()) -> float:
    """The median F0 in Hz over a waveform's voiced frames (`log_f0`); NaN when fewer than 3 frames are voiced."""
    f0 = log_f0(audio, config)
    return float(np.exp(np.median(f0))) if len(f0) >= 3 else float("nan")


def _raw_log_mel(audio: np.ndarray, config: features_lib.FeatureConfig) -> np.ndarray:
    """(frames, n_mels) log-mel without the per-utterance normalisation (the level and tilt are the voice)."""
    audio = np.asarray(audio, np.float32).ravel()
    return features_lib.raw_log_mel(audio, config) if len(audio) else np.zeros((0, config.n_mels), np.float32)


def voice_embedding(audio: np.ndarray,
                    config: features_lib.FeatureConfig = features_lib.FeatureConfig()) -> np.ndarray:
    """One waveform (float (samples,)) -> its voice embedding float64 (2 * n_mels + 2,).

    Level-independent: the mel means are taken relative to the clip's mean over bands.
    """
    mel = _raw_log_mel(audio, config)
    if len(mel) == 0:
        raise ValueError("voice_embedding needs a non-empty waveform")
    energy = mel.max(axis=1)
    speech = mel[energy >= energy.max() - _SPEECH_DB * np.log(10) / 20]
    mean = speech.mean(axis=0)
    f0 = log_f0(audio, config)
    pitch = [np.median(f0), np.std(f0)] if len(f0) >= 3 else [np.log(120.0), 0.0]
    return np.concatenate([mean - mean.mean(), speech.std(axis=0), pitch]).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class VoiceSpace:
    """Within-speaker whitening: whitened = (embedding - mean) @ transform. mean (d,), transform (d, d)."""
    mean: np.ndarray
    transform: np.ndarray

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        """(..., d) -> (..., d) whitened."""
        return (np.asarray(embeddings, np.float64) - self.mean) @ self.transform


def fit_voice_space(embeddings: np.ndarray, speakers: Sequence[str]) -> VoiceSpace:
    """Within-speaker whitening from training clips: embeddings (u, d), speakers (u,) names."""
    embeddings = np.asarray(embeddings, np.float64)
    speakers = np.asarray(speakers)
    if len(embeddings) != len(speakers) or len(set(speakers.tolist())) < 2:
        raise ValueError("fit_voice_space needs one speaker name per embedding and at least two speakers")
    centred = np.concatenate([embeddings[speakers == s] - embeddings[speakers == s].mean(axis=0)
                              for s in sorted(set(speakers.tolist()))])
    within = centred.T @ centred / max(len(centred) - 1, 1)
    within = (1 - _SHRINK) * within + _SHRINK * np.diag(np.diag(within)) + 1e-6 * np.eye(len(within))
    values, vectors = np.linalg.eigh(within)
    return VoiceSpace(mean=embeddings.mean(axis=0), transform=vectors / np.sqrt(values)[None])


def enroll(space: VoiceSpace, embeddings: np.ndarray, speakers: Sequence[str]) -> dict[str, np.ndarray]:
    """Each voice's mean whitened embedding: {speaker: (d,)} from embeddings (u, d) and their speakers (u,)."""
    whitened = space(embeddings)
    speakers = np.asarray(speakers)
    return {s: whitened[speakers == s].mean(axis=0) for s in sorted(set(speakers.tolist()))}


def voice_rank(space: VoiceSpace, voices: dict[str, np.ndarray], embedding: np.ndarray, speaker: str) -> dict:
    """Where `speaker` ranks among the enrolled `voices` for one clip's embedding (d,).

    Returns:
      {'rank': 1 = nearest, 'margin': nearest other voice's distance - the speaker's (> 0: closer to the
       speaker than to any other), 'distance': to the speaker, 'nearest': the nearest voice's name}.
    """
    if speaker not in voices or len(voices) < 2:
        raise ValueError(f"{speaker!r} must be one of at least two enrolled voices, got {sorted(voices)}")
    point = space(embedding)
    distances = {name: float(np.linalg.norm(point - centre)) for name, centre in voices.items()}
    own = distances[speaker]
    others = min(d for name, d in distances.items() if name != speaker)
    return dict(rank=1 + sum(d < own for name, d in distances.items() if name != speaker),
                margin=others - own, distance=own, nearest=min(distances, key=distances.get))
