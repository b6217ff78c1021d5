import numpy as np
import pytest

from restore3d.psf import gaussian_psf
from restore3d.selfcheck import check_restoration
from restore3d.simulate import AmbientLight, simulate_beads
from restore3d.target import render_target

SP = (0.2, 0.1, 0.1)


@pytest.fixture(scope="module")
def scene():
    """Noise-free beads through a Gaussian PSF, the PSF, and the target a restoration must reach."""
    psf = gaussian_psf(SP, fwhm_lateral=0.3, fwhm_axial=0.9)
    sim = simulate_beads((32, 96, 96), SP, n_beads=20, psf=psf, bead_diameter=0.0, flux=5000.0, poisson=False,
                         read_noise=0.0, ambient=AmbientLight(offset=0, level=0), min_separation=1.5, seed=4)
    return sim, psf


def test_the_target_passes(scene):
    """The ideal restoration is round, as wide as the target, keeps the light and matches the data."""
    sim, psf = scene
    c = check_restoration(sim.target, sim.clean, psf, SP)
    assert c.passed, c.summary()
    assert c.roundness == pytest.approx(1.0, abs=0.05) and c.flux == pytest.approx(1.0, abs=0.05)
    assert c.consistency < 0.2 and c.n_beads >= 10


def test_flattened_beads_fail_roundness(scene):
    """Beads half as long in z as the target fail, and the message says they are flattened."""
    sim, psf = scene
    c = check_restoration(_squash(sim, 0.5), sim.clean, psf, SP)
    assert c.roundness < 0.85 and not c.passed and c.shape_failed
    assert any("flattened" in f for f in c.failed)


def _squash(sim, factor):
    """The target with every bead's axial FWHM times ``factor``, same light."""
    out = np.zeros(sim.raw.shape, np.float32)
    sz, sxy = 0.3 * factor / 2.3548 / SP[0], 0.3 / 2.3548 / SP[1]
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij")
    for b in sim.truth:
        g = np.exp(-0.5 * (((zz - b["z"]) / sz) ** 2 + ((yy - b["y"]) / sxy) ** 2 + ((xx - b["x"]) / sxy) ** 2))
        out += b["flux"] * g / g.sum() if g.sum() > 0 else 0
    return out


def test_too_bright_fails_flux(scene):
    """Beads with twice the light the data shows fail the flux check."""
    sim, psf = scene
    c = check_restoration(2.0 * sim.target, sim.clean, psf, SP)
    assert c.flux == pytest.approx(2.0, rel=0.1)
    assert any(f.startswith("flux") for f in c.failed)
    assert not c.shape_failed and c.as_dict()["shape_passed"]  # the beads' shape is still right


def test_invented_and_missing_beads_raise_the_inconsistency(scene):
    """A restoration with beads the data lacks, or without beads the data has, is inconsistent with it."""
    sim, psf = scene
    base = check_restoration(sim.target, sim.clean, psf, SP).consistency
    half = sim.truth[::2]
    missing = render_target(half, sim.raw.shape, SP, fwhm_um=0.3)
    assert check_restoration(missing, sim.clean, psf, SP).consistency > base + 0.3


def test_bad_input_rejected(scene):
    """Different shapes for the restored volume and its data are refused."""
    sim, psf = scene
    with pytest.raises(ValueError, match="differs from data shape"):
        check_restoration(sim.target[:-1], sim.clean, psf, SP)
