"""Tiled, normalised, resampling inference and the transforms around the network."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from .conftest import random_model  # noqa: E402

from restore3d.refiner import UNetConfig, build_model  # noqa: E402
from restore3d.refiner.inference import predict  # noqa: E402
from restore3d.refiner.normalize import Normalizer  # noqa: E402
from restore3d.refiner.tiling import blend_weight, tile_starts, tiles, weight_sums  # noqa: E402

SP = (0.3, 0.1, 0.1)


def test_tiling_geometry_stitches_arange_exactly():
    """Cutting np.arange data into blended tiles and stitching them back is the identity."""
    shape = (10, 70, 53)
    data = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    acc = np.zeros(shape)
    wsum = np.zeros(shape)
    for t in tiles(shape, (10, 32, 32), (0, 14, 14), (2, 4, 4)):
        w = blend_weight(t, shape, (0, 4, 4), (0, 6, 6))
        acc[t] += data[t] * w
        wsum[t] += w
    assert wsum.min() > 0
    np.testing.assert_allclose(acc / wsum, data, rtol=1e-12)
    for s in tile_starts(250, 64, 20, 4):
        assert s % 4 == 0


def test_blend_weights_sum_per_axis_and_tiles_are_cut_without_the_padded_volume():
    """The summed 3D weight is the product of per-axis sums (no weight volume), and a tile of the
    reflect-padded volume is made from the volume alone."""
    from restore3d.refiner.inference import _tile_of
    shape = (12, 40, 37)
    all_tiles = tiles(shape, (12, 24, 16), (0, 10, 10), (1, 4, 4))
    assert len(all_tiles) >= 6
    total = np.zeros(shape)
    for t in all_tiles:
        total[t] += blend_weight(t, shape, (0, 3, 3), (0, 4, 4))
    sz, sy, sx = weight_sums(all_tiles, shape, (0, 3, 3), (0, 4, 4))
    assert np.allclose(total, sz[:, None, None] * sy[None, :, None] * sx[None, None, :], atol=1e-6)
    vol = np.random.default_rng(0).random((10, 33, 29)).astype(np.float32)
    padded = np.pad(vol, [(0, 2), (0, 7), (0, 3)], mode="reflect")
    for t in tiles(padded.shape, (8, 16, 16), (2, 6, 6), (2, 8, 8)):
        assert np.array_equal(_tile_of(vol, t, padded.shape), padded[t])


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_tiled_equals_whole(norm):
    """Tiled inference equals whole-volume inference (float tolerance), for any tile layout."""
    model = random_model(norm=norm)
    vol = np.random.default_rng(1).random((12, 150, 130)).astype(np.float32)
    whole = predict(model, vol, SP, normalizer=Normalizer(), device="cpu")
    tiled = predict(model, vol, SP, normalizer=Normalizer(), device="cpu", max_voxels=0,
                    tile_shape=(0, 96, 64))
    np.testing.assert_allclose(tiled, whole, atol=1e-5 * float(whole.max()))


def test_planned_tiles_stay_under_the_budget_and_equal_whole():
    """Automatic tiles: none above max_voxels, fewer voxels in all than fixed small tiles, the whole result."""
    from restore3d.refiner.tiling import plan_tile_shape, tiles
    for shape in ((36, 512, 512), (72, 1024, 1024), (12, 150, 130)):
        t = plan_tile_shape(shape, 2_000_000, (32, 48, 48), (2, 4, 4))
        assert np.prod(t) <= 2_000_000 or np.prod(shape) <= 2_000_000
        covered = len(tiles(shape, t, (32, 48, 48), (2, 4, 4))) * np.prod(t)
        fixed = len(tiles(shape, (shape[0], 128, 128), (32, 48, 48), (2, 4, 4))) * shape[0] * 128 * 128
        assert covered <= fixed
    model = random_model(norm="batch")
    vol = np.random.default_rng(1).random((12, 150, 130)).astype(np.float32)
    whole = predict(model, vol, SP, normalizer=Normalizer(), device="cpu")
    tiled = predict(model, vol, SP, normalizer=Normalizer(), device="cpu", max_voxels=100_000)
    np.testing.assert_allclose(tiled, whole, atol=1e-5 * float(whole.max()))


def test_out_of_range_spacing_is_resampled():
    """A spacing outside the training range is resampled in and out; flux is kept."""
    model = build_model(UNetConfig(base_channels=4)).eval()  # identity network
    vol = np.zeros((16, 40, 40), np.float32)
    vol[8, 20, 20] = 10.0
    rng = {"dz": [0.2, 0.4], "dxy": [0.08, 0.13]}
    out = predict(model, vol, (0.6, 0.2, 0.2), normalizer=Normalizer(), spacing_range=rng, device="cpu")
    assert out.shape == vol.shape
    assert out.sum() == pytest.approx(vol.sum(), rel=1e-3)


def test_peaks_normaliser_ignores_density():
    """Peak scaling gives the same scale for sparse and dense volumes of the same beads; percentile does not."""
    from restore3d.simulate import AmbientLight, simulate_beads
    kw = dict(flux=5000, flux_spread=0.0, ambient=AmbientLight(0, 0), poisson=False, read_noise=0)
    sparse = simulate_beads((16, 96, 96), SP, n_beads=3, seed=1, **kw).clean
    dense = simulate_beads((16, 96, 96), SP, n_beads=60, seed=2, **kw).clean
    peaks = Normalizer()
    perc = Normalizer(method="percentile")
    r_peaks = peaks.stats(dense)[1] / peaks.stats(sparse)[1]
    r_perc = perc.stats(dense)[1] / perc.stats(sparse)[1]
    assert abs(np.log(r_peaks)) < 0.3
    assert abs(np.log(r_perc)) > 1.0


def test_target_blur_input_transform():
    """The refiner's input rendering blurs a point to the target's isotropic FWHM; without a PSF it refuses."""
    from restore3d.psf import fwhm, gaussian_psf
    from restore3d.refiner.transforms import apply_input_transform
    psf = gaussian_psf(SP, fwhm_lateral=0.3, fwhm_axial=0.9)
    vol = np.zeros((24, 48, 48), np.float32)
    vol[12, 24, 24] = 100.0
    out = apply_input_transform(vol, SP, "target_blur", psf)
    assert out.sum() == pytest.approx(100.0, rel=1e-3)
    w = fwhm(out, SP)
    np.testing.assert_allclose(w[1:], 0.3, rtol=0.05)
    assert w[0] == pytest.approx(0.3, rel=0.35)  # one plane of 0.3 um: coarse but isotropic in um
    assert apply_input_transform(vol, SP, None, None) is vol
    with pytest.raises(ValueError, match="needs the PSF of the preceding stages"):
        apply_input_transform(vol, SP, "target_blur", None)


def test_render_grid_kernel_gives_the_target_width_on_average():
    """A point held by two voxels (t, 1 - t) rendered with render_sigma has the target's variance on average."""
    from scipy import ndimage

    from restore3d.refiner.transforms import apply_output_transform, render_sigma
    from restore3d.target import target_sigma
    h = 0.15  # um per working voxel: two voxels per FWHM of 0.3 um
    sig_t = float(target_sigma((h,) * 3, 0.3)[0])
    sig_r = float(render_sigma(0.3, (h,) * 3, (h,) * 3)[0])
    assert sig_r < sig_t
    x = np.arange(64, dtype=float)
    variances = []
    for t in np.linspace(0.0, 1.0, 41):
        line = np.zeros(64)
        line[32], line[33] = 1.0 - t, t
        blurred = ndimage.gaussian_filter1d(line, sig_r, mode="constant", truncate=8.0)
        mean = (x * blurred).sum() / blurred.sum()
        variances.append(((x - mean) ** 2 * blurred).sum() / blurred.sum())
    assert np.mean(variances) == pytest.approx(sig_t ** 2, rel=0.02)
    # at least half the target's sigma however coarse the grid
    assert render_sigma(0.3, (1.0,) * 3, (1.0,) * 3)[0] == pytest.approx(0.5 * target_sigma((1.0,) * 3, 0.3)[0])
    from restore3d.psf import gaussian_psf
    psf = gaussian_psf(SP, fwhm_lateral=0.3, fwhm_axial=0.9)
    vol = np.zeros((24, 48, 48), np.float32)
    vol[12, 24, 24] = 10.0
    out = apply_output_transform(vol, SP, "render_grid", psf, work_spacing=(0.15, 0.15, 0.15))
    assert out.sum() == pytest.approx(10.0, rel=1e-3)
    with pytest.raises(ValueError, match="unknown output transform"):
        apply_output_transform(vol, SP, "splat", psf)
