"""Trains the weights `soundstorm demo` ships with and writes them to soundstorm_jax/pretrained/demo/.

    python tools/train_demo_weights.py --codec-steps 5000 --soundstorm-steps 1500

Runs `soundstorm demo --from-scratch` for exactly those steps (the same work on any machine), exports its
SoundStorm together with its codec (`soundstorm export`: EMA parameters and configs, no optimizer state) and
writes `card.json` beside them: the command, corpus, seed and training voices, the steps, the machine and
wall time per stage, and the figures that run's demo measured. A default `soundstorm demo` evaluates the
shipped weights the same way; tests/test_demo.py checks that it reproduces the card's figures.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, "soundstorm_jax", "pretrained", "demo")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codec-steps", type=int, required=True)
    parser.add_argument("--soundstorm-steps", type=int, required=True)
    parser.add_argument("--work", default=os.path.join("runs", "demo_weights"),
                        help="the demo run's folder (default runs/demo_weights; must not exist)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    demo_out = os.path.join(args.work, "demo")
    command = [sys.executable, "-m", "soundstorm_jax", "--json", "demo", "--from-scratch", "--out", demo_out,
               "--codec-steps", str(args.codec_steps), "--soundstorm-steps", str(args.soundstorm_steps),
               "--seed", str(args.seed)]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])

    from soundstorm_jax.data import espeak_corpus
    from soundstorm_jax.export import export_run

    export_dir = os.path.join(args.work, "export")
    export = export_run(os.path.join(demo_out, "soundstorm"), export_dir, codec=os.path.join(demo_out, "codec"))
    speakers = sorted({u.speaker.name for u in espeak_corpus.utterances(report["corpus"], args.seed)
                       if u.split == "train"})
    card = dict(
        command=" ".join(["python", "tools/train_demo_weights.py", "--codec-steps", str(args.codec_steps),
                          "--soundstorm-steps", str(args.soundstorm_steps)]
                         + (["--seed", str(args.seed)] if args.seed else [])),
        corpus=report["corpus"], seed=args.seed, training_speakers=speakers,
        codec_steps=report["codec"]["steps"], soundstorm_steps=report["soundstorm"]["steps"],
        export_bytes=export["export_bytes"] + export["codec"]["export_bytes"],
        machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                     cpus=os.cpu_count(), python=platform.python_version()),
        stage_seconds=report["stage_seconds"], total_seconds=report["total_seconds"],
        figures={key: report[key] for key in ("codec", "held_out_accuracy", "speech", "samples")})
    for sample in card["figures"]["samples"]:  # the run's local files mean nothing in the package
        for key in ("wav", "prompt_wav", "spectrogram"):
            sample.pop(key, None)
    with open(os.path.join(export_dir, "card.json"), "w", encoding="utf-8") as f:
        json.dump(card, f, indent=1)
    # Orbax's commit marker names the folder it wrote; in the package that folder means nothing.
    for marker in ("params/commit_success.txt", "codec/params/commit_success.txt"):
        with open(os.path.join(export_dir, marker), "w", encoding="utf-8") as f:
            f.write("Checkpoint commit was successful (written by tools/train_demo_weights.py)")
    shutil.rmtree(TARGET, ignore_errors=True)
    shutil.copytree(export_dir, TARGET)
    print(json.dumps(dict(target=TARGET, export_bytes=card["export_bytes"], total_seconds=card["total_seconds"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
