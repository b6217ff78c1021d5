"""What the napari plugin does, as plain functions on arrays and layer data (no Qt, no viewer).

The widget (:mod:`restore3d.napari._widget`) only collects options and
shows results; everything it computes happens here, so it is tested
without a display. Layer data follow napari's convention: ``(data,
attributes, layer_type)`` tuples, ``scale`` in micrometres per voxel,
(z, y, x).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Generator

import numpy as np

from ..pipeline import Pipeline, Result

__all__ = ["RestoreOptions", "build_pipeline", "pipeline_label", "restore_steps", "result_layers",
           "status_line", "volume_layers", "one_line", "layer_spacing"]


@dataclasses.dataclass
class RestoreOptions:
    """The restore widget's choices.

    background : "wavelet", "rolling_ball", "percentile" or "none"
    psf : "estimate" (from the volume's beads) or "layer" (the PSF passed to
        :func:`restore_steps`, e.g. a measured PSF layer)
    iterations : Richardson-Lucy iterations (0: no deconvolution)
    refiner : "pretrained-render" (the default), "pretrained" (:data:`restore3d.refiner.SHIPPED`), "none"
        or a checkpoint path (.json / .pt)
    fit_beads : add :class:`~restore3d.FitBeads` (a model of every bead) after the other stages
    """

    background: str = "wavelet"
    psf: str = "estimate"
    iterations: int = 10
    refiner: str = "pretrained-render"
    fit_beads: bool = False


def build_pipeline(options: RestoreOptions) -> Pipeline:
    """The pipeline the options describe; ``ValueError`` names a wrong choice."""
    from ..background import METHODS
    from ..refiner import SHIPPED, Refiner
    from ..stages import EstimatePSF, FitBeads, RemoveUnsupported, RichardsonLucy, SubtractBackground
    if options.background not in METHODS + ("none",):
        raise ValueError(f"background must be one of {METHODS + ('none',)}, got {options.background!r}")
    if options.psf not in ("estimate", "layer"):
        raise ValueError(f"psf must be 'estimate' or 'layer', got {options.psf!r}")
    if isinstance(options.iterations, bool) or int(options.iterations) != options.iterations \
            or options.iterations < 0:
        raise ValueError(f"iterations must be a whole number >= 0, got {options.iterations!r}")
    steps = []
    if options.background != "none":
        steps.append(("background", SubtractBackground(method=options.background)))
    if options.psf == "estimate":
        steps.append(("psf", EstimatePSF()))
    if options.iterations > 0:
        steps.append(("rl", RichardsonLucy(iterations=int(options.iterations))))
    refiner = str(options.refiner or "none")
    if refiner in SHIPPED:
        stage = Refiner.pretrained(refiner)
        steps.append(("refiner", stage))
        if stage.renders:  # as default_pipeline: the spots dim data do not hold removed
            steps.append(("support", RemoveUnsupported()))
    elif refiner != "none":
        if not Path(refiner).exists():
            raise ValueError(f"refiner checkpoint {refiner}: no such file; choose a .json/.pt checkpoint "
                             "written by 'restore3d train', or 'pretrained' / 'pretrained-render'")
        steps.append(("refiner", Refiner.load(refiner)))
    if options.fit_beads:
        steps.append(("fit", FitBeads()))
    if not steps:
        raise ValueError("nothing to run: choose at least one stage")
    return Pipeline(steps)


def pipeline_label(pipeline: Pipeline) -> str:
    """A short name for a pipeline's result layer: its steps joined by arrows (``background>psf>rl(10)``)."""
    parts = []
    for name, stage in pipeline.steps:
        if stage == "passthrough":
            continue
        if name == "rl" and hasattr(stage, "iterations"):
            parts.append(f"rl({stage.iterations})")
        else:
            parts.append(name)
    return ">".join(parts)


def layer_spacing(scale) -> tuple[float, float, float]:
    """The (dz, dy, dx) micrometres of a layer's ``scale`` (its last three entries)."""
    scale = tuple(float(s) for s in np.ravel(scale))
    if len(scale) < 3:
        raise ValueError(f"the image layer must be 3D (z, y, x), its scale is {scale}")
    return scale[-3:]


def restore_steps(image, spacing, options: RestoreOptions | Pipeline, *, psf=None, seed: int = 0
                  ) -> Generator[tuple[str, int, int], None, Result]:
    """Run the restoration one step at a time (see :meth:`Pipeline.run_steps`).

    ``options`` is :class:`RestoreOptions` or a ready :class:`Pipeline`
    (one loaded from JSON). Yields ``(step, index, count)`` before each
    step and returns the :class:`~restore3d.pipeline.Result`; closing the
    generator cancels the run between steps. Every input is checked on the
    first ``next()``, before any work.
    """
    pipeline = options if isinstance(options, Pipeline) else build_pipeline(options)
    psf_arr = None
    if isinstance(options, RestoreOptions) and options.psf == "layer":
        if psf is None:
            raise ValueError("PSF 'layer' chosen but no PSF layer given: choose the measured PSF's layer, "
                             "or 'estimate'")
        psf_arr = np.asarray(psf, np.float32)
    elif psf is not None:
        psf_arr = np.asarray(psf, np.float32)
    volume = np.asarray(image)
    if volume.ndim != 3:
        raise ValueError(f"the image layer must be a 3D stack (z, y, x), got shape {volume.shape}")
    return (yield from pipeline.run_steps(volume, spacing=spacing, psf=psf_arr, seed=seed,
                                          memory_budget="auto"))


def _psf_name(psf, spacing) -> tuple[str, list]:
    from ..psf import fwhm
    widths = [float(w) for w in fwhm(psf, spacing)]
    text = "PSF FWHM z/y/x " + " / ".join("-" if not np.isfinite(w) else f"{w:.2f}" for w in widths) + " um"
    return text, widths


def result_layers(result: Result, source_name: str, pipeline: Pipeline | None = None) -> list[tuple]:
    """Layer data for a result: the restored image, its PSF with its FWHM per axis, the beads as points.

    The restored layer is named ``"<source> restored (<pipeline>)"`` and has
    the source's spacing as ``scale``; its metadata holds the pipeline's
    JSON dictionary, the stage reports and a one-line status (the
    refiner's self-check when it ran).
    """
    spacing = tuple(float(s) for s in result.spacing)
    spec = result.pipeline or (pipeline.to_dict() if pipeline is not None else {})
    label = pipeline_label(pipeline if pipeline is not None else Pipeline.from_dict(spec))
    status = status_line(result)
    layers = [(np.asarray(result.volume), {
        "name": f"{source_name} restored ({label})", "scale": spacing, "colormap": "magma",
        "blending": "additive",
        "metadata": {"restore3d_pipeline": spec, "restore3d_info": _jsonable(result.info),
                     "restore3d_status": status, "restore3d_spacing": spacing}}, "image")]
    if result.psf is not None:
        text, widths = _psf_name(result.psf, spacing)
        layers.append((np.asarray(result.psf), {
            "name": f"{source_name} PSF ({text})", "scale": spacing, "colormap": "viridis",
            "metadata": {"fwhm_um": widths}}, "image"))
    beads = result.beads
    if beads is not None and len(beads):
        points = np.stack([beads["z"], beads["y"], beads["x"]], axis=1)
        features = {k: np.asarray(beads[k]) for k in ("flux", "fwhm_z", "fwhm_y", "fwhm_x", "sigma_x_um",
                                                      "sigma_z_um", "score")}
        layers.append((points, {"name": f"{source_name} beads ({len(beads)})", "scale": spacing,
                                "features": features, "size": 4, "face_color": "transparent",
                                "border_color": "cyan", "out_of_slice_display": True}, "points"))
    return layers


def status_line(result: Result) -> str:
    """One line for the viewer's status: how long it took, and the refiner's self-check when it ran."""
    parts = [f"restored in {result.timings.get('total', float('nan')):.1f} s"]
    chunked = result.info.get("chunked")
    if chunked:
        parts.append(f"chunk-wise ({chunked['n_chunks']} chunks, over the memory budget)")
    for name, report in result.info.items():
        if isinstance(report, dict) and "self_check" in report:
            check = report["self_check"]
            if check.get("shape_passed", True):
                parts.append(f"{name} self-check: beads round (roundness {check['roundness']:.2f}, "
                             f"width {check['width']:.2f})")
            else:
                parts.append(f"{name} self-check FAILED: " + "; ".join(check.get("failed", []))
                             + " - try the classical stages (refiner: none) or 'restore3d train --adapt-to'")
    return "; ".join(parts)


def volume_layers(path, *, axes: str | None = None) -> list[tuple]:
    """Layer data for a file :mod:`restore3d.io` reads: one image layer with ``scale`` = spacing (um).

    A file without a stored voxel size opens with scale 1 and says so in
    the layer's metadata (``restore3d_spacing`` None): give the spacing in
    the restore widget.
    """
    from .. import io
    loaded = io.load_file(path, axes=axes)
    scale = loaded.spacing if loaded.spacing is not None else (1.0, 1.0, 1.0)
    return [(loaded.volume, {"name": Path(path).name, "scale": tuple(float(s) for s in scale),
                             "metadata": {"restore3d_spacing": loaded.spacing, "restore3d_axes": loaded.axes,
                                          "restore3d_variable": loaded.variable, "source": str(path)}},
             "image")]


def one_line(exc: BaseException) -> str:
    """The one-line message the CLI prints for an error (its first line; the type when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _jsonable(obj):
    """The stage reports with arrays dropped (layer metadata stays small and printable)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not isinstance(v, np.ndarray)}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
