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


@needs_kernels
def test_updates_and_extrapolation():
    n = 100_003  # not a multiple of any vector width or thread count
    back, w, est, g_prev = (_rand(n, s) for s in range(4))
    g = g_prev.clone()  # holds the previous difference, overwritten with the new one
    expected = back * w * est
    got = back.clone()
    gg, gp = _fused.update_biggs(got, w, est, g)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(g, expected - est, rtol=1e-6, atol=1e-7)
    d = (expected - est).double()
    assert gg == pytest.approx(float((d * d).sum()), rel=1e-6)
    assert gp == pytest.approx(float((d * g_prev.double()).sum()), rel=1e-6)

    plain = back.clone()
    _fused.update(plain, w, est)
    torch.testing.assert_close(plain, expected, rtol=0, atol=0)

    out = torch.empty(n)
    _fused.extrapolate(back, est, 0.7, out)
    torch.testing.assert_close(out, torch.clamp(back + 0.7 * (back - est), min=0), rtol=1e-6, atol=1e-7)
    assert float(out.min()) == 0.0  # some voxels were clipped


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
    a = torch.zeros(10)
    with pytest.raises(ValueError, match="differ in size"):
        _fused.update(a, torch.zeros(11), a)
    with pytest.raises(ValueError, match="contiguous"):
        _fused.update(torch.zeros(20)[::2], a, a)
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
