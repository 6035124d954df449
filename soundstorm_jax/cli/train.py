"""`soundstorm train`: exactly `train.py` (codec or SoundStorm, chosen by `config.kind`).

The flags are train.py's: `--config FILE`, `--workdir DIR` and any number of
`--config.section.field=value` overrides. The loop is train.py's own `main`
(the repository's train.py, loaded by `load_repository_module`), run through absl
like `python train.py ...`, so both commands behave identically.
"""
from __future__ import annotations

import os

from soundstorm_jax.cli.common import CliError, load_repository_module, require_file

DESCRIPTION = """Train SoundStorm or the SoundStream codec: the same loop and flags as train.py.

  soundstorm train --config configs/tiny.py --workdir runs/tiny --config.data.dir=CODES_DATASET
  soundstorm train --config configs/codec_tiny.py --workdir runs/codec [--config.data.dir=AUDIO_DATASET]

config.kind ('soundstorm' or 'codec') picks the model. Any --config.x.y=value overrides a config field.
Running again with the same --workdir resumes from its latest complete checkpoint. Metrics go to stdout
and WORKDIR/metrics.jsonl as JSON lines."""


def add_parser(subparsers, parents):
    parser = subparsers.add_parser("train", parents=parents, help="train SoundStorm or the codec (train.py)",
                                   description=DESCRIPTION, formatter_class=_raw())
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="a config file (configs/*.py); --config.x.y=value overrides its fields")
    parser.add_argument("--workdir", required=True, metavar="DIR",
                        help="directory for checkpoints, config.json and metrics.jsonl (resumed if it has them)")
    parser.set_defaults(run=run, accepts_extra=True)
    return parser


def _raw():
    import argparse
    return argparse.RawDescriptionHelpFormatter


def train_argv(args, extra: list[str]) -> list[str]:
    bad = [a for a in extra if not a.startswith("--config.")]
    if bad:
        raise CliError(f"unknown train option(s) {bad}; train accepts --config, --workdir and "
                       f"--config.x.y=value overrides")
    return ["soundstorm train", "--config", args.config, "--workdir", args.workdir] + list(extra)


def run(args, out, extra):
    require_file(args.config, "config file")
    argv = train_argv(args, extra)
    # Defines train.py's absl flags (--config, --workdir) and its main.
    module = load_repository_module("train.py", "soundstorm_train_script")
    from absl import app
    try:
        app.run(module.main, argv=argv)
    except SystemExit as e:
        if e.code not in (None, 0):
            raise CliError(f"train.py exited with status {e.code}") from e
    checkpoints = os.path.join(args.workdir, "checkpoints")
    steps = sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit()) if os.path.isdir(checkpoints) else []
    record = dict(command="train", workdir=args.workdir, checkpoints=steps,
                  metrics=os.path.join(args.workdir, "metrics.jsonl"))
    out.result(record, [f"trained in {args.workdir} (checkpoints at steps {steps})"])
    return 0
