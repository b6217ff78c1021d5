"""Bead tables as CSV: a header row of field names, one row per bead."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._files import atomic_write


def write_table(path, table: np.ndarray) -> Path:
    """Write a structured array (a bead table) as CSV with a header row, atomically.

    Number columns that are NaN in every row (what the table's producer
    does not measure) are left out.
    """
    path = Path(path)
    if not table.dtype.names:
        raise ValueError("table must be a structured array with named columns")
    names = [n for n in table.dtype.names
             if not (table.dtype[n].kind == "f" and len(table) and np.isnan(table[n]).all())]
    table = table[names]
    with atomic_write(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(",".join(names) + "\n")
            for row in table:
                fh.write(",".join(str(int(v)) if isinstance(v, (bool, np.bool_)) else f"{v:.6g}"
                                  for v in row) + "\n")
    return path


def read_table(path) -> np.ndarray:
    """Read a CSV written by :func:`write_table` back into a structured array."""
    data = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
    return np.atleast_1d(data)
