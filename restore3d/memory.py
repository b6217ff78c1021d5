"""The memory budget of a run: how much working memory :meth:`Pipeline.run <restore3d.pipeline.Pipeline.run>` may use.

Each stage estimates its own (:meth:`restore3d.base.Stage.memory_bytes`);
a run whose estimate exceeds the budget goes chunk-wise
(:func:`restore3d.chunked.run_within_budget`).
"""
from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_MEMORY_BUDGET_GB", "default_memory_budget", "budget_bytes", "release_free_memory"]

#: The memory budget's ceiling (GB of working memory) when ``memory_budget="auto"``.
DEFAULT_MEMORY_BUDGET_GB = 3.0


def default_memory_budget() -> float:
    """The "auto" budget in GB: :data:`DEFAULT_MEMORY_BUDGET_GB`, at most a third of the machine's memory."""
    import os
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (AttributeError, OSError, ValueError):  # not POSIX: the ceiling alone
        return DEFAULT_MEMORY_BUDGET_GB
    return float(min(DEFAULT_MEMORY_BUDGET_GB, total / 3.0)) if total > 0 else DEFAULT_MEMORY_BUDGET_GB


def budget_bytes(memory_budget) -> float | None:
    """``memory_budget`` (GB, "auto" or None) in bytes, or None; ``ValueError`` for anything else."""
    if memory_budget is None:
        return None
    if isinstance(memory_budget, str):
        if memory_budget != "auto":
            raise ValueError(f"memory_budget must be a number of GB, 'auto' or None, got {memory_budget!r}")
        return default_memory_budget() * 1e9
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float, np.integer, np.floating)) \
            or not np.isfinite(memory_budget) or memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of GB, 'auto' or None, got {memory_budget!r}")
    return float(memory_budget) * 1e9


_TRIM = []


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``); False where there is none.

    A stage's freed slabs and small arrays stay in the C heap as free
    memory, which the next stage reuses only in part: at 512^2 it was 1-2x
    the volume at each stage's start (benchmarks/RESULTS.md, section 5).
    :meth:`Pipeline.run <restore3d.pipeline.Pipeline.run>` calls this after
    each stage (a few milliseconds); the memory is not in use, so nothing
    else changes. dask.distributed trims its workers' heaps the same way.
    """
    if not _TRIM:
        trim = None
        import sys
        if sys.platform.startswith("linux"):
            import ctypes
            try:
                trim = ctypes.CDLL("libc.so.6").malloc_trim
                trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
            except (OSError, AttributeError):  # musl and others: no malloc_trim
                trim = None
        _TRIM.append(trim)
    trim = _TRIM[0]
    if trim is None:
        return False
    trim(0)
    return True
