"""`soundstorm prepare`: an audio folder (or the embedded corpus) -> TFDS datasets.

    OUT/audio   the AudioFolder dataset (train a codec on it: --config.data.dir=OUT/audio)
    OUT/corpus  with --corpus: the synthesized eSpeak corpus and its dataset (with a gs:// OUT only
                the dataset: the WAVs stay in the local corpus cache)
    OUT/codes   with --codec/--encodec: the codes dataset (train SoundStorm on it: --config.data.dir=OUT/codes)
    OUT/kmeans.npz, OUT/kmeans.json
                with --semantic ... --fit-kmeans K: the k-means fitted on the dataset's features, and what it was
                fitted on (a later run with the same settings reuses it; --kmeans OUT/kmeans.npz elsewhere)

With --semantic CHECKPOINT --layer N (--kmeans FILE or --fit-kmeans K, optionally --pool P) the codes dataset's
semantic ids are that HuBERT / wav2vec 2.0 layer's k-means ids, computed in the same batched pass as the codes
(each clip resampled to the encoder's 16 kHz when the dataset is at another rate), and its metadata gives their
rate and vocabulary (`semantic_rate`, `semantic_vocab_size`), from which training takes num_semantic_token_ids and
acoustic_per_semantic. --semantic log-mel (no --layer) needs no checkpoint: the k-means ids of 50 Hz log-mel frames
normalised per utterance (`semantic.LogMelTokenizer`), for when no pretrained encoder can be had. Every bad semantic
flag is refused before the codec or the encoder is compiled.

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
    semantic = parser.add_argument_group("semantic ids (k-means ids of a HuBERT / wav2vec 2.0 layer or of log-mel "
                                         "frames)")
    semantic.add_argument("--semantic", metavar="CHECKPOINT",
                          help="a HuBERT / wav2vec 2.0 checkpoint: a transformers model folder (config.json + "
                               "model.safetensors), a .safetensors/.npz/.bin file or a fairseq .pt; its k-means "
                               "ids are written beside the codes (needs --codec or --encodec). 'log-mel': no "
                               "checkpoint, the k-means ids of 50 Hz log-mel frames normalised per utterance "
                               "(no --layer)")
    semantic.add_argument("--layer", metavar="N", type=_layer, default=None,
                          help="with --semantic: the hidden state the k-means reads, 0..layers ('last': the final "
                               "output), e.g. 9 for hubert_base_ls960's k-means files")
    semantic.add_argument("--kmeans", metavar="FILE",
                          help="with --semantic: the k-means centres (.npz, .npy, or a scikit-learn joblib file as "
                               "audiolm-pytorch's HubertWithKmeans loads)")
    semantic.add_argument("--fit-kmeans", metavar="K", type=int, default=None,
                          help="with --semantic, instead of --kmeans: fit a k-means with K centres on the layer's "
                               "features of the training clips first (seeded by --seed), saved as OUT/kmeans.npz")
    semantic.add_argument("--pool", metavar="N", type=int, default=1,
                          help="with --semantic: average N frames per token before the k-means (2: 50 Hz -> 25 Hz, "
                               "the paper's rate; default 1)")
    parser.add_argument("--overwrite", action="store_true",
                        help="remove and rebuild a dataset in OUT that was made from other files, settings, "
                             "another codec or other semantic ids, and refit an OUT/kmeans.npz fitted on other "
                             "features (default: stop and name what changed; one that matches is reused)")
    parser.set_defaults(run=run)
    return parser


def run(args, out, extra):
    del extra
    if not 0.0 <= args.validation_fraction < 1.0:
        raise CliError(f"--validation-fraction must lie in [0, 1), got {args.validation_fraction}")
    if args.sample_rate is not None and args.sample_rate <= 0:
        raise CliError(f"--sample-rate must be positive, got {args.sample_rate}")
    if args.semantic is None:
        given = [flag for flag, used in (("--layer", args.layer is not None), ("--kmeans", args.kmeans is not None),
                                         ("--fit-kmeans", args.fit_kmeans is not None), ("--pool", args.pool != 1))
                 if used]
        if given:
            raise CliError(f"{given[0]} goes with --semantic CHECKPOINT (the speech encoder whose k-means ids to "
                           f"write)")
    if args.audio is not None:
        require_dir(args.audio, "audio folder")
    from soundstorm_jax import distributed
    if distributed.maybe_initialize_distributed():  # One process of several (`soundstorm launch`, a pod).
        import jax
        process_index, process_count = jax.process_index(), jax.process_count()
    else:
        process_index, process_count = 0, 1
    semantic = _load_semantic(args) if args.semantic else None  # Host-side checks before any compilation.
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
        semantic_options, semantic_lines = {}, []
        if semantic is not None:
            semantic_options, semantic_record, semantic_lines = _semantic_ids(
                args, out, semantic, builder, codec, metadata, process_index=process_index,
                process_count=process_count, barrier=distributed.barrier)
            record.update(semantic_record)
        with _stale_is_bad_input(codec):
            codes = prepare_codes_dataset(codes_dir, audio_source=builder, encode_fn=codec.encode,
                                          samples_per_frame=codec.hop_length, num_levels=codec.num_quantizers,
                                          codebook_size=codec.codebook_size, codec=codec_identity,
                                          encode_batch_size=args.encode_batch_size, metadata=_jsonable(metadata),
                                          process_index=process_index, process_count=process_count,
                                          barrier=distributed.barrier, overwrite=args.overwrite, **semantic_options)
        if not getattr(codes, "prepared_now", True) and process_index == 0:
            out.info(f"reusing {codes_dir}: it was made from the same audio with the same codec")
        code_splits = {name: int(split.num_examples) for name, split in codes.info.splits.items()}
        record.update(codes_dataset=codes_dir, codes_splits=code_splits)
        lines.append(f"codes dataset: {codes_dir} ({_splits(code_splits)}); train SoundStorm with "
                     f"--config.data.dir={codes_dir}")
        lines += semantic_lines
    if process_index == 0:  # One result per job, not one per process.
        out.result(record, lines)
    return 0


def _layer(text: str):
    """--layer: a hidden-state index, or 'last'."""
    if text == "last":
        return text
    try:
        return int(text)
    except ValueError:
        import argparse
        raise argparse.ArgumentTypeError(f"expected a hidden-state index (0, 1, ...) or 'last', got {text!r}") from None


def _load_semantic(args) -> dict:
    """The speech encoder and k-means that --semantic, --layer, --kmeans / --fit-kmeans and --pool name, loaded and
    checked on the host (nothing compiles): {'config', 'variables', 'kmeans' (None with --fit-kmeans), 'sha256'}.
    Every bad flag is a CliError naming it."""
    from etils import epath

    from soundstorm_jax.semantic import (LogMelConfig, check_output_layer, load_kmeans, load_speech_encoder,
                                         log_mel_variables)
    from soundstorm_jax.semantic.dataset import tree_sha256
    from soundstorm_jax.semantic.log_mel import NAME as LOG_MEL
    if args.codec is None and args.encodec is None:
        raise CliError("--semantic needs --codec or --encodec: the semantic ids are written beside the codes")
    log_mel = args.semantic == LOG_MEL
    if args.kmeans is not None and args.fit_kmeans is not None:
        raise CliError("--kmeans and --fit-kmeans exclude each other: give --kmeans FILE to use a fitted k-means, "
                       "or --fit-kmeans K to fit one on this dataset")
    if args.kmeans is None and args.fit_kmeans is None:
        raise CliError("--semantic needs --kmeans FILE (a fitted k-means) or --fit-kmeans K (fit one with K centres "
                       "on this dataset's features first)")
    if log_mel and args.layer is not None:
        raise CliError(f"--layer goes with a speech-encoder checkpoint: --semantic {LOG_MEL} has no layers (leave "
                       f"--layer out)")
    if args.layer is None and not log_mel:
        raise CliError("--semantic needs --layer N: the hidden state the k-means reads (e.g. 9 for "
                       "hubert_base_ls960's k-means files)")
    if args.pool < 1:
        raise CliError(f"--pool must be a positive number of frames per token, got {args.pool}")
    if args.fit_kmeans is not None and args.fit_kmeans < 1:
        raise CliError(f"--fit-kmeans must be a positive number of centres, got {args.fit_kmeans}")
    if not log_mel and not epath.Path(args.semantic).exists():
        raise CliError(f"--semantic {args.semantic!r} does not exist")
    kmeans = None
    if args.kmeans is not None:  # The k-means file is read first: it is the cheaper, and the clearer, error.
        try:
            kmeans = load_kmeans(args.kmeans)
        except FileNotFoundError as e:
            raise CliError(f"--kmeans {args.kmeans!r} does not exist") from e
        except (ValueError, ImportError) as e:
            raise CliError(f"--kmeans {args.kmeans!r}: {_first_line(e)}") from e
    if log_mel:
        config = LogMelConfig()
        variables = log_mel_variables(config)
    else:
        try:
            config, variables = load_speech_encoder(args.semantic)
        except ImportError as e:
            raise CliError(f"--semantic {args.semantic!r}: {_first_line(e)}") from e
        except (ValueError, FileNotFoundError) as e:
            message = _first_line(e).removeprefix("checkpoint: ")
            raise CliError(f"--semantic {args.semantic!r}: {message}") from e
        try:
            check_output_layer(args.layer, config, name="--layer")
        except ValueError as e:
            raise CliError(_first_line(e)) from e
    if kmeans is not None and kmeans.dim != config.hidden_size:
        source = f"--semantic {LOG_MEL} gives {config.n_mels}-dim log-mel frames" if log_mel else \
            f"--layer {args.layer} of --semantic gives {config.hidden_size}-dim features"
        raise CliError(f"--kmeans {args.kmeans!r} has centres of dimension {kmeans.dim}, but {source}: use the "
                       f"k-means fitted on these features (or --fit-kmeans K)")
    return dict(config=config, variables=variables, kmeans=kmeans, sha256=tree_sha256(variables))


def _semantic_ids(args, out, semantic: dict, builder, codec, metadata: dict, *, process_index: int,
                  process_count: int, barrier):
    """({'semantic_fn', 'semantic'} for the codes dataset, the result record's entries, its lines); fits the k-means
    first with --fit-kmeans (process 0; the others load it). Updates `metadata` with the ids' rate and vocabulary."""
    from soundstorm_jax.data import provenance
    from soundstorm_jax.semantic import LogMelConfig, LogMelTokenizer, SemanticTokenizer, load_kmeans
    from soundstorm_jax.semantic.dataset import (MAX_FIT_VECTORS, fit_dataset_kmeans, fitted_kmeans,
                                                 make_semantic_fn, semantic_identity, semantic_metadata)
    config, variables, layer, pool = semantic["config"], semantic["variables"], args.layer, args.pool
    log_mel = isinstance(config, LogMelConfig)
    features = "the log-mel frames'" if log_mel else f"layer {layer}'s"
    if codec.sample_rate != config.sample_rate and process_index == 0:
        out.notice(f"the semantic encoder reads {config.sample_rate} Hz audio: each clip is resampled from "
                   f"{codec.sample_rate} Hz for its semantic ids (the codes are computed at {codec.sample_rate} Hz)")
    lines, kmeans_path, codebook = [], args.kmeans, semantic["kmeans"]
    if codebook is None:
        kmeans_path = os.path.join(args.out, "kmeans.npz")
        fitted_on = dict(audio=provenance.digest((builder.info.metadata or {}).get(provenance.PROVENANCE)),
                         split="train", checkpoint=args.semantic if log_mel else _absolute(args.semantic),
                         weights_sha256=semantic["sha256"],
                         layer=layer, pool=pool, num_clusters=args.fit_kmeans, seed=args.seed,
                         max_vectors=MAX_FIT_VECTORS)
        if log_mel:  # The features' settings (the filterbank's are in weights_sha256; normalising is not).
            fitted_on["log_mel"] = config.to_dict()

        def fit():
            out.info(f"fitting a k-means with {args.fit_kmeans} centres on {features} features ...")
            try:
                return fit_dataset_kmeans(config, variables, layer, pool, builder, args.fit_kmeans,
                                          batch_size=args.encode_batch_size, seed=args.seed, progress=out.progress)
            except ValueError as e:
                raise CliError(f"--fit-kmeans {args.fit_kmeans}: {_first_line(e)}") from e

        if process_index == 0:
            with _stale_is_bad_input(None):
                codebook, reused = fitted_kmeans(kmeans_path, fitted_on, fit, overwrite=args.overwrite)
            if reused:
                out.info(f"reusing {kmeans_path}: it was fitted on the same features")
        if process_count > 1:
            barrier("soundstorm: k-means fitted")
        if codebook is None:
            codebook = load_kmeans(kmeans_path)
        lines.append(f"k-means: {kmeans_path} ({codebook.num_clusters} centres; reuse it with --kmeans "
                     f"{kmeans_path})")
    if log_mel:
        tokenizer = LogMelTokenizer(codebook, config, pool=pool)
    else:
        tokenizer = SemanticTokenizer(config, variables, codebook, layer, pool=pool)
    identity = semantic_identity(tokenizer, checkpoint=args.semantic, kmeans=kmeans_path,
                                 encoder_sha256=semantic["sha256"])
    for key in ("phonemes", "semantic_pad_id"):  # The embedded corpus's phoneme ids are replaced.
        metadata.pop(key, None)
    metadata.update(semantic_metadata(tokenizer, identity))
    ratio = codec.frame_rate / tokenizer.rate
    source = "log-mel frames" if log_mel else f"layer {layer} of {args.semantic}"
    lines.append(f"semantic ids: {tokenizer.vocab_size} k-means ids at {tokenizer.rate:g} per second from {source} "
                 f"({ratio:g} codec frames per semantic token)")
    record = dict(semantic_rate=float(tokenizer.rate), semantic_vocab_size=tokenizer.vocab_size,
                  kmeans=kmeans_path, acoustic_per_semantic=ratio)
    return dict(semantic_fn=make_semantic_fn(tokenizer, codec.sample_rate), semantic=identity), record, lines


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


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
    from soundstorm_jax.semantic.dataset import tree_sha256
    return tree_sha256(getattr(codec, "variables", {}))


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
