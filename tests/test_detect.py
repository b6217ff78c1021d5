"""Bead detection and measurement (restore3d.detect)."""
import numpy as np
import pytest

from restore3d import metrics
from restore3d.detect import detect_beads, measure_beads, robust_sigma
from restore3d.target import render_target

from conftest import truth_table as _truth

SP = (0.3, 0.1, 0.1)


def test_detector_finds_rendered_beads(scene):
    """detect_beads recovers rendered beads at sub-voxel accuracy and measures their widths."""
    truth, target = scene
    det = detect_beads(target, SP)
    s = metrics.detection_scores(det, truth, spacing=SP)
    assert s["recall"] >= 0.95 and s["precision"] >= 0.95
    assert s["rmse_lateral_um"] < 0.02
    iso = metrics.isolated(det, spacing=SP)
    np.testing.assert_allclose(np.nanmedian(det["fwhm_x"][iso]), 0.25, rtol=0.05)


def test_measure_subtracts_local_background():
    """A bead on a constant offset: measured background is the offset, intensity is the flux."""
    truth = _truth([[10.2, 30.4, 29.7]], flux=5000.0)
    vol = render_target(truth, (20, 60, 60), SP, fwhm_um=0.3) + 7.0
    t = measure_beads(vol, SP, truth)
    assert t["background"][0] == pytest.approx(7.0, abs=1e-3)
    assert t["intensity"][0] == pytest.approx(5000.0, rel=0.01)
    np.testing.assert_allclose([t["z"][0], t["y"][0], t["x"][0]], [10.2, 30.4, 29.7], atol=0.02)


def test_robust_sigma_clipped_and_gaussian():
    """robust_sigma recovers sigma of Gaussian noise, also after clipping at zero."""
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 3.0, 200_000)
    assert robust_sigma(noise)[1] == pytest.approx(3.0, rel=0.02)
    assert robust_sigma(np.maximum(noise, 0))[1] == pytest.approx(3.0, rel=0.03)


def test_typical_peak_ignores_density():
    """The typical bead peak is the median bead height, however many beads and faint specks there are."""
    from restore3d.detect import typical_peak
    vol = np.zeros((20, 80, 80), np.float32)
    rng = np.random.default_rng(1)
    for k, c in enumerate(rng.integers(3, 77, (30, 3))):
        vol[c[0] % 20, c[1], c[2]] = 10.0 + k % 3  # beads of height 10-12
    vol[rng.integers(0, 20, 500), rng.integers(0, 80, 500), rng.integers(0, 80, 500)] += 0.5  # specks
    assert typical_peak(vol) == pytest.approx(11.0, abs=1.0)
    assert typical_peak(np.zeros((4, 4, 4), np.float32)) == 0.0


@pytest.mark.parametrize("shape,size", [((9, 14, 17), (5, 5, 5)), ((3, 4, 7), (5, 9, 3)), ((6, 1, 9), (3, 3, 1)),
                                        ((5, 6, 7), 7), ((4, 5, 6), (2, 3, 3))])
def test_maximum_filter_equals_scipy_nearest(shape, size):
    """The doubling maximum filter equals scipy's (mode "nearest") exactly, also for windows longer than
    the axis and size 1; even sizes go to scipy."""
    from scipy import ndimage

    from restore3d.detect import maximum_filter
    vol = np.random.default_rng(3).random(shape).astype(np.float32)
    vol[0, 0, 0] = 5.0  # an edge maximum, spread by the edge rule
    got = maximum_filter(vol, size)
    assert got.dtype == np.float32 and got.shape == vol.shape
    np.testing.assert_array_equal(got, ndimage.maximum_filter(vol, size=size, mode="nearest"))


@pytest.mark.parametrize("sigma,mode", [(0.7, "nearest"), ((1.2, 0.8, 0.6), "reflect"), ((0.0, 1.5, 1.5), "mirror")])
def test_threaded_gaussian_filter_equals_scipy(sigma, mode, monkeypatch):
    """The slab-threaded Gaussian filter (volumes above MIN_PARALLEL voxels) gives scipy's values exactly,
    with a zero sigma skipping its axis, and leaves its input unchanged."""
    from scipy import ndimage

    from restore3d import _filters
    monkeypatch.setattr(_filters, "MIN_PARALLEL", 0)
    monkeypatch.setattr(_filters, "_threads", lambda: 3)  # three slabs, an odd cut
    vol = np.random.default_rng(5).random((7, 23, 31)).astype(np.float32)
    before = vol.copy()
    got = _filters.gaussian_filter(vol, sigma, mode=mode, truncate=3.5)
    np.testing.assert_array_equal(got, ndimage.gaussian_filter(vol, sigma, mode=mode, truncate=3.5))
    np.testing.assert_array_equal(vol, before)


def test_closed_form_half_maximum_crossing_equals_the_polynomial_fit():
    """The closed-form crossing equals np.polyfit + np.roots on brackets (the samples on either side of the
    level) and, by falling back to them, on a lopsided peak measured above its highest sample, where the
    parabola crosses twice in the range (the first root np.roots lists is the one used)."""
    from restore3d._profiles import _log_quadratic_crossing, _polyfit_crossing
    rng = np.random.default_rng(2)
    for _ in range(300):
        xs = np.array([4.0, 5.0, 6.0])
        ys = np.exp(-(xs - rng.uniform(3, 7)) ** 2 / (2 * rng.uniform(0.3, 3) ** 2)) * rng.uniform(1, 100)
        lo, hi = (4.0, 5.0) if rng.random() < 0.5 else (5.0, 6.0)
        level = rng.uniform(min(ys[xs == lo][0], ys[xs == hi][0]), max(ys[xs == lo][0], ys[xs == hi][0]))
        assert _log_quadratic_crossing(xs, ys, level, lo, hi) == pytest.approx(
            _polyfit_crossing(xs, ys, level, lo, hi), abs=1e-8)
    # a bead lighting one plane, barely the next: both crossings of the level fall in [3, 4]
    xs, ys, level = np.array([2.0, 3.0, 4.0]), np.array([2.6e-4, 355.7, 30.7]), 497.8
    want = _polyfit_crossing(xs, ys, level, 3, 4)
    assert want == pytest.approx(3.6415, abs=1e-3)
    assert _log_quadratic_crossing(xs, ys, level, 3, 4) == want
