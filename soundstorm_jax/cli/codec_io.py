"""`soundstorm encode` / `soundstorm decode`: audio files <-> codes with a trained or imported codec.

Codes are `.npy` arrays of shape (frames, levels), integers in [0, codebook_size)
(int16 while the codebook fits, like the codes datasets). Audio is read with
soundfile (WAV, FLAC, OGG, ...), mixed down to mono; decoded audio is written
as 16-bit WAV at the codec's sample rate. Inputs, outputs and --out may be
gs:// paths. Two inputs that would write the same output file (the same name in two
folders with --out, or a.wav and a.flac side by side) are refused before anything is
loaded, naming both inputs and the output.
"""
from __future__ import annotations

import os

import numpy as np
from etils import epath

from soundstorm_jax import paths
from soundstorm_jax.cli.common import (CliError, add_codec_options, codes_dtype, load_codec_from_args, load_codes,
                                       make_out_dir, read_audio, require_file, write_wav)


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _out_path(source: str, out_dir, suffix: str) -> str:
    folder = out_dir if out_dir is not None else (os.path.dirname(source) or ".")
    return os.path.join(folder, _stem(source) + suffix)


def _check_no_collisions(sources, out_dir, suffix: str) -> None:
    """CliError when two inputs would be written to the same output file (the second would replace the first)."""
    seen = {}
    for source in sources:
        target = _out_path(source, out_dir, suffix)
        key = target if paths.is_remote(target) else os.path.normcase(os.path.abspath(target))
        if key in seen:
            first = seen[key]
            if _same_file(first, source):
                raise CliError(f"{source!r} is given twice; give each input once")
            raise CliError(f"{first!r} and {source!r} would both be written to {target!r}; rename one, or run them "
                           f"separately with different --out folders")
        seen[key] = source


def _same_file(a: str, b: str) -> bool:
    if paths.is_remote(a) or paths.is_remote(b):
        return a == b
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def add_parsers(subparsers, parents):
    enc = subparsers.add_parser(
        "encode", parents=parents, help="audio files -> codes (.npy)",
        description="Encode audio files (WAV, FLAC, ...) into codec codes: one FILE.npy of shape (frames, levels) "
                    "per input. Stereo is mixed to mono. The audio must be at the codec's sample rate "
                    "(or pass --resample).")
    enc.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files to encode")
    add_codec_options(enc, required=True)
    enc.add_argument("--out", metavar="DIR", default=None,
                     help="folder for the .npy files (default: next to each input); created if missing. Two "
                          "inputs with the same name (a.wav, a.flac) are refused: they would write the same file")
    enc.add_argument("--resample", action="store_true",
                     help="resample files whose rate differs from the codec's (default: refuse them)")
    enc.add_argument("--num-levels", type=int, default=None,
                     help="keep only the first N quantizer levels (default: all)")
    enc.set_defaults(run=run_encode)

    dec = subparsers.add_parser(
        "decode", parents=parents, help="codes (.npy) -> audio files (WAV)",
        description="Decode codes files (.npy, (frames, levels) integers) into 16-bit WAV files at the codec's "
                    "sample rate, one FILE.wav per input.")
    dec.add_argument("codes", nargs="+", metavar="CODES", help=".npy codes files, shape (frames, levels)")
    add_codec_options(dec, required=True)
    dec.add_argument("--out", metavar="DIR", default=None,
                     help="folder for the .wav files (default: next to each input); created if missing. Two "
                          "inputs with the same name are refused: they would write the same file")
    dec.add_argument("--length", type=int, default=None,
                     help="trim every output to this many samples (default: frames x the codec's hop)")
    dec.set_defaults(run=run_decode)


def run_encode(args, out, extra):
    del extra
    for path in args.audio:  # Every input checked before the codec is loaded.
        require_file(path, "audio file")
    _check_no_collisions(args.audio, args.out, ".npy")
    if args.out is not None:
        make_out_dir(args.out)
    codec = load_codec_from_args(args)
    if args.num_levels is not None and not 1 <= args.num_levels <= codec.num_quantizers:
        raise CliError(f"--num-levels must lie in [1, {codec.num_quantizers}], got {args.num_levels}")
    written, shapes = [], []
    for path in out.progress(args.audio, desc="encode", unit="file"):
        audio = read_audio(path, codec.sample_rate, resample=args.resample)
        codes = np.asarray(codec.encode(audio[None], sample_rate=codec.sample_rate,
                                        num_levels=args.num_levels))[0]
        target = _out_path(path, args.out, ".npy")
        with epath.Path(target).open("wb") as f:
            np.save(f, codes.astype(codes_dtype(codec.codebook_size)))
        written.append(target)
        shapes.append(list(codes.shape))
    record = dict(command="encode", files=written, shapes=shapes, sample_rate=codec.sample_rate,
                  hop_length=codec.hop_length)
    out.result(record, written)
    return 0


def run_decode(args, out, extra):
    del extra
    for path in args.codes:
        require_file(path, "codes file")
    _check_no_collisions(args.codes, args.out, ".wav")
    arrays = []
    for path in args.codes:
        codes = load_codes(path)
        if codes.ndim != 2:
            raise CliError(f"codes file {path!r} must have shape (frames, levels), got shape {codes.shape}")
        arrays.append(codes)
    if args.length is not None and args.length < 1:
        raise CliError(f"--length must be positive, got {args.length}")
    if args.out is not None:
        make_out_dir(args.out)
    codec = load_codec_from_args(args)
    written = []
    for path, codes in out.progress(list(zip(args.codes, arrays)), desc="decode", unit="file"):
        if codes.min() < 0 or codes.max() >= codec.codebook_size or codes.shape[1] > codec.num_quantizers:
            raise CliError(f"codes file {path!r} does not fit the codec: values must lie in "
                           f"[0, {codec.codebook_size}) and levels in [1, {codec.num_quantizers}], got values "
                           f"[{codes.min()}, {codes.max()}] and {codes.shape[1]} levels")
        length = None
        if args.length is not None:
            length = min(args.length, codes.shape[0] * codec.hop_length)
        audio = np.asarray(codec.decode(codes[None].astype(np.int32), length))[0]
        written.append(write_wav(_out_path(path, args.out, ".wav"), audio, codec.sample_rate))
    record = dict(command="decode", files=written, sample_rate=codec.sample_rate)
    out.result(record, written)
    return 0
