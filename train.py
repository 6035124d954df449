"""Trains SoundStorm or the SoundStream codec, from one CPU to a pod.

    python train.py --config tiny --workdir runs/tiny --config.data.dir=CODES [--config.x.y=value ...]
    python train.py --config configs/codec_tiny.py --workdir runs/codec [--config.data.dir=AUDIO_DATASET]

The same command as `soundstorm train` (soundstorm_jax/cli/train.py): load
the config (a packaged name or a file), apply the overrides, check every
key, then `training.train_and_evaluate(config, workdir)`: build the mesh and
the task for `config.kind` (soundstorm_jax/training/trainer.py), restore or
create the sharded state, then step, checkpoint (async), log and evaluate
until config.total_steps or SIGTERM. Running it again with the same workdir
resumes from the latest complete checkpoint.
"""
import sys

from soundstorm_jax.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
