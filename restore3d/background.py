"""Ambient-light removal: camera offset, smooth glow and out-of-focus haze.

Three estimators of the slowly varying background, all on (z, y, x) float32
volumes with sizes in micrometres:

``"wavelet"`` (default)
    In the spirit of WBNS (Huepfel et al. 2021): the background is the
    coarse wavelet approximation (PyWavelets) above a scale given in
    micrometres per axis, smoothed. Beads are excluded iteratively: values
    more than ``clip_sigma`` noise standard deviations above the current
    background are clipped to it and the approximation is recomputed, so
    bead flux does not leak into the background and peaks keep their height.
``"rolling_ball"``
    scikit-image's rolling ball with an ellipsoidal kernel sized in
    micrometres, on a lightly smoothed and (for speed) binned volume.
``"percentile"``
    A constant: the given percentile of the volume (the camera offset plus
    the mean glow for sparse beads).
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage

from ._checks import as_spacing, as_volume
from ._stats import mad_sigma

__all__ = ["estimate_background", "subtract_background", "estimate_noise",
           "wavelet_background", "rolling_ball_background", "percentile_background",
           "wavelet_blocks", "context_voxels", "DEFAULT_SCALE_UM", "METHODS"]

log = logging.getLogger(__name__)

#: Default background scale (z, y, x) in micrometres: about four widefield
#: bead footprints (FWHM ~1 um axially, ~0.3 um laterally at NA ~1).
DEFAULT_SCALE_UM = (4.0, 1.6, 1.6)


def estimate_noise(volume: np.ndarray) -> float:
    """Standard deviation of the noise, from the finest Haar details along x.

    Robust (median absolute deviation), so sparse beads barely bias it.
    Integer data with little noise (an 8-bit stack whose background is
    mostly one value) makes most details exactly zero and the MAD zero;
    there the root mean square of the details below their 99.5th
    percentile is used instead (beads fill far less than 0.5 % of a bead
    volume). Returns the value in the volume's intensity units.
    """
    vol = np.asarray(volume, dtype=np.float32)
    n = vol.shape[-1] // 2 * 2
    if n < 2:
        return 0.0
    d = (vol[..., 1:n:2] - vol[..., 0:n:2]).ravel() / np.sqrt(2.0)
    if d.size > 2_000_000:
        d = d[:: d.size // 1_000_000]
    mad = mad_sigma(d)
    if mad > 0:
        return mad
    dev = np.abs(d - np.median(d))
    kept = dev[dev <= np.percentile(dev, 99.5)]
    return float(np.sqrt(np.mean(kept.astype(np.float64) ** 2))) if kept.size else 0.0


def _scale_um(scale, spacing):
    if scale is None:
        scale = DEFAULT_SCALE_UM
    if np.isscalar(scale):
        scale = (scale, scale, scale)
    return as_spacing(scale, name="scale")


def _levels(shape, spacing, scale_um, dec_len):
    """Wavelet level per axis: the first whose block size reaches the scale."""
    import pywt
    levels = []
    for n, d, s in zip(shape, spacing, scale_um):
        want = int(np.ceil(np.log2(max(s / d, 1.0))))
        levels.append(int(min(want, pywt.dwt_max_level(n, dec_len))))
    return levels


def _wavelet_lowpass(vol, levels, wavelet, mode):
    """Projection on the wavelet approximation space, separably per axis."""
    import pywt
    out = vol
    for axis, level in enumerate(levels):
        if level <= 0:
            continue
        coeffs = pywt.wavedec(out, wavelet, mode=mode, level=level, axis=axis)
        coeffs = [coeffs[0]] + [np.zeros_like(c) for c in coeffs[1:]]
        rec = pywt.waverec(coeffs, wavelet, mode=mode, axis=axis)
        out = np.take(rec, np.arange(vol.shape[axis]), axis=axis)
    return out


def wavelet_background(volume: np.ndarray, spacing: Sequence[float], *,
                       scale: float | Sequence[float] | None = None, wavelet: str = "db1",
                       iterations: int = 4, clip_sigma: float = 2.0, axial: str = "planewise",
                       noise: float | None = None) -> np.ndarray:
    """Smooth background of a bead volume by iterative wavelet approximation.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
    spacing : (dz, dy, dx) floats
        Voxel size in micrometres.
    scale : float or (sz, sy, sx) floats, optional
        Smallest structure size, in micrometres, that counts as background
        (default :data:`DEFAULT_SCALE_UM`; a few bead footprints). The level
        on each axis is the first whose block size ``2**level`` voxels
        reaches it (capped by the axis length).
    wavelet : str
        PyWavelets wavelet; ``"db1"`` (Haar) allows the most levels on thin stacks.
    iterations : int
        Rounds of "clip what stands above the background, recompute".
    clip_sigma : float
        Values above ``background + clip_sigma * noise`` are treated as
        beads. With 2, the estimate on a flat noisy field is unbiased to
        0.01 noise standard deviations.
    axial : {"planewise", "3d"}
        ``"planewise"`` (default) estimates each z plane on its own, with no
        smoothing along z; ``"3d"`` also smooths along z. On 32-plane
        stacks with ambient light that drifts along z, planewise follows the
        drift better and keeps bead peaks closer (benchmarks/RESULTS.md).
    noise : float, optional
        Noise standard deviation; default :func:`estimate_noise`.

    Returns
    -------
    background : (Z, Y, X) float32 ndarray
    """
    import pywt
    vol = as_volume(volume)
    spacing = as_spacing(spacing)
    if axial not in ("3d", "planewise"):
        raise ValueError(f"axial must be '3d' or 'planewise', got {axial!r}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations!r}")
    try:
        w = pywt.Wavelet(wavelet)
    except ValueError:
        raise ValueError(f"unknown wavelet {wavelet!r}; see pywt.wavelist(kind='discrete')") from None
    scale_um = _scale_um(scale, spacing)
    levels = _levels(vol.shape, spacing, scale_um, w.dec_len)
    if axial == "planewise":
        levels[0] = 0
    sigma = estimate_noise(vol) if noise is None else float(noise)
    smooth = [2.0 ** (lvl - 1) if lvl > 0 else 0.0 for lvl in levels]
    log.debug("wavelet background: levels %s, smoothing sigma %s voxels, noise %.3g", levels, smooth, sigma)
    ops = [_axis_operator(n, lvl, sm, w) for n, lvl, sm in zip(vol.shape, levels, smooth)]
    work = vol
    bg = vol
    for _ in range(iterations):
        bg = _separable(ops, work)
        work = np.minimum(vol, bg + np.float32(clip_sigma * sigma))
    return np.asarray(bg, dtype=np.float32)


def _axis_operator(n, level, sigma, wavelet):
    """The wavelet approximation followed by the Gaussian along one axis, as ``W @ H`` (or None: identity).

    ``H`` (k x n) maps the axis to its distinct approximation values (the
    2**level-voxel blocks of a Haar approximation: k = n / 2**level) and
    ``W`` (n x k) spreads them back, smoothed. Both are read off the
    approximation of the identity matrix (PyWavelets, symmetric edges) and
    :func:`scipy.ndimage.gaussian_filter1d` (mirrored edges), so the product
    is exactly the full-size computation, at the cost of the small grid.
    """
    if level <= 0 and sigma <= 0:
        return None
    proj = _wavelet_lowpass(np.eye(n), [level], wavelet, "symmetric") if level > 0 else np.eye(n)
    rows, index = np.unique(np.round(proj, 12), axis=0, return_inverse=True)
    spread = np.zeros((n, len(rows)))
    spread[np.arange(n), index.ravel()] = 1.0
    if sigma > 0:
        spread = ndimage.gaussian_filter1d(spread, sigma, axis=0, mode="reflect")
    return spread.astype(np.float32), rows.astype(np.float32)


def _separable(ops, volume):
    """Apply one ``W @ H`` operator per axis (None: identity): first down to the small grid, then back."""
    out = volume
    for axis, op in enumerate(ops):
        if op is not None:
            out = np.moveaxis(np.tensordot(op[1], out, axes=(1, axis)), 0, axis)
    for axis, op in enumerate(ops):
        if op is not None:
            out = np.moveaxis(np.tensordot(op[0], out, axes=(1, axis)), 0, axis)
    return np.ascontiguousarray(out, dtype=np.float32)


def rolling_ball_background(volume: np.ndarray, spacing: Sequence[float], *,
                            radius: float | Sequence[float] | None = None,
                            smooth: float = 1.0, max_kernel: int = 5) -> np.ndarray:
    """Background by scikit-image's rolling ball with an ellipsoid sized in micrometres.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
    spacing : (dz, dy, dx) floats
        Voxel size in micrometres.
    radius : float or (rz, ry, rx) floats, optional
        Semi-axes of the ellipsoid in micrometres (default
        :data:`DEFAULT_SCALE_UM`).
    smooth : float
        Gaussian pre-smoothing in voxels, so the ball does not follow the
        noise minima.
    max_kernel : int
        The volume is block-averaged so the kernel spans at most this many
        voxels per semi-axis (the rolling ball costs the kernel size per
        voxel); the background is interpolated back to full size.

    Returns
    -------
    background : (Z, Y, X) float32 ndarray
    """
    from skimage.restoration import ellipsoid_kernel, rolling_ball
    vol = as_volume(volume)
    spacing = as_spacing(spacing)
    radius_um = _scale_um(radius, spacing)
    semi = np.array(radius_um) / np.array(spacing)
    factor = np.maximum(1, np.floor(semi / max_kernel)).astype(int)
    work = ndimage.gaussian_filter(vol, smooth) if smooth > 0 else vol
    if np.any(factor > 1):
        crop = tuple(slice(0, (n // f) * f) for n, f in zip(vol.shape, factor))
        c = work[crop]
        shape = [c.shape[0] // factor[0], factor[0], c.shape[1] // factor[1], factor[1],
                 c.shape[2] // factor[2], factor[2]]
        work = c.reshape(shape).mean(axis=(1, 3, 5))
    semi_small = semi / factor
    kshape = tuple(int(2 * np.ceil(s) + 1) for s in semi_small)
    # the ball's height: the typical intensity range, so it is neither a flat
    # disc (follows noise dips) nor a needle
    height = float(np.percentile(work, 99) - np.percentile(work, 1)) or 1.0
    kernel = ellipsoid_kernel(kshape, height)
    small = rolling_ball(work, kernel=kernel)
    if np.any(factor > 1):
        zoom = [n / s for n, s in zip(vol.shape, small.shape)]
        bg = ndimage.zoom(small, zoom, order=1, mode="nearest", grid_mode=True)
        bg = bg[: vol.shape[0], : vol.shape[1], : vol.shape[2]]
        if bg.shape != vol.shape:  # rounding: pad with edge values
            bg = np.pad(bg, [(0, n - s) for n, s in zip(vol.shape, bg.shape)], mode="edge")
    else:
        bg = small
    return np.asarray(bg, dtype=np.float32)


def percentile_background(volume: np.ndarray, *, percentile: float = 50.0,
                          level: float | None = None) -> np.ndarray:
    """A constant background: the ``percentile`` of the volume (or a given ``level``), broadcast to its shape."""
    vol = as_volume(volume)
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {percentile!r}")
    level = np.float32(np.percentile(vol, percentile) if level is None else level)
    return np.full(vol.shape, level, np.float32)


METHODS = ("wavelet", "rolling_ball", "percentile")


def wavelet_blocks(spacing: Sequence[float], *, scale=None, wavelet: str = "db1",
                   axial: str = "planewise") -> tuple[int, int, int]:
    """Block size (voxels, z, y, x) of :func:`wavelet_background`'s approximation on an unbounded volume.

    Chunks of a large volume must start on this grid for the chunked
    background to equal the whole one.
    """
    import pywt
    spacing = as_spacing(spacing)
    levels = _levels((1 << 20,) * 3, spacing, _scale_um(scale, spacing), pywt.Wavelet(wavelet).dec_len)
    if axial == "planewise":
        levels[0] = 0
    return tuple(2 ** int(lv) for lv in levels)


def context_voxels(method: str, spacing: Sequence[float], *, scale=None, radius=None,
                   axial: str = "planewise") -> tuple[int, int, int]:
    """Voxels of context (z, y, x) on each side a background estimate at one voxel depends on.

    Wavelet: blocks of up to twice the scale plus the Gaussian smoothing of
    half that; rolling ball: the ball; percentile: none (a constant).
    """
    if method == "percentile":
        return (0, 0, 0)
    spacing = as_spacing(spacing)
    size = np.asarray(_scale_um(scale if scale is not None else radius, spacing)) / np.asarray(spacing)
    halo = np.ceil(2.5 * size).astype(int)
    if method == "wavelet" and axial == "planewise":
        halo[0] = 0
    return tuple(int(h) for h in halo)


def estimate_background(volume: np.ndarray, spacing: Sequence[float], *, method: str = "wavelet",
                        **options) -> np.ndarray:
    """The background of a volume by one of :data:`METHODS`.

    ``options`` go to :func:`wavelet_background`,
    :func:`rolling_ball_background` or :func:`percentile_background`.
    """
    if method == "wavelet":
        return wavelet_background(volume, spacing, **options)
    if method == "rolling_ball":
        return rolling_ball_background(volume, spacing, **options)
    if method == "percentile":
        as_spacing(spacing)
        return percentile_background(volume, **options)
    raise ValueError(f"unknown background method {method!r}; expected one of {METHODS}")


def subtract_background(volume: np.ndarray, spacing: Sequence[float], *, method: str = "wavelet",
                        clip: bool = True, **options) -> np.ndarray:
    """Remove ambient light: ``volume - background``, clipped at zero.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
        Raw counts (any real dtype); not modified.
    spacing : (dz, dy, dx) floats
        Voxel size in micrometres.
    method : {"wavelet", "rolling_ball", "percentile"}
        See the module docstring.
    clip : bool
        Set negative values (noise below the background) to zero, as
        Richardson-Lucy needs non-negative data.
    **options
        Passed to the chosen estimator (``scale``, ``radius``, ``percentile``, ...).

    Returns
    -------
    (Z, Y, X) float32 ndarray

    Examples
    --------
    >>> vol = np.full((8, 32, 32), 100.0, np.float32)
    >>> float(subtract_background(vol, (0.3, 0.1, 0.1)).max())
    0.0
    """
    vol = as_volume(volume)
    bg = estimate_background(vol, spacing, method=method, **options)
    out = vol - bg
    if clip:
        np.maximum(out, 0, out=out)
    return out.astype(np.float32, copy=False)
