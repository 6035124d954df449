"""The grain input pipeline: fixed-shape numpy batches from a data source.

    source (random access, e.g. `builder.as_data_source("train")`)
      -> the global order: shuffle(seed), reshuffled every epoch -> repeat(num_epochs)
      -> global batches of `batch_size` positions; this host loads only its
         rows of each (`rows`, default an equal contiguous share per host)
      -> load record, random crop of `max_frames`, pad, masks -> batch

Batch (B = this host's rows of the global batch, T = max_frames, S = semantic_frames(config)):

  codes:         int32 (B, T, levels)   [feature="codes"]
  audio:         float32 (B, T)         [feature="audio", T in samples]
  mask:          bool (B, T)            True = a real frame, False = padding
  semantic_ids:  int32 (B, S)           [only when config.semantic_rate is set]
  semantic_mask: bool (B, S)
  index:         int32 (B,)             the record's index in the source; -1
                                        for an evaluation padding example

Padding: frames past a record's end hold `code_pad_value` (codes, default 0),
0.0 (audio) and `semantic_pad_value` (default 0). These are ordinary ids:
the masks, never the values, say what is padding.

Crops are deterministic: the window of record r in epoch e comes from
`numpy.random.default_rng([seed, r, e])`, whatever the sharding or batch
size. The window starts on a frame where a semantic token starts too
(multiples of q for a semantic/acoustic rate ratio p/q in lowest terms), so
the semantic crop is `ids[start * p/q :]`, exactly aligned.

The iterator (`make_train_iterator`) is a `grain.DatasetIterator`: save
`it.get_state()` with a checkpoint and `it.set_state(state)` after restoring
it; the resumed iterator yields exactly the batches the first would have.
"""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any, Optional, Sequence

import grain
import numpy as np

from soundstorm_jax.data import audio_io


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """What the training loop's batches look like.

    Attributes:
      batch_size: global batch; each of `process_count` hosts makes 1/process_count.
      max_frames: frames per example (codec frames; samples for feature="audio").
      feature: "codes" (a `CodesDataset`) or "audio" (an `AudioFolder`).
      frame_rate: frames per second of `feature` (the codec's rate, or the
        audio sample rate); only the ratio to `semantic_rate` matters.
      semantic_rate: semantic tokens per second, or None for no semantic ids.
        E.g. 25.0 with frame_rate 50.0 gives one token per two frames.
      code_pad_value, semantic_pad_value: what fills padded positions.
      num_epochs: passes over the data; None repeats forever.
      shuffle: shuffle (train) or keep the source order.
      random_crop: random windows (train) or the first `max_frames` (eval).
      num_threads, prefetch_buffer_size: grain's reading threads and buffer.
    """
    batch_size: int
    max_frames: int
    feature: str = "codes"
    frame_rate: float = 50.0
    semantic_rate: Optional[float] = None
    code_pad_value: int = 0
    semantic_pad_value: int = 0
    num_epochs: Optional[int] = None
    shuffle: bool = True
    random_crop: bool = True
    num_threads: int = 2
    prefetch_buffer_size: int = 4

    def __post_init__(self):
        if self.feature not in ("codes", "audio"):
            raise ValueError(f"feature must be 'codes' or 'audio', got {self.feature!r}")
        if self.batch_size < 1 or self.max_frames < 1:
            raise ValueError(f"batch_size and max_frames must be positive, got "
                             f"{self.batch_size} and {self.max_frames}")
        if self.semantic_rate is not None and not 0 < self.semantic_rate:
            raise ValueError(f"semantic_rate must be positive, got {self.semantic_rate}")


def semantic_ratio(config: PipelineConfig) -> Fraction:
    """Semantic tokens per frame, p/q in lowest terms (e.g. 25 Hz / 50 Hz = 1/2)."""
    if config.semantic_rate is None:
        return Fraction(0)
    ratio = Fraction(config.semantic_rate) / Fraction(config.frame_rate)
    return ratio.limit_denominator(1_000_000)


def semantic_frames(config: PipelineConfig) -> int:
    """S: semantic tokens per example, ceil(max_frames * p/q)."""
    return math.ceil(config.max_frames * semantic_ratio(config))


def crop_start(length: int, config: PipelineConfig, rng: Optional[np.random.Generator]) -> int:
    """First frame of the window: uniform over semantic-aligned starts, or 0.

    Args:
      length: frames in the record.
      rng: None takes the first window (evaluation).
    """
    slack = length - config.max_frames
    if slack <= 0 or rng is None:
        return 0
    step = semantic_ratio(config).denominator if config.semantic_rate else 1
    return step * int(rng.integers(0, slack // step + 1))


def pad_to(x: np.ndarray, length: int, pad_value) -> tuple[np.ndarray, np.ndarray]:
    """Pads/truncates axis 0 to `length`.

    Args:
      x: shape (n, ...).

    Returns:
      (padded, mask): shape (length, ...) and bool (length,), mask[i] = i < n.
    """
    n = min(len(x), length)
    out = np.full((length,) + x.shape[1:], pad_value, dtype=x.dtype)
    out[:n] = x[:n]
    mask = np.zeros((length,), bool)
    mask[:n] = True
    return out, mask


def crop_example(record: dict, config: PipelineConfig, *,
                 rng: Optional[np.random.Generator], index: int) -> dict:
    """One record -> one fixed-shape example (see the module docstring).

    Args:
      record: a source record with `config.feature` and, when a semantic rate
        is set, non-empty `semantic_ids`.
      rng: draws the crop; None takes the first window.
      index: the record's index in the source, reported as `index`.
    """
    if config.feature == "codes":
        frames, pad = np.asarray(record["codes"], np.int32), config.code_pad_value
    else:
        frames, pad = audio_io.int16_to_float(record["audio"]), 0.0
    start = crop_start(len(frames), config, rng)
    window, mask = pad_to(frames[start:start + config.max_frames], config.max_frames, pad)
    example = {config.feature: window, "mask": mask, "index": np.int32(index)}
    if config.semantic_rate is not None:
        ids = np.asarray(record["semantic_ids"], np.int32)
        if ids.size == 0:
            name = record.get("id", b"?")
            raise ValueError(f"record {index} ({name!r}) has no semantic_ids but the "
                             "pipeline was configured with a semantic_rate")
        ratio = semantic_ratio(config)
        sem_start = int(start * ratio)  # Exact: start is a multiple of ratio.denominator.
        # Keep only the tokens that overlap the window's real frames.
        sem_end = min(len(ids), math.ceil((start + int(mask.sum())) * ratio))
        sem, sem_mask = pad_to(ids[sem_start:max(sem_start, sem_end)], semantic_frames(config),
                               config.semantic_pad_value)
        example.update(semantic_ids=sem, semantic_mask=sem_mask)
    return example


def empty_example(record: dict, config: PipelineConfig) -> dict:
    """A fully masked example shaped like `crop_example`'s, for eval padding."""
    example = crop_example(record, config, rng=None, index=-1)
    pads = {"codes": config.code_pad_value, "audio": 0.0, "mask": False,
            "semantic_ids": config.semantic_pad_value, "semantic_mask": False}
    return {k: (np.full_like(v, pads[k]) if k in pads else v) for k, v in example.items()}


def host_rows(batch_size: int, process_index: int, process_count: int) -> range:
    """The rows of every global batch that host `process_index` of `process_count` reads: an equal,
    contiguous share (what `jax.make_array_from_process_local_data` expects when each host's devices hold
    a contiguous block of the batch axis; `training.sharding.process_rows` derives it from a sharding)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
    share = batch_size // process_count
    return range(process_index * share, (process_index + 1) * share)


def _rows(config: PipelineConfig, rows: Optional[range], process_index: Optional[int],
          process_count: Optional[int]) -> range:
    if rows is None:
        if process_index is None or process_count is None:
            import jax  # Only when the caller leaves the host layout to JAX.
            process_index, process_count = jax.process_index(), jax.process_count()
        return host_rows(config.batch_size, process_index, process_count)
    if not (0 <= rows.start < rows.stop <= config.batch_size and rows.step == 1):
        raise ValueError(f"rows {rows} are not a contiguous part of a batch of {config.batch_size}")
    return rows


def make_train_dataset(config: PipelineConfig, data_source: Sequence[dict], *, seed: int,
                       rows: Optional[range] = None, process_index: Optional[int] = None,
                       process_count: Optional[int] = None) -> grain.MapDataset:
    """This host's part of every global training batch, as a `grain.MapDataset`.

    Every host derives the same global order (shuffled with `seed`, reshuffled
    each epoch); global batch i is positions [i*B, (i+1)*B) of it, and a host
    loads only its `rows` of each. So the global batches, and a run's losses,
    do not depend on how many hosts share them.

    Args:
      data_source: random-access records (`len` and `__getitem__`).
      seed: shuffles and crops; the same on every host.
      rows: this host's rows of a global batch (default: `host_rows` of
        process_index/process_count).
      process_index, process_count: this host and the number of hosts;
        None asks JAX (`jax.process_index()`, `jax.process_count()`).
    """
    rows = _rows(config, rows, process_index, process_count)
    num_records = len(data_source)
    if num_records < config.batch_size:
        raise ValueError(f"the data has {num_records} records, fewer than the batch of {config.batch_size}")
    order = grain.MapDataset.range(num_records)
    if config.shuffle:
        order = order.shuffle(seed=seed)  # grain mixes the epoch into the seed.
    order = order.repeat(config.num_epochs)
    batches = len(order) // config.batch_size

    def load(local: int) -> dict:
        # Local position -> global position -> record; the epoch is the global pass it falls in.
        position = (local // len(rows)) * config.batch_size + rows.start + local % len(rows)
        index, epoch = int(order[position]), position // num_records
        rng = np.random.default_rng([seed, index, epoch]) if config.random_crop else None
        return crop_example(data_source[index], config, rng=rng, index=index)

    return grain.MapDataset.range(batches * len(rows)).map(load).batch(len(rows), drop_remainder=True)


def make_eval_dataset(config: PipelineConfig, data_source: Sequence[dict], *, rows: Optional[range] = None,
                      process_index: Optional[int] = None,
                      process_count: Optional[int] = None) -> grain.MapDataset:
    """This host's part of one ordered pass: first windows, nothing dropped.

    Global batch i holds records [i*B, (i+1)*B) and the last one is filled
    with fully masked examples (index -1); each host loads its `rows` of each,
    so every record is read by exactly one host.
    """
    rows = _rows(config, rows, process_index, process_count)
    num_records = len(data_source)
    batches = math.ceil(num_records / config.batch_size)

    def load(local: int) -> dict:
        position = (local // len(rows)) * config.batch_size + rows.start + local % len(rows)
        if position < num_records:
            return crop_example(data_source[position], config, rng=None, index=position)
        return empty_example(data_source[0], config)

    return grain.MapDataset.range(batches * len(rows)).map(load).batch(len(rows), drop_remainder=True)


def to_iterator(ds: grain.MapDataset, config: PipelineConfig) -> grain.DatasetIterator:
    """A checkpointable iterator (`get_state`/`set_state`) reading in threads."""
    options = grain.ReadOptions(num_threads=config.num_threads,
                                prefetch_buffer_size=config.prefetch_buffer_size)
    return iter(ds.to_iter_dataset(options))


def make_train_iterator(config: PipelineConfig, data_source: Sequence[dict], *, seed: int,
                        rows: Optional[range] = None, process_index: Optional[int] = None,
                        process_count: Optional[int] = None) -> grain.DatasetIterator:
    """`make_train_dataset` as a checkpointable iterator of numpy batches."""
    return to_iterator(make_train_dataset(config, data_source, seed=seed, rows=rows,
                                          process_index=process_index, process_count=process_count), config)


def make_eval_iterator(config: PipelineConfig, data_source: Sequence[dict], *, rows: Optional[range] = None,
                       process_index: Optional[int] = None,
                       process_count: Optional[int] = None) -> grain.DatasetIterator:
    """`make_eval_dataset` as an iterator of numpy batches."""
    return to_iterator(make_eval_dataset(config, data_source, rows=rows, process_index=process_index,
                                         process_count=process_count), config)


def config_from_dict(values: Any) -> PipelineConfig:
    """A `PipelineConfig` from a mapping such as an `ml_collections.ConfigDict`.

    Unknown keys are an error naming them, so a typo in a config is caught.
    """
    values = dict(values)
    known = {f.name for f in dataclasses.fields(PipelineConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown data pipeline option(s) {unknown}; known: {sorted(known)}")
    return PipelineConfig(**values)
