"""`soundstorm prepare`: an audio folder (or the embedded corpus) -> TFDS datasets.

    OUT/audio   the AudioFolder dataset (train a codec on it: --config.data.dir=OUT/audio)
    OUT/corpus  with --corpus: the synthesized eSpeak corpus and its dataset (with a gs:// OUT only
                the dataset: the WAVs stay in the local corpus cache)
    OUT/codes   with --codec/--encodec: the codes dataset (train SoundStorm on it: --config.data.dir=OUT/codes)

Each dataset records what it was made from (the source files with their sizes and modification times, or the
corpus's name, seed and rates; the sample rate and resampling; the split settings; for codes the audio dataset and
the codec: a trained codec's workdir and checkpoint step, or the EnCodec file, a sha256 of its weights, its levels,
codebook size and rates). A dataset already prepared in OUT is reused only when all of that matches; otherwise the
command stops naming what changed, and --overwrite removes and rebuilds the out-of-date dataset(s).

Run by every process of a multi-process job (`soundstorm launch --processes N -- prepare ...`), process 0
builds the audio dataset and each process encodes its share of it with the codec on its own devices and
writes its own shards, which process 0 then gathers into one codes dataset (`data.prepare_codes_dataset`).
OUT may be gs://bucket/...: datasets are built in a local temporary folder
and uploaded (TFDS writes ArrayRecord files through local files only).
"""
from __future__ import annotations

import contextlib
import os

from soundstorm_jax import paths
from soundstorm_jax.cli.common import CliError, add_codec_options, load_codec_from_args, make_out_dir, require_dir


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "prepare", parents=parents, help="build the TFDS audio dataset (and its codes dataset)",
        description="Build the TFDS audio dataset from a folder of audio files (any layout; LibriSpeech "
                    "transcripts are read) or from the embedded eSpeak corpus, and, given a codec, the codes "
                    "dataset SoundStorm trains on. Prints the dataset folders written.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio", metavar="DIR",
                        help="a folder of audio files (WAV, FLAC, OGG, Opus, MP3, AIFF, ...), recursive")
    source.add_argument("--corpus", choices=("tiny", "small"),
                        help="the embedded synthesized speech corpus (tiny: a few minutes, small: about an hour)")
    parser.add_argument("--out", metavar="DIR", required=True,
                        help="output folder: the audio dataset goes to DIR/audio (or DIR/corpus), codes to DIR/codes")
    parser.add_argument("--sample-rate", type=int, default=None,
                        help="the audio dataset's rate in Hz (default: the codec's when one is given, else the "
                             "first file's, 16000 for the corpus)")
    parser.add_argument("--no-resample", action="store_true",
                        help="refuse files at another sample rate instead of resampling them")
    parser.add_argument("--validation-fraction", type=float, default=0.05,
                        help="share of files held out for validation when the folder has no train/validation "
                             "subfolders (default 0.05)")
    parser.add_argument("--skip-bad-files", action="store_true",
                        help="skip unreadable audio files with a warning (default: stop and name the file)")
    parser.add_argument("--seed", type=int, default=0, help="the corpus's seed and the split's seed (default 0)")
    parser.add_argument("--frame-rate", type=float, default=50.0,
                        help="with --corpus: phoneme (semantic) tokens per second (default 50)")
    add_codec_options(parser, required=False)
    parser.add_argument("--encode-batch-size", type=int, default=8,
                        help="waveforms per codec call while encoding (default 8)")
    parser.add_argument("--overwrite", action="store_true",
                        help="remove and rebuild a dataset in OUT that was made from other files, settings or "
                             "another codec (default: stop and name what changed; one that matches is reused)")
    parser.set_defaults(run=run)
    return parser


def run(args, out, extra):
    del extra
    if not 0.0 <= args.validation_fraction < 1.0:
        raise CliError(f"--validation-fraction must lie in [0, 1), got {args.validation_fraction}")
    if args.sample_rate is not None and args.sample_rate <= 0:
        raise CliError(f"--sample-rate must be positive, got {args.sample_rate}")
    if args.audio is not None:
        require_dir(args.audio, "audio folder")
    from soundstorm_jax import distributed
    if distributed.maybe_initialize_distributed():  # One process of several (`soundstorm launch`, a pod).
        import jax
        process_index, process_count = jax.process_index(), jax.process_count()
    else:
        process_index, process_count = 0, 1
    make_out_dir(args.out)
    codec, codec_identity = _load_codec(args)
    sample_rate = args.sample_rate
    if codec is not None:
        if sample_rate is not None and sample_rate != codec.sample_rate:
            raise CliError(f"--sample-rate {sample_rate} differs from the codec's {codec.sample_rate} Hz; "
                           f"leave it out to use the codec's rate")
        sample_rate = codec.sample_rate

    if out.quiet or out.as_json:
        import tensorflow_datasets as tfds
        tfds.disable_progress_bar()
    record = dict(command="prepare")
    lines = []
    if process_index > 0:  # Process 0 builds the audio dataset; the others then open it.
        distributed.barrier("soundstorm: audio dataset prepared")
    if args.corpus is not None:
        from soundstorm_jax.data import prepare_corpus
        out.info(f"building the {args.corpus} corpus ...")
        corpus_dir, remote = os.path.join(args.out, "corpus"), paths.is_remote(args.out)
        # With a gs:// OUT the WAVs are synthesized in the local corpus cache and only the dataset goes to OUT.
        with _stale_is_bad_input(codec):
            builder = prepare_corpus(args.corpus, args.seed, sample_rate=sample_rate or 16000,
                                     frame_rate=args.frame_rate, cache_dir=None if remote else corpus_dir,
                                     dataset_dir=corpus_dir if remote else None, progress=not out.quiet,
                                     overwrite=args.overwrite)
        audio_dir = os.path.dirname(os.path.dirname(builder.data_dir))
    else:
        from soundstorm_jax.data import prepare_audio_folder
        out.info(f"reading {args.audio} ...")
        audio_dir = os.path.join(args.out, "audio")
        with _stale_is_bad_input(codec), _audio_errors(args):
            builder = prepare_audio_folder(args.audio, audio_dir, sample_rate=sample_rate,
                                           allow_resample=not args.no_resample,
                                           validation_fraction=args.validation_fraction, split_seed=args.seed,
                                           on_bad_file="skip" if args.skip_bad_files else "raise",
                                           overwrite=args.overwrite)
        if builder.skipped_files:
            record["skipped_files"] = list(builder.skipped_files)
            lines.append(f"skipped {len(builder.skipped_files)} unreadable file(s)")
        if builder.resampled_from and process_index == 0:
            count = sum(builder.resampled_from.values())
            rates = ", ".join(f"{rate} Hz" for rate in sorted(builder.resampled_from))
            out.notice(f"resampled {count} file(s) from {rates} to {builder.info.metadata['sample_rate']} Hz "
                       f"(--no-resample refuses them instead)")
    if process_index == 0 and process_count > 1:
        distributed.barrier("soundstorm: audio dataset prepared")
    if not getattr(builder, "prepared_now", True) and process_index == 0:
        out.info(f"reusing {audio_dir}: it was made from the same files and settings")
    splits = {name: int(split.num_examples) for name, split in builder.info.splits.items()}
    record.update(audio_dataset=audio_dir, audio_splits=splits)
    lines.insert(0, f"audio dataset: {audio_dir} ({_splits(splits)})")

    if codec is not None:
        from soundstorm_jax.data import prepare_codes_dataset
        codes_dir = os.path.join(args.out, "codes")
        out.info(f"encoding with the codec ({codec.num_quantizers} levels x {codec.codebook_size} codes) ...")
        metadata = {k: v for k, v in dict(builder.info.metadata or {}).items() if k != "provenance"}
        metadata.update(sample_rate=codec.sample_rate, frame_rate=codec.frame_rate, hop_length=codec.hop_length)
        with _stale_is_bad_input(codec):
            codes = prepare_codes_dataset(codes_dir, audio_source=builder, encode_fn=codec.encode,
                                          samples_per_frame=codec.hop_length, num_levels=codec.num_quantizers,
                                          codebook_size=codec.codebook_size, codec=codec_identity,
                                          encode_batch_size=args.encode_batch_size, metadata=_jsonable(metadata),
                                          process_index=process_index, process_count=process_count,
                                          barrier=distributed.barrier, overwrite=args.overwrite)
        if not getattr(codes, "prepared_now", True) and process_index == 0:
            out.info(f"reusing {codes_dir}: it was made from the same audio with the same codec")
        code_splits = {name: int(split.num_examples) for name, split in codes.info.splits.items()}
        record.update(codes_dataset=codes_dir, codes_splits=code_splits)
        lines.append(f"codes dataset: {codes_dir} ({_splits(code_splits)}); train SoundStorm with "
                     f"--config.data.dir={codes_dir}")
    if process_index == 0:  # One result per job, not one per process.
        out.result(record, lines)
    return 0


def _load_codec(args):
    """(codec, its identity as the codes dataset records it) for --codec / --encodec, or (None, None).

    The identity: a trained codec's workdir (absolute) and checkpoint step, or the EnCodec file (absolute) and
    bandwidth; a sha256 of the weights as loaded (the parameters' names, shapes, dtypes and bytes: a retrained codec
    at the same step, or other weights under the same file name, differ; the same weights as .th or .npz agree);
    and its levels, codebook size, sample rate, frame rate and hop.
    """
    codec = load_codec_from_args(args)
    if codec is None:
        return None, None
    if args.codec:
        identity = dict(workdir=_absolute(args.codec), step=_checkpoint_step(args.codec))
    else:
        identity = dict(encodec=_absolute(args.encodec), bandwidth=args.bandwidth)
    identity.update(num_levels=int(codec.num_quantizers), codebook_size=int(codec.codebook_size),
                    sample_rate=int(codec.sample_rate), frame_rate=float(codec.frame_rate),
                    hop_length=int(codec.hop_length), weights_sha256=_weights_sha256(codec))
    return codec, identity


def _checkpoint_step(workdir: str):
    """The step of the latest checkpoint in a codec workdir (the one --codec loads; None when there is no
    checkpoints/ folder): a name for the codec, which the weights' hash identifies."""
    from etils import epath
    folder = epath.Path(workdir) / "checkpoints"
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    return max(steps) if steps else None


def _weights_sha256(codec) -> str:
    import hashlib

    import jax
    import numpy as np
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(getattr(codec, "variables", {}))[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.asarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _absolute(path: str) -> str:
    return path if paths.is_remote(path) else os.path.abspath(path)


@contextlib.contextmanager
def _stale_is_bad_input(codec):
    """A dataset in OUT made from something else: one line naming what changed and --overwrite."""
    from soundstorm_jax.data.provenance import StaleDatasetError
    try:
        yield
    except StaleDatasetError as e:
        changes = list(e.changes)
        if codec is not None and "sample_rate" in e.keys:
            i = e.keys.index("sample_rate")
            changes[i] += " (the codec's rate)"
        raise CliError(f"{e.dataset_dir} is out of date: {'; '.join(changes)}; pass --overwrite to rebuild it "
                       f"(or choose another --out)") from e


@contextlib.contextmanager
def _audio_errors(args):
    """A bad audio file, in the command line's terms: the flag that skips it, or the one that resamples."""
    from soundstorm_jax.data.audio_io import AudioError, SampleRateError
    try:
        yield
    except SampleRateError as e:
        path = repr(e.path) if e.path else "(unnamed)"
        if args.no_resample:
            raise CliError(f"audio file {path} has sample rate {e.rate} Hz but the dataset is at {e.target_rate} Hz "
                           f"and --no-resample refuses other rates: leave out --no-resample to resample it, or "
                           f"convert it first") from e
        # No --sample-rate and no codec: the first file fixed the rate.
        raise CliError(f"audio file {path} has sample rate {e.rate} Hz but the folder's first file has "
                       f"{e.target_rate} Hz: pass --sample-rate with the rate you want (e.g. --sample-rate "
                       f"{e.target_rate}) to resample every file to it") from e
    except AudioError as e:
        raise CliError(f"{str(e).rstrip('.')}; pass --skip-bad-files to leave out unreadable files") from e



def _splits(splits: dict) -> str:
    return ", ".join(f"{name}: {count} files" for name, count in sorted(splits.items()))


def _jsonable(value):
    import json
    return json.loads(json.dumps(value, default=str))
