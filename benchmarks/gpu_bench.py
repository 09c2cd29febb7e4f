"""The GPU benchmark behind ``benchmarks/gpu_check.sh``: kernels, training steps with and
without CUDA graphs beside PyTorch CUDA and beside xpnet on the CPU, and the CPU-vs-GPU
training-step parity.

    python benchmarks/gpu_bench.py OUT_DIR [--samples 60000] [--batch 100] [--parts ...]

Each part writes ``OUT_DIR/<part>.json`` as soon as it finishes (a part that runs out of
time leaves the others' results), then ``OUT_DIR/results.json`` and ``OUT_DIR/results.md``
collect them and the table is printed last. Timings on the GPU use CUDA events and a
device synchronisation around each timed region (CuPy and Numba launch asynchronously).

Parts:
  env      GPU, driver, CuPy / numba-cuda / PyTorch versions, CPU and BLAS.
  kernels  im2col, col2im (gather, and the atomic scatter for comparison), max-pool
           forward/backward at DeepConvNet's shapes (batch 100, float32), beside the
           book's slicing im2col/col2im run on CuPy arrays.
  parity   one DeepConvNet step (forward, backward, Adam) from the same parameters,
           batch and Dropout masks on the CPU and on the GPU; max relative difference.
  graphs   side by side in one run, for DeepConvNet at batch 32, 100 and 1,000 and
           SimpleConvNet at batch 100 (Adam lr 0.001, 60,000 samples on the GPU): the
           Trainer's steps replayed as a CUDA graph, the same steps launched eagerly, and
           PyTorch eager CUDA fp32 -- ms per step over ``--graph-steps`` steps and the
           epoch they make; the GPU's busy time per replay (CUDA events around the graph
           launch) against the wall time per step; launches per step (the graph's kernel
           nodes, each an eager launch, and the Numba launches counted in an eager step,
           against one graph launch); the per-call launch cost from
           ``benchmarks/gpu_launch_cost.py`` where present.
  epoch    one epoch of DeepConvNet (samples / batch steps, Adam lr 0.001, mini-batches
           drawn at random on the device, as the book's trainer) on the GPU.
  torch    the same architecture and schedule in PyTorch on CUDA (skipped without it).
  cpu      xpnet on the CPU for a few steps, extrapolated to the epoch.
  cnns     the representative CNNs (LeNet, VGGNet, MiniGoogLeNet, ResNet-20; book 8.2): one
           float32 step on the GPU against the CPU (``xpnet.parity`` with two noise probes,
           batch 32) and the Trainer's steps at ``--batch`` beside PyTorch eager CUDA fp32,
           at most ``--cnn-steps`` timed steps each.
  train    with ``--data-dir`` (the four Fashion-MNIST IDX files): the README's GPU command,
           ``xpnet train --model DeepConvNet --dataset fashion-mnist --device gpu``, on the
           real data, for as many of 10 epochs as fit the time left (estimated from the
           ``epoch`` part); writes ``OUT_DIR/train/`` (history.json, params.npz) so that the
           parameters trained on the GPU can be checked on a machine without one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import xpnet  # noqa: E402
from xpnet import backend  # noqa: E402
from xpnet.kernels import reference as ref  # noqa: E402 - the book's slicing loops: on CuPy, the baseline

PARTS = ("env", "kernels", "parity", "graphs", "epoch", "torch", "cpu", "cnns", "train")


def _cupy():
    return backend.require_gpu()


# ---------------------------------------------------------------------------
# timing helpers
# ---------------------------------------------------------------------------


def gpu_time(fn, repeat=20, warmup=3):
    """Median milliseconds of ``fn()`` on the GPU, each call bracketed by CUDA events."""
    cp = _cupy()
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    for _ in range(repeat):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def wall_time(fn, repeat=20, warmup=3, sync=None):
    """Median wall milliseconds of ``fn()`` (host launch cost included), synced if asked."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


# ---------------------------------------------------------------------------
# env
# ---------------------------------------------------------------------------


def part_env(args):
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "numpy": np.__version__}
    try:
        import numba

        info["numba"] = numba.__version__
        import numba_cuda

        info["numba_cuda"] = getattr(numba_cuda, "__version__", "?")
    except ImportError as exc:
        info["numba_cuda"] = f"missing ({exc})"
    cp = _cupy()
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"]
    info.update(
        cupy=cp.__version__,
        gpu=name.decode() if isinstance(name, bytes) else str(name),
        gpu_memory_gib=round(props["totalGlobalMem"] / 2**30, 1),
        compute_capability=f"{props['major']}.{props['minor']}",
        cuda_runtime=cp.cuda.runtime.runtimeGetVersion(),
        cuda_driver=cp.cuda.runtime.driverGetVersion(),
    )
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = bool(torch.cuda.is_available())
    except ImportError:
        info["torch"] = "missing"
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for p in threadpool_info() if p.get("user_api") == "blas"
        ]
    except ImportError:
        pass
    return info


# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------

# (name, input shape, filter/pool size, stride, pad): DeepConvNet's layers at batch 100
CONV_SHAPES = [
    ("conv1 1->16 28x28", (100, 1, 28, 28), 3, 1, 1),
    ("conv2 16->16 28x28", (100, 16, 28, 28), 3, 1, 1),
    ("conv4 32->32 14x14 pad2", (100, 32, 14, 14), 3, 1, 2),
    ("conv6 64->64 8x8", (100, 64, 8, 8), 3, 1, 1),
]
POOL_SHAPES = [
    ("pool1 16x28x28", (100, 16, 28, 28), 2, 2, 0),
    ("pool3 64x8x8", (100, 64, 8, 8), 2, 2, 0),
]


def _conv_row(cp, gk, col2im_scatter, rng, name, shape, k, stride, pad):
    x = cp.asarray(rng.standard_normal(shape, dtype=np.float32))
    col = gk.im2col(x, k, k, stride, pad)
    gather = gk.col2im(col, shape, k, k, stride, pad)
    scatter = col2im_scatter(col, shape, k, k, stride, pad)
    return {
        "shape": name, "col_mib": col.nbytes / 2**20,
        "im2col_ms": gpu_time(lambda: gk.im2col(x, k, k, stride, pad)),
        "im2col_wall_ms": wall_time(lambda: gk.im2col(x, k, k, stride, pad),
                                    sync=cp.cuda.Device().synchronize),
        "book_im2col_ms": gpu_time(lambda: ref.im2col(x, k, k, stride, pad)),
        "col2im_gather_ms": gpu_time(lambda: gk.col2im(col, shape, k, k, stride, pad)),
        "col2im_scatter_ms": gpu_time(lambda: col2im_scatter(col, shape, k, k, stride, pad)),
        "book_col2im_ms": gpu_time(lambda: ref.col2im(col, shape, k, k, stride, pad)),
        # the two col2im agree up to the order of summation
        "gather_vs_scatter_max_rel": float(abs(gather - scatter).max() / abs(gather).max()),
    }


def _pool_row(cp, gk, rng, name, shape, k, stride, pad):
    x = cp.asarray(rng.standard_normal(shape, dtype=np.float32))
    out, arg = gk.maxpool_forward(x, k, k, stride, pad)
    dout = cp.ones_like(out)
    return {
        "shape": name,
        "maxpool_forward_ms": gpu_time(lambda: gk.maxpool_forward(x, k, k, stride, pad)),
        "maxpool_backward_ms": gpu_time(
            lambda: gk.maxpool_backward(dout, arg, shape, k, k, stride, pad)),
    }


def part_kernels(args):
    cp = _cupy()
    from gpu_col2im_scatter import col2im_scatter  # beside this script: the atomic col2im

    from xpnet.kernels import cuda as gk

    rng = np.random.default_rng(0)
    rows = [_conv_row(cp, gk, col2im_scatter, rng, *spec) for spec in CONV_SHAPES]
    rows += [_pool_row(cp, gk, rng, *spec) for spec in POOL_SHAPES]
    # the cost of one call from Python (checks, CuPy allocation, Numba dispatch, launch)
    tiny = cp.zeros((1, 1, 4, 4), np.float32)
    launch_us = 1e3 * wall_time(lambda: gk.im2col(tiny, 2, 2), repeat=200, warmup=5)
    return {"rows": rows, "im2col_call_overhead_us": launch_us}


# ---------------------------------------------------------------------------
# networks: data, parity, epochs
# ---------------------------------------------------------------------------


def _data(n, seed=0):
    """MNIST-sized synthetic data: float32 images in [0, 1) and labels 0..9."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    t = rng.integers(0, 10, size=n).astype(np.int64)
    return x, t


def part_parity(args):
    from xpnet.models import DeepConvNet
    from xpnet.parity import step_parity

    xpnet.seed(0)
    x, t = _data(args.batch, seed=1)
    return step_parity(DeepConvNet(dtype=np.float32), x, t)


def _xpnet_steps(device, steps, x, t, batch):
    """Run ``steps`` training steps of DeepConvNet on ``device``; return (seconds, losses)."""
    from xpnet.models import DeepConvNet
    from xpnet.optimizers import Adam

    xpnet.seed(0)
    net = DeepConvNet(dtype=np.float32, device=device)
    xp = net.xp
    xd, td = backend.to_device(x, device), backend.to_device(t, device)
    opt = Adam(lr=0.001)
    rng = backend.get_rng(xp)
    sync = (lambda: _cupy().cuda.Device().synchronize()) if device == "gpu" else (lambda: None)

    def step():
        mask = rng.integers(0, len(x), size=batch)  # drawn on the device, as the trainer
        grads = net.gradient(xd[mask], td[mask])
        opt.update(net.params, grads)
        return net.last_loss

    for _ in range(3):  # compile the kernels, warm the memory pool and BLAS
        step()
    sync()
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        losses.append(step())
    sync()
    seconds = time.perf_counter() - t0
    values = [float(v) for v in losses]  # read back after timing: no per-step sync
    return seconds, values


def part_epoch(args):
    x, t = _data(args.samples)
    steps = max(1, args.samples // args.batch)
    seconds, losses = _xpnet_steps("gpu", steps, x, t, args.batch)
    cp = _cupy()
    pool = cp.get_default_memory_pool()
    return {"steps": steps, "batch": args.batch, "seconds": seconds,
            "ms_per_step": 1e3 * seconds / steps, "first_loss": losses[0],
            "last_loss": losses[-1], "finite": bool(np.all(np.isfinite(losses))),
            "memory_pool_used_mib": pool.used_bytes() / 2**20,
            "memory_pool_total_mib": pool.total_bytes() / 2**20}


def _torch_cuda():
    """``(torch, None)`` with this folder's ``torch_nets`` importable, or ``(None, reason)``
    (a part's result) where PyTorch or its CUDA is missing."""
    try:
        import torch
    except ImportError:
        return None, {"skipped": "PyTorch is not installed"}
    if not torch.cuda.is_available():
        return None, {"skipped": "PyTorch has no CUDA here"}
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return torch, None


def part_torch(args):
    torch, skipped = _torch_cuda()
    if torch is None:
        return skipped
    from torch_nets import deep_convnet, train_step_fn

    results = {}
    x, t = _data(args.samples)
    steps = max(1, args.samples // args.batch)
    dev = torch.device("cuda")
    xd, td = torch.from_numpy(x).to(dev), torch.from_numpy(t).to(dev)
    for label, tf32 in (("fp32", False), ("tf32", True)):
        # fp32: true float32 products, as xpnet's (CuPy does not use TF32 unless told);
        # tf32: PyTorch's default for convolutions on Ampere and newer
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
        torch.manual_seed(0)
        results[label] = _torch_epoch(torch, deep_convnet().to(dev), train_step_fn, xd, td,
                                      args.batch, steps)
    results["torch"] = torch.__version__
    results["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return results


def _torch_epoch(torch, net, train_step_fn, xd, td, batch, steps):
    step = train_step_fn(net)

    def one():
        idx = torch.randint(0, len(xd), (batch,), device=xd.device)
        return step(xd[idx], td[idx])

    for _ in range(5):
        one()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    losses = [one() for _ in range(steps)]
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"steps": steps, "seconds": seconds, "ms_per_step": 1e3 * seconds / steps,
            "last_loss": float(losses[-1])}


def part_cpu(args):
    x, t = _data(min(args.samples, 10_000))
    steps = args.cpu_steps
    seconds, _ = _xpnet_steps("cpu", steps, x, t, args.batch)
    epoch_steps = max(1, args.samples // args.batch)
    return {"steps_timed": steps, "ms_per_step": 1e3 * seconds / steps,
            "epoch_seconds_extrapolated": seconds / steps * epoch_steps,
            "threads": os.cpu_count()}


def _train_step_ms(out: Path):
    """ms per DeepConvNet step at batch 100 as ``xpnet train`` will run it: the graphs part's
    (CUDA graphs, the default), else the epoch part's eager time; None if neither ran."""
    graphs = out / "graphs.json"
    if graphs.exists():
        for row in json.loads(graphs.read_text()).get("rows", []):
            run = row.get("xpnet_graphs", {})
            if (row["model"], row["batch"]) == ("DeepConvNet", 100) and "ms_per_step" in run:
                return run["ms_per_step"]
    epoch = out / "epoch.json"
    return json.loads(epoch.read_text()).get("ms_per_step") if epoch.exists() else None


def part_train(args):
    """The README's GPU training command on real Fashion-MNIST, epochs fitted to the time left."""
    if args.data_dir is None:
        return {"skipped": "no --data-dir given"}
    step_ms = _train_step_ms(args.out)
    if step_ms is None:
        return {"skipped": "neither the graphs nor the epoch part finished, so the epoch "
                "time is unknown"}
    # 600 steps plus evaluating 1,000 train and test samples each epoch and the full test
    # set once; the 1.5 covers start-up, compilation and the evaluation passes
    epoch_s = 1.5 * step_ms * 1e-3 * 60_000 / args.batch
    seconds = args.train_seconds
    if args.time_limit is not None:  # what the earlier parts left of the whole run's limit
        seconds = min(seconds, args.time_limit - (time.perf_counter() - args.started) - 10)
    if seconds < 30:
        return {"skipped": f"only {seconds:.0f} s of the time limit were left for training"}
    epochs = int(max(1, min(10, (seconds - 20) // epoch_s)))
    out = args.out / "train"
    command = [sys.executable, "-m", "xpnet", "train", "--model", "DeepConvNet",
               "--dataset", "fashion-mnist", "--data-dir", str(args.data_dir), "--no-download",
               "--device", "gpu", "--epochs", str(epochs), "--seed", "0",
               "--eval-samples", "1000", "--out", str(out)]
    env = dict(os.environ)  # the child imports xpnet from this checkout too
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env,
                          timeout=seconds)
    seconds = time.perf_counter() - t0
    (args.out / "train.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"xpnet train exited {done.returncode}: {done.stderr[-1500:]}")
    history = json.loads((out / "history.json").read_text())
    return {"command": " ".join(command[2:]), "epochs": epochs, "wall_seconds": seconds,
            "epoch_seconds": history.get("epoch_seconds"),
            "test_acc_list": history.get("test_acc_list"),
            "final_test_acc": history.get("final_test_acc"),
            "cuda_graphs": history.get("cuda_graphs")}


# ---------------------------------------------------------------------------
# graphs: the Trainer's steps replayed, launched eagerly, and PyTorch's, side by side
# ---------------------------------------------------------------------------

# (model, batch): DeepConvNet where the step is launch-bound (32, 100) and GPU-bound (1,000),
# and the smaller SimpleConvNet
GRAPH_CONFIGS = (("DeepConvNet", 32), ("DeepConvNet", 100), ("DeepConvNet", 1000),
                 ("SimpleConvNet", 100))
_WARM_STEPS = 3  # an eager step, the capture (and its first replay), one more replay


def part_graphs(args):
    """Each configuration's three runs; the rows are written to OUT/graphs.json as they
    finish, so a run out of time keeps the configurations done."""
    cp = _cupy()
    x, t = _data(args.samples)
    xd, td = cp.asarray(x), cp.asarray(t)
    result = {"samples": args.samples, "rows": [], "launch_cost": _launch_cost()}
    for model, batch in GRAPH_CONFIGS:
        row = {"model": model, "batch": batch, "epoch_steps": args.samples // batch}
        for label, graphs in (("xpnet_graphs", True), ("xpnet_eager", False)):
            row[label] = _recorded(_trainer_steps, model, batch, graphs, xd, td, args)
        steps = min(args.graph_steps, row["epoch_steps"])
        row["torch_fp32"] = _recorded(_torch_steps, model, batch, x, t, steps)
        result["rows"].append(row)
        (args.out / "graphs.json").write_text(json.dumps(result, indent=2))
        cp.get_default_memory_pool().free_all_blocks()
    return result


def _recorded(run, *args):
    """``run(*args)``, or its error as a result: one failing run must not hide the others."""
    try:
        return run(*args)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def _trainer_steps(model, batch, graphs, xd, td, args):
    """Time the Trainer's own steps (mini-batches drawn on the host and staged, losses read
    back every 50 steps, as ``xpnet train`` runs them): at most an epoch's worth, after the
    warm-up (an epoch's end evaluates on 100 samples only)."""
    from xpnet import models
    from xpnet.trainer import Trainer

    cp = _cupy()
    xpnet.seed(0)
    tr = Trainer(getattr(models, model)(), xd, td, xd[:100], td[:100], epochs=100,
                 mini_batch_size=batch, optimizer="Adam", optimizer_param={"lr": 0.001},
                 evaluate_sample_num_per_epoch=100, verbose=False, seed=0, device="gpu",
                 cuda_graphs=graphs)
    steps = min(args.graph_steps, tr.iter_per_epoch)
    launches = _numba_launches(tr.train_step)  # the first step: eager in both modes
    for _ in range(_WARM_STEPS - 1):
        tr.train_step()
    cp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.train_step()
    tr._read_losses()  # the last group's transfer, a synchronisation
    cp.cuda.Device().synchronize()
    seconds = time.perf_counter() - t0
    ms = 1e3 * seconds / steps
    out = {"steps": steps, "ms_per_step": ms,
           "epoch_seconds": ms * 1e-3 * (len(xd) // batch),
           "numba_launches_eager_step": launches,
           "last_loss": tr.train_loss_list[-1],
           "finite": bool(np.all(np.isfinite(tr.train_loss_list))),
           "cuda_graphs": tr.cuda_graph_status}
    graph = getattr(tr._device_steps, "graph", None)
    if graph is not None:
        out["numba_launches_graph_step"] = _numba_launches(tr.train_step)
        out["graph_nodes"] = _graph_node_counts(graph.graph)
        out["gpu_busy_ms_per_step"] = _busy_ms(tr, graph, min(steps, 50))
    return out


def _numba_launches(fn) -> int:
    """How many Numba kernels ``fn()`` launches from Python (every one goes through
    ``kernels.cuda_launch.launch``, bound by name in each kernel module)."""
    from xpnet.kernels import cuda_launch

    original = cuda_launch.launch
    modules = [m for name, m in list(sys.modules.items())
               if name.startswith("xpnet.kernels") and getattr(m, "launch", None) is original]
    count = 0

    def counting(*args, **kwargs):
        nonlocal count
        count += 1
        return original(*args, **kwargs)

    for m in modules:
        m.launch = counting
    try:
        fn()
    finally:
        for m in modules:
            m.launch = original
    return count


def _busy_ms(tr, graph, steps) -> float:
    """Median GPU time of one replay: CUDA events recorded around each graph launch."""
    cp = _cupy()
    pairs = []
    replay = graph.replay

    def timed():
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        replay()
        stop.record()
        pairs.append((start, stop))

    graph.replay = timed
    try:
        for _ in range(steps):
            tr.train_step()
    finally:
        del graph.replay  # the class's replay again
    cp.cuda.Device().synchronize()
    return float(np.median([cp.cuda.get_elapsed_time(a, b) for a, b in pairs]))


# CUgraphNodeType (CUDA driver API)
_NODE_TYPES = {0: "kernel", 1: "memcpy", 2: "memset", 3: "host", 4: "graph", 5: "empty",
               6: "wait_event", 7: "event_record", 10: "mem_alloc", 11: "mem_free"}


def _graph_node_counts(cupy_graph) -> dict:
    """The captured graph's nodes by type (cuGraphGetNodes, cuGraphNodeGetType): its kernel
    nodes are the launches an eager step makes one by one."""
    import ctypes

    cuda = ctypes.CDLL("libcuda.so.1")
    graph = ctypes.c_void_p(cupy_graph.graph)
    n = ctypes.c_size_t(0)
    if cuda.cuGraphGetNodes(graph, None, ctypes.byref(n)) != 0:
        return {"error": "cuGraphGetNodes failed"}
    nodes = (ctypes.c_void_p * n.value)()
    cuda.cuGraphGetNodes(graph, nodes, ctypes.byref(n))
    counts: dict = {}
    kind = ctypes.c_int(0)
    for node in nodes:
        cuda.cuGraphNodeGetType(ctypes.c_void_p(node), ctypes.byref(kind))
        name = _NODE_TYPES.get(kind.value, f"type{kind.value}")
        counts[name] = counts.get(name, 0) + 1
    return counts


def _torch_steps(model, batch, x, t, steps):
    """PyTorch eager CUDA, true fp32 (no TF32, as xpnet), the same steps and batch size."""
    torch, skipped = _torch_cuda()
    if torch is None:
        return skipped
    import torch_nets

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    dev = torch.device("cuda")
    import torch_cnns

    builders = {"DeepConvNet": torch_nets.deep_convnet,
                "SimpleConvNet": torch_nets.simple_convnet, **torch_cnns.BUILDERS}
    net = builders[model]().to(dev)
    xd, td = torch.from_numpy(x).to(dev), torch.from_numpy(t).to(dev)
    run = _torch_epoch(torch, net, torch_nets.train_step_fn, xd, td, batch, steps)
    run["epoch_seconds"] = run["ms_per_step"] * 1e-3 * (len(x) // batch)
    return run


# ---------------------------------------------------------------------------
# cnns: the representative CNNs, parity and steps beside PyTorch
# ---------------------------------------------------------------------------

CNN_MODELS = ("LeNet", "VGGNet", "MiniGoogLeNet", "ResNet")


def part_cnns(args):
    """Per network, the float32 step parity and the Trainer's steps (CUDA graphs where the
    network's layers allow them, else eager with the reason) beside PyTorch's; rows are
    written to OUT/cnns.json as they finish."""
    cp = _cupy()
    x, t = _data(args.samples)
    xd, td = cp.asarray(x), cp.asarray(t)
    timing = argparse.Namespace(**{**vars(args), "graph_steps": args.cnn_steps})
    result = {"batch": args.batch, "samples": args.samples, "rows": []}
    for model in CNN_MODELS:
        row = {"model": model, "epoch_steps": args.samples // args.batch,
               "parity": _recorded(_cnn_parity, model)}
        row["xpnet"] = _recorded(_trainer_steps, model, args.batch, True, xd, td, timing)
        steps = min(args.cnn_steps, row["epoch_steps"])
        row["torch_fp32"] = _recorded(_torch_steps, model, args.batch, x, t, steps)
        result["rows"].append(row)
        (args.out / "cnns.json").write_text(json.dumps(result, indent=2))
        cp.get_default_memory_pool().free_all_blocks()
    return result


def _cnn_parity(model):
    """``xpnet.parity.step_parity`` of the network at full size, float32, batch 32: the
    maxima only (per-tensor figures stay in the report the function returns)."""
    from xpnet import models
    from xpnet.parity import step_parity

    xpnet.seed(0)
    x, t = _data(32, seed=1)
    report = step_parity(getattr(models, model)(), x, t, noise_probes=2)
    return {k: v for k, v in report.items() if not isinstance(v, dict)}


def _launch_cost():
    """The per-call host cost of one kernel launch, Numba's dispatcher against the fast path
    (``benchmarks/gpu_launch_cost.py``), where this checkout has it."""
    try:
        from gpu_launch_cost import launch_cost_table
    except ImportError as exc:
        return {"skipped": f"benchmarks/gpu_launch_cost.py is not importable ({exc})"}
    return _recorded(launch_cost_table)


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def table(results: dict) -> str:
    """The short table printed last (the same rows as the report's GPU section)."""
    from xpnet.bench.gpu import gpu_table

    return "\n".join(gpu_table(results))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="directory for the results")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--samples", type=int, default=60_000, help="training samples per epoch")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--cpu-steps", type=int, default=20, help="CPU steps timed")
    p.add_argument("--graph-steps", type=int, default=300,
                   help="steps timed per run in the graphs part (fewer where an epoch is "
                   "shorter)")
    p.add_argument("--cnn-steps", type=int, default=100,
                   help="steps timed per run in the cnns part")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="Fashion-MNIST IDX files for the train part (skipped without)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds the whole benchmark may take (the train part fits into "
                   "what the other parts leave)")
    p.add_argument("--train-seconds", type=float, default=150,
                   help="time limit of the train part (its epochs are fitted to it)")
    p.add_argument("--report-only", action="store_true",
                   help="only collect OUT/<part>.json into results.json/.md and print")
    args = p.parse_args(argv)
    args.started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    funcs = {"env": part_env, "kernels": part_kernels, "parity": part_parity,
             "graphs": part_graphs, "epoch": part_epoch, "torch": part_torch, "cpu": part_cpu,
             "cnns": part_cnns, "train": part_train}
    if not args.report_only:
        for part in args.parts:
            t0 = time.perf_counter()
            try:
                result = funcs[part](args)
            except Exception as exc:  # record and go on: one failing part must not hide the rest
                result = {"error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc()}
            result["part_seconds"] = round(time.perf_counter() - t0, 2)
            (args.out / f"{part}.json").write_text(json.dumps(result, indent=2))
            print(f"[gpu_bench] {part}: {result['part_seconds']} s", flush=True)
    results = {}
    for part in (*PARTS, "tests"):  # tests.json: the pytest summaries gpu_check.sh writes
        f = args.out / f"{part}.json"
        if f.exists():
            results[part] = json.loads(f.read_text())
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    text = table(results)
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    failed = [p for p, r in results.items() if "error" in r]
    parity = results.get("parity", {})
    return 1 if failed or parity.get("passed") is False else 0


if __name__ == "__main__":
    sys.exit(main())
