"""Bead fitting: localisation against the Cramer-Rao bound, speed, and the stage comparison table.

Usage::

    python benchmarks/bench_fitting.py [--threads 2]        # all tables
    python benchmarks/bench_fitting.py scale                # FitBeads at 512^2 and on dim volumes
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import machine, table
import restore3d as r3
from restore3d import metrics
from restore3d.fitting import fit_beads
from restore3d.simulate import AmbientLight, simulate_beads

SP = (0.3, 0.1, 0.1)
KEYS = ["elongation", "background_residual", "nrmse", "nrmse_si", "ap", "f1", "rmse_lateral_um", "rmse_axial_um"]


def crb_table():
    rows = []
    for flux in (1000.0, 3000.0, 10000.0, 30000.0):
        lat_err, ax_err, lat_b, ax_b, n = [], [], [], [], 0
        for seed in range(3):
            sim = simulate_beads((32, 128, 128), SP, n_beads=25, flux=flux, flux_spread=0.0, min_separation=2.0,
                                 ambient=AmbientLight(offset=0.0, level=20.0, shapes=()), read_noise=2.0,
                                 seed=100 + seed)
            tab = fit_beads(sim.raw, sim.psf, SP, read_noise=2.0)
            tab = tab[~tab["edge"]]
            ip, it = metrics.match_beads(tab, sim.truth, spacing=SP)
            t = sim.truth[it]
            keep = t["inside"] & metrics.isolated(t, spacing=SP, radius_um=(3.0, 1.5, 1.5), others=sim.truth)
            f, t = tab[ip][keep], t[keep]
            d = np.stack([(f[a] - t[a]) * s for a, s in zip("zyx", SP)], 1)
            lat_err.append(d[:, 1] ** 2 + d[:, 2] ** 2)
            ax_err.append(d[:, 0] ** 2)
            lat_b.append(f["sigma_y_um"] ** 2 + f["sigma_x_um"] ** 2)
            ax_b.append(f["sigma_z_um"] ** 2)
            n += len(f)
        lat = np.sqrt(np.mean(np.concatenate(lat_err)))
        ax = np.sqrt(np.mean(np.concatenate(ax_err)))
        blat = np.sqrt(np.mean(np.concatenate(lat_b)))
        bax = np.sqrt(np.mean(np.concatenate(ax_b)))
        rows.append({"flux (photons)": f"{flux:.0f}", "beads": n, "lateral RMSE um": lat, "lateral CRB um": blat,
                     "lateral ratio": lat / blat, "axial RMSE um": ax, "axial CRB um": bax, "axial ratio": ax / bax})
    return rows


def speed_table():
    rows = []
    for n in (100, 300):
        sim = simulate_beads((32, 256, 256), SP, n_beads=n, seed=5)
        bg = r3.background.subtract_background(sim.raw, SP)
        psf = r3.psf_estimation.estimate_psf(bg, SP)
        cand = r3.detect.detect_beads(bg, SP, measure=False)
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            tab = fit_beads(bg, psf, SP, candidates=cand, variance_offset=r3.background.estimate_noise(sim.raw) ** 2)
            best = min(best, time.perf_counter() - t0)
        rows.append({"beads in the stack": n, "candidates": len(cand), "fitted": len(tab), "fit seconds": best})
    return rows


def comparison(seeds):
    rows = []
    classical = r3.default_pipeline(refiner=False)
    hybrid = r3.default_pipeline()
    fit = r3.Pipeline([r3.SubtractBackground(), r3.EstimatePSF(), r3.FitBeads()])
    fit_d = r3.Pipeline([r3.SubtractBackground(), r3.EstimatePSF(), r3.FitBeads(detect_on="deconvolved")])
    for seed in seeds:
        sim = simulate_beads((32, 256, 256), SP, seed=seed)
        for name, pipe in (("raw", None), ("background -> RL", classical), ("hybrid (background -> RL -> refiner)", hybrid),
                           ("background -> PSF -> FitBeads", fit),
                           ("background -> PSF -> FitBeads (detect on RL)", fit_d)):
            t0 = time.perf_counter()
            out = sim.raw if pipe is None else np.asarray(pipe.run(sim.raw, spacing=SP))
            dt = time.perf_counter() - t0
            m = metrics.evaluate(out, target=sim.target, truth=sim.truth, spacing=SP)
            rows.append({"seed": seed, "pipeline": name, "seconds": dt, **{k: m[k] for k in KEYS}})
    return rows


#: The dim simulations of bench_real.py: where detection, not fitting, decides what FitBeads keeps.
DIM = ("sim dim NA 1.4 oil into water, 0.3/0.1", "sim dim NA 0.8 air, 0.3/0.1")


def _peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scale_table(work="/tmp/r3-scale"):
    """FitBeads on the 34 x 512 x 512 crop of bench_scale's field (40 beads): seconds and peak RSS."""
    from pathlib import Path
    from bench_scale import FIELD, field
    full = np.load(field(work), mmap_mode="r")
    y0 = (full.shape[1] - 512) // 2
    vol = np.ascontiguousarray(full[:, y0:y0 + 512, y0:y0 + 512]).astype(np.float32)
    pipe = r3.Pipeline([r3.SubtractBackground(), r3.EstimatePSF(), r3.FitBeads()])
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    before = _peak_mb()
    t0 = time.perf_counter()
    res = pipe.run(vol, spacing=FIELD["spacing"], memory_budget=None)
    dt = time.perf_counter() - t0
    return [{"volume": "34 x 512 x 512 8-bit widefield, 40 beads", "seconds": dt,
             "peak RSS MB": _peak_mb(), "RSS before MB": before, "beads fitted": len(res.beads),
             "FitBeads s": res.timings.get("fit")}]


def dim_ap_table():
    rows = []
    fit = r3.Pipeline([r3.SubtractBackground(), r3.EstimatePSF(), r3.FitBeads()])
    fit2 = r3.Pipeline([r3.SubtractBackground(), r3.EstimatePSF(), r3.FitBeads(min_significance=2.0)])
    from bench_real import SIMULATED
    for name in DIM:
        spec = dict(SIMULATED[name])
        sp = spec.pop("spacing")
        sim = simulate_beads((32, 256, 256), sp, seed=3, **spec)
        for label, pipe in (("hybrid", r3.default_pipeline()), ("background -> PSF -> FitBeads", fit),
                            ("... FitBeads(min_significance=2)", fit2)):
            t0 = time.perf_counter()
            out = np.asarray(pipe.run(sim.raw, spacing=sp))
            m = metrics.evaluate(out, target=sim.target, truth=sim.truth, spacing=sp)
            rows.append({"volume": name, "pipeline": label, "ap": m["ap"], "f1": m["f1"],
                         "seconds": time.perf_counter() - t0})
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="?", default="all", choices=("all", "scale"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}\n")
    if args.what == "scale":
        print("## FitBeads at 512^2 (peak RSS over the process, which holds torch)\n")
        rows = scale_table()
        print(table(rows, list(rows[0])))
        print("\n## Detection on dim simulations (32 x 256 x 256, seed 3)\n")
        print(table(dim_ap_table(), ["volume", "pipeline", "ap", "f1", "seconds"]))
        return
    print("## Localisation of isolated beads vs the Cramer-Rao bound (default widefield PSF, "
          "flat 20-photon background, read noise 2)\n")
    print(table(crb_table(), ["flux (photons)", "beads", "lateral RMSE um", "lateral CRB um", "lateral ratio",
                              "axial RMSE um", "axial CRB um", "axial ratio"]))
    print("\n## Fitting speed (32 x 256 x 256, after background removal and PSF estimation)\n")
    print(table(speed_table(), ["beads in the stack", "candidates", "fitted", "fit seconds"]))
    print("\n## Stage comparison (default simulations)\n")
    print(table(comparison([3, 4]), ["seed", "pipeline", "seconds"] + KEYS))


if __name__ == "__main__":
    main()
