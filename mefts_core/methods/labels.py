"""Method labels: one short, readable name per (method, options), the same in run tables, the bench and the dashboard.

A label is the method, then the "-" flags of its options, then the other options that differ from the defaults in
parentheses, then the "+" flags: `lora(r=16)+gc`, `meft1-float-nochunk`, `adapter(placement=houlsby)+gc+offload`.
Flags come from the options' field metadata (`flag`: render, parse); `parse_label` reads any label back, so
`parse_label(method_label(m, o)) == (m, o)`.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from mefts_core.errors import ConfigError
from mefts_core.methods.registry import method_options, method_spec, option_fields, options_dict

_LABEL = re.compile(r"^(?P<name>[A-Za-z0-9_]+)(?P<dash>(?:-[A-Za-z0-9]+)*)(?:\((?P<kv>.*)\))?(?P<plus>(?:\+[A-Za-z0-9]+)*)$")


def default_label(method: str, opts: Any) -> str:
    """method, "-" flags, (k=v,...) of the other non-default options, "+" flags."""
    default = method_options(method)
    dash, plus, diff = [], [], {}
    for f in option_fields(type(opts)):
        value = getattr(opts, f.name)
        if value == getattr(default, f.name):
            continue
        token = f.metadata["flag"].render(value) if "flag" in f.metadata else None
        if token is None:
            diff[f.name] = value
        else:
            (dash if token.startswith("-") else plus).append(token)
    inner = "(" + ",".join(f"{k}={v}" for k, v in sorted(diff.items())) + ")" if diff else ""
    return method + "".join(dash) + inner + "".join(plus)


def method_label(method: str, options: Any = None) -> str:
    """The label of `method` with `options` (a dict or the typed options), e.g. "lora(r=16)+gc"."""
    if options is None or isinstance(options, dict):
        options = method_options(method, **(options or {}))
    label = method_spec(method).label or default_label
    return label(method, options)


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: placement=houlsby


def parse_label(label: str) -> tuple[str, dict[str, Any]]:
    """A label -> (method, the options that differ from the defaults). ConfigError naming the label otherwise."""
    m = _LABEL.match(label.strip()) if isinstance(label, str) else None
    if m is None:
        raise ConfigError("method", label, "not a method label like lora(r=16)+gc or meft1-float-nochunk")
    method = m.group("name")
    cls = method_spec(method).options
    flags = [f for f in option_fields(cls) if "flag" in f.metadata]
    opts: dict[str, Any] = {}
    for token in re.findall(r"[-+][A-Za-z0-9]+", (m.group("dash") or "") + (m.group("plus") or "")):
        hits = [(f.name, f.metadata["flag"].parse(token)) for f in flags]
        hits = [(name, v) for name, v in hits if v is not None]
        if not hits:
            known = sorted({t for f in flags for t in f.metadata["flag"].tokens})
            raise ConfigError("method", label, f"unknown flag {token!r} for {method}; known: {', '.join(known)}")
        opts[hits[0][0]] = hits[0][1]
    if m.group("kv"):
        for part in re.split(r",(?=\s*[A-Za-z_]\w*=)", m.group("kv")):
            key, sep, text = part.partition("=")
            if not sep:
                raise ConfigError("method", label, f"{part!r} is not key=value")
            opts[key.strip()] = _value(text.strip())
    typed = options_dict(method_options(method, **opts))  # validates
    default = options_dict(method_options(method))
    return method, {k: v for k, v in typed.items() if v != default[k]}

