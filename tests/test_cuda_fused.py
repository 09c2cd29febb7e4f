"""The fused GPU kernels (``kernels.cuda_fused``), their counter-based random numbers
(``kernels.counter_rng``) and where the library uses them.

Three kinds of checks:
* on any machine: the NumPy twin of Philox4x32-10 (Random123's known answers, sanity),
  ``backend.device_step_scope`` and the CPU paths it must leave alone;
* under Numba's CUDA simulator, in a process of its own: ``tests/cuda_fused_sim_cases.py``
  (the kernels against NumPy references, bit-equality with the twin, replays);
* on a real GPU (marked ``gpu``, skipped without one): the layers and optimizers on CuPy
  arrays against the CPU, Dropout masks equal to ``counter_rng.uniform``'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_cuda_sim import run_simulator_cases

import xpnet
from xpnet import backend, optimizers
from xpnet.kernels import counter_rng
from xpnet.layers import Dropout, SoftmaxWithLoss

CASES = Path(__file__).resolve().parent / "cuda_fused_sim_cases.py"

# Random123's known-answer vectors for philox4x32-10 (kat_vectors): counter, key -> output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.slow
def test_fused_kernels_match_references_under_cuda_simulator():
    run_simulator_cases(CASES, min_passed=68)


def _fused_kernel_signatures():
    """Each kernel of kernels.cuda_fused with the argument types its launch gives it for
    float32 arrays (C-contiguous views; tuples of three tensors)."""
    from numba import types as nt

    from xpnet.kernels import cuda_fused as fused

    f32, i64 = nt.float32, nt.int64
    vec, mat = nt.Array(f32, 1, "C"), nt.Array(f32, 2, "C")
    tensors = nt.UniTuple(vec, 3)
    return {
        fused._dropout_forward_kernel: (vec, vec, nt.Array(nt.boolean, 1, "C"),
                                        nt.Array(i64, 1, "C"), i64, f32, f32, f32),
        fused._dropout_backward_kernel: (vec, nt.Array(nt.boolean, 1, "C"), vec, f32, f32),
        fused._softmax_xent_labels_kernel: (mat, nt.Array(i64, 1, "C"), mat, mat, vec, f32,
                                            f32, nt.Array(nt.int32, 1, "C")),
        fused._softmax_xent_onehot_kernel: (mat, mat, mat, mat, vec, f32),
        fused._sgd_kernel: (tensors, tensors, f32),
        fused._momentum_kernel: (tensors,) * 3 + (f32,) * 2,
        fused._nesterov_kernel: (tensors,) * 3 + (f32,) * 4,
        fused._adagrad_kernel: (tensors,) * 3 + (f32,) * 2,
        fused._rmsprop_kernel: (tensors,) * 3 + (f32,) * 4,
        fused._adam_step_kernel: (nt.Array(i64, 1, "C"), vec) + (nt.float64,) * 3,
        fused._adam_kernel: (tensors,) * 4 + (vec, f32, f32, f32),
    }


# float64 on purpose: the loss is summed in float64, Adam's bias correction is the host's
FLOAT64_ON_PURPOSE = {"_softmax_xent_labels_kernel", "_softmax_xent_onehot_kernel",
                      "_adam_step_kernel"}


@pytest.mark.slow
def test_fused_kernels_compile_for_a_gpu_without_float64_arithmetic():
    # The simulator runs the kernels as Python and types nothing; compiling them to PTX
    # (NVVM only, no GPU needed) checks what the GPU will compile, and that float32 kernels
    # stay float32 (a stray float64 constant would be slow and change the rounding).
    from numba import cuda
    from numba import types as nt

    try:
        cuda.compile_ptx(lambda a: None, (nt.Array(nt.float32, 1, "C"),), cc=(9, 0))
    except Exception as exc:  # NVVM/NVRTC wheels absent
        pytest.skip(f"cannot compile PTX here: {exc}")
    for kernel, signature in _fused_kernel_signatures().items():
        name = kernel.py_func.__name__
        ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0))
        assert ".entry" in ptx, name
        if name not in FLOAT64_ON_PURPOSE:
            assert ".f64" not in ptx, f"{name} computes in float64"


# ---------------------------------------------------------------------------
# counter_rng: the NumPy twin
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_philox_matches_random123_known_answers(counter, key, expected):
    words = counter_rng.philox4x32_10(counter, key)
    assert [hex(int(w)) for w in words] == [hex(w) for w in expected]


def test_uniform_is_float32_in_the_unit_interval_with_the_right_moments():
    u = counter_rng.uniform(seed=7, step=3, draw=0, n=200_003)
    assert u.dtype == np.float32 and u.shape == (200_003,)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.003  # 1/sqrt(12 n) = 0.00065: about 5 sigma
    assert abs(u.var() - 1 / 12) < 0.002
    # exactly on the 2**-24 grid (24 random bits)
    np.testing.assert_array_equal(u * 2**24, np.floor(u * 2**24))


def test_uniform_is_a_pure_function_of_its_counter():
    a = counter_rng.uniform(1, 2, 3, 10)
    np.testing.assert_array_equal(a, counter_rng.uniform(1, 2, 3, 10))
    # a prefix does not depend on n (the partial group of four included)
    np.testing.assert_array_equal(counter_rng.uniform(1, 2, 3, 7), a[:7])
    # the seed's bits are used as they are: -1 and 2**64 - 1 are one seed
    np.testing.assert_array_equal(counter_rng.uniform(-1, 2, 3, 10),
                                  counter_rng.uniform(2**64 - 1, 2, 3, 10))


@pytest.mark.parametrize("other", [dict(draw=1), dict(step=1), dict(step=2**32),
                                   dict(seed=1), dict(seed=2**32)])
def test_uniform_streams_of_other_draws_steps_and_seeds_are_uncorrelated(other):
    n = 100_000
    base = dict(seed=0, step=0, draw=0)
    a = counter_rng.uniform(n=n, **base)
    b = counter_rng.uniform(n=n, **{**base, **other})
    assert not np.array_equal(a, b)
    # uncorrelated: |r| about 1/sqrt(n) = 0.003
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.02
    # and neighbours within one stream are not correlated either
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 0.02


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=-1), "n must lie in"), (dict(n=2**31), "n must lie in"),
    (dict(draw=-1), "draw must lie in"), (dict(draw=2**32), "draw must lie in")])
def test_uniform_rejects_counters_out_of_range(kwargs, match):
    args = {"seed": 0, "step": 0, "draw": 0, "n": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        counter_rng.uniform(**args)


# ---------------------------------------------------------------------------
# backend.device_step_scope
# ---------------------------------------------------------------------------


def test_device_step_scope_publishes_values_per_thread_and_numbers_the_draws():
    import threading

    values = np.array([5, 9], np.int64)
    assert backend.device_step_values(np) is None
    with backend.device_step_scope(values):
        assert backend.device_step_values(np) is values
        assert [backend.next_device_draw() for _ in range(3)] == [0, 1, 2]
        seen = []
        worker = threading.Thread(target=lambda: seen.append(backend.device_step_values(np)))
        worker.start()
        worker.join()
        assert seen == [None]  # another thread's steps are its own
        with backend.device_step_scope(np.array([5, 10], np.int64)):
            assert backend.next_device_draw() == 0  # each step counts from 0
        assert backend.device_step_values(np) is values
        assert backend.next_device_draw() == 3
    assert backend.device_step_values(np) is None


def test_device_step_values_is_none_for_another_backend():
    class OtherBackend:
        __name__ = "other"

    with backend.device_step_scope(np.zeros(2, np.int64)):
        assert backend.device_step_values(OtherBackend()) is None


@pytest.mark.parametrize("values", [np.zeros(3, np.int64), np.zeros(2, np.int32), [0, 1]])
def test_device_step_scope_rejects_anything_but_int64_seed_and_step(values):
    with pytest.raises(ValueError, match=r"int64 array \[seed, step\] of shape \(2,\)"):
        with backend.device_step_scope(values):
            pass


def test_next_device_draw_outside_a_scope_is_an_error():
    with pytest.raises(RuntimeError, match="outside a device_step_scope"):
        backend.next_device_draw()


def test_cpu_dropout_inside_a_device_step_scope_draws_as_before():
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    xpnet.seed(3)
    expected = Dropout(0.5).forward(x)
    xpnet.seed(3)
    with backend.device_step_scope(np.array([3, 0], np.int64)):
        got = Dropout(0.5).forward(x)
        assert backend.next_device_draw() == 0  # the CPU made no counter-based draw
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------
# On a real GPU
# ---------------------------------------------------------------------------

gpu = pytest.mark.skipif(not backend.gpu_available(),
                         reason=f"no usable GPU: {backend.gpu_unavailable_reason()}")


def _cp():
    return backend.require_gpu()


def _assert_close(got, expected, rtol, what):
    got, expected = backend.as_numpy(got), backend.as_numpy(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    assert got.dtype == expected.dtype, f"{what}: dtype {got.dtype} != {expected.dtype}"
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol, err_msg=what)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_gpu_dropout_in_a_step_scope_uses_counter_rng_masks(dtype):
    cp = _cp()
    x = np.random.default_rng(1).standard_normal((5, 33)).astype(dtype)
    values = cp.array([11, 4], dtype=cp.int64)
    first, second = Dropout(0.4), Dropout(0.6)
    with backend.device_step_scope(values):
        out1 = first.forward(cp.asarray(x))
        out2 = second.forward(out1)
    for draw, (layer, ratio) in enumerate(((first, 0.4), (second, 0.6))):
        expected = counter_rng.uniform(11, 4, draw, x.size).reshape(x.shape) > ratio
        np.testing.assert_array_equal(cp.asnumpy(layer.mask), expected,
                                      err_msg=f"mask of draw {draw}")
    expected_out1 = x * (counter_rng.uniform(11, 4, 0, x.size).reshape(x.shape) > 0.4)
    np.testing.assert_array_equal(cp.asnumpy(out1), expected_out1)
    assert out2.dtype == np.dtype(dtype)
    dout = cp.asarray(np.random.default_rng(2).standard_normal(x.shape).astype(dtype))
    np.testing.assert_array_equal(cp.asnumpy(second.backward(dout)),
                                  cp.asnumpy(dout) * cp.asnumpy(second.mask))


@pytest.mark.gpu
@gpu
def test_gpu_dropout_reads_the_step_on_the_device():
    # the step array is updated in place, as the Trainer does before each (replayed) step
    cp = _cp()
    x = cp.ones((3, 16), dtype=cp.float32)
    values = cp.array([1, 0], dtype=cp.int64)
    layer = Dropout(0.5)
    for step in (0, 1):
        values[1] = step
        with backend.device_step_scope(values):
            layer.forward(x)
        expected = counter_rng.uniform(1, step, 0, x.size).reshape(x.shape) > 0.5
        np.testing.assert_array_equal(cp.asnumpy(layer.mask), expected,
                                      err_msg=f"step {step}")


@pytest.mark.gpu
@gpu
def test_gpu_dropout_outside_a_step_scope_draws_from_get_rng():
    cp = _cp()
    x = cp.ones((4, 8), dtype=cp.float32)
    xpnet.seed(5)
    mask = cp.asnumpy(Dropout(0.5).forward(x)) != 0
    xpnet.seed(5)
    expected = cp.asnumpy(backend.get_rng(cp).random((4, 8), dtype=cp.float32)) > 0.5
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype, rtol", [(np.float32, 2e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("targets", ["labels", "column", "onehot", "single"])
def test_gpu_softmax_with_loss_matches_the_cpu(dtype, rtol, targets):
    cp = _cp()
    rng = np.random.default_rng(3)
    x = (4 * rng.standard_normal((37, 10))).astype(dtype)
    labels = rng.integers(0, 10, 37)
    t = {"labels": labels, "column": labels.reshape(-1, 1),
         "onehot": np.eye(10, dtype=dtype)[labels], "single": labels[:1]}[targets]
    if targets == "single":
        x = x[0]
        t = int(labels[0])
    cpu, dev = SoftmaxWithLoss(), SoftmaxWithLoss()
    cpu_loss = cpu.forward(x, t)
    dev_loss = dev.forward(cp.asarray(x), t if targets == "single" else cp.asarray(t))
    _assert_close(dev_loss, np.asarray(cpu_loss), rtol, "loss")
    _assert_close(dev.y, cpu.y, rtol, "y")
    _assert_close(dev.backward(), cpu.backward(), rtol, "dx")
    _assert_close(dev.backward(2.0), cpu.backward(2.0), rtol, "dx * dout")


@pytest.mark.gpu
@gpu
def test_gpu_softmax_with_loss_refuses_a_bad_label():
    cp = _cp()
    layer = SoftmaxWithLoss()
    with pytest.raises(IndexError, match=r"outside \[0, C\)"):
        layer.forward(cp.zeros((2, 3), cp.float32), cp.array([0, 3]))
        cp.cuda.get_current_stream().synchronize()
        from xpnet.kernels import cuda_fused

        cuda_fused.raise_pending_error()


def _same_problem(dtype, steps=3):
    rng = np.random.default_rng(4)
    params = {"W1": rng.standard_normal((20, 30)), "b1": rng.standard_normal(30),
              "W2": rng.standard_normal((30, 5)), "b2": rng.standard_normal(5)}
    params = {k: v.astype(dtype) for k, v in params.items()}
    grads = [{k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()}
             for _ in range(steps)]
    return params, grads


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype, rtol", [(np.float32, 2e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("name", sorted(optimizers.OPTIMIZERS))
def test_gpu_optimizers_match_the_cpu(name, dtype, rtol):
    cp = _cp()
    cpu_opt, dev_opt = optimizers.get_optimizer(name), optimizers.get_optimizer(name)
    params, grads = _same_problem(dtype)
    dev_params = {k: cp.asarray(v) for k, v in params.items()}
    for step, g in enumerate(grads):
        cpu_opt.update(params, g)
        dev_opt.update(dev_params, {k: cp.asarray(v) for k, v in g.items()})
        for k in params:
            _assert_close(dev_params[k], params[k], rtol, f"{name} {k} after step {step + 1}")
    for slot in cpu_opt.slots:
        for k in params:
            _assert_close(getattr(dev_opt, slot)[k], getattr(cpu_opt, slot)[k], rtol,
                          f"{name} state {slot}[{k}]")
    assert getattr(dev_opt, "iter", 3) == 3
    # the device views of parameters and state are made once, not per step
    made = optimizers._flat_views(dev_opt)._made["params"][1]
    dev_opt.update(dev_params, {k: cp.asarray(v) for k, v in grads[0].items()})
    assert optimizers._flat_views(dev_opt)._made["params"][1] is made


@pytest.mark.gpu
@gpu
def test_gpu_adam_checkpoint_keeps_host_and_device_step_counts_together():
    cp = _cp()
    params, grads = _same_problem(np.float32, steps=4)
    cpu_opt = optimizers.Adam()
    dev_params = {k: cp.asarray(v) for k, v in params.items()}
    dev_opt = optimizers.Adam()
    for g in grads[:2]:
        cpu_opt.update(params, g)
        dev_opt.update(dev_params, {k: cp.asarray(v) for k, v in g.items()})
    state = dev_opt.state_dict()
    assert state["step"] == 2
    resumed = optimizers.Adam()
    resumed.load_state_dict(state, dev_params)
    for g in grads[2:]:
        cpu_opt.update(params, g)
        resumed.update(dev_params, {k: cp.asarray(v) for k, v in g.items()})
    assert int(resumed._device_t[0]) == resumed.iter == 4
    for k in params:
        _assert_close(dev_params[k], params[k], 2e-6, f"resumed Adam {k}")
