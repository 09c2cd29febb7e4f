"""The ``Convolution`` layer: forward and backward at the book's shapes, and how its cost
grows with the batch size (1 to 1,024) and the image size (28 to 112 pixels).

Implementations (one pytest-benchmark group per comparison):
- ``book``: the book's ch. 7 layer in NumPy, float64 (``benchmarks/naive_book.py``), the
  baseline;
- ``xpnet``: ``xpnet.convolution.Convolution`` (Numba im2col/col2im + BLAS GEMM), float64
  and float32, on the CPU and (CuPy) the GPU;
- ``torch``: ``torch.nn.functional.conv2d`` and its backward op
  (``aten.convolution_backward``: dx, dW, db, like the book's backward), float32.
"""

from __future__ import annotations

import naive_book
import numpy as np
import pytest

from xpnet.convolution import Convolution
from xpnet.flops import Gemm

# (name, x shape, filters FN, filter size, pad): the busiest convolutions of the networks
SHAPES = [
    pytest.param("DeepConvNet conv2", (100, 16, 28, 28), 16, 3, 1, id="deep-conv2",
                 marks=pytest.mark.quick),
    pytest.param("DeepConvNet conv6", (100, 64, 8, 8), 64, 3, 1, id="deep-conv6"),
    pytest.param("SimpleConvNet conv1", (100, 1, 28, 28), 30, 5, 0, id="simple-conv1"),
]
# (impl, dtype, device)
IMPLS = [
    pytest.param("book", "float64", "cpu", id="book-f64"),
    pytest.param("xpnet", "float64", "cpu", id="xpnet-f64"),
    pytest.param("xpnet", "float32", "cpu", id="xpnet-f32"),
    pytest.param("torch", "float32", "cpu", id="torch-f32", marks=pytest.mark.torch),
    pytest.param("xpnet", "float32", "gpu", id="xpnet-gpu-f32", marks=pytest.mark.gpu),
    pytest.param("torch", "float32", "gpu", id="torch-cuda-f32",
                 marks=[pytest.mark.torch, pytest.mark.gpu]),
]
NAMES = {"book": "book NumPy", "xpnet": "xpnet", "torch": "PyTorch"}


def label(impl, dtype, device):
    return f"{NAMES[impl]} {dtype}" + (" GPU" if device == "gpu" else "")


def conv_flops(shape, fn, size, pad):
    """GEMM FLOPs of one forward pass (the FLOP model's count for a convolution)."""
    N, C, H, W = shape
    oh, ow = H + 2 * pad - size + 1, W + 2 * pad - size + 1
    return Gemm("Conv", "forward", N * oh * ow, fn, C * size * size).flops


class ConvCase:
    """One convolution on one implementation: ``forward()``, ``backward()`` and the arrays."""

    def __init__(self, impl, dtype, device, shape, fn, size, pad, request, seed=0):
        rng = np.random.default_rng(seed)
        N, C, H, W = shape
        x = rng.standard_normal(shape)
        w = rng.standard_normal((fn, C, size, size)) * np.sqrt(2.0 / (C * size * size))
        b = rng.standard_normal(fn) * 0.1
        oh, ow = H + 2 * pad - size + 1, W + 2 * pad - size + 1
        dout = rng.standard_normal((N, fn, oh, ow))
        dt = np.dtype(dtype)
        if impl == "torch":
            torch = request.getfixturevalue("torch_module")
            dev = "cuda" if device == "gpu" else "cpu"

            def to(a):
                return torch.from_numpy(a.astype(dt)).to(dev)

            self.x, self.w, self.b, self.dout = to(x), to(w), to(b), to(dout)
            conv2d = torch.nn.functional.conv2d
            backward = torch.ops.aten.convolution_backward
            self.forward = lambda: conv2d(self.x, self.w, self.b, 1, pad)
            self.backward = lambda: backward(
                self.dout, self.x, self.w, [fn], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                [True, True, True])
            return
        if device == "gpu":
            cp = request.getfixturevalue("cupy_module")
            x, w, b, dout = (cp.asarray(a) for a in (x, w, b, dout))
        x, w, b, dout = (a.astype(dt) for a in (x, w, b, dout))
        layer = (naive_book.Convolution if impl == "book" else Convolution)(w, b, 1, pad)
        layer.forward(x)  # keeps x and col for backward
        self.x, self.dout = x, dout
        self.forward = lambda: layer.forward(self.x)
        self.backward = lambda: layer.backward(self.dout)


@pytest.mark.parametrize("impl,dtype,device", IMPLS)
@pytest.mark.parametrize("name,shape,fn,size,pad", SHAPES)
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_convolution(bench, device_sync, request, direction, name, shape, fn, size, pad, impl,
                     dtype, device):
    sync = device_sync(device, impl)
    case = ConvCase(impl, dtype, device, shape, fn, size, pad, request)
    flops = conv_flops(shape, fn, size, pad) * (1 if direction == "forward" else 2)
    group = (f"conv {direction}: {name} x{shape} W({fn},{shape[1]},{size},{size}) pad {pad}")
    bench(getattr(case, direction), sync=sync, group=group, label=label(impl, dtype, device),
          baseline=impl == "book", kind=f"conv-{direction}", impl=impl, dtype=dtype,
          device=device, batch=shape[0], flops=flops,
          blas_threads=bench.cores if impl == "book" else None)


# ---------------------------------------------------------------------------
# Scaling: forward + backward of DeepConvNet's conv2 (16 -> 16 channels, 3x3, pad 1)
# ---------------------------------------------------------------------------

BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
QUICK_BATCHES = {1, 8, 64, 256}
IMAGES = [28, 42, 56, 84, 112]
QUICK_IMAGES = {28, 56, 112}
SCALING_BATCH_IMAGE = 28
SCALING_IMAGE_BATCH = 32
SCALING_IMPLS = [
    pytest.param("xpnet", "cpu", id="xpnet"),
    pytest.param("torch", "cpu", id="torch", marks=pytest.mark.torch),
    pytest.param("xpnet", "gpu", id="xpnet-gpu", marks=pytest.mark.gpu),
]


def _quick_if(values, quick):
    return [pytest.param(v, id=str(v), marks=[pytest.mark.quick] if v in quick else [])
            for v in values]


def _fwd_bwd(case):
    def step():
        case.forward()
        case.backward()

    return step


def _scaling_bench(bench, sync, case, shape, kind, group, impl, device):
    n, image = shape[0], shape[2]
    value = n if kind == "batch" else image
    bench(_fwd_bwd(case), sync=sync, group=group,
          label=f"{label(impl, 'float32', device)} {kind}={value}", kind=f"scaling-{kind}",
          impl=impl, dtype="float32", device=device, batch=n, image=image,
          flops=3 * conv_flops(shape, 16, 3, 1),
          # x, out, dout and dx (16 channels each, float32): the data a call must touch
          activation_bytes=4 * n * 16 * image * image * 4)


@pytest.mark.parametrize("impl,device", SCALING_IMPLS)
@pytest.mark.parametrize("batch", _quick_if(BATCHES, QUICK_BATCHES))
def test_scaling_batch(bench, device_sync, request, batch, impl, device):
    sync = device_sync(device, impl)
    shape = (batch, 16, SCALING_BATCH_IMAGE, SCALING_BATCH_IMAGE)
    case = ConvCase(impl, "float32", device, shape, 16, 3, 1, request)
    group = (f"scaling batch: conv forward+backward 16->16 3x3 pad 1, "
             f"{SCALING_BATCH_IMAGE}x{SCALING_BATCH_IMAGE}, float32")
    _scaling_bench(bench, sync, case, shape, "batch", group, impl, device)


@pytest.mark.parametrize("impl,device", SCALING_IMPLS)
@pytest.mark.parametrize("image", _quick_if(IMAGES, QUICK_IMAGES))
def test_scaling_image(bench, device_sync, request, image, impl, device):
    sync = device_sync(device, impl)
    shape = (SCALING_IMAGE_BATCH, 16, image, image)
    case = ConvCase(impl, "float32", device, shape, 16, 3, 1, request)
    group = (f"scaling image: conv forward+backward 16->16 3x3 pad 1, "
             f"batch {SCALING_IMAGE_BATCH}, float32")
    _scaling_bench(bench, sync, case, shape, "image", group, impl, device)
