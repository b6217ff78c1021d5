"""What every format shares: axis orders, array checks, variable choice, stored spacings and units."""
from __future__ import annotations

import logging

import numpy as np

from .._checks import as_spacing, is_real_dtype

log = logging.getLogger("restore3d.io")

SPACING_VAR = "spacing"
AXES_VAR = "axes"


def parse_axes(axes: str | None) -> str:
    """Validate an axis order: a permutation of ``"zyx"`` (any case); None means ``"zyx"``."""
    if axes is None:
        return "zyx"
    if not isinstance(axes, str) or sorted(axes.lower()) != ["x", "y", "z"]:
        raise ValueError(
            f"axes must be a permutation of 'zyx' naming the file's axis order, got {axes!r} "
            "(e.g. axes='yxz' for depth-last MATLAB stacks)")
    return axes.lower()


def to_zyx(arr: np.ndarray, axes: str) -> np.ndarray:
    return np.transpose(arr, [axes.index(a) for a in "zyx"])


def from_zyx(arr: np.ndarray, axes: str) -> np.ndarray:
    return np.transpose(arr, ["zyx".index(a) for a in axes])


def check_array(arr, path, what="data"):
    arr = np.asarray(arr)
    if not is_real_dtype(arr.dtype):
        raise ValueError(
            f"{path}: {what} has dtype {arr.dtype}, not real numbers; "
            "save the volume as integers or floats")
    if arr.ndim != 3:
        hint = ("a single plane; restore3d needs a 3D stack" if arr.ndim == 2 else
                "select one channel / time point and save a 3D (z, y, x) stack")
        raise ValueError(f"{path}: {what} is {arr.ndim}D with shape {arr.shape}, expected 3D: {hint}")
    if arr.size == 0:
        raise ValueError(f"{path}: {what} is empty (shape {arr.shape})")
    return arr


def pick_variable(candidates: dict, path, variable, kind):
    """Choose the volume among named arrays of a .mat / .npz file."""
    if variable is not None:
        if variable not in candidates:
            raise ValueError(
                f"{path}: no variable {variable!r}; the file holds {sorted(candidates) or 'nothing'}")
        return variable
    names = [k for k, v in candidates.items()
             if k not in (SPACING_VAR, AXES_VAR) and getattr(v, "ndim", 0) >= 1]
    three_d = [k for k in names if candidates[k].ndim == 3]
    if len(three_d) == 1:
        return three_d[0]
    if len(three_d) > 1:
        raise ValueError(
            f"{path}: several 3D arrays {sorted(three_d)}; pick one with variable=NAME "
            f"(--variable NAME on the command line)")
    if len(names) == 1:
        return names[0]  # the only array: check_array explains its wrong ndim
    shapes = {k: getattr(candidates[k], "shape", None) for k in names}
    raise ValueError(f"{path}: no 3D array in this {kind} file (found {shapes or 'no arrays'}); "
                     "save the stack as one 3D variable")


#: Length units found in file metadata, in micrometres. Anything else ("pixel", "inch", blank) is no spacing.
UNITS_UM = {"nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "um": 1.0, "µm": 1.0, "μm": 1.0,
            "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0, "mm": 1e3, "millimeter": 1e3,
            "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6}


def unit_to_um(unit) -> float | None:
    """Micrometres per ``unit`` (a length unit name as files write it), or None when not a known length."""
    if unit is None:
        return None
    key = str(unit).strip().lower().replace("\\u00b5", "µ").replace("\\u03bc", "μ")
    return UNITS_UM.get(key)


def spacing_from_meta(spacing, axes_saved, path):
    """Spacing stored next to the data, reordered to (z, y, x), or None (with a warning) when unusable."""
    if spacing is None:
        return None
    try:
        values = np.asarray(spacing, dtype=float).ravel()
    except (TypeError, ValueError):
        log.warning("%s: ignoring the stored spacing %r (not numbers); pass --spacing DZ DY DX", path, spacing)
        return None
    if values.size != 3:
        log.warning("%s: ignoring stored spacing %s (expected 3 values)", path, values)
        return None
    order = parse_axes(axes_saved) if axes_saved else "zyx"
    try:
        return as_spacing(tuple(values[order.index(a)] for a in "zyx"))
    except ValueError as exc:
        log.warning("%s: ignoring the stored spacing %s (%s); pass --spacing DZ DY DX", path, values.tolist(), exc)
        return None
