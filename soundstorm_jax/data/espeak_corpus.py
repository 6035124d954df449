"""The embedded speech corpus: eSpeak NG speech with time-aligned phonemes.

Real synthesized speech, generated on first use with no downloads and
deterministic from a seed. Speakers are eSpeak voices with variants (8
English accents x m1..m7, f1..f5), each with its own speaking rate and pitch,
jittered per utterance; sentences come from `grammar`. Every utterance's
phoneme events become per-frame phoneme ids (`phonemes`) stored as its
semantic tokens.

How it becomes a dataset: `build_corpus_folder` writes an ordinary audio
folder, which `prepare_corpus` prepares with `AudioFolder` like any other:

  <cache>/espeak-<size>-seed<seed>-<sr>hz-<fps>fps/
    audio/train/<speaker>/<speaker>-<n>.wav         int16 mono at sample_rate
    audio/train/<speaker>/<speaker>-<n>.json        text, speaker, voice, rate,
                                                    pitch, phonemes, starts (s)
    audio/train/<speaker>/<speaker>-<n>.semantic.npy  int32 per-frame phoneme ids
    audio/validation/...                            held-out speakers
    tfds/audio_folder/1.0.0/                        the prepared ArrayRecords

The dataset's metadata records `semantic_rate` (= frame_rate), the
phoneme inventory and its pad id. The cache directory is the `cache_dir`
argument, else $SOUNDSTORM_JAX_CACHE, else ~/.cache/soundstorm_jax.
Same (size, seed, rates) -> identical bytes; a finished build is reused.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Optional, Union

import numpy as np
import soundfile
import tqdm

from soundstorm_jax.data import audio_folder, audio_io, espeak_ffi, grammar, phonemes

ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc",
           "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = tuple(f"m{i}" for i in range(1, 8)) + tuple(f"f{i}" for i in range(1, 6))
_DONE = "COMPLETE"


@dataclasses.dataclass(frozen=True)
class CorpusSize:
    """How much to synthesize. Utterances average about 3.5 s."""
    num_speakers: int
    utterances_per_speaker: int
    held_out_speakers: int  # Their utterances form the validation split.


SIZES = {
    "tiny": CorpusSize(num_speakers=6, utterances_per_speaker=12, held_out_speakers=1),  # ~4 min
    "small": CorpusSize(num_speakers=40, utterances_per_speaker=26, held_out_speakers=4),  # ~1 h
}


@dataclasses.dataclass(frozen=True)
class Speaker:
    name: str
    voice: str
    rate: int    # words per minute
    pitch: int   # eSpeak's 0..100


@dataclasses.dataclass(frozen=True)
class Utterance:
    id: str
    split: str
    speaker: Speaker
    text: str
    rate: int
    pitch: int
    seed: int


def default_cache_dir() -> str:
    """$SOUNDSTORM_JAX_CACHE, else ~/.cache/soundstorm_jax (resolved now)."""
    return os.environ.get("SOUNDSTORM_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "soundstorm_jax")


def _size(size: Union[str, CorpusSize]) -> CorpusSize:
    if isinstance(size, CorpusSize):
        return size
    if size not in SIZES:
        raise ValueError(f"unknown corpus size {size!r}; known: {sorted(SIZES)}")
    return SIZES[size]


def speakers(num_speakers: int, seed: int) -> list[Speaker]:
    """Distinct voice+variant speakers with their own rate and pitch."""
    voices = [f"{a}+{v}" for a in ACCENTS for v in VARIANTS]
    if num_speakers > len(voices):
        raise ValueError(f"at most {len(voices)} speakers, asked for {num_speakers}")
    rng = np.random.default_rng([seed, 0])
    chosen = [voices[i] for i in rng.permutation(len(voices))[:num_speakers]]
    return [Speaker(name=v.replace("+", "_"), voice=v, rate=int(rng.integers(140, 211)),
                    pitch=int(rng.integers(25, 76))) for v in chosen]


def utterances(size: Union[str, CorpusSize], seed: int) -> list[Utterance]:
    """The corpus script: who says what, how fast, at what pitch; pure in `seed`."""
    size = _size(size)
    if not 0 <= size.held_out_speakers < size.num_speakers:
        raise ValueError("held_out_speakers must leave at least one training speaker")
    cast = speakers(size.num_speakers, seed)
    texts = grammar.sentences(seed, size.num_speakers * size.utterances_per_speaker)
    rng = np.random.default_rng([seed, 1])
    script = []
    for s, speaker in enumerate(cast):
        split = ("validation" if s >= size.num_speakers - size.held_out_speakers
                 else audio_folder.TRAIN)
        for u in range(size.utterances_per_speaker):
            rate = int(np.clip(speaker.rate * rng.uniform(0.9, 1.1), espeak_ffi.MIN_RATE,
                               espeak_ffi.MAX_RATE))
            pitch = int(np.clip(speaker.pitch + rng.integers(-5, 6), 0, 100))
            script.append(Utterance(id=f"{speaker.name}-{u:03d}", split=split, speaker=speaker,
                                    text=texts[s * size.utterances_per_speaker + u], rate=rate,
                                    pitch=pitch, seed=int(rng.integers(2**31 - 1))))
    return script


def corpus_dir(size: Union[str, CorpusSize], seed: int, sample_rate: int,
               frame_rate: float, cache_dir: Optional[str] = None) -> str:
    """Where `build_corpus_folder` puts this corpus."""
    size_name = size if isinstance(size, str) else (
        f"{size.num_speakers}x{size.utterances_per_speaker}-{size.held_out_speakers}")
    return os.path.join(cache_dir or default_cache_dir(),
                        f"espeak-{size_name}-seed{seed}-{sample_rate}hz-{frame_rate:g}fps")


def _write_utterance(utt: Utterance, raw_path: str, root: str, sample_rate: int,
                     frame_rate: float) -> float:
    """Resamples one synthesized utterance and writes its WAV + sidecars; returns seconds."""
    raw = np.load(raw_path)
    audio = raw["audio"]
    if sample_rate != espeak_ffi.SAMPLE_RATE:
        audio = audio_io.float_to_int16(audio_io.resample(
            audio_io.int16_to_float(audio), espeak_ffi.SAMPLE_RATE, sample_rate))
    names = [str(p) for p in raw["phonemes"]]
    starts = raw["phoneme_starts"] / espeak_ffi.SAMPLE_RATE
    # Label exactly the frames covering the written (resampled) audio.
    ids = phonemes.frame_ids(starts, np.array([phonemes.phoneme_id(p) for p in names]),
                             phonemes.num_frames(len(audio), sample_rate, frame_rate), frame_rate)
    stem = os.path.join(root, utt.split, utt.speaker.name, utt.id)
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    soundfile.write(stem + ".wav", audio, sample_rate, subtype="PCM_16")
    np.save(stem + ".semantic.npy", ids)
    with open(stem + ".json", "w", encoding="utf-8") as f:
        json.dump({"text": utt.text, "speaker": utt.speaker.name, "voice": utt.speaker.voice,
                   "rate": utt.rate, "pitch": utt.pitch, "phonemes": names,
                   "start_seconds": [round(float(t), 6) for t in starts],
                   "frame_rate": frame_rate}, f, indent=1)
    return len(audio) / sample_rate


def build_corpus_folder(size: Union[str, CorpusSize] = "tiny", seed: int = 0, *,
                        sample_rate: int = 16000, frame_rate: float = 50.0,
                        cache_dir: Optional[str] = None, progress: bool = True) -> str:
    """Synthesizes the corpus into an audio folder (reused when already built).

    Args:
      size: "tiny", "small" or a `CorpusSize`.
      seed: picks speakers, sentences, rates and pitches.
      sample_rate: the WAVs' rate (eSpeak speaks at 22050 Hz; resampled).
      frame_rate: phoneme ids per second.
      cache_dir: see the module docstring.

    Returns:
      The audio folder (`<corpus_dir>/audio`), with train/ and validation/.
    """
    if not espeak_ffi.is_available():
        raise RuntimeError("the embedded corpus needs eSpeak NG: pip install espeakng-loader")
    target = corpus_dir(size, seed, sample_rate, frame_rate, cache_dir)
    audio_root = os.path.join(target, "audio")
    if os.path.exists(os.path.join(audio_root, _DONE)):
        return audio_root
    script = utterances(size, seed)
    os.makedirs(target, exist_ok=True)
    # Build beside the target and rename at the end: a killed build leaves no half corpus.
    work = tempfile.mkdtemp(prefix="building-", dir=target)
    try:
        jobs = [espeak_ffi.Job(u.text, u.speaker.voice, u.rate, u.pitch, u.seed,
                               os.path.join(work, f"raw-{i}.npz")) for i, u in enumerate(script)]
        root = os.path.join(work, "audio")
        seconds = 0.0
        bar = tqdm.tqdm(total=len(jobs), desc="synthesizing eSpeak corpus", unit="utt",
                        disable=not progress)
        for i in espeak_ffi.synthesize_batch(jobs):
            seconds += _write_utterance(script[i], jobs[i].out, root, sample_rate, frame_rate)
            os.remove(jobs[i].out)
            bar.update(1)
        bar.close()
        with open(os.path.join(root, _DONE), "w") as f:
            json.dump({"utterances": len(script), "seconds": round(seconds, 3)}, f)
        shutil.rmtree(audio_root, ignore_errors=True)
        try:
            os.replace(root, audio_root)
        except OSError:
            # Another process finished the same build first: its bytes equal ours.
            if not os.path.exists(os.path.join(audio_root, _DONE)):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return audio_root


def corpus_metadata(size: Union[str, CorpusSize], seed: int, frame_rate: float) -> dict:
    """What the prepared dataset records about its semantic tokens."""
    return {"corpus": "espeak", "size": size if isinstance(size, str) else dataclasses.asdict(size),
            "seed": seed, "semantic_rate": frame_rate, "semantic_vocab_size": phonemes.VOCAB_SIZE,
            "semantic_pad_id": phonemes.PAD_ID, "phonemes": list(phonemes.PHONEMES)}


def prepare_corpus(size: Union[str, CorpusSize] = "tiny", seed: int = 0, *,
                   sample_rate: int = 16000, frame_rate: float = 50.0,
                   cache_dir: Optional[str] = None, dataset_dir: Optional[str] = None,
                   progress: bool = True, overwrite: Optional[bool] = None) -> audio_folder.AudioFolder:
    """The corpus as a prepared `AudioFolder` dataset (built on first use).

    The WAVs are synthesized into `cache_dir` (a local folder); the dataset goes to `dataset_dir`, local or
    gs:// (default: `<corpus_dir>/tfds` beside the WAVs).

    The dataset records the corpus's name, seed and rates (not its files' modification times: the same settings
    give the same bytes); one prepared from another corpus, or by an older version, is stale:
    `StaleDatasetError`, or removed and rebuilt when `overwrite` (default: only the cache's own `<corpus_dir>/tfds`,
    which nobody else writes).

    Returns the builder: `builder.as_data_source("train")` / `("validation")`
    give records with `audio`, `text`, `speaker` and `semantic_ids` (the
    per-frame phoneme ids, `frame_rate` per second).
    """
    audio_root = build_corpus_folder(size, seed, sample_rate=sample_rate, frame_rate=frame_rate,
                                     cache_dir=cache_dir, progress=progress)
    identity = {"corpus": "espeak", "size": size if isinstance(size, str) else dataclasses.asdict(size),
                "seed": seed, "sample_rate": sample_rate, "frame_rate": frame_rate}
    return audio_folder.prepare_audio_folder(
        audio_root, dataset_dir or os.path.join(os.path.dirname(audio_root), "tfds"), sample_rate=sample_rate,
        allow_resample=False, metadata=corpus_metadata(size, seed, frame_rate), source_identity=identity,
        overwrite=dataset_dir is None if overwrite is None else overwrite)
