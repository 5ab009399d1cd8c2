"""Running the bench: memory and speed of every method over a grid of backbone × method × layers × seq_len × batch.

One row per grid point (see `COLUMNS`): the two memory measurements of docs/design.md ("Memory is measured two ways":
stored activation bytes from saved-tensor hooks, the step's peak from the CUDA allocator or the CPU profiler) with
the static parts (parameters, gradients, optimizer state) broken out, the median wall time of `repeats` steps timed
*without* the profiler after `warmup` steps, tokens per second, and the pre-flight estimate of the peak
(mefts_core.measure.estimate) with its relative error. A point that does not fit is a row with status "does not fit"; a
backbone the registry does not know (yet) is a row with status "skipped" and a note, never a stand-in.

Library use, e.g. from the service (mefts_core imports neither db nor backend; the sink is how rows leave):

    grid = BenchGrid(backbones=["bert-base"], methods=["lora", "meft1-exact"], layers=[12], seq_lens=[128])
    rows = run_bench(grid, sink=store_row)   # store_row(row: dict) is called once per row, as soon as it exists
"""

from __future__ import annotations

import gc
import json
import logging
import platform
import statistics
import time
from collections.abc import Iterable
from typing import Any

import torch

from mefts_core.measure.bench.grid import DTYPES, BenchCase, BenchGrid, parse_method
from mefts_core.measure.bench.rows import COLUMNS, Row, Sink

log = logging.getLogger(__name__)


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


def model_head(backbone: str) -> str:
    """The head the bench trains: causal_lm for decoders, seq_cls otherwise."""
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
    model, _ = load_backbone(backbone, head=model_head(backbone), num_layers=layers, seed=seed, dtype=DTYPES[dtype])
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


def release(device: torch.device) -> None:
    """Collect garbage and return the CUDA allocator's cached blocks (between measured points)."""
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
        batch = make_batch(model.config, case.batch_size, case.seq_len, head=model_head(case.backbone), seed=grid.seed,
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
    release(device)
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
