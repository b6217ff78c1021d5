"""The U-Net and its configuration (restore3d.refiner.model)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from .conftest import random_model  # noqa: E402

from restore3d.refiner import UNetConfig, build_model  # noqa: E402
from restore3d.refiner.inference import predict  # noqa: E402
from restore3d.refiner.normalize import Normalizer  # noqa: E402

SP = (0.3, 0.1, 0.1)

@pytest.mark.parametrize("shape", [(13, 37, 29), (32, 64, 64), (5, 9, 11), (1, 8, 8)])
def test_any_shape_in_same_shape_out(shape):
    """Odd sizes are padded and cropped: output has the input's shape, non-negative."""
    model = random_model()
    vol = np.random.default_rng(0).random(shape).astype(np.float32)
    out = predict(model, vol, SP, normalizer=Normalizer(), device="cpu")
    assert out.shape == shape and out.dtype == np.float32 and out.min() >= 0


def test_config_validation():
    """Bad architectures are rejected at the door."""
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        UNetConfig(kernel_size=4)
    with pytest.raises(ValueError, match="pools must list 2"):
        UNetConfig(pools=((1, 2, 2),))
    with pytest.raises(ValueError, match="norm must be one of"):
        UNetConfig(norm="layer")
    with pytest.raises(ValueError, match="unknown U-Net settings"):
        UNetConfig.from_dict({"depht": 2})
    assert UNetConfig().multiple == (2, 4, 4)


def test_residual_model_starts_as_identity():
    """A fresh residual network returns its (non-negative) input: training starts from the classical result."""
    model = build_model(UNetConfig(base_channels=4)).eval()
    x = torch.rand(1, 1, 8, 16, 16)
    assert torch.allclose(model(x), x)
