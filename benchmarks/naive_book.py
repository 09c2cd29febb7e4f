"""The naive baseline: the book's chapter 7 code style in plain NumPy, float64.

im2col and col2im by the slicing loops of ch. 7.4.3, Convolution as im2col + dot,
Pooling as im2col + max over rows, the book's Relu (mask and copy), Affine, Dropout,
SoftmaxWithLoss and Adam. Self-contained on purpose: it is what xpnet is measured
against, so it must not use xpnet's kernels.

    net = DeepConvNet(); opt = Adam()
    grads = net.gradient(x, t); opt.update(net.params, grads)
"""

# ruff: noqa: NPY002 - the book draws from NumPy's global generator (np.random.seed works)

from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------- util


def im2col(input_data, filter_h, filter_w, stride=1, pad=0):
    N, C, H, W = input_data.shape
    out_h = (H + 2 * pad - filter_h) // stride + 1
    out_w = (W + 2 * pad - filter_w) // stride + 1
    img = np.pad(input_data, [(0, 0), (0, 0), (pad, pad), (pad, pad)], "constant")
    col = np.zeros((N, C, filter_h, filter_w, out_h, out_w))
    for y in range(filter_h):
        y_max = y + stride * out_h
        for x in range(filter_w):
            x_max = x + stride * out_w
            col[:, :, y, x, :, :] = img[:, :, y:y_max:stride, x:x_max:stride]
    return col.transpose(0, 4, 5, 1, 2, 3).reshape(N * out_h * out_w, -1)


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    N, C, H, W = input_shape
    out_h = (H + 2 * pad - filter_h) // stride + 1
    out_w = (W + 2 * pad - filter_w) // stride + 1
    col = col.reshape(N, out_h, out_w, C, filter_h, filter_w).transpose(0, 3, 4, 5, 1, 2)
    img = np.zeros((N, C, H + 2 * pad + stride - 1, W + 2 * pad + stride - 1))
    for y in range(filter_h):
        y_max = y + stride * out_h
        for x in range(filter_w):
            x_max = x + stride * out_w
            img[:, :, y:y_max:stride, x:x_max:stride] += col[:, :, y, x, :, :]
    return img[:, :, pad : H + pad, pad : W + pad]


# ----------------------------------------------------------------------------- layers


class Relu:
    def forward(self, x):
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dout[self.mask] = 0
        return dout


class Affine:
    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.original_x_shape = x.shape
        self.x = x.reshape(x.shape[0], -1)
        return np.dot(self.x, self.W) + self.b

    def backward(self, dout):
        dx = np.dot(dout, self.W.T)
        self.dW = np.dot(self.x.T, dout)
        self.db = np.sum(dout, axis=0)
        return dx.reshape(*self.original_x_shape)


class Dropout:
    def __init__(self, dropout_ratio=0.5):
        self.dropout_ratio = dropout_ratio

    def forward(self, x, train_flg=True):
        if train_flg:
            self.mask = np.random.rand(*x.shape) > self.dropout_ratio
            return x * self.mask
        return x * (1.0 - self.dropout_ratio)

    def backward(self, dout):
        return dout * self.mask


class SoftmaxWithLoss:
    def forward(self, x, t):
        self.t = t
        x = x - x.max(axis=1, keepdims=True)
        self.y = np.exp(x) / np.sum(np.exp(x), axis=1, keepdims=True)
        n = self.y.shape[0]
        return -np.sum(np.log(self.y[np.arange(n), t] + 1e-7)) / n

    def backward(self, dout=1):
        n = self.t.shape[0]
        dx = self.y.copy()
        dx[np.arange(n), self.t] -= 1
        return dx / n


class Convolution:
    def __init__(self, W, b, stride=1, pad=0):
        self.W, self.b, self.stride, self.pad = W, b, stride, pad

    def forward(self, x):
        FN, C, FH, FW = self.W.shape
        N, C, H, W = x.shape
        out_h = 1 + int((H + 2 * self.pad - FH) / self.stride)
        out_w = 1 + int((W + 2 * self.pad - FW) / self.stride)
        col = im2col(x, FH, FW, self.stride, self.pad)
        col_W = self.W.reshape(FN, -1).T
        out = np.dot(col, col_W) + self.b
        out = out.reshape(N, out_h, out_w, -1).transpose(0, 3, 1, 2)
        self.x, self.col, self.col_W = x, col, col_W
        return out

    def backward(self, dout):
        FN, C, FH, FW = self.W.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, FN)
        self.db = np.sum(dout, axis=0)
        self.dW = np.dot(self.col.T, dout).transpose(1, 0).reshape(FN, C, FH, FW)
        dcol = np.dot(dout, self.col_W.T)
        return col2im(dcol, self.x.shape, FH, FW, self.stride, self.pad)


class Pooling:
    def __init__(self, pool_h, pool_w, stride=1, pad=0):
        self.pool_h, self.pool_w, self.stride, self.pad = pool_h, pool_w, stride, pad

    def forward(self, x):
        N, C, H, W = x.shape
        out_h = int(1 + (H - self.pool_h) / self.stride)
        out_w = int(1 + (W - self.pool_w) / self.stride)
        col = im2col(x, self.pool_h, self.pool_w, self.stride, self.pad)
        col = col.reshape(-1, self.pool_h * self.pool_w)
        self.arg_max = np.argmax(col, axis=1)
        out = np.max(col, axis=1)
        self.x = x
        return out.reshape(N, out_h, out_w, C).transpose(0, 3, 1, 2)

    def backward(self, dout):
        dout = dout.transpose(0, 2, 3, 1)
        pool_size = self.pool_h * self.pool_w
        dmax = np.zeros((dout.size, pool_size))
        dmax[np.arange(self.arg_max.size), self.arg_max.flatten()] = dout.flatten()
        dmax = dmax.reshape(dout.shape + (pool_size,))
        dcol = dmax.reshape(dmax.shape[0] * dmax.shape[1] * dmax.shape[2], -1)
        return col2im(dcol, self.x.shape, self.pool_h, self.pool_w, self.stride, self.pad)


# ----------------------------------------------------------------------------- optimizer


class Adam:
    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        self.lr, self.beta1, self.beta2 = lr, beta1, beta2
        self.iter, self.m, self.v = 0, None, None

    def update(self, params, grads):
        if self.m is None:
            self.m = {k: np.zeros_like(v) for k, v in params.items()}
            self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.iter += 1
        lr_t = self.lr * np.sqrt(1.0 - self.beta2**self.iter) / (1.0 - self.beta1**self.iter)
        for key in params:
            self.m[key] += (1 - self.beta1) * (grads[key] - self.m[key])
            self.v[key] += (1 - self.beta2) * (grads[key] ** 2 - self.v[key])
            params[key] -= lr_t * self.m[key] / (np.sqrt(self.v[key]) + 1e-7)


# ----------------------------------------------------------------------------- networks


class _Net:
    def predict(self, x, train_flg=False):
        for layer in self.layers:
            x = layer.forward(x, train_flg) if isinstance(layer, Dropout) else layer.forward(x)
        return x

    def loss(self, x, t):
        return self.last_layer.forward(self.predict(x, train_flg=True), t)

    def gradient(self, x, t):
        self.loss(x, t)
        dout = self.last_layer.backward(1)
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        grads = {}
        for i, layer in enumerate(self.param_layers, start=1):
            grads[f"W{i}"], grads[f"b{i}"] = layer.dW, layer.db
        return grads


class SimpleConvNet(_Net):
    def __init__(self, input_dim=(1, 28, 28), filter_num=30, filter_size=5, hidden_size=100,
                 output_size=10, weight_init_std=0.01):
        C, H, _ = input_dim
        conv_out = H - filter_size + 1
        pool_out = filter_num * (conv_out // 2) ** 2
        s = weight_init_std
        self.params = {
            "W1": s * np.random.randn(filter_num, C, filter_size, filter_size),
            "b1": np.zeros(filter_num),
            "W2": s * np.random.randn(pool_out, hidden_size),
            "b2": np.zeros(hidden_size),
            "W3": s * np.random.randn(hidden_size, output_size),
            "b3": np.zeros(output_size),
        }
        p = self.params
        conv, a1, a2 = Convolution(p["W1"], p["b1"]), Affine(p["W2"], p["b2"]), Affine(
            p["W3"], p["b3"])
        self.layers = [conv, Relu(), Pooling(2, 2, stride=2), a1, Relu(), a2]
        self.param_layers = [conv, a1, a2]
        self.last_layer = SoftmaxWithLoss()


class DeepConvNet(_Net):
    def __init__(self, input_dim=(1, 28, 28), hidden_size=50, output_size=10):
        C, H, _ = input_dim
        self.params, self.layers, self.param_layers = {}, [], []
        channels = C
        for i, (fn, pad) in enumerate([(16, 1), (16, 1), (32, 1), (32, 2), (64, 1), (64, 1)]):
            W = np.sqrt(2.0 / (channels * 9)) * np.random.randn(fn, channels, 3, 3)
            self.params[f"W{i + 1}"], self.params[f"b{i + 1}"] = W, np.zeros(fn)
            conv = Convolution(W, self.params[f"b{i + 1}"], 1, pad)
            self.layers += [conv, Relu()]
            self.param_layers.append(conv)
            H, channels = H + 2 * pad - 2, fn
            if i % 2 == 1:
                self.layers.append(Pooling(2, 2, stride=2))
                H //= 2
        flat = channels * H * H
        for i, (n_in, n_out) in enumerate([(flat, hidden_size), (hidden_size, output_size)], 7):
            W = np.sqrt(2.0 / n_in) * np.random.randn(n_in, n_out)
            self.params[f"W{i}"], self.params[f"b{i}"] = W, np.zeros(n_out)
            self.param_layers.append(Affine(W, self.params[f"b{i}"]))
        a7, a8 = self.param_layers[-2:]
        self.layers += [a7, Relu(), Dropout(0.5), a8, Dropout(0.5)]
        self.last_layer = SoftmaxWithLoss()
