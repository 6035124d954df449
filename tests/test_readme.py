"""The README's Python examples run as written, in order, in one namespace.

They run in a fresh interpreter with XLA's default optimisation level: the
examples are paper-size (1024 frames, dim 512), so their run time outweighs
compiling, and the -O0 compiles and older loop emitters that tests/conftest.py
sets for the rest of the suite would make them about 1.6x slower. LLVM's expensive passes stay off
(conftest's other flag): they cost compile time and bought no run time here.
"""
import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"

RUNNER = r"""
import re, sys, traceback
blocks = re.findall(r"```python\n(.*?)```", open(sys.argv[1]).read(), flags=re.DOTALL)
namespace = {}
for i, block in enumerate(blocks):
    try:
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    except Exception:
        traceback.print_exc()
        print(f"\nREADME python block {i} failed:\n{block}", file=sys.stderr)
        sys.exit(1)
"""


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.slow
def test_readme_python_blocks_run():
    blocks = python_blocks(README.read_text())
    assert blocks, "the README should hold Python examples"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # The suite's device count (8 emulated CPUs), without conftest's -O0 and its older loop emitters (both
    # compile faster but run slower; these examples run more than they compile).
    env["XLA_FLAGS"] = " ".join(flag for flag in env.get("XLA_FLAGS", "").split()
                                if not flag.startswith(("--xla_backend_optimization_level",
                                                        "--xla_cpu_use_fusion_emitters")))
    # The same matmul precision as the rest of the suite (tests/conftest.py).
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    result = subprocess.run([sys.executable, "-c", RUNNER, str(README)], env=env, cwd=README.parent,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-5000:]
