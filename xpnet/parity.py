"""Does the GPU compute what the CPU computes? One training step of a network, compared.

    >>> report = step_parity(DeepConvNet(dtype=np.float32), x_batch, t_batch)
    >>> report["passed"], report["grad_max_rel"], report["adam_gpu_vs_float64"]

The network (float32, on the CPU) is copied to the device and, as the reference, to a
float64 network on the CPU. All three compute the gradient of the same batch (x: (N, ...),
t: (N,)) with the same Dropout masks (:func:`same_dropout_masks`); then each takes one SGD
step and, from the same start, one Adam step. Every error is per parameter tensor, relative
to its largest entry: ``max|a - b| / max|b|``.

What "equal" means in float32, and why:

* gradients and the SGD step: device and CPU agree to ``tol``; they may differ only by the
  order of float32 summations.
* the Adam step: its first update is ``lr * g / (|g| + eps)``, which for a gradient entry
  near ``eps`` (a bias whose contributions nearly cancel) turns the float32 rounding of ``g``
  into a visible change of the update, so the CPU's own float32 step can be further than
  ``tol`` from the float64 one. The device is held to ``tol`` or, where the CPU's step is
  itself further than that from float64, to being no further from float64 than twice the
  CPU's distance.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np

from xpnet import backend


@contextlib.contextmanager
def same_dropout_masks(*networks, seed: int = 1234):
    """Within the block, the Dropout layers of each network draw their masks from a fresh host
    generator seeded ``seed``, one per network, so networks that run the same layers in the
    same order get the same masks whatever their device and dtype (the uniforms are drawn in
    float32 on the host, then moved). On exit each layer has its own generator back."""
    from xpnet.layers import Dropout

    if not networks:
        raise TypeError("same_dropout_masks takes the networks whose Dropout layers are to "
                        "draw the same masks, e.g. same_dropout_masks(cpu_net, gpu_net)")
    dropouts = [[layer for layer in net._all_layers() if isinstance(layer, Dropout)]
                for net in networks]
    saved = [(layer, layer.rng) for layers in dropouts for layer in layers]
    for layers in dropouts:
        host = np.random.default_rng(seed)
        for layer in layers:
            layer.rng = host
    try:
        yield
    finally:
        for layer, rng in saved:
            layer.rng = rng


def _max_rel(a, b) -> float:
    a = backend.as_numpy(a).astype(np.float64)
    b = backend.as_numpy(b).astype(np.float64)
    scale = float(np.abs(b).max()) if b.size else 0.0
    diff = float(np.abs(a - b).max()) if b.size else 0.0
    return diff / scale if scale else diff


def _gradient(network, x, t, seed):
    with same_dropout_masks(network, seed=seed):  # a fresh stream each time: identical masks
        grads = network.gradient(x, t)
    return grads, float(network.last_loss)


def _stepped(params, grads, optimizer):
    params = {k: v.copy() for k, v in params.items()}
    optimizer.update(params, grads)
    return params


def step_parity(network, x, t, *, device: str = "gpu", tol: float = 1e-5,
                sgd_lr: float = 0.01, adam_lr: float = 0.001, seed: int = 1234) -> dict:
    """Compare one step of ``network`` (float32, on the CPU) on the CPU and on ``device``.

    x: (N, ...) host batch, t: (N,) host labels. Returns per-tensor errors
    (``grad``, ``sgd``, ``adam``: device vs CPU; ``adam_gpu_vs_float64`` and
    ``adam_cpu_vs_float64``), their maxima, the three losses and ``passed``.
    ``device="cpu"`` compares the CPU with itself (a check of the comparison).
    """
    from xpnet.optimizers import SGD, Adam

    if network.device != "cpu" or any(p.dtype != np.float32 for p in network.params.values()):
        raise ValueError("step_parity takes a float32 network on the CPU; it makes the copies")
    gpu_net = copy.deepcopy(network).to(device)
    ref_net = copy.deepcopy(network)  # every float array (params and layers) in float64
    ref_net._map_arrays(lambda a: a.astype(np.float64) if a.dtype.kind == "f" else a)
    ref_net.dtype = np.dtype(np.float64)

    grads, loss_cpu = _gradient(network, x, t, seed)
    ggrads, loss_gpu = _gradient(gpu_net, backend.to_device(x, device),
                                 backend.to_device(t, device), seed)
    rgrads, loss_ref = _gradient(ref_net, x.astype(np.float64), t, seed)

    keys = list(network.params)
    cpu_p, gpu_p, ref_p = network.params, gpu_net.params, ref_net.params
    sgd = [_stepped(p, g, SGD(lr=sgd_lr)) for p, g in ((cpu_p, grads), (gpu_p, ggrads))]
    adam = [_stepped(p, g, Adam(lr=adam_lr))
            for p, g in ((cpu_p, grads), (gpu_p, ggrads), (ref_p, rgrads))]
    report = {
        "grad": {k: _max_rel(ggrads[k], grads[k]) for k in keys},
        "sgd": {k: _max_rel(sgd[1][k], sgd[0][k]) for k in keys},
        "adam": {k: _max_rel(adam[1][k], adam[0][k]) for k in keys},
        "adam_gpu_vs_float64": {k: _max_rel(adam[1][k], adam[2][k]) for k in keys},
        "adam_cpu_vs_float64": {k: _max_rel(adam[0][k], adam[2][k]) for k in keys},
        "loss_cpu": loss_cpu, "loss_gpu": loss_gpu, "loss_float64": loss_ref, "tolerance": tol,
    }
    for part in ("grad", "sgd", "adam", "adam_gpu_vs_float64", "adam_cpu_vs_float64"):
        report[f"{part}_max_rel"] = max(report[part].values())
    adam_ok = all(
        report["adam"][k] < tol
        or report["adam_gpu_vs_float64"][k] <= 2 * report["adam_cpu_vs_float64"][k]
        for k in keys
    )
    report["passed"] = bool(report["grad_max_rel"] < tol and report["sgd_max_rel"] < tol
                            and adam_ok and abs(loss_gpu - loss_cpu) < tol * abs(loss_cpu))
    return report

