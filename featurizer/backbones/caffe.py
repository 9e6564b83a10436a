"""The Caffe networks DeCAF came from: BVLC reference CaffeNet and BVLC AlexNet.

DeCAF (Donahue et al., ICML 2014) extracted its features with the Krizhevsky-style network of
Caffe's lineage, not with torchvision's AlexNet (the later "one weird trick" variant: no LRN, no
grouped convolutions, 224 input, RGB with ImageNet std). These records rebuild the original in
torch (:mod:`featurizer.caffe.net`, our own module as DESIGN.md allows) and load the model zoo's
``.caffemodel`` files without Caffe (:mod:`featurizer.caffe.convert`).

Facts, from BVLC/caffe:

- Architecture: ``models/bvlc_reference_caffenet/deploy.prototxt`` and
  ``models/bvlc_alexnet/deploy.prototxt`` (table in :mod:`featurizer.caffe.net`).
- Files, checksums, accuracy, licence: the front matter of ``models/bvlc_reference_caffenet/
  readme.md`` (sha1 4c8d77de..., top-1 57.4 % / top-5 80.4 % centre crop, "unrestricted") and
  ``models/bvlc_alexnet/readme.md`` (sha1 9116a64c..., 57.1 % / 80.2 %, "non-commercial").
- Preprocessing: what ``python/caffe/classifier.py`` (``caffe.Classifier``) and
  ``python/classify.py`` did: ``caffe.io.resize_image`` to ``image_dims = 256 x 256`` (both
  sides, aspect not kept), centre crop or ``caffe.io.oversample`` (4 corners + centre and their
  mirrors) to 227, ``channel_swap = (2, 1, 0)`` (RGB -> BGR), ``raw_scale = 255`` and the
  ILSVRC-2012 mean subtracted. The per-channel mean is ``ilsvrc_2012_mean.npy`` averaged over
  its 256 x 256 pixels, as ``examples/00-classification.ipynb`` computes and prints it:
  B 104.0069879317889, G 116.66876761696767, R 122.6789143406786 (often rounded to 104/117/123;
  the exact values are kept). The full mean image is used instead when the user supplies it
  (``--mean-image``; see :mod:`featurizer.caffe.mean`).

Taps keep DeCAF's names, as the torchvision ``alexnet`` backbone does: DeCAF_n is layer n's
output after its ReLU (Caffe's in-place blob), ``*_pre`` before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurizer.backbones import Backbone, Tap, WeightTag, register
from featurizer.spec import PreprocessSpec

if TYPE_CHECKING:
    from torch import nn

    from featurizer.backbones import Stage

ZOO_URL = "http://dl.caffe.berkeleyvision.org/"

# BGR, 0-255: ilsvrc_2012_mean.npy averaged over H and W (examples/00-classification.ipynb).
ILSVRC_2012_MEAN_BGR = (104.0069879317889, 116.66876761696767, 122.6789143406786)

CAFFE_PREPROCESS = PreprocessSpec(
    resize=256,
    crop=227,
    mean=tuple(value / 255.0 for value in ILSVRC_2012_MEAN_BGR),  # type: ignore[arg-type]
    std=(1 / 255.0,) * 3,  # (x / 255 - mean / 255) * 255 = x - mean: Caffe's 0-255 scale
    interpolation="bilinear",  # caffe.io.resize_image's default interp_order=1
    resize_mode="stretch",
    channel_order="bgr",
)

TAPS = (
    Tap("decaf5", "flatten", 9216, "pool5: conv5 -> ReLU -> max-pool, flattened 256x6x6"),
    Tap("decaf6_pre", "fc6", 4096, "fc6 before ReLU"),
    Tap("decaf6", "relu6", 4096, "fc6 after ReLU"),
    Tap("decaf7_pre", "fc7", 4096, "fc7 before ReLU"),
    Tap("decaf7", "relu7", 4096, "fc7 after ReLU"),
    Tap("logits", "fc8", 1000, "fc8: ImageNet class scores (before softmax)"),
)

READER = "featurizer.caffe.convert.caffemodel_state_dict"


def caffe_layers(net: nn.Module) -> list[Stage]:
    """The network's children in execution order, under Caffe's layer names."""
    return list(net.named_children())


def _zoo_tag(filename: str, sha1: str, accuracy: tuple[float, float], license: str) -> WeightTag:
    acc1, acc5 = accuracy
    return WeightTag(
        name="BVLC",
        url=ZOO_URL + filename,
        preprocess=CAFFE_PREPROCESS,
        acc1=acc1,
        acc5=acc5,
        license=license,
        sha1=sha1,
    )


CAFFENET = register(
    Backbone(
        name="caffenet",
        summary="BVLC reference CaffeNet (DeCAF's network, from a .caffemodel): "
        "pool before LRN, grouped convs, 227 input, BGR",
        builder="featurizer.caffe.net.caffenet",
        taps=TAPS,
        default_layers=("decaf6", "decaf7"),
        weight_tags=(
            _zoo_tag(
                "bvlc_reference_caffenet.caffemodel",
                "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46",
                (57.4, 80.4),
                "unrestricted (BVLC model zoo)",
            ),
        ),
        default_tag_name="BVLC",
        plan=caffe_layers,
        min_input_size=227,  # fc6 takes exactly 256 x 6 x 6
        weights_reader=READER,
    )
)

BVLC_ALEXNET = register(
    Backbone(
        name="bvlc_alexnet",
        summary="BVLC AlexNet (Krizhevsky et al. layer order, from a .caffemodel): "
        "LRN before pool, grouped convs, 227 input, BGR",
        builder="featurizer.caffe.net.bvlc_alexnet",
        taps=TAPS,
        default_layers=("decaf6", "decaf7"),
        weight_tags=(
            _zoo_tag(
                "bvlc_alexnet.caffemodel",
                "9116a64c0fbe4459d18f4bb6b56d647b63920377",
                (57.1, 80.2),
                "non-commercial (BVLC model zoo; ImageNet terms of access)",
            ),
        ),
        default_tag_name="BVLC",
        plan=caffe_layers,
        min_input_size=227,
        weights_reader=READER,
    )
)
