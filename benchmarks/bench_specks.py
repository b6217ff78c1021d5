"""RemoveSpecks after the hybrid: background, detection and error with and without it.

Usage::

    python benchmarks/bench_specks.py

Runs the default pipeline (background -> PSF -> RL -> refiner) once per volume
on two dense default simulations (seeds 3 and 4) and on the three unseen
optical settings of the refiner acceptance (bench_refiner.py, seeds 7-9),
then :func:`restore3d.cleanup.remove_specks` on its output with several
``min_fraction`` values, and prints the project metrics of each.
"""
from __future__ import annotations

import time

import numpy as np
from common import machine, table
from bench_refiner import eval_volumes

from restore3d import default_pipeline, metrics
from restore3d.cleanup import remove_specks
from restore3d.simulate import simulate_beads

SHAPE = (32, 256, 256)
SP = (0.3, 0.1, 0.1)
FRACTIONS = (0.02, 0.05, 0.1)
KEYS = ["elongation", "background_residual", "nrmse", "ap", "f1"]


def main():
    print(f"machine: {machine()}\n")
    volumes = [(f"default simulation, seed {s}", simulate_beads(SHAPE, SP, seed=s)) for s in (3, 4)]
    volumes += eval_volumes(seed=7)
    pipe = default_pipeline()
    rows = []
    for name, sim in volumes:
        hybrid = np.asarray(pipe.run(sim.raw, spacing=sim.spacing))
        variants = [("hybrid", hybrid, None, None)]
        for q in FRACTIONS:
            t0 = time.perf_counter()
            out, info = remove_specks(hybrid, min_fraction=q, return_info=True)
            variants.append((f"hybrid + RemoveSpecks(min_fraction={q})", out, info, time.perf_counter() - t0))
        for label, vol, info, seconds in variants:
            m = metrics.evaluate(vol, target=sim.target, truth=sim.truth, spacing=sim.spacing)
            rows.append({"volume": name, "variant": label, "RemoveSpecks s": "-" if info is None else seconds,
                         "components removed": "-" if info is None else f"{info.n_removed} / {info.n_components}",
                         "light removed": "-" if info is None else f"{100 * info.light_removed:.2f} %",
                         **{k: m[k] for k in KEYS}})
        print(f"  {name} done", flush=True)
    print()
    print(table(rows, ["volume", "variant", "RemoveSpecks s", "components removed", "light removed"] + KEYS))


if __name__ == "__main__":
    main()
