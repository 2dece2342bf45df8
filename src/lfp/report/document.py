"""The report's document model: a list of `Section`s rendered to Markdown (for git diffs and GitHub)
and to HTML (for a browser) from the same objects, without a hand-written Markdown converter;
tables are pandas DataFrames. Section functions build `Section`s; only this module renders them."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

import pandas as pd


@dataclass
class Section:
    """One heading of the report: prose, tables, notes on blank or odd cells, figures (in that order)."""

    title: str
    text: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (caption, path relative to reports/)
    notes: list[str] = field(default_factory=list)  # why a cell is blank or odd; printed under the tables


def anchors(titles: list[str]) -> list[str]:
    """GitHub's heading anchors (lowercase, punctuation dropped, spaces to '-', repeats numbered), so
    the table of contents links work in report.md on GitHub and in report.html (same ids)."""
    seen: dict[str, int] = {}
    out = []
    for title in titles:
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.append(f"{slug}-{n}" if n else slug)
    return out


def contents(sections: list[Section], extra: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(title, anchor) of every section, then of `extra` headings appended after the sections."""
    titles = [s.title for s in sections] + list(extra)
    return list(zip(titles, anchors(titles)))


def render_markdown(sections: list[Section], extra: tuple[str, ...] = ()) -> str:
    """The report in Markdown, a table of contents first (`extra`: headings appended after it)."""
    toc = contents(sections, extra)
    out = ["# Learned Feedback Patterns — report", "", "**Contents**", ""]
    out += [f"- [{title}](#{anchor})" for title, anchor in toc] + [""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for p in s.text:
            out += [p, ""]
        for caption, df in s.tables:
            if caption:
                out += [f"*{caption}*", ""]
            out += [df.to_markdown(index=False), ""]
        for note in s.notes:
            out += [f"> {note}", ""]
        for caption, img in s.images:
            out += [f"![{caption}]({img})", ""]
    return "\n".join(out)


def _html_inline(text: str) -> str:
    """Escape, then the two Markdown marks the report's prose uses: **bold** and `code`."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"\*(.+?)\*", r"<em>\1</em>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _html_paragraph(text: str) -> str:
    lines = text.split("\n")
    if all(line.startswith("- ") for line in lines):
        return "<ul>" + "".join(f"<li>{_html_inline(line[2:])}</li>" for line in lines) + "</ul>"
    return f"<p>{_html_inline(text)}</p>"


def render_html(sections: list[Section], extra: tuple[str, ...] = ()) -> str:
    """The report in HTML, a table of contents first (`extra`: headings appended after it)."""
    toc = contents(sections, extra)
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>LFP report</title>",
           ("<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:600px}.note{color:#444;font-size:90%}"
            "nav.toc ul{columns:2;font-size:95%}</style></head><body>"),
           "<h1>Learned Feedback Patterns — report</h1>",
           "<nav class='toc'><strong>Contents</strong><ul>"
           + "".join(f"<li><a href='#{html.escape(a)}'>{html.escape(t)}</a></li>" for t, a in toc) + "</ul></nav>"]
    for s, (_, anchor) in zip(sections, toc):
        out.append(f"<h2 id='{html.escape(anchor)}'>{html.escape(s.title)}</h2>")
        for p in s.text:
            out.append(_html_paragraph(p))
        for caption, df in s.tables:
            if caption:
                out.append(f"<p><em>{html.escape(caption)}</em></p>")
            # cells are escaped; a **bold** cell (the verdict words) becomes <strong>, as in the prose
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", df.to_html(index=False, escape=True)))
        for note in s.notes:
            out.append(f"<p class='note'>{_html_inline(note)}</p>")
        for caption, img in s.images:
            out.append(f"<figure><img src='{html.escape(img)}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)
