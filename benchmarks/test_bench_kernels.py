"""The convolution core on its own: im2col, col2im, max-pool forward and backward.

Each group compares, on the same float32 input:
- ``numpy (book)``: the book's NumPy code (ch. 7.4: im2col/col2im by slicing; pooling as
  im2col + argmax over each window's row), the baseline of the group;
- ``numba``: xpnet's Numba CPU kernels (``kernels.cpu``);
- ``gpu``: xpnet's numba.cuda kernels on CuPy arrays (``kernels.cuda``), device-synchronised.

Every case first checks its result against the book's, so a fast wrong kernel cannot win.
"""

from __future__ import annotations

import numpy as np
import pytest

from xpnet import kernels
from xpnet.kernels import reference

# (name, x shape, filter/pool, stride, pad): the busiest layers of the book's networks
CONV_SHAPES = [
    pytest.param("DeepConvNet conv2", (100, 16, 28, 28), 3, 1, 1, id="deep-conv2",
                 marks=pytest.mark.quick),
    pytest.param("DeepConvNet conv5", (100, 32, 8, 8), 3, 1, 1, id="deep-conv5"),
    pytest.param("SimpleConvNet conv1", (100, 1, 28, 28), 5, 1, 0, id="simple-conv1"),
]
POOL_SHAPES = [
    pytest.param("DeepConvNet pool1", (100, 16, 28, 28), 2, 2, 0, id="deep-pool1",
                 marks=pytest.mark.quick),
    pytest.param("SimpleConvNet pool1", (100, 30, 24, 24), 2, 2, 0, id="simple-pool1"),
]
# --quick keeps the shapes marked quick, with every implementation
IMPLS = [
    pytest.param("numpy (book)", "cpu", id="numpy"),
    pytest.param("numba", "cpu", id="numba"),
    pytest.param("numba.cuda", "gpu", id="gpu", marks=pytest.mark.gpu),
]


def _book_maxpool_forward(x, ph, pw, stride, pad):
    """Book ch. 7.5 Pooling.forward: im2col, one window per row, max and argmax."""
    N, C, H, W = x.shape
    oh, ow = reference.conv_output_size(H, ph, stride, pad), reference.conv_output_size(
        W, pw, stride, pad)
    col = reference.im2col(x, ph, pw, stride, pad).reshape(-1, ph * pw)
    arg_max = np.argmax(col, axis=1)
    out = np.max(col, axis=1).reshape(N, oh, ow, C).transpose(0, 3, 1, 2)
    return out, arg_max


def _book_maxpool_backward(dout, arg_max, x_shape, ph, pw, stride, pad):
    """Book ch. 7.5 Pooling.backward: scatter into (windows, ph*pw), then col2im."""
    dout = dout.transpose(0, 2, 3, 1)
    dmax = np.zeros((dout.size, ph * pw), dtype=dout.dtype)
    dmax[np.arange(arg_max.size), arg_max.ravel()] = dout.ravel()
    dcol = dmax.reshape(dout.shape[0] * dout.shape[1] * dout.shape[2], -1)
    return reference.col2im(dcol, x_shape, ph, pw, stride, pad)


def _on(device, a, request):
    return request.getfixturevalue("cupy_module").asarray(a) if device == "gpu" else a


def _host(a):
    return a.get() if hasattr(a, "get") else a


def _group(op, name, shape, size, stride, pad):
    return f"kernel {op}: {name} x{shape} {size}x{size} stride {stride} pad {pad} float32"


@pytest.mark.parametrize("impl,device", IMPLS)
@pytest.mark.parametrize("name,shape,size,stride,pad", CONV_SHAPES)
def test_im2col(bench, device_sync, request, name, shape, size, stride, pad, impl, device):
    sync = device_sync(device)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    expected = reference.im2col(x, size, size, stride, pad)
    xd = _on(device, x, request)
    fn = reference.im2col if impl == "numpy (book)" else kernels.im2col
    np.testing.assert_array_equal(_host(fn(xd, size, size, stride, pad)), expected)
    bench(lambda: fn(xd, size, size, stride, pad), sync=sync,
          group=_group("im2col", name, shape, size, stride, pad), label=impl,
          baseline=impl == "numpy (book)", kind="kernel", impl=impl, device=device,
          dtype="float32", bytes=int(expected.nbytes))


@pytest.mark.parametrize("impl,device", IMPLS)
@pytest.mark.parametrize("name,shape,size,stride,pad", CONV_SHAPES)
def test_col2im(bench, device_sync, request, name, shape, size, stride, pad, impl, device):
    sync = device_sync(device)
    N, C, H, W = shape
    oh, ow = (reference.conv_output_size(s, size, stride, pad) for s in (H, W))
    col = np.random.default_rng(1).standard_normal((N * oh * ow, C * size * size),
                                                   dtype=np.float32)
    expected = reference.col2im(col, shape, size, size, stride, pad)
    cd = _on(device, col, request)
    fn = reference.col2im if impl == "numpy (book)" else kernels.col2im
    np.testing.assert_allclose(_host(fn(cd, shape, size, size, stride, pad)), expected,
                               rtol=1e-5, atol=1e-5)
    bench(lambda: fn(cd, shape, size, size, stride, pad), sync=sync,
          group=_group("col2im", name, shape, size, stride, pad), label=impl,
          baseline=impl == "numpy (book)", kind="kernel", impl=impl, device=device,
          dtype="float32", bytes=int(col.nbytes))


@pytest.mark.parametrize("impl,device", IMPLS)
@pytest.mark.parametrize("name,shape,size,stride,pad", POOL_SHAPES)
def test_maxpool_forward(bench, device_sync, request, name, shape, size, stride, pad, impl,
                         device):
    sync = device_sync(device)
    x = np.random.default_rng(2).standard_normal(shape, dtype=np.float32)
    expected, _ = _book_maxpool_forward(x, size, size, stride, pad)
    xd = _on(device, x, request)
    if impl == "numpy (book)":
        def fn():
            return _book_maxpool_forward(xd, size, size, stride, pad)
    else:
        def fn():
            return kernels.maxpool_forward(xd, size, size, stride, pad)
    np.testing.assert_array_equal(_host(fn()[0]), expected)
    bench(fn, sync=sync, group=_group("max-pool forward", name, shape, size, stride, pad),
          label=impl, baseline=impl == "numpy (book)", kind="kernel", impl=impl,
          device=device, dtype="float32", bytes=int(x.nbytes))


@pytest.mark.parametrize("impl,device", IMPLS)
@pytest.mark.parametrize("name,shape,size,stride,pad", POOL_SHAPES)
def test_maxpool_backward(bench, device_sync, request, name, shape, size, stride, pad, impl,
                          device):
    sync = device_sync(device)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape, dtype=np.float32)
    out, arg_max = _book_maxpool_forward(x, size, size, stride, pad)
    dout = rng.standard_normal(out.shape, dtype=np.float32)
    expected = _book_maxpool_backward(dout, arg_max, shape, size, size, stride, pad)
    if impl == "numpy (book)":
        def fn():
            return _book_maxpool_backward(dout, arg_max, shape, size, size, stride, pad)
    else:
        xd, dd = _on(device, x, request), _on(device, dout, request)
        _, argmax = kernels.maxpool_forward(xd, size, size, stride, pad)

        def fn():
            return kernels.maxpool_backward(dd, argmax, shape, size, size, stride, pad)
    np.testing.assert_allclose(_host(fn()), expected, rtol=1e-6)
    bench(fn, sync=sync, group=_group("max-pool backward", name, shape, size, stride, pad),
          label=impl, baseline=impl == "numpy (book)", kind="kernel", impl=impl,
          device=device, dtype="float32", bytes=int(x.nbytes))
