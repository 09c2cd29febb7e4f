"""Data-parallel training (xpnet.distributed): the MPI cases run ``tests/distributed_cases.py``
under ``mpiexec -n 2`` in a subprocess (each bounded by a timeout, their process group
killed if it runs over); the rest run in this process without initializing MPI.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from replicas import Replicas

from xpnet import distributed
from xpnet.distributed import Communicator, DistributedError, get_communicator

REPO = Path(__file__).resolve().parents[1]
CASES = REPO / "tests" / "distributed_cases.py"
MPIEXEC = shutil.which("mpiexec")


def _have_mpi4py() -> bool:
    try:
        import mpi4py  # noqa: F401  (the package only: MPI itself is not initialized here)
    except ImportError:
        return False
    return True


def needs_mpi(test):
    """Mark an MPI test; skip it cleanly when mpiexec or mpi4py is missing."""
    test = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not installed")(test)
    test = pytest.mark.skipif(not _have_mpi4py(), reason="mpi4py is not installed")(test)
    return pytest.mark.mpi(test)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in distributed._LAUNCHER_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # two ranks share two cores: one thread each
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1")
    # Open MPI's mpiexec refuses to start as root (containers, CI runners) unless both of
    # these are set; MPICH ignores them
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def _run(cmd, *, timeout=60):
    """Run ``cmd`` in its own process group; returns (CompletedProcess, seconds)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and every rank it started
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(map(str, cmd))} ran past {timeout} s:\n{out[-2000:]}{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), time.monotonic() - start


def _cases(*args, n=2, launcher=(), wrap=False, **kw):
    """``mpiexec -n <n> python tests/distributed_cases.py <args>`` (n=0: no mpiexec)."""
    py = [sys.executable, str(CASES), *map(str, args)]
    if n == 0:
        return _run(py, **kw)
    if wrap:  # the launcher sees a shell that exits normally, not a rank killed by a signal
        py = ["sh", "-c", '"$@"; exit $?', "sh", *py]
    return _run([MPIEXEC, *launcher, "-n", str(n), *py], **kw)


def _ok(result):
    proc, _ = result
    report = proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, f"exit {proc.returncode}\n{report}"
    return proc


def _params(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _assert_params_close(a, b, rtol):
    assert sorted(a) == sorted(b)
    for k in a:
        scale = np.max(np.abs(a[k]))
        err = np.max(np.abs(a[k] - b[k])) / scale
        assert err < rtol, f"{k}: relative difference {err:.3g}"


# ---------------------------------------------------------------------------
# In this process: no MPI
# ---------------------------------------------------------------------------


def test_the_package_keeps_every_public_name_and_is_installed():
    """xpnet.distributed is a package split by transport; its names import as before."""
    import tomllib

    from xpnet.distributed import (
        MPICommunicator,
        NCCLCommunicator,
        communicator,
        launched_by_mpi,
        mpi,
        nccl,
    )

    assert MPICommunicator is mpi.MPICommunicator and NCCLCommunicator is nccl.NCCLCommunicator
    assert Communicator is communicator.Communicator and issubclass(MPICommunicator, Communicator)
    assert launched_by_mpi is communicator.launched_by_mpi
    assert set(distributed.__all__) <= set(dir(distributed))
    with open(REPO / "pyproject.toml", "rb") as f:
        assert "xpnet.distributed" in tomllib.load(f)["tool"]["setuptools"]["packages"]


def test_without_launcher_runs_single_process_and_says_so(monkeypatch, capsys):
    for var in distributed._LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    assert get_communicator() is None
    err = capsys.readouterr().err
    assert "running as single-process training" in err and "not started by an MPI" in err


def test_without_mpi4py_runs_single_process_and_says_so(monkeypatch, capsys):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py -> ImportError
    assert get_communicator() is None
    err = capsys.readouterr().err
    assert "running as single-process training" in err and "mpi4py is not installed" in err


class _Ranked(Communicator):
    """Only rank and size: enough for the sharding arithmetic."""


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [4, 7, 32, 33, 100])
def test_shards_are_contiguous_cover_the_batch_and_weigh_to_the_batch_mean(size, batch):
    comms = [_Ranked(r, size, timeout=1) for r in range(size)]
    bounds = [c.shard_bounds(batch) for c in comms]
    assert bounds[0][0] == 0 and bounds[-1][1] == batch
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(size - 1))
    lengths = [hi - lo for lo, hi in bounds]
    assert max(lengths) - min(lengths) <= 1
    # mean over ranks of weight * (shard mean) == batch mean, for any per-sample values
    values = np.random.default_rng(0).standard_normal(batch)
    shard_means = [values[lo:hi].mean() for lo, hi in bounds]
    weights = [c.shard_weight(batch) for c in comms]
    assert np.isclose(np.mean([w * m for w, m in zip(weights, shard_means)]), values.mean())
    if batch % size == 0:
        assert weights == [1.0] * size  # even split: no rescaling at all (exactness)
    idx = np.arange(100, 100 + batch)
    assert np.concatenate([c.shard(idx) for c in comms]).tolist() == idx.tolist()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_allreduce_mean_is_one_fused_call_per_step_in_the_gradients_dtype(dtype):
    from xpnet.models import MultiLayerNet

    net = MultiLayerNet(20, [16, 16], 4, dtype=dtype)
    x = np.random.default_rng(0).standard_normal((8, 20))
    t = np.arange(8) % 4
    comm = Replicas(size=4)
    for _ in range(3):
        grads = net.gradient(x, t)
        expected = {k: g.copy() for k, g in grads.items()}
        loss = comm.allreduce_mean(grads, loss=net.last_loss, weight=0.5)
        for k, g in grads.items():
            assert g.dtype == np.dtype(dtype) and g.shape == expected[k].shape, k
            # the mean over 4 identical ranks of 0.5 * g
            np.testing.assert_allclose(g, 0.5 * expected[k].astype(np.float32), rtol=1e-3)
        np.testing.assert_allclose(float(loss), 0.5 * float(net.last_loss), rtol=1e-3)
    n_params = sum(p.size for p in net.params.values())
    # one collective per step, over all 6 parameters and the loss; float16 is summed in float32
    assert [c[:3] for c in comm.calls] == [
        ("allreduce", n_params + 1, np.promote_types(dtype, np.float32))
    ] * 3
    assert len(comm._buffers) == 1  # the buffer is allocated once and reused


def test_broadcast_params_writes_into_the_same_arrays_and_packs_in_key_order():
    from xpnet.models import TwoLayerNet

    net = TwoLayerNet(6, 5, 3, dtype=np.float64)
    ids = {k: id(v) for k, v in net.params.items()}
    before = {k: v.copy() for k, v in net.params.items()}
    comm = Replicas()
    shuffled = {k: net.params[k] for k in reversed(list(net.params))}
    comm.broadcast_params(shuffled)
    assert {k: id(v) for k, v in net.params.items()} == ids  # layers keep seeing them
    for k in before:
        np.testing.assert_array_equal(net.params[k], before[k])  # root's values, round trip
    layout, _ = comm._fused(net.params)
    assert [e[0] for e in layout.entries] == sorted(net.params)  # any dict order packs alike


def test_sync_batchnorm_averages_in_place_and_counts_the_arrays():
    from xpnet.models import MultiLayerNetExtend

    net = MultiLayerNetExtend(6, [5, 5], 3, use_batchnorm=True, dtype=np.float64)
    comm = Replicas()
    assert comm.sync_batchnorm(net) == 0  # no forward pass yet: no statistics
    net.gradient(np.random.default_rng(1).standard_normal((10, 6)), np.arange(10) % 3)
    layer = net.layers["BatchNorm1"]
    mean, mean_id = layer.running_mean.copy(), id(layer.running_mean)
    assert comm.sync_batchnorm(net) == 4
    assert id(layer.running_mean) == mean_id
    np.testing.assert_allclose(layer.running_mean, mean, rtol=1e-15)  # mean of equal replicas


def test_batch_smaller_than_world_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot be split over 4 processes"):
        _Ranked(1, 4, timeout=1).shard_bounds(3)


def test_bad_timeout_setting_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="XPNET_DISTRIBUTED_TIMEOUT must be a positive"):
        _Ranked(0, 2)


# ---------------------------------------------------------------------------
# Two MPI processes
# ---------------------------------------------------------------------------


@pytest.mark.slow
@needs_mpi
@pytest.mark.parametrize("batch", [32, 33])  # an even split, and shards of 16 and 17
def test_two_processes_with_half_batches_equal_one_process(tmp_path, batch):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _ok(_cases("train", "--out", one, "--steps", 10, "--batch", batch, n=0))
    _ok(_cases("train", "--out", two, "--steps", 10, "--batch", batch))
    p1 = _params(one / "params_rank0.npz")
    r0, r1 = _params(two / "params_rank0.npz"), _params(two / "params_rank1.npz")
    # the ranks started from different initializations: the broadcast made them one
    for k in r0:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=f"{k} differs between ranks")
    _assert_params_close(r0, p1, rtol=1e-6)
    init = _cases_module().build_net(0).params
    assert all(not np.allclose(init[k], p1[k]) for k in p1)  # training moved every one
    l1 = json.loads((one / "losses_rank0.json").read_text())
    l2 = json.loads((two / "losses_rank0.json").read_text())
    assert len(l1) == len(l2) == 10
    np.testing.assert_allclose(l2, l1, rtol=1e-12)  # the global loss, averaged in the buffer


def _cases_module():
    sys.path.insert(0, str(CASES.parent))
    try:
        import distributed_cases
    finally:
        sys.path.pop(0)
    return distributed_cases


@pytest.mark.slow
@needs_mpi
def test_batchnorm_statistics_are_per_replica_then_averaged(tmp_path):
    _ok(_cases("batchnorm", "--out", tmp_path, "--steps", 5, "--batch", 32))
    before = [_params(tmp_path / f"bn_before_rank{r}.npz") for r in (0, 1)]
    after = [_params(tmp_path / f"bn_after_rank{r}.npz") for r in (0, 1)]
    assert json.loads((tmp_path / "bn_count_rank0.json").read_text()) == 4  # 2 layers x 2
    assert sorted(before[0]) == sorted(after[0]) and len(before[0]) == 4
    for k in before[0]:
        # per-replica: each rank normalised its own shard, so its statistics differ
        assert not np.allclose(before[0][k], before[1][k]), k
        # then averaged, identically on both ranks
        np.testing.assert_array_equal(after[0][k], after[1][k])
        np.testing.assert_allclose(after[0][k], (before[0][k] + before[1][k]) / 2, rtol=1e-14)
    p0, p1 = _params(tmp_path / "params_rank0.npz"), _params(tmp_path / "params_rank1.npz")
    for k in p0:  # gamma and beta too: the replicas stay identical
        np.testing.assert_array_equal(p0[k], p1[k])


@needs_mpi
@pytest.mark.parametrize(
    "what, expected",
    [
        ("shape", r"W1 is \(20, 16\) float64 on rank 0 but \(20, 12\) float64 on rank 1"),
        ("version", r"rank 1 runs xpnet 0\.0\.0-other, rank 0 xpnet "),
    ],
    ids=["shape", "version"],
)
def test_different_models_or_versions_fail_at_start(what, expected):
    proc, seconds = _cases("mismatch", "--what", what, timeout=60)
    assert proc.returncode != 0
    assert "DistributedError" in proc.stderr
    assert re.search(expected, proc.stderr), proc.stderr[-3000:]
    assert "consistency check passed" not in proc.stdout


@needs_mpi
@pytest.mark.parametrize(
    "what, expected",
    [
        ("lr", r"optimizer_param\.lr is 0\.1 on rank 0 but 0\.2 on rank 1"),
        ("optimizer", r"optimizer is Momentum on rank 0 but SGD on rank 1"),
        ("batch", r"mini_batch_size is 32 on rank 0 but 16 on rank 1"),
        ("epochs", r"epochs is 2 on rank 0 but 3 on rank 1"),
        ("seed", r"seed is 5 on rank 0 but 6 on rank 1"),
        ("train_size", r"train_size is 192 on rank 0 but 160 on rank 1"),
    ],
)
def test_different_training_settings_fail_at_start_on_every_rank(what, expected):
    proc, seconds = _cases("mismatch", "--what", what, timeout=60)
    assert proc.returncode != 0
    assert len(re.findall(expected, proc.stderr)) == 2, proc.stderr[-3000:]  # both ranks
    assert "consistency check passed" not in proc.stdout
    assert seconds < 50  # at start-up, not at the collective deadline


def _read_checkpoint(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    for k, v in arrays.items():
        assert np.all(np.isfinite(v)), k
    return meta


@pytest.mark.slow
@needs_mpi
def test_killed_rank_stops_the_job_and_the_checkpoint_resumes(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    run = ("train", "--out", tmp_path, "--steps", 12, "--ckpt", ck, "--ckpt-every", 4)
    # rank 1 is SIGKILLed at step 6, after rank 0 checkpointed step 4
    proc, seconds = _cases(*run, "--kill-rank", 1, "--kill-at", 6, "--deadline", 10, timeout=90)
    assert proc.returncode != 0
    assert seconds < 60, f"the surviving rank took {seconds:.0f} s to stop"
    assert not (tmp_path / "params_rank0.npz").exists()  # it did not go on training
    assert _read_checkpoint(ck / "ckpt.npz")["step"] == 4
    # resume on two processes: same end as one uninterrupted process
    _ok(_cases(*run, "--resume"))
    ref = tmp_path / "ref"
    ref.mkdir()
    _ok(_cases("train", "--out", ref, "--steps", 12, n=0))
    _assert_params_close(_params(tmp_path / "params_rank0.npz"), _params(ref / "params_rank0.npz"),
                         rtol=1e-6)
    losses = json.loads((tmp_path / "losses_rank0.json").read_text())
    assert len(losses) == 12


@pytest.mark.slow
@needs_mpi
@pytest.mark.parametrize("sig, state", [("KILL", "died"), ("STOP", "is stopped")],
                         ids=["killed", "stopped"])
def test_missing_rank_is_named_within_the_deadline(tmp_path, sig, state):
    """The deadline itself, where the launcher cannot help: a rank killed under a launcher
    told not to clean up (MPICH's -disable-auto-cleanup), or a rank that hangs (SIGSTOP)
    and that no launcher notices. The survivor must name it and end the job."""
    ck = tmp_path / "ck"
    ck.mkdir()
    launcher, wrap = (), False
    if sig == "KILL":
        if "HYDRA" not in subprocess.run([MPIEXEC, "--version"], capture_output=True,
                                         text=True).stdout:
            pytest.skip("needs MPICH's Hydra launcher (-disable-auto-cleanup)")
        launcher, wrap = ("-disable-auto-cleanup",), True
    proc, seconds = _cases(
        "train", "--out", tmp_path, "--steps", 12, "--ckpt", ck, "--ckpt-every", 4,
        "--kill-rank", 1, "--kill-at", 6, "--signal", sig, "--deadline", 3,
        launcher=launcher, wrap=wrap, timeout=90,
    )
    assert proc.returncode != 0
    assert seconds < 60
    assert "DistributedError: rank 0 of 2 waited 3 s for the gradient allreduce (step 7)" in (
        proc.stderr
    ), proc.stderr[-3000:]
    assert "rank 1 (pid " in proc.stderr and f") {state}" in proc.stderr
    assert "--resume" in proc.stderr
    assert _read_checkpoint(ck / "ckpt.npz")["step"] == 4


@needs_mpi
def test_world_of_one_runs_single_process_and_says_so(tmp_path):
    proc = _ok(_run([MPIEXEC, "-n", "1", sys.executable, "-c",
                     "from xpnet.distributed import get_communicator; "
                     "print(get_communicator())"]))
    assert proc.stdout.strip() == "None"
    assert "running as single-process training (the MPI job has one process)" in proc.stderr


# ---------------------------------------------------------------------------
# NCCL on a real GPU: a world of one rank
# ---------------------------------------------------------------------------


def _nccl_or_skip():
    from xpnet import backend

    if not backend.gpu_available():
        pytest.skip(backend.gpu_unavailable_reason())
    try:
        from cupy.cuda import nccl
    except ImportError as exc:
        pytest.skip(f"CuPy has no NCCL: {exc}")
    if not getattr(nccl, "available", True):
        pytest.skip("this CuPy build has no NCCL")


class _DeviceArray(np.ndarray):
    """A stand-in for a CuPy array: a NumPy array with ``.data.ptr``."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])


class _FakeNCCL:
    """Records what NCCLCommunicator asks of ``cupy.cuda.nccl`` (a world of one rank)."""

    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 6, 7, 8, 0

    class NcclError(RuntimeError):
        pass

    def __init__(self):
        self.calls = []
        self.fake = self

    def get_unique_id(self):
        return tuple(range(128))

    def NcclCommunicator(self, ndev, uid, rank):  # noqa: N802 - CuPy's name
        assert (ndev, rank, len(uid)) == (1, 0, 128)
        fake = self

        class Comm:
            def allReduce(self, send, recv, count, dtype, op, stream):  # noqa: N802
                fake.calls.append(("allReduce", send == recv, count, dtype, op))

            def bcast(self, buff, count, dtype, root, stream):
                fake.calls.append(("bcast", count, dtype, root))

            def check_async_error(self):
                pass

            def abort(self):
                fake.calls.append(("abort",))

        return Comm()


@pytest.fixture
def fake_cupy(monkeypatch):
    """CuPy and its NCCL module replaced by NumPy-backed fakes, so NCCLCommunicator's own
    logic (packing, stream events, deadlines, abort) runs without a GPU."""
    from xpnet import backend

    nccl = _FakeNCCL()
    events = {"done": True}
    stream = types.SimpleNamespace(
        ptr=0, record=lambda: types.SimpleNamespace(done=events["done"])
    )
    cp = types.SimpleNamespace(
        __name__="cupy",
        ndarray=_DeviceArray,
        empty=lambda n, dtype: np.empty(n, dtype).view(_DeviceArray),
        zeros=lambda n, dtype: np.zeros(n, dtype).view(_DeviceArray),
        asarray=lambda a: np.array(a).view(_DeviceArray),
        asnumpy=lambda a: np.array(a).view(np.ndarray),
        cuda=types.SimpleNamespace(get_current_stream=lambda: stream, nccl=nccl),
    )
    monkeypatch.setattr(backend, "_cupy", cp)
    monkeypatch.setattr(backend, "gpu_unavailable_reason", lambda: None)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cp.cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", nccl)
    at_exit = []
    monkeypatch.setattr(atexit, "register", lambda *a: at_exit.append(a))
    return types.SimpleNamespace(nccl=nccl, events=events, at_exit=at_exit)


def test_nccl_path_with_a_fake_cupy(fake_cupy):
    from xpnet.distributed import NCCLCommunicator

    comm = NCCLCommunicator(timeout=5)
    params = {"W1": np.arange(6.0).reshape(2, 3).view(_DeviceArray),
              "b1": np.ones(3).view(_DeviceArray)}
    comm.check_consistency(types.SimpleNamespace(params=params))
    comm.broadcast_params(params)
    grads = {k: (2 * v).view(_DeviceArray) for k, v in params.items()}
    loss = comm.allreduce_mean(grads, loss=np.float64(0.5), step=1)
    assert all(isinstance(g, _DeviceArray) for g in grads.values())  # stays on the device
    np.testing.assert_array_equal(grads["W1"], 2 * np.arange(6.0).reshape(2, 3))
    assert float(loss) == 0.5
    assert comm.allreduce_sum([2.0, 3.0]).tolist() == [2.0, 3.0]  # a host buffer, via device
    comm.barrier()
    calls = fake_cupy.nccl.calls
    assert calls[0] == ("bcast", 9, _FakeNCCL.NCCL_FLOAT64, 0)
    # one fused in-place reduction: 9 parameters and the loss
    assert calls[1] == ("allReduce", True, 10, _FakeNCCL.NCCL_FLOAT64, _FakeNCCL.NCCL_SUM)
    assert [c[0] for c in calls] == ["bcast", "allReduce", "allReduce", "allReduce"]
    assert fake_cupy.at_exit == []  # nothing failed


def test_a_failed_rank_flushes_and_lets_the_launcher_forward_before_it_aborts(monkeypatch):
    """The error naming the missing rank is the last thing the rank writes; the abort must
    not overtake it on its way through the launcher (a run once lost it: mpiexec exited 1
    with empty output). So: both streams flushed, then a grace period, then the abort."""
    from xpnet.distributed import communicator

    events = []

    class Stream:
        def __init__(self, name):
            self.name = name

        def flush(self):
            events.append((self.name, time.monotonic()))

    class Comm:
        def abort(self, code):
            events.append((f"abort {code}", time.monotonic()))

    monkeypatch.setattr(sys, "stdout", Stream("stdout"))
    monkeypatch.setattr(sys, "stderr", Stream("stderr"))
    communicator._abort_at_exit(Comm())
    assert [name for name, _ in events] == ["stdout", "stderr", "abort 1"]
    waited = events[2][1] - events[1][1]
    assert waited >= communicator.ABORT_GRACE_SECONDS >= 0.1


def test_nccl_collective_that_never_finishes_aborts_within_the_deadline(fake_cupy):
    from xpnet.distributed import NCCLCommunicator

    comm = NCCLCommunicator(timeout=0.3)
    grads = {"W1": np.ones(4).view(_DeviceArray)}
    fake_cupy.events["done"] = False  # the GPU never finishes: a peer is gone
    comm.allreduce_mean(grads, step=1)  # queued: the host does not wait for it
    start = time.monotonic()
    with pytest.raises(DistributedError, match=r"waited 0 s for the gradient allreduce \(step 1\)"):
        comm.allreduce_mean(grads, step=2)  # waits for step 1 first
    assert time.monotonic() - start < 5
    assert fake_cupy.nccl.calls[-1] == ("abort",)
    assert len(fake_cupy.at_exit) == 1  # the job is aborted when the process exits
    with pytest.raises(DistributedError, match="has failed"):
        comm.allreduce_mean(grads, step=3)


@pytest.mark.gpu
def test_nccl_world_of_one_trains_like_no_communicator():
    _nccl_or_skip()
    import cupy as cp

    import xpnet
    from xpnet.distributed import NCCLCommunicator
    from xpnet.models import MultiLayerNetExtend
    from xpnet.optimizers import Momentum

    cases = _cases_module()
    x, t = cases.toy_data()
    x, t = cp.asarray(x), cp.asarray(t)

    def run(comm):
        xpnet.seed(0)
        net = MultiLayerNetExtend(20, [16, 16], 4, use_batchnorm=True, dtype=np.float64,
                                  device="gpu")
        opt = Momentum(lr=0.1)
        if comm is not None:
            comm.check_consistency(net)
            comm.broadcast_params(net.params)
        rng = np.random.default_rng(3)
        losses = []
        for step in range(6):
            idx = cp.asarray(rng.integers(0, len(x), size=32))
            grads = net.gradient(x[idx], t[idx])
            loss = net.last_loss
            if comm is not None:
                loss = comm.allreduce_mean(grads, loss=loss, step=step + 1)
                assert all(isinstance(g, cp.ndarray) for g in grads.values())
            opt.update(net.params, grads)
            losses.append(float(loss))
        if comm is not None:
            assert comm.sync_batchnorm(net) == 4
            comm.barrier()
            assert comm.allreduce_sum([2.0, 3.0]).tolist() == [2.0, 3.0]
        return {k: cp.asnumpy(v) for k, v in net.params.items()}, losses

    comm = NCCLCommunicator()
    assert (comm.rank, comm.size, comm.is_root) == (0, 1, True)
    with_nccl, l1 = run(comm)
    plain, l2 = run(None)
    np.testing.assert_allclose(l1, l2, rtol=1e-12)
    for k in plain:
        np.testing.assert_allclose(with_nccl[k], plain[k], rtol=1e-12, err_msg=k)


# ---------------------------------------------------------------------------
# The Trainer and `xpnet train --distributed`
# ---------------------------------------------------------------------------


@pytest.mark.slow
@needs_mpi
def test_trainer_on_two_processes_equals_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _ok(_cases("trainer", "--out", one, "--batch", 32, n=0))
    proc = _ok(_cases("trainer", "--out", two, "--batch", 32))
    # rank 0 alone prints: one line per epoch, one final accuracy
    assert proc.stdout.count("=== epoch:1/2") == 1, proc.stdout
    assert proc.stdout.count("Final Test Accuracy") == 1
    assert not (two / "history_rank1.json").read_text() == ""  # rank 1 trained too
    r0, r1 = _params(two / "params_rank0.npz"), _params(two / "params_rank1.npz")
    for k in r0:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)
    _assert_params_close(r0, _params(one / "params_rank0.npz"), rtol=1e-6)
    h1 = json.loads((one / "history_rank0.json").read_text())
    h2 = json.loads((two / "history_rank0.json").read_text())
    assert len(h2["train_loss_list"]) == 12
    np.testing.assert_allclose(h2["train_loss_list"], h1["train_loss_list"], rtol=1e-12)
    # evaluation is split over the ranks and the counts summed: the same accuracies
    assert h2["train_acc_list"] == h1["train_acc_list"]
    assert h2["test_acc_list"] == h1["test_acc_list"]
    assert h2["final_test_acc"] == h1["final_test_acc"]


@pytest.mark.slow
@needs_mpi
def test_trainer_batchnorm_and_a_drawn_seed_keep_the_replicas_identical(tmp_path):
    # --seed 0: each rank's Trainer draws its own seed (the ranks' random states differ);
    # rank 0's is used by all. BatchNorm statistics are averaged before evaluation.
    _ok(_cases("trainer", "--out", tmp_path, "--batch", 32, "--batchnorm", "--seed", 0))
    r0, r1 = _params(tmp_path / "params_rank0.npz"), _params(tmp_path / "params_rank1.npz")
    assert {"running_mean1", "running_var2", "gamma1"} <= set(r0)
    for k in r0:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)
    h = [json.loads((tmp_path / f"history_rank{r}.json").read_text()) for r in (0, 1)]
    assert h[0]["seed"] == h[1]["seed"]
    assert h[0]["test_acc_list"] == h[1]["test_acc_list"]


@pytest.mark.slow
@needs_mpi
def test_trainer_killed_rank_then_resume_reaches_the_uninterrupted_result(tmp_path):
    ck, ref = tmp_path / "ck", tmp_path / "ref"
    ref.mkdir()
    run = ("trainer", "--out", tmp_path, "--batch", 32, "--ckpt", ck, "--ckpt-every", 4)
    proc, seconds = _cases(*run, "--kill-rank", 1, "--kill-at", 6, "--deadline", 10,
                           timeout=90)
    assert proc.returncode != 0 and seconds < 60
    assert not (tmp_path / "params_rank0.npz").exists()
    from xpnet.trainer import _read_checkpoint

    meta, _ = _read_checkpoint(ck / "checkpoint.npz")  # rank 0's, intact
    assert meta["trainer"]["current_iter"] == 4
    proc = _ok(_cases(*run, "--resume"))
    assert proc.stdout.count("resumed from") == 1 and "step 4 of 12" in proc.stdout
    _ok(_cases("trainer", "--out", ref, "--batch", 32, "--ckpt", ref / "ck", "--ckpt-every", 4,
               n=0))
    _assert_params_close(_params(tmp_path / "params_rank0.npz"), _params(ref / "params_rank0.npz"),
                         rtol=1e-6)
    h = json.loads((tmp_path / "history_rank0.json").read_text())
    h_ref = json.loads((ref / "history_rank0.json").read_text())
    np.testing.assert_allclose(h["train_loss_list"], h_ref["train_loss_list"], rtol=1e-12)
    assert h["test_acc_list"] == h_ref["test_acc_list"]


def _xpnet(*args, n=2, **kw):
    cmd = [sys.executable, "-m", "xpnet", "train", *map(str, args)]
    return _run([MPIEXEC, "-n", str(n), *cmd] if n else cmd, **kw)


def _tiny_idx(directory: Path) -> Path:
    """600 training and 300 test images in the IDX format of MNIST (random pixels)."""
    import gzip
    import struct

    directory.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 600), ("t10k", 300)):
        for kind, arr in (("images-idx3", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                          ("labels-idx1", rng.integers(0, 10, n, dtype=np.uint8))):
            with gzip.open(directory / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(struct.pack(">HBB", 0, 8, arr.ndim))
                f.write(struct.pack(">" + "I" * arr.ndim, *arr.shape))
                f.write(arr.tobytes())
    return directory


@pytest.mark.slow
@needs_mpi
def test_xpnet_train_distributed(tmp_path):
    common = ("--model", "TwoLayerNet", "--data-dir", _tiny_idx(tmp_path / "data"),
              "--no-download", "--epochs", 1, "--batch-size", 50, "--seed", 3,
              "--dtype", "float64", "--distributed")
    proc = _ok(_xpnet(*common, "--out", tmp_path / "two", "--checkpoint-dir", tmp_path / "ck"))
    assert "data-parallel over 2 processes (MPICommunicator), 25 samples" in proc.stdout
    assert proc.stdout.count("=== epoch:1/1") == 1 and proc.stdout.count("wrote ") == 1
    history = json.loads((tmp_path / "two" / "history.json").read_text())
    assert len(history["train_loss_list"]) == 12 and history["config"]["distributed"]
    assert (tmp_path / "ck" / "checkpoint.npz").exists()
    # the same command without mpiexec: one process, and it says so
    proc = _ok(_xpnet(*common, "--out", tmp_path / "one", n=0))
    assert "running as single-process training" in proc.stderr
    _assert_params_close(_params(tmp_path / "two" / "params.npz"),
                         _params(tmp_path / "one" / "params.npz"), rtol=1e-6)
