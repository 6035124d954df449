"""`soundstorm`: the command line's entry point (console script and `python -m soundstorm_jax`).

    soundstorm [--quiet] [--json] [--debug] [--verbose] COMMAND [options]

Commands: demo, prepare, train, encode, decode, generate, export, serve, launch (`soundstorm COMMAND --help`).
Exit status: 0 success; 2 bad input (the message on stderr starts with
"error: "); 1 an unexpected failure (with its traceback under --debug);
130 interrupted by Ctrl-C (SIGINT), as shells report it. A command that fails removes the
output folders it created while they hold nothing (`common.remove_created_folders`).
Other libraries' log lines (Orbax, absl, TensorFlow, TFDS, XLA's C++ INFO lines) are
hidden unless --verbose (`common.quiet_libraries`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from typing import Optional, Sequence

from soundstorm_jax import __version__
from soundstorm_jax.cli import codec_io, demo, export, generate, launch, prepare, serve, train
from soundstorm_jax.cli.common import (EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED, CliError, Output,
                                       forget_created_folders, quiet_libraries, remove_created_folders,
                                       show_package_log)

DESCRIPTION = """SoundStorm in JAX: prepare data, train, encode/decode audio and generate.

  soundstorm demo --out demo                                      # everything below, on the embedded corpus

  soundstorm prepare --audio AUDIO_DIR --out data/mine            # TFDS audio dataset
  soundstorm train --config codec_tiny --workdir runs/codec --config.data.dir=data/mine/audio
  soundstorm prepare --audio AUDIO_DIR --out data/mine --codec runs/codec   # + its codes dataset
  soundstorm train --config tiny --workdir runs/tiny --config.data.dir=data/mine/codes
  soundstorm generate runs/tiny --seconds 2 --codec runs/codec --out samples
  soundstorm serve runs/tiny --codec runs/codec --port 8080      # an HTTP server, batching its requests
  soundstorm launch --processes 2 --cpu-devices 4 -- train ...   # a multi-process job on this machine

Exit status: 0 success, 2 bad input, 1 unexpected failure, 130 interrupted (Ctrl-C)."""


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else False
    parser.add_argument("--quiet", "-q", action="store_true", default=default,
                        help="no progress bars or notes; only the result (or errors)")
    parser.add_argument("--json", action="store_true", default=default,
                        help="print the result as one JSON object on stdout (for scripts)")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the traceback of any error")
    parser.add_argument("--verbose", "-v", action="store_true", default=default,
                        help="also show other libraries' log lines (Orbax, absl, TensorFlow, TFDS, XLA), hidden "
                             "by default")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soundstorm", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)  # Also accepted after the command.
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    prepare.add_parser(subparsers, [common])
    train.add_parser(subparsers, [common])
    codec_io.add_parsers(subparsers, [common])
    generate.add_parser(subparsers, [common])
    export.add_parser(subparsers, [common])
    serve.add_parser(subparsers, [common])
    demo.add_parser(subparsers, [common])
    launch.add_parser(subparsers, [common])
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")  # Exits with status 2.
    quiet_libraries(verbose=args.verbose)  # Before TensorFlow, TFDS or Orbax are imported.
    out = Output(quiet=args.quiet, as_json=args.json)
    show_package_log(quiet=args.quiet or args.json)
    forget_created_folders()
    code = _run(args, out, extra)
    if code != 0:
        remove_created_folders()  # Only those this command created and left without files.
    return code


def _run(args, out: Output, extra: Sequence[str]) -> int:
    try:
        _check_remote_paths(args, extra)
        # With --json, stdout holds only the result object: anything else printed goes to stderr.
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            return int(args.run(args, out, extra) or 0)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", EXIT_INTERRUPTED)
    except (CliError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        if args.debug:
            traceback.print_exc()
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return _fail(args, message, EXIT_BAD_INPUT)
    except Exception as e:  # noqa: BLE001 - the command line's last resort.
        if args.debug:
            traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return _fail(args, f"unexpected failure: {type(e).__name__}: {first} (rerun with --debug for the traceback)",
                     EXIT_FAILURE)


def _check_remote_paths(args, extra: Sequence[str]) -> None:
    """Every gs:// path on the command line (options, positionals, --config.x.y=gs://... overrides) must reach
    its bucket within a bounded time: unreachable storage is a one-line error (exit 2), not a long hang."""
    from soundstorm_jax import paths

    named = [(name, value) for name, values in vars(args).items()
             for value in (values if isinstance(values, list) else [values])]
    named += [tuple(arg[2:].split("=", 1)) for arg in extra if arg.startswith("--") and "=" in arg]
    for name, value in named:
        if isinstance(value, str) and paths.is_remote(value):
            paths.check_reachable(value, name.replace("_", "-"))


def _fail(args, message: str, code: int) -> int:
    """`error: message` on stderr; with --json also {"command", "error", "exit_code"} on stdout."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(dict(command=args.command, error=message, exit_code=code)), flush=True)
    if "jax" in sys.modules and sys.modules["jax"].distributed.is_initialized():
        remove_created_folders()  # main() will not get to it.
        # One process of a multi-process job failed. The others get a bounded wait to fail the same way (and
        # say so) before this one, perhaps the coordinator's host, leaves; if they all came, they shut down
        # together; then leave at once. Exiting normally would wait at JAX's shutdown barrier for processes that
        # may not be failing at all; those stop when the coordinator misses this process's heartbeats.
        sys.stdout.flush()
        sys.stderr.flush()
        from soundstorm_jax import distributed
        distributed.meet_partners_before_exit()
        os._exit(code)
    return code


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
