"""Mixed precision for the refiner: bfloat16 autocast where the hardware does it fast."""
from __future__ import annotations

import contextlib

__all__ = ["resolve_precision", "autocast", "PRECISIONS"]

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device) -> str:
    """``"fp32"`` or ``"bf16"`` for a device.

    ``"auto"`` picks bfloat16 on CUDA and on CPUs with AMX or AVX512-BF16
    units (about twice as fast for training and three times for inference,
    measured in benchmarks/RESULTS.md), float32 elsewhere (where bfloat16 is
    emulated and slower).
    """
    import torch
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        fast = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    except AttributeError:  # older torch
        fast = False
    return "bf16" if fast else "fp32"


def autocast(precision: str, device):
    """Context manager running the enclosed torch ops in ``precision`` (resolved)."""
    import torch
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if precision == "bf16":
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
