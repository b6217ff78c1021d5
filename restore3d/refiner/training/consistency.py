"""A self-supervised loss on the user's own volume: the refined beads must explain the data.

With ``restored = object * G`` (the refiner renders the target's isotropic
Gaussian G after its object) and ``data - background = object * PSF``, the
restored volume convolved with the PSF must equal the background-free data
convolved with G (:mod:`restore3d.selfcheck` tests the same on whole
volumes). On patches of the user's volume this is a loss that needs no
ground truth: it pins each bead's light, lateral shape and position to the
data; roundness still comes from the simulated pairs (the data cannot see
along the PSF's missing cone). Used by :meth:`restore3d.Refiner.adapt`.
"""
from __future__ import annotations

import numpy as np

from ...forward_model import irfftn3
from ...target import lateral_fwhm, target_blur, target_sigma
from ..transforms import render_sigma

__all__ = ["ConsistencyLoss"]


class ConsistencyLoss:
    """``L1(render(net(x)) * PSF - data * G)`` on random patches of one real volume.

    Parameters
    ----------
    rl : (Z, Y, X) ndarray
        The preceding stages' output on the user's volume (the network's input).
    data : (Z, Y, X) ndarray
        The same volume with its background removed.
    psf : ndarray
        The PSF the stages used.
    spacing : (dz, dy, dx) floats, micrometres
    normalizer : Normalizer
        The refiner's input normalisation.
    patch : (Z, Y, X) ints
        Patch shape (clipped to the volume; z at least 1.5 x the PSF's depth
        when the volume allows, so the valid interior is not empty).
    multiple : (Z, Y, X) ints
        The network's size multiple.
    weight, tau : float
        Bead voxels (blurred data above ``tau`` of the patch maximum) count
        ``weight`` times, as in :func:`restore3d.refiner.losses.imbalanced_loss`.
    output_transform : "render" or "render_grid"
        The refiner's (:mod:`restore3d.refiner.transforms`): the kernel
        rendered after the network.
    """

    def __init__(self, rl, data, psf, spacing, normalizer, *, patch=(48, 64, 64), multiple=(2, 4, 4),
                 weight: float = 100.0, tau: float = 0.01, output_transform: str = "render"):
        self.weight, self.tau = float(weight), float(tau)
        fw = lateral_fwhm(psf, spacing)
        off, scale = normalizer.stats(rl)
        self.input = ((np.asarray(rl, np.float32) - off) / scale).astype(np.float32)
        blurred = target_blur(data, spacing, fw)
        blurred -= np.median(blurred)  # the data's floor: clipped noise, residual glow
        self.target = (blurred / scale).astype(np.float32)
        self.sigma = (target_sigma(spacing, fw) if output_transform == "render"
                      else render_sigma(fw, spacing, spacing))
        self.psf = np.asarray(psf, np.float32)
        self.border = tuple(max(1, p // 4) for p in self.psf.shape)
        want = [max(p, int(1.5 * q)) for p, q in zip(patch, self.psf.shape)]
        self.patch = tuple(max(m, min(n, w) // m * m) for n, w, m in zip(self.input.shape, want, multiple))
        peaks = self.target[self.target > 0.5 * self.target.max()] if self.target.max() > 0 else np.ones(1)
        self.scale = float(np.median(peaks))
        self._otf = {}

    def _conv(self, x):
        """``x * psf`` ('same' size, zero outside) for a (1, 1, Z, Y, X) tensor, by FFT."""
        import torch
        shape = tuple(int(n + p - 1) for n, p in zip(x.shape[2:], self.psf.shape))
        key = (shape, x.device)
        if key not in self._otf:
            k = torch.from_numpy(self.psf).to(x.device)
            self._otf[key] = torch.fft.rfftn(k, s=shape)
        y = irfftn3(torch.fft.rfftn(x, s=shape) * self._otf[key], shape)
        start = [p // 2 for p in self.psf.shape]
        return y[..., start[0]:start[0] + x.shape[2], start[1]:start[1] + x.shape[3], start[2]:start[2] + x.shape[4]]

    def __call__(self, model, rng: np.random.Generator, device):
        """The loss of one random patch (a scalar tensor), relative to the data's typical bead.

        Weighted like the imbalanced training loss: voxels where the blurred
        data reaches 1 % of the patch's maximum count ``weight`` times.
        """
        import torch
        from ..transforms import render_torch
        corner = [int(rng.integers(0, n - p + 1)) for n, p in zip(self.input.shape, self.patch)]
        sl = tuple(slice(c, c + p) for c, p in zip(corner, self.patch))
        x = torch.from_numpy(np.ascontiguousarray(self.input[sl]))[None, None].to(device)
        y = torch.from_numpy(np.ascontiguousarray(self.target[sl]))[None, None].to(device)
        out = render_torch(model(x).float(), self.sigma[None])
        fwd = self._conv(out)
        inner = (Ellipsis,) + tuple(slice(b, n - b) for b, n in zip(self.border, self.patch))
        fwd, y = fwd[inner], y[inner]
        w = 1.0 + (self.weight - 1.0) * (y >= self.tau * y.max()).float()
        return ((fwd - y).abs() * w).mean() / self.scale
