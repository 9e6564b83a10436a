"""DeCAF features from a pretrained torchvision AlexNet (pure compute: never imports fastapi).

Public API::

    from featurizer import Featurizer
    fz = Featurizer(layers=["decaf6", "decaf7"], weights="imagenet", precision="fp32")
    features = fz.extract(["a.jpg", "b.png"])        # {"decaf6": (2, 4096) float32, ...}

Note: ``featurizer.preprocess`` here is the *function*; the module of the same name is still
importable with ``from featurizer.preprocess import ...``.
"""

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning, so decode workers
# sharing the cores get them. Measured on 2 cores (benchmarks/extract_throughput.py, fp32,
# 512 small JPEGs): end-to-end 97-101 vs 84-88 images/s with spinning, model alone unchanged.
# An explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from featurizer.backbone import LAYER_NAMES
from featurizer.batch import extract_dataset
from featurizer.errors import (
    DecafError,
    ImageDecodeError,
    ImageTooLargeError,
    StoreError,
    UnknownLayerError,
    WeightsError,
)
from featurizer.extractor import Featurizer
from featurizer.images import decode_image
from featurizer.precision import PRECISIONS, PrecisionError
from featurizer.preprocess import PreprocessSpec, load_and_preprocess, preprocess
from featurizer.store import load_features
from featurizer.weights import BACKBONES, BackboneSpec, LoadedWeights, resolve_weights

__all__ = [
    "BACKBONES",
    "LAYER_NAMES",
    "PRECISIONS",
    "BackboneSpec",
    "DecafError",
    "Featurizer",
    "ImageDecodeError",
    "ImageTooLargeError",
    "LoadedWeights",
    "PrecisionError",
    "PreprocessSpec",
    "StoreError",
    "UnknownLayerError",
    "WeightsError",
    "decode_image",
    "extract_dataset",
    "load_and_preprocess",
    "load_features",
    "preprocess",
    "resolve_weights",
]
