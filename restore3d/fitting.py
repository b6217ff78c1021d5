"""Model-based restoration: fit every bead with the PSF, then draw it again as it should look.

:func:`fit_beads` finds each bead's sub-voxel position, flux and local
background by maximum-likelihood fitting of the PSF under Poisson (+ read)
noise, with overlapping beads fitted jointly; :func:`restore3d.target.render_target` draws the
table as the DESIGN target (isotropic Gaussians of the PSF's lateral FWHM,
flux kept, black background).

The fit is a batched Levenberg-Marquardt on the Poisson likelihood, vectorised
over all windows at once (numpy), with the PSF evaluated by cubic-spline
interpolation at sub-voxel shifts. Uncertainties are the Cramer-Rao bounds
(inverse Fisher information at the solution).
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ._checks import as_psf, as_spacing, as_volume
from .detect import detect_beads, positions_of
from .psf import fwhm, resolution_um
from .beads import BEAD_DTYPE, new_table

__all__ = ["fit_beads", "FIT_DTYPE", "crlb"]

log = logging.getLogger(__name__)

#: A fit is a bead table (:data:`restore3d.beads.BEAD_DTYPE`): positions in voxels and
#: micrometres, ``flux`` in the volume's units summed over the PSF, ``background`` per
#: voxel, ``sigma_*`` the Cramer-Rao bounds (micrometres / flux units), ``deviance``
#: the Poisson deviance per degree of freedom of the bead's window (about 1 for a good
#: fit), flags for beads at the volume's edge, saturated ones and unresolved
#: neighbours, and the joint-fit group.
FIT_DTYPE = BEAD_DTYPE

_DELTA = 1e-2  # finite-difference step for PSF derivatives (voxels)


def _bspline_taps(f):
    """Cubic B-spline weights (4 taps) and their derivatives for fractions ``f`` (any shape)."""
    f2, f3 = f * f, f * f * f
    g = 1.0 - f
    w = np.stack([g ** 3 / 6, (3 * f3 - 6 * f2 + 4) / 6, (-3 * f3 + 3 * f2 + 3 * f + 1) / 6, f3 / 6], -1)
    d = np.stack([-(g ** 2) / 2, (3 * f2 - 4 * f) / 2, (-3 * f2 + 2 * f + 1) / 2, f2 / 2], -1)
    return w, d


def _filter(block, taps, axis, n):
    """Sum over 4 taps along ``axis`` (1..3) of a (B, ...) block, per-bead weights ``taps`` (B, 4)."""
    out = 0.0
    for t in range(4):
        sl = [slice(None)] * block.ndim
        sl[axis] = slice(t, t + n)
        shape = [taps.shape[0]] + [1] * (block.ndim - 1)
        out = out + block[tuple(sl)] * taps[:, t].reshape(shape)
    return out


class _PSFModel:
    """Cubic-spline PSF, evaluated with its gradient at arbitrary offsets from its centre."""

    def __init__(self, psf, margin=64):
        pad = 3
        self.pad = pad
        padded = np.pad(np.asarray(psf, np.float64), pad)
        self.coef = ndimage.spline_filter(padded, order=3, mode="constant")
        self.centre = np.array([p // 2 for p in psf.shape], float) + pad
        # zero coefficients around, so windows larger than the PSF gather zeros
        self.margin = margin
        self.coef_padded = np.pad(self.coef, margin)

    def _eval(self, off):
        coords = off + self.centre[:, None]
        return ndimage.map_coordinates(self.coef, coords, order=3, mode="constant", cval=0.0,
                                       prefilter=False)

    def value_and_grad(self, offsets):
        """PSF and d PSF / d offset at offsets (3, N) (voxels from the centre); general but slow."""
        v = self._eval(offsets)
        g = np.empty((3,) + v.shape)
        for a in range(3):
            d = np.zeros((3, 1))
            d[a] = _DELTA
            g[a] = (self._eval(offsets + d) - self._eval(offsets - d)) / (2 * _DELTA)
        return v, g

    def on_windows(self, positions, origins, size):
        """PSF of beads at ``positions`` (B, 3) sampled on windows ``origin + arange(size)``.

        Every voxel of a window sits at an integer offset minus the same
        fraction from its bead, so the spline interpolation is separable:
        three 4-tap filters of the gathered coefficients, with derivative
        taps for the gradient. Returns value (B, *size) and gradient
        (B, 3, *size) with respect to the voxel offset (= minus the position).
        """
        s = origins - positions + self.centre  # PSF coordinate of each window's first voxel
        n = np.floor(s).astype(int)
        f = s - n
        w, d = _bspline_taps(f)  # (B, 3, 4)
        start = n - 1 + self.margin
        limit = np.asarray(self.coef_padded.shape) - (np.asarray(size) + 3)
        start = np.clip(start, 0, limit)  # far outside the PSF: zeros either way
        idx = [start[:, a, None] + np.arange(size[a] + 3)[None, :] for a in range(3)]
        block = self.coef_padded[idx[0][:, :, None, None], idx[1][:, None, :, None], idx[2][:, None, None, :]]
        bx = _filter(block, w[:, 2], 3, size[2])
        bx_d = _filter(block, d[:, 2], 3, size[2])
        by = _filter(bx, w[:, 1], 2, size[1])
        by_d = _filter(bx, d[:, 1], 2, size[1])
        bxd_y = _filter(bx_d, w[:, 1], 2, size[1])
        value = _filter(by, w[:, 0], 1, size[0])
        gz = _filter(by, d[:, 0], 1, size[0])
        gy = _filter(by_d, w[:, 0], 1, size[0])
        gx = _filter(bxd_y, w[:, 0], 1, size[0])
        return value, np.stack([gz, gy, gx], axis=1)


def _groups(pos, half):
    """Connected groups of beads whose windows overlap by more than half a window."""
    n = len(pos)
    parent = np.arange(n)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n:
        tree = cKDTree(pos / np.asarray(half, float))
        for i, j in tree.query_pairs(r=1.0, p=np.inf):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[ri] = rj
    roots = np.array([find(i) for i in range(n)], int)
    return [np.nonzero(roots == r)[0] for r in np.unique(roots)]


class _Batch:
    """Windows of G groups with up to K beads each, fitted together."""

    def __init__(self, vol, groups, pos, flux0, half, v0):
        G = len(groups)
        K = max(len(g) for g in groups)
        self.G, self.K = G, K
        lo = np.array([np.floor(pos[g].min(0)).astype(int) - half for g in groups])
        hi = np.array([np.ceil(pos[g].max(0)).astype(int) + half for g in groups])
        size = (hi - lo + 1).max(0)
        self.size = size
        grids = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij")).reshape(3, -1)
        self.coords = lo[:, :, None] + grids[None]  # (G, 3, W)
        inside = np.all((self.coords >= 0) & (self.coords < np.asarray(vol.shape)[None, :, None]), axis=1)
        self.mask = inside.astype(float) * np.all(self.coords <= hi[:, :, None], axis=1)
        idx = tuple(np.clip(self.coords[:, a], 0, vol.shape[a] - 1) for a in range(3))
        self.y = vol[idx].astype(np.float64) * self.mask
        self.v0 = v0
        self.lo, self.hi = lo, hi
        # parameters: background (G,), positions (G, K, 3), flux (G, K); unused beads inactive
        self.active = np.zeros((G, K), bool)
        self.p = np.zeros((G, K, 3))
        self.f = np.zeros((G, K))
        self.members = []
        for i, g in enumerate(groups):
            self.active[i, :len(g)] = True
            self.p[i, :len(g)] = pos[g]
            self.f[i, :len(g)] = flux0[g]
            self.members.append(g)
        border = self._border()
        self.b = np.array([np.median(self.y[i][border[i]]) if border[i].any() else 0.0 for i in range(G)])

    def _border(self):
        rel = self.coords - self.lo[:, :, None]
        edge = np.any((rel == 0) | (rel == (self.hi - self.lo)[:, :, None]), axis=1)
        return edge & (self.mask > 0)

    def model(self, psf, p=None, f=None, b=None, grad=False):
        p = self.p if p is None else p
        f = self.f if f is None else f
        b = self.b if b is None else b
        G, K = self.G, self.K
        W = int(np.prod(self.size))
        h = np.empty((G, K, W))
        dh = np.empty((G, K, 3, W))
        for k in range(K):
            v, g = psf.on_windows(p[:, k], self.lo, tuple(int(x) for x in self.size))
            h[:, k] = v.reshape(G, W)
            dh[:, k] = g.reshape(G, 3, W)
        h *= self.active[:, :, None]
        mu = b[:, None] + np.einsum("gk,gkw->gw", f, h)
        return mu, h, (dh if grad else None)

    def nll(self, mu):
        m = np.maximum(mu + self.v0, 1e-9)
        yy = np.maximum(self.y + self.v0, 0)
        return ((m - yy * np.log(m)) * self.mask).sum(1)


def _fit(batch: _Batch, psf: _PSFModel, max_iter: int, bounds):
    """Levenberg-Marquardt on the Poisson negative log-likelihood, all groups at once."""
    G, K = batch.G, batch.K
    P = 1 + 4 * K
    lam = np.full(G, 1e-3)
    mu, h, dh = batch.model(psf, grad=True)
    cur = batch.nll(mu)
    for _ in range(max_iter):
        m = np.maximum(mu + batch.v0, 1e-9)
        w = batch.mask / m
        r = (1.0 - (batch.y + batch.v0) / m) * batch.mask
        # Jacobian columns: b, then per bead (z, y, x, F)
        J = np.empty((G, P, mu.shape[1]))
        J[:, 0] = 1.0
        for k in range(K):
            J[:, 1 + 4 * k: 4 + 4 * k] = -batch.f[:, k, None, None] * dh[:, k]
            J[:, 4 + 4 * k] = h[:, k]
        grad = np.einsum("gpw,gw->gp", J, r)
        H = np.einsum("gpw,gqw,gw->gpq", J, J, w)
        inactive = np.repeat(~batch.active, 4, axis=1)
        act = np.concatenate([np.zeros((G, 1), bool), inactive], axis=1)
        H[act] = 0.0
        H[:, np.arange(P), np.arange(P)] += act * 1.0
        grad[act] = 0.0
        diag = np.einsum("gpp->gp", H)
        A = H + lam[:, None, None] * np.einsum("gp,pq->gpq", diag + 1e-12, np.eye(P))
        step = -np.linalg.solve(A, grad[:, :, None])[:, :, 0]
        nb = batch.b + step[:, 0]
        npos = batch.p + step[:, 1:].reshape(G, K, 4)[:, :, :3]
        nf = np.maximum(batch.f + step[:, 1:].reshape(G, K, 4)[:, :, 3], 1e-9)
        npos = np.clip(npos, bounds[0], bounds[1])
        nmu, nh, ndh = batch.model(psf, npos, nf, nb, grad=True)
        new = batch.nll(nmu)
        better = new <= cur
        batch.b = np.where(better, nb, batch.b)
        batch.p = np.where(better[:, None, None], npos, batch.p)
        batch.f = np.where(better[:, None], nf, batch.f)
        mu = np.where(better[:, None], nmu, mu)
        h = np.where(better[:, None, None], nh, h)
        dh = np.where(better[:, None, None, None], ndh, dh)
        moved = np.abs(step[:, 1:].reshape(G, K, 4)[:, :, :3]).max(axis=(1, 2))
        cur = np.where(better, new, cur)
        lam = np.where(better, lam * 0.3, lam * 10.0)
        if np.all((moved < 1e-3) | ~better & (lam > 1e6)):
            break
    # Fisher information at the solution: the Cramer-Rao bounds
    m = np.maximum(mu + batch.v0, 1e-9)
    J = np.empty((G, P, mu.shape[1]))
    J[:, 0] = 1.0
    for k in range(K):
        J[:, 1 + 4 * k: 4 + 4 * k] = -batch.f[:, k, None, None] * dh[:, k]
        J[:, 4 + 4 * k] = h[:, k]
    fisher = np.einsum("gpw,gqw,gw->gpq", J, J, batch.mask / m)
    inactive = np.concatenate([np.zeros((G, 1), bool), np.repeat(~batch.active, 4, axis=1)], axis=1)
    fisher[inactive] = 0.0
    fisher[:, np.arange(P), np.arange(P)] += inactive * 1.0
    cov = np.linalg.pinv(fisher)
    var = np.einsum("gpp->gp", cov)[:, 1:].reshape(G, K, 4)
    yy = batch.y + batch.v0
    dev = 2 * (m - yy + np.where(yy > 0, yy * np.log(np.maximum(yy, 1e-12) / m), 0.0)) * batch.mask
    dof = np.maximum(batch.mask.sum(1) - (1 + 4 * batch.active.sum(1)), 1)
    return mu, np.sqrt(np.maximum(var, 0)), dev.sum(1) / dof


def crlb(psf, spacing, flux, background, *, window_um=None, read_noise=0.0):
    """Cramer-Rao bounds (z, y, x) in micrometres of one bead at the PSF's centre.

    For a bead of ``flux`` on a ``background`` per voxel with Poisson
    (+ Gaussian read) noise, fitted in the same window as :func:`fit_beads`.
    """
    psf = as_psf(psf)
    spacing = as_spacing(spacing)
    half = _half_window(psf, spacing, window_um)
    model = _PSFModel(psf)
    grids = np.stack(np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")).reshape(3, -1).astype(float)
    h, dh = model.value_and_grad(grids)
    mu = background + flux * h
    J = np.vstack([np.ones_like(h), -flux * dh, h])
    fisher = (J / (mu + read_noise ** 2)) @ J.T
    cov = np.linalg.inv(fisher)
    return np.sqrt(np.diag(cov)[1:4]) * np.asarray(spacing)


def _half_window(psf, spacing, window_um):
    if window_um is None:
        w = fwhm(psf, spacing)
        w = np.where(np.isfinite(w), w, np.asarray(psf.shape) * np.asarray(spacing) / 4)
        half = np.ceil(1.5 * w / np.asarray(spacing)).astype(int)
    else:
        half = np.ceil(np.asarray(window_um, float) / np.asarray(spacing)).astype(int)
    return np.clip(half, 2, np.asarray(psf.shape) // 2 + 1)


def _initial_fluxes(vol, pos, half):
    """Starting flux of each bead: its window's sum above the window's median (at least its peak)."""
    shape = np.asarray(vol.shape)
    flux0 = np.empty(len(pos))
    for i, q in enumerate(pos):
        c = np.clip(np.round(q).astype(int), 0, shape - 1)
        sl = tuple(slice(max(0, ci - hh), ci + hh + 1) for ci, hh in zip(c, half))
        win = vol[sl]
        flux0[i] = max(float(win.sum() - np.median(win) * win.size), float(win.max()) * 1.0, 1e-3)
    return flux0


def _fit_round(vol, model, pos, flux0, half, v0, max_iterations, max_group, residual_threshold):
    """Fit every group of nearby beads jointly (batched by group size).

    Returns the fitted rows (dict of arrays: pos, flux, background, sigma
    (z, y, x, flux), deviance, group, significance) and the beads the
    residual asks for: (voxel, flux estimate) where a window's normalised
    residual exceeds ``residual_threshold`` and its group has room.
    """
    groups = [g[:max_group] for g in _groups(pos, half)]
    fitted_pos, fitted_f, fitted_b, sig, devs, gid = [], [], [], [], [], []
    additions = []
    by_size = {}
    for g in groups:
        by_size.setdefault(len(g), []).append(g)
    for _, gs in sorted(by_size.items()):
        for start in range(0, len(gs), 256):
            chunk = gs[start:start + 256]
            batch = _Batch(vol, chunk, pos, flux0, half, v0)
            bounds = (batch.lo[:, None, :] - 0.5, batch.hi[:, None, :] + 0.5)
            mu, s, dev = _fit(batch, model, max_iterations, bounds)
            resid = (batch.y - mu) / np.sqrt(np.maximum(mu + v0, 1e-9)) * batch.mask
            for i, g in enumerate(chunk):
                n = len(g)
                for j in range(n):
                    fitted_pos.append(batch.p[i, j])
                    fitted_f.append(batch.f[i, j])
                    fitted_b.append(batch.b[i])
                    sig.append(s[i, j])
                    devs.append(dev[i])
                    gid.append(len(gid) and (gid[-1] + (j == 0)) or 0)
                worst = int(np.argmax(resid[i]))
                if resid[i, worst] > residual_threshold and n < max_group:
                    additions.append((batch.coords[i, :, worst].astype(float),
                                      float(resid[i, worst]) * np.sqrt(max(mu[i, worst] + v0, 1.0))))
    sig = np.array(sig).reshape(-1, 4)
    flux = np.array(fitted_f)
    rows = {"pos": np.array(fitted_pos).reshape(-1, 3), "flux": flux, "background": np.array(fitted_b),
            "sigma": sig, "deviance": np.array(devs), "group": np.array(gid),
            "significance": flux / np.maximum(sig[:, 3], 1e-12)}
    return rows, additions


def _bead_table(vol, rows, keep, h, spacing, half, saturation):
    """The kept fits as a bead table, with edge, saturated and merged (closer than a FWHM) flags."""
    shape = np.asarray(vol.shape)
    res = resolution_um(h, spacing)
    table = new_table(int(keep.sum()))
    p = rows["pos"][keep]
    sig = rows["sigma"][keep]
    for a, ax in enumerate("zyx"):
        table[ax] = p[:, a]
        table[ax + "_um"] = p[:, a] * spacing[a]
        table["sigma_" + ax + "_um"] = sig[:, a] * spacing[a]
    table["flux"] = rows["flux"][keep]
    table["background"] = rows["background"][keep]
    table["sigma_flux"] = sig[:, 3]
    table["score"] = rows["significance"][keep]
    table["deviance"] = rows["deviance"][keep]
    table["group"] = rows["group"][keep]
    table["edge"] = np.any((p < half - 0.5) | (p > shape - 1 - half + 0.5), axis=1)
    if len(table):
        vmax = float(vol.max()) if saturation is None else float(saturation)
        for i, q in enumerate(p):
            c = np.clip(np.round(q).astype(int), 0, shape - 1)
            sl = tuple(slice(max(0, ci - 1), ci + 2) for ci in c)
            near = vol[sl]
            table["saturated"][i] = (near.max() >= vmax) and (saturation is not None or
                                                              np.count_nonzero(near >= vmax * (1 - 1e-6)) > 1)
        # beads in the same window closer than a PSF FWHM are not resolved: flag them
        tree = cKDTree(p * np.asarray(spacing) / res)
        for i, j in tree.query_pairs(r=1.0):
            table["merged"][i] = table["merged"][j] = True
    return table


def fit_beads(volume: np.ndarray, psf: np.ndarray, spacing: Sequence[float], *, candidates=None,
              window_um: Sequence[float] | None = None, read_noise: float = 0.0,
              variance_offset: float = 0.0, max_iterations: int = 30, min_significance: float = 3.0,
              residual_threshold: float = 6.0, max_group: int = 6, rounds: int = 2,
              saturation: float | None = None, detect_options: dict | None = None) -> np.ndarray:
    """Maximum-likelihood fit of every bead with the PSF.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
        Photon counts, with the camera offset removed (the local background
        is fitted), or background-subtracted (then pass the removed
        background's variance as ``variance_offset``).
    psf : (z, y, x) ndarray
        PSF on the same spacing (unit sum: ``flux`` is the total over the PSF).
    spacing : (dz, dy, dx) floats, micrometres
    candidates : bead table or (N, 3) array, optional
        Starting positions; default :func:`restore3d.detect.detect_beads`.
    window_um : (wz, wy, wx) floats, optional
        Half-size of each bead's fitting window; default 1.5 PSF FWHM.
    read_noise : float
        Camera read noise (standard deviation, counts).
    variance_offset : float
        Variance per voxel not in the model (e.g. a background already
        subtracted from the data), added to the Poisson variance.
    max_iterations : int
    min_significance : float
        Beads whose flux is below this many standard errors are dropped.
    residual_threshold : float
        A bead is added where the normalised residual of a window exceeds this.
    max_group : int
        Most beads fitted jointly in one window.
    rounds : int
        Rounds of adding/dropping beads and refitting.
    saturation : float, optional
        Counts at which the camera saturates (flag).
    detect_options : dict, optional
        Passed to :func:`restore3d.detect.detect_beads`.

    Returns
    -------
    table : structured ndarray (:data:`FIT_DTYPE`), one row per bead, empty
        when there is none.
    """
    vol = as_volume(volume)
    spacing = as_spacing(spacing)
    h = as_psf(psf)
    half = _half_window(h, spacing, window_um)
    v0 = float(read_noise) ** 2 + float(variance_offset)
    if candidates is None:
        from .background import subtract_background
        # detect on a background-free copy: raw volumes carry glow and offset
        cand = detect_beads(subtract_background(vol, spacing), spacing, measure=False, **(detect_options or {}))
        pos = positions_of(cand)
    else:
        pos = positions_of(candidates)
    if len(pos) == 0:
        return new_table(0)
    model = _PSFModel(h)
    flux0 = _initial_fluxes(vol, pos, half)
    rows = None
    for rnd in range(max(1, int(rounds))):
        last = rnd + 1 >= rounds
        rows, additions = _fit_round(vol, model, pos, flux0, half, v0, max_iterations, max_group,
                                     residual_threshold if not last else np.inf)
        keep = rows["significance"] >= min_significance
        if last or (keep.all() and not additions):
            break
        # refit with insignificant beads dropped and residual beads added
        pos = rows["pos"][keep]
        flux0 = rows["flux"][keep]
        if additions:
            pos = np.vstack([pos] + [a[0][None] for a in additions])
            flux0 = np.concatenate([flux0, [max(a[1] * 8.0, 1e-3) for a in additions]])
        if len(pos) == 0:
            return new_table(0)
    table = _bead_table(vol, rows, rows["significance"] >= min_significance, h, spacing, half, saturation)
    order = np.argsort(-table["score"], kind="stable")
    return table[order]
