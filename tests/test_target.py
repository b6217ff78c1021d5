import numpy as np
import pytest

from restore3d.target import lateral_fwhm, render_target, target_blur, target_sigma
from restore3d.psf import fwhm, gaussian_psf

SP = (0.3, 0.1, 0.1)


def test_target_blur_of_a_point_is_the_isotropic_target():
    """A point blurred by the target kernel is round in micrometres, keeps its flux and measures the FWHM."""
    vol = np.zeros((31, 41, 41), np.float32)
    vol[15, 20, 20] = 7.0
    out = target_blur(vol, (0.1, 0.1, 0.1), 0.3)
    assert out.sum() == pytest.approx(7.0, rel=1e-5)
    np.testing.assert_allclose(fwhm(out, (0.1, 0.1, 0.1)), [0.3, 0.3, 0.3], rtol=0.02)


def test_target_sigma_rejects_bad_fwhm():
    """A non-positive target FWHM is refused with the value in the message."""
    with pytest.raises(ValueError, match="-1"):
        target_sigma(SP, -1.0)


def test_lateral_fwhm_is_the_mean_of_y_and_x():
    """The target FWHM is the PSF's lateral FWHM."""
    assert lateral_fwhm(gaussian_psf(SP, fwhm_lateral=0.25, fwhm_axial=0.8), SP) == pytest.approx(0.25, rel=1e-6)


def test_render_target_matches_target_blur_of_points():
    """Rendering beads on voxel centres equals blurring point sources with the target kernel."""
    truth = np.zeros(2, [("z", "f8"), ("y", "f8"), ("x", "f8"), ("flux", "f8")])
    truth[0] = (8, 20, 20, 100.0)
    truth[1] = (12, 40, 30, 50.0)
    a = render_target(truth, (24, 64, 64), SP, fwhm_um=0.3)
    pts = np.zeros((24, 64, 64), np.float32)
    pts[8, 20, 20], pts[12, 40, 30] = 100.0, 50.0
    np.testing.assert_allclose(a, target_blur(pts, SP, 0.3), atol=1e-4 * a.max())
