"""Trains SoundStorm or the SoundStream codec, from one CPU to a pod.

    python train.py --config configs/tiny.py --workdir runs/tiny --config.data.dir=CODES [--config.x.y=value ...]
    python train.py --config configs/codec_tiny.py --workdir runs/codec [--config.data.dir=AUDIO_DATASET]

`config.kind` ('soundstorm' or 'codec') picks the task (soundstorm_jax/training/
tasks.py); this loop is the same for both. A second invocation with the same
workdir resumes from the latest complete checkpoint (state, rng and the data
iterator's position). Metrics go to stdout and workdir/metrics.jsonl as JSON lines.
"""
import time

import jax

from absl import app, flags, logging
from ml_collections import config_flags

from soundstorm_jax import training
from soundstorm_jax.training import metrics as metrics_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, config.json and metrics.jsonl.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    training.maybe_initialize_distributed()  # Before anything touches the devices.
    config, workdir = _CONFIG.value, _WORKDIR.value
    training.kind_of(config)  # An unknown kind fails before anything is built.
    training.check_saved_config(workdir, config)

    mesh = training.make_mesh(config.mesh.shape)
    task = training.build_task(config, mesh)
    builder = task.open_data()
    training.save_config(workdir, config)
    logging.info("%s: mesh %s, %d devices, %d processes", task.kind, dict(mesh.shape), mesh.size,
                 jax.process_count())

    ckpt = training.Checkpointer(workdir, config.model, every_steps=config.checkpoint.every_steps,
                                 keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    data = task.train_iterator(builder)
    if ckpt.latest_step() is not None:
        state, data_state, step = ckpt.restore(task.abstract_state)
        data.set_state(data_state)
        logging.info("resumed from step %d", step)
    else:
        state = task.create_state()
    step = int(state.step)

    writer = metrics_lib.MetricsWriter(workdir)
    preempted = training.PreemptionFlag()
    tick = time.perf_counter()
    while step < config.total_steps:
        state, metrics = task.train_step(state, task.device_batch(next(data)))
        step += 1
        ckpt.save(step, state, data.get_state())  # Async; only on checkpoint.every_steps.

        if step % config.logging.every_steps == 0 or step == config.total_steps:
            metrics = jax.device_get(metrics)  # Waits for the step.
            step_time = (time.perf_counter() - tick) / config.logging.every_steps
            writer.write(dict(step=step, **task.log_record(metrics, step_time)))
            tick = time.perf_counter()

        if step % config.logging.eval_every_steps == 0 or step == config.total_steps:
            result = task.evaluate(state, builder, max_batches=config.logging.eval_batches)
            if result is not None:
                writer.write(dict(step=step, **result))
            tick = time.perf_counter()

        if preempted.is_set():
            ckpt.save(step, state, data.get_state(), force=True)
            logging.warning("preempted at step %d; checkpoint saved", step)
            break

    if step == config.total_steps and ckpt.latest_step() != step:
        ckpt.save(step, state, data.get_state(), force=True)
    ckpt.close()  # wait_until_finished(): the last save completes before exit.


if __name__ == "__main__":
    app.run(main)
