"""mefts_core: the reversible MEFT engine, the baselines, tasks, training and honest memory measurement.

The stable public API: apply_method, vanilla_backward, measure_step (MemoryReport), gradient_fidelity,
load_backbone (BACKBONES), method_options (METHODS), load_finetuned (a saved fine-tuned model).
"""

from mefts_core.backbones import BACKBONES, load_backbone
from mefts_core.measure.diagnostics import gradient_fidelity, vanilla_backward
from mefts_core.measure.memory import MemoryReport, measure_step
from mefts_core.methods import METHODS, apply_method, method_options
from mefts_core.training.artifacts import load_finetuned

__all__ = [
    "BACKBONES",
    "METHODS",
    "MemoryReport",
    "apply_method",
    "gradient_fidelity",
    "load_backbone",
    "load_finetuned",
    "measure_step",
    "method_options",
    "vanilla_backward",
]
