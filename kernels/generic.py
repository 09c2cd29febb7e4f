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


def conv2d_forward(x, W, b, stride=1, pad=0, relu=False):
    """x: (N, C, H, W), W: (FN, C, FH, FW), b: (FN,) -> out: (N, FN, OH, OW); with
    ``relu``, max(out, 0)."""
    FN, _, FH, FW = W.shape
    N = x.shape[0]
    im2col, _ = _im2col_col2im(x)
    col = im2col(x, FH, FW, stride, pad)  # (N*OH*OW, C*FH*FW)
    out = col.dot(W.reshape(FN, -1).T)  # (N*OH*OW, FN)
    out += b.reshape(FN)
    out_h = kernels.conv_output_size(x.shape[2], FH, stride, pad)
    out_w = kernels.conv_output_size(x.shape[3], FW, stride, pad)
    out = out.reshape(N, out_h, out_w, FN).transpose(0, 3, 1, 2)
    return relu_forward(out) if relu else out


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


def _channel_sum(a):
    """a: (N, C, H, W) -> (C,): sums over contiguous rows of H*W, then over N."""
    N, C = a.shape[:2]
    return a.reshape(N, C, -1).sum(axis=2).sum(axis=0)


def _per_channel(v):
    """(C,) -> (1, C, 1, 1), to broadcast over (N, C, H, W)."""
    return v.reshape(1, -1, 1, 1)


def channel_norm_forward(x, gamma, beta, eps, mean=None, var=None):
    """x: (N, C, H, W) -> (out, xn, mean, var); see ``kernels.channel_norm_forward``.
    Computed in NCHW order with per-channel sums over contiguous rows (no transposes)."""
    xp = get_array_module(x)
    if mean is None:
        count = x.shape[0] * x.shape[2] * x.shape[3]
        mean = _channel_sum(x) / count
        xc = x - _per_channel(mean)
        var = _channel_sum(xc * xc) / count
    else:
        xc = x - _per_channel(mean)
    xc *= _per_channel(1 / xp.sqrt(var + x.dtype.type(eps)))
    out = xc * _per_channel(gamma.astype(x.dtype, copy=False))
    out += _per_channel(beta.astype(x.dtype, copy=False))
    return out, xc, mean, var


def channel_norm_backward(dout, xn, gamma, std, batch_statistics):
    """(dx, dgamma, dbeta) of ``channel_norm_forward``; see ``kernels.channel_norm_backward``."""
    dbeta = _channel_sum(dout)
    dgamma = _channel_sum(dout * xn)
    scale = _per_channel(gamma.astype(dout.dtype, copy=False) / std)
    if not batch_statistics:
        return dout * scale, dgamma, dbeta
    m = dout.shape[0] * dout.shape[2] * dout.shape[3]
    dx = dout - _per_channel(dbeta / m)
    dx -= xn * _per_channel(dgamma / m)
    dx *= scale
    return dx, dgamma, dbeta
