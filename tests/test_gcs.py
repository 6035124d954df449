"""gs:// paths against a real Cloud Storage API: the local emulator of tests/gcs_emulator.py.

Every layer is pointed at the emulator: gcsfs through etils.epath (config.json, metrics.jsonl, audio, codes,
PNGs, the datasets' metadata), ArrayRecord's own GCS reader (the datasets' shards), and tensorstore (Orbax's
checkpoints). The end-to-end tests run `soundstorm` from an empty folder and check that nothing lands on the
local disk under `./gs:` (what a gs:// workdir used to become).
"""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
from PIL import Image

import gcs_emulator
from gcs_emulator import BUCKET, blob_names, read_blob

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--config.compiler_options.xla_backend_optimization_level=0",
        "--config.compiler_options.xla_llvm_disable_expensive_passes=True"]
STEPS = 12


@pytest.fixture(scope="module")
def gcs():
    """The emulator, with this process pointed at it for the module; yields its environment variables."""
    from soundstorm_jax import paths
    with gcs_emulator.running_emulator() as variables:
        saved = {k: os.environ.get(k) for k in variables}
        os.environ.update(variables)
        try:
            yield variables
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            import gcsfs
            gcsfs.GCSFileSystem.clear_instance_cache()  # Its endpoint was read from the variables above.
            paths._reachable_buckets.clear()


@pytest.fixture(scope="module")
def env(gcs):
    """The commands' environment: test_cli's XLA flags, the emulator, and this checkout importable from any cwd."""
    env = dict(os.environ, **gcs)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
                        " --xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false")
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env


def soundstorm(env, cwd, *args, expect=0, timeout=300):
    """`soundstorm ARGS` in a subprocess; one that hangs past `timeout` is aborted with its Python stacks shown."""
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "soundstorm_jax", *map(str, args)],
                            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack.
        stdout, stderr = proc.communicate()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert result.returncode == expect, (result.returncode, result.stdout[-2000:], result.stderr[-8000:])
    return result


def in_process(*args):
    """`soundstorm ARGS` through the command line's `main` in this process: (exit code, stdout, stderr)."""
    from soundstorm_jax.cli.main import main
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in args])
    return code, stdout.getvalue(), stderr.getvalue()


def nothing_local(folder):
    """No `gs:` folder (what os.makedirs('gs://bucket/run') makes) anywhere under `folder`."""
    found = [os.path.join(d, n) for d, names, _ in os.walk(folder) for n in names if n.startswith("gs:")]
    assert not found, found


def upload(local_path, name):
    gcs_emulator.client().bucket(BUCKET).blob(name).upload_from_filename(str(local_path))


# ---- the path layer, in this process ---------------------------------------------------------------------------

def test_files_round_trip_through_the_bucket(gcs, tmp_path, monkeypatch):
    from soundstorm_jax import paths
    from soundstorm_jax.cli import spectrogram
    from soundstorm_jax.cli.common import load_codes
    from soundstorm_jax.configs import tiny
    from soundstorm_jax.data import audio_io, codes_dataset
    from soundstorm_jax.training import config as config_lib, metrics
    monkeypatch.chdir(tmp_path)
    run = f"gs://{BUCKET}/unit/run"

    config = tiny.get_config()
    assert config_lib.read_saved_config(run) is None
    assert config_lib.save_config(run, config) == f"{run}/config.json"
    assert config_lib.read_saved_config(run).to_dict() == json.loads(read_blob("unit/run/config.json"))

    writer = metrics.MetricsWriter(run, stream=None)
    writer.write({"step": 1, "loss": 2.5})
    metrics.MetricsWriter(run, stream=None).write({"step": 2, "loss": 2.0})  # A resumed run keeps the lines.
    lines = read_blob("unit/run/metrics.jsonl").decode().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]

    tone = np.sin(np.arange(1600) / 5.0).astype(np.float32) * 0.5
    audio_io.write_wav(f"{run}/a.wav", tone, 16000)
    audio, rate = audio_io.read_audio(f"{run}/a.wav")
    assert rate == 16000 and np.abs(audio - tone).max() < 1e-4
    assert soundfile.read(io.BytesIO(read_blob("unit/run/a.wav")))[1] == 16000

    spectrogram.write_spectrogram(f"{run}/a.png", tone, 16000)
    with Image.open(io.BytesIO(read_blob("unit/run/a.png"))) as image:
        assert image.format == "PNG" and image.size == (800, 300)

    codes = np.arange(12, dtype=np.int16).reshape(4, 3)
    buffer = io.BytesIO()
    np.save(buffer, codes)
    for name in ("unit/npy/train/x/u0.npy", "unit/npy/validation/u1.npy"):
        gcs_emulator.client().bucket(BUCKET).blob(name).upload_from_string(buffer.getvalue())
    np.testing.assert_array_equal(load_codes(f"gs://{BUCKET}/unit/npy/train/x/u0.npy"), codes)
    found = codes_dataset.find_code_files(f"gs://{BUCKET}/unit/npy")
    assert [(f.id, f.path) for f in found] == [("train/x/u0", f"gs://{BUCKET}/unit/npy/train/x/u0.npy"),
                                               ("validation/u1", f"gs://{BUCKET}/unit/npy/validation/u1.npy")]
    assert [os.fspath(d) for d, _, _ in paths.walk(f"gs://{BUCKET}/unit/npy")][0] == f"gs://{BUCKET}/unit/npy"
    nothing_local(tmp_path)


def test_encodec_weights_load_from_the_bucket(gcs):
    from soundstorm_jax.codec import EnCodec, import_encodec_state_dict
    fixture = os.path.join(ROOT, "tests", "fixtures", "encodec_24khz.npz")
    with np.load(fixture) as data:
        setup = json.loads(str(data["config"]))
    model = EnCodec(dimension=setup["dimension"], n_filters=setup["n_filters"],
                    target_bandwidths=tuple(setup["target_bandwidths"]), bandwidth=6.0)
    upload(fixture, "weights/encodec.npz")
    remote = import_encodec_state_dict(f"gs://{BUCKET}/weights/encodec.npz", model)["params"]
    local = import_encodec_state_dict(fixture, model)["params"]
    import jax
    for a, b in zip(jax.tree.leaves(remote), jax.tree.leaves(local)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_prepare_reads_audio_from_and_writes_the_dataset_to_the_bucket(gcs, tmp_path, monkeypatch):
    from soundstorm_jax.data import open_prepared
    monkeypatch.chdir(tmp_path)
    rate, rng = 16000, np.random.default_rng(0)
    for split, count in (("train", 3), ("validation", 1)):
        for i in range(count):
            path = tmp_path / f"{split}{i}.wav"
            # 45 s of noise each: a shard of a few MB, which ArrayRecord's reader fetches in overlapping streams.
            soundfile.write(path, rng.normal(0, 0.1, 45 * rate), rate, subtype="PCM_16")
            upload(path, f"wavs/{split}/speaker/clip{i}.wav")
            os.remove(path)
    code, stdout, stderr = in_process("--json", "prepare", "--audio", f"gs://{BUCKET}/wavs",
                                      "--out", f"gs://{BUCKET}/data")
    assert code == 0, stderr[-3000:]
    record = json.loads(stdout.strip().splitlines()[-1])
    assert record["audio_dataset"] == f"gs://{BUCKET}/data/audio"
    assert record["audio_splits"] == {"train": 3, "validation": 1}
    assert "data/audio/audio_folder/1.0.0/dataset_info.json" in blob_names("data/audio/")
    # Read back from the bucket (the shards through ArrayRecord's GCS reader).
    source = open_prepared(f"gs://{BUCKET}/data/audio/audio_folder/1.0.0").as_data_source("train")
    assert sorted(source[i]["id"].decode() for i in range(len(source))) == [
        f"train/speaker/clip{i}" for i in range(3)]
    # Prepared already: reused, not rebuilt.
    assert in_process("prepare", "--audio", f"gs://{BUCKET}/wavs", "--out", f"gs://{BUCKET}/data")[0] == 0
    nothing_local(tmp_path)


# ---- bad input -------------------------------------------------------------------------------------------------

def test_a_missing_bucket_is_a_one_line_error(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = in_process("train", "--config", "tiny", "--workdir", "gs://no-such-bucket/run",
                                 f"--config.data.dir=gs://{BUCKET}/codes")
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert "'gs://no-such-bucket/run'" in errors[0] and "does not exist" in errors[0]
    nothing_local(tmp_path)


def test_unreachable_storage_is_a_one_line_error_within_a_bounded_time(tmp_path):
    """Storage that cannot be reached (an emulator address with nothing listening): exit 2 naming the path in under
    30 s (at once: the connection is refused), where gcsfs alone would retry for about 35 s per request."""
    env = dict(os.environ, **gcs_emulator.emulator_env(f"http://127.0.0.1:{gcs_emulator.free_port()}"))
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env["JAX_PLATFORMS"] = "cpu"
    start = time.perf_counter()
    result = soundstorm(env, tmp_path, "train", "--config", "tiny", "--workdir", f"gs://{BUCKET}/run",
                        f"--config.data.dir=gs://{BUCKET}/codes", expect=2, timeout=60)
    seconds = time.perf_counter() - start
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"'gs://{BUCKET}/run'" in errors[0] and "STORAGE_EMULATOR_HOST" in errors[0], errors[0]
    assert seconds < 30, seconds
    nothing_local(tmp_path)


def test_storage_that_accepts_but_never_answers_is_an_error_after_the_timeout(monkeypatch):
    """An endpoint that takes the connection and then says nothing (a hung proxy): the probe gives up after its
    timeout, naming the path, instead of waiting on gcsfs's retries."""
    import socket

    from soundstorm_jax import paths
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # Connections complete in the kernel's backlog; nothing ever reads or replies.
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{silent.getsockname()[1]}")
        import gcsfs
        gcsfs.GCSFileSystem.clear_instance_cache()
        start = time.perf_counter()
        with pytest.raises(paths.StorageError, match=r"workdir 'gs://silent-bucket/run': no answer from "
                                                     r"gs://silent-bucket within 1 s; is the storage emulator"):
            paths.check_reachable("gs://silent-bucket/run", "workdir", timeout_s=1.0)
        assert time.perf_counter() - start < 10
    gcsfs.GCSFileSystem.clear_instance_cache()


def test_the_fast_refusal_check_names_the_endpoint_and_defers_to_a_proxy(monkeypatch):
    from soundstorm_jax import paths
    port = gcs_emulator.free_port()  # Nothing listens there.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    assert paths._endpoint_refuses(1.0).startswith(f"127.0.0.1:{port} (")
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")  # Real Cloud Storage through a proxy:
    assert paths._endpoint_refuses(1.0) is None  # only the probe (through gcsfs and the proxy) can tell.


# ---- training, killed and resumed, all in the bucket --------------------------------------------------------

@pytest.fixture(scope="module")
def codes_in_bucket(gcs, tmp_path_factory):
    """A codes dataset prepared straight into gs://test-bucket/codes (built locally by TFDS, then uploaded)."""
    from soundstorm_jax.data import prepare_codes_dataset
    npy = tmp_path_factory.mktemp("npy")
    rng = np.random.default_rng(0)  # tests/training's dataset: 24 + 3 utterances of 10-40 frames, 3 levels, K=16.
    for split, count in (("train", 24), ("validation", 3)):
        (npy / split).mkdir()
        for i in range(count):
            np.save(npy / split / f"u{i:03d}.npy", rng.integers(0, 16, (int(rng.integers(10, 40)), 3)).astype(np.int16))
    builder = prepare_codes_dataset(f"gs://{BUCKET}/codes", npy_dir=str(npy), codebook_size=16)
    assert builder.data_dir == f"gs://{BUCKET}/codes/codes_dataset/1.0.0"
    return f"gs://{BUCKET}/codes"


def train_args(steps):
    return [f"--config.total_steps={steps}", "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=2",
            "--config.logging.every_steps=1", "--config.logging.eval_every_steps=100",
            "--config.model.conformer.depth=1", "--config.data.max_frames=16"] + FAST


def train_command(workdir, data_dir):
    return [sys.executable, "-m", "soundstorm_jax", "train", "--config", "tiny", "--workdir", workdir,
            f"--config.data.dir={data_dir}"] + train_args(STEPS)


def losses(run):
    """(step, loss) of every training line of `run`'s metrics.jsonl in the bucket, in the order logged."""
    records = [json.loads(line) for line in read_blob(f"{run}/metrics.jsonl").decode().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def complete_checkpoints(run):
    """Steps whose Orbax checkpoint is complete: on Cloud Storage Orbax marks one with commit_success.txt."""
    prefix = f"{run}/checkpoints/"
    return sorted(int(name[len(prefix):].split("/")[0]) for name in blob_names(prefix)
                  if name.endswith("/commit_success.txt") and name.count("/") == prefix.count("/") + 1)


@pytest.fixture(scope="module")
def reference_run(env, codes_in_bucket, tmp_path_factory):
    """`soundstorm train` with its workdir and data in the bucket, uninterrupted, from an empty folder."""
    cwd = tmp_path_factory.mktemp("reference_cwd")
    result = subprocess.run(train_command(f"gs://{BUCKET}/reference", codes_in_bucket), env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    nothing_local(cwd)
    return f"gs://{BUCKET}/reference"


@pytest.mark.slow
def test_training_in_the_bucket_killed_and_resumed_reproduces_the_losses(env, codes_in_bucket, reference_run,
                                                                         tmp_path):
    expected = dict(losses("reference"))
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert complete_checkpoints("reference") == [STEPS - 2, STEPS]
    assert json.loads(read_blob("reference/config.json"))["total_steps"] == STEPS

    # Killed (SIGKILL) as soon as its first checkpoint is complete in the bucket.
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(train_command(f"gs://{BUCKET}/run", codes_in_bucket), env=env, cwd=tmp_path,
                                stdout=log, stderr=log)
        try:
            deadline = time.time() + 240
            while proc.poll() is None and time.time() < deadline and not complete_checkpoints("run"):
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    saved = complete_checkpoints("run")
    assert saved and saved[-1] < STEPS, saved
    logged_before = len(losses("run"))

    resumed = subprocess.run(train_command(f"gs://{BUCKET}/run", codes_in_bucket), env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {saved[-1]}" in resumed.stderr
    logged = losses("run")
    # The resumed run started after the bucket's last complete checkpoint, and every loss, before and after the
    # kill, is the uninterrupted run's.
    assert [step for step, _ in logged[logged_before:]] == list(range(saved[-1] + 1, STEPS + 1))
    for step, loss in logged:
        assert loss == expected[step], step
    assert complete_checkpoints("run") == [STEPS - 2, STEPS]
    nothing_local(tmp_path)


@pytest.mark.slow
def test_generate_from_a_run_in_the_bucket_into_the_bucket(env, reference_run, tmp_path):
    result = soundstorm(env, tmp_path, "--json", "generate", reference_run, "--frames", 8, "--steps", "1,1,1",
                        "--num-samples", 2, "--out", f"gs://{BUCKET}/samples", timeout=100)
    files = json.loads(result.stdout.strip().splitlines()[-1])["files"]
    assert files == [f"gs://{BUCKET}/samples/sample_{i:03d}.npy" for i in range(2)]
    codes = np.load(io.BytesIO(read_blob("samples/sample_000.npy")))
    assert codes.shape == (8, 3) and codes.min() >= 0 and codes.max() < 16
    nothing_local(tmp_path)
