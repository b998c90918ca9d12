"""The README's API example runs as printed and does what its comments say."""

from __future__ import annotations

import io
import re
from contextlib import redirect_stdout
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_api_example_runs_and_meets_its_constraint(tmp_path, monkeypatch, one_thread):
    text = README.read_text()
    section = text.split("## The API in 20 lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with redirect_stdout(out):
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
    printed = out.getvalue()
    assert "→ feasible at tol 0.01" in printed
    assert (tmp_path / "ckpt.pt").is_file()
    assert namespace["result"].selected.feasible
