"""Where a training step's time goes, per method: device time against wall time, host-device syncs, top kernels.

    .venv/bin/python bench/profile_step.py --methods lora+gc,meft1-float --backbone bert-base --layers 12 \\
        --seq-len 512 --batch-size 8 --device cuda

For each method: one warm-up step, then `--steps` steps under torch.profiler. Prints the wall time per step, the
summed self time of device kernels per step (on CPU: of aten ops), the number of host-side waits on the device
(cudaStreamSynchronize, cudaDeviceSynchronize, cudaEventSynchronize, device-to-host copies) and of kernel launches
(on CPU: of aten ops called from Python) per step, then the top ops by self device time. A wall time well above the device time with few launches means the
device idles on host syncs; with many launches, on Python and dispatch overhead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mefts_core.measure.bench import build_model, make_batch, timed_steps  # noqa: E402

SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def profile_method(label: str, args, device: torch.device) -> None:
    model, _ = build_model(args.backbone, label, layers=args.layers, seq_len=args.seq_len, device=device)
    batch = make_batch(model.config, args.batch_size, args.seq_len, device=device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    timed_steps(model, batch, opt, 2, device)  # warm-up: optimizer state, allocator, kernels
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        timed_steps(model, batch, opt, args.steps, device)
        wall = (time.perf_counter() - start) / args.steps
    events = prof.key_averages()
    cuda = device.type == "cuda"

    def self_device(e) -> float:
        return (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e3 / args.steps  # ms per step

    device_ms = sum(self_device(e) for e in events if cuda or e.key.startswith("aten::"))
    syncs = sum(e.count for e in events if e.key.startswith(SYNCS)) / args.steps
    if cuda:
        ops = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    else:  # aten ops called from Python, not those an op calls inside itself
        ops = sum(1 for e in prof.events() if e.name.startswith("aten::")
                  and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))
    print(f"\n## {label}: wall {wall * 1e3:.1f} ms/step, {'kernel' if cuda else 'aten op'} self time "
          f"{device_ms:.1f} ms/step, {syncs:.0f} host syncs/step, {ops / args.steps:.0f} "
          f"{'kernel launches' if cuda else 'top-level aten ops'}/step")
    rows = sorted(events, key=self_device, reverse=True)[: args.top]
    print("| op | calls/step | self ms/step |\n|---|---|---|")
    for e in rows:
        print(f"| {e.key[:90]} | {e.count / args.steps:.0f} | {self_device(e):.2f} |")
    sync_rows = [e for e in events if e.key.startswith(SYNCS)]
    if sync_rows:
        print("host waits: " + ", ".join(f"{e.key} x{e.count / args.steps:.0f}" for e in sync_rows))
    del model, opt, batch
    if cuda:
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", required=True)
    p.add_argument("--backbone", default="bert-base")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for label in (m.strip() for m in args.methods.split(",") if m.strip()):
        profile_method(label, args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
