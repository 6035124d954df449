"""The trainer: one loop for every model kind, and the task protocol it drives.

    summary = train_and_evaluate(config, workdir)                     # train.py, `soundstorm train`
    summary = train_and_evaluate(config, workdir, time_limit_s=240,   # the demo: a time box
                                 on_step=bar.update)

`config.kind` picks the task: 'soundstorm' (`soundstorm_task.py`) or 'codec'
(`codec_task.py`). A task supplies only what differs between models (see
`Task`); the loop owns the rest: the mesh, the data iterator, Orbax
checkpoints with the iterator's position (resume), SIGTERM, the logging and
evaluation cadence, metrics.jsonl and TensorBoard (`tensorboard.py`), the
run's compilation cache (`compile_cache.py`). A second call with the same
workdir resumes from the latest complete checkpoint. A time limit stops at a step
boundary and saves that step; the learning-rate schedule still follows
`config.total_steps`.

Shared pieces every task's step uses: `JitStep` (jit under the mesh and the
logical-axis rules) and `keep_if_finite` (a step with a NaN/Inf loss or
gradient changes nothing but the step counter).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from typing import Any, Callable, Optional, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import tensorflow_datasets as tfds
from etils import epath
from jax.sharding import Mesh

from soundstorm_jax import paths
from soundstorm_jax.data import PipelineConfig, audio_folder, make_eval_iterator, make_train_iterator
from soundstorm_jax.training import checkpoint as checkpoint_lib, config as config_lib, metrics as metrics_lib, \
    sharding
from soundstorm_jax.training import compile_cache, tensorboard as tensorboard_lib

log = logging.getLogger(__name__)


class Task(Protocol):
    """What a model kind supplies to the trainer. A state is any pytree with a scalar `step`."""

    kind: str
    config: Any
    mesh: Mesh
    abstract_state: Any  # ShapeDtypeStructs carrying their target shardings (the restore target)
    batch_sharding: jax.sharding.NamedSharding  # of every batch array's leading axis

    def open_data(self) -> tfds.core.DatasetBuilder:
        """The prepared dataset the run reads, checked against the model."""

    def pipeline_config(self, *, train: bool) -> PipelineConfig:
        """The grain pipeline of the training (shuffled crops) or evaluation (ordered, one epoch) split."""

    def create_state(self) -> Any:
        """A fresh state, created sharded. Same seed, same values on any mesh."""

    def device_batch(self, batch: dict, *, train: bool) -> dict[str, jax.Array]:
        """A host's numpy batch -> checked, global, sharded model inputs."""

    def train_step(self, state: Any, batch: dict[str, jax.Array]) -> tuple[Any, dict]:
        """The jitted step (state donated)."""

    def eval_step(self, state: Any, batch: dict[str, jax.Array], index: int) -> dict:
        """Metrics of evaluation batch number `index`."""

    def summarize_eval(self, parts: list[dict]) -> Optional[dict]:
        """The evaluation's result from its batches' metrics (None: nothing was evaluated)."""

    def log_record(self, metrics: dict, step_time: float) -> dict:
        """The metrics line of a step that took `step_time` seconds."""


def build_task(config: Any, mesh: Mesh) -> Task:
    """The task for `config.kind` on `mesh` (each task checks the config before building anything)."""
    if config_lib.kind_of(config) == "codec":
        from soundstorm_jax.training.codec_task import CodecTask
        return CodecTask(config, mesh)
    from soundstorm_jax.training.soundstorm_task import SoundStormTask
    return SoundStormTask(config, mesh)


# ---- what every task's step shares -------------------------------------------------------------------------

def keep_if_finite(finite: jax.Array, new: Any, old: Any) -> Any:
    """`new` where `finite` (a scalar bool) else `old`, leaf by leaf: the NaN/Inf guard of every step."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


class JitStep:
    """A jitted step traced under the logical-axis rules and run under the mesh.

    The mesh context turns the model's logical activation constraints on;
    without it they are no-ops and XLA propagates the in/out shardings.
    `cache_size()` is how many programs it has compiled (once per run when
    shapes and shardings stay fixed; the tests check it).
    """

    def __init__(self, fn: Callable, mesh: Mesh, rules: sharding.Rules, *, in_shardings, out_shardings,
                 donate_argnums=(), compiler_options: Optional[dict] = None):
        self.mesh = mesh

        def traced(*args):
            with nn.logical_axis_rules(rules):
                return fn(*args)

        self._jitted = jax.jit(traced, in_shardings=in_shardings, out_shardings=out_shardings,
                               donate_argnums=donate_argnums, compiler_options=compiler_options)

    def __call__(self, *args):
        with jax.set_mesh(self.mesh):
            return self._jitted(*args)

    def lower(self, *args):
        with jax.set_mesh(self.mesh):
            return self._jitted.lower(*args)

    def cache_size(self) -> int:
        return self._jitted._cache_size()


# ---- data ------------------------------------------------------------------------------------------------

def open_dataset(data_dir: str, builder_name: str, how_to_prepare: str) -> tfds.core.DatasetBuilder:
    """The prepared TFDS dataset under `data_dir`: the folder given to the prepare function (holding
    `<builder_name>/<version>/`) or that version folder itself. Errors say `how_to_prepare` one."""
    paths.check_reachable(data_dir, "config.data.dir")
    folder = epath.Path(data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"config.data.dir={data_dir!r} does not exist or is not a directory")
    if (folder / "dataset_info.json").exists():
        return audio_folder.open_prepared(data_dir)
    found = sorted(os.fspath(p) for p in folder.glob(f"{builder_name}/*/dataset_info.json"))
    if not found:
        raise FileNotFoundError(f"config.data.dir={data_dir!r} holds no prepared dataset (expected "
                                f"{builder_name}/<version>/dataset_info.json); {how_to_prepare}")
    return audio_folder.open_prepared(os.path.dirname(found[-1]))


def train_iterator(task: Task, builder: tfds.core.DatasetBuilder):
    """This host's checkpointable iterator over the training split: its rows of every global batch."""
    split = task.config.data.train_split
    if split not in builder.info.splits:
        raise ValueError(f"the dataset in {builder.data_dir!r} has no {split!r} split "
                         f"(it has {sorted(builder.info.splits)})")
    source = builder.as_data_source(split)
    if len(source) == 0:
        raise ValueError(f"split {split!r} of {builder.data_dir!r} is empty")
    config = task.pipeline_config(train=True)
    return make_train_iterator(config, source, seed=int(task.config.seed),
                               rows=sharding.process_rows(task.batch_sharding, config.batch_size))


def evaluate(task: Task, state: Any, builder: tfds.core.DatasetBuilder, *,
             max_batches: Optional[int] = None) -> Optional[dict]:
    """{'eval_<metric>': value} over the evaluation split (None when the split is absent or empty)."""
    split = task.config.data.eval_split
    if not split or split not in builder.info.splits:
        return None
    parts = []
    config = task.pipeline_config(train=False)
    batches = make_eval_iterator(config, builder.as_data_source(split),
                                 rows=sharding.process_rows(task.batch_sharding, config.batch_size))
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        parts.append(jax.device_get(task.eval_step(state, task.device_batch(batch, train=False), index)))
    result = task.summarize_eval(parts) if parts else None
    return None if result is None else {f"eval_{k}": v for k, v in result.items()}


# ---- the loop --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainSummary:
    """What a call did: the step it reached, why it stopped, the last logged and evaluated metrics."""
    step: int
    stopped: str  # 'finished' | 'time_limit' | 'preempted'
    seconds: float
    last_metrics: dict
    last_eval: Optional[dict]
    train_step_compile: Optional[dict] = None  # compile_cache.CompileReport of the first step: cache hits, seconds


def train_and_evaluate(config: Any, workdir: str, *, time_limit_s: Optional[float] = None,
                       on_step: Optional[Callable[[int], None]] = None, stream=sys.stdout) -> TrainSummary:
    """Trains `config` in `workdir` until `config.total_steps` (or the time limit, or SIGTERM).

    Args:
      time_limit_s: wall-clock seconds for this call, counted from its start (set-up and compiles
        included); None = no limit.
      on_step: called with the step number after every step (progress bars).
      stream: where metric lines are printed besides metrics.jsonl (None: nowhere).
    """
    start = time.perf_counter()
    deadline = None if time_limit_s is None else start + float(time_limit_s)
    if deadline is not None and jax.process_count() > 1:  # Hosts' clocks would disagree on the last step.
        raise ValueError("time_limit_s is for single-process runs; with several processes use total_steps")
    config_lib.check_config(config)  # Unknown keys or kinds fail before anything is built.
    paths.check_reachable(workdir, "workdir")  # A gs:// workdir that cannot be reached fails here, not in a hang.
    config_lib.check_saved_config(workdir, config)
    compile_cache.configure(config, workdir)  # Before anything compiles.

    mesh = sharding.make_mesh(config.mesh.shape)
    task = build_task(config, mesh)
    builder = task.open_data()
    config_lib.save_config(workdir, config)
    log.info("%s: mesh %s, %d devices, %d processes", task.kind, dict(mesh.shape), mesh.size,
                 jax.process_count())

    ckpt = checkpoint_lib.Checkpointer(workdir, config.model, every_steps=config.checkpoint.every_steps,
                                       keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    data = train_iterator(task, builder)
    if ckpt.latest_step() is not None:
        state, data_state, step = ckpt.restore(task.abstract_state)
        data.set_state(data_state)
        log.info("resumed from step %d", step)
    else:
        state = task.create_state()
    step = int(state.step)

    writer = metrics_lib.MetricsWriter(workdir, stream=stream)
    board = tensorboard_lib.TensorBoardWriter(workdir, task, builder, start_step=step)
    last_metrics, last_eval, stopped, step_compile = {}, None, "finished", None
    tick, steps_since_log = time.perf_counter(), 0
    with contextlib.closing(ckpt), contextlib.closing(board), checkpoint_lib.PreemptionFlag() as preempted, \
            checkpoint_lib.InterruptFlag() as interrupted:
        while step < config.total_steps:
            batch = task.device_batch(next(data), train=True)
            if step_compile is None:  # The first call compiles the step, or loads it from the persistent cache.
                with compile_cache.watch() as step_compile:
                    state, metrics = task.train_step(state, batch)
                log.info(step_compile.describe("train step"))
            else:
                state, metrics = task.train_step(state, batch)
            step += 1
            steps_since_log += 1
            ckpt.save(step, state, data.get_state())  # Async; only on checkpoint.every_steps.
            if deadline is not None:  # Steps are dispatched ahead of the device: wait, or the limit is overrun.
                jax.block_until_ready(state.step)
            out_of_time = deadline is not None and time.perf_counter() >= deadline

            if step % config.logging.every_steps == 0 or step == config.total_steps or out_of_time:
                metrics = jax.device_get(metrics)  # Waits for the step.
                step_time = (time.perf_counter() - tick) / steps_since_log
                last_metrics = dict(step=step, **task.log_record(metrics, step_time))
                writer.write(last_metrics)
                board.write(last_metrics)
                tick, steps_since_log = time.perf_counter(), 0
            if on_step is not None:
                on_step(step)

            if step % config.logging.eval_every_steps == 0 or step == config.total_steps or out_of_time:
                result = evaluate(task, state, builder, max_batches=config.logging.eval_batches)
                if result is not None:
                    last_eval = dict(step=step, **result)
                    writer.write(last_eval)
                    board.write(last_eval)
                board.evaluated(state, step)  # Audio samples / reconstructions, when configured.
                tick = time.perf_counter()

            if interrupted.is_set():  # Ctrl-C, at a step boundary (see InterruptFlag).
                raise KeyboardInterrupt
            preemption = preempted.reached(step)  # Every step, on every process (see PreemptionFlag).
            if preemption or out_of_time:
                stopped = "preempted" if preemption else "time_limit"
                ckpt.save(step, state, data.get_state(), force=True)
                log.warning("%s at step %d; checkpoint saved", stopped, step)
                break

        if step == config.total_steps and ckpt.latest_step() != step:
            ckpt.save(step, state, data.get_state(), force=True)
    # Closing the Checkpointer waited for the last save: it is complete when this returns.
    return TrainSummary(step=step, stopped=stopped, seconds=time.perf_counter() - start,
                        last_metrics=last_metrics, last_eval=last_eval,
                        train_step_compile=None if step_compile is None else step_compile.as_dict())


__all__ = ["JitStep", "Task", "TrainSummary", "build_task", "evaluate", "keep_if_finite", "open_dataset",
           "train_and_evaluate", "train_iterator"]
