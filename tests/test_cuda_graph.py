"""CUDA graphs for the training step (xpnet.cuda_graph), as far as the CPU can check them.

On the CPU: which runs may be captured and why not (real Trainer and network objects, the
GPU faked by the trainer's device name); the replay bookkeeping of DeviceSteps on NumPy with
a stand-in capturer whose capture executes nothing and whose replay runs only the step's
array work (host counters untouched), as a CUDA graph does -- a run of replays must equal
the plain CPU run bit for bit, through lr changes, a failed capture and a short batch; the
cuBLAS argument plan a captured product uses, against a column-major GEMM emulated over the
operands' memory. On a real GPU (marked ``gpu``): graph steps against eager GPU steps, the
eager GPU step against the CPU (``xpnet.parity``), resume under graphs, the short batch.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import threading

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import xpnet
from xpnet import backend, cuda_graph
from xpnet.cuda_graph import (
    CaptureError,
    DeviceSteps,
    StepInputs,
    gemm_plan,
    graph_fallback_reason,
    graph_safe,
)
from xpnet.layers import Dropout, Relu
from xpnet.models import MultiLayerNetExtend, TwoLayerNet
from xpnet.optimizers import SGD, Adam
from xpnet.trainer import Trainer


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 784), dtype=np.float32)
    t = rng.integers(0, 10, n)
    return x, t


def _trainer(net=None, optimizer="Momentum", cls=Trainer, epochs=2, **kw):
    x, t = _data()
    xpnet.seed(0)
    net = net or TwoLayerNet(784, 20, 10)
    kw.setdefault("verbose", False)
    return cls(net, x, t, x[:40], t[:40], epochs=epochs, mini_batch_size=25,
               optimizer=optimizer, optimizer_param={"lr": 0.05}, seed=3, **kw)


def _as_gpu(trainer):
    """The trainer as graph_fallback_reason sees a GPU one (only the device name changes)."""
    trainer.device = "gpu"
    return trainer


# ---------------------------------------------------------------------------
# which runs can be captured
# ---------------------------------------------------------------------------


def test_a_cpu_run_is_not_captured_and_history_says_why():
    tr = _trainer(epochs=1)
    tr.train()
    assert tr.history["cuda_graphs"] == {"used": False, "reason": "training runs on the CPU"}


def test_a_plain_network_and_optimizer_on_the_gpu_can_be_captured():
    assert graph_fallback_reason(_as_gpu(_trainer(optimizer="SGD"))) is None
    assert graph_fallback_reason(_as_gpu(_trainer(optimizer="Momentum"))) is None


def test_turned_off():
    reason = graph_fallback_reason(_as_gpu(_trainer(cuda_graphs=False)))
    assert "turned off" in reason and "--no-cuda-graphs" in reason


def test_a_communicator_is_not_captured():
    tr = _as_gpu(_trainer())
    tr.communicator = object()  # only its presence matters here
    assert "data-parallel" in graph_fallback_reason(tr)


def test_a_dropout_with_its_own_rng_is_not_captured(monkeypatch):
    monkeypatch.setattr(backend, "device_step_values", lambda xp: None, raising=False)
    net = MultiLayerNetExtend(784, [20], 10, use_dropout=True)
    tr = _as_gpu(_trainer(net))
    assert graph_fallback_reason(tr) is None  # draws from the step's device values
    dropout = next(layer for layer in net._all_layers() if isinstance(layer, Dropout))
    dropout.rng = np.random.default_rng(0)
    reason = graph_fallback_reason(tr)
    assert "Dropout" in reason and "rng" in reason


def test_dropout_needs_the_device_step_values(monkeypatch):
    monkeypatch.delattr(backend, "device_step_values", raising=False)
    assert not graph_safe(Dropout(0.5))
    monkeypatch.setattr(backend, "device_step_values", lambda xp: None, raising=False)
    assert graph_safe(Dropout(0.5))


def test_adam_needs_its_step_count_on_the_device(monkeypatch):
    monkeypatch.delattr(Adam, "sync_device_iter", raising=False)
    reason = graph_fallback_reason(_as_gpu(_trainer(optimizer="Adam")))
    assert reason.startswith("optimizer Adam has no graph-safe GPU path")
    monkeypatch.setattr(Adam, "sync_device_iter", lambda self: None, raising=False)
    assert graph_fallback_reason(_as_gpu(_trainer(optimizer="Adam"))) is None


class MyRelu(Relu):
    """A user's subclass: its Python may differ from what a graph would replay."""


class MySafeRelu(Relu):
    cuda_graph_safe = True


class MySGD(SGD):
    pass


def test_user_layers_and_subclasses_are_unsafe_until_they_declare_it():
    net = TwoLayerNet(784, 20, 10)
    net.layers["Relu1"] = MyRelu()
    tr = _as_gpu(_trainer(net))
    reason = graph_fallback_reason(tr)
    assert "MyRelu" in reason and "cuda_graph_safe = True" in reason
    net.layers["Relu1"] = MySafeRelu()
    assert graph_fallback_reason(tr) is None
    tr.optimizer = MySGD(lr=0.1)
    assert graph_fallback_reason(tr).startswith("optimizer MySGD")


def test_a_network_that_is_not_an_xpnet_network_is_not_captured():
    class BookStyleNet:
        def __init__(self, net):
            self.params, self._net = net.params, net

        def gradient(self, x, t):
            return self._net.gradient(x, t)

        def loss(self, x, t):
            return self._net.loss(x, t)

        def predict(self, x):
            return self._net.predict(x)

        def accuracy(self, x, t):
            return self._net.accuracy(x, t)

    tr = _as_gpu(_trainer(BookStyleNet(TwoLayerNet(784, 20, 10))))
    assert "not an xpnet.models.Network" in graph_fallback_reason(tr)


# ---------------------------------------------------------------------------
# replay bookkeeping, on NumPy
# ---------------------------------------------------------------------------


class FakeCapturer:
    """A capture that executes nothing (the arrays the step writes are put back) and a
    graph whose launch runs only the step's array work: host counters (Adam's ``iter``)
    are left as they were, as a CUDA graph leaves them."""

    def __init__(self, trainer, fail=None):
        self.trainer, self.fail, self.captures = trainer, fail, 0

    def capture(self, body):
        arrays = _device_arrays(self.trainer)
        saved = [a.copy() for a in arrays]
        body()  # the Python runs; under capture its kernels would only be recorded
        for a, s in zip(arrays, saved):
            a[...] = s
        if self.fail:
            raise CaptureError(self.fail)
        self.captures += 1
        return FakeGraph(self.trainer.optimizer, body), None


class FakeGraph:
    def __init__(self, optimizer, body):
        self.optimizer, self.body = optimizer, body

    def launch(self):
        host = getattr(self.optimizer, "iter", None)
        self.body()
        if host is not None:
            self.optimizer.iter = host


def _device_arrays(trainer):
    opt = trainer.optimizer
    arrays = list(trainer.network.params.values()) + list(trainer.network.named_buffers().values())
    for slot in opt.slots:
        arrays += list((getattr(opt, slot) or {}).values())
    return arrays + [trainer._device_steps.ring]


def _with_graphs(tr, capturer=None, loss_sync=7):
    """Run ``tr``'s steps through DeviceSteps with the stand-in capturer."""
    steps = DeviceSteps(tr, tr._batch_step, capturer or FakeCapturer(tr), ring_size=50)
    steps.reason = None  # as on a GPU, where nothing refuses capture
    tr._device_steps = steps
    tr._loss_sync = loss_sync  # losses read back in groups, as on the GPU
    return tr


def _assert_same_run(a, b):
    assert a.train_loss_list == b.train_loss_list
    for key in a.network.params:
        np.testing.assert_array_equal(a.network.params[key], b.network.params[key], err_msg=key)
    assert getattr(a.optimizer, "iter", None) == getattr(b.optimizer, "iter", None)


@pytest.mark.parametrize("optimizer", ["SGD", "Momentum", "Adam"])
def test_replayed_steps_train_exactly_as_plain_steps(optimizer):
    plain = _trainer(optimizer=optimizer)
    plain.train()
    graphs = _with_graphs(_trainer(optimizer=optimizer))
    graphs.train()
    _assert_same_run(graphs, plain)
    status = graphs.history["cuda_graphs"]
    assert status["used"] and status["reason"] is None
    # one eager warm-up step, then one capture replayed for every other step
    assert (status["eager_steps"], status["captures"]) == (1, 1)
    assert status["graph_steps"] == graphs.max_iter - 1


def test_batchnorm_buffers_follow_the_replays():
    def build():
        xpnet.seed(0)
        return MultiLayerNetExtend(784, [20, 20], 10, use_batchnorm=True)

    plain, graphs = _trainer(build()), _with_graphs(_trainer(build()))
    plain.train()
    graphs.train()
    _assert_same_run(graphs, plain)
    for key, value in plain.network.named_buffers().items():
        np.testing.assert_array_equal(graphs.network.named_buffers()[key], value, err_msg=key)


def test_a_changed_learning_rate_is_captured_again():
    def run(tr):
        for step in range(tr.max_iter):
            if step == 4:
                tr.optimizer.lr *= 0.5
            tr.train_step()
        tr._read_losses()
        return tr

    plain, graphs = run(_trainer()), run(_with_graphs(_trainer()))
    _assert_same_run(graphs, plain)
    status = graphs.cuda_graph_status
    assert status["captures"] == 2 and status["eager_steps"] == 2  # a warm-up for each


def test_a_schedule_that_changes_lr_now_and_then_keeps_capturing():
    tr = _with_graphs(_trainer(epochs=80))  # 5 steps an epoch
    for step in range(tr.max_iter):
        if step % 60 == 0:
            tr.optimizer.lr *= 0.9
        tr.train_step()
    status = tr.cuda_graph_status
    assert status["reason"] is None and status["captures"] == 7 > cuda_graph.MAX_CAPTURES


@pytest.mark.parametrize("optimizer", ["Momentum", "Adam"])
def test_the_trainers_cosine_schedule_captures_once_an_epoch_and_trains_as_plain_steps(
        optimizer):
    plain = _trainer(optimizer=optimizer, epochs=4, lr_schedule="cosine")
    plain.train()
    graphs = _with_graphs(_trainer(optimizer=optimizer, epochs=4, lr_schedule="cosine"))
    graphs.train()
    _assert_same_run(graphs, plain)
    status = graphs.cuda_graph_status
    assert status["reason"] is None
    assert status["captures"] == 4 and status["eager_steps"] == 4  # a new rate each epoch


def test_replaced_optimizer_state_is_captured_again():
    """A graph writes the arrays it was captured with; state replaced by new arrays (as
    load_state_dict does) needs a new graph."""
    def run(tr):
        for step in range(tr.max_iter):
            if step == 5:
                tr.optimizer.v = {k: v.copy() for k, v in tr.optimizer.v.items()}
            tr.train_step()
        tr._read_losses()
        return tr

    plain, graphs = run(_trainer()), run(_with_graphs(_trainer()))
    _assert_same_run(graphs, plain)
    assert graphs.cuda_graph_status["captures"] == 2


def test_capturing_again_and_again_gives_up():
    tr = _with_graphs(_trainer())
    for step in range(tr.max_iter):
        if step % 2 == 0:  # an eager step warms each new key up, the next one captures it
            tr.optimizer.lr *= 0.99
        tr.train_step()
    status = tr.cuda_graph_status
    assert status["captures"] == cuda_graph.MAX_CAPTURES
    assert "keep changing" in status["reason"]


def test_a_refused_capture_falls_back_to_the_same_eager_steps():
    plain = _trainer(optimizer="Adam")
    plain.train()
    graphs = _trainer(optimizer="Adam")
    _with_graphs(graphs, FakeCapturer(graphs, fail="cuBLAS refused"))
    graphs.train()
    _assert_same_run(graphs, plain)  # Adam's iter is put back after the refused capture
    status = graphs.history["cuda_graphs"]
    assert not status["used"] and "cuBLAS refused" in status["reason"]
    assert status["eager_steps"] == graphs.max_iter


def test_a_verbose_run_says_once_why_it_runs_eagerly(capsys):
    tr = _trainer(optimizer="SGD", epochs=1, verbose=True)
    _with_graphs(tr, FakeCapturer(tr, fail="cuBLAS refused"))
    tr.train()
    out = capsys.readouterr().out
    assert out.count("CUDA graphs are not used: the step could not be captured: "
                     "cuBLAS refused. The steps run eagerly") == 1


class ShortLastBatch(Trainer):
    """Draws a short batch at the last step of each epoch (an overridden draw)."""

    def _draw_batch_indices(self, step):
        indices = super()._draw_batch_indices(step)
        return indices[:7] if (step + 1) % self.iter_per_epoch == 0 else indices


def test_a_short_batch_runs_eagerly_and_the_graph_resumes_after_it():
    plain = _trainer(cls=ShortLastBatch)
    plain.train()
    graphs = _with_graphs(_trainer(cls=ShortLastBatch))
    graphs.train()
    _assert_same_run(graphs, plain)
    status = graphs.history["cuda_graphs"]
    assert status["captures"] == 1 and status["used"]
    assert status["eager_step_reasons"] == {
        "a batch of 7 samples is not the captured 25": graphs.epochs}


def test_losses_land_in_their_ring_entries_and_are_read_in_groups():
    tr = _with_graphs(_trainer(epochs=3), loss_sync=4)
    plain = _trainer(epochs=3)
    tr.train()
    plain.train()
    assert len(tr.train_loss_list) == tr.max_iter
    assert tr.train_loss_list == plain.train_loss_list


def test_a_ring_slot_outside_the_ring_is_refused():
    tr = _with_graphs(_trainer())
    with pytest.raises(ValueError, match="slot 50 is outside the ring of 50"):
        tr._device_steps.step(0, np.arange(25), slot=50)


class Killed(Exception):
    pass


def _kill_at(trainer, step):
    """Train until ``step``, then stop as a killed process would (no last checkpoint)."""
    original = trainer.train_step

    def step_until_killed():
        if trainer.current_iter == step:
            raise Killed
        original()

    trainer.train_step = step_until_killed
    with pytest.raises(Killed):
        trainer.train()
    trainer.release_lock()


def test_resume_under_graphs_ends_where_the_uninterrupted_run_does(tmp_path):
    whole = _with_graphs(_trainer(optimizer="Adam", epochs=3))
    whole.train()
    _kill_at(_with_graphs(_trainer(optimizer="Adam", epochs=3, checkpoint_dir=tmp_path,
                                   checkpoint_every=5)), 8)
    resumed = _with_graphs(_trainer(optimizer="Adam", epochs=3, checkpoint_dir=tmp_path,
                                    resume=True))
    assert resumed.current_iter == 5
    resumed.train()
    _assert_same_run(resumed, whole)


# ---------------------------------------------------------------------------
# step inputs
# ---------------------------------------------------------------------------


def test_step_inputs_hold_seed_step_slot_and_indices_in_one_buffer():
    inputs = StepInputs(np, 5).stage(2**40 + 3, 17, 4, np.array([9, 8, 7, 6, 5]))
    assert inputs.device.tolist() == [2**40 + 3, 17, 4, 9, 8, 7, 6, 5]
    assert inputs.step_values.tolist() == [2**40 + 3, 17] and inputs.slot.tolist() == [4]
    assert inputs.indices.tolist() == [9, 8, 7, 6, 5]
    for _ in range(StepInputs.HOST_SLOTS + 1):  # host slots are reused in turn
        inputs.stage(1, 2, 3, np.arange(5))
    assert inputs.device.tolist() == [1, 2, 3, 0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="batches of 5 samples, got 4"):
        inputs.stage(1, 2, 3, np.arange(4))


def test_a_seed_of_64_bits_and_more_is_staged_as_its_low_64_bits():
    inputs = StepInputs(np, 1)
    assert inputs.stage(2**64 - 1, 0, 0, [0]).step_values.view(np.uint64).tolist() == [
        2**64 - 1, 0]
    assert inputs.stage(2**70 + 5, 3, 0, [0]).step_values.view(np.uint64).tolist() == [5, 3]


# ---------------------------------------------------------------------------
# the cuBLAS call of a captured matrix product
# ---------------------------------------------------------------------------


def _column_major(a, op, ld, rows, cols):
    """The matrix cuBLAS reads at ``a``'s first element: ``op`` of the column-major
    (stored rows x cols, leading dimension ``ld``) matrix there."""
    stored = as_strided(a, shape=(rows, cols), strides=(a.itemsize, ld * a.itemsize))
    return stored.T if op else stored


def _emulated_dot(a, b):
    """``a @ b`` computed as cuBLAS would from gemm_plan's arguments and CuPy's copies."""
    plan = gemm_plan(a.shape, a.strides, b.shape, b.strides, a.itemsize)
    (op_b, op_a), (m, n, k), (ldb, lda, ldc), (copy_a, copy_b) = plan
    at = np.ascontiguousarray(a.T) if copy_a else a
    b = np.ascontiguousarray(b) if copy_b else b
    # C (m x n) = op(B') (m x k) @ op(A') (k x n), with B' at b and A' at a
    first = _column_major(b, op_b, ldb, *((k, m) if op_b else (m, k)))
    second = _column_major(at, op_a, lda, *((n, k) if op_a else (k, n)))
    c_col = first @ second  # (m, n), stored column-major with ldc = m ...
    assert ldc == m
    return c_col.T  # ... which is the row-major (n, m) result


@pytest.mark.parametrize("layout_a", ["C", "F", "strided"])
@pytest.mark.parametrize("layout_b", ["C", "F", "strided"])
def test_gemm_plan_computes_a_dot_b(layout_a, layout_b):
    rng = np.random.default_rng(0)

    def make(shape, layout):
        if layout == "C":
            return rng.random(shape)
        if layout == "F":
            return np.asfortranarray(rng.random(shape))
        return rng.random((shape[0], 2 * shape[1]))[:, ::2]  # neither C nor F

    a, b = make((6, 4), layout_a), make((4, 5), layout_b)
    np.testing.assert_allclose(_emulated_dot(a, b), a @ b, rtol=1e-12)


def test_gemm_plan_follows_cupys_choices():
    a, b = np.zeros((6, 4), np.float32), np.zeros((4, 5), np.float32)
    # row-major operands: c^T = b^T a^T with no transposes, leading dimensions m, k, m
    assert gemm_plan(a.shape, a.strides, b.shape, b.strides, 4) == (
        (0, 0), (5, 6, 4), (5, 4, 5), (False, False))
    # the book's dW = x.T @ dout: a transposed view is read as is, transposed by cuBLAS
    x = np.zeros((4, 6), np.float32)
    assert gemm_plan(x.T.shape, x.T.strides, b.shape, b.strides, 4)[0] == (0, 1)
    # where CuPy launches no cuBLAS call
    assert gemm_plan((1, 4), (16, 4), (4, 1), (4, 4), 4) is None
    assert gemm_plan((0, 4), (16, 4), (4, 5), (20, 4), 4) is None
    with pytest.raises(ValueError, match="do not align"):
        gemm_plan((2, 3), (12, 4), (4, 5), (20, 4), 4)


class HostArray(np.ndarray):
    """A NumPy array that answers ``.data.ptr`` as a CuPy array does: its address."""

    @property
    def data(self):
        return type("Pointer", (), {"ptr": self.ctypes.data})()


def _host(a):
    return np.asarray(a).view(HostArray)


class FakeCublas:
    """``cublasGemmEx`` and ``cublasSetStream_v2`` on host memory: the column-major GEMM
    cuBLAS computes, read and written through the pointers and leading dimensions given."""

    _TYPES = {0: (np.float32, ctypes.c_float), 1: (np.float64, ctypes.c_double)}

    def __init__(self):
        self.calls, self.streams = [], []

    def cublasSetStream_v2(self, handle, stream):
        self.streams.append((handle, stream))
        return 0

    @staticmethod
    def _matrix(ptr, dtype, ctype, op, ld, rows, cols):
        stored_rows, stored_cols = (cols, rows) if op else (rows, cols)
        span = ld * (stored_cols - 1) + stored_rows
        buf = np.ctypeslib.as_array((ctype * span).from_address(ptr)).view(dtype)
        stored = as_strided(buf, (stored_rows, stored_cols), (buf.itemsize, ld * buf.itemsize))
        return stored.T if op else stored

    def cublasGemmEx(self, handle, op_a, op_b, m, n, k, alpha, a, a_type, lda, b, b_type, ldb,
                     beta, c, c_type, ldc, compute, algo):
        assert a_type == b_type == c_type
        dtype, ctype = self._TYPES[a_type]
        scalar = ctypes.c_double if compute in (70, 71) else ctypes.c_float
        alpha, beta = scalar.from_address(alpha).value, scalar.from_address(beta).value
        first = self._matrix(a, dtype, ctype, op_a, lda, m, k)
        second = self._matrix(b, dtype, ctype, op_b, ldb, k, n)
        out = self._matrix(c, dtype, ctype, 0, ldc, m, n)
        out[...] = alpha * (first @ second) + (beta * out if beta else 0)
        self.calls.append({"handle": handle, "compute": compute, "algo": algo,
                           "dims": (m, n, k)})
        return 0


class FakeCupy:
    """What _CaptureGemm uses of CuPy, on host arrays."""

    class _Base:
        def dot(self, b, out=None):
            return "CuPy's own dot"

    def __init__(self, compute_capability="90"):
        self.ndarray = type("ndarray", (FakeCupy._Base,), {})
        self.cuda = type("cuda", (), {
            "Device": lambda: type("Device", (), {"compute_capability": compute_capability})(),
            "device": type("device", (), {"get_cublas_handle": staticmethod(lambda: 1234)}),
        })

    @staticmethod
    def dot(a, b, out=None):
        return "CuPy's own dot"

    class _core:  # noqa: N801 - cupy._core
        @staticmethod
        def dot(a, b, out=None):
            return "CuPy's own dot"

    @staticmethod
    def empty(shape, dtype):
        return _host(np.empty(shape, dtype))

    @staticmethod
    def ascontiguousarray(a):
        return _host(np.ascontiguousarray(a))


def _capture_gemm(compute_type=1, compute_capability="90"):
    gemm = cuda_graph._CaptureGemm(FakeCupy(compute_capability))
    gemm._lib = FakeCublas()
    gemm._cupy_compute_type = lambda dtype: compute_type
    gemm.handle = 1234
    return gemm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout_a", ["C", "F", "strided"])
@pytest.mark.parametrize("layout_b", ["C", "F", "strided"])
def test_a_captured_product_calls_cublas_as_cupy_does(dtype, layout_a, layout_b):
    rng = np.random.default_rng(1)

    def make(shape, layout):
        full = rng.random((shape[0], 2 * shape[1])).astype(dtype)
        a = {"C": full[:, : shape[1]].copy(), "F": np.asfortranarray(full[:, : shape[1]]),
             "strided": full[:, ::2]}[layout]
        return _host(a)

    a, b = make((7, 3), layout_a), make((3, 5), layout_b)
    gemm = _capture_gemm()
    c = gemm.dot(a, b)
    np.testing.assert_allclose(c, np.asarray(a) @ np.asarray(b), rtol=1e-6)
    (call,) = gemm._lib.calls
    assert call["algo"] == 99 and call["dims"] == (5, 7, 3)  # tensor-op default from cc 8.0
    assert call["compute"] == (68 if dtype == np.float32 else 70)


def test_a_captured_product_takes_cupys_compute_type_and_algorithm():
    a, b = _host(np.ones((4, 3), np.float32)), _host(np.ones((3, 2), np.float32))
    for cupy_type, cublas_type in ((2, 69), (7, 77), (1, 68)):  # pedantic, TF32, default
        gemm = _capture_gemm(compute_type=cupy_type, compute_capability="75")
        gemm.dot(a, b)
        assert gemm._lib.calls[0]["compute"] == cublas_type
        assert gemm._lib.calls[0]["algo"] == -1  # before cc 8.0: cuBLAS's default for float32


def test_a_product_capture_cannot_take_is_refused():
    gemm = _capture_gemm()
    with pytest.raises(CaptureError, match="3-D float32 and 2-D float32"):
        gemm.dot(_host(np.ones((2, 3, 4), np.float32)), _host(np.ones((4, 2), np.float32)))
    with pytest.raises(CaptureError, match="2-D float32 and 2-D float64"):
        gemm.dot(_host(np.ones((2, 3), np.float32)), _host(np.ones((3, 2), np.float64)))


def test_routing_covers_the_capture_and_puts_cupy_back():
    gemm = _capture_gemm()
    cp = gemm.cp
    stream = type("Stream", (), {"ptr": 777})()
    with pytest.raises(KeyError):
        with gemm.routing(stream):
            assert gemm._lib.streams == [(1234, 777)]  # the handle is on the capture stream
            x = cp.ndarray()
            a, b = _host(np.eye(2, dtype=np.float32)), _host(np.eye(2, dtype=np.float32))
            assert cp.dot is not FakeCupy.dot and cp.ndarray.dot is not FakeCupy._Base.dot
            np.testing.assert_array_equal(cp.dot(a, b), np.eye(2))
            np.testing.assert_array_equal(cp.ndarray.dot(a, b), np.eye(2))
            elsewhere = []  # another thread keeps CuPy's own product (and its own handle)
            thread = threading.Thread(target=lambda: elsewhere.append(x.dot(None)))
            thread.start()
            thread.join()
            assert elsewhere == ["CuPy's own dot"]
            raise KeyError  # a failed capture: routing must still end
    assert cp.dot is FakeCupy.dot and "dot" not in cp.ndarray.__dict__
    assert cp.ndarray().dot(None) == "CuPy's own dot"


class FakeStream:
    def __init__(self, non_blocking=False):
        self.ptr, self.events, self.current = 777, [], False

    def __enter__(self):
        self.current = True

    def __exit__(self, *exc):
        self.current = False

    def synchronize(self):
        pass

    def begin_capture(self):
        self.events.append("begin")

    def end_capture(self):
        self.events.append("end")
        return "graph"


def _cupy_capturer(routing_error=None):
    """A CupyCapturer over a stand-in CuPy that records what the capture did."""
    cp = FakeCupy()
    allocators = []
    cp.cuda.Stream = FakeStream
    cp.cuda.MemoryPool = lambda: type("Pool", (), {"malloc": "private malloc"})()
    cp.cuda.get_current_stream = staticmethod(lambda: FakeStream())

    @contextlib.contextmanager
    def using_allocator(malloc):
        allocators.append(malloc)
        yield

    cp.cuda.using_allocator = staticmethod(using_allocator)
    capturer = cuda_graph.CupyCapturer(cp)

    @contextlib.contextmanager
    def routing(stream):
        if routing_error:
            raise routing_error
        yield

    capturer.gemm.routing = routing
    return capturer, allocators


def test_cupy_capture_runs_the_body_on_its_stream_and_pool():
    capturer, allocators = _cupy_capturer()
    seen = []
    graph, (pool, loss) = capturer.capture(lambda: seen.append(capturer.stream.current) or 5)
    assert graph == "graph" and loss == 5 and pool.malloc == "private malloc"
    assert seen == [True] and allocators == ["private malloc"]
    assert capturer.stream.events == ["begin", "end"] and not capturer.stream.current


def test_a_body_that_fails_under_capture_ends_it_and_names_the_error():
    capturer, _ = _cupy_capturer()

    def refuses():
        raise NotImplementedError("calling cuBLAS API during stream capture is unsupported")

    with pytest.raises(CaptureError, match="NotImplementedError: calling cuBLAS API"):
        capturer.capture(refuses)
    assert capturer.stream.events == ["begin", "end"]  # the stream is usable again


def test_a_capture_refused_before_it_begins_is_a_capture_error():
    capturer, _ = _cupy_capturer(routing_error=OSError("no libcublas"))
    with pytest.raises(CaptureError, match="OSError: no libcublas"):
        capturer.capture(lambda: 5)
    assert capturer.stream.events == []


# ---------------------------------------------------------------------------
# the benchmark's table
# ---------------------------------------------------------------------------


def test_the_gpu_table_shows_graphs_eager_and_pytorch_side_by_side():
    from xpnet.bench.gpu import gpu_table

    graphs_run = {"steps": 300, "ms_per_step": 2.0, "epoch_seconds": 1.2,
                  "gpu_busy_ms_per_step": 1.8, "numba_launches_eager_step": 18,
                  "graph_nodes": {"kernel": 240, "memcpy": 2},
                  "cuda_graphs": {"used": True, "reason": None}}
    results = {"graphs": {"rows": [
        {"model": "DeepConvNet", "batch": 100, "epoch_steps": 600,
         "xpnet_graphs": graphs_run,
         "xpnet_eager": {"steps": 300, "ms_per_step": 13.0, "epoch_seconds": 7.8},
         "torch_fp32": {"steps": 300, "ms_per_step": 4.0, "epoch_seconds": 2.4}},
        {"model": "SimpleConvNet", "batch": 100, "epoch_steps": 600,
         "xpnet_graphs": {"steps": 300, "ms_per_step": 5.0, "epoch_seconds": 3.0,
                          "cuda_graphs": {"used": False, "reason": "optimizer Adam has no"}},
         "xpnet_eager": {"error": "RuntimeError: boom"},
         "torch_fp32": {"skipped": "PyTorch is not installed"}},
    ], "launch_cost": {"numba_us": 140.0, "fast_path_us": 4.5, "device": "H200"}}}
    rows = gpu_table(results)
    deep = next(r for r in rows if r.startswith("| DeepConvNet epoch, batch 100"))
    assert "(600 steps, 300 steps timed)" in deep
    assert "graphs 1.20 s (2.00 ms/step); eager 7.80 s (13.00 ms/step); PyTorch fp32 2.40 s" \
        in deep
    assert "xpnet/PyTorch 0.50x (eager 3.25x)" in deep
    assert "GPU busy 1.80 ms of 2.00 ms per replayed step" in deep
    assert "240 kernels per step: 240 launches eagerly (18 of them Numba's), 1 graph launch" \
        in deep
    simple = next(r for r in rows if r.startswith("| SimpleConvNet"))
    assert "eager RuntimeError: boom" in simple and "PyTorch is not installed" in simple
    assert "graphs did not run: optimizer Adam has no" in simple
    assert "xpnet/PyTorch" not in simple  # no ratio without both figures
    assert "| one kernel launch, host cost per call (us) | numba_us 140.0, fast_path_us 4.5 |" \
        in rows


def test_the_gpu_table_says_whether_the_training_run_used_graphs():
    from xpnet.bench.gpu import gpu_table

    train = {"epochs": 10, "epoch_seconds": [2.0], "final_test_acc": 0.91}
    used = {**train, "cuda_graphs": {"used": True, "reason": None}}
    eager = {**train, "cuda_graphs": {"used": False, "reason": "turned off"}}
    assert any(r.endswith("final test accuracy 0.9100; CUDA graphs |")
               for r in gpu_table({"train": used}))
    assert any(r.endswith("final test accuracy 0.9100; eager steps (turned off) |")
               for r in gpu_table({"train": eager}))
    assert any(r.endswith("final test accuracy 0.9100 |") for r in gpu_table({"train": train}))


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------


def test_train_takes_no_cuda_graphs(tmp_path, capsys):
    from test_cli import train_args, write_idx

    from xpnet import cli

    data = write_idx(tmp_path / "idx", n_train=60, n_test=20)
    out = tmp_path / "run"
    code = cli.main([str(a) for a in train_args(
        data, "--model", "TwoLayerNet", "--epochs", 1, "--batch-size", 20, "--quiet",
        "--no-cuda-graphs", "--out", out)])
    assert code == 0, capsys.readouterr().err
    history = json.loads((out / "history.json").read_text())
    assert history["config"]["cuda_graphs"] is False
    assert history["cuda_graphs"]["reason"] == "training runs on the CPU"


# ---------------------------------------------------------------------------
# on a real GPU (run by benchmarks/gpu_check.sh)
# ---------------------------------------------------------------------------

def _conv_trainer(cuda_graphs, optimizer="Momentum", cls=Trainer, epochs=2, **kw):
    from xpnet.models import SimpleConvNet

    rng = np.random.default_rng(0)
    x = rng.random((200, 1, 28, 28), dtype=np.float32)
    t = rng.integers(0, 10, 200)
    xpnet.seed(0)
    net = SimpleConvNet(conv_param={"filter_num": 8, "filter_size": 5, "pad": 0, "stride": 1},
                        hidden_size=32)
    return cls(net, x, t, x[:50], t[:50], epochs=epochs, mini_batch_size=50,
               optimizer=optimizer, optimizer_param={"lr": 0.05}, verbose=False, seed=5,
               device="gpu", cuda_graphs=cuda_graphs, **kw)


def _params(tr):
    return {k: backend.as_numpy(v) for k, v in tr.network.params.items()}


def _assert_graphs_ran(tr):
    status = tr.cuda_graph_status
    assert status["used"], f"CUDA graphs did not run: {status}"
    assert status["graph_steps"] == tr.max_iter - status["eager_steps"], status


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(), reason="no usable GPU")
@pytest.mark.parametrize("optimizer", ["SGD", "Momentum"])
def test_gpu_graph_steps_equal_eager_gpu_steps(optimizer):
    """Bit for bit: the replay launches the kernels the eager step launched, and its matrix
    products call cuBLAS with CuPy's arguments (gemm_plan), so the same algorithm runs. A
    difference at float32 rounding would point at cuBLAS choosing another algorithm under
    capture; the message prints both."""
    eager = _conv_trainer(False, optimizer)
    eager.train()
    graphs = _conv_trainer(True, optimizer)
    graphs.train()
    _assert_graphs_ran(graphs)
    assert graphs.train_loss_list == eager.train_loss_list, (
        graphs.train_loss_list[:5], eager.train_loss_list[:5])
    for key, value in _params(eager).items():
        np.testing.assert_array_equal(_params(graphs)[key], value, err_msg=key)


def _eager_and_graph_adam_runs(make_network, samples, epochs, seed):
    """Two Adam runs of ``make_network()`` on the same random images, eager then with CUDA
    graphs, each from ``xpnet.seed(0)``; returns both trainers."""
    rng = np.random.default_rng(0)
    x = rng.random((samples, 1, 28, 28), dtype=np.float32)
    t = rng.integers(0, 10, samples)
    runs = []
    for graphs in (False, True):
        xpnet.seed(0)
        tr = Trainer(make_network(), x, t, x[:100], t[:100], epochs=epochs,
                     mini_batch_size=50, optimizer="Adam", optimizer_param={"lr": 0.001},
                     verbose=False, seed=seed, device="gpu", cuda_graphs=graphs)
        tr.train()
        runs.append(tr)
    return runs


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(), reason="no usable GPU")
def test_gpu_deepconvnet_adam_graph_equals_eager():
    """The issue's network: Dropout (device step values) and Adam (device step count)."""
    if not hasattr(backend, "device_step_values") or not hasattr(Adam, "sync_device_iter"):
        pytest.skip("this build has no device-side Dropout draws or Adam step count yet")
    from xpnet.models import DeepConvNet

    runs = _eager_and_graph_adam_runs(DeepConvNet, samples=300, epochs=1, seed=1)
    _assert_graphs_ran(runs[1])
    assert runs[1].optimizer.iter == runs[0].optimizer.iter == runs[0].max_iter
    for key, value in _params(runs[0]).items():
        np.testing.assert_array_equal(_params(runs[1])[key], value, err_msg=key)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(), reason="no usable GPU")
def test_gpu_eager_step_matches_the_cpu_step():
    """The eager GPU step against the CPU, as xpnet.parity compares them."""
    from xpnet.models import SimpleConvNet
    from xpnet.parity import step_parity

    rng = np.random.default_rng(1)
    xpnet.seed(0)
    report = step_parity(SimpleConvNet(), rng.random((50, 1, 28, 28), dtype=np.float32),
                         rng.integers(0, 10, 50))
    assert report["passed"], report


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(), reason="no usable GPU")
def test_gpu_resume_under_graphs_equals_the_uninterrupted_run(tmp_path):
    whole = _conv_trainer(True, epochs=3)
    whole.train()
    _assert_graphs_ran(whole)
    _kill_at(_conv_trainer(True, epochs=3, checkpoint_dir=tmp_path, checkpoint_every=5), 7)
    resumed = _conv_trainer(True, epochs=3, checkpoint_dir=tmp_path, resume=True)
    assert resumed.current_iter == 5
    resumed.train()
    _assert_graphs_ran(resumed)
    for key, value in _params(whole).items():
        np.testing.assert_array_equal(_params(resumed)[key], value, err_msg=key)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(), reason="no usable GPU")
def test_gpu_short_batch_falls_back_and_matches_eager():
    eager = _conv_trainer(False, cls=ShortLastBatch)
    eager.train()
    graphs = _conv_trainer(True, cls=ShortLastBatch)
    graphs.train()
    _assert_graphs_ran(graphs)
    assert graphs.cuda_graph_status["eager_step_reasons"], graphs.cuda_graph_status
    for key, value in _params(eager).items():
        np.testing.assert_array_equal(_params(graphs)[key], value, err_msg=key)


def test_capture_and_replay_keep_adams_two_step_counts_in_step():
    """Adam's fused GPU update advances ``iter`` and its record of the device's count
    (``_device_iter``) together, and refills the device's count where they differ: a
    capture must leave both as they were (else the refill would be captured and every
    replay would reset the count), and a replay must advance both."""
    opt = Adam()
    opt.iter, opt._device_iter = 7, 7

    def fused_update():  # what Adam._update_fused_adam does to the host counters
        if opt._device_iter != opt.iter:
            raise AssertionError("a refill of the device's step count would be captured")
        opt.iter += 1
        opt._device_iter = opt.iter

    class Capturer:
        def capture(self, body):
            body()
            return FakeGraphLaunch(), None

    class FakeGraphLaunch:
        def launch(self):
            pass  # kernels only: the host counters are the replay's bookkeeping

    step = cuda_graph.GraphStep.capture("key", fused_update, Capturer(), opt, [])
    assert (opt.iter, opt._device_iter) == (7, 7)
    for expected in (8, 9, 10):
        step.replay()
        assert (opt.iter, opt._device_iter) == (expected, expected)
    fused_update()  # an eager step after replays: no refill needed, both advance
    assert (opt.iter, opt._device_iter) == (11, 11)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(), reason="no usable GPU")
@pytest.mark.parametrize("name, kw", [("ResNet", {"blocks_per_stage": 1, "width": 4}),
                                      ("MiniGoogLeNet", {"width": 2})])
def test_gpu_representative_cnn_graph_steps_equal_eager_when_declared_safe(monkeypatch, name,
                                                                          kw):
    """The representative CNNs' layers are not declared graph-safe yet, so these networks
    train eagerly on the GPU. This declares them for the test and asks what declaring them
    for real needs: captured steps equal eager ones bit for bit, running statistics too."""
    from xpnet import models
    from xpnet.blocks import InceptionBlock, ResidualBlock, SpatialBatchNormalization
    from xpnet.convolution import AvgPooling, GlobalAvgPooling

    for cls in (SpatialBatchNormalization, AvgPooling, GlobalAvgPooling, ResidualBlock,
                InceptionBlock):
        monkeypatch.setattr(cls, "cuda_graph_safe", True, raising=False)
    runs = _eager_and_graph_adam_runs(lambda: getattr(models, name)(**kw), samples=200,
                                      epochs=2, seed=3)
    _assert_graphs_ran(runs[1])
    assert runs[1].train_loss_list == runs[0].train_loss_list
    eager, graphs = ({k: backend.as_numpy(v) for k, v in
                      {**tr.network.params, **tr.network.named_buffers()}.items()}
                     for tr in runs)
    for key, value in eager.items():
        np.testing.assert_array_equal(graphs[key], value, err_msg=key)
