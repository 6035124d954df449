"""Trains SoundStorm on a prepared codes dataset, from one CPU to a pod.

    python train.py --config configs/tiny.py --workdir runs/tiny --config.data.dir=DATA [--config.x.y=value ...]

A second invocation with the same workdir resumes from the latest complete
checkpoint (model, optimiser, EMA, rng and the data iterator's position).
Metrics go to stdout and workdir/metrics.jsonl as JSON lines.
"""
import time

import jax

from absl import app, flags, logging
from ml_collections import config_flags

from soundstorm_jax import training
from soundstorm_jax.training import inputs, metrics as metrics_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, config.json and metrics.jsonl.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    training.maybe_initialize_distributed()  # Before anything touches the devices.
    config, workdir = _CONFIG.value, _WORKDIR.value
    builder = inputs.open_codes_dataset(config.data.dir, config.model)
    training.check_saved_config(workdir, config)
    training.save_config(workdir, config)

    mesh = training.make_mesh(config.mesh.shape)
    ex = training.build(config, mesh)
    logging.info("mesh %s, %d devices, %d processes", dict(mesh.shape), mesh.size, jax.process_count())

    ckpt = training.Checkpointer(workdir, config.model, every_steps=config.checkpoint.every_steps,
                                 keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    data = inputs.train_iterator(ex, builder)
    if ckpt.latest_step() is not None:
        state, data_state, step = ckpt.restore(ex.abstract_state)
        data.set_state(data_state)
        logging.info("resumed from step %d", step)
    else:
        state = ex.create_state()
    step = int(state.step)

    writer = metrics_lib.MetricsWriter(workdir)
    flops = metrics_lib.model_flops_per_step(config)
    frames = int(config.data.batch_size) * int(config.data.max_frames)
    preempted = training.PreemptionFlag()
    tick = time.perf_counter()
    while step < config.total_steps:
        state, metrics = ex.train_step(state, inputs.device_batch(ex, next(data)))
        step += 1
        ckpt.save(step, state, data.get_state())  # Async; only on checkpoint.every_steps.

        if step % config.logging.every_steps == 0 or step == config.total_steps:
            metrics = jax.device_get(metrics)  # Waits for the step.
            step_time = (time.perf_counter() - tick) / config.logging.every_steps
            record = dict(step=step, loss=metrics["loss"], accuracy=metrics["accuracy"],
                          level_accuracy=metrics["level_accuracy"], level_loss=metrics["level_loss"],
                          grad_norm=metrics["grad_norm"], lr=metrics["lr"], skipped=metrics["skipped"],
                          nonfinite_count=metrics["nonfinite_count"], step_time=step_time,
                          frames_per_s=frames / step_time,
                          tokens_per_s=frames * ex.model.net.num_columns / step_time)
            utilisation = metrics_lib.mfu(flops, step_time, config.logging.peak_flops, mesh.size)
            if utilisation is not None:
                record["mfu"] = utilisation
            writer.write(record)
            tick = time.perf_counter()

        if step % config.logging.eval_every_steps == 0 or step == config.total_steps:
            result = inputs.evaluate(ex, ex.eval_params(state), builder, max_batches=config.logging.eval_batches)
            if result is not None:
                writer.write(dict(step=step, **{f"eval_{k}": v for k, v in result.items()}))
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
