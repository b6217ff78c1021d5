import numpy as np
import pytest
from scipy import ndimage

from restore3d.deconvolution import blind_richardson_lucy, i_divergence, richardson_lucy
from restore3d.psf import fwhm, gaussian_psf
from restore3d.psf_estimation import normalized_cross_correlation

SP = (0.3, 0.1, 0.1)


@pytest.fixture(scope="module")
def psf():
    return gaussian_psf(SP, fwhm_lateral=0.3, fwhm_axial=0.9)


@pytest.fixture(scope="module")
def points(psf):
    """Point sources well inside a volume, blurred with the PSF (noise-free)."""
    obj = np.zeros((24, 64, 64), np.float32)
    coords = [(8, 20, 20), (12, 40, 30), (16, 25, 45), (11, 45, 48)]
    for i, c in enumerate(coords):
        obj[c] = 1000.0 * (i + 1)
    blurred = ndimage.convolve(obj, psf, mode="constant")
    return obj, blurred, coords


@pytest.mark.parametrize("boundary", ["extend", "zero", "periodic"])
def test_delta_psf_is_identity(boundary):
    """A delta PSF leaves the volume unchanged."""
    vol = np.random.default_rng(0).random((10, 20, 24)).astype(np.float32) + 0.5
    delta = np.zeros((3, 3, 3), np.float32)
    delta[1, 1, 1] = 1
    out = richardson_lucy(vol, delta, iterations=15, boundary=boundary)
    np.testing.assert_allclose(out, vol, rtol=1e-4)


def test_flux_kept(points, psf):
    """Restored flux equals the data's within 1 % (sources far from the edges)."""
    _, blurred, _ = points
    for acc in ("biggs", "none"):
        out = richardson_lucy(blurred, psf, iterations=40, acceleration=acc)
        assert out.sum() == pytest.approx(blurred.sum(), rel=0.01)


def test_point_sources_recovered(points, psf):
    """Deconvolution puts the brightest voxels back on the point sources, much sharper."""
    obj, blurred, coords = points
    out = richardson_lucy(blurred, psf, iterations=50)
    for c in coords:
        win = out[c[0] - 1:c[0] + 2, c[1] - 1:c[1] + 2, c[2] - 1:c[2] + 2]
        assert np.unravel_index(win.argmax(), win.shape) == (1, 1, 1)
        assert out[c] > 4 * blurred[c]
    assert (out >= 0).all()


def test_matches_skimage_without_acceleration():
    """With acceleration off and zero-padded boundaries it equals skimage's richardson_lucy(clip=False)."""
    from skimage.restoration import richardson_lucy as sk_rl
    rng = np.random.default_rng(1)
    vol = (rng.random((12, 30, 28)) + 0.1).astype(np.float32)
    psf = gaussian_psf(SP, fwhm_lateral=0.3, fwhm_axial=0.9, shape=(7, 9, 9))
    ours = richardson_lucy(vol, psf, iterations=12, acceleration="none", boundary="zero", init=0.5)
    theirs = sk_rl(vol, psf, num_iter=12, clip=False)
    np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=2e-5)


def test_acceleration_reaches_plain_50_in_20(psf):
    """Biggs-Andrews reaches the I-divergence of 50 plain iterations in at most 20."""
    from restore3d.simulate import AmbientLight, simulate_beads
    sim = simulate_beads((24, 64, 64), SP, n_beads=15, flux=5000, psf=psf,
                         ambient=AmbientLight(offset=0, level=2, shapes=()), read_noise=0, seed=3)
    data = np.clip(sim.raw, 0, None)
    plain = richardson_lucy(data, psf, iterations=50, acceleration="none")
    target = i_divergence(data, plain, psf)
    divs = []
    richardson_lucy(data, psf, iterations=20, acceleration="biggs",
                    callback=lambda k, x: divs.append(i_divergence(data, x, psf)))
    assert min(divs) <= target
    assert divs[-1] < divs[0]


def test_edges_do_not_dim(psf):
    """A flat field stays flat up to the edges with the extended, normalised boundary."""
    vol = np.full((16, 40, 40), 10.0, np.float32)
    out = richardson_lucy(vol, psf, iterations=20)
    np.testing.assert_allclose(out, 10.0, rtol=0.02)
    zero = richardson_lucy(vol, psf, iterations=20, boundary="zero")
    # plain zero-padded RL dims the faces and brightens the corners
    assert zero[0, 20, 20] < 5.0 and zero.max() > 20.0


def test_background_term_and_stopping(points, psf):
    """A known background is modelled (not subtracted), and the stopping rule ends early on noisy data."""
    _, blurred, _ = points
    noisy = np.random.default_rng(2).poisson(blurred + 5.0).astype(np.float32)
    out, info = richardson_lucy(noisy, psf, iterations=200, background=5.0, stop_tol=1e-3,
                                return_info=True)
    assert info.converged and info.iterations < 200
    obj, _, coords = points
    for c in coords:  # each source's flux comes back near it, the background is not in it
        win = out[c[0] - 2:c[0] + 3, c[1] - 3:c[1] + 4, c[2] - 3:c[2] + 4]
        assert win.sum() == pytest.approx(obj[c], rel=0.15)
    assert len(info.i_divergence) == info.iterations
    assert info.i_divergence[-1] < info.i_divergence[0]


def test_tv_and_wiener_butterworth_run(points, psf):
    """TV-regularised RL and the Wiener-Butterworth back projector give sharpened, non-negative output."""
    obj, blurred, coords = points
    tv = richardson_lucy(blurred, psf, iterations=20, tv=0.002, spacing=SP)
    wb = richardson_lucy(blurred, psf, iterations=3, acceleration="none", backprojector="wiener_butterworth")
    for out in (tv, wb):
        assert out.min() >= 0 and np.isfinite(out).all()
        assert out[coords[1]] > 2 * blurred[coords[1]]
    assert wb.sum() == pytest.approx(blurred.sum(), rel=0.05)


def test_bad_input(psf):
    """Negative data, unknown options and bad shapes are rejected."""
    vol = np.ones((8, 16, 16), np.float32)
    with pytest.raises(ValueError, match="negative values"):
        richardson_lucy(vol - 2, psf)
    with pytest.raises(ValueError, match="boundary must be one of"):
        richardson_lucy(vol, psf, boundary="mirror")
    with pytest.raises(ValueError, match="acceleration must be one of"):
        richardson_lucy(vol, psf, acceleration="fast")
    with pytest.raises(ValueError, match="background shape"):
        richardson_lucy(vol, psf, background=np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="CUDA is not available"):
        import torch
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
        richardson_lucy(vol, psf, device="cuda")


def test_blind_moves_a_wide_psf_towards_the_truth(points, psf):
    """Blind RL started from a too-wide Gaussian ends closer to the true PSF, normalised and non-negative."""
    _, blurred, _ = points
    start = gaussian_psf(SP, fwhm_lateral=0.45, fwhm_axial=1.4, shape=psf.shape)
    out, h = blind_richardson_lucy(blurred + 0.01, start, iterations=5)
    assert h.shape == start.shape and h.min() >= 0 and h.sum() == pytest.approx(1.0, abs=1e-4)
    assert normalized_cross_correlation(h, psf) > normalized_cross_correlation(start, psf)
    w = fwhm(h, SP)
    assert w[1] < 0.45 and w[0] < 1.4
    assert out.shape == blurred.shape and np.isfinite(out).all()


@pytest.mark.parametrize("shape", [(13, 37, 41), (16, 40, 40)])
def test_forward_model_cropped_is_the_convolution_on_the_data_domain(shape):
    """The model RL divides by is crop_D(h * x), for odd sizes and an asymmetric PSF."""
    import torch

    from restore3d.forward_model import ForwardModel
    rng = np.random.default_rng(0)
    h = rng.random((5, 7, 9)).astype(np.float32)
    h /= h.sum()
    model = ForwardModel(shape, h, boundary="extend", extend="auto", device=torch.device("cpu"))
    ext = model.ext
    x = np.zeros(model.grid, np.float32)
    obj = rng.random(tuple(n + 2 * e for n, e in zip(shape, ext))).astype(np.float32)
    x[tuple(slice(0, m) for m in obj.shape)] = obj
    mu_d = model.forward(torch.from_numpy(x))[model.d_slice].numpy()
    expected = ndimage.convolve(obj.astype(np.float64), h.astype(np.float64), mode="constant")
    expected = expected[tuple(slice(e, e + n) for e, n in zip(ext, shape))]
    assert mu_d.shape == tuple(shape)
    np.testing.assert_allclose(mu_d, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(9, 21, 17), (6, 11, 13)])
def test_in_place_slab_convolutions_equal_the_whole_grid_ones(shape):
    """RL's projections run in place slab by slab (restore3d._slab_fft): forward cropped to D and back
    projection onto the support equal the whole-grid transforms, for odd sizes, an asymmetric PSF and
    slabs of one plane and a few rows."""
    import torch

    from restore3d._slab_fft import PaddedGrid
    from restore3d.forward_model import ForwardModel
    rng = np.random.default_rng(2)
    h = rng.random((5, 7, 9)).astype(np.float32)
    h /= h.sum()
    model = ForwardModel(shape, h, boundary="extend", extend="auto", device=torch.device("cpu"))
    layout = PaddedGrid(model.grid, model.device)
    layout.zstep, layout.ystep = 1, 3
    sup = tuple(slice(0, n + 2 * e) for n, e in zip(shape, model.ext))
    x = torch.zeros(model.grid)
    x[sup] = torch.from_numpy(rng.random(tuple(s.stop for s in sup)).astype(np.float32))
    dz, dy, dx = model.d_slice
    slabs = []
    layout.convolve(layout.padded(x), layout.zeros(), model.otf, conj=False, inp=sup[:2], out=(dz, dy),
                    sink=lambda z0, z1, r, dst: slabs.append(r[:, :, dx].clone()))
    np.testing.assert_allclose(torch.cat(slabs).numpy(), model.forward(x)[model.d_slice].numpy(), rtol=1e-5, atol=1e-6)
    r = model.embed(torch.from_numpy(rng.random(shape).astype(np.float32)))
    buf = layout.padded(r)

    def into(z0, z1, res, dst):
        dst[:, sup[1]] = res

    layout.convolve(buf, buf, model.otf, conj=True, inp=(dz, dy), out=sup[:2], sink=into)
    expected = model.back(r.clone())[sup]
    np.testing.assert_allclose(layout.real(buf)[sup].numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert float(layout.real(buf)[sup[0].stop:].abs().sum() if sup[0].stop < model.grid[0] else 0) == 0
    assert float(buf[..., model.grid[2]:].abs().sum()) == 0  # the padding stays zero


def test_wiener_butterworth_stays_on_the_volume_over_many_iterations():
    """The unmatched back projector keeps the light in the volume (it once drained into the extension)."""
    from restore3d.background import subtract_background
    from restore3d.simulate import simulate_beads
    sim = simulate_beads((24, 64, 64), SP, seed=1)
    vol = subtract_background(sim.raw, sim.spacing)
    for n in (3, 12):
        out = richardson_lucy(vol, sim.psf, iterations=n, acceleration="none", backprojector="wiener_butterworth")
        assert np.isfinite(out).all() and out.min() >= 0
        assert 0.8 < out.sum() / vol.sum() < 2.0, n  # light from beads near the faces leaves D
        assert out.max() > 2 * vol.max(), n


def test_real_bead_benchmark_with_its_measured_psf(shared_data):
    """EPFL bead benchmark (../shared/data/epfl-bead): RL with the shipped kernel concentrates the bead
    where the data has it and leaves a black background."""
    tifffile = pytest.importorskip("tifffile")
    data = tifffile.imread(shared_data / "epfl-bead" / "data.tif").astype(np.float32)
    kernel = tifffile.imread(shared_data / "epfl-bead" / "kernel.tif").astype(np.float32)
    vol = np.clip(data - np.median(data), 0, None)  # camera offset and glow (~311 counts)
    out = richardson_lucy(vol, kernel / kernel.sum(), iterations=30)
    def centroid(v):  # of the light above a tenth of the maximum (the deconvolved bead has a flat top)
        return np.array(ndimage.center_of_mass(np.where(v > 0.1 * v.max(), v, 0)))

    assert np.abs(centroid(out) - centroid(vol)).max() <= 1.0  # measured: 0.4 voxel
    assert out.max() >= 5 * vol.max()  # the blur is undone (measured: 9x)
    far = np.ones(out.shape, bool)
    far[tuple(slice(int(c) - 16, int(c) + 17) for c in centroid(out))] = False
    assert np.percentile(out[far], 99) <= 1e-3 * out.max()  # raw data: 1.4e-2 (measured: 0)
    assert np.isfinite(out).all() and out.min() >= 0
