"""The bead table: one structured array type for simulated truth, detections and fits.

Every table restore3d makes or reads has the columns of :data:`BEAD_DTYPE`;
a producer fills what it knows and leaves the rest NaN (numbers) or at the
defaults below (flags). Positions are in voxels of the volume (z, y, x,
sub-voxel) and in micrometres (``*_um``).

Columns
-------
z, y, x, z_um, y_um, x_um
    Position.
flux
    Light of the bead (photons for a simulation's truth; the volume's units
    summed over the PSF for a fit).
intensity, peak, background, score
    Detection measurements: light in the window above the local background,
    peak height above it, that local background (a fit's background per
    voxel), detection score (smoothed peak height; a fit's significance).
fwhm_z, fwhm_y, fwhm_x
    Widths in micrometres.
sigma_z_um, sigma_y_um, sigma_x_um, sigma_flux, deviance
    A fit's Cramer-Rao bounds and Poisson deviance per degree of freedom.
inside
    The bead lies inside the stack (False for a simulation's margin beads).
edge, saturated, merged
    A fit's flags: at the volume's edge, saturated, unresolved neighbours.
group
    A fit's joint-fit group (-1 when not fitted).
"""
from __future__ import annotations

import numpy as np

__all__ = ["BEAD_DTYPE", "new_table", "set_positions"]

_FLOAT_FIELDS = ("z", "y", "x", "z_um", "y_um", "x_um", "flux", "intensity", "peak", "background", "score",
                 "fwhm_z", "fwhm_y", "fwhm_x", "sigma_z_um", "sigma_y_um", "sigma_x_um", "sigma_flux",
                 "deviance")

#: The one bead-table type (see the module docstring for the columns).
BEAD_DTYPE = np.dtype([(f, "f8") for f in _FLOAT_FIELDS]
                      + [("inside", "?"), ("edge", "?"), ("saturated", "?"), ("merged", "?"), ("group", "i8")])


def new_table(n: int) -> np.ndarray:
    """``n`` empty rows: numbers NaN, ``inside`` True, other flags False, ``group`` -1."""
    table = np.zeros(int(n), BEAD_DTYPE)
    for f in _FLOAT_FIELDS:
        table[f] = np.nan
    table["inside"] = True
    table["group"] = -1
    return table


def set_positions(table: np.ndarray, positions, spacing) -> np.ndarray:
    """Fill ``z, y, x`` (voxels) and ``*_um`` from an (N, 3) array and the spacing; returns the table."""
    p = np.asarray(positions, float).reshape(-1, 3)
    for a, ax in enumerate("zyx"):
        table[ax] = p[:, a]
        table[ax + "_um"] = p[:, a] * float(spacing[a])
    return table
