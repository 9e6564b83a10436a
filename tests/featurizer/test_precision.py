"""AlexNet's bf16 / int8 fidelity against fp32 on real photographs; precision/device validation.

(Every backbone's fidelity per tap, at its test input size, is also measured by the contract in
tests/featurizer/backbones/contract.py, with these bounds.)

Fidelity is the cosine similarity between a view's fp32 feature vector and the same view's vector
at reduced precision, per layer, on scikit-learn's two sample photographs (20 ten-crop views).
Pretrained weights are used when they are in the torchvision cache, random weights otherwise.

Bounds (asserted on the worst view of each layer):
- bf16 >= 0.999. bf16 keeps 8 significant bits, so each rounding has relative error <= 2**-9
  (0.2 %); oneDNN accumulates in fp32, so errors from ~8 rounded layers add roughly in quadrature
  to ~0.5-1 % relative error, i.e. 1 - cos = rel**2 / 2 ~ 1e-5 (measured: 1.3e-5 with random
  weights). 0.999 allows 4.5 % relative error, headroom for pretrained weights' wider activation
  range, while a real bug (unnormalised input, wrong layer, bf16 averaging) lands far below.
- int8 >= 0.995. Per-tensor int8 weights have a step of max|w|/127, so per-weight error is up to
  0.4 % of the largest weight; activations are re-quantised per batch at each of fc6/fc7/fc8.
  Measured 1 - cos = 7e-5 (random weights); dynamic int8 on pretrained CNN fc layers is typically
  within 1e-3. 0.995 (10 % relative error) leaves room for outlier weights in real checkpoints.
  decaf5 is computed before any quantised layer and must be exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torch import nn

from featurizer.backbones import get_backbone
from featurizer.extractor import Featurizer
from featurizer.precision import PrecisionError, check_precision, resolve_device
from featurizer.weights import cache_path

pytestmark = pytest.mark.filterwarnings("ignore:USING RANDOM WEIGHTS")

BOUNDS = {"bf16": 0.999, "int8": 0.995}
ALEXNET = get_backbone("alexnet")
LAYER_NAMES = ALEXNET.tap_names
WEIGHTS = "imagenet" if cache_path(ALEXNET.default_tag).is_file() else "random"


def cosine_per_row(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


@pytest.fixture(scope="module")
def views() -> torch.Tensor:
    """20 real 224x224 views: ten crops of each of scikit-learn's two sample photographs."""
    reference = Featurizer(["decaf5"], weights="random", crop="tencrop")
    photos = [Image.fromarray(array) for array in load_sample_images().images]
    return torch.stack([reference.prepare(photo) for photo in photos]).reshape(-1, 3, 224, 224)


@pytest.fixture(scope="module")
def cpu_featurizers() -> dict[str, Featurizer]:
    return {
        precision: Featurizer(LAYER_NAMES, weights=WEIGHTS, precision=precision)
        for precision in ("fp32", "bf16", "int8")
    }


@pytest.fixture(scope="module")
def fp32_features(views, cpu_featurizers) -> dict[str, np.ndarray]:
    return cpu_featurizers["fp32"].forward(views)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_fidelity_per_layer(
    precision, views, fp32_features, cpu_featurizers, record_property
):
    featurizer = cpu_featurizers[precision]
    features = featurizer.forward(views)
    worst = {
        layer: float(cosine_per_row(fp32_features[layer], features[layer]).min())
        for layer in LAYER_NAMES
    }
    record_property(f"cosine_{precision}_{WEIGHTS}", worst)
    print(f"\n{precision} vs fp32 ({WEIGHTS} weights), worst cosine over 20 views:")
    for layer, value in worst.items():
        print(f"  {layer:<11} {value:.6f}")
    for layer, value in worst.items():
        assert value >= BOUNDS[precision], f"{precision} {layer}: cosine {value:.6f}"
        assert features[layer].dtype == np.float32
    if precision == "int8":
        np.testing.assert_array_equal(features["decaf5"], fp32_features["decaf5"])


def test_int8_quantises_only_the_fully_connected_layers(cpu_featurizers):
    net = cpu_featurizers["int8"].model.net
    names = [m._get_name() for m in net.classifier if "Linear" in m._get_name()]
    assert names == ["DynamicQuantizedLinear"] * 3
    assert not any(type(m) is nn.Linear for m in net.modules())
    assert net.features[0].weight.dtype == torch.float32


def test_bf16_casts_the_whole_network_and_keeps_channels_last(cpu_featurizers):
    featurizer = cpu_featurizers["bf16"]
    assert {p.dtype for p in featurizer.model.net.parameters()} == {torch.bfloat16}
    assert featurizer.model.net.features[3].weight.is_contiguous(memory_format=torch.channels_last)
    assert featurizer.describe()["precision"] == "bf16"


def test_precision_and_device_errors_are_clear():
    cpu = torch.device("cpu")
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA device"):
        check_precision("fp16", cpu)
    with pytest.raises(PrecisionError, match="unknown precision"):
        check_precision("fp8", cpu)
    with pytest.raises(PrecisionError, match="not supported"):
        resolve_device("mps")
    with pytest.raises(PrecisionError, match="invalid device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(PrecisionError, match="CUDA is not available"):
            resolve_device("cuda:1")
    assert resolve_device("cpu") == cpu
    # Checked before weights are loaded: a missing file would otherwise be reported first.
    with pytest.raises(PrecisionError, match="fp16"):
        Featurizer(["decaf5"], weights="/no/such.pth", precision="fp16", device="cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_precisions_match_cpu_fp32(precision, views, fp32_features):
    featurizer = Featurizer(LAYER_NAMES, weights=WEIGHTS, precision=precision, device="cuda")
    assert featurizer.describe()["device"].startswith("cuda")
    features = featurizer.forward(views)
    bound = 0.9999 if precision == "fp32" else BOUNDS["bf16"]
    for layer in LAYER_NAMES:
        assert cosine_per_row(fp32_features[layer], features[layer]).min() >= bound, layer
    with pytest.raises(PrecisionError, match="int8"):
        Featurizer(["decaf7"], weights="random", precision="int8", device="cuda")
