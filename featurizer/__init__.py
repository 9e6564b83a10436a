"""DeCAF features from a pretrained torchvision AlexNet (pure compute: never imports fastapi).

Public API::

    from featurizer import Featurizer
    fz = Featurizer(layers=["decaf6", "decaf7"], weights="imagenet", precision="fp32")
    features = fz.extract(["a.jpg", "b.png"])        # {"decaf6": (2, 4096) float32, ...}

Note: ``featurizer.preprocess`` here is the *function*; the module of the same name is still
importable with ``from featurizer.preprocess import ...``.
"""

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
