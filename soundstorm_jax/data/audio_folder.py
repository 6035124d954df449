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

Provenance: the dataset's metadata records what it was made from under
"provenance" (`AudioFolder.provenance`): the folder, every audio and sidecar
file in it (relative path -> [size in bytes, modification time in seconds]),
or for the embedded corpus its name, seed and rates instead, the sample rate
asked for, whether resampling was allowed, the split settings and the
caller's metadata; beside it "sample_rate" (the rate every record has),
"resampled_files" / "resampled_from" (how many files were resampled, from
which rates) and "skipped_files" (relative paths left out as unreadable).
`prepare_dataset` reuses a prepared dataset only when all of that matches
what is asked for now, and otherwise raises `StaleDatasetError` naming what
changed (or, with `overwrite=True`, removes and rebuilds it).
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
from soundstorm_jax.data.provenance import (NO_PROVENANCE, PROVENANCE, StaleDatasetError, absolute_path, count,
                                             file_changes, jsonable, mapping_changes, source_files, split_changes)

log = logging.getLogger(__name__)

TRAIN, VALIDATION = "train", "validation"
_TEXT_SUFFIXES = (".txt", ".normalized.txt", ".original.txt")
_SIDECAR_SUFFIXES = _TEXT_SUFFIXES + (".json", ".semantic.npy")
def _audio_sources(names: list[str]) -> list[str]:
    """The names in one folder that a dataset is made from: audio files, their sidecars and transcripts."""
    audio = [n for n in names if n.lower().endswith(audio_io.AUDIO_EXTENSIONS)]
    if not audio:
        return []
    sidecars = {_stem(n) + suffix for n in audio for suffix in _SIDECAR_SUFFIXES}
    return sorted(n for n in names if n in audio or n in sidecars or n.endswith(".trans.txt"))


def has_split_folders(root: str) -> bool:
    return all((epath.Path(root) / s).is_dir() for s in (TRAIN, VALIDATION))


def split_settings(root: str, validation_fraction: float, seed: int) -> Any:
    """What decides a folder's split: "folders" when it has train/ and validation/, else the fraction and seed."""
    if has_split_folders(root):
        return "folders"
    return {"validation_fraction": float(validation_fraction), "seed": int(seed)}



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
    if has_split_folders(root):
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


class LocalBuilder(tfds.core.GeneratorBasedBuilder):
    """A builder of local data. TFDS prints "Downloading and preparing dataset Unknown size ..." and "Dataset ...
    downloaded and prepared to ..." on stdout: nothing is downloaded here, and the caller says where it went."""

    def _log_download_bytes(self) -> None:
        """Says nothing: there is no download."""

    def _log_download_done(self) -> None:
        """Says nothing: the caller reports where the dataset went."""


class AudioFolder(LocalBuilder):
    """A folder of audio files as a TFDS dataset (see the module docstring).

    Prepared data lands in `<data_dir>/audio_folder/1.0.0/`; `prepare_audio_folder` reuses it only while it
    was made from the same files and settings (`changes()` says what differs).
    """

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, audio_dir: Optional[str] = None,
                 sample_rate: Optional[int] = None, allow_resample: bool = True,
                 validation_fraction: float = 0.05, split_seed: int = 0,
                 on_bad_file: str = "raise",
                 metadata: Optional[Mapping[str, Any]] = None,
                 source_identity: Optional[Mapping[str, Any]] = None, **kwargs):
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
          source_identity: JSON-able facts that identify the folder's contents
            (the embedded corpus: its name, seed and rates), recorded instead of
            its files' sizes and modification times.
          **kwargs: for `tfds.core.GeneratorBasedBuilder` (`data_dir`, ...);
            `file_format` defaults to "array_record".
        """
        if on_bad_file not in ("raise", "skip"):
            raise ValueError(f"on_bad_file must be 'raise' or 'skip', got {on_bad_file!r}")
        self._audio_dir = audio_dir
        self._requested_sample_rate = sample_rate
        self._sample_rate = sample_rate
        self._requested_resample = bool(allow_resample)
        self._allow_resample = allow_resample
        self._validation_fraction = validation_fraction
        self._split_seed = split_seed
        self._on_bad_file = on_bad_file
        self._metadata = dict(metadata or {})
        self._metadata.pop(PROVENANCE, None)  # The builder's own record, not the caller's.
        self._source_identity = None if source_identity is None else jsonable(dict(source_identity))
        self._provenance = None
        self.skipped_files: list[str] = []
        self.resampled_from: dict[int, int] = {}  # file rate -> files resampled from it, in this build
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

    def provenance(self) -> dict:
        """What a dataset prepared now records it was made from (see the module docstring); JSON-able."""
        if self._provenance is None:
            if self._audio_dir is None:
                raise ValueError("AudioFolder needs audio_dir=... to say what it is made from")
            files = None if self._source_identity is not None else source_files(self._audio_dir, _audio_sources)
            self._provenance = {
                "source": absolute_path(self._audio_dir), "files": files, "identity": self._source_identity,
                "sample_rate": self._requested_sample_rate, "resample": self._requested_resample,
                "split": split_settings(self._audio_dir, self._validation_fraction, self._split_seed),
                "settings": jsonable(self._metadata)}
        return self._provenance

    def changes(self) -> list[tuple[str, str]]:
        """What differs between the prepared dataset's record and `provenance()`: (key, clause) pairs, empty
        when it may be reused."""
        meta = dict(self.info.metadata or {})
        stored, wanted = meta.get(PROVENANCE), self.provenance()
        if not stored:
            return [NO_PROVENANCE]
        found = []
        if stored.get("identity") or wanted["identity"]:
            found += mapping_changes("source", "it was made from", stored.get("identity"), wanted["identity"])
        if stored.get("files") is not None and wanted["files"] is not None:
            found += file_changes(stored["files"], wanted["files"], wanted["source"])
        elif (stored.get("files") is None) != (wanted["files"] is None):
            found.append(("source", f"it was made from {stored.get('identity') or stored.get('source')}, "
                                    f"not from {wanted['identity'] or wanted['source']}"))
        rate = meta.get("sample_rate")
        if wanted["sample_rate"] is not None and rate != wanted["sample_rate"]:
            found.append(("sample_rate", f"its audio is at {rate} Hz, not the {wanted['sample_rate']} Hz asked for"))
        if not wanted["resample"] and meta.get("resampled_files"):
            found.append(("resample", f"{count(meta['resampled_files'], 'file')} in it were resampled to {rate} Hz, "
                                      f"and resampling is now refused"))
        found += split_changes(stored.get("split"), wanted["split"])
        if not found:  # The caller's metadata: only when nothing above explains the difference.
            found += mapping_changes("settings", "its recorded settings were", stored.get("settings"),
                                     wanted["settings"])
        return found

    def reused(self) -> None:
        """Called when a prepared dataset is reused: what its build left out, as full paths again."""
        skipped = (self.info.metadata or {}).get("skipped_files") or []
        self.skipped_files = [os.fspath(epath.Path(self._audio_dir) / r) if self._audio_dir else r for r in skipped]

    def _split_generators(self, dl_manager):
        del dl_manager  # Local files only.
        if self._audio_dir is None:
            raise ValueError("AudioFolder needs audio_dir=... to prepare a dataset")
        files = find_audio_files(self._audio_dir)
        if self._sample_rate is None:
            # The first readable file fixes the rate; any other rate is refused. An unreadable one raises, naming
            # it, unless bad files are skipped (it is then skipped with the others, below).
            for f in files:
                try:
                    self._sample_rate = audio_io.read_audio(f.path)[1]
                    break
                except audio_io.AudioError:
                    if self._on_bad_file == "raise" or f is files[-1]:
                        raise
            self._allow_resample = False
        meta = self.info.metadata
        meta["sample_rate"] = self._sample_rate
        meta[PROVENANCE] = self.provenance()
        # Filled in while the examples are generated, before TFDS writes the metadata.
        meta["skipped_files"], meta["resampled_files"], meta["resampled_from"] = [], 0, []
        splits = split_files(files, self._audio_dir,
                             validation_fraction=self._validation_fraction,
                             seed=self._split_seed)
        # TFDS refuses empty splits; a one-file folder has no validation split.
        return {name: self._generate_examples(split) for name, split in splits.items() if split}

    def _resampled(self, rate: int) -> None:
        self.resampled_from[rate] = self.resampled_from.get(rate, 0) + 1
        meta = self.info.metadata
        meta["resampled_files"] = sum(self.resampled_from.values())
        meta["resampled_from"] = sorted(self.resampled_from)

    def _generate_examples(self, files: list[AudioFile]) -> Iterator[tuple[str, dict]]:
        for f in files:
            try:
                audio, rate = audio_io.read_audio(f.path, self._sample_rate, dtype=np.int16,
                                                  allow_resample=self._allow_resample, on_resample=self._resampled)
                semantic = (load_semantic_ids(f.semantic_path) if f.semantic_path
                            else np.zeros((0,), np.int32))
            except (audio_io.AudioError, ValueError) as e:
                if self._on_bad_file == "raise":
                    raise
                self.skipped_files.append(f.path)
                self.info.metadata["skipped_files"].append(
                    os.fspath(epath.Path(f.path).relative_to(epath.Path(self._audio_dir))).replace(os.sep, "/"))
                logging.warning("skipping %s (%d skipped so far): %s", f.path,
                                len(self.skipped_files), e)
                continue
            yield f.id, {"audio": audio, "sample_rate": rate, "id": f.id,
                         "text": f.text, "speaker": f.speaker, "semantic_ids": semantic}


def prepare_audio_folder(audio_dir: str, data_dir: str, *, overwrite: bool = False, **kwargs) -> AudioFolder:
    """Builds (or reuses) the ArrayRecord dataset for `audio_dir` in `data_dir`.

    A dataset already prepared there is reused only when it was made from the same files and settings (see the
    module docstring); otherwise `StaleDatasetError` names what changed, or with `overwrite=True` it is removed
    and rebuilt. Returns the builder; read a split with `builder.as_data_source("train")`.
    `kwargs` go to `AudioFolder`.
    """
    return prepare_dataset(lambda folder: AudioFolder(audio_dir=audio_dir, data_dir=folder, **kwargs), data_dir,
                           overwrite=overwrite)


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    """`builder.is_prepared()`, without TFDS's warning about the empty version folder it creates itself."""
    return (epath.Path(builder.data_dir) / "dataset_info.json").exists() and builder.is_prepared()


def check_prepared(builder: tfds.core.DatasetBuilder, data_dir: str, *, overwrite: bool = False) -> bool:
    """Whether `builder`'s dataset is prepared and may be reused (it was made from what `builder` would make it
    from: its `changes()` are none).

    A prepared dataset that differs raises `StaleDatasetError` naming the changes, or with `overwrite` is left to
    be rebuilt (False is returned; the caller removes it).
    """
    if not is_prepared(builder):
        return False
    changes = builder.changes() if hasattr(builder, "changes") else []
    if not changes:
        return True
    if not overwrite:
        raise StaleDatasetError(data_dir, changes)
    log.info("rebuilding %s: %s", data_dir, "; ".join(text for _, text in changes))
    return False


def prepare_dataset(make_builder: Callable[[str], tfds.core.DatasetBuilder],
                    data_dir: str, *, overwrite: bool = False) -> tfds.core.DatasetBuilder:
    """`make_builder(data_dir)`, prepared, or reused when `data_dir` already holds its version made from the same
    sources and settings (for builders with `changes()`: `AudioFolder`, `CodesDataset`).

    A prepared dataset that differs raises `StaleDatasetError` naming what changed; with `overwrite` its version
    folder is removed and rebuilt. The builder returned has `prepared_now` (False when reused).

    TFDS writes ArrayRecord shards through local files only, so a remote `data_dir` (gs://...) is built in a
    local temporary folder and its version folder uploaded; the builder returned reads it from `data_dir`.
    """
    builder = make_builder(data_dir)
    if check_prepared(builder, data_dir, overwrite=overwrite):
        if hasattr(builder, "reused"):
            builder.reused()
        builder.prepared_now = False
        return builder
    if is_prepared(builder):  # Out of date, and overwrite asked for.
        epath.Path(builder.data_dir).rmtree()
        builder = make_builder(data_dir)
    if not paths.is_remote(data_dir):
        builder.download_and_prepare()
        builder.prepared_now = True
        return builder
    with tempfile.TemporaryDirectory(prefix="soundstorm-prepare-") as local_dir:
        local = make_builder(local_dir)
        local.download_and_prepare()
        log.info("uploading %s to %s", local.data_dir, builder.data_dir)
        paths.upload_tree(local.data_dir, builder.data_dir)
    remote = make_builder(data_dir)  # Reads the uploaded dataset_info.json.
    for name in ("skipped_files", "resampled_from"):  # What the build left out or resampled (AudioFolder).
        if hasattr(local, name):
            setattr(remote, name, getattr(local, name))
    remote.prepared_now = True
    return remote


def open_prepared(dataset_dir: str) -> tfds.core.DatasetBuilder:
    """A read-only builder for an already prepared dataset version folder.

    Args:
      dataset_dir: e.g. `<data_dir>/audio_folder/1.0.0` (`builder.data_dir`).
    """
    if not epath.Path(dataset_dir).is_dir():
        raise FileNotFoundError(f"prepared dataset folder {dataset_dir!r} does not exist")
    return tfds.builder_from_directory(dataset_dir)
