"""ConfigError: the one error every layer raises for bad user input, naming the field and the value.

`loc` is the field's path (("method_options", "r"), ("task_options", "train_file"), ("batch_size",)), so a caller
maps it to its own coordinates (a request location, a CLI flag) without reading the message text.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = object()  # the value of a required field that was not given


class ConfigError(ValueError):
    """A bad field: `loc` (path of names), `value` (what was given, or MISSING) and `reason`."""

    def __init__(self, field: str | tuple[str | int, ...], value: Any, reason: str) -> None:
        self.loc: tuple[str | int, ...] = (field,) if isinstance(field, str) else tuple(field)
        self.value = value
        self.reason = reason
        shown = self.field if value is MISSING else f"{self.field}={value!r}"
        super().__init__(f"{shown}: {reason}")

    @property
    def field(self) -> str:
        """The dotted path, e.g. "method_options.r"."""
        return ".".join(str(part) for part in self.loc)

    def within(self, *prefix: str) -> ConfigError:
        """The same error one level down, e.g. `within("method_options")`; a prefix already there is not doubled."""
        if self.loc[: len(prefix)] == prefix:
            return self
        return ConfigError((*prefix, *self.loc), self.value, self.reason)


def require(ok: bool, field: str | tuple[str | int, ...], value: Any, reason: str) -> None:
    """Raise ConfigError(field, value, reason) unless `ok`."""
    if not ok:
        raise ConfigError(field, value, reason)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class ArtifactError(ConfigError):
    """A saved artifact or checkpoint that cannot be used: `file` is the file at fault, and the message names it."""

    def __init__(self, file: Any, field: str | tuple[str | int, ...], value: Any, reason: str) -> None:
        self.file = str(file)
        super().__init__(field, value, f"{reason} (in {self.file})")


class Unsupported(ConfigError, NotImplementedError):
    """A valid field value that a component cannot handle (e.g. the estimator and a family without a layer walk)."""


def register(table: dict, name: str, item: Any, *, replace: bool, what: str) -> Any:
    """Put `item` under `name` in a registry `table` (ValueError when the name is taken, unless `replace`)."""
    if name in table and not replace:
        raise ValueError(f"{what} {name!r} is already registered")
    table[name] = item
    return item
