"""`mefts bench`: memory and speed of every method over a grid of backbone × method × layers × seq_len × batch.

One row per grid point (see `COLUMNS`): the two memory measurements of docs/design.md ("Memory is measured two ways":
stored activation bytes from saved-tensor hooks, the step's peak from the CUDA allocator or the CPU profiler) with
the static parts (parameters, gradients, optimizer state) broken out, the median wall time of `repeats` steps timed
*without* the profiler after `warmup` steps, tokens per second, and the pre-flight estimate of the peak
(mefts_core.measure.estimate) with its relative error. A point that does not fit is a row with status "does not fit"; a
backbone the registry does not know (yet) is a row with status "skipped" and a note, never a stand-in.

Library use, e.g. from the service (mefts_core imports neither db nor backend; the sink is how rows leave):

    grid = BenchGrid(backbones=["bert-base"], methods=["lora", "meft1-exact"], layers=[12], seq_lens=[128])
    rows = run_bench(grid, sink=store_row)   # store_row(row: dict) is called once per row, as soon as it exists

Method labels (`parse_method`): a method name, plus "+gc" for gradient checkpointing (non-MEFT methods), and for
MEFT "-exact" (default), "-float" (the paper's arithmetic; its error budget is lifted so random weights can be
measured) or "-ckK" (float with an exact checkpoint every K layers).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from mefts_core.config import MEFT_METHODS, METHODS

log = logging.getLogger(__name__)

Row = dict[str, Any]
Sink = Callable[[Row], None]

MiB = 1 << 20
GiB = 1 << 30

# Every row has exactly these keys, in this order (CSV/Markdown column order).
COLUMNS: dict[str, type] = {
    "backbone": str,
    "method": str,  # the label, e.g. "lora+gc", "meft1-float"
    "base_method": str,  # what apply_method gets: full, lora, adapter, bitfit, meft1/2/3
    "options": str,  # the options given to apply_method, as JSON
    "layers": int,
    "seq_len": int,
    "batch_size": int,
    "dtype": str,
    "device": str,  # cpu or cuda:N
    "device_name": str,
    "status": str,  # ok | does not fit | skipped | failed
    "note": str,
    "trainable_params": int,
    "total_params": int,
    "stored_activation_bytes": int,
    "peak_bytes": int,
    "peak_activation_bytes": int,
    "param_bytes": int,
    "grad_bytes": int,
    "optimizer_bytes": int,
    "how": str,  # cuda-allocator | cpu-profiler
    "step_seconds": float,  # median of the timed steps (no profiler)
    "step_seconds_min": float,
    "step_seconds_max": float,
    "timed_steps": int,
    "tokens_per_second": float,
    "estimated_peak_bytes": int,
    "estimate_error": float,  # (estimate - measured) / measured
    "seed": int,
    "torch": str,
}

STANDARD_METHODS = ["full", "full+gc", "lora", "lora+gc", "adapter", "bitfit", "meft1-float", "meft1-exact",
                    "meft2-float", "meft2-exact", "meft3-float", "meft3-exact"]
CURVE_METHODS = ["full", "full+gc", "lora", "lora+gc", "meft1-float", "meft1-exact"]

# Presets are grid defaults; any flag given on the command line overrides the preset's value.
PRESETS: dict[str, dict[str, Any]] = {
    # The standard table: BERT-base shape, 12 layers, batch 8, seq 512 (on CPU pass --seq-len 256 or 128).
    "standard": dict(backbones=["bert-base"], methods=STANDARD_METHODS, layers=[12], seq_lens=[512], batch_sizes=[8]),
    # Curves: memory against depth, sequence length and batch (seq > 512 extends BERT's position table).
    "depth": dict(backbones=["bert-base"], methods=CURVE_METHODS, layers=[6, 12, 24, 48], seq_lens=[128],
                  batch_sizes=[8], repeats=1),
    "seq": dict(backbones=["bert-base"], methods=CURVE_METHODS, layers=[12], seq_lens=[128, 256, 512, 1024, 2048],
                batch_sizes=[1], repeats=1),
    "batch": dict(backbones=["bert-base"], methods=CURVE_METHODS, layers=[12], seq_lens=[128],
                  batch_sizes=[1, 2, 4, 8, 16], repeats=1),
    # The key GPU table (bench/gpu.sh).
    "gpu": dict(backbones=["bert-base"], methods=["full", "full+gc", "lora", "lora+gc", "meft1-float", "meft1-exact"],
                layers=[12, 24, 48], seq_lens=[512], batch_sizes=[8], repeats=5, warmup=2),
    # Seconds on a laptop: the shape of the output, not a measurement to quote.
    "smoke": dict(backbones=["tiny-bert"], methods=["lora", "meft1-exact"], layers=[2, 4], seq_lens=[32],
                  batch_sizes=[2], repeats=1),
}


# ------------------------------------------------------------------------------------------------ the grid


_BASELINE_SUFFIXES = {"+gc": {"gradient_checkpointing": True}, "+offload": {"offload_activations": True},
                      "+ff": {"ffn_chunk": 128}}
_MEFT_SUFFIXES = {"layer": {"recompute_unit": "layer"}, "sublayer": {"recompute_unit": "sublayer"},
                  "nochunk": {"chunk_tokens": 0}}


def parse_method(label: str) -> tuple[str, dict[str, Any]]:
    """A bench label -> (method, options) for apply_method.

    Non-MEFT methods take any of "+gc" (gradient checkpointing), "+ff" (Hugging Face's FFN chunking, 128 tokens) and
    "+offload" (activations saved to CPU memory): "lora+gc+ff". MEFT takes a mode, "-exact" (default), "-float" (the
    paper's arithmetic; its error budget is lifted so random weights can be measured) or "-ckK" (float with an exact
    checkpoint every K layers), then any of "-layer" / "-sublayer" (recompute_unit) and "-nochunk" (chunk_tokens=0):
    "meft1-exact-nochunk-sublayer" is the engine before chunking.

    Raises ValueError naming the label when it is not a method with known suffixes.
    """
    base, opts = label, {}
    while any(base.endswith(sfx) for sfx in _BASELINE_SUFFIXES):
        sfx = next(sfx for sfx in _BASELINE_SUFFIXES if base.endswith(sfx))
        base, opts = base.removesuffix(sfx), opts | _BASELINE_SUFFIXES[sfx]
    if base.startswith(MEFT_METHODS) and "-" in base:
        base, mode, *flags = base.split("-")
        if mode == "float":
            opts |= {"recompute": "float", "error_budget": None}
        elif mode.startswith("ck") and mode[2:].isdigit() and int(mode[2:]) >= 1:
            opts |= {"recompute": f"checkpoint_every={int(mode[2:])}", "error_budget": None}
        elif mode != "exact":
            raise ValueError(f"method={label!r}: unknown MEFT mode {mode!r}; use -exact, -float or -ckK, "
                             f"optionally followed by {', '.join('-' + f for f in _MEFT_SUFFIXES)}")
        for flag in flags:
            if flag not in _MEFT_SUFFIXES:
                raise ValueError(f"method={label!r}: unknown MEFT suffix {flag!r}; use "
                                 f"{', '.join('-' + f for f in _MEFT_SUFFIXES)}")
            opts |= _MEFT_SUFFIXES[flag]
    if base not in METHODS or (base in MEFT_METHODS and set(opts) & {"gradient_checkpointing", "offload_activations",
                                                                      "ffn_chunk"}):
        raise ValueError(f"method={label!r}: expected one of {', '.join(METHODS)} with optional "
                         f"{'/'.join(_BASELINE_SUFFIXES)} (non-MEFT) or -exact/-float/-ckK (MEFT) suffixes")
    return base, opts


@dataclass(frozen=True)
class BenchCase:
    """One grid point."""

    backbone: str
    method: str  # label
    layers: int | None  # None: the backbone's own depth
    seq_len: int
    batch_size: int


@dataclass
class BenchGrid:
    """The grid and how each point is measured. Cases run in the order backbone, method, layers, seq_len, batch."""

    backbones: list[str] = field(default_factory=lambda: ["bert-base"])  # registry names or local folders
    methods: list[str] = field(default_factory=lambda: list(STANDARD_METHODS))  # labels, see parse_method
    layers: list[int | None] = field(default_factory=lambda: [None])  # None: the backbone's own depth
    seq_lens: list[int] = field(default_factory=lambda: [128])
    batch_sizes: list[int] = field(default_factory=lambda: [8])
    dtype: str = "float32"  # weights and activations: float32, bfloat16 or float16
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    warmup: int = 1  # untimed steps first (optimizer state allocated, kernels warm)
    repeats: int = 3  # timed steps (median reported); 0 measures memory only
    seed: int = 0  # weights, batch and dropout
    estimate: bool = True  # add the pre-flight estimate and its error to each row

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        for name in ("seq_lens", "batch_sizes"):
            bad = [v for v in getattr(self, name) if not isinstance(v, int) or v < 1]
            if bad:
                raise ValueError(f"{name}={getattr(self, name)!r}: every value must be an integer >= 1")
        bad_layers = [v for v in self.layers if v is not None and (not isinstance(v, int) or v < 1)]
        if bad_layers:
            raise ValueError(f"layers={self.layers!r}: every value must be an integer >= 1 or None")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: must be one of {', '.join(_DTYPES)}")
        if self.warmup < 0 or self.repeats < 0:
            raise ValueError(f"warmup={self.warmup}, repeats={self.repeats}: must be >= 0")
        for m in self.methods:
            parse_method(m)
        self.torch_device()  # validates the device

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r}: must be auto, cpu, cuda or cuda:N")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r}: CUDA is not available here")
        return dev

    def cases(self) -> list[BenchCase]:
        return [BenchCase(b, m, n, t, bs) for b in self.backbones for m in self.methods for n in self.layers
                for t in self.seq_lens for bs in self.batch_sizes]


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def grid_from_preset(preset: str | None, **overrides: Any) -> BenchGrid:
    """A preset's grid with `overrides` (None values ignored) applied on top."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset={preset!r}: must be one of {', '.join(PRESETS)}")
    values = dict(PRESETS.get(preset, {})) if preset else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return BenchGrid(**values)


# ------------------------------------------------------------------------------------------------ one row


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def known_backbone(name: str) -> bool:
    from pathlib import Path

    from mefts_core.backbones import BACKBONES

    return name in BACKBONES or Path(name).is_dir()


def _head(backbone: str) -> str:
    from mefts_core.backbones import BACKBONES

    spec = BACKBONES.get(backbone)
    return "causal_lm" if spec is not None and getattr(spec, "is_decoder", False) else "seq_cls"


def make_batch(config: Any, batch_size: int, seq_len: int, *, head: str = "seq_cls", seed: int = 0,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A seeded batch of random token ids, no padding (every position is a real token: the most memory)."""
    g = torch.Generator().manual_seed(seed)
    vocab = int(config.vocab_size)
    low = 1000 if vocab > 2000 else 5  # clear of the special tokens
    ids = torch.randint(low, vocab, (batch_size, seq_len), generator=g)
    eos = getattr(config, "eos_token_id", None)
    if getattr(config, "model_type", "") == "bart" and eos is not None:
        ids[:, -1] = eos  # BART's classification head pools at the (single) eos token
    batch = {"input_ids": ids, "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long)}
    if head == "causal_lm":
        batch["labels"] = ids.clone()
    else:
        batch["labels"] = torch.randint(0, max(1, int(getattr(config, "num_labels", 2))), (batch_size,),
                                        generator=g)
    return {k: v.to(device) for k, v in batch.items()}


def extend_positions(model: torch.nn.Module, seq_len: int, seed: int = 0) -> str:
    """Grow a BERT/RoBERTa learned position table to fit `seq_len` (random rows above the original ones).

    For memory and speed curves past 512 tokens on architecture-only shapes: the table is a few MB, so the
    measurement is that of a model trained with longer positions. Returns a note for the row ("" when nothing grew).
    Raises ValueError for other position schemes.
    """
    cfg = model.config
    limit = getattr(cfg, "max_position_embeddings", None)
    offset = (cfg.pad_token_id + 1) if cfg.model_type == "roberta" else 0  # RoBERTa counts from padding_idx + 1
    if limit is None or seq_len + offset <= limit:
        return ""
    emb = getattr(model.base_model, "embeddings", None)
    if cfg.model_type not in ("bert", "roberta") or emb is None:
        raise ValueError(f"seq_len={seq_len}: exceeds max_position_embeddings={limit} of this "
                         f"{cfg.model_type} model, and extending positions is only implemented for BERT/RoBERTa")
    old = emb.position_embeddings
    size = seq_len + offset
    new = torch.nn.Embedding(size, old.embedding_dim, padding_idx=old.padding_idx, device=old.weight.device,
                             dtype=old.weight.dtype)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        new.weight.normal_(0.0, getattr(cfg, "initializer_range", 0.02))
        new.weight[:limit] = old.weight
    emb.position_embeddings = new
    emb.position_ids = torch.arange(size, device=old.weight.device).expand((1, -1))
    if hasattr(emb, "token_type_ids"):
        emb.token_type_ids = torch.zeros((1, size), dtype=torch.long, device=old.weight.device)
    cfg.max_position_embeddings = size
    return f"positions extended {limit} -> {size} (random rows)"


def build_model(backbone: str, method: str, *, layers: int | None, seq_len: int, dtype: str = "float32",
                device: torch.device | str = "cpu", seed: int = 0) -> tuple[torch.nn.Module, str]:
    """A fresh, seeded model prepared for the method label, in train mode on `device`; and a note."""
    from mefts_core.backbones import load_backbone
    from mefts_core.methods import apply_method

    base, options = parse_method(method)
    model, _ = load_backbone(backbone, head=_head(backbone), num_layers=layers, seed=seed, dtype=_DTYPES[dtype])
    note = extend_positions(model, seq_len, seed)
    apply_method(model, base, **options)
    return model.to(device).train(), note


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(model: torch.nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                n: int, device: torch.device) -> list[float]:
    """Wall seconds of `n` full training steps (zero_grad, forward, loss, backward, optimizer step), no profiler."""
    from mefts_core.measure.memory import step_loss

    times = []
    for _ in range(n):
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        step_loss(model(**batch), batch).backward()
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _empty_row(case: BenchCase, grid: BenchGrid, device: torch.device) -> Row:
    row: Row = dict.fromkeys(COLUMNS)
    try:
        base, options = parse_method(case.method)
    except ValueError:
        base, options = case.method, {}
    row.update(backbone=case.backbone, method=case.method, base_method=base, options=json.dumps(options, sort_keys=True),
               layers=case.layers, seq_len=case.seq_len, batch_size=case.batch_size, dtype=grid.dtype,
               device=str(device), device_name=device_name(device), status="ok", note="", seed=grid.seed,
               torch=torch.__version__)
    return row


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_case(case: BenchCase, grid: BenchGrid) -> Row:
    """Measure one grid point; never raises for a point that does not fit or fails (the row says so)."""
    from mefts_core.measure.memory import measure_step

    device = grid.torch_device()
    row = _empty_row(case, grid, device)
    if not known_backbone(case.backbone):
        row.update(status="skipped", note=f"backbone {case.backbone!r} is not in the registry "
                                          "(mefts_core.backbones.BACKBONES) yet; no stand-in was measured")
        log.warning("skipped %s: %s", case, row["note"])
        return row
    oom: BaseException | None = None
    try:
        torch.manual_seed(grid.seed)
        model, note = build_model(case.backbone, case.method, layers=case.layers, seq_len=case.seq_len,
                                  dtype=grid.dtype, device=device, seed=grid.seed)
        row["note"] = note
        row["layers"] = _depth(model, case.layers)
        params = list(model.parameters())
        trainable = [p for p in params if p.requires_grad]
        row.update(total_params=sum(p.numel() for p in params), trainable_params=sum(p.numel() for p in trainable))
        batch = make_batch(model.config, case.batch_size, case.seq_len, head=_head(case.backbone), seed=grid.seed,
                           device=device)
        optimizer = torch.optim.AdamW(trainable, lr=0.0)  # lr 0: real kernels and state, weights unchanged
        times = timed_steps(model, batch, optimizer, grid.warmup + grid.repeats, device)[grid.warmup:]
        report = measure_step(model, batch, optimizer, warmup_steps=0 if grid.warmup + grid.repeats else 1)
        # the report's own step_seconds ran under the profiler: not a timing to quote
        row.update({k: v for k, v in report.to_dict().items() if k in COLUMNS and k not in ("device", "step_seconds")})
        if times:
            med = statistics.median(times)
            row.update(step_seconds=med, step_seconds_min=min(times), step_seconds_max=max(times),
                       timed_steps=len(times), tokens_per_second=case.batch_size * case.seq_len / med)
        else:
            row.update(timed_steps=0)
        del model, optimizer, batch, params, trainable
    except (torch.OutOfMemoryError, MemoryError) as e:
        oom = e
    except Exception as e:  # a failed point is data (e.g. float inversion past its budget), not a crash
        log.exception("failed: %s", case)
        row.update(status="failed", note=f"{type(e).__name__}: {e}"[:500])
    if oom is not None:  # outside the except block, so the traceback no longer pins the step's tensors
        reached = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        row.update(status="does not fit", peak_bytes=reached,
                   note=f"does not fit at batch {case.batch_size}, seq {case.seq_len}: {str(oom).splitlines()[0]}"[:500])
        oom = None
    _release(device)
    if grid.estimate and row["status"] in ("ok", "does not fit"):
        _add_estimate(row)
    return row


def reestimate(rows: Iterable[Row]) -> list[Row]:
    """Rows with the estimate columns recomputed by the current estimator (e.g. for rows measured earlier)."""
    out = []
    for r in rows:
        r = dict(r, estimated_peak_bytes=None, estimate_error=None)
        if r["status"] in ("ok", "does not fit"):
            _add_estimate(r)
        out.append(r)
    return out


def _depth(model: torch.nn.Module, layers: int | None) -> int | None:
    cfg = model.config
    return getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", None) or layers


def _add_estimate(row: Row) -> None:
    """Fill estimated_peak_bytes and estimate_error (relative to the measured peak) from mefts_core.measure.estimate."""
    from mefts_core.measure.estimate import estimate_memory

    base, options = parse_method(row["method"])
    try:
        est = estimate_memory(row["backbone"], base, row["batch_size"], row["seq_len"], layers=row["layers"],
                              options=options, dtype=row["dtype"], device=row["device"].split(":")[0])
    except NotImplementedError as e:
        log.info("no estimate for %s %s: %s", row["backbone"], row["method"], e)
        return
    except Exception:  # the estimate is a column, not the measurement: never lose a measured row to it
        log.exception("estimate failed for %s %s", row["backbone"], row["method"])
        return
    row["estimated_peak_bytes"] = est["peak_bytes"]
    if row["status"] == "ok" and row["peak_bytes"]:
        row["estimate_error"] = (est["peak_bytes"] - row["peak_bytes"]) / row["peak_bytes"]


def run_bench(grid: BenchGrid, sink: Sink | None = None, *, progress: bool = True) -> list[Row]:
    """Run every grid point and return the rows (see `COLUMNS`).

    Args:
        grid: what to measure and how.
        sink: called as ``sink(row)`` once per row, in grid order, as soon as the row exists (skipped, failed and
            does-not-fit rows included; check ``row["status"]``). It is how rows reach storage without mefts_core
            importing the service; an exception raised by the sink stops the run.
        progress: a tqdm bar on stderr.
    """
    from tqdm.auto import tqdm

    rows: list[Row] = []
    cases = grid.cases()
    bar = tqdm(cases, desc="bench", unit="row", disable=not progress, dynamic_ncols=True)
    for case in bar:
        bar.set_postfix_str(f"{case.backbone} {case.method} L{case.layers} T{case.seq_len} B{case.batch_size}")
        row = run_case(case, grid)
        log.info("row: %s", {k: row[k] for k in ("backbone", "method", "layers", "seq_len", "batch_size", "status",
                                                  "peak_bytes", "step_seconds")})
        rows.append(row)
        if sink is not None:
            sink(row)
    return rows


# ------------------------------------------------------------------------------------------------ formats


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_rows(rows: Iterable[Row], fmt: str) -> str:
    """Every column of every row as md (a Markdown table), csv or json; `parse_rows` reads each back."""
    rows = list(rows)
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    cols = list(COLUMNS)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r[k] for k in cols})
        return buf.getvalue()
    if fmt == "md":
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(r.get(k)) for k in cols) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    raise ValueError(f"format={fmt!r}: must be md, csv or json")


def _typed(key: str, text: str) -> Any:
    if text == "":
        return None if key not in ("note",) else ""
    kind = COLUMNS.get(key, str)
    if kind is int:
        return int(float(text))
    if kind is float:
        return float(text)
    return text


def parse_rows(text: str, fmt: str) -> list[Row]:
    """Rows written by `format_rows` (any format), with the column types of `COLUMNS`."""
    if fmt == "json":
        return [{k: r.get(k) for k in COLUMNS} for r in json.loads(text)]
    if fmt == "csv":
        import csv
        import io

        return [{k: _typed(k, r.get(k, "")) for k in COLUMNS} for r in csv.DictReader(io.StringIO(text))]
    if fmt == "md":
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip().startswith("|")]
        split = [_md_cells(ln) for ln in lines]
        header, body = split[0], split[2:]
        return [{k: _typed(k, dict(zip(header, cells)).get(k, "")) for k in COLUMNS} for cells in body]
    raise ValueError(f"format={fmt!r}: must be md, csv or json")


def _md_cells(line: str) -> list[str]:
    cells, cur, i, body = [], "", 0, line.strip()[1:-1]
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body) and body[i + 1] == "|":
            cur, i = cur + "|", i + 2
            continue
        if body[i] == "|":
            cells.append(cur.strip())
            cur = ""
        else:
            cur += body[i]
        i += 1
    cells.append(cur.strip())
    return cells


def _mib(v: Any) -> str:
    return "-" if v is None else f"{v / MiB:,.1f}"


def summary_table(rows: Iterable[Row]) -> str:
    """The human table (MiB, seconds): what `mefts bench` prints at the end and docs/benchmarks.md shows."""
    head = ["backbone", "method", "L", "T", "B", "trainable", "stored MiB", "peak act MiB", "peak MiB",
            "est. peak MiB (err)", "step s", "tok/s", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        err = r.get("estimate_error")
        est = _mib(r.get("estimated_peak_bytes")) + (f" ({100 * err:+.1f}%)" if err is not None else "")
        step = r.get("step_seconds")
        tps = r.get("tokens_per_second")
        status = r["status"] if not r.get("note") else f"{r['status']}: {r['note']}"
        lines.append("| " + " | ".join([
            r["backbone"], r["method"], str(r.get("layers") or "-"), str(r["seq_len"]), str(r["batch_size"]),
            f"{r['trainable_params']:,}" if r.get("trainable_params") is not None else "-",
            _mib(r.get("stored_activation_bytes")), _mib(r.get("peak_activation_bytes")), _mib(r.get("peak_bytes")),
            est, f"{step:.3f}" if step is not None else "-", f"{tps:,.0f}" if tps is not None else "-",
            status.replace("|", "/"),
        ]) + " |")
    return "\n".join(lines)


def load_rows(path: str) -> list[Row]:
    """Rows from a file written by `mefts bench --output` (format from the extension: .json, .csv, .md)."""
    from pathlib import Path

    p = Path(path)
    fmt = {".json": "json", ".csv": "csv", ".md": "md"}.get(p.suffix)
    if fmt is None:
        raise ValueError(f"{path}: unknown extension; expected .json, .csv or .md")
    return parse_rows(p.read_text(), fmt)




# ------------------------------------------------------------------------------------------------ fits in budget


def measure_points(backbone: str, method: str, points: Iterable[tuple[int, int]], *, layers: int | None = None,
                   dtype: str = "float32", device: torch.device | str = "cpu", seed: int = 0) -> list[dict[str, Any]]:
    """Measured memory (one warm-up + one measured step each) at (batch, seq_len) points, for `fit_memory`.

    The model is built once at the longest sequence and reused: only the batch changes between points.
    """
    points = list(points)
    return _PointMeter(backbone, method, max(t for _, t in points), layers=layers, dtype=dtype, device=device,
                       seed=seed).measure(points)


class _PointMeter:
    """One model (and AdamW) measured at several batch shapes."""

    def __init__(self, backbone: str, method: str, seq_len: int, *, layers: int | None, dtype: str,
                 device: torch.device | str, seed: int) -> None:
        self.backbone, self.seed, self.device = backbone, seed, torch.device(device)
        self.model, _ = build_model(backbone, method, layers=layers, seq_len=seq_len, dtype=dtype,
                                    device=self.device, seed=seed)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=0.0)

    def measure(self, points: Iterable[tuple[int, int]]) -> list[dict[str, Any]]:
        from mefts_core.measure.memory import measure_step

        out = []
        for b, t in points:
            batch = make_batch(self.model.config, b, t, head=_head(self.backbone), seed=self.seed, device=self.device)
            r = measure_step(self.model, batch, self.optimizer, warmup_steps=1)
            out.append({"batch_size": b, "seq_len": t, "peak_bytes": r.peak_bytes,
                        "peak_activation_bytes": r.peak_activation_bytes,
                        "static_bytes": r.param_bytes + r.grad_bytes + r.optimizer_bytes})
            del batch
            _release(self.device)
        return out


def search_max_batch(backbone: str, method: str, *, seq_len: int, budget_bytes: int, layers: int | None = None,
                     dtype: str = "float32", device: str = "cuda", seed: int = 0, limit: int = 65536) -> int:
    """GPU ONLY: the largest batch whose training step fits in `budget_bytes`, by search with real OOM catching.

    The caching allocator is capped at the budget (torch.cuda.set_per_process_memory_fraction), then batches are
    doubled until a step runs out of memory and bisected between the last fit and the first miss. Each probe runs a
    full step with AdamW's state and the grads allocated, as in training. Returns 0 when batch 1 does not fit.
    Not run in this repository's CI (no GPU there): bench/gpu.sh runs it on a lent card.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"device={device!r}: search_max_batch needs CUDA; elsewhere use fits_in_budget's fit")
    if dev.index is None:  # set_per_process_memory_fraction needs an index
        dev = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(dev).total_memory
    if budget_bytes > total:
        raise ValueError(f"budget_bytes={budget_bytes}: larger than this card's {total} bytes")
    _release(dev)
    model, _ = build_model(backbone, method, layers=layers, seq_len=seq_len, dtype=dtype, device=dev, seed=seed)
    held = {"model": model, "optimizer": torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                                           lr=0.0)}
    del model
    torch.cuda.set_per_process_memory_fraction(budget_bytes / total, dev)

    def fits(b: int) -> bool:
        failed = False
        try:
            batch = make_batch(held["model"].config, b, seq_len, head=_head(backbone), seed=seed, device=dev)
            # the first probe's first step allocates AdamW's state and the grads; one step each after that
            timed_steps(held["model"], batch, held["optimizer"], 1 if held["optimizer"].state else 2, dev)
            del batch
        except torch.OutOfMemoryError:
            failed = True
        held["optimizer"].zero_grad(set_to_none=False)
        _release(dev)  # after the except block: the traceback no longer holds the step's tensors
        log.info("search %s %s T=%d B=%d: %s", backbone, method, seq_len, b, "no" if failed else "fits")
        return not failed

    try:
        if not fits(1):
            return 0
        lo, hi = 1, 2
        while hi <= limit and fits(hi):
            lo, hi = hi, hi * 2
        while hi - lo > 1:  # lo fits, hi does not (or is past the limit)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
        held.clear()
        _release(dev)


def fit_from_measurements(backbone: str, method: str, *, seq_len: int, layers: int | None = None,
                          dtype: str = "float32", device: torch.device | str = "cpu", seed: int = 0,
                          max_tokens: int = 1 << 16) -> tuple[Any, list[dict[str, Any]]]:
    """Fit peak = static + max(floor, a + b·tokens + c·tokens·seq) to measured steps (estimate.MemoryFit).

    At small batches a transient that does not scale (the dense embedding gradient and AdamW's temporaries of full
    FT) can hide the per-token cost, so the batch is doubled from 1 until the activation peak scales (x1.6 from B to
    2B), then (B, T), (2B, T) and (4B, T/2) give a, b and c; what batch 1 needs beyond the line is the floor.
    """
    from mefts_core.measure.estimate import fit_memory

    meter = _PointMeter(backbone, method, seq_len, layers=layers, dtype=dtype, device=device, seed=seed)
    measure = meter.measure
    b = 1
    pts = measure([(1, seq_len), (2, seq_len)])
    first = pts[0]
    while pts[-1]["peak_activation_bytes"] < 1.6 * pts[-2]["peak_activation_bytes"] and 4 * b * seq_len <= max_tokens:
        b *= 2
        pts = [pts[-1], *measure([(2 * b, seq_len)])]
    half = max(8, seq_len // 2)
    pts.append(*measure([(2 * b * seq_len // half, half)]))  # as many tokens as (2B, T), half the keys each
    del meter
    _release(torch.device(device))
    fit = fit_memory(pts)
    fit.floor = max(fit.floor, first["peak_bytes"] - first["static_bytes"])
    return fit, pts if pts[0] is first else [first, *pts]


def fits_in_budget(backbone: str, methods: Iterable[str], budgets_gib: Iterable[float], *, seq_len: int,
                   batch_size: int = 8, layers: int | None = None, dtype: str = "float32", device: str = "auto",
                   seed: int = 0) -> list[dict[str, Any]]:
    """For each method and budget: the largest batch at `seq_len`, and the longest sequence at `batch_size`.

    Elsewhere than CUDA both come from `fit_from_measurements` (estimates, extrapolated from small measured steps).
    On CUDA the batch is found by search with real OOM catching (`search_max_batch`); the sequence length still
    comes from the fit.
    """
    dev = BenchGrid(backbones=[backbone], methods=list(methods), device=device).torch_device()
    budgets_gib = list(budgets_gib)
    out = []
    for method in methods:
        fit, _ = fit_from_measurements(backbone, method, seq_len=seq_len, layers=layers, dtype=dtype, device=dev,
                                       seed=seed)
        for gib in budgets_gib:
            budget = int(gib * GiB)
            row = {"backbone": backbone, "method": method, "layers": layers, "seq_len": seq_len,
                   "batch_size": batch_size, "budget_gib": gib, "max_batch": fit.max_batch(seq_len, budget),
                   "max_seq_len": fit.max_seq(batch_size, budget), "how": "estimate: fit of measured steps",
                   "max_batch_analytic": _analytic_max_batch(backbone, method, seq_len, budget, layers, dtype, dev),
                   "fit": fit.to_dict(), "device": str(dev)}
            if dev.type == "cuda" and budget <= torch.cuda.get_device_properties(dev).total_memory:
                row["max_batch"] = search_max_batch(backbone, method, seq_len=seq_len, budget_bytes=budget,
                                                    layers=layers, dtype=dtype, device=str(dev), seed=seed)
                row["how"] = "cuda search (real OOM); max_seq_len from the fit"
            out.append(row)
    return out


def _analytic_max_batch(backbone: str, method: str, seq_len: int, budget: int, layers: int | None, dtype: str,
                        device: torch.device) -> int | None:
    from mefts_core.measure.estimate import max_batch_estimate

    base, options = parse_method(method)
    try:
        return max_batch_estimate(backbone, base, seq_len, budget, layers, options, dtype=dtype, device=device.type)
    except NotImplementedError:
        return None


def fits_table(rows: Iterable[dict[str, Any]]) -> str:
    head = ["backbone", "method", "L", "budget GiB", "max batch @ T", "(analytic estimate)", "max seq @ B", "how"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ana = r.get("max_batch_analytic")
        lines.append(f"| {r['backbone']} | {r['method']} | {r['layers'] or '-'} | {r['budget_gib']:g} | "
                     f"{r['max_batch']:,} @ {r['seq_len']} | {'-' if ana is None else f'{ana:,}'} | "
                     f"{r['max_seq_len']:,} @ {r['batch_size']} | {r['how']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ command line


def _list(kind: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [None if kind is int and x.strip() in ("none", "") else kind(x.strip()) for x in text.split(",")
                    if x.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated {kind.__name__} values") from e

    return parse


def add_bench_command(subparsers: Any) -> None:
    """Register `bench` on an argparse subparsers object (the `mefts` console script); sets func=cmd_bench."""
    p = subparsers.add_parser(
        "bench", help="memory and speed of methods over backbone x method x layers x seq_len x batch",
        description="Measure stored activations, peak memory (with its parts) and step time for a grid; print a "
                    "table, write rows as md/csv/json. Presets: " + ", ".join(PRESETS) + ". Flags override them.")
    add_bench_args(p)
    p.set_defaults(func=cmd_bench)


def add_bench_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("grid (comma-separated lists; flags override --preset)")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None)
    g.add_argument("--backbone", "--backbones", dest="backbones", type=_list(str), default=None)
    g.add_argument("--methods", "--method", dest="methods", type=_list(str), default=None,
                   help="e.g. full,full+gc,lora,lora+gc,adapter,bitfit,meft1-exact,meft1-float,meft2-ck4")
    g.add_argument("--layers", type=_list(int), default=None, help="depths, e.g. 6,12,24,48 (none: the backbone's)")
    g.add_argument("--seq-len", dest="seq_lens", type=_list(int), default=None)
    g.add_argument("--batch-size", dest="batch_sizes", type=_list(int), default=None)
    g.add_argument("--dtype", choices=sorted(_DTYPES), default=None)
    g.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    m = p.add_argument_group("measurement")
    m.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1)")
    m.add_argument("--repeats", type=int, default=None, help="timed steps, median reported (default 3; 0: memory only)")
    m.add_argument("--seed", type=int, default=None)
    m.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    m.add_argument("--no-estimate", action="store_true", help="skip the pre-flight estimate column")
    f = p.add_argument_group("fits in budget")
    f.add_argument("--fits", type=_list(float), default=None, metavar="GIB,...",
                   help="also report the largest batch / sequence each method fits in these budgets (GiB)")
    f.add_argument("--fits-output", default=None, help="write the fits-in-budget rows here (JSON)")
    f.add_argument("--fits-only", action="store_true", help="with --fits: skip the grid's rows")
    o = p.add_argument_group("output")
    o.add_argument("--format", choices=["md", "csv", "json"], default=None,
                   help="format of --output (default: from its extension), or of stdout without --output")
    o.add_argument("--output", "-o", default=None, help="write every column of every row here")
    o.add_argument("--from", dest="from_files", nargs="+", default=None, metavar="FILE",
                   help="do not run: read rows from earlier outputs (.json/.csv/.md) and print/write them")
    o.add_argument("--reestimate", action="store_true", help="with --from: recompute the estimate columns")
    o.add_argument("--no-progress", action="store_true")
    o.add_argument("--verbose", "-v", action="store_true", help="log at INFO level")


def cmd_bench(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output) if args.output else None
    fmt = (args.format or {".json": "json", ".csv": "csv", ".md": "md"}.get(out.suffix, "md")) if out else None
    done: list[Row] = []

    def write(rows: list[Row]) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(format_rows(rows, fmt))

    def sink(row: Row) -> None:  # rewrite the file after every row: a long run interrupted keeps what it measured
        done.append(row)
        write(done)

    try:
        if args.from_files:
            rows = [r for path in args.from_files for r in load_rows(path)]
            rows = reestimate(rows) if args.reestimate else rows
            grid = None
        else:
            grid = grid_from_preset(args.preset, backbones=args.backbones, methods=args.methods, layers=args.layers,
                                    seq_lens=args.seq_lens, batch_sizes=args.batch_sizes, dtype=args.dtype,
                                    device=args.device, warmup=args.warmup, repeats=args.repeats, seed=args.seed,
                                    estimate=False if args.no_estimate else None)
            rows = [] if args.fits_only else run_bench(grid, sink=sink if out else None, progress=not args.no_progress)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if out:
        write(rows)
        log.info("wrote %d rows to %s", len(rows), out)
    if args.format and not args.output:
        sys.stdout.write(format_rows(rows, args.format))
    elif rows:
        print(summary_table(rows))
    if args.fits and grid is not None:
        fits = [f for b in grid.backbones if known_backbone(b) for n in grid.layers
                for f in fits_in_budget(b, grid.methods, args.fits, seq_len=grid.seq_lens[0],
                                        batch_size=grid.batch_sizes[0], layers=n, dtype=grid.dtype,
                                        device=grid.device, seed=grid.seed)]
        print(fits_table(fits))
        if args.fits_output:
            Path(args.fits_output).write_text(json.dumps(fits, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mefts_core.measure.bench", description=add_bench_command.__doc__)
    add_bench_args(parser)
    return cmd_bench(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
