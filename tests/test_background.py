import numpy as np
import pytest

from restore3d.background import estimate_background, estimate_noise, subtract_background
from restore3d.simulate import AmbientLight, simulate_beads

SP = (0.3, 0.1, 0.1)
METHODS = ["wavelet", "rolling_ball", "percentile"]


@pytest.mark.parametrize("method", METHODS)
def test_constant_volume_becomes_zero(method):
    """A constant volume has zero residual after background removal."""
    vol = np.full((12, 48, 48), 137.0, np.float32)
    out = subtract_background(vol, SP, method=method)
    assert np.abs(out).max() < 1e-3
    assert out.dtype == np.float32


@pytest.fixture(scope="module")
def glow_sim():
    return simulate_beads((24, 128, 128), SP, n_beads=30, flux=8000,
                          ambient=AmbientLight(offset=100, level=60, strength=0.6), seed=21)


@pytest.mark.parametrize("method,within", [("wavelet", 0.3), ("rolling_ball", 1.0)])
def test_smooth_ambient_removed_within_noise(glow_sim, method, within):
    """Gradient, blobs and z drift are removed to within the noise (wavelet: a third of it)."""
    sim = glow_sim
    bg = estimate_background(sim.raw, SP, method=method)
    err = bg - sim.background
    noise = estimate_noise(sim.raw)
    assert abs(err.mean()) < within * noise
    assert err.std() < within * noise
    # the field itself varies much more than that
    assert sim.background.std() > 2 * err.std()


def test_percentile_cannot_follow_gradients(glow_sim):
    """The constant estimate leaves the spatial variation of the glow (why wavelet is the default)."""
    bg = estimate_background(glow_sim.raw, SP, method="percentile")
    assert (bg - glow_sim.background).std() > 0.8 * glow_sim.background.std()


@pytest.mark.parametrize("method", ["wavelet", "rolling_ball"])
def test_bead_peaks_kept_within_10_percent(method):
    """Noise-free beads on ambient light keep their peak height within 10 %."""
    sim = simulate_beads((24, 128, 128), SP, n_beads=30, flux=8000, poisson=False, read_noise=0,
                         ambient=AmbientLight(offset=100, level=60, strength=0.6), seed=21)
    out = subtract_background(sim.raw, SP, method=method)
    idx = tuple(np.round(np.stack([sim.inside["z"], sim.inside["y"], sim.inside["x"]])).astype(int))
    ratio = out[idx] / sim.clean[idx]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.1)
    assert np.percentile(ratio, 10) > 0.85


@pytest.mark.parametrize("method", METHODS)
def test_never_negative_never_nan(glow_sim, method):
    """Output is >= 0 and finite."""
    out = subtract_background(glow_sim.raw, SP, method=method)
    assert np.isfinite(out).all() and out.min() >= 0


def test_input_untouched_and_errors(glow_sim):
    """The caller's array is not modified; bad options are rejected."""
    raw = glow_sim.raw.copy()
    subtract_background(glow_sim.raw, SP)
    np.testing.assert_array_equal(raw, glow_sim.raw)
    with pytest.raises(ValueError, match="unknown background method 'tophat'"):
        subtract_background(raw, SP, method="tophat")
    with pytest.raises(ValueError, match="unknown wavelet"):
        subtract_background(raw, SP, wavelet="nope")
    with pytest.raises(ValueError, match="percentile must be within"):
        subtract_background(raw, SP, method="percentile", percentile=120)
    with pytest.raises(ValueError, match="axial must be"):
        subtract_background(raw, SP, axial="2d")


def test_noise_estimate():
    """estimate_noise recovers the sigma of white Gaussian noise."""
    rng = np.random.default_rng(0)
    vol = (50 + 4.0 * rng.standard_normal((16, 64, 64))).astype(np.float32)
    assert estimate_noise(vol) == pytest.approx(4.0, rel=0.03)


def test_noise_of_quantised_data_is_not_zero():
    """On integer data whose background is mostly one value (8-bit confocal) the noise estimate stays
    close to the true one instead of the zero a plain MAD gives."""
    from restore3d.background import estimate_noise
    rng = np.random.default_rng(0)
    vol = np.round(rng.normal(1.0, 0.3, (20, 64, 64))).astype(np.float32)
    assert estimate_noise(vol) == pytest.approx(0.3, rel=0.15)
    assert estimate_noise(rng.normal(1.0, 0.3, (20, 64, 64))) == pytest.approx(0.3, rel=0.05)
