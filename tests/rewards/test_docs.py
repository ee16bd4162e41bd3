"""Every ```python block of docs/rewards.md runs (in-process, so the docs cannot rot)."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "rewards.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL) if DOC.exists() else []


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_doc_example_runs(i):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(BLOCKS[i], f"rewards.md block {i}", "exec"), {"__name__": "__doc_example__"})
    assert buf.getvalue().strip()


def test_worked_numbers_in_docs():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(BLOCKS[1], {})
    assert "[ 4.   0.5 -3. ]" in out.getvalue()
