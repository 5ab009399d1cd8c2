"""The paper's results table: methods as rows, a suite's tasks as columns (each task's main metric, in %), the
average over the tasks with numbers, the trainable share of parameters and the stored activation memory.

One builder for `mefts reproduce` (mefts_core/cli/reproduce.py) and the service's export (GET
/api/results/paper.{md,tex,csv,json}); the text of every format comes from the one table writer (tables.py).
A task without numbers shows "no data" (the reason goes into the notes) rather than dropping out silently.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mefts_core.measure import tables

SUITES = ("glue", "qa")
NO_DATA = "no data"


@dataclass
class PaperCell:
    """One method on one task: the test scores of its selected configuration (one per seed) and its footprint."""
    method: str
    task: str
    scores: list[float] = field(default_factory=list)
    trainable_params: int | None = None
    total_params: int | None = None
    stored_activation_bytes: float | None = None


@dataclass
class PaperTable:
    columns: list[str]  # Method, the tasks, Avg, Trainable %, Act. MiB
    rows: list[dict[str, Any]]  # raw values (scores in %, None where missing) for CSV and JSON
    notes: list[str]  # why a task has no numbers, and what the numbers are

    def cells(self) -> list[list[str]]:
        """Rows as text for Markdown and LaTeX: 1 decimal, "no data" in a task column without numbers."""
        out = []
        for r in self.rows:
            out.append([r["Method"]] + [_fmt(r.get(c), r.get(f"{c} std")) for c in self.columns[1:-2]]
                       + [_fmt(r["Trainable %"], None, 2), _fmt(r["Act. MiB"], None)])
        return out


def _fmt(value: Any, std: Any, digits: int = 1) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + (f" ± {std:.{digits}f}" if isinstance(value, float) and std else "")


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def build(suite_tasks: Sequence[str], methods: Sequence[str], cells: Sequence[PaperCell],
          no_data: Mapping[str, str], *, caption: str = "") -> PaperTable:
    """The table from measured cells; `no_data` maps a task to why it has no numbers. Methods keep their order."""
    by_key = {(c.method, c.task): c for c in cells}
    columns = ["Method", *suite_tasks, "Avg", "Trainable %", "Act. MiB"]
    rows = []
    for m in methods:
        row: dict[str, Any] = {"Method": m}
        scores, pcts, acts = [], [], []
        for t in suite_tasks:
            c = by_key.get((m, t))
            if t in no_data or c is None or not c.scores:
                row[t] = NO_DATA if t in no_data else None
                continue
            row[t] = 100 * statistics.fmean(c.scores)
            row[f"{t} std"] = 100 * statistics.stdev(c.scores) if len(c.scores) > 1 else None
            scores.append(row[t])
            if c.trainable_params is not None and c.total_params:
                pcts.append(100 * c.trainable_params / c.total_params)
            acts.append(None if c.stored_activation_bytes is None else c.stored_activation_bytes / 2**20)
        row["Avg"] = _mean(scores)
        row["Trainable %"] = _mean(pcts)
        row["Act. MiB"] = _mean(acts)
        rows.append(row)
    notes = ([caption] if caption else []) + [f"{t}: {NO_DATA} ({why})" for t, why in no_data.items()]
    return PaperTable(columns, rows, notes)


def render(table: PaperTable, fmt: str) -> str:
    """md and tex: formatted cells with the notes under the table (a LaTeX comment); csv and json: raw values, the
    notes as a last row (csv) or a "notes" key (json, which also carries the formatted "cells" the dashboard shows)."""
    if fmt == "md":
        return tables.to_markdown(table.columns, table.cells()) + "".join(f"\n- {n}" for n in table.notes) + \
            ("\n" if table.notes else "")
    if fmt == "tex":
        return tables.to_latex(table.columns, table.cells()) + "".join(f"% {n}\n" for n in table.notes)
    raw = [{c: r.get(c) for c in table.columns} for r in table.rows]
    if fmt == "csv":
        notes = [{"Method": "notes", table.columns[1]: "; ".join(table.notes)}] if table.notes else []
        return tables.to_csv(table.columns, raw + notes)
    if fmt == "json":
        import json

        return json.dumps({"columns": table.columns, "rows": raw, "cells": table.cells(), "notes": table.notes},
                          indent=2) + "\n"
    raise ValueError(f"format={fmt!r}: must be one of md, tex, csv, json")
