"""CaffeNet and BVLC AlexNet as torch modules, layer for layer as in BVLC's deploy prototxts.

Architecture (``models/bvlc_reference_caffenet/deploy.prototxt`` and
``models/bvlc_alexnet/deploy.prototxt``, BVLC/caffe; input 10x3x227x227):

=======  ==========================================  ==================================
layer    parameters                                  output (227 input)
=======  ==========================================  ==================================
conv1    96 x 11x11, stride 4                        96 x 55 x 55
pool1    MAX 3x3, stride 2                           96 x 27 x 27
norm1    LRN local_size 5, alpha 1e-4, beta 0.75     (same)
conv2    256 x 5x5, pad 2, group 2                   256 x 27 x 27
pool2    MAX 3x3, stride 2                           256 x 13 x 13
norm2    LRN local_size 5, alpha 1e-4, beta 0.75     (same)
conv3    384 x 3x3, pad 1                            384 x 13 x 13
conv4    384 x 3x3, pad 1, group 2                   384 x 13 x 13
conv5    256 x 3x3, pad 1, group 2                   256 x 13 x 13
pool5    MAX 3x3, stride 2                           256 x 6 x 6 (= 9216)
fc6/fc7  InnerProduct 4096 (+ ReLU, Dropout 0.5)     4096
fc8      InnerProduct 1000                           1000
=======  ==========================================  ==================================

every conv followed by an in-place ReLU. CaffeNet pools before normalising (pool1 -> norm1);
BVLC AlexNet normalises first (norm1 -> pool1), as Krizhevsky et al. did; everything else is
equal. Dropout is the identity at test time (Caffe scales at training time), so it is left out.

Two Caffe rules, checked against torch:

- Pooling output size: Caffe's ``PoolingLayer::Reshape`` takes
  ``ceil((H + 2 pad - k) / stride) + 1`` and drops the last window when it would start in the
  padding; torch's ``ceil_mode=True`` is that formula and that rule. (At 227 input every division
  is exact - 55, 27, 13 -> 27, 13, 6 - so the rounding only matters for other sizes.)
- LRN (``ACROSS_CHANNELS``, ``lrn_layer.cpp``): ``x_c / (k + alpha/n * sum_{c' in window} x_c'^2)
  ^ beta`` with ``k = 1`` and a window of ``n`` channels centred on ``c``, zero outside; torch's
  ``LocalResponseNorm(size=n, alpha, beta, k=1)`` computes exactly that for odd ``n``.

Both are verified against an independent NumPy forward in
``tests/featurizer/caffe/test_net_reference.py``.

Convolutions with ``group: 2`` split input and output channels in two contiguous halves, as
torch's ``groups=2`` does, so Caffe's weight blob (``out x in/group x kh x kw``) is torch's
weight unchanged; InnerProduct's ``out x in`` blob over the C, H, W-flattened input is torch's
``Linear`` weight.
"""

from __future__ import annotations

from torch import Tensor, nn

INPUT_SIZE = 227
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 1.0

# Caffe layer name -> (in, out, kernel, stride, pad, group): both prototxts agree.
CONVOLUTIONS: dict[str, tuple[int, int, int, int, int, int]] = {
    "conv1": (3, 96, 11, 4, 0, 1),
    "conv2": (96, 256, 5, 1, 2, 2),
    "conv3": (256, 384, 3, 1, 1, 1),
    "conv4": (384, 384, 3, 1, 1, 2),
    "conv5": (384, 256, 3, 1, 1, 2),
}
INNER_PRODUCTS: dict[str, tuple[int, int]] = {
    "fc6": (256 * 6 * 6, 4096),
    "fc7": (4096, 4096),
    "fc8": (4096, 1000),
}
# The layers whose blobs a .caffemodel must hold, in the prototxts' order.
PARAMETER_LAYERS: tuple[str, ...] = (*CONVOLUTIONS, *INNER_PRODUCTS)


class CaffeNet(nn.Module):
    """The Caffe network, children registered in execution order under Caffe's layer names.

    ``lrn_before_pool``: False for CaffeNet (pool1 -> norm1), True for BVLC AlexNet. The
    forward is the children in order; :mod:`featurizer.backbones.caffe` turns them into a plan.
    """

    def __init__(self, *, lrn_before_pool: bool) -> None:
        super().__init__()
        self.lrn_before_pool = lrn_before_pool
        for block in (1, 2):
            self._conv(f"conv{block}")
            normalise_then_pool = [f"norm{block}", f"pool{block}"]
            for name in normalise_then_pool if lrn_before_pool else normalise_then_pool[::-1]:
                self.add_module(name, _lrn() if name.startswith("norm") else _max_pool())
        for name in ("conv3", "conv4", "conv5"):
            self._conv(name)
        self.pool5 = _max_pool()
        self.flatten = nn.Flatten(1)
        for name, (fan_in, fan_out) in INNER_PRODUCTS.items():
            self.add_module(name, nn.Linear(fan_in, fan_out))
            if name != "fc8":
                self.add_module(f"relu{name[2:]}", nn.ReLU(inplace=True))

    def _conv(self, name: str) -> None:
        fan_in, fan_out, kernel, stride, pad, group = CONVOLUTIONS[name]
        self.add_module(name, nn.Conv2d(fan_in, fan_out, kernel, stride, pad, groups=group))
        self.add_module(f"relu{name[4:]}", nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        for module in self.children():
            x = module(x)
        return x


class LocalResponseNorm(nn.LocalResponseNorm):
    """torch's LRN, computed in float32 for half-precision input.

    ``F.local_response_norm`` averages the squares with ``avg_pool3d``, which has no bfloat16
    kernel on CPU; a sum of 5 squares divided and raised to -0.75 also loses little by being
    computed in float32 (two small 27x27 and 13x13 layers: no measurable cost).
    """

    def forward(self, x: Tensor) -> Tensor:
        # No branch on the dtype (float() is a no-op on float32): torch.fx can trace it.
        return super().forward(x.float()).to(x.dtype)


def _lrn() -> LocalResponseNorm:
    return LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_K)


def _max_pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


def caffenet(weights: None = None) -> CaffeNet:
    """BVLC reference CaffeNet (pool before LRN). ``weights`` must be None (torchvision's
    builder signature; weights are loaded by :mod:`featurizer.weights`)."""
    _no_weights(weights)
    return CaffeNet(lrn_before_pool=False)


def bvlc_alexnet(weights: None = None) -> CaffeNet:
    """BVLC AlexNet (LRN before pool, as in Krizhevsky et al. 2012)."""
    _no_weights(weights)
    return CaffeNet(lrn_before_pool=True)


def _no_weights(weights: object) -> None:
    if weights is not None:
        raise ValueError("Caffe builders take weights=None; load weights via featurizer.weights")
