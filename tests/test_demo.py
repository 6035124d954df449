"""The package as a user installs it: `pip install .` (not editable) into a fresh virtual environment, then
`soundstorm demo`, `generate`, `encode`, `decode` and `train` from a folder outside the checkout.

Two demo runs are shared by the module. The default one starts from the weights shipped in the package
(soundstorm_jax/pretrained/demo): the tests check that the wheel carries them, that they meet the issue's
targets on the demo's own recognizer and reproduce the figures on their card, and drive `generate` on them.
A short `--from-scratch` run trains for a fixed number of steps (the same work however busy the machine is):
the tests check its report and resume its checkpoints with `soundstorm train`. The virtual environment sees
the system's site-packages for the dependencies (no downloads), but soundstorm_jax itself comes only from the
wheel pip built: the source tree is not on the path.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
from test_cli import bad_input, env  # noqa: F401 (env: the subprocesses' environment fixture, used by name)
from soundstorm_jax import export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODEC_STEPS, SOUNDSTORM_STEPS = 3, 3  # the --from-scratch run
HOP, RATE = 320, 16000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A virtual environment with soundstorm-jax installed from this checkout by `pip install .`."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                          "--disable-pip-version-check", ROOT], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return venv


def installed_cli(env, *args, expect=0, cwd=None, timeout=300, venv=None):
    """The installed console script, run from a folder outside the checkout."""
    result = subprocess.run([str(venv / "bin" / "soundstorm"), *map(str, args)], env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == expect, (result.returncode, result.stdout[-2000:], result.stderr[-4000:])
    return result


@pytest.fixture(scope="module")
def run(installed, env, tmp_path_factory):
    """`cli` bound to the installed package and a working directory outside the checkout."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    # optimized=True: XLA's default level and fusion emitters (the flags the shipped weights' card was measured
    # with), for every `demo` run: encoding the corpus, scoring and listening outweigh their compiles (a 3-step
    # --from-scratch demo: 85 CPU-s against 104 at -O0). The commands that reuse a demo run's codec or train step
    # (encode, decode, the resumed `train`) take the same flags, so their compiles come from the suite's cache.
    # The rest (generate, a new `train --config tiny`) are mostly compiling: test_cli's -O0 compiles suit them.
    optimized_env = dict(env, XLA_FLAGS=" ".join(
        flag for flag in env["XLA_FLAGS"].split()
        if flag not in ("--xla_cpu_use_fusion_emitters=false", "--xla_backend_optimization_level=0")))

    def run(*args, expect=0, timeout=300, optimized=False):
        return installed_cli(optimized_env if optimized else env, *args, expect=expect, cwd=cwd, timeout=timeout,
                             venv=installed)
    return run


@pytest.fixture(scope="module")
def demo(tmp_path_factory, run):
    """`soundstorm demo` with default flags: the shipped weights, as many samples as their card's run."""
    out = tmp_path_factory.mktemp("demo")
    result = run("--json", "demo", "--out", out, timeout=900, optimized=True)
    return out, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, run):
    out = tmp_path_factory.mktemp("scratch")
    result = run("--json", "demo", "--out", out, "--codec-steps", CODEC_STEPS, "--soundstorm-steps",
                 SOUNDSTORM_STEPS, "--samples", 1, timeout=900, optimized=True)
    return out, json.loads(result.stdout.strip().splitlines()[-1])


def test_the_installed_package_is_the_wheel_not_the_source_tree(installed, tmp_path):
    where = subprocess.run([str(installed / "bin" / "python"), "-c",
                            "import soundstorm_jax.configs.tiny as t, soundstorm_jax as s, soundstorm_jax.pretrained as p; "
                            "print(s.__file__, t.__file__, p.demo_weights().path)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()
    assert all(path.startswith(str(installed)) and not path.startswith(ROOT + os.sep) for path in where), where
    check = subprocess.run([str(installed / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout  # Every declared dependency is there.


def test_demo_writes_speech_like_wavs_of_the_right_length(demo):
    from soundstorm_jax.data import phonemize

    out, report = demo
    assert len(report["samples"]) == 3  # the default
    prompt_frames = report["held_out"]["prompt_frames"]
    for sample in report["samples"]:
        audio, rate = soundfile.read(sample["wav"], dtype="float32")
        assert rate == RATE and audio.ndim == 1
        assert np.all(np.isfinite(audio))
        rms = float(np.sqrt(np.mean(audio ** 2)))
        assert rms > 1e-3, f"{sample['wav']} is silent (rms {rms})"
        assert np.abs(audio).max() < 1.0 or rms < 0.5  # not saturated noise
        # Prompt frames + one frame per phoneme frame of the sentence, spoken in the prompt's voice.
        from soundstorm_jax.data.espeak_corpus import utterances
        script = {u.id: u for u in utterances("tiny", 0)}
        utt = script[os.path.basename(sample["prompt_from"])]
        frames = prompt_frames + len(phonemize(sample["text"], voice=utt.speaker.voice, rate=utt.rate,
                                               pitch=utt.pitch, frame_rate=50.0).frame_ids)
        assert audio.shape == (frames * HOP,)
        prompt, prompt_rate = soundfile.read(sample["prompt_wav"], dtype="float32")
        assert prompt_rate == RATE and prompt.shape == (prompt_frames * HOP,)
        with open(sample["spectrogram"], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.dirname(sample["wav"]) == str(out / "samples")


def test_the_shipped_weights_meet_the_targets_and_reproduce_their_card(demo):
    """Issue 16's targets on the demo's own recognizer, and the figures tools/train_demo_weights.py recorded."""
    from soundstorm_jax import pretrained

    out, report = demo
    card = pretrained.demo_weights().card
    assert report["weights"] == {"codec": "shipped", "soundstorm": "shipped"}
    assert report["shipped"]["command"] == card["command"]
    assert (report["codec"]["steps"], report["soundstorm"]["steps"]) == (card["codec_steps"], card["soundstorm_steps"])
    rows = report["held_out_accuracy"]
    assert [r["level"] for r in rows] == list(range(1, 7))
    assert all(r["accuracy"] > r["unigram"] for r in rows), rows  # every level beats its unigram baseline
    speech = report["speech"]["intelligibility"]
    assert speech["originals"]["accuracy"] > 0.4  # the recognizer works on the held-out voice
    assert speech["reconstruction_ratio"] >= 0.75, speech  # the codec keeps 3/4 of what the recognizer hears
    assert speech["generated_ratio"] >= 0.65, speech
    assert speech["wrong_sentence"]["accuracy"] < speech["generated"]["accuracy"] / 3
    # The held-out voice's own pitch and voice, in the reconstructions and in the generated speech.
    pitch, voice = report["speech"]["pitch"], report["speech"]["voice"]
    assert abs(pitch["reconstruction_ratio"] - 1) < 0.15 and abs(pitch["generated_ratio"] - 1) < 0.15, pitch
    assert voice["reconstructions"]["mean_rank"] < 1.5 and voice["generated"]["mean_rank"] < 1.5, voice
    # The card's run trained these weights and measured them the same way; other XLA flags may move a frame.
    expected = card["figures"]
    for name in ("originals", "reconstructions", "generated", "wrong_sentence"):
        assert abs(speech[name]["accuracy"] - expected["speech"]["intelligibility"][name]["accuracy"]) < 0.03, name
    for row, card_row in zip(rows, expected["held_out_accuracy"]):
        assert abs(row["accuracy"] - card_row["accuracy"]) < 0.02 and row["unigram"] == card_row["unigram"]
    assert abs(report["codec"]["snr_db"] - expected["codec"]["snr_db"]) < 0.2
    markdown = (out / "report.md").read_text()
    assert "Weights: codec shipped, SoundStorm shipped." in markdown and card["command"] in markdown


def test_a_from_scratch_demo_trains_both_models_and_reports_everything(scratch):
    out, report = scratch
    assert report["weights"] == {"codec": "trained in this run", "soundstorm": "trained in this run"}
    rows = report["held_out_accuracy"]
    assert [r["level"] for r in rows] == list(range(1, 7))
    assert all(0 <= r["accuracy"] <= 1 and r["unigram"] > 0 for r in rows)
    assert (report["codec"]["steps"], report["soundstorm"]["steps"]) == (CODEC_STEPS, SOUNDSTORM_STEPS)
    assert np.isfinite(report["codec"]["snr_db"]) and np.isfinite(report["codec"]["log_spectral_distance_db"])
    assert set(report["stage_seconds"]) == {"corpus", "codec", "encode", "soundstorm", "evaluate", "generate",
                                            "listen"}
    markdown = (out / "report.md").read_text()
    assert "| level | accuracy | unigram | ratio |" in markdown and "| total |" in markdown
    assert "Weights: codec trained in this run, SoundStorm trained in this run." in markdown
    # The recognizer's and the voice measure's figures (evaluation/): present, finite, in range.
    speech = report["speech"]
    for name in ("originals", "reconstructions", "generated", "wrong_sentence"):
        assert 0 <= speech["intelligibility"][name]["accuracy"] <= 1 and speech["intelligibility"][name]["frames"] > 0
    assert np.isfinite(speech["intelligibility"]["reconstruction_ratio"])
    assert np.isfinite(speech["intelligibility"]["generated_ratio"])
    assert speech["voice"]["voices"] == 6
    for name in ("originals", "reconstructions", "generated"):
        assert 1 <= speech["voice"][name]["mean_rank"] <= 6 and np.isfinite(speech["voice"][name]["mean_margin"])
        assert np.isfinite(speech["voice"][name]["mean_distance"])
    for sample in report["samples"]:
        assert 0 <= sample["accuracy"] <= 1 and 0 <= sample["wrong_sentence_accuracy"] <= 1
        assert 1 <= sample["voice_rank"] <= 6 and np.isfinite(sample["voice_margin"])
    assert "## Intelligibility and voice (held-out voice)" in markdown
    assert "| held-out originals | their own |" in markdown and "| generated | another sentence's |" in markdown


def test_generate_from_text_and_semantic_files_on_the_demo_model(demo, run, tmp_path):
    out, report = demo
    model, codec = out / "soundstorm", out / "codec"
    prompt_wav = report["samples"][0]["prompt_wav"]
    from soundstorm_jax.data import phonemize
    prompt_frames = report["held_out"]["prompt_frames"]
    frames = prompt_frames + len(phonemize("The blue boat sails home.", frame_rate=50.0).frame_ids)
    for extra in ([], ["--prompt-text", report["samples"][0]["text"]]):
        out_dir = tmp_path / f"text{len(extra)}"
        result = run("--json", "generate", model, "--codec", codec, "--text", "The blue boat sails home.",
                     "--prompt-audio", prompt_wav, "--num-samples", 2, "--seed", 3, "--spectrogram",
                     "--out", out_dir, *extra)
        record = json.loads(result.stdout)
        wavs = [f for f in record["files"] if f.endswith(".wav")]
        assert len(wavs) == 2 and record["sample_rate"] == RATE
        for path in wavs:  # The prompt's frames, then the sentence's.
            audio, rate = soundfile.read(path, dtype="float32")
            assert rate == RATE and audio.shape == (frames * HOP,) and np.all(np.isfinite(audio))
            assert np.sqrt(np.mean(audio ** 2)) > 1e-3

    ids = phonemize("Seven green birds.", frame_rate=50.0).frame_ids
    np.save(tmp_path / "semantic.npy", ids)
    result = run("--json", "generate", model, "--codec", codec, "--semantic", tmp_path / "semantic.npy",
                 "--steps", "4,1,1,1,1,1", "--out", tmp_path / "semantic")
    audio, _ = soundfile.read(json.loads(result.stdout)["files"][0], dtype="float32")
    assert audio.shape == (len(ids) * HOP,)

    # Text the phonemiser cannot speak: exit 2, one line, before the model is loaded.
    bad_input(None, "generate", model, "--codec", codec, "--text", "ok \u4f60\u597d", "--out", tmp_path / "x")
    assert "--prompt-text goes with --text and a prompt" in bad_input(
        None, "generate", model, "--codec", codec, "--text", "Hello.", "--prompt-text", "Hi.", "--out", tmp_path / "x")


def test_demo_bad_inputs(tmp_path):
    """Refused before anything is built or written. Run by `main` in this process (test_cli.bad_input): the
    package's own code and exit status, without a fresh interpreter's imports per case."""
    assert "--minutes must be at least" in bad_input(None, "demo", "--minutes", 1, "--out", tmp_path / "a")
    assert "--codec-steps must be positive" in bad_input(None, "demo", "--codec-steps", 0, "--out", tmp_path / "a")
    # A corpus that holds out a voice the shipped weights were trained on: their figures would not be held-out ones.
    from soundstorm_jax import pretrained
    from soundstorm_jax.data.espeak_corpus import utterances
    trained_on = set(pretrained.demo_weights().heard_speakers)
    seed = next(seed for seed in range(1, 1000) if any(
        u.split != "train" and u.speaker.name in trained_on for u in utterances("tiny", seed)))
    assert "add --from-scratch" in bad_input(None, "demo", "--seed", seed, "--out", tmp_path / "c")
    (tmp_path / "b" / "codec").mkdir(parents=True)
    (tmp_path / "b" / "codec" / "config.json").write_text("{}")
    assert "already holds a run" in bad_input(None, "demo", "--out", tmp_path / "b")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "cannot create output folder" in bad_input(None, "demo", "--out", blocker / "sub")
    message = bad_input(None, "demo", "--codec", tmp_path / "b", "--out", tmp_path / "d")
    assert "--codec" in message and "is not a codec workdir or export" in message
    assert "exclude each other" in bad_input(None, "demo", "--codec", tmp_path / "b", "--codec-steps", 2,
                                             "--out", tmp_path / "d")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_a_given_codec_is_exported_into_the_run_and_only_soundstorm_trains(scratch, run, tmp_path):
    """`--codec DIR` (how tools/train_demo_weights.py brings a codec trained on more voices): the from-scratch run's
    codec workdir becomes OUT/codec as an export and measures what it measured there."""
    scratch_out, scratch_report = scratch
    # The scratch run's SoundStorm steps: the same train step, so its compile comes from the suite's compilation cache.
    result = run("--json", "demo", "--codec", scratch_out / "codec", "--soundstorm-steps", SOUNDSTORM_STEPS,
                 "--samples", 1, "--out", tmp_path / "given", timeout=900, optimized=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["weights"] == {"codec": f"given ({scratch_out / 'codec'})", "soundstorm": "trained in this run"}
    assert (report["codec"]["steps"], report["soundstorm"]["steps"]) == (CODEC_STEPS, SOUNDSTORM_STEPS)
    assert export.is_export(tmp_path / "given" / "codec")
    assert abs(report["codec"]["snr_db"] - scratch_report["codec"]["snr_db"]) < 0.01
    assert f"codec given ({scratch_out / 'codec'})" in report["budget"]


def test_encode_decode_and_resumed_training_on_the_demo_runs(scratch, run, tmp_path):
    """The other subcommands on the corpus-trained runs: encode/decode a held-out voice, train on from a checkpoint."""
    out, report = scratch
    prompt_wav = report["samples"][0]["prompt_wav"]
    run("--quiet", "encode", prompt_wav, "--codec", out / "codec", "--out", tmp_path, optimized=True)
    codes = np.load(tmp_path / "sample_000_prompt.npy")
    assert codes.shape == (report["held_out"]["prompt_frames"], 6) and 0 <= codes.min() and codes.max() < 256
    run("--quiet", "decode", tmp_path / "sample_000_prompt.npy", "--codec", out / "codec", "--out", tmp_path,
        optimized=True)
    audio, rate = soundfile.read(tmp_path / "sample_000_prompt.wav", dtype="float32")
    assert rate == RATE and audio.shape == (len(codes) * HOP,) and np.all(np.isfinite(audio))

    # `soundstorm train` resumes the demo's SoundStorm run from its last checkpoint for one more step (the
    # repository path of a packaged config works from any folder).
    result = run("--json", "train", "--config", "configs/demo.py", "--workdir", out / "soundstorm",
                 f"--config.data.dir={out / 'data' / 'codes'}", f"--config.total_steps={SOUNDSTORM_STEPS + 1}",
                 "--config.checkpoint.every_steps=1", "--config.logging.every_steps=1", optimized=True)
    assert json.loads(result.stdout.strip().splitlines()[-1])["checkpoints"][-1] == SOUNDSTORM_STEPS + 1

    # A packaged config by name, trained from scratch on the demo's codes (its codebook and levels set to match).
    result = run("--json", "train", "--config", "tiny", "--workdir", tmp_path / "tiny",
                 f"--config.data.dir={out / 'data' / 'codes'}", "--config.model.codebook_size=256",
                 "--config.model.num_quantizers=6", "--config.total_steps=1", "--config.checkpoint.every_steps=1",
                 "--config.logging.eval_every_steps=100", "--config.model.conformer.depth=1")
    assert json.loads(result.stdout.strip().splitlines()[-1])["checkpoints"] == [1]
