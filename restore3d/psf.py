"""Point spread function models and measurements.

All lengths are in micrometres, arrays are (z, y, x). The models are sampled
at voxel centres with the peak on the central voxel of an odd-sized array and
are normalised to unit sum.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import special

from ._checks import as_psf, as_spacing
from ._profiles import FWHM_PER_SIGMA, profile_fwhm
from .optics import DEFAULT_IMMERSION, DEFAULT_NA, DEFAULT_WAVELENGTH

__all__ = ["gaussian_psf", "widefield_psf", "confocal_psf", "lightsheet_psf", "make_psf", "fwhm", "resolution_um",
           "centre_psf", "crop_psf", "widefield_fwhm", "prepare_psf", "given_psf", "MODELS", "MAX_PSF_HALF"]

#: Largest half-size (voxels) of a model PSF along any axis: a longer default is cut there, with a warning.
MAX_PSF_HALF = 128

log = logging.getLogger(__name__)


def _odd_shape(shape) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be three positive integers (z, y, x), got {shape!r}")
    if any(s % 2 == 0 for s in shape):
        raise ValueError(
            f"PSF shape {shape} must be odd along every axis so the peak sits on a voxel centre; "
            f"use {tuple(s + 1 - s % 2 for s in shape)}")
    return shape  # type: ignore[return-value]


def _coords(n: int, step: float) -> np.ndarray:
    return (np.arange(n) - n // 2) * step


def gaussian_psf(spacing: Sequence[float], *, fwhm_lateral: float, fwhm_axial: float,
                 shape: Sequence[int] | None = None) -> np.ndarray:
    """Anisotropic Gaussian PSF sampled on a voxel grid.

    Parameters
    ----------
    spacing : (dz, dy, dx) floats
        Voxel size in micrometres.
    fwhm_lateral, fwhm_axial : float
        Full widths at half maximum across (y, x) and along z, in micrometres.
    shape : (Z, Y, X) odd ints, optional
        Array shape. Default: odd, covering +-2 FWHM on every axis.

    Returns
    -------
    psf : (Z, Y, X) float32 ndarray
        Point-sampled Gaussian with its peak on the central voxel, unit sum.

    Examples
    --------
    >>> psf = gaussian_psf((0.3, 0.1, 0.1), fwhm_lateral=0.3, fwhm_axial=0.9)
    >>> np.round(fwhm(psf, (0.3, 0.1, 0.1)), 3).tolist()
    [0.9, 0.3, 0.3]
    """
    spacing = as_spacing(spacing)
    for label, v in (("fwhm_lateral", fwhm_lateral), ("fwhm_axial", fwhm_axial)):
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{label} must be a positive number of micrometres, got {v!r}")
    widths = (fwhm_axial, fwhm_lateral, fwhm_lateral)
    if shape is None:
        shape = tuple(2 * min(int(np.ceil(2.0 * w / d)), MAX_PSF_HALF) + 1 for w, d in zip(widths, spacing))
    shape = _odd_shape(shape)
    profiles = []
    for n, d, w in zip(shape, spacing, widths):
        sigma = w / FWHM_PER_SIGMA
        c = _coords(n, d)
        profiles.append(np.exp(-0.5 * (c / sigma) ** 2))
    psf = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    return (psf / psf.sum()).astype(np.float32)


def widefield_fwhm(*, na: float, wavelength: float, n_immersion: float = 1.518) -> tuple[float, float]:
    """Textbook widefield FWHM ``(axial, lateral)`` in micrometres.

    Lateral ``0.51 lambda / NA`` (Airy disc), axial
    ``0.88 lambda / (n - sqrt(n^2 - NA^2))``.
    """
    _check_optics(na, wavelength, n_immersion, n_immersion, 0.0)
    lateral = 0.51 * wavelength / na
    axial = 0.88 * wavelength / (n_immersion - np.sqrt(n_immersion ** 2 - na ** 2))
    return float(axial), float(lateral)


def _check_optics(na, wavelength, n_immersion, n_sample, depth):
    for label, v in (("na", na), ("wavelength", wavelength), ("n_immersion", n_immersion),
                     ("n_sample", n_sample)):
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{label} must be a positive number, got {v!r}")
    if na >= n_immersion:
        raise ValueError(
            f"numerical aperture na={na} must be smaller than the immersion refractive index "
            f"n_immersion={n_immersion} (e.g. NA <= 1.49 for oil n=1.518, < 1.0 for air)")
    if wavelength > 5:
        raise ValueError(
            f"wavelength={wavelength} looks like nanometres; give it in micrometres "
            f"(e.g. {wavelength / 1000:g})")
    if not np.isfinite(depth) or depth < 0:
        raise ValueError(f"depth must be >= 0 micrometres below the coverslip, got {depth!r}")


def widefield_psf(spacing: Sequence[float], *, na: float = DEFAULT_NA, wavelength: float = DEFAULT_WAVELENGTH,
                  n_immersion: float = DEFAULT_IMMERSION, n_sample: float | None = None,
                  depth: float = 0.0, shape: Sequence[int] | None = None,
                  n_pupil: int | None = None) -> np.ndarray:
    """Scalar widefield PSF (Born-Wolf, with Gibson-Lanni depth aberration).

    The intensity at lateral radius ``r`` and defocus ``z`` (micrometres in
    the sample) is

    .. math::

        I(r, z) = \\left| \\int_0^{\\rho_m} J_0(k\\,NA\\,r\\rho)\\,
                 e^{i k z \\sqrt{n_s^2 - NA^2\\rho^2} + i W(\\rho)}\\,\\rho\\,d\\rho \\right|^2

    with ``k = 2 pi / wavelength`` and the depth-induced spherical aberration
    of a bead ``depth`` micrometres below the coverslip, paraxial focal shift
    removed (the simplified Gibson-Lanni model with coverslip and immersion
    at design values):
    ``W = k depth (sqrt(n_s^2 - NA^2 rho^2) - (n_s/n_i) sqrt(n_i^2 - NA^2 rho^2))``.
    Rays beyond the critical angle of the sample (``NA rho > n_s``) do not
    reach far beads and are cut (``rho_m = min(1, n_s / NA)``).

    Parameters
    ----------
    spacing : (dz, dy, dx) floats
        Voxel size in micrometres.
    na : float
        Numerical aperture of the objective, ``0 < na < n_immersion``.
    wavelength : float
        Emission wavelength in micrometres (e.g. 0.52 for GFP).
    n_immersion : float
        Refractive index of the immersion medium (oil 1.518, water 1.333, air 1.0).
    n_sample : float, optional
        Refractive index of the sample; defaults to ``n_immersion`` (no mismatch).
    depth : float
        Depth of the beads below the coverslip in micrometres (aberration
        grows with it when ``n_sample != n_immersion``).
    shape : (Z, Y, X) odd ints, optional
        Default: +-2.5 axial FWHM along z; laterally +-4 lateral FWHM or the
        out-of-focus cone at the last plane, whichever is larger (at most 129 voxels).
    n_pupil : int, optional
        Quadrature nodes across the pupil; default from the largest phase.

    Returns
    -------
    psf : (Z, Y, X) float32 ndarray
        Point-sampled, unit sum, brightest plane in the middle (with depth
        aberration the window follows the shifted focus, so positions are
        those of the bead's image).

    References
    ----------
    Born & Wolf, *Principles of Optics*, ch. 8.8; Gibson & Lanni, JOSA A 8 (1991) 1601.
    """
    spacing = as_spacing(spacing)
    n_sample = n_immersion if n_sample is None else n_sample
    _check_optics(na, wavelength, n_immersion, n_sample, depth)
    dz, dy, dx = spacing
    na_eff = min(na, 0.98 * n_sample)
    fwhm_ax, fwhm_lat = widefield_fwhm(na=na_eff, wavelength=wavelength, n_immersion=n_sample)
    if shape is None:
        # room for the focal shift and spread that depth aberration adds
        extra = 2.0 * depth * abs(1.0 - n_sample / n_immersion)
        hz = int(np.ceil((2.5 * fwhm_ax + extra) / dz))
        if hz > MAX_PSF_HALF:
            log.warning("widefield PSF: %d planes of %g um would be needed; cut to %d (check the spacing)",
                        2 * hz + 1, dz, 2 * MAX_PSF_HALF + 1)
            hz = MAX_PSF_HALF
        sin_t = min(na_eff / n_sample, 0.999)
        cone = hz * dz * sin_t / np.sqrt(1 - sin_t ** 2)
        hy = min(int(np.ceil(max(4 * fwhm_lat, 0.5 * cone) / min(dy, dx))), 64)
        shape = (2 * hz + 1, 2 * hy + 1, 2 * hy + 1)
    shape = _odd_shape(shape)
    k = 2 * np.pi / wavelength
    rho_max = min(1.0, n_sample / na)
    # depth aberration moves the intensity peak away from the paraxial focus:
    # compute extra planes, then keep the window centred on the brightest plane
    pad = int(np.ceil(4.0 * depth * abs(1.0 - n_sample / n_immersion) / dz))
    z = _coords(shape[0] + 2 * pad, dz)
    max_phase = k * max(abs(z).max(), 1e-9) * n_sample + k * depth * abs(n_sample - n_immersion)
    if n_pupil is None:
        n_pupil = int(np.clip(4 * max_phase / np.pi + 64, 64, 4000))
    nodes, weights = np.polynomial.legendre.leggauss(n_pupil)
    rho = 0.5 * rho_max * (nodes + 1)
    w = 0.5 * rho_max * weights * rho
    s_sample = np.sqrt(np.maximum(n_sample ** 2 - (na * rho) ** 2, 0))
    s_imm = np.sqrt(np.maximum(n_immersion ** 2 - (na * rho) ** 2, 0))
    aberration = k * depth * (s_sample - (n_sample / n_immersion) * s_imm)
    pupil = np.exp(1j * (k * z[:, None] * s_sample[None, :] + aberration[None, :])) * w
    # unique radii of the lateral grid, evaluated once each
    yy = _coords(shape[1], dy)[:, None]
    xx = _coords(shape[2], dx)[None, :]
    r = np.sqrt(yy ** 2 + xx ** 2)
    radii, inverse = np.unique(np.round(r, 9), return_inverse=True)
    bessel = special.j0(k * na * radii[:, None] * rho[None, :])
    amplitude = pupil @ bessel.T  # (Z + 2 pad, n_radii)
    intensity = (amplitude.real ** 2 + amplitude.imag ** 2)
    if pad:
        peak = int(np.argmax(intensity[:, 0]))
        start = int(np.clip(peak - shape[0] // 2, 0, 2 * pad))
        intensity = intensity[start:start + shape[0]]
    psf = intensity[:, inverse.reshape(r.shape)]
    psf /= psf.sum()
    return psf.astype(np.float32)


def confocal_psf(spacing: Sequence[float], *, na: float = DEFAULT_NA, wavelength: float = DEFAULT_WAVELENGTH,
                 excitation: float = DEFAULT_WAVELENGTH - 0.04, pinhole_au: float = 1.0,
                 n_immersion: float = DEFAULT_IMMERSION,
                 n_sample: float | None = None, depth: float = 0.0,
                 shape: Sequence[int] | None = None) -> np.ndarray:
    """Point-scanning confocal PSF: excitation PSF times the pinhole-filtered detection PSF.

    Both are :func:`widefield_psf` (same aberration model) on the same grid;
    the detection PSF is convolved plane by plane with the pinhole, a disc
    of ``pinhole_au`` Airy units (one AU = ``1.22 wavelength / na`` across,
    in sample space).

    Parameters
    ----------
    spacing : (dz, dy, dx) floats, micrometres
    na, n_immersion, n_sample, depth
        As in :func:`widefield_psf`.
    wavelength : float
        Emission (detection) wavelength in micrometres.
    excitation : float
        Excitation wavelength in micrometres.

    Defaults are :mod:`restore3d.optics`' (NA 1.1 water, 520 nm emission,
    480 nm excitation).
    pinhole_au : float
        Pinhole diameter in Airy units (0 = a point pinhole).
    shape : (Z, Y, X) odd ints, optional
        Default: the detection PSF's default shape.

    Returns
    -------
    (Z, Y, X) float32 ndarray, unit sum.
    """
    if not np.isfinite(excitation) or excitation <= 0 or excitation > 5:
        raise ValueError(f"excitation must be a wavelength in micrometres (e.g. 0.488), got {excitation!r}")
    if not np.isfinite(pinhole_au) or pinhole_au < 0:
        raise ValueError(f"pinhole_au must be >= 0 Airy units, got {pinhole_au!r}")
    optics = dict(na=na, n_immersion=n_immersion, n_sample=n_sample, depth=depth)
    det = widefield_psf(spacing, wavelength=wavelength, shape=shape, **optics).astype(np.float64)
    exc = widefield_psf(spacing, wavelength=excitation, shape=det.shape, **optics).astype(np.float64)
    if pinhole_au > 0:
        dz, dy, dx = as_spacing(spacing)
        radius = 0.5 * pinhole_au * 1.22 * wavelength / na
        yy = _coords(det.shape[1], dy)[:, None]
        xx = _coords(det.shape[2], dx)[None, :]
        disc = (yy ** 2 + xx ** 2 <= radius ** 2).astype(np.float64)
        disc[det.shape[1] // 2, det.shape[2] // 2] = 1.0
        from scipy.signal import fftconvolve
        det = np.clip(fftconvolve(det, disc[None], mode="same", axes=(1, 2)), 0, None)
    psf = exc * det
    return (psf / psf.sum()).astype(np.float32)


def lightsheet_psf(spacing: Sequence[float], *, na: float = DEFAULT_NA, wavelength: float = DEFAULT_WAVELENGTH,
                   sheet_fwhm: float = 1.0, n_immersion: float = DEFAULT_IMMERSION, n_sample: float | None = None,
                   depth: float = 0.0, shape: Sequence[int] | None = None) -> np.ndarray:
    """Light-sheet PSF: the widefield detection PSF times the sheet's Gaussian profile along z.

    ``sheet_fwhm`` is the sheet's thickness (FWHM, micrometres); the other
    parameters are those of :func:`widefield_psf`. A thin sheet cuts the
    detection PSF's long axial extent, as in selective-plane illumination.
    """
    if not np.isfinite(sheet_fwhm) or sheet_fwhm <= 0:
        raise ValueError(f"sheet_fwhm must be a positive thickness in micrometres, got {sheet_fwhm!r}")
    det = widefield_psf(spacing, na=na, wavelength=wavelength, n_immersion=n_immersion, n_sample=n_sample,
                        depth=depth, shape=shape).astype(np.float64)
    z = _coords(det.shape[0], as_spacing(spacing)[0])
    sheet = np.exp(-0.5 * (z / (sheet_fwhm / FWHM_PER_SIGMA)) ** 2)
    psf = det * sheet[:, None, None]
    return (psf / psf.sum()).astype(np.float32)


_MODELS = {"gaussian": gaussian_psf, "widefield": widefield_psf, "confocal": confocal_psf,
           "lightsheet": lightsheet_psf}

#: Names of the PSF models :func:`make_psf` knows.
MODELS = tuple(_MODELS)


def make_psf(spacing: Sequence[float], *, model: str = "widefield", **params) -> np.ndarray:
    """One front door for the PSF models: ``"widefield"``, ``"confocal"``, ``"lightsheet"`` or ``"gaussian"``.

    ``params`` are forwarded to :func:`widefield_psf`, :func:`confocal_psf`,
    :func:`lightsheet_psf` or :func:`gaussian_psf`.
    """
    try:
        func = _MODELS[model]
    except KeyError:
        raise ValueError(f"unknown PSF model {model!r}; expected one of {sorted(_MODELS)}") from None
    return func(spacing, **params)


def fwhm(psf: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Full width at half maximum of a PSF along (z, y, x), in micrometres.

    Each width is measured on the line profile through the brightest voxel
    (see :func:`restore3d._profiles.profile_fwhm`: exact for Gaussians at any
    sampling, interpolated for other shapes). An axis whose profile does not
    fall to half maximum inside the array gives NaN.

    Parameters
    ----------
    psf : (Z, Y, X) ndarray
        Background-free PSF (any normalisation).
    spacing : (dz, dy, dx) floats
        Voxel size in micrometres.

    Returns
    -------
    widths : (3,) float64 ndarray
        ``(fwhm_z, fwhm_y, fwhm_x)`` in micrometres.
    """
    arr = np.asarray(psf, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(f"psf must be 3D (z, y, x), got shape {arr.shape}")
    spacing = as_spacing(spacing)
    iz, iy, ix = np.unravel_index(int(np.argmax(arr)), arr.shape)
    profiles = (arr[:, iy, ix], arr[iz, :, ix], arr[iz, iy, :])
    centres = (iz, iy, ix)
    return np.array([profile_fwhm(p, c) * d for p, c, d in zip(profiles, centres, spacing)])



def resolution_um(psf: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The PSF's FWHM per axis in micrometres, two voxels where it cannot be measured (distances between beads)."""
    w = fwhm(psf, spacing)
    return np.where(np.isfinite(w), w, 2 * np.asarray(spacing, float))

def centre_psf(psf: np.ndarray) -> np.ndarray:
    """Shift a PSF by whole voxels so its brightest voxel is the array centre.

    Voxels shifted out are dropped and the vacated ones are zero; the result
    keeps the input's shape (which must be odd) and is renormalised to unit sum.
    """
    arr = as_psf(psf, normalize=False)
    _odd_shape(arr.shape)
    peak = np.unravel_index(int(np.argmax(arr)), arr.shape)
    out = np.zeros_like(arr)
    src, dst = [], []
    for p, n in zip(peak, arr.shape):
        shift = n // 2 - p
        src.append(slice(max(0, -shift), n - max(0, shift)))
        dst.append(slice(max(0, shift), n - max(0, -shift)))
    out[tuple(dst)] = arr[tuple(src)]
    return (out / out.sum(dtype=np.float64)).astype(np.float32)


def crop_psf(psf: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Crop a PSF symmetrically about its central voxel to at most ``shape``.

    Axes already smaller than ``shape`` are kept; the result is odd-sized
    and renormalised to unit sum.
    """
    arr = as_psf(psf, normalize=False)
    sl = []
    for n, m in zip(arr.shape, shape):
        m = min(int(m), n)
        m -= 1 - m % 2  # odd
        m = max(m, 1)
        start = n // 2 - m // 2
        sl.append(slice(start, start + m))
    out = arr[tuple(sl)]
    return (out / out.sum(dtype=np.float64)).astype(np.float32)


def prepare_psf(measured: np.ndarray, *, shape: Sequence[int] | None = None,
                background: str | float = "auto", denoise: float | None = 2.0) -> np.ndarray:
    """Turn a measured PSF stack (one bead imaged through z) into a PSF for deconvolution.

    Subtracts the camera offset / background, smooths the faint far field
    (``denoise``), clips negatives, crops a box of ``shape`` centred on the
    brightest voxel and normalises to unit sum.

    Parameters
    ----------
    measured : (Z, Y, X) ndarray
        Raw counts of the bead stack.
    shape : (z, y, x) odd ints, optional
        Box to keep around the peak (clipped to what the stack holds);
        default the whole stack, made odd.
    background : "auto", "none" or float
        ``"auto"``: the median of the stack (a bead fills a tiny part of it);
        or a given level in counts.
    denoise : float or None
        Gaussian sigma in voxels for the far field: where the stack smoothed
        by it is at most one noise sigma above the background, the voxels
        are replaced by their average over that faint region (a normalised
        convolution, so the bright core does not leak into it); the core is
        kept as measured. Clipping the noise of single voxels at zero would
        otherwise add a positive bias to every far-field voxel, which for a
        wide (aberrated, high-NA) PSF adds up to a large share of its light.
        The noise sigma is measured from the voxels below the background
        level. ``None`` or 0: no smoothing.

    Returns
    -------
    (z, y, x) float32 ndarray, odd shape, peak in the middle, unit sum.

    Notes
    -----
    On simulated measurements of the benchmarks' PSFs (``bench_refiner.py``,
    100 photons of background, 5000 photons at the peak) ``denoise=2`` cuts
    the L1 error of a strongly aberrated NA 1.4 PSF (31 x 129 x 129) from
    0.76 to 0.28 and leaves compact PSFs as good or better (0.235 -> 0.215)
    (measured when this option was added; see the history of
    benchmarks/RESULTS.md).
    """
    arr = np.asarray(measured, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(f"measured PSF must be 3D (z, y, x), got shape {arr.shape}")
    if background == "auto":
        level = float(np.median(arr))
    elif background == "none":
        level = 0.0
    elif isinstance(background, (int, float, np.number)):
        level = float(background)
    else:
        raise ValueError(f"background={background!r} is not understood; use 'auto', 'none' or a level in counts")
    if denoise is not None and (not np.isfinite(denoise) or denoise < 0):
        raise ValueError(f"denoise must be a Gaussian sigma >= 0 in voxels or None, got {denoise!r}")
    arr = arr - level
    if denoise:
        arr = _smooth_far_field(arr, float(denoise))
    arr = np.clip(arr, 0, None)
    if arr.max() <= 0:
        raise ValueError("measured PSF has nothing above its background level")
    peak = np.unravel_index(int(np.argmax(arr)), arr.shape)
    want = arr.shape if shape is None else tuple(int(s) for s in shape)
    half = [min(w // 2, p, n - 1 - p) for w, p, n in zip(want, peak, arr.shape)]
    box = arr[tuple(slice(p - h, p + h + 1) for p, h in zip(peak, half))]
    return (box / box.sum()).astype(np.float32)


def _smooth_far_field(arr: np.ndarray, sigma: float) -> np.ndarray:
    """Replace the faint region of a background-free stack by its normalised Gaussian average."""
    from scipy import ndimage

    from ._stats import half_normal_sigma
    below = arr[arr <= 0]
    noise = half_normal_sigma(-below)
    faint = ndimage.gaussian_filter(arr, sigma, mode="nearest") <= noise
    if not faint.any():
        return arr
    w = faint.astype(np.float64)
    num = ndimage.gaussian_filter(arr * w, sigma, mode="nearest")
    den = ndimage.gaussian_filter(w, sigma, mode="nearest")
    out = arr.copy()
    out[faint] = num[faint] / np.maximum(den[faint], 1e-12)
    return out


def given_psf(psf, *, volume_shape: Sequence[int] | None = None, name: str = "psf") -> np.ndarray:
    """A PSF given by the user, checked and centred the way restore3d's own PSFs are.

    The array must be 3D, finite, non-negative and hold a single bright
    spot (a stack of several beads is refused). An even size is padded to
    odd; the peak (sub-voxel, from the log-parabola through the brightest
    voxel along each axis) is moved onto the central voxel by a spline
    shift when it is off by more than a quarter voxel, so deconvolving with
    it does not shift the result; the shift is logged. Unit sum.

    A string or path is read with :func:`restore3d.io.load` and, when its
    border holds a background level, prepared with :func:`prepare_psf`.
    """
    from pathlib import Path

    from ._profiles import profile_peak
    if isinstance(psf, (str, Path)):
        psf = _read_psf_file(Path(psf))
    arr = as_psf(psf, name=name, normalize=False).astype(np.float64)
    pad = [(0, 1 - n % 2) for n in arr.shape]
    if any(p for _, p in pad):
        log.info("%s: even size %s padded to odd so its centre is a voxel", name, arr.shape)
        arr = np.pad(arr, pad)
    _refuse_several_spots(arr, name)
    peak = np.unravel_index(int(np.argmax(arr)), arr.shape)
    sub = []
    for axis in range(3):
        line = [peak[k] if k != axis else slice(None) for k in range(3)]
        sub.append(profile_peak(arr[tuple(line)], peak[axis])[0])
    shift = np.asarray(arr.shape) // 2 - np.asarray(sub)
    if np.any(np.abs(shift) > 0.25):
        from scipy import ndimage
        log.info("%s: peak at %s, moved by %s voxels onto the centre %s", name, np.round(sub, 2).tolist(),
                 np.round(shift, 2).tolist(), [n // 2 for n in arr.shape])
        arr = np.clip(ndimage.shift(arr, shift, order=3, mode="constant"), 0, None)
    out = as_psf(arr.astype(np.float32), name=name, volume_shape=volume_shape)
    return out


def _refuse_several_spots(arr, name):
    """A PSF is one bead: refuse arrays with several separate bright spots."""
    from scipy import ndimage
    smooth = ndimage.gaussian_filter(arr, 1.0)
    labels, n = ndimage.label(smooth > 0.3 * smooth.max())
    if n > 1:
        peaks = ndimage.maximum(smooth, labels, np.arange(1, n + 1))
        bright = int(np.sum(np.asarray(peaks) > 0.3 * smooth.max()))
        if bright > 1:
            raise ValueError(f"{name} holds {bright} separate bright spots, like a stack of several beads; "
                             "a PSF is the image of one bead: crop one isolated bead (or let EstimatePSF "
                             "average the beads of your volume)")


def _read_psf_file(path):
    from . import io
    arr, _ = io.load(path)
    border = np.concatenate([arr[[0, -1]].ravel(), arr[:, [0, -1]].ravel(), arr[:, :, [0, -1]].ravel()])
    if float(np.median(border)) > 1e-3 * float(arr.max()):
        log.info("%s: removing the PSF stack's background level %.3g", path, float(np.median(arr)))
        return prepare_psf(arr)
    return arr

