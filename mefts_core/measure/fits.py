"""What fits on a card: for a memory budget, a backbone, a sequence length and a dtype, every registered method's
largest batch, the peak at that batch, the step time and tokens per second.

Each figure says where it comes from (`source`) and how (`how`):

- measured: a stored run or bench row at that exact point (or a CUDA batch search with real OOM at that budget,
  `mefts bench --fits` on a GPU);
- interpolated: linear in the batch between two measured points of the same method, sequence length, dtype and
  device kind (peak memory and step time are both affine in the batch at a fixed sequence length);
- estimated: the analytic estimator (`mefts_core.measure.estimate.max_batch_estimate` / `estimate_memory`) for
  memory; for time, a measured step scaled linearly with the batch, naming the point it scales;
- unknown: nothing measured for time at this sequence length (no number is made up).

Measured points are plain dicts (bench rows as `mefts bench` writes them, or runs' memory reports as the service
stores them): this module imports neither the service nor the database.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mefts_core.errors import ConfigError, is_int, is_number, require

GiB = 1 << 30
DEVICES = ("cuda", "cpu")
DTYPES = ("float32", "bfloat16", "float16")
SOURCES = ("measured", "interpolated", "estimated", "unknown")
PRESETS_GIB = (16, 24, 40, 48, 80)

_UNITS = {"": GiB, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 10**3, "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
          "g": GiB, "gib": GiB, "gb": 10**9, "t": 1 << 40, "tib": 1 << 40, "tb": 10**12}
_SIZE = re.compile(r"^\s*(?P<num>[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(?P<unit>[a-z]*)\s*$", re.IGNORECASE)


def parse_budget(value: Any, field: str = "budget") -> int:
    """A memory budget in bytes from "24GiB", "80 GB", "16g", "512MiB" or a bare number (GiB).

    Binary units (KiB, MiB, GiB, TiB and the bare K, M, G, T) are powers of 1024, decimal ones (KB, MB, GB, TB)
    powers of 1000. Raises ConfigError naming `field` and the value when it is not a positive size.
    """
    if is_number(value):
        text = str(value)
    else:
        require(isinstance(value, str), field, value, "must be a size such as 24GiB, 80 GB or 16 (GiB)")
        text = value
    m = _SIZE.match(text)
    unit = m.group("unit").lower() if m else None
    require(m is not None and unit in _UNITS, field, value,
            "must be a size such as 24GiB, 80 GB, 512MiB or 16 (GiB); units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB")
    size = float(m.group("num")) * _UNITS[unit]
    require(size >= 1 << 20, field, value, "must be at least 1 MiB")
    require(size <= 1 << 50, field, value, "must be at most 1 PiB")
    return int(size)


@dataclass(frozen=True)
class Point:
    """One measured training step: its shape, where it ran, its peak and (if timed) its step time."""

    method: str  # normalised label (mefts_core.methods.method_label of the parsed label)
    backbone: str
    layers: int | None
    seq_len: int
    batch_size: int
    dtype: str
    device: str  # cuda or cpu
    peak_bytes: int | None
    step_seconds: float | None
    where: str  # "bench row 12", "run 5", a device name ...


@dataclass(frozen=True)
class Search:
    """A measured largest batch: a CUDA batch search with real OOM at one budget (`mefts bench --fits`)."""

    method: str
    backbone: str
    layers: int | None
    seq_len: int
    dtype: str
    budget_bytes: int
    max_batch: int
    where: str


def label_key(label: str) -> str | None:
    """The one label of a method and its options ("meft1-exact" and "meft1" are the same run), None if unreadable."""
    from mefts_core.methods import method_label, parse_label

    try:
        return method_label(*parse_label(label))
    except (ConfigError, KeyError, TypeError, ValueError):
        return None


def _device_kind(v: Any) -> str:
    return "cuda" if str(v or "").lower().startswith("cuda") else "cpu"


def read_points(rows: Iterable[dict[str, Any]]) -> tuple[list[Point], list[Search]]:
    """Measured points from plain rows: bench rows (`mefts bench` columns), runs' memory reports (the same
    names: backbone, method, layers, seq_len, batch_size, dtype, device, peak_bytes, step_seconds) and the CUDA
    search rows of `mefts bench --fits` (budget_gib, max_batch, how "cuda search ..."). Rows that did not run
    (status other than ok) or that cannot be read are skipped."""
    points, searches = [], []
    for r in rows:
        key = label_key(str(r.get("method") or ""))
        if key is None or r.get("status") not in (None, "", "ok") or not is_int(r.get("seq_len")):
            continue
        where = str(r.get("where") or r.get("device_name") or r.get("device") or "")
        layers = r.get("layers") if is_int(r.get("layers")) else None
        dtype = str(r.get("dtype") or "float32")
        if ("max_batch" in r and str(r.get("how", "")).startswith("cuda search") and is_int(r["max_batch"])
                and is_number(r.get("budget_gib"))):
            searches.append(Search(key, str(r.get("backbone")), layers, r["seq_len"], dtype,
                                   int(float(r["budget_gib"]) * GiB), r["max_batch"], where or "cuda search"))
        elif is_int(r.get("batch_size")) and (is_int(r.get("peak_bytes")) or is_number(r.get("step_seconds"))):
            step = r.get("step_seconds")
            points.append(Point(key, str(r.get("backbone")), layers, r["seq_len"], r["batch_size"], dtype,
                                _device_kind(r.get("device")), r.get("peak_bytes") if is_int(r.get("peak_bytes"))
                                else None, float(step) if is_number(step) and step > 0 else None, where))
    return points, searches


@dataclass(frozen=True)
class Query:
    """The question: budget (bytes), backbone, depth (None: its own), sequence length, dtype, device kind."""

    budget_bytes: int
    backbone: str
    seq_len: int
    dtype: str = "float32"
    device: str = "cuda"
    layers: int | None = None

    def __post_init__(self) -> None:
        require(is_int(self.budget_bytes) and self.budget_bytes > 0, "budget", self.budget_bytes,
                "must be a positive number of bytes")
        require(is_int(self.seq_len) and 1 <= self.seq_len <= 1 << 20, "seq_len", self.seq_len,
                "must be an integer from 1 to 1048576")
        require(self.dtype in DTYPES, "dtype", self.dtype, f"must be one of {', '.join(DTYPES)}")
        require(self.device in DEVICES, "device", self.device, "must be cuda or cpu")
        require(self.layers is None or (is_int(self.layers) and self.layers >= 1), "layers", self.layers,
                "must be an integer >= 1")
        from mefts_core.backbones import validate_backbone

        validate_backbone(self.backbone)

    def matches(self, p: Point | Search, label: str, depth: int | None) -> bool:
        """Same method, backbone, sequence length and dtype, device kind, and depth (a row without one: the
        backbone's own)."""
        layers = p.layers if p.layers is not None else depth
        return (p.method == label and p.backbone == self.backbone and p.seq_len == self.seq_len
                and p.dtype == self.dtype and getattr(p, "device", "cuda") == self.device and layers == depth)


def figure(value: Any, source: str, how: str) -> dict[str, Any]:
    return {"value": value, "source": source, "how": how}


def _gib(b: float) -> str:
    return f"{b / GiB:.2f} GiB"


def _interpolate(x: float, x1: float, y1: float, x2: float, y2: float) -> float:
    return y1 + (y2 - y1) * (x - x1) / (x2 - x1)


def _max_batch(q: Query, mem: list[Point], searches: list[Search], estimate) -> tuple[dict, tuple | None]:
    """The largest batch: a search at this budget, else between a measured fit and a measured miss, else the
    estimator. Also returns the bracketing points when interpolated (the peak is read off the same line)."""
    for s in searches:
        if abs(s.budget_bytes - q.budget_bytes) < 1 << 20:
            return figure(s.max_batch, "measured", f"batch search with real OOM at this budget ({s.where})"), None
    # the largest batch measured to fit, and the smallest above it measured not to
    lo = max((p for p in mem if p.peak_bytes <= q.budget_bytes), key=lambda p: p.batch_size, default=None)
    hi = min((p for p in mem if p.peak_bytes > q.budget_bytes and (lo is None or p.batch_size > lo.batch_size)),
             key=lambda p: p.batch_size, default=None)
    if lo is not None and hi is not None:
        if hi.batch_size == lo.batch_size + 1:
            return figure(lo.batch_size, "measured", f"B={lo.batch_size} fits, B={hi.batch_size} does not "
                                                     f"({lo.where})"), None
        b = _interpolate(q.budget_bytes, lo.peak_bytes, lo.batch_size, hi.peak_bytes, hi.batch_size)
        b = min(max(math.floor(b + 1e-9), lo.batch_size), hi.batch_size - 1)
        how = (f"peak linear in the batch between measured B={lo.batch_size} ({_gib(lo.peak_bytes)}) and "
               f"B={hi.batch_size} ({_gib(hi.peak_bytes)})")
        return figure(b, "interpolated", how), (lo, hi)
    return _within_measured(estimate(), lo, hi), None


def _within_measured(est: dict, lo: Point | None, hi: Point | None) -> dict:
    """The estimate, held to what was measured at this budget: at least `lo`, the largest batch that fit (also when
    there is no estimate), below `hi`, the smallest that did not."""
    v = est["value"]
    if lo is not None and (v is None or v < lo.batch_size):
        lower = "" if v is None else f"; the analytic estimate, B={v}, is lower"
        return figure(lo.batch_size, "measured", f"at least B={lo.batch_size}: it fits ({lo.where}), no larger "
                                                 f"batch was measured{lower}")
    if hi is not None and v is not None and v >= hi.batch_size:
        return figure(hi.batch_size - 1, "estimated", f"{est['how']}, {v}, capped below B={hi.batch_size}, "
                                                      f"which does not fit ({hi.where})")
    return est


def _step(q: Query, batch: int, timed: list[Point]) -> dict:
    """Step time at `batch`: measured there, interpolated between two timed batches around it, or a timed step
    scaled linearly with the batch (an estimate that names its point), else unknown."""
    at = [p for p in timed if p.batch_size == batch]
    if at:
        return figure(at[0].step_seconds, "measured", f"timed at B={batch} ({at[0].where})")
    below = [p for p in timed if p.batch_size < batch]
    above = [p for p in timed if p.batch_size > batch]
    if below and above:
        lo, hi = max(below, key=lambda p: p.batch_size), min(above, key=lambda p: p.batch_size)
        return figure(_interpolate(batch, lo.batch_size, lo.step_seconds, hi.batch_size, hi.step_seconds),
                      "interpolated", f"linear in the batch between timed B={lo.batch_size} and B={hi.batch_size}")
    if timed:
        near = max(below, key=lambda p: p.batch_size) if below else min(above, key=lambda p: p.batch_size)
        return figure(near.step_seconds * batch / near.batch_size, "estimated",
                      f"timed {near.step_seconds:.4g} s at B={near.batch_size} ({near.where}), scaled linearly "
                      f"with the batch")
    return figure(None, "unknown", f"no timed step of this method at seq {q.seq_len} on {q.device}")


def fit_method(q: Query, label: str, points: list[Point], searches: list[Search],
               depth: int | None) -> dict[str, Any]:
    """One method's row: max batch, the peak there, step time and tokens/s, each a figure (value, source, how)."""
    from mefts_core.measure.bench.grid import parse_method
    from mefts_core.measure.estimate import estimate_memory, max_batch_estimate

    base, options = parse_method(label)
    mine = [p for p in points if q.matches(p, label, depth)]
    mem = sorted((p for p in mine if p.peak_bytes is not None), key=lambda p: p.batch_size)
    timed = [p for p in mine if p.step_seconds is not None]
    kw = dict(layers=q.layers, options=options, dtype=q.dtype, device=q.device)

    def estimate() -> dict:
        try:
            return figure(max_batch_estimate(q.backbone, base, q.seq_len, q.budget_bytes, **kw), "estimated",
                          "analytic estimate (mefts_core.measure.estimate)")
        except NotImplementedError as e:
            return figure(None, "unknown", f"not estimated: {e}")

    batch, line = _max_batch(q, mem, [s for s in searches if q.matches(s, label, depth)], estimate)
    b = batch["value"]
    if not b:
        peak = figure(None, "unknown", "batch 1 does not fit" if b == 0 else batch["how"])
        step = figure(None, "unknown", peak["how"])
    else:
        at = [p for p in mem if p.batch_size == b]
        if at:
            peak = figure(at[0].peak_bytes, "measured", f"measured at B={b} ({at[0].where})")
        elif line is not None:
            lo, hi = line
            peak = figure(round(_interpolate(b, lo.batch_size, lo.peak_bytes, hi.batch_size, hi.peak_bytes)),
                          "interpolated", batch["how"])
        else:
            try:
                peak = figure(estimate_memory(q.backbone, base, b, q.seq_len, **kw)["peak_bytes"], "estimated",
                              "analytic estimate (mefts_core.measure.estimate)")
            except NotImplementedError as e:
                peak = figure(None, "unknown", f"not estimated: {e}")
        step = _step(q, b, timed)
    tps = None if step["value"] is None else b * q.seq_len / step["value"]
    return {"method": label, "max_batch": batch, "peak_bytes": peak, "step_seconds": step,
            "tokens_per_second": figure(tps, step["source"], step["how"]), "measured_points": len(mine)}


def default_labels() -> list[str]:
    """The label of every registered method with its default options."""
    from mefts_core.methods import METHODS, method_label

    return [method_label(m) for m in METHODS]


def fits(q: Query, rows: Iterable[dict[str, Any]] = (), methods: Iterable[str] | None = None) -> dict[str, Any]:
    """For every method (default: every registered one) the largest batch in `q.budget_bytes` and its figures.

    `rows` are measured points as plain dicts (see `read_points`). Raises ConfigError naming a bad field.
    """
    labels = []
    for m in methods if methods is not None else default_labels():
        key = label_key(m)
        require(key is not None, "methods", m, "not a method label like lora, lora+gc or meft1-float")
        if key not in labels:
            labels.append(key)
    points, searches = read_points(rows)
    depth = q.layers if q.layers is not None else backbone_depth(q.backbone)
    out = [fit_method(q, label, points, searches, depth) for label in labels]
    return {"budget_bytes": q.budget_bytes, "budget_gib": q.budget_bytes / GiB, "backbone": q.backbone,
            "layers": depth, "seq_len": q.seq_len, "dtype": q.dtype, "device": q.device, "methods": out}


def backbone_depth(backbone: str) -> int | None:
    """The backbone's own number of layers (from its config; nothing is loaded)."""
    from mefts_core.measure.estimate import estimate_memory

    try:
        return estimate_memory(backbone, "bitfit", 1, 8)["layers"]
    except NotImplementedError:
        return None


FITS_TABLE_COLUMNS = ("method", "max batch", "peak", "step s", "tokens/s")


def _cell(f: dict[str, Any], fmt) -> str:
    return f["source"] if f["value"] is None else f"{fmt(f['value'])} ({f['source']})"


def fits_table(result: dict[str, Any]) -> str:
    """`fits`'s answer for people (Markdown, via the one table writer), each figure with its source."""
    from mefts_core.measure import tables

    rows = [[r["method"], _cell(r["max_batch"], lambda v: f"{v:,}"), _cell(r["peak_bytes"], _gib),
             _cell(r["step_seconds"], lambda v: f"{v:.4g}"), _cell(r["tokens_per_second"], lambda v: f"{v:,.0f}")]
            for r in result["methods"]]
    return tables.to_markdown(FITS_TABLE_COLUMNS, rows)
