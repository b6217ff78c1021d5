"""Training losses (restore3d.refiner.training.losses)."""
import pytest

torch = pytest.importorskip("torch")

from restore3d.refiner.training.losses import combined_loss, imbalanced_loss, l1_loss, make_loss, mse_loss  # noqa: E402

SP = (0.3, 0.1, 0.1)


def test_losses_hand_computed():
    """Each loss equals its formula on a small hand-checked example."""
    t = torch.tensor([0.0, 0.05, 0.5, 1.0]).view(1, 1, 1, 1, 4)
    p = torch.tensor([0.1, 0.0, 0.7, 0.6]).view(1, 1, 1, 1, 4)
    # |t - p| = 0.1, 0.05, 0.2, 0.4 ; tau 0.1 of max 1 -> weights 1, 1, M, M
    assert float(l1_loss(p, t)) == pytest.approx((0.1 + 0.05 + 0.2 + 0.4) / 4)
    assert float(mse_loss(p, t)) == pytest.approx((0.01 + 0.0025 + 0.04 + 0.16) / 4)
    assert float(imbalanced_loss(p, t, tau=0.1, weight=1000)) == pytest.approx((0.1 + 0.05 + 200 + 400) / 4)
    assert float(imbalanced_loss(p, t, tau=0.6, weight=10)) == pytest.approx((0.1 + 0.05 + 0.2 + 4.0) / 4)
    assert float(combined_loss(p, t, tau=0.1, weight=10, mse_weight=2.0)) == pytest.approx(
        (0.1 + 0.05 + 2 + 4) / 4 + 2 * (0.01 + 0.0025 + 0.04 + 0.16) / 4)
    # the default threshold tau = 0.01 also weights the 0.05 voxel
    assert float(imbalanced_loss(p, t, weight=10)) == pytest.approx((0.1 + 0.5 + 2 + 4) / 4)
    with pytest.raises(ValueError, match="unknown loss 'l3'"):
        make_loss("l3")


def test_imbalanced_threshold_per_sample():
    """The threshold is relative to each sample's own maximum."""
    t = torch.zeros(2, 1, 1, 1, 2)
    t[0, ..., 0] = 1.0
    t[1, ..., 0] = 100.0
    p = torch.zeros_like(t)
    # both samples: the peak voxel is foreground (weight 5), the other is background
    assert float(imbalanced_loss(p, t, weight=5)) == pytest.approx((5 * 1 + 5 * 100) / 4)


def test_imbalanced_dilation_weights_the_neighbours():
    """dilate=1 gives the voxels next to a bead core the bead weight; farther ones keep weight 1 (tau = 0.1)."""
    t = torch.zeros(1, 1, 5, 1, 1)
    t[0, 0, 2] = 1.0       # bead core
    t[0, 0, 1] = 0.02      # plane above: below tau, next to the core
    p = torch.zeros_like(t)
    p[0, 0, 3] = 0.1       # plane below: an error next to the core
    p[0, 0, 0] = 0.3       # two planes away: not a neighbour
    # errors: 0.3 (w 1), 0.02 (w M), 1.0 (w M), 0.1 (w M), 0 -> mean over 5 voxels
    assert float(imbalanced_loss(p, t, tau=0.1, weight=10)) == pytest.approx((0.3 + 0.02 + 10 * 1.0 + 0.1) / 5)
    assert float(imbalanced_loss(p, t, tau=0.1, weight=10, dilate=1)) == pytest.approx(
        (0.3 + 10 * 0.02 + 10 * 1.0 + 10 * 0.1) / 5)
    with pytest.raises(ValueError, match="dilate must be a whole number"):
        imbalanced_loss(p, t, dilate=-1)


def _best_constant(p_bead, **params):
    """The constant value at one voxel minimising the expected loss when a bead of brightness 1 lights it with
    probability ``p_bead`` (the other voxel holds a bead of brightness 1 in every sample, setting the threshold)."""
    n = 100
    k = int(round(p_bead * n))
    t = torch.zeros(n, 1, 1, 1, 2)
    t[:, ..., 1] = 1.0
    t[:k, ..., 0] = 1.0
    grid = torch.linspace(0.0, 1.0, 101)
    costs = []
    for v in grid:
        p = t.clone()
        p[:, ..., 0] = v
        costs.append(float(imbalanced_loss(p, t, tau=0.1, **params)))
    return float(grid[int(torch.tensor(costs).argmin())])


def test_false_weight_moves_the_optimum_from_any_chance_to_the_median():
    """With the original weighting a voxel is painted as soon as a bead may light it with chance > 1 / (M + 1); with
    false_weight = M only above one half (the median: no smear where a bead's position is uncertain)."""
    assert _best_constant(0.2, weight=20) == pytest.approx(1.0)
    assert _best_constant(0.03, weight=20) == pytest.approx(0.0)
    assert _best_constant(0.2, weight=20, false_weight=20) < 0.1
    assert _best_constant(0.4, weight=20, false_weight=20) < 0.1
    assert _best_constant(0.6, weight=20, false_weight=20) == pytest.approx(1.0)
    # in general the threshold is false_weight / (weight + false_weight): 5 / 25 = 0.2
    assert _best_constant(0.15, weight=20, false_weight=5) < 0.1
    assert _best_constant(0.25, weight=20, false_weight=5) == pytest.approx(1.0)


def test_false_weight_hand_computed_and_its_reach():
    """Lit voxels without a bead get false_weight; with false_reach only those near a bead voxel (tau = 0.1)."""
    t = torch.zeros(1, 1, 8, 1, 1)
    t[0, 0, 2] = 1.0         # bead
    p = torch.zeros_like(t)
    p[0, 0, 2] = 0.5         # bead voxel, error 0.5 (weight M)
    p[0, 0, 3] = 0.3         # lit next to the bead
    p[0, 0, 7] = 0.2         # lit five planes away
    p[0, 0, 5] = 0.05        # not lit (below the threshold): weight 1
    assert float(imbalanced_loss(p, t, tau=0.1, weight=10)) == pytest.approx((10 * 0.5 + 0.3 + 0.2 + 0.05) / 8)
    assert float(imbalanced_loss(p, t, tau=0.1, weight=10, false_weight=4)) == pytest.approx(
        (10 * 0.5 + 4 * 0.3 + 4 * 0.2 + 0.05) / 8)
    assert float(imbalanced_loss(p, t, tau=0.1, weight=10, false_weight=4, false_reach=2)) == pytest.approx(
        (10 * 0.5 + 4 * 0.3 + 0.2 + 0.05) / 8)
    assert float(make_loss("combined", tau=0.1, weight=10, false_weight=4, mse_weight=0.0)(p, t)) == pytest.approx(
        (10 * 0.5 + 4 * 0.3 + 4 * 0.2 + 0.05) / 8)
    with pytest.raises(ValueError, match="false_reach must be a whole number"):
        imbalanced_loss(p, t, false_weight=2, false_reach=-1)
