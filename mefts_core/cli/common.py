"""What every core command shares: argument types, logging, the error exit, writing a JSON result."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn


def _kv(text: str) -> tuple[str, Any]:
    """key=value, the value parsed as JSON when it parses (numbers, true/false, lists), else kept as a string."""
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"{text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw


def comma_list(kind: type, *, none: bool = False) -> Callable[[str], list]:
    """An argparse type: "a,b,c" -> [kind(a), kind(b), kind(c)]; with none=True the item "none" is None."""

    def parse(text: str) -> list:
        try:
            return [None if none and x.strip() == "none" else kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated {kind.__name__} values") from e

    return parse


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def fail(message: str, code: int) -> NoReturn:
    """Exit with "error: message" on stderr and no traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def write_json(path: str | None, payload: Any) -> None:
    """Write `payload` as indented JSON to `path` (folders created) and say so; nothing when path is None."""
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {p}")
