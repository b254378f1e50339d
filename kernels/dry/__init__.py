"""DRY ("don't repeat yourself") penalties over the whole history, from per-position match lengths updated per token.

Triton on CUDA (or DryState.from_history(..., force_triton=True)), torch elsewhere; reference.py is the spec.
"""

from kernels.dry.dry import DryState, apply_dry
from kernels.dry.reference import (
    apply_dry_reference,
    default_max_exponent,
    dry_match_lengths_reference,
    dry_penalties_reference,
)

__all__ = [
    "DryState",
    "apply_dry",
    "apply_dry_reference",
    "default_max_exponent",
    "dry_match_lengths_reference",
    "dry_penalties_reference",
]
