"""Pretrained-weights specs and the one loader every weights source goes through.

A :class:`BackboneSpec` describes one pretrained network the way torchvision's ``Weights`` enums do
(url, file name with its sha256 prefix, preprocessing, layer dims, licence), in a registry keyed by
name so other torchvision backbones can be added later. :func:`resolve_weights` turns the user's
``weights`` argument into a verified state_dict:

- ``"imagenet"``: ``<torch.hub.get_dir()>/checkpoints/<filename>`` (so ``TORCH_HOME`` is honoured
  and a file torchvision already downloaded is reused). ``DECAF_WEIGHTS=PATH`` in the environment
  overrides it. If the file is missing it is downloaded only when ``download=True``; every failure
  is a :class:`WeightsError` naming the expected path and how to supply the file. Never a silent
  fallback to other weights.
- a path to a ``.pth``/``.pt`` state_dict: read with ``torch.load(weights_only=True)`` (no pickle
  code execution). If its sha256 matches a registered spec it gets that spec's id, so features made
  from the cache file and from the same file given explicitly stay compatible.
- ``"random"``: seeded default init, for tests only, with a loud warning.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from featurizer.errors import WeightsError
from featurizer.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

WEIGHTS_ENV_VAR = "DECAF_WEIGHTS"
RANDOM_WEIGHTS = "random"
IMAGENET_WEIGHTS = "imagenet"


@dataclass(frozen=True)
class BackboneSpec:
    """One pretrained network: where its weights live and how its inputs must look."""

    name: str
    weights_id: str
    url: str
    filename: str
    sha256_prefix: str
    preprocess: PreprocessSpec
    layer_dims: dict[str, int]
    license: str
    arch: str = "alexnet"  # torchvision.models builder that matches the state_dict
    accuracy: dict[str, float] = field(default_factory=dict)  # published ImageNet-1K numbers

    @property
    def full_weights_id(self) -> str:
        return f"{self.name}/{self.weights_id}"

    def cache_path(self) -> Path:
        """Where torchvision itself would keep the file (``TORCH_HOME`` honoured)."""
        return Path(torch.hub.get_dir()) / "checkpoints" / self.filename


@dataclass(frozen=True)
class LoadedWeights:
    """A verified state_dict plus the provenance that goes into manifests and probes."""

    state_dict: dict[str, torch.Tensor]
    weights_id: str  # "alexnet/IMAGENET1K_V1", "file:<basename>" or "random"
    sha256: str | None  # of the file read; None for random weights
    source: str  # the path read, or "random"


# Facts from torchvision's AlexNet_Weights.IMAGENET1K_V1 (the "one weird trick" AlexNet, 61.1 M
# parameters). Only metadata is reused; loading goes through resolve_weights below.
_ALEXNET = BackboneSpec(
    name="alexnet",
    weights_id="IMAGENET1K_V1",
    url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    filename="alexnet-owt-7be5be79.pth",
    sha256_prefix="7be5be79",
    preprocess=PreprocessSpec(
        resize=256,
        crop=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        interpolation="bilinear",
        antialias=True,
    ),
    layer_dims={
        "decaf5": 9216,
        "decaf6_pre": 4096,
        "decaf6": 4096,
        "decaf7_pre": 4096,
        "decaf7": 4096,
        "logits": 1000,
    },
    license="BSD-3-Clause (torchvision model weights)",
    arch="alexnet",
    accuracy={"acc@1": 56.522, "acc@5": 79.066},
)

BACKBONES: dict[str, BackboneSpec] = {_ALEXNET.name: _ALEXNET}


def get_backbone_spec(backbone: str) -> BackboneSpec:
    try:
        return BACKBONES[backbone]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise WeightsError(f"unknown backbone {backbone!r}; known backbones: {known}") from None


def build_architecture(spec: BackboneSpec) -> torch.nn.Module:
    """The bare torchvision network for ``spec`` (no weights loaded, default init)."""
    import torchvision

    return getattr(torchvision.models, spec.arch)(weights=None)


def resolve_weights(
    weights: str = IMAGENET_WEIGHTS,
    backbone: str = "alexnet",
    *,
    download: bool = True,
    seed: int = 0,
) -> LoadedWeights:
    """Turn ``weights`` ("imagenet", a file path or "random") into a verified state_dict."""
    spec = get_backbone_spec(backbone)
    if weights == RANDOM_WEIGHTS:
        return _random_weights(spec, seed)
    if weights == IMAGENET_WEIGHTS:
        override = os.environ.get(WEIGHTS_ENV_VAR)
        if override:
            return _load_file(spec, Path(override).expanduser(), origin=f"${WEIGHTS_ENV_VAR}")
        return _load_pretrained(spec, download=download)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights {weights!r} is neither 'imagenet', 'random' nor an existing file "
            f"(looked for {path.resolve()})"
        )
    return _load_file(spec, path, origin="--weights")


def _how_to_supply(spec: BackboneSpec) -> str:
    return (
        f"Supply the file with `--weights PATH` or `{WEIGHTS_ENV_VAR}=PATH`, or copy "
        f"{spec.filename} (from {spec.url}) to {spec.cache_path()}."
    )


def _load_pretrained(spec: BackboneSpec, *, download: bool) -> LoadedWeights:
    path = spec.cache_path()
    if not path.is_file():
        if not download:
            raise WeightsError(
                f"pretrained weights for {spec.full_weights_id} not found at {path} and "
                f"downloading is disabled. {_how_to_supply(spec)}"
            )
        _download(spec, path)
    digest = sha256_of_file(path)
    if not digest.startswith(spec.sha256_prefix):
        raise WeightsError(
            f"{path} is corrupt or not {spec.full_weights_id}: its sha256 {digest[:16]}... does "
            f"not start with {spec.sha256_prefix}. Delete it and retry. {_how_to_supply(spec)}"
        )
    state_dict = _read_state_dict(spec, path)
    return LoadedWeights(state_dict, spec.full_weights_id, digest, str(path))


def _download(spec: BackboneSpec, path: Path) -> None:
    log.warning("downloading %s weights from %s to %s", spec.full_weights_id, spec.url, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # hash_prefix makes torch verify the sha256 before the file is moved into place, so a
        # partial or tampered download never lands at the cache path.
        torch.hub.download_url_to_file(spec.url, str(path), hash_prefix=spec.sha256_prefix)
    except Exception as exc:  # network, disk or hash failure: all mean "no usable file"
        raise WeightsError(
            f"could not download {spec.full_weights_id} weights from {spec.url} to {path} "
            f"({type(exc).__name__}: {exc}). {_how_to_supply(spec)}"
        ) from exc


def _load_file(spec: BackboneSpec, path: Path, *, origin: str) -> LoadedWeights:
    if not path.is_file():
        raise WeightsError(f"weights file given by {origin} does not exist: {path.resolve()}")
    digest = sha256_of_file(path)
    state_dict = _read_state_dict(spec, path)
    known = _spec_with_hash(digest)
    weights_id = known.full_weights_id if known is not None else f"file:{path.name}"
    return LoadedWeights(state_dict, weights_id, digest, str(path.resolve()))


def _spec_with_hash(digest: str) -> BackboneSpec | None:
    for spec in BACKBONES.values():
        if digest.startswith(spec.sha256_prefix):
            return spec
    return None


def _read_state_dict(spec: BackboneSpec, path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"cannot read weights file {path}: {type(exc).__name__}: {exc}. It must be a "
            f"state_dict saved with torch.save (pickled code is refused)."
        ) from exc
    state_dict = _unwrap_state_dict(loaded, path)
    check_state_dict(spec, state_dict, source=str(path))
    return state_dict


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


def check_state_dict(spec: BackboneSpec, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise WeightsError unless ``state_dict`` has exactly the architecture's names and shapes."""
    with torch.device("meta"):  # shapes only: no 61 M-parameter init
        reference = build_architecture(spec)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}")
        if unexpected:
            details.append(f"unexpected {unexpected[:5]}")
        if wrong:
            details.append(
                "wrong shapes " + ", ".join(f"{k}: {got[k]} != {expected[k]}" for k in wrong[:5])
            )
        raise WeightsError(f"{source} is not a {spec.name} state_dict: " + "; ".join(details))
    not_float = sorted(k for k, v in state_dict.items() if not v.is_floating_point())
    if not_float:
        raise WeightsError(f"{source}: non-float tensors for {not_float[:5]}")


def _random_weights(spec: BackboneSpec, seed: int) -> LoadedWeights:
    message = (
        f"USING RANDOM WEIGHTS for {spec.name} (seed {seed}): features are meaningless for "
        f"transfer learning. Only tests should ask for weights='random'."
    )
    warnings.warn(message, UserWarning, stacklevel=3)
    log.warning(message)
    state_dict = _seeded_state_dict(spec.arch, seed)
    return LoadedWeights(state_dict, RANDOM_WEIGHTS, None, RANDOM_WEIGHTS)


@functools.lru_cache(maxsize=2)
def _seeded_state_dict(arch: str, seed: int) -> dict[str, torch.Tensor]:
    # Cached because test suites build many random featurizers; the tensors are only ever read
    # (inference only; precision changes make copies).
    # fork_rng keeps the caller's global RNG stream untouched by our seeded init.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        import torchvision

        return getattr(torchvision.models, arch)(weights=None).state_dict()


def sha256_of_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
