"""A self-contained HTML page: inline CSS, figures embedded as base64 PNG (no external
files, so the report can be mailed or archived as one file)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape
from pathlib import Path

from eclearn.report.tables import Table

__all__ = [
    "details",
    "figure",
    "heading",
    "page",
    "paragraph",
    "sentences",
    "table",
    "unordered",
]

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left;
         font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
td:first-child { font-family: ui-monospace, monospace; white-space: nowrap; }
table.arrays td:not(:first-child), table.arrays th:not(:first-child) { text-align: right; }
td { max-width: 40rem; overflow-wrap: anywhere; }
th { overflow-wrap: anywhere; }
.wide { overflow-x: auto; max-width: 100%; }
ul.sentences { margin-top: 0.2rem; }
h3 { margin-bottom: 0.3rem; }
figure { display: inline-block; margin: 0.5rem; vertical-align: top; }
figure img { max-width: 34rem; border: 1px solid #eee; }
figcaption { font-size: 0.8rem; color: #555; }
.note { color: #8a4b00; }
code { background: #f5f5f5; padding: 0 0.2rem; }
"""


def page(title: str, body: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def heading(text: str, level: int = 2) -> str:
    return f"<h{level}>{escape(text)}</h{level}>"


def paragraph(text: str, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<p{cls}>{escape(text)}</p>"


def unordered(items: Sequence[str], css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<ul{cls}>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def table(t: Table, css: str = "") -> str:
    head = (
        f"<tr><th>{escape(t.corner)}</th>"
        + "".join(f"<th>{escape(c)}</th>" for c in t.columns)
        + "</tr>"
    )
    body = "".join(
        "<tr><td>"
        + escape(name)
        + "</td>"
        + "".join(f"<td>{escape(c)}</td>" for c in cells)
        + "</tr>"
        for name, cells in t.rows
    )
    cls = f' class="{css}"' if css else ""
    return f'<div class="wide"><table{cls}>{head}{body}</table></div>'


def figure(path: Path, caption: str = "") -> str:
    """An ``<img>`` with the PNG embedded as a data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    text = escape(caption or Path(path).name)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{text}">'
        f"<figcaption>{text}</figcaption></figure>"
    )


def sentences(label: str, lines: Sequence[str]) -> str:
    """A labelled list of short sentences (a group's certificate)."""
    return f"<p><strong>{escape(label)}</strong></p>" + unordered(lines, "sentences")


def details(summary: str, inner: Sequence[str]) -> str:
    return f"<details><summary>{escape(summary)}</summary>" + "\n".join(inner) + "</details>"
