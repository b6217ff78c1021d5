"""Spots the data do not hold (restore3d.support, RemoveUnsupported)."""
import numpy as np
import pytest

import restore3d as r3
from restore3d.psf import gaussian_psf
from restore3d.simulate import AmbientLight, simulate_beads
from restore3d.support import remove_unsupported, spot_support

SP = (0.2, 0.08, 0.08)


@pytest.fixture(scope="module")
def scene():
    """Background-free noisy beads with their PSF, and a restoration of them with two invented spots."""
    psf = gaussian_psf(SP, fwhm_lateral=0.3, fwhm_axial=0.9)
    sim = simulate_beads((32, 96, 96), SP, n_beads=14, psf=psf, bead_diameter=0.0, flux=5000.0, read_noise=1.0,
                         ambient=AmbientLight(offset=0, level=0), min_separation=2.0, seed=7)
    restored = sim.target.copy()
    fakes = []
    for z, y, x in ((16, 6, 88), (8, 88, 8)):  # where the data hold no bead, as bright as the brightest
        d = np.sqrt((((np.stack([sim.truth["z"], sim.truth["y"], sim.truth["x"]], 1) - (z, y, x)) * SP) ** 2).sum(1))
        assert d.min() > 1.0
        restored[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3] += 0.02 * float(sim.target.max())
        restored[z, y, x] += float(sim.target.max())
        fakes.append((z, y, x))
    return sim, psf, restored, fakes


def test_invented_spots_removed_real_beads_kept(scene):
    sim, psf, restored, fakes = scene
    out, info = remove_unsupported(restored, sim.raw, psf, SP, return_info=True)
    assert info.n_removed == 2 and info.n_spots >= 14
    for z, y, x in fakes:
        assert out[z - 2:z + 3, y - 3:y + 4, x - 3:x + 4].max() == 0
    inside = sim.truth[sim.truth["inside"]]
    idx = np.round(np.stack([inside["z"], inside["y"], inside["x"]], 1)).astype(int)
    np.testing.assert_array_equal(out[tuple(idx.T)], restored[tuple(idx.T)])
    assert 0 < info.light_removed < 0.2


def test_support_of_real_beads_is_alike_and_scale_free(scene):
    """Every real bead has about the same support, whatever light scale the restoration keeps."""
    sim, psf, _, _ = scene
    spots, support, _ = spot_support(sim.target, sim.raw, psf, SP)
    _, support10, _ = spot_support(10 * sim.target, sim.raw, psf, SP)
    np.testing.assert_allclose(support10, support / 10, rtol=1e-4)
    bright = support[spots["score"] >= 0.5 * np.median(spots["score"])]
    assert np.percentile(bright, 10) > 0.6 * np.median(bright)
    out, info = remove_unsupported(sim.target, sim.raw, psf, SP, return_info=True)
    assert info.n_removed == 0 and np.array_equal(out, sim.target)


def test_bad_inputs_rejected(scene):
    sim, psf, restored, _ = scene
    with pytest.raises(ValueError, match="min_support must be in"):
        remove_unsupported(restored, sim.raw, psf, SP, min_support=1.5)
    with pytest.raises(ValueError, match="min_support must be in"):
        r3.RemoveUnsupported(min_support=-0.1)
    with pytest.raises(ValueError, match="differs from data shape"):
        remove_unsupported(restored[1:], sim.raw, psf, SP)
    with pytest.raises(ValueError, match="run it after SubtractBackground"):
        r3.Pipeline([r3.RemoveUnsupported()]).run(sim.raw, spacing=SP)


def test_stage_in_a_pipeline_reports_and_chunks_share_the_typical_support(scene):
    sim, psf, _, _ = scene
    pipe = r3.Pipeline([r3.SubtractBackground(), r3.RichardsonLucy(iterations=10), r3.RemoveUnsupported()])
    res = pipe.run(sim.raw, spacing=SP, psf=psf)
    rep = res.info["support"]
    assert rep["n_spots"] > 0 and rep["typical_support"] > 0
    from restore3d.chunked import freeze_pipeline
    frozen, _ = freeze_pipeline(pipe, sim.raw, spacing=SP, psf=psf)
    stage = frozen.steps[-1][1]
    assert stage.typical_support == pytest.approx(rep["typical_support"], rel=1e-6)
