"""Per-family pieces of the transformer layers, and the family registry (the built-ins register on import)."""

from mefts_core.engine.models import bart, bert, decoders  # noqa: F401  (registers the built-in families)
from mefts_core.engine.models.registry import (
    Family,
    family_for_type,
    family_named,
    family_of,
    register_family,
    unregister_family,
)

__all__ = ["Family", "family_for_type", "family_named", "family_of", "register_family", "unregister_family"]
