"""File to file: load a volume with its spacing, restore it, save it beside the way it came.

The one path from a file to a restored file, shared by the command line and
the batch runner: the spacing stored in the file unless one is given (and a
clear error when neither exists), a ``.mat`` output that keeps its input's
axis order and variable name, and the atomic save of :func:`restore3d.io.save`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import io

__all__ = ["load_input", "save_output", "restore_file", "cli_memory_budget", "NO_SPACING"]

log = logging.getLogger(__name__)

#: What to do when a file has no voxel size.
NO_SPACING = ("the file does not record the voxel size; pass --spacing DZ DY DX "
              "(micrometres, e.g. --spacing 0.3 0.1 0.1) or spacing=(dz, dy, dx)")


def load_input(path, *, axes=None, variable=None, spacing=None) -> io.LoadedVolume:
    """Load a volume to restore; ``spacing`` (um) replaces the file's; ``ValueError`` when none is known."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    loaded = io.load_file(path, axes=axes, variable=variable)
    if spacing is not None:
        loaded.spacing = tuple(float(s) for s in spacing)
    if loaded.spacing is None:
        raise ValueError(f"{path}: {NO_SPACING}")
    if not np.isfinite(loaded.volume).all():
        raise ValueError(f"{path}: the volume contains NaN or Inf values; replace them before restoring")
    return loaded


def save_output(path, volume, loaded: io.LoadedVolume, source=None, *, axes=None, variable=None) -> Path:
    """Save a restored volume with the input's spacing; a ``.mat`` from a ``.mat`` keeps its axes and variable."""
    same_kind = (source is not None and io.format_of(path) == "mat" and io.format_of(source) == "mat")
    if axes is None and same_kind:
        axes = loaded.axes
    if variable is None and same_kind:
        variable = loaded.variable
    if io.format_of(path) in ("tiff", "zarr"):
        axes = None
    return io.save(path, volume, spacing=loaded.spacing, axes=axes, variable=variable or "volume")


def cli_memory_budget(value):
    """The value of ``--memory-budget`` for :meth:`Pipeline.run`: unset -> "auto", 0 -> None (never chunk), else GB."""
    if value is None:
        return "auto"
    return None if value == 0 else float(value)


def restore_file(in_path, out_path, pipeline, *, axes=None, variable=None, spacing=None, psf=None,
                 device=None, seed=0, progress=False, out_axes=None, out_variable=None, memory_budget="auto"):
    """Load ``in_path``, run ``pipeline`` on it, save to ``out_path``; returns ``(loaded, result)``.

    A PSF larger than the volume is cropped around its centre first;
    ``memory_budget`` (GB, "auto" or None) as in :meth:`Pipeline.run
    <restore3d.pipeline.Pipeline.run>`.
    """
    loaded = load_input(in_path, axes=axes, variable=variable, spacing=spacing)
    if psf is not None and np.any(np.asarray(np.shape(psf)) > np.asarray(loaded.volume.shape)):
        from .psf import crop_psf
        log.info("cropping the PSF %s to the volume %s", np.shape(psf), loaded.volume.shape)
        psf = crop_psf(psf, loaded.volume.shape)
    t0 = time.perf_counter()
    result = pipeline.run(loaded.volume, spacing=loaded.spacing, psf=psf, device=device, seed=seed,
                          progress=progress, memory_budget=memory_budget)
    save_output(out_path, np.asarray(result), loaded, in_path, axes=out_axes, variable=out_variable)
    log.info("%s -> %s in %.1f s (%s)", in_path, out_path, time.perf_counter() - t0,
             ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items() if k != "total"))
    return loaded, result
