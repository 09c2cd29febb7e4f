"""xpnet on a real NVIDIA GPU (CuPy + numba-cuda): every test here is marked ``gpu`` and
skips cleanly when ``xpnet.backend.gpu_available()`` is false.

What is checked: the CUDA kernels against the CPU on random shapes (bit for bit where
the summation order is the same), that they run on CuPy's current stream without a host
synchronisation, every layer, loss, optimizer, initializer and network on CuPy arrays
against the same computation on NumPy, a DeepConvNet training step (forward, backward,
Adam) from the same parameters and batch on CPU and GPU equal to 1e-5 (float32),
``to('gpu')``/``to('cpu')``, ``save_params`` from the GPU, device-mixing errors, the
out-of-memory hint and seeded GPU runs repeating exactly.
"""

from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path

import numpy as np
import pytest

import xpnet
from xpnet import backend, kernels
from xpnet.backend import DeviceError, as_numpy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not backend.gpu_available(),
                       reason=f"no usable GPU: {backend.gpu_unavailable_reason()}"),
]

if backend.gpu_available():
    cp = backend.require_gpu()
    from xpnet.kernels import cuda as gpu_kernels
    from xpnet.kernels import reference as ref


def _rel(a, b):
    """max |a - b| / max |b|: the relative error of a whole tensor."""
    a, b = as_numpy(a).astype(np.float64), as_numpy(b).astype(np.float64)
    scale = np.abs(b).max() if b.size else 0.0
    return float(np.abs(a - b).max() / scale) if scale else float(np.abs(a - b).max())


def _geometry(rng, pool=False):
    while True:
        n, c = int(rng.integers(1, 5)), int(rng.integers(1, 9))
        h, w = int(rng.integers(1, 18)), int(rng.integers(1, 18))
        fh, fw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        stride, pad = int(rng.integers(1, 4)), int(rng.integers(0, 3))
        if pool and pad >= min(fh, fw):
            continue
        if fh <= h + 2 * pad and fw <= w + 2 * pad:
            return (n, c, h, w), fh, fw, stride, pad


# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_kernels_equal_cpu_on_random_shapes(dtype):
    rng = np.random.default_rng(0)
    for _ in range(12):
        shape, fh, fw, stride, pad = _geometry(rng)
        x = rng.standard_normal(shape).astype(dtype)
        col = kernels.im2col(cp.asarray(x), fh, fw, stride, pad)  # dispatch -> kernels.cuda
        assert isinstance(col, cp.ndarray) and col.dtype == dtype
        np.testing.assert_array_equal(col.get(), ref.im2col(x, fh, fw, stride, pad))
        c = rng.standard_normal(col.shape).astype(dtype)
        back = kernels.col2im(cp.asarray(c), shape, fh, fw, stride, pad)
        expected = ref.col2im(c, shape, fh, fw, stride, pad)
        if dtype == np.float16:  # NumPy adds float16 through float32: rare double rounding
            np.testing.assert_allclose(back.get(), expected, rtol=2e-3, atol=2e-3)
        else:  # same summation order as the reference: bit for bit
            np.testing.assert_array_equal(back.get(), expected)
            # the CPU kernels agree too (they may sum in another order)
            np.testing.assert_allclose(back.get(), kernels.col2im(c, shape, fh, fw, stride, pad),
                                       rtol=1e-5, atol=1e-5)

        shape, ph, pw, stride, pad = _geometry(rng, pool=True)
        x = rng.integers(-4, 5, size=shape).astype(dtype)  # ties: the first maximum wins
        out, arg = kernels.maxpool_forward(cp.asarray(x), ph, pw, stride, pad)
        out_ref, arg_ref = ref.maxpool_forward(x, ph, pw, stride, pad)
        assert arg.dtype == np.int32
        np.testing.assert_array_equal(out.get(), out_ref)
        np.testing.assert_array_equal(arg.get(), arg_ref)
        dout = rng.standard_normal(out_ref.shape).astype(dtype)
        dx = kernels.maxpool_backward(cp.asarray(dout), arg, shape, ph, pw, stride, pad)
        expected = ref.maxpool_backward(dout, arg_ref, shape, ph, pw, stride, pad)
        if dtype == np.float16:
            np.testing.assert_allclose(dx.get(), expected, rtol=2e-3, atol=2e-3)
        else:
            np.testing.assert_array_equal(dx.get(), expected)


def test_kernels_accept_non_contiguous_input():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 9, 8)).astype(np.float32)
    xt = cp.asarray(x.transpose(0, 1, 3, 2).copy()).transpose(0, 1, 3, 2)  # a strided view
    assert not xt.flags.c_contiguous
    np.testing.assert_array_equal(gpu_kernels.im2col(xt, 3, 2, 2, 1).get(),
                                  ref.im2col(x, 3, 2, 2, 1))
    out, arg = gpu_kernels.maxpool_forward(xt, 2, 2, 2, 0)
    np.testing.assert_array_equal(out.get(), ref.maxpool_forward(x, 2, 2, 2, 0)[0])


def test_kernels_on_an_empty_batch_return_empty_arrays():
    x = cp.zeros((0, 2, 5, 5), np.float32)
    col = gpu_kernels.im2col(x, 3, 3, 1, 1)
    assert col.shape == (0, 18)
    assert gpu_kernels.col2im(col, x.shape, 3, 3, 1, 1).shape == x.shape
    out, arg = gpu_kernels.maxpool_forward(x, 2, 2, 2, 0)
    assert out.shape == arg.shape == (0, 2, 2, 2)
    assert gpu_kernels.maxpool_backward(out, arg, x.shape, 2, 2, 2, 0).shape == x.shape


def test_col2im_scatter_agrees_with_gather(monkeypatch):
    # the atomic col2im lives with the benchmarks that compare it with the gather
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from gpu_col2im_scatter import col2im_scatter

    rng = np.random.default_rng(2)
    shape, fh, fw, stride, pad = (8, 16, 14, 14), 3, 3, 1, 1
    c = cp.asarray(rng.standard_normal((8 * 14 * 14, 16 * 9)).astype(np.float32))
    gather = gpu_kernels.col2im(c, shape, fh, fw, stride, pad)
    scatter = col2im_scatter(c, shape, fh, fw, stride, pad)
    assert _rel(scatter, gather) < 1e-6


def test_gpu_kernels_reject_host_arrays():
    with pytest.raises(DeviceError, match="on the cpu, but the GPU kernels take CuPy arrays"):
        gpu_kernels.im2col(np.zeros((1, 1, 4, 4), np.float32), 2, 2)


def test_kernels_run_on_current_stream_without_host_sync():
    rng = np.random.default_rng(3)
    x_host = rng.standard_normal((16, 8, 20, 20)).astype(np.float32)
    big = cp.ones((4096, 4096), dtype=cp.float32)
    x0 = cp.asarray(x_host)
    gpu_kernels.im2col(x0, 3, 3, 1, 1)  # compile (and load) the kernels first
    gpu_kernels.maxpool_forward(x0, 2, 2, 2, 0)
    (big @ big).sum()
    cp.cuda.Device().synchronize()

    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        for _ in range(60):  # a queue of GEMMs keeps the stream busy for ~0.1 s or more
            big = big @ big * (1.0 / 4096)
        x = x0 * 2  # ordered after the GEMMs on the same stream
        t0 = time.perf_counter()
        col = gpu_kernels.im2col(x, 3, 3, 1, 1)
        out, _ = gpu_kernels.maxpool_forward(x, 2, 2, 2, 0)
        launch_s = time.perf_counter() - t0
        busy = not stream.done  # the launches returned while the stream was still working
    stream.synchronize()
    np.testing.assert_array_equal(col.get(), ref.im2col(2 * x_host, 3, 3, 1, 1))
    np.testing.assert_array_equal(out.get(), ref.maxpool_forward(2 * x_host, 2, 2, 2, 0)[0])
    assert busy, f"kernels waited for the stream on the host ({launch_s * 1e3:.1f} ms)"


# ---------------------------------------------------------------------------
# layers, functions, initializers, optimizers on CuPy arrays
# ---------------------------------------------------------------------------


def _both(a):
    return a, cp.asarray(a)


def test_functions_on_gpu_equal_cpu():
    from xpnet import functions as F

    rng = np.random.default_rng(4)
    x, gx = _both(rng.standard_normal((6, 5)))
    t, gt = _both(rng.integers(0, 5, size=6))
    onehot, gonehot = _both(np.eye(5)[t])
    for name in ("sigmoid", "sigmoid_grad", "relu", "relu_grad", "softmax", "step_function",
                 "identity_function"):
        fn = getattr(F, name)
        out = fn(gx)
        assert isinstance(out, cp.ndarray), name
        np.testing.assert_allclose(out.get(), fn(x), rtol=1e-12, atol=1e-15, err_msg=name)
    y, gy = F.softmax(x), F.softmax(gx)
    for args, gargs in (((y, t), (gy, gt)), ((y, onehot), (gy, gonehot))):
        assert abs(float(F.cross_entropy_error(*gargs)) - F.cross_entropy_error(*args)) < 1e-12
    assert abs(float(F.sum_squared_error(gy, gonehot)) - F.sum_squared_error(y, onehot)) < 1e-12
    assert abs(float(F.softmax_loss(gx, gt)) - F.softmax_loss(x, t)) < 1e-12


def _layer_pairs(rng):
    from xpnet import layers as L

    W, b = rng.standard_normal((12, 7)), rng.standard_normal(7)
    Wc, bc = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    gamma, beta = rng.random(12) + 0.5, rng.standard_normal(12)
    W1x1 = rng.standard_normal((4, 3, 1, 1))
    g = cp.asarray
    return [
        ("Relu", L.Relu(), L.Relu(), (5, 12)),
        ("Sigmoid", L.Sigmoid(), L.Sigmoid(), (5, 12)),
        ("Affine", L.Affine(W, b), L.Affine(g(W), g(b)), (5, 12)),
        ("Affine4D", L.Affine(W, b), L.Affine(g(W), g(b)), (5, 3, 2, 2)),
        ("BatchNormalization", L.BatchNormalization(gamma, beta),
         L.BatchNormalization(g(gamma), g(beta)), (5, 12)),
        ("Convolution", L.Convolution(Wc, bc, 1, 1), L.Convolution(g(Wc), g(bc), 1, 1),
         (2, 3, 7, 6)),
        ("ConvolutionStride", L.Convolution(Wc, bc, 2, 0), L.Convolution(g(Wc), g(bc), 2, 0),
         (2, 3, 9, 7)),
        ("Pooling", L.Pooling(2, 2, 2), L.Pooling(2, 2, 2), (2, 3, 8, 6)),
        ("PoolingOverlap", L.Pooling(3, 3, 1, 1), L.Pooling(3, 3, 1, 1), (2, 3, 5, 5)),
        # the representative CNNs' layers (book 8.2)
        ("Pointwise", L.Convolution(W1x1, bc, 2, 0), L.Convolution(g(W1x1), g(bc), 2, 0),
         (2, 3, 7, 6)),
        ("SpatialBatchNormalization", L.SpatialBatchNormalization(gamma[:3], beta[:3]),
         L.SpatialBatchNormalization(g(gamma[:3]), g(beta[:3])), (4, 3, 5, 6)),
        ("AvgPooling", L.AvgPooling(2, 2, 2), L.AvgPooling(2, 2, 2), (2, 3, 8, 7)),
        ("AvgPoolingPadded", L.AvgPooling(3, 3, 1, 1), L.AvgPooling(3, 3, 1, 1), (2, 3, 5, 5)),
        ("GlobalAvgPooling", L.GlobalAvgPooling(), L.GlobalAvgPooling(), (2, 3, 5, 4)),
    ]


def test_layers_on_gpu_equal_cpu():
    rng = np.random.default_rng(5)
    for name, cpu_layer, gpu_layer, shape in _layer_pairs(rng):
        x = rng.standard_normal(shape)
        out = cpu_layer.forward(x)
        gout = gpu_layer.forward(cp.asarray(x))
        assert isinstance(gout, cp.ndarray) and gout.dtype == np.float64, name
        assert _rel(gout, out) < 1e-12, name
        dout = rng.standard_normal(out.shape)
        dx = cpu_layer.backward(dout)
        gdx = gpu_layer.backward(cp.asarray(dout))
        assert isinstance(gdx, cp.ndarray) and _rel(gdx, dx) < 1e-12, name
        for attr in ("dW", "db", "dgamma", "dbeta"):
            if getattr(cpu_layer, attr, None) is not None:
                grad = getattr(gpu_layer, attr)
                assert isinstance(grad, cp.ndarray), f"{name}.{attr}"
                assert _rel(grad, getattr(cpu_layer, attr)) < 1e-12, f"{name}.{attr}"


def test_float32_layers_stay_float32_on_gpu():
    rng = np.random.default_rng(6)
    for name, _, gpu_layer, shape in _layer_pairs(rng):
        for attr in ("W", "b", "gamma", "beta"):
            if getattr(gpu_layer, attr, None) is not None:
                setattr(gpu_layer, attr, getattr(gpu_layer, attr).astype(np.float32))
        x = cp.asarray(rng.standard_normal(shape), dtype=np.float32)
        out = gpu_layer.forward(x)
        assert out.dtype == np.float32, name
        assert gpu_layer.backward(cp.ones_like(out)).dtype == np.float32, name


def test_mul_add_softmax_with_loss_and_dropout_on_gpu():
    from xpnet import layers as L

    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    mul = L.MulLayer()
    assert _rel(mul.forward(cp.asarray(a), cp.asarray(b)), a * b) < 1e-15
    da, db = mul.backward(cp.ones((3, 4)))
    assert _rel(da, b) < 1e-15 and _rel(db, a) < 1e-15
    add = L.AddLayer()
    assert _rel(add.forward(cp.asarray(a), cp.asarray(b)), a + b) < 1e-15

    x, t = rng.standard_normal((6, 5)), rng.integers(0, 5, size=6)
    cpu, gpu = L.SoftmaxWithLoss(), L.SoftmaxWithLoss()
    loss, gloss = cpu.forward(x, t), gpu.forward(cp.asarray(x), cp.asarray(t))
    assert isinstance(gloss, cp.ndarray) and abs(float(gloss) - float(loss)) < 1e-12
    assert _rel(gpu.backward(), cpu.backward()) < 1e-12

    drop = L.Dropout(0.3)
    x = cp.asarray(rng.standard_normal((200, 50)), dtype=np.float32)
    y = drop.forward(x, train_flg=True)
    mask = drop.mask
    assert isinstance(mask, cp.ndarray)  # drawn on the device
    assert cp.array_equal(y, x * mask)
    assert abs(float(mask.mean()) - 0.7) < 0.03
    assert cp.array_equal(drop.backward(cp.ones_like(x)), mask.astype(np.float32))
    assert drop.forward(x, train_flg=False).dtype == np.float32


def test_initializers_draw_on_the_device():
    from xpnet import initializers

    xpnet.seed(11)
    w = initializers.he_normal((400, 300), dtype=np.float32, xp=cp)
    assert isinstance(w, cp.ndarray) and w.dtype == np.float32
    assert abs(float(w.std()) - np.sqrt(2 / 400)) < 0.05 * np.sqrt(2 / 400)
    xpnet.seed(11)
    assert cp.array_equal(initializers.he_normal((400, 300), dtype=np.float32, xp=cp), w)


@pytest.mark.parametrize("name", ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam"])
def test_optimizers_on_gpu_equal_cpu(name):
    from xpnet import optimizers

    rng = np.random.default_rng(8)
    params = {"W1": rng.standard_normal((5, 4)).astype(np.float32),
              "b1": rng.standard_normal(4).astype(np.float32)}
    gparams = {k: cp.asarray(v) for k, v in params.items()}
    cpu_opt, gpu_opt = getattr(optimizers, name)(), getattr(optimizers, name)()
    for _ in range(3):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
        cpu_opt.update(params, grads)
        gpu_opt.update(gparams, {k: cp.asarray(v) for k, v in grads.items()})
    for k in params:
        assert isinstance(gparams[k], cp.ndarray) and gparams[k].dtype == np.float32
        assert _rel(gparams[k], params[k]) < 1e-6, k
    state = gpu_opt.state_dict()
    for slot in state["state"].values():  # checkpoints hold host arrays
        assert all(isinstance(a, np.ndarray) for a in slot.values())
    fresh = getattr(optimizers, name)()
    fresh.load_state_dict(state, gparams)
    for slot in fresh.slots:
        assert all(isinstance(a, cp.ndarray) for a in getattr(fresh, slot).values())


# ---------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------


def _networks():
    from xpnet import models as M

    small_conv = {"filter_num": 4, "filter_size": 3, "pad": 0, "stride": 1}
    return [
        ("TwoLayerNet", lambda: M.TwoLayerNet(20, 8, 3, dtype=np.float64), (20,)),
        ("MultiLayerNet", lambda: M.MultiLayerNet(20, [8, 6], 3, weight_decay_lambda=0.1,
                                                  dtype=np.float64), (20,)),
        ("MultiLayerNetExtend", lambda: M.MultiLayerNetExtend(20, [8, 6], 3,
                                                              use_batchnorm=True,
                                                              dtype=np.float64), (20,)),
        ("SimpleConvNet", lambda: M.SimpleConvNet((1, 10, 10), small_conv, 8, 3,
                                                  dtype=np.float64), (1, 10, 10)),
        ("DeepConvNet", lambda: M.DeepConvNet(dtype=np.float64), (1, 28, 28)),
        # the representative CNNs at full size: residual and Inception blocks, per-channel
        # BatchNorm, average pooling. In float64 rounding is far from every ReLU and
        # pooling kink, so their gradients can be held to 1e-9 (xpnet.parity explains why
        # float32 cannot be, for ResNet-20)
        ("LeNet", lambda: M.LeNet(dtype=np.float64), (1, 28, 28)),
        ("VGGNet", lambda: M.VGGNet(dtype=np.float64), (1, 28, 28)),
        ("MiniGoogLeNet", lambda: M.MiniGoogLeNet(dtype=np.float64), (1, 28, 28)),
        ("ResNet", lambda: M.ResNet(dtype=np.float64), (1, 28, 28)),
    ]


@pytest.fixture
def same_masks():
    """``same_masks(net, gnet)``: for the rest of the test, the Dropout layers of both
    networks draw the same uniforms (from one host stream each)."""
    from xpnet.parity import same_dropout_masks

    with contextlib.ExitStack() as stack:
        yield lambda *networks: stack.enter_context(same_dropout_masks(*networks))


@pytest.mark.parametrize("name,build,shape", _networks(), ids=[n[0] for n in _networks()])
def test_networks_on_gpu_equal_cpu(name, build, shape, same_masks):
    rng = np.random.default_rng(9)
    net = build()
    gnet = copy.deepcopy(net).to("gpu")
    same_masks(net, gnet)
    assert gnet.device == "gpu" and all(isinstance(p, cp.ndarray) for p in gnet.params.values())
    classes = net.params[f"b{len([k for k in net.params if k.startswith('W')])}"].shape[0]
    x = rng.standard_normal((4, *shape))
    t = rng.integers(0, classes, size=4)
    gx, gt = cp.asarray(x), cp.asarray(t)

    assert _rel(gnet.predict(gx), net.predict(x)) < 1e-10
    assert abs(float(gnet.loss(gx, gt)) - float(net.loss(x, t))) < 1e-10
    grads, ggrads = net.gradient(x, t), gnet.gradient(gx, gt)
    assert isinstance(gnet.last_loss, cp.ndarray) and gnet.last_loss.ndim == 0
    # a bias before BatchNormalization has a zero gradient, computed as rounding noise:
    # compare every tensor against the scale of the network's largest gradient too
    scale = max(float(np.abs(g).max()) for g in grads.values())
    for key in net.params:
        assert isinstance(ggrads[key], cp.ndarray), key
        diff = float(np.abs(as_numpy(ggrads[key]) - grads[key]).max())
        assert _rel(ggrads[key], grads[key]) < 1e-9 or diff < 1e-12 * scale, key
    # accuracy scores a host test set batch by batch on the device
    assert gnet.accuracy(x, t, batch_size=3) == net.accuracy(x, t, batch_size=3)


def test_gradient_check_on_gpu():
    """Backpropagation against central differences, both computed on the device (float64)."""
    from xpnet.gradient import relative_error
    from xpnet.models import MultiLayerNetExtend, SimpleConvNet

    rng = np.random.default_rng(15)
    conv = {"filter_num": 2, "filter_size": 3, "pad": 1, "stride": 1}
    for net, shape in ((MultiLayerNetExtend(6, [5, 4], 3, use_batchnorm=True, dtype=np.float64,
                                            device="gpu"), (6,)),
                       (SimpleConvNet((1, 6, 6), conv, 4, 3, weight_init_std=0.3,
                                      dtype=np.float64, device="gpu"),
                        (1, 6, 6))):
        x = cp.asarray(rng.standard_normal((3, *shape)))
        t = cp.asarray(rng.integers(0, 3, size=3))
        numeric = net.numerical_gradient(x, t)
        analytic = net.gradient(x, t)
        for key in net.params:
            assert isinstance(numeric[key], cp.ndarray), key
            # (a bias before BatchNormalization has a zero gradient: only noise to compare)
            tiny = float(abs(numeric[key] - analytic[key]).max()) < 1e-9
            assert tiny or relative_error(numeric[key], analytic[key]) < 1e-6, key


def test_deepconvnet_training_step_parity_float32():
    """One DeepConvNet step (forward, backward, SGD and Adam) from the same parameters, batch
    and Dropout masks: CPU == GPU to 1e-5 (float32), as ``xpnet.parity`` defines it."""
    from xpnet.models import DeepConvNet
    from xpnet.parity import step_parity

    xpnet.seed(0)
    net = DeepConvNet(dtype=np.float32)
    rng = np.random.default_rng(10)
    x = rng.random((100, 1, 28, 28), dtype=np.float32)
    t = rng.integers(0, 10, size=100)
    report = step_parity(net, x, t)
    assert report["grad_max_rel"] < 1e-5, report["grad"]
    assert report["sgd_max_rel"] < 1e-5, report["sgd"]
    assert report["passed"], report


def test_training_step_makes_no_host_round_trip():
    """A DeepConvNet step (forward, backward, Adam) only queues work: nothing in it waits for
    the GPU, so the host can run ahead (the trainer reads losses back in batches)."""
    from xpnet.models import DeepConvNet
    from xpnet.optimizers import Adam

    net = DeepConvNet(device="gpu")
    opt = Adam()
    x = cp.asarray(np.random.default_rng(13).random((100, 1, 28, 28), dtype=np.float32))
    t = cp.asarray(np.random.default_rng(14).integers(0, 10, size=100))
    opt.update(net.params, net.gradient(x, t))  # compile kernels, warm the memory pool
    big = cp.ones((4096, 4096), dtype=cp.float32)
    (big @ big).sum()
    cp.cuda.Device().synchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        for _ in range(100):  # keep the stream busy well beyond the step's launches
            big = big @ big * (1.0 / 4096)
        opt.update(net.params, net.gradient(x, t))
        busy = not stream.done
    stream.synchronize()
    assert busy, "something in the training step waited for the GPU (a host round-trip)"
    assert bool(cp.isfinite(net.last_loss))


def test_float16_inference_on_gpu():
    from xpnet.models import DeepConvNet

    xpnet.seed(1)
    net = DeepConvNet(dtype=np.float32)
    x = np.random.default_rng(12).random((50, 1, 28, 28), dtype=np.float32)
    y32 = net.predict(x)
    half = DeepConvNet(dtype=np.float16, device="gpu")
    for k, v in net.params.items():
        half.params[k][...] = cp.asarray(v.astype(np.float16))
    y16 = half.predict(cp.asarray(x))
    assert y16.dtype == np.float16
    agree = float((y16.argmax(axis=1).get() == y32.argmax(axis=1)).mean())
    assert agree >= 0.9


def test_to_gpu_and_back_keeps_values_and_layer_bindings():
    from xpnet.models import SimpleConvNet

    net = SimpleConvNet(dtype=np.float32)
    before = {k: v.copy() for k, v in net.params.items()}
    assert net.to("gpu") is net
    assert all(isinstance(v, cp.ndarray) for v in net.params.values())
    assert net.layers["Conv1"].W is net.params["W1"]  # layers see the moved arrays
    assert net.layers["Affine2"].b is net.params["b3"]
    net.params["b3"] += 1  # in place on the device: the layer sees it
    assert float(net.layers["Affine2"].b.sum()) == pytest.approx(float(before["b3"].sum()) + 10)
    net.params["b3"] -= 1
    net.to("cpu")
    for k, v in before.items():
        assert isinstance(net.params[k], np.ndarray)
        np.testing.assert_array_equal(net.params[k], v)
    assert net.layers["Conv1"].W is net.params["W1"]


def test_save_params_from_gpu_writes_host_arrays(tmp_path):
    from xpnet.models import SimpleConvNet

    net = SimpleConvNet(dtype=np.float32, device="gpu")
    path = tmp_path / "params.npz"
    net.save_params(path)
    with np.load(path, allow_pickle=False) as archive:
        for k, v in net.params.items():
            assert isinstance(archive[k], np.ndarray)
            np.testing.assert_array_equal(archive[k], v.get())
    cpu_net = SimpleConvNet(dtype=np.float32)
    cpu_net.load_params(path)  # a machine without a GPU can load it
    for k in net.params:
        np.testing.assert_array_equal(cpu_net.params[k], net.params[k].get())
    gpu_again = SimpleConvNet(dtype=np.float32, device="gpu")
    gpu_again.load_params(path)
    assert all(isinstance(v, cp.ndarray) for v in gpu_again.params.values())


def test_mixing_devices_is_a_clear_error():
    from xpnet.layers import Affine
    from xpnet.models import TwoLayerNet

    net = TwoLayerNet(4, 3, 2, device="gpu")
    with pytest.raises(DeviceError, match=r"'gpu'.*'cpu'|'cpu'.*'gpu'"):
        net.predict(np.zeros((2, 4), np.float32))
    with pytest.raises(DeviceError, match="cpu and gpu"):
        backend.get_array_module(np.zeros(2), cp.zeros(2))
    layer = Affine(cp.zeros((4, 3)), cp.zeros(3))
    with pytest.raises(DeviceError):
        layer.forward(np.zeros((2, 4)))


def test_out_of_memory_suggests_a_smaller_batch():
    with pytest.raises(backend.GPUOutOfMemoryError, match="try a smaller batch size"):
        with backend.gpu_memory_hint(batch_size=100):
            cp.empty(1 << 60, dtype=cp.uint8)


def test_gpu_random_state_round_trip():
    xpnet.seed(4)
    state = backend.get_rng_state(cp)
    a = backend.get_rng(cp).random(8)
    xpnet.seed(77)
    backend.set_rng_state(state, cp)
    assert cp.array_equal(backend.get_rng(cp).random(8), a)


def _train_once(seed):
    from xpnet.models import DeepConvNet
    from xpnet.trainer import Trainer

    xpnet.seed(seed)
    rng = np.random.default_rng(0)
    x = rng.random((300, 1, 28, 28), dtype=np.float32)
    t = rng.integers(0, 10, size=300)
    net = DeepConvNet()
    trainer = Trainer(net, x, t, x[:100], t[:100], epochs=1, mini_batch_size=50,
                      optimizer="Adam", optimizer_param={"lr": 0.001}, verbose=False,
                      seed=seed, device="gpu", progress=False)
    trainer.train()
    return trainer.train_loss_list, {k: v.get() for k, v in net.params.items()}, net


def test_seeded_gpu_training_repeats_exactly():
    losses1, params1, net = _train_once(3)
    assert net.device == "gpu" and all(isinstance(v, cp.ndarray) for v in net.params.values())
    assert len(losses1) == 6 and all(np.isfinite(losses1))
    losses2, params2, _ = _train_once(3)
    assert losses1 == losses2  # deterministic kernels (gather, no atomics) and seeded draws
    for k in params1:
        np.testing.assert_array_equal(params1[k], params2[k])
    losses3, _, _ = _train_once(4)
    assert losses3 != losses1
