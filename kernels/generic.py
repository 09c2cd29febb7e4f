"""Convolution as the book writes it -- im2col, one GEMM, col2im -- for any array backend.

Used for arrays whose kernel module has no fused convolution of its own (CuPy arrays:
cuBLAS is at its best on the one large product). Only the kernel entry points and array
methods are used, so the arrays stay on their device.
"""

from __future__ import annotations

import kernels


def conv2d_forward(x, W, b, stride=1, pad=0):
    """x: (N, C, H, W), W: (FN, C, FH, FW), b: (FN,) -> out: (N, FN, OH, OW)."""
    FN, _, FH, FW = W.shape
    N = x.shape[0]
    col = kernels.im2col(x, FH, FW, stride, pad)  # (N*OH*OW, C*FH*FW)
    out = col.dot(W.reshape(FN, -1).T)  # (N*OH*OW, FN)
    out += b.reshape(FN)
    out_h = kernels.conv_output_size(x.shape[2], FH, stride, pad)
    out_w = kernels.conv_output_size(x.shape[3], FW, stride, pad)
    return out.reshape(N, out_h, out_w, FN).transpose(0, 3, 1, 2)


def conv2d_backward(x, W, dout, stride=1, pad=0):
    """x: (N, C, H, W), W: (FN, C, FH, FW), dout: (N, FN, OH, OW) -> (dx, dW, db)."""
    FN, _, FH, FW = W.shape
    col = kernels.im2col(x, FH, FW, stride, pad)
    d = dout.transpose(0, 2, 3, 1).reshape(-1, FN)  # rows (N, OH, OW), as col's
    db = d.sum(axis=0)
    dW = d.T.dot(col).reshape(W.shape)
    dcol = d.dot(W.reshape(FN, -1))
    dx = kernels.col2im(dcol, x.shape, FH, FW, stride, pad)
    return dx, dW, db
