"""Quality measures of a restored bead volume, independent of the pipeline.

Positions are in voxels (z, y, x) or bead tables; tolerances, widths and
errors are in micrometres.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from ._checks import as_spacing, as_volume
from .detect import detect_beads, measure_beads, positions_of

__all__ = ["match_beads", "detection_scores", "average_precision", "localisation_rmse",
           "bead_widths", "elongation", "isolated", "background_residual",
           "nrmse", "psnr", "ssim", "evaluate", "spurious_spots", "DEFAULT_TOLERANCE_UM"]

#: Detection match tolerance (z, y, x) in micrometres.
DEFAULT_TOLERANCE_UM = (0.6, 0.3, 0.3)


def _scaled(pos, spacing, tol):
    return positions_of(pos) * np.asarray(spacing) / np.asarray(tol)


def _truth_split(truth):
    """Positions to find and positions to ignore (beads outside the stack)."""
    if isinstance(truth, np.ndarray) and truth.dtype.names and "inside" in truth.dtype.names:
        return positions_of(truth[truth["inside"]]), positions_of(truth[~truth["inside"]])
    return positions_of(truth), np.zeros((0, 3))


def match_beads(pred, truth, *, spacing, tolerance_um=DEFAULT_TOLERANCE_UM):
    """One-to-one matching of predicted and true beads within an ellipsoidal tolerance.

    A pair can match when ``sum(((p - t) * spacing / tolerance_um) ** 2) <= 1``;
    among those, the matching maximising the number of pairs and then
    minimising total distance is chosen (Hungarian algorithm).

    Returns
    -------
    i_pred, i_true : int ndarrays
        Indices of matched pairs.
    """
    spacing = as_spacing(spacing)
    p = _scaled(pred, spacing, tolerance_um)
    t = _scaled(truth, spacing, tolerance_um)
    if len(p) == 0 or len(t) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    tree = cKDTree(t)
    pairs = tree.query_ball_point(p, r=1.0 + 1e-9)
    rows, cols = [], []
    for i, js in enumerate(pairs):
        rows.extend([i] * len(js))
        cols.extend(js)
    if not rows:
        return np.zeros(0, int), np.zeros(0, int)
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    # restrict the assignment to predictions / truths that have any candidate
    up, ip = np.unique(rows, return_inverse=True)
    ut, it = np.unique(cols, return_inverse=True)
    cost = np.full((len(up), len(ut)), 1e6)
    d = np.linalg.norm(p[rows] - t[cols], axis=1)
    cost[ip, it] = d
    r, c = linear_sum_assignment(cost)
    ok = cost[r, c] < 1e6
    return up[r[ok]], ut[c[ok]]


def localisation_rmse(pred, truth, i_pred, i_true, *, spacing) -> tuple[float, float]:
    """Lateral and axial RMSE in micrometres over matched pairs (NaN when none)."""
    if len(i_pred) == 0:
        return float("nan"), float("nan")
    d = (positions_of(pred)[i_pred] - positions_of(truth)[i_true]) * np.asarray(as_spacing(spacing))
    lateral = float(np.sqrt(np.mean(d[:, 1] ** 2 + d[:, 2] ** 2)))
    axial = float(np.sqrt(np.mean(d[:, 0] ** 2)))
    return lateral, axial


def _ignored(pred, ignore, spacing, tol):
    """Predictions within twice the tolerance of a bead outside the stack.

    Such beads leave their brightest voxel on the stack's face, farther from
    their true centre than an inside bead would; those maxima are neither
    hits nor false alarms.
    """
    if len(ignore) == 0 or len(pred) == 0:
        return np.zeros(len(pred), bool)
    tree = cKDTree(_scaled(ignore, spacing, tol))
    d, _ = tree.query(_scaled(pred, spacing, tol))
    return d <= 2.0 + 1e-9


def _rank_matches(pred, scores, truth, spacing, tol):
    """Greedy matching down the score ranking.

    Returns the ranked outcome per counted prediction (1 hit, 0 false
    alarm; ignored ones dropped), the matched truth index per counted
    prediction (-1 for false alarms), the ranked prediction indices that
    were counted, and the positions to find.
    """
    find, ignore = _truth_split(truth)
    p = positions_of(pred)
    scores = np.asarray(scores, float)
    order = np.argsort(-scores, kind="stable")
    skip = _ignored(p[order], ignore, spacing, tol)
    t_scaled = _scaled(find, spacing, tol)
    p_scaled = _scaled(p[order], spacing, tol)
    tree = cKDTree(t_scaled) if len(find) else None
    taken = np.zeros(len(find), bool)
    hits, matched, counted = [], [], []
    for k, i in enumerate(order):
        js = tree.query_ball_point(p_scaled[k], r=1.0 + 1e-9) if tree is not None else []
        js = [j for j in js if not taken[j]]
        if js:
            j = min(js, key=lambda j: np.sum((t_scaled[j] - p_scaled[k]) ** 2))
            taken[j] = True
            hits.append(1)
            matched.append(j)
            counted.append(i)
        elif not skip[k]:
            hits.append(0)
            matched.append(-1)
            counted.append(i)
    return np.asarray(hits, int), np.asarray(matched, int), np.asarray(counted, int), find


def average_precision(pred, scores, truth, *, spacing, tolerance_um=DEFAULT_TOLERANCE_UM) -> float:
    """Area under the precision-recall curve, predictions ranked by ``scores``.

    Going down the ranking, each prediction takes the nearest unmatched true
    bead within tolerance (true positive) or is a false positive; predictions
    near beads outside the stack (``truth["inside"] == False``) are ignored.
    Precision is made monotone before integrating over recall (all-points
    interpolation, as in PASCAL VOC / COCO).
    """
    spacing = as_spacing(spacing)
    hits, _, _, find = _rank_matches(pred, scores, truth, spacing, tolerance_um)
    if len(find) == 0:
        return float("nan")
    if hits.size == 0:
        return 0.0
    ctp = np.cumsum(hits)
    precision = ctp / np.arange(1, len(hits) + 1)
    recall = ctp / len(find)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    r_prev = np.concatenate([[0.0], recall[:-1]])
    return float(np.sum((recall - r_prev) * precision))


def detection_scores(pred, truth, *, spacing, tolerance_um=DEFAULT_TOLERANCE_UM,
                     scores=None) -> dict:
    """Precision, recall, F1, localisation RMSE and, with scores, average precision.

    Parameters
    ----------
    pred : bead table or (N, 3) array
        Detected positions in voxels; a table's ``score`` field is used when
        ``scores`` is None.
    truth : bead table or (M, 3) array
        True positions; with an ``inside`` field, beads outside the stack are
        neither required nor counted against predictions near them.
    spacing : (dz, dy, dx) floats, micrometres
    tolerance_um : (tz, ty, tx) floats
        Ellipsoidal match tolerance in micrometres.
    scores : (N,) floats, optional
        Confidence of each prediction. With scores, ``f1``, ``precision``,
        ``recall`` and the RMSEs are taken at the score threshold that
        maximises F1 (so methods with different output scales compare
        fairly; the threshold is returned as ``threshold``) and ``ap`` is
        added. Without, every prediction counts, matched one-to-one
        (Hungarian).

    Returns
    -------
    dict
    """
    spacing = as_spacing(spacing)
    if scores is None and isinstance(pred, np.ndarray) and pred.dtype.names and "score" in pred.dtype.names:
        scores = pred["score"]
    p = positions_of(pred)
    find, ignore = _truth_split(truth)
    if scores is None:
        keep = ~_ignored(p, ignore, spacing, tolerance_um)
        i_p, i_t = match_beads(p, find, spacing=spacing, tolerance_um=tolerance_um)
        keep[i_p] = True
        tp = len(i_p)
        fp = int(keep.sum()) - tp
        threshold = None
    else:
        hits, matched, counted, _ = _rank_matches(p, scores, truth, spacing, tolerance_um)
        ctp = np.cumsum(hits)
        n = np.arange(1, len(hits) + 1)
        f1_curve = 2 * ctp / (n + len(find)) if len(hits) else np.zeros(0)
        k = int(np.argmax(f1_curve)) if len(hits) else -1
        tp = int(ctp[k]) if k >= 0 else 0
        fp = int(k + 1 - tp) if k >= 0 else 0
        sel = slice(0, k + 1)
        i_p = counted[sel][hits[sel] == 1]
        i_t = matched[sel][hits[sel] == 1]
        threshold = float(np.asarray(scores)[counted[k]]) if k >= 0 else None
    fn = len(find) - tp
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")
    lat, ax = localisation_rmse(p, find, i_p, i_t, spacing=spacing)
    out = {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn,
           "rmse_lateral_um": lat, "rmse_axial_um": ax}
    if scores is not None:
        out["ap"] = average_precision(p, scores, truth, spacing=spacing, tolerance_um=tolerance_um)
        out["threshold"] = threshold
    return out


def isolated(positions, *, spacing, radius_um: Sequence[float] = (2.0, 1.0, 1.0),
             others=None) -> np.ndarray:
    """Mask of beads with no neighbour within an ellipsoid of semi-axes ``radius_um``.

    Neighbours are searched among ``others`` (default: ``positions``
    themselves); a bead never counts as its own neighbour.
    """
    spacing = as_spacing(spacing)
    p = _scaled(positions, spacing, radius_um)
    population = p if others is None else _scaled(others, spacing, radius_um)
    if len(p) == 0:
        return np.zeros(0, bool)
    tree = cKDTree(population)
    out = np.empty(len(p), bool)
    for i, js in enumerate(tree.query_ball_point(p, r=1.0)):
        d = np.linalg.norm(population[js] - p[i], axis=1) if js else np.zeros(0)
        out[i] = not np.any(d > 1e-9)
    return out


def bead_widths(volume, spacing, positions, *, window_um=(1.5, 0.6, 0.6)) -> np.ndarray:
    """FWHM (z, y, x) in micrometres of the beads at ``positions``: an (N, 3) array, NaN where unmeasurable."""
    t = measure_beads(volume, spacing, positions, window_um=window_um)
    return np.stack([t["fwhm_z"], t["fwhm_y"], t["fwhm_x"]], axis=1) if len(t) else np.zeros((0, 3))


def elongation(volume, spacing, *, positions=None, truth=None,
               isolation_um: Sequence[float] = (2.0, 1.0, 1.0), window_um=(1.5, 0.6, 0.6),
               return_widths: bool = False):
    """Median ratio of axial to lateral FWHM (in micrometres) over isolated beads.

    1.0 means round beads; widefield raw data is typically 2.5-4.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
    spacing : (dz, dy, dx) floats, micrometres
    positions : bead table or (N, 3) array, optional
        Where to measure. Default: the true beads inside the stack when
        ``truth`` is given, else beads detected in ``volume``.
    truth : bead table, optional
        True beads (with ``inside``); all of them count as neighbours when
        judging isolation.
    isolation_um : (rz, ry, rx) floats
        A bead is isolated when no other lies within this ellipsoid.
    return_widths : bool
        Also return the (N, 3) widths of the beads used.

    Returns
    -------
    float (NaN when no isolated bead could be measured), optionally with the widths.
    """
    vol = as_volume(volume)
    spacing = as_spacing(spacing)
    if positions is None:
        if truth is not None:
            positions = truth[truth["inside"]] if truth.dtype.names and "inside" in truth.dtype.names else truth
        else:
            positions = detect_beads(vol, spacing, measure=False)
    pos = positions_of(positions)
    iso = isolated(pos, spacing=spacing, radius_um=isolation_um,
                   others=None if truth is None else truth)
    widths = bead_widths(vol, spacing, pos[iso], window_um=window_um)
    lateral = widths[:, 1:]
    n_lat = np.isfinite(lateral).sum(axis=1)
    lat_mean = np.where(n_lat > 0, np.nansum(lateral, axis=1) / np.maximum(n_lat, 1), np.nan)
    ratio = widths[:, 0] / lat_mean if len(widths) else np.zeros(0)
    ratio = ratio[np.isfinite(ratio)]
    value = float(np.median(ratio)) if ratio.size else float("nan")
    return (value, widths) if return_widths else value


def background_residual(volume, spacing, beads, *, exclusion_um: Sequence[float] = (2.0, 1.0, 1.0),
                        percentile: float = 99.0) -> float:
    """Ambient light left over, relative to the beads.

    The ``percentile`` of ``|volume|`` over voxels farther than the
    exclusion ellipsoid from every bead, divided by the median bead peak
    (the maximum within one voxel of each bead inside the stack). 0 for a
    perfectly black background.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
    spacing : (dz, dy, dx) floats, micrometres
    beads : bead table or (N, 3) array
        All beads (with an ``inside`` field, only inside ones give peaks, but
        all are excluded from the background).
    """
    vol = as_volume(volume)
    spacing = as_spacing(spacing)
    allp = positions_of(beads)
    inside = beads[beads["inside"]] if (isinstance(beads, np.ndarray) and beads.dtype.names
                                         and "inside" in beads.dtype.names) else beads
    mask = np.ones(vol.shape, bool)
    half = np.ceil(np.asarray(exclusion_um) / np.asarray(spacing)).astype(int)
    grids = [np.arange(-h, h + 1) for h in half]
    for q in allp:
        c = np.round(q).astype(int)
        sl, sub = [], []
        for a in range(3):
            idx = c[a] + grids[a]
            ok = (idx >= 0) & (idx < vol.shape[a])
            if not ok.any():
                break
            sl.append(slice(idx[ok][0], idx[ok][-1] + 1))
            sub.append(((idx[ok] - q[a]) * spacing[a] / exclusion_um[a]) ** 2)
        else:
            ell = sub[0][:, None, None] + sub[1][None, :, None] + sub[2][None, None, :]
            mask[tuple(sl)] &= ell > 1.0
    if not mask.any():
        return float("nan")
    far = np.abs(vol[mask])
    peaks = []
    for q in positions_of(inside):
        c = np.clip(np.round(q).astype(int), 0, np.asarray(vol.shape) - 1)
        sl = tuple(slice(max(0, ci - 1), ci + 2) for ci in c)
        peaks.append(vol[sl].max())
    if not peaks:
        return float("nan")
    ref = float(np.median(peaks))
    if ref <= 0:
        return float("inf")
    return float(np.percentile(far, percentile) / ref)


def spurious_spots(volume, spacing, truth, *, fraction: float = 0.1, distance_um: float = 1.0) -> int:
    """Spots of a restored volume where no bead is: invented beads.

    Counts the local maxima scoring at least ``fraction`` of the volume's
    typical bead (:func:`restore3d.assess.beads_above`) that lie farther than
    ``distance_um`` micrometres from every true bead (inside the stack or in
    its margins).
    """
    from .assess import beads_above
    spacing = as_spacing(spacing)
    spots, _ = beads_above(as_volume(volume), spacing, fraction=fraction)
    if len(spots) == 0:
        return 0
    p = positions_of(spots) * np.asarray(spacing)
    t = positions_of(truth) * np.asarray(spacing)
    if len(t) == 0:
        return len(spots)
    d, _ = cKDTree(t).query(p)
    return int(np.sum(d > distance_um))


def _scale_fit(pred, target):
    denom = float(np.vdot(pred, pred))
    return (float(np.vdot(pred, target)) / denom) if denom > 0 else 0.0


def nrmse(pred, target, *, scale_invariant: bool = False) -> float:
    """``||pred - target|| / ||target||``; with ``scale_invariant``, ``pred`` is first scaled by the least-squares factor."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(target, np.float64)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} differs from target shape {t.shape}")
    if scale_invariant:
        p = p * _scale_fit(p, t)
    norm = np.linalg.norm(t)
    return float(np.linalg.norm(p - t) / norm) if norm > 0 else float("nan")


def psnr(pred, target, *, scale_invariant: bool = False) -> float:
    """Peak signal-to-noise ratio in dB, with the target's maximum as peak."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(target, np.float64)
    if scale_invariant:
        p = p * _scale_fit(p, t)
    mse = float(np.mean((p - t) ** 2))
    peak = float(t.max())
    return float("inf") if mse == 0 else float(10 * np.log10(peak ** 2 / mse))


def ssim(pred, target, *, scale_invariant: bool = False) -> float:
    """Structural similarity (scikit-image) over the 3D volume, target's range as data range."""
    from skimage.metrics import structural_similarity
    p = np.asarray(pred, np.float64)
    t = np.asarray(target, np.float64)
    if scale_invariant:
        p = p * _scale_fit(p, t)
    win = min(7, *[(n if n % 2 else n - 1) for n in t.shape])
    rng = float(t.max() - t.min()) or 1.0
    return float(structural_similarity(t, p, data_range=rng, win_size=max(win, 3)))


def evaluate(volume, *, target, truth, spacing, tolerance_um=DEFAULT_TOLERANCE_UM,
             detect_threshold: float = 0.0) -> dict:
    """All metrics of one restored volume against a simulation's target and truth.

    Detection uses :func:`restore3d.detect.detect_beads` on ``volume`` with a
    low threshold (``detect_threshold``, default every local maximum) so the
    AP sees the whole ranking; F1,
    precision, recall and RMSEs are taken at the best-F1 point of that
    ranking (see :func:`detection_scores`).

    Returns
    -------
    dict
        ``elongation``, ``background_residual``, ``nrmse``, ``nrmse_si``
        (scale-invariant), ``psnr``, ``ssim``, ``ssim_si``, ``ap``, ``f1``,
        ``precision``, ``recall``, ``rmse_lateral_um``, ``rmse_axial_um``.
    """
    vol = as_volume(volume)
    spacing = as_spacing(spacing)
    det = detect_beads(vol, spacing, threshold=detect_threshold, measure=False)
    scores = detection_scores(det, truth, spacing=spacing, tolerance_um=tolerance_um)
    out = {
        "elongation": elongation(vol, spacing, truth=truth),
        "background_residual": background_residual(vol, spacing, truth),
        "nrmse": nrmse(vol, target),
        "nrmse_si": nrmse(vol, target, scale_invariant=True),
        "psnr": psnr(vol, target),
        "ssim": ssim(vol, target),
        "ssim_si": ssim(vol, target, scale_invariant=True),
        "ap": scores["ap"],
        "f1": scores["f1"], "precision": scores["precision"], "recall": scores["recall"],
        "rmse_lateral_um": scores["rmse_lateral_um"], "rmse_axial_um": scores["rmse_axial_um"],
    }
    return out
