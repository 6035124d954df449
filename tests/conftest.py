"""Test setup shared by every test module.

Eight emulated CPU devices so the sharding tests run on one machine, and fast
(unoptimised) CPU compiles. This must happen before JAX initialises its backend,
which is why it lives here, at the top of conftest, before anything imports jax.
"""
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiling dominates the suite's time on a CPU (programs run a few times at most), and LLVM's backend
# passes dominate compiling: -O0 without the expensive passes compiles ~2-3x faster. No test checks a
# property that depends on how hard LLVM optimises; set --xla_backend_optimization_level yourself to
# run the suite at another level.
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# XLA's older loop emitters compile the tests' small programs about 2x faster than its fusion emitters (a tiny
# model's value_and_grad: 2.6 s -> 1.2 s here) and run them as fast; subprocesses inherit this (the tests that
# set their own XLA_FLAGS add it too).
if "--xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_cpu_use_fusion_emitters=false"

# One persistent compilation cache for the whole run, shared by both xdist workers and every subprocess a test
# starts (they inherit the environment): the same tiny programs are compiled by many tests and commands. Keyed by
# the program, the compile options and XLA_FLAGS, so a hit is always the executable a compile would have made.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"soundstorm-jax-tests-{os.environ.get('PYTEST_XDIST_TESTRUNUID', os.getpid())}",
    "jax_cache"))
# Every program goes into it, not only those that compile for over JAX's default 1 s: at -O0 most of the suite's
# programs compile in a fraction of a second, yet they are compiled again by each test and command that builds
# them (a repeated 3-step demo: 46 s -> 39 s). A hit reads in a few milliseconds.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402

# Tests compare against fp32 references; keep matmuls exact on CPU.
jax.config.update("jax_default_matmul_precision", "highest")

# The longest files first (worker-seconds in a full run): pytest-xdist hands whole files to its two workers in
# collection order, so the demo's end-to-end run (minutes of training) then overlaps everything else, and no long file
# is left to trail the short ones at the end.
LONGEST_FIRST = ("test_demo.py", "test_multiprocess.py", "test_cli.py", "test_readme.py",
                 "test_gcs.py", "test_objective.py", "test_training_e2e.py", "test_codec_training.py",
                 "test_conformer.py", "test_sampler_fixes.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable: order within a file is kept.
