"""CaffeNet's forward in NumPy (float64), written from Caffe's layer definitions, not from torch.

- Convolution: im2col + matrix product per group (``conv_layer.cpp``: input and output channels
  split into ``group`` contiguous parts).
- LRN across channels (``lrn_layer.cpp``): ``x / (k + alpha/n * sum of x^2 over the n channels
  centred on c, zero-padded) ^ beta``, k = 1.
- Max pooling (``pooling_layer.cpp``): output size ``ceil((H + 2 pad - k) / stride) + 1``, minus
  one if the last window would start in the padding; windows clipped to the image.
- InnerProduct: ``x.reshape(N, -1) @ W.T + b`` on the C, H, W-flattened input.
"""

from __future__ import annotations

import math

import numpy as np

LRN = {"n": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int, group: int):
    n, _, h, width = x.shape
    out_c, c_per_group, k, _ = w.shape
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out_h = (h + 2 * pad - k) // stride + 1
    out_w = (width + 2 * pad - k) // stride + 1
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride][:, :, :out_h, :out_w]  # N, C, Ho, Wo, k, k
    outputs = []
    per_group_out = out_c // group
    for g in range(group):
        cols = windows[:, g * c_per_group : (g + 1) * c_per_group]
        cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(n, out_h, out_w, -1)  # im2col
        kernel = w[g * per_group_out : (g + 1) * per_group_out].reshape(per_group_out, -1)
        outputs.append(cols @ kernel.T)
    out = np.concatenate(outputs, axis=-1) + b
    return out.transpose(0, 3, 1, 2)


def lrn(x: np.ndarray) -> np.ndarray:
    n = LRN["n"]
    half = (n - 1) // 2
    squares = np.pad(x**2, ((0, 0), (half, half), (0, 0), (0, 0)))
    window_sum = sum(squares[:, i : i + x.shape[1]] for i in range(n))
    return x / (LRN["k"] + LRN["alpha"] / n * window_sum) ** LRN["beta"]


def max_pool(x: np.ndarray, k: int = 3, stride: int = 2, pad: int = 0) -> np.ndarray:
    n, c, h, w = x.shape
    out_h = math.ceil((h + 2 * pad - k) / stride) + 1
    out_w = math.ceil((w + 2 * pad - k) / stride) + 1
    if (out_h - 1) * stride >= h + pad:
        out_h -= 1
    if (out_w - 1) * stride >= w + pad:
        out_w -= 1
    out = np.empty((n, c, out_h, out_w))
    for i in range(out_h):
        top, bottom = max(i * stride - pad, 0), min(i * stride - pad + k, h)
        for j in range(out_w):
            left, right = max(j * stride - pad, 0), min(j * stride - pad + k, w)
            out[:, :, i, j] = x[:, :, top:bottom, left:right].max(axis=(2, 3))
    return out


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def forward(x: np.ndarray, params: dict, *, lrn_before_pool: bool) -> dict[str, np.ndarray]:
    """``x``: N x 3 x 227 x 227, BGR, mean already subtracted. Returns every DeCAF tap."""
    p = {name: (w.astype(np.float64), b.astype(np.float64)) for name, (w, b) in params.items()}

    def normalise_and_pool(y):
        return max_pool(lrn(y)) if lrn_before_pool else lrn(max_pool(y))

    y = normalise_and_pool(relu(conv(x, *p["conv1"], stride=4, pad=0, group=1)))
    y = normalise_and_pool(relu(conv(y, *p["conv2"], stride=1, pad=2, group=2)))
    y = relu(conv(y, *p["conv3"], stride=1, pad=1, group=1))
    y = relu(conv(y, *p["conv4"], stride=1, pad=1, group=2))
    y = relu(conv(y, *p["conv5"], stride=1, pad=1, group=2))
    pool5 = max_pool(y).reshape(len(x), -1)
    fc6 = pool5 @ p["fc6"][0].T + p["fc6"][1]
    fc7 = relu(fc6) @ p["fc7"][0].T + p["fc7"][1]
    fc8 = relu(fc7) @ p["fc8"][0].T + p["fc8"][1]
    return {
        "decaf5": pool5,
        "decaf6_pre": fc6,
        "decaf6": relu(fc6),
        "decaf7_pre": fc7,
        "decaf7": relu(fc7),
        "logits": fc8,
    }
