"""Intelligibility: how many frames of speech a phoneme recognizer hears as the phonemes they should carry.

`frame_accuracy` runs a trained recognizer (`recognizer.py`) on waveforms and
compares its per-frame ids with reference phoneme ids (the corpus's, or those
a model was conditioned on). `intelligibility` gathers the four figures the
demo reports:

  originals        held-out original audio vs its own phoneme ids (the ceiling)
  reconstructions  the codec's reconstructions of the same clips vs the same ids
  generated        generated speech vs the phoneme ids it was conditioned on
  wrong_sentence   the same generated speech vs another sentence's ids: the
                   chance level of this comparison (silences and frequent
                   phonemes line up by accident), which `generated` must beat

Length mismatches are handled by the overlap rule (`features.overlap`): a
waveform of n samples gives ceil(n / hop) frames, frame f of the waveform is
compared with id f of its reference, and only the frames both have are scored
(a longer reference or a longer waveform adds no errors, and the frame count
reported says how many were compared). Accuracies are pooled over frames (hits
/ frames over all clips of a set), so a batch scores what its clips score one by
one, weighted by their lengths. Ids equal to the pad id are not scored.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from soundstorm_jax.data import phonemes
from soundstorm_jax.evaluation import features as features_lib
from soundstorm_jax.evaluation.recognizer import Recognizer, recognize


def frame_hits(predicted: np.ndarray, reference: np.ndarray) -> tuple[int, int]:
    """(hits, frames) of per-frame ids over their overlap; reference pad ids are not scored."""
    predicted, reference = features_lib.overlap(np.asarray(predicted), np.asarray(reference))
    scored = reference != phonemes.PAD_ID
    return int(np.sum((predicted == reference) & scored)), int(np.sum(scored))


def frame_accuracy(recognizer: Recognizer, waveforms: Sequence[np.ndarray],
                   phoneme_ids: Sequence[np.ndarray]) -> dict:
    """Pooled frame accuracy of the recognizer on waveforms against reference ids.

    Args:
      waveforms: float (samples_i,) each, at the recognizer's sample rate.
      phoneme_ids: int (frames_i,) each, at its frame rate, frame 0 at sample 0.

    Returns:
      {'accuracy': hits / frames (None when no frame overlaps), 'frames': scored frames,
       'per_clip': [accuracy_i (None when clip i has no overlap)]}.
    """
    if len(waveforms) != len(phoneme_ids):
        raise ValueError(f"{len(waveforms)} waveforms but {len(phoneme_ids)} phoneme id sequences")
    counts = [frame_hits(p, ids) for p, ids in zip(recognize(recognizer, waveforms), phoneme_ids)]
    hits, frames = sum(h for h, _ in counts), sum(n for _, n in counts)
    return dict(accuracy=hits / frames if frames else None, frames=frames,
                per_clip=[h / n if n else None for h, n in counts])


def intelligibility(recognizer: Recognizer, *, originals: Sequence[np.ndarray],
                    original_ids: Sequence[np.ndarray],
                    reconstructions: Optional[Sequence[np.ndarray]] = None,
                    generated: Optional[Sequence[np.ndarray]] = None,
                    generated_ids: Optional[Sequence[np.ndarray]] = None,
                    wrong_ids: Optional[Sequence[np.ndarray]] = None) -> dict:
    """The four frame accuracies (see the module docstring), each a `frame_accuracy` dict.

    Args:
      originals: held-out original waveforms, float (samples_i,) each; `original_ids` their ids (frames_i,).
      reconstructions: the codec's reconstructions of `originals`, scored against `original_ids`.
      generated: generated waveforms (without their prompt), scored against `generated_ids` (what each was
        conditioned on, from its first frame) and against `wrong_ids` (another sentence's ids for each).

    Returns:
      {'originals': ..., 'reconstructions': ..., 'generated': ..., 'wrong_sentence': ...}, the last three
      only when their inputs are given; plus 'reconstruction_ratio' and 'generated_ratio', the accuracy as a
      fraction of the originals' (the share of what the recognizer hears in the originals that survives).
    """
    result = {"originals": frame_accuracy(recognizer, originals, original_ids)}
    if reconstructions is not None:
        result["reconstructions"] = frame_accuracy(recognizer, reconstructions, original_ids)
    if generated is not None:
        if generated_ids is None or wrong_ids is None:
            raise ValueError("generated speech needs generated_ids and wrong_ids")
        result["generated"] = frame_accuracy(recognizer, generated, generated_ids)
        result["wrong_sentence"] = frame_accuracy(recognizer, generated, wrong_ids)
    ceiling = result["originals"]["accuracy"]
    for name, ratio in (("reconstructions", "reconstruction_ratio"), ("generated", "generated_ratio")):
        if name in result:
            value = result[name]["accuracy"]
            result[ratio] = value / ceiling if value is not None and ceiling else None
    return result
