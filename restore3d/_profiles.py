"""Width of a 1D peak profile, shared by PSF and bead measurements."""
from __future__ import annotations

import numpy as np

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _log_quadratic_crossing(xs, ys, level, lo, hi):
    """Where the parabola through (xs, log ys) reaches log(level), within [lo, hi] (three samples).

    Where the samples at ``lo`` and ``hi`` lie on either side of the level
    (the usual case) the parabola crosses it once in between: that root comes
    in closed form (divided differences about the middle sample, the
    quadratic formula), as ``np.polyfit`` and ``np.roots`` give it to 1e-8 of
    a sample in a tenth of their time. Otherwise (a lopsided peak measured
    above its highest sample) the first root ``np.roots`` lists, as before.
    """
    if np.any(ys <= 0):
        return None
    x0, x1, x2 = (float(v) for v in xs)
    at = {x0: float(ys[0]), x1: float(ys[1]), x2: float(ys[2])}
    if float(lo) not in at or float(hi) not in at or (at[float(lo)] - level) * (at[float(hi)] - level) > 0:
        return _polyfit_crossing(xs, ys, level, lo, hi)
    y0, y1, y2 = (float(np.log(v)) for v in ys)
    d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
    a = (d12 - d01) / (x2 - x0)
    b = d01 + a * (x1 - x0)  # the slope at x1: the parabola is a u^2 + b u + c in u = x - x1
    c = y1 - float(np.log(level))
    if abs(a) <= 1e-12 * max(abs(b), abs(c), 1e-300):
        roots = [-c / b] if b != 0 else []
    else:
        disc = b * b - 4.0 * a * c
        if disc < 0:
            return _polyfit_crossing(xs, ys, level, lo, hi)
        q = -0.5 * (b + np.copysign(np.sqrt(disc), b))  # no cancellation between b and the root
        roots = [q / a] + ([c / q] if q != 0 else [])
    found = [u + x1 for u in roots if lo - 1e-9 <= u + x1 <= hi + 1e-9]
    if len(found) != 1:  # (round-off at an end of the range)
        return _polyfit_crossing(xs, ys, level, lo, hi)
    return float(found[0])


def _polyfit_crossing(xs, ys, level, lo, hi):
    coef = np.polyfit(xs, np.log(ys), 2)
    coef[-1] -= np.log(level)
    roots = np.roots(coef)
    roots = roots[np.isreal(roots)].real
    roots = roots[(roots >= lo - 1e-9) & (roots <= hi + 1e-9)]
    if roots.size == 0:
        return None
    return float(roots[0])


def profile_peak(profile: np.ndarray, index: int | None = None) -> tuple[float, float]:
    """Sub-sample position and height of a peak from the log-parabola through 3 samples.

    Exact for a sampled Gaussian wherever its centre falls between samples.
    Returns ``(position, height)`` in samples; falls back to the sample itself
    at an edge or when a neighbour is not positive.
    """
    p = np.asarray(profile, dtype=np.float64)
    i = int(np.argmax(p)) if index is None else int(index)
    if 0 < i < p.size - 1 and p[i - 1] > 0 and p[i] > 0 and p[i + 1] > 0:
        a, b, c = np.log(p[i - 1 : i + 2])
        curv = a - 2.0 * b + c
        if curv < 0:
            delta = 0.5 * (a - c) / curv
            if abs(delta) <= 1.0:
                return i + delta, float(np.exp(b - 0.125 * (a - c) ** 2 / curv))
    return float(i), float(p[i])


def profile_fwhm(profile: np.ndarray, index: int | None = None) -> float:
    """Full width at half maximum of a single peak, in samples.

    The peak height comes from :func:`profile_peak`; each half-maximum
    crossing is found on the parabola through the logarithm of the three
    samples around it (the two that bracket it and the next one inwards),
    which is exact for Gaussian profiles at any sampling, including
    undersampled ones where only the peak sample is above half maximum.
    Falls back to linear interpolation where a sample is not positive.

    A lopsided peak (one neighbour close to the peak, the other close to
    zero, e.g. a bead lighting one plane and barely the next), whose
    log-parabola puts the maximum over twice its highest sample and whose
    crossings would then fall on the wrong sides, is measured at half its
    highest sample instead.

    Returns NaN when the profile does not fall below half maximum on both
    sides (the peak is wider than the profile), has no positive peak or
    gives no positive width.
    """
    p = np.asarray(profile, dtype=np.float64)
    i0 = int(np.argmax(p)) if index is None else int(index)
    _, height = profile_peak(p, i0)
    if not np.isfinite(height) or height <= 0:
        return float("nan")
    width = _width_at(p, i0, 0.5 * height)
    if not width > 0 and 0.5 * height > p[i0] > 0:
        # a lopsided peak (one neighbour near the peak, the other near zero): the log-parabola's height, over
        # twice the peak sample, is not a Gaussian's; measure at half the peak sample instead
        width = _width_at(p, i0, 0.5 * p[i0])
    return float(width) if width > 0 else float("nan")


def _width_at(p, i0, half):
    """Distance between the crossings of ``half`` on either side of sample ``i0`` (NaN if one is missing)."""
    n = p.size

    def crossing(step):
        j = i0 + step
        while 0 <= j < n and p[j] >= half:
            j += step
        if not 0 <= j < n:
            return None
        inner = j - step  # last sample at or above half maximum
        third = inner - step
        if not 0 <= third < n:
            third = j + step if 0 <= j + step < n else None
        lo, hi = sorted((inner, j))
        if third is not None:
            xs = np.array(sorted((third, inner, j)), dtype=float)
            x = _log_quadratic_crossing(xs, p[xs.astype(int)], half, lo, hi)
            if x is not None:
                return x
        # linear interpolation between the bracketing samples
        t = (p[inner] - half) / (p[inner] - p[j])
        return inner + step * t

    right = crossing(+1)
    left = crossing(-1)
    if right is None or left is None:
        return float("nan")
    return right - left
