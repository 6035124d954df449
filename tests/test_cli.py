"""The `soundstorm` command line, through the real console script (subprocess).

The module's trained runs are the README's "Your own audio, step by step", run as written: a small speech folder
in the LibriSpeech layout (speaker/chapter/*.flac with a `*.trans.txt` per chapter; here also a 44.1 kHz stereo
WAV speaker and OGG and MP3 files at other rates) is built in a working directory outside the checkout, and every
command of the recipe's code block runs there in order, exactly as the README prints it, except
`--config.total_steps=N`, which is set to a few steps (the flag the README shows). When the README changes, these
tests run the new recipe. Its codec (codec_tiny: 4 levels x 64 codes, hop 8 at 16 kHz) and SoundStorm then serve
every other subcommand here, and every bad input exits with status 2 and a one-line error.
"""
import contextlib
import io
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = pathlib.Path(ROOT) / "README.md"
RECIPE = "## Your own audio, step by step"
TRAIN_STEPS = 3  # --config.total_steps of the recipe's two trainings
RATE, HOP, LEVELS, CODEBOOK = 16000, 8, 4, 64  # the recipe's codec (codec_tiny)
COMMANDS = ("prepare", "train", "encode", "decode", "generate")


def soundstorm_command():
    exe = shutil.which("soundstorm")
    return [exe] if exe else [sys.executable, "-m", "soundstorm_jax"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    # Unoptimised compiles (-O0, no expensive LLVM passes, the older loop emitters): the commands run a few steps
    # and compiling is most of their time (a 3-step `train --config tiny`: 27 s at XLA's default level, 12 s so).
    # tests/test_demo.py restores the default level for the demo runs, whose run time counts.
    env["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
                        " --xla_llvm_disable_expensive_passes=true"
                        " --xla_cpu_use_fusion_emitters=false")
    env["SOUNDSTORM_JAX_CACHE"] = str(tmp_path_factory.mktemp("corpus_cache"))
    return env


def cli(env, *args, expect=0, cwd=ROOT, timeout=300):
    result = subprocess.run(soundstorm_command() + [str(a) for a in args], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == expect, (result.returncode, result.stdout[-2000:], result.stderr[-4000:])
    return result


def bad_input(env, *args):
    """Exit status 2 with a single `error: ...` line and no traceback; returns the message.

    Runs the command line's `main` (what the console script calls) in this process: the same code and exit
    codes without a fresh interpreter's seconds of imports per case. `env` is the subprocess environment the
    other helpers take; bad input is refused before anything reads it.
    """
    del env
    from soundstorm_jax.cli.main import main
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in args])
    stderr = stderr.getvalue()
    assert code == 2, (code, stdout.getvalue()[-2000:], stderr[-4000:])
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def tone(seconds, rate=RATE, freq=440.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) + rng.normal(0, 0.02, t.shape)).astype(np.float32)


def write_wavs(root, *, train=6, validation=2, rate=RATE):
    for split, n in (("train", train), ("validation", validation)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for i in range(n):
            soundfile.write(os.path.join(root, split, f"clip{i:02d}.wav"), tone(0.25, rate, 200 + 90 * i, i),
                            rate, subtype="PCM_16")
    return root


def recipe_commands(text: str) -> list[str]:
    """The `soundstorm ...` lines of the recipe section's first bash block, comments removed."""
    section = text.split(RECIPE, 1)[1].split("\n## ", 1)[0]
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


# The recipe's commands in order: (subcommand, the name its JSON record goes by in `recipe`).
RECIPE_STEPS = [("prepare", "prepare"), ("train", "codec_run"), ("prepare", "prepare_codes"),
                ("train", "soundstorm_run"), ("generate", "generate"), ("encode", "encode"),
                ("generate", "generate_prompted"), ("decode", "decode")]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, env):
    """(the working directory, {name: the command's JSON record} for RECIPE_STEPS) of the README recipe, run as
    written there with `--json` and TRAIN_STEPS training steps."""
    cwd = tmp_path_factory.mktemp("own_audio")
    commands = recipe_commands(README.read_text())
    assert [c.split()[1] for c in commands] == [command for command, _ in RECIPE_STEPS], commands
    librispeech_folder(cwd / "LibriSpeech" / "train-clean-100")
    records = {}
    for command, (_, name) in zip(commands, RECIPE_STEPS):
        args = shlex.split(command)
        assert args[0] == "soundstorm"
        args = [re.sub(r"^--config\.total_steps=\d+$", f"--config.total_steps={TRAIN_STEPS}", a) for a in args]
        result = cli(env, "--json", *args[1:], cwd=cwd, timeout=600)
        records[name] = json.loads(result.stdout.strip().splitlines()[-1])
    return cwd, records


@pytest.fixture(scope="module")
def codec_workdir(recipe):
    """The recipe's codec: `soundstorm train --config codec_tiny` for a few steps on its audio dataset."""
    return str(recipe[0] / "runs" / "codec")


@pytest.fixture(scope="module")
def soundstorm_workdir(recipe):
    """The recipe's SoundStorm: `soundstorm train --config tiny` for a few steps on the codes."""
    return str(recipe[0] / "runs" / "tiny")


# ---- help ----------------------------------------------------------------------------------------------------

def test_help_explains_every_subcommand(env):
    from soundstorm_jax.cli.main import main
    top = cli(env, "--help").stdout
    for command in COMMANDS:
        assert command in top
    expected = {"prepare": ["--audio", "--corpus", "--codec", "--encodec", "--out"],
                "train": ["--config", "--workdir", "--config.x.y=value"],
                "encode": ["--codec", "--encodec", "--resample", "--out"],
                "decode": ["--codec", "--encodec", "--length", "--out"],
                "generate": ["--num-samples", "--frames", "--seconds", "--prompt-codes", "--prompt-audio", "--semantic",
                             "--text", "--spectrogram", "--steps",
                             "--temperature", "--top-k", "--top-p", "--guidance-scale", "--seed", "--batch-size",
                             "--out", "--save-codes", "--requests", "--mesh"],
                "export": ["--codec", "--step"],
                "serve": ["--port", "--batch-window-ms", "--max-queue", "--timeout", "--max-body-mb"]}
    for command, options in expected.items():  # In this process: the console script is proven above.
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        for option in options:
            assert option in out.getvalue(), (command, option)
    assert cli(env, "no-such-command", expect=2).returncode == 2


def pixel(ax, seconds, hz):
    """The (row, column) of the image where `ax` draws time `seconds`, frequency `hz` (rows count from the top)."""
    from soundstorm_jax.codec.spectral import hz_to_mel
    x, y = ax.transData.transform((seconds, float(hz_to_mel(hz))))
    return int(round(ax.figure.bbox.height - y)), int(round(x))


def test_spectrogram_png_of_a_ten_second_clip(tmp_path):
    """A 500 Hz tone for 10 s: the PNG decodes at 800 x 300, and the tone's row is the bright one."""
    from PIL import Image

    from soundstorm_jax.cli import spectrogram
    audio = 0.5 * np.sin(2 * np.pi * 500 * np.arange(10 * RATE) / RATE)
    path = spectrogram.write_spectrogram(str(tmp_path / "s.png"), audio, RATE)  # One draw: well under a second.
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (800, 300)
        rgb = np.asarray(image.convert("RGB"), np.int32)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50  # Not blank: a colour map, labels, a colour bar.
    figure = spectrogram.figure(audio, RATE, title="s.png")
    np.testing.assert_array_equal(spectrogram.to_rgb(figure), rgb)  # The same picture, drawn: where the data lands.
    ax = figure.axes[0]
    brightness = [rgb[pixel(ax, 5.0, hz)].sum() for hz in (500, 250, 1000, 4000)]
    assert brightness[0] > 600 and max(brightness[1:]) < 200, brightness  # magma: loud is pale yellow, quiet black.
    row, column = pixel(ax, 10.0, 500)
    assert 700 < column < 800 and rgb[row, column - 3].sum() > 600  # The time axis ends at 10 s.


def test_spectrogram_marks_where_the_prompt_ends():
    """The same audio with and without a prompt: the pictures differ at the boundary's column only."""
    from matplotlib.lines import Line2D

    from soundstorm_jax.cli import spectrogram
    audio = 0.1 * np.random.default_rng(0).normal(size=2 * RATE)
    cut = RATE // 2  # 0.5 s of prompt.
    with_prompt = spectrogram.figure(audio[cut:], RATE, audio[:cut], title="t")
    without = spectrogram.figure(audio, RATE, title="t")
    a, b = (spectrogram.to_rgb(f).astype(np.int32) for f in (with_prompt, without))
    assert a.shape == b.shape == (300, 800, 3)
    ax = with_prompt.axes[0]
    (line,) = [artist for artist in ax.get_children() if isinstance(artist, Line2D) and artist.get_gid()]
    assert list(line.get_xdata()) == [0.5, 0.5]
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["prompt", "continuation"]
    top, column = pixel(ax, 0.5, RATE / 2)
    bottom, _ = pixel(ax, 0.5, 0)
    below_labels = slice(top + 20, bottom)  # The labels sit in the axes' top 20 pixels, beside the line.
    changed = np.flatnonzero(np.abs(a[below_labels] - b[below_labels]).sum(axis=(0, 2)))
    assert changed.size and changed.min() >= column - 2 and changed.max() <= column + 2, (changed, column)
    cyan = np.array([0x00, 0xe5, 0xff])
    drawn = (np.abs(a[below_labels, changed] - cyan).sum(axis=-1) < 60).mean(axis=0)
    assert drawn.max() > 0.4, drawn  # A cyan dashed line: about half of its column drawn.


def test_spectrogram_of_silence_with_a_users_title():
    """Silence stays dark (not 0 dB everywhere); a title with "$" and a newline is drawn as one plain line."""
    from soundstorm_jax.cli import spectrogram
    figure = spectrogram.figure(np.zeros(RATE), RATE, title="pays $5 for \\frac$\nX-Evil: 1")
    rgb = spectrogram.to_rgb(figure).astype(np.int32)  # As TeX (mathtext), "$5 for \frac$" would fail to draw.
    ax = figure.axes[0]
    assert ax.get_title() == "pays $5 for \\frac$ X-Evil: 1"
    assert rgb[pixel(ax, 0.5, 1000)].sum() < 60


def test_spectrogram_comparison_shares_one_scale():
    """TensorBoard's picture: reference over output, one dB scale (a silent output stays dark under a loud tone)."""
    from soundstorm_jax.cli import spectrogram
    tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(RATE) / RATE)
    figure = spectrogram.comparison_figure(tone, np.zeros(RATE // 2), RATE)
    rgb = spectrogram.to_rgb(figure).astype(np.int32)
    assert rgb.shape == (500, 800, 3)
    top, bottom = figure.axes[:2]
    assert (top.get_title(), bottom.get_title()) == ("reference", "output")
    assert top.get_xlim() == bottom.get_xlim() == (0.0, 1.0)  # The longer clip's time, for both.
    assert rgb[pixel(top, 0.25, 1000)].sum() > 600 and rgb[pixel(bottom, 0.25, 1000)].sum() < 60


def test_python_dash_m_runs_the_same_command(env):
    result = subprocess.run([sys.executable, "-m", "soundstorm_jax", "--help"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "generate" in result.stdout


# ---- prepare -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_own_audio_recipe_runs_as_written(recipe):
    cwd, records = recipe
    prepared, codes = records["prepare"], records["prepare_codes"]
    # Every file was read, MP3 included (9 train, 1 validation: the 5% validation fraction, at least one); the
    # two prepares share one audio dataset.
    assert prepared["command"] == codes["command"] == "prepare"
    assert prepared["audio_splits"] == codes["audio_splits"] == codes["codes_splits"] == {"train": 9, "validation": 1}
    assert codes["audio_dataset"] == prepared["audio_dataset"]
    assert (cwd / codes["codes_dataset"] / "codes_dataset").is_dir()
    assert records["codec_run"]["checkpoints"][-1] == records["soundstorm_run"]["checkpoints"][-1] == TRAIN_STEPS

    # SoundStorm took the codec's codebook, levels and frame rate from the codes dataset.
    config = json.loads((cwd / "runs" / "tiny" / "config.json").read_text())
    assert (config["model"]["codebook_size"], config["model"]["num_quantizers"]) == (CODEBOOK, LEVELS)
    assert config["data"]["frame_rate"] == RATE / HOP

    wavs = [f for f in records["generate"]["files"] if f.endswith(".wav")]
    assert len(wavs) == 2
    for path in wavs:  # --seconds 1 at 16 kHz
        audio, rate = soundfile.read(cwd / path, dtype="float32")
        assert rate == RATE and audio.shape == (RATE,) and np.all(np.isfinite(audio))

    prompt = np.load(cwd / records["encode"]["files"][0])
    assert prompt.ndim == 2 and prompt.shape[1] == LEVELS  # The prompt: 0.5 to 0.8 s at 2,000 frames/s.
    audio, rate = soundfile.read(cwd / records["generate_prompted"]["files"][0], dtype="float32")
    assert rate == RATE and audio.shape == (RATE,)
    audio, rate = soundfile.read(cwd / records["decode"]["files"][0], dtype="float32")
    assert rate == RATE and audio.shape == (len(prompt) * HOP,)


def test_prepare_builds_the_embedded_corpus(env, tmp_path):
    from soundstorm_jax.data import espeak_is_available
    if not espeak_is_available():
        pytest.skip("eSpeak NG (espeakng-loader) is not installed")
    result = cli(env, "--quiet", "--json", "prepare", "--corpus", "tiny", "--out", tmp_path / "corpus")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1  # One JSON object, nothing else on stdout.
    record = json.loads(lines[0])
    assert record["audio_splits"]["train"] > 0 and record["audio_splits"]["validation"] > 0
    assert record["audio_dataset"].startswith(str(tmp_path / "corpus"))
    assert os.path.isdir(os.path.join(record["audio_dataset"], "audio_folder"))


def test_prepare_bad_inputs(env, tmp_path):
    message = bad_input(env, "prepare", "--audio", tmp_path / "missing", "--out", tmp_path / "out")
    assert "missing" in message and "does not exist" in message
    (tmp_path / "empty").mkdir()
    message = bad_input(env, "prepare", "--audio", tmp_path / "empty", "--out", tmp_path / "out")
    assert "holds no audio files" in message
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "noise.wav").write_bytes(b"not a wav file at all")
    message = bad_input(env, "prepare", "--audio", tmp_path / "junk", "--out", tmp_path / "out2")
    assert "noise.wav" in message


# ---- encode / decode -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_encode_decode_round_trip(env, tmp_path, codec_workdir):
    soundfile.write(tmp_path / "a.wav", tone(0.1), RATE, subtype="PCM_16")
    soundfile.write(tmp_path / "b.flac", tone(0.05, freq=300), RATE)
    result = cli(env, "--json", "encode", tmp_path / "a.wav", tmp_path / "b.flac", "--codec", codec_workdir,
                 "--out", tmp_path / "codes")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["files"] == [str(tmp_path / "codes" / "a.npy"), str(tmp_path / "codes" / "b.npy")]
    assert record["hop_length"] == HOP
    a = np.load(tmp_path / "codes" / "a.npy")
    assert a.shape == (1600 // HOP, LEVELS) and np.issubdtype(a.dtype, np.integer)
    assert a.min() >= 0 and a.max() < CODEBOOK
    assert np.load(tmp_path / "codes" / "b.npy").shape == (800 // HOP, LEVELS)

    result = cli(env, "decode", tmp_path / "codes" / "a.npy", "--codec", codec_workdir, "--out", tmp_path / "wav")
    assert result.stdout.split() == [str(tmp_path / "wav" / "a.wav")]
    audio, rate = soundfile.read(tmp_path / "wav" / "a.wav")
    assert rate == RATE and audio.shape == (1600,) and np.all(np.isfinite(audio))

    # Wrong sample rate: refused with the fix, or resampled with --resample.
    soundfile.write(tmp_path / "slow.wav", tone(0.1, rate=8000), 8000, subtype="PCM_16")
    message = bad_input(env, "encode", tmp_path / "slow.wav", "--codec", codec_workdir)
    assert "8000 Hz" in message and "16000 Hz" in message and "--resample" in message
    cli(env, "--quiet", "encode", tmp_path / "slow.wav", "--codec", codec_workdir, "--resample")
    assert np.load(tmp_path / "slow.npy").shape == (1600 // HOP, LEVELS)

    # Unreadable audio, out-of-range codes.
    (tmp_path / "text.wav").write_text("hello")
    assert "text.wav" in bad_input(env, "encode", tmp_path / "text.wav", "--codec", codec_workdir)
    np.save(tmp_path / "big.npy", np.full((5, LEVELS), 99, np.int16))
    assert "big.npy" in bad_input(env, "decode", tmp_path / "big.npy", "--codec", codec_workdir)


def test_encode_decode_bad_inputs_before_loading_anything(env, tmp_path):
    message = bad_input(env, "encode", tmp_path / "nope.wav", "--codec", tmp_path)
    assert "nope.wav" in message and "does not exist" in message
    message = bad_input(env, "decode", tmp_path / "nope.npy", "--codec", tmp_path)
    assert "nope.npy" in message
    soundfile.write(tmp_path / "a.wav", tone(0.05), RATE)
    message = bad_input(env, "encode", tmp_path / "a.wav", "--codec", tmp_path / "no_codec")
    assert "no_codec" in message


# ---- generate ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_generate_writes_codes_and_audio(env, tmp_path, soundstorm_workdir, codec_workdir):
    result = cli(env, "--json", "generate", soundstorm_workdir, "--num-samples", 3, "--batch-size", 2,
                 "--frames", 12, "--steps", "2,1,1,1", "--temperature", 0.8, "--top-k", 8, "--seed", 1,
                 "--out", tmp_path / "codes")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    files = [str(tmp_path / "codes" / f"sample_{i:03d}.npy") for i in range(3)]
    assert record["files"] == files
    samples = [np.load(f) for f in files]
    for codes in samples:
        assert codes.shape == (12, LEVELS) and codes.min() >= 0 and codes.max() < CODEBOOK

    # An acoustic prompt is kept; a codec gives WAVs (+ codes with --save-codes); the same seed, the same codes.
    prompt = samples[0][:4, :2]
    np.save(tmp_path / "prompt.npy", prompt)
    result = cli(env, "generate", soundstorm_workdir, "--num-samples", 2, "--seconds", 0.008,
                 "--prompt-codes", tmp_path / "prompt.npy", "--codec", codec_workdir, "--save-codes",
                 "--spectrogram", "--top-p", 0.9, "--seed", 1, "--out", tmp_path / "audio")
    written = result.stdout.split()
    assert written == [str(tmp_path / "audio" / f"sample_{i:03d}.{ext}") for i in range(2)
                       for ext in ("npy", "wav", "png")]
    from PIL import Image
    with Image.open(tmp_path / "audio" / "sample_000.png") as image:
        assert image.format == "PNG" and image.size == (800, 300)
    for i in range(2):
        codes = np.load(tmp_path / "audio" / f"sample_{i:03d}.npy")
        assert codes.shape == (16, LEVELS)  # 0.008 s x 16 kHz / hop 8.
        np.testing.assert_array_equal(codes[:4, :2], prompt)
        audio, rate = soundfile.read(tmp_path / "audio" / f"sample_{i:03d}.wav")
        assert rate == RATE and audio.shape == (128,) and np.all(np.isfinite(audio))

    # A prompt WAV at another rate: resampled with a notice, encoded, kept.
    soundfile.write(tmp_path / "prompt8k.wav", tone(0.004, rate=8000), 8000, subtype="PCM_16")
    result = cli(env, "--json", "generate", soundstorm_workdir, "--frames", 16, "--prompt-audio",
                 tmp_path / "prompt8k.wav", "--codec", codec_workdir, "--save-codes", "--out", tmp_path / "p")
    assert "note: prompt audio" in result.stderr and "8000 Hz" in result.stderr
    assert json.loads(result.stdout)["files"][-1].endswith("sample_000.wav")
    cli(env, "--quiet", "encode", tmp_path / "prompt8k.wav", "--codec", codec_workdir, "--resample",
        "--out", tmp_path / "p")
    np.testing.assert_array_equal(np.load(tmp_path / "p" / "sample_000.npy")[:8],
                                  np.load(tmp_path / "p" / "prompt8k.npy"))

    # Bad inputs, after the model is loaded.
    message = bad_input(env, "encode", tmp_path / "prompt8k.wav", "--codec", soundstorm_workdir)
    assert "holds a 'soundstorm' run, not a 'codec' one" in message
    np.save(tmp_path / "huge.npy", np.full((4, 2), CODEBOOK, np.int16))
    message = bad_input(env, "generate", soundstorm_workdir, "--frames", 12, "--prompt-codes", tmp_path / "huge.npy",
                        "--out", tmp_path / "x")
    assert "prompt" in message and f"[0, {CODEBOOK})" in message
    np.save(tmp_path / "semantic.npy", np.arange(6, dtype=np.int32))
    message = bad_input(env, "generate", soundstorm_workdir, "--semantic", tmp_path / "semantic.npy",
                        "--out", tmp_path / "x")
    assert "semantic" in message
    message = bad_input(env, "generate", soundstorm_workdir, "--text", "Hello there.", "--out", tmp_path / "x")
    assert "--text needs a model trained on semantic tokens" in message
    message = bad_input(env, "generate", codec_workdir, "--frames", 8, "--out", tmp_path / "x")
    assert "'codec' run" in message


def test_generate_bad_inputs(env, tmp_path):
    message = bad_input(env, "generate", tmp_path, "--seconds", 1, "--out", tmp_path / "x")
    assert "--seconds needs a codec" in message
    message = bad_input(env, "generate", tmp_path, "--frames", 8, "--prompt-codes", tmp_path / "p.npy",
                        "--out", tmp_path / "x")
    assert "p.npy" in message and "does not exist" in message
    message = bad_input(env, "generate", tmp_path / "nowhere", "--frames", 8, "--out", tmp_path / "x")
    assert "nowhere" in message
    message = bad_input(env, "generate", tmp_path, "--frames", 8, "--steps", "two", "--out", tmp_path / "x")
    assert "--steps" in message
    message = bad_input(env, "generate", tmp_path, "--out", tmp_path / "x")
    assert "--frames" in message
    message = bad_input(env, "generate", tmp_path, "--text", "caf\u00e9 \u2603", "--out", tmp_path / "x")
    assert "cannot speak" in message and "\u2603" in message
    (tmp_path / "a_file").write_text("")
    message = bad_input(env, "generate", tmp_path, "--frames", 8, "--out", tmp_path / "a_file" / "sub")
    assert "cannot create output folder" in message
    message = bad_input(env, "generate", tmp_path, "--frames", 8, "--spectrogram")
    assert "--spectrogram needs a codec" in message
    message = bad_input(env, "generate", tmp_path, "--frames", 8, "--prompt-audio", tmp_path / "p.wav")
    assert "--prompt-audio needs a codec" in message
    result = cli(env, "--debug", "generate", tmp_path, "--seconds", 1, expect=2)
    assert "Traceback" in result.stderr  # --debug shows where the error came from.
    result = cli(env, "--json", "generate", tmp_path, "--seconds", 1, expect=2)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record == {"command": "generate", "error": record["error"], "exit_code": 2}
    assert "--seconds needs a codec" in record["error"]


# ---- export --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_an_export_generates_what_its_workdirs_generate(env, tmp_path, soundstorm_workdir, codec_workdir):
    """`soundstorm export` writes the inference variables only; every command and `soundstorm_jax.load` take
    the export in place of the workdirs and give the same samples."""
    import jax
    import soundstorm_jax
    from soundstorm_jax.cli.main import main
    from soundstorm_jax.training import restore
    out = tmp_path / "exported"
    result = cli(env, "--json", "export", soundstorm_workdir, out, "--codec", codec_workdir)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["kind"], report["step"], report["codec"]["kind"]) == ("soundstorm", TRAIN_STEPS, "codec")
    for part in (report, report["codec"]):  # No optimizer state, no discriminators: a fraction of the checkpoint.
        assert part["export_bytes"] < 0.5 * part["checkpoint_bytes"], part
    assert sorted(os.listdir(out)) == ["codec", "config.json", "export.json", "params"]

    def generated(workdir, codec, folder, *extra):
        args = ["--quiet", "generate", str(workdir), "--codec", str(codec), "--frames", "12", "--num-samples", "2",
                "--seed", "4", "--save-codes", "--out", str(tmp_path / folder), *extra]
        assert main(args) == 0
        return [np.load(tmp_path / folder / f"sample_{i:03d}.npy") for i in range(2)]

    # This process has 8 devices: --mesh's default splits each batch over all of them (padded to 8 examples);
    # one device (--mesh data=1) gives the same samples.
    for a, b, c in zip(generated(out, out / "codec", "from_export"),
                       generated(soundstorm_workdir, codec_workdir, "from_workdirs"),
                       generated(out, out / "codec", "one_device", "--mesh", "data=1")):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    message = bad_input(env, "generate", out, "--frames", "4", "--mesh", "data=3", "--out", tmp_path / "x")
    assert "--mesh 'data=3' does not fit the 8 local devices" in message, message
    assert "--mesh 'tensr=2'" in bad_input(env, "generate", out, "--frames", "4", "--mesh", "tensr=2",
                                           "--out", tmp_path / "x")

    model, variables, config, codec = soundstorm_jax.load(str(out))
    assert codec.sample_rate == RATE and config.model.num_quantizers == LEVELS
    trained_model, trained_variables, _ = restore.load_soundstorm(soundstorm_workdir)
    key = jax.random.key(7)
    np.testing.assert_array_equal(np.asarray(model.generate(variables, 12, batch_size=2, key=key)),
                                  np.asarray(trained_model.generate(trained_variables, 12, batch_size=2, key=key)))

    assert "not an empty folder" in bad_input(env, "export", soundstorm_workdir, out)
    assert "does not exist" in bad_input(env, "export", tmp_path / "missing", tmp_path / "new")
    assert f"export of step {TRAIN_STEPS}, not 1" in bad_input(env, "generate", out, "--step", "1", "--frames", "4",
                                                  "--out", tmp_path / "x")


# ---- request files -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_generate_a_request_file(env, tmp_path, soundstorm_workdir, codec_workdir):
    """`generate --requests`: one WAV per good line, the bad line skipped and named in the report (exit 0)."""
    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"name": "one", "frames": 12, "seed": 1}\n{"frames": 12, "top_p": 2}\n'
                        '{"id": "three", "seconds": 0.006, "codes": true}\n')
    result = cli(env, "--json", "generate", soundstorm_workdir, "--codec", codec_workdir, "--requests", requests,
                 "--out", tmp_path / "out")
    report = json.loads(result.stdout)
    assert report == json.loads((tmp_path / "out" / "report.json").read_text()) | {
        "command": "generate", "workdir": soundstorm_workdir}
    assert report["requests"] == {"read": 3, "done": 2, "failed": 1}
    assert [(f["line"], f["field"]) for f in report["failures"]] == [(2, "top_p")]
    assert sorted(os.listdir(tmp_path / "out")) == ["one.wav", "report.json", "three.npy", "three.wav"]
    for name in ("one", "three"):
        audio, rate = soundfile.read(tmp_path / "out" / f"{name}.wav")
        assert rate == RATE and audio.shape == (12 * HOP,)
    assert np.load(tmp_path / "out" / "three.npy").shape == (12, LEVELS)


# ---- serve ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_serve_answers_over_http_and_stops_cleanly_on_sigterm(env, soundstorm_workdir, codec_workdir):
    """`soundstorm serve` on a free port: one line with the URL once warm, one request answered with its WAV,
    then SIGTERM: exit 0 with no traceback."""
    import select
    import signal
    import socket
    import urllib.request

    with socket.socket() as probe:  # A free port for the command to bind (released just before).
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(soundstorm_command() + ["serve", soundstorm_workdir, "--codec", codec_workdir,
                                                      "--port", str(port), "--max-seconds", "0.5"],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([server.stdout], [], [], 240)
        line = server.stdout.readline() if ready else ""
        assert f"http://127.0.0.1:{port}" in line, (line, server.poll())
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/generate?format=wav", method="POST",
                                         data=json.dumps({"id": "hi", "frames": 12, "seed": 1}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.headers["X-Request-Id"] == "hi" and response.headers["X-Frames"] == "12"
            wav = response.read()
        audio, rate = soundfile.read(io.BytesIO(wav))
        assert rate == RATE and audio.shape == (12 * HOP,)
        if shutil.which("curl"):  # As the README's curl line: a form-encoded body is read as JSON all the same.
            curl = subprocess.run(["curl", "-s", f"localhost:{port}/v1/generate?format=wav",
                                   "-d", '{"frames": 12, "seed": 1}'], capture_output=True, timeout=120)
            assert curl.returncode == 0 and curl.stdout == wav  # The same request, the same WAV.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=30) as response:
            assert json.loads(response.read())["max_frames"] == 0.5 * RATE // HOP  # --max-seconds at 2000 frames/s.
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, server.stderr.read()[-4000:]
        assert "Traceback" not in server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
