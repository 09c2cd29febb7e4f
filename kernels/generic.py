"""Convolution as the book writes it - im2col, one GEMM, col2im - and ReLU as array
expressions, for any array backend.

``xpnet.kernels.IMPLEMENTATIONS`` names this module where a backend has no kernel of its
own for an op: today the convolution pair and ReLU on CuPy arrays (cuBLAS is at its best on
one large product, and CuPy fuses the elementwise ReLU itself). Only the array's own
namespace and its backend's im2col/col2im are used, so the arrays stay on their device;
the arguments were checked by the entry point that called these.
"""

from __future__ import annotations

from xpnet import kernels
from xpnet.backend import get_array_module


def _im2col_col2im(a):
    """The im2col and col2im implementations of ``a``'s backend (arguments already checked)."""
    backend = kernels._backend_name(a)
    return kernels.implementation(backend, "im2col"), kernels.implementation(backend, "col2im")


def relu_forward(x):
    """x: any shape -> max(x, 0), NaN kept, x's dtype."""
    return get_array_module(x).maximum(x, 0)


def relu_backward(dout, out):
    """dx = 0 where the forward output ``out`` <= 0, else dout (the book's mask x <= 0)."""
    return get_array_module(dout).where(out <= 0, dout.dtype.type(0), dout)


def conv2d_forward(x, W, b, stride=1, pad=0):
    """x: (N, C, H, W), W: (FN, C, FH, FW), b: (FN,) -> out: (N, FN, OH, OW)."""
    FN, _, FH, FW = W.shape
    N = x.shape[0]
    im2col, _ = _im2col_col2im(x)
    col = im2col(x, FH, FW, stride, pad)  # (N*OH*OW, C*FH*FW)
    out = col.dot(W.reshape(FN, -1).T)  # (N*OH*OW, FN)
    out += b.reshape(FN)
    out_h = kernels.conv_output_size(x.shape[2], FH, stride, pad)
    out_w = kernels.conv_output_size(x.shape[3], FW, stride, pad)
    return out.reshape(N, out_h, out_w, FN).transpose(0, 3, 1, 2)


def conv2d_backward(x, W, dout, stride=1, pad=0):
    """x: (N, C, H, W), W: (FN, C, FH, FW), dout: (N, FN, OH, OW) -> (dx, dW, db)."""
    FN, _, FH, FW = W.shape
    im2col, col2im = _im2col_col2im(x)
    col = im2col(x, FH, FW, stride, pad)
    d = dout.transpose(0, 2, 3, 1).reshape(-1, FN)  # rows (N, OH, OW), as col's
    db = d.sum(axis=0)
    dW = d.T.dot(col).reshape(W.shape)
    dcol = d.dot(W.reshape(FN, -1))
    dx = col2im(dcol, tuple(x.shape), FH, FW, stride, pad)
    return dx, dW, db
