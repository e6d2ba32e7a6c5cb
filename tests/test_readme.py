"""The README's Python example runs and prints what the README says it prints."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_example_prints_what_it_promises() -> None:
    blocks = python_blocks()
    assert blocks, "the README has no python example"
    for block in blocks:
        promised = [line.removeprefix("# ").strip() for line in block.splitlines() if line.startswith("# ")]
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            exec(compile(block, str(README), "exec"), {})
        assert output.getvalue().split() == promised
