"""Is each restored spot in the data? Spots the data do not support are removed.

A restoration may put a spot where the recording has only noise: Richardson-
Lucy turns noise into spikes, and a network trained to recover faint beads
turns some of them into bead-shaped spots (on dim simulations up to one
spot in five, far from every bead). Whether the data hold a spot is a local
version of the self-check's consistency (:mod:`restore3d.selfcheck`): with
``data - background = object * PSF + noise``, the data's matched filter
(correlation with the PSF) at a spot must match what the restored volume
predicts there, ``restored * PSF`` correlated with the PSF, i.e. the
restored volume convolved with the PSF's autocorrelation. Their ratio, the
spot's **support**, is about the same for every real bead of a volume
(whatever light scale the restoration keeps) and about 0 for a spot the data
do not hold.

Both filters are evaluated at the spots only (a window of the PSF's size
around each), so the cost grows with the number of spots, not the volume.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ._checks import as_restoration, as_spacing, as_volume

__all__ = ["SupportInfo", "spot_support", "remove_unsupported", "check_min_support"]


@dataclasses.dataclass
class SupportInfo:
    """What :func:`remove_unsupported` did.

    Attributes
    ----------
    n_spots : int
        Spots examined (local maxima above ``fraction`` of the typical bead).
    typical_support : float
        Median support of the bright spots (at least half the typical bead).
    n_removed : int
        Spots whose support was below ``min_support`` x the typical one.
    light_removed : float
        Fraction of the volume's light removed with them.
    """

    n_spots: int
    typical_support: float
    n_removed: int
    light_removed: float


def check_min_support(min_support) -> None:
    """``ValueError`` naming the fix unless ``0 <= min_support < 1``."""
    if not 0 <= min_support < 1:
        raise ValueError(f"min_support must be in [0, 1) (a fraction of the typical spot's support), "
                         f"got {min_support!r}")


def _windowed_dot(volume, kernel, centres):
    """``sum(volume[c + k] * kernel[k])`` (correlation, kernel centred) at each centre, cut at the faces."""
    half = np.asarray(kernel.shape) // 2
    out = np.empty(len(centres))
    for i, c in enumerate(centres):
        lo = np.maximum(c - half, 0)
        hi = np.minimum(c + half + 1, volume.shape)
        k_lo = lo - (c - half)
        k_hi = k_lo + (hi - lo)
        out[i] = float(np.vdot(volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]],
                               kernel[k_lo[0]:k_hi[0], k_lo[1]:k_hi[1], k_lo[2]:k_hi[2]]))
    return out


def _autocorrelation(psf):
    """The PSF correlated with itself, centred, its size odd (about twice the PSF's)."""
    from scipy import fft as sfft  # (scipy.signal's fftconvolve: importing scipy.signal took about a second)
    full = [2 * n - 1 for n in psf.shape]
    fast = [sfft.next_fast_len(n, real=True) for n in full]
    spectrum = sfft.rfftn(psf, fast)
    spectrum *= sfft.rfftn(psf[::-1, ::-1, ::-1], fast)
    auto = sfft.irfftn(spectrum, fast)[tuple(slice(0, n) for n in full)].astype(np.float32)
    return np.clip(auto, 0, None)


def spot_support(restored: np.ndarray, data: np.ndarray, psf: np.ndarray, spacing: Sequence[float], *,
                 fraction: float = 0.02, n_floor: int = 2000):
    """The spots of a restored volume and how much the data support each.

    Parameters
    ----------
    restored : (Z, Y, X) ndarray
        A restored, background-free volume.
    data : (Z, Y, X) ndarray
        The background-free data it was restored from
        (:class:`restore3d.SubtractBackground`'s output).
    psf : (z, y, x) ndarray
        The PSF of the restoration, same spacing (odd sizes, centred).
    spacing : (dz, dy, dx) floats, micrometres
    fraction : float
        Spots are the restored volume's maxima above this fraction of its
        typical bead (:func:`restore3d.assess.beads_above`).
    n_floor : int
        Random voxels (fixed seed) the matched filter's floor is the median
        of.

    Returns
    -------
    spots : bead table
    support : (N,) float ndarray
        The data's matched filter at each spot (correlation with the PSF,
        its floor removed) over what the restored volume predicts there.
    typical : float
        The restored volume's typical bead height.
    """
    from .assess import beads_above
    from .detect import positions_of
    res, dat, psf, spacing = as_restoration(restored, data, psf, spacing)
    spots, typical = beads_above(res, spacing, fraction=fraction)
    if not len(spots):
        return spots, np.zeros(0), typical
    centres = np.clip(np.round(positions_of(spots)).astype(int), 0, np.asarray(res.shape) - 1)
    kernel = (psf / psf.sum()).astype(np.float32)
    # the matched filter's floor: its median over random voxels (a clipped noise floor is positive on average)
    anywhere = np.random.default_rng(0).integers(0, np.asarray(dat.shape), size=(n_floor, 3))
    floor = float(np.median(_windowed_dot(dat, kernel, anywhere)))
    seen = _windowed_dot(dat, kernel, centres) - floor
    predicted = _windowed_dot(res, _autocorrelation(kernel), centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        support = np.where(predicted > 0, seen / predicted, 0.0)
    return spots, support, typical


def remove_unsupported(restored: np.ndarray, data: np.ndarray, psf: np.ndarray, spacing: Sequence[float], *,
                       min_support: float = 0.2, fraction: float = 0.02, radius_um: float | None = None,
                       typical_support: float | None = None, return_info: bool = False):
    """Set to zero the spots of a restored volume that the data do not hold.

    A spot whose support (:func:`spot_support`) is below ``min_support``
    times the typical support of the volume's bright spots is removed: the
    voxels within ``radius_um`` of it that lie nearer to it than to any other
    spot. Spots the data hold keep every voxel.

    Parameters
    ----------
    restored, data, psf, spacing
        As in :func:`spot_support`.
    min_support : float
        Fraction of the typical support below which a spot is not in the
        data. With 0.2, the spots the rendering refiner put more than 1 um
        from every bead of two dim simulations went from 37 / 19 to 9 / 0
        (AP 0.849 -> 0.872, 0.911 -> 0.896), and nothing was removed on
        leica-beads or bright volumes (benchmarks/RESULTS.md, section 1).
    fraction : float
        Spots examined: maxima above this fraction of the typical bead.
    radius_um : float, optional
        How far a removed spot's light reaches; default the PSF's lateral
        FWHM, at least two voxels along each axis.
    typical_support : float, optional
        The typical support, when known (chunks of a large volume share the
        one measured on a sample); measured on the volume otherwise.
    return_info : bool
        Also return a :class:`SupportInfo`.

    Returns
    -------
    cleaned : (Z, Y, X) float32 ndarray
    info : SupportInfo
        Only with ``return_info``.
    """
    from scipy.spatial import cKDTree

    from .detect import positions_of
    from .psf import resolution_um
    check_min_support(min_support)
    spacing = as_spacing(spacing)
    out = np.array(as_volume(restored, name="restored"), dtype=np.float32, copy=True)
    spots, support, typical = spot_support(out, data, psf, spacing, fraction=fraction)
    if typical_support is None:
        bright = support[spots["score"] >= 0.5 * typical] if len(spots) else support
        typ = float(np.median(bright)) if bright.size else 0.0
    else:
        typ = float(typical_support)
    info = SupportInfo(n_spots=len(spots), typical_support=typ, n_removed=0, light_removed=0.0)
    weak = np.flatnonzero(support < min_support * typ) if typ > 0 else np.zeros(0, int)
    if weak.size:
        sp = np.asarray(spacing, float)
        radius = float(radius_um) if radius_um is not None else resolution_um(psf, spacing)
        reach = np.maximum(np.ceil(radius / sp).astype(int), 2)
        pos = positions_of(spots)
        tree = cKDTree(pos * sp)
        total = float(out.sum(dtype=np.float64))
        removed = 0.0
        for i in weak:
            c = np.round(pos[i]).astype(int)
            sl = tuple(slice(max(0, ci - r), min(n, ci + r + 1)) for ci, r, n in zip(c, reach, out.shape))
            grid = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in sl], indexing="ij"), -1)
            _, nearest = tree.query(grid.reshape(-1, 3) * sp)
            mine = (nearest == i).reshape(grid.shape[:3])
            removed += float(out[sl][mine].sum(dtype=np.float64))
            out[sl][mine] = 0.0
        info.n_removed = int(weak.size)
        info.light_removed = removed / total if total > 0 else 0.0
    return (out, info) if return_info else out
