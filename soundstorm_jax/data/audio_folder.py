"""TFDS builder for a folder of audio files, prepared as ArrayRecord.

No TensorFlow is needed: the builder writes ArrayRecord files and is read
back with `builder.as_data_source(split)` (random access, numpy records),
which is what grain consumes. Never call `tfds.as_numpy` or `as_dataset` on
it: those need TensorFlow.

Folder layouts understood (searched recursively):

* flat: `root/*.wav`
* LibriSpeech: `root/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` with
  `<speaker>-<chapter>.trans.txt` transcripts ("<utt id> TEXT" lines)
* LibriTTS: `<stem>.wav` next to `<stem>.normalized.txt`
* split folders: if `root/train/` and `root/validation/` both exist they are
  the splits; otherwise a seeded permutation of the sorted ids puts
  `validation_fraction` of them (at least one, when there are two or more)
  in `validation`.

Sidecar files next to `<stem>.<ext>`, all optional:

* `<stem>.txt` / `<stem>.normalized.txt` / `<stem>.original.txt`: transcript.
* `<stem>.json`: `{"text": ..., "speaker": ...}`.
* `<stem>.semantic.npy`: 1-D integer semantic token ids (e.g. 25 Hz k-means
  ids, or the eSpeak corpus's per-frame phoneme ids).

Record (one per audio file):

  audio:        int16 (samples,), mono
  sample_rate:  int32 scalar, the same for every record
  id:           bytes, the file's path relative to the root, without extension
  text:         bytes, b"" when there is no transcript
  speaker:      bytes, from the JSON sidecar, else the id's first folder
                (below train/ or validation/), else b""
  semantic_ids: int32 (tokens,), empty when there are none
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from soundstorm_jax import paths
from soundstorm_jax.data import audio_io

log = logging.getLogger(__name__)

TRAIN, VALIDATION = "train", "validation"
_TEXT_SUFFIXES = (".txt", ".normalized.txt", ".original.txt")


@dataclasses.dataclass(frozen=True)
class AudioFile:
    """One discovered audio file and its sidecar data."""
    path: str
    id: str
    text: str
    speaker: str
    semantic_path: Optional[str]


def _stem(path: str) -> str:
    return os.path.splitext(path)[0]


def _read_librispeech_transcripts(directory: epath.Path, names: Iterable[str]) -> dict[str, str]:
    transcripts = {}
    for name in names:
        if name.endswith(".trans.txt"):
            for line in (directory / name).read_text(encoding="utf-8").splitlines():
                utt, _, text = line.strip().partition(" ")
                if utt:
                    transcripts[utt] = text
    return transcripts


def _describe(directory: epath.Path, name: str, names: set[str], root: epath.Path,
              transcripts: Mapping[str, str]) -> AudioFile:
    """The audio file `name` in `directory`, whose files are `names` (sidecars are looked up there: one listing
    per folder instead of a request per sidecar on remote storage)."""
    stem = _stem(name)
    file_id = os.fspath((directory / stem).relative_to(root)).replace(os.sep, "/")
    text = transcripts.get(stem, "")
    for suffix in _TEXT_SUFFIXES:
        if stem + suffix in names:
            text = (directory / (stem + suffix)).read_text(encoding="utf-8").strip()
            break
    # The speaker is the first folder below the split folder, if any (LibriSpeech).
    parts = file_id.split("/")
    parts = parts[1:] if parts[0] in (TRAIN, VALIDATION) else parts
    speaker = parts[0] if len(parts) > 1 else ""
    if stem + ".json" in names:
        meta = json.loads((directory / (stem + ".json")).read_text(encoding="utf-8"))
        text = meta.get("text", text)
        speaker = meta.get("speaker", speaker)
    semantic = stem + ".semantic.npy"
    return AudioFile(os.fspath(directory / name), file_id, text, speaker,
                     os.fspath(directory / semantic) if semantic in names else None)


def find_audio_files(root: str) -> list[AudioFile]:
    """All audio files under `root` (recursive; local or gs://), sorted by id.

    Raises:
      FileNotFoundError: `root` is not a directory.
      ValueError: it holds no audio files.
    """
    if not epath.Path(root).is_dir():
        raise FileNotFoundError(f"audio folder {root!r} does not exist or is not a directory")
    found = []
    for directory, _, names in paths.walk(root):
        transcripts = None
        for name in sorted(names):
            if name.lower().endswith(audio_io.AUDIO_EXTENSIONS):
                if transcripts is None:
                    transcripts = _read_librispeech_transcripts(directory, names)
                found.append(_describe(directory, name, set(names), epath.Path(root), transcripts))
    if not found:
        raise ValueError(
            f"audio folder {root!r} holds no audio files "
            f"(looked for {', '.join(audio_io.AUDIO_EXTENSIONS)})")
    return sorted(found, key=lambda f: f.id)


def split_files(files: list, root: str, *, validation_fraction: float,
                seed: int) -> dict[str, list]:
    """Deterministic train/validation split (see the module docstring).

    Args:
      files: items with an `id` attribute ("train/..." ids when split folders exist).
    """
    if all((epath.Path(root) / s).is_dir() for s in (TRAIN, VALIDATION)):
        return {s: [f for f in files if f.id.startswith(s + "/")] for s in (TRAIN, VALIDATION)}
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    order = np.random.default_rng(seed).permutation(len(files))
    n_val = int(round(validation_fraction * len(files)))
    if validation_fraction > 0 and len(files) >= 2:
        n_val = max(n_val, 1)
    val = set(order[:n_val].tolist())
    return {TRAIN: [f for i, f in enumerate(files) if i not in val],
            VALIDATION: [f for i, f in enumerate(files) if i in val]}


def load_semantic_ids(path: str) -> np.ndarray:
    """Reads a `.semantic.npy` sidecar: a 1-D array of non-negative integers."""
    ids = np.load(paths.readable(path))
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"semantic ids file {path!r} must hold a 1-D integer array, "
                         f"got shape {ids.shape} dtype {ids.dtype}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"semantic ids file {path!r} holds negative ids")
    return ids.astype(np.int32)


def audio_features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
        "sample_rate": tfds.features.Scalar(dtype=np.int32),
        "id": tfds.features.Text(),
        "text": tfds.features.Text(),
        "speaker": tfds.features.Text(),
        "semantic_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32),
    })


class AudioFolder(tfds.core.GeneratorBasedBuilder):
    """A folder of audio files as a TFDS dataset (see the module docstring).

    Prepared data lands in `<data_dir>/audio_folder/1.0.0/`; once there it is
    reused: pass a fresh `data_dir` after changing the folder.
    """

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, audio_dir: Optional[str] = None,
                 sample_rate: Optional[int] = None, allow_resample: bool = True,
                 validation_fraction: float = 0.05, split_seed: int = 0,
                 on_bad_file: str = "raise",
                 metadata: Optional[Mapping[str, Any]] = None, **kwargs):
        """Args:
          audio_dir: the folder to prepare (not needed to read a prepared one).
          sample_rate: the dataset's rate in Hz; None takes the first file's rate
            and refuses files at any other rate.
          allow_resample: resample files whose rate differs from `sample_rate`
            (True) or raise naming the file (False).
          validation_fraction, split_seed: the split when there are no
            train/validation folders.
          on_bad_file: "raise" (default) an `AudioError` naming the file, or
            "skip" it with a warning and count it.
          metadata: JSON-able facts stored with the dataset (e.g. semantic rate).
          **kwargs: for `tfds.core.GeneratorBasedBuilder` (`data_dir`, ...);
            `file_format` defaults to "array_record".
        """
        if on_bad_file not in ("raise", "skip"):
            raise ValueError(f"on_bad_file must be 'raise' or 'skip', got {on_bad_file!r}")
        self._audio_dir = audio_dir
        self._sample_rate = sample_rate
        self._allow_resample = allow_resample
        self._validation_fraction = validation_fraction
        self._split_seed = split_seed
        self._on_bad_file = on_bad_file
        self._metadata = dict(metadata or {})
        self.skipped_files: list[str] = []
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Mono int16 audio from a local folder, with optional "
                        "transcripts and semantic token ids.",
            features=audio_features(),
            metadata=tfds.core.MetadataDict(self._metadata),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Local files only.
        if self._audio_dir is None:
            raise ValueError("AudioFolder needs audio_dir=... to prepare a dataset")
        files = find_audio_files(self._audio_dir)
        if self._sample_rate is None:
            # The first file fixes the rate (an unreadable one raises, naming it);
            # any other rate is refused.
            self._sample_rate = audio_io.read_audio(files[0].path)[1]
            self._allow_resample = False
        self.info.metadata["sample_rate"] = self._sample_rate
        splits = split_files(files, self._audio_dir,
                             validation_fraction=self._validation_fraction,
                             seed=self._split_seed)
        # TFDS refuses empty splits; a one-file folder has no validation split.
        return {name: self._generate_examples(split) for name, split in splits.items() if split}

    def _generate_examples(self, files: list[AudioFile]) -> Iterator[tuple[str, dict]]:
        for f in files:
            try:
                audio, rate = audio_io.read_audio(f.path, self._sample_rate, dtype=np.int16,
                                                  allow_resample=self._allow_resample)
                semantic = (load_semantic_ids(f.semantic_path) if f.semantic_path
                            else np.zeros((0,), np.int32))
            except (audio_io.AudioError, ValueError) as e:
                if self._on_bad_file == "raise":
                    raise
                self.skipped_files.append(f.path)
                logging.warning("skipping %s (%d skipped so far): %s", f.path,
                                len(self.skipped_files), e)
                continue
            yield f.id, {"audio": audio, "sample_rate": rate, "id": f.id,
                         "text": f.text, "speaker": f.speaker, "semantic_ids": semantic}


def prepare_audio_folder(audio_dir: str, data_dir: str, **kwargs) -> AudioFolder:
    """Builds (or reuses) the ArrayRecord dataset for `audio_dir` in `data_dir`.

    Returns the builder; read a split with `builder.as_data_source("train")`.
    `kwargs` go to `AudioFolder`.
    """
    return prepare_dataset(lambda folder: AudioFolder(audio_dir=audio_dir, data_dir=folder, **kwargs), data_dir)


def prepare_dataset(make_builder: Callable[[str], tfds.core.DatasetBuilder],
                    data_dir: str) -> tfds.core.DatasetBuilder:
    """`make_builder(data_dir)`, prepared (or reused when `data_dir` already holds its version).

    TFDS writes ArrayRecord shards through local files only, so a remote `data_dir` (gs://...) is built in a
    local temporary folder and its version folder uploaded; the builder returned reads it from `data_dir`.
    """
    builder = make_builder(data_dir)
    if not paths.is_remote(data_dir):
        builder.download_and_prepare()
        return builder
    if builder.is_prepared():
        return builder
    with tempfile.TemporaryDirectory(prefix="soundstorm-prepare-") as local_dir:
        local = make_builder(local_dir)
        local.download_and_prepare()
        log.info("uploading %s to %s", local.data_dir, builder.data_dir)
        paths.upload_tree(local.data_dir, builder.data_dir)
    remote = make_builder(data_dir)  # Reads the uploaded dataset_info.json.
    if hasattr(local, "skipped_files"):  # What the build left out (AudioFolder).
        remote.skipped_files = local.skipped_files
    return remote


def open_prepared(dataset_dir: str) -> tfds.core.DatasetBuilder:
    """A read-only builder for an already prepared dataset version folder.

    Args:
      dataset_dir: e.g. `<data_dir>/audio_folder/1.0.0` (`builder.data_dir`).
    """
    if not epath.Path(dataset_dir).is_dir():
        raise FileNotFoundError(f"prepared dataset folder {dataset_dir!r} does not exist")
    return tfds.builder_from_directory(dataset_dir)
