"""Reports from run directories: tables (terminal, Markdown), figures and one
self-contained HTML page.

:func:`write_report` groups complete runs by experiment and config, aggregates their
``metrics.json`` over seeds, draws the cross-run training comparison and each experiment's
optional ``report_figures``, and writes ``report.md`` and ``report.html``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eclearn.experiments.base import RunRecord
from eclearn.experiments.config import RunnerError
from eclearn.experiments.rundir import OwnedFiles
from eclearn.report import html
from eclearn.report.tables import (
    Group,
    Table,
    build_tables,
    group_runs,
    render_markdown,
    render_text,
    summarize,
)

__all__ = [
    "Group",
    "ReportFiles",
    "Table",
    "build_tables",
    "default_out_dir",
    "group_runs",
    "render_markdown",
    "render_text",
    "summarize",
    "write_report",
]


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def default_out_dir(records: Sequence[RunRecord]) -> Path:
    """The common parent of the runs' directories."""
    parents = [str(r.path.resolve().parent) for r in records]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def _relative(path: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return path.resolve().as_posix()


def write_report(
    records: Sequence[RunRecord],
    out_dir: str | os.PathLike[str],
    *,
    warn: Callable[[str], None] | None = None,
) -> ReportFiles:
    """Write ``report.md``, ``report.html`` and ``figures/`` into ``out_dir``. Only files
    an earlier report wrote there (its ``.eclearn-files.json``) are ever replaced: a user's
    file of the same name is an error naming it, raised before anything is written."""
    warn = warn or (lambda message: print(message, file=sys.stderr))
    out = Path(out_dir)
    complete = [r for r in records if r.complete]
    incomplete = [r for r in records if not r.complete]
    if not complete:
        raise RunnerError(
            "no complete runs to report (none has metrics.json); finish them "
            "with `eclearn run --resume DIR`"
        )
    groups = group_runs(complete)
    tables = build_tables(groups)
    owned = report_files(out)
    files = ReportFiles(out / "report.md", out / "report.html")
    for page in (files.markdown, files.html):  # refuse a user's file before any work
        if page.exists() and not owned.owns(page):
            owned.claim(page)  # raises, naming it
    owned.mkdir(out / "figures")
    for page in (files.markdown, files.html):
        owned.claim(page)
    with owned.staging() as staging:
        _write_body(complete, incomplete, groups, tables, out, files, owned, staging, warn)
    return files


def report_files(out: Path) -> OwnedFiles:
    """The manifest of what ``eclearn report`` wrote into ``out``; reports written before
    the manifest existed are recognised by their first line and adopted."""
    owned = OwnedFiles(
        out, what="report folder", then="run `eclearn report` again or choose another --out"
    )
    legacy = {"report.md": "# eclearn report", "report.html": "<title>eclearn report"}
    for name, mark in legacy.items():
        path = out / name
        if name not in owned.owned and path.is_file():
            try:
                head = path.read_text(encoding="utf-8", errors="replace")[:2000]
            except OSError:
                continue
            if mark in head:
                owned.adopt([path])
    return owned


def _write_body(
    complete: list[RunRecord],
    incomplete: list[RunRecord],
    groups: list[Group],
    tables: list[Table],
    out: Path,
    files: ReportFiles,
    owned: OwnedFiles,
    staging: Path,
    warn: Callable[[str], None],
) -> None:
    """Draw the figures (in ``staging``, then moved into ``figures/``) and write the pages."""
    import warnings

    from eclearn.experiments import registry
    from eclearn.report.figures import comparison_figure
    from eclearn.report.tables import markdown_table

    figure_dir = out / "figures"
    stamp = time.strftime("%Y-%m-%d %H:%M")
    md = [
        "# eclearn report",
        "",
        f"{len(complete)} complete run(s) in {len(groups)} group(s); generated {stamp}.",
        "",
    ]
    body = [
        html.heading("eclearn report", 1),
        html.paragraph(
            f"{len(complete)} complete run(s) in {len(groups)} group(s); generated {stamp}."
        ),
    ]
    for table, md_table in zip(tables, render_markdown(tables, level=2), strict=True):
        members = [g for g in groups if g.experiment == table.experiment]
        runs = [r for g in members for r in g.runs]
        md += [md_table, ""]
        body += [html.heading(table.experiment, 2), html.table(table)]
        if table.notes:
            md += ["Diagnostics:", ""] + [f"- {n}" for n in table.notes] + [""]
            body += [html.paragraph("Diagnostics:"), html.unordered(table.notes, "note")]
        if table.certificates:
            md += ["### Certificates", ""]
            body.append(html.heading("Certificates", 3))
            for label, sentences in table.certificates:
                md += [f"- **{label}**"] + [f"  - {line}" for line in sentences]
                body.append(html.sentences(label, sentences))
            md.append("")
        for array in table.arrays:
            md += [f"### {array.experiment}", "", markdown_table(array), ""]
            body += [html.heading(array.experiment, 3), html.table(array, "arrays")]
        if table.texts:
            md += ["Other values:", ""] + [f"- {t}" for t in table.texts] + [""]
            body += [html.paragraph("Other values:"), html.unordered(table.texts)]
        made: list[Path] = []
        series = {
            g.label: [r.history() for r in g.runs if (r.path / "history.csv").is_file()]
            for g in members
        }
        if any(series.values()):
            constraints = next(
                (r.info.get("constraints") for r in runs if r.info.get("constraints")), None
            )
            drawn = comparison_figure(
                {k: v for k, v in series.items() if v},
                constraints,
                staging / f"{table.experiment}-training.png",
                table.experiment,
            )
            if drawn is not None:
                made.append(drawn)
        figure_notes: list[str] = []
        try:
            hook = registry.experiment_class(table.experiment).report_figures
            # what a hook warns (a comparison it cannot draw, and why) goes into the report
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                made += [Path(p) for p in hook(runs, staging)]
            figure_notes += [f"{table.experiment}: {w.message}" for w in caught]
        except RunnerError as err:
            figure_notes.append(f"{table.experiment}: no experiment figures ({err})")
        except Exception as err:
            figure_notes.append(
                f"{table.experiment}: report_figures failed: {type(err).__name__}: {err}"
            )
        files.notes += figure_notes
        made = owned.install([p for p in made if p.is_file()], staging, figure_dir)
        files.figures += made
        if made:
            md += [f"![{p.stem}](<{_relative(p, out)}>)" for p in made] + [""]
            body += [html.figure(p, p.stem) for p in made if p.is_file()]
        if figure_notes:
            md += ["Figure notes:", ""] + [f"- {n}" for n in figure_notes] + [""]
            body += [html.paragraph("Figure notes:"), html.unordered(figure_notes, "note")]
        md += ["Runs:", ""]
        for g in members:
            first = g.runs[0]
            figs = first.figure_paths()
            links = ", ".join(f"[{p.stem}](<{_relative(p, out)}>)" for p in figs)
            md.append(
                f"- **{g.label}**: "
                + ", ".join(_relative(r.path, out) for r in g.runs)
                + (f" — figures of seed {first.seed}: {links}" if links else "")
            )
            inner = [html.paragraph("runs: " + ", ".join(_relative(r.path, out) for r in g.runs))]
            inner += [html.figure(p, f"{g.label} seed {first.seed}: {p.stem}") for p in figs]
            body.append(html.details(f"{g.label} — runs and figures of seed {first.seed}", inner))
        md.append("")
    if incomplete:
        lines = [
            f"{_relative(r.path, out)} (no metrics.json; resume with `eclearn run "
            f"--resume {r.path}`)"
            for r in incomplete
        ]
        md += ["## Incomplete runs (not in the tables)", ""] + [f"- {x}" for x in lines] + [""]
        body += [
            html.heading("Incomplete runs (not in the tables)", 2),
            html.unordered(lines, "note"),
        ]
    if files.notes:
        md += ["## Notes", ""] + [f"- {n}" for n in files.notes] + [""]
        body += [html.heading("Notes", 2), html.unordered(files.notes, "note")]
        for note in files.notes:
            warn(f"warning: {note}")
    owned.write_text(files.markdown, "\n".join(md).rstrip() + "\n")
    owned.write_text(files.html, html.page("eclearn report", body))
