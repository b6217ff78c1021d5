"""The one set of default optics: what restore3d assumes when a PSF model is asked for without them.

A water-immersion objective of NA 1.1 imaging green emission (520 nm), the
widefield microscope of the built-in demo and of the simulations. Every PSF
model (:func:`restore3d.psf.make_psf`), the simulator and the command line's
defaults read these values; pass your own wherever they differ.
"""
from __future__ import annotations

__all__ = ["DEFAULT_OPTICS", "DEFAULT_NA", "DEFAULT_WAVELENGTH", "DEFAULT_IMMERSION"]

DEFAULT_NA = 1.1
DEFAULT_WAVELENGTH = 0.52  # micrometres, emission
DEFAULT_IMMERSION = 1.333  # water

#: The default PSF model specification (a dict for :func:`restore3d.psf.make_psf`).
DEFAULT_OPTICS = {"model": "widefield", "na": DEFAULT_NA, "wavelength": DEFAULT_WAVELENGTH,
                  "n_immersion": DEFAULT_IMMERSION}
