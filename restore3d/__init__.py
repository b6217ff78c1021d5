"""restore3d: restore 3D microscopy volumes of luminous beads.

Removes ambient light and the axial stretching of the lens so beads come out
round on a black background: classical stages (background subtraction, PSF
estimation, Richardson-Lucy deconvolution) chained with a small 3D CNN
refiner, each stage swappable and measurable. Arrays are float32 (z, y, x);
spacings are (dz, dy, dx) in micrometres.
"""
from . import background, deconvolution, detect, io, metrics, psf, psf_estimation, simulate
from ._version import __version__
from .pipeline import Pipeline, Result, RunContext, Stage
from .stages import BlindDeconvolution, EstimatePSF, RichardsonLucy, SubtractBackground

__all__ = ["Pipeline", "Result", "RunContext", "Stage", "SubtractBackground", "EstimatePSF",
           "RichardsonLucy", "BlindDeconvolution",
           "background", "deconvolution", "detect", "io", "metrics", "psf", "psf_estimation",
           "simulate", "__version__"]
