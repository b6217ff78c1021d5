import pytest

from restore3d.assess import compare_to_raw, ideal_volume
from restore3d.psf import gaussian_psf
from restore3d.simulate import AmbientLight, simulate_beads

SP = (0.2, 0.08, 0.08)


@pytest.fixture(scope="module")
def raw():
    """Background-free, lightly noisy beads, elongated 3x along z, with their truth."""
    psf = gaussian_psf(SP, fwhm_lateral=0.3, fwhm_axial=0.9)
    sim = simulate_beads((40, 96, 96), SP, n_beads=16, psf=psf, bead_diameter=0.0, flux=20000.0, read_noise=0.5,
                         ambient=AmbientLight(offset=0, level=0), min_separation=2.0, seed=2)
    return sim


def test_raw_against_itself(raw):
    """A volume compared with itself: same beads, nothing invented, every ratio 1."""
    c = compare_to_raw(raw.raw, raw.raw, SP)
    assert c.beads == c.raw_beads == c.matched and c.invented == 0
    assert c.flux_ratio == pytest.approx(1.0) and c.lateral_vs_raw == pytest.approx(1.0)
    assert c.raw_elongation == pytest.approx(3.0, rel=0.15)


def test_ideal_beads_are_round_against_the_ideal(raw):
    """Isotropic beads of the raw lateral FWHM at the raw positions measure as the ideal, with the raw's light."""
    from restore3d.assess import beads_above
    beads, _ = beads_above(raw.raw, SP)
    ideal = ideal_volume(raw.truth, raw.raw.shape, SP, 0.3) * 20000.0
    c = compare_to_raw(ideal, raw.raw, SP)
    assert c.elongation_vs_ideal == pytest.approx(1.0, abs=0.05)
    assert c.lateral_vs_raw == pytest.approx(1.0, abs=0.08)
    assert c.flux_ratio == pytest.approx(1.0, abs=0.1)
    assert len(beads) >= 12


def test_invented_spots_counted(raw):
    """Bright spots where the raw volume has no bead are counted as invented."""
    out = raw.raw.copy()
    out[20, 5, 90] = out[20, 90, 5] = float(raw.raw.max())
    c = compare_to_raw(out, raw.raw, SP)
    assert c.invented == 2


def test_shape_mismatch_rejected(raw):
    """Comparing volumes on different grids is refused."""
    with pytest.raises(ValueError, match="differs from raw shape"):
        compare_to_raw(raw.raw[1:], raw.raw, SP)


def test_smoothed_lateral_width_is_not_biased_by_noise():
    """A noisy raw bead's half-maximum through its brightest voxel reads narrow; the smoothed measure does not."""
    import numpy as np
    psf = gaussian_psf(SP, fwhm_lateral=0.3, fwhm_axial=0.9)
    kw = dict(n_beads=16, psf=psf, bead_diameter=0.0, ambient=AmbientLight(offset=0, level=0), min_separation=2.0,
              seed=5)
    clean = simulate_beads((40, 96, 96), SP, flux=1e7, read_noise=0.0, **kw)
    noisy = simulate_beads((40, 96, 96), SP, flux=3000.0, read_noise=2.0, **kw)
    c_clean = compare_to_raw(clean.raw, clean.raw, SP)
    c_noisy = compare_to_raw(noisy.raw, noisy.raw, SP)
    # on smooth beads both measures agree with the PSF's 0.3 um
    assert c_clean.raw_lateral_um == pytest.approx(0.3, rel=0.05)
    assert c_clean.raw_lateral_smoothed_um == pytest.approx(0.3, rel=0.05)
    # noise makes the plain measure narrow, not the smoothed one
    assert c_noisy.raw_lateral_um < 0.95 * c_noisy.raw_lateral_smoothed_um
    assert c_noisy.raw_lateral_smoothed_um == pytest.approx(0.3, rel=0.06)
    assert np.isfinite(c_noisy.lateral_vs_raw_smoothed)


def test_beads_centred_beyond_a_face_are_not_counted():
    """A raw bead centred outside the volume shows as a maximum on its face; a restoration that places it
    beyond the face (RL's "extend" boundary) shows nothing there. Neither count holds it, so the counts agree;
    it is reported as a face bead and still counts as a neighbour (nothing near it is invented)."""
    import numpy as np

    from restore3d.beads import new_table, set_positions
    from restore3d.target import render_target
    inside = [(10.0, 30.0, 30.0), (25.0, 60.0, 40.0), (20.0, 40.0, 75.0)]
    beyond = [(18.0, 50.0, -1.5)]  # 1.5 voxels outside the x = 0 face

    def render(pos):
        t = set_positions(new_table(len(pos)), np.asarray(pos), SP)
        t["flux"] = 5000.0
        return render_target(t, (40, 96, 96), SP, fwhm_um=0.3)

    raw = render(inside + beyond)
    assert np.unravel_index(np.argmax(raw[:, :, :3]), raw[:, :, :3].shape)[2] == 0  # its maximum on the face
    restored = render(inside)
    c = compare_to_raw(restored, raw, SP)
    assert c.raw_beads == c.beads == c.matched == 3 and c.raw_face_beads == 1 and c.invented == 0


@pytest.fixture(scope="module")
def haloed():
    """Beads under a PSF with a halo: 70 % of the light in a (0.3, 0.9) um core, 30 % in a 3x wider halo."""
    shape = (21, 41, 41)
    core = gaussian_psf(SP, fwhm_lateral=0.3, fwhm_axial=0.9, shape=shape)
    halo = gaussian_psf(SP, fwhm_lateral=0.9, fwhm_axial=2.7, shape=shape)
    psf = 0.7 * core / core.sum() + 0.3 * halo / halo.sum()
    sim = simulate_beads((40, 128, 128), SP, n_beads=16, psf=psf, bead_diameter=0.0, flux=20000.0,
                         flux_spread=0.0, read_noise=0.5, ambient=AmbientLight(offset=0, level=0),
                         min_separation=3.0, seed=4)
    return sim, psf


def test_psf_fit_photometry_gives_a_restoration_that_keeps_the_light_a_ratio_of_1(haloed):
    """Each bead's true light drawn round (a perfect restoration) scores 1 when the raw beads' light is their
    PSF-fitted flux; the +-2 FWHM window misses the halo and reads the same restoration as brighter."""
    sim, psf = haloed
    perfect = ideal_volume(sim.truth, sim.raw.shape, SP, 0.3) * 20000.0
    fitted = compare_to_raw(perfect, sim.raw, SP, psf=psf)
    assert fitted.flux_method == "psf fit" and fitted.isolated >= 5
    assert fitted.flux_ratio == pytest.approx(1.0, abs=0.05), fitted
    assert fitted.window_flux_ratio > 1.15, fitted
    windowed = compare_to_raw(perfect, sim.raw, SP)
    assert windowed.flux_method == "window" and windowed.flux_ratio == pytest.approx(fitted.window_flux_ratio)
    # halving every bead's light halves the ratio
    assert compare_to_raw(0.5 * perfect, sim.raw, SP, psf=psf).flux_ratio == pytest.approx(
        0.5 * fitted.flux_ratio, rel=0.02)


def test_bad_psf_rejected(raw):
    """A PSF that is not a 3D, non-negative array is refused before any work."""
    import numpy as np
    with pytest.raises(ValueError, match="psf"):
        compare_to_raw(raw.raw, raw.raw, SP, psf=np.ones((5, 5)))
    with pytest.raises(ValueError, match="negative"):
        compare_to_raw(raw.raw, raw.raw, SP, psf=-np.ones((5, 5, 5)))
