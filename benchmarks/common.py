"""Shared helpers of the benchmark scripts (not part of the package)."""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import numpy as np


#: The real data of the project (``../shared/data`` beside the repository), wherever the script runs from.
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def machine() -> str:
    import torch
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"python {sys.version.split()[0]}, torch {torch.__version__}, numpy {np.__version__}")


def timed(func, *args, repeat=3, **kwargs):
    """Best wall time over ``repeat`` calls, and the last result."""
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = func(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return best, out


def fmt(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float) and not np.isfinite(v):
        return "nan"
    return f"{v:.{nd}f}"


def table(rows, columns):
    """Markdown table from a list of dicts."""
    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(c)) if not isinstance(r.get(c), str) else r.get(c)
                              for c in columns) + " |" for r in rows]
    return "\n".join([head, sep] + body)


METRIC_COLUMNS = ["elongation", "background_residual", "nrmse", "nrmse_si", "ssim_si", "ap", "f1",
                  "rmse_lateral_um", "rmse_axial_um"]


def add_range_option(parser):
    """The ``--range NAME=LO,HI`` option read by :func:`simulation_ranges`."""
    parser.add_argument("--range", action="append", default=[], metavar="NAME=LO,HI",
                        help="override a training simulation range (repeatable), e.g. --range depth=0,20")


def simulation_ranges(specs):
    """``SimulationRanges`` with fields overridden by ``NAME=LO,HI`` (or ``NAME=VALUE``) strings."""
    import dataclasses

    from restore3d.refiner.training.data import SimulationRanges
    names = {f.name for f in dataclasses.fields(SimulationRanges)} - {"psf", "shape"}
    kw = {}
    for spec in specs or []:
        name, _, value = spec.partition("=")
        if name not in names or not value:
            raise SystemExit(f"--range expects NAME=LO,HI with NAME one of {sorted(names)}, got {spec!r}")
        vals = tuple(float(v) for v in value.split(","))
        kw[name] = vals[0] if len(vals) == 1 else vals
    return SimulationRanges(**kw)
