"""Markdown for docs/benchmarks.md from `mefts bench --output *.json` row files: the table, the estimate's error per
row (recomputed with the current estimator), and the ratios the issue's targets are stated in.

    .venv/bin/python bench/report.py table ROWS.json [...]        # summary table, estimates recomputed
    .venv/bin/python bench/report.py ratios ROWS.json [...]       # MEFT vs full / LoRA+gc, per shape
    .venv/bin/python bench/report.py depth ROWS.json [...]        # memory against depth, and deepest / 12 layers
    .venv/bin/python bench/report.py curve --axis seq_len|batch_size ROWS.json [...]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mefts_core.measure.bench import load_rows, reestimate, summary_table  # noqa: E402
from mefts_core.measure.tables import to_markdown  # noqa: E402

MiB = 1 << 20


def _ok(rows):
    return [r for r in rows if r["status"] == "ok"]


def ratios(rows, steps: bool = True) -> str:
    """Per (layers, seq, batch): each method's peak activation, stored activations and peak against full FT and
    LoRA+gc (and step times against LoRA and LoRA+gc, unless `steps` is False)."""
    groups = defaultdict(dict)
    for r in _ok(rows):
        groups[(r["backbone"], r["layers"], r["seq_len"], r["batch_size"])][r["method"]] = r
    out = []
    for (bb, L, T, B), by in sorted(groups.items()):
        full, lgc = by.get("full"), by.get("lora+gc")
        out.append(f"\n{bb}, {L} layers, seq {T}, batch {B}\n\n")
        head = ["method", "peak act / full", "stored / full", "peak / LoRA+gc peak"]
        head += ["step / LoRA", "step / LoRA+gc"] if steps else []
        lora = by.get("lora")
        body = []
        for m, r in by.items():
            def rel(key, ref, r=r):
                return f"{r[key] / ref[key]:.3f}" if ref is not None and ref.get(key) and r.get(key) is not None else "-"
            cells = [m, rel("peak_activation_bytes", full), rel("stored_activation_bytes", full), rel("peak_bytes", lgc)]
            cells += [rel("step_seconds", lora), rel("step_seconds", lgc)] if steps else []
            body.append(cells)
        out.append(to_markdown(head, body))
    return "".join(out)


def depth(rows) -> str:
    by = defaultdict(dict)
    for r in _ok(rows):
        by[r["method"]][r["layers"]] = r
    depths = sorted({r["layers"] for r in _ok(rows)})
    head = ["method"] + [f"L={n}: stored / peak act / peak MiB" for n in depths] + ["peak act, deepest / 12",
                                                                                     "stored, deepest / 12"]
    body = []
    for m, rs in by.items():
        cells = [m]
        for n in depths:
            r = rs.get(n)
            cells.append("-" if r is None else f"{r['stored_activation_bytes'] / MiB:,.1f} / "
                                               f"{r['peak_activation_bytes'] / MiB:,.1f} / {r['peak_bytes'] / MiB:,.0f}")
        deep = max(rs)
        if 12 in rs and deep != 12:
            cells.append(f"{rs[deep]['peak_activation_bytes'] / rs[12]['peak_activation_bytes']:.3f} (L={deep})")
            cells.append(f"{rs[deep]['stored_activation_bytes'] / rs[12]['stored_activation_bytes']:.3f}")
        else:
            cells += ["-", "-"]
        body.append(cells)
    return to_markdown(head, body)


def curve(rows, axis: str) -> str:
    by = defaultdict(dict)
    for r in rows:
        by[r["method"]][r[axis]] = r
    xs = sorted({r[axis] for r in rows})
    head = ["method"] + [f"{axis}={x}: peak act / peak MiB" for x in xs]
    body = []
    for m, rs in by.items():
        cells = [m]
        for x in xs:
            r = rs.get(x)
            if r is None:
                cells.append("-")
            elif r["status"] != "ok":
                cells.append(r["status"])
            else:
                cells.append(f"{r['peak_activation_bytes'] / MiB:,.0f} / {r['peak_bytes'] / MiB:,.0f}")
        body.append(cells)
    return to_markdown(head, body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["table", "ratios", "depth", "curve"])
    p.add_argument("files", nargs="+")
    p.add_argument("--axis", default="seq_len", choices=["seq_len", "batch_size"])
    p.add_argument("--no-steps", action="store_true", help="ratios: leave out the step-time columns")
    args = p.parse_args(argv)
    rows = reestimate([r for f in args.files for r in load_rows(f)])
    text = {"table": lambda: summary_table(rows), "ratios": lambda: ratios(rows, steps=not args.no_steps), "depth": lambda: depth(rows),
            "curve": lambda: curve(rows, args.axis)}[args.what]()
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
