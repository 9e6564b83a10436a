"""The backbone registry: one record per network, everything else derives from it.

A record pairs a torchvision builder with its weight tags and its taps, the way torchvision pairs a
builder with its ``Weights`` enum and timm a ``PretrainedCfg``::

    from featurizer.backbones import get_backbone
    resnet = get_backbone("resnet50")
    resnet.tap_names            # ('layer3', 'pool', 'logits')
    resnet.default_tag.name     # 'IMAGENET1K_V2' (what weights="imagenet" means)
    resnet.weight_tag("IMAGENET1K_V1").preprocess.resize   # 256 (V2: 232)

Each family module in this package (``alexnet.py``, ``vgg.py``, ...) calls :func:`register` at
import. The modules are found by listing the package, so adding a backbone is one new module (plus
its tests) and no edit anywhere else.

Importing this package never imports torch, numpy or PIL: builders are named by dotted path and
forward plans import torch when called, so ``decaf --help`` and ``decaf backbones`` stay instant.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from featurizer.errors import UnknownBackboneError, UnknownLayerError, WeightsError
from featurizer.spec import PreprocessSpec

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = [
    "DEFAULT_BACKBONE",
    "REDUCTIONS",
    "Backbone",
    "Reduction",
    "Stage",
    "Tap",
    "WeightTag",
    "backbone_names",
    "get_backbone",
    "import_builder",
    "register",
]

DEFAULT_BACKBONE = "alexnet"

# What is done to a graph node's output before it is handed out as a feature vector:
# "none" (already a vector), "spatial_mean" (global average pool over H, W),
# "class_token" (token 0 of a (N, tokens, dim) sequence).
Reduction = Literal["none", "spatial_mean", "class_token"]
REDUCTIONS: tuple[Reduction, ...] = get_args(Reduction)

# One step of a forward plan: (torchvision graph node name, callable on the running tensor).
Stage = tuple[str, "Callable[[Tensor], Tensor]"]

TORCHVISION_LICENSE = "BSD-3-Clause (torchvision model weights)"
TORCHVISION_URL = "https://download.pytorch.org/models/"

# torchvision names its files <arch>-<first 8 hex chars of the sha256>.pth (torch.hub's HASH_REGEX).
_HASHED_FILENAME = re.compile(r"-(?P<prefix>[0-9a-f]{8,})\.(pth|pt)$")
_SHA1 = re.compile(r"[0-9a-f]{40}")

# Modules in this package that are not backbone families.
_NOT_FAMILIES = frozenset({"command"})


@dataclass(frozen=True)
class Tap:
    """A named activation: the output of ``node`` in torchvision's graph, then ``reduce``.

    ``node`` is the name ``torchvision.models.feature_extraction.create_feature_extractor`` uses,
    so every tap can be checked against torchvision's own graph.
    """

    name: str
    node: str
    dim: int
    meaning: str
    reduce: Reduction = "none"

    def __post_init__(self) -> None:
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"tap {self.name}: reduce must be one of {REDUCTIONS}")
        if self.dim < 1:
            raise ValueError(f"tap {self.name}: dim must be positive, got {self.dim}")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "node": self.node,
            "dim": self.dim,
            "meaning": self.meaning,
            "reduce": self.reduce,
        }


@dataclass(frozen=True)
class WeightTag:
    """One published checkpoint of a backbone (a member of torchvision's ``Weights`` enum).

    The file name and its sha256 prefix are read from the url, as torch.hub does, so they cannot
    disagree with it. Files published without a hash in their name (Caffe's model zoo) carry the
    publisher's ``sha1`` instead.
    """

    name: str  # torchvision's enum member, e.g. "IMAGENET1K_V2"
    url: str
    preprocess: PreprocessSpec
    acc1: float  # ImageNet-1K top-1 / top-5 from torchvision's meta["_metrics"]
    acc5: float
    license: str = TORCHVISION_LICENSE
    sha1: str | None = None  # the publisher's sha1 when the file name carries no sha256 prefix

    def __post_init__(self) -> None:
        if self.sha1 is not None:
            if _SHA1.fullmatch(self.sha1) is None:
                raise ValueError(f"weight tag {self.name}: sha1 must be 40 hex digits")
        elif _HASHED_FILENAME.search(self.filename) is None:
            raise ValueError(
                f"weight tag {self.name}: file name {self.filename!r} carries no sha256 prefix "
                "(expected <name>-<8+ hex>.pth, torchvision's convention) and no sha1 is given"
            )

    @classmethod
    def torchvision(
        cls,
        name: str,
        filename: str,
        accuracy: tuple[float, float],
        preprocess: PreprocessSpec | None = None,
        license: str = TORCHVISION_LICENSE,
    ) -> WeightTag:
        """A tag of torchvision's download site; ``accuracy`` is (acc@1, acc@5). The default
        preprocessing is torchvision's classic one (resize 256, crop 224, bilinear)."""
        acc1, acc5 = accuracy
        spec = preprocess or PreprocessSpec()
        return cls(name, TORCHVISION_URL + filename, spec, acc1, acc5, license)

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str | None:
        """From the file name (torchvision's convention); None for a tag checked by sha1."""
        match = _HASHED_FILENAME.search(self.filename)
        return None if match is None else match["prefix"]

    def matches(self, sha256: str, sha1: str) -> bool:
        """Whether a file with these digests is this tag's published file."""
        if self.sha1 is not None:
            return sha1 == self.sha1
        prefix = self.sha256_prefix
        return prefix is not None and sha256.startswith(prefix)

    def describe(self) -> dict[str, Any]:
        return {
            "tag": self.name,
            "url": self.url,
            "filename": self.filename,
            "sha256_prefix": self.sha256_prefix,
            "sha1": self.sha1,
            "acc@1": self.acc1,
            "acc@5": self.acc5,
            "license": self.license,
            "preprocessing": self.preprocess.to_dict(),
        }


@dataclass(frozen=True)
class Backbone:
    """One network: how to build it, which checkpoints exist, which activations it offers.

    ``builder`` is a dotted path to a callable taking ``weights=None`` (torchvision's model
    builders, or our own in :mod:`featurizer.caffe.net`), imported only by :meth:`build`.
    ``plan`` maps a built network to its forward as a flat list of :data:`Stage` in execution
    order; every tap's node must be one of the stage names. The runtime
    (``featurizer.backbone.DecafBackbone``) runs the stages once and stops after the deepest
    requested tap.
    """

    name: str
    summary: str
    builder: str
    taps: tuple[Tap, ...]
    default_layers: tuple[str, ...]
    weight_tags: tuple[WeightTag, ...]
    default_tag_name: str  # what weights="imagenet" means (torchvision's DEFAULT)
    plan: Callable[[nn.Module], list[Stage]] = field(repr=False, compare=False)
    min_input_size: int  # torchvision's meta["min_size"]: the smallest input the graph accepts
    # Dotted path to ``reader(record, path, sha256) -> state_dict`` for a weights format other
    # than a torch state_dict (the Caffe networks read .caffemodel files); None: torch files only.
    weights_reader: str | None = None

    def __post_init__(self) -> None:
        names = [tap.name for tap in self.taps]
        problems = []
        if len(set(names)) != len(names):
            problems.append(f"duplicate tap names {names}")
        if len({(tap.node, tap.reduce) for tap in self.taps}) != len(self.taps):
            problems.append("two taps read the same graph node with the same reduction")
        if not self.default_layers or not set(self.default_layers) <= set(names):
            problems.append(f"default layers {self.default_layers} must be among {names}")
        tags = [tag.name for tag in self.weight_tags]
        if self.default_tag_name not in tags:
            problems.append(f"default tag {self.default_tag_name!r} is not among {tags}")
        crops = {tag.preprocess.crop for tag in self.weight_tags}
        if len(crops) != 1:
            problems.append(f"weight tags disagree on the input size: {sorted(crops)}")
        if problems:
            raise ValueError(f"backbone record {self.name!r}: " + "; ".join(problems))

    @property
    def tap_names(self) -> tuple[str, ...]:
        return tuple(tap.name for tap in self.taps)

    @property
    def dims(self) -> dict[str, int]:
        return {tap.name: tap.dim for tap in self.taps}

    @property
    def input_size(self) -> int:
        """Side of the square crop every weight tag is trained on (checked equal for all)."""
        return self.weight_tags[0].preprocess.crop

    @property
    def default_tag(self) -> WeightTag:
        return self.weight_tag(self.default_tag_name)

    def tap(self, name: str) -> Tap:
        for tap in self.taps:
            if tap.name == name:
                return tap
        raise UnknownLayerError(
            f"unknown layer {name!r} for backbone {self.name}; choose from {list(self.tap_names)}"
        )

    def find_tag(self, name: str) -> WeightTag | None:
        return next((tag for tag in self.weight_tags if tag.name == name), None)

    def weight_tag(self, name: str) -> WeightTag:
        tag = self.find_tag(name)
        if tag is None:
            known = [t.name for t in self.weight_tags]
            raise WeightsError(f"backbone {self.name} has no weight tag {name!r}; known: {known}")
        return tag

    def weights_id(self, tag: WeightTag) -> str:
        """Provenance id of a tag's checkpoint, e.g. ``"resnet50/IMAGENET1K_V2"``."""
        return f"{self.name}/{tag.name}"

    def check_layers(self, layers: Sequence[str] | str) -> tuple[str, ...]:
        """Validate requested tap names (order kept, duplicates dropped)."""
        if isinstance(layers, str):
            layers = [layers]
        known = list(self.tap_names)
        unknown = [name for name in layers if name not in known]
        if unknown:
            raise UnknownLayerError(
                f"unknown layer(s) {unknown} for backbone {self.name}; choose from {known}"
            )
        if not layers:
            raise UnknownLayerError(
                f"no layers requested for backbone {self.name}; choose from {known}"
            )
        return tuple(dict.fromkeys(layers))

    def build(self) -> nn.Module:
        """The bare architecture (default init; build under ``torch.device("meta")`` to skip it)."""
        return import_builder(self.builder)(weights=None)

    def describe(self) -> dict[str, Any]:
        """JSON-safe record for ``decaf backbones --json`` and the service's ``/v1/model``."""
        return {
            "name": self.name,
            "summary": self.summary,
            "builder": self.builder,
            "input_size": self.input_size,
            "min_input_size": self.min_input_size,
            "default_layers": list(self.default_layers),
            "default_weights": self.default_tag_name,
            "weights_formats": ["state_dict", *(["caffemodel"] if self.weights_reader else [])],
            "taps": [tap.describe() for tap in self.taps],
            "weights": [{"id": self.weights_id(tag), **tag.describe()} for tag in self.weight_tags],
        }


def import_builder(builder: str) -> Callable[..., nn.Module]:
    """The callable a dotted ``builder`` path names (imports its module, e.g. torchvision)."""
    module_name, _, attribute = builder.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


_REGISTRY: dict[str, Backbone] = {}
_discovered = False


def register(backbone: Backbone) -> Backbone:
    """Add ``backbone`` to the registry (family modules call this at import)."""
    existing = _REGISTRY.get(backbone.name)
    if existing is not None and existing is not backbone:
        raise ValueError(f"backbone {backbone.name!r} is registered twice")
    _REGISTRY[backbone.name] = backbone
    return backbone


def get_backbone(name: str) -> Backbone:
    """The registered record called ``name``; UnknownBackboneError names the known ones."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; known backbones: {', '.join(backbone_names())}"
        ) from None


def backbone_names() -> tuple[str, ...]:
    """Registered names, the default backbone first, then alphabetical (for CLI choices)."""
    _discover()
    return tuple(sorted(_REGISTRY, key=lambda name: (name != DEFAULT_BACKBONE, name)))


def _discover() -> None:
    # Import every family module of this package once, on first use: they register themselves.
    global _discovered
    if _discovered:
        return
    for module in _family_modules(pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}")
    _discovered = True


def _family_modules(modules: Iterable[pkgutil.ModuleInfo]) -> list[str]:
    return sorted(
        info.name
        for info in modules
        if not info.ispkg and not info.name.startswith("_") and info.name not in _NOT_FAMILIES
    )
