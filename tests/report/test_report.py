"""Readable reports: a scalar summary table, arrays in their own tables, certificates as
short sentences, no empty panels, every axis labelled, hook warnings as figure notes —
and the page rendered in a real headless browser without console errors or broken images."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest

from eclearn.experiments.base import RunRecord
from eclearn.history import History
from eclearn.report import figures as F
from eclearn.report.tables import build_tables, group_runs

TOY = [
    "--set",
    "n_train=256",
    "--set",
    "n_test=256",
    "--set",
    "epochs=8",
    "--set",
    "batch_size=64",
    "--no-progress",
]


def run_cli(*args):
    from eclearn.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    return code


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    """Two tiny toy configs (Lagrangian; penalty: multipliers never move), 2 seeds each."""
    root = tmp_path_factory.mktemp("report")
    for formulation in ("lagrangian", "penalty"):
        code = run_cli(
            "run",
            "toy",
            "--out",
            root / formulation,
            "--seed",
            "0",
            "1",
            "--set",
            f"formulation={formulation}",
            "--set",
            "certify=true",
            *TOY,
        )
        assert code == 0
    assert run_cli("report", root, "--out", root / "rep") == 0
    return root


def labelled_axes(monkeypatch):
    """Check every axis of every figure the report module saves."""
    seen = []
    original = F.save_figure

    def checking(fig, path):
        for ax in fig.axes:
            assert ax.get_xlabel(), f"{path.name}: x axis without label"
            assert ax.get_ylabel(), f"{path.name}: y axis without label"
            assert ax.lines or ax.collections or ax.texts, f"{path.name}: empty panel"
        seen.append(path.name)
        return original(fig, path)

    monkeypatch.setattr(F, "save_figure", checking)
    return seen


def history(columns, rows):
    h = History(columns)
    for row in rows:
        import torch

        h.record([torch.tensor(float(v)) for v in row[2:]], row[:2])
    return h


def test_feasibility_and_unconstrained_runs_draw_no_empty_panels(tmp_path, monkeypatch):
    seen = labelled_axes(monkeypatch)
    steps = range(1, 41)
    feasibility = history(
        ["step", "epoch", "objective", "lagrangian", "violation/c", "multiplier/c"],
        [(s, 0, np.nan, 0.1 / s, 0.1 / s, 1 - 1 / s) for s in steps],
    )
    constraints = [{"name": "c", "kind": "equality"}]
    paths = F.run_figures(feasibility, constraints, tmp_path / "a")
    assert [p.name for p in paths] == ["violations.png", "multipliers.png"]
    unconstrained = history(
        ["step", "epoch", "objective", "lagrangian"], [(s, 0, 1 / s, 1 / s) for s in steps]
    )
    assert [p.name for p in F.run_figures(unconstrained, [], tmp_path / "b")] == ["objective.png"]
    penalty = history(
        ["step", "epoch", "objective", "lagrangian", "violation/c", "multiplier/c"],
        [(s, 0, 1 / s, 1 / s, 0.1 / s, 0.0) for s in steps],
    )
    names = [p.name for p in F.run_figures(penalty, constraints, tmp_path / "c")]
    assert names == ["objective.png", "violations.png"]  # multipliers never moved
    # the comparison: a feasibility group draws no objective panel; nothing at all → None
    out = F.comparison_figure({"f": [feasibility]}, constraints, tmp_path / "cmp.png")
    assert out is not None and out.is_file()
    assert F.comparison_figure({"u": [unconstrained]}, [], tmp_path / "u.png") is not None
    empty = history(
        ["step", "epoch", "objective", "lagrangian"], [(s, 0, np.nan, np.nan) for s in steps]
    )
    assert F.comparison_figure({"e": [empty]}, [], tmp_path / "e.png") is None
    assert len(seen) == 7


def record(tmp_path, seed, metrics, certificate=None):
    path = tmp_path / f"seed-{seed}"
    path.mkdir(parents=True, exist_ok=True)
    if certificate is not None:
        (path / "certificate.json").write_text(json.dumps(certificate))
    return RunRecord(
        path,
        "demo",
        seed,
        "lagrangian",
        {"formulation": "lagrangian"},
        {"experiment": "demo", "seed": seed, **metrics},
    )


def test_summary_table_holds_scalars_and_arrays_get_their_own(tmp_path):
    long = "x" * 500
    cert = {
        "confidence": 0.9,
        "constraints": {
            "rate": {
                "verdicts": ["satisfied", "cannot tell"],
                "verdict": "cannot tell",
                "tolerance": 0.02,
                "price_per_unit_relaxation": [0.5, 0.25],
            },
        },
        "duality_gap": None,
    }
    runs = [
        record(
            tmp_path,
            s,
            {
                "error": 1.0 + s,
                "error_ci": [0.5, 1.5],
                "groups": ["a", "b"],
                "rates": [0.25, 0.75 + s],
                "note": long,
                "certificate_summary": long,
            },
            cert,
        )
        for s in (0, 1)
    ]
    (table,) = build_tables(group_runs(runs))
    names = [name for name, _ in table.rows]
    assert "error" in names and "error_ci" in names  # scalars and intervals stay
    assert not {"rates", "groups", "note", "certificate_summary"} & set(names)
    assert all(len(cell) < 100 for _, cells in table.rows for cell in cells)
    (arrays,) = table.arrays
    assert arrays.columns == ["a", "b"] and arrays.rows[0][0] == "rates"
    assert arrays.rows[0][1] == ["0.25", "1.25 ± 0.71"]
    assert table.texts == [f"lagrangian: note: {long}"]
    ((label, sentences),) = table.certificates
    assert label == "lagrangian"
    assert (
        "rate (2 components): the data cannot tell whether it holds within tolerance 0.02 "
        "(2 of 2 runs)." in sentences
    )
    assert all(len(s) < 200 for s in sentences)
    assert any("Relaxing rate by 0.02" in s for s in sentences)


def test_report_page_is_readable(toy_report):
    html = (toy_report / "rep" / "report.html").read_text()
    md = (toy_report / "rep" / "report.md").read_text()
    cells = re.findall(r"<td>(.*?)</td>", html, re.S)
    assert cells and max(len(c) for c in cells) < 200
    assert "<h3>Certificates</h3>" in html and "### Certificates" in md
    assert "per-component values" in html
    for formulation, multipliers in (("lagrangian", True), ("penalty", False)):
        figures = {p.name for p in (toy_report / formulation / "seed-0" / "figures").glob("*.png")}
        assert {"objective.png", "violations.png"} <= figures
        assert ("multipliers.png" in figures) is multipliers, formulation
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html):
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"


def test_hook_warnings_become_figure_notes(toy_report, tmp_path, monkeypatch):
    from eclearn.experiments import registry

    toy = registry.experiment_class("toy")

    def hook(runs, out_dir):
        warnings.warn("the comparison with X is not drawn: X is not installed")
        return []

    monkeypatch.setattr(toy, "report_figures", classmethod(lambda cls, r, o: hook(r, o)))
    shutil.copytree(toy_report / "lagrangian", tmp_path / "runs")
    assert run_cli("report", tmp_path / "runs", "--out", tmp_path / "rep") == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Figure notes:" in html and "X is not installed" in html


def browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener("load", () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0);
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({images: document.images.length,
    broken: broken.map(i => i.alt), errors: window.__errors});
  document.body.appendChild(probe);
});
</script>"""


@pytest.mark.skipif(browser() is None, reason="no headless browser (apt-get install chromium)")
def test_report_renders_in_a_headless_browser(toy_report, tmp_path):
    page = (toy_report / "rep" / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    flags = [
        browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert match, "the page did not finish loading"
    probe = json.loads(match.group(1).replace("&quot;", '"'))
    assert probe["images"] == page.count("<img ") > 0
    assert probe["broken"] == [] and probe["errors"] == []
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    shot = tmp_path / "report.png"
    result = subprocess.run(
        [
            *flags,
            "--window-size=1280,2400",
            f"--screenshot={shot}",
            (toy_report / "rep" / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("L"))
    assert pixels.std() > 10  # not a blank page
