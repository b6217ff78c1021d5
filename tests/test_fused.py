"""The fused C kernels of the RL loop against the PyTorch expressions they replace."""
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage

from restore3d import _fused
from restore3d.deconvolution import richardson_lucy
from restore3d.psf import gaussian_psf

SP = (0.3, 0.1, 0.1)
HAVE_COMPILER = any(shutil.which(c) for c in ("cc", "gcc", "clang"))
DISABLED = os.environ.get("RESTORE3D_NO_KERNELS", "") not in ("", "0")
needs_kernels = pytest.mark.skipif(not _fused.available(), reason="restore3d._kernels not built")


@pytest.mark.skipif(not HAVE_COMPILER or DISABLED or not sys.platform.startswith("linux"),
                    reason="no C compiler at install, disabled, or not Linux (where -fopenmp may be missing)")
def test_kernels_are_built_where_a_compiler_exists():
    """On Linux with a compiler, `pip install` builds the kernels (a silent build failure would cost speed)."""
    assert _fused.available(torch.zeros(1))


def _rand(shape, seed, low=0.0, high=1.0):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(shape, generator=g)


@needs_kernels
@pytest.mark.parametrize("background", ["scalar", "volume"])
@pytest.mark.parametrize("step", [1, 2])
def test_ratio_on_strided_views(background, step):
    """y / max(mu + b, eps) with mu and out strided windows of larger grids (odd sizes)."""
    shape = (5, 7, 9)
    y = _rand(shape, 0, 0, 50)
    big_mu = _rand((9, 12, 20), 1, -0.5, 3.0)
    mu = big_mu[2:7, 3:10, 1:1 + 9 * step:step]
    assert mu.shape == shape and mu.stride()[2] == step
    b = 0.25 if background == "scalar" else _rand(shape, 2, 0, 0.5)
    grid = torch.full((8, 11, 22), -7.0)
    window = (slice(1, 6), slice(2, 9), slice(3, 3 + 9 * step, step))
    out = grid[window]
    _fused.ratio(y, mu, b, 1e-3, out)
    expected = y / torch.clamp(mu + b, min=1e-3)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)
    outside = torch.ones_like(grid, dtype=torch.bool)
    outside[window] = False
    assert bool((grid[outside] == -7.0).all())  # the frame is untouched


def _weights(shape=(7, 9, 12), grid=(11, 15, 17), seed=5):
    """Border weights of an asymmetric PSF on an odd grid, rows padded as RL's layout pads them."""
    from restore3d._border_weights import BorderWeights
    rng = np.random.default_rng(seed)
    psf = rng.random((5, 7, 9)) + 0.1
    psf /= psf.sum()
    return BorderWeights(psf, shape, (2, 3, 4), grid, "extend", row=2 * (grid[2] // 2 + 1))


@needs_kernels
def test_updates_and_extrapolation():
    weights = _weights()
    w = weights.grid()
    shape = tuple(w.shape)
    back, est, g_prev = (_rand(shape, s) for s in range(3))
    g = g_prev.clone()  # holds the previous difference, overwritten with the new one
    expected = back * w * est
    got = back.clone()
    gg, gp = _fused.update_biggs(got, weights, est, g)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(g, expected - est, rtol=1e-6, atol=1e-7 * float(expected.max()))
    d = (expected - est).double()
    assert gg == pytest.approx(float((d * d).sum()), rel=1e-6)
    assert gp == pytest.approx(float((d * g_prev.double()).sum()), rel=1e-6)

    plain = back.clone()
    _fused.update(plain, weights, est)
    torch.testing.assert_close(plain, expected, rtol=1e-6, atol=0)
    assert float(plain[..., 17:].abs().max()) == 0.0  # the padding columns' weight is 0

    n = 100_003  # not a multiple of any vector width or thread count
    back, est = _rand(n, 7), _rand(n, 8)
    out = torch.empty(n)
    _fused.extrapolate(back, est, 0.7, out)
    torch.testing.assert_close(out, torch.clamp(back + 0.7 * (back - est), min=0), rtol=1e-6, atol=1e-7)
    assert float(out.min()) == 0.0  # some voxels were clipped


@pytest.mark.parametrize("boundary,extend", [("extend", "auto"), ("extend", (4, 1, 0)), ("zero", "auto"),
                                             ("periodic", "auto")])
def test_border_weight_table_equals_the_normalisation_grid(boundary, extend):
    """The table of 1 / H^T 1_D (exact box sums of the PSF) equals the grid computed by FFT, for an
    asymmetric PSF, an extension other than half the PSF, and the plain boundaries (1 on D / everywhere)."""
    from restore3d._border_weights import BorderWeights
    from restore3d.forward_model import ForwardModel
    rng = np.random.default_rng(2)
    psf = rng.random((5, 8, 9)).astype(np.float32) + 0.05
    psf[2, 4, 4] += 3.0
    psf /= psf.sum()
    shape = (6, 11, 13)
    model = ForwardModel(shape, psf, boundary=boundary, extend=extend, device=torch.device("cpu"))
    if boundary == "extend":
        want = model.inverse_weight()
    else:
        want = model.ones_d if boundary == "zero" else torch.ones(model.grid)
    row = 2 * (model.grid[2] // 2 + 1)
    weights = BorderWeights(psf, shape, model.ext, model.grid, boundary, row=row)
    got = weights.grid()
    assert got.shape == (*model.grid[:2], row)
    torch.testing.assert_close(got[..., :model.grid[2]], want, rtol=1e-4, atol=1e-6)
    assert float(got[..., model.grid[2]:].abs().max()) == 0.0  # the padding columns (one or two)
    assert weights.table.numel() < got.numel()  # smaller than the grid it stands for
    torch.testing.assert_close(weights.plane(3), got[3], rtol=0, atol=0)


@pytest.mark.parametrize("with_kernels", [True, False])
def test_product_with_the_conjugate_in_place(with_kernels):
    """a *= conj(b) (the matched back projection's OTF product) on an odd-sized complex grid, with the
    kernels and with the PyTorch fallback, equals the product with a materialised conjugate."""
    if with_kernels and not _fused.available():
        pytest.skip("restore3d._kernels not built")
    a = torch.complex(_rand((5, 7, 9), 0, -2, 2), _rand((5, 7, 9), 1, -2, 2))
    b = torch.complex(_rand((5, 7, 9), 2, -2, 2), _rand((5, 7, 9), 3, -2, 2))
    want = a * torch.conj_physical(b)
    with _fused.kernels(with_kernels):
        _fused.mul_conj(a, b)
    torch.testing.assert_close(a, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="differ in size"):
        _fused.mul_conj(a, b[:2])


def test_matched_back_projection_is_the_adjoint_of_the_forward_one():
    """<H x, r>_D == <x, H^T r> for an asymmetric PSF: the back projector is the forward one's adjoint."""
    from restore3d.forward_model import ForwardModel
    rng = np.random.default_rng(4)
    psf = rng.random((5, 7, 9)).astype(np.float32)
    psf /= psf.sum()
    model = ForwardModel((6, 11, 13), psf, boundary="extend", extend="auto", device=torch.device("cpu"))
    x = torch.from_numpy(rng.random(model.grid).astype(np.float32)) * model.support
    r = torch.from_numpy(rng.random((6, 11, 13)).astype(np.float32))
    hx = model.forward(x)[model.d_slice]
    lhs = float((hx.double() * r.double()).sum())
    rhs = float((x.double() * model.back(model.embed(r)).double()).sum())
    assert lhs == pytest.approx(rhs, rel=1e-5)
    assert float(model.ones_d.sum()) == 6 * 11 * 13


@needs_kernels
def test_bad_sizes_rejected():
    weights = _weights()
    a = torch.zeros(weights.grid().shape)
    with pytest.raises(ValueError, match="differ in size"):
        _fused.update(a, weights, a[:, :3])
    with pytest.raises(ValueError, match="index a"):
        _fused.update(a[:, :3], weights, a[:, :3])
    with pytest.raises(ValueError, match="contiguous"):
        _fused.update(a, weights, torch.zeros(*a.shape[:2], 2 * a.shape[2])[..., ::2])
    with pytest.raises(ValueError, match="one shape"):
        _fused.ratio(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5), 0.0, 1e-3, torch.zeros(2, 3, 4))


@needs_kernels
@pytest.mark.parametrize("acceleration", ["none", "biggs"])
def test_rl_same_result_with_and_without_kernels(acceleration, monkeypatch):
    """RL through the kernels equals RL through PyTorch operations (float32 rounding)."""
    psf = gaussian_psf(SP, fwhm_lateral=0.3, fwhm_axial=0.9)
    obj = np.zeros((20, 40, 44), np.float32)
    rng = np.random.default_rng(0)
    for c in zip(rng.integers(2, 18, 12), rng.integers(3, 37, 12), rng.integers(3, 41, 12)):
        obj[c] = rng.uniform(200, 2000)
    blurred = ndimage.convolve(obj, psf, mode="constant") + 2.0
    background = np.full(obj.shape, 2.0, np.float32)
    kw = {"iterations": 25, "acceleration": acceleration, "background": background, "return_info": True}
    fused, info_f = richardson_lucy(blurred, psf, **kw)
    monkeypatch.setattr(_fused, "_LIB", None)
    eager, info_e = richardson_lucy(blurred, psf, **kw)
    assert info_f.fused and not info_e.fused
    scale = float(eager.max())
    assert float(np.abs(fused - eager).max()) <= 1e-4 * scale
    np.testing.assert_allclose(info_f.alphas, info_e.alphas, atol=1e-3)
