"""`soundstorm train` (and `python train.py`): config + overrides + workdir -> a trained, checkpointed run.

    soundstorm train --config tiny --workdir runs/tiny --config.data.dir=CODES [--config.x.y=value ...]

`--config` is a packaged config name or a Python file with `get_config()`;
overrides go through the one strict reader (`training.config`): an unknown
field, a value of the wrong type or a malformed `WORKDIR/config.json` exits
2 with one line naming the field, before JAX starts.

Process 0 shows a progress bar on stderr (steps, step rate, ETA; not with
--quiet or --json); metric lines and log lines print above it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys

from etils import epath

from soundstorm_jax.cli.common import CliError, Output, make_out_dir

# What a run writes into its workdir before its first metrics line or checkpoint (its config, compiled programs,
# TensorBoard's event file with no scalars yet): nothing worth keeping when it fails there. A workdir that holds
# metrics.jsonl, a checkpoint or anything else is never removed.
DISPOSABLE = ("config.json", "compile_cache", "tensorboard")

DESCRIPTION = """Train SoundStorm or the SoundStream codec (config.kind picks the model).

  soundstorm train --config tiny --workdir runs/tiny --config.data.dir=CODES_DATASET
  soundstorm train --config codec_tiny --workdir runs/codec [--config.data.dir=AUDIO_DATASET]
  soundstorm train --config my_config.py --workdir runs/mine --config.optimizer.lr=1e-3

--config: a packaged config ({names}) or a Python file whose get_config() returns an ml_collections
ConfigDict. Any --config.x.y=value overrides a config field. Running again with the same --workdir resumes
from its latest complete checkpoint (and loads its compiled steps from WORKDIR/compile_cache). Metrics go
to stdout and WORKDIR/metrics.jsonl as JSON lines and to TensorBoard (tensorboard --logdir WORKDIR/tensorboard)."""


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


class _LinesAboveBar(io.TextIOBase):
    """A text stream whose lines go to `file` above the progress bars (tqdm.write clears and redraws them)."""

    def __init__(self, file):
        self.file, self.pending = file, ""

    def write(self, text: str) -> int:
        from tqdm import tqdm

        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            tqdm.write(line, file=self.file)
        return len(text)

    def flush(self) -> None:
        self.file.flush()


class StepBar:
    """tqdm over the run's steps on stderr, opened after the first step: a resumed run counts from its restored
    step, the rate and ETA leave the first step's compile out, and the set-up's log lines print before the bar."""

    def __init__(self, total_steps: int):
        self.total_steps, self.bar = int(total_steps), None

    def on_step(self, step: int) -> None:
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total_steps, initial=step, desc="train", unit="step", file=sys.stderr,
                            disable=False, dynamic_ncols=True)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def progress(out: Output, total_steps: int, *, shown: bool):
    """(on_step, stream) for `train_and_evaluate`: a StepBar with metric and log lines above it when `shown` and
    neither --quiet nor --json; else no bar and metric lines on stdout."""
    if not shown or out.quiet or out.as_json:
        yield None, sys.stdout
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = StepBar(total_steps)
    with contextlib.closing(bar), logging_redirect_tqdm(loggers=[logging.getLogger("soundstorm_jax")]):
        yield bar.on_step, _LinesAboveBar(sys.stdout)


def run(args, out, extra):
    config = read_config(args.config, extra)
    from soundstorm_jax import training
    training.check_saved_config(args.workdir, config)  # A wrong workdir fails before JAX starts.
    # A new workdir is removed when the command fails and leaves nothing in it but DISPOSABLE (a bad dataset or
    # model setting fails after the config is written); one with a checkpoint or metrics is kept.
    make_out_dir(args.workdir, disposable=DISPOSABLE)
    from soundstorm_jax import distributed
    distributed.maybe_initialize_distributed()  # Before anything touches the devices.
    import jax
    with progress(out, config.total_steps, shown=jax.process_index() == 0) as (on_step, stream):
        summary = training.train_and_evaluate(config, args.workdir, on_step=on_step, stream=stream)
    checkpoints = epath.Path(args.workdir) / "checkpoints"
    steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) if checkpoints.is_dir() else []
    record = dict(command="train", workdir=args.workdir, step=summary.step, stopped=summary.stopped,
                  checkpoints=steps, metrics=os.path.join(args.workdir, "metrics.jsonl"),
                  train_step_compile=summary.train_step_compile)
    if jax.process_index() == 0:  # One result per job, not one per process.
        out.result(record, [f"trained in {args.workdir} to step {summary.step} ({summary.stopped}; checkpoints at "
                            f"steps {steps})"])
    return 0
