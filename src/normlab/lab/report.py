"""The HTML report: one self-contained file per run directory, readable offline in any browser.

Figures are embedded as base64 PNG, styles are inline, nothing is fetched.  Each experiment contributes a
section (claim, verdict, what was measured, tables, figures, configuration, notes); a run with several
experiments starts with an index of them.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from normlab.lab.base import HOLDS, Result, Table

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1.5rem; color: #1d2430; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; }
h2 { font-size: 1.3rem; border-bottom: 2px solid #e3e7ee; padding-bottom: .3rem; margin-top: 2.5rem; }
h3 { font-size: 1.02rem; margin: 1.2rem 0 .4rem; }
.meta { color: #5b6475; font-size: .9rem; }
.claim { background: #f5f7fb; border-left: 4px solid #7a8aa8; padding: .6rem .9rem; margin: .8rem 0; }
.verdict { display: inline-block; font-weight: 600; padding: .1rem .55rem; border-radius: .8rem; }
.holds { background: #dff3e4; color: #17633a; }
.not-holds { background: #fbe6dc; color: #8a3412; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .88rem; }
th, td { border: 1px solid #d8dde6; padding: .25rem .6rem; text-align: right; }
th { background: #f0f3f8; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #e3e7ee; margin: .4rem 0; }
pre { background: #f5f7fb; padding: .6rem; overflow-x: auto; font-size: .8rem; }
details summary { cursor: pointer; color: #3a4a6b; }
ul.notes li { color: #5b6475; }
"""


def _cell(value: Any) -> str:
    # four significant digits, trailing zeros kept, so a column of accuracies lines up (0.9160, 1.000)
    text = f"{value:#.4g}" if isinstance(value, float) else str(value)
    return html.escape(text)


def table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in table.rows
    )
    return f"<h3>{html.escape(table.title)}</h3><table><tr>{head}</tr>{body}</table>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(path.stem.replace("_", " "))
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"></figure>'


def verdict_html(verdict: str) -> str:
    css = "holds" if verdict == HOLDS else "not-holds"
    return f'<span class="verdict {css}">{html.escape(verdict)}</span>'


def section_html(
    name: str, source: str, result: Result, config: Mapping[str, Any], wall_time: float
) -> str:
    """The report section of one experiment (also written alone as ``section.html``)."""
    parts = [
        f'<section id="{html.escape(name)}"><h2>{html.escape(name)}</h2>',
        f'<p class="meta">Source: {html.escape(source)} &middot; wall time {wall_time:.1f} s</p>',
        f'<div class="claim"><b>Claim.</b> {html.escape(result.claim)}</div>',
        f"<p><b>Verdict:</b> {verdict_html(result.verdict)} &mdash; {html.escape(result.measured)}</p>",
    ]
    parts += [table_html(t) for t in result.tables]
    parts += [_image(p) for p in result.figures if p.exists()]
    if result.notes:
        parts.append(
            '<h3>Notes</h3><ul class="notes">'
            + "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
            + "</ul>"
        )
    parts.append(
        "<details><summary>Configuration</summary><pre>"
        + html.escape(json.dumps(config, indent=2))
        + "</pre></details></section>"
    )
    return "\n".join(parts)


def summary_paragraph(name: str, result: Result) -> str:
    """The index's paragraph for one experiment, made only of what the run computed: the claim, the verdict
    and the measurement it was decided from (no fixed prose that a run's numbers could contradict)."""
    return (
        f'<p><a href="#{html.escape(name)}"><b>{html.escape(name)}</b></a>: '
        f"{html.escape(result.claim)} {verdict_html(result.verdict)} &mdash; "
        f"{html.escape(result.measured)}.</p>"
    )


def report_html(
    title: str,
    meta: Mapping[str, Any],
    sections: Sequence[tuple[str, str, float, str]],
    summaries: Sequence[str] = (),
) -> str:
    """The whole report.  ``sections`` holds (name, verdict, wall time, section html) per experiment;
    ``summaries`` the index's paragraphs (:func:`summary_paragraph`), shown under the index table."""
    meta_rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in meta.items()
    )
    index = ""
    if len(sections) > 1:
        rows = "".join(
            f'<tr><td><a href="#{html.escape(n)}">{html.escape(n)}</a></td><td>{verdict_html(v)}</td>'
            f"<td>{t:.1f} s</td></tr>"
            for n, v, t, _ in sections
        )
        index = f"<h3>Experiments</h3><table><tr><th>experiment</th><th>verdict</th><th>wall time</th></tr>{rows}</table>"
        if summaries:
            index += "<h3>Summary</h3>" + "\n".join(summaries)
    body = "\n".join(s for *_, s in sections)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table>{meta_rows}</table>{index}{body}</body></html>\n"
    )
