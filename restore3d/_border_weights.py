"""Richardson-Lucy's normalisation ``1 / H^T 1_D`` as a small exact table instead of a grid.

``H^T 1_D`` at an object voxel ``v`` is the PSF's total over the offsets
that land in the data domain D, and D is a box: along each axis the
offsets form an interval that depends only on that axis' coordinate of
``v``. So the value at ``v`` is the PSF's sum over a box of PSF indices,
one interval per axis, and it takes few distinct values: one per
combination of the axes' distinct intervals (all voxels farther than half
the PSF from D's border share the full interval). :class:`BorderWeights`
holds those values in a table of at most about (2 P_z) x (2 P_y) x (2 P_x)
entries and, per axis, each grid coordinate's index into it; the sums come
exactly (float64) from the PSF's summed-volume table. A grid of the same
values costs a float32 grid of the FFT's size (1.6x a 512^2 volume) and,
computed by FFT as before, four or five grid-sized transients.
"""
from __future__ import annotations

import numpy as np
import torch

from .forward_model import WEIGHT_FLOOR

__all__ = ["BorderWeights"]

#: Tables larger than this many entries (volumes smaller than their PSF along every axis) are not worth it:
#: the weights are then expanded into a grid.
MAX_TABLE = 2 ** 22


class BorderWeights:
    """``1 / H^T 1_D`` on the object's support, 0 elsewhere, as a table and per-axis indices.

    Parameters
    ----------
    psf : (Pz, Py, Px) ndarray
        Unit-sum PSF, centre voxel at ``shape // 2`` (as :class:`restore3d.forward_model.ForwardModel`).
    shape : (Z, Y, X) ints
        The data domain D.
    ext : (ez, ey, ex) ints
        The object's extension beyond D on each side (D at offset ``ext`` on the grid).
    grid : (GZ, GY, GX) ints
        The FFT grid.
    boundary : {"extend", "zero", "periodic"}
        ``"zero"``: the weight is the indicator of D (no normalisation);
        ``"periodic"``: 1 on the whole grid.
    row : int
        Length of the padded layout's rows (>= GX); columns from GX on get weight 0.

    Attributes
    ----------
    table : (Sz + 1, Sy + 1, Sx + 1) float32 tensor
        The weights; the last index along each axis is a zero state (outside the support).
    index : tuple of three int32 tensors
        For each axis, each grid coordinate's index into ``table`` (lengths GZ, GY, ``row``).
    run : (x0, x1) ints
        The longest run of columns sharing one index along x (the interior): the kernels use one weight
        per row there and gather only at the row's ends.
    """

    def __init__(self, psf, shape, ext, grid, boundary, row=None, floor=WEIGHT_FLOOR):
        row = int(grid[2]) if row is None else int(row)
        lengths = (int(grid[0]), int(grid[1]), row)
        if boundary == "periodic":
            # circular correlation of a unit-sum PSF with the all-ones grid: 1 everywhere
            idx = [np.zeros(n, np.int64) for n in lengths]
            idx[2][int(grid[2]):] = 1
            sums = np.ones((1, 1, 1))
        else:
            if boundary == "zero":  # the indicator of D: a unit PSF's box sums, no extension
                h, ext = np.ones((1, 1, 1)), (0, 0, 0)
            else:
                h = np.asarray(psf, np.float64)
            c = [p // 2 for p in h.shape]
            idx, bounds = [], []
            for n, e, p, cc, g, length in zip(shape, ext, h.shape, c, grid, lengths):
                v = np.arange(min(n + 2 * e, int(g)))  # the support along this axis (as the grid holds it)
                lo = np.clip(e - v + cc, 0, p)
                hi = np.clip(e + n - 1 - v + cc, -1, p - 1) + 1  # exclusive
                hi = np.maximum(hi, lo)  # an empty interval sums to 0
                pairs, inverse = np.unique(np.stack([lo, hi], 1), axis=0, return_inverse=True)
                states = np.full(length, len(pairs), np.int64)  # outside the support: the zero state
                states[:len(v)] = inverse.reshape(-1)
                idx.append(states)
                bounds.append(pairs)
            # summed-volume table: cum[i, j, k] = sum of h[:i, :j, :k]
            cum = np.zeros(tuple(p + 1 for p in h.shape))
            cum[1:, 1:, 1:] = h.cumsum(0).cumsum(1).cumsum(2)
            (z0, z1), (y0, y1), (x0, x1) = [(b[:, 0], b[:, 1]) for b in bounds]
            sums = np.zeros((len(z0), len(y0), len(x0)))
            for zs, zsign in ((z1, 1), (z0, -1)):
                for ys, ysign in ((y1, 1), (y0, -1)):
                    for xs, xsign in ((x1, 1), (x0, -1)):
                        sums += zsign * ysign * xsign * cum[np.ix_(zs, ys, xs)]
        inv = np.where(sums > floor, 1.0 / np.maximum(sums, floor), 0.0)
        table = np.zeros(tuple(s + 1 for s in inv.shape), np.float32)
        table[:-1, :-1, :-1] = inv
        self.table = torch.from_numpy(table)
        self.index = tuple(torch.from_numpy(i.astype(np.int32)) for i in idx)
        self.row = row
        self.run = _longest_run(idx[2])

    @property
    def compact(self) -> bool:
        """Whether the table is small enough to be used instead of a grid."""
        return self.table.numel() <= MAX_TABLE

    def grid(self, device=None) -> torch.Tensor:
        """The weights as a (GZ, GY, row) float32 grid (the padded layout when ``row`` is its row length)."""
        iz, iy, ix = (i.long() for i in self.index)
        out = self.table[iz[:, None, None], iy[None, :, None], ix[None, None, :]]
        return out if device is None else out.to(device)

    def plane(self, z: int) -> torch.Tensor:
        """The weights of grid plane ``z`` as a (GY, row) tensor."""
        iy, ix = self.index[1].long(), self.index[2].long()
        return self.table[int(self.index[0][z])][iy[:, None], ix[None, :]]


def _longest_run(states: np.ndarray) -> tuple[int, int]:
    """``(start, stop)`` of the longest run of equal values in a 1D array (the first of equal lengths)."""
    change = np.flatnonzero(np.diff(states)) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [len(states)]])
    k = int(np.argmax(stops - starts))
    return int(starts[k]), int(stops[k])
