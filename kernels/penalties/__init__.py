"""Repetition penalties (presence, frequency, multiplicative) from token counts kept on the device.

Triton on CUDA (or force_triton=True), torch elsewhere; reference.py is the spec.
"""

from kernels.penalties.penalties import PenaltyState, apply_penalties
from kernels.penalties.reference import apply_penalties_reference, token_counts_reference

__all__ = ["PenaltyState", "apply_penalties", "apply_penalties_reference", "token_counts_reference"]
