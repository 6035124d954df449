"""Multi-process training, really run: `soundstorm launch` starts 2 processes x 4 CPU devices (a localhost
coordinator, collectives through gloo) and the results are compared with one process on 8 devices (this one).

What a pod run does that these show: the global batch is assembled from the processes' parts (each reads only
its rows), losses, gradient norms and parameters equal the one-process run's (data parallel, FSDP + tensor
parallel, SoundStorm and the codec), checkpoints written by both processes restore on 2 processes (on another
mesh too), on 8 devices and on 4, a process killed mid-run stops the other within the heartbeat bound and a
restart resumes, SIGTERM to one process makes both save the same step, and `prepare --codec` by both processes
gives the one-process dataset.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from soundstorm_jax.cli.launch import free_port
from soundstorm_jax.cli.train import read_config
from soundstorm_jax.training import restore, sharding, train_and_evaluate

HEARTBEAT_S = 10
ARGS = ["--config.model.conformer.depth=1", "--config.data.max_frames=16", "--config.data.batch_size=8",
        "--config.optimizer.end_lr_factor=1.0",  # A constant rate after warmup: losses do not depend on total_steps.
        "--config.optimizer.warmup_steps=1", "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=3",
        "--config.logging.every_steps=1", "--config.logging.eval_every_steps=1000",
        "--config.compiler_options.xla_backend_optimization_level=0",
        "--config.compiler_options.xla_llvm_disable_expensive_passes=True"]

pytestmark = pytest.mark.slow


# The codec shrunk as in test_codec_training.py, GAN terms from the first step, Adam state per parameter (FSDP).
CODEC_ARGS = ["--config.model.generator.strides=(2, 2)", "--config.model.generator.channels=4",
              "--config.model.generator.codebook_size=16", "--config.model.generator.rq_num_quantizers=2",
              "--config.model.generator.rq_kmeans_iters=2", "--config.data.segment_samples=512",
              "--config.data.batch_size=8", "--config.loss.adversarial_start_step=0", "--config.loss.mel_scales=(64,)",
              "--config.model.discriminator.num_scales=1", "--config.model.discriminator.stft_dilations=(1,)",
              "--config.optimizer.flatten=False", "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=3",
              "--config.logging.every_steps=1", "--config.logging.eval_every_steps=1000",
              "--config.compiler_options.xla_backend_optimization_level=0",
              "--config.compiler_options.xla_llvm_disable_expensive_passes=True"]
LOSSES = {"tiny": ("loss", "grad_norm"), "codec_tiny": ("generator_loss", "discriminator_loss",
                                                        "generator_grad_norm", "discriminator_grad_norm")}


def train_args(workdir, data_dir, *extra, config="tiny"):
    base = ARGS if config == "tiny" else CODEC_ARGS
    return ["--config", config, "--workdir", str(workdir), f"--config.data.dir={data_dir}", *base, *extra]


def launch(workdir, data_dir, *extra, config="tiny", log_name="launch.log"):
    """`soundstorm launch --processes 2 --cpu-devices 4 -- train ...` started in the background."""
    log = open(os.path.join(workdir, log_name), "wb")
    command = [sys.executable, "-m", "soundstorm_jax", "launch", "--processes", "2", "--cpu-devices", "4",
               "--heartbeat-timeout", str(HEARTBEAT_S), "--", "train",
               *train_args(workdir, data_dir, *extra, config=config)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log.name


def pids(log_path, timeout=60):
    """{process index: pid} from the launcher's first lines."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = dict(re.findall(r"launch: process (\d) is pid (\d+)", open(log_path).read()))
        if len(found) == 2:
            return {int(k): int(v) for k, v in found.items()}
        time.sleep(0.1)
    raise AssertionError(open(log_path).read()[-3000:])


def wait(proc, log_path, timeout=300):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the launcher did not finish in {timeout} s:\n" + open(log_path).read()[-3000:])


def train_records(workdir, key="loss"):
    out = []
    for line in open(os.path.join(workdir, "metrics.jsonl")).read().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # The line a kill cut short.
        if key in record:
            out.append(record)
    return out


def complete_checkpoints(workdir):
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def one_process_run(workdir, data_dir, *extra, config="tiny"):
    """The same config trained here: one process, 8 devices."""
    train_and_evaluate(read_config(config, train_args(workdir, data_dir, *extra, config=config)[4:]), str(workdir),
                       stream=None)
    return {r["step"]: r for r in train_records(workdir, LOSSES[config][0])}


def assert_same_losses(workdir, reference, config="tiny"):
    keys = LOSSES[config]
    records = train_records(workdir, keys[0])
    assert {r["step"] for r in records} == set(reference)
    for record in records:  # Steps redone after a resume must equal the first try too.
        want = reference[record["step"]]
        # Float rounding only: XLA sums across processes in another order (the codec's GAN terms amplify it).
        np.testing.assert_allclose([record[k] for k in keys], [want[k] for k in keys],
                                   rtol=2e-6 if config == "tiny" else 2e-5, err_msg=f"step {record['step']}: {keys}")


def assert_same_states(workdir, reference_workdir, mesh_shape=None):
    """The final checkpoints restore (on 8 devices, and on 4) to the same parameters and optimizer state (to float
    rounding: XLA sums in another order across processes, and the codec's adversarial steps amplify it to ~1e-5:
    Adam turns a rounding difference in a small gradient into a whole step)."""
    want = restore.restore_run(reference_workdir, mesh=sharding.make_mesh({"data": -1})).state
    for devices in (jax.devices(), jax.devices()[:4]):
        got = restore.restore_run(str(workdir), mesh=sharding.make_mesh({"data": -1}, devices)).state
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5),
                     jax.device_get(got), jax.device_get(want))


def test_killed_preempted_and_resharded_runs_reproduce_one_process_training(tmp_path, codes_dir):
    """SoundStorm over 2 processes. Data parallel (data 8): SIGKILL one process (the other stops within the
    heartbeat bound); restart (resumes from the last complete checkpoint); SIGTERM one process (both save the
    same step and exit 0). Then resumed on (fsdp 4, tensor 2), parameters and optimizer state split across the
    processes, to the end. Every logged loss and gradient norm equals the one-process 8-device run's, and so does
    the final state, restored on 8 devices and on 4."""
    steps = 14
    reference = one_process_run(tmp_path / "one", codes_dir, f"--config.total_steps={steps}")
    workdir = tmp_path / "two"
    workdir.mkdir()

    # 1. SIGKILL process 1 once a checkpoint is complete.
    proc, log = launch(workdir, codes_dir, f"--config.total_steps={steps}", log_name="killed.log")
    victim = pids(log)[1]
    deadline = time.time() + 240
    while not complete_checkpoints(workdir) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, open(log).read()[-3000:]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    code = wait(proc, log)
    stopped_after = time.time() - killed_at
    text = open(log).read()
    assert code == 1, text[-3000:]
    assert "process 1: killed by SIGKILL" in text
    assert "process 0: killed by SIGKILL" not in text  # It stopped on its own ...
    # ... because JAX's coordination service saw process 1 die: it aborts the process, usually after logging why
    # (under load the abort can come before the log line reaches the pipe).
    assert "detected fatal errors" in text or "process 0: killed by SIGABRT" in text, text[-3000:]
    assert stopped_after < HEARTBEAT_S + 20, stopped_after  # within the heartbeat bound.
    resumed_from = complete_checkpoints(workdir)[-1]
    assert resumed_from < steps

    # 2. Restart; SIGTERM process 0 once it has trained a step past the checkpoint (a step this run logged: the
    # killed run may have logged steps after its last checkpoint too).
    logged_before = len(train_records(workdir))
    proc, log = launch(workdir, codes_dir, f"--config.total_steps={steps}", log_name="preempted.log")
    coordinator = pids(log)[0]
    deadline = time.time() + 240
    while (proc.poll() is None and time.time() < deadline
           and not any(r["step"] > resumed_from for r in train_records(workdir)[logged_before:])):
        time.sleep(0.02)
    os.kill(coordinator, signal.SIGTERM)
    assert wait(proc, log) == 0, open(log).read()[-3000:]
    text = open(log).read()
    assert f"resumed from step {resumed_from}" in text
    saved = {int(p): int(s) for p, s in re.findall(r"process (\d): preemption notice: saving step (\d+)", text)}
    assert set(saved) == {0, 1} and len(set(saved.values())) == 1, text[-3000:]
    assert saved[0] in complete_checkpoints(workdir) and saved[0] < steps

    # 3. Restart on another mesh, to the end.
    proc, log = launch(workdir, codes_dir, f"--config.total_steps={steps}", "--config.mesh.shape.data=1",
                       "--config.mesh.shape.fsdp=4", "--config.mesh.shape.tensor=2", "--config.mesh.fsdp_min_size=16",
                       log_name="resharded.log")
    assert wait(proc, log) == 0, open(log).read()[-3000:]
    assert f"resumed from step {saved[0]}" in open(log).read()
    assert complete_checkpoints(workdir)[-1] == steps
    assert_same_losses(workdir, reference)
    assert_same_states(workdir, tmp_path / "one")


@pytest.fixture(scope="module")
def audio_root(tmp_path_factory):
    """WAVs (noisy tones of 0.15 to 0.3 s at 16 kHz: 10 training, 3 validation clips) in `wavs/` and their
    prepared audio dataset in `prepared/`."""
    import soundfile
    from soundstorm_jax.data import prepare_audio_folder
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("validation", 3)):
        (root / "wavs" / split).mkdir(parents=True)
        for i in range(n):
            t = np.arange(int(rng.integers(2400, 4800))) / 16000
            clip = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t) + rng.normal(0, 0.02, t.size)
            soundfile.write(str(root / "wavs" / split / f"c{i}.wav"), clip.astype(np.float32), 16000)
    prepare_audio_folder(str(root / "wavs"), str(root / "prepared"), sample_rate=16000)
    return root


CODEC_MESH = ["--config.mesh.shape.data=2", "--config.mesh.shape.fsdp=4", "--config.mesh.fsdp_min_size=64",
              "--config.total_steps=3"]


@pytest.fixture(scope="module")
def codec_reference(tmp_path_factory, audio_root):
    """The codec trained here on 8 devices (one process): (workdir, {step: metrics})."""
    workdir = tmp_path_factory.mktemp("codec_one")
    return str(workdir), one_process_run(workdir, audio_root / "prepared", *CODEC_MESH, config="codec_tiny")


def test_a_sharded_codec_trains_like_one_process(tmp_path, audio_root, codec_reference):
    """The codec on (data 2, fsdp 4): parameters and Adam state split, the batch across the processes; losses,
    gradient norms and the final state equal the one-process run's."""
    reference_dir, reference = codec_reference
    workdir = tmp_path / "two"
    workdir.mkdir()
    proc, log = launch(workdir, audio_root / "prepared", *CODEC_MESH, config="codec_tiny")
    assert wait(proc, log) == 0, open(log).read()[-3000:]
    assert_same_losses(workdir, reference, "codec_tiny")
    assert_same_states(workdir, reference_dir)


def test_prepare_by_two_processes_equals_one_process_example_for_example(tmp_path, audio_root, codec_reference):
    """`soundstorm prepare --codec` run by both processes of a job: each encodes its share and writes its own
    shards; the gathered codes dataset is the one-process dataset, example for example, in order."""
    import tensorflow_datasets as tfds
    from soundstorm_jax.cli.main import main
    codec_dir = codec_reference[0]
    common = ["prepare", "--audio", str(audio_root / "wavs"), "--codec", codec_dir, "--encode-batch-size", "2"]
    assert main(["--quiet", *common, "--out", str(tmp_path / "one")]) == 0
    log = open(tmp_path / "launch.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "soundstorm_jax", "launch", "--processes", "2", "--cpu-devices", "1",
                             "--heartbeat-timeout", str(HEARTBEAT_S), "--", *common, "--out", str(tmp_path / "two")],
                            stdout=log, stderr=subprocess.STDOUT)
    assert wait(proc, log.name) == 0, open(log.name).read()[-3000:]
    one = tfds.builder_from_directory(str(tmp_path / "one" / "codes" / "codes_dataset" / "1.0.0"))
    two = tfds.builder_from_directory(str(tmp_path / "two" / "codes" / "codes_dataset" / "1.0.0"))
    assert not (tmp_path / "two" / "codes" / "parts").exists()
    for split in ("train", "validation"):
        # 5 and 2 encoding batches: each process wrote its own shard of each split.
        assert len(two.info.splits[split].shard_lengths) == 2
        a, b = one.as_data_source(split), two.as_data_source(split)
        assert len(a) == len(b) == (10 if split == "train" else 3)
        for x, y in zip(a, b):
            assert x["id"] == y["id"] and x["text"] == y["text"]
            np.testing.assert_array_equal(x["codes"], y["codes"])


def test_a_missing_part_is_named(tmp_path):
    from soundstorm_jax.data.codes_dataset import merge_parts
    with pytest.raises(FileNotFoundError, match="00001-of-00002"):
        merge_parts([str(tmp_path / "parts" / "00000-of-00002"), str(tmp_path / "parts" / "00001-of-00002")],
                    str(tmp_path / "out"))


def test_a_mesh_the_devices_do_not_divide_is_a_clear_error_in_every_process(tmp_path, codes_dir):
    proc, log = launch(tmp_path, codes_dir, "--config.total_steps=2", "--config.mesh.shape.data=-1",
                       "--config.mesh.shape.fsdp=3")
    assert wait(proc, log, timeout=120) == 2
    text = open(log).read()
    assert text.count("do not divide the 8 available devices") == 2, text[-3000:]  # One line per process.
    assert "compiled" not in text and "process 0: exit 2" in text and "process 1: exit 2" in text


def test_an_impossible_process_id_is_a_clear_error(tmp_path, codes_dir):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS="127.0.0.1:1", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="2")
    result = subprocess.run([sys.executable, "-m", "soundstorm_jax", "train", *train_args(tmp_path, codes_dir)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "JAX_PROCESS_ID='2'" in error[0] and "process_id" in error[0], result.stderr[-2000:]


def test_a_process_whose_partners_never_join_stops_within_the_init_timeout(tmp_path, codes_dir):
    """Process 0 of 2 started alone (the other never launched, or given another process count): JAX gives up
    after SOUNDSTORM_INIT_TIMEOUT seconds instead of waiting forever."""
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID="0", SOUNDSTORM_INIT_TIMEOUT="5", JAX_PLATFORMS="cpu")
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "soundstorm_jax", "train", *train_args(tmp_path, codes_dir)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and time.time() - start < 60
    assert "deadline exceeded" in result.stderr.lower(), result.stderr[-2000:]
