"""The one loader every weights source goes through, per backbone and weight tag.

:func:`resolve_weights` turns the user's ``weights`` argument into a verified state_dict plus the
preprocessing that goes with it. The facts about each checkpoint (url, file name, sha256 prefix,
preprocessing, accuracy) live in the backbone's record (:mod:`featurizer.backbones`):

- ``"imagenet"``: the backbone's default tag (torchvision's ``DEFAULT``). ``DECAF_WEIGHTS=PATH``
  in the environment overrides it.
- a tag name such as ``"IMAGENET1K_V1"``: ``<torch.hub.get_dir()>/checkpoints/<filename>`` (so
  ``TORCH_HOME`` is honoured and a file torchvision already downloaded is reused). If the file is
  missing it is downloaded only when ``download=True``; every failure is a :class:`WeightsError`
  naming the expected path and how to supply the file. Never a silent fallback to other weights.
- a path to a ``.pth``/``.pt`` state_dict: read with ``torch.load(weights_only=True)`` (no pickle
  code execution). If its sha256 matches one of the backbone's tags it gets that tag's id and
  preprocessing, so features made from the cache file and from the same file given explicitly
  stay compatible; otherwise ``file:<name>`` with the default tag's preprocessing.
- ``"random"``: seeded default init, for tests only, with a loud warning.

Backbones whose record names a ``weights_reader`` (the Caffe networks) also take their native
format wherever a file is accepted: a ``.caffemodel`` is converted once into a cached state_dict
(:mod:`featurizer.caffe.convert`) and identified by its own sha256. Their published files carry
the publisher's sha1 instead of torchvision's sha256-prefixed name; tags check whichever they
have. ``mean_image`` (Caffe's ``ilsvrc_2012_mean``) replaces the per-channel mean of a BGR
(Caffe) network; its sha256 goes into the preprocessing spec, so stores and probes record it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from featurizer.atomic import atomic_path
from featurizer.backbones import (
    Backbone,
    WeightTag,
    get_backbone,
    import_builder,
)
from featurizer.digests import digests_of_file, sha256_of_file

__all__ = [
    "IMAGENET_WEIGHTS",
    "RANDOM_WEIGHTS",
    "WEIGHTS_ENV_VAR",
    "LoadedWeights",
    "cache_path",
    "canonical_state_dict",
    "digests_of_file",
    "resolve_weights",
    "sha256_of_file",  # re-exported: its home is featurizer.digests
]
from featurizer.errors import WeightsError
from featurizer.spec import PreprocessSpec

log = logging.getLogger(__name__)

WEIGHTS_ENV_VAR = "DECAF_WEIGHTS"
RANDOM_WEIGHTS = "random"
IMAGENET_WEIGHTS = "imagenet"


@dataclass(frozen=True)
class LoadedWeights:
    """A verified state_dict plus the provenance that goes into manifests and probes."""

    state_dict: dict[str, torch.Tensor]
    weights_id: str  # "resnet50/IMAGENET1K_V2", "file:<basename>" or "random"
    sha256: str | None  # of the file read; None for random weights
    source: str  # the path read, or "random"
    preprocess: PreprocessSpec  # the tag's; the default tag's for other files and random
    # (3, crop, crop) float32, 0-255, network channel order: a per-pixel mean that replaces
    # preprocess.mean (whose mean_image field holds this file's sha256); None: per-channel mean.
    mean_image: torch.Tensor | None = None


def cache_path(tag: WeightTag) -> Path:
    """Where torchvision itself keeps ``tag``'s file (``TORCH_HOME`` honoured)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / tag.filename


def resolve_weights(
    weights: str = IMAGENET_WEIGHTS,
    backbone: Backbone | str = "alexnet",
    *,
    download: bool = True,
    seed: int = 0,
    mean_image: str | Path | None = None,
) -> LoadedWeights:
    """Turn ``weights`` ("imagenet", a tag name, a file path or "random") into a state_dict.

    ``backbone`` is a registered name or a record (tests pass records of their own).
    ``mean_image``: a ``.binaryproto``/``.npy`` mean image for a Caffe (BGR) network.
    """
    record = get_backbone(backbone) if isinstance(backbone, str) else backbone
    if mean_image is not None:  # before the (slow) weights load
        _check_mean_image_fits(record, record.default_tag.preprocess, mean_image)
    loaded = _resolve(weights, record, download=download, seed=seed)
    if mean_image is None:
        return loaded
    return _with_mean_image(loaded, record, mean_image)


def _resolve(weights: str, record: Backbone, *, download: bool, seed: int) -> LoadedWeights:
    if weights == RANDOM_WEIGHTS:
        return _random_weights(record, seed)
    if weights == IMAGENET_WEIGHTS:
        override = os.environ.get(WEIGHTS_ENV_VAR)
        # `decaf serve --weights imagenet` exports the word itself: that is no file override.
        if override and override != IMAGENET_WEIGHTS:
            return _load_file(record, Path(override).expanduser(), origin=f"${WEIGHTS_ENV_VAR}")
        return _load_tag(record, record.default_tag, download=download)
    tag = record.find_tag(weights)
    if tag is not None:
        return _load_tag(record, tag, download=download)
    path = Path(weights).expanduser()
    if not path.is_file():
        tags = ", ".join(t.name for t in record.weight_tags)
        raise WeightsError(
            f"weights {weights!r} is neither 'imagenet', 'random', a weight tag of "
            f"{record.name} ({tags}) nor an existing file (looked for {path.resolve()})"
        )
    return _load_file(record, path, origin="--weights")


def _with_mean_image(loaded: LoadedWeights, record: Backbone, path: str | Path) -> LoadedWeights:
    from featurizer.caffe.mean import load_mean_image

    spec = loaded.preprocess
    _check_mean_image_fits(record, spec, path)
    mean = load_mean_image(path, spec.crop)
    preprocess = dataclasses.replace(spec, mean_image=mean.sha256)
    return dataclasses.replace(loaded, preprocess=preprocess, mean_image=mean.pixels)


def _check_mean_image_fits(record: Backbone, spec: PreprocessSpec, path: str | Path) -> None:
    if spec.channel_order != "bgr":
        raise WeightsError(
            f"a mean image (--mean-image {path}) is Caffe's BGR 0-255 ILSVRC mean; it fits the "
            f"Caffe networks (caffenet, bvlc_alexnet), not {record.name}, whose input is "
            f"normalised by its own per-channel mean and std"
        )


def _how_to_supply(tag: WeightTag) -> str:
    checksum = f", sha1 {tag.sha1}" if tag.sha1 else ""
    return (
        f"Supply the file with `--weights PATH` or `{WEIGHTS_ENV_VAR}=PATH`, or copy "
        f"{tag.filename} (from {tag.url}{checksum}) to {cache_path(tag)}."
    )


def _load_tag(record: Backbone, tag: WeightTag, *, download: bool) -> LoadedWeights:
    weights_id = record.weights_id(tag)
    path = cache_path(tag)
    if not path.is_file():
        if not download:
            raise WeightsError(
                f"pretrained weights for {weights_id} not found at {path} and downloading is "
                f"disabled. {_how_to_supply(tag)}"
            )
        _download(weights_id, tag, path)
    digest, sha1 = digests_of_file(path)
    if not tag.matches(digest, sha1):
        expected = f"sha1 {tag.sha1}" if tag.sha1 else f"a sha256 starting with {tag.sha256_prefix}"
        raise WeightsError(
            f"{path} is corrupt or not {weights_id}: its sha256 is {digest[:16]}... and sha1 "
            f"{sha1}, expected {expected}. Delete it and retry. {_how_to_supply(tag)}"
        )
    state_dict = _read_state_dict(record, path, digest)
    return LoadedWeights(state_dict, weights_id, digest, str(path), tag.preprocess)


def _download(weights_id: str, tag: WeightTag, path: Path) -> None:
    log.warning("downloading %s weights from %s to %s", weights_id, tag.url, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tag.sha256_prefix is not None:
            # hash_prefix makes torch verify the sha256 before the file is moved into place, so
            # a partial or tampered download never lands at the cache path.
            torch.hub.download_url_to_file(tag.url, str(path), hash_prefix=tag.sha256_prefix)
        else:
            _download_checking_sha1(tag, path)
    except Exception as exc:  # network, disk or hash failure: all mean "no usable file"
        raise WeightsError(
            f"could not download {weights_id} weights from {tag.url} to {path} "
            f"({type(exc).__name__}: {exc}). {_how_to_supply(tag)}"
        ) from exc


def _download_checking_sha1(tag: WeightTag, path: Path) -> None:
    # The same guarantee for files published with a sha1 (Caffe's model zoo): checked before the
    # rename, so the cache path only ever holds the published file.
    with atomic_path(path) as partial:
        torch.hub.download_url_to_file(tag.url, str(partial), progress=True)
        _, sha1 = digests_of_file(partial)
        if sha1 != tag.sha1:
            raise ValueError(f"downloaded file has sha1 {sha1}, the publisher gives {tag.sha1}")


def _load_file(record: Backbone, path: Path, *, origin: str) -> LoadedWeights:
    if not path.is_file():
        raise WeightsError(f"weights file given by {origin} does not exist: {path.resolve()}")
    digest, sha1 = digests_of_file(path)
    state_dict = _read_state_dict(record, path, digest)
    tag = _tag_with_hash(record, digest, sha1)
    if tag is None:
        weights_id, preprocess = f"file:{path.name}", record.default_tag.preprocess
    else:
        weights_id, preprocess = record.weights_id(tag), tag.preprocess
    return LoadedWeights(state_dict, weights_id, digest, str(path.resolve()), preprocess)


def _tag_with_hash(record: Backbone, digest: str, sha1: str) -> WeightTag | None:
    return next((t for t in record.weight_tags if t.matches(digest, sha1)), None)


def _read_state_dict(record: Backbone, path: Path, digest: str) -> dict[str, torch.Tensor]:
    if record.weights_reader is not None:
        if not _is_torch_file(path):
            reader = import_builder(record.weights_reader)
            return canonical_state_dict(record, reader(record, path, digest), source=str(path))
    elif path.suffix.lower() == ".caffemodel":
        raise WeightsError(
            f"{path} is a Caffe model; {record.name} takes torch state_dicts. Use a Caffe "
            f"backbone (--backbone caffenet or bvlc_alexnet; see `decaf backbones`)."
        )
    # mmap: the tensors page in from the file instead of being read into a buffer and copied
    # (start-up, issue 13); only the zip format (torch.save since 1.6) can be mapped.
    mmap = zipfile.is_zipfile(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        raise WeightsError(
            f"cannot read weights file {path}: {type(exc).__name__}: {exc}. It must be a "
            f"state_dict saved with torch.save (pickled code is refused)."
        ) from exc
    return canonical_state_dict(record, _unwrap_state_dict(loaded, path), source=str(path))


def _unwrap_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    # Training scripts often save {"state_dict": ...} or {"model": ...}, and DataParallel prefixes
    # every key with "module.": accept both rather than make users re-save their checkpoint.
    if isinstance(loaded, dict):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise WeightsError(f"{path} does not contain a state_dict (a mapping name -> tensor)")
    return {re.sub(r"^module\.", "", k): v for k, v in loaded.items()}


def canonical_state_dict(
    record: Backbone, state_dict: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """``state_dict`` under the architecture's current key names, or a WeightsError saying why not.

    The tensors are loaded into a meta-device build (no init, no copy), so torchvision's own
    legacy-key hooks run: published checkpoints that predate a module rename (ViT's
    ``mlp.linear_1`` -> ``mlp.0``, BatchNorm without ``num_batches_tracked``) load as torchvision
    loads them, and the result carries today's names.
    """
    with torch.device("meta"):  # shapes only: no multi-million-parameter init
        net = record.build()
    expected = net.state_dict()
    wrong = sorted(
        k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape
    )
    if wrong:
        shapes = ", ".join(
            f"{k}: {tuple(state_dict[k].shape)} != {tuple(expected[k].shape)}" for k in wrong[:5]
        )
        raise WeightsError(f"{source} is not a {record.name} state_dict: wrong shapes {shapes}")
    try:
        result = net.load_state_dict(state_dict, strict=False, assign=True)
    except RuntimeError as exc:  # a shape mismatch under a legacy key name
        raise WeightsError(f"{source} is not a {record.name} state_dict: {exc}") from exc
    details = []
    if result.missing_keys:
        details.append(f"missing {sorted(result.missing_keys)[:5]}")
    if result.unexpected_keys:
        details.append(f"unexpected {sorted(result.unexpected_keys)[:5]}")
    if details:
        raise WeightsError(f"{source} is not a {record.name} state_dict: " + "; ".join(details))
    loaded = net.state_dict()
    floats = {k for k, v in expected.items() if v.is_floating_point()}
    not_float = sorted(k for k in floats if not loaded[k].is_floating_point())
    if not_float:
        raise WeightsError(f"{source}: non-float tensors for {not_float[:5]}")
    return loaded


def _random_weights(record: Backbone, seed: int) -> LoadedWeights:
    message = (
        f"USING RANDOM WEIGHTS for {record.name} (seed {seed}): features are meaningless for "
        f"transfer learning. Only tests should ask for weights='random'."
    )
    warnings.warn(message, UserWarning, stacklevel=4)
    log.warning(message)
    state_dict = _seeded_state_dict(record.builder, seed)
    preprocess = record.default_tag.preprocess
    return LoadedWeights(state_dict, RANDOM_WEIGHTS, None, RANDOM_WEIGHTS, preprocess)


@functools.lru_cache(maxsize=2)
def _seeded_state_dict(builder: str, seed: int) -> dict[str, torch.Tensor]:
    # Cached because test suites build many random featurizers; the tensors are only ever read
    # (inference only; precision changes make copies). Two entries: a test module alternating
    # two backbones stays fast, and the cache never holds more than ~0.9 GB (VGG-16's 528 MB
    # + ViT-B/16's 346 MB). VGG-16's default init takes ~1.9 s on one core (measured), the
    # others 0.3-0.8 s.
    # fork_rng keeps the caller's global RNG stream untouched by our seeded init.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return import_builder(builder)(weights=None).state_dict()


def _is_torch_file(path: Path) -> bool:
    # torch.save writes a zip archive (since torch 1.6) or, before that, a pickle stream.
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"
