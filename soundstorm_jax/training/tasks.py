"""One trainer core, two models: the per-kind "task" that `train.py`'s loop drives.

`config.kind` picks the task ('soundstorm', the default, or 'codec'). The
loop in `train.py` (checkpoints, resume, SIGTERM, logging cadence, eval
cadence) is the same for both; a task supplies only what differs:

    open_data()               the prepared dataset (a TFDS builder) the run reads
    train_iterator(builder)   this host's checkpointable grain iterator
    abstract_state            ShapeDtypeStructs with their target shardings (restore target)
    create_state()            a fresh state, created sharded
    device_batch(batch)       a host's numpy batch -> global, sharded jax arrays
    train_step(state, batch)  the jitted step: (state, batch) -> (state, metrics); state donated
    log_record(metrics, t)    the metrics line for a step that took t seconds
    evaluate(state, builder)  {'eval_...': value} over the validation split, or None

A task's state is any pytree with a scalar `step`; the `Checkpointer` saves
it with the iterator's position and `config.model`'s signature.
"""
from __future__ import annotations

from typing import Any, Optional, Protocol

import jax
import tensorflow_datasets as tfds
from jax.sharding import Mesh

from soundstorm_jax.training import experiment, inputs, metrics as metrics_lib

KINDS = ("soundstorm", "codec")


class Task(Protocol):
    kind: str
    config: Any
    mesh: Mesh
    abstract_state: Any

    def open_data(self) -> tfds.core.DatasetBuilder: ...

    def train_iterator(self, builder: tfds.core.DatasetBuilder): ...

    def create_state(self) -> Any: ...

    def device_batch(self, batch: dict) -> dict[str, jax.Array]: ...

    def train_step(self, state: Any, batch: dict[str, jax.Array]) -> tuple[Any, dict]: ...

    def log_record(self, metrics: dict, step_time: float) -> dict: ...

    def evaluate(self, state: Any, builder: tfds.core.DatasetBuilder, *,
                 max_batches: Optional[int] = None) -> Optional[dict]: ...


def kind_of(config: Any) -> str:
    """`config.kind`, 'soundstorm' when the config has none; ValueError for an unknown kind."""
    kind = config.get("kind", None) or "soundstorm"
    if kind not in KINDS:
        raise ValueError(f"config.kind={kind!r} is not a known model kind; known: {list(KINDS)}")
    return kind


class SoundStormTask:
    """SoundStorm on a prepared codes dataset (see `experiment.build`)."""

    kind = "soundstorm"

    def __init__(self, config: Any, mesh: Mesh):
        self.config, self.mesh = config, mesh
        self.ex = experiment.build(config, mesh)
        self.abstract_state = self.ex.abstract_state
        self.flops = metrics_lib.model_flops_per_step(config)
        self.frames = int(config.data.batch_size) * int(config.data.max_frames)

    def open_data(self):
        return inputs.open_codes_dataset(self.config.data.dir, self.config.model)

    def train_iterator(self, builder):
        return inputs.train_iterator(self.ex, builder)

    def create_state(self):
        return self.ex.create_state()

    def device_batch(self, batch):
        return inputs.device_batch(self.ex, batch)

    def train_step(self, state, batch):
        return self.ex.train_step(state, batch)

    def log_record(self, metrics, step_time):
        record = dict(loss=metrics["loss"], accuracy=metrics["accuracy"],
                      level_accuracy=metrics["level_accuracy"], level_loss=metrics["level_loss"],
                      grad_norm=metrics["grad_norm"], lr=metrics["lr"], skipped=metrics["skipped"],
                      nonfinite_count=metrics["nonfinite_count"], step_time=step_time,
                      frames_per_s=self.frames / step_time,
                      tokens_per_s=self.frames * self.ex.model.net.num_columns / step_time)
        utilisation = metrics_lib.mfu(self.flops, step_time, self.config.logging.peak_flops, self.mesh.size)
        if utilisation is not None:
            record["mfu"] = utilisation
        return record

    def evaluate(self, state, builder, *, max_batches=None):
        result = inputs.evaluate(self.ex, self.ex.eval_params(state), builder, max_batches=max_batches)
        return None if result is None else {f"eval_{k}": v for k, v in result.items()}


def build_task(config: Any, mesh: Mesh) -> Task:
    """The task for `config.kind` on `mesh`."""
    kind = kind_of(config)
    if kind == "codec":
        from soundstorm_jax.training.codec_task import CodecTask
        return CodecTask(config, mesh)
    return SoundStormTask(config, mesh)
