import numpy as np
import pytest

from restore3d.psf import centre_psf, crop_psf, fwhm, gaussian_psf, make_psf, widefield_fwhm, widefield_psf


@pytest.mark.parametrize("spacing,lat,ax", [((0.3, 0.1, 0.1), 0.3, 0.9), ((0.2, 0.065, 0.065), 0.25, 0.7),
                                            ((0.5, 0.2, 0.2), 0.15, 0.4)])
def test_gaussian_fwhm_exact(spacing, lat, ax):
    """The Gaussian model's measured FWHM equals the requested one, even undersampled."""
    psf = gaussian_psf(spacing, fwhm_lateral=lat, fwhm_axial=ax)
    np.testing.assert_allclose(fwhm(psf, spacing), [ax, lat, lat], rtol=1e-6)
    assert psf.dtype == np.float32 and all(s % 2 == 1 for s in psf.shape)
    assert psf.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("na,wl,n", [(1.4, 0.52, 1.518), (0.8, 0.6, 1.0), (1.1, 0.52, 1.333)])
def test_widefield_fwhm_matches_textbook(na, wl, n):
    """Lateral FWHM within 3 % of 0.51 lambda/NA, axial within 6 % of 0.88 lambda/(n - sqrt(n^2-NA^2))."""
    sp = (0.04, 0.02, 0.02)
    psf = widefield_psf(sp, na=na, wavelength=wl, n_immersion=n, shape=(101, 81, 81))
    ax_ref, lat_ref = widefield_fwhm(na=na, wavelength=wl, n_immersion=n)
    w = fwhm(psf, sp)
    assert w[1] == pytest.approx(lat_ref, rel=0.03)
    assert w[2] == pytest.approx(lat_ref, rel=0.03)
    assert w[0] == pytest.approx(ax_ref, rel=0.06)
    assert psf.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(psf.argmax(), psf.shape) == (50, 40, 40)


def test_widefield_depth_aberration_elongates():
    """Refractive-index mismatch at depth makes the PSF longer along z, and the window follows the focus."""
    sp = (0.1, 0.05, 0.05)
    ref = widefield_psf(sp, na=1.3, wavelength=0.52, n_immersion=1.518, n_sample=1.518, shape=(61, 41, 41))
    deep = widefield_psf(sp, na=1.3, wavelength=0.52, n_immersion=1.518, n_sample=1.36, depth=15,
                         shape=(61, 41, 41))
    assert fwhm(deep, sp)[0] > 1.3 * fwhm(ref, sp)[0]
    assert abs(np.unravel_index(deep.argmax(), deep.shape)[0] - 30) <= 6


@pytest.mark.parametrize("kwargs,match", [
    (dict(na=1.6, n_immersion=1.518), "smaller than the immersion"),
    (dict(na=1.0, n_immersion=1.0), "smaller than the immersion"),
    (dict(wavelength=520.0), "nanometres"),
    (dict(depth=-1.0), "depth"),
    (dict(na=-0.5), "na must be"),
])
def test_widefield_rejects_bad_physics(kwargs, match):
    """Physics is checked at the door with the bad value in the message."""
    with pytest.raises(ValueError, match=match):
        widefield_psf((0.3, 0.1, 0.1), **kwargs)


def test_bad_spacing_and_shape():
    """Non-positive spacing and even shapes are rejected."""
    with pytest.raises(ValueError, match="dz must be a positive"):
        gaussian_psf((0, 0.1, 0.1), fwhm_lateral=0.3, fwhm_axial=0.9)
    with pytest.raises(ValueError, match="odd"):
        gaussian_psf((0.3, 0.1, 0.1), fwhm_lateral=0.3, fwhm_axial=0.9, shape=(10, 11, 11))
    with pytest.raises(ValueError, match="unknown PSF model"):
        make_psf((0.3, 0.1, 0.1), model="airy")


def test_centre_and_crop():
    """centre_psf moves the peak to the middle; crop_psf keeps it there with unit sum."""
    psf = gaussian_psf((0.3, 0.1, 0.1), fwhm_lateral=0.3, fwhm_axial=0.9, shape=(11, 21, 21))
    shifted = np.roll(psf, (2, -3, 1), axis=(0, 1, 2))
    c = centre_psf(shifted)
    assert np.unravel_index(c.argmax(), c.shape) == (5, 10, 10)
    small = crop_psf(psf, (7, 9, 9))
    assert small.shape == (7, 9, 9) and small.sum() == pytest.approx(1, abs=1e-5)
    assert np.unravel_index(small.argmax(), small.shape) == (3, 4, 4)


def test_confocal_narrower_than_widefield_and_pinhole_widens():
    """A confocal PSF is narrower than the widefield one of the same optics; a larger pinhole widens it."""
    sp = (0.05, 0.025, 0.025)
    kw = dict(na=1.4, wavelength=0.6, n_immersion=1.518, shape=(61, 49, 49))
    wide = fwhm(widefield_psf(sp, **kw), sp)
    point = fwhm(make_psf(sp, model="confocal", excitation=0.5, pinhole_au=0.0, **kw), sp)
    open_ = fwhm(make_psf(sp, model="confocal", excitation=0.5, pinhole_au=2.0, **kw), sp)
    assert point[0] < 0.8 * wide[0] and point[1] < 0.8 * wide[1]
    assert open_[1] > point[1] and open_[0] > point[0]
    with pytest.raises(ValueError, match="excitation"):
        make_psf(sp, model="confocal", excitation=500.0)
    with pytest.raises(ValueError, match="pinhole_au"):
        make_psf(sp, model="confocal", pinhole_au=-1.0)


def test_lightsheet_sheet_cuts_the_axial_extent():
    """A thin light sheet makes the PSF shorter along z than the detection PSF alone; lateral unchanged."""
    sp = (0.1, 0.05, 0.05)
    kw = dict(na=1.0, wavelength=0.52, n_immersion=1.333, shape=(61, 41, 41))
    det = fwhm(widefield_psf(sp, **kw), sp)
    thin = fwhm(make_psf(sp, model="lightsheet", sheet_fwhm=0.8, **kw), sp)
    assert thin[0] < 0.8 * det[0]
    assert thin[1] == pytest.approx(det[1], rel=0.02)
    with pytest.raises(ValueError, match="sheet_fwhm"):
        make_psf(sp, model="lightsheet", sheet_fwhm=0.0)
