"""The reversible engine: couplings, the reversible stack and its backward, adapters, per-family pieces."""
