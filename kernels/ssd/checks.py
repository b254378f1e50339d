"""Argument checks shared by the scan and the step: one-line ValueErrors naming what was expected and what arrived.

They run on every decode step, so messages are formatted only when a check fails.
"""

import torch
import triton


def expect_shapes(op: str, expected: dict[str, tuple[torch.Tensor | None, tuple[int, ...]]]) -> None:
    """expected: name -> (tensor or None, shape). None tensors are optional inputs left out."""
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tensor.shape != shape:
            raise ValueError(f"{op}: {name} must have shape {list(shape)}, got {list(tensor.shape)}")


def expect_common(op: str, tensors: list[torch.Tensor | None], dt_limit: tuple[float, float]) -> None:
    """One device, floating-point dtypes, a sane dt_limit."""
    present = [t for t in tensors if t is not None]
    device = present[0].device
    if any(t.device != device for t in present):
        raise ValueError(f"{op}: all tensors must be on one device, got {sorted({str(t.device) for t in present})}")
    for t in present:
        if not t.is_floating_point():
            raise ValueError(f"{op}: tensors must be floating point, got {t.dtype}")
    if len(dt_limit) != 2 or not dt_limit[0] <= dt_limit[1]:
        raise ValueError(f"{op}: dt_limit must be (min, max) with min <= max, got {tuple(dt_limit)}")


def expect_triton_can_run(op: str, x: torch.Tensor, kernel) -> None:
    """Triton runs CUDA tensors, or CPU tensors only in its interpreter (TRITON_INTERPRET=1 before triton loads)."""
    if not x.is_cuda and isinstance(kernel, triton.runtime.JITFunction):
        raise ValueError(f"{op}: force_triton with {x.device} tensors needs CUDA tensors or TRITON_INTERPRET=1 set "
                         "before triton is imported")
