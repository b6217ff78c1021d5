import numpy as np
import pytest

from restore3d.psf import fwhm
from restore3d.simulate import AmbientLight, render_target, simulate_beads

SP = (0.3, 0.1, 0.1)
DARK = AmbientLight(offset=0, level=0)


def test_flux_conserved_without_noise():
    """Noise-free, no ambient: the volume holds every inside bead's flux (minus what leaks out)."""
    sim = simulate_beads((40, 96, 96), SP, n_beads=6, ambient=DARK, poisson=False, read_noise=0,
                         margin=(0.3, 0.1, 0.1), psf={"model": "gaussian", "fwhm_lateral": 0.3,
                                                      "fwhm_axial": 0.9}, min_separation=1.0, seed=1)
    inner = sim.inside
    keep = ((inner["z"] > 4) & (inner["z"] < 35) & (inner["y"] > 6) & (inner["y"] < 89)
            & (inner["x"] > 6) & (inner["x"] < 89))
    assert keep.sum() >= 2
    for row in inner[keep]:
        c = np.round([row["z"], row["y"], row["x"]]).astype(int)
        win = sim.clean[c[0] - 4:c[0] + 5, c[1] - 6:c[1] + 7, c[2] - 6:c[2] + 7]
        # a 4-sigma window of a Gaussian holds 99.9 %; neighbours are >= 1 um away
        assert win.sum() == pytest.approx(row["flux"], rel=0.01)
    # the target holds the same flux per bead (isotropic, so a smaller window suffices)
    assert sim.target.sum() <= sim.truth["flux"].sum() + 1e-3


def test_positions_inside_and_margins():
    """n_beads beads lie inside the stack, more in the margins above and below."""
    sim = simulate_beads((16, 64, 64), SP, n_beads=12, seed=2)
    inside = sim.inside
    assert len(inside) == 12
    pos = np.stack([inside["z"], inside["y"], inside["x"]], 1)
    assert np.all(pos >= -0.5) and np.all(pos < np.array([16, 64, 64]) - 0.5)
    outside = sim.truth[~sim.truth["inside"]]
    assert len(outside) > 0 and (outside["z"] < -0.5).any() and (outside["z"] > 15.5).any()
    np.testing.assert_allclose(sim.truth["z_um"], sim.truth["z"] * 0.3)
    assert (np.abs(pos - np.round(pos)) > 0.05).any()  # sub-voxel positions


def test_haze_from_beads_outside():
    """A bead just above the stack puts out-of-focus light into it."""
    sim = simulate_beads((16, 64, 64), SP, n_beads=0, density=0.0, ambient=DARK, poisson=False,
                         read_noise=0, seed=0)
    assert sim.clean.max() == 0
    from restore3d.simulate import _image_beads
    pos = np.array([[-3.0, 32.0, 32.0]])
    img = _image_beads(pos, np.array([1000.0]), sim.psf, (16, 64, 64), SP, 0.1, np.array([5, 5, 5]))
    assert img[0].sum() > 10 and img[0, 32, 32] > img[8, 32, 32]


def test_noise_statistics_flat_field():
    """A flat glow with Poisson + read noise has the right mean and variance."""
    amb = AmbientLight(offset=100.0, level=50.0, shapes=())
    sim = simulate_beads((16, 128, 128), SP, n_beads=0, density=0.0, ambient=amb, read_noise=3.0, seed=4)
    assert sim.raw.mean() == pytest.approx(150.0, abs=0.2)
    assert sim.raw.var() == pytest.approx(50.0 + 9.0, rel=0.03)


def test_ambient_shapes_vary_smoothly():
    """Gradient, blobs and z drift give a smooth non-flat field with the requested mean."""
    sim = simulate_beads((16, 64, 64), SP, n_beads=0, density=0.0,
                         ambient=AmbientLight(offset=10, level=30, strength=0.5), seed=5)
    glow = sim.background - 10
    assert glow.mean() == pytest.approx(30, rel=1e-3)
    assert glow.std() > 1.0
    assert np.abs(np.diff(glow, axis=2)).max() < 0.1 * glow.mean()  # smooth laterally
    with pytest.raises(ValueError, match="unknown ambient shapes"):
        AmbientLight(shapes=("stripes",))


def test_seed_reproducible():
    """The same seed gives identical volumes and truth; another seed differs."""
    a = simulate_beads((12, 48, 48), SP, n_beads=5, seed=7)
    b = simulate_beads((12, 48, 48), SP, n_beads=5, seed=7)
    c = simulate_beads((12, 48, 48), SP, n_beads=5, seed=8)
    np.testing.assert_array_equal(a.raw, b.raw)
    assert a.truth.tobytes() == b.truth.tobytes()  # bit for bit (unused columns are NaN)
    assert not np.array_equal(a.raw, c.raw)


@pytest.mark.parametrize("centre", [(12.0, 30.0, 31.0), (11.37, 30.5, 29.81)])
def test_target_isotropic_and_flux_exact(centre):
    """A target bead is a Gaussian of the requested FWHM on every axis and sums to its flux."""
    from restore3d.beads import new_table
    truth = new_table(1)
    truth["z"], truth["y"], truth["x"] = centre
    truth["flux"] = 1234.0
    t = render_target(truth, (24, 64, 64), SP, fwhm_um=0.25)
    assert t.sum() == pytest.approx(1234.0, rel=1e-5)
    np.testing.assert_allclose(fwhm(t, SP), [0.25, 0.25, 0.25], rtol=1e-4)


def test_simulation_target_uses_lateral_psf_fwhm():
    """By default the target FWHM is the PSF's lateral FWHM."""
    sim = simulate_beads((12, 48, 48), SP, n_beads=3, seed=3)
    assert sim.target_fwhm == pytest.approx(np.mean(fwhm(sim.psf, SP)[1:]))


def test_psf_argument_forms():
    """A PSF can be given as array, model dict or model name."""
    from restore3d.psf import gaussian_psf
    arr = gaussian_psf(SP, fwhm_lateral=0.3, fwhm_axial=1.0)
    a = simulate_beads((8, 32, 32), SP, n_beads=2, psf=arr, seed=0)
    np.testing.assert_array_equal(a.psf, arr)
    b = simulate_beads((8, 32, 32), SP, n_beads=2, psf={"model": "widefield", "na": 0.9, "wavelength": 0.6,
                                                        "n_immersion": 1.0}, seed=0)
    assert fwhm(b.psf, SP)[1] == pytest.approx(0.51 * 0.6 / 0.9, rel=0.1)
    with pytest.raises(ValueError, match="density"):
        simulate_beads((8, 32, 32), SP, density=-1)


def test_detector_digitises_like_an_8_bit_camera():
    """An 8-bit detector gives whole counts, clips the background at its floor and saturates bright beads;
    target and clean volume are in counts too (photons times the gain)."""
    from restore3d.simulate import Detector
    kw = dict(n_beads=4, flux=20000.0, ambient=AmbientLight(offset=0.5, level=0.5), read_noise=0.3, seed=3)
    plain = simulate_beads((16, 64, 64), (0.3, 0.1, 0.1), **kw)
    cam = simulate_beads((16, 64, 64), (0.3, 0.1, 0.1), detector=Detector(bits=8, gain=2.0, floor=1.0), **kw)
    assert np.array_equal(cam.raw, np.round(cam.raw))
    assert cam.raw.min() == 1.0 and cam.raw.max() == 255.0
    assert float(np.median(cam.raw)) <= 4.0
    np.testing.assert_allclose(cam.target, 2.0 * plain.target, rtol=1e-6)
    with pytest.raises(ValueError, match="bits"):
        Detector(bits=7.5)
    with pytest.raises(ValueError, match="gain"):
        Detector(gain=0)
