"""The training loop train.py runs, as a function: config + workdir -> a trained, checkpointed run.

    summary = train_and_evaluate(config, workdir)                     # train.py
    summary = train_and_evaluate(config, workdir, time_limit_s=240,   # the demo: a time box
                                 on_step=bar.update)

`config.kind` ('soundstorm' or 'codec') picks the task (`tasks.build_task`);
the loop is the same for both. A second call with the same workdir resumes from
the latest complete checkpoint (state, rng and the data iterator's position).
Metrics go to stdout (unless `stream=None`) and workdir/metrics.jsonl.

A time limit stops the loop early at a step boundary and saves that step, so
a time-boxed run ends with a checkpoint like a finished one; the learning-rate
schedule still follows `config.total_steps`.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable, Optional

import jax
from absl import logging

from soundstorm_jax.training import checkpoint as checkpoint_lib, mesh as mesh_lib, metrics as metrics_lib, tasks


@dataclasses.dataclass
class TrainSummary:
    """What a call did: the step it reached, why it stopped, the last logged and evaluated metrics."""
    step: int
    stopped: str  # 'finished' | 'time_limit' | 'preempted'
    seconds: float
    last_metrics: dict
    last_eval: Optional[dict]


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
    tasks.kind_of(config)  # An unknown kind fails before anything is built.
    checkpoint_lib.check_saved_config(workdir, config)

    mesh = mesh_lib.make_mesh(config.mesh.shape)
    task = tasks.build_task(config, mesh)
    builder = task.open_data()
    checkpoint_lib.save_config(workdir, config)
    logging.info("%s: mesh %s, %d devices, %d processes", task.kind, dict(mesh.shape), mesh.size,
                 jax.process_count())

    ckpt = checkpoint_lib.Checkpointer(workdir, config.model, every_steps=config.checkpoint.every_steps,
                                       keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    data = task.train_iterator(builder)
    if ckpt.latest_step() is not None:
        state, data_state, step = ckpt.restore(task.abstract_state)
        data.set_state(data_state)
        logging.info("resumed from step %d", step)
    else:
        state = task.create_state()
    step = int(state.step)

    writer = metrics_lib.MetricsWriter(workdir, stream=stream)
    preempted = checkpoint_lib.PreemptionFlag()
    last_metrics, last_eval, stopped = {}, None, "finished"
    tick, steps_since_log = time.perf_counter(), 0
    while step < config.total_steps:
        state, metrics = task.train_step(state, task.device_batch(next(data)))
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
            tick, steps_since_log = time.perf_counter(), 0
        if on_step is not None:
            on_step(step)

        if step % config.logging.eval_every_steps == 0 or step == config.total_steps or out_of_time:
            result = task.evaluate(state, builder, max_batches=config.logging.eval_batches)
            if result is not None:
                last_eval = dict(step=step, **result)
                writer.write(last_eval)
            tick = time.perf_counter()

        if preempted.is_set() or out_of_time:
            stopped = "preempted" if preempted.is_set() else "time_limit"
            ckpt.save(step, state, data.get_state(), force=True)
            logging.warning("%s at step %d; checkpoint saved", stopped, step)
            break

    if step == config.total_steps and ckpt.latest_step() != step:
        ckpt.save(step, state, data.get_state(), force=True)
    ckpt.close()  # wait_until_finished(): the last save completes before returning.
    return TrainSummary(step=step, stopped=stopped, seconds=time.perf_counter() - start,
                        last_metrics=last_metrics, last_eval=last_eval)


__all__ = ["TrainSummary", "train_and_evaluate"]
