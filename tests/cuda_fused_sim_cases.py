"""The fused kernels of ``kernels.cuda_fused`` and the device functions of
``kernels.counter_rng`` under Numba's CUDA simulator, against plain NumPy references.

Not collected by a plain ``pytest`` run: ``tests/test_cuda_fused.py`` runs this file in its
own process with NUMBA_ENABLE_CUDASIM=1 (as ``tests/test_cuda_sim.py`` runs
``cuda_sim_cases.py``). By hand:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda_fused_sim_cases.py

The simulator runs one Python thread per CUDA thread: shapes are tiny, grids are small
(several cases use a few threads so the grid-stride loops run many times).
"""

import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 set before numba.cuda is imported",
                allow_module_level=True)

from numba import config, cuda  # noqa: E402

from xpnet import optimizers  # noqa: E402
from xpnet.functions import softmax_cross_entropy  # noqa: E402
from xpnet.kernels import counter_rng  # noqa: E402
from xpnet.kernels import cuda_fused as fused  # noqa: E402
from xpnet.layers import SoftmaxWithLoss  # noqa: E402

# Dropout's inputs hold inf and NaN on purpose: x * 0 must give NaN as on the CPU.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

# Random123's known-answer vectors for philox4x32-10 (kat_vectors): counter, key -> output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def test_simulator_is_on():
    assert config.ENABLE_CUDASIM


# ---------------------------------------------------------------------------
# counter_rng on the device
# ---------------------------------------------------------------------------


@cuda.jit
def _philox_kernel(inputs, out):
    c0, c1, c2, c3, k0, k1 = (inputs[0], inputs[1], inputs[2], inputs[3], inputs[4],
                              inputs[5])
    w0, w1, w2, w3 = counter_rng.philox4x32_10_device(c0, c1, c2, c3, k0, k1)
    out[0], out[1], out[2], out[3] = w0, w1, w2, w3


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_device_philox_matches_random123_known_answers(counter, key, expected):
    out = np.zeros(4, np.uint64)
    _philox_kernel[1, 1](np.array(counter + key, np.uint64), out)
    assert [hex(int(w)) for w in out] == [hex(w) for w in expected]


@cuda.jit
def _uniform_kernel(step_values, draw, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = counter_rng.uniform_device(step_values[0], step_values[1], draw, i)


@pytest.mark.parametrize("seed, step, draw", [
    (0, 0, 0), (1, 7, 3), (-1, 2**40 + 5, 2**32 - 1), (2**63 - 1, 2**62, 11)])
def test_device_uniform_is_bit_identical_to_the_numpy_twin(seed, step, draw):
    n = 23  # not a multiple of four: the last group is partial
    out = np.full(n, -1.0, np.float32)
    _uniform_kernel[2, 4](np.array([seed, step], np.int64), np.int64(draw), out)
    np.testing.assert_array_equal(out.view(np.uint32),
                                  counter_rng.uniform(seed, step, draw, n).view(np.uint32))


# ---------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------


def _dropout_case(n, dtype, seed=0):
    x = np.random.default_rng(seed).standard_normal(n).astype(dtype)
    x[:3] = [-0.0, np.nan, -np.inf][: min(3, n)] if n else x[:3]
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, ratio, threads, max_blocks", [
    (1, 0.5, 1, 1), (7, 0.3, 2, 1), (37, 0.5, 3, 2), (64, 0.0, 8, 4), (50, 0.9, 64, 8)])
def test_dropout_forward_equals_the_cpu_formula_on_counter_rng(dtype, n, ratio, threads,
                                                               max_blocks):
    x = _dropout_case(n, dtype)
    step_values = np.array([1234, 56], np.int64)
    out = np.full_like(x, 7.0)
    mask = np.zeros(n, np.bool_)
    fused.launch_dropout_forward(x, out, mask, step_values, 2, ratio, threads=threads,
                                 max_blocks=max_blocks)
    expected_mask = counter_rng.uniform(1234, 56, 2, n) > ratio
    np.testing.assert_array_equal(mask, expected_mask)
    expected = x * expected_mask  # the CPU layer's product, bit for bit (-0, NaN included)
    np.testing.assert_array_equal(out.view(np.uint8), expected.view(np.uint8))


def test_dropout_backward_is_dout_times_mask():
    dout = _dropout_case(29, np.float32, seed=1)
    mask = counter_rng.uniform(3, 4, 0, 29) > 0.5
    dx = np.full_like(dout, 7.0)
    fused.launch_dropout_backward(dout, mask, dx, threads=4, max_blocks=2)
    np.testing.assert_array_equal(dx.view(np.uint32), (dout * mask).view(np.uint32))


def test_dropout_replay_reads_the_step_updated_in_place():
    # a CUDA graph replays the launch with the same arguments: the step must come from
    # the device array, so updating it in place between launches moves the mask on
    x = np.ones(40, np.float32)
    step_values = np.array([99, 0], np.int64)
    out, mask = np.empty_like(x), np.empty(40, np.bool_)
    masks = []
    for step in (5, 6, 5):
        step_values[1] = step
        fused.launch_dropout_forward(x, out, mask, step_values, 1, 0.5, threads=8)
        np.testing.assert_array_equal(mask, counter_rng.uniform(99, step, 1, 40) > 0.5)
        masks.append(mask.copy())
    assert not np.array_equal(masks[0], masks[1])
    np.testing.assert_array_equal(masks[0], masks[2])


def test_dropout_launch_checks_its_arguments():
    x = np.zeros(8, np.float32)
    good = dict(out=np.zeros(8, np.float32), mask=np.zeros(8, np.bool_),
                step_values=np.zeros(2, np.int64), draw=0, dropout_ratio=0.5)
    with pytest.raises(ValueError, match=r"mask has shape \(7,\); expected \(8,\)"):
        fused.launch_dropout_forward(x, **{**good, "mask": np.zeros(7, np.bool_)})
    with pytest.raises(TypeError, match="step_values must be int64"):
        fused.launch_dropout_forward(x, **{**good, "step_values": np.zeros(2, np.int32)})
    with pytest.raises(ValueError, match="draw must lie in"):
        fused.launch_dropout_forward(x, **{**good, "draw": -1})
    with pytest.raises(ValueError, match=r"dx has shape \(9,\)"):
        fused.launch_dropout_backward(x, good["mask"], np.zeros(9, np.float32))


# ---------------------------------------------------------------------------
# Softmax with loss
# ---------------------------------------------------------------------------


def _softmax_launch(x, t, threads):
    y, dx = np.full_like(x, np.nan), np.full_like(x, np.nan)
    loss = np.full(1, np.nan, x.dtype)
    fused.launch_softmax_cross_entropy(x, t, y, dx, loss, threads=threads)
    return loss, y, dx


def _cpu_layer(x, t):
    layer = SoftmaxWithLoss()
    loss = layer.forward(x, t)
    return loss, layer.y, layer.backward()


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 2e-6), (np.float64, 1e-14)])
@pytest.mark.parametrize("rows, classes, threads, onehot", [
    (1, 3, 1, False), (5, 4, 2, False), (9, 10, 4, True), (17, 3, 8, False), (3, 1, 4, True)])
def test_softmax_cross_entropy_matches_the_cpu_layer(dtype, rtol, rows, classes, threads,
                                                     onehot):
    rng = np.random.default_rng(rows * classes)
    x = (3 * rng.standard_normal((rows, classes))).astype(dtype)
    labels = rng.integers(0, classes, rows)
    t = np.eye(classes, dtype=dtype)[labels] if onehot else labels
    loss, y, dx = _softmax_launch(x, t, threads)
    cpu_loss, cpu_y, cpu_dx = _cpu_layer(x, t)
    np.testing.assert_allclose(y, cpu_y, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(dx, cpu_dx, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(loss[0], cpu_loss, rtol=rtol)
    assert loss.dtype == y.dtype == dx.dtype == np.dtype(dtype)


def test_softmax_cross_entropy_with_soft_targets_matches_the_cpu():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5))
    t = rng.random((6, 5))
    t /= t.sum(axis=1, keepdims=True)
    loss, y, _ = _softmax_launch(x, t, 4)
    np.testing.assert_allclose(loss[0], softmax_cross_entropy(x, t)[0], rtol=1e-14)


def test_softmax_cross_entropy_loss_is_reproducible_bit_for_bit():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((33, 7)).astype(np.float32)
    t = rng.integers(0, 7, 33)
    first = _softmax_launch(x, t, 8)
    again = _softmax_launch(x, t, 8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("bad", [-1, 4, 2**31])
def test_softmax_cross_entropy_refuses_a_bad_label_without_reading_out_of_bounds(bad):
    x = np.zeros((3, 4), np.float32)
    t = np.array([0, bad, 2], np.int64)
    y, dx, loss = np.zeros_like(x), np.zeros_like(x), np.zeros(1, np.float32)
    with pytest.raises(IndexError, match=r"outside \[0, C\)"):
        fused.launch_softmax_cross_entropy(x, t, y, dx, loss, threads=2)
    assert np.isnan(loss[0])
    np.testing.assert_allclose(y, 0.25)  # every row's softmax still written, in bounds
    # the flag was cleared: good labels run again
    fused.launch_softmax_cross_entropy(x, np.array([0, 1, 2]), y, dx, loss, threads=2)
    np.testing.assert_allclose(loss[0], np.log(4), rtol=1e-6)


def test_softmax_launch_checks_its_arguments():
    x = np.zeros((3, 4), np.float32)
    y, loss = np.zeros_like(x), np.zeros(1, np.float32)
    with pytest.raises(ValueError, match="power of two"):
        fused.launch_softmax_cross_entropy(x, np.zeros(3, np.int64), y, y, loss, threads=3)
    with pytest.raises(ValueError, match=r"t has shape \(4,\); expected \(3,\)"):
        fused.launch_softmax_cross_entropy(x, np.zeros(4, np.int64), y, y, loss, threads=2)
    with pytest.raises(ValueError, match=r"dx has shape \(3, 3\)"):
        fused.launch_softmax_cross_entropy(x, np.zeros(3, np.int64), y, y[:, :3], loss)


# ---------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------

SHAPES = [(3, 5), (7,), (1,), (2, 2, 3)]  # several tensors of different sizes


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = {f"p{k}": rng.standard_normal(s).astype(dtype) for k, s in enumerate(SHAPES)}
    grads = [{k: rng.standard_normal(p.shape).astype(dtype) for k, p in params.items()}
             for _ in range(3)]
    return params, grads


def _flat(arrays):
    return tuple(a.reshape(-1) for a in arrays)


def _fused_step(optimizer, params, grads, device_t):
    """One step of ``optimizer``'s fused kernel on flat views of its own state arrays."""
    names = list(params)
    rule = type(optimizer).__name__.lower()
    states = optimizer._state(params)  # the CPU optimizer's slots, used as device arrays
    ps, gs = _flat(params[k] for k in names), _flat(grads[k] for k in names)
    slots = tuple(_flat(s[k] for k in names) for s in states)
    if rule == "adam":
        lr_t = np.zeros(1, ps[0].dtype)
        fused.launch_adam(ps, gs, *slots, device_t, lr_t, optimizer.lr, optimizer.beta1,
                          optimizer.beta2, optimizers.EPS, threads=4, max_blocks=2)
        return
    scalars = optimizer.fused_scalars(ps[0].dtype)
    fused.launch_optimizer_update(rule, ps, gs, slots, scalars, threads=4, max_blocks=2)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-6), (np.float64, 1e-14)])
@pytest.mark.parametrize("name", ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop",
                                  "Adam"])
def test_fused_update_matches_the_cpu_optimizer_over_three_steps(name, dtype, rtol):
    hyper = {"lr": 0.1} if name != "Adam" else {"lr": 0.01, "beta1": 0.8, "beta2": 0.9}
    cpu_opt = optimizers.get_optimizer(name, **hyper)
    fused_opt = optimizers.get_optimizer(name, **hyper)
    cpu_params, grads = _problem(dtype)
    fused_params = {k: v.copy() for k, v in cpu_params.items()}
    device_t = np.zeros(1, np.int64)
    for g in grads:  # the same argument objects every step, as a graph replays them
        cpu_opt.update(cpu_params, g)
        _fused_step(fused_opt, fused_params, g, device_t)
    for k in cpu_params:
        np.testing.assert_allclose(fused_params[k], cpu_params[k], rtol=rtol, atol=rtol)
        assert fused_params[k].dtype == np.dtype(dtype)
    for slot in cpu_opt.slots:
        for k in cpu_params:
            np.testing.assert_allclose(getattr(fused_opt, slot)[k], getattr(cpu_opt, slot)[k],
                                       rtol=rtol, atol=rtol)
    if name == "Adam":
        assert device_t[0] == 3  # advanced on the device by each launch


def test_adam_replay_with_the_same_arguments_advances_the_step():
    # the very same argument objects launched twice, as a CUDA graph replays them
    p = (np.ones(5, np.float32),)
    g = (np.full(5, 0.5, np.float32),)
    m, v = (np.zeros(5, np.float32),), (np.zeros(5, np.float32),)
    t, lr_t = np.array([4], np.int64), np.zeros(1, np.float32)
    args = (p, g, m, v, t, lr_t, 0.001, 0.9, 0.999, 1e-7)
    fused.launch_adam(*args)
    step5 = lr_t[0]
    fused.launch_adam(*args)
    assert t[0] == 6
    for step, got in ((5, step5), (6, lr_t[0])):
        expected = 0.001 * np.sqrt(1 - 0.999**step) / (1 - 0.9**step)
        assert got == np.float32(expected)


def test_optimizer_launch_checks_its_arguments():
    p = (np.zeros(4, np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"grads\[1\] is float32 \(2,\)"):
        fused.launch_optimizer_update("sgd", p, (np.zeros(4, np.float32),
                                                 np.zeros(2, np.float32)), (), (np.float32(1),))
    with pytest.raises(ValueError, match=r"grads\[0\] is float64"):
        fused.launch_optimizer_update("sgd", p, (np.zeros(4), np.zeros(3)), (),
                                      (np.float32(1),))
    with pytest.raises(ValueError, match="takes 1 state tuples"):
        fused.launch_optimizer_update("momentum", p, p, (), (np.float32(1),) * 2)
    with pytest.raises(ValueError, match="flat"):
        fused.launch_optimizer_update("sgd", (np.zeros((2, 2), np.float32),),
                                      (np.zeros((2, 2), np.float32),), (), (np.float32(1),))


# ---------------------------------------------------------------------------
# The library's GPU paths end to end, on a stand-in for CuPy
# ---------------------------------------------------------------------------
#
# Without a GPU, CuPy cannot run here. NumPy arrays of a subclass that xpnet's backend
# takes for CuPy arrays send the layers and optimizers down their GPU branches, and the
# fused kernels' entry points launch the very kernels under the simulator, so the glue -
# shapes, key order, state, Adam's device step count, checkpoints - is checked too.


class FakeDeviceArray(np.ndarray):
    """A NumPy array standing in for a CuPy one."""

    @property
    def device(self):
        return _FAKE_DEVICE


class _FakeDevice:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_FAKE_DEVICE = _FakeDevice()


def _on_fake_device(a):
    return np.asarray(a).view(FakeDeviceArray)


def _fake_cupy():
    """The few names of ``cupy`` that the GPU paths under test call."""
    import types

    def wrap(fn):
        return lambda *args, **kwargs: _on_fake_device(fn(*args, **kwargs))

    names = ("asarray", "ascontiguousarray", "empty", "empty_like", "full", "zeros",
             "zeros_like", "arange")
    module = types.SimpleNamespace(**{name: wrap(getattr(np, name)) for name in names})
    module.__name__ = "cupy"
    module.ndarray = FakeDeviceArray
    module.asnumpy = lambda a: np.array(a)
    for name in ("int64", "float32", "float64", "bool_"):
        setattr(module, name, getattr(np, name))
    return module


@pytest.fixture
def fake_gpu(monkeypatch):
    from xpnet import backend

    cp = _fake_cupy()
    monkeypatch.setattr(backend, "_cupy", cp)
    monkeypatch.setattr(backend, "_gpu_checked", cp)
    monkeypatch.setattr(fused, "_dev", lambda a: np.asarray(a))  # the simulator's device array
    monkeypatch.setattr(fused, "_stream", lambda: 0)
    return cp


def test_fake_gpu_arrays_take_the_gpu_paths(fake_gpu):
    from xpnet import backend

    x = _on_fake_device(np.zeros(3))
    assert backend.is_gpu_array(x) and backend.get_array_module(x) is fake_gpu


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_gpu_dropout_layers_draw_counter_based_masks_in_order(fake_gpu, dtype):
    from xpnet import backend
    from xpnet.layers import Dropout

    x = np.random.default_rng(0).standard_normal((3, 11)).astype(dtype)
    first, second = Dropout(0.3), Dropout(0.6)
    with backend.device_step_scope(_on_fake_device(np.array([8, 2], np.int64))):
        hidden = first.forward(_on_fake_device(x))
        out = second.forward(hidden)
    assert type(out) is FakeDeviceArray and out.dtype == np.dtype(dtype)
    for draw, (layer, ratio) in enumerate(((first, 0.3), (second, 0.6))):
        expected = counter_rng.uniform(8, 2, draw, x.size).reshape(x.shape) > ratio
        np.testing.assert_array_equal(layer.mask, expected, err_msg=f"draw {draw}")
    np.testing.assert_array_equal(hidden, x * first.mask)
    dout = _on_fake_device(np.ones_like(x))
    np.testing.assert_array_equal(second.backward(dout), second.mask.astype(dtype))
    np.testing.assert_array_equal(second.forward(hidden, train_flg=False),
                                  hidden * dtype(0.4))


@pytest.mark.parametrize("targets", ["labels", "column", "onehot", "single"])
def test_gpu_softmax_with_loss_matches_the_cpu_layer(fake_gpu, targets):
    rng = np.random.default_rng(1)
    x = (3 * rng.standard_normal((6, 4))).astype(np.float32)
    labels = rng.integers(0, 4, 6)
    t = {"labels": labels, "column": labels.reshape(-1, 1),
         "onehot": np.eye(4, dtype=np.float32)[labels], "single": labels[0]}[targets]
    if targets == "single":
        x = x[0]
    cpu, dev = SoftmaxWithLoss(), SoftmaxWithLoss()
    cpu_loss = cpu.forward(x, t)
    dev_loss = dev.forward(_on_fake_device(x), _on_fake_device(t))
    assert type(dev_loss) is FakeDeviceArray and dev_loss.shape == ()
    assert dev._dx is not None  # the fused kernel ran
    np.testing.assert_allclose(dev_loss, cpu_loss, rtol=2e-6)
    np.testing.assert_allclose(dev.y, cpu.y, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(dev.backward(), cpu.backward(), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(dev.backward(0.5), cpu.backward(0.5), rtol=2e-6, atol=1e-7)


def _fake_problem(dtype=np.float32):
    params, grads = _problem(dtype)
    return ({k: _on_fake_device(v) for k, v in params.items()},
            [{k: _on_fake_device(v) for k, v in g.items()} for g in grads], params, grads)


@pytest.mark.parametrize("name", ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop",
                                  "Adam"])
def test_gpu_optimizers_match_the_cpu(fake_gpu, name, monkeypatch):
    launched = []
    monkeypatch.setattr(fused, "launch_optimizer_update",
                        _recording(fused.launch_optimizer_update, launched))
    dev_params, dev_grads, params, grads = _fake_problem()
    cpu_opt, dev_opt = optimizers.get_optimizer(name), optimizers.get_optimizer(name)
    for g, dev_g in zip(grads, dev_grads):
        cpu_opt.update(params, g)
        dev_opt.update(dev_params, dev_g)
    assert len(launched) == len(grads)  # one fused launch per step, for all parameters
    for k in params:
        np.testing.assert_allclose(dev_params[k], params[k], rtol=1e-6, atol=1e-7,
                                   err_msg=f"{name} {k}")
    for slot in cpu_opt.slots:
        for k in params:
            np.testing.assert_allclose(getattr(dev_opt, slot)[k], getattr(cpu_opt, slot)[k],
                                       rtol=1e-6, atol=1e-7)


def _recording(fn, calls):
    def record(*args, **kwargs):
        calls.append(args[0])
        return fn(*args, **kwargs)
    return record


def _adam_lr_t(step):
    return np.float32(0.001 * np.sqrt(1 - 0.999**step) / (1 - 0.9**step))


def test_gpu_adam_resumed_from_a_checkpoint_continues_exactly(fake_gpu):
    dev_params, dev_grads, params, grads = _fake_problem()
    cpu_opt, dev_opt = optimizers.Adam(), optimizers.Adam()
    cpu_opt.update(params, grads[0])
    dev_opt.update(dev_params, dev_grads[0])
    assert dev_opt.iter == 1 and dev_opt._device_t[0] == 1
    state = dev_opt.state_dict()  # host arrays and the host step count
    assert state["step"] == 1 and all(type(a) is np.ndarray for a in state["state"]["m"].values())
    resumed = optimizers.Adam()
    resumed.load_state_dict(state, dev_params)
    for g, dev_g in zip(grads[1:], dev_grads[1:]):
        cpu_opt.update(params, g)
        resumed.update(dev_params, dev_g)
    assert resumed.iter == 3 and resumed._device_t[0] == 3
    for k in params:
        np.testing.assert_allclose(dev_params[k], params[k], rtol=1e-6, atol=1e-7)


def test_gpu_adam_puts_a_host_step_count_changed_by_hand_on_the_device(fake_gpu):
    dev_params, dev_grads, _, _ = _fake_problem()
    opt = optimizers.Adam()
    opt.update(dev_params, dev_grads[0])
    opt.update(dev_params, dev_grads[1])
    assert opt._device_t[0] == 2 and opt._device_lr_t[0] == _adam_lr_t(2)
    opt.load_state_dict(dict(opt.state_dict(), step=7))  # loading sets both at once
    assert opt.iter == 7 and opt._device_t[0] == 7
    opt.iter = 4  # a user's assignment reaches the device before the next update
    opt.update(dev_params, dev_grads[2])
    assert opt.iter == 5 and opt._device_t[0] == 5 and opt._device_lr_t[0] == _adam_lr_t(5)


def test_gpu_optimizer_of_mixed_dtypes_takes_the_formulas(fake_gpu, monkeypatch):
    launched = []
    monkeypatch.setattr(fused, "launch_optimizer_update",
                        _recording(fused.launch_optimizer_update, launched))
    params = {"a": _on_fake_device(np.ones(3, np.float32)),
              "b": _on_fake_device(np.ones(2, np.float64))}
    grads = {k: _on_fake_device(np.full(v.shape, 0.5, v.dtype)) for k, v in params.items()}
    optimizers.SGD(lr=0.1).update(params, grads)
    assert launched == []
    np.testing.assert_allclose(params["a"], 0.95)
    np.testing.assert_allclose(params["b"], 0.95)
