"""Whole networks: a training step and inference for TwoLayerNet, SimpleConvNet and
DeepConvNet at batch 100; float64 vs float32 vs float16 inference (book 8.3.4), with the
accuracy of the book's DeepConvNet weights on real digits; the machine's GEMM peak; the
training step of the representative CNNs (LeNet, VGGNet, MiniGoogLeNet, ResNet-20), xpnet
against PyTorch (``benchmarks/torch_cnns.py``; the book has no code for them).

Implementations:
- ``book``: the book's NumPy code, float64 (``benchmarks/naive_book.py``; TwoLayerNet is
  put together from that file's layers), the baseline of each group;
- ``xpnet``: ``xpnet.models`` in float64 / float32 / float16, on the CPU and (CuPy) the GPU;
- ``torch``: the same architectures in PyTorch (``benchmarks/torch_nets.py``), on the CPU
  and CUDA.

A training step is forward, backward and the Adam update (lr 0.001), on a random batch of
100 with labels; inference is ``predict`` (dropout off, no gradients). The book's code and
the GEMM peak run with NumPy's BLAS on every core (plain NumPy's default); xpnet runs with
its own thread settings; PyTorch with as many threads as xpnet's kernels.
"""

from __future__ import annotations

import os

import naive_book
import numpy as np
import pytest

from xpnet import flops, models, optimizers

BATCH = 100
GEMM_N = 2048
GPU_GEMM_N = 8192
INPUT_SHAPES = {"TwoLayerNet": (784,), "SimpleConvNet": (1, 28, 28), "DeepConvNet": (1, 28, 28)}
NAMES = {"book": "book NumPy", "xpnet": "xpnet", "torch": "PyTorch"}


def label(impl, dtype, device):
    return f"{NAMES[impl]} {dtype}" + (" GPU" if device == "gpu" else "")


def _case(model, impl, dtype, device, quick=False):
    marks = []
    if quick:
        marks.append(pytest.mark.quick)
    if device == "gpu":
        marks.append(pytest.mark.gpu)
    if impl == "torch":
        marks.append(pytest.mark.torch)
    cid = f"{model}-{impl}-{dtype}" + ("-gpu" if device == "gpu" else "")
    return pytest.param(model, impl, dtype, device, id=cid, marks=marks)


def _cases(kinds, quick):
    """Every model with every (impl, dtype, device) of ``kinds``; ``quick`` lists the
    (model, impl, dtype, device) tuples the quick run keeps."""
    return [_case(m, *k, quick=(m, *k) in quick) for m in INPUT_SHAPES for k in kinds]


TRAIN_KINDS = [
    ("book", "float64", "cpu"),
    ("xpnet", "float64", "cpu"),
    ("xpnet", "float32", "cpu"),
    ("torch", "float32", "cpu"),
    ("xpnet", "float32", "gpu"),
    ("torch", "float32", "gpu"),
]
INFER_KINDS = [
    ("book", "float64", "cpu"),
    ("xpnet", "float64", "cpu"),
    ("xpnet", "float32", "cpu"),
    ("xpnet", "float16", "cpu"),
    ("torch", "float32", "cpu"),
    ("xpnet", "float32", "gpu"),
    ("xpnet", "float16", "gpu"),
    ("torch", "float32", "gpu"),
    ("torch", "float16", "gpu"),
]
QUICK_TRAIN = {
    ("DeepConvNet", "book", "float64", "cpu"),
    ("DeepConvNet", "xpnet", "float32", "cpu"),
    ("DeepConvNet", "torch", "float32", "cpu"),
    ("DeepConvNet", "xpnet", "float32", "gpu"),
    ("DeepConvNet", "torch", "float32", "gpu"),
}
QUICK_INFER = {
    ("DeepConvNet", "book", "float64", "cpu"),
    ("DeepConvNet", "xpnet", "float64", "cpu"),
    ("DeepConvNet", "xpnet", "float32", "cpu"),
    ("DeepConvNet", "xpnet", "float16", "cpu"),
    ("DeepConvNet", "torch", "float32", "cpu"),
    ("DeepConvNet", "xpnet", "float32", "gpu"),
    ("DeepConvNet", "xpnet", "float16", "gpu"),
}


# ---------------------------------------------------------------------------
# Building a network and a batch on each implementation
# ---------------------------------------------------------------------------


class _BookTwoLayerNet(naive_book._Net):
    """The book's ch. 5 TwoLayerNet (Affine - Relu - Affine) from naive_book's layers."""

    def __init__(self, input_size=784, hidden_size=50, output_size=10, weight_init_std=0.01):
        rng = np.random.default_rng(0)
        self.params = {
            "W1": weight_init_std * rng.standard_normal((input_size, hidden_size)),
            "b1": np.zeros(hidden_size),
            "W2": weight_init_std * rng.standard_normal((hidden_size, output_size)),
            "b2": np.zeros(output_size),
        }
        p = self.params
        a1, a2 = naive_book.Affine(p["W1"], p["b1"]), naive_book.Affine(p["W2"], p["b2"])
        self.layers = [a1, naive_book.Relu(), a2]
        self.param_layers = [a1, a2]
        self.last_layer = naive_book.SoftmaxWithLoss()


def xpnet_model(model, dtype="float32", device="cpu"):
    if model == "TwoLayerNet":
        return models.TwoLayerNet(784, 50, 10, dtype=dtype, device=device)
    return getattr(models, model)(dtype=dtype, device=device)


def _book_model(model):
    if model == "TwoLayerNet":
        return _BookTwoLayerNet()
    return getattr(naive_book, model)()


def _torch_model(torch, model):
    import torch_cnns
    import torch_nets

    if model in torch_cnns.BUILDERS:
        return torch_cnns.BUILDERS[model]()
    if model == "TwoLayerNet":
        net = torch.nn.Sequential(torch.nn.Linear(784, 50), torch.nn.ReLU(),
                                  torch.nn.Linear(50, 10))
        for m in net:
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=0.01)
                torch.nn.init.zeros_(m.bias)
        return net
    return {"SimpleConvNet": torch_nets.simple_convnet, "DeepConvNet": torch_nets.deep_convnet}[
        model]()


def _batch(model, seed=0):
    rng = np.random.default_rng(seed)
    shape = {**INPUT_SHAPES, **CNN_INPUT_SHAPES}[model]
    x = rng.random((BATCH, *shape))  # pixel-like values in [0, 1)
    t = rng.integers(0, 10, BATCH)
    return x, t


class NetCase:
    """``train_step()`` and ``infer()`` of one network on one implementation."""

    def __init__(self, model, impl, dtype, device, request):
        x, t = _batch(model)
        dt = np.dtype(dtype)
        if impl == "torch":
            import torch_nets

            torch = request.getfixturevalue("torch_module")
            dev = "cuda" if device == "gpu" else "cpu"
            net = _torch_model(torch, model).to(device=dev, dtype=getattr(torch, dtype))
            xt = torch.from_numpy(x.astype(dt)).to(dev)
            tt = torch.from_numpy(t).to(dev)
            step = torch_nets.train_step_fn(net)
            self.train_step = lambda: step(xt, tt)
            self.infer = lambda: torch_nets.infer(net, xt)
            return
        if impl == "book":
            np.random.seed(0)  # noqa: NPY002 - the book's code draws from the global generator
            net, opt = _book_model(model), naive_book.Adam()
        else:
            net, opt = xpnet_model(model, dtype, device), optimizers.Adam()
            if device == "gpu":
                cp = request.getfixturevalue("cupy_module")
                x, t = cp.asarray(x), cp.asarray(t)
        x = x.astype(dt)
        self.train_step = lambda: opt.update(net.params, net.gradient(x, t))
        self.infer = lambda: net.predict(x)


def _extra(model, impl, dtype, device, kind):
    net = xpnet_model(model, "float32", "cpu")  # the same architecture on every impl
    count = flops.training_step_flops if kind == "train-step" else flops.forward_flops
    return {"kind": kind, "model": model, "impl": impl, "dtype": dtype, "device": device,
            "batch": BATCH, "flops": count(net, BATCH)}


@pytest.mark.parametrize("model,impl,dtype,device", _cases(TRAIN_KINDS, QUICK_TRAIN))
def test_train_step(bench, device_sync, request, model, impl, dtype, device):
    sync = device_sync(device, impl)
    case = NetCase(model, impl, dtype, device, request)
    bench(case.train_step, sync=sync, group=f"train-step {model} batch={BATCH}",
          label=label(impl, dtype, device), baseline=impl == "book",
          blas_threads=bench.cores if impl == "book" else None,
          **_extra(model, impl, dtype, device, "train-step"))


@pytest.mark.parametrize("model,impl,dtype,device", _cases(INFER_KINDS, QUICK_INFER))
def test_inference(bench, device_sync, request, model, impl, dtype, device):
    sync = device_sync(device, impl)
    case = NetCase(model, impl, dtype, device, request)
    bench(case.infer, sync=sync, group=f"inference {model} batch={BATCH}",
          label=label(impl, dtype, device), baseline=impl == "book",
          blas_threads=bench.cores if impl == "book" else None,
          **_extra(model, impl, dtype, device, "inference"))


# ---------------------------------------------------------------------------
# The representative CNNs (book 7.7, 8.2): xpnet against PyTorch
# ---------------------------------------------------------------------------

CNN_INPUT_SHAPES = {"LeNet": (1, 28, 28), "VGGNet": (1, 28, 28), "MiniGoogLeNet": (1, 28, 28),
                    "ResNet": (1, 28, 28)}  # default sizes: ResNet is ResNet-20
CNN_TRAIN_KINDS = [
    ("xpnet", "float32", "cpu"),
    ("torch", "float32", "cpu"),
    ("xpnet", "float32", "gpu"),
    ("torch", "float32", "gpu"),
]
QUICK_CNN_TRAIN = {("ResNet", "xpnet", "float32", "cpu"), ("ResNet", "torch", "float32", "cpu")}
@pytest.mark.parametrize("model,impl,dtype,device", [
    _case(m, *k, quick=(m, *k) in QUICK_CNN_TRAIN) for m in CNN_INPUT_SHAPES
    for k in CNN_TRAIN_KINDS
])
def test_cnn_train_step(bench, device_sync, request, model, impl, dtype, device):
    """Forward, backward and Adam on a random batch of 100, PyTorch (CPU) the baseline:
    the issue's target is xpnet <= 1.0x PyTorch's step on the CPU (at most 1.5x)."""
    sync = device_sync(device, impl)
    case = NetCase(model, impl, dtype, device, request)
    extra = {"kind": "train-step", "model": model, "impl": impl, "dtype": dtype,
             "device": device, "batch": BATCH,
             "flops": flops.training_step_flops(xpnet_model(model), BATCH)}
    bench(case.train_step, sync=sync, group=f"train-step {model} batch={BATCH}",
          label=label(impl, dtype, device), baseline=(impl, device) == ("torch", "cpu"),
          **extra)


# ---------------------------------------------------------------------------
# float16 vs float32 vs float64 on real digits with the book's trained weights
# ---------------------------------------------------------------------------

ACCURACY_IMAGES = {"quick": 500, "full": 10_000}


@pytest.mark.parametrize("dtype,device", [
    pytest.param("float64", "cpu", id="float64"),
    pytest.param("float32", "cpu", id="float32", marks=pytest.mark.quick),
    pytest.param("float16", "cpu", id="float16", marks=pytest.mark.quick),
    pytest.param("float32", "gpu", id="float32-gpu", marks=[pytest.mark.quick, pytest.mark.gpu]),
    pytest.param("float16", "gpu", id="float16-gpu", marks=[pytest.mark.quick, pytest.mark.gpu]),
])
def test_accuracy_book_weights(bench, device_sync, request, mnist10k, book_weights, dtype,
                               device):
    """One pass of the book's trained DeepConvNet over the first n real MNIST digits
    (``XPNET_BENCH_ACCURACY_IMAGES``; default 500 in the quick run, else all 10,000)."""
    sync = device_sync(device)
    x, t = mnist10k
    mode = bench.mode
    default = len(x) if device == "gpu" else ACCURACY_IMAGES[mode]
    n = min(len(x), int(os.environ.get("XPNET_BENCH_ACCURACY_IMAGES", default)))
    net = xpnet_model("DeepConvNet", dtype, device)
    net.load_params(book_weights("ch08_deep_convnet_params.pkl"))
    result = {}

    def run():
        result["accuracy"] = net.accuracy(x[:n], t[:n], batch_size=BATCH)

    bench(run, sync=sync, rounds=1, warmup=device == "gpu",
          group=f"accuracy DeepConvNet (book weights) on {n} MNIST digits",
          label=label("xpnet", dtype, device), baseline=dtype == "float64", kind="accuracy",
          model="DeepConvNet", impl="xpnet", dtype=dtype, device=device, batch=BATCH, images=n,
          flops=flops.forward_flops(xpnet_model("DeepConvNet"), n))
    bench.benchmark.extra_info["accuracy"] = result["accuracy"]
    assert result["accuracy"] > 0.9  # the book's weights reach 97.58% on these digits


# ---------------------------------------------------------------------------
# The machine's matrix-multiply peak: what a GEMM-bound step could reach at best
# ---------------------------------------------------------------------------


@pytest.mark.quick
@pytest.mark.parametrize("impl,dtype,device", [
    pytest.param("numpy", "float64", "cpu", id="numpy-f64"),
    pytest.param("numpy", "float32", "cpu", id="numpy-f32"),
    pytest.param("torch", "float32", "cpu", id="torch-f32", marks=pytest.mark.torch),
    pytest.param("cupy", "float32", "gpu", id="cupy-f32", marks=pytest.mark.gpu),
    pytest.param("torch", "float32", "gpu", id="torch-cuda-f32",
                 marks=[pytest.mark.torch, pytest.mark.gpu]),
])
def test_gemm_peak(bench, device_sync, request, impl, dtype, device):
    sync = device_sync(device, "torch" if impl == "torch" else "xpnet")
    n = GPU_GEMM_N if device == "gpu" else GEMM_N
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32).astype(dtype) for _ in range(2))
    if impl == "torch":
        torch = request.getfixturevalue("torch_module")
        dev = "cuda" if device == "gpu" else "cpu"
        a, b = torch.from_numpy(a).to(dev), torch.from_numpy(b).to(dev)
        c = torch.empty_like(a)

        def fn():
            torch.mm(a, b, out=c)
    else:
        xp = request.getfixturevalue("cupy_module") if device == "gpu" else np
        a, b = xp.asarray(a), xp.asarray(b)
        c = xp.empty_like(a)

        def fn():
            xp.matmul(a, b, out=c)
    name = {"numpy": "NumPy", "torch": "PyTorch", "cupy": "CuPy"}[impl]
    where = "GPU" if device == "gpu" else "CPU"
    bench(fn, sync=sync, group=f"GEMM peak {where}: ({n}x{n}) @ ({n}x{n})",
          label=f"{name} {dtype}" + (" GPU" if device == "gpu" else ""),
          baseline=dtype == "float64", kind="gemm-peak", impl=impl, dtype=dtype, device=device,
          n=n, flops=2 * n**3, blas_threads=bench.cores if impl == "numpy" else None)
