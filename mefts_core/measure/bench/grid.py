"""The bench's grid: method labels (`parse_method`), one grid point (`BenchCase`), the grid and how each point is
measured (`BenchGrid`), and the presets `mefts bench --preset` starts from.

Method labels are those of every run table (`mefts_core.methods.labels`): "lora+gc" (gradient checkpointing),
"+ff" (Hugging Face's FFN chunking, 128 tokens), "+offload" (activations saved to CPU memory); for MEFT "-float" (the
paper's arithmetic), "-ckK" (float with an exact checkpoint every K layers), "-sublayer", "-nochunk"; other options in
parentheses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mefts_core.errors import ConfigError, is_int, require
from mefts_core.methods import MEFT_METHODS, parse_label

STANDARD_METHODS = ["full", "full+gc", "lora", "lora+gc", "adapter", "bitfit", "prefix", "ia3", "lst", "meft1-float",
                    "meft1-exact",
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


def parse_method(label: str) -> tuple[str, dict[str, Any]]:
    """A bench label -> (method, options) for apply_method: `mefts_core.methods.parse_label`, the grammar of every
    method label ("lora+gc+ff", "meft1-float", "meft1-nochunk-sublayer", "adapter(placement=houlsby)"), and one bench
    policy: MEFT's float modes ("-float", "-ckK") run without an error budget unless the label sets one, so that
    random weights, whose float inversion drifts, can be measured.

    Raises ConfigError (a ValueError) naming the label when it is not a method label.
    """
    method, options = parse_label(label)
    if method in MEFT_METHODS and options.get("recompute", "exact") != "exact":
        options.setdefault("error_budget", None)
    return method, options


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
            values = getattr(self, name)
            require(all(is_int(v) and v >= 1 for v in values), name, values, "every value must be an integer >= 1")
        require(all(v is None or (is_int(v) and v >= 1) for v in self.layers), "layers", self.layers,
                "every value must be an integer >= 1 or None")
        require(self.dtype in DTYPES, "dtype", self.dtype, f"must be one of {', '.join(DTYPES)}")
        require(self.warmup >= 0, "warmup", self.warmup, "must be >= 0")
        require(self.repeats >= 0, "repeats", self.repeats, "must be >= 0")
        for m in self.methods:
            parse_method(m)
        self.torch_device()  # validates the device

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        if dev.type not in ("cpu", "cuda"):
            raise ConfigError("device", self.device, "must be auto, cpu, cuda or cuda:N")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device", self.device, "CUDA is not available here")
        return dev

    def cases(self) -> list[BenchCase]:
        return [BenchCase(b, m, n, t, bs) for b in self.backbones for m in self.methods for n in self.layers
                for t in self.seq_lens for bs in self.batch_sizes]


def grid_from_preset(preset: str | None, **overrides: Any) -> BenchGrid:
    """A preset's grid with `overrides` (None values ignored) applied on top."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError("preset", preset, f"must be one of {', '.join(PRESETS)}")
    values = dict(PRESETS.get(preset, {})) if preset else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return BenchGrid(**values)
