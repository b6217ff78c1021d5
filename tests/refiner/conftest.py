"""Helpers of the refiner's tests."""


def random_model(seed=0, **cfg):
    """A small U-Net (4 base channels) with a non-zero head, so a test sees the network and not the identity."""
    import torch

    from restore3d.refiner import UNetConfig, build_model
    torch.manual_seed(seed)
    model = build_model(UNetConfig(base_channels=4, **cfg))
    with torch.no_grad():  # the head starts at zero (identity)
        model.head.weight.normal_(0, 0.5)
        model.head.bias.fill_(0.1)
    return model.eval()

