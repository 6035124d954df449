"""`soundstorm generate`: samples from a trained SoundStorm workdir.

The model is rebuilt from WORKDIR/config.json and its parameters (the EMA
ones when the run kept them) restored from the latest complete checkpoint
(`training.restore.load_soundstorm`). Samples are drawn in batches of
--batch-size, each split over the devices of --mesh (default: all local
devices); sample i always uses key i of split(PRNGKey(seed)), so neither the
batch size nor the mesh changes the result. Codes are written as
`sample_NNN.npy` (frames, levels); with a codec also `sample_NNN.wav`.

With --requests FILE the samples come from a request file instead (one JSON
request per line, `serving.request_file`): the flags a request carries are
refused, the model is loaded once into a `serving.Engine` whose batches hold at
most --batch-size requests, and the report goes to DIR/report.json.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
from etils import epath

from soundstorm_jax.cli import spectrogram
from soundstorm_jax.cli.common import (CliError, add_codec_options, codes_dtype, load_codec_from_args, load_codes,
                                       make_out_dir, read_audio, require_file, write_wav)
from soundstorm_jax.serving.engine import DEFAULT_MAX_BATCH


class _Given(argparse.Action):
    """Stores the value (as 'store') and records the flag in args.request_flags: the flags a request file's
    requests carry, refused next to --requests even when given their default value."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, "request_flags", tuple(getattr(namespace, "request_flags", ())) + (option_string,))


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "generate", parents=parents, help="generate codes (and audio) from a trained SoundStorm",
        description="Generate samples with a SoundStorm trained by train.py. Writes sample_NNN.npy codes "
                    "(frames, levels) when no codec is given, sample_NNN.wav (plus the codes with --save-codes) "
                    "with one, and prints the files written.")
    parser.add_argument("workdir", metavar="WORKDIR", help="a SoundStorm training workdir (config.json + checkpoints)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step to use (default: the latest)")
    add_codec_options(parser, required=False)
    parser.add_argument("--num-samples", action=_Given, type=int, default=1,
                        help="how many samples to generate (default 1)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--frames", action=_Given, type=int, default=None,
                        help="length of each sample in codec frames")
    length.add_argument("--seconds", action=_Given, type=float, default=None,
                        help="length of each sample in seconds (needs --codec or --encodec for the frame rate)")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-codes", action=_Given, metavar="FILE.npy", default=None,
                        help="acoustic prompt: codes (frames, levels) kept as the first frames of every sample")
    prompt.add_argument("--prompt-audio", action=_Given, metavar="FILE", default=None,
                        help="acoustic prompt as audio (WAV, FLAC, ...), encoded with the codec (needs --codec or "
                             "--encodec); another sample rate is resampled, with a notice")
    semantic = parser.add_mutually_exclusive_group()
    semantic.add_argument("--semantic", action=_Given, metavar="FILE.npy", default=None,
                          help="semantic token ids: (tokens,) for every sample or (num_samples, tokens); they set "
                               "the length when --frames/--seconds are not given")
    semantic.add_argument("--text", action=_Given, default=None,
                          help="English text, turned into timed phoneme ids by the embedded corpus's phonemiser "
                               "(for models trained on the corpus's phoneme tokens); sets the length like --semantic")
    parser.add_argument("--voice", action=_Given, default="en-us",
                        help="with --text: the eSpeak voice whose timing the phonemes follow (default en-us)")
    parser.add_argument("--prompt-text", action=_Given, default=None,
                        help="with --text and a prompt: what the prompt says; its phonemes, stretched over the "
                             "prompt's frames, condition them (without it the prompt's frames are unconditioned)")
    parser.add_argument("--steps", action=_Given, default=None,
                        help="demasking passes: an int (first level; one pass on each later level) or one per "
                             "level, comma separated, e.g. 16,4,1 (default: the model's)")
    parser.add_argument("--temperature", action=_Given, type=float, default=1.0,
                        help="sampling temperature at each level's first pass, annealed to 0 (default 1.0)")
    parser.add_argument("--top-k", action=_Given, type=int, default=None,
                        help="sample among the k most likely codes only")
    parser.add_argument("--top-p", action=_Given, type=float, default=None,
                        help="nucleus sampling: keep probability mass p, in (0, 1]")
    parser.add_argument("--guidance-scale", action=_Given, type=float, default=None,
                        help="classifier-free guidance scale (needs --semantic and a model trained with "
                             "conditioning dropout)")
    parser.add_argument("--seed", action=_Given, type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples generated per call (default: all at once); with --requests, the most "
                             f"requests decoded together (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--requests", metavar="FILE", default=None,
                        help="a request file: one JSON request per line (fields: id, name, text, voice, semantic, "
                             "prompt_audio, prompt_audio_base64, prompt_codes, prompt_text, frames, seconds, seed, "
                             "temperature, top_k, top_p, guidance_scale, steps, codes), each written as "
                             "DIR/NAME.wav; bad lines are skipped and listed in DIR/report.json. Replaces the "
                             "flags a request carries (--text, --frames, --seed, ...)")
    parser.add_argument("--mesh", default="data=-1", metavar="AXIS=SIZE,...",
                        help="the device mesh each batch is generated on: sizes of the axes data, fsdp and tensor "
                             "(-1: the remaining devices), e.g. data=2,tensor=2; the batch is split over data and "
                             "fsdp, parameters as in training (default data=-1: every local device, data parallel)")
    parser.add_argument("--out", metavar="DIR", default="generated", help="output folder (default ./generated)")
    parser.add_argument("--spectrogram", action="store_true",
                        help="with a codec, also draw sample_NNN.png: the sample's mel spectrogram (time in s, "
                             "frequency in Hz, dB colours), a line where the prompt ends when one is given")
    parser.add_argument("--save-codes", action="store_true",
                        help="with a codec, also write the codes (.npy); without one they are always written")
    parser.set_defaults(run=run, request_flags=())
    return parser


def parse_steps(text):
    if text is None:
        return None
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError as e:
        raise CliError(f"--steps must be an int or comma-separated ints, got {text!r}") from e
    if not values or min(values) < 1:
        raise CliError(f"--steps must hold positive ints, got {text!r}")
    return values[0] if len(values) == 1 and "," not in str(text) else tuple(values)


def _semantic(path, num_samples):
    if path is None:
        return None
    ids = load_codes(path, "semantic tokens file")
    if ids.ndim == 1:
        ids = np.broadcast_to(ids, (num_samples, ids.shape[0]))
    if ids.ndim != 2 or ids.shape[0] != num_samples:
        raise CliError(f"semantic tokens {path!r} must have shape (tokens,) or (num_samples={num_samples}, tokens), "
                       f"got {ids.shape}")
    return np.ascontiguousarray(ids.astype(np.int32))


def _semantic_ids(ids_of, *args) -> np.ndarray:
    """`serving.engine`'s text -> phoneme ids, its RequestError said with the flag's name (exit 2)."""
    from soundstorm_jax.serving.requests import RequestError
    try:
        return ids_of(*args)
    except RequestError as e:
        raise CliError(f"--{(e.field or 'text').replace('_', '-')} {e.detail}") from None


def _text_semantic(text, voice, config, net, num_samples) -> np.ndarray:
    """Text -> (num_samples, tokens) phoneme ids at the model's semantic rate (config.data.semantic_rate)."""
    from soundstorm_jax.serving.engine import text_semantic_ids
    ids = _semantic_ids(text_semantic_ids, text, voice, config, net)
    return np.ascontiguousarray(np.broadcast_to(ids, (num_samples, ids.shape[0])))


def _prompt_semantic(args, config, net, frames: int, num_samples: int) -> np.ndarray:
    """(num_samples, tokens) semantic ids covering the prompt's `frames` (`serving.engine.prompt_semantic_ids`):
    --prompt-text's phonemes stretched over them, else the semantic pad id (no conditioning)."""
    from soundstorm_jax.serving.engine import prompt_semantic_ids
    ids = _semantic_ids(prompt_semantic_ids, args.prompt_text, args.voice, config, net, frames)
    return np.ascontiguousarray(np.broadcast_to(ids, (num_samples, ids.shape[0])))


def _check_sampling_flags(args) -> None:
    """The sampling flags the sampler would otherwise refuse under its Python argument names."""
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise CliError(f"--temperature must be a number >= 0, got {args.temperature:g}")
    if args.top_k is not None and args.top_k < 1:
        raise CliError(f"--top-k must be positive, got {args.top_k}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise CliError(f"--top-p must lie in (0, 1], got {args.top_p:g}")
    if args.guidance_scale is not None and args.semantic is None and args.text is None:
        raise CliError("--guidance-scale needs conditioning to guide towards: --semantic FILE.npy or --text")


def _prompt_flag(args) -> str:
    return f"--prompt-codes {args.prompt_codes}" if args.prompt_codes is not None else (
        f"--prompt-audio {args.prompt_audio}")


def _check_against_model(args, model, steps) -> None:
    """The sampling flags that must fit the trained model, checked with the flags' names (once it is loaded)."""
    net = model.net
    if isinstance(steps, tuple) and len(steps) != net.num_quantizers:
        example = ",".join(str(s) for s in (tuple(steps) + (1,) * net.num_quantizers)[:net.num_quantizers])
        raise CliError(f"--steps {args.steps} has {len(steps)} entries but the model has {net.num_quantizers} "
                       f"levels: give one per level (e.g. --steps {example}) or one int (the first level's passes)")
    if args.top_k is not None and args.top_k > net.codebook_size:
        raise CliError(f"--top-k must lie in [1, {net.codebook_size}] (the model's codebook size), got {args.top_k}")
    if args.guidance_scale is not None and not model.cond_drop_prob:
        raise CliError("--guidance-scale needs a model trained with conditioning dropout "
                       "(--config.objective.cond_drop_prob above 0); this one was trained without it")


def _check_prompt(args, net, prompt, frames, semantic, codec) -> None:
    """The prompt must fit the model's levels and the samples' length (--frames, --seconds or the semantic
    tokens'), said with the flags' names (and the prompt's seconds when a codec gives the rate)."""
    from soundstorm_jax.model.wrapper import semantic_frames

    if prompt is None:
        return
    if prompt.shape[1] > net.num_columns:
        raise CliError(f"the prompt ({_prompt_flag(args)}) has {prompt.shape[1]} levels but the model has "
                       f"{net.num_columns}")
    if frames is None and semantic is not None:
        frames = semantic_frames(semantic.shape[1], net.acoustic_per_semantic)
    if frames is not None and len(prompt) > frames:
        seconds = "" if codec is None else (f" ({len(prompt) * codec.hop_length / codec.sample_rate:.3g} s at "
                                            f"{codec.frame_rate:g} frames/s)")
        length = (f"--seconds {args.seconds:g}" if args.seconds is not None else
                  f"--frames {args.frames}" if args.frames is not None else "the semantic tokens")
        raise CliError(f"the prompt ({_prompt_flag(args)}) has {len(prompt)} frames{seconds} but {length} gives "
                       f"only {frames} per sample; give a longer length (--frames or --seconds) or a shorter prompt")


def run(args, out, extra):
    del extra
    import jax

    from soundstorm_jax.maskgit.soundstorm import check_codec_matches
    from soundstorm_jax.model.wrapper import semantic_frames
    from soundstorm_jax.sampler.generate import generate

    if args.requests is not None:
        return run_requests(args, out)
    if args.num_samples < 1:
        raise CliError(f"--num-samples must be positive, got {args.num_samples}")
    batch_size = args.batch_size or args.num_samples
    if batch_size < 1:
        raise CliError(f"--batch-size must be positive, got {batch_size}")
    mesh_shape = parse_mesh(args.mesh)
    if args.frames is not None and args.frames < 1:
        raise CliError(f"--frames must be positive, got {args.frames}")
    if args.seconds is not None:
        if not args.codec and not args.encodec:
            raise CliError("--seconds needs a codec (--codec WORKDIR or --encodec FILE) to know the frame rate; "
                           "or give --frames")
        if not args.seconds > 0:
            raise CliError(f"--seconds must be positive, got {args.seconds}")
    if args.prompt_audio is not None:
        if not args.codec and not args.encodec:
            raise CliError("--prompt-audio needs a codec (--codec WORKDIR or --encodec FILE) to encode it; "
                           "or give --prompt-codes")
        require_file(args.prompt_audio, "prompt audio file")
    if args.spectrogram and not args.codec and not args.encodec:
        raise CliError("--spectrogram needs a codec (--codec WORKDIR or --encodec FILE) to decode the samples")
    _check_sampling_flags(args)
    steps = parse_steps(args.steps)
    prompt = None if args.prompt_codes is None else load_codes(args.prompt_codes, "prompt codes file")
    if prompt is not None and prompt.ndim != 2:
        raise CliError(f"prompt codes {args.prompt_codes!r} must have shape (frames, levels), got {prompt.shape}")
    semantic = _semantic(args.semantic, args.num_samples)
    if args.prompt_text is not None and (args.text is None or (prompt is None and args.prompt_audio is None)):
        raise CliError("--prompt-text goes with --text and a prompt (--prompt-audio or --prompt-codes)")
    from soundstorm_jax.data.phonemes import check_speakable
    for text in (args.text, args.prompt_text):
        if text is not None:
            check_speakable(text)  # ValueError naming the characters: exit 2.
    if args.frames is None and args.seconds is None and semantic is None and args.text is None:
        raise CliError("give the length: --frames N, --seconds S (with a codec), --semantic FILE.npy or --text "
                       "(or a request file: --requests FILE)")
    make_out_dir(args.out)

    from soundstorm_jax.training.restore import load_soundstorm
    model, variables, config = load_soundstorm(args.workdir, args.step)
    net = model.net
    _check_against_model(args, model, steps)
    if args.text is not None:
        semantic = _text_semantic(args.text, args.voice, config, net, args.num_samples)
    if prompt is not None and (prompt.min() < 0 or prompt.max() >= net.codebook_size):
        raise CliError(f"prompt codes {args.prompt_codes!r} hold values in [{prompt.min()}, {prompt.max()}] but "
                       f"the model's codes lie in [0, {net.codebook_size})")
    codec = load_codec_from_args(args)
    if codec is not None:
        check_codec_matches(codec, net)
    if args.prompt_audio is not None:
        def note(rate):
            out.notice(f"prompt audio {args.prompt_audio!r} is at {rate} Hz; resampled to the codec's "
                       f"{codec.sample_rate} Hz")
        audio = read_audio(args.prompt_audio, codec.sample_rate, resample=True, on_resample=note)
        prompt = np.asarray(codec.encode(audio[None], sample_rate=codec.sample_rate))[0]
    if args.text is not None and prompt is not None:
        # The text is what follows the prompt: the prompt's frames get its own phonemes (or none).
        semantic = np.concatenate([_prompt_semantic(args, config, net, len(prompt), args.num_samples), semantic],
                                  axis=1)
    frames = args.frames
    if args.seconds is not None:
        frames = max(1, int(args.seconds * codec.sample_rate // codec.hop_length))
    _check_prompt(args, net, prompt, frames, semantic, codec)
    mesh = make_mesh(args.mesh, mesh_shape)
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.num_samples)
    written, shapes = [], []
    starts = list(range(0, args.num_samples, batch_size))
    for start in out.progress(starts, desc="generate", unit="batch"):
        stop = min(start + batch_size, args.num_samples)
        options = dict(key=keys[start:stop], steps=steps, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, guidance_scale=args.guidance_scale, batch_size=stop - start)
        if prompt is not None:
            options["prompt"] = prompt
        if semantic is not None:
            options["semantic_ids"] = semantic[start:stop]
            if args.text is not None and frames is None:  # Every frame counts, the unconditioned prompt's too
                # (pad ids would read as padding): all the frames the semantic tokens cover.
                options["lengths"] = [semantic_frames(semantic.shape[1], net.acoustic_per_semantic)] * (stop - start)
        codes = np.asarray(generate(model, variables, frames, mesh=mesh, **options))
        for i, sample in enumerate(codes):
            name = os.path.join(args.out, f"sample_{start + i:03d}")
            sample = sample[(sample >= 0).all(axis=1)]  # Padded frames (pad_value -1), if any.
            shapes.append(list(sample.shape))
            if codec is None or args.save_codes:
                with epath.Path(name + ".npy").open("wb") as f:
                    np.save(f, sample.astype(codes_dtype(net.codebook_size)))
                written.append(name + ".npy")
            if codec is not None:
                audio = np.asarray(codec.decode(sample[None].astype(np.int32)))[0]
                written.append(write_wav(name + ".wav", audio, codec.sample_rate))
                if args.spectrogram:  # The sample starts with the prompt's frames: the line marks where it ends.
                    cut = 0 if prompt is None else len(prompt) * codec.hop_length
                    written.append(spectrogram.write_spectrogram(name + ".png", audio[cut:], codec.sample_rate,
                                                                 None if prompt is None else audio[:cut]))
    record = dict(command="generate", files=written, shapes=shapes, workdir=args.workdir)
    if codec is not None:
        record["sample_rate"] = codec.sample_rate
    out.result(record, written)
    return 0


def make_mesh(text: str, shape: dict[str, int]):
    """The --mesh to generate on, or None on one device (or when every axis has size 1)."""
    import jax
    if jax.local_device_count() == 1 or all(size == 1 for size in shape.values()):
        return None
    from soundstorm_jax.training import sharding
    try:
        return sharding.make_mesh(shape, jax.local_devices())
    except ValueError as e:
        raise CliError(f"--mesh {text!r} does not fit the {jax.local_device_count()} local devices: "
                       f"{str(e).replace('mesh.shape ', 'axis sizes ')}") from e


def run_requests(args, out) -> int:
    """`generate MODEL --requests FILE --out DIR`: exit 0 when any request was written, 1 when every one failed
    (after the report), 2 (CliError) for a bad flag or an unreadable file, before the model is loaded."""
    from soundstorm_jax.serving import Engine
    from soundstorm_jax.serving.request_file import read_request_file, report_lines, run_request_file

    given = list(dict.fromkeys(args.request_flags)) + (["--spectrogram"] if args.spectrogram else [])
    if given:
        flag = given[0]
        how = ("request files write WAVs (and codes) only" if flag == "--spectrogram" else
               "give one line per sample" if flag == "--num-samples" else
               f"set \"{flag[2:].replace('-', '_')}\" in the request file's lines instead")
        raise CliError(f"--requests and {flag} do not go together: {how}")
    if args.batch_size is not None and args.batch_size < 1:
        raise CliError(f"--batch-size must be positive, got {args.batch_size}")
    mesh_shape = parse_mesh(args.mesh)
    require_file(args.requests, "request file")
    try:
        requests = read_request_file(args.requests)
    except OSError as e:
        raise CliError(f"cannot read request file {args.requests!r}: {e.strerror or e}") from e
    if not requests.read:
        raise CliError(f"request file {args.requests!r} holds no requests (one JSON object per line; blank lines "
                       f"and lines starting with # are skipped)")
    make_out_dir(args.out)

    codec = load_codec_from_args(args)
    engine = Engine.load(args.workdir, codec=codec, step=args.step, mesh=make_mesh(args.mesh, mesh_shape),
                         max_batch=args.batch_size or DEFAULT_MAX_BATCH)
    bar = None

    def progress(done, total):
        nonlocal bar
        if bar is None:
            bar = out.progress(None, total=total, desc="generate", unit="request")
        bar.update(done - bar.n)

    try:
        report = run_request_file(engine, requests, args.out, save_codes=args.save_codes, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    out.result(dict(report, command="generate", workdir=args.workdir), report_lines(report))
    if not report["requests"]["done"]:
        print(f"error: every request in {args.requests!r} failed ({report['requests']['failed']}); "
              f"{report['report']} lists why", file=sys.stderr, flush=True)
        return 1
    return 0


def parse_mesh(text: str) -> dict[str, int]:
    """'data=2,tensor=2' -> {'data': 2, 'tensor': 2}; CliError naming --mesh otherwise."""
    shape = {}
    for part in text.split(","):
        name, _, size = part.partition("=")
        name = name.strip()
        if name not in ("data", "fsdp", "tensor") or name in shape:
            raise CliError(f"--mesh {text!r}: give each of the axes data, fsdp, tensor at most once as AXIS=SIZE, "
                           f"e.g. data=2,tensor=2")
        try:
            shape[name] = int(size)
        except ValueError:
            raise CliError(f"--mesh {text!r}: the size of {name!r} must be an integer (-1: the remaining devices)") \
                from None
        if shape[name] == 0 or shape[name] < -1:
            raise CliError(f"--mesh {text!r}: sizes must be positive or -1")
    return shape
