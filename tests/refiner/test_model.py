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


def test_folded_batchnorm_gives_the_same_output():
    """Inference folds each batch norm into its convolution: same output, the trained model untouched."""
    from restore3d.refiner.model import fold_batchnorm
    model = random_model(seed=3)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():  # running statistics far from the identity map
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.2)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in fused.modules())
    x = torch.rand(1, 1, 8, 32, 32)
    with torch.no_grad():
        ref, got = model(x), fused(x)
    assert ref.abs().max() > 0.1
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("depth, pools", [(2, ((1, 2, 2), (2, 2, 2))), (3, ((1, 2, 2), (2, 2, 2), (2, 2, 2)))])
def test_inference_forward_equals_the_training_one(channels_last, depth, pools):
    """Without gradients each level runs in slabs (restore3d.refiner.streaming; less memory): the same
    output, to the bit, as the training forward, in both memory layouts."""
    model = random_model(seed=5, depth=depth, pools=pools)
    x = torch.rand(1, 1, 8 * depth, 48, 40, generator=torch.Generator().manual_seed(2))
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.enable_grad():
        ref = model(x).detach()
    with torch.no_grad():
        got = model(x)
    assert float((ref - x.clamp(min=0)).abs().max()) > 1e-3  # the network, not the residual identity
    assert torch.equal(got, ref)


def _slab_case():
    """A channels-last three-level U-Net, an input whose width no slab divides, and its whole-pass output."""
    model = random_model(seed=7, depth=3, pools=((1, 2, 2), (2, 2, 2), (2, 2, 2))).to(
        memory_format=torch.channels_last_3d)
    x = torch.rand(1, 1, 8, 24, 56, generator=torch.Generator().manual_seed(4)).contiguous(
        memory_format=torch.channels_last_3d)
    with torch.enable_grad():
        ref = model(x).detach()
    return model, x, ref


@pytest.mark.parametrize("keep_finest", [False, True, "auto"])
@pytest.mark.parametrize("slab_values", [3000, 20000])
def test_slab_wise_inference_equals_the_whole_pass(keep_finest, slab_values):
    """Many slabs along x (widths that do not divide the volume; the finest skip kept or computed again)
    give the output of the whole pass, to the bit; slabs cover every column once."""
    from restore3d.refiner.streaming import _columns, forward_by_slabs
    model, x, ref = _slab_case()
    with torch.no_grad():
        got = forward_by_slabs(model, x, slab_values=slab_values, least_width=1, channels_last=True,
                               keep_finest=keep_finest)
    assert _columns(x.shape, 8 + 2 * 4, slab_values) <= 56 // 8  # the finest decoder level: 8 slabs or more
    assert float((ref - x.clamp(min=0)).abs().max()) > 1e-3
    assert torch.equal(got, ref)


@pytest.mark.parametrize("keep_finest", [False, True])
@pytest.mark.parametrize("slab_values", [3000, 20000, 10 ** 9])
def test_output_written_over_the_input_equals_the_whole_pass(slab_values, keep_finest):
    """With overwrite_input the output goes over the input where the finest slabs are at least their
    reach wide (else into a new tensor), to the bit of the whole pass, the finest skip held or not."""
    from restore3d.refiner.streaming import _columns, _fits_in_place, forward_by_slabs
    model, x, ref = _slab_case()
    own = x.clone()
    with torch.no_grad():
        got = forward_by_slabs(model, own, slab_values=slab_values, least_width=1, channels_last=True,
                               overwrite_input=True, keep_finest=keep_finest)
    assert torch.equal(got, ref)
    halo = 2  # two 3x3x3 convolutions per block; a finest skip computed again reaches twice that
    reach = halo if keep_finest else 2 * halo
    fits = _fits_in_place(_columns(x.shape, 8 + 2 * 4, slab_values, halo), reach, 2)
    assert (got.data_ptr() == own.data_ptr()) == fits
    assert fits == (slab_values > 3000 or keep_finest)


def test_the_finest_skip_is_held_only_where_small(monkeypatch):
    """By default the finest skip is held up to KEEP_FINEST_BYTES (8 base channels x voxels x 4 bytes) and
    computed again above; either way the output is the whole pass's. A keep_finest that is neither a bool
    nor "auto" is refused."""
    from restore3d.refiner import streaming
    model, x, ref = _slab_case()
    cfg = model.config
    limit = streaming.KEEP_FINEST_BYTES // (4 * cfg.base_channels)  # voxels
    assert streaming.keeps_finest(cfg, (1, 1, 1, 1, limit))
    assert not streaming.keeps_finest(cfg, (1, 1, 1, 1, limit + 1))
    assert streaming.keeps_finest(cfg, (1, 1, 32, 64, 64)) and not streaming.keeps_finest(cfg, (1, 1, 64, 512, 512))
    calls = []
    real = model.down[0].forward

    def counted(t):
        calls.append(t.shape[-1])
        return real(t)

    monkeypatch.setattr(model.down[0], "forward", counted)
    columns, default = {}, streaming.KEEP_FINEST_BYTES
    for limit_bytes in (default, 0):
        monkeypatch.setattr(streaming, "KEEP_FINEST_BYTES", limit_bytes)
        calls.clear()
        with torch.no_grad():
            got = streaming.forward_by_slabs(model, x, slab_values=3000, least_width=1, channels_last=True)
        assert torch.equal(got, ref)
        columns[limit_bytes] = sum(calls)
    # computed again, the decoder's slabs run the first block over every column once more
    assert columns[0] >= columns[default] + x.shape[-1]
    with pytest.raises(ValueError, match="keep_finest must be True, False or 'auto'"):
        streaming.forward_by_slabs(model, x, keep_finest="yes")


def test_slab_bounds_cover_each_column_once_with_context():
    from restore3d.refiner.streaming import slab_bounds
    for n, rows, halo, align in [(56, 7, 2, 2), (9, 4, 1, 1), (16, 100, 3, 4), (1, 1, 0, 1)]:
        slabs = slab_bounds(n, rows, halo, align)
        kept = [c for a, b, _, _ in slabs for c in range(a, b)]
        assert kept == list(range(n))
        for a, b, lo, hi in slabs:
            assert lo <= max(0, a - halo) and hi >= min(n, b + halo)
            assert lo % align == 0 and (hi % align == 0 or hi == n)
    with pytest.raises(ValueError, match="halo >= 0"):
        slab_bounds(8, 2, -1)


def test_slabs_written_over_their_source_equal_a_separate_output():
    """A block whose output has its input's shape may be written over it, one slab late, at any slab width
    down to its reach; narrower slabs are refused (they would read columns already overwritten)."""
    from restore3d.refiner.streaming import _by_slabs_into, _fits_in_place
    src = torch.rand(1, 2, 3, 4, 30, generator=torch.Generator().manual_seed(1))
    halo, align = 3, 2

    def block(t):  # each column from its neighbours up to `halo` away (zero outside), like a convolution
        pad = torch.nn.functional.pad(t, (halo, halo))
        return sum(pad[..., k: k + t.shape[4]] * (k + 1) for k in range(2 * halo + 1))

    expected = block(src)
    for rows in range(1, 31):
        dest = src.clone()
        if not _fits_in_place(rows, halo, align):
            assert rows < 4  # the reach: 3 columns rounded out to the pairs the slabs start on
            continue

        def compute(lo, hi, dest=dest):  # zero padding at the slab's ends: valid `halo` inside them
            return block(dest[..., lo:hi])

        got = _by_slabs_into(compute, dest, rows, halo, align)
        assert got is dest and torch.allclose(got, expected, atol=1e-5), rows
    unsafe = src.clone()  # what the refusal prevents: slabs narrower than the reach read overwritten columns
    got = _by_slabs_into(lambda lo, hi: block(unsafe[..., lo:hi]), unsafe, 2, halo, align)
    assert not torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="cannot be written over its source"):
        _by_slabs_into(lambda lo, hi: src[:, :1, :, :, lo:hi], src.clone(), 8, halo, align)
