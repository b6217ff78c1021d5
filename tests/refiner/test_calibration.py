"""The rendered kernel measured on the volume (restore3d.refiner.calibration) and rendering on a working grid."""
import numpy as np
import pytest

from restore3d.assess import ideal_volume
from restore3d.beads import new_table
from restore3d.refiner.calibration import calibrate_kernel, marginal_variances, render
from restore3d.selfcheck import widths_against_ideal
from restore3d.target import FWHM_PER_SIGMA

FWHM = 0.3  # target FWHM, um


def _objects(shape, spacing, sigma_obj_um, n=18, seed=0):
    """Isolated Gaussian 'objects' (per-axis sigma in um) at random sub-voxel positions, unit flux each."""
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing, float)
    beads = new_table(n)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in (2, 3, 3)], indexing="ij"), -1).reshape(-1, 3)[:n]
    cells = (np.asarray(shape) - 8) / np.array([2, 3, 3])
    pos = 4 + (grid + 0.5) * cells + rng.uniform(-0.5, 0.5, (n, 3))
    for a, ax in enumerate("zyx"):
        beads[ax] = pos[:, a]
    beads["flux"] = rng.uniform(0.5, 2.0, n)
    # an object of per-axis sigma: ideal beads of an anisotropic width, i.e. scaled axes
    vol = np.zeros(shape, np.float32)
    for b in beads:
        axes = [np.exp(-0.5 * ((np.arange(k) - b[ax]) * d / s) ** 2)
                for k, ax, d, s in zip(shape, "zyx", sp, sigma_obj_um)]
        blob = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
        vol += (b["flux"] * blob / blob.sum()).astype(np.float32)
    return vol, beads


CASES = [((0.1, 0.044, 0.044), 0.3), ((0.3, 0.1, 0.1), 0.35)]  # z: 3 and 1.2 planes per FWHM


@pytest.mark.parametrize("spacing, fwhm", CASES)
def test_marginal_variance_is_the_sampled_gaussians(spacing, fwhm):
    """A Gaussian sampled at 1.2 voxels per FWHM or finer: the profile's second moment is its variance."""
    shape = (48, 144, 144) if spacing[0] < 0.2 else (24, 96, 96)
    target = fwhm / FWHM_PER_SIGMA
    _, beads = _objects(shape, spacing, (target,) * 3)
    vol = ideal_volume(beads, shape, spacing, fwhm)
    var = marginal_variances(vol, spacing, beads, (3 * fwhm,) * 3)
    np.testing.assert_allclose(np.nanmedian(var, axis=0), target ** 2, rtol=0.03)


@pytest.mark.parametrize("spacing, fwhm", CASES)
def test_calibrated_kernel_renders_the_objects_at_the_target_width(spacing, fwhm):
    """Objects wider along z than across: the measured kernel renders them round at the target FWHM.

    On the coarse stack the objects live on the refiner's working grid and are
    rendered there, then sampled at the stack's planes (as inference does).
    """
    from restore3d.refiner.grid import working_grid
    from restore3d.refiner.inference import _render_on
    shape = (48, 144, 144) if spacing[0] < 0.2 else (24, 96, 96)
    target = fwhm / FWHM_PER_SIGMA
    grid = None if spacing[0] < 0.2 else working_grid(shape, spacing, fwhm)
    obj, _ = _objects(shape if grid is None else grid.shape, spacing if grid is None else grid.spacing,
                      (0.75 * target, 0.45 * target, 0.45 * target))

    def rendered(sigma):
        return _render_on(obj, spacing, grid, sigma)

    def ratios(sigma):
        _, iso, got, ideal = widths_against_ideal(rendered(sigma), spacing, fwhm)
        lateral = np.nanmedian(0.5 * (got["fwhm_y"] + got["fwhm_x"]) / (0.5 * (ideal["fwhm_y"] + ideal["fwhm_x"])))
        return np.nanmedian(got["fwhm_z"] / ideal["fwhm_z"]), lateral

    trained = np.full(3, target)  # a kernel that assumes point objects
    before = ratios(trained)
    assert before[1] > 1.06  # the objects' own width shows (so the test can fail)
    sigma, report = calibrate_kernel(rendered, spacing, fwhm, trained)
    assert report["calibrated"] and report["n_beads"] >= 10
    assert np.all(sigma < trained) and sigma[0] < sigma[1]  # narrower, most along the widest axis
    z, lateral = ratios(sigma)
    assert lateral == pytest.approx(1.0, abs=0.05)
    assert z == pytest.approx(1.0, abs=0.08 if grid is not None else 0.05)
    np.testing.assert_allclose(report["kernel_fwhm_um"], FWHM_PER_SIGMA * sigma)
    # light is kept whatever the kernel
    light = obj.sum() * (1.0 if grid is None else grid.volume_ratio)
    assert rendered(sigma).sum() == pytest.approx(light, rel=1e-3)


def test_too_few_beads_keep_the_trained_kernel():
    spacing = (0.1, 0.044, 0.044)
    target = FWHM / FWHM_PER_SIGMA
    obj, _ = _objects((48, 144, 144), spacing, (0.5 * target,) * 3, n=2)
    trained = np.full(3, target)
    sigma, report = calibrate_kernel(lambda s: render(obj, spacing, s), spacing, FWHM, trained)
    assert not report["calibrated"] and report["n_beads"] < 3
    np.testing.assert_array_equal(sigma, trained)


@pytest.mark.parametrize("kernel", [0.5, 0.7, 0.9])
def test_rendering_from_the_working_grid_keeps_the_targets_width(kernel):
    """Beads whose working-grid object blurred by the kernel is the target's Gaussian come out at the target's
    width on 0.3 / 0.1 um voxels (0.7 planes per FWHM), along every axis and wherever they sit: the kernel is
    evaluated at the source's voxel centres (linear interpolation of the rendered working grid made them 8-12 %
    wider); a constant object stays that constant; a kernel under MIN_RENDER_SIGMA is rendered at it."""
    from restore3d import metrics
    from restore3d.refiner.grid import MIN_RENDER_SIGMA, working_grid
    from restore3d.target import render_target
    sp, fwhm, shape = (0.3, 0.1, 0.1), 0.207, (24, 96, 96)
    g = working_grid(shape, sp, fwhm)
    assert all(c is not None for c in g.centres) and g.spacing[0] < sp[0] / 2
    np.testing.assert_allclose(g.render_to_source(np.full(g.shape, 2.5, np.float32), (0.05, 0.08, 0.08)), 2.5,
                               rtol=1e-3)
    rng = np.random.default_rng(0)
    src = np.column_stack([rng.uniform(4, 20, 30), rng.uniform(8, 88, 30), rng.uniform(8, 88, 30)])
    truth, work = new_table(30), new_table(30)
    for t, p in ((truth, src), (work, g.positions_to_work(src))):
        t["z"], t["y"], t["x"], t["flux"], t["inside"] = p[:, 0], p[:, 1], p[:, 2], 1000.0, True
    target_sigma = fwhm / FWHM_PER_SIGMA
    k = kernel * target_sigma
    obj = render_target(work, g.shape, g.spacing, fwhm_um=np.sqrt(target_sigma ** 2 - k ** 2) * FWHM_PER_SIGMA)
    out = g.render_to_source(obj, (k,) * 3)
    kw = dict(truth=truth, isolation_um=(0.5, 0.3, 0.3), return_widths=True)
    _, widths = metrics.elongation(out, sp, **kw)
    _, ideal = metrics.elongation(render_target(truth, shape, sp, fwhm_um=fwhm), sp, **kw)
    ratio = np.nanmedian(widths, axis=0) / np.nanmedian(ideal, axis=0)
    assert np.all((ratio >= 0.97) & (ratio <= 1.07)), ratio
    floor = MIN_RENDER_SIGMA * np.asarray(g.spacing)
    np.testing.assert_array_equal(g.rendered_sigma(0.2 * floor), floor)
    np.testing.assert_array_equal(g.render_to_source(obj, 0.2 * floor), g.render_to_source(obj, floor))


def test_working_grid_of_a_part_is_the_whole_volumes():
    """A part of a volume (origin) gets the whole volume's working voxels, from a multiple of the pooling grid."""
    from restore3d.refiner.grid import working_grid
    sp, fwhm = (0.3, 0.1, 0.1), 0.23
    vol = np.random.default_rng(1).random((20, 200, 90)).astype(np.float32)
    whole = working_grid(vol.shape, sp, fwhm)
    o = (0, 67, 0)
    part = working_grid((20, 120, 90), sp, fwhm, origin=o, whole_shape=vol.shape, multiple=(4, 8, 8))
    assert part.spacing == whole.spacing
    r = sp[1] / part.spacing[1]  # working voxels per source voxel
    first = int(round((o[1] + 0.5) * r - 0.5 - part.start[1]))  # the part's first working voxel in the whole's
    assert first % 8 == 0 and first <= (o[1] + 0.5) * sp[1] / part.spacing[1]
    a = whole.to_work(vol)[:, first:first + part.shape[1]]
    b = part.to_work(vol[:, o[1]:o[1] + 120])
    inner = slice(10, -2)  # the part's ends are clamped to its own extent (from the pooling grid to its start)
    np.testing.assert_allclose(b[:, inner], a[:, inner], rtol=1e-6, atol=1e-7)
    # and back: an object rendered at the part's voxels is the whole's there, away from the part's mirrored edges
    obj = np.random.default_rng(3).random(whole.shape).astype(np.float32)
    sigma = (0.1, 0.09, 0.09)
    back_whole = whole.render_to_source(obj, sigma)[:, o[1]:o[1] + 120]
    back_part = part.render_to_source(np.ascontiguousarray(obj[:, first:first + part.shape[1]]), sigma)
    np.testing.assert_allclose(back_part[:, 8:-8], back_whole[:, 8:-8], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, spacing", [((30, 40, 44), (0.3, 0.1, 0.1)), ((12, 70, 33), (0.1, 0.044, 0.05))])
def test_working_grid_resampling_equals_the_dense_matrix_products(shape, spacing):
    """to_work and object_to_source (applied as sparse gathers, shrinking axes first)
    equal the dense per-axis matrix products; object_to_source is to_work's adjoint and keeps the light."""
    from restore3d.refiner.grid import working_grid
    g = working_grid(shape, spacing, 0.3)
    assert sum(m is not None for m in g.mats) >= 2
    rng = np.random.default_rng(2)
    vol = rng.random(shape).astype(np.float32)
    obj = rng.random(g.shape).astype(np.float32)

    def dense(mats, x):
        for axis, m in enumerate(mats):
            if m is not None:
                x = np.moveaxis(np.tensordot(m.astype(np.float64), x, axes=(1, axis)), 0, axis)
        return x

    np.testing.assert_allclose(g.to_work(vol), dense(g.mats, vol.astype(np.float64)), rtol=1e-5, atol=1e-6)
    back = g.object_to_source(obj)
    np.testing.assert_allclose(back, g.volume_ratio * dense([None if m is None else m.T for m in g.mats],
                                                             obj.astype(np.float64)), rtol=1e-5, atol=1e-6)
    # <A v, o> = <v, A^T o>: object_to_source / volume_ratio is the adjoint of to_work
    lhs = float(np.sum(g.to_work(vol).astype(np.float64) * obj))
    rhs = float(np.sum(vol.astype(np.float64) * back)) / g.volume_ratio
    assert lhs == pytest.approx(rhs, rel=1e-5)
