"""`soundstorm train` (and `python train.py`): config + overrides + workdir -> a trained, checkpointed run.

    soundstorm train --config tiny --workdir runs/tiny --config.data.dir=CODES [--config.x.y=value ...]

`--config` is a packaged config name or a Python file with `get_config()`;
overrides go through the one strict reader (`training.config`): an unknown
field, a value of the wrong type or a malformed `WORKDIR/config.json` exits
2 with one line naming the field, before JAX starts.
"""
from __future__ import annotations

import argparse
import os

from soundstorm_jax.cli.common import CliError

DESCRIPTION = """Train SoundStorm or the SoundStream codec (config.kind picks the model).

  soundstorm train --config tiny --workdir runs/tiny --config.data.dir=CODES_DATASET
  soundstorm train --config codec_tiny --workdir runs/codec [--config.data.dir=AUDIO_DATASET]
  soundstorm train --config my_config.py --workdir runs/mine --config.optimizer.lr=1e-3

--config: a packaged config ({names}) or a Python file whose get_config() returns an ml_collections
ConfigDict. Any --config.x.y=value overrides a config field. Running again with the same --workdir resumes
from its latest complete checkpoint. Metrics go to stdout and WORKDIR/metrics.jsonl as JSON lines."""


def add_parser(subparsers, parents):
    from soundstorm_jax.training.config import packaged_configs

    parser = subparsers.add_parser("train", parents=parents, help="train SoundStorm or the codec",
                                   description=DESCRIPTION.format(names=", ".join(packaged_configs())),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, metavar="NAME_OR_FILE",
                        help="a packaged config name (e.g. tiny) or a config file; --config.x.y=value overrides "
                             "its fields")
    parser.add_argument("--workdir", required=True, metavar="DIR",
                        help="directory for checkpoints, config.json and metrics.jsonl (resumed if it has them)")
    parser.set_defaults(run=run, accepts_extra=True)
    return parser


def read_config(config_arg: str, overrides: list[str]):
    """The run's config: `--config` loaded, overrides applied, every key checked."""
    from soundstorm_jax.training import config as config_lib

    bad = [a for a in overrides if not a.startswith("--config.")]
    if bad:
        raise CliError(f"unknown train option(s) {bad}; train accepts --config, --workdir and "
                       f"--config.x.y=value overrides")
    config = config_lib.apply_overrides(config_lib.load_config(config_arg), overrides)
    config_lib.check_config(config)
    return config


def run(args, out, extra):
    config = read_config(args.config, extra)
    from soundstorm_jax import training
    training.check_saved_config(args.workdir, config)  # A wrong workdir fails before JAX starts.
    training.maybe_initialize_distributed()  # Before anything touches the devices.
    summary = training.train_and_evaluate(config, args.workdir)
    checkpoints = os.path.join(args.workdir, "checkpoints")
    steps = sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit()) if os.path.isdir(checkpoints) else []
    record = dict(command="train", workdir=args.workdir, step=summary.step, stopped=summary.stopped,
                  checkpoints=steps, metrics=os.path.join(args.workdir, "metrics.jsonl"))
    out.result(record, [f"trained in {args.workdir} to step {summary.step} ({summary.stopped}; checkpoints at "
                        f"steps {steps})"])
    return 0
