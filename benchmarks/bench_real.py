"""What the pipeline does to real beads: the measured stacks of ../shared/data and real-like simulations.

Usage::

    python benchmarks/bench_real.py [--weights PATH] [--only leica ...] [--crop]

Per stack, for the classical stages alone (background -> PSF from the beads
-> 10 RL iterations) and for the default hybrid (+ refiner):
elongation against the ideal at that sampling (isotropic Gaussians of the
raw beads' lateral FWHM rendered at their positions and measured the same
way), lateral FWHM against the raw, bead count against the raw, per-bead
light against the raw minus background (flux_ratio: the raw bead's light is
its flux fitted with the PSF the pipeline used, wings included;
window_flux_ratio: the raw's light in a +-2 FWHM window, which misses the
wings), invented spots, background residual
(:func:`restore3d.assess.compare_to_raw`), and the refiner's self-check.
Simulated stacks with real artefacts (8-bit, clipped background,
saturation, scan tail; dim ones) add the scores against their truth: spots
above 10 % of the median bead and farther than 1 um from every bead, AP,
and elongation against the ideal target's, and the same real-data measures of
the perfect restoration (the simulation's target): what each measure gives
when every bead keeps its true light and is round at the target's FWHM.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import tifffile

from common import DATA, fmt, machine
from restore3d import Pipeline, Refiner, RemoveUnsupported, assess, io, metrics, simulate
from restore3d.presets import classical_stages
from restore3d.refiner import DEFAULT_WEIGHTS, SHIPPED


#: Real stacks: path, spacing (None = from the file) and a note.
REAL = {
    "leica-beads (confocal, NA 1.4 oil, 8-bit)": ("leica-beads/beads.tif", None),
    "EPFL bead (widefield; spacing assumed 0.16 um)": ("epfl-bead/data.tif", (0.16, 0.16, 0.16)),
    "LLSM PSF stack (one bead, light sheet)": ("llsm-psf/psf.tif", (0.1, 0.1, 0.1)),
    "widefield PSF stack (one bead, 560 nm)": ("widefield-psf/psf.tif", (0.1, 0.1003, 0.1003)),
}

#: Simulations with the artefacts of real stacks (32 x 256 x 256 unless noted).
SIMULATED = {
    "sim confocal NA 1.4 oil, 8-bit, 0.1/0.044 (leica-like)": dict(
        shape=(48, 256, 256), spacing=(0.1, 0.0443, 0.0443), n_beads=20, bead_diameter=0.17, flux=60000.0,
        psf={"model": "confocal", "na": 1.4, "wavelength": 0.62, "excitation": 0.514, "n_immersion": 1.518,
             "n_sample": 1.40, "depth": 3.0},
        ambient=dict(offset=0.5, level=1.0, strength=0.3), read_noise=0.5,
        detector=dict(bits=8, gain=1.0, floor=1.0)),
    "sim widefield NA 0.95 air, 8-bit, 0.3/0.108 (held-out-like)": dict(
        shape=(34, 256, 256), spacing=(0.3, 0.108, 0.108), n_beads=40, bead_diameter=0.2, flux=40000.0,
        psf={"model": "widefield", "na": 0.95, "wavelength": 0.6, "n_immersion": 1.0},
        ambient=dict(offset=2.0, level=8.0, strength=0.5), read_noise=1.0,
        detector=dict(bits=8, gain=0.5, floor=0.0)),
    "sim dim NA 1.4 oil into water, 0.3/0.1": dict(
        spacing=(0.3, 0.1, 0.1), n_beads=150, flux=3000.0,
        psf={"model": "widefield", "na": 1.4, "wavelength": 0.52, "n_immersion": 1.518, "n_sample": 1.333,
             "depth": 5.0}),
    "sim dim NA 0.8 air, 0.3/0.1": dict(
        spacing=(0.3, 0.1, 0.1), n_beads=220, flux=5000.0,
        psf={"model": "widefield", "na": 0.8, "wavelength": 0.6, "n_immersion": 1.0}),
    "sim bright NA 1.2 water, 0.3/0.108": dict(
        spacing=(0.3, 0.108, 0.108), n_beads=100, flux=30000.0,
        psf={"model": "widefield", "na": 1.2, "wavelength": 0.6, "n_immersion": 1.333}),
}

COLUMNS = ["stack", "stages", "seconds", "raw_beads", "beads", "invented", "elongation", "ideal_elongation",
           "elongation_vs_ideal", "lateral_vs_raw", "lateral_vs_raw_smoothed", "flux_ratio", "flux_spread",
           "window_flux_ratio", "background", "self_check"]
SIM_COLUMNS = ["stack", "stages", "spots", "spots_per_bead", "ap", "elongation", "target_elongation", "nrmse_si"]


def load_real(rel, spacing):
    path = DATA / rel
    if spacing is None:
        vol, spacing = io.load(path)
    else:
        vol = tifffile.imread(path).astype(np.float32)
    return vol, tuple(spacing)


def run_stack(name, vol, spacing, refiner, rows, crop=False, after=(), psf=None, perfect=None):
    if crop:
        vol = vol[:, : min(vol.shape[1], 256), : min(vol.shape[2], 256)]
    pipe = Pipeline(classical_stages().steps + [("refiner", refiner)] + list(after))
    t0 = time.perf_counter()
    try:
        res = pipe.run(vol, spacing=spacing, keep=("background", "rl"), psf=psf)
    except ValueError as exc:  # e.g. no bead the PSF can be estimated from: say so in the table
        print(f"| {name} | default pipeline failed: {str(exc).splitlines()[0][:150]} |", flush=True)
        return None
    total = time.perf_counter() - t0
    clean = res.intermediates["background"]
    check = res.info.get("refiner", {}).get("self_check", {})
    variants = [("raw (background removed)", clean, res.timings["background"]),
                ("classical: background -> PSF -> RL", res.intermediates["rl"],
                 sum(res.timings[n] for n in ("background", "psf", "rl"))),
                ("hybrid (+ refiner)", np.asarray(res), total)]
    if perfect is not None:  # a simulation's target: every bead's true light, round at the target's FWHM
        variants.append(("perfect (the simulation's target)", perfect, float("nan")))
    for stages, out, seconds in variants:
        c = assess.compare_to_raw(out, clean, spacing, psf=res.psf)
        row = {"stack": name, "stages": stages, "seconds": seconds, **c.as_dict()}
        if stages.startswith("hybrid"):
            row["self_check"] = "passed" if check.get("passed") else "FAILED " + ", ".join(
                f.split(" outside")[0] for f in check.get("failed", []))
        rows.append(row)
        print(_line(row, COLUMNS), flush=True)
    return res


def _line(row, cols):
    return "| " + " | ".join(row[c] if isinstance(row.get(c), str) else fmt(row.get(c)) for c in cols) + " |"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=None, help="shipped weights or a checkpoint (default: the default's)")
    ap.add_argument("--only", nargs="*", default=None, help="run the stacks whose name contains one of these")
    ap.add_argument("--crop", action="store_true", help="crop real stacks to 256 x 256 laterally (quick look)")
    ap.add_argument("--support", action="store_true",
                    help="end the hybrid with RemoveUnsupported (spots the data do not hold removed) after a "
                         "refiner that does not render (a rendering one always is, as in default_pipeline)")
    ap.add_argument("--true-psf", action="store_true",
                    help="simulated stacks: give the pipeline the simulation's PSF instead of estimating it")
    ap.add_argument("--no-calibrate", action="store_true",
                    help="render a rendering refiner's kernel as trained, not measured on the volume")
    args = ap.parse_args()
    print(machine())
    kw = {"calibrate": not args.no_calibrate}
    args.weights = args.weights or DEFAULT_WEIGHTS
    refiner = Refiner.pretrained(args.weights, **kw) if args.weights in SHIPPED else Refiner.load(args.weights, **kw)
    after = [("support", RemoveUnsupported())] if args.support or refiner.renders else []
    print(f"refiner: {args.weights}{' (kernel as trained)' if args.no_calibrate else ''}"
          f"{'; then RemoveUnsupported' if after else ''}"
          f"{'; simulations with their true PSF' if args.true_psf else ''}")
    rows, sim_rows = [], []
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for name, (rel, spacing) in REAL.items():
        if args.only and not any(o in name for o in args.only):
            continue
        if not (DATA / rel).exists():
            print(f"| {name} | skipped: {DATA / rel} missing |")
            continue
        vol, sp = load_real(rel, spacing)
        run_stack(name, vol, sp, refiner, rows, crop=args.crop, after=after)
    for i, (name, kw) in enumerate(SIMULATED.items()):
        if args.only and not any(o in name for o in args.only):
            continue
        sim = simulate.simulate_beads(**{"shape": (32, 256, 256), **kw}, seed=20 + i)
        res = run_stack(name, sim.raw, sim.spacing, refiner, rows, after=after,
                        psf=sim.psf if args.true_psf else None, perfect=sim.target)
        if res is None:
            continue
        for stages, out in (("classical", res.intermediates["rl"]), ("hybrid", np.asarray(res))):
            spots = metrics.spurious_spots(out, sim.spacing, sim.truth)
            m = metrics.evaluate(out, target=sim.target, truth=sim.truth, spacing=sim.spacing)
            sim_rows.append({"stack": name, "stages": stages, "spots": spots,
                             "spots_per_bead": spots / max(len(sim.inside), 1), "ap": m["ap"],
                             "elongation": m["elongation"], "nrmse_si": m["nrmse_si"],
                             "target_elongation": metrics.elongation(sim.target, sim.spacing, truth=sim.truth)})
    if sim_rows:
        print("\n| " + " | ".join(SIM_COLUMNS) + " |\n|" + "---|" * len(SIM_COLUMNS))
        for r in sim_rows:
            print(_line(r, SIM_COLUMNS))


if __name__ == "__main__":
    main()
