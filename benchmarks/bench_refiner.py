"""Refiner benchmarks: loss ablation, hybrid vs the original raw-input approach, acceptance, adaptation.

Usage::

    python benchmarks/bench_refiner.py ablation --steps 300 --pool 80 --work /tmp/r3-ablation
    python benchmarks/bench_refiner.py acceptance [--weights restore3d/refiner/weights/default.json]
        [--true-psf | --measured-psf PEAK]
    python benchmarks/bench_refiner.py adapt --minutes 3

Every variant of an ablation is trained with the same recipe and budget
(steps, pool of simulated volumes, seed) and evaluated on the same fixed-seed
volumes of three optical settings that the training never saw.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from common import DATA, add_range_option, machine, simulation_ranges, table
from restore3d import metrics
from restore3d.pipeline import Pipeline
from restore3d.refiner import SHIPPED, Refiner
from restore3d.presets import classical_stages
from restore3d.refiner.training.data import make_pairs
from restore3d.refiner.normalize import Normalizer
from restore3d.refiner.training.train import TrainConfig, train
from restore3d.simulate import simulate_beads

#: Optical settings outside or at unseen points of the training ranges
#: (training: NA 0.9-1.35 water/oil, wavelength 0.45-0.65 um, depth <= 10 um).
#: Fluxes give every setting a bead peak of about 40 photons over the glow.
UNSEEN = {
    "A: NA 0.8 air, 600 nm, dz 0.35": dict(
        spacing=(0.35, 0.1, 0.1), flux=12000.0,
        psf={"model": "widefield", "na": 0.8, "wavelength": 0.6, "n_immersion": 1.0}),
    "B: NA 1.4 oil, 680 nm, 15 um deep in n=1.40": dict(
        spacing=(0.25, 0.09, 0.09), flux=25000.0,
        psf={"model": "widefield", "na": 1.4, "wavelength": 0.68, "n_immersion": 1.518, "n_sample": 1.40,
             "depth": 15.0}),
    "C: NA 1.0 water, 520 nm, dz 0.3 (demo optics)": dict(
        spacing=(0.3, 0.1, 0.1), flux=6000.0,
        psf={"model": "widefield", "na": 1.0, "wavelength": 0.52, "n_immersion": 1.333}),
}
KEYS = ["elongation", "background_residual", "nrmse", "nrmse_si", "ap", "f1"]


def eval_volumes(seed=7, shape=(32, 256, 256)):
    vols = []
    for i, (name, kw) in enumerate(UNSEEN.items()):
        sim = simulate_beads(shape, kw["spacing"], psf=kw["psf"], flux=kw["flux"], seed=seed + i)
        vols.append((name, sim))
    return vols


def measured_psf(sim, peak, seed=0):
    """The simulation's PSF as a microscopist would measure it: one bead imaged through z, then prepared.

    The PSF (cropped to the volume) is embedded in a stack with half its size
    of margin on every side, scaled to ``peak`` photons at its maximum, put
    on 100 photons of background and a camera offset of 100, with Poisson
    and read noise (2 counts), and run through
    :func:`restore3d.psf.prepare_psf` with its defaults (background from the
    stack, far field smoothed, clipped, cropped back to the PSF's box, unit sum).
    """
    from restore3d.psf import crop_psf, prepare_psf
    rng = np.random.default_rng(seed)
    p = crop_psf(sim.psf, sim.raw.shape).astype(np.float64)
    big = [n + 2 * (n // 2) for n in p.shape]
    stack = np.zeros(big)
    stack[tuple(slice(n // 2, n // 2 + n) for n in p.shape)] = p * (peak / p.max())
    counts = rng.poisson(stack + 100.0) + 100.0 + rng.normal(0.0, 2.0, stack.shape)
    return prepare_psf(counts.astype(np.float32), shape=p.shape)


def classical_output(classical, sim, true_psf=False, measured_peak=None):
    """The classical stages' output and PSF.

    With ``true_psf`` the stages get the simulation's PSF, with
    ``measured_peak`` a simulated measurement of it (:func:`measured_psf`);
    otherwise they estimate it from the beads (the true PSF if no bead is usable).
    """
    from restore3d.psf import crop_psf
    if true_psf or measured_peak:
        psf = measured_psf(sim, measured_peak) if measured_peak else crop_psf(sim.psf, sim.raw.shape)
        res = classical.run(sim.raw, spacing=sim.spacing, psf=psf)
        return np.asarray(res), res.psf
    try:
        res = classical.run(sim.raw, spacing=sim.spacing)
    except ValueError as exc:
        print(f"  (PSF estimation failed: {exc}; using the true PSF)", flush=True)
        res = classical.run(sim.raw, spacing=sim.spacing, psf=crop_psf(sim.psf, sim.raw.shape))
    return np.asarray(res), res.psf


def evaluate(refiner, sims, prefix_outputs):
    rows = []
    for (name, sim), (inp, psf) in zip(sims, prefix_outputs):
        t0 = time.perf_counter()
        out = refiner.restore(inp, sim.spacing, psf=psf)
        dt = time.perf_counter() - t0
        m = metrics.evaluate(out, target=sim.target, truth=sim.truth, spacing=sim.spacing)
        rows.append({"setting": name, "seconds": dt, **{k: m[k] for k in KEYS}})
    return rows


def mean_row(rows, label):
    out = {"variant": label}
    for k in KEYS + ["seconds"]:
        out[k] = float(np.nanmean([r[k] for r in rows]))
    return out


def cmd_ablation(args):
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sims = eval_volumes()
    classical = classical_stages()
    ranges = simulation_ranges(args.range)
    hybrid_pool = make_pairs(args.pool, ranges, classical, Normalizer(), seed=0, progress=True,
                             input_transform="target_blur")
    cls_inputs = [classical_output(classical, s) for _, s in sims]
    raw_inputs = [(s.raw, s.psf) for _, s in sims]
    baseline = []
    for (name, sim), (inp, _) in zip(sims, cls_inputs):
        m = metrics.evaluate(inp, target=sim.target, truth=sim.truth, spacing=sim.spacing)
        baseline.append({"setting": name, "seconds": 0.0, **{k: m[k] for k in KEYS}})
    variants = [("imbalanced M=1 (= L1)", "imbalanced", {"weight": 1.0, "tau": 0.1}, False),
                ("imbalanced M=10", "imbalanced", {"weight": 10.0, "tau": 0.1}, False),
                ("imbalanced M=100", "imbalanced", {"weight": 100.0, "tau": 0.1}, False),
                ("imbalanced M=1000 (original)", "imbalanced", {"weight": 1000.0, "tau": 0.1}, False),
                ("imbalanced M=100 tau=0.01", "imbalanced", {"weight": 100.0, "tau": 0.01}, False),
                ("imbalanced M=100 dilate=1", "imbalanced", {"weight": 100.0, "tau": 0.1, "dilate": 1}, False),
                ("MSE", "mse", {}, False),
                ("combined (M=10 + MSE)", "combined", {"weight": 10.0, "tau": 0.1, "mse_weight": 1.0}, False),
                ("original approach: raw input, M=1000", "imbalanced", {"weight": 1000.0, "tau": 0.1}, True),
                ("raw input, M=10", "imbalanced", {"weight": 10.0, "tau": 0.1}, True)]
    if args.only:
        variants = [v for v in variants if any(o in v[0] for o in args.only)]
    raw_pool = None
    if any(v[3] for v in variants):
        raw_pool = make_pairs(args.pool, ranges, Pipeline([]), Normalizer(offset="median"), seed=0,
                              progress=True)
    summary = [mean_row(baseline, "background + RL (no refiner)")]
    detail = []
    for label, loss, params, raw in variants:
        name = label.split(":")[0].replace(" ", "_").replace("(", "").replace(")", "").replace("=", "")
        cfg = TrainConfig(steps=args.steps, pool=args.pool, loss=loss, loss_params=params, seed=0,
                          epoch_steps=max(25, args.steps // 6), patience=10 ** 6, validation=4)
        t0 = time.perf_counter()
        res = train(work / name, config=cfg, ranges=ranges, prefix=Pipeline([]) if raw else classical,
                    normalizer=Normalizer(offset="median") if raw else Normalizer(),
                    pairs=raw_pool if raw else hybrid_pool, progress=False,
                    input_transform=None if raw else "target_blur")
        secs = time.perf_counter() - t0
        rows = evaluate(Refiner.load(res.checkpoint), sims, raw_inputs if raw else cls_inputs)
        for r in rows:
            detail.append({"variant": label, **r})
        row = mean_row(rows, label)
        row["train seconds"] = secs
        summary.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nmachine: {machine()}\n")
    if args.range:
        print(f"training simulation ranges overridden: {' '.join(args.range)}\n")
    print(f"## Loss ablation and the original approach ({args.steps} steps, pool {args.pool}, batch 4, "
          f"mean over 3 unseen optical settings)\n")
    print(table(summary, ["variant", "train seconds"] + KEYS))
    print("\nper setting:\n")
    print(table([{"variant": "background + RL", **b} for b in baseline] + detail, ["variant", "setting"] + KEYS))


def cmd_acceptance(args):
    sims = eval_volumes()
    torch.set_num_threads(args.threads)
    classical = classical_stages()
    kw = {"calibrate": not args.no_calibrate}
    from restore3d.refiner import DEFAULT_WEIGHTS
    name = args.weights or DEFAULT_WEIGHTS
    refiner = Refiner.pretrained(name, **kw) if name in SHIPPED else Refiner.load(name, **kw)
    fp32 = Refiner(refiner.weights, precision="fp32", **kw)
    rows = []
    for name, sim in sims:
        raw_m = metrics.evaluate(sim.raw, target=sim.target, truth=sim.truth, spacing=sim.spacing)
        t0 = time.perf_counter()
        cls, psf = classical_output(classical, sim, true_psf=args.true_psf, measured_peak=args.measured_psf)
        t_cls = time.perf_counter() - t0
        m_cls = metrics.evaluate(cls, target=sim.target, truth=sim.truth, spacing=sim.spacing)
        refiner.restore(cls[:, :64, :64], sim.spacing, psf=psf)  # warm-up
        t0 = time.perf_counter()
        out = refiner.restore(cls, sim.spacing, psf=psf)
        t_ref = time.perf_counter() - t0
        fp32.restore(cls[:, :64, :64], sim.spacing, psf=psf)
        t0 = time.perf_counter()
        fp32.restore(cls, sim.spacing, psf=psf)
        t_fp32 = time.perf_counter() - t0
        m = metrics.evaluate(out, target=sim.target, truth=sim.truth, spacing=sim.spacing)
        rows.append({"setting": name, "stages": "target (ideal at this sampling)",
                     "elongation": metrics.elongation(sim.target, sim.spacing, truth=sim.truth)})
        rows.append({"setting": name, "stages": "raw", **{k: raw_m[k] for k in KEYS}})
        rows.append({"setting": name, "stages": "background + RL", "seconds": t_cls, **{k: m_cls[k] for k in KEYS}})
        rows.append({"setting": name, "stages": "hybrid (+ refiner)", "seconds": t_cls + t_ref,
                     "refiner seconds": t_ref, "refiner s fp32": t_fp32, **{k: m[k] for k in KEYS},
                     "NRMSE drop": 1 - m["nrmse"] / m_cls["nrmse"]})
    print(f"machine: {machine()}; weights {refiner.checkpoint_path}; precision {refiner.precision}"
          + ("; the true PSF given (no PSF estimation)" if args.true_psf else "")
          + (f"; a measured PSF given (simulated, peak {args.measured_psf:g} photons)" if args.measured_psf else "")
          + "\n")
    from restore3d.refiner.precision import resolve_precision
    print(f"refiner precision 'auto' resolves to {resolve_precision('auto', 'cpu')} on this CPU\n")
    print(table(rows, ["setting", "stages", "seconds", "refiner seconds", "refiner s fp32"] + KEYS + ["NRMSE drop"]))
    hyb = [r for r in rows if r["stages"].startswith("hybrid")]
    cls_rows = [r for r in rows if r["stages"] == "background + RL"]
    print("\nmeans over the settings:\n")
    print(table([mean_row(cls_rows, "background + RL"), mean_row(hyb, "hybrid (+ refiner)")], ["variant"] + KEYS))


def cmd_adapt(args):
    import tifffile
    torch.set_num_threads(args.threads)
    from restore3d.psf import prepare_psf
    p = prepare_psf(tifffile.imread(args.psf), shape=(25, 25, 25))
    sp = (0.1, 0.1, 0.1)
    user = simulate_beads((32, 256, 256), sp, psf=p, density=0.01, flux=20000.0, seed=21)
    tests = [simulate_beads((32, 256, 256), sp, psf=p, density=0.01, flux=20000.0, seed=30 + i) for i in range(2)]
    classical = classical_stages()
    shipped = Refiner.pretrained()
    t0 = time.perf_counter()
    adapted = shipped.adapt(user.raw, sp, minutes=args.minutes, out=Path(args.work) / "adapted", progress=True)
    t_adapt = time.perf_counter() - t0
    rows = []
    for i, sim in enumerate(tests):
        cls, psf = classical_output(classical, sim)
        for label, vol in (("background + RL", cls), ("shipped refiner", shipped.restore(cls, sp, psf=psf)),
                           ("adapted refiner", adapted.restore(cls, sp, psf=psf))):
            m = metrics.evaluate(vol, target=sim.target, truth=sim.truth, spacing=sp)
            rows.append({"volume": f"LLSM-PSF test {i}", "restoration": label, **{k: m[k] for k in KEYS}})
    print(f"machine: {machine()}; adaptation {t_adapt:.0f} s in all (budget {args.minutes} min of training)\n")
    print(table(rows, ["volume", "restoration"] + KEYS))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ablation")
    a.add_argument("--steps", type=int, default=300)
    a.add_argument("--pool", type=int, default=80)
    a.add_argument("--work", default="/tmp/r3-ablation")
    a.add_argument("--only", nargs="*", default=None)
    a.add_argument("--threads", type=int, default=2)
    add_range_option(a)
    b = sub.add_parser("acceptance")
    b.add_argument("--weights", default=None)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--no-calibrate", action="store_true",
                   help="render a rendering refiner's kernel as trained, not measured on the volume")
    psf_source = b.add_mutually_exclusive_group()
    psf_source.add_argument("--true-psf", action="store_true",
                            help="give the stages the true PSF instead of estimating it (what PSF estimation costs)")
    psf_source.add_argument("--measured-psf", type=float, default=None, metavar="PEAK",
                            help="give the stages a simulated measurement of the PSF with PEAK photons at its maximum")
    c = sub.add_parser("adapt")
    c.add_argument("--minutes", type=float, default=3.0)
    c.add_argument("--psf", default=str(DATA / "llsm-psf" / "psf.tif"))
    c.add_argument("--work", default="/tmp/r3-adapt")
    c.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"ablation": cmd_ablation, "acceptance": cmd_acceptance, "adapt": cmd_adapt}[args.cmd](args)


if __name__ == "__main__":
    main()
