import numpy as np
import pytest

from restore3d import metrics
from restore3d.target import render_target

from conftest import truth_table as _truth

SP = (0.3, 0.1, 0.1)


def test_perfect_prediction_scores_perfectly(scene):
    """The target scored against itself: AP = F1 = 1, NRMSE 0, SSIM 1, elongation 1, no background."""
    truth, target = scene
    m = metrics.evaluate(target, target=target, truth=truth, spacing=SP)
    assert m["ap"] == 1.0 and m["f1"] == 1.0
    assert m["nrmse"] == 0.0 and m["ssim"] == pytest.approx(1.0)
    assert m["elongation"] == pytest.approx(1.0, abs=0.02)
    assert m["background_residual"] == 0.0
    assert m["rmse_lateral_um"] < 0.01


def test_detection_counts_known_errors():
    """Two hits, one miss, one false alarm: precision 2/3, recall 2/3."""
    truth = _truth([[5, 10, 10], [5, 40, 40], [10, 70, 70]])
    pred = np.array([[5.5, 10.5, 10], [5, 40, 41], [10, 20, 20.0]])
    s = metrics.detection_scores(pred, truth, spacing=SP)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 1)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    # lateral errors 0.05 and 0.1 um; axial 0.15 and 0
    assert s["rmse_lateral_um"] == pytest.approx(np.sqrt((0.05 ** 2 + 0.1 ** 2) / 2))
    assert s["rmse_axial_um"] == pytest.approx(np.sqrt(0.15 ** 2 / 2))


def test_tolerance_is_per_axis():
    """A 0.5 um axial offset matches under a 0.6 um axial tolerance but a 0.4 um lateral one does not."""
    truth = _truth([[10, 50, 50]])
    assert metrics.detection_scores([[10 + 0.5 / 0.3, 50, 50]], truth, spacing=SP)["tp"] == 1
    assert metrics.detection_scores([[10, 54, 50]], truth, spacing=SP)["tp"] == 0


def test_average_precision_ranking():
    """A false alarm ranked above both hits: precision 0, 1/2, 2/3, interpolated to 2/3 at every recall."""
    truth = _truth([[5, 10, 10], [5, 40, 40]])
    pred = np.array([[5, 80, 80], [5, 10, 10], [5, 40, 40]])
    ap = metrics.average_precision(pred, [3.0, 2.0, 1.0], truth, spacing=SP)
    assert ap == pytest.approx(2 / 3)
    # the false alarm last: precision 1 up to full recall
    assert metrics.average_precision(pred, [0.0, 2.0, 1.0], truth, spacing=SP) == pytest.approx(1.0)
    # one miss: AP is the recall reached
    assert metrics.average_precision(pred[1:2], [1.0], truth, spacing=SP) == pytest.approx(0.5)


def test_outside_beads_are_dont_care():
    """Detections at a bead outside the stack are neither hits nor false alarms."""
    truth = _truth([[5, 10, 10], [-1.2, 40, 40]], inside=[True, False])
    s = metrics.detection_scores([[5, 10, 10], [0, 40, 40]], truth, spacing=SP)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 0)


def test_elongation_known_anisotropy():
    """Beads rendered twice as long along z measure elongation 2."""
    truth = _truth([[12, 30, 30], [12.3, 60, 62]])
    vol = render_target(truth, (24, 96, 96), (0.15, 0.1, 0.1), fwhm_um=0.3)
    # same beads on a grid with half the z spacing, read with the original spacing: twice as long in z
    assert metrics.elongation(vol, SP, truth=truth) == pytest.approx(2.0, rel=0.02)


def test_background_residual_known_offset(scene):
    """A constant offset of 1 % of the median bead peak gives a residual of 0.01."""
    truth, target = scene
    res0 = metrics.background_residual(target, SP, truth)
    assert res0 == 0.0
    offset = 0.01 * float(np.median([target[max(0, int(round(r["z"])) - 1):int(round(r["z"])) + 2,
                                            int(round(r["y"])) - 1:int(round(r["y"])) + 2,
                                            int(round(r["x"])) - 1:int(round(r["x"])) + 2].max()
                                     for r in truth]))
    res = metrics.background_residual(target + offset, SP, truth)
    assert res == pytest.approx(0.01, rel=0.02)


def test_image_metrics_known_values():
    """NRMSE, PSNR and the scale-invariant versions on hand-checkable cases."""
    t = np.zeros((8, 8, 8))
    t[4, 4, 4] = 2.0
    p = t * 0.5
    assert metrics.nrmse(p, t) == pytest.approx(0.5)
    assert metrics.nrmse(p, t, scale_invariant=True) == pytest.approx(0.0)
    assert metrics.psnr(p, t) == pytest.approx(10 * np.log10(4 / (1.0 / 512)))
    assert metrics.ssim(t, t) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differs from target"):
        metrics.nrmse(np.zeros((2, 2, 2)), t)


def test_spurious_spots_counts_spots_away_from_beads(scene):
    """Spots brighter than a tenth of the typical bead and over 1 um from every bead are counted."""
    truth, target = scene
    assert metrics.spurious_spots(target, SP, truth) == 0
    out = target.copy()
    out[2, 2, 50] = out[23, 94, 94] = target.max()  # over 1.2 um from every bead
    assert metrics.spurious_spots(out, SP, truth) == 2


def test_profile_fwhm_is_exact_on_gaussians_and_positive_on_lopsided_peaks():
    """Sampled Gaussians (under-sampled too) measure their FWHM exactly; a peak lighting one sample and barely one
    neighbour (the log-parabola puts its top over twice the sample) gets a width between the samples above half
    its peak, never a negative one (it gave -0.41 samples here, turning a bead's elongation negative)."""
    from restore3d._profiles import profile_fwhm
    for centre in (0.0, 0.2, 0.3):
        for fwhm in (0.8, 1.0, 2.5):
            x = np.arange(11) - 5 - centre
            assert profile_fwhm(np.exp(-4 * np.log(2) * (x / fwhm) ** 2)) == pytest.approx(fwhm, rel=1e-6)
    lopsided = np.array([0.0, 0.0959, 0.7976, 1.0, 0.0001, 0.0, 0.0])
    assert 1.0 < profile_fwhm(lopsided, 3) < 2.0
    rng = np.random.default_rng(0)
    for _ in range(2000):
        a, c = rng.uniform(-0.05, 1, 2)
        prof = np.array([0.0, a * rng.uniform(0, 0.3), a, 1.0, c, c * rng.uniform(0, 0.3), 0.0])
        assert profile_fwhm(prof, 3) > 0
