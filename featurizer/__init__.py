"""DeCAF features from pretrained torchvision backbones (pure compute: never imports fastapi).

Public API::

    from featurizer import Featurizer
    fz = Featurizer(["decaf6", "decaf7"], backbone="alexnet", weights="imagenet")
    features = fz.extract(["a.jpg", "b.png"])        # {"decaf6": (2, 4096) float32, ...}

Names are imported on first use (PEP 562), so ``import featurizer`` — and ``decaf --help`` —
load neither torch nor pyarrow. Importing has no side effects: process tuning (OpenMP, threads)
is done by entry points through :mod:`featurizer.runtime`.
"""

from __future__ import annotations

from featurizer.lazy import lazy_exports

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "DEFAULT_BACKBONE": "featurizer.backbones",
    "Backbone": "featurizer.backbones",
    "Tap": "featurizer.backbones",
    "WeightTag": "featurizer.backbones",
    "backbone_names": "featurizer.backbones",
    "get_backbone": "featurizer.backbones",
    "DecafError": "featurizer.errors",
    "ImageDecodeError": "featurizer.errors",
    "ImageTooLargeError": "featurizer.errors",
    "StoreError": "featurizer.errors",
    "UnknownBackboneError": "featurizer.errors",
    "UnknownLayerError": "featurizer.errors",
    "WeightsError": "featurizer.errors",
    "PrecisionError": "featurizer.precision",
    "CROP_MODES": "featurizer.options",
    "PRECISIONS": "featurizer.options",
    "PreprocessSpec": "featurizer.spec",
    "Featurizer": "featurizer.extractor",
    "decode_image": "featurizer.images",
    "load_and_preprocess": "featurizer.preprocess",
    "LoadedWeights": "featurizer.weights",
    "resolve_weights": "featurizer.weights",
    "extract_dataset": "featurizer.extraction",
    "FeatureStore": "featurizer.store",
    "load_features": "featurizer.store",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
