"""Query features must come from the store's own model: backbone, weights and preprocessing.

:func:`store_featurizer` rebuilds that model from the manifest (``decaf index search``), and
:func:`check_query_model` refuses any model whose description differs (the service checks its
loaded backbone with it). Features of another model live in another space: their nearest
neighbours would look plausible and be wrong, so a mismatch is an error, never a warning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featurizer.store import Manifest
from retrieval.errors import IndexMismatchError

if TYPE_CHECKING:
    from featurizer.extractor import Featurizer


def weights_argument(manifest: Manifest) -> str:
    """The ``weights=`` value that reproduces the store's weights, when one can tell."""
    weights_id = manifest.weights_id
    if weights_id == "random":
        return "random"
    backbone, _, tag = weights_id.partition("/")
    if tag and backbone == manifest.backbone:
        return tag  # the exact tag: a V1 store must not be searched with V2 weights
    raise IndexMismatchError(
        f"the store was extracted with weights {weights_id!r}; pass the same file with "
        "--weights PATH"
    )


def check_query_model(described: dict[str, Any], manifest: Manifest, layer: str) -> None:
    """Raise IndexMismatchError unless ``described`` (``Featurizer.describe()``) is the store's."""
    expected = {
        "backbone": manifest.backbone,
        "weights_id": manifest.weights_id,
        "weights_sha256": manifest.weights_sha256,
        "preprocessing": manifest.preprocessing,
    }
    differing = [
        f"{key}: model {described.get(key)!r} vs store {value!r}"
        for key, value in expected.items()
        if described.get(key) != value
    ]
    if layer not in described.get("layers", {}):
        differing.append(f"layer {layer!r} is not offered by the model")
    if differing:
        raise IndexMismatchError(
            "the queries would be extracted by another model than the store's: "
            + "; ".join(differing)
            + ". Search with the store's backbone, weights and preprocessing (decaf index search "
            "rebuilds them from the store; pass --weights PATH for a weights file)"
        )


def store_featurizer(
    manifest: Manifest, layer: str, *, weights: str | None = None, device: str = "auto"
) -> Featurizer:
    """A Featurizer of the store's backbone, weights, precision and crop, checked against it."""
    from featurizer.extractor import Featurizer

    featurizer = Featurizer(
        layers=[layer],
        backbone=manifest.backbone,
        weights=weights or weights_argument(manifest),
        precision=manifest.precision,  # type: ignore[arg-type]
        device=device,
        crop=manifest.preprocessing.get("crop_mode", "center"),
    )
    check_query_model(featurizer.describe(), manifest, layer)
    return featurizer


def search_image_files(
    searcher: Any, featurizer: Featurizer, images: list[str], k: int, batch_size: int = 32
) -> list[dict[str, Any]]:
    """Neighbours of every readable image; an unreadable one gets its error, the others answers.

    Each result: ``{"filename", "neighbours": [...] | None, "error": str | None}``, in order.
    """
    import torch

    from featurizer.errors import DecafError

    results: list[dict[str, Any]] = []
    ready: list[tuple[int, torch.Tensor]] = []
    for path in images:
        try:
            ready.append((len(results), featurizer.prepare(path)))
            results.append({"filename": path, "neighbours": None, "error": None})
        except (DecafError, OSError) as exc:
            results.append({"filename": path, "neighbours": None, "error": str(exc)})
    layer = searcher.layer
    for start in range(0, len(ready), batch_size):
        chunk = ready[start : start + batch_size]
        features = featurizer.forward(torch.stack([t for _, t in chunk]), [layer])[layer]
        for (position, _), neighbours in zip(chunk, searcher.search(features, k), strict=True):
            results[position]["neighbours"] = [n.to_dict() for n in neighbours]
    return results
