"""Task "local": the user's own CSV/TSV/JSON(L) files.

task_options:
- train_file, eval_file (required unless data_dir is given), test_file (optional; without it the eval file is split
  into seeded dev/test halves, so that model selection and the reported test score use different rows);
- data_dir: instead of the files, a folder with train/dev/test files or a datasets.save_to_disk folder;
- text_columns: one or two column names (a list, or a comma-separated string);
- label_column: the label's column;
- problem: "classification" or "regression". Inferred when absent: labels that are all numbers and not all whole
  numbers mean regression, anything else classification (so integer ratings need problem="regression").

Classification labels (strings or ints) map to ids in sorted order (numeric order when all are integers).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from mefts_core.errors import MISSING, ConfigError
from mefts_core.tasks.base import Task, TaskDataError, TextExample
from mefts_core.tasks.data import file_columns, read_file, read_local

LOCAL_OPTIONS = ("train_file", "eval_file", "test_file", "text_columns", "label_column", "problem", "data_dir")
LOCAL_PROBLEMS = ("classification", "regression")
_LOC = ("task_options",)


def _text_columns(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [c.strip() for c in value.split(",") if c.strip()]
    if not isinstance(value, list | tuple) or not value or not all(isinstance(c, str) and c for c in value):
        raise ConfigError(_LOC + ("text_columns",), value, "must be one or two column names")
    if len(value) > 2:
        raise ConfigError(_LOC + ("text_columns",), list(value), "at most two columns (a text and an optional pair)")
    return list(value)


def validate_local_options(options: dict[str, Any]) -> dict[str, Any]:
    """Check the options, the files and their columns (header only); return them normalised."""
    opts = dict(options)
    if "text_columns" not in opts or "label_column" not in opts:
        missing = "text_columns" if "text_columns" not in opts else "label_column"
        raise ConfigError(_LOC + (missing,), MISSING,
                          "required for task 'local' (CLI: --text-columns a[,b] --label-column y)")
    opts["text_columns"] = _text_columns(opts["text_columns"])
    if not isinstance(opts["label_column"], str) or not opts["label_column"]:
        raise ConfigError(_LOC + ("label_column",), opts["label_column"], "must be a column name")
    if "problem" in opts and opts["problem"] not in LOCAL_PROBLEMS:
        raise ConfigError(_LOC + ("problem",), opts["problem"], f"must be one of {', '.join(LOCAL_PROBLEMS)}")
    if "data_dir" in opts:
        if not Path(opts["data_dir"]).exists():
            raise ConfigError(_LOC + ("data_dir",), opts["data_dir"], "not found")
        return opts
    for key in ("train_file", "eval_file"):
        if key not in opts:
            raise ConfigError(_LOC + (key,), MISSING, "required for task 'local' (or give data_dir)")
    for key in ("train_file", "eval_file", "test_file"):
        if key not in opts:
            continue
        path = Path(str(opts[key]))
        if not path.is_file():
            raise ConfigError(_LOC + (key,), str(opts[key]), "file not found")
        try:
            cols = file_columns(path)
        except TaskDataError as e:
            raise ConfigError(_LOC + (key,), str(opts[key]), str(e)) from e
        for col_key, wanted in (("text_columns", opts["text_columns"]), ("label_column", [opts["label_column"]])):
            for c in wanted:
                if c not in cols:
                    shown = c if col_key == "label_column" else wanted
                    raise ConfigError(_LOC + (col_key,), shown, f"{c!r} not in {path.name}; columns: {', '.join(cols)}")
    return opts


def _int_like(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    if isinstance(v, float):
        return v.is_integer()
    return isinstance(v, str) and v.strip().lstrip("-").isdigit()


def _float_like(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def infer_problem(values: list[Any]) -> str:
    if values and all(_float_like(v) for v in values) and not all(_int_like(v) for v in values):
        return "regression"
    return "classification"


def label_vocab(values: list[Any]) -> tuple[list[str], dict[Any, int]]:
    """Sorted label names and a lookup from a canonical key (int or stripped str) to the id."""
    if all(_int_like(v) for v in values):
        keys = sorted({int(float(v)) if not isinstance(v, str) else int(v.strip()) for v in values})
    else:
        keys = sorted({str(v).strip() for v in values})
    return [str(k) for k in keys], {k: i for i, k in enumerate(keys)}


def _key(v: Any, numeric: bool) -> Any:
    if numeric:
        return int(float(v)) if not isinstance(v, str) else int(v.strip())
    return str(v).strip()


def _check_rows(rows: list[dict[str, Any]], where: str, text_cols: list[str], label_col: str) -> None:
    if not rows:
        raise TaskDataError(f"task 'local': {where} has no rows")
    cols = list(rows[0])
    for col_key, wanted in (("text_columns", text_cols), ("label_column", [label_col])):
        for c in wanted:
            if c not in cols:
                raise TaskDataError(f"{col_key}={c!r}: not in {where}; columns: {', '.join(map(str, cols))}")
    for i, r in enumerate(rows, 1):
        v = r.get(label_col)
        if v is None or (isinstance(v, str) and not v.strip()):
            raise TaskDataError(f"label_column={label_col!r}: empty in {where} row {i}")


def _convert(text_cols: tuple[str, ...], label_col: str, problem: str, lookup: dict[Any, int] | None,
             numeric: bool, row: dict[str, Any], seed: int = 0) -> TextExample:
    texts = tuple("" if row[c] is None else str(row[c]) for c in text_cols)
    if problem == "regression":
        return TextExample(texts, float(row[label_col]))
    assert lookup is not None
    return TextExample(texts, lookup[_key(row[label_col], numeric)])


def read_local_task(options: dict[str, Any]) -> tuple[Task, dict[str, list[dict[str, Any]]], dict[str, str]]:
    """(task, rows by role, where each role came from) for task "local"."""
    opts = validate_local_options(options)
    text_cols, label_col = opts["text_columns"], opts["label_column"]
    if "data_dir" in opts:
        roles = read_local(Path(opts["data_dir"]))
        where = {r: f"{opts['data_dir']} ({r})" for r in roles}
    else:
        roles, where = {}, {}
        for role, key in (("train", "train_file"), ("dev", "eval_file"), ("test", "test_file")):
            if key in opts:
                roles[role] = read_file(Path(opts[key]))
                where[role] = Path(opts[key]).name
    for role, rows in roles.items():
        _check_rows(rows, where[role], text_cols, label_col)
    values = [r[label_col] for rows in roles.values() for r in rows]
    problem = opts.get("problem") or infer_problem(values)
    if problem == "regression":
        bad = next((v for v in values if not _float_like(v)), None)
        if bad is not None:
            raise TaskDataError(f"label_column={label_col!r}: value {bad!r} is not a number (problem='regression')")
        names, lookup, numeric, metrics, main = None, None, False, ("pearson", "spearman", "mse"), "combined_score"
    else:
        names, lookup = label_vocab(values)
        numeric = all(_int_like(v) for v in values)
        metrics = ("accuracy", "f1") if len(names) == 2 else ("accuracy", "macro_f1")
        main = "accuracy"
        if len(names) < 2:
            raise TaskDataError(f"label_column={label_col!r}: only one class ({names[0]!r}); need at least two")
    task = Task(
        name="local",
        kind="local",
        problem=problem,
        metrics=metrics,
        main_metric=main,
        convert=partial(_convert, tuple(text_cols), label_col, problem, lookup, numeric),
        num_labels=1 if names is None else len(names),
        columns=(*text_cols, label_col),
        label_names=None if names is None else tuple(names),
        description=f"user data: text {', '.join(text_cols)}; label {label_col} ({problem})",
    )
    return task, roles, where
