import numpy as np
import pytest

from restore3d.background import subtract_background
from restore3d.psf import fwhm
from restore3d.psf_estimation import estimate_psf, normalized_cross_correlation
from restore3d.simulate import AmbientLight, simulate_beads

SP = (0.3, 0.1, 0.1)


def _check(est, true_psf, spacing):
    ratio = est.fwhm_um / fwhm(true_psf, spacing)
    assert np.all(np.abs(ratio - 1) <= 0.10), ratio
    assert normalized_cross_correlation(est.psf, true_psf) >= 0.95
    assert est.psf.sum() == pytest.approx(1.0, abs=1e-4)
    c = tuple(s // 2 for s in est.psf.shape)
    assert np.unravel_index(est.psf.argmax(), est.psf.shape) == c


def test_recovers_widefield_model():
    """From a simulated widefield volume: FWHM within 10 % per axis, NCC >= 0.95."""
    sim = simulate_beads((32, 160, 160), SP, flux=6000, density=0.02, seed=5)
    vol = subtract_background(sim.raw, SP)
    est = estimate_psf(vol, SP, return_info=True)
    assert est.n_beads >= 5
    _check(est, sim.psf, SP)


def test_recovers_measured_llsm_psf(shared_data):
    """From a volume simulated with the real measured lattice light-sheet PSF: same acceptance."""
    import tifffile
    from restore3d.psf import prepare_psf
    p = prepare_psf(tifffile.imread(shared_data / "llsm-psf" / "psf.tif"), shape=(25, 25, 25))
    sp = (0.1, 0.1, 0.1)
    sim = simulate_beads((48, 160, 160), sp, psf=p, density=0.01, flux=20000, seed=6)
    est = estimate_psf(subtract_background(sim.raw, sp), sp, return_info=True)
    _check(est, p, sp)


def test_model_fits():
    """Gaussian and widefield fits return smooth models that stay close to the truth."""
    sim = simulate_beads((32, 160, 160), SP, flux=6000, density=0.02, seed=5)
    vol = subtract_background(sim.raw, SP)
    wf = estimate_psf(vol, SP, model="widefield", model_params={"wavelength": 0.52, "n_immersion": 1.333},
                      return_info=True)
    assert wf.model_fit["na"] == pytest.approx(1.1, abs=0.1)
    assert normalized_cross_correlation(wf.psf, sim.psf) > 0.97
    g = estimate_psf(vol, SP, model="gaussian", return_info=True)
    np.testing.assert_allclose(g.fwhm_um[1:], fwhm(sim.psf, SP)[1:], rtol=0.1)


def test_no_beads_raises_helpful_error():
    """A volume without beads says so and suggests a PSF or a model."""
    vol = np.random.default_rng(0).normal(10, 1, (16, 64, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="no usable bead.*pass a measured PSF.*PSF model"):
        estimate_psf(np.clip(vol - 10, 0, None), SP, snr=50)


def test_crowded_beads_rejected():
    """When every bead has a neighbour inside its box, none is used and the error lists the reason."""
    sim = simulate_beads((16, 48, 48), SP, n_beads=60, flux=20000, ambient=AmbientLight(0, 0),
                         read_noise=0, seed=1)
    with pytest.raises(ValueError, match="'neighbour': [1-9]"):
        estimate_psf(sim.raw, SP, half_size_um=(2.0, 1.5, 1.5))


def test_prepare_measured_psf():
    """A measured bead stack with a camera offset becomes a centred, offset-free, unit-sum PSF."""
    from restore3d.psf import gaussian_psf, prepare_psf
    true = gaussian_psf(SP, fwhm_lateral=0.3, fwhm_axial=0.9, shape=(15, 21, 21))
    stack = np.full((31, 61, 61), 142.0)
    stack[10:25, 25:46, 15:36] += 7000 * true / true.max()
    p = prepare_psf(stack, shape=(11, 15, 15))
    assert p.shape == (11, 15, 15) and p.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(p.argmax(), p.shape) == (5, 7, 7)
    np.testing.assert_allclose(fwhm(p, SP), [0.9, 0.3, 0.3], rtol=1e-3)
    with pytest.raises(ValueError, match="not understood"):
        prepare_psf(stack, background="median")
    with pytest.raises(ValueError, match="nothing above"):
        prepare_psf(np.full((9, 9, 9), 5.0))
    with pytest.raises(ValueError, match="must be 3D"):
        prepare_psf(np.ones((9, 9)))


def test_prepare_measured_psf_denoises_the_far_field():
    """Noise in a wide PSF's far field: smoothing it before the clip keeps the wings' light right."""
    from restore3d.psf import crop_psf, make_psf, prepare_psf
    sp = (0.25, 0.15, 0.15)
    true = make_psf(sp, model="widefield", na=1.4, wavelength=0.68, n_immersion=1.518, n_sample=1.40, depth=15.0)
    stack = np.zeros([n + 2 * (n // 2) for n in true.shape])
    stack[tuple(slice(n // 2, n // 2 + n) for n in true.shape)] = true * (5000 / true.max())
    rng = np.random.default_rng(0)
    counts = rng.poisson(stack + 100.0) + 100.0 + rng.normal(0.0, 2.0, stack.shape)
    err = {d: np.abs(crop_psf(prepare_psf(counts, shape=true.shape, denoise=d), true.shape) - true).sum()
           for d in (None, 2.0)}
    assert err[2.0] < 0.6 * err[None]
    # a noise-free stack is left as it is
    clean = stack + 100.0
    np.testing.assert_array_equal(prepare_psf(clean, denoise=2.0), prepare_psf(clean, denoise=None))
    with pytest.raises(ValueError, match="denoise must be"):
        prepare_psf(counts, denoise=-1.0)
