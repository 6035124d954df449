"""Trains the weights `soundstorm demo` ships with and writes them to soundstorm_jax/pretrained/demo/.

    python tools/train_demo_weights.py --codec-steps 6000 --soundstorm-steps 1200
    python tools/train_demo_weights.py --codec-steps 6000 --codec-voices small --codec-gan-from 2000 \
        --soundstorm-steps 1200
    python tools/train_demo_weights.py --codec-steps 4000 --codec-voices small --soundstorm-voices small \
        --soundstorm-steps 2000

By default it runs `soundstorm demo --from-scratch` for exactly those steps: the demo's codec on the demo corpus's
training voices, then the demo's SoundStorm. With --codec-voices, --codec-gan-from or --soundstorm-voices it runs
three stages, each an ordinary command; started again with the same flags it resumes the codec's workdir exactly
(`soundstorm train`) and redoes the later stages:

  1. codec voices  the demo corpus's own training voices (the tiny corpus: 5, all male), or with
                   --codec-voices small the small embedded corpus's training voices minus any voice the demo
                   corpus holds out (35, male and female); the demo corpus's held-out voice is the validation
                   split: an audio dataset in WORK/codec_data
  2. codec         `soundstorm train --config demo_codec` on it for --codec-steps, the learning rate decaying
                   over the run; with --codec-gan-from N the workdir is trained on from step N with the GAN terms
                   (configs/codec_common.py's weights): mel losses alone leave the phase out of the codes, and the
                   decoder buzzes at multiples of the frame rate whatever the voice's pitch
  3. SoundStorm    `soundstorm demo --codec WORK/codec --soundstorm-steps N`: the demo's own
                   SoundStorm training on the demo corpus encoded with that codec, then its evaluation; or with
                   --soundstorm-voices small, `soundstorm train --config demo` on the codec's voices (the small
                   corpus's training voices minus the demo's held-out ones, with their phoneme ids) encoded
                   with that codec, then the weights are copied to the package and a default `soundstorm demo`
                   evaluates them there (the tiny corpus's five male voices teach SoundStorm no female voice, and a
                   codec that keeps the pitch gives female prompts codes it has never seen)

It exports the SoundStorm together with its codec (`soundstorm export`: EMA parameters and configs, no
optimizer state) and writes `card.json` beside them: the command, corpus, seed and training voices of each model,
the steps, the machine, the wall time per stage of this invocation and the seconds each model's training steps
took (`step_seconds`, read from the workdirs' metrics: a resumed stage takes seconds), and the figures the demo
measured. A default `soundstorm demo`
evaluates the shipped weights the same way; tests/test_demo.py checks that it reproduces the card's figures.
Run it from the repository root (the export records the run folder relative to it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, "soundstorm_jax", "pretrained", "demo")
SAMPLE_RATE, FRAME_RATE = 16000, 50.0  # the demo's (soundstorm_jax/cli/demo.py)


def soundstorm(*args: str, json_result: bool = True) -> dict:
    command = [sys.executable, "-m", "soundstorm_jax", *(["--json"] if json_result else []), *args]
    print("+", " ".join(command[1:]), flush=True)
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1]) if json_result else {}


def codec_voices(corpus: str, voices_from: str, seed: int, folder: str) -> list[str]:
    """Writes the codec's audio folder (train: `voices_from`'s training voices that `corpus` does not hold out;
    validation: `corpus`'s held-out voices) and returns the training voices."""
    from soundstorm_jax.data import espeak_corpus
    demo_script = espeak_corpus.utterances(corpus, seed)
    held_out = {u.speaker.name for u in demo_script if u.split != "train"}
    source = espeak_corpus.build_corpus_folder(voices_from, seed, sample_rate=SAMPLE_RATE, frame_rate=FRAME_RATE)
    demo = espeak_corpus.build_corpus_folder(corpus, seed, sample_rate=SAMPLE_RATE, frame_rate=FRAME_RATE)
    voices = sorted(v for v in os.listdir(os.path.join(source, "train")) if v not in held_out)
    if not os.path.isdir(folder):
        building = folder + ".building"
        shutil.rmtree(building, ignore_errors=True)
        for voice in voices:
            shutil.copytree(os.path.join(source, "train", voice), os.path.join(building, "train", voice))
        for voice in sorted(held_out):
            shutil.copytree(os.path.join(demo, "validation", voice), os.path.join(building, "validation", voice))
        os.replace(building, folder)
    return voices


def voices_dataset(args, voices_from: str):
    """`codec_voices`' audio folder for `voices_from` (the demo corpus or "small") and its audio dataset, with
    the corpus's metadata (the WAVs' .semantic.npy sidecars are its phoneme ids): built once in WORK, shared by
    the codec and SoundStorm stages. Returns (training voices, the dataset's folder, its builder)."""
    from soundstorm_jax.data import espeak_corpus, prepare_audio_folder
    audio = os.path.join(args.work, f"{voices_from}_voices_audio")
    voices = codec_voices(args.corpus, voices_from, args.seed, audio)
    folder = os.path.join(args.work, f"{voices_from}_voices_data")
    builder = prepare_audio_folder(audio, folder, sample_rate=SAMPLE_RATE,
                                   metadata=espeak_corpus.corpus_metadata(voices_from, args.seed, FRAME_RATE))
    return voices, folder, builder


def train_codec_elsewhere(args, codec_dir: str) -> tuple[list[str], int, dict]:
    """Stages 1 and 2 for --codec-voices / --codec-gan-from: (training voices, steps, seconds per stage)."""
    seconds = {}
    begin = time.perf_counter()
    voices, codec_data, _ = voices_dataset(args, args.corpus if args.codec_voices == "corpus" else "small")
    seconds["codec_voices"] = round(time.perf_counter() - begin, 1)

    def train_codec(total_steps: int, *extra: str) -> dict:
        return soundstorm(
            "train", "--config", "demo_codec", "--workdir", codec_dir, f"--config.data.dir={codec_data}",
            f"--config.seed={args.seed}", f"--config.total_steps={total_steps}",
            f"--config.optimizer.decay_steps={args.codec_steps}",
            f"--config.checkpoint.every_steps={min(500, args.codec_steps)}", *extra)

    begin = time.perf_counter()
    if args.codec_gan_from is None:
        run = train_codec(args.codec_steps)
    else:  # Two runs of one workdir: mel losses alone first (no discriminator to run), then the GAN terms too.
        train_codec(args.codec_gan_from)
        run = train_codec(args.codec_steps, "--config.loss.adversarial_weight=1.0",
                          "--config.loss.feature_matching_weight=3.0", "--config.loss.adversarial_start_step=0")
    seconds["codec"] = round(time.perf_counter() - begin, 1)
    return voices, run["checkpoints"][-1], seconds


def train_soundstorm_elsewhere(args, codec_dir: str, soundstorm_dir: str) -> tuple[list[str], dict]:
    """Stage 3 for --soundstorm-voices small: (training voices, seconds per stage)."""
    from soundstorm_jax.cli.demo import encode_corpus
    from soundstorm_jax.training.restore import load_codec
    seconds = {}
    begin = time.perf_counter()
    voices, _, audio_data = voices_dataset(args, "small")
    codes_dir = os.path.join(args.work, "small_voices_codes")
    encode_corpus(load_codec(codec_dir), audio_data, codes_dir)
    seconds["encode_voices"] = round(time.perf_counter() - begin, 1)
    begin = time.perf_counter()
    soundstorm("train", "--config", "demo", "--workdir", soundstorm_dir, f"--config.data.dir={codes_dir}",
               f"--config.seed={args.seed}", f"--config.total_steps={args.soundstorm_steps}")
    seconds["soundstorm"] = round(time.perf_counter() - begin, 1)
    return voices, seconds


def step_seconds(workdir: str) -> float:
    """The seconds a workdir's training steps took (metrics.jsonl's mean step times over each logging interval):
    the training's own time, whichever invocation of this tool ran it (a resumed stage takes seconds)."""
    total, previous = 0.0, 0
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        for row in map(json.loads, f):
            if "step_time" in row:
                total, previous = total + row["step_time"] * (row["step"] - previous), row["step"]
    return round(total, 1)


def write_card(export_dir: str, card: dict) -> None:
    with open(os.path.join(export_dir, "card.json"), "w", encoding="utf-8") as f:
        json.dump(card, f, indent=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codec-steps", type=int, required=True)
    parser.add_argument("--codec-voices", choices=("corpus", "small"), default="corpus",
                        help="the codec's training voices: the demo corpus's (default) or the small corpus's "
                             "minus the demo's held-out ones")
    parser.add_argument("--codec-gan-from", type=int, default=None,
                        help="the step from which the codec's GAN terms count (default: mel losses only)")
    parser.add_argument("--soundstorm-voices", choices=("corpus", "small"), default="corpus",
                        help="SoundStorm's training voices: the demo corpus's (default, trained by the demo) or, "
                             "as --codec-voices, the small corpus's minus the demo's held-out ones (then --target "
                             "must be the package's folder: a default `soundstorm demo` measures the weights there)")
    parser.add_argument("--soundstorm-steps", type=int, required=True)
    parser.add_argument("--work", default=os.path.join("runs", "demo_weights"),
                        help="the runs' folder (default runs/demo_weights)")
    parser.add_argument("--corpus", default="tiny", help="the demo corpus the weights are for (default tiny)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", default=TARGET, help="where the weights go (default: the package's folder)")
    args = parser.parse_args()
    measured_in_package = args.soundstorm_voices != "corpus"
    if measured_in_package and os.path.realpath(args.target) != os.path.realpath(TARGET):
        parser.error("--soundstorm-voices small measures the weights with a default `soundstorm demo`, which reads "
                     f"them from the package: leave --target at {TARGET}")
    demo_out = os.path.join(args.work, "demo")
    shutil.rmtree(demo_out, ignore_errors=True)  # the demo trains SoundStorm from scratch in a new folder
    soundstorm_speakers = None  # the corpus's training voices
    if args.codec_voices == "corpus" and args.codec_gan_from is None and not measured_in_package:
        # The demo's own codec recipe: `soundstorm demo --from-scratch` trains both models for exactly these steps.
        codec_dir, soundstorm_dir = os.path.join(demo_out, "codec"), os.path.join(demo_out, "soundstorm")
        codec_speakers = None  # the corpus's training voices, as SoundStorm's
        report = soundstorm("demo", "--from-scratch", "--out", demo_out, "--corpus", args.corpus,
                            "--codec-steps", str(args.codec_steps), "--soundstorm-steps", str(args.soundstorm_steps),
                            "--seed", str(args.seed))
        codec_steps, seconds = report["codec"]["steps"], dict(report["stage_seconds"])
    else:
        codec_dir = os.path.join(args.work, "codec")
        codec_speakers, codec_steps, seconds = train_codec_elsewhere(args, codec_dir)
        if measured_in_package:
            soundstorm_dir = os.path.join(args.work, "soundstorm")
            soundstorm_speakers, stage_seconds = train_soundstorm_elsewhere(args, codec_dir, soundstorm_dir)
            seconds.update(stage_seconds)
            report = None  # measured below, once the weights are in the package
        else:
            soundstorm_dir = os.path.join(demo_out, "soundstorm")
            report = soundstorm("demo", "--codec", codec_dir, "--out", demo_out, "--corpus", args.corpus,
                                "--soundstorm-steps", str(args.soundstorm_steps), "--seed", str(args.seed))
            seconds.update(report["stage_seconds"])
            seconds.pop("codec")  # the demo's copy of the given codec: not training

    from soundstorm_jax.data import espeak_corpus
    from soundstorm_jax.export import export_run

    export_dir = os.path.join(args.work, "export")
    shutil.rmtree(export_dir, ignore_errors=True)
    export = export_run(soundstorm_dir, export_dir, codec=codec_dir)
    corpus_speakers = sorted({u.speaker.name for u in espeak_corpus.utterances(args.corpus, args.seed)
                              if u.split == "train"})
    command = ["python", "tools/train_demo_weights.py", "--codec-steps", str(args.codec_steps)]
    command += [] if args.codec_voices == "corpus" else ["--codec-voices", args.codec_voices]
    command += [] if args.codec_gan_from is None else ["--codec-gan-from", str(args.codec_gan_from)]
    command += [] if args.soundstorm_voices == "corpus" else ["--soundstorm-voices", args.soundstorm_voices]
    command += ["--soundstorm-steps", str(args.soundstorm_steps)]
    command += (["--corpus", args.corpus] if args.corpus != "tiny" else []) + (["--seed", str(args.seed)]
                                                                               if args.seed else [])
    card = dict(
        command=" ".join(command), corpus=args.corpus, seed=args.seed,
        training_speakers=soundstorm_speakers or corpus_speakers,
        codec_training_speakers=codec_speakers or corpus_speakers,
        codec_steps=codec_steps, codec_gan_from=args.codec_gan_from,
        soundstorm_steps=args.soundstorm_steps if report is None else report["soundstorm"]["steps"],
        export_bytes=export["export_bytes"] + export["codec"]["export_bytes"],
        machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                     cpus=os.cpu_count(), python=platform.python_version()),
        stage_seconds=seconds, figures=dict(codec={}),
        step_seconds=dict(codec=step_seconds(codec_dir), soundstorm=step_seconds(soundstorm_dir)))
    # Orbax's commit marker names the folder it wrote; in the package that folder means nothing.
    for marker in ("params/commit_success.txt", "codec/params/commit_success.txt"):
        with open(os.path.join(export_dir, marker), "w", encoding="utf-8") as f:
            f.write("Checkpoint commit was successful (written by tools/train_demo_weights.py)")
    if report is None:  # a default demo measures the weights where it finds them: in the package
        write_card(export_dir, card)
        shutil.rmtree(args.target, ignore_errors=True)
        shutil.copytree(export_dir, args.target)
        report = soundstorm("demo", "--out", demo_out, "--corpus", args.corpus, "--seed", str(args.seed))
        seconds.update({f"demo_{k}": v for k, v in report["stage_seconds"].items()
                        if k in ("encode", "evaluate", "generate", "listen")})
    card.update(stage_seconds=seconds, total_seconds=round(sum(seconds.values()), 1),
                figures={key: report[key] for key in ("codec", "held_out_accuracy", "speech", "samples")})
    for sample in card["figures"]["samples"]:  # the run's local files mean nothing in the package
        for key in ("wav", "prompt_wav", "spectrogram"):
            sample.pop(key, None)
    write_card(export_dir, card)
    shutil.rmtree(args.target, ignore_errors=True)
    shutil.copytree(export_dir, args.target)
    print(json.dumps(dict(target=args.target, export_bytes=card["export_bytes"], total_seconds=card["total_seconds"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
