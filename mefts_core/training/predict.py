"""Predictions of a saved artifact (`mefts_core.training.artifacts`): on a CSV/TSV/JSON(L) file, or on a split of
the run's own task.

- A file: text tasks read `text_columns` (default: the run's) and, when the file has it, `label_column` (default:
  the run's), whose values are label names or, for packaged tasks, class ids; multiple-choice (QA) files are rows in
  the task's own layout, read by its converter.
- A split (`split="test"`): the run's task loaded with the run's config (same seed, caps and files), so the test
  split is the one the run scored; with the run's evaluation batch size (batch_size * 2) this reproduces the
  result's test metrics exactly.

One output row per input: `row`, the texts, `prediction` (classification: the label name; regression: the value;
multiple choice: the chosen option's index), `score` (the prediction's probability; empty for regression) and
`label` when the input has one. Metrics follow the training loop's own rule (`batches.Tally`).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mefts_core.errors import ConfigError
from mefts_core.tasks import get_task, load_task
from mefts_core.tasks.base import TextExample
from mefts_core.tasks.data import read_file
from mefts_core.training.artifacts import Artifact, load_artifact
from mefts_core.training.batches import Tally, forward_batches, scores
from mefts_core.training.prepare import featurize
from mefts_core.training.scoring import ChoiceScorer

SPLITS = ("train", "dev", "test")


@dataclass
class Predictions:
    """One row per input, the metrics when the inputs had labels (else None), and where the inputs came from."""

    rows: list[dict[str, Any]]
    metrics: dict[str, float] | None
    problem: str
    main_metric: str
    source: str


def predict(model_dir: str | Path, *, input_path: str | Path | None = None, split: str | None = None,
            text_columns: list[str] | None = None, label_column: str | None = None, batch_size: int | None = None,
            device: str = "cpu", progress: bool = False) -> Predictions:
    """Predict with the artifact at `model_dir` on `input_path` or on the run's `split` (one of them)."""
    if (input_path is None) == (split is None):
        raise ConfigError("input", input_path, "give an input file or a split of the run's task (e.g. test), not "
                          "both" if input_path is not None else "give an input file or a split (e.g. test)")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError("batch_size", batch_size, "must be an integer >= 1")
    from mefts_core.training.trainer import resolve_device

    art = load_artifact(model_dir, resolve_device(device))
    manifest = art.manifest
    if split is not None:
        examples, texts, labelled, source = _split_inputs(manifest, split)
    else:
        examples, texts, labelled, source = _file_inputs(manifest, Path(input_path), text_columns, label_column)
    features = featurize(examples, art.tokenizer, manifest["max_seq_len"], art.lm_choices)
    outputs, tally = _run(art, features, batch_size or manifest["config"]["batch_size"] * 2, progress)
    rows = []
    for i, ((pred, score), example, text) in enumerate(zip(outputs, examples, texts)):
        rows.append({"row": i, **text, "prediction": _shown(manifest, pred), "score": score})
        if labelled:
            rows[-1]["label"] = _shown(manifest, example.label)
    metrics = tally.metrics(manifest["task"]["metrics"]) if labelled and rows else None
    return Predictions(rows, metrics, manifest["problem"], manifest["task"]["main_metric"], source)


def _run(art: Artifact, features: list[dict[str, Any]], batch_size: int,
         progress: bool) -> tuple[list[tuple[Any, float | None]], Tally]:
    """The model over the features, batch by batch, with a progress bar: (prediction, score) per feature."""
    from tqdm.auto import tqdm

    manifest, problem = art.manifest, art.manifest["problem"]
    model = ChoiceScorer(art.model) if art.lm_choices else art.model
    device = next(art.model.parameters()).device
    tally, outputs = Tally(problem), []
    bar = tqdm(total=math.ceil(len(features) / batch_size), desc="predict", unit="batch", disable=not progress,
               leave=False)
    with bar:
        for logits, batch in forward_batches(model, features, batch_size=batch_size,
                                             pad_id=int(art.tokenizer.pad_token_id), device=device,
                                             bf16=bool(manifest["config"].get("bf16"))):
            outputs += zip(tally.add(logits, batch), scores(problem, logits, batch))
            bar.update(1)
    return outputs, tally


def _shown(manifest: dict[str, Any], value: Any) -> Any:
    """A class id as its label name; a regression value or an option index as it is."""
    names = manifest["label_names"]
    if manifest["problem"] == "classification" and names:
        return names[int(value)]
    return value


# ------------------------------------------------------------------------------------------------- inputs


def _split_inputs(manifest: dict[str, Any], split: str) -> tuple[list, list[dict], bool, str]:
    """The run's own split, loaded as the run loaded it (its config: task, options, seed, caps)."""
    from mefts_core.config import TrainConfig

    if split not in SPLITS:
        raise ConfigError("split", split, f"must be one of {', '.join(SPLITS)}")
    config = TrainConfig.from_dict(manifest["config"])
    data = load_task(config.task, task_options=config.task_options, seed=config.seed,
                     max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples)
    names = list(data.task.label_names) if data.task.label_names else None
    if names != manifest["label_names"]:
        raise ConfigError("split", split, f"the task's data now has labels {names}, the model was trained on "
                          f"{manifest['label_names']}: the run's files have changed")
    examples = getattr(data, split)
    return examples, _texts(manifest, examples), True, f"{data.description}: {split} split ({len(examples)} rows)"


def _texts(manifest: dict[str, Any], examples: list) -> list[dict[str, str]]:
    cols = manifest["task"]["text_columns"]
    if manifest["problem"] == "multiple_choice":
        return [{} for _ in examples]
    return [dict(zip(cols, e.texts)) for e in examples]


def _file_inputs(manifest: dict[str, Any], path: Path, text_columns: list[str] | None,
                 label_column: str | None) -> tuple[list, list[dict], bool, str]:
    """Examples of a data file: the task's converter for multiple choice, the text and label columns otherwise."""
    rows = read_file(path)
    if not rows:
        raise ConfigError("input", str(path), "has no rows")
    columns = list(rows[0])
    if manifest["problem"] == "multiple_choice":
        task = get_task(manifest["task"]["name"])
        missing = [c for c in task.columns if c not in columns]
        if missing:
            raise ConfigError("input", str(path), f"column {missing[0]!r} missing: task {task.name!r} rows need "
                              f"{', '.join(task.columns)}")
        examples = [task.example(r, manifest["config"]["seed"]) for r in rows]
        if any(e is None for e in examples):
            raise ConfigError("input", str(path), "has rows without an answer (hidden labels)")
        return examples, [{} for _ in examples], True, f"{path.name} ({len(rows)} rows)"
    cols = text_columns or manifest["task"]["text_columns"]
    for c in cols:
        if c not in columns:
            raise ConfigError("text_columns", c, f"not in {path.name}; columns: {', '.join(map(str, columns))}")
    if label_column is not None and label_column not in columns:
        raise ConfigError("label_column", label_column, f"not in {path.name}; columns: {', '.join(map(str, columns))}")
    label = label_column or (manifest["task"]["label_column"] if manifest["task"]["label_column"] in columns else None)
    examples = [TextExample(tuple("" if r[c] is None else str(r[c]) for c in cols),
                            _label_id(manifest, r[label], i, path) if label else _no_label(manifest))
                for i, r in enumerate(rows, 1)]
    return examples, [dict(zip(cols, e.texts)) for e in examples], label is not None, f"{path.name} ({len(rows)} rows)"


def _no_label(manifest: dict[str, Any]) -> int | float:
    return 0.0 if manifest["problem"] == "regression" else 0


def _label_id(manifest: dict[str, Any], value: Any, row: int, path: Path) -> int | float:
    """A label as the model's target: a number (regression), or a class id from a label name (or, for a packaged
    task, a class id as it is)."""
    where = f"{path.name} row {row}"
    if manifest["problem"] == "regression":
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ConfigError("label_column", value, f"not a number ({where})") from e
    names = manifest["label_names"] or []
    text = str(value).strip()
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    if text in names:
        return names.index(text)
    if manifest["task"]["kind"] != "local" and text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
        return int(text)
    raise ConfigError("label_column", value, f"not one of the model's labels {names} ({where})")


# ------------------------------------------------------------------------------------------------- output


def write_predictions(predictions: Predictions, path: str | Path) -> Path:
    """The rows as CSV (or JSON lines for a .jsonl path); folders created."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    rows = predictions.rows
    if p.suffix.lower() == ".jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return p
    fields = list(rows[0]) if rows else ["row", "prediction", "score"]
    with p.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return p

