"""Classical stages: RL speed vs the FFT floor and peers, acceleration, stage quality.

Usage::

    python benchmarks/bench_classical.py [--threads 2] [--quick] [--speed-only]

Prints markdown tables (copied into benchmarks/RESULTS.md). All ratios are
measured in the same run on the same volume.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import DATA, METRIC_COLUMNS, machine, table, timed
from restore3d import metrics
from restore3d.background import estimate_background, estimate_noise, subtract_background
from restore3d.deconvolution import (blind_richardson_lucy, fused_kernels, i_divergence, kernels_available,
                                    richardson_lucy)
from restore3d.forward_model import ForwardModel
from restore3d.psf import fwhm, gaussian_psf
from restore3d.psf_estimation import estimate_psf, normalized_cross_correlation
from restore3d.simulate import simulate_beads

SHAPE = (32, 256, 256)
SP = (0.3, 0.1, 0.1)
ROUNDS = 25  # interleaved rounds of the speed table (the VM's timings wander by up to 50 %)


def fft_floor(grid, repeat=10, batches=5):
    """Seconds of 2 forward + 2 inverse real FFTs of the working grid (torch).

    Timed the way RL calls them (each transform returns a fresh tensor, which
    is faster than writing through ``out=``: that copies). The inverse is
    timed both as one ``irfftn`` and as three 1D transforms (c2c along z and
    y, c2r along x), and the faster counts. Best batch of ``repeat`` pairs,
    as the RL timing is a best of runs too.
    """
    x = torch.rand(grid)
    spec = torch.fft.rfftn(x)

    def inverse_3d():
        return torch.fft.irfftn(spec, s=grid)

    def inverse_1d():
        a = torch.fft.ifft(torch.fft.ifft(spec, dim=0), dim=1)
        return torch.fft.irfft(a, n=grid[2], dim=2)

    def best_of(func):
        for _ in range(2):
            func()
        best = float("inf")
        for _ in range(batches):
            t0 = time.perf_counter()
            for _ in range(repeat):
                func()
            best = min(best, (time.perf_counter() - t0) / repeat)
        return best

    forward = best_of(lambda: torch.fft.rfftn(x))
    inverse = min(best_of(inverse_3d), best_of(inverse_1d))
    return 2 * (forward + inverse)


def _median_interval(values, n_boot=2000, seed=0):
    """Bootstrap 95 % interval of the median of ``values`` (fixed seed)."""
    v = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(v, size=(n_boot, v.size)), axis=1)
    return float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


def speed(sim, data):
    rows = []
    model = ForwardModel(SHAPE, sim.psf, boundary="extend", extend="auto", device=torch.device("cpu"))
    grid = model.grid
    n = 30
    for acc in ("none", "biggs"):  # warm-up
        richardson_lucy(data, sim.psf, iterations=3, acceleration=acc)
    # Interleaved rounds: the floor and every RL variant are timed back to back
    # in every round, so a slow spell of the machine hits all of them; each is
    # reported as its best round, and the ratio also as the median of the
    # per-round ratios with a bootstrap 95 % interval of that median. "PyTorch
    # ops" runs the same loop with the fused C kernels switched off (what an
    # install without a compiler gets).
    built = kernels_available()
    variants = [("none", True), ("biggs", True)] + ([("none", False), ("biggs", False)] if built else [])
    floors, per_round = [], {v: [] for v in variants}
    for _ in range(ROUNDS):
        floors.append(fft_floor(grid, batches=1))
        for acc, kernels in variants:
            with fused_kernels(kernels):
                _, info = richardson_lucy(data, sim.psf, iterations=n, acceleration=acc, return_info=True)
            per_round[acc, kernels].append(info.seconds / info.iterations)
    floor = min(floors)
    per = {}
    for (acc, kernels), times in per_round.items():
        per[acc, kernels] = min(times)
        ratios = [t / f for t, f in zip(times, floors)]
        how = "fused C kernels" if kernels and built else "PyTorch ops"
        lo, hi = _median_interval(ratios)
        rows.append({"method": f"restore3d RL ({acc}, {how}), grid {grid}", "ms/iter": per[acc, kernels] * 1e3,
                     "x FFT floor": per[acc, kernels] / floor, "median ratio of rounds": float(np.median(ratios)),
                     "95 % interval of the median": f"{lo:.3f}-{hi:.3f}"})
    plain = per["none", True]  # the peers' speed-up is against plain RL with the kernels
    from skimage.restoration import richardson_lucy as sk_rl
    k = 3
    t_sk, _ = timed(sk_rl, data, sim.psf, num_iter=k, clip=False, repeat=2)
    rows.append({"method": "skimage.restoration.richardson_lucy (float32)", "ms/iter": t_sk / k * 1e3,
                 "x FFT floor": t_sk / k / floor, "restore3d speed-up": t_sk / k / plain})
    try:
        import RedLionfishDeconv as rlf
        t_rlf, _ = timed(rlf.doRLDeconvolutionFromNpArrays, data, sim.psf, niter=k, method="cpu", repeat=2)
        rows.append({"method": "RedLionfish 0.10 (cpu)", "ms/iter": t_rlf / k * 1e3,
                     "x FFT floor": t_rlf / k / floor, "restore3d speed-up": t_rlf / k / plain})
    except ImportError:
        rows.append({"method": "RedLionfish (not installed: pip install -e .[bench])"})
    rows.insert(0, {"method": f"FFT floor: 2 rfftn + 2 irfftn of {grid}", "ms/iter": floor * 1e3,
                    "x FFT floor": 1.0, "median ratio of rounds": 1.0})
    return rows


def time_to_quality(sim, data):
    curves = {}
    for acc, n in (("none", 100), ("biggs", 40)):
        divs = []
        richardson_lucy(data, sim.psf, iterations=n, acceleration=acc,
                        callback=lambda k, x: divs.append(i_divergence(data, x, sim.psf)))
        curves[acc] = divs
    ref50, ref100 = curves["none"][49], curves["none"][99]
    rows = []
    for label, ref in (("plain RL, 50 iterations", ref50), ("plain RL, 100 iterations", ref100)):
        k = next((i + 1 for i, v in enumerate(curves["biggs"]) if v <= ref), None)
        secs = None
        if k is not None:
            _, info = richardson_lucy(data, sim.psf, iterations=k, return_info=True)
            secs = info.seconds
        _, info100 = richardson_lucy(data, sim.psf, iterations=50 if "50" in label else 100,
                                     acceleration="none", return_info=True)
        rows.append({"reference": label, "I-divergence": ref, "Biggs iterations": k,
                     "Biggs seconds": secs, "plain seconds": info100.seconds})
    return rows


def quality(seeds):
    rows = []
    for seed in seeds:
        sim = simulate_beads(SHAPE, SP, seed=seed)
        bg = subtract_background(sim.raw, SP)
        est = estimate_psf(bg, SP)
        variants = {
            "raw": lambda: sim.raw,
            "background only": lambda: bg,
            "background + RL 10 it (true PSF)": lambda: richardson_lucy(bg, sim.psf, iterations=10),
            "background + RL 30 it (true PSF)": lambda: richardson_lucy(bg, sim.psf, iterations=30),
            "background + RL 10 it (estimated PSF)": lambda: richardson_lucy(bg, est, iterations=10),
            "background + RL 30 it (estimated PSF)": lambda: richardson_lucy(bg, est, iterations=30),
            "background + RL 30 it, zero boundary, no acceleration (skimage-like)":
                lambda: richardson_lucy(bg, sim.psf, iterations=30, boundary="zero", acceleration="none"),
            "background + blind RL (from a 1.4x too wide Gaussian)": lambda: blind_richardson_lucy(
                bg, gaussian_psf(SP, fwhm_lateral=1.4 * 0.239, fwhm_axial=1.4 * 0.792, shape=sim.psf.shape))[0],
            "background + blind RL (from the estimated PSF)": lambda: blind_richardson_lucy(bg, est)[0],
            "target (perfect)": lambda: sim.target,
        }
        for name, make in variants.items():
            t0 = time.perf_counter()
            vol = make()
            dt = time.perf_counter() - t0
            m = metrics.evaluate(vol, target=sim.target, truth=sim.truth, spacing=SP)
            rows.append({"seed": seed, "pipeline": name, "seconds": dt, **m})
    return rows


def background_methods(seed):
    rows = []
    noisy = simulate_beads(SHAPE, SP, seed=seed)
    clean = simulate_beads(SHAPE, SP, seed=seed, poisson=False, read_noise=0)
    idx = tuple(np.round(np.stack([clean.inside["z"], clean.inside["y"], clean.inside["x"]])).astype(int))
    noise = estimate_noise(noisy.raw)
    for label, kw in (("wavelet, planewise (default)", {"method": "wavelet"}),
                      ("wavelet, 3d", {"method": "wavelet", "axial": "3d"}),
                      ("rolling ball", {"method": "rolling_ball"}),
                      ("percentile (median)", {"method": "percentile"})):
        t, bg = timed(estimate_background, noisy.raw, SP, repeat=1, **kw)
        err = bg - noisy.background
        bg_clean = estimate_background(clean.raw, SP, **kw)
        ratio = np.maximum(clean.raw - bg_clean, 0)[idx] / clean.clean[idx]
        rows.append({"method": label, "seconds": t, "bias / noise": float(err.mean()) / noise,
                     "rms error / noise": float(err.std()) / noise,
                     "peak kept (median)": float(np.median(ratio)), "peak kept (p10)": float(np.percentile(ratio, 10))})
    return rows


def psf_accuracy(shared):
    rows = []
    cases = [("widefield NA 1.1 water (default optics)", SP, {}, None)]
    if shared is not None:
        import tifffile
        from restore3d.psf import prepare_psf
        p = prepare_psf(tifffile.imread(shared), shape=(25, 25, 25))
        cases.append(("measured LLSM PSF (shared/data)", (0.1, 0.1, 0.1),
                      {"psf": p, "density": 0.01, "flux": 20000.0}, (48, 192, 192)))
    from bench_real import SIMULATED
    for name in ("sim dim NA 1.4 oil into water, 0.3/0.1", "sim dim NA 0.8 air, 0.3/0.1"):
        kw = dict(SIMULATED[name])
        sp_dim = kw.pop("spacing")
        label = name.replace("sim ", "") + f" ({kw['flux']:.0f} photons per bead)"
        cases.append((label, sp_dim, kw, (32, 256, 256)))
        # the same beads without noise: what the estimate gives when only noise differs
        cases.append((label + ", noise-free", sp_dim, {**kw, "poisson": False, "read_noise": 0.0}, (32, 256, 256)))
    for label, sp, kw, shape in cases:
        sim = simulate_beads(shape or SHAPE, sp, seed=5, **kw)
        bg = subtract_background(sim.raw, sp)
        t, est = timed(estimate_psf, bg, sp, return_info=True, repeat=1)
        tf = fwhm(sim.psf, sp)
        r = est.fwhm_um / tf
        rows.append({"volume": label, "beads used": est.n_beads, "seconds": t,
                     "FWHM z ratio": r[0], "FWHM y ratio": r[1], "FWHM x ratio": r[2],
                     "NCC": normalized_cross_correlation(est.psf, sim.psf)})
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one seed only")
    ap.add_argument("--shared", default=str(DATA / "llsm-psf" / "psf.tif"))
    ap.add_argument("--speed-only", action="store_true", help="only the RL speed table")
    ap.add_argument("--psf-only", action="store_true", help="only the PSF estimation table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import os
    shared = args.shared if os.path.exists(args.shared) else None
    print(f"machine: {machine()}\n")
    def psf_table():
        print(table(psf_accuracy(shared), ["volume", "beads used", "seconds", "FWHM z ratio", "FWHM y ratio",
                                           "FWHM x ratio", "NCC"]))
    if args.psf_only:
        print("## PSF estimation from the beads\n")
        psf_table()
        return
    sim = simulate_beads(SHAPE, SP, seed=3)
    data = subtract_background(sim.raw, SP)
    print(f"## RL speed, {SHAPE} float32, PSF {sim.psf.shape}\n")
    print(table(speed(sim, data), ["method", "ms/iter", "x FFT floor", "median ratio of rounds",
                                   "95 % interval of the median", "restore3d speed-up"]))
    if args.speed_only:
        return
    print("\n## Time to quality (I-divergence on the same volume)\n")
    print(table(time_to_quality(sim, data), ["reference", "I-divergence", "Biggs iterations",
                                             "Biggs seconds", "plain seconds"]))
    print("\n## Background estimators (error vs the true ambient light, in noise sigmas)\n")
    print(table(background_methods(3), ["method", "seconds", "bias / noise", "rms error / noise",
                                        "peak kept (median)", "peak kept (p10)"]))
    print("\n## PSF estimation from the beads\n")
    psf_table()
    print("\n## Stage quality on fixed-seed simulations\n")
    seeds = [3] if args.quick else [3, 4]
    print(table(quality(seeds), ["seed", "pipeline", "seconds"] + METRIC_COLUMNS))


if __name__ == "__main__":
    main()
