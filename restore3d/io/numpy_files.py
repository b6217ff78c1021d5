"""NumPy files: .npy (the array alone) and .npz (the volume with its spacing and axis order)."""
from __future__ import annotations

import numpy as np

from ._common import AXES_VAR, SPACING_VAR, check_array, log, pick_variable, spacing_from_meta


def read_npy(path, variable):
    """``(data, None, None, None)``: a .npy holds no spacing."""
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types on broken files
        raise ValueError(f"{path}: not a readable .npy file ({exc})") from exc
    return check_array(data, path), None, None, None


def write_npy(path, arr, *, spacing, axes, variable):
    if spacing is not None:
        log.info("%s: .npy cannot hold the spacing; use .npz or .tif to keep it", path)
    with open(path, "wb") as fh:
        np.save(fh, arr)


def read_npz(path, variable):
    """``(data, spacing, stored_axes, name)`` of a .npz written by restore3d (or any with one 3D array)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            contents = {k: npz[k] for k in npz.files}
    except Exception as exc:  # numpy raises several types on broken files
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
    name = pick_variable(contents, path, variable, "NumPy .npz")
    data = check_array(contents[name], path, f"array {name!r}")
    stored = str(contents[AXES_VAR]) if AXES_VAR in contents else None
    return data, spacing_from_meta(contents.get(SPACING_VAR), stored, path), stored, name


def write_npz(path, arr, *, spacing, axes, variable):
    extra = {}
    if spacing is not None:
        extra = {SPACING_VAR: np.asarray(spacing), AXES_VAR: np.asarray(axes)}
    elif axes != "zyx":
        extra = {AXES_VAR: np.asarray(axes)}
    with open(path, "wb") as fh:
        np.savez(fh, **{variable: arr}, **extra)
