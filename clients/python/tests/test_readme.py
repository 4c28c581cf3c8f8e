"""The README's example runs as written, against the real server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import Server


def test_the_readme_example(
    server: Server, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    match = re.search(r"```python\n(.*?)```", readme, re.DOTALL)
    assert match is not None
    code = match.group(1).replace("http://localhost:8080", server.url)
    exec(compile(code, "README.md", "exec"), {"jwt": token})  # noqa: S102 - our own README
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "I'm allergic to peanuts."
    assert len(lines) >= 2, "then the answer"
