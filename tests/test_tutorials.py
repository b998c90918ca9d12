"""Every tutorial in ``docs/tutorials/`` runs as written.

The ```` ```python ```` blocks of one tutorial are executed in order, in one fresh
subprocess (a shared namespace, the working directory a temporary folder,
``OMP_NUM_THREADS=1``, ``ECLEARN_DATA`` passed through). A block preceded by the comment
``<!-- needs-data: RELATIVE/PATH -->`` runs only when that file exists under
``$ECLEARN_DATA``; the tutorial's other blocks must not depend on it. The tutorials
``assert`` their own claims (constraint met within tolerance, error below a bound), so a
block that stops being true fails here with the tutorial's name, the block and its stderr.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
NEEDS = re.compile(r"<!--\s*needs-data:\s*(\S+)\s*-->")
FENCE = re.compile(r"^```python\s*$")
SECONDS = 60  # each tutorial should take ≤ ~20 s; this is the hard stop

DRIVER = r"""
import json, sys, time, traceback
import torch
torch.set_num_threads(1)
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for number, (line, source) in enumerate(blocks, 1):
    print(f"@@ block {number} (line {line}) @@", flush=True)
    start = time.perf_counter()
    try:
        exec(compile(source, f"<{sys.argv[2]} block {number}, line {line}>", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"@@ failed: block {number} (line {line}) @@", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"@@ {time.perf_counter() - start:.1f} s @@", flush=True)
"""


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    source: str
    needs: str | None  # a data file the block reads, relative to $ECLEARN_DATA


def python_blocks(path: Path) -> list[Block]:
    """The ```python fenced blocks of a Markdown file, in order, with their data needs."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    needs: str | None = None
    i = 0
    while i < len(lines):
        marker = NEEDS.search(lines[i])
        if marker:
            needs = marker.group(1)
        elif FENCE.match(lines[i]):
            start = i
            i += 1
            body = []
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append(Block(start + 1, "\n".join(body) + "\n", needs))
            needs = None
        elif lines[i].strip() and not lines[i].startswith("<!--"):
            needs = None  # a marker applies to the block right after it
        i += 1
    return blocks


def data_file(relative: str) -> Path | None:
    root = os.environ.get("ECLEARN_DATA")
    if not root:
        return None
    path = Path(root) / relative
    return path if path.is_file() else None


def run_blocks(name: str, blocks: list[Block], cwd: Path) -> subprocess.CompletedProcess[str]:
    spec = cwd / "blocks.json"
    spec.write_text(json.dumps([(b.line, b.source) for b in blocks]))
    driver = cwd / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(driver), str(spec), name],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=SECONDS,
    )


NAMES = sorted(p.stem for p in TUTORIALS.glob("*.md"))


def test_the_four_tutorials_exist():
    assert set(NAMES) >= {"own-constraint", "fairness", "pde", "proxy"}


@pytest.mark.parametrize("name", NAMES)
def test_tutorial_runs(name, tmp_path):
    blocks = python_blocks(TUTORIALS / f"{name}.md")
    assert blocks, f"{name}.md has no ```python blocks"
    missing = sorted({b.needs for b in blocks if b.needs and data_file(b.needs) is None})
    runnable = [b for b in blocks if b.needs is None or data_file(b.needs) is not None]
    start = time.perf_counter()
    proc = run_blocks(f"{name}.md", runnable, tmp_path)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        failed = re.findall(r"@@ failed: (block \d+ \(line \d+\)) @@", proc.stderr)
        where = failed[-1] if failed else "the driver"
        pytest.fail(f"tutorial {name}.md failed in {where}:\n{proc.stderr[-6000:]}", pytrace=False)
    if missing:
        pytest.skip(
            f"{name}.md ran {len(runnable)}/{len(blocks)} blocks in {seconds:.1f} s; the rest "
            f"need {', '.join(missing)} under $ECLEARN_DATA"
        )
