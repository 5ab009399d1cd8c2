"""The one table writer (mefts_core.measure.tables): each format from columns + rows, mapping or sequence rows."""

from __future__ import annotations

import csv
import io
import json

import pytest

from mefts_core.measure import tables

COLUMNS = ["name", "value", "note"]
ROWS = [{"name": "a|b", "value": 0.1, "note": None}, {"name": "c", "value": 12, "note": "x_y 5%"}]


def test_mapping_and_sequence_rows_write_the_same():
    as_lists = [[r[c] for c in COLUMNS] for r in ROWS]
    for fmt in tables.WRITERS:
        assert tables.render(COLUMNS, ROWS, fmt) == tables.render(COLUMNS, as_lists, fmt)


def test_markdown_escapes_pipes_and_reads_back():
    text = tables.to_markdown(COLUMNS, ROWS)
    assert text == "| name | value | note |\n|---|---|---|\n| a\\|b | 0.1 |  |\n| c | 12 | x_y 5% |\n"
    assert tables.markdown_cells(text.splitlines()[2]) == ["a|b", "0.1", ""]


def test_csv_and_json_keep_raw_values():
    assert list(csv.reader(io.StringIO(tables.to_csv(COLUMNS, ROWS)))) == [COLUMNS, ["a|b", "0.1", ""],
                                                                           ["c", "12", "x_y 5%"]]
    assert json.loads(tables.to_json(COLUMNS, ROWS)) == ROWS
    assert tables.to_json(COLUMNS, [{"name": "only"}]).endswith("\n")


def test_text_aligns_and_latex_escapes():
    assert tables.to_text(COLUMNS, ROWS) == "name  value  note\na|b   0.1\nc     12     x_y 5%\n"
    assert tables.to_text(["k", "v"], [["run", "x"], ["best epoch", "2"]], header=False) == "run         x\nbest epoch  2\n"
    tex = tables.to_latex(COLUMNS, ROWS)
    assert tex.startswith("\\begin{tabular}{lll}\n\\toprule\nname & value & note \\\\\n\\midrule\n")
    assert r"x\_y 5\%" in tex and tex.endswith("\\end{tabular}\n")


def test_unknown_format():
    with pytest.raises(ValueError, match="format='xls'"):
        tables.render(COLUMNS, ROWS, "xls")
