"""The command line's messages for the interface in use (issue 17, points 4 and 5).

No silent overwrite (two inputs that would write one output file are refused), a directory where a file is
expected says so, advice names the command's flags (not the sampler's Python arguments), a failed command
removes the output folders it created (never one holding anything), and other libraries' log lines are hidden
unless --verbose. Bad input runs `main` in this process (as tests/test_cli.py's `bad_input`); only the log-noise
test runs the console script, on a two-step tiny codec.
"""
import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import soundfile

from test_cli import RATE, ROOT, TRAIN_STEPS, env, soundstorm_command, tone, write_wavs  # noqa: F401


def run_main(*args):
    """(exit status, stdout, stderr) of `soundstorm ARGS` run in this process."""
    from soundstorm_jax.cli.main import main
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in args])
    return code, stdout.getvalue(), stderr.getvalue()


def bad_input(*args):
    """Exit status 2 with one `error: ...` line and no traceback; returns the message."""
    code, stdout, stderr = run_main(*args)
    assert code == 2, (code, stdout[-2000:], stderr[-4000:])
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


# ---- no silent overwrite -------------------------------------------------------------------------------------

def test_encode_and_decode_refuse_two_inputs_that_write_one_file(tmp_path):
    soundfile.write(tmp_path / "a.wav", tone(0.01), RATE, subtype="PCM_16")
    soundfile.write(tmp_path / "a.flac", tone(0.01), RATE)
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    np.save(tmp_path / "x" / "a.npy", np.zeros((4, 2), np.int16))
    np.save(tmp_path / "y" / "a.npy", np.zeros((4, 2), np.int16))
    codec = tmp_path / "no_codec"  # Refused before the codec is looked at.

    message = bad_input("encode", tmp_path / "a.wav", tmp_path / "a.flac", "--codec", codec, "--out", tmp_path / "d")
    assert f"'{tmp_path / 'a.wav'}' and '{tmp_path / 'a.flac'}' would both be written to " \
           f"'{tmp_path / 'd' / 'a.npy'}'" in message
    assert not (tmp_path / "d").exists()
    message = bad_input("encode", tmp_path / "a.wav", tmp_path / "a.flac", "--codec", codec)  # Side by side.
    assert "a.wav" in message and "a.flac" in message and f"'{tmp_path / 'a.npy'}'" in message
    message = bad_input("encode", tmp_path / "a.wav", tmp_path / "a.wav", "--codec", codec)
    assert "a.wav" in message and "given twice" in message
    message = bad_input("decode", tmp_path / "x" / "a.npy", tmp_path / "y" / "a.npy", "--codec", codec,
                        "--out", tmp_path / "d")
    assert "x/a.npy" in message and "y/a.npy" in message and f"'{tmp_path / 'd' / 'a.wav'}'" in message
    # Without --out each goes next to its input: no collision, so the missing codec is what is refused.
    message = bad_input("decode", tmp_path / "x" / "a.npy", tmp_path / "y" / "a.npy", "--codec", codec)
    assert "no_codec" in message


# ---- a directory where a file is expected --------------------------------------------------------------------

def test_a_directory_given_as_a_file_says_so(tmp_path):
    (tmp_path / "folder").mkdir()
    message = bad_input("encode", tmp_path / "folder", "--codec", tmp_path)
    assert "folder" in message and "is a directory, not a file" in message
    message = bad_input("generate", tmp_path, "--frames", 8, "--prompt-audio", tmp_path / "folder",
                        "--codec", tmp_path, "--out", tmp_path / "x")
    assert "prompt audio file" in message and "is a directory, not a file" in message
    message = bad_input("decode", tmp_path / "folder", "--codec", tmp_path)
    assert "is a directory, not a file" in message


# ---- advice names the command's flags ------------------------------------------------------------------------

@pytest.fixture
def fake_model(monkeypatch):
    """`generate` on a stand-in for a trained model (3 levels of 16 codes, no conditioning dropout): the flags
    are checked against it before anything is sampled."""
    net = types.SimpleNamespace(num_quantizers=3, grouped_quantizers=1, num_columns=3, codebook_size=16,
                                acoustic_per_semantic=1, semantic_pad_id=0, num_semantic_token_ids=8)
    model = types.SimpleNamespace(net=net, cond_drop_prob=0.0, codec=None)
    config = types.SimpleNamespace(data={}, model={})
    from soundstorm_jax.training import restore
    monkeypatch.setattr(restore, "load_soundstorm", lambda workdir, step=None: (model, {}, config))
    return model


def test_generate_advice_names_its_flags(tmp_path, fake_model):
    python_names = re.compile(r"\b(num_quantizers|top_k|top_p|guidance_scale|num_frames|cond_drop_prob)\b")

    def refused(*args):
        message = bad_input("generate", tmp_path, "--out", tmp_path / "out", *args)
        assert not python_names.search(message.replace("--config.objective.cond_drop_prob", "")), message
        return message

    message = refused("--frames", 8, "--steps", "16,4")
    assert "--steps 16,4 has 2 entries but the model has 3 levels" in message and "--steps 16,4,1" in message
    message = refused("--frames", 8, "--top-k", 99)
    assert "--top-k must lie in [1, 16]" in message
    assert "--top-p must lie in (0, 1]" in refused("--frames", 8, "--top-p", 1.5)
    assert "--temperature" in refused("--frames", 8, "--temperature", -1)
    message = refused("--frames", 8, "--guidance-scale", 2)
    assert "--guidance-scale needs conditioning" in message and "--semantic" in message
    np.save(tmp_path / "semantic.npy", np.arange(6, dtype=np.int32))
    message = refused("--semantic", tmp_path / "semantic.npy", "--guidance-scale", 2)
    assert "--config.objective.cond_drop_prob" in message
    np.save(tmp_path / "prompt.npy", np.zeros((20, 2), np.int16))
    message = refused("--frames", 8, "--prompt-codes", tmp_path / "prompt.npy")
    assert "--prompt-codes" in message and "20 frames" in message and "--frames 8 gives only 8" in message
    np.save(tmp_path / "deep.npy", np.zeros((2, 5), np.int16))
    message = refused("--frames", 8, "--prompt-codes", tmp_path / "deep.npy")
    assert "5 levels but the model has 3" in message


def test_encode_wrong_rate_names_the_resample_flag(tmp_path, monkeypatch):
    from soundstorm_jax.cli import common
    codec = types.SimpleNamespace(sample_rate=RATE, num_quantizers=3, codebook_size=16)
    monkeypatch.setattr(common, "load_codec_from_args", lambda args: codec)
    monkeypatch.setattr("soundstorm_jax.cli.codec_io.load_codec_from_args", lambda args: codec)
    soundfile.write(tmp_path / "slow.wav", tone(0.01, rate=8000), 8000, subtype="PCM_16")
    message = bad_input("encode", tmp_path / "slow.wav", "--codec", tmp_path)
    assert "--resample" in message and "allow_resample" not in message


def test_encodec_without_torch_names_the_flag(tmp_path):
    pytest.importorskip("soundstorm_jax.codec")
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed: the checkpoint would be read")
    soundfile.write(tmp_path / "a.wav", tone(0.01), RATE, subtype="PCM_16")
    (tmp_path / "encodec.th").write_bytes(b"not read")
    message = bad_input("encode", tmp_path / "a.wav", "--encodec", tmp_path / "encodec.th")
    assert "--encodec" in message and "pip install torch" in message and ".npz" in message
    assert "pass the state dict" not in message


# ---- a failed command removes the output folders it created -------------------------------------------------

def test_failed_commands_remove_the_empty_output_folders_they_created(tmp_path):
    soundfile.write(tmp_path / "a.wav", tone(0.01), RATE, subtype="PCM_16")
    bad_input("encode", tmp_path / "a.wav", "--codec", tmp_path / "missing_codec", "--out", tmp_path / "new" / "sub")
    assert not (tmp_path / "new").exists()
    bad_input("generate", tmp_path / "nowhere", "--frames", 8, "--out", tmp_path / "generated")
    assert not (tmp_path / "generated").exists()
    # A folder that was there before is kept, empty or not.
    (tmp_path / "mine").mkdir()
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep me")
    for folder in ("mine", "theirs"):
        bad_input("generate", tmp_path / "nowhere", "--frames", 8, "--out", tmp_path / folder)
    assert (tmp_path / "mine").is_dir() and (tmp_path / "theirs" / "notes.txt").read_text() == "keep me"
    bad_input("generate", tmp_path / "nowhere", "--frames", 8, "--out", tmp_path / "mine" / "new")
    assert (tmp_path / "mine").is_dir() and not (tmp_path / "mine" / "new").exists()


def test_a_created_folder_holding_files_is_kept(tmp_path, monkeypatch):
    """Files written before the failure (or put there meanwhile) keep the folder, whole."""
    from soundstorm_jax.cli import codec_io

    def write_then_fail(args):
        (tmp_path / "new" / "sub").mkdir()
        (tmp_path / "new" / "sub" / "early.npy").write_bytes(b"x")
        raise ValueError("the codec failed")

    soundfile.write(tmp_path / "a.wav", tone(0.01), RATE, subtype="PCM_16")
    monkeypatch.setattr(codec_io, "load_codec_from_args", write_then_fail)
    bad_input("encode", tmp_path / "a.wav", "--codec", tmp_path, "--out", tmp_path / "new")
    assert (tmp_path / "new" / "sub" / "early.npy").read_bytes() == b"x"


@pytest.fixture(scope="module")
def audio_dataset(tmp_path_factory):
    """`soundstorm prepare` of 10 + 2 short WAVs: the audio dataset a tiny codec trains on (codec_tiny's batch: 8)."""
    root = tmp_path_factory.mktemp("audio")
    code, stdout, stderr = run_main("--quiet", "--json", "prepare", "--audio", write_wavs(str(root / "wavs"), train=10),
                                    "--out", root / "data", "--sample-rate", RATE)
    assert code == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])["audio_dataset"]


def test_train_removes_a_new_workdir_only_while_it_holds_no_work(tmp_path, monkeypatch, audio_dataset):
    # A config that does not fit the data fails once the run has written its config, compile cache folder and
    # Orbax's empty checkpoints folder: refused, and the new workdir (and its new parent) are gone.
    message = bad_input("train", "--config", "codec_tiny", "--workdir", tmp_path / "runs" / "a",
                        f"--config.data.dir={audio_dataset}", "--config.data.batch_size=16")
    assert "fewer than the batch of 16" in message
    assert not (tmp_path / "runs").exists()
    # The same in a workdir that was there before: kept, with what the run wrote.
    (tmp_path / "old").mkdir()
    bad_input("train", "--config", "codec_tiny", "--workdir", tmp_path / "old",
              f"--config.data.dir={audio_dataset}", "--config.data.batch_size=16")
    assert (tmp_path / "old" / "config.json").is_file()

    from soundstorm_jax import training

    def fail_after(files):
        def train_and_evaluate(config, workdir, **kwargs):
            for name in files:
                os.makedirs(os.path.dirname(os.path.join(workdir, name)), exist_ok=True)
                with open(os.path.join(workdir, name), "w") as f:
                    f.write("{}")
            raise RuntimeError("crashed")
        return train_and_evaluate

    # Only what a run writes before its first metrics line: removed.
    monkeypatch.setattr(training, "train_and_evaluate",
                        fail_after(["config.json", "compile_cache/x", "tensorboard/events.out"]))
    code, _, stderr = run_main("train", "--config", "tiny", "--workdir", tmp_path / "b")
    assert code == 1 and "crashed" in stderr and not (tmp_path / "b").exists()
    # A checkpoint (a run that crashed at step 500), or metrics: nothing is lost.
    for workdir, work in (("c", "checkpoints/500/state"), ("d", "metrics.jsonl")):
        monkeypatch.setattr(training, "train_and_evaluate", fail_after(["config.json", "compile_cache/x", work]))
        code, _, stderr = run_main("train", "--config", "tiny", "--workdir", tmp_path / workdir)
        assert code == 1 and (tmp_path / workdir / work).is_file()
        assert (tmp_path / workdir / "config.json").is_file() and (tmp_path / workdir / "compile_cache" / "x").is_file()


def test_demo_failing_before_any_work_leaves_no_out_folder(tmp_path, monkeypatch):
    import soundstorm_jax.data

    def no_corpus(*args, **kwargs):
        raise ValueError("eSpeak NG is not installed")

    monkeypatch.setattr(soundstorm_jax.data, "prepare_corpus", no_corpus)
    message = bad_input("demo", "--out", tmp_path / "demo")
    assert "eSpeak" in message and not (tmp_path / "demo").exists()


# ---- library log noise ---------------------------------------------------------------------------------------

NOISE = re.compile(r"libtpu|orbax|absl|^[IW]\d{4} |^INFO:|tensorflow", re.IGNORECASE)
# `soundstorm ARGS` with a library raising Python logging to INFO once the command runs (root logger and absl's
# verbosity), as it was in the runs, where 70 to 150 Orbax INFO lines followed the first step.
NOISY_MAIN = """
import logging, sys
from absl import logging as absl_logging
import soundstorm_jax.cli.train as train
read_config = train.read_config
def noisy(*args):
    logging.getLogger().setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)
    return read_config(*args)
train.read_config = noisy
from soundstorm_jax.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_library_logs_hidden_unless_verbose(env, tmp_path, audio_dataset):
    """A tiny codec's short run: stderr holds the package's own lines only (even with a library asking for
    INFO lines); with --verbose (resuming the finished run: a restore, no steps) Orbax's INFO lines are back.
    The run is test_cli's recipe codec (codec_tiny, its steps), so its train step comes from the suite's cache."""
    train = ["train", "--config", "codec_tiny", "--workdir", str(tmp_path / "codec"),
             f"--config.data.dir={audio_dataset}", f"--config.total_steps={TRAIN_STEPS}"]
    result = subprocess.run([sys.executable, "-c", NOISY_MAIN] + train, env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    noise = [line for line in lines if NOISE.search(line)]
    assert not noise, "\n".join(noise)
    notes = [line for line in lines if not line.startswith("train:")]  # The progress bar's redraws.
    assert len(notes) <= 3, "\n".join(lines)  # The compilation cache, the mesh, the compile time.

    result = subprocess.run(soundstorm_command() + ["--verbose"] + train, env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"resumed from step {TRAIN_STEPS}" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("INFO:absl:")]) >= 10, \
        result.stderr[-4000:]


def test_train_advice_names_commands_not_python_functions(tmp_path):
    """A SoundStorm run without data, or on a folder holding no codes dataset: the advice is the command to run."""
    for extra in ([], [f"--config.data.dir={tmp_path / 'empty'}"]):
        (tmp_path / "empty").mkdir(exist_ok=True)
        message = bad_input("train", "--config", "tiny", "--workdir", str(tmp_path / "run"), *extra)
        assert "soundstorm prepare --audio" in message and "soundstorm_jax." not in message, message
