"""Phoneme ids and the phonemiser: text -> time-aligned per-frame phoneme ids.

The inventory is fixed (ids never change meaning; append only): eSpeak NG's
English phoneme mnemonics over the accents the corpus uses, stress marks
stripped ("'oU" and ",oU" are both "oU"). Reserved ids:

  0 <pad>  padding, never produced by the phonemiser
  1 <sil>  silence: before the first phoneme and eSpeak's pauses (_, _:, _!)
  2 <unk>  a mnemonic outside the inventory (`phonemize(strict=True)` refuses it)

Per-frame ids: frame f (at `frame_rate` Hz) gets the phoneme sounding at
its centre, (f + 0.5) / frame_rate seconds; an utterance of n samples at
rate sr has ceil(n * frame_rate / sr) frames, so the frames cover the audio.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import numpy as np

from soundstorm_jax.data import espeak_ffi

PAD, SILENCE, UNKNOWN = "<pad>", "<sil>", "<unk>"
PAD_ID, SILENCE_ID, UNKNOWN_ID = 0, 1, 2
_VOWELS = ("@", "@2", "@5", "@L", "3", "3:", "a", "a#", "a2", "aa", "A:", "A@", "aI", "aI@",
           "aI2", "aI3", "aU", "aU@", "e", "e#", "e@", "E", "E2", "eI", "i", "i:", "i@", "i@3",
           "I", "I#", "I2", "I2#", "IR", "o@", "O:", "O@", "O2", "oU", "oU#", "OI", "u:", "U",
           "U@", "V", "VR", "0", "0#", "u", "o", "O")
_CONSONANTS = ("p", "b", "t", "d", "k", "g", "f", "v", "T", "D", "s", "z", "S", "Z", "h", "m",
               "n", "N", "l", "r", "w", "j", "tS", "dZ", "t#", "t2", "t[", "d#", "r-", "w#",
               "x", "?", "n-", "l/", "l#", "z#", ";", "C", "hw", "*")
PHONEMES: tuple[str, ...] = (PAD, SILENCE, UNKNOWN) + _VOWELS + _CONSONANTS
VOCAB_SIZE = len(PHONEMES)
_ID = {p: i for i, p in enumerate(PHONEMES)}
_PAUSES = frozenset({"_", "_:", "_!", "_^_", ""})
_STRESS = re.compile(r"[',%=]")
# What the phonemiser will read: letters, digits, spaces and plain punctuation.
_SPEAKABLE = re.compile(r"[A-Za-z0-9\s.,;:!?'\"()\-]")


def phoneme_id(mnemonic: str) -> int:
    """An eSpeak mnemonic (stress marks allowed) -> its id; <unk> if unknown."""
    if mnemonic in _PAUSES:
        return SILENCE_ID
    return _ID.get(_STRESS.sub("", mnemonic), UNKNOWN_ID)


def num_frames(num_samples: int, sample_rate: int, frame_rate: float) -> int:
    """Frames needed to cover `num_samples` samples: ceil(samples * fps / sr)."""
    return math.ceil(num_samples * frame_rate / sample_rate - 1e-9)


def frame_ids(start_seconds: np.ndarray, ids: np.ndarray, frames: int,
              frame_rate: float) -> np.ndarray:
    """Per-frame phoneme ids from phoneme start times.

    Args:
      start_seconds: float (phonemes,), non-decreasing start times.
      ids: int (phonemes,), their ids.
      frames: how many frames to label.

    Returns:
      int32 (frames,): the id sounding at each frame's centre; <sil> before
      the first phoneme.
    """
    centres = (np.arange(frames) + 0.5) / frame_rate
    which = np.searchsorted(np.asarray(start_seconds, np.float64), centres, side="right") - 1
    labelled = np.concatenate([[SILENCE_ID], np.asarray(ids, np.int32)])
    return labelled[which + 1].astype(np.int32)


@dataclasses.dataclass(frozen=True)
class TimedPhonemes:
    """A phonemised utterance.

    Attributes:
      frame_ids: int32 (frames,), one id per frame at `frame_rate`.
      phonemes: eSpeak mnemonics in order; `start_seconds` float64 (phonemes,).
      duration_seconds: the synthesized audio's length.
    """
    frame_ids: np.ndarray
    phonemes: tuple[str, ...]
    start_seconds: np.ndarray
    duration_seconds: float
    frame_rate: float


def check_speakable(text: str) -> None:
    """Raises ValueError naming characters the phonemiser will not read."""
    bad = sorted({c for c in text if not _SPEAKABLE.fullmatch(c)})
    if bad:
        raise ValueError(f"text has characters the phonemiser cannot speak: {bad!r} "
                         "(use letters, digits, spaces and . , ; : ! ? ' \" ( ) -)")
    if not any(c.isalnum() for c in text):
        raise ValueError(f"text {text!r} has nothing to speak")


def timed_phonemes(phonemes: Sequence[str], starts: np.ndarray, num_samples: int,
                   sample_rate: int, frame_rate: float, *, strict: bool) -> TimedPhonemes:
    """eSpeak's phoneme events -> `TimedPhonemes` for audio of `num_samples`."""
    ids = np.array([phoneme_id(p) for p in phonemes], np.int32)
    if strict and np.any(ids == UNKNOWN_ID):
        unknown = sorted({p for p, i in zip(phonemes, ids) if i == UNKNOWN_ID})
        raise ValueError(f"eSpeak produced phonemes outside the inventory: {unknown}")
    seconds = np.asarray(starts, np.float64) / sample_rate
    frames = num_frames(num_samples, sample_rate, frame_rate)
    return TimedPhonemes(frame_ids(seconds, ids, frames, frame_rate), tuple(phonemes),
                         seconds, num_samples / sample_rate, frame_rate)


def phonemize(text: str, *, voice: str = "en-us", rate: int = 175, pitch: int = 50,
              frame_rate: float = 50.0, strict: bool = True) -> TimedPhonemes:
    """Free text -> per-frame phoneme ids, timed as eSpeak would speak it.

    This is the conditioning a model trained on the embedded corpus expects:
    use the same `frame_rate` as the corpus (its `semantic_rate` metadata).
    Thread-safe; voice, rate and pitch apply to this call only.

    Args:
      text: English text (see `check_speakable`).
      voice, rate, pitch: as in `espeak_ffi.synthesize`; the rate sets the
        durations, so the number of frames.
      strict: raise on phonemes outside the inventory instead of <unk>.
    """
    check_speakable(text)
    result = espeak_ffi.synthesize(text, voice=voice, rate=rate, pitch=pitch)
    return timed_phonemes(result.phonemes, result.phoneme_starts, len(result.audio),
                          espeak_ffi.SAMPLE_RATE, frame_rate, strict=strict)
