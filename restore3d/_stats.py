"""Robust statistics shared by every module: one home for the median absolute deviation.

``mad_sigma`` is the standard deviation a normal sample with the same
median absolute deviation would have (1.4826 x MAD); ``half_normal_sigma``
the same for the magnitudes of a one-sided sample (|x| of zero-mean noise:
median / 0.6745). Noise levels of volumes build on these
(:func:`restore3d.background.estimate_noise`, :func:`restore3d.detect.robust_sigma`).
"""
from __future__ import annotations

import numpy as np

__all__ = ["mad_sigma", "half_normal_sigma", "MAD_TO_SIGMA"]

#: 1 / Phi^-1(3/4): a normal distribution's standard deviation over its median absolute deviation.
MAD_TO_SIGMA = 1.4826


def mad_sigma(values, center: float | None = None) -> float:
    """``1.4826 * median(|values - center|)`` (``center`` default: the median); 0 for no values."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        return 0.0
    c = float(np.median(v)) if center is None else float(center)
    return MAD_TO_SIGMA * float(np.median(np.abs(v - c)))


def half_normal_sigma(magnitudes) -> float:
    """Standard deviation of zero-mean normal noise from samples of its magnitude (``median / 0.6745``)."""
    m = np.asarray(magnitudes, np.float64).ravel()
    return MAD_TO_SIGMA * float(np.median(m)) if m.size else 0.0


def intensity_gain(vol) -> float:
    """A power of two that brings a volume's values near 10^3 when they are extreme (exact in float32).

    Stages guard divisions with small absolute floors; a volume in units that
    make every value tiny (or huge) would meet them everywhere.
    """
    top = float(np.abs(vol).max())
    if top == 0.0 or 1e-2 <= top <= 1e8:
        return 1.0
    return float(2.0 ** int(np.round(np.log2(1024.0 / top))))
