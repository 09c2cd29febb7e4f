"""The fast kernel launch path of ``xpnet.kernels.cuda_launch``, checked without a GPU.

* marshalling, on stand-in device arrays (objects with ``__cuda_array_interface__`` over
  NumPy memory): the flat parameters of Numba's kernel ABI - nitems, itemsize, data pointer
  of offset views, byte strides, tuples flattened, scalar widths - and what is refused;
* the packed parameter buffer, read back through the pointer array ``cuLaunchKernel`` gets;
* the launcher on a fake driver: one compilation per (kernel, device, argument types), the
  fallbacks to Numba's launch;
* against real PTX from ``numba.cuda.compile_ptx`` (needs NVVM, from the
  ``nvidia-cuda-nvcc-cu12`` wheel; skipped with the reason without it): the packed format
  matches the ``.entry``'s ``.param`` list parameter by parameter - for a kernel taking every
  kind of argument, and (slow) for every kernel of ``xpnet.kernels`` with the argument
  types its simulator cases launch it with;
* on a real GPU (marked ``gpu``): the fast path against Numba's launch.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import pickle
import pkgutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from xpnet import backend
from xpnet.kernels import cuda_launch as L

REPO = Path(__file__).resolve().parents[1]


class StandIn:
    """A device array stand-in: NumPy memory behind ``__cuda_array_interface__``."""

    def __init__(self, a, readonly=False):
        self.host = a
        self.__cuda_array_interface__ = {
            "shape": a.shape,
            "strides": None if a.flags.c_contiguous else a.strides,
            "typestr": a.dtype.str,
            "data": (a.ctypes.data if a.size else 0, readonly),
            "version": 3,
        }


def _array_values(a):
    """The ABI values Numba's ``_prepare_args`` writes for the NumPy-backed array ``a``."""
    return [0, 0, a.size, a.itemsize, a.ctypes.data, *a.shape, *a.strides]


# ---------------------------------------------------------------------------
# marshalling
# ---------------------------------------------------------------------------


def test_array_becomes_meminfo_parent_nitems_itemsize_pointer_shape_strides():
    a = np.zeros((2, 3, 4, 5), np.float32)
    m = L.marshal((StandIn(a),))
    assert m.values == [0, 0, 120, 4, a.ctypes.data, 2, 3, 4, 5, 240, 80, 20, 4]
    assert m.key == (("A", np.dtype(np.float32), 4, "C", False),)
    assert m.format == "QQqqQ" + "q" * 8


def test_offset_and_strided_views_pass_their_first_element_and_byte_strides():
    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    view = base[1:, 2::3]  # starts 1 row and 2 columns in; every third column
    m = L.marshal((StandIn(view),))
    assert m.values[4] == base.ctypes.data + 10 * 8 + 2 * 8
    assert m.values == _array_values(view)
    assert m.values[-2:] == [80, 24]
    assert m.key[0][3] == "A"  # never typed C-contiguous: the kernel would index by shape
    backwards = base[::-1]
    assert L.marshal((StandIn(backwards),)).values[-2:] == [-80, 8]
    assert L.marshal((StandIn(base.T),)).key[0][3] == "A"  # F order is not C


def test_layout_is_c_only_when_strides_say_so():
    a = np.zeros((3, 1, 4), np.int32)
    assert L.marshal((StandIn(a),)).key[0][3] == "C"
    odd_unit_stride = np.lib.stride_tricks.as_strided(a, (3, 1, 4), (16, 999, 4))
    # a dimension of size 1 may have any stride: still C-contiguous, as for NumPy
    assert L.marshal((StandIn(odd_unit_stride),)).key[0][3] == "C"
    assert L.marshal((StandIn(np.zeros(0, np.float32)),)).key[0][3] == "C"
    assert L.marshal((StandIn(np.zeros((), np.float32)),)).format == "QQqqQ"


def test_tuples_are_flattened_in_order():
    a, b = np.zeros(3, np.float32), np.ones((2, 2), np.float32)
    m = L.marshal(((StandIn(a), StandIn(b)), np.float32(2)))
    assert m.values == _array_values(a) + _array_values(b) + [np.float32(2)]
    assert m.key[0][0] == "T" and len(m.key[0][1]) == 2
    assert m.format == "QQqqQqq" + "QQqqQqqqq" + "f"
    types = L.numba_signature(m.key)
    assert str(types[0]) == "Tuple(array(float32, 1d, C), array(float32, 2d, C))"
    same = L.marshal(((StandIn(a), StandIn(a)),))
    assert str(L.numba_signature(same.key)[0]) == "UniTuple(array(float32, 1d, C) x 2)"


@pytest.mark.parametrize("value,code,numba_type", [
    (np.float32(1.5), "f", "float32"), (np.float64(1.5), "d", "float64"),
    (np.float16(1.5), "e", "float16"), (np.int32(-3), "i", "int32"),
    (np.int64(-3), "q", "int64"), (np.uint32(3), "I", "uint32"), (np.uint64(2**63), "Q", "uint64"),
    (np.int8(-1), "b", "int8"), (np.uint8(255), "B", "uint8"), (np.int16(-2), "h", "int16"),
    (np.bool_(True), "?", "bool"), (True, "?", "bool"), (7, "q", "int64"),
    (2.5, "d", "float64"),
])
def test_scalars_have_the_width_of_their_numba_type(value, code, numba_type):
    m = L.marshal((value,))
    assert m.format == code and m.values == [value]
    assert str(L.numba_signature(m.key)[0]) == numba_type
    packed = struct.pack("@" + code, *m.values)
    assert struct.unpack("@" + code, packed)[0] == value


@pytest.mark.parametrize("arg", [
    np.zeros(3, np.float32),  # host memory: Numba's launch (the simulator) takes it
    np.complex64(1j), 1j, "text", None, object(), 2**63, -(2**63) - 1,
])
def test_what_the_fast_path_does_not_take_is_refused(arg):
    with pytest.raises(TypeError, match="does not take"):
        L.marshal((arg,))
    launcher = L.FastLauncher(RecordingDriver())
    assert launcher.launch(_any_kernel(), 1, 1, 0, (arg,)) is False
    assert launcher.compiles == 0


def test_masked_arrays_are_refused():
    masked = StandIn(np.zeros(3, np.float32))
    masked.__cuda_array_interface__["mask"] = StandIn(np.ones(3, np.bool_))
    with pytest.raises(TypeError, match="does not take"):
        L.marshal((masked,))


def test_readonly_arrays_are_typed_readonly():
    m = L.marshal((StandIn(np.zeros(2, np.float32), readonly=True),))
    assert m.key[0][4] is True
    assert "readonly" in str(L.numba_signature(m.key)[0])


@pytest.mark.parametrize("grid,expected", [
    (5, (5, 1, 1)), ((5,), (5, 1, 1)), ((2, 3), (2, 3, 1)), ([2, 3, 4], (2, 3, 4)),
    (np.int64(7), (7, 1, 1)), (0, None), ((1, 2, 3, 4), None), ((2, -1), None),
    ("8", None), (8.0, None),
])
def test_launch_dimensions(grid, expected):
    assert L._dims(grid) == expected


def test_stream_handles():
    assert L._stream_ptr(0) == 0 and L._stream_ptr(None) == 0
    assert L._stream_ptr(FakeNumbaStream(1234)) == 1234
    assert L._stream_ptr(FakeNumbaStream(None)) == 0  # a ctypes NULL: the default stream
    assert L._stream_ptr(FakeCupyStream(99)) == 99
    assert L._stream_ptr("stream") is None and L._stream_ptr(5) is None


class FakeNumbaStream:
    def __init__(self, ptr):
        self.handle = ctypes.c_void_p(ptr)


class FakeCupyStream:
    def __init__(self, ptr):
        self.ptr = ptr


# ---------------------------------------------------------------------------
# the parameter buffer
# ---------------------------------------------------------------------------


def read_parameters(params_ptr, fmt):
    """What ``cuLaunchKernel`` reads: parameter i at the address in ``void*[i]``."""
    pointers = (ctypes.c_void_p * len(fmt)).from_address(params_ptr)
    return [struct.unpack("@" + code, ctypes.string_at(pointers[i], struct.calcsize(code)))[0]
            for i, code in enumerate(fmt)]


def test_packed_buffer_holds_each_value_at_its_aligned_offset():
    fmt = "?qbeIdHf"  # mixed widths: every value after the first needs padding before it
    assert L._offsets(fmt) == [0, 8, 16, 18, 20, 24, 32, 36]
    plan = L.LaunchPlan(key=None, fmt=fmt, function=None, params=None)
    values = [True, -(2**62), -5, np.float16(0.5), 2**32 - 1, 1e300, 65535, np.float32(0.25)]
    params_ptr = plan.pack(values)
    assert read_parameters(params_ptr, fmt) == values
    again = [False, 1, 2, np.float16(3), 4, 5.0, 6, np.float32(7)]
    assert plan.pack(again) == params_ptr  # the same buffer, rewritten: no allocation
    assert read_parameters(params_ptr, fmt) == again


def test_plan_refuses_arguments_that_differ_from_its_types():
    c_array = np.zeros((4, 6), np.float32)
    key = L.marshal((StandIn(c_array), 3)).key
    plan = L.LaunchPlan(key, L._format(key), function=None, params=None)
    plan.pack_checked((StandIn(c_array), 3))
    with pytest.raises(TypeError, match=r"argument 0 is array\(float32, 2d, A\), but the kernel "
                                        r"was compiled for array\(float32, 2d, C\)"):
        plan.pack_checked((StandIn(c_array[:, ::2]), 3))
    with pytest.raises(TypeError, match="argument 1 is float64"):
        plan.pack_checked((StandIn(c_array), 3.0))
    with pytest.raises(TypeError, match="1 arguments, but the kernel was compiled for 2"):
        plan.pack_checked((StandIn(c_array),))


# ---------------------------------------------------------------------------
# PTX (needs NVVM; no GPU)
# ---------------------------------------------------------------------------


def _nvvm_missing() -> str | None:
    try:
        from numba import cuda

        cuda.compile_ptx(lambda a: None, (_numba_types().float32[::1],), cc=(7, 5))
    except Exception as exc:  # NVVM (libnvvm) not found, or numba-cuda missing
        return (f"numba.cuda.compile_ptx cannot run here ({type(exc).__name__}: {exc}); "
                "pip install nvidia-cuda-nvcc-cu12 nvidia-cuda-nvrtc-cu12")
    return None


def _numba_types():
    from numba import types

    return types


needs_nvvm = pytest.mark.skipif(bool(_nvvm_missing()), reason=str(_nvvm_missing()))


def _any_kernel():
    from numba import cuda

    @cuda.jit
    def every_kind(a, t, h, flag, small, big, x32, x64, z):
        i = cuda.grid(1)
        if i < a.size and flag:
            a[i] = t[0][i] * t[1][i] + h + small + big + x32 + x64 + z[()]

    return every_kind


EVERY_KIND_ARGS = (
    StandIn(np.zeros(8, np.float32)),
    (StandIn(np.zeros(8, np.float32)), StandIn(np.zeros((4, 4), np.float32)[:, 0])),
    np.float16(1), np.bool_(True), np.int8(2), np.uint64(3), np.int32(4), 5.0,
    StandIn(np.zeros((), np.float32)),
)


@needs_nvvm
def test_every_kind_of_argument_matches_the_ptx_parameters():
    from numba import cuda

    m = L.marshal(EVERY_KIND_ARGS)
    ptx, _ = cuda.compile_ptx(_any_kernel().py_func, L.numba_signature(m.key), cc=(9, 0))
    params = L.ptx_params(ptx)
    assert L.format_mismatch(m.format, params) is None
    assert len(params) == len(m.values) == 7 + 7 + 7 + 6 + 5
    assert params[21:27] == [("u", 2), ("u", 1), ("u", 1), ("u", 8), ("u", 4), ("f", 8)]


def test_format_mismatch_names_the_parameter():
    assert L.format_mismatch("qf", [("u", 8), ("f", 4)]) is None
    assert L.format_mismatch("qf", [("u", 8)]) == "2 packed values for 1 kernel parameters"
    assert "parameter 1: packed as 'i' (4 bytes) but the PTX has .u64" in L.format_mismatch(
        "qi", [("u", 8), ("u", 8)])
    assert "parameter 0" in L.format_mismatch("i", [("f", 4)])  # an int where a float is


# ---------------------------------------------------------------------------
# the launcher, on a fake driver
# ---------------------------------------------------------------------------


class RecordingDriver:
    """A driver that loads nothing and launches nothing: it records, reading every launch's
    parameters back through the pointer array as the CUDA driver would."""

    def __init__(self, cc=(9, 0), fail_load=False):
        self.cc, self.fail_load = cc, fail_load
        self.current = 0
        self.loads, self.launches = [], []

    def device(self):
        return self.current

    def compute_capability(self):
        return self.cc

    def load(self, ptx, entry):
        if self.fail_load:
            raise RuntimeError("CUDA_ERROR_UNSUPPORTED_PTX_VERSION")
        assert f".entry {entry}(" in ptx
        self.loads.append(entry)
        function = type("Function", (), {})()
        function.ptr = 1000 + len(self.loads)
        return function

    def launch_kernel(self, function_ptr, grid, block, stream_ptr, params_ptr):
        self.launches.append((function_ptr, grid, block, stream_ptr, params_ptr))


def _im2col_args(dtype=np.float32, x=None):
    x = np.zeros((2, 3, 5, 5), dtype) if x is None else x
    col = np.zeros((2 * 3 * 3, 3 * 9), dtype)
    return (StandIn(x), StandIn(col), 3, 3, 1, 0, 3, 3)


@needs_nvvm
def test_launch_packs_what_numba_would_and_compiles_once_per_argument_types():
    from xpnet.kernels.cuda import _im2col_kernel

    driver = RecordingDriver()
    launcher = L.FastLauncher(driver)
    args = _im2col_args()
    assert launcher.launch(_im2col_kernel, 4, (64,), FakeNumbaStream(77), args)
    function_ptr, grid, block, stream, params_ptr = driver.launches[-1]
    assert (function_ptr, grid, block, stream) == (1001, (4, 1, 1), (64, 1, 1), 77)
    plan = launcher.plan(_im2col_kernel, args)
    assert plan.format == L.marshal(args).format
    assert read_parameters(params_ptr, plan.format) == L.marshal(args).values

    # other arrays of the same types: no compilation, the same module
    other = _im2col_args(x=np.ones((2, 3, 5, 5), np.float32))
    assert launcher.launch(_im2col_kernel, 1, 1, 0, other)
    assert launcher.compiles == 1 and len(driver.loads) == 1
    assert read_parameters(driver.launches[-1][4], plan.format) == L.marshal(other).values
    # another dtype, a strided input: compiled for each
    assert launcher.launch(_im2col_kernel, 1, 1, 0, _im2col_args(np.float64))
    strided = np.zeros((2, 3, 5, 10), np.float32)[..., ::2]
    assert launcher.launch(_im2col_kernel, 1, 1, 0, _im2col_args(x=strided))
    assert launcher.compiles == 3
    assert launcher.plan(_im2col_kernel, _im2col_args(x=strided)).key[0][3] == "A"
    # another device: its own module
    driver.current = 1
    assert launcher.launch(_im2col_kernel, 1, 1, 0, args)
    assert launcher.compiles == 4 and len(driver.loads) == 4


@needs_nvvm
def test_ptx_that_needs_linking_goes_to_numba():
    from numba import cuda

    @cuda.jit
    def half_add(a, h):
        a[0] = a[0] + h  # float16 arithmetic: calls a C++ shim Numba links in

    driver = RecordingDriver()
    launcher = L.FastLauncher(driver)
    args = (StandIn(np.zeros(1, np.float16)), np.float16(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known limit (float16 is for inference): no warning
        assert launcher.launch(half_add, 1, 1, 0, args) is False
        assert launcher.launch(half_add, 1, 1, 0, args) is False  # remembered
    assert launcher.compiles == 1 and not driver.loads
    assert "external functions" in launcher.plan(half_add, args).reason


@needs_nvvm
def test_a_failed_load_goes_to_numba_with_a_warning():
    from xpnet.kernels.cuda import _im2col_kernel

    launcher = L.FastLauncher(RecordingDriver(fail_load=True))
    with pytest.warns(RuntimeWarning, match="loading its PTX failed.*UNSUPPORTED_PTX"):
        assert launcher.launch(_im2col_kernel, 1, 1, 0, _im2col_args()) is False


@needs_nvvm
def test_a_failure_outside_numba_while_compiling_is_reported_once():
    from xpnet.kernels.cuda import _im2col_kernel

    class NoDevice(RecordingDriver):
        def compute_capability(self):
            raise RuntimeError("cudaErrorNoDevice")

    launcher = L.FastLauncher(NoDevice())
    with pytest.warns(RuntimeWarning, match="compile_ptx failed: RuntimeError: cudaErrorNoDevice"):
        assert launcher.launch(_im2col_kernel, 1, 1, 0, _im2col_args()) is False


def test_kernels_with_options_compile_ptx_would_lose_go_to_numba():
    from numba import cuda

    @cuda.jit(debug=True, opt=False)
    def checked(a):
        a[0] = 1

    launcher = L.FastLauncher(RecordingDriver())
    assert launcher.launch(checked, 1, 1, 0, (StandIn(np.zeros(1, np.float32)),)) is False
    assert launcher.compiles == 0
    assert "debug" in launcher.plan(checked, (StandIn(np.zeros(1, np.float32)),)).reason


@needs_nvvm
def test_a_kernel_that_does_not_compile_is_left_to_numba_to_report():
    from numba import cuda

    @cuda.jit
    def wrong(a):
        a[0] = a.no_such_attribute

    launcher = L.FastLauncher(RecordingDriver())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert launcher.launch(wrong, 1, 1, 0, (StandIn(np.zeros(1, np.float32)),)) is False


def test_no_fast_path_without_a_gpu():
    if backend.gpu_available():
        pytest.skip("a GPU is present")
    assert L._make_fast_launcher() is None


# ---------------------------------------------------------------------------
# the CuPy glue, on a fake CuPy: launch() from kernels.cuda down to cuLaunchKernel
# ---------------------------------------------------------------------------


class FakeCupyArray:
    """The attributes the fast path reads from a CuPy array, over NumPy memory."""

    def __init__(self, a):
        self.host = a
        self.shape, self.strides, self.dtype, self.size = a.shape, a.strides, a.dtype, a.size
        self.data = type("MemoryPointer", (), {"ptr": a.ctypes.data})()
        self.flags = type("Flags", (), {"c_contiguous": a.flags.c_contiguous})()


class FakeCupy:
    """``cupy`` as CupyDriver uses it: device, compute capability, modules, cuLaunchKernel."""

    def __init__(self):
        self.calls = []
        fake = self

        class Module:
            def load(self, image):
                assert isinstance(image, bytes) and b".entry" in image
                fake.calls.append(("load", image))

            def get_function(self, name):
                fake.calls.append(("get_function", name))
                return type("Function", (), {"ptr": 4242, "module": self})()

        def launch_kernel(*args):
            fake.calls.append(("launchKernel", args))

        ns = type("NS", (), {})
        self.cuda = ns()
        self.cuda.runtime = ns()
        self.cuda.runtime.getDevice = lambda: 0
        self.cuda.driver = ns()
        self.cuda.driver.launchKernel = launch_kernel
        self.cuda.function = ns()
        self.cuda.function.Module = Module
        self.cuda.Device = lambda device: type("Device", (), {"compute_capability": "90"})()


@needs_nvvm
def test_launch_from_kernels_cuda_to_cu_launch_kernel(monkeypatch):
    from xpnet.kernels import cuda as gpu

    fake = FakeCupy()
    monkeypatch.setattr(L, "_fast", L.FastLauncher(L.CupyDriver(fake)))
    monkeypatch.setattr(L, "_fast_checked", True)
    monkeypatch.setitem(L._READERS, FakeCupyArray, L._read_cupy)
    x = FakeCupyArray(np.zeros((2, 3, 5, 5), np.float32))
    col = FakeCupyArray(np.zeros((2 * 3 * 3, 3 * 9), np.float32))
    gpu.launch_im2col(x, col, 3, 3, 2, 1, stream=FakeNumbaStream(555), threads=32)

    assert [c[0] for c in fake.calls] == ["load", "get_function", "launchKernel"]
    f, gx, gy, gz, bx, by, bz, shared, stream, params, extra = fake.calls[2][1]
    blocks = -(-col.size // 32)  # one thread per col entry
    assert (f, gx, gy, gz, bx, by, bz, shared, stream, extra) == (4242, blocks, 1, 1, 32, 1, 1,
                                                                  0, 555, 0)
    expected = L.marshal((StandIn(x.host), StandIn(col.host), 3, 3, 2, 1, 3, 3))
    assert read_parameters(params, expected.format) == expected.values
    assert fake.calls[1][1] in fake.calls[0][1].decode()  # the entry of the loaded PTX


@needs_nvvm
def test_the_host_cost_benchmark_runs_without_a_gpu(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from gpu_launch_cost import host_marshal_cost

    table = host_marshal_cost(calls=100)
    assert table.pop("compiles") == 2  # im2col and axpy, once each
    assert set(table) == {f"{k}_{w}_us" for k in ("im2col", "axpy")
                          for w in ("cupy_like", "array_interface")}
    assert all(0 < us < 10_000 for us in table.values()), table


def test_fast_path_needs_a_gpu_and_not_the_simulator(monkeypatch):
    from numba import config

    fake = FakeCupy()
    monkeypatch.setattr(backend, "gpu_available", lambda: True)
    monkeypatch.setattr(backend, "require_gpu", lambda: fake)
    assert isinstance(L._make_fast_launcher(), L.FastLauncher)
    monkeypatch.setenv("XPNET_FAST_LAUNCH", "0")
    assert L._make_fast_launcher() is None
    monkeypatch.delenv("XPNET_FAST_LAUNCH")
    monkeypatch.setattr(config, "ENABLE_CUDASIM", True)
    assert L._make_fast_launcher() is None


def test_numbas_launch_gets_foreign_device_arrays_as_views_made_without_a_sync(monkeypatch):
    from numba import cuda

    made = []
    monkeypatch.setattr(cuda, "as_cuda_array",
                        lambda a, sync=True: made.append((a, sync)) or ("view", a))
    foreign, host = StandIn(np.zeros(2, np.float32)), np.zeros(2, np.float32)
    numba_array = type("DeviceNDArray", (), {"_numba_type_": "array",
                                             "__cuda_array_interface__": {}})()
    got = L._numba_arguments((foreign, (foreign, host), numba_array, np.float32(1), 3))
    assert got == (("view", foreign), (("view", foreign), host), numba_array, np.float32(1), 3)
    assert made == [(foreign, False), (foreign, False)]


def test_launch_falls_back_to_numbas_launch(monkeypatch):
    launched = []

    class Kernel:
        def __getitem__(self, config):
            return lambda *args: launched.append((config, args))

    monkeypatch.setattr(L, "_fast", L.FastLauncher(RecordingDriver()))
    monkeypatch.setattr(L, "_fast_checked", True)
    host = np.zeros(3, np.float32)  # the simulator's arrays: not for the fast path
    L.launch(Kernel(), 2, 32, 0, host, np.float32(1))
    assert launched == [((2, 32, 0), (host, np.float32(1)))]
    assert L._fast.compiles == 0


# ---------------------------------------------------------------------------
# every kernel of xpnet.kernels, with the argument types its simulator cases launch it with
# ---------------------------------------------------------------------------

RECORDER = '''
"""pytest plugin: record the argument types of every kernel launch (simulator run)."""
import os
import pickle
import sys

import numpy as np

from xpnet.kernels import cuda_launch

_launch = cuda_launch.launch
_seen = {}


class _Device:
    def __init__(self, a):
        self.__cuda_array_interface__ = {
            "shape": a.shape, "typestr": a.dtype.str, "version": 3,
            "strides": None if a.flags.c_contiguous else a.strides,
            "data": (a.ctypes.data if a.size else 0, False)}


def _as_device(a):
    if isinstance(a, tuple):
        return tuple(_as_device(x) for x in a)
    a = getattr(a, "_ary", a)  # the simulator's device arrays wrap a NumPy array
    return _Device(a) if isinstance(a, np.ndarray) else a


def recording_launch(kernel, grid, block, stream, *args):
    key = cuda_launch.marshal(_as_device(args)).key
    _seen.setdefault((kernel.py_func.__module__, kernel.py_func.__name__), set()).add(key)
    return _launch(kernel, grid, block, stream, *args)


# modules that import it later get the recording launch; those that already did, too
cuda_launch.launch = recording_launch
for _module in list(sys.modules.values()):
    if getattr(_module, "launch", None) is _launch:
        _module.launch = recording_launch


def pytest_sessionfinish(session):
    with open(os.environ["XPNET_LAUNCH_RECORD"], "wb") as f:
        pickle.dump(_seen, f)
'''


def _kernels_in_package():
    """Every ``@cuda.jit`` kernel (not device function) defined in ``xpnet.kernels``."""
    from numba.cuda.dispatcher import CUDADispatcher

    import xpnet.kernels as package

    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if (isinstance(obj, CUDADispatcher) and not obj.targetoptions.get("device")
                    and obj.py_func.__module__ == module.__name__):
                found[module.__name__, name] = obj
    return found


@pytest.mark.slow
@needs_nvvm
def test_every_kernel_matches_its_ptx_parameters(tmp_path):
    cases = sorted(str(p) for p in (REPO / "tests").glob("*sim_cases.py"))
    (tmp_path / "launch_recorder.py").write_text(RECORDER)
    record = tmp_path / "launches.pkl"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", XPNET_LAUNCH_RECORD=str(record))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), str(REPO),
                                                      env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-p", "launch_recorder", *cases],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    seen = pickle.loads(record.read_bytes())

    from numba import cuda

    kernels = _kernels_in_package()
    never_launched = sorted(f"{m}.{n}" for m, n in kernels if (m, n) not in seen)
    assert not never_launched, (f"no simulator case (tests/*sim_cases.py) launches "
                                f"{never_launched} through cuda_launch.launch")
    checked = 0
    for (module, name), kernel in sorted(kernels.items()):
        # a few type combinations per kernel, float32 (training's dtype) first
        for key in sorted(seen[module, name], key=lambda k: ("float32" not in repr(k),
                                                             repr(k)))[:3]:
            ptx, _ = cuda.compile_ptx(kernel.py_func, L.numba_signature(key), cc=(9, 0))
            where = f"{module}.{name}{L.numba_signature(key)}"
            mismatch = L.format_mismatch(L._format(key), L.ptx_params(ptx))
            assert mismatch is None, f"{where}: {mismatch}"
            # only float16 arithmetic may need Numba's linking (and so Numba's launch)
            if "float16" not in str(L.numba_signature(key)):
                assert not L._EXTERN.search(ptx), f"{where} would be left to Numba's launch"
            checked += 1
    assert checked >= len(kernels)


# ---------------------------------------------------------------------------
# a real GPU
# ---------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(),
                    reason=f"no usable GPU: {backend.gpu_unavailable_reason()}")
def test_fast_path_on_a_gpu_equals_numbas_launch():
    from numba import cuda

    from xpnet.kernels import cuda as gpu
    from xpnet.kernels import reference as ref

    cp = backend.require_gpu()
    fast = L._fast_launcher()
    assert fast is not None, "the fast path is off on this GPU machine (XPNET_FAST_LAUNCH=0?)"
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((4, 3, 9, 8)).astype(np.float32)
    strided_host = x_host[:, :, :, ::2]
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:  # a stream of its own: the launches must land on CuPy's current stream
        x = cp.asarray(x_host)
        fast_col = gpu.im2col(x, 3, 3, 2, 1)  # through launch(): the fast path
        out_h, out_w = gpu._out_hw(x.shape, 3, 3, 2, 1)
        numba_col = cp.zeros_like(fast_col)  # the same kernel by Numba's own launch
        gpu._im2col_kernel[64, 128, gpu._stream()](
            cuda.as_cuda_array(x, sync=False), cuda.as_cuda_array(numba_col, sync=False),
            3, 3, 2, 1, out_h, out_w)
        # a strided view: compiled for layout 'A', indexed by its strides
        strided = x[:, :, :, ::2]
        strided_col = cp.empty((4 * 9 * 4, 3 * 9), cp.float32)
        L.launch(gpu._im2col_kernel, 8, 128, gpu._stream(), strided, strided_col,
                 3, 3, 1, 1, 9, 4)
        # maxpool_backward passes the mapped error flag (a Numba array) beside CuPy arrays
        out, argmax = gpu.maxpool_forward(x, 2, 2, 2, 0)
        dx = gpu.maxpool_backward(out, argmax, x.shape, 2, 2, 2, 0)
    stream.synchronize()

    expected = ref.im2col(x_host, 3, 3, 2, 1)
    np.testing.assert_array_equal(numba_col.get(), expected)
    np.testing.assert_array_equal(fast_col.get(), expected)
    np.testing.assert_array_equal(strided_col.get(), ref.im2col(strided_host, 3, 3, 1, 1))
    out_ref, arg_ref = ref.maxpool_forward(x_host, 2, 2, 2, 0)
    np.testing.assert_array_equal(out.get(), out_ref)
    np.testing.assert_array_equal(dx.get(), ref.maxpool_backward(out_ref, arg_ref, x.shape,
                                                                 2, 2, 2, 0))
    # all of it went through the fast path (float16 plans are other tests' inference, whose
    # arithmetic Numba links in: docs/gpu.md, Launches)
    used = (gpu._im2col_kernel, gpu._maxpool_forward_kernel, gpu._maxpool_backward_kernel)
    plans = {key: plan for (kernel, _, key), plan in fast._plans.items()
             if kernel in used and "float16" not in str(L.numba_signature(key))}
    left = {str(L.numba_signature(key)): plan for key, plan in plans.items()
            if not isinstance(plan, L.LaunchPlan)}
    assert not left, f"left to Numba: {left}"
    assert len(plans) >= 4  # im2col C and A layouts, maxpool forward and backward
    assert any(key[0][3] == "A" for key in plans)
    # the fallback hands Numba a view of the same memory
    assert L._numba_arguments((x,))[0].device_ctypes_pointer.value == x.data.ptr
