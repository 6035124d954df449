"""What every subcommand shares: the error type, the output, audio files and codecs.

Exit codes (see `main`): 0 success, 2 bad input (`CliError`, `ValueError`, a
missing file), 1 anything unexpected.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Iterable, Optional

import numpy as np
from etils import epath

from soundstorm_jax import paths

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class CliError(ValueError):
    """Bad input from the command line; the message says what is wrong and how to fix it."""


class Output:
    """Human-readable lines on stdout, or (with --json) one JSON object per command.

    Progress bars (tqdm, on stderr) are shown unless --quiet.
    """

    def __init__(self, *, quiet: bool = False, as_json: bool = False):
        self.quiet, self.as_json = bool(quiet), bool(as_json)
        self.stdout = sys.stdout  # The real stdout, kept while --json sends other prints to stderr.

    def info(self, message: str) -> None:
        """A progress note on stderr (hidden by --quiet and --json)."""
        if not self.quiet and not self.as_json:
            print(message, file=sys.stderr, flush=True)

    def notice(self, message: str) -> None:
        """Something the user should know even with --quiet (on stderr, prefixed 'note: ')."""
        print(f"note: {message}", file=sys.stderr, flush=True)

    def progress(self, iterable: Iterable, **kwargs) -> Iterable:
        from tqdm import tqdm
        return tqdm(iterable, disable=self.quiet, file=sys.stderr, **kwargs)

    def result(self, record: dict, lines: Iterable[str]) -> None:
        """The command's result: `record` as JSON with --json, else `lines` (even with --quiet)."""
        if self.as_json:
            print(json.dumps(record, sort_keys=True, default=str), file=self.stdout, flush=True)
        else:
            for line in lines:
                print(line, file=self.stdout, flush=True)


def show_package_log(*, quiet: bool) -> None:
    """The package's own log lines (e.g. "resumed from step 4") on stderr, as bare messages; warnings only
    with --quiet. Other libraries' INFO logs (Orbax, TFDS) stay hidden."""
    logger = logging.getLogger("soundstorm_jax")
    for handler in [h for h in logger.handlers if getattr(h, "soundstorm_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.soundstorm_cli = True
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


class _LibraryLogFilter(logging.Filter):
    """Lets through other libraries' warnings and errors only, unless --verbose (`quiet_libraries`)."""

    shown = False

    def filter(self, record: logging.LogRecord) -> bool:
        return self.shown or record.levelno >= logging.WARNING or record.name.startswith("soundstorm_jax")


class _StderrHandler(logging.StreamHandler):
    """A stream handler on whatever sys.stderr is when a line is written (not the one at creation)."""

    stream = property(lambda self: sys.stderr, lambda self, value: None)


_LIBRARY_FILTER = _LibraryLogFilter()


def quiet_libraries(*, verbose: bool) -> None:
    """Other libraries' log lines: hidden (default) or shown (--verbose). The package's own lines are
    `show_package_log`'s.

    Python logging (absl, through which Orbax logs; JAX; TFDS; ...): lines below WARNING are dropped by a filter
    on the root logger's stderr handler, which is installed here (absl would otherwise install a bare one at its
    first line), so a library that raises its own verbosity later stays quiet. C++ logging (XLA, TensorFlow):
    TF_CPP_MIN_LOG_LEVEL, which JAX defaults to 1 (no INFO lines); --verbose sets it to 0. Called by `main` once
    the flags are parsed, before TFDS, Orbax or a backend has logged anything. Warnings and errors always show.
    """
    _LIBRARY_FILTER.shown = bool(verbose)
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    root = logging.getLogger()
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))  # What logging.basicConfig would use.
        root.addHandler(handler)
    for handler in root.handlers:
        if type(handler) in (logging.StreamHandler, _StderrHandler) and _LIBRARY_FILTER not in handler.filters:
            handler.addFilter(_LIBRARY_FILTER)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        from absl import logging as absl_logging
    except ImportError:  # pragma: no cover - absl comes with JAX
        return
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)


def require_file(path: str, what: str) -> str:
    if not epath.Path(path).exists():
        raise CliError(f"{what} {path!r} does not exist")
    if epath.Path(path).is_dir():
        raise CliError(f"{what} {path!r} is a directory, not a file")
    return path


def require_dir(path: str, what: str) -> str:
    if not epath.Path(path).is_dir():
        raise CliError(f"{what} {path!r} does not exist or is not a directory")
    return path


# Output folders this command created (the topmost folder that did not exist before, and the files inside it that
# may go with it), removed by `remove_created_folders` when the command fails; reset by `main` for each command.
_created: list[tuple[str, tuple[str, ...]]] = []


def make_out_dir(path: str, *, disposable: Iterable[str] = ()) -> str:
    """Creates the output folder; CliError when it cannot be created or written.

    Records the folders it creates (not those that existed): when the command fails, `remove_created_folders`
    removes them again if they hold no files, or only the `disposable` ones (paths under `path`, e.g. the
    config.json a training run writes before it fails).
    """
    from soundstorm_jax.data.audio_io import AudioError, make_output_dir

    top = None if paths.is_remote(path) else _topmost_missing(os.path.abspath(os.fspath(path)))
    try:
        made = make_output_dir(path)
    except AudioError as e:
        raise CliError(str(e)) from e
    if top is not None and os.path.isdir(top):
        extra = tuple(os.path.join(os.path.abspath(os.fspath(path)), name) for name in disposable)
        _created.append((top, extra))
    return made


def _topmost_missing(path: str) -> Optional[str]:
    """The outermost folder of `path` (absolute) that does not exist yet, or None when `path` exists."""
    top = None
    while not os.path.lexists(path):
        top, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return top


def forget_created_folders() -> None:
    _created.clear()


def remove_created_folders() -> list[str]:
    """After a failed command: removes each output folder it created that holds no files (empty subfolders
    only) or nothing but its disposable files. A folder holding anything else (a checkpoint, samples written
    before the failure, a file another program put there) is kept whole. Returns the folders removed."""
    removed = []
    for top, disposable in reversed(_created):
        if not os.path.isdir(top) or os.path.islink(top) or not _holds_only(top, disposable):
            continue
        try:
            for path in disposable:
                if os.path.isdir(path) and not os.path.islink(path):
                    import shutil
                    shutil.rmtree(path)
                elif os.path.lexists(path):
                    os.remove(path)
            for root, _, _ in os.walk(top, topdown=False):
                os.rmdir(root)  # Fails (and keeps the folder) if anything appeared in it meanwhile.
        except OSError:
            continue
        removed.append(top)
    _created.clear()
    return removed


def _holds_only(top: str, disposable: tuple[str, ...]) -> bool:
    """Whether every file (or link) under `top` is one of the `disposable` paths or lies under one of them."""
    def allowed(path):
        return any(path == d or path.startswith(d + os.sep) for d in disposable)

    for root, dirs, files in os.walk(top):
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        if any(not allowed(os.path.join(root, name)) for name in files + links):
            return False
    return True


def read_audio(path: str, sample_rate: int, *, resample: bool, on_resample=None) -> np.ndarray:
    """A mono float32 waveform ``(samples,)`` at `sample_rate`, read by `data.audio_io.read_audio`.

    A file at another rate is resampled when `resample` (after calling `on_resample(file_rate)`), else
    CliError naming the --resample flag. Other bad files raise `AudioError` (a ValueError: exit 2).
    """
    from soundstorm_jax.data.audio_io import SampleRateError, read_audio as read

    require_file(path, "audio file")
    try:
        return read(path, sample_rate, allow_resample=resample, on_resample=on_resample)[0]
    except SampleRateError as e:
        raise CliError(f"audio file {path!r} has sample rate {e.rate} Hz but the codec expects {sample_rate} Hz; "
                       f"pass --resample to resample it, or convert it first "
                       f"(e.g. `sox {os.path.basename(path)} -r {sample_rate} out.wav`)") from e


def write_wav(path: str, audio: np.ndarray, sample_rate: int) -> str:
    from soundstorm_jax.data.audio_io import AudioError, write_wav as write

    try:
        return write(path, audio, sample_rate)
    except AudioError as e:
        raise CliError(str(e)) from e


def load_codes(path: str, what: str = "codes file") -> np.ndarray:
    """An integer array from a `.npy` file; CliError naming the file otherwise."""
    require_file(path, what)
    try:
        codes = np.load(paths.readable(path), allow_pickle=False)
    except Exception as e:
        raise CliError(f"cannot read {what} {path!r} as a .npy array: {e}") from e
    if not np.issubdtype(codes.dtype, np.integer):
        raise CliError(f"{what} {path!r} must hold integers, got dtype {codes.dtype}")
    return codes


def add_codec_options(parser, *, required: bool) -> None:
    """--codec WORKDIR / --encodec FILE, one of them (or neither when not `required`)."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--codec", metavar="WORKDIR",
                       help="a codec training workdir (soundstorm train --config codec_tiny ...); its latest "
                            "checkpoint is used")
    group.add_argument("--encodec", metavar="FILE",
                       help="an EnCodec 24 kHz checkpoint to import: a PyTorch state dict (.th/.pt, needs torch) "
                            "or an .npz of its arrays")
    parser.add_argument("--bandwidth", type=float, default=None,
                        help="with --encodec: the target bandwidth in kbps (sets the number of levels; "
                             "default: the model's)")


def load_codec_from_args(args) -> Optional[Any]:
    """The codec named by --codec / --encodec, or None when neither was given."""
    if getattr(args, "codec", None):
        from soundstorm_jax.training.restore import load_codec
        return load_codec(args.codec)
    if getattr(args, "encodec", None):
        path = require_file(args.encodec, "EnCodec checkpoint")
        from soundstorm_jax.codec import load_encodec
        try:
            return load_encodec(path, bandwidth=args.bandwidth)
        except ImportError as e:
            if "torch" not in str(e):
                raise
            raise CliError(f"--encodec {path!r} is a PyTorch checkpoint and reading it needs torch (pip install "
                           f"torch); or give --encodec an .npz of its arrays (made where torch is installed: "
                           f"np.savez('encodec.npz', **{{k: v.numpy() for k, v in torch.load({path!r}).items()}}))"
                           ) from e
    return None


def codes_dtype(codebook_size: int):
    from soundstorm_jax.data.codes_dataset import codes_dtype as dtype
    return dtype(int(codebook_size))
