"""napari plugin: open bead stacks with their voxel size, restore them, look at the result.

Install with ``pip install "restore3d[napari]"``; napari then lists
*restore3d* under Plugins (the restore widget) and opens ``.mat``, TIFF,
``.npy``, ``.npz`` and OME-Zarr volumes with ``scale`` = the voxel size in
micrometres. The widget's work is done by :mod:`restore3d.napari.logic`
(plain functions, usable and tested without a viewer).
"""
