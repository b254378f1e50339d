"""Longhand's kernels as transformers 5's Mamba2-family fast path, with no mamba-ssm or causal-conv1d install.

Mamba2, Bamba, GraniteMoeHybrid, Zamba2, FalconH1 and NemotronH each decorate their conv, scan and step functions
with `transformers.integrations.hub_kernels.use_kernel_func_from_hub_with_fallback(func_name, package)`, which picks
an implementation once, when the modeling module is imported, in this order: (1) a Hugging Face Hub kernel, through
the `kernels` library; (2) the original package (`causal_conv1d`: causal_conv1d_fn/update; `mamba_ssm`:
selective_state_update, mamba_chunk_scan_combined, mamba_split_conv1d_scan_combined, looked up on the package
itself first); (3) the torch path. It then filters keyword arguments down to the chosen function's signature.

Which extension point and why: `install()` plugs in at (2), the original-package slot. It registers two small
modules under the import names `causal_conv1d` and `mamba_ssm` whose functions keep those packages' signatures and
run `kernels.conv1d` and `kernels.ssd`. Point (1) is the plug-in route transformers advertises, but it needs the
`kernels` library in the narrow range transformers 5.23 pins (>= 0.18.2, < 0.19; the newest on the package index
this project installs from is 0.17.2), takes kernels only as Hub repositories or local folders in the Hub build
layout, and its `KernelConfig` refuses the "cpu" device, so Longhand's CPU tests could never exercise it. Point (2)
needs nothing but an importable name, works on every device, and leaves transformers' own dispatch (keyword
filtering, the torch.export fallback) in charge.
Nothing of transformers is patched when `install()` runs before the model's modeling module is imported (the usual
case: transformers imports modeling modules lazily, at `from_pretrained`). A family modeling module imported
earlier has already bound the torch path; for those `install()` re-applies transformers' own public decorator to
the original torch functions (`__wrapped__`) and rebinds the module-level names, which is what a fresh import would
have produced. `uninstall()` undoes both.

A real mamba-ssm or causal-conv1d, when importable, is left alone and keeps its slot. The modules are registered
process-wide, so other models that look up `causal_conv1d` (Mamba1, Jamba, Qwen3-Next, LFM2, ...) get our conv
too; it follows causal-conv1d's API, so for them it is a drop-in as well. Not provided: `seq_idx` / `cu_seqlens`
(packed sequences: a clear ValueError), and mamba_split_conv1d_scan_combined (training only; the mixers then take
their unfused path, still through our conv and scan, and transformers logs that it fell back). The gated RMSNorm is
an nn.Module in transformers, not one of these functions, so it stays on the torch path (kernels.gated_norm is the
same math, fused, for our native runtime). On CPU our functions run their fp32 torch references;
`install(force_triton=True)` runs the Triton kernels on any device (tests use it under TRITON_INTERPRET=1).
"""

import importlib
import importlib.machinery
import importlib.util
import math
import sys
import types
import warnings

import torch
import torch.nn.functional as F

from kernels.conv1d import causal_conv1d, causal_conv1d_update as conv1d_update
from kernels.ssd import ssd_chunk_scan, ssd_state_step

# The transformers modeling modules of the Mamba2 family; each defines the functions below under these names.
FAMILY_MODULES = (
    "transformers.models.mamba2.modeling_mamba2",
    "transformers.models.bamba.modeling_bamba",
    "transformers.models.granitemoehybrid.modeling_granitemoehybrid",
    "transformers.models.zamba2.modeling_zamba2",
    "transformers.models.falcon_h1.modeling_falcon_h1",
    "transformers.models.nemotron_h.modeling_nemotron_h",
)
# Module-level name in those files -> (name transformers resolves, package it looks in).
FAMILY_FUNCTIONS = {
    "causal_conv1d_fn": ("causal_conv1d_fn", "causal_conv1d"),
    "causal_conv1d_update": ("causal_conv1d_update", "causal_conv1d"),
    "mamba2_selective_state_update": ("selective_state_update", "mamba_ssm"),
    "mamba2_chunk_scan": ("mamba_chunk_scan_combined", "mamba_ssm"),
}

_force_triton = False


def causal_conv1d_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    final_states_out: torch.Tensor | None = None,
    activation: str | bool | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """causal-conv1d's causal_conv1d_fn: x [B, D, L], weight [D, W], initial_states [B, D, W - 1] -> y [B, D, L].

    With return_final_states also the final states [B, D, W - 1] (or final_states_out's width when given).
    """
    if seq_idx is not None:
        raise ValueError("causal_conv1d_fn: packed sequences (seq_idx) are not supported by Longhand's kernels")
    state_len = None
    if return_final_states:
        state_len = final_states_out.shape[-1] if final_states_out is not None else weight.shape[-1] - 1
    return causal_conv1d(
        x, weight, bias, initial_states, _activation(activation), return_final_states, state_len,
        final_state_out=final_states_out if return_final_states else None, force_triton=_force_triton,
    )


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | bool | None = None,
    cache_seqlens: torch.Tensor | None = None,
    conv_state_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """causal-conv1d's causal_conv1d_update: x [B, D] or [B, D, L], conv_state [B, D, S >= W - 1] rolled in place."""
    if cache_seqlens is not None or conv_state_indices is not None:
        raise ValueError(
            "causal_conv1d_update: circular (cache_seqlens) or indexed (conv_state_indices) conv states are not "
            "supported by Longhand's kernels"
        )
    return conv1d_update(x, conv_state, weight, bias, _activation(activation), force_triton=_force_triton)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    state_batch_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """mamba_ssm's selective_state_update: one decode step, state updated in place.

    Mamba2 layout (what the family passes): state [B, H, P, N], x/dt/z [B, H, P], A [H, P, N], B/C [B, G, N],
    D/dt_bias [H, P], with dt, A and dt_bias broadcast along P (and N): that runs kernels.ssd.ssd_state_step.
    Any other layout (Mamba1's per-channel A, say) runs the plain torch recurrence below.
    """
    if state_batch_indices is not None:
        raise ValueError("selective_state_update: state_batch_indices is not supported by Longhand's kernels")
    if (
        x.dim() == 3
        and A.dim() == 3
        and _is_tied(A, (1, 2))
        and _is_tied(dt, (2,))
        and (dt_bias is None or _is_tied(dt_bias, (1,)))
    ):
        return ssd_state_step(
            state, x, dt[..., 0], A[:, 0, 0], B, C, D=D, z=z,
            dt_bias=None if dt_bias is None else dt_bias[:, 0], dt_softplus=dt_softplus, force_triton=_force_triton,
        )
    return _selective_state_update_torch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def mamba_chunk_scan_combined(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    return_final_states: bool = False,
    return_varlen_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """mamba_ssm's mamba_chunk_scan_combined: x [B, L, H, P], dt [B, L, H], A [H], B/C [B, L, G, N] -> y [B, L, H, P].

    With return_final_states also the final state [B, H, P, N] (fp32); runs kernels.ssd.ssd_chunk_scan.
    """
    if seq_idx is not None or cu_seqlens is not None or return_varlen_states:
        raise ValueError(
            "mamba_chunk_scan_combined: packed sequences (seq_idx, cu_seqlens, return_varlen_states) are not "
            "supported by Longhand's kernels"
        )
    return ssd_chunk_scan(
        x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
        dt_limit=tuple(dt_limit), initial_state=initial_states, return_final_state=return_final_states,
        force_triton=_force_triton,
    )


def install(force_triton: bool = False) -> None:
    """Make transformers' Mamba2-family fast path run Longhand's kernels (see the module docstring).

    Call it before loading a model; calling it again (say, to change force_triton) is harmless.
    """
    global _force_triton
    _force_triton = force_triton
    for name, functions in _provided().items():
        current = sys.modules.get(name)
        if current is not None and not _is_ours(current):
            continue
        if current is None and importlib.util.find_spec(name) is not None:
            continue
        sys.modules[name] = _make_module(name, functions)
    _rebind_loaded_family_modules()


def uninstall() -> None:
    """Take our modules out again and put already-imported family modules back on whatever else resolves."""
    global _force_triton
    _force_triton = False
    for name in _provided():
        if _is_ours(sys.modules.get(name)):
            del sys.modules[name]
    _rebind_loaded_family_modules()


def is_installed() -> bool:
    """True while our modules fill the causal_conv1d and mamba_ssm slots."""
    return all(_is_ours(sys.modules.get(name)) for name in _provided())


def _provided() -> dict[str, dict[str, object]]:
    return {
        "causal_conv1d": {"causal_conv1d_fn": causal_conv1d_fn, "causal_conv1d_update": causal_conv1d_update},
        "mamba_ssm": {
            "selective_state_update": selective_state_update,
            "mamba_chunk_scan_combined": mamba_chunk_scan_combined,
        },
    }


def _make_module(name: str, functions: dict[str, object]) -> types.ModuleType:
    module = types.ModuleType(name, f"Longhand's kernels under {name}'s import name (kernels.hf_provider).")
    # A spec, so that importlib.util.find_spec(name) answers instead of raising; no __version__, so that
    # transformers' version-checked availability tests still say the real package is absent.
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, origin="kernels.hf_provider")
    module.__longhand_provider__ = True
    for attribute, function in functions.items():
        setattr(module, attribute, function)
    return module


def _is_ours(module: types.ModuleType | None) -> bool:
    return getattr(module, "__longhand_provider__", False) is True


def _rebind_loaded_family_modules() -> None:
    """Re-run transformers' own decorator over the torch functions of family modules that were imported already."""
    from transformers.integrations import use_kernel_func_from_hub_with_fallback

    for module_name in FAMILY_MODULES:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for attribute, (func_name, package) in FAMILY_FUNCTIONS.items():
            torch_function = getattr(getattr(module, attribute, None), "__wrapped__", None)
            if torch_function is None:
                # Not the decorator's plain wrapper (another transformers version, or the `kernels` library's
                # layer): leave that module on what it resolved rather than break model loading.
                warnings.warn(
                    f"kernels.hf_provider: {module_name}.{attribute} cannot be re-resolved; it keeps its current "
                    "implementation (call install() before transformers imports that module to use Longhand's kernels)",
                    stacklevel=3,
                )
                continue
            setattr(module, attribute, use_kernel_func_from_hub_with_fallback(func_name, package)(torch_function))


def _activation(activation: str | bool | None) -> str | None:
    """causal-conv1d takes "silu"/"swish", None, and (in older releases) True/False."""
    if activation is True:
        return "silu"
    if activation is False:
        return None
    return activation


def _is_tied(tensor: torch.Tensor, dims: tuple[int, ...]) -> bool:
    """True when tensor repeats one value along dims (stride 0, as transformers' expand() gives, or equal values)."""
    if all(tensor.stride(dim) == 0 or tensor.shape[dim] == 1 for dim in dims):
        return True
    first = tensor
    for dim in dims:
        first = first.narrow(dim, 0, 1)
    return torch.equal(tensor, first.expand_as(tensor))


def _selective_state_update_torch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus) -> torch.Tensor:
    """mamba_ssm's selective_state_update_ref in fp32, for layouts the SSD step does not take (Mamba1 and others).

    Without heads: state [B, D, N], x/dt/z [B, D], A [D, N], B/C [B, N], D/dt_bias [D].
    With heads: state [B, H, P, N], x/dt/z [B, H, P], A [H, P, N], B/C [B, G, N], D/dt_bias [H, P].
    """
    has_heads = state.dim() == 4
    if not has_heads:
        state_view = state.unsqueeze(1)
        x, dt, B, C = x.unsqueeze(1), dt.unsqueeze(1), B.unsqueeze(1), C.unsqueeze(1)
        A = A.unsqueeze(0)
        D = None if D is None else D.unsqueeze(0)
        z = None if z is None else z.unsqueeze(1)
        dt_bias = None if dt_bias is None else dt_bias.unsqueeze(0)
    else:
        state_view = state
    heads, groups = x.shape[1], B.shape[1]
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    decay = torch.exp(dt[..., None] * A.float())  # [B, H, P, N]
    B = B.float().repeat_interleave(heads // groups, dim=1)  # [B, H, N]
    C = C.float().repeat_interleave(heads // groups, dim=1)  # [B, H, N]
    new_state = state_view.float() * decay + (dt * x.float())[..., None] * B[:, :, None, :]
    state_view.copy_(new_state.to(state.dtype))
    out = torch.einsum("bhpn,bhn->bhp", new_state, C)
    if D is not None:
        out = out + x.float() * D.float()
    if z is not None:
        out = out * F.silu(z.float())
    out = out.to(x.dtype)
    return out if has_heads else out.squeeze(1)
