"""xpnet.backend without a GPU: the three 'why not' messages, device mixing, the
out-of-memory hint and the GPU random-state scheme, with a stand-in ``cupy`` module where
the real one would be needed."""

import types

import numpy as np
import pytest

from xpnet import backend
from xpnet.backend import DeviceError


class _FakeArray:
    """Stands in for cupy.ndarray: only the type matters to the backend."""

    def __init__(self, data):
        self.data = np.asarray(data)
        self.shape = self.data.shape


def _fake_cupy(device_count=1, driver_error=None):
    cp = types.ModuleType("cupy")
    cp.ndarray = _FakeArray

    def get_device_count():
        if driver_error is not None:
            raise driver_error
        return device_count

    cp.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=get_device_count),
        memory=types.SimpleNamespace(OutOfMemoryError=type("OutOfMemoryError", (MemoryError,),
                                                           {})),
        get_current_stream=lambda: types.SimpleNamespace(ptr=1234),
    )
    cp.asarray = _FakeArray
    cp.asnumpy = lambda a: a.data.copy()
    cp.random = types.SimpleNamespace(default_rng=np.random.default_rng)
    return cp


@pytest.fixture
def no_cupy(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_import_error", ImportError("No module named 'cupy'"))


@pytest.fixture
def fake_cupy(monkeypatch):
    cp = _fake_cupy()
    monkeypatch.setattr(backend, "_cupy", cp)
    monkeypatch.setattr(backend, "_cupy_import_error", None)
    return cp


# ---------------------------------------------------------------------------
# device='gpu' when it cannot work: one sentence saying which piece is missing
# ---------------------------------------------------------------------------


def _gpu_error():
    with pytest.raises(DeviceError) as info:
        backend.check_device("gpu")
    message = str(info.value)
    assert message.startswith("device 'gpu' was asked for, but ")
    assert message.count(". ") == 0, "one sentence"
    return message


def test_gpu_without_cupy_says_install_cupy(no_cupy):
    assert not backend.gpu_available()
    message = _gpu_error()
    assert "CuPy is not installed" in message and "No module named 'cupy'" in message
    assert "pip install -e '.[gpu]'" in message and "xpnet[" not in message


def test_gpu_without_driver_says_install_driver(monkeypatch):
    error = RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    monkeypatch.setattr(backend, "_cupy", _fake_cupy(driver_error=error))
    assert not backend.gpu_available()
    message = _gpu_error()
    assert "no CUDA driver could be used" in message and "cudaErrorInsufficientDriver" in message
    assert "install the NVIDIA driver" in message


def test_gpu_without_visible_device_says_check_visibility(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", _fake_cupy(device_count=0))
    assert not backend.gpu_available()
    message = _gpu_error()
    assert "no GPU is visible" in message and "CUDA_VISIBLE_DEVICES" in message


def test_every_gpu_entry_point_raises_the_same_error(no_cupy):
    for call in (lambda: backend.require_gpu(), lambda: backend.namespace("gpu"),
                 lambda: backend.to_device(np.zeros(2), "gpu"),
                 lambda: backend.as_cupy(np.zeros(2)), backend.current_stream_ptr):
        with pytest.raises(DeviceError, match="CuPy is not installed"):
            call()


def test_device_names(fake_cupy):
    assert backend.gpu_available()
    assert backend.check_device("CPU") == "cpu"
    assert backend.check_device("cuda") == "gpu"
    assert backend.namespace("gpu") is fake_cupy
    assert backend.namespace("cpu") is np
    with pytest.raises(ValueError, match=r"unknown device 'tpu'; choose one of \('cpu', 'gpu'\)"):
        backend.check_device("tpu")


# ---------------------------------------------------------------------------
# arrays of two devices
# ---------------------------------------------------------------------------


def test_mixing_devices_is_an_error_naming_both(fake_cupy):
    host, dev = np.zeros(3), _FakeArray(np.zeros(3))
    assert backend.get_array_module(host, host) is np
    assert backend.get_array_module(dev, None, dev) is fake_cupy
    assert backend.device_of(dev) == "gpu" and backend.device_of(host) == "cpu"
    with pytest.raises(DeviceError, match=r"cpu and gpu") as info:
        backend.get_array_module(host, dev)
    assert "to_device" in str(info.value)


def test_moving_between_devices(fake_cupy):
    dev = backend.to_device(np.arange(3.0), "gpu")
    assert isinstance(dev, _FakeArray)
    back = backend.to_device(dev, "cpu")
    assert isinstance(back, np.ndarray) and back.tolist() == [0.0, 1.0, 2.0]
    host = np.ones(2)
    assert backend.to_device(host, "cpu") is host  # no copy when already there
    assert backend.to_scalar(np.float32(2.5)) == 2.5


def test_current_stream_pointer(fake_cupy):
    assert backend.current_stream_ptr() == 1234


# ---------------------------------------------------------------------------
# out of GPU memory
# ---------------------------------------------------------------------------


def test_out_of_memory_suggests_smaller_batch(fake_cupy):
    oom = fake_cupy.cuda.memory.OutOfMemoryError("Out of memory allocating 1,048,576 bytes")
    with pytest.raises(backend.GPUOutOfMemoryError) as info:
        with backend.gpu_memory_hint(batch_size=100):
            raise oom
    message = str(info.value)
    assert "at batch size 100" in message and "try a smaller batch size (e.g. 50)" in message
    assert "1,048,576 bytes" in message
    assert info.value.__cause__ is oom
    assert isinstance(info.value, MemoryError) and isinstance(info.value, DeviceError)


def test_other_errors_pass_through_the_memory_hint(fake_cupy):
    with pytest.raises(ValueError, match="unrelated"):
        with backend.gpu_memory_hint(batch_size=100):
            raise ValueError("unrelated")
    with backend.gpu_memory_hint():
        pass


def test_memory_hint_without_cupy_is_transparent(no_cupy):
    with pytest.raises(MemoryError, match="host"):
        with backend.gpu_memory_hint(batch_size=8):
            raise MemoryError("host")


# ---------------------------------------------------------------------------
# random state for checkpoints
# ---------------------------------------------------------------------------


def test_cpu_rng_state_round_trip():
    backend.seed(3)
    rng = backend.get_rng(np)
    rng.random(5)
    state = backend.get_rng_state(np)
    a = backend.get_rng(np).random(4)
    backend.set_rng_state(state, np)
    np.testing.assert_array_equal(backend.get_rng(np).random(4), a)


def test_gpu_rng_reseed_scheme_resumes_the_same_stream(fake_cupy):
    backend.seed(5)
    backend.get_rng(fake_cupy).random(3)
    state = backend.get_rng_state(fake_cupy)
    assert state["scheme"] == "reseed" and state["counter"] == 1
    assert 0 <= state["seed"] < 2**64
    after_checkpoint = backend.get_rng(fake_cupy).random(6)
    # a fresh process (reseeded differently) that loads the checkpoint draws the same
    backend.seed(999)
    backend.set_rng_state(state, fake_cupy)
    np.testing.assert_array_equal(backend.get_rng(fake_cupy).random(6), after_checkpoint)
    # and its next checkpoint continues the same sequence of seeds
    backend.seed(5)
    backend.get_rng_state(fake_cupy)
    expected_next = backend.get_rng_state(fake_cupy)
    backend.seed(999)
    backend.set_rng_state(state, fake_cupy)
    assert backend.get_rng_state(fake_cupy) == expected_next


def test_gpu_rng_seeds_are_reproducible_and_distinct(fake_cupy):
    backend.seed(5)
    first = [backend.get_rng_state(fake_cupy)["seed"] for _ in range(3)]
    backend.seed(5)
    assert [backend.get_rng_state(fake_cupy)["seed"] for _ in range(3)] == first
    assert len(set(first)) == 3
    backend.seed(6)
    assert backend.get_rng_state(fake_cupy)["seed"] != first[0]
    backend.seed(None)  # unseeded: still distinct seeds, and still a usable generator
    unseeded = [backend.get_rng_state(fake_cupy)["seed"] for _ in range(2)]
    assert unseeded[0] != unseeded[1]


def test_gpu_rng_state_rejects_other_data(fake_cupy):
    with pytest.raises(ValueError, match="taken by get_rng_state"):
        backend.set_rng_state({"bit_generator": "PCG64"}, fake_cupy)


# ---------------------------------------------------------------------------
# dtype
# ---------------------------------------------------------------------------


def test_default_dtype_and_float_check():
    assert backend.get_default_dtype() == np.float32
    backend.set_default_dtype("float64")
    assert backend.get_default_dtype() == np.float64
    assert backend.check_float_dtype(np.float16) == np.float16
    with pytest.raises(TypeError, match="a floating dtype .* got int32"):
        backend.check_float_dtype(np.int32)
