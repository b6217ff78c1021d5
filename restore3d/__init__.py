"""restore3d: restore 3D microscopy volumes of luminous beads.

Removes ambient light and the axial stretching of the lens so beads come out
round on a black background: classical stages (background subtraction, PSF
estimation, Richardson-Lucy deconvolution) chained with a small 3D CNN
refiner, each stage swappable and measurable. Arrays are float32 (z, y, x);
spacings are (dz, dy, dx) in micrometres.
"""
from . import background, cleanup, deconvolution, detect, fitting, io, metrics, psf, psf_estimation, simulate
from ._version import __version__
from .pipeline import Pipeline, Result, RunContext, Stage
from .presets import classical_stages, default_pipeline
from .refiner import Refiner
from .stages import (BlindDeconvolution, EstimatePSF, FitBeads, RemoveSpecks, RemoveUnsupported, RichardsonLucy,
                     SubtractBackground)

__all__ = ["Pipeline", "Result", "RunContext", "Stage", "SubtractBackground", "EstimatePSF",
           "RichardsonLucy", "BlindDeconvolution", "FitBeads", "RemoveSpecks", "RemoveUnsupported", "Refiner",
           "default_pipeline",
           "classical_stages",
           "background", "cleanup", "deconvolution", "detect", "fitting", "io", "metrics", "psf", "psf_estimation",
           "simulate", "__version__"]
