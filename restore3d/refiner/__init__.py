"""The learned half of restore3d: a small 3D U-Net refiner trained on simulated beads.

Inference (:class:`Refiner`, :func:`refine`) needs the checkpoint, the
network and the transforms around it; training lives in
:mod:`restore3d.refiner.training` and is imported only to train or adapt.
Importing this package does not import torch; the model is built on first use.
"""
from .checkpoint import load_checkpoint, save_checkpoint
from .inference import refine
from .model import UNetConfig, build_model
from .normalize import Normalizer
from .stage import DEFAULT_WEIGHTS, PRETRAINED, SHIPPED, Refiner


def train(*args, **kwargs):
    """Train a refiner: see :func:`restore3d.refiner.training.train.train`."""
    from .training.train import train as _train
    return _train(*args, **kwargs)


__all__ = ["Refiner", "refine", "PRETRAINED", "SHIPPED", "DEFAULT_WEIGHTS", "UNetConfig", "build_model", "Normalizer", "train",
           "load_checkpoint", "save_checkpoint"]
