"""Blind Richardson-Lucy: the object and the PSF estimated together (Fish et al. 1995).

The PSF stays physical under two constraints: band-limited (its transfer
function cut to an ellipsoid around the starting PSF's cut-offs) and, for
widefield optics, rotationally symmetric about the optical axis. Object and
PSF stay torch tensors on the run's device between rounds.
"""
from __future__ import annotations

import time

import numpy as np

from .deconvolution import RLInfo, check_inputs
from .forward_model import (ForwardModel, as_background, cutoffs, ellipsoid_r2, irfftn3, torch_device,
                            torch_threads)

__all__ = ["blind_richardson_lucy"]


def blind_richardson_lucy(volume: np.ndarray, psf: np.ndarray, *, iterations: int = 5,
                          object_iterations: int = 4, psf_iterations: int = 2,
                          background=0.0, boundary: str = "extend", support=None,
                          bandlimit: float | None = 1.0, radial: bool = True,
                          device=None, threads: int | None = None, progress: bool = False,
                          return_info: bool = False):
    """Blind Richardson-Lucy: alternate object and PSF updates (Fish et al. 1995).

    Each of ``iterations`` rounds runs ``object_iterations`` RL steps on the
    object with the current PSF, then ``psf_iterations`` RL steps on the PSF
    with the current object (the same multiplicative update with the roles
    swapped). After every PSF step the PSF is kept non-negative, zero
    outside its support box and normalised to unit sum.

    Unconstrained, the alternation drifts to the trivial maximum of the
    likelihood (a delta PSF and an object equal to the data). Two
    constraints keep the PSF physical: its transfer function is cut to an
    ellipsoid ``bandlimit`` times the starting PSF's cut-offs (where its
    OTF falls below 1 % of the peak): an optical PSF is band-limited, a
    delta is not; and with ``radial`` it is averaged over rotations about
    the optical axis (widefield PSFs are rotationally symmetric).

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
        Counts >= 0.
    psf : (z, y, x) ndarray
        Initial PSF (e.g. estimated from the beads, or a Gaussian model);
        its shape is the support unless ``support`` is given.
    iterations, object_iterations, psf_iterations : int
    background : float or ndarray
    boundary : {"extend", "zero", "periodic"}
    support : (sz, sy, sx) odd ints, optional
        Support box of the PSF in voxels (at most the initial PSF's shape).
    bandlimit : float or None
        Widening of the starting PSF's frequency cut-offs allowed to the
        estimate; None: no band limit (not recommended).
    radial : bool
        Average the PSF over rotations about z (assumes dy == dx).
    device, threads, progress, return_info
        As in :func:`richardson_lucy`.

    Returns
    -------
    restored : (Z, Y, X) float32 ndarray
    psf : (z, y, x) float32 ndarray
        The final PSF, unit sum, same shape as the initial one.
    info : RLInfo
        Only with ``return_info``.

    References
    ----------
    Fish, Brinicombe, Pike & Walker, JOSA A 12 (1995) 58.
    """
    import torch
    vol, h = check_inputs(volume, psf, boundary, "none", iterations)
    dev = torch_device(device)
    sup = tuple(h.shape) if support is None else tuple(int(s) for s in support)
    if len(sup) != 3 or any(s < 1 or s > p or s % 2 == 0 for s, p in zip(sup, h.shape)):
        raise ValueError(f"support must be three odd sizes no larger than the PSF {h.shape}, got {support!r}")
    info = RLInfo()
    start = time.perf_counter()
    with torch_threads(threads), torch.no_grad():
        model = ForwardModel(vol.shape, h, boundary=boundary, extend="auto", device=dev)
        grid = model.grid
        y = model.embed(torch.from_numpy(vol).to(dev))
        b = as_background(background, vol.shape, dev)
        b_grid = model.embed(b) if not isinstance(b, float) else b
        # PSF support mask on the wrapped grid
        mask = np.zeros(grid, np.float32)
        idx = [(np.arange(s) - s // 2) % g for s, g in zip(sup, grid)]
        mask[np.ix_(*idx)] = 1
        mask_t = torch.from_numpy(mask).to(dev)
        h_grid = irfftn3(model.otf, grid) * mask_t
        h_grid = h_grid.clamp(min=0) / h_grid.clamp(min=0).sum()
        band = None
        if bandlimit is not None:
            freqs, kc = cutoffs(torch.abs(model.otf).cpu().numpy(), grid, 1e-2)
            r2 = ellipsoid_r2(freqs, [bandlimit * k for k in kc])
            band = torch.from_numpy((r2 <= 1.0).astype(np.float32)).to(dev)
        radial_avg = _radial_averager(sup, grid, dev) if radial else None

        def constrain(hg):
            if band is not None:
                hg = irfftn3(torch.fft.rfftn(hg) * band, grid)
            if radial_avg is not None:
                hg = radial_avg(hg)
            hg = (hg * mask_t).clamp(min=0)
            return hg / hg.sum().clamp(min=1e-30)

        h_grid = constrain(h_grid)
        x = None
        eps = 1e-6 * max(float(vol.max()), 1e-12)
        from tqdm.auto import tqdm
        bar = tqdm(total=iterations, desc="blind RL", disable=not progress, leave=False)
        for k in range(int(iterations)):
            model.set_psf(h_grid)
            x = _object_steps(model, y, b_grid, x, object_iterations, eps)
            X = torch.fft.rfftn(x)
            norm = irfftn3(torch.conj(X) * torch.fft.rfftn(model.ones_d), grid)
            norm_inv = torch.where(norm > 1e-12, 1.0 / norm.clamp(min=1e-12), torch.zeros_like(norm))
            for _ in range(int(psf_iterations)):
                mu = irfftn3(torch.fft.rfftn(h_grid) * X, grid)
                mu = (mu + b_grid).clamp_(min=eps)
                ratio = y / mu
                corr = irfftn3(torch.conj(X) * torch.fft.rfftn(ratio), grid)
                h_grid = constrain(h_grid * corr * norm_inv)
            info.iterations = k + 1
            bar.update(1)
        bar.close()
        model.set_psf(h_grid)
        x = _object_steps(model, y, b_grid, x, object_iterations, eps)
        out = x[model.d_slice].clamp(min=0).cpu().numpy().astype(np.float32)
        h_np = h_grid.cpu().numpy()
        h_out = h_np[np.ix_(*[(np.arange(p) - p // 2) % g for p, g in zip(h.shape, grid)])]
        h_out = (h_out / h_out.sum()).astype(np.float32)
    info.seconds = time.perf_counter() - start
    info.psf = h_out
    return (out, h_out, info) if return_info else (out, h_out)


def _radial_averager(support, grid, device):
    """Average a wrapped PSF over rings of equal lateral radius in each z plane."""
    import torch
    sz, sy, sx = support
    ys = (np.arange(sy) - sy // 2)
    xs = (np.arange(sx) - sx // 2)
    r = np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
    ring = np.round(r * 2).astype(np.int64)  # half-voxel rings
    n_rings = int(ring.max()) + 1
    iy = torch.as_tensor(ys % grid[1], device=device)
    ix = torch.as_tensor(xs % grid[2], device=device)
    iz = torch.as_tensor((np.arange(sz) - sz // 2) % grid[0], device=device)
    ring_t = torch.as_tensor(ring.ravel(), device=device)
    counts = torch.bincount(ring_t, minlength=n_rings).clamp(min=1).to(torch.float32)

    def average(hg):
        box = hg[iz][:, iy][:, :, ix].reshape(sz, -1)
        sums = torch.zeros((sz, n_rings), dtype=hg.dtype, device=device)
        sums.index_add_(1, ring_t, box)
        box = (sums / counts)[:, ring_t].reshape(sz, sy, sx)
        out = torch.zeros_like(hg)
        out[iz[:, None, None], iy[None, :, None], ix[None, None, :]] = box
        return out

    return average


def _object_steps(model, y, b_grid, x, iterations, eps):
    """Plain Bertero-Boccacci RL iterations of the object on the model's grid (tensors in, tensor out)."""
    import torch
    inv_w = model.inverse_weight()
    if x is None:
        x = torch.full(model.grid, max(float(y[model.d_slice].mean()), 1e-12),
                       dtype=torch.float32, device=y.device) * (inv_w > 0)
    for _ in range(int(iterations)):
        mu = (model.forward(x) + b_grid).clamp_(min=eps)
        x = model.back(y / mu).mul_(inv_w).mul_(x)
    return x
