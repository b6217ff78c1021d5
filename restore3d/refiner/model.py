"""3D U-Net for thin, anisotropic bead stacks, with a typed, validated configuration."""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["UNetConfig", "UNet3D", "build_model", "fold_batchnorm"]

_NORMS = ("batch", "none", "group", "instance")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet3D` (saved as JSON next to every checkpoint).

    Attributes
    ----------
    depth : int
        Number of poolings (>= 1).
    base_channels : int
        Channels at full resolution; doubled after each pooling.
    kernel_size : int
        Odd size of the 3D convolutions.
    pools : list of (pz, py, px)
        Pooling factor per level, lateral before axial for thin stacks;
        default ``(1, 2, 2)`` first, then ``(2, 2, 2)``.
    residual : bool
        Predict a correction added to the input (starts as the identity).
    norm : {"batch", "none", "group", "instance"}
        Normalisation after each convolution. Only "batch" (running
        statistics at inference) and "none" keep tiled inference exact.
    convs_per_level : int
        Convolutions per level.
    """

    depth: int = 2
    base_channels: int = 16
    kernel_size: int = 3
    pools: tuple = ((1, 2, 2), (2, 2, 2))
    residual: bool = True
    norm: str = "batch"
    convs_per_level: int = 2

    def __post_init__(self):
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {self.depth!r}")
        if not isinstance(self.base_channels, int) or self.base_channels < 1:
            raise ValueError(f"base_channels must be a positive integer, got {self.base_channels!r}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {self.kernel_size!r}")
        if self.norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {self.norm!r}")
        if self.convs_per_level < 1:
            raise ValueError(f"convs_per_level must be >= 1, got {self.convs_per_level!r}")
        pools = tuple(tuple(int(v) for v in p) for p in self.pools)
        if len(pools) != self.depth or any(len(p) != 3 or min(p) < 1 for p in pools):
            raise ValueError(f"pools must list {self.depth} factors (pz, py, px) >= 1, got {self.pools!r}")
        object.__setattr__(self, "pools", pools)

    @property
    def multiple(self) -> tuple[int, int, int]:
        """Input sizes must be multiples of this (the product of the poolings)."""
        return tuple(int(np.prod([p[a] for p in self.pools])) for a in range(3))

    def receptive_halo(self) -> tuple[int, int, int]:
        """Voxels of context on each side that influence one output voxel (z, y, x)."""
        k = self.kernel_size // 2
        halo = np.zeros(3)
        scale = np.ones(3)
        for p in self.pools:
            halo += self.convs_per_level * k * scale
            scale = scale * np.asarray(p)
        halo += self.convs_per_level * k * scale  # bottom
        for p in reversed(self.pools):
            scale = scale / np.asarray(p)
            halo += self.convs_per_level * k * scale
        return tuple(int(np.ceil(h)) for h in halo)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["pools"] = [list(p) for p in self.pools]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        valid = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - valid)
        if bad:
            raise ValueError(f"unknown U-Net settings {bad}; valid: {sorted(valid)}")
        return cls(**{**d, "pools": tuple(tuple(p) for p in d.get("pools", cls.pools))})


def build_model(config: UNetConfig):
    """A :class:`UNet3D` for ``config`` (imports torch lazily)."""
    return UNet3D(config)


def fold_batchnorm(model):
    """A copy of ``model`` for inference with every BatchNorm folded into the convolution before it.

    In evaluation a batch normalisation is a fixed per-channel affine map
    (running statistics), so ``bn(conv(x))`` equals one convolution with
    weights scaled by ``gamma / sqrt(var + eps)`` and a bias: the same
    output up to rounding, one full-resolution pass and one activation
    array fewer per convolution. ``model`` is left as it is (training
    continues on it).
    """
    import copy
    torch, nn = _torch_nn()
    fused = copy.deepcopy(model).eval()
    for seq in fused.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        layers = list(seq)
        for i in range(len(layers) - 1):
            conv, bn = layers[i], layers[i + 1]
            if not (isinstance(conv, nn.Conv3d) and isinstance(bn, nn.BatchNorm3d)):
                continue
            with torch.no_grad():
                gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                conv.weight.mul_(gain.reshape(-1, 1, 1, 1, 1))
                conv.bias = nn.Parameter((bias - bn.running_mean) * gain + bn.bias)
            seq[i + 1] = nn.Identity()
    return fused


def _torch_nn():
    import torch
    from torch import nn
    return torch, nn


def _norm(nn, kind, channels):
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    return nn.Identity()


def _block(nn, cin, cout, cfg):
    layers = []
    for i in range(cfg.convs_per_level):
        layers += [nn.Conv3d(cin if i == 0 else cout, cout, cfg.kernel_size, padding=cfg.kernel_size // 2,
                             bias=cfg.norm == "none"),
                   _norm(nn, cfg.norm, cout), nn.LeakyReLU(0.1, inplace=True)]
    return nn.Sequential(*layers)


def _upsample_join(torch, low, skip, factor, memory_format=None):
    """``cat([nearest_upsample(low, factor), skip], dim=1)`` without the upsampled array.

    The joined array is allocated once, in ``memory_format`` (default
    ``skip``'s), and the upsampled channels are copied into it from a
    broadcast view of ``low`` (the same values as :class:`torch.nn.Upsample`'s
    nearest mode for integer factors).
    """
    n, c_low = low.shape[:2]
    layout = memory_format if memory_format is not None else torch.channels_last_3d \
        if skip.is_contiguous(memory_format=torch.channels_last_3d) else torch.contiguous_format
    out = torch.empty((n, c_low + skip.shape[1]) + tuple(skip.shape[2:]), dtype=skip.dtype, device=skip.device,
                      memory_format=layout)
    (z, y, x), (pz, py, px) = low.shape[2:], factor
    dest = out[:, :c_low].unflatten(2, (z, pz)).unflatten(4, (y, py)).unflatten(6, (x, px))
    dest.copy_(low[:, :, :, None, :, None, :, None].expand(n, c_low, z, pz, y, py, x, px))
    out[:, c_low:].copy_(skip)
    return out


def UNet3D(config: UNetConfig):
    """Build the U-Net module (a function so that importing this module does not import torch).

    Encoder: blocks of ``convs_per_level`` convolutions, max-pooling by the
    factors in ``config.pools``; decoder: nearest-neighbour upsampling,
    concatenation with the skip, a block. A 1x1x1 head gives one channel,
    zero-initialised so a residual network starts as the identity. The
    output is made non-negative with a ReLU.

    The forward pass takes ``(N, 1, Z, Y, X)`` tensors whose sizes are
    multiples of ``config.multiple`` (see :func:`restore3d.refiner.tiling.pad_to_multiple`).
    """
    torch, nn = _torch_nn()

    class _UNet3D(nn.Module):
        def __init__(self, cfg: UNetConfig):
            super().__init__()
            self.config = cfg
            ch = [cfg.base_channels * 2 ** i for i in range(cfg.depth + 1)]
            self.down = nn.ModuleList()
            cin = 1
            for i in range(cfg.depth):
                self.down.append(_block(nn, cin, ch[i], cfg))
                cin = ch[i]
            self.pools = nn.ModuleList([nn.MaxPool3d(p) for p in cfg.pools])
            self.bottom = _block(nn, ch[cfg.depth - 1], ch[cfg.depth], cfg)
            self.ups = nn.ModuleList([nn.Upsample(scale_factor=p, mode="nearest") for p in cfg.pools])
            self.up = nn.ModuleList([_block(nn, ch[i + 1] + ch[i], ch[i], cfg) for i in range(cfg.depth)])
            self.head = nn.Conv3d(ch[0], 1, 1)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

        def _channels_last(self) -> bool:
            """Whether the weights are channels-last (the slabs then are too), read off a many-channel conv."""
            conv = next(m for m in self.modules() if isinstance(m, nn.Conv3d) and m.in_channels > 1)
            w = conv.weight
            return w.is_contiguous(memory_format=torch.channels_last_3d) and not w.is_contiguous()

        def forward(self, x):
            if not torch.is_grad_enabled():
                # inference: each level's blocks in slabs, the finest level held whole only where it is small
                # (restore3d.refiner.streaming; benchmarks/RESULTS.md section 5)
                from .streaming import forward_by_slabs
                return forward_by_slabs(self, x, channels_last=self._channels_last())
            skips = []
            h = x
            for block, pool in zip(self.down, self.pools):
                h = block(h)
                skips.append(h)
                h = pool(h)
            h = self.bottom(h)
            for i in reversed(range(self.config.depth)):
                h = self.up[i](torch.cat([self.ups[i](h), skips.pop()], dim=1))
            out = self.head(h)
            if self.config.residual:
                out = out + x
            return torch.relu(out)

    return _UNet3D(config)
