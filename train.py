"""Trains SoundStorm or the SoundStream codec, from one CPU to a pod.

    python train.py --config configs/tiny.py --workdir runs/tiny --config.data.dir=CODES [--config.x.y=value ...]
    python train.py --config configs/codec_tiny.py --workdir runs/codec [--config.data.dir=AUDIO_DATASET]

`config.kind` ('soundstorm' or 'codec') picks the task (soundstorm_jax/training/
tasks.py); the loop (soundstorm_jax/training/loop.py) is the same for both:
build the mesh and the task, restore or create the sharded state, then step,
checkpoint (async), log and evaluate until config.total_steps or SIGTERM. A
second invocation with the same workdir resumes from the latest complete
checkpoint (state, rng and the data iterator's position). Metrics go to stdout
and workdir/metrics.jsonl as JSON lines.
"""
from absl import app, flags
from ml_collections import config_flags

from soundstorm_jax import training

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, config.json and metrics.jsonl.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    training.maybe_initialize_distributed()  # Before anything touches the devices.
    training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
