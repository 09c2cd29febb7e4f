"""Chapter 2: the perceptron gates, on scalars and arrays."""

import numpy as np
import pytest

from xpnet.perceptron import AND, NAND, OR, XOR

INPUTS = [(0, 0), (1, 0), (0, 1), (1, 1)]
TRUTH = {
    AND: [0, 0, 0, 1],
    NAND: [1, 1, 1, 0],
    OR: [0, 1, 1, 1],
    XOR: [0, 1, 1, 0],
}


@pytest.mark.parametrize("gate", list(TRUTH), ids=lambda g: g.__name__)
def test_truth_table_on_scalars(gate):
    outputs = [gate(x1, x2) for x1, x2 in INPUTS]
    assert outputs == TRUTH[gate]
    assert all(type(o) is int for o in outputs)


@pytest.mark.parametrize("gate", list(TRUTH), ids=lambda g: g.__name__)
def test_truth_table_on_arrays(gate):
    x1 = np.array([a for a, _ in INPUTS])
    x2 = np.array([b for _, b in INPUTS])
    out = gate(x1, x2)
    assert out.shape == (4,)
    assert out.dtype.kind == "i"
    np.testing.assert_array_equal(out, TRUTH[gate])


def test_gates_broadcast_over_grids():
    x1, x2 = np.meshgrid([0, 1], [0, 1], indexing="ij")
    np.testing.assert_array_equal(XOR(x1, x2), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(AND(x1, 1), [[0, 0], [1, 1]])
