"""napari reader and writer hooks over :mod:`restore3d.io` (npe2 contributions in ``napari.yaml``)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .logic import one_line, volume_layers

__all__ = ["get_reader", "write_image"]

log = logging.getLogger(__name__)

_SUFFIXES = (".mat", ".tif", ".tiff", ".npy", ".npz", ".zarr")


def get_reader(path):
    """The reader for one path restore3d can read, or None (napari then asks other plugins)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if Path(str(path).rstrip("/")).suffix.lower() not in _SUFFIXES:
        return None
    return read


def read(path):
    """Layer data of one file; a file restore3d cannot read shows its one-line reason (and gives None)."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    warnings = _Collect()
    logging.getLogger("restore3d").addHandler(warnings)
    try:
        layers = volume_layers(path)
    except ValueError as exc:
        _notify("error", one_line(exc))
        return None
    finally:
        logging.getLogger("restore3d").removeHandler(warnings)
    for message in warnings.messages:
        _notify("warning", message)
    if layers[0][1]["metadata"]["restore3d_spacing"] is None:
        _notify("warning", f"{Path(path).name}: no voxel size stored; opened with scale 1 - give the "
                           "spacing (um) in the restore widget")
    return layers


def write_image(path, data, attributes) -> list[str]:
    """Write one image layer; its ``scale`` (last three entries) is saved as the voxel size in um."""
    from .. import io
    scale = attributes.get("scale")
    spacing = tuple(float(s) for s in np.ravel(scale)[-3:]) if scale is not None else None
    known = (attributes.get("metadata") or {}).get("restore3d_spacing", spacing)
    out = io.save(path, np.asarray(data), spacing=spacing if known is not None else None)
    return [str(out)]


class _Collect(logging.Handler):
    """Keeps the warnings restore3d logs while reading (shown as notifications)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _notify(kind, message):
    try:
        from napari.utils.notifications import show_error, show_warning
    except ImportError:  # used without napari (tests of the plain functions)
        log.warning("%s", message)
        return
    (show_error if kind == "error" else show_warning)(message)
