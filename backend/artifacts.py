"""What a run keeps on disk: `<data dir>/runs/<run id>/` holds the library's `checkpoint/` (the last complete epoch,
for a retried attempt to resume from), `model/` (the best-dev weights, `mefts_core.load_finetuned` reads it) and,
once the run succeeded, `model.tar.gz` (what `GET /api/runs/{id}/artifact` and `mefts export --artifact` send).

The job writes these (backend/worker/job.py); the API and the CLI only read them, through `artifact_file`, which
refuses any stored path that resolves outside the data directory.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mefts_core.training.artifacts import folder_bytes

RUNS_DIR = "runs"
ARCHIVE = "model.tar.gz"


def run_dir(data_dir: str | Path, run_id: int) -> Path:
    """The run's folder (absolute; not created)."""
    return Path(data_dir).expanduser().resolve() / RUNS_DIR / str(int(run_id))


def download_name(run_id: int, method_label: str | None) -> str:
    """run-<id>-<method label>.tar.gz; characters a file name or a Content-Disposition header chokes on become _."""
    label = re.sub(r"[^A-Za-z0-9._+=()-]+", "_", method_label or "model").strip("._") or "model"
    return f"run-{int(run_id)}-{label}.tar.gz"


@dataclass(frozen=True)
class Packed:
    path: Path
    bytes: int
    sha256: str


def _reproducible(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # No owner or time stamps in the archive: the same weights pack to the same bytes (and the same sha256).
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def pack_model(output_dir: Path, top: str) -> Packed:
    """Pack `output_dir/model/` as `output_dir/model.tar.gz` with one top folder `top`; its size and sha256.

    Written to a temporary name and renamed, so a download never sees half an archive.
    """
    model = output_dir / "model"
    if not model.is_dir():
        raise FileNotFoundError(f"{model}: the training left no model folder to pack")
    target = output_dir / ARCHIVE
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(str(model), arcname=top, recursive=False, filter=_reproducible)
        for path in sorted(p for p in model.rglob("*")):
            tar.add(str(path), arcname=f"{top}/{path.relative_to(model).as_posix()}", recursive=False,
                    filter=_reproducible)
    os.replace(tmp, target)
    digest = hashlib.sha256()
    with open(target, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return Packed(path=target, bytes=target.stat().st_size, sha256=digest.hexdigest())


def relative_to_data(data_dir: str | Path, path: Path) -> str:
    """`path` as stored in the runs table: relative to the data directory, with forward slashes."""
    return Path(path).resolve().relative_to(Path(data_dir).expanduser().resolve()).as_posix()


def artifact_file(data_dir: str | Path, stored: str | None) -> Path | None:
    """The artifact file a run's `artifact_path` names, or None when it has none, it is gone, or the path would lead
    outside the data directory (an absolute path, `..`, or a symlink out: resolved before the check)."""
    if not stored or "\x00" in stored:
        return None
    root = Path(data_dir).expanduser().resolve()
    try:
        real = (root / stored).resolve()
    except (OSError, ValueError):
        return None
    if not real.is_relative_to(root) or real == root or not real.is_file():
        return None
    return real


def disk_usage(data_dir: str | Path, top: int = 5) -> dict[str, Any]:
    """Disk use of the runs folder: {total_bytes, runs: the `top` largest as [{run_id, bytes}]} (no server path:
    the answer is public)."""
    root = Path(data_dir).expanduser().resolve() / RUNS_DIR
    per_run: list[dict[str, int]] = []
    total = 0
    try:
        entries = list(os.scandir(root))
    except OSError:  # no run kept anything yet
        entries = []
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            size = folder_bytes(Path(entry.path)) if is_dir else entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
        total += size
        if is_dir and entry.name.isdigit():
            per_run.append({"run_id": int(entry.name), "bytes": size})
    per_run.sort(key=lambda r: (-r["bytes"], r["run_id"]))
    return {"total_bytes": total, "runs": per_run[:top]}
