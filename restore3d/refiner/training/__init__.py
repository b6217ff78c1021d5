"""Training the refiner: simulated pairs, losses, the training loop, adaptation to one microscope.

Nothing at inference imports this package: the :class:`~restore3d.Refiner`
stage needs only the checkpoint, the network and the transforms around it.
"""
