"""Triton kernels for the LM runtime, each beside the plain fp32 torch reference that is its spec.

`kernels/` imports nothing of ours. On CUDA the public functions run Triton; elsewhere they run the reference.
"""
