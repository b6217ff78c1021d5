"""Circular convolutions computed in place on one padded grid, a slab at a time.

A real grid (Z, Y, X) is stored in the layout of its half spectrum: a
float32 buffer of shape (Z, Y, 2 (X // 2 + 1)) whose first X columns are
the real values (the last one or two stay zero), so the real grid and its
spectrum (Z, Y, X // 2 + 1) complex64 share the buffer (FFTW's in-place
real transform). A convolution then transforms the buffer in three passes,
each over slabs that are read before their own storage is written:

1. planes along z: real FFT along x and FFT along y;
2. row blocks along y: FFT along z, the filter, inverse FFT along z;
3. planes along z: inverse FFT along y and real inverse along x, each
   slab handed to a ``sink`` that writes the result into the buffer.

So a convolution needs the buffer and a few slabs of a few MB, where the
whole-grid transforms of :class:`restore3d.forward_model.ForwardModel`
hold two or three grid-sized spectra at once. Only the planes and rows
where the input can be non-zero are transformed in pass 1, and only those
asked for in pass 3 (Richardson-Lucy's object lives on the extended
domain and its data on the volume, both smaller than the FFT grid).
"""
from __future__ import annotations

import torch

#: Size of the slabs each pass transforms at once (bytes of complex64) on the CPU: 1 MB was the fastest
#: and smallest at 512^2 (8 MB: 30 % slower, 90 MB more heap; benchmarks/RESULTS.md, section 5).
SLAB_BYTES = 2 ** 20
#: On a GPU, where each slab is a kernel launch and memory is rarely the limit.
GPU_SLAB_BYTES = 64 * 2 ** 20


class PaddedGrid:
    """The padded layout of a real FFT grid and in-place convolutions on it.

    Parameters
    ----------
    grid : (Z, Y, X) ints
        The FFT grid.
    device : torch.device
    """

    def __init__(self, grid, device):
        self.grid = tuple(int(n) for n in grid)
        self.device = device
        gz, gy, gx = self.grid
        self.nxc = gx // 2 + 1
        self.shape = (gz, gy, 2 * self.nxc)
        slab = SLAB_BYTES if torch.device(device).type == "cpu" else GPU_SLAB_BYTES
        self.zstep = max(1, slab // (gy * self.nxc * 8))
        self.ystep = max(1, slab // (gz * self.nxc * 8))

    def zeros(self) -> torch.Tensor:
        """A new zero buffer."""
        return torch.zeros(self.shape, dtype=torch.float32, device=self.device)

    def real(self, buf: torch.Tensor) -> torch.Tensor:
        """The real grid held by ``buf`` (a view, strided along y)."""
        return buf[..., :self.grid[2]]

    def spectrum(self, buf: torch.Tensor) -> torch.Tensor:
        """The half spectrum held by ``buf`` (a complex64 view of its storage)."""
        return torch.view_as_complex(buf.view(*self.grid[:2], self.nxc, 2))

    def padded(self, grid_tensor: torch.Tensor) -> torch.Tensor:
        """A new buffer holding ``grid_tensor`` (shape :attr:`grid`), zero in the padding."""
        out = self.zeros()
        self.real(out).copy_(grid_tensor)
        return out

    def convolve(self, src, buf, filt, *, conj, inp, out, sink):
        """``sink`` receives ``h * src`` (``h``: the filter ``filt``, or its conjugate) slab by slab.

        Parameters
        ----------
        src : buffer
            Input in the padded layout, zero outside the planes and rows
            ``inp``; may be ``buf`` itself.
        buf : buffer
            Working buffer, overwritten. On return its real grid is zero
            except where ``sink`` wrote.
        filt : (Z, Y, X // 2 + 1) complex64 tensor
            The filter's half spectrum (an OTF).
        conj : bool
            Multiply by the filter's conjugate (a correlation).
        inp, out : (slice, slice)
            Planes (z) and rows (y) where the input can be non-zero, and
            those of the result the sink needs (contiguous ranges).
        sink : callable
            ``sink(z0, z1, r, dst)`` for each slab of planes ``z0:z1`` inside
            ``out``: ``r`` is the result on those planes and the rows
            ``out[1]`` (all columns), ``dst`` the buffer's real grid on those
            planes (zeroed) for the sink to write into.
        """
        gz, gy, gx = self.grid
        spec = self.spectrum(buf)
        (zin, yin), (zout, yout) = inp, out
        # 1. x and y, plane slabs: rows outside `yin` are zero and skipped by the x transform
        src_real = self.real(src)
        _zero_outside(buf, zin)
        for z0, z1 in _steps(zin, self.zstep):
            t = torch.fft.rfft(src_real[z0:z1, yin], dim=-1)
            full = torch.zeros((z1 - z0, gy, self.nxc), dtype=t.dtype, device=t.device)
            full[:, yin] = t
            del t
            spec[z0:z1] = torch.fft.fft(full, dim=1)
        # 2. z with the filter, row blocks: only the planes `zout` are kept
        for y0, y1 in _steps(slice(0, gy), self.ystep):
            t = torch.fft.fft(spec[:, y0:y1], dim=0)
            f = filt[:, y0:y1]
            t.mul_(f.conj() if conj else f)
            spec[zout, y0:y1] = torch.fft.ifft(t, dim=0)[zout]
        # 3. y and x, plane slabs, into the sink
        real = self.real(buf)
        _zero_outside(buf, zout)
        for z0, z1 in _steps(zout, self.zstep):
            a = torch.fft.ifft(spec[z0:z1], dim=1)[:, yout]
            r = torch.fft.irfft(a, n=gx, dim=-1)
            del a
            buf[z0:z1].zero_()
            sink(z0, z1, r, real[z0:z1])


def _steps(span: slice, step: int):
    for a in range(span.start, span.stop, step):
        yield a, min(a + step, span.stop)


def _zero_outside(buf, span: slice):
    """Zero the planes of ``buf`` outside ``span``."""
    buf[:span.start].zero_()
    buf[span.stop:].zero_()
