"""The GPU kernels of ``kernels.cuda`` under Numba's CUDA simulator: the kernel contract of
``tests/kernel_contract.py`` (the ``cuda-sim`` backend), then what is the GPU's own (the
atomic col2im, the launch guards, the lazily raised argmax error).

Not collected by a plain ``pytest`` run (the name does not start with ``test_``): the
simulator must be switched on before ``numba.cuda`` is first imported, so
``tests/test_cuda_sim.py`` runs this file in its own process with NUMBA_ENABLE_CUDASIM=1.
Run by hand:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda_sim_cases.py

The simulator runs the very ``@cuda.jit`` kernels and ``launch_*`` functions the GPU runs,
on NumPy arrays, one Python thread per CUDA thread - so shapes are tiny, but every index
computation (strides, padding, odd sizes, the grid-stride loops) is exercised.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 set before numba.cuda is imported",
                allow_module_level=True)

from kernel_contract import *  # noqa: E402, F403 - the contract's tests, on the simulator
from kernel_contract import make_backend, out_hw, random_case  # noqa: E402
from numba import config  # noqa: E402

from xpnet.kernels import cuda as gpu  # noqa: E402
from xpnet.kernels import reference as ref  # noqa: E402

# the atomic col2im lives with the benchmarks that compare it with the gather
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gpu_col2im_scatter import launch_col2im_scatter  # noqa: E402

DTYPES = [np.float32, np.float64]


@pytest.fixture
def backend():
    return make_backend("cuda-sim")


def test_simulator_is_on():
    # guards against the whole file silently testing nothing on a real device
    assert config.ENABLE_CUDASIM


def _launch_kwargs(rng):
    # Half the cases use a tiny grid, so each thread runs the grid-stride loop many times.
    if rng.random() < 0.5:
        return {"threads": int(rng.integers(1, 9)), "max_blocks": int(rng.integers(1, 4))}
    return {"threads": 64}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_col2im_scatter_equals_reference(seed, dtype):
    rng = np.random.default_rng(200 + seed)
    shape, fh, fw, stride, pad = random_case(rng, max_hw=7, window_pad_limit=False)
    oh, ow = out_hw(shape, fh, fw, stride, pad)
    col = rng.standard_normal((shape[0] * oh * ow, shape[1] * fh * fw)).astype(dtype)
    x = np.zeros(shape, dtype=dtype)
    launch_col2im_scatter(col, x, fh, fw, stride, pad, **_launch_kwargs(rng))
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(x, ref.col2im(col, shape, fh, fw, stride, pad), rtol=rtol,
                               atol=rtol)


def test_launch_rejects_mismatched_shapes():
    x = np.zeros((2, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"col has shape \(3, 4\); expected \(8, 27\)"):
        gpu.launch_im2col(x, np.zeros((3, 4), np.float32), 3, 3, 2, 0)
    with pytest.raises(ValueError, match="argmax has shape"):
        gpu.launch_maxpool_forward(x, np.zeros((2, 3, 2, 2), np.float32),
                                   np.zeros((2, 3, 1, 1), np.int32), 2, 2, 2, 0)
    with pytest.raises(ValueError, match=r"dout has shape \(2, 3, 3, 3\); expected"):
        gpu.launch_avgpool_backward(np.zeros((2, 3, 3, 3), np.float32), x, 2, 2, 2, 0)


def test_launch_refuses_arrays_beyond_32_bit_indexing():
    # zero-stride views: the shapes are huge, the memory is not
    x = np.broadcast_to(np.float32(0), (1, 1, 2**16, 2**15 + 1))
    col = np.broadcast_to(np.float32(0), (2**16 * (2**15 + 1), 1))
    with pytest.raises(ValueError, match="too large for the GPU kernels"):
        gpu.launch_im2col(x, col, 1, 1, 1, 0)


def _pool_case_with_bad_index(bad, pad=0):
    """A 3x3, stride-3 pooling of a 6x6 image whose argmax holds ``bad`` at one window."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 2, 6, 6))
    _, argmax = ref.maxpool_forward(x, 3, 3, 3, pad)
    argmax = argmax.astype(np.int64)
    argmax[1, 1, 0, 0] = bad
    return x, argmax, np.ones(argmax.shape)


@pytest.mark.parametrize("bad", [9, -1, 10**6, -(10**6), 2**32])
def test_launch_with_a_bad_index_writes_nothing_else_and_clears_the_flag(bad):
    x, argmax, dout = _pool_case_with_bad_index(bad)
    dx = np.zeros_like(x)
    with pytest.raises(IndexError, match="outside its pooling window"):
        gpu.launch_maxpool_backward(dout, argmax, dx, 3, 3, 3, 0, threads=8, max_blocks=2)
    # nothing was written for the bad index, every other window's gradient is in place
    good = argmax.copy()
    good[1, 1, 0, 0] = 0
    expected = ref.maxpool_backward(dout, good, x.shape, 3, 3, 3, 0)
    expected[1, 1, 0, 0] = 0
    np.testing.assert_array_equal(dx, expected)
    # the flag was cleared: a good argmax runs again
    gpu.launch_maxpool_backward(dout, good, dx, 3, 3, 3, 0)
    np.testing.assert_array_equal(dx, ref.maxpool_backward(dout, good, x.shape, 3, 3, 3, 0))


def test_maxpool_backward_error_flag_is_read_lazily():
    # a flag left set by an earlier launch (on a GPU: a kernel that finished after its
    # call returned) is raised by the next call, before that one launches
    x, argmax, dout = _pool_case_with_bad_index(0)
    gpu._error_flag()[0] = 1
    dx = np.full_like(x, np.nan)
    with pytest.raises(IndexError, match="outside its pooling window"):
        gpu.launch_maxpool_backward(dout, argmax, dx, 3, 3, 3, 0)
    assert np.isnan(dx).all()  # refused before launching
    gpu.raise_pending_error()  # cleared
