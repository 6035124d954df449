"""`soundstorm demo`: the whole pipeline on the embedded corpus, start to finish, on a laptop CPU.

By default the codec and SoundStorm are the ones shipped in the package (soundstorm_jax/pretrained/: the
same configs trained longer by tools/train_demo_weights.py) and the demo takes a couple of minutes;
`--from-scratch` (implied by --minutes, --codec-steps, --soundstorm-steps and --codec) trains both within the budget
(with --codec DIR, only SoundStorm: the codec is the one given).

Stages (each timed; the report lists them):
  1. corpus      synthesize the eSpeak corpus (tiny: ~4 min of speech, 6 voices, one held out)
  2. codec       train configs/demo_codec.py on it (time-boxed), or copy the shipped codec (or --codec's)
  3. encode      encode the corpus into a codes dataset; codec quality on the held-out voice
  4. soundstorm  train configs/demo.py on the codes, conditioned on the phoneme ids (time-boxed), or copy
                 the shipped SoundStorm
  5. evaluate    held-out accuracy per level (sampler's view of a level) against a unigram baseline
  6. generate    held-out sentences spoken from held-out voice prompts: WAVs and spectrogram PNGs
  7. listen      a phoneme recognizer and a voice measure trained on the training voices (seconds) score the
                 held-out originals, their codec reconstructions and the generated speech (evaluation/)

OUT/report.json and OUT/report.md hold the figures; OUT/samples the audio.
From scratch, the two training stages share what `--minutes` leaves after the fixed stages
(about RESERVED_MINUTES): the codec 40%, SoundStorm the rest. Both stop at their
time limit with a checkpoint (or, with --codec-steps / --soundstorm-steps, after
exactly that many steps: the same work on any machine, as the tests run it), so
OUT/codec and OUT/soundstorm are ordinary train.py workdirs that `soundstorm generate` (or a longer run) can pick up.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
from etils import epath

from soundstorm_jax import paths, pretrained
from soundstorm_jax.cli import spectrogram
from soundstorm_jax.cli.common import CliError, make_out_dir, write_wav

DEFAULT_MINUTES = 12.0
MIN_MINUTES = 3.0
RESERVED_MINUTES = 2.0   # corpus, encoding, evaluation, generation and compiles
CODEC_SHARE = 0.4
FINAL_STAGES_SECONDS = 100.0  # evaluation, generation, listening and the report (compiles included)
SOUNDSTORM_SECONDS_PER_STEP = 0.85  # configs/demo.py on a 2-core CPU; sets the LR schedule's length
SAMPLE_RATE, FRAME_RATE = 16000, 50.0


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "demo", parents=parents, help="the whole pipeline on the embedded corpus (~1 min with the shipped "
                                       "weights, ~12 min --from-scratch on a laptop CPU)",
        description="Build the embedded eSpeak corpus, encode it with a small codec, then speak held-out sentences "
                    "in a held-out voice with a small SoundStorm conditioned on phonemes, and score them with a "
                    "phoneme recognizer. The codec and SoundStorm are the ones shipped in the package, or, with "
                    "--from-scratch, trained in the run. Writes WAVs, spectrogram PNGs and report.md / report.json "
                    "under --out.")
    parser.add_argument("--out", metavar="DIR", default="demo", help="output folder (default ./demo)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="train the codec and SoundStorm in this run (within --minutes) instead of starting "
                             "from the weights shipped in the package")
    parser.add_argument("--minutes", type=float, default=None,
                        help=f"wall-clock budget of a --from-scratch run (default {DEFAULT_MINUTES:g}; implies "
                             f"--from-scratch); more minutes train longer and sound better, e.g. --minutes 40 "
                             f"(at least {MIN_MINUTES:g})")
    parser.add_argument("--corpus", choices=("tiny", "small"), default="tiny",
                        help="embedded corpus size: tiny (~4 min of speech, built in seconds) or small (~1 h)")
    parser.add_argument("--samples", type=int, default=3, help="held-out sentences to generate (default 3)")
    parser.add_argument("--prompt-seconds", type=float, default=1.0,
                        help="length of the held-out voice prompt (default 1.0 s)")
    parser.add_argument("--steps", type=int, default=None,
                        help="demasking passes on the first level (default: the config's, 8)")
    parser.add_argument("--seed", type=int, default=0, help="corpus, training and sampling seed (default 0)")
    parser.add_argument("--codec-steps", type=int, default=None,
                        help="train the codec for exactly this many steps instead of its share of --minutes "
                             "(a reproducible run: the same work on any machine)")
    parser.add_argument("--soundstorm-steps", type=int, default=None,
                        help="train SoundStorm for exactly this many steps instead of the time left")
    parser.add_argument("--codec", metavar="DIR", default=None,
                        help="a codec trained elsewhere (a codec workdir or export at 16 kHz) instead of training one: "
                             "only SoundStorm is trained (implies --from-scratch; the codec should not have heard "
                             "the held-out voice)")
    parser.set_defaults(run=run)
    return parser


class Stages:
    """Wall time per stage, in order."""

    def __init__(self, out):
        self.out, self.seconds, self._name, self._start = out, {}, None, None

    def start(self, name: str, message: str) -> None:
        self.out.info(f"[{len(self.seconds) + 1}/7] {message}")
        self._name, self._start = name, time.perf_counter()

    def stop(self) -> None:
        self.seconds[self._name] = round(time.perf_counter() - self._start, 1)


def _check_args(args) -> None:
    """Also settles args.from_scratch and args.minutes; returns the shipped weights to use (None: train)."""
    args.from_scratch = args.from_scratch or any(
        value is not None for value in (args.minutes, args.codec_steps, args.soundstorm_steps, args.codec))
    if args.codec is not None:
        from soundstorm_jax.training import config as config_lib
        if args.codec_steps is not None:
            raise CliError("--codec and --codec-steps exclude each other: --codec DIR is a codec already trained")
        saved = config_lib.read_saved_config(args.codec)
        if saved is None or config_lib.kind_of(saved) != "codec":
            raise CliError(f"--codec {args.codec!r} is not a codec workdir or export (no {config_lib.CONFIG_FILE} "
                           f"of kind 'codec')")
        if saved.model.generator.target_sample_hz != SAMPLE_RATE:
            raise CliError(f"--codec {args.codec!r} runs at {saved.model.generator.target_sample_hz} Hz; the demo's "
                           f"corpus is at {SAMPLE_RATE} Hz")
    if args.minutes is None:
        args.minutes = DEFAULT_MINUTES
    if not args.minutes >= MIN_MINUTES:
        raise CliError(f"--minutes must be at least {MIN_MINUTES:g} (the fixed stages alone take about "
                       f"{RESERVED_MINUTES:g}), got {args.minutes:g}")
    if args.samples < 1:
        raise CliError(f"--samples must be positive, got {args.samples}")
    if not 0.2 <= args.prompt_seconds <= 3.0:
        raise CliError(f"--prompt-seconds must lie in [0.2, 3], got {args.prompt_seconds:g}")
    for name in ("steps", "codec_steps", "soundstorm_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CliError(f"--{name.replace('_', '-')} must be positive, got {value}")
    for stage in ("codec", "soundstorm"):
        path = os.path.join(args.out, stage)
        if epath.Path(path).is_dir() and any(epath.Path(path).iterdir()):
            raise CliError(f"{path!r} already holds a run; give a new --out folder (the demo starts from scratch)")
    if args.from_scratch:
        return None
    shipped = pretrained.demo_weights()
    if shipped is None:
        raise CliError("this installation has no shipped demo weights (soundstorm_jax/pretrained/demo); "
                       "run `soundstorm demo --from-scratch`")
    from soundstorm_jax.data import espeak_corpus
    seen = sorted({u.speaker.name for u in espeak_corpus.utterances(args.corpus, args.seed)
                   if u.split != "train"} & set(shipped.heard_speakers))
    if seen:
        raise CliError(f"the shipped weights were trained on {', '.join(seen)}, which --corpus {args.corpus} "
                       f"--seed {args.seed} holds out; add --from-scratch (or use --seed {shipped.card['seed']})")
    return shipped


def _train(config, workdir: str, seconds, out, desc: str):
    """train.py's loop, time-boxed (`seconds`; the bar runs over the time, the first seconds compile) or, with
    `seconds=None`, for config.total_steps (the bar counts steps)."""
    from tqdm import tqdm

    from soundstorm_jax import training
    start = time.perf_counter()
    if seconds is None:
        with tqdm(total=int(config.total_steps), desc=desc, unit="step", disable=out.quiet, mininterval=1.0) as bar:
            return training.train_and_evaluate(config, workdir, on_step=lambda step: bar.update(step - bar.n),
                                               stream=None)
    with tqdm(total=round(seconds), desc=desc, unit="s", disable=out.quiet, mininterval=1.0,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} s{postfix}") as bar:
        def on_step(step):
            bar.update(min(time.perf_counter() - start, seconds) - bar.n)
            bar.set_postfix(step=step, refresh=False)
        summary = training.train_and_evaluate(config, workdir, time_limit_s=seconds, on_step=on_step, stream=None)
        bar.update(bar.total - bar.n)
        return summary


def _budget_line(args, shipped) -> str:
    if shipped is not None:
        return f"shipped weights: codec {shipped.card['codec_steps']} steps, SoundStorm " \
               f"{shipped.card['soundstorm_steps']} steps (`{shipped.card['command']}`)"
    if args.codec is not None:
        line = f"codec given ({args.codec}), SoundStorm {args.soundstorm_steps or 'time-boxed'} steps"
        return line if args.soundstorm_steps else f"{line}, {args.minutes:g} minute budget"
    if not (args.codec_steps or args.soundstorm_steps):
        return f"{args.minutes:g} minute budget"
    line = f"codec {args.codec_steps or 'time-boxed'} steps, SoundStorm {args.soundstorm_steps or 'time-boxed'} steps"
    return line if args.codec_steps and args.soundstorm_steps else f"{line}, {args.minutes:g} minute budget"


def _budget(seconds, steps) -> str:
    return f"{steps} steps" if seconds is None else f"{seconds / 60:.1f} min"


def encode_corpus(codec, audio_source, codes_dir: str):
    """The codes dataset of an eSpeak corpus's audio dataset (its phoneme ids kept as the semantic ids, its
    metadata with the codec's rates), built in `codes_dir` or reused; returns the builder."""
    from soundstorm_jax.data import prepare_codes_dataset
    return prepare_codes_dataset(
        codes_dir, audio_source=audio_source, encode_fn=codec.encode, samples_per_frame=codec.hop_length,
        num_levels=codec.num_quantizers, codebook_size=codec.codebook_size, encode_batch_size=8,
        pad_to_multiple=2 * codec.sample_rate,  # 2 s buckets: a few compiled shapes
        metadata=dict(audio_source.info.metadata or {}, sample_rate=codec.sample_rate, frame_rate=codec.frame_rate))


def _records(builder, split: str) -> list[dict]:
    source = builder.as_data_source(split)
    return [source[i] for i in range(len(source))]


def _codec_quality(codec, audio_records: list[dict], codes_by_id: dict) -> tuple[dict, list[np.ndarray]]:
    """Reconstruction quality on held-out utterances: SNR and log-spectral distance (dB), and the
    reconstructions (float (samples_i,) per record, cut to the shorter of the original and the decoded codes)."""
    from soundstorm_jax.data.audio_io import int16_to_float

    snrs, lsds, reconstructions = [], [], []
    bucket = 2 * int(codec.frame_rate)  # Codes padded to 2 s multiples: a few compiled shapes, not one per file.
    for record in audio_records:
        audio = int16_to_float(record["audio"])
        codes = codes_by_id[record["id"].decode()]
        padded = np.zeros((1, -(-len(codes) // bucket) * bucket, codes.shape[1]), np.int32)
        padded[0, :len(codes)] = codes
        rec = np.asarray(codec.decode(padded))[0][:min(len(audio), len(codes) * codec.hop_length)]
        audio = audio[:len(rec)]
        reconstructions.append(rec)
        snrs.append(10 * np.log10(np.sum(audio ** 2) / max(np.sum((audio - rec) ** 2), 1e-12)))
        a = spectrogram.log_power(audio)
        b = spectrogram.log_power(rec)
        lsds.append(float(np.mean(np.sqrt(np.mean((a - b) ** 2, axis=0)))))
    return dict(snr_db=round(float(np.mean(snrs)), 2), log_spectral_distance_db=round(float(np.mean(lsds)), 2),
                utterances=len(audio_records)), reconstructions


def run(args, out, extra):
    del extra
    shipped = _check_args(args)
    make_out_dir(args.out)
    begin = time.perf_counter()
    stages = Stages(out)
    train_seconds = (args.minutes - RESERVED_MINUTES) * 60
    report = dict(command="demo", out=args.out, minutes=args.minutes if shipped is None else None, seed=args.seed,
                  corpus=args.corpus, budget=_budget_line(args, shipped),
                  weights=dict(codec=(f"given ({args.codec})" if args.codec is not None
                                      else "trained in this run" if shipped is None else "shipped"),
                               soundstorm="trained in this run" if shipped is None else "shipped"))
    if shipped is not None:
        report["shipped"] = dict(command=shipped.card["command"], corpus=shipped.card["corpus"],
                                 seed=shipped.card["seed"], training_speakers=list(shipped.training_speakers),
                                 codec_training_speakers=list(shipped.codec_training_speakers))

    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()  # The stages have their own bars.
    from soundstorm_jax.data import espeak_corpus, prepare_corpus
    from soundstorm_jax.training.config import load_config
    from soundstorm_jax.training.restore import load_codec

    stages.start("corpus", f"building the {args.corpus} eSpeak corpus ...")
    corpus_dir, remote = os.path.join(args.out, "data", "corpus"), paths.is_remote(args.out)
    # With a gs:// OUT the WAVs are synthesized in the local corpus cache and only the dataset goes to OUT.
    corpus = prepare_corpus(args.corpus, args.seed, sample_rate=SAMPLE_RATE, frame_rate=FRAME_RATE,
                            cache_dir=None if remote else corpus_dir, dataset_dir=corpus_dir if remote else None,
                            progress=not out.quiet)
    audio_dir = os.path.dirname(os.path.dirname(corpus.data_dir))
    report["corpus_splits"] = {k: int(v.num_examples) for k, v in corpus.info.splits.items()}
    stages.stop()

    if args.codec is not None:
        stages.start("codec", f"taking the codec in {args.codec} ...")
        from soundstorm_jax import export
        if export.is_export(args.codec):
            paths.upload_tree(args.codec, os.path.join(args.out, "codec"))
            step = export.read_manifest(args.codec)["step"]
        else:  # a workdir: its export (parameters and config, no optimizer state)
            step = export.export_run(args.codec, os.path.join(args.out, "codec"))["step"]
        report["codec"] = dict(steps=step, train_mel_loss=None, eval_mel_loss=None)
    elif shipped is None:
        codec_seconds = None if args.codec_steps else CODEC_SHARE * train_seconds
        stages.start("codec", f"training the codec ({_budget(codec_seconds, args.codec_steps)}) ...")
        codec_config = load_config("demo_codec")
        codec_config.seed = args.seed
        codec_config.data.dir = audio_dir
        # Without --codec-steps the time limit ends the run, at a constant learning rate; with it the rate
        # decays over the run.
        codec_config.total_steps = args.codec_steps or 10**6
        codec_config.optimizer.decay_steps = args.codec_steps
        summary = _train(codec_config, os.path.join(args.out, "codec"), codec_seconds, out, "codec")
        report["codec"] = dict(steps=summary.step, train_mel_loss=summary.last_metrics.get("mel_loss"),
                               eval_mel_loss=(summary.last_eval or {}).get("eval_mel_loss"))
    else:  # OUT/codec and OUT/soundstorm hold the shipped exports: later commands find them where they would be
        stages.start("codec", f"copying the shipped codec ({shipped.card['codec_steps']} steps) ...")
        paths.upload_tree(shipped.codec_path, os.path.join(args.out, "codec"))
        report["codec"] = dict(steps=shipped.card["codec_steps"], train_mel_loss=None,
                               eval_mel_loss=shipped.card["figures"]["codec"].get("eval_mel_loss"))
    stages.stop()

    stages.start("encode", "encoding the corpus with the codec ...")
    codec = load_codec(os.path.join(args.out, "codec"))
    codes_dir = os.path.join(args.out, "data", "codes")
    codes_builder = encode_corpus(codec, corpus, codes_dir)
    train_codes = _records(codes_builder, "train")
    held_out = _records(codes_builder, "validation")
    codes_by_id = {r["id"].decode(): r["codes"] for r in held_out}
    held_out_audio = _records(corpus, "validation")
    quality, reconstructions = _codec_quality(codec, held_out_audio, codes_by_id)
    report["codec"].update(quality)
    stages.stop()

    if shipped is None:
        # SoundStorm gets whatever is left but the last stages' share, so codec overruns do not add up.
        remaining = None if args.soundstorm_steps else max(
            30.0, begin + args.minutes * 60 - FINAL_STAGES_SECONDS - time.perf_counter())
        stages.start("soundstorm", f"training SoundStorm ({_budget(remaining, args.soundstorm_steps)}) ...")
        config = load_config("demo")
        config.seed = args.seed
        config.data.dir = codes_dir
        config.total_steps = args.soundstorm_steps or max(50, int(remaining / SOUNDSTORM_SECONDS_PER_STEP))
        if args.steps is not None:  # saved with the run: later `soundstorm generate` calls use it too
            config.objective.steps = args.steps
        summary = _train(config, os.path.join(args.out, "soundstorm"), remaining, out, "soundstorm")
        report["soundstorm"] = dict(steps=summary.step, planned_steps=int(config.total_steps),
                                    train_loss=summary.last_metrics.get("loss"),
                                    train_accuracy=summary.last_metrics.get("accuracy"))
    else:
        stages.start("soundstorm", f"copying the shipped SoundStorm ({shipped.card['soundstorm_steps']} steps) ...")
        paths.upload_tree(shipped.path, os.path.join(args.out, "soundstorm"))
        report["soundstorm"] = dict(steps=shipped.card["soundstorm_steps"],
                                    planned_steps=shipped.card["soundstorm_steps"], train_loss=None,
                                    train_accuracy=None)
    stages.stop()

    stages.start("evaluate", "held-out accuracy per level ...")
    from soundstorm_jax.training.restore import load_soundstorm
    from soundstorm_jax.maskgit.evaluation import accuracy_table, level_accuracy, unigram_accuracy
    model, variables, config = load_soundstorm(os.path.join(args.out, "soundstorm"))
    prompt_frames = int(round(args.prompt_seconds * codec.frame_rate))
    examples = [dict(codes=r["codes"], semantic_ids=r["semantic_ids"]) for r in held_out]
    accuracy = level_accuracy(model, variables, examples, prompt_frames=prompt_frames)
    baseline = unigram_accuracy([r["codes"] for r in train_codes], [r["codes"] for r in held_out],
                                num_quantizers=model.net.num_quantizers, codebook_size=model.net.codebook_size,
                                prompt_frames=prompt_frames)
    report["held_out_accuracy"] = accuracy_table(accuracy, baseline)
    report["held_out"] = dict(utterances=len(held_out), speakers=sorted({r["speaker"].decode() for r in held_out}),
                              prompt_frames=prompt_frames)
    stages.stop()

    stages.start("generate", f"speaking {args.samples} held-out sentence(s) in the held-out voice ...")
    script = {u.id: u for u in espeak_corpus.utterances(args.corpus, args.seed)}
    report["samples"], generated = _generate_samples(model, variables, codec, held_out, script, prompt_frames,
                                                     args, out)
    stages.stop()

    stages.start("listen", "scoring intelligibility and voice with a recognizer trained on the training voices ...")
    report["speech"] = _speech_metrics(_records(corpus, "train"), held_out_audio, reconstructions, generated, args.seed)
    for sample, figures in zip(report["samples"], report["speech"].pop("samples")):
        sample.update(figures)
    stages.stop()

    report["stage_seconds"] = stages.seconds
    report["total_seconds"] = round(time.perf_counter() - begin, 1)
    report_files = _write_report(report, args.out)
    out.result(dict(report, report_files=report_files), _summary_lines(report, report_files))
    return 0


def _generate_samples(model, variables, codec, held_out, script, prompt_frames, args, out) -> tuple[list, list]:
    """Sample i: the voice prompt is held-out utterance i's first frames (codes and phonemes); the
    sentence is utterance i+1's text, phonemized with the prompt speaker's voice, rate and pitch.

    Returns the report's rows and, per sample, an `evaluation.report.GeneratedClip`: the speech after the
    prompt, the ids it was conditioned on, and utterance i+2's ids as the wrong sentence (chance level)."""
    import jax

    from soundstorm_jax.data import phonemize
    from soundstorm_jax.evaluation.report import GeneratedClip
    from soundstorm_jax.sampler.generate import generate

    samples_dir = make_out_dir(os.path.join(args.out, "samples"))
    key = jax.random.PRNGKey(args.seed)
    results, clips = [], []
    for i in out.progress(range(args.samples), desc="generate", unit="sample"):
        prompt_record = held_out[i % len(held_out)]
        text_record = held_out[(i + 1) % len(held_out)]
        utt = script[os.path.basename(prompt_record["id"].decode())]  # ids are split/speaker/utterance
        text = text_record["text"].decode()
        timed = phonemize(text, voice=utt.speaker.voice, rate=utt.rate, pitch=utt.pitch, frame_rate=FRAME_RATE)
        prompt = np.asarray(prompt_record["codes"][:prompt_frames], np.int32)
        semantic = np.concatenate([prompt_record["semantic_ids"][:prompt_frames], timed.frame_ids]).astype(np.int32)
        codes = np.asarray(generate(model, variables, semantic_ids=semantic[None], prompt=prompt,
                                    steps=args.steps, key=jax.random.fold_in(key, i)))[0]
        audio = np.asarray(codec.decode(codes[None].astype(np.int32)))[0]
        prompt_audio = audio[:prompt_frames * codec.hop_length]
        stem = os.path.join(samples_dir, f"sample_{i:03d}")
        files = [write_wav(stem + ".wav", audio, codec.sample_rate),
                 write_wav(stem + "_prompt.wav", prompt_audio, codec.sample_rate),
                 spectrogram.write_spectrogram(stem + ".png", audio[len(prompt_audio):], codec.sample_rate,
                                               prompt_audio, title=f"sample_{i:03d} ({utt.speaker.voice}): {text}")]
        epath.Path(stem + ".txt").write_text(text + "\n", encoding="utf-8")
        results.append(dict(wav=files[0], prompt_wav=files[1], spectrogram=files[2], text=text,
                            prompt_from=prompt_record["id"].decode(), voice=utt.speaker.voice,
                            seconds=round(len(audio) / codec.sample_rate, 2),
                            sample_rate=codec.sample_rate))
        clips.append(GeneratedClip(audio[len(prompt_audio):], timed.frame_ids,
                                   held_out[(i + 2) % len(held_out)]["semantic_ids"], utt.speaker.name))
    return results, clips


def _speech_metrics(train_audio: list[dict], held_out_audio: list[dict], reconstructions, generated, seed) -> dict:
    """`evaluation.report.speech_report` on the corpus records (int16 audio, semantic_ids, speaker). The
    recognizer trained on the training voices is kept in the local cache (`$SOUNDSTORM_JAX_CACHE/recognizers`):
    another run on the same corpus and seed loads it instead of training it again."""
    import jax

    from soundstorm_jax.data.audio_io import int16_to_float
    from soundstorm_jax.data.espeak_corpus import default_cache_dir
    from soundstorm_jax.evaluation.report import Clip, speech_report

    def clips(records):
        return [Clip(int16_to_float(r["audio"]), np.asarray(r["semantic_ids"]), r["speaker"].decode())
                for r in records]
    return speech_report(clips(train_audio), clips(held_out_audio), jax.random.PRNGKey(seed),
                         reconstructions=reconstructions, generated=generated,
                         recognizer_cache=os.path.join(default_cache_dir(), "recognizers"))


def _write_report(report: dict, out_dir: str) -> list[str]:
    json_path = os.path.join(out_dir, "report.json")
    epath.Path(json_path).write_text(json.dumps(report, indent=1, default=str))
    md_path = os.path.join(out_dir, "report.md")
    epath.Path(md_path).write_text("\n".join(_markdown(report)) + "\n")
    return [md_path, json_path]


def _markdown(r: dict) -> list[str]:
    from soundstorm_jax.data import espeak_corpus
    from soundstorm_jax.evaluation.report import markdown as speech_markdown  # jax and flax: not at CLI start-up

    c, s = r["codec"], r["soundstorm"]
    w = r["weights"]
    lines = [f"# soundstorm demo ({r['corpus']} corpus, seed {r['seed']})", "", f"Budget: {r['budget']}.", "",
             f"Weights: codec {w['codec']}, SoundStorm {w['soundstorm']}."]
    if "shipped" in r:
        x = r["shipped"]
        corpus_voices = sorted({u.speaker.name for u in espeak_corpus.utterances(x["corpus"], x["seed"])
                                if u.split == "train"})

        def voices(names):
            return (f"the {x['corpus']} corpus's voices ({', '.join(names)})" if sorted(names) == corpus_voices
                    else f"{len(names)} voices of the small corpus")
        lines[-1] += (f" The shipped weights for the {x['corpus']} corpus (seed {x['seed']}) were trained by "
                      f"`{x['command']}`: SoundStorm on {voices(x['training_speakers'])}, the codec on "
                      f"{voices(x['codec_training_speakers'])}; the held-out voice was never trained on.")
    lines += ["", "## Codec (held-out voice)", "",
             f"{c['steps']} steps; SNR {c['snr_db']} dB, log-spectral distance {c['log_spectral_distance_db']} dB "
             f"over {c['utterances']} utterances; eval mel loss {_fmt(c['eval_mel_loss'])}.", "",
             "## SoundStorm held-out accuracy per level", "",
             f"{s['steps']} of {s['planned_steps']} planned steps; final training loss {_fmt(s['train_loss'])}. "
             f"Greedy accuracy with the first {r['held_out']['prompt_frames']} frames as prompt, lower levels given, "
             f"the level and those above masked, on {r['held_out']['utterances']} held-out utterances; unigram = "
             f"always the level's most frequent training code.", "",
             "| level | accuracy | unigram | ratio |", "|---|---|---|---|"]
    lines += [f"| {row['level']} | {row['accuracy']:.3f} | {row['unigram']:.3f} | {_fmt(row['ratio'])} |"
              for row in r["held_out_accuracy"]]
    lines += ["", "## Intelligibility and voice (held-out voice)", ""] + speech_markdown(r["speech"])
    lines += ["", "## Samples", ""]
    lines += [f"- `{os.path.basename(x['wav'])}` ({x['seconds']} s, prompt from {x['prompt_from']}): "
              f"\"{x['text']}\"; frame accuracy {_pct(x['accuracy'])} (wrong sentence "
              f"{_pct(x['wrong_sentence_accuracy'])}), voice rank {x['voice_rank']} (margin {x['voice_margin']:.2f}, "
              f"nearest {x['nearest_voice']})" for x in r["samples"]]
    lines += ["", "## Wall time per stage (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {sec} |" for name, sec in r["stage_seconds"].items()]
    lines += [f"| total | {r['total_seconds']} |"]
    return lines


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _summary_lines(r: dict, paths: list[str]) -> list[str]:
    acc = r["held_out_accuracy"]
    mean = lambda key: float(np.mean([row[key] for row in acc]))  # noqa: E731
    w = r["weights"]
    lines = [f"codec ({w['codec']}): {r['codec']['steps']} steps, held-out SNR {r['codec']['snr_db']} dB",
             f"soundstorm ({w['soundstorm']}): {r['soundstorm']['steps']} steps, held-out accuracy per level "
             + " ".join(f"{row['accuracy']:.2f}" for row in acc)
             + f" (mean {mean('accuracy'):.3f} vs unigram {mean('unigram'):.3f})"]
    speech = r["speech"]["intelligibility"]
    lines.append("recognized frames: " + ", ".join(
        f"{name.replace('_', ' ')} {_pct(speech[name]['accuracy'])}"
        for name in ("originals", "reconstructions", "generated", "wrong_sentence") if name in speech)
        + f"; generated voice rank {r['speech']['voice']['generated']['mean_rank']:.1f} of "
          f"{r['speech']['voice']['voices']}")
    lines += [f"wrote {x['wav']}" for x in r["samples"]]
    return lines + [f"report: {paths[0]}", f"total {r['total_seconds']:.0f} s"]
