"""`soundstorm demo`, end to end through the real console script, and `generate --text` on what it trained.

One short demo run is shared by the module. It trains for a fixed number of
steps (--codec-steps / --soundstorm-steps), so it does the same work however
busy the machine is, and its result does not depend on the clock: the tests check
its WAVs, spectrograms and report, then drive `soundstorm generate` with text
and semantic files on the phoneme-conditioned model it trained.
"""
import json
import os

import numpy as np
import pytest
import soundfile
from test_cli import cli, env  # noqa: F401 (env: the subprocesses' environment fixture)

CODEC_STEPS, SOUNDSTORM_STEPS = 150, 200
HOP, RATE = 320, 16000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory, env):
    out = tmp_path_factory.mktemp("demo")
    result = cli(env, "--json", "demo", "--out", out, "--codec-steps", CODEC_STEPS, "--soundstorm-steps",
                 SOUNDSTORM_STEPS, "--samples", 2, timeout=1200)
    return out, json.loads(result.stdout.strip().splitlines()[-1])


def test_demo_writes_speech_like_wavs_of_the_right_length(demo):
    from soundstorm_jax.data import phonemize

    out, report = demo
    assert len(report["samples"]) == 2
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


def test_demo_report_beats_the_unigram_baseline(demo):
    out, report = demo
    rows = report["held_out_accuracy"]
    assert [r["level"] for r in rows] == list(range(1, 7))
    accuracy = np.array([r["accuracy"] for r in rows])
    unigram = np.array([r["unigram"] for r in rows])
    assert accuracy[0] > unigram[0], rows
    assert accuracy.mean() > unigram.mean(), rows
    assert (report["codec"]["steps"], report["soundstorm"]["steps"]) == (CODEC_STEPS, SOUNDSTORM_STEPS)
    assert np.isfinite(report["codec"]["snr_db"]) and np.isfinite(report["codec"]["log_spectral_distance_db"])
    assert set(report["stage_seconds"]) == {"corpus", "codec", "encode", "soundstorm", "evaluate", "generate"}
    markdown = (out / "report.md").read_text()
    assert "| level | accuracy | unigram | ratio |" in markdown and "| total |" in markdown


def test_generate_from_text_and_semantic_files_on_the_demo_model(demo, env, tmp_path):
    out, report = demo
    model, codec = out / "soundstorm", out / "codec"
    prompt_wav = report["samples"][0]["prompt_wav"]
    from soundstorm_jax.data import phonemize
    prompt_frames = report["held_out"]["prompt_frames"]
    frames = prompt_frames + len(phonemize("The blue boat sails home.", frame_rate=50.0).frame_ids)
    for extra in ([], ["--prompt-text", report["samples"][0]["text"]]):
        out_dir = tmp_path / f"text{len(extra)}"
        result = cli(env, "--json", "generate", model, "--codec", codec, "--text", "The blue boat sails home.",
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
    result = cli(env, "--json", "generate", model, "--codec", codec, "--semantic", tmp_path / "semantic.npy",
                 "--steps", "4,1,1,1,1,1", "--out", tmp_path / "semantic")
    audio, _ = soundfile.read(json.loads(result.stdout)["files"][0], dtype="float32")
    assert audio.shape == (len(ids) * HOP,)

    # Text the phonemiser cannot speak: exit 2, one line, before the model is loaded.
    result = cli(env, "generate", model, "--codec", codec, "--text", "ok \u4f60\u597d", "--out", tmp_path / "x",
                 expect=2)
    assert "Traceback" not in result.stderr and result.stderr.count("error: ") == 1
    result = cli(env, "generate", model, "--codec", codec, "--text", "Hello.", "--prompt-text", "Hi.",
                 "--out", tmp_path / "x", expect=2)
    assert "--prompt-text goes with --text and a prompt" in result.stderr


def test_demo_bad_inputs(env, tmp_path):
    result = cli(env, "demo", "--minutes", 1, "--out", tmp_path / "a", expect=2)
    assert "--minutes must be at least" in result.stderr and "Traceback" not in result.stderr
    result = cli(env, "demo", "--codec-steps", 0, "--out", tmp_path / "a", expect=2)
    assert "--codec-steps must be positive" in result.stderr
    (tmp_path / "b" / "codec").mkdir(parents=True)
    (tmp_path / "b" / "codec" / "config.json").write_text("{}")
    result = cli(env, "demo", "--out", tmp_path / "b", expect=2)
    assert "already holds a run" in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = cli(env, "demo", "--out", blocker / "sub", expect=2)
    assert "cannot create output folder" in result.stderr


def test_encode_decode_and_resumed_training_on_the_demo_runs(demo, env, tmp_path):
    """The other subcommands on the corpus-trained runs: encode/decode a held-out voice, train on from a checkpoint."""
    out, report = demo
    prompt_wav = report["samples"][0]["prompt_wav"]
    cli(env, "--quiet", "encode", prompt_wav, "--codec", out / "codec", "--out", tmp_path)
    codes = np.load(tmp_path / "sample_000_prompt.npy")
    assert codes.shape == (report["held_out"]["prompt_frames"], 6) and 0 <= codes.min() and codes.max() < 256
    cli(env, "--quiet", "decode", tmp_path / "sample_000_prompt.npy", "--codec", out / "codec", "--out", tmp_path)
    audio, rate = soundfile.read(tmp_path / "sample_000_prompt.wav", dtype="float32")
    assert rate == RATE and audio.shape == (len(codes) * HOP,) and np.all(np.isfinite(audio))

    # `soundstorm train` resumes the demo's SoundStorm run from its last checkpoint for one more step.
    result = cli(env, "--json", "train", "--config", "configs/demo.py", "--workdir", out / "soundstorm",
                 f"--config.data.dir={out / 'data' / 'codes'}", f"--config.total_steps={SOUNDSTORM_STEPS + 1}",
                 "--config.checkpoint.every_steps=1", "--config.logging.every_steps=1")
    assert json.loads(result.stdout.strip().splitlines()[-1])["checkpoints"][-1] == SOUNDSTORM_STEPS + 1
