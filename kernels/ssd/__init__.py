"""Mamba2's SSD layer: the chunked scan for prefill and the in-place single-step state update for decode.

Triton on CUDA (or force_triton=True), the plain torch reference elsewhere; reference.py is the spec.
"""

from kernels.ssd.chunk_scan import ssd_chunk_scan
from kernels.ssd.state_step import ssd_state_step

__all__ = ["ssd_chunk_scan", "ssd_state_step"]
