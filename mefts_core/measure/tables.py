"""The one table writer: columns + rows as aligned text, Markdown, CSV, JSON or LaTeX.

Every writer takes `columns` (the header, and for mapping rows the keys to read, in order) and `rows`, each a
mapping (read by column name; a missing key is None) or a sequence of values (read by position). Every writer
returns text ending in a newline, ready to write to a file. Cells: None is empty, a float is written with `repr`
(every digit, so it reads back exactly), anything else with `str`. CSV and JSON keep raw values; the caller formats
numbers for people (MiB, %, ...) before handing rows to the text, Markdown and LaTeX writers.

Used by the core CLI (`train`, `sweep`, `bench`), the bench's row files and tables (mefts_core.measure.bench), and
the service's exports (backend/tables.py). Nothing here imports the service.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

Columns = Sequence[str]
Rows = Iterable[Mapping[str, Any] | Sequence[Any]]


def values(columns: Columns, row: Mapping[str, Any] | Sequence[Any]) -> list[Any]:
    """A row's values in column order."""
    if isinstance(row, Mapping):
        return [row.get(c) for c in columns]
    return list(row)


def cell(value: Any) -> str:
    """One value as text: None is empty, floats keep every digit (`repr`)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def to_text(columns: Columns, rows: Rows, *, header: bool = True) -> str:
    """Aligned plain text for a terminal: columns padded to their widest cell, two spaces apart, no trailing blanks.

    header=False leaves the column names out (a key/value listing); they still give the number of columns.
    """
    lines = ([list(columns)] if header else []) + [[cell(v) for v in values(columns, r)] for r in rows]
    if not lines:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() + "\n" for line in lines)


def _md_escape(value: Any) -> str:
    return cell(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(columns: Columns, rows: Rows) -> str:
    """A GitHub Markdown table; "|" in a cell is escaped as "\\|" (`markdown_cells` undoes it), newlines become spaces."""
    lines = ["| " + " | ".join(_md_escape(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_escape(v) for v in values(columns, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown_cells(line: str) -> list[str]:
    """The cells of one Markdown table line written by `to_markdown` (stripped, "\\|" read back as "|")."""
    cells, cur, i, body = [], "", 0, line.strip()[1:-1]
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body) and body[i + 1] == "|":
            cur, i = cur + "|", i + 2
            continue
        if body[i] == "|":
            cells.append(cur.strip())
            cur = ""
        else:
            cur += body[i]
        i += 1
    cells.append(cur.strip())
    return cells


def to_csv(columns: Columns, rows: Rows) -> str:
    """CSV with a header line; None is an empty field, floats keep every digit."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([cell(v) for v in values(columns, r)])
    return buf.getvalue()


def to_json(columns: Columns, rows: Rows) -> str:
    """A JSON list of objects with exactly `columns` as keys, in order (raw values; nested ones stay nested)."""
    return json.dumps([dict(zip(columns, values(columns, r))) for r in rows], indent=2) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$"}


def tex_escape(text: Any) -> str:
    return "".join(_TEX.get(ch, ch) for ch in cell(text))


def to_latex(columns: Columns, rows: Rows) -> str:
    """A booktabs tabular (left-aligned columns), every cell escaped for LaTeX."""
    lines = [r"\begin{tabular}{" + "l" * len(columns) + "}", r"\toprule",
             " & ".join(tex_escape(c) for c in columns) + r" \\", r"\midrule"]
    lines += [" & ".join(tex_escape(v) for v in values(columns, r)) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


WRITERS: dict[str, Callable[[Columns, Rows], str]] = {
    "text": to_text, "md": to_markdown, "csv": to_csv, "json": to_json, "tex": to_latex,
}


def render(columns: Columns, rows: Rows, fmt: str) -> str:
    """The table in `fmt`: one of text, md, csv, json, tex."""
    if fmt not in WRITERS:
        raise ValueError(f"format={fmt!r}: must be one of {', '.join(WRITERS)}")
    return WRITERS[fmt](columns, rows)
