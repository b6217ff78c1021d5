"""The forward model of deconvolution: a PSF's transfer function on a padded FFT grid.

The object ``x`` lives on the data domain D extended by ``ext`` voxels on
every side (or on D itself); the model of the data is ``crop_D(h * x)``,
computed with real FFTs on a grid large enough that circular convolutions
do not alias (torch, float32, CPU or CUDA). The matched back projector is
the correlation with ``h``; ``H^T 1_D`` tells how much of each object
voxel's light reaches the data (Bertero-Boccacci normalisation).
"""
from __future__ import annotations

import contextlib

import numpy as np
from scipy import fft as sfft

from ._checks import as_volume

__all__ = ["ForwardModel", "BACKPROJECTORS", "WEIGHT_FLOOR", "extension", "cutoffs", "ellipsoid_r2", "irfftn3",
           "as_background", "torch_device", "torch_threads", "i_divergence_of"]

BACKPROJECTORS = ("matched", "wiener_butterworth")
#: Object voxels whose light reaches the data less than this fraction stay empty.
WEIGHT_FLOOR = 1e-3


def torch_device(device):
    """A ``torch.device``: the one named, else CUDA when available."""
    import torch
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available; use device='cpu'")
    return dev


def irfftn3(spectrum, s):
    """The inverse of ``torch.fft.rfftn`` over the last three axes (grid shape ``s``), one axis at a time.

    Two complex inverse transforms along z and y, then the real one along x:
    the same result as ``torch.fft.irfftn(spectrum, s=s)``, whose CPU
    multi-dimensional complex-to-real transform in torch 2.13 corrupted the
    heap on grids of 3-5e7 voxels (e.g. 48 x 1024 x 1024, 32 x 1080 x 1080:
    the process aborted later in an unrelated allocation; reproduced with
    random input alone), where the one-axis transforms did not.
    """
    import torch
    a = torch.fft.ifft(spectrum, dim=-3)  # the last three axes, as rfftn's s= takes them (batches allowed)
    a = torch.fft.ifft(a, dim=-2)
    return torch.fft.irfft(a, n=int(s[-1]), dim=-1)


@contextlib.contextmanager
def torch_threads(n):
    """Run torch with ``n`` CPU threads inside the block (None: unchanged)."""
    import torch
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def extension(psf_shape, extend):
    if extend is None or extend == "auto":
        return tuple(p // 2 for p in psf_shape)
    ext = tuple(int(e) for e in (extend if np.ndim(extend) else (extend,) * 3))
    if len(ext) != 3 or min(ext) < 0:
        raise ValueError(f"extend must be 'auto' or three non-negative voxel counts, got {extend!r}")
    return ext


class ForwardModel:
    """Forward and back projectors of one volume on a padded FFT grid (torch, float32, CPU or CUDA).

    Parameters
    ----------
    shape : (Z, Y, X) ints
        The data domain D.
    psf : (z, y, x) ndarray
        Unit-sum PSF, centre voxel at ``shape // 2``.
    boundary : {"extend", "zero", "periodic"}
        See :func:`restore3d.deconvolution.richardson_lucy`.
    extend : "auto" or (ez, ey, ex) ints
        Extension of the object's domain beyond D ("auto": half the PSF).
    device : torch.device
    backprojector : {"matched", "wiener_butterworth"}
    """

    def __init__(self, shape, psf, *, boundary, extend, device, backprojector="matched",
                 wb_alpha=1e-3, wb_beta=1e-2, wb_order=8):
        import torch
        self.torch = torch
        self.device = device
        self.shape = tuple(shape)
        P = psf.shape
        if boundary == "periodic":
            ext = (0, 0, 0)
            grid = self.shape
        else:
            ext = extension(P, extend) if boundary == "extend" else (0, 0, 0)
            # object on E = D + 2 ext with D at offset ext: circular convolutions
            # between E and D alias onto the PSF support unless N >= n + ext + P // 2
            need = [n + e + p // 2 for n, e, p in zip(self.shape, ext, P)]
            grid = tuple(sfft.next_fast_len(int(n), real=True) for n in need)
        self.ext = ext
        self.grid = grid
        self.d_slice = tuple(slice(e, e + n) for e, n in zip(ext, self.shape))
        padded = np.zeros(grid, np.float32)
        # place the PSF with its centre voxel at the origin (wrapped)
        cz, cy, cx = [p // 2 for p in P]
        idx = [(np.arange(p) - c) % g for p, c, g in zip(P, (cz, cy, cx), grid)]
        padded[np.ix_(*idx)] += psf
        self.otf = torch.fft.rfftn(torch.from_numpy(padded).to(device))
        del padded
        if backprojector == "matched":
            # None: back() multiplies by the OTF's conjugate in place (_fused.mul_conj), so the grid
            # holds one spectrum, not two (a lazy conj view was resolved into a copy on every product)
            self.botf = None
        elif backprojector == "wiener_butterworth":
            self.botf = self._wiener_butterworth(wb_alpha, wb_beta, wb_order)
        else:
            raise ValueError(f"backprojector must be one of {BACKPROJECTORS}, got {backprojector!r}")

    @property
    def support(self):
        """The object's support on the grid: 1 on D extended (or D itself), 0 elsewhere (built when asked)."""
        out = self.torch.zeros(self.grid, dtype=self.torch.float32, device=self.device)
        out[tuple(slice(0, n + 2 * e) for n, e in zip(self.shape, self.ext))] = 1
        return out

    @property
    def ones_d(self):
        """The data domain's indicator ``1_D`` on the grid (built when asked)."""
        out = self.torch.zeros(self.grid, dtype=self.torch.float32, device=self.device)
        out[self.d_slice] = 1
        return out

    def _wiener_butterworth(self, alpha, beta, order):
        """Unmatched back projector of Guo et al. 2020: Wiener filter x Butterworth low-pass."""
        torch = self.torch
        otf = self.otf
        mag = torch.abs(otf)
        peak = float(mag.max())
        wiener = torch.conj(otf) / (mag ** 2 + alpha * peak ** 2)
        # cut-off along each axis: where the OTF falls below 1 % of its peak
        freqs, kc = cutoffs(mag.cpu().numpy(), self.grid, 0.01)
        r2 = ellipsoid_r2(freqs, kc)
        eps2 = 1.0 / beta ** 2 - 1.0
        butter = 1.0 / np.sqrt(1.0 + eps2 * r2 ** order)
        b = wiener * torch.from_numpy(butter.astype(np.float32)).to(self.device)
        return b / b[0, 0, 0].real

    def embed(self, data_d):
        out = self.torch.zeros(self.grid, dtype=self.torch.float32, device=self.device)
        out[self.d_slice] = data_d
        return out

    def conv(self, x, otf, *, conj=False):
        """Circular convolution of ``x`` with the filter ``otf`` (``conj``: with its conjugate, a correlation).

        A fresh tensor (faster than ``out=``, which copies). The inverse runs
        as :func:`irfftn3` does, one axis at a time, each spectrum freed as
        the next is made: at most two grid-sized spectra live at once.
        ``x`` may be a one-element list holding the tensor: it is emptied,
        and the tensor freed once transformed unless held elsewhere.
        """
        from . import _fused
        torch = self.torch
        if isinstance(x, list):
            x = x.pop()
        s = torch.fft.rfftn(x)
        del x
        if conj:
            _fused.mul_conj(s, otf)
        else:
            s.mul_(otf)
        a = torch.fft.ifft(s, dim=-3)
        del s
        a = torch.fft.ifft(a, dim=-2)
        return torch.fft.irfft(a, n=int(self.grid[-1]), dim=-1)

    def forward(self, x):
        return self.conv(x, self.otf)

    def back(self, r):
        if self.botf is None:  # matched: the OTF's conjugate
            return self.conv(r, self.otf, conj=True)
        return self.conv(r, self.botf)

    def sensitivity(self):
        """``H^T 1_D`` with the matched ``H^T``: how much of each object voxel's light reaches the data.

        Also for an unmatched back projector: the Wiener-Butterworth filter
        applied to the box ``1_D`` rings (-2..7) and is no weight.
        """
        return self.conv(self.ones_d, self.otf, conj=True)

    def inverse_weight(self):
        """``1 / H^T 1_D`` on the object's support (0 where the data sees less than :data:`WEIGHT_FLOOR`
        of a voxel's light): the Bertero-Boccacci normalisation of the RL update."""
        torch = self.torch
        w = self.sensitivity()
        inv = torch.where(w > WEIGHT_FLOOR, 1.0 / w.clamp(min=WEIGHT_FLOOR), torch.zeros_like(w))
        return inv * self.support

    def set_psf(self, h_grid):
        """Use a new PSF given on the wrapped grid (blind deconvolution), matched back projector."""
        self.otf = self.torch.fft.rfftn(h_grid)
        self.botf = None


def cutoffs(otf_abs: np.ndarray, grid, fraction: float):
    """Frequency (cycles/voxel) along each axis where an OTF magnitude falls below ``fraction`` of its peak."""
    freqs = [np.fft.fftfreq(grid[0]), np.fft.fftfreq(grid[1]), np.fft.rfftfreq(grid[2])]
    peak = float(otf_abs.max())
    lines = [otf_abs[:, 0, 0], otf_abs[0, :, 0], otf_abs[0, 0, :]]
    kc = []
    for f, line in zip(freqs, lines):
        order = np.argsort(np.abs(f))
        af, lv = np.abs(f)[order], line[order]
        below = np.nonzero(lv < fraction * peak)[0]
        kc.append(float(af[below[0]]) if below.size else float(af.max()) + 1e-6)
    return freqs, kc


def ellipsoid_r2(freqs, kc):
    kz, ky, kx = np.meshgrid(freqs[0] / kc[0], freqs[1] / kc[1], freqs[2] / kc[2],
                             indexing="ij", sparse=True)
    return kz ** 2 + ky ** 2 + kx ** 2


def as_background(background, shape, device):
    import torch
    if np.ndim(background) == 0:
        b = float(background)
        if not np.isfinite(b) or b < 0:
            raise ValueError(f"background must be a finite number >= 0 or a volume, got {background!r}")
        return b
    arr = as_volume(background, name="background")
    if arr.shape != tuple(shape):
        raise ValueError(f"background shape {arr.shape} differs from the volume {tuple(shape)}")
    if arr.min() < 0:
        raise ValueError("background must be >= 0 everywhere")
    return torch.from_numpy(arr).to(device)


def i_divergence_of(y_d, mu_d) -> float:
    """Csiszar I-divergence ``sum(y log(y / mu) - y + mu)`` of two tensors (float64 sum)."""
    import torch
    return float((torch.xlogy(y_d, y_d / mu_d) - y_d + mu_d).sum(dtype=torch.float64))
