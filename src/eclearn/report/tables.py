"""Result tables from run directories: the same aggregation for ``eclearn run``'s closing
table, ``eclearn report``'s terminal output, ``report.md`` and ``report.html``.

Runs are grouped by experiment and resolved config (so the seeds of one setting pool
together and different settings never mix); each group is a column, each metric a row.
Numbers are shown as mean ± sample std over the group's seeds, booleans as ``k/n`` true,
strings as the value (or the mix of values). The summary table holds scalars only (and
two-number confidence intervals, keys ending ``_ci``/``_interval``): lists go to
per-component tables (:attr:`Table.arrays`, columns named by a list of strings of the same
length such as ``groups``), long strings to :attr:`Table.texts`, and the certificates to
short sentences per constraint (:attr:`Table.certificates`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eclearn.experiments.base import RunRecord
from eclearn.experiments.config import RunnerError, flatten

__all__ = [
    "Group",
    "Table",
    "build_tables",
    "certificate_sentences",
    "group_runs",
    "markdown_table",
    "render_markdown",
    "render_text",
    "summarize",
    "table_metrics_of",
]

BOOKKEEPING = ("experiment", "formulation", "label", "seed", "diagnostics")
TAIL = ("steps", "epochs", "stop_reason", "fit_seconds")
COMPACT_LIST = 4
LONG_TEXT = 80
"""Strings longer than this leave the summary table for the notes under it."""
CERTIFICATE_KEYS = ("certificate_summary",)
CERTIFICATE_FILE = "certificate.json"


@dataclass
class Group:
    """The complete runs of one experiment under one config (its seeds)."""

    experiment: str
    label: str
    runs: list[RunRecord]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def formulation(self) -> str:
        return str(self.runs[0].config.get("formulation", ""))

    def values(self, key: str) -> list[Any]:
        return [r.metrics[key] for r in self.runs if r.metrics is not None and key in r.metrics]

    def diagnostics(self) -> list[str]:
        """Diagnostics messages, each once, with the seeds it came from."""
        seen: dict[str, list[int]] = {}
        for r in self.runs:
            for message in (r.metrics or {}).get("diagnostics") or []:
                seen.setdefault(str(message), []).append(r.seed)
        return [f"seed {', '.join(map(str, s))}: {m}" for m, s in seen.items()]


@dataclass
class Table:
    """One experiment's table: a column per group, a row per metric."""

    experiment: str
    columns: list[str]
    rows: list[tuple[str, list[str]]]
    notes: list[str] = field(default_factory=list)
    num_runs: int = 0
    corner: str = "metric"
    arrays: list[Table] = field(default_factory=list)
    """Per-component tables of the list-valued metrics (one per list length)."""
    texts: list[str] = field(default_factory=list)
    """Long string metrics, one ``label: key: text`` line each."""
    certificates: list[tuple[str, list[str]]] = field(default_factory=list)
    """Per group: short sentences on the certificates of its runs."""


def group_runs(records: Iterable[RunRecord]) -> list[Group]:
    """Group complete runs by (experiment, resolved config), in first-seen order; labels
    that would collide get the config keys that tell them apart."""
    groups: dict[tuple[str, str], Group] = {}
    for record in records:
        if record.metrics is None:
            continue
        key = (record.experiment, json.dumps(record.config, sort_keys=True))
        if key not in groups:
            groups[key] = Group(record.experiment, record.label, [])
        groups[key].runs.append(record)
    experiments = list(dict.fromkeys(g.experiment for g in groups.values()))
    result = sorted(
        groups.values(),
        key=lambda g: (experiments.index(g.experiment), g.runs[0].info.get("sweep_index") or 0),
    )
    for group in result:
        group.runs.sort(key=lambda r: r.seed)
    by_label: dict[tuple[str, str], list[Group]] = {}
    for group in result:
        by_label.setdefault((group.experiment, group.label), []).append(group)
    for clash in by_label.values():
        if len(clash) < 2:
            continue
        flats = [flatten(g.runs[0].config) for g in clash]
        keys = sorted(
            k
            for k in set().union(*flats)
            if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1
        )
        for group, flat in zip(clash, flats, strict=True):
            group.label += " (" + ", ".join(f"{k}={flat.get(k)}" for k in keys) + ")"
    return result


def _number(x: float, digits: int = 4) -> str:
    if math.isfinite(x) and float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.{digits}g}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def summarize(values: Sequence[Any], *, compact: bool = False) -> str:
    """One cell: the aggregate of a metric's values over a group's runs."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    if all(isinstance(v, bool) for v in vals):
        if len(vals) == 1:
            return "yes" if vals[0] else "no"
        return f"{sum(vals)}/{len(vals)}"
    if all(_is_number(v) for v in vals):
        arr = np.asarray(vals, dtype=np.float64)
        mean = float(arr.mean())
        if len(arr) == 1 or bool(np.all(arr == arr[0])):
            return _number(mean)
        return f"{_number(mean)} ± {_number(float(arr.std(ddof=1)), 2)}"
    if all(isinstance(v, str) for v in vals):
        counts = Counter(vals)
        if len(counts) == 1:
            return vals[0]
        return ", ".join(f"{v}×{n}" for v, n in counts.items())
    if all(isinstance(v, list) for v in vals):
        lengths = {len(v) for v in vals}
        if len(lengths) == 1 and all(_is_number(x) for v in vals for x in v):
            means = np.asarray(vals, dtype=np.float64).mean(axis=0).tolist()
            shown = [_number(m, 3) for m in means]
            if compact and len(shown) > COMPACT_LIST:
                shown = [*shown[: COMPACT_LIST - 1], f"… ({len(means)})"]
            return "[" + ", ".join(shown) + "]"
        if all(v == vals[0] for v in vals):
            items = [str(x) for x in vals[0]]
            if compact and len(items) > COMPACT_LIST:
                items = [*items[: COMPACT_LIST - 1], f"… ({len(vals[0])})"]
            return "[" + ", ".join(items) + "]"
        return "(differ)"
    return "(mixed)"


def table_metrics_of(experiment: str) -> tuple[str, ...]:
    """The experiment's declared ``table_metrics`` (empty when it cannot be imported)."""
    from eclearn.experiments import registry

    try:
        return tuple(registry.experiment_class(experiment).table_metrics)
    except RunnerError:
        return ()


def _kind(key: str, values: Sequence[Any]) -> str:
    """How a metric is shown: ``scalar`` (summary table), ``array`` (per-component table),
    ``names`` (a list of strings: column names of arrays), ``text`` (a long string)."""
    vals = [v for v in values if v is not None]
    if vals and all(isinstance(v, list) for v in vals):
        if all(isinstance(x, str) for v in vals for x in v):
            return "names"
        interval = key.endswith(("_ci", "_interval"))
        if interval and all(len(v) == 2 and all(_is_number(x) for x in v) for v in vals):
            return "scalar"
        return "array"
    if any(isinstance(v, str) and len(v) > LONG_TEXT for v in vals):
        return "text"
    return "scalar"


def build_tables(groups: Sequence[Group], *, compact: bool = False) -> list[Table]:
    """One :class:`Table` per experiment. ``compact`` (terminal): only the experiment's
    ``table_metrics`` when it declares them, no per-component tables."""
    tables = []
    experiments = list(dict.fromkeys(g.experiment for g in groups))
    for experiment in experiments:
        members = [g for g in groups if g.experiment == experiment]
        keys: list[str] = []
        for g in members:
            for r in g.runs:
                for k, v in (r.metrics or {}).items():
                    if (
                        k not in keys
                        and k not in BOOKKEEPING
                        and k not in TAIL
                        and not isinstance(v, dict)
                    ):
                        keys.append(k)
        kinds = {k: _kind(k, [v for g in members for v in g.values(k)]) for k in keys}
        declared = [k for k in table_metrics_of(experiment) if k in keys]
        if compact and declared:
            keys = declared
        else:
            keys = declared + [k for k in keys if k not in declared]
        corner, columns = _columns([g.label for g in members])
        rows: list[tuple[str, list[str]]] = [
            ("seeds", [", ".join(map(str, g.seeds)) for g in members]),
        ]
        if any(c != g.formulation for c, g in zip(columns, members, strict=True)):
            rows.append(("formulation", [g.formulation for g in members]))
        for key in keys:
            if kinds[key] != "scalar" and not (compact and key in declared):
                continue
            rows.append((key, [summarize(g.values(key), compact=compact) for g in members]))
        for key in TAIL:
            if compact and key == "epochs":
                continue
            if any(g.values(key) for g in members):
                rows.append((key, [summarize(g.values(key), compact=compact) for g in members]))
        counts = [len(g.diagnostics()) for g in members]
        rows.append(("diagnostics", [str(n) if n else "none" for n in counts]))
        if compact:
            notes = [
                f"{g.label}: {n} diagnostic(s), e.g. {_shorten(g.diagnostics()[0], 120)} "
                "(all of them: metrics.json, eclearn report)"
                for g, n in zip(members, counts, strict=True)
                if n
            ]
        else:
            notes = [f"{g.label}: {line}" for g in members for line in g.diagnostics()]
        table = Table(experiment, columns, rows, notes, sum(len(g.runs) for g in members), corner)
        if not compact:
            arrays = [k for k in keys if kinds[k] == "array"]
            names = [k for k in keys if kinds[k] == "names"]
            table.arrays = _array_tables(experiment, members, arrays, names)
            table.texts = [
                f"{g.label}: {key}: {text}"
                for key in keys
                if kinds[key] == "text" and key not in CERTIFICATE_KEYS
                for g in members
                for text in dict.fromkeys(str(v) for v in g.values(key))
            ]
            table.certificates = [
                (g.label, lines) for g in members if (lines := certificate_sentences(g))
            ]
        tables.append(table)
    return tables


def _array_tables(
    experiment: str, members: Sequence[Group], arrays: Sequence[str], names: Sequence[str]
) -> list[Table]:
    """One table per list length: a row per (metric, group), a column per component,
    named by the first list of strings of that length (``groups``, ``*_names``)."""
    by_length: dict[int, list[tuple[str, Group, list[list[Any]]]]] = {}
    for key in arrays:
        for g in members:
            lists = [v for v in g.values(key) if isinstance(v, list)]
            if not lists:
                continue
            length = Counter(len(v) for v in lists).most_common(1)[0][0]
            if length == 0:
                continue
            by_length.setdefault(length, []).append(
                (key, g, [v for v in lists if len(v) == length])
            )
    tables = []
    several = len(members) > 1
    for length, entries in by_length.items():
        header = next(
            (
                (key, [str(x) for x in v])
                for key in names
                for g in members
                for v in g.values(key)
                if isinstance(v, list) and len(v) == length
            ),
            None,
        )
        columns = header[1] if header is not None else [str(i) for i in range(length)]
        corner = f"metric \\ {header[0]}" if header is not None else "metric \\ component"
        rows = []
        for key, g, lists in entries:
            label = f"{key} ({g.label})" if several else key
            cells = [summarize([v[i] for v in lists]) for i in range(length)]
            rows.append((label, cells))
        title = f"{experiment}: per-component values ({length} each)"
        if length > 6 and len(rows) < length:  # long and few: components as rows
            what = header[0] if header is not None else "component"
            rows, columns = (
                [(c, [cells[i] for _, cells in rows]) for i, c in enumerate(columns)],
                [label for label, _ in rows],
            )
            corner = f"{what} \\ metric"
        tables.append(Table(title, columns, rows, corner=corner, num_runs=0))
    return tables


def _sentences(text: str) -> list[str]:
    parts = [p.strip() for p in text.replace("; ", ". ").split(". ") if p.strip()]
    return [p if p.endswith(".") else p + "." for p in parts]


def certificate_sentences(group: Group) -> list[str]:
    """Short sentences on a group's certificates: per constraint, the verdict over the
    runs and what relaxing it would buy (from each run's ``certificate.json``; else the
    ``certificate_summary`` metric split into sentences)."""
    certificates = []
    for r in group.runs:
        path = r.path / CERTIFICATE_FILE
        if path.is_file():
            try:
                certificates.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue  # unreadable: the summary metric stands in
    if not certificates:
        lines: list[str] = []
        for r in group.runs:
            text = (r.metrics or {}).get("certificate_summary")
            if isinstance(text, str):
                for sentence in _sentences(text):
                    label = f"seed {r.seed}: {sentence}" if len(group.runs) > 1 else sentence
                    lines.append(label)
        return list(dict.fromkeys(lines))
    names = list(dict.fromkeys(k for c in certificates for k in c.get("constraints", {})))
    if not names:
        return ["No constraints to certify."]
    n = len(certificates)
    level = f"{certificates[0].get('confidence', 0.95):.0%}"
    out = [f"{level} confidence intervals on held-out data, {n} run{'s' if n != 1 else ''}:"]
    for name in names:
        entries = [c["constraints"][name] for c in certificates if name in c.get("constraints", {})]
        size = len(entries[0].get("verdicts") or [1])
        tolerance = float(entries[0].get("tolerance") or 0.0)
        phrases = {
            "satisfied": f"holds within tolerance {tolerance:g}",
            "violated": f"is violated beyond tolerance {tolerance:g}",
            "cannot tell": f"the data cannot tell whether it holds within tolerance {tolerance:g}",
        }
        verdicts = Counter(e.get("verdict", "?") for e in entries)
        told = "; ".join(
            f"{phrases.get(v, v)} ({k} of {len(entries)} runs)" for v, k in verdicts.most_common()
        )
        what = f"{name} ({size} components)" if size > 1 else name
        out.append(f"{what}: {told}.")
        prices = [max(e.get("price_per_unit_relaxation") or [0.0]) for e in entries]
        if max(prices) > 0:
            step = max(tolerance, 1e-2)
            gain = summarize([p * step for p in prices])
            out.append(
                f"Relaxing {name} by {step:g} would improve the optimal objective by about "
                f"{gain} (largest |multiplier| {summarize(prices)})."
            )
    gaps = [c["duality_gap"]["gap"] for c in certificates if c.get("duality_gap")]
    if gaps:
        out.append(f"Empirical duality gap ≈ {summarize(gaps)}.")
    return out


def _columns(labels: list[str]) -> tuple[str, list[str]]:
    """Column headers: a sweep over one key shows its values under that key's name."""
    parts = [
        label.split("=", 1) if label.count("=") == 1 and "," not in label else None
        for label in labels
    ]
    keys = {p[0] for p in parts if p is not None}
    if all(p is not None for p in parts) and len(keys) == 1:
        return f"metric \\ {keys.pop()}", [p[1] for p in parts]  # type: ignore[index]
    return "metric", labels


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def render_text(tables: Sequence[Table], *, title: str = "") -> str:
    """Aligned plain-text tables for the terminal (with diagnostics under each)."""
    blocks = [title] if title else []
    for table in tables:
        count = table.num_runs
        header = [table.corner, *table.columns]
        body = [[name, *cells] for name, cells in table.rows]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        lines = [f"{table.experiment} — {count} run{'s' if count != 1 else ''}"]
        for row in [header, *body]:
            lines.append(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )
        lines[1:2] = [lines[1], "  ".join("-" * w for w in widths)]
        lines += [f"  ! {note}" for note in table.notes]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_markdown(tables: Sequence[Table], *, level: int = 3) -> list[str]:
    """One Markdown table (with a heading) per experiment."""
    return [f"{'#' * level} {table.experiment}\n\n" + markdown_table(table) for table in tables]


def markdown_table(table: Table) -> str:
    """``table`` as a Markdown table (no heading)."""
    lines = [
        f"| {_md(table.corner)} | " + " | ".join(_md(c) for c in table.columns) + " |",
        "|---|" + "---|" * len(table.columns),
    ]
    for name, cells in table.rows:
        lines.append(f"| {_md(name)} | " + " | ".join(_md(c) for c in cells) + " |")
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
