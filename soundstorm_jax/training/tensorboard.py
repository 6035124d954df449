"""TensorBoard event files of a training run, written with tensorboardX (no TensorFlow).

    tensorboard --logdir WORKDIR/tensorboard

Scalars: every number of every metrics.jsonl line, at its step, under
`train/` (losses, per-level accuracy and loss as `train/level_accuracy/0`,
..., gradient norms, learning rates, skipped steps), `perf/` (step time,
frames, tokens or audio seconds per second, MFU) and `eval/` (the
evaluation's metrics, `eval_` dropped).

Media, at each evaluation (`config.logging.tensorboard_samples` clips, the
first ones of the evaluation split; 0 = none):
  - SoundStorm, with `config.logging.samples_codec` set (a codec workdir or an
    EnCodec checkpoint file): `samples/<i>/generated`, the model's generation
    for clip i (its first third of frames as the prompt, its semantic tokens if
    the model reads them, a fixed key: evaluations differ only by the model),
    `samples/<i>/reference` (the clip's own codes through the codec, once per
    process) and `samples/<i>/spectrogram` (mel spectrograms, reference over generated);
  - the codec: `reconstructions/<i>/reconstructed` (all levels),
    `reconstructions/<i>/original` (once per process) and
    `reconstructions/<i>/spectrogram` (original over reconstructed).

Only process 0 writes; in a multi-process run every process computes the
media (the same clips and keys: their programs are collectives) from
parameters gathered to the host.

A resumed run starts a new event file with `purge_step` = its first step, so
TensorBoard hides what the interrupted run logged after its last checkpoint.
`gs://` logdirs are written through `etils.epath` (the package's path layer):
object stores cannot append, so each flush rewrites the event file from
memory (as tensorboardX's own google-cloud-storage writer does); a failed
upload is logged and retried at the next flush, never stopping training.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import logging
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from soundstorm_jax.cli import spectrogram
from soundstorm_jax.data import make_eval_iterator
from soundstorm_jax.training import config as config_lib, metrics as metrics_lib

log = logging.getLogger(__name__)

FOLDER = "tensorboard"
FLUSH_SECONDS = 30
PERFORMANCE = ("step_time", "frames_per_s", "tokens_per_s", "audio_seconds_per_s", "mfu")
PROMPT_FRACTION = 3  # SoundStorm's samples continue the first 1/3 of each clip's frames.


# ---- scalars -----------------------------------------------------------------------------------------------

def scalar_tag(key: str) -> str:
    """A metrics.jsonl key -> its TensorBoard tag: 'eval_loss' -> 'eval/loss', 'mfu' -> 'perf/mfu',
    'loss' -> 'train/loss'."""
    if key.startswith("eval_"):
        return f"eval/{key[len('eval_'):]}"
    return f"perf/{key}" if key in PERFORMANCE else f"train/{key}"


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """{tag: value} of a metrics record (its `step` aside); a list becomes one tag per entry ('.../0', ...)."""
    out = {}
    for key, value in record.items():
        if key == "step":
            continue
        value = metrics_lib.to_python(value)
        tag = scalar_tag(key)
        if isinstance(value, list):
            out.update({f"{tag}/{i}": float(v) for i, v in enumerate(value)})
        else:
            out[tag] = float(value)
    return out


# ---- gs:// through epath -----------------------------------------------------------------------------------

class _ObjectStoreEventFile:
    """tensorboardX's file object for an event file on an object store: written whole at every flush."""

    def __init__(self, path: str):
        self.path = epath.Path(path)
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        try:
            self.path.write_bytes(self.buffer.getvalue())
        except Exception as e:  # noqa: BLE001 - a failed upload must not stop training; the next flush retries.
            log.warning("could not write %s (%s: %s); retrying at the next flush", self.path, type(e).__name__, e)

    def close(self) -> None:
        self.flush()


class _ObjectStoreFactory:
    def open(self, path: str) -> _ObjectStoreEventFile:
        return _ObjectStoreEventFile(path)

    def directory_check(self, path: str) -> None:
        del path  # Object stores have no folders to create.


def summary_writer(logdir: str, *, purge_step: Optional[int] = None):
    """A tensorboardX `SummaryWriter` on `logdir`; gs:// through epath, not tensorboardX's own
    google-cloud-storage writer: one path layer (and one emulator set-up) for every file of the package."""
    from tensorboardX import SummaryWriter, record_writer  # Imported on use: half a second with its GCS/S3 clients.

    record_writer.register_writer_factory("gs", _ObjectStoreFactory())
    # A roomy queue: the training loop's add_* calls never wait for a flush (an upload, on gs://) to finish.
    return SummaryWriter(logdir, purge_step=purge_step, flush_secs=FLUSH_SECONDS, max_queue=1000)


# ---- media -------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Clip:
    """A model's audio and what it is compared with, as float32 waveforms at `sample_rate`."""
    output: np.ndarray
    reference: np.ndarray
    sample_rate: int


def first_examples(task: Any, builder: Any, count: int) -> Optional[dict[str, np.ndarray]]:
    """The first `count` real examples of the evaluation split as the task's evaluation pipeline makes them (the
    same on every process), or None when there is no evaluation split."""
    split = task.config.data.eval_split
    if not split or split not in builder.info.splits:
        return None
    pipeline = task.pipeline_config(train=False)
    parts, found = [], 0
    for batch in make_eval_iterator(pipeline, builder.as_data_source(split), rows=range(pipeline.batch_size)):
        real = np.asarray(batch["mask"]).any(axis=1)  # The last batch is filled with masked examples.
        parts.append({k: np.asarray(v)[real] for k, v in batch.items()})
        found += int(real.sum())
        if found >= count:
            break
    if not found:
        return None
    return {k: np.concatenate([p[k] for p in parts])[:count] for k in parts[0]}


def _on_this_host(tree: Any) -> Any:
    """`tree` as arrays this process computes with alone: as it is in a one-process run; gathered to the host in
    a multi-process one (a collective: every process calls it)."""
    if jax.process_count() == 1:
        return tree
    return multihost_utils.process_allgather(tree, tiled=True)


def load_samples_codec(path: str, net: Any) -> Any:
    """`config.logging.samples_codec`: a codec workdir or an EnCodec checkpoint file, checked against `net`, on
    this process's first device."""
    from soundstorm_jax.maskgit.soundstorm import check_codec_matches
    from soundstorm_jax.training import restore, sharding

    where = f"config.logging.samples_codec={path!r}"
    try:
        if epath.Path(path).is_dir():
            mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.local_devices()[:1])
            codec = restore.load_codec(path, mesh=mesh)
        elif epath.Path(path).exists():
            from soundstorm_jax.codec import load_encodec
            codec = load_encodec(path)
        else:
            raise FileNotFoundError("no such codec workdir or EnCodec checkpoint")
        check_codec_matches(codec, net)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e
    return codec


def soundstorm_clips(task: Any, state: Any, examples: Mapping[str, np.ndarray], codec: Any, *,
                     compute: bool = True) -> list[Clip]:
    """SoundStorm's generations for `examples` (prompted with their first third) and their decoded references.

    Every process calls it (gathering the parameters is a collective); only those with `compute` generate."""
    from soundstorm_jax.sampler.generate import generate
    from soundstorm_jax.training.soundstorm_task import host_batch

    inputs = host_batch(examples, task.model, check=False)
    codes, mask = inputs["codes"], inputs["mask"]
    lengths = mask.sum(axis=1)
    options = dict(key=jax.random.PRNGKey(int(task.config.seed)), batch_size=len(codes), lengths=lengths)
    prompt_frames = int(lengths.min()) // PROMPT_FRACTION
    if prompt_frames:
        options["prompt"] = codes[:, :prompt_frames]
    if "semantic_ids" in inputs:
        options["semantic_ids"] = inputs["semantic_ids"]
    params = _on_this_host(nn.unbox(task.eval_params(state)))
    if not compute:
        return []
    generated = np.asarray(generate(task.model, {"params": params}, codes.shape[1], **options))
    audio = np.asarray(codec.decode(np.maximum(generated, 0)))  # Padded frames come back as -1.
    reference = np.asarray(codec.decode(np.where(mask[:, :, None], codes, 0)))
    samples = lengths * codec.hop_length
    return [Clip(audio[i, :n], reference[i, :n], int(codec.sample_rate)) for i, n in enumerate(samples)]


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(codec_module: Any, variables: Any, audio: jax.Array) -> jax.Array:
    return codec_module.apply(variables, audio, train=False).audio


def codec_clips(task: Any, state: Any, examples: Mapping[str, np.ndarray], *, compute: bool = True) -> list[Clip]:
    """The codec's full-bitrate reconstructions of `examples` (their first window, real samples only).

    Every process calls it (gathering the parameters is a collective); only those with `compute` decode."""
    codec_state = state.codec
    variables = _on_this_host({"params": codec_state.params["generator"], "vq_stats": codec_state.vq_stats})
    if not compute:
        return []
    audio = np.asarray(examples["audio"], np.float32)
    reconstructed = np.asarray(_reconstruct(codec_state.config.codec, variables, audio))
    samples = np.asarray(examples["mask"]).sum(axis=1)
    return [Clip(reconstructed[i, :n], audio[i, :n], task.sample_rate) for i, n in enumerate(samples)]


# ---- the writer --------------------------------------------------------------------------------------------

class TensorBoardWriter:
    """A run's event files in `workdir/tensorboard` (see the module docstring); every process makes one and
    calls it alike, process 0 writes.

        board = TensorBoardWriter(workdir, task, builder, start_step=step)
        board.write(record)            # next to MetricsWriter.write
        board.evaluated(state, step)   # after each evaluation: media
        board.close()
    """

    def __init__(self, workdir: str, task: Any, builder: Any, *, start_step: int):
        self.task, self.builder = task, builder
        settings = config_lib.read_section(task.config, "logging")
        self.enabled = bool(settings.get("tensorboard", True))
        self.logdir = str(epath.Path(workdir) / FOLDER)
        self.num_clips = int(settings.get("tensorboard_samples") or 0) if self.enabled else 0
        self.codec = None
        if self.num_clips and task.kind == "soundstorm":
            if settings.get("samples_codec"):
                self.codec = load_samples_codec(settings["samples_codec"], task.model.net)
            else:
                self.num_clips = 0  # Codes alone cannot be heard.
        self._examples: Optional[dict] = None
        self._references_written = False
        self._writer = None
        if self.enabled and jax.process_index() == 0:
            # Events an interrupted run logged after its last checkpoint are hidden: this run logs those steps anew.
            self._writer = summary_writer(self.logdir, purge_step=start_step + 1 if start_step else None)

    def write(self, record: Mapping[str, Any]) -> None:
        """The scalars of one metrics record, at its `step`."""
        if self._writer is None:
            return
        step = int(record["step"])
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, step)

    def evaluated(self, state: Any, step: int) -> None:
        """An evaluation's media at `step` (nothing when tensorboard_samples is 0 or no codec is set)."""
        if not self.num_clips:
            return
        if self._examples is None:
            self._examples = first_examples(self.task, self.builder, self.num_clips)
            if self._examples is None:
                log.warning("no evaluation split: TensorBoard gets no audio samples")
                self.num_clips = 0
                return
        if self.task.kind == "codec":
            section, names = "reconstructions", ("reconstructed", "original")
            clips = codec_clips(self.task, state, self._examples, compute=self._writer is not None)
        else:
            section, names = "samples", ("generated", "reference")
            clips = soundstorm_clips(self.task, state, self._examples, self.codec, compute=self._writer is not None)
        for i, clip in enumerate(clips):
            self._audio(f"{section}/{i}/{names[0]}", clip.output, clip.sample_rate, step)
            if not self._references_written:  # They do not change during a run.
                self._audio(f"{section}/{i}/{names[1]}", clip.reference, clip.sample_rate, step)
            figure = spectrogram.comparison_figure(clip.reference, clip.output, clip.sample_rate, names[::-1])
            self._writer.add_image(f"{section}/{i}/spectrogram", spectrogram.to_rgb(figure), step, dataformats="HWC")
        self._references_written = True

    def _audio(self, tag: str, audio: np.ndarray, sample_rate: int, step: int) -> None:
        audio = np.nan_to_num(np.asarray(audio, np.float32))
        # tensorboardX clips too, but announces it on stdout (where the metric lines go).
        self._writer.add_audio(tag, np.clip(audio, -1.0, 1.0), step, sample_rate=sample_rate)

    def close(self) -> None:
        """Writes what is pending (waits for it)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


__all__ = ["Clip", "TensorBoardWriter", "codec_clips", "first_examples", "load_samples_codec", "scalar_tag",
           "scalars", "soundstorm_clips", "summary_writer"]
