"""TFDS builder for SoundStorm's training input: residual-VQ codec codes.

A record holds one utterance's acoustic codes, shape (frames, levels), plus
its optional semantic token ids. Two sources:

* a folder of `.npy` files, each an integer array (frames, levels), with an
  optional `<stem>.semantic.npy` sidecar (1-D ids) and the same split rules
  as `AudioFolder` (`train/` + `validation/` folders, else a seeded split);
* a prepared audio dataset plus `encode_fn(audio_batch) -> codes`, the
  codec's (jitted) encoder; audio is fed in fixed-shape padded batches so a
  jitted encoder compiles once per length bucket, and each example's codes
  are cut back to its own length (`ceil(samples / samples_per_frame)` frames).
  Semantic ids, text and speaker are carried over from the audio records, or,
  given `semantic_fn` (e.g. a HuBERT layer + k-means, `semantic.dataset`), the
  semantic ids are computed from the same padded batches in the same pass.

Record:

  codes:        int16 (frames, levels) when codebook_size <= 32768, else int32
  semantic_ids: int32 (tokens,), empty when there are none
  id, text, speaker: bytes

Codes are validated before they are written (`validate_codes`): rank 2, an
integer dtype, the dataset's number of levels, at least one frame, and every
id in [0, codebook_size). Failures raise `CodesError` naming the file or id.

Provenance: the metadata's "provenance" (`CodesDataset.provenance`) records
what the codes were made from: the `.npy` folder's files (relative path ->
[size, modification time]) and split settings, or the audio dataset (its
folder, sample rate and a sha256 of its own provenance) and the codec's
identity as the caller gives it (`codec=`; the command line records a trained
codec's workdir, checkpoint step and a sha256 of its weights, or an EnCodec
file's path and the same weights hash, plus levels, codebook size, sample
rate, frame rate and hop), and the codebook size, levels and hop; with
`semantic_fn`, the identity of what computed the semantic ids (`semantic=`).
`prepare_codes_dataset` reuses a prepared dataset only when all of that
matches, like `audio_folder.prepare_dataset`. Audio at another sample rate
than the codec's (the `sample_rate` in `codec` or `metadata`) is refused, never
encoded and labelled with the codec's rate.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from etils import epath

from soundstorm_jax import paths
from soundstorm_jax.data import audio_folder, audio_io, provenance

EncodeFn = Callable[[np.ndarray], Any]
"""(batch, samples) float32 in [-1, 1] -> codes (batch, frames, levels) ints."""

SemanticFn = Callable[[np.ndarray, np.ndarray], tuple[Any, Any]]
"""(audio (batch, samples) float32 in [-1, 1], valid samples (batch,), 0 for padding rows) ->
(ids (batch, tokens) ints, valid tokens per row (batch,)): each row's first `count` ids are its semantic ids."""


class CodesError(ValueError):
    """Codes that cannot be stored; the message names where they came from."""


def validate_codes(codes: Any, *, codebook_size: int, num_levels: Optional[int],
                   name: str) -> np.ndarray:
    """Checks one utterance's codes and returns them as an int32 array.

    Args:
      codes: array-like, shape (frames, levels).
      codebook_size: K; valid ids are 0..K-1.
      num_levels: expected levels Q, or None to accept any.
      name: the file or id named in errors.

    Returns:
      int32 array, shape (frames, levels).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise CodesError(f"codes {name!r} must have shape (frames, levels), got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise CodesError(f"codes {name!r} must be integers, got dtype {codes.dtype}")
    if codes.shape[0] == 0:
        raise CodesError(f"codes {name!r} have zero frames")
    if num_levels is not None and codes.shape[1] != num_levels:
        raise CodesError(f"codes {name!r} have {codes.shape[1]} levels, expected {num_levels}")
    lo, hi = int(codes.min()), int(codes.max())
    if lo < 0 or hi >= codebook_size:
        raise CodesError(f"codes {name!r} hold ids in [{lo}, {hi}], outside the "
                         f"codebook [0, {codebook_size - 1}]")
    return codes.astype(np.int32)


def codes_dtype(codebook_size: int) -> type:
    """The narrowest stored dtype: int16 while every id fits."""
    return np.int16 if codebook_size <= 32768 else np.int32


@dataclasses.dataclass(frozen=True)
class CodesFile:
    path: str
    id: str
    semantic_path: Optional[str]


def find_code_files(root: str) -> list[CodesFile]:
    """All `<stem>.npy` code files under `root` (not `.semantic.npy`; local or gs://), by id."""
    if not epath.Path(root).is_dir():
        raise FileNotFoundError(f"codes folder {root!r} does not exist or is not a directory")
    found = []
    for directory, _, names in paths.walk(root):
        for name in names:
            if name.endswith(".npy") and not name.endswith(".semantic.npy"):
                stem = name[:-len(".npy")]
                semantic = stem + ".semantic.npy"  # Looked up in the folder's listing (no request per file).
                found.append(CodesFile(
                    os.fspath(directory / name),
                    os.fspath((directory / stem).relative_to(root)).replace(os.sep, "/"),
                    os.fspath(directory / semantic) if semantic in names else None))
    if not found:
        raise ValueError(f"codes folder {root!r} holds no .npy code files")
    return sorted(found, key=lambda f: f.id)


def _npy_sources(names: list[str]) -> list[str]:
    """The names in one folder that a codes dataset is made from: `.npy` codes and `.semantic.npy` sidecars."""
    return sorted(n for n in names if n.endswith(".npy"))


def _pad_batch(audios: list[np.ndarray], batch_size: int, multiple: int) -> np.ndarray:
    """int16 waveforms -> float32 (batch_size, L) zero-padded, L a multiple of `multiple`."""
    length = multiple * math.ceil(max(len(a) for a in audios) / multiple)
    batch = np.zeros((batch_size, length), np.float32)
    for i, a in enumerate(audios):
        batch[i, :len(a)] = audio_io.int16_to_float(a)
    return batch


def describe_codec(codec: Optional[Mapping[str, Any]]) -> str:
    """A codec identity (see the module docstring) in words: "a codec of 4 levels x 64 codes at 16000 Hz from
    /runs/codec step 200"."""
    if not codec:
        return "an unnamed encoder"
    shape = ""
    if codec.get("num_levels") is not None:
        shape = f" of {codec['num_levels']} levels x {codec.get('codebook_size')} codes"
    if codec.get("sample_rate") is not None:
        shape += f" at {codec['sample_rate']} Hz"
    if codec.get("workdir"):
        step = "" if codec.get("step") is None else f" step {codec['step']}"
        return f"a codec{shape} from {codec['workdir']}{step}"
    if codec.get("encodec"):
        return f"EnCodec{shape} from {codec['encodec']}"
    return f"a codec{shape}"


def describe_semantic(semantic: Optional[Mapping[str, Any]]) -> str:
    """A semantic-ids identity in words: "k-means ids (500 centres) of layer 9 of /models/hubert"."""
    if not semantic:
        return "the audio dataset's own semantic ids (if any)"
    pool = f", pooled over {semantic['pool']} frames" if semantic.get("pool", 1) != 1 else ""
    return (f"k-means ids ({semantic.get('vocab_size')} centres, {semantic.get('kmeans')}) of layer "
            f"{semantic.get('layer')} of {semantic.get('checkpoint')}{pool}")


def _semantic_changes(stored: Optional[Mapping], wanted: Optional[Mapping]) -> list[tuple[str, str]]:
    if (stored or None) == (wanted or None):
        return []
    was, now = describe_semantic(stored), describe_semantic(wanted)
    if was != now:
        return [("semantic", f"its semantic ids were {was}; these are {now}")]
    return provenance.mapping_changes("semantic", "its semantic ids were", stored, wanted)


def _codec_changes(stored: Optional[Mapping], wanted: Optional[Mapping]) -> list[tuple[str, str]]:
    if (stored or None) == (wanted or None):
        return []
    was, now = describe_codec(stored), describe_codec(wanted)
    if was != now:
        return [("codec", f"it was made with {was}; this one is {now}")]
    if (stored or {}).get("weights_sha256") != (wanted or {}).get("weights_sha256"):
        return [("codec", f"it was made with {was}, whose weights have changed since (retrained?)")]
    return provenance.mapping_changes("codec", "its codec was", stored, wanted)


class CodesDataset(audio_folder.LocalBuilder):
    """Codec codes (+ semantic ids) as a TFDS dataset (see the module docstring).

    Prepared data lands in `<data_dir>/codes_dataset/1.0.0/`; `prepare_codes_dataset` reuses it only while it
    was made from the same sources, codec and settings (`changes()` says what differs).
    """

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, codebook_size: int = 1024, num_levels: Optional[int] = None,
                 npy_dir: Optional[str] = None,
                 audio_source: Optional[tfds.core.DatasetBuilder] = None,
                 encode_fn: Optional[EncodeFn] = None,
                 samples_per_frame: Optional[int] = None, encode_batch_size: int = 8,
                 pad_to_multiple: Optional[int] = None,
                 validation_fraction: float = 0.05, split_seed: int = 0,
                 metadata: Optional[Mapping[str, Any]] = None, share: tuple[int, int] = (0, 1),
                 codec: Optional[Mapping[str, Any]] = None, semantic_fn: Optional[SemanticFn] = None,
                 semantic: Optional[Mapping[str, Any]] = None, **kwargs):
        """Args:
          codebook_size: K, codes per level; ids must lie in [0, K).
          num_levels: Q; inferred from the first `.npy` file when None.
          npy_dir: folder of `.npy` code files (exclusive with `audio_source`).
          audio_source: a prepared `AudioFolder` builder (anything with
            `.info.splits` and `.as_data_source(split)`), encoded with `encode_fn`.
          encode_fn: the codec's encoder, see `EncodeFn`.
          samples_per_frame: the codec's hop (e.g. 320 for 16 kHz at 50 Hz).
          encode_batch_size: waveforms per `encode_fn` call.
          pad_to_multiple: batches are padded to a multiple of this many samples
            (default 32 frames) so a jitted encoder sees few distinct shapes.
          validation_fraction, split_seed: split of an `.npy` folder without
            train/validation folders.
          metadata: JSON-able facts stored with the dataset (frame rate, ...).
          share: (index, count): encode only part `index` of `count` contiguous parts of each split's
            encoding order (one process's share; see `prepare_codes_dataset`).
          codec: JSON-able identity of the encoder behind `encode_fn` (e.g. workdir, step, weights hash,
            levels, codebook size, sample rate): recorded, and a prepared dataset made with another is stale.
            Its `sample_rate` (else `metadata["sample_rate"]`) must be the audio dataset's.
          semantic_fn: computes each example's semantic ids from the batches `encode_fn` gets (see
            `SemanticFn`), replacing the audio records' own; None carries those over.
          semantic: JSON-able identity of what `semantic_fn` computes (checkpoint, layer, k-means, rate, ...):
            recorded, and a prepared dataset whose ids came from another is stale.
          **kwargs: for `tfds.core.GeneratorBasedBuilder`; `file_format`
            defaults to "array_record".
        """
        if npy_dir is not None and audio_source is not None:
            raise ValueError("pass either npy_dir or audio_source, not both")
        if audio_source is not None and (encode_fn is None or samples_per_frame is None):
            raise ValueError("audio_source needs encode_fn and samples_per_frame")
        if audio_source is not None and num_levels is None:
            raise ValueError("audio_source needs num_levels (the codec's number of levels)")
        if semantic_fn is not None and audio_source is None:
            raise ValueError("semantic_fn computes semantic ids from audio: it needs audio_source")
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be positive, got {codebook_size}")
        if audio_source is not None:
            audio_rate = (audio_source.info.metadata or {}).get("sample_rate")
            codec_rate = (codec or {}).get("sample_rate", (metadata or {}).get("sample_rate"))
            if audio_rate is not None and codec_rate is not None and int(audio_rate) != int(codec_rate):
                # Encoding it anyway would label audio at one rate with another (every utterance too long or short).
                raise ValueError(f"the audio dataset {audio_source.data_dir!r} is at {audio_rate} Hz but the codec "
                                 f"encodes {codec_rate} Hz audio: prepare the audio dataset at {codec_rate} Hz")
        self._npy_files = None
        if npy_dir is not None:
            self._npy_files = find_code_files(npy_dir)
            if num_levels is None:
                first_path = self._npy_files[0].path
                # The header is enough locally (memory-mapped); a remote file is downloaded.
                first = np.load(paths.readable(first_path), mmap_mode=None if paths.is_remote(first_path) else "r")
                if first.ndim != 2:
                    raise CodesError(f"codes {self._npy_files[0].path!r} must have shape "
                                     f"(frames, levels), got shape {first.shape}")
                num_levels = int(first.shape[1])
        self._npy_dir = npy_dir
        self._audio_source = audio_source
        self._encode_fn = encode_fn
        self._samples_per_frame = samples_per_frame
        self._encode_batch_size = encode_batch_size
        self._pad_to_multiple = pad_to_multiple or (32 * (samples_per_frame or 1))
        self._validation_fraction = validation_fraction
        self._split_seed = split_seed
        self._codebook_size = codebook_size
        self._num_levels = num_levels
        self._share = (int(share[0]), int(share[1]))
        self._batches = {}  # split -> this share's batches of record indices
        self._metadata = dict(metadata or {})
        self._metadata.pop(provenance.PROVENANCE, None)  # The builder's own record, not the caller's (nor the
        # audio dataset's, when its metadata is passed on).
        self._settings = provenance.jsonable(self._metadata)
        self._codec = None if codec is None else provenance.jsonable(dict(codec))
        self._semantic_fn = semantic_fn
        self._semantic = None if semantic is None else provenance.jsonable(dict(semantic))
        self._provenance = None
        self._metadata.update(codebook_size=codebook_size)
        if num_levels is not None:
            self._metadata.update(num_levels=num_levels)
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Residual-VQ codec codes (frames, levels) with optional "
                        "semantic token ids.",
            features=tfds.features.FeaturesDict({
                "codes": tfds.features.Tensor(shape=(None, self._num_levels),
                                              dtype=codes_dtype(self._codebook_size)),
                "semantic_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "id": tfds.features.Text(),
                "text": tfds.features.Text(),
                "speaker": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(self._metadata),
            # Encoded datasets keep the encoding order (length-sorted) instead of TFDS's key-hash order, so
            # the parts written by several processes, concatenated, are exactly the one-process dataset.
            disable_shuffling=self._audio_source is not None,
        )

    def provenance(self) -> dict:
        """What a dataset prepared now records it was made from (see the module docstring); JSON-able."""
        if self._provenance is None:
            record = {"codebook_size": self._codebook_size, "num_levels": self._num_levels,
                      "settings": self._settings}
            if self._npy_files is not None:
                record.update(source=provenance.absolute_path(self._npy_dir),
                              files=provenance.source_files(self._npy_dir, _npy_sources),
                              split=audio_folder.split_settings(self._npy_dir, self._validation_fraction,
                                                                self._split_seed))
            elif self._audio_source is not None:
                meta = dict(self._audio_source.info.metadata or {})
                record.update(audio={"dataset": provenance.absolute_path(os.fspath(self._audio_source.data_dir)),
                                     "sample_rate": meta.get("sample_rate"),
                                     "provenance_sha256": provenance.digest(meta.get(provenance.PROVENANCE))},
                              codec=self._codec, samples_per_frame=self._samples_per_frame)
                if self._semantic is not None:  # Absent otherwise: datasets made before it stay valid.
                    record.update(semantic=self._semantic)
            self._provenance = record
        return self._provenance

    def changes(self) -> list[tuple[str, str]]:
        """What differs between the prepared dataset's record and `provenance()`: (key, clause) pairs, empty
        when it may be reused."""
        stored, wanted = (self.info.metadata or {}).get(provenance.PROVENANCE), self.provenance()
        if not stored:
            return [provenance.NO_PROVENANCE]
        if ("audio" in stored) != ("audio" in wanted):
            def source(record):
                return (f"encoded from the audio dataset {record['audio']['dataset']}" if "audio" in record
                        else f"read from the .npy files in {record.get('source')}")
            return [("source", f"it was {source(stored)}, not {source(wanted)}")]
        found = []
        if "audio" in wanted:
            was, now = stored["audio"], wanted["audio"]
            if was.get("sample_rate") != now["sample_rate"]:
                found.append(("audio", f"it was encoded from audio at {was.get('sample_rate')} Hz, now "
                                       f"{now['sample_rate']} Hz"))
            elif was.get("provenance_sha256") != now["provenance_sha256"]:
                found.append(("audio", f"the audio dataset it was encoded from ({was.get('dataset')}) has been "
                                       f"rebuilt from other files or settings since"))
            found += _codec_changes(stored.get("codec"), wanted["codec"])
            found += _semantic_changes(stored.get("semantic"), wanted.get("semantic"))
            codec_changed = any(key == "codec" for key, _ in found)
            shape = {k: wanted[k] for k in ("codebook_size", "num_levels", "samples_per_frame")}
        else:
            found += provenance.file_changes(stored.get("files") or {}, wanted["files"], wanted["source"])
            found += provenance.split_changes(stored.get("split"), wanted["split"])
            codec_changed = False
            shape = {k: wanted[k] for k in ("codebook_size", "num_levels")}
        if not codec_changed:  # A new codec explains its own shape and rates.
            found += provenance.mapping_changes("shape", "it held", {k: stored.get(k) for k in shape}, shape)
        if not found:  # The caller's metadata (rates, the audio dataset's facts): only when nothing above explains it.
            found += provenance.mapping_changes("settings", "its recorded settings were", stored.get("settings"),
                                                  wanted["settings"])
        return found

    def _split_generators(self, dl_manager):
        del dl_manager
        self.info.metadata[provenance.PROVENANCE] = self.provenance()
        if self._npy_files is not None:
            splits = audio_folder.split_files(self._npy_files, self._npy_dir,
                                              validation_fraction=self._validation_fraction,
                                              seed=self._split_seed)
            return {name: self._generate_examples(files) for name, files in splits.items() if files}
        if self._audio_source is not None:
            return {name: self._generate_examples(name) for name in self._audio_source.info.splits
                    if self._encode_batches(name)}
        raise ValueError("CodesDataset needs npy_dir=... or audio_source=... to prepare a dataset")

    def _example(self, codes: np.ndarray, semantic: np.ndarray, file_id: str,
                 text: str = "", speaker: str = "") -> dict:
        return {"codes": codes.astype(codes_dtype(self._codebook_size)),
                "semantic_ids": semantic.astype(np.int32), "id": file_id,
                "text": text, "speaker": speaker}

    def _generate_examples(self, source) -> Iterator[tuple[str, dict]]:
        """`source`: a list of `CodesFile`s, or the name of an audio split to encode."""
        if isinstance(source, str):
            return self._generate_from_audio(source)
        return self._generate_from_npy(source)

    def _generate_from_npy(self, files: list[CodesFile]) -> Iterator[tuple[str, dict]]:
        for f in files:
            try:
                raw = np.load(paths.readable(f.path))
            except Exception as e:
                raise CodesError(f"cannot read codes file {f.path!r}: {e}") from e
            codes = validate_codes(raw, codebook_size=self._codebook_size,
                                   num_levels=self._num_levels, name=f.path)
            semantic = (audio_folder.load_semantic_ids(f.semantic_path) if f.semantic_path
                        else np.zeros((0,), np.int32))
            yield f.id, self._example(codes, semantic, f.id)

    def _encode_batches(self, split: str) -> list[np.ndarray]:
        """This share's batches of record indices of `split`, in encoding order."""
        if split in self._batches:
            return self._batches[split]
        source = self._audio_source.as_data_source(split)
        # Length-sorted batches waste little padding.
        lengths = [len(source[i]["audio"]) for i in range(len(source))]
        order = np.argsort(lengths, kind="stable")
        batches = [order[i:i + self._encode_batch_size] for i in range(0, len(order), self._encode_batch_size)]
        index, count = self._share
        self._batches[split] = batches[len(batches) * index // count:len(batches) * (index + 1) // count]
        return self._batches[split]

    def _generate_from_audio(self, split: str) -> Iterator[tuple[str, dict]]:
        source = self._audio_source.as_data_source(split)
        hop = self._samples_per_frame
        batches = self._encode_batches(split)
        for batch_indices in tqdm.tqdm(batches, desc=f"encoding {split}", unit="batch"):
            records = [source[int(i)] for i in batch_indices]
            audio = _pad_batch([r["audio"] for r in records], self._encode_batch_size,
                               self._pad_to_multiple)
            codes = np.asarray(self._encode_fn(audio))
            semantic = self._semantic_ids(audio, records)
            if codes.ndim != 3 or codes.shape[0] != audio.shape[0]:
                raise CodesError(f"encode_fn must return (batch, frames, levels) = "
                                 f"({audio.shape[0]}, ~{audio.shape[1] // hop}, "
                                 f"{self._num_levels}), got shape {codes.shape}")
            for row, record in zip(codes, records):
                file_id = record["id"].decode()
                frames = math.ceil(len(record["audio"]) / hop)
                if row.shape[0] < frames:
                    raise CodesError(f"encode_fn returned {row.shape[0]} frames for "
                                     f"{audio.shape[1]} samples; {file_id!r} needs {frames} "
                                     f"(samples_per_frame={hop})")
                checked = validate_codes(row[:frames], codebook_size=self._codebook_size,
                                         num_levels=self._num_levels, name=file_id)
                yield file_id, self._example(checked, semantic.pop(0), file_id,
                                             record["text"].decode(), record["speaker"].decode())

    def _semantic_ids(self, audio: np.ndarray, records: list[dict]) -> list[np.ndarray]:
        """Each record's semantic ids: `semantic_fn`'s on the padded batch `audio`, else the record's own."""
        if self._semantic_fn is None:
            return [record["semantic_ids"] for record in records]
        lengths = np.zeros(len(audio), np.int64)
        lengths[:len(records)] = [len(record["audio"]) for record in records]
        ids, counts = self._semantic_fn(audio, lengths)
        ids, counts = np.asarray(ids), np.asarray(counts)
        if (ids.ndim != 2 or ids.shape[0] != len(audio) or counts.shape != (len(audio),)
                or (counts > ids.shape[-1]).any()):
            raise CodesError(f"semantic_fn must return ids (batch, tokens) and counts (batch,) of at most tokens "
                             f"for a batch of {len(audio)}, got shapes {ids.shape} and {counts.shape} (counts up "
                             f"to {counts.max() if counts.size else None})")
        out = []
        for row, count, record in zip(ids, counts, records):
            if count < 1:
                samples = len(record["audio"])
                raise CodesError(f"{record['id'].decode()!r} ({samples} samples) got no semantic ids: it is "
                                 f"shorter than one frame of the semantic encoder; remove it from the audio folder")
            out.append(row[:count])
        return out


def prepare_codes_dataset(data_dir: str, *, process_index: int = 0, process_count: int = 1,
                          barrier: Optional[Callable[[str], None]] = None, overwrite: bool = False,
                          **kwargs) -> tfds.core.DatasetBuilder:
    """Builds (or reuses) a codes dataset in `data_dir`; `kwargs` go to `CodesDataset`.

    A dataset already prepared there is reused only when it was made from the same sources, codec and settings
    (see the module docstring); otherwise `StaleDatasetError` names what changed, or with `overwrite=True` it is
    removed and rebuilt.

    With `process_count` > 1 (every process of a multi-process job calls this, with an `audio_source` and
    its own `encode_fn` on its local devices), each process encodes one contiguous part of each split's
    encoding order and writes its own ArrayRecord shards under `data_dir/parts/`; after `barrier(name)`
    (all processes wait there, e.g. `multihost_utils.sync_global_devices`) process 0 gathers the shards,
    in process order, into one dataset, which equals the one-process dataset example for example.

    Returns the builder; read a split with `builder.as_data_source("train")`.
    """
    if process_count == 1:
        return audio_folder.prepare_dataset(lambda folder: CodesDataset(data_dir=folder, **kwargs), data_dir,
                                            overwrite=overwrite)
    if kwargs.get("audio_source") is None or barrier is None:
        raise ValueError("a codes dataset is prepared by several processes only from an audio_source, with a "
                         "barrier")
    whole = CodesDataset(data_dir=data_dir, **kwargs)
    # Every process decides alike: the dataset there is removed (by process 0) only after the first barrier.
    if audio_folder.check_prepared(whole, data_dir, overwrite=overwrite):
        whole.prepared_now = False
        return whole
    stale = audio_folder.is_prepared(whole)
    parts = epath.Path(data_dir) / "parts"
    part_dirs = [str(parts / f"{i:05d}-of-{process_count:05d}") for i in range(process_count)]
    if epath.Path(part_dirs[process_index]).exists():  # Left by a job that stopped: never reused.
        epath.Path(part_dirs[process_index]).rmtree()
    audio_folder.prepare_dataset(
        lambda folder: CodesDataset(data_dir=folder, share=(process_index, process_count), **kwargs),
        part_dirs[process_index])
    barrier("soundstorm: codes parts written")
    if process_index == 0:
        if stale:
            epath.Path(whole.data_dir).rmtree()
        merge_parts([str(CodesDataset(data_dir=d, **kwargs).data_dir) for d in part_dirs], str(whole.data_dir))
        parts.rmtree()
    barrier("soundstorm: codes parts merged")
    merged = CodesDataset(data_dir=data_dir, **kwargs)
    merged.prepared_now = True
    return merged


def merge_parts(part_dirs: list[str], out_dir: str) -> None:
    """Prepared datasets of the same builder (version folders, in order) -> one version folder `out_dir`.

    Shards are copied in part order and renumbered; each split's shard lengths and sizes are concatenated.
    A split a part lacks (it had nothing of it to encode) is skipped for that part.
    """
    missing = [d for d in part_dirs if not (epath.Path(d) / "dataset_info.json").exists()]
    if missing:
        raise FileNotFoundError(f"the codes dataset part(s) {missing} are missing: every process of the job "
                                f"must write its part before they are merged")
    infos = [tfds.builder_from_directory(d).info for d in part_dirs]
    out = epath.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(name for info in infos for name in info.splits))
    merged = []
    for name in names:
        parts = [info.splits[name] for info in infos if name in info.splits]
        files = [f for split in parts for f in split.filepaths]
        template = tfds.core.ShardedFileTemplate(data_dir=out, dataset_name=infos[0].name, split=name,
                                                 filetype_suffix=infos[0].file_format.value)
        for index, path in enumerate(files):
            epath.Path(path).copy(template.sharded_filepath(shard_index=index, num_shards=len(files)),
                                  overwrite=True)
        merged.append(tfds.core.SplitInfo(name=name, shard_lengths=[n for s in parts for n in s.shard_lengths],
                                          num_bytes=sum(s.num_bytes for s in parts), filename_template=template))
    info = infos[0]
    info.set_splits(tfds.core.SplitDict(merged))
    info.write_to_directory(out)
