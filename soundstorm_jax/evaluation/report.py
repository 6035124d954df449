"""The whole speech measurement from corpus clips, as the demo reports it: intelligibility and voice.

`speech_report` trains the recognizer on the training voices' clips, scores
the four intelligibility figures on the held-out clips, their reconstructions
and the generated samples, compares their pitch (median F0 of the voiced
frames) with the originals', and ranks each reconstruction's and sample's voice
among the corpus voices (training voices enrolled from their clips, held-out
voices from their original clips; the whitening is fitted on the training
voices only). `markdown` renders it for report.md. Everything is a function of
the clips and the key.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import numpy as np

from soundstorm_jax.evaluation import voice as voice_lib
from soundstorm_jax.evaluation.intelligibility import intelligibility
from soundstorm_jax.evaluation.recognizer import Recognizer, RecognizerConfig, train_recognizer


@dataclasses.dataclass(frozen=True)
class Clip:
    """A corpus utterance: audio float (samples,), its per-frame phoneme_ids int (frames,), its speaker."""
    audio: np.ndarray
    phoneme_ids: np.ndarray
    speaker: str


@dataclasses.dataclass(frozen=True)
class GeneratedClip:
    """Generated speech without its prompt: audio float (samples,), the phoneme_ids it was conditioned on
    (frames,) from its first frame, another sentence's wrong_ids (frames',), and the prompt's speaker."""
    audio: np.ndarray
    phoneme_ids: np.ndarray
    wrong_ids: np.ndarray
    speaker: str


def _voice_summary(ranks: list[dict]) -> dict:
    return dict(mean_rank=float(np.mean([r["rank"] for r in ranks])),
                top1=float(np.mean([r["rank"] == 1 for r in ranks])),
                mean_margin=float(np.mean([r["margin"] for r in ranks])),
                mean_distance=float(np.mean([r["distance"] for r in ranks])), clips=len(ranks))


def speech_report(train: Sequence[Clip], held_out: Sequence[Clip], key: jax.Array, *,
                  reconstructions: Optional[Sequence[np.ndarray]] = None,
                  generated: Sequence[GeneratedClip] = (),
                  config: RecognizerConfig = RecognizerConfig(),
                  recognizer: Optional[Recognizer] = None, recognizer_cache: Optional[str] = None) -> dict:
    """Intelligibility and voice figures (JSON-ready).

    Args:
      train: the training voices' clips (the recognizer's and the whitening's data).
      held_out: held-out clips (originals).
      key: the recognizer's training key.
      reconstructions: float (samples_i,) per held-out clip, the codec's reconstruction of it.
      generated: generated samples.
      recognizer: one already trained (with its config); None trains one on `train` with `key` and `config`.
      recognizer_cache: a local folder where that training is kept and found again (`train_recognizer`'s
        cache_dir); None trains every time.

    Returns:
      {'recognizer': its training set and final loss, 'intelligibility': accuracy and scored frames of
       originals / reconstructions / generated / wrong_sentence and the ratios to the originals,
       'voice': {'voices': number enrolled, 'reconstructions': summary, 'generated': summary} where a
       summary is mean rank (1 = the right voice is nearest), top1 (fraction ranked first), mean margin and
       mean distance to the right voice (the originals' is the in-voice spread),
       'pitch': median over clips of each clip's median F0 in Hz for originals / reconstructions / generated,
       and reconstruction_ratio (median of reconstruction / its original) and generated_ratio (median of
       generated / the median of its prompt voice's originals): 1 when the pitch is kept,
       'samples': per generated sample {accuracy, wrong_sentence_accuracy, voice_rank, voice_margin, nearest_voice,
       f0_hz}}.
    """
    final_loss = None
    if recognizer is None:
        recognizer, losses = train_recognizer([c.audio for c in train], [c.phoneme_ids for c in train], key, config,
                                              cache_dir=recognizer_cache)
        final_loss = float(losses[-1])
    figures = intelligibility(
        recognizer, originals=[c.audio for c in held_out], original_ids=[c.phoneme_ids for c in held_out],
        reconstructions=reconstructions, generated=[g.audio for g in generated] if generated else None,
        generated_ids=[g.phoneme_ids for g in generated], wrong_ids=[g.wrong_ids for g in generated])
    scores = {name: dict(accuracy=v["accuracy"], frames=v["frames"]) for name, v in figures.items()
              if isinstance(v, dict)}
    scores.update({name: v for name, v in figures.items() if name.endswith("_ratio")})

    feats = recognizer.config.features
    train_embeddings = np.stack([voice_lib.voice_embedding(c.audio, feats) for c in train])
    held_embeddings = np.stack([voice_lib.voice_embedding(c.audio, feats) for c in held_out])
    space = voice_lib.fit_voice_space(train_embeddings, [c.speaker for c in train])
    voices = voice_lib.enroll(space, np.concatenate([train_embeddings, held_embeddings]),
                              [c.speaker for c in train] + [c.speaker for c in held_out])
    # The originals are part of their voice's enrolment: their distance is the in-voice spread the others are
    # read against. A rank of 1 alone is weak evidence when the prompt's voice is the corpus's odd one out (the
    # tiny corpus's only female voice): speech unlike every training voice lands nearest to it.
    voice = dict(voices=len(voices), originals=_voice_summary([
        voice_lib.voice_rank(space, voices, e, c.speaker) for e, c in zip(held_embeddings, held_out)]))
    if reconstructions is not None:
        voice["reconstructions"] = _voice_summary([
            voice_lib.voice_rank(space, voices, voice_lib.voice_embedding(r, feats), c.speaker)
            for r, c in zip(reconstructions, held_out)])
    generated_f0 = [voice_lib.median_f0(g.audio, feats) for g in generated or ()]
    pitch = _pitch(held_out, reconstructions, generated, generated_f0, feats)
    samples = []
    if generated:
        ranks = [voice_lib.voice_rank(space, voices, voice_lib.voice_embedding(g.audio, feats), g.speaker)
                 for g in generated]
        voice["generated"] = _voice_summary(ranks)
        samples = [dict(accuracy=a, wrong_sentence_accuracy=w, voice_rank=r["rank"], voice_margin=r["margin"],
                        nearest_voice=r["nearest"], f0_hz=_finite(f0))
                   for a, w, r, f0 in zip(figures["generated"]["per_clip"], figures["wrong_sentence"]["per_clip"],
                                          ranks, generated_f0)]
    return dict(recognizer=dict(training_clips=len(train), training_voices=len({c.speaker for c in train}),
                                steps=recognizer.config.steps, final_loss=final_loss),
                intelligibility=scores, voice=voice, pitch=pitch, samples=samples)


def _finite(value: float) -> Optional[float]:
    return float(value) if np.isfinite(value) else None


def _pitch(held_out: Sequence[Clip], reconstructions, generated: Sequence[GeneratedClip], generated_f0: list[float],
           feats) -> dict:
    """Median F0 figures (see `speech_report`; `generated_f0`: each generated clip's median F0); None where no clip
    had voiced frames."""
    def median(values):
        values = [v for v in values if np.isfinite(v)]
        return float(np.median(values)) if values else None

    originals = [voice_lib.median_f0(c.audio, feats) for c in held_out]
    pitch = dict(originals_hz=median(originals))
    if reconstructions is not None:
        rebuilt = [voice_lib.median_f0(r, feats) for r in reconstructions]
        pitch.update(reconstructions_hz=median(rebuilt),
                     reconstruction_ratio=median([r / o for r, o in zip(rebuilt, originals)]))
    if generated:
        voice_f0 = {s: median([f for f, c in zip(originals, held_out) if c.speaker == s])
                    for s in {g.speaker for g in generated}}
        pitch.update(generated_hz=median(generated_f0), generated_ratio=median(
            [f / voice_f0[g.speaker] for f, g in zip(generated_f0, generated) if voice_f0[g.speaker]]))
    return pitch


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def markdown(report: dict) -> list[str]:
    """report.md lines for a `speech_report`."""
    rec, scores, voice = report["recognizer"], report["intelligibility"], report["voice"]
    lines = [f"A frame-level phoneme recognizer trained on the {rec['training_voices']} training voices "
             f"({rec['training_clips']} clips, {rec['steps']} steps, final loss {_num(rec['final_loss'])}) scores the "
             "fraction of frames it hears as the phoneme they should carry; the wrong sentence is the chance level.",
             "", "| speech | phonemes | frame accuracy | of originals | frames |", "|---|---|---|---|---|"]
    rows = (("held-out originals", "their own", "originals", None),
            ("codec reconstructions", "the originals'", "reconstructions", "reconstruction_ratio"),
            ("generated", "conditioned on", "generated", "generated_ratio"),
            ("generated", "another sentence's", "wrong_sentence", None))
    lines += [f"| {what} | {against} | {_pct(scores[name]['accuracy'])} | "
              f"{_pct(scores.get(ratio)) if ratio else ''} | {scores[name]['frames']} |"
              for what, against, name, ratio in rows if name in scores]
    lines += ["", f"Voice: rank of the right voice among the {voice['voices']} corpus voices (1 = nearest; "
              "long-term spectrum and pitch, whitened within speakers on the training voices); margin = distance "
              "to the nearest other voice minus distance to the right one (> 0: closer to the right voice); the "
              "originals' distance is the voice's own spread, and one far above it means another voice, however "
              "the rank comes out.", "",
              "| speech | mean rank | ranked first | mean margin | mean distance | clips |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {v['mean_rank']:.2f} | {_pct(v['top1'])} | {v['mean_margin']:.2f} | "
              f"{v['mean_distance']:.2f} | {v['clips']} |"
              for name, v in ((n, voice.get(n)) for n in ("originals", "reconstructions", "generated")) if v]
    pitch = report.get("pitch", {})
    lines += ["", "Pitch: median F0 of the voiced frames (autocorrelation), the median over clips; the ratio is to "
              "the original (reconstructions) or to the prompt voice's originals (generated): 1 keeps the pitch.", "",
              "| speech | median F0 | ratio |", "|---|---|---|"]
    lines += [f"| {name} | {_num(pitch.get(name + '_hz'))} Hz | {_num(pitch.get(ratio)) if ratio else ''} |"
              for name, ratio in (("originals", None), ("reconstructions", "reconstruction_ratio"),
                                  ("generated", "generated_ratio")) if name + "_hz" in pitch]
    return lines
