"""The README's "Your own audio, step by step", run as written.

A small speech folder in the LibriSpeech layout (speaker/chapter/*.flac with a
`*.trans.txt` per chapter; here also a 44.1 kHz stereo WAV speaker and OGG and
MP3 files at other rates) is built in a working directory outside the
checkout, and every command of the recipe's code block runs there in order,
exactly as the README prints it, except `--config.total_steps=N`, which the
test sets to a few steps (the flag the README shows). When the README changes,
this test runs the new recipe.
"""
import json
import os
import pathlib
import re
import shlex
import subprocess

import numpy as np
import pytest
import soundfile
from test_cli import env, soundstorm_command  # noqa: F401 (env: the subprocesses' environment fixture)

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Your own audio, step by step"
TRAIN_STEPS = 3

pytestmark = pytest.mark.slow


def recipe_commands(text: str) -> list[str]:
    """The `soundstorm ...` lines of the section's first bash block, comments removed."""
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL).group(1)
    commands = []
    for line in block.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def speech_like(rng, seconds: float, rate: int) -> np.ndarray:
    """A voiced, pitch-gliding harmonic tone with syllable-rate amplitude bumps and a little noise."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(90, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.2 * voiced * envelope + 0.01 * rng.normal(size=t.size)).astype(np.float32)


def librispeech_folder(root: pathlib.Path) -> None:
    """3 speakers, 10 utterances: FLAC at 22,050 Hz; 44.1 kHz stereo WAV; OGG at 16 kHz and MP3 at 24 kHz."""
    rng = np.random.default_rng(0)
    layout = {("19", "198"): [("flac", 22050, 1)] * 4,
              ("26", "495"): [("wav", 44100, 2)] * 3,
              ("32", "21631"): [("ogg", 16000, 1), ("ogg", 16000, 1), ("mp3", 24000, 1)]}
    for (speaker, chapter), files in layout.items():
        folder = root / speaker / chapter
        folder.mkdir(parents=True)
        lines = []
        for i, (ext, rate, channels) in enumerate(files, start=1):
            utterance = f"{speaker}-{chapter}-{i:04d}"
            audio = speech_like(rng, rng.uniform(0.5, 0.8), rate)
            if channels == 2:
                audio = np.stack([audio, 0.8 * audio], axis=1)
            soundfile.write(str(folder / f"{utterance}.{ext}"), audio, rate, format=ext.upper())
            lines.append(f"{utterance} SOME WORDS NUMBER {i}")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")


def test_the_own_audio_recipe_runs_as_written(tmp_path, env):
    commands = recipe_commands(README.read_text())
    assert [c.split()[1] for c in commands] == [
        "prepare", "train", "prepare", "train", "generate", "encode", "generate", "decode"], commands
    librispeech_folder(tmp_path / "LibriSpeech" / "train-clean-100")
    results = []
    for command in commands:
        args = shlex.split(command)
        assert args[0] == "soundstorm"
        args = [re.sub(r"^--config\.total_steps=\d+$", f"--config.total_steps={TRAIN_STEPS}", a) for a in args]
        result = subprocess.run(soundstorm_command() + ["--json", *args[1:]], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-4000:])
        results.append(json.loads(result.stdout.strip().splitlines()[-1]))
    prepared, codec_run, encoded, model_run, sampled, prompt, continued, decoded = results

    # Every file was read, MP3 included; the two prepares share one audio dataset.
    assert sum(prepared["audio_splits"].values()) == 10
    assert encoded["audio_dataset"] == prepared["audio_dataset"]
    assert sum(encoded["codes_splits"].values()) == 10
    assert codec_run["checkpoints"][-1] == model_run["checkpoints"][-1] == TRAIN_STEPS

    # SoundStorm took the codec's codebook, levels and frame rate from the codes dataset.
    config = json.loads((tmp_path / "runs" / "tiny" / "config.json").read_text())
    assert (config["model"]["codebook_size"], config["model"]["num_quantizers"]) == (64, 4)
    assert config["data"]["frame_rate"] == 2000.0

    wavs = [f for f in sampled["files"] if f.endswith(".wav")]
    assert len(wavs) == 2
    for path in wavs:  # --seconds 1 at 16 kHz
        audio, rate = soundfile.read(tmp_path / path, dtype="float32")
        assert rate == 16000 and audio.shape == (16000,) and np.all(np.isfinite(audio))

    codes = np.load(tmp_path / prompt["files"][0])
    assert codes.ndim == 2 and codes.shape[1] == 4  # The prompt: 0.5 to 0.8 s at 2,000 frames/s.
    audio, rate = soundfile.read(tmp_path / continued["files"][0], dtype="float32")
    assert rate == 16000 and audio.shape == (16000,)
    audio, rate = soundfile.read(tmp_path / decoded["files"][0], dtype="float32")
    assert rate == 16000 and audio.shape == (len(codes) * 8,)
