"""Validation and dtype policy shared by every public function.

One place decides what a valid volume, spacing and PSF are, so every entry
point rejects bad input with the same clear ``ValueError``.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

__all__ = ["as_volume", "as_spacing", "as_psf", "as_restoration", "as_rng", "as_device", "check_voxel_spacing",
           "check_restorable", "SPACING_RANGE_UM", "MIN_SHAPE"]

#: Voxel sizes (micrometres) a light microscope records beads with; outside, the spacing is a mistake
#: (pixels taken for micrometres, nanometres for micrometres) and the work would not fit in memory.
SPACING_RANGE_UM = (0.005, 20.0)

#: The smallest volume restore3d restores: planes, and pixels along y and x.
MIN_SHAPE = (3, 8, 8)


def is_real_dtype(dtype) -> bool:
    """Integers or floats (not bool, complex, strings or objects): what a volume may hold."""
    dtype = np.dtype(dtype)
    return dtype != bool and (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating))


def as_volume(volume, *, name: str = "volume", copy: bool = False,
              allow_non_finite: bool = False) -> np.ndarray:
    """Return ``volume`` as a C-contiguous float32 (z, y, x) array.

    Parameters
    ----------
    volume : array_like, shape (Z, Y, X)
        Real-valued numeric data. Integers are converted to float32,
        float64 is converted to float32.
    name : str
        Name used in error messages.
    copy : bool
        Always return a new array (never a view of the caller's data).
    allow_non_finite : bool
        Skip the NaN/Inf check (for callers that handle it themselves).

    Raises
    ------
    ValueError
        If the input is not 3D, is empty, has a non-numeric dtype or holds
        NaN/Inf values.
    """
    if isinstance(volume, np.ndarray):
        arr = volume
    else:
        try:
            arr = np.asarray(volume)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise ValueError(f"{name} could not be converted to an array: {exc}") from exc
    if not is_real_dtype(arr.dtype):
        raise ValueError(
            f"{name} has dtype {arr.dtype}, expected real numbers (integer or float); "
            "convert it with np.asarray(..., dtype=np.float32)")
    if arr.ndim != 3:
        raise ValueError(
            f"{name} must be 3D with axes (z, y, x), got {arr.ndim}D with shape {arr.shape}; "
            "stack 2D planes along a first axis, or select one channel/time point of 4D data")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); every axis needs at least one voxel")
    out = np.array(arr, dtype=np.float32, copy=copy, order="C") if copy else \
        np.ascontiguousarray(arr, dtype=np.float32)
    if not allow_non_finite and not np.isfinite(out).all():
        n_bad = int(out.size - np.count_nonzero(np.isfinite(out)))
        raise ValueError(
            f"{name} contains {n_bad} NaN or Inf values; replace them (e.g. np.nan_to_num) "
            "or mask them before restoring")
    return out


def as_spacing(spacing, *, name: str = "spacing") -> tuple[float, float, float]:
    """Validate a voxel spacing ``(dz, dy, dx)`` in micrometres.

    Raises
    ------
    ValueError
        If spacing is missing, does not have three entries, or an entry is not
        a positive finite number.
    """
    if spacing is None:
        raise ValueError(
            f"{name} is required: pass the voxel size (dz, dy, dx) in micrometres, "
            "e.g. spacing=(0.3, 0.1, 0.1)")
    if isinstance(spacing, numbers.Number):
        raise ValueError(
            f"{name} must be three numbers (dz, dy, dx) in micrometres, got the single "
            f"number {spacing!r}; for isotropic voxels pass ({spacing}, {spacing}, {spacing})")
    try:
        values = [float(v) for v in spacing]
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must be three numbers (dz, dy, dx) in micrometres, got {spacing!r}") from exc
    if len(values) != 3:
        raise ValueError(
            f"{name} must have 3 entries (dz, dy, dx) in micrometres, got {len(values)}: {spacing!r}")
    for axis, v in zip("zyx", values):
        if not np.isfinite(v) or v <= 0:
            raise ValueError(
                f"{name} d{axis} must be a positive finite number of micrometres, got {v!r}")
    return tuple(values)  # type: ignore[return-value]


def as_psf(psf, *, name: str = "psf", volume_shape: Sequence[int] | None = None,
           normalize: bool = True) -> np.ndarray:
    """Validate a PSF array: 3D, finite, non-negative after rounding, positive sum.

    The PSF is returned as float32, normalised to unit sum when ``normalize``.
    When ``volume_shape`` is given, a PSF larger than the volume along any axis
    is rejected.
    """
    arr = as_volume(psf, name=name)
    if arr.min() < -1e-3 * max(float(arr.max()), 0.0):
        raise ValueError(
            f"{name} has negative values (min {arr.min():.3g}, max {arr.max():.3g}); "
            "subtract the background so it is >= 0, or clip it")
    arr = np.clip(arr, 0, None)
    total = float(arr.sum(dtype=np.float64))
    if total <= 0:
        raise ValueError(f"{name} sums to {total}; a PSF needs positive values")
    if volume_shape is not None:
        too_big = [f"{ax}: {p} > {v}" for ax, p, v in zip("zyx", arr.shape, volume_shape) if p > v]
        if too_big:
            raise ValueError(
                f"{name} shape {arr.shape} is larger than the volume {tuple(volume_shape)} "
                f"({', '.join(too_big)}); crop the PSF around its peak to at most the volume size")
    if normalize:
        arr = (arr / np.float32(total)).astype(np.float32)
    return arr


def as_restoration(restored, data, psf, spacing):
    """``(restored, data, psf, spacing)`` checked for comparing a restoration with its data through the PSF."""
    res = as_volume(restored, name="restored")
    dat = as_volume(data, name="data")
    if res.shape != dat.shape:
        raise ValueError(f"restored shape {res.shape} differs from data shape {dat.shape}")
    return res, dat, as_psf(psf), as_spacing(spacing)


def as_rng(seed) -> np.random.Generator:
    """Return a ``numpy.random.Generator`` from a seed, a Generator or None."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool)
                             or not isinstance(seed, (numbers.Integral, np.random.SeedSequence))):
        raise ValueError(f"seed must be an integer >= 0, a numpy Generator or None, got {seed!r}")
    if isinstance(seed, numbers.Integral) and seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return np.random.default_rng(seed)


def check_voxel_spacing(spacing, *, name: str = "spacing") -> tuple[float, float, float]:
    """:func:`as_spacing`, and each size within :data:`SPACING_RANGE_UM` (a plausible microscope)."""
    values = as_spacing(spacing, name=name)
    lo, hi = SPACING_RANGE_UM
    bad = [f"d{a}={v:g}" for a, v in zip("zyx", values) if not lo <= v <= hi]
    if bad:
        raise ValueError(
            f"{name} {values} is not a light microscope's voxel size ({', '.join(bad)} outside {lo}-{hi} um): "
            "give it in micrometres (e.g. (0.3, 0.1, 0.1)); a file in pixel units needs --spacing")
    return values


def check_restorable(shape, *, name: str = "volume") -> None:
    """Refuse volumes too small to hold a bead and its surroundings (:data:`MIN_SHAPE`)."""
    small = [f"{n} {a}" for n, a, m in zip(shape, ("planes", "rows", "columns"), MIN_SHAPE) if n < m]
    if small:
        raise ValueError(
            f"{name} of shape {tuple(shape)} is too small to restore ({', '.join(small)}); restore3d needs at "
            f"least {MIN_SHAPE[0]} planes of {MIN_SHAPE[1]} x {MIN_SHAPE[2]} pixels around the beads")


def as_device(device) -> str | None:
    """Validate a torch device name (None, "cpu", "cuda", "cuda:N") and that it is available, before work."""
    if device is None:
        return None
    text = str(device).strip().lower()
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if kind == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but this machine has no usable CUDA GPU "
                             "(or this PyTorch build has no CUDA); use device='cpu'")
        if index and int(index) >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return text
