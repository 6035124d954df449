"""train.py end to end: trains, evaluates, checkpoints; killed runs resume exactly."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import tiny_config

from soundstorm_jax.training import sharding
from soundstorm_jax.training.soundstorm_task import SoundStormTask

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEPS = 10
ARGS = ["--config.total_steps=%d" % STEPS, "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=2",
        "--config.logging.eval_every_steps=5", "--config.model.conformer.depth=1", "--config.data.max_frames=16",
        "--config.compiler_options.xla_backend_optimization_level=0",
        "--config.compiler_options.xla_llvm_disable_expensive_passes=True"]


def command(workdir, codes_dir):
    return [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs", "tiny.py"),
            "--workdir", str(workdir), f"--config.data.dir={codes_dir}"] + ARGS


@pytest.fixture(scope="module")
def env():
    env = dict(os.environ)
    # A 2-way data-parallel mesh; cheap compiles for what the config's compiler_options do not cover.
    env["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
                        " --xla_llvm_disable_expensive_passes=true"
                        " --xla_cpu_use_fusion_emitters=false")
    env["JAX_PLATFORMS"] = "cpu"
    return env


def records(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    out = []
    if os.path.exists(path):
        for line in open(path).read().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # The line a SIGKILL cut short.
    return out


def train_records(workdir):
    return [r for r in records(workdir) if "loss" in r]


def complete_checkpoints(workdir):
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def kill_when(workdir, codes_dir, env, ready, timeout=240):
    """Starts train.py and SIGKILLs it as soon as ready() holds (polled every 5 ms)."""
    with open(os.path.join(workdir, "killed.log"), "ab") as log:
        proc = subprocess.Popen(command(workdir, codes_dir), env=env, stdout=log, stderr=log)
        deadline = time.time() + timeout
        while proc.poll() is None and time.time() < deadline:
            if ready():
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode


def run(workdir, codes_dir, env):
    result = subprocess.run(command(workdir, codes_dir), env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory, codes_dir, env):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = run(workdir, codes_dir, env)
    return str(workdir), result


@pytest.mark.slow
def test_train_py_trains_evaluates_and_checkpoints(reference):
    workdir, result = reference
    train = train_records(workdir)
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert all(len(r["level_accuracy"]) == 3 and r["tokens_per_s"] > 0 and r["nonfinite_count"] == 0
               for r in train)
    assert train[-1]["loss"] < train[0]["loss"] + 0.5  # finite and sane
    evals = [r for r in records(workdir) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [5, 10] and evals[0]["eval_num_targets"] > 0
    assert complete_checkpoints(workdir) == [8, 10]
    assert json.load(open(os.path.join(workdir, "config.json")))["model"]["num_quantizers"] == 3
    assert '"step": 1' in result.stdout  # JSON lines on stdout too.


@pytest.mark.slow
def test_killed_runs_resume_and_reproduce_the_losses_exactly(tmp_path, reference, codes_dir, env):
    expected = {r["step"]: r["loss"] for r in train_records(reference[0])}
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    checkpoints = os.path.join(workdir, "checkpoints")

    def saving():  # Kill while a checkpoint is being written (its temporary folder exists).
        return os.path.isdir(checkpoints) and any("tmp" in n for n in os.listdir(checkpoints))

    kill_when(workdir, codes_dir, env, saving)
    first = complete_checkpoints(workdir)
    at_step = random.Random(0).randint(max(first, default=0) + 2, STEPS - 1)
    kill_when(workdir, codes_dir, env, lambda: any(r["step"] >= at_step for r in train_records(workdir)))
    second = complete_checkpoints(workdir)
    logged_before_final = len(train_records(workdir))
    run(workdir, codes_dir, env)

    train = train_records(workdir)
    # Every logged loss, before and after the kills, is the uninterrupted run's loss for that step.
    for r in train:
        assert r["loss"] == expected[r["step"]], r["step"]
    final = [r["step"] for r in train[logged_before_final:]]
    assert final == list(range(max(second, default=0) + 1, STEPS + 1))  # From the last complete checkpoint.
    assert set(r["step"] for r in train) == set(range(1, STEPS + 1))
    assert complete_checkpoints(workdir) == [8, 10]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_at_the_current_step_and_resumes(tmp_path, reference, codes_dir, env):
    """A preemptible VM's SIGTERM: the run saves where it is, exits cleanly, and resumes exactly."""
    expected = {r["step"]: r["loss"] for r in train_records(reference[0])}
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    with open(os.path.join(workdir, "terminated.log"), "ab") as log:
        proc = subprocess.Popen(command(workdir, codes_dir), env=env, stdout=log, stderr=log)
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline and not any(
                r["step"] >= 3 for r in train_records(workdir)):
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=240) == 0
    stopped = max(r["step"] for r in train_records(workdir))
    assert 3 <= stopped < STEPS
    assert stopped in complete_checkpoints(workdir), "no checkpoint at the step the run stopped"
    logged = len(train_records(workdir))
    run(workdir, codes_dir, env)
    train = train_records(workdir)
    assert [r["step"] for r in train[logged:]] == list(range(stopped + 1, STEPS + 1))
    for r in train:
        assert r["loss"] == expected[r["step"]], r["step"]


def open_codes(data_dir, **overrides):
    config = tiny_config(**{"data.dir": data_dir, **overrides})
    return SoundStormTask(config, sharding.make_mesh({"data": -1})).open_data()


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="config.data.dir is not set"):
        open_codes(None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_codes(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="holds no prepared dataset"):
        open_codes(str(tmp_path))


def test_dataset_levels_must_match_the_model(codes_dir):
    with pytest.raises(ValueError, match="num_quantizers is 4 but the codes dataset .* has 3 levels; "
                                         "set --config.model.num_quantizers=3"):
        open_codes(codes_dir, **{"model.num_quantizers": 4})


def test_time_limit_stops_at_a_step_boundary_with_a_checkpoint_and_resumes(tmp_path, codes_dir):
    from soundstorm_jax import training
    config = tiny_config(total_steps=4, **{"data.dir": codes_dir, "checkpoint.every_steps": 100,
                                           "checkpoint.async_save": False, "logging.eval_every_steps": 100})
    seen = []
    handler = signal.getsignal(signal.SIGTERM)
    summary = training.train_and_evaluate(config, str(tmp_path), time_limit_s=0.0, on_step=seen.append, stream=None)
    assert signal.getsignal(signal.SIGTERM) is handler  # The loop's SIGTERM handler is gone when it returns.
    # The limit is checked after each step: one step, then a forced save, a log line and an evaluation.
    assert (summary.step, summary.stopped, seen) == (1, "time_limit", [1])
    assert complete_checkpoints(tmp_path) == [1]
    assert summary.last_metrics["step"] == 1 and summary.last_eval["step"] == 1
    summary = training.train_and_evaluate(config, str(tmp_path), on_step=seen.append, stream=None)
    assert (summary.step, summary.stopped, seen) == (4, "finished", [1, 2, 3, 4])
    assert complete_checkpoints(tmp_path)[-1] == 4


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line_and_leaves_complete_checkpoints(tmp_path, codes_dir, env):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    # Far more steps than it will take before the signal: a busy machine cannot let the run finish first. The
    # child starts as from an interactive shell, with SIGINT at its default and unblocked: a process started with
    # SIGINT ignored or blocked (inherited from whatever ran the test) rightly never sees Ctrl-C.
    proc = subprocess.Popen(command(workdir, codes_dir) + ["--config.total_steps=100000"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_shell)
    try:
        interrupt_at_step(proc, workdir, 3)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()  # Never leave a runaway child behind, whatever failed.
    assert proc.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "error: interrupted"
    assert complete_checkpoints(workdir) and all(n.isdigit() for n in os.listdir(os.path.join(workdir, "checkpoints")))


def interrupt_at_step(proc, workdir, step, timeout=240):
    """SIGINT to `proc` once its metrics reach `step`."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline and not any(r["step"] >= step for r in train_records(workdir)):
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)


def as_from_a_shell():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
