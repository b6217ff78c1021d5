"""The refiner's working grid: the same beads in voxels whatever the microscope's sampling.

A refiner that renders the target after its object (see
:mod:`restore3d.refiner.transforms`) works on a grid sampled relative to the
target's FWHM: lateral voxels of ``fwhm / samples`` micrometres and planes of
the same size (isotropic), but never more than ``max_zoom`` times finer than
the data along any axis (coarse z steps carry no more detail when
interpolated). A bead then spans the same number of voxels on a 0.1 / 0.044
um confocal stack as on a 0.3 / 0.1 um widefield one, so the network's task
does not change with the sampling, and finely sampled volumes cost far less.

Resampling is linear interpolation (matrices per axis); the network's object
goes back by the adjoint, which keeps every bead's light exactly. A rendered
object comes back as the ideal target is made: the target's Gaussian
evaluated at the source's voxel centres (each working voxel a box of light),
not interpolated from the working grid, whose linear interpolation would
widen a bead by up to a quarter of a working voxel's variance, by how its
centre falls between the source's planes. The grid
is anchored to the whole volume: working voxel ``i`` is centred ``(i + 0.5)``
steps from the whole volume's first edge, whatever part of it a run sees.
A chunk of a large volume (``origin``: where it starts in the whole) then
lays exactly the whole volume's working voxels over its extent, starting at
a multiple of the network's pooling grid, so chunk-wise runs see the same
samples and poolings as a whole-volume run.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

__all__ = ["Grid", "working_grid", "MIN_RENDER_SIGMA"]


def _interp_matrix(n_from: int, centres: np.ndarray) -> np.ndarray:
    """Linear interpolation from ``n_from`` samples onto ``centres`` (in sample units; clamped at the ends)."""
    n_to = len(centres)
    centres = np.clip(np.asarray(centres, float), 0.0, n_from - 1.0)
    lo = np.floor(centres).astype(int)
    hi = np.minimum(lo + 1, n_from - 1)
    t = centres - lo
    m = np.zeros((n_to, n_from), np.float32)
    rows = np.arange(n_to)
    np.add.at(m, (rows, lo), 1.0 - t)
    np.add.at(m, (rows, hi), t)
    return m


#: Narrowest rendered kernel along a resampled axis, in working voxels: sqrt(1/6), the mean spread of the linear
#: interpolation it replaced. A narrower one samples, at each source voxel centre, only the working voxel that
#: centre falls in: a bead's planes would depend on where its voxels fall (calibrated kernels reach 0.25 x the
#: target's where the object is long: dim NA 1.4 read 1.37 x the target's elongation with no floor, 1.19 with it
#: at stop 31).
MIN_RENDER_SIGMA = float(np.sqrt(1.0 / 6.0))


def _render_matrix(n_from: int, centres: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    """Light of ``n_from`` working voxels (boxes of one voxel) blurred by a Gaussian of ``sigma`` voxels, at
    ``centres`` (working voxels): the Gaussian integrated over each box, mirrored edges (scipy's "reflect")."""
    from scipy.special import ndtr
    sigma = max(float(sigma), 1e-3)
    reach = truncate * sigma + 0.5
    k = int(np.ceil(reach)) + 1
    j = np.arange(-k, n_from + k)
    d = np.asarray(centres, float)[:, None] - j[None, :]
    w = ndtr((d + 0.5) / sigma) - ndtr((d - 0.5) / sigma)
    w[np.abs(d) > reach] = 0.0
    cols = np.where(j < 0, -1 - j, np.where(j >= n_from, 2 * n_from - 1 - j, j))
    m = np.zeros((n_from, len(d)), np.float64)
    np.add.at(m, cols, w.T)
    return m.T.astype(np.float32)


def _sparse_rows(m: np.ndarray):
    """The non-zeros of each row of ``m`` as ``(columns, weights)``, both (rows, K), zero-padded to the
    longest row's K (an interpolation matrix has two per row, its transpose a few)."""
    nz = m != 0
    counts = nz.sum(axis=1)
    k = max(1, int(counts.max()) if counts.size else 1)
    rows, cols = np.nonzero(nz)  # row-major: each row's columns in order
    slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    idx = np.zeros((m.shape[0], k), np.intp)
    w = np.zeros((m.shape[0], k), np.float32)
    idx[rows, slot] = cols
    w[rows, slot] = m[rows, cols]
    return idx, w


#: Voxels of the output each slab of :func:`_apply_axis` makes at once (its gathered term is that big).
APPLY_SLAB = 2 ** 20


def _apply_axis(volume: np.ndarray, m: np.ndarray, axis: int) -> np.ndarray:
    """``m`` applied along ``axis`` (``tensordot(m, volume, (1, axis))`` moved back), in O(voxels).

    Gathers along the axis, as many as the fullest row of ``m`` holds
    non-zeros: a dense product costs the axis length per output voxel (the
    refiner's resampling grew faster than the volume). The output is made
    in slabs along another axis, so the gathered terms stay a slab's size.
    """
    idx, w = _sparse_rows(m)
    shape = [1] * volume.ndim
    shape[axis] = -1
    out_shape = list(volume.shape)
    out_shape[axis] = m.shape[0]
    out = np.empty(out_shape, np.float32)
    along = 0 if axis != 0 else 1  # the slabs' axis
    step = max(1, APPLY_SLAB * volume.shape[along] // max(1, out.size))
    for a in range(0, volume.shape[along], step):
        cut = [slice(None)] * volume.ndim
        cut[along] = slice(a, a + step)
        cut = tuple(cut)
        src, dst = volume[cut], out[cut]
        np.multiply(np.take(src, idx[:, 0], axis=axis), w[:, 0].reshape(shape), out=dst)
        for k in range(1, idx.shape[1]):
            term = np.take(src, idx[:, k], axis=axis)
            term *= w[:, k].reshape(shape)
            dst += term
    return out


def _apply(mats, volume):
    """The per-axis matrices applied, the axes that shrink the volume first (the products commute)."""
    out = np.asarray(volume, np.float32)
    axes = sorted((a for a, m in enumerate(mats) if m is not None), key=lambda a: mats[a].shape[0] / mats[a].shape[1])
    for axis in axes:
        out = _apply_axis(out, mats[axis], axis)
    return np.ascontiguousarray(out, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Grid:
    """A working grid for one volume: its spacing and the resampling matrices per axis."""

    spacing: tuple        # (dz, dy, dx) of the working grid, micrometres
    source_spacing: tuple
    shape: tuple          # working grid shape
    source_shape: tuple
    mats: tuple           # per axis: (n_work, n_source) matrix, or None when the axis is unchanged
    start: tuple = (0.0, 0.0, 0.0)  # working coordinate of the source's first voxel centre, per axis
    centres: tuple = ()   # per axis: the source's voxel centres in working voxels, or None when unchanged

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

    def rendered_sigma(self, sigma_um) -> np.ndarray:
        """The kernel (sigma per axis, um) :meth:`render_to_source` renders for ``sigma_um``: at least
        :data:`MIN_RENDER_SIGMA` working voxels along resampled axes, so no bead is aliased onto one plane."""
        sig = np.asarray(sigma_um, float).copy()
        for a, c in enumerate(self.centres or (None,) * sig.size):
            if c is not None:
                sig[a] = max(sig[a], MIN_RENDER_SIGMA * self.spacing[a])
        return sig

    def render_to_source(self, obj: np.ndarray, sigma_um) -> np.ndarray:
        """A working-grid object blurred by a Gaussian of ``sigma_um`` (z, y, x um), at the source's voxel centres.

        Along resampled axes the Gaussian, at least :data:`MIN_RENDER_SIGMA`
        working voxels wide, is integrated over each working voxel (a box of
        light) at each source voxel centre, as the ideal target is
        point-sampled; along unchanged axes it is
        :func:`restore3d.refiner.calibration.render`'s blur. Mirrored edges.
        Values are per working voxel, as the object's; light is not
        renormalised here.
        """
        from .._filters import gaussian_filter
        from ..target import TARGET_TRUNCATE
        sig = self.rendered_sigma(sigma_um) / np.asarray(self.spacing, float)
        centres = self.centres or (None,) * obj.ndim
        mats = [None if c is None else _render_matrix(obj.shape[a], c, sig[a], TARGET_TRUNCATE)
                for a, c in enumerate(centres)]
        out = _apply(mats, obj)
        rest = [0.0 if c is not None else s_ for c, s_ in zip(centres, sig)]
        return gaussian_filter(out, rest, mode="reflect", truncate=TARGET_TRUNCATE) if any(rest) else out

    def positions_to_work(self, positions: np.ndarray) -> np.ndarray:
        """Source voxel coordinates (N, 3) to working-grid voxel coordinates."""
        p = np.asarray(positions, float)
        return np.asarray(self.start) + p * np.asarray(self.source_spacing) / np.asarray(self.spacing)


def working_grid(shape: Sequence[int], spacing: Sequence[float], fwhm_um: float, *, samples: float = 2.0,
                 max_zoom: float = 3.0, max_growth: float = 8.0, origin: Sequence[int] = (0, 0, 0),
                 whole_shape: Sequence[int] | None = None, multiple: Sequence[int] = (1, 1, 1)) -> Grid:
    """The working grid of a volume: voxels of ``fwhm_um / samples`` um, at most ``max_zoom`` x finer than the data.

    The working grid never holds more than ``max_growth`` times the
    volume's voxels (coarse data with a sharp PSF: the finer axes are
    coarsened alike). Axes whose spacing already equals the working one
    within 2 % are left untouched.

    The steps are set so that whole working voxels cover the whole volume's
    extent. ``origin`` (voxels, z y x) is where this volume starts in the
    whole volume of ``whole_shape`` it was cut from (a chunk; default: it
    is the whole); the grid holds the whole volume's working voxels over
    its extent, from the last multiple of ``multiple`` (the network's
    pooling grid) at or before its start, so every chunk sees the samples
    and poolings a whole-volume run sees.
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
    whole_shape = shape if whole_shape is None else tuple(int(n) for n in whole_shape)
    mats, centres, work_spacing, work_shape, start = [], [], [], [], []
    for n, d, w, o, m, total in zip(shape, spacing, steps, origin, multiple, whole_shape):
        if abs(w / d - 1.0) < 0.02:
            mats.append(None)
            centres.append(None)
            work_spacing.append(d)
            work_shape.append(n)
            start.append(0.0)
            continue
        w = total * d / max(1, int(round(total * d / w)))  # whole working voxels over the whole extent
        r = d / w  # working voxels per source voxel
        # the whole volume's working voxels whose centres fall in this part's extent [o, o + n) (source voxels)
        first = int(np.ceil(o * r - 0.5 - 1e-9))
        first = first // int(m) * int(m)
        stop = max(first + 1, int(np.ceil((o + n) * r - 1e-9)))
        idx = np.arange(first, stop)
        mats.append(_interp_matrix(n, (idx + 0.5) / r - 0.5 - o))  # working centres in local source voxels
        centres.append((o + np.arange(n) + 0.5) * r - 0.5 - first)  # the source's centres in working voxels
        work_shape.append(len(idx))
        work_spacing.append(float(w))
        start.append((o + 0.5) * r - 0.5 - first)
    return Grid(spacing=tuple(work_spacing), source_spacing=spacing, shape=tuple(work_shape),
                source_shape=shape, mats=tuple(mats), start=tuple(start), centres=tuple(centres))
