"""The learned half of restore3d: a small 3D U-Net refiner trained on simulated beads.

Importing this package does not import torch; the model is built on first use.
"""
from .checkpoint import load_checkpoint, save_checkpoint
from .losses import combined_loss, imbalanced_loss, l1_loss, mse_loss
from .model import UNetConfig, build_model
from .normalize import Normalizer
from .stage import PRETRAINED, Refiner


def train(*args, **kwargs):
    """Train a refiner: see :func:`restore3d.refiner.train.train`."""
    from .train import train as _train
    return _train(*args, **kwargs)


__all__ = ["Refiner", "PRETRAINED", "UNetConfig", "build_model", "Normalizer", "train",
           "imbalanced_loss", "l1_loss", "mse_loss", "combined_loss", "load_checkpoint", "save_checkpoint"]
