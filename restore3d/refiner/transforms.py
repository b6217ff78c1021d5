"""What the refiner network's input and output mean: the transforms around it.

The restoration target is every bead blurred by an isotropic Gaussian whose
FWHM is the PSF's lateral FWHM (DESIGN.md). A refiner whose checkpoint says
``output_transform = "render"`` predicts the compact bead *object* and this
module renders the target's Gaussian after it, analytically, on the
volume's own grid: the result cannot be narrower than the target along any
axis, so beads cannot come out flattened whatever the sampling, and the
network's task (make each bead compact) does not depend on the voxel size.
``input_transform = "target_blur"`` (earlier checkpoints) renders the
Richardson-Lucy output at the target resolution before the network.

``output_transform = "render_grid"`` is ``"render"`` for a refiner on a
working grid (:mod:`restore3d.refiner.grid`) with the kernel narrowed by
the grid's own blur: an object on voxels of ``h`` um holds a bead between
two voxels as two values, which adds ``t (1 - t) h^2`` to its variance
(``h^2 / 6`` on average over the bead's sub-voxel position ``t``). The
kernel's variance is the target's minus that, per axis (minus the
coarser of the working and the volume's step at inference, where the
object is brought back to the volume's grid), so beads come out at the
target's FWHM on average instead of about 1.1x wider at two voxels per
FWHM.

Inference and training share these functions; nothing here imports the
training code.
"""
from __future__ import annotations

import numpy as np

from ..target import TARGET_TRUNCATE, lateral_fwhm, target_blur, target_sigma

__all__ = ["INPUT_TRANSFORMS", "OUTPUT_TRANSFORMS", "apply_input_transform", "apply_output_transform",
           "render_torch", "extra_halo", "render_sigma", "output_kernel_um", "RENDERING"]

INPUT_TRANSFORMS = (None, "target_blur")
OUTPUT_TRANSFORMS = (None, "render", "render_grid")
#: Output transforms that render the target's kernel after the network.
RENDERING = ("render", "render_grid")


def render_sigma(fwhm_um: float, spacing, step_um=None) -> np.ndarray:
    """Per-axis sigma (voxels of ``spacing``) of the kernel rendered after the network.

    The target's sigma, or with ``step_um`` (the grid steps the object was
    made on, um per axis) the target's variance minus ``step^2 / 6`` (the
    average blur of a point held by two voxels), at least half the target's
    sigma.
    """
    sigma_um = target_sigma(np.ones(3), fwhm_um)
    if step_um is not None:
        var = sigma_um ** 2 - np.asarray(step_um, float) ** 2 / 6.0
        sigma_um = np.sqrt(np.maximum(var, 0.25 * sigma_um ** 2))
    return sigma_um / np.asarray(spacing, float)

def _needs_psf(psf, what):
    if psf is None:
        raise ValueError(f"this refiner {what} and needs the PSF of the preceding stages: run it after "
                         "EstimatePSF (or pass psf= to the run)")


def _blurred(volume, spacing, transform, psf, *, known, kind, what):
    """``volume`` itself (no transform) or blurred by the target's kernel (the one transform of ``known``)."""
    if transform is None:
        return volume
    if transform != known[1]:
        raise ValueError(f"unknown {kind} transform {transform!r}; expected one of {known}")
    _needs_psf(psf, what)
    return target_blur(volume, spacing, lateral_fwhm(psf, spacing))


def apply_input_transform(volume, spacing, transform, psf):
    """The refiner's input from the preceding stages' output (see :data:`INPUT_TRANSFORMS`)."""
    return _blurred(volume, spacing, transform, psf, known=INPUT_TRANSFORMS, kind="input",
                    what="renders its input at the target resolution")


def output_kernel_um(spacing, transform, psf, work_spacing=None) -> np.ndarray:
    """Sigma (z, y, x micrometres) of the kernel a rendering output transform renders, before measurement."""
    _needs_psf(psf, "renders the target's isotropic kernel after the network")
    fwhm = lateral_fwhm(psf, spacing)
    if transform == "render":
        return target_sigma(np.ones(3), fwhm)
    if transform != "render_grid":
        raise ValueError(f"{transform!r} renders no kernel; rendering transforms: {RENDERING}")
    steps = np.maximum(np.asarray(spacing, float), np.asarray(work_spacing if work_spacing is not None
                                                              else spacing, float))
    return render_sigma(fwhm, spacing, steps) * np.asarray(spacing, float)


def apply_output_transform(volume, spacing, transform, psf, work_spacing=None):
    """The restored volume from the network's output on the volume's grid (see :data:`OUTPUT_TRANSFORMS`).

    ``work_spacing``: the working grid's steps (um) the object was made on
    (``"render_grid"``; the volume's own spacing when None). Inference
    renders a working grid's object on that grid instead, with the kernel
    measured on the volume (:func:`restore3d.refiner.inference.refine`).
    """
    if transform not in RENDERING:
        return _blurred(volume, spacing, transform, psf, known=OUTPUT_TRANSFORMS[:2], kind="output",
                        what="renders the target's isotropic kernel after the network")
    from .calibration import render
    return render(volume, spacing, output_kernel_um(spacing, transform, psf, work_spacing))


def extra_halo(meta: dict, spacing, psf) -> np.ndarray:
    """Context (z, y, x voxels) the transforms add to the network's own receptive field."""
    n = sum(meta.get(k) is not None for k in ("input_transform", "output_transform"))
    if n == 0 or psf is None:
        return np.zeros(3, int)
    sigma = target_sigma(spacing, lateral_fwhm(psf, spacing))
    return n * np.ceil(TARGET_TRUNCATE * sigma).astype(int)


def render_torch(obj, sigma):
    """:func:`target_blur` of a torch batch ``(N, 1, Z, Y, X)``, one sigma triple (voxels) per sample.

    Same kernel as :func:`scipy.ndimage.gaussian_filter` (sampled Gaussian,
    normalised, radius ``int(4 sigma + 0.5)``, mirrored edges), so training
    sees exactly what inference renders; differentiable; always float32
    (outside any autocast).
    """
    import torch
    sig = np.broadcast_to(np.asarray(sigma, float), (obj.shape[0], 3))
    with torch.autocast(device_type=obj.device.type, enabled=False):
        return torch.cat([_render_one(obj[i:i + 1].float(), s) for i, s in enumerate(sig)], 0)


def _render_one(x, sig):
    """Separable blur of one ``(1, 1, Z, Y, X)`` tensor."""
    import torch
    import torch.nn.functional as F
    for axis, s in enumerate(sig):
        radius = int(TARGET_TRUNCATE * float(s) + 0.5)
        if radius == 0:
            continue
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / float(s)) ** 2)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        x = F.conv3d(_reflect_pad(x, 2 + axis, radius), (k / k.sum()).view(shape))
    return x


def _reflect_pad(x, dim, radius):
    """Pad one axis by ``radius`` with scipy's "reflect" rule (edge sample repeated), any radius."""
    import torch
    n = x.shape[dim]
    idx = torch.remainder(torch.arange(-radius, n + radius, device=x.device), 2 * n)
    idx = torch.where(idx >= n, 2 * n - 1 - idx, idx)
    return torch.index_select(x, dim, idx)
