"""Removal of spurious specks from a restored volume.

After deconvolution and the refiner, a restored bead volume can keep small
isolated specks of amplified noise in the background: on the dense default
simulations, thousands of components of ~5 voxels at 4-18 % of the median
bead peak, where the ideal volume is zero (`bench_specks.py`, benchmarks/RESULTS.md).
A bead, even a faint one, carries far more light than such a speck: this
module drops the connected components whose integrated intensity is a small
fraction of a typical bead's.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from ._checks import as_volume
from .detect import typical_peak

__all__ = ["SpeckInfo", "remove_specks", "speck_reference"]


@dataclasses.dataclass
class SpeckInfo:
    """What :func:`remove_specks` did.

    Attributes
    ----------
    scale : float
        Typical bead peak (median of the local maxima above a tenth of the
        brightest), in the volume's units.
    reference : float
        Typical bead's integrated intensity above ``threshold * scale``
        (median over the components that reach half the typical peak).
    n_components : int
        Connected components above ``threshold * scale``.
    n_removed : int
        Components set to zero.
    light_removed : float
        Fraction of the volume's total intensity that was removed.
    """

    scale: float
    reference: float
    n_components: int
    n_removed: int
    light_removed: float


def _components(vol, level):
    lab, n = ndimage.label(vol > level)
    if n == 0:
        return lab, n, np.zeros(0), np.zeros(0)
    idx = np.arange(1, n + 1)
    return lab, n, np.asarray(ndimage.sum(vol, lab, idx)), np.asarray(ndimage.maximum(vol, lab, idx))


def _check(threshold, min_fraction):
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1) (a fraction of the typical bead peak), got {threshold!r}")
    if not 0 <= min_fraction < 1:
        raise ValueError(
            f"min_fraction must be in [0, 1) (a fraction of a typical bead's light), got {min_fraction!r}")


def _reference(vol, threshold, scale):
    """``(scale, reference, labels, n, integrals)``: the measurement and the components it was made on."""
    if scale is None:
        scale = typical_peak(vol)
    if scale <= 0:
        return 0.0, 0.0, None, 0, np.zeros(0)
    lab, n, integ, peak = _components(vol, threshold * scale)
    beads = integ[peak >= 0.5 * scale]
    reference = float(np.median(beads)) if beads.size else float(integ.max(initial=0.0))
    return float(scale), reference, lab, n, integ


def speck_reference(volume: np.ndarray, *, threshold: float = 0.02,
                    scale: float | None = None) -> tuple[float, float]:
    """``(scale, reference)``: the typical bead peak and a typical bead's integrated intensity.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
        A restored, background-free volume.
    threshold : float
        Components are the connected voxels above ``threshold * scale``.
    scale : float, optional
        The typical bead peak, when known; measured otherwise.

    Returns
    -------
    scale, reference : float
        Both 0 when the volume has no positive voxel.
    """
    _check(threshold, 0.0)
    scale, reference, *_ = _reference(as_volume(volume), threshold, scale)
    return scale, reference


def remove_specks(volume: np.ndarray, *, threshold: float = 0.02, min_fraction: float = 0.05,
                  scale: float | None = None, reference: float | None = None,
                  return_info: bool = False):
    """Set to zero the small, faint connected components of a restored volume.

    The voxels above ``threshold * scale`` are grouped into connected
    components (faces touching); a component whose integrated intensity is
    below ``min_fraction * reference`` is set to zero. Voxels below the
    threshold are left unchanged, so beads keep their full profiles.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
        A restored, background-free volume (the refiner's output).
    threshold : float
        Level of the components as a fraction of the typical bead peak.
    min_fraction : float
        Components with less light than this fraction of a typical bead's
        are removed. The default, 0.05, removed the specks of the dense
        default simulations without changing the detection AP there or on
        the acceptance settings; 0.1 started to remove faint beads
        (`bench_specks.py`, benchmarks/RESULTS.md).
    scale, reference : float, optional
        The typical bead peak and integrated intensity; measured on the
        volume when not given (:func:`speck_reference`). Fixed values make
        chunk-wise runs of a large volume use the same cut.
    return_info : bool
        Also return a :class:`SpeckInfo`.

    Returns
    -------
    cleaned : (Z, Y, X) float32 ndarray
    info : SpeckInfo
        Only with ``return_info``.

    Examples
    --------
    >>> vol = np.zeros((9, 9, 9), np.float32)
    >>> vol[4, 3:6, 3:6] = 10.0; vol[4, 4, 4] = 20.0   # a bead
    >>> vol[1, 1, 1] = 2.0                              # a speck
    >>> out = remove_specks(vol)
    >>> float(out[1, 1, 1]), float(out[4, 4, 4])
    (0.0, 20.0)
    """
    vol = as_volume(volume)
    _check(threshold, min_fraction)
    if scale is None or reference is None:  # measured on the components that are then cut
        scale, measured, lab, n, integ = _reference(vol, threshold, scale)
        reference = measured if reference is None else float(reference)
    elif scale > 0:
        lab, n, integ, _ = _components(vol, threshold * scale)
    else:
        lab, n, integ = None, 0, np.zeros(0)
    out = vol.astype(np.float32, copy=True)
    removed = 0
    light = 0.0
    if min_fraction > 0 and n:
        drop = np.zeros(n + 1, bool)
        drop[1:] = integ < min_fraction * reference
        removed = int(drop.sum())
        mask = drop[lab]
        total = float(np.abs(vol).sum(dtype=np.float64))
        light = float(vol[mask].sum(dtype=np.float64)) / total if total > 0 else 0.0
        out[mask] = 0.0
    info = SpeckInfo(scale=float(scale), reference=float(reference), n_components=int(n), n_removed=removed,
                     light_removed=light)
    return (out, info) if return_info else out
