"""The README's Python examples run as written, in order, in one namespace."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.slow
def test_readme_python_blocks_run():
    blocks = python_blocks(README.read_text())
    assert blocks, "the README should hold Python examples"
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        except Exception as error:  # re-raise with the block that failed
            raise AssertionError(f"README python block {i} failed:\n{block}") from error
