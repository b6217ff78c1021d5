"""The refiner's working grid: the same beads in voxels whatever the microscope's sampling.

A refiner that renders the target after its object (see
:mod:`restore3d.refiner.transforms`) works on a grid sampled relative to the
target's FWHM: lateral voxels of ``fwhm / samples`` micrometres and planes of
the same size (isotropic), but never more than ``max_zoom`` times finer than
the data along any axis (coarse z steps carry no more detail when
interpolated). A bead then spans the same number of voxels on a 0.1 / 0.044
um confocal stack as on a 0.3 / 0.1 um widefield one, so the network's task
does not change with the sampling, and finely sampled volumes cost far less.

Resampling is linear interpolation (matrices per axis, voxel centres on the
same physical extent); the network's object goes back by the adjoint, which
keeps every bead's light exactly.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

__all__ = ["Grid", "working_grid"]


def _interp_matrix(n_from: int, d_from: float, d_to: float) -> np.ndarray:
    """Linear interpolation from ``n_from`` samples of step ``d_from`` onto centred samples of step ``d_to``."""
    extent = n_from * d_from
    n_to = max(1, int(round(extent / d_to)))
    centres = ((np.arange(n_to) + 0.5) * extent / n_to) / d_from - 0.5  # in source sample units
    centres = np.clip(centres, 0.0, n_from - 1.0)
    lo = np.floor(centres).astype(int)
    hi = np.minimum(lo + 1, n_from - 1)
    t = centres - lo
    m = np.zeros((n_to, n_from), np.float32)
    rows = np.arange(n_to)
    np.add.at(m, (rows, lo), 1.0 - t)
    np.add.at(m, (rows, hi), t)
    return m


def _apply(mats, volume):
    out = np.asarray(volume, np.float32)
    for axis, m in enumerate(mats):
        if m is None:
            continue
        out = np.moveaxis(np.tensordot(m, out, axes=(1, axis)), 0, axis)
    return np.ascontiguousarray(out, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Grid:
    """A working grid for one volume: its spacing and the resampling matrices per axis."""

    spacing: tuple        # (dz, dy, dx) of the working grid, micrometres
    source_spacing: tuple
    shape: tuple          # working grid shape
    source_shape: tuple
    mats: tuple           # per axis: (n_work, n_source) matrix, or None when the axis is unchanged

    @property
    def volume_ratio(self) -> float:
        """Working voxel volume over source voxel volume."""
        return float(np.prod(np.asarray(self.spacing) / np.asarray(self.source_spacing)))

    def to_work(self, volume: np.ndarray) -> np.ndarray:
        """Interpolate a source volume (intensities per voxel) onto the working grid."""
        return _apply(self.mats, volume)

    def object_to_source(self, obj: np.ndarray) -> np.ndarray:
        """Bring a working-grid object back: the adjoint of the interpolation, total light kept.

        The working grid's values are in the source's units per voxel (as
        :meth:`to_work` gives them), so each working voxel holds
        ``volume_ratio`` times its value in source-voxel light.
        """
        back = _apply([None if m is None else m.T for m in self.mats], obj)
        return back * np.float32(self.volume_ratio)

    def sample_to_source(self, work: np.ndarray) -> np.ndarray:
        """Values of a smooth working-grid volume (a rendered one) at the source's voxel centres.

        Linear interpolation, the same extent: for volumes smooth on the
        working grid's scale (the target's kernel rendered there), so each
        source voxel gets the rendered bead's value at its centre, as the
        ideal target is sampled. Light is not renormalised here.
        """
        mats = [None if m is None else _interp_matrix(m.shape[0], w, d)
                for m, w, d in zip(self.mats, self.spacing, self.source_spacing)]
        return _apply(mats, work)

    def positions_to_work(self, positions: np.ndarray) -> np.ndarray:
        """Source voxel coordinates (N, 3) to working-grid voxel coordinates."""
        # voxel i of a grid of step d is centred (i + 0.5) d from the common start of both extents
        p = np.asarray(positions, float)
        return (p + 0.5) * np.asarray(self.source_spacing) / np.asarray(self.spacing) - 0.5


def working_grid(shape: Sequence[int], spacing: Sequence[float], fwhm_um: float, *, samples: float = 2.0,
                 max_zoom: float = 3.0, max_growth: float = 8.0) -> Grid:
    """The working grid of a volume: voxels of ``fwhm_um / samples`` um, at most ``max_zoom`` x finer than the data.

    The working grid never holds more than ``max_growth`` times the
    volume's voxels (coarse data with a sharp PSF: the finer axes are
    coarsened alike). Axes whose spacing already equals the working one
    within 2 % are left untouched.
    """
    if not np.isfinite(fwhm_um) or fwhm_um <= 0:
        raise ValueError(f"the target FWHM must be a positive number of micrometres, got {fwhm_um!r}")
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(d) for d in spacing)
    step = fwhm_um / samples
    steps = np.array([max(step, d / max_zoom) for d in spacing])
    growth = float(np.prod(np.asarray(spacing) / steps))
    if growth > max_growth:  # coarsen the upsampled axes alike, never beyond the data's own step
        up = steps < np.asarray(spacing)
        factor = (growth / max_growth) ** (1.0 / int(up.sum()))
        steps[up] = np.minimum(steps[up] * factor, np.asarray(spacing)[up])
    mats, work_spacing, work_shape = [], [], []
    for n, d, w in zip(shape, spacing, steps):
        if abs(w / d - 1.0) < 0.02:
            mats.append(None)
            work_spacing.append(d)
            work_shape.append(n)
            continue
        m = _interp_matrix(n, d, w)
        mats.append(m)
        work_shape.append(m.shape[0])
        work_spacing.append(n * d / m.shape[0])  # exact step covering the same extent
    return Grid(spacing=tuple(work_spacing), source_spacing=spacing, shape=tuple(work_shape),
                source_shape=shape, mats=tuple(mats))
