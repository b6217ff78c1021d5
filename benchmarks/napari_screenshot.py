"""The README's napari screenshot: a raw bead stack and its restored layer side by side, seen from the side.

Usage (needs a display for OpenGL; on a headless machine under Xvfb)::

    pip install -e ".[napari]"
    xvfb-run -a python benchmarks/napari_screenshot.py --out benchmarks/napari.png

Opens ``../shared/data/leica-beads`` (or ``--input``) with the plugin's
reader, restores it with the plugin's widget (the default pipeline), and
shows both layers in napari's grid mode as x-z slices through a bead, with
``scale`` = the voxel size, so depth is drawn to scale.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import DATA


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", default=str(DATA / "leica-beads" / "beads.tif"))
    ap.add_argument("--crop", type=int, default=256, help="central lateral crop (voxels; 0 = whole)")
    ap.add_argument("--out", default="benchmarks/napari.png")
    args = ap.parse_args()
    import napari
    from qtpy.QtWidgets import QApplication

    from restore3d.napari._io import get_reader
    from restore3d.napari._widget import RestoreWidget

    viewer = napari.Viewer(title="restore3d", show=True)
    viewer.window.resize(1600, 800)
    (data, attrs, _), = get_reader(args.input)(args.input)
    if args.crop:
        y0 = max(0, (data.shape[1] - args.crop) // 2)
        x0 = max(0, (data.shape[2] - args.crop) // 2)
        data = data[:, y0:y0 + args.crop, x0:x0 + args.crop]
    layer = viewer.add_image(data, **{**attrs, "name": "raw", "colormap": "magma"})
    widget = RestoreWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="restore3d", area="right")
    dock.setMaximumWidth(520)
    widget.image.value = "raw"
    widget.start()
    app = QApplication.instance()
    start = time.monotonic()
    while widget.worker is not None and time.monotonic() - start < 900:
        app.processEvents()
        time.sleep(0.02)
    app.processEvents()
    print(widget.status.value)
    for other in list(viewer.layers):
        if other.name.endswith(")") and "PSF" in other.name:
            viewer.layers.remove(other)  # the side view shows the two volumes only
    restored = [other for other in viewer.layers if other is not layer][0]
    restored.contrast_limits = (0, float(np.percentile(restored.data, 99.99)))
    layer.contrast_limits = (float(np.percentile(data, 50)), float(np.percentile(data, 99.99)))
    # an x-z slice through the brightest bead: rows are depth, drawn at the voxel size
    z, y, x = np.unravel_index(int(np.argmax(restored.data)), restored.data.shape)
    viewer.dims.order = (1, 0, 2)
    viewer.dims.set_point(1, y * layer.scale[1])
    viewer.grid.enabled = True
    viewer.grid.shape = (1, 2)
    viewer.grid.stride = 1
    viewer.reset_view()
    viewer.camera.zoom *= 1.3
    from napari.utils.notifications import notification_manager
    notification_manager.records.clear()
    app.processEvents()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(args.out, canvas_only=False)
    print(f"wrote {args.out}")
    viewer.close()


if __name__ == "__main__":
    main()
