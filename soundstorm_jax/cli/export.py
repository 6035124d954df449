"""`soundstorm export WORKDIR OUT [--codec CODEC_WORKDIR]`: a run's inference export (see `soundstorm_jax.export`).

OUT then stands in for the workdir in every command (`soundstorm generate OUT --codec OUT/codec ...`) and
loads in one call with `soundstorm_jax.load(OUT)`.
"""
from __future__ import annotations

from etils import epath

from soundstorm_jax.cli.common import CliError, make_out_dir, require_dir


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "export", parents=parents, help="write only what generation needs from a training run",
        description="Write the inference export of a training run: its config and its EMA parameters (raw ones "
                    "when the run keeps no EMA), with --codec also the codec's generator and codebooks, as Orbax "
                    "PyTree checkpoints: no optimizer state, no discriminators. Every command that takes a "
                    "workdir accepts OUT instead (the codec as OUT/codec); soundstorm_jax.load(OUT) loads it.")
    parser.add_argument("workdir", metavar="WORKDIR", help="a SoundStorm (or codec) training workdir")
    parser.add_argument("out", metavar="OUT", help="a new (or empty) folder for the export")
    parser.add_argument("--codec", metavar="WORKDIR", default=None,
                        help="the codec training workdir whose codec to export with it, as OUT/codec")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step to export (default: the latest)")
    parser.set_defaults(run=run)
    return parser


def run(args, out, extra):
    del extra
    require_dir(args.workdir, "workdir")
    if args.codec is not None:
        require_dir(args.codec, "codec workdir")
    target = epath.Path(args.out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise CliError(f"export folder {args.out!r} is not an empty folder; choose a new one")
    make_out_dir(args.out)
    from soundstorm_jax import export
    report = export.export_run(args.workdir, args.out, codec=args.codec, step=args.step)
    lines = [_describe(report)]
    if "codec" in report:
        lines.append(_describe(report["codec"]))
    out.result(dict(report, command="export"), lines)
    return 0


def _describe(report: dict) -> str:
    size = f"{report['export_bytes'] / 1e6:.2f} MB"
    if report.get("checkpoint_bytes"):
        size += f" ({100 * report['export_bytes'] / report['checkpoint_bytes']:.0f}% of the training checkpoint)"
    what = "EMA parameters" if report["ema"] else "parameters"
    return f"{report['out']}: {report['kind']} step {report['step']}, {what}, {size}"
