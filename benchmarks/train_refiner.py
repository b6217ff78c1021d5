"""Train the refiner that ships inside the package (restore3d/refiner/weights/default.*).

Usage (the command recorded in benchmarks/RESULTS.md)::

    python benchmarks/train_refiner.py --out restore3d/refiner/weights/default --steps 3000 --pool 200 --minutes 50 --tau 0.01

The recipe is the CPU one (2 threads); ``--minutes`` caps the training time
(the shipped run stopped at step 2202 of 3000); with a GPU the same command
runs further in the same time. It writes the checkpoint (state_dict + JSON with
the architecture, normalisation, preceding stages, spacing range, loss,
training command, wall time and validation history, SHA-256).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from common import add_range_option, simulation_ranges
from restore3d.refiner.model import UNetConfig
from restore3d.refiner.training.train import TrainConfig, train


def unet_config(channels, depth):
    """The U-Net: lateral-only pooling first (thin stacks), then isotropic ones."""
    pools = ((1, 2, 2),) + ((2, 2, 2),) * (depth - 1)
    return UNetConfig(depth=depth, base_channels=channels, pools=pools)


def save_last(out):
    """The last step's weights (kept in OUT.state.pt to resume) as a checkpoint OUT_last, with OUT's description."""
    from restore3d.refiner.checkpoint import load_checkpoint, read_meta, save_checkpoint
    model, _ = load_checkpoint(out + ".pt", device="cpu")
    state = torch.load(out + ".state.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    meta = read_meta(out + ".json")  # save_checkpoint sets the weights' own name, architecture and SHA-256
    meta["training"]["kept"] = f"last step ({state['step']})"
    print("last step's weights:", save_checkpoint(out + "_last", model, meta))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="restore3d/refiner/weights/default")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--pool", type=int, default=200)
    ap.add_argument("--loss", default="imbalanced")
    ap.add_argument("--weight", type=float, default=100.0)
    ap.add_argument("--tau", type=float, default=0.01)
    ap.add_argument("--dilate", type=int, default=0, help="grow the weighted bead voxels by this many voxels")
    ap.add_argument("--false-weight", type=float, default=1.0,
                    help="weight of voxels the prediction lights where the target has none (1: the original loss)")
    ap.add_argument("--false-reach", type=int, default=None,
                    help="apply --false-weight only within this many voxels of a target bead voxel")
    ap.add_argument("--face-crops", type=float, default=0.0,
                    help="share of patches cropped flush with the volume's first or last plane")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="auto")
    add_range_option(ap)
    ap.add_argument("--minutes", type=float, default=None, help="stop training after this many minutes")
    ap.add_argument("--validation", type=int, default=8, help="fixed validation volumes")
    ap.add_argument("--patience", type=int, default=10, help="epochs (100 steps) without a better validation loss")
    ap.add_argument("--init", default=None, help="checkpoint to fine-tune (its architecture and transforms kept)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine to 1/100 of it)")
    ap.add_argument("--channels", type=int, default=UNetConfig.base_channels,
                    help="U-Net channels at full resolution (a new network only)")
    ap.add_argument("--depth", type=int, default=UNetConfig.depth, help="U-Net poolings (a new network only)")
    ap.add_argument("--save-last", action="store_true",
                    help="also write the last step's weights as OUT_last.pt / .json (OUT.pt is the best validation)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = {}
    if args.loss in ("imbalanced", "combined"):
        params = {"weight": args.weight, "tau": args.tau, "dilate": args.dilate, "false_weight": args.false_weight}
        if args.false_reach is not None:
            params["false_reach"] = args.false_reach
    cfg = TrainConfig(steps=args.steps, pool=args.pool, loss=args.loss, loss_params=params, seed=args.seed, lr=args.lr,
                      epoch_steps=100, patience=args.patience, validation=args.validation, precision=args.precision,
                      face_crops=args.face_crops, time_limit=None if args.minutes is None else 60 * args.minutes)
    command = "python benchmarks/train_refiner.py " + " ".join(sys.argv[1:])
    t0 = time.perf_counter()
    res = train(args.out, config=cfg, model_config=unet_config(args.channels, args.depth), ranges=simulation_ranges(args.range),
                threads=args.threads, command=command, progress=True, init=args.init)
    wall = time.perf_counter() - t0
    if args.save_last:
        save_last(args.out)
    print(json.dumps({"command": command, "wall_seconds": round(wall, 1), "pool_seconds": round(res.pool_seconds, 1),
                      "train_seconds": round(res.seconds, 1), "steps": res.steps, "best": res.best}, indent=2))


if __name__ == "__main__":
    main()
