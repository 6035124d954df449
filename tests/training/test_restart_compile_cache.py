"""`soundstorm train` stopped and started again in the same workdir: the second process loads its train step from
WORKDIR/compile_cache instead of compiling it; process 0's progress bar (not with --json); where the cache goes.

The suite's own compilation cache (JAX_COMPILATION_CACHE_DIR, tests/conftest.py) is removed from the commands'
environment, so the run's default applies. Each run is stopped by SIGTERM after its first logged step (the learning
rate schedule is part of the step's program, so the restarted run must keep total_steps to reuse it).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import pytest
from conftest import tiny_config

from soundstorm_jax.training import compile_cache

ARGS = ["--config", "tiny", "--config.total_steps=100000", "--config.checkpoint.every_steps=100000",
        "--config.logging.every_steps=1", "--config.logging.eval_every_steps=100000",
        "--config.model.conformer.depth=1", "--config.data.max_frames=16", "--config.data.batch_size=2",
        "--config.compiler_options.xla_backend_optimization_level=0",
        "--config.compiler_options.xla_llvm_disable_expensive_passes=True"]
BAR = re.compile(r"train: +\d+%\|.*\| *\d+/100000 \[[\d:]+<[\d:]+, +[\d.]+(step/s|s/step)\]")


def train_until_step(workdir, codes_dir, env, step, *options, timeout=180):
    """`soundstorm [options] train ...` until metrics.jsonl logs `step`, then SIGTERM; (returncode, stdout, stderr)."""
    out, err = (open(os.path.join(workdir, f"run_to_{step}.{name}"), "w+") for name in ("out", "err"))
    command = [sys.executable, "-m", "soundstorm_jax", *options, "train", "--workdir", workdir,
               f"--config.data.dir={codes_dir}", *ARGS]
    with out, err:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)
        try:
            deadline = time.time() + timeout
            while proc.poll() is None and time.time() < deadline and last_step(workdir) < step:
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read()


def last_step(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    steps = [json.loads(line)["step"] for line in open(path).read().splitlines() if line.endswith("}")]
    return max(steps, default=0)


def test_a_restarted_run_loads_its_train_step_from_the_workdir_cache(tmp_path, codes_dir):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
                        " --xla_llvm_disable_expensive_passes=true"
                        " --xla_cpu_use_fusion_emitters=false")
    workdir = str(tmp_path)

    code, stdout, stderr = train_until_step(workdir, codes_dir, env, 3)  # The bar opens at step 1: a rate by 3.
    assert code == 0, stderr[-3000:]
    assert "train step: compiled in" in stderr and "(written to the compilation cache)" in stderr, stderr[-3000:]
    cache = os.path.join(workdir, "compile_cache")
    assert os.path.isdir(cache) and os.listdir(cache)
    assert BAR.search(stderr), stderr[-3000:]  # Steps, rate and ETA on stderr,
    assert '"step": 1' in stdout and "(preempted;" in stdout  # metric lines and the result on stdout.
    stopped_at = last_step(workdir)

    code, stdout, stderr = train_until_step(workdir, codes_dir, env, stopped_at + 1, "--json")
    assert code == 0, stderr[-3000:]
    record = json.loads(stdout.strip().splitlines()[-1])
    assert record["stopped"] == "preempted" and record["step"] > stopped_at
    compile_report = record["train_step_compile"]
    assert compile_report["cache_hits"] >= 1 and compile_report["cache_writes"] == 0, compile_report
    assert not BAR.search(stderr) and "step/s" not in stderr  # No bar with --json.


def test_no_progress_bar_with_quiet_or_json_or_on_other_processes():
    from soundstorm_jax.cli.common import Output
    from soundstorm_jax.cli.train import progress

    for out, process_zero in ((Output(quiet=True), True), (Output(as_json=True), True), (Output(), False)):
        with progress(out, 10, shown=process_zero) as (on_step, stream):
            assert on_step is None and stream is sys.stdout


@pytest.fixture
def no_cache_set(monkeypatch):
    """JAX's cache dir unset for the test (the suite's own, from tests/conftest.py, is put back afterwards)."""
    from jax.experimental.compilation_cache import compilation_cache as jax_cache

    saved = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    monkeypatch.setattr(compile_cache, "_configured_dir", None)
    jax.config.update("jax_compilation_cache_dir", None)
    jax_cache.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
    jax_cache.reset_cache()


def test_cache_dir_default_custom_off_and_jax_own_setting(tmp_path, no_cache_set):
    config = tiny_config()
    assert compile_cache.configure(config, str(tmp_path)) == str(tmp_path / "compile_cache")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "compile_cache")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == config.compile_cache.min_compile_seconds

    config.compile_cache.dir = str(tmp_path / "mine")  # A later run in the same process moves the run's cache.
    assert compile_cache.configure(config, str(tmp_path)) == jax.config.jax_compilation_cache_dir == str(
        tmp_path / "mine")

    config.compile_cache.enabled = False
    assert compile_cache.configure(config, str(tmp_path)) is None
    assert jax.config.jax_compilation_cache_dir is None

    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users"))  # Set outside the run: kept.
    config.compile_cache.enabled = True
    assert compile_cache.configure(config, str(tmp_path)) == jax.config.jax_compilation_cache_dir == str(
        tmp_path / "users")
