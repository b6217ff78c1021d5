"""Fused element-wise steps of the Richardson-Lucy loop on CPU tensors.

Eager PyTorch makes one pass over the padded grid per operation: the Biggs
iteration's update alone (multiply by the weights, by the estimate, subtract,
both dot products in one matrix-vector product) is four passes over 16 MB
arrays. The optional C extension
``restore3d._kernels`` (restore3d/_kernels.c, built by setup.py) does each
step in one pass, on PyTorch's OpenMP thread pool with the PyTorch thread
count. Every function here has the same result, to float32
rounding, as the PyTorch expression in its docstring; callers fall back to that
expression where :func:`available` is False (no compiler at install, a CUDA
tensor, or ``RESTORE3D_NO_KERNELS=1`` in the environment).
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os

import numpy as np
import torch

log = logging.getLogger(__name__)

_LIB = None
_LOADED = False
# the signature version of restore3d/_kernels.c this module calls (r3d_abi)
_ABI = 5


def kernels_available() -> bool:
    """Whether the compiled kernels are built and enabled."""
    return _load() is not None


@contextlib.contextmanager
def kernels(enabled: bool):
    """Run the block with the compiled kernels on (when built) or off (PyTorch operations)."""
    global _LIB
    lib = _load()
    before = _LIB
    _LIB = lib if enabled else None
    try:
        yield
    finally:
        _LIB = before


def _load():
    global _LIB, _LOADED
    if _LOADED:
        return _LIB
    _LOADED = True
    if os.environ.get("RESTORE3D_NO_KERNELS", "") not in ("", "0"):
        log.debug("fused kernels disabled by RESTORE3D_NO_KERNELS")
        return None
    try:
        from restore3d import _kernels
        lib = ctypes.CDLL(_kernels.__file__)
        lib.r3d_abi.restype = ctypes.c_int
        if lib.r3d_abi() != _ABI:
            raise OSError(f"built from other sources (signature version {lib.r3d_abi()}, expected {_ABI}): "
                          "reinstall restore3d")
    except (ImportError, OSError, AttributeError) as exc:  # no compiler at install: PyTorch operations
        log.debug("fused kernels unavailable (%s): using PyTorch operations", exc)
        return None
    p, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    lib.r3d_ratio.argtypes = [p, i64, i64, i64, p, p, f32, f32, p, i64, i64, i64, i64, i64, i64, i32]
    lib.r3d_update.argtypes = [p, p, i64, i64, p, p, p, i64, i64, p, i64, i64, i64, i32]
    lib.r3d_update_biggs.argtypes = [p, p, i64, i64, p, p, p, i64, i64, p, p, i64, i64, i64, p, i32]
    lib.r3d_extrapolate.argtypes = [p, p, f32, p, i64, i32]
    lib.r3d_mul_conj.argtypes = [p, p, i64, i32]
    for name in ("r3d_ratio", "r3d_update", "r3d_update_biggs", "r3d_extrapolate", "r3d_mul_conj"):
        getattr(lib, name).restype = None
    lib.r3d_parallel.restype = ctypes.c_int
    if not lib.r3d_parallel():
        log.debug("fused kernels built without OpenMP: single-threaded")
    _LIB = lib
    return lib


def available(*tensors) -> bool:
    """True when the kernels are built and every tensor is float32 on the CPU."""
    return _load() is not None and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _ptr(t):
    if not t.is_contiguous():
        raise ValueError("fused kernels need contiguous tensors")
    return t.data_ptr()


def ratio(y: torch.Tensor, mu: torch.Tensor, b, eps: float, out: torch.Tensor) -> None:
    """``out = y / clamp(mu + b, min=eps)`` on 3D tensors of one shape.

    ``y`` (and ``b`` when it is a tensor) contiguous; ``mu`` and ``out`` may be
    strided views (the pruned forward projection, the data window of the ratio
    grid). ``b`` is a tensor of ``y``'s shape or a float.
    """
    if mu.shape != y.shape or out.shape != y.shape or y.dim() != 3:
        raise ValueError(f"need three 3D tensors of one shape: y {tuple(y.shape)}, mu {tuple(mu.shape)}, "
                         f"out {tuple(out.shape)}")
    bt = b if isinstance(b, torch.Tensor) else None
    if bt is not None and bt.shape != y.shape:
        raise ValueError(f"background shape {tuple(bt.shape)} differs from y {tuple(y.shape)}")
    _LIB.r3d_ratio(mu.data_ptr(), *mu.stride(), _ptr(y), None if bt is None else _ptr(bt),
                   0.0 if bt is not None else float(b), float(eps), out.data_ptr(), *out.stride(),
                   *y.shape, torch.get_num_threads())


def _weights(back, weights, *others):
    """The arguments that pass the table of ``weights`` (a :class:`BorderWeights`) to a kernel."""
    if back.dim() != 3 or tuple(len(i) for i in weights.index) != tuple(back.shape):
        raise ValueError(f"weights index a {tuple(len(i) for i in weights.index)} grid, not the "
                         f"{tuple(back.shape)} buffer")
    _same(back, *others)
    tab = weights.table
    return (_ptr(tab), tab.shape[1], tab.shape[2], *(_ptr(i) for i in weights.index), *weights.run)


def update(back: torch.Tensor, weights, est: torch.Tensor) -> None:
    """``back *= w * est`` (the RL update), in place; ``w = weights.grid()`` (:class:`BorderWeights`)."""
    args = _weights(back, weights, est)
    _LIB.r3d_update(_ptr(back), *args, _ptr(est), *back.shape, torch.get_num_threads())


def update_biggs(back: torch.Tensor, weights, est: torch.Tensor, g: torch.Tensor) -> tuple[float, float]:
    """``back *= w * est`` (``w = weights.grid()``); the difference ``back - est`` replaces the previous one in ``g``.

    Returns ``(<g_new, g_new>, <g_new, g_previous>)`` (float64 sums), the two
    correlations of the Biggs-Andrews weight.
    """
    args = _weights(back, weights, est, g)
    dots = np.zeros(2, np.float64)
    _LIB.r3d_update_biggs(_ptr(back), *args, _ptr(est), _ptr(g), *back.shape, dots.ctypes.data,
                          torch.get_num_threads())
    return float(dots[0]), float(dots[1])


def extrapolate(x: torch.Tensor, x_prev: torch.Tensor, alpha: float, out: torch.Tensor) -> None:
    """``out = clamp(x + alpha (x - x_prev), min=0)`` (Biggs-Andrews)."""
    _same(x, x_prev, out)
    _LIB.r3d_extrapolate(_ptr(x), _ptr(x_prev), float(alpha), _ptr(out), x.numel(), torch.get_num_threads())


def mul_conj(a: torch.Tensor, b: torch.Tensor) -> None:
    """``a *= conj(b)`` on complex64 CPU tensors of one size, in place.

    Without the kernels: ``a.conj_physical_().mul_(b).conj_physical_()``
    (the same values; two more passes, but no conjugate copy of ``b``).
    """
    _same(a, b)
    lib = _load()
    if lib is None or not all(t.device.type == "cpu" and t.dtype == torch.complex64 for t in (a, b)):
        a.conj_physical_().mul_(b).conj_physical_()
        return
    lib.r3d_mul_conj(_ptr(a), _ptr(b), a.numel(), torch.get_num_threads())


def _same(*tensors):
    n = tensors[0].numel()
    if any(t.numel() != n for t in tensors):
        raise ValueError(f"tensors differ in size: {[t.numel() for t in tensors]}")
