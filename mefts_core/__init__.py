"""mefts_core: the reversible MEFT engine, the baselines, tasks, training and honest memory measurement."""

from mefts_core.backbones import BACKBONES, load_backbone
from mefts_core.config import METHODS, method_options

__all__ = ["BACKBONES", "METHODS", "load_backbone", "method_options"]
