"""Metrics of our own for speech from the embedded corpus, trained on its training voices only.

  features         log-mel frames aligned with the corpus's per-frame phoneme ids; the overlap rule
  recognizer       a small frame-level phoneme recognizer (dilated convolutions, optax), deterministic in its key
  intelligibility  frame accuracy of originals, codec reconstructions, generated speech and the wrong-sentence
                   chance baseline
  voice            voice embeddings (long-term spectrum + F0), within-speaker whitening, the prompt voice's rank;
                   median F0
  report           the whole measurement from corpus clips, as the demo reports it (JSON and Markdown)
"""
from soundstorm_jax.evaluation.features import FeatureConfig, log_mel, overlap
from soundstorm_jax.evaluation.intelligibility import frame_accuracy, frame_hits, intelligibility
from soundstorm_jax.evaluation.recognizer import Recognizer, RecognizerConfig, recognize, train_recognizer
from soundstorm_jax.evaluation.voice import (VoiceSpace, enroll, fit_voice_space, median_f0, voice_embedding,
                                             voice_rank)

__all__ = ["FeatureConfig", "Recognizer", "RecognizerConfig", "VoiceSpace", "enroll", "fit_voice_space",
           "frame_accuracy", "frame_hits", "intelligibility", "log_mel", "median_f0", "overlap", "recognize",
           "train_recognizer", "voice_embedding", "voice_rank"]
