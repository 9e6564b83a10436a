"""Retrieval over the service's datasets: their index, searchers, and their original images.

Framework-free helpers for `service.api.routes.search` and the `index_build` job. The index
format, search and its checks belong to `retrieval`; this module finds a dataset's store, says
which HTTP route builds a missing index, checks that the served model is the dataset's, and
finds a row's image under the dataset's source root — which must still lie inside
`DECAF_DATA_ROOTS` (the roots may have shrunk since the extraction).
"""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from featurizer.store import FeatureStore
from retrieval.errors import IndexMissingError
from retrieval.queries import check_query_model
from service.dataset_store import dataset_path, finished_manifest
from service.errors import NotFoundError
from service.models import LoadedModel
from service.paths import PathNotAllowedError, allowed_roots, resolve_data_root
from service.problems import problem_from_error
from service.settings import Settings

if TYPE_CHECKING:
    from retrieval.search import Searcher, SearcherCache
    from service.uploads import ImageResult


class IndexNotBuiltError(IndexMissingError):
    """The dataset has no index (of that layer) yet: POST /v1/datasets/{name}/index builds one."""

    http_status: ClassVar[int] = 404


class ImageRowNotFoundError(NotFoundError):
    """The dataset has no such row, or the row's image file is gone."""

    http_status: ClassVar[int] = 404


def _missing(name: str, layer: str | None, exc: IndexMissingError) -> IndexNotBuiltError:
    body = f'{{"layer": "{layer}"}}' if layer else '{"layer": "<layer>"}'
    return IndexNotBuiltError(
        f"dataset {name!r} has no index{f' of layer {layer!r}' if layer else ''} yet: build one "
        f"with POST /v1/datasets/{name}/index and body {body} (then poll the job)"
    )


def index_record(settings: Settings, name: str, layer: str | None = None) -> dict[str, Any]:
    """The newest index of dataset `name` (checked against its store) as JSON."""
    from retrieval.index_files import find_record

    finished_manifest(settings, name)
    store = FeatureStore.open(dataset_path(settings, name))
    try:
        record = find_record(store, layer)
    except IndexMissingError as exc:
        raise _missing(name, layer, exc) from exc
    data = record.to_dict()
    data.pop("path", None)  # a server-side path: not the client's business
    return {"dataset": name, **data}


def dataset_searcher(
    settings: Settings, name: str, cache: SearcherCache, layer: str | None = None
) -> Searcher:
    finished_manifest(settings, name)
    try:
        return cache.get(dataset_path(settings, name), layer)
    except IndexMissingError as exc:
        raise _missing(name, layer, exc) from exc


def check_served_model(model: LoadedModel, searcher: Searcher) -> str:
    """The crop mode to extract queries with, once the served model is the dataset's."""
    manifest = searcher.store.manifest
    crop = manifest.preprocessing.get("crop_mode", "center")
    described = model.featurizer.describe()
    described["preprocessing"] = {**described.get("preprocessing", {}), "crop_mode": crop}
    check_query_model(described, manifest, searcher.layer)
    return str(crop)


def search_answers(searcher: Searcher, results: Sequence[ImageResult], k: int) -> list[dict]:
    """One answer per uploaded image, in order: its neighbours, or its problem document."""
    layer = searcher.layer
    good = [result.features[layer] for result in results if result.features is not None]
    found = iter(searcher.search(np.stack(good), k) if good else [])
    answers: list[dict[str, Any]] = []
    for result in results:
        if result.error is None:
            neighbours = [n.to_dict() for n in next(found)]
            answers.append({"filename": result.filename, "neighbours": neighbours, "error": None})
        else:
            error = problem_from_error(result.error).body()
            answers.append({"filename": result.filename, "neighbours": [], "error": error})
    return answers


def image_file(settings: Settings, name: str, row: int) -> tuple[Path, str]:
    """The original image file of dataset `name`'s `row`, and its media type."""
    manifest = finished_manifest(settings, name)
    store = FeatureStore.open(dataset_path(settings, name))
    if not 0 <= row < manifest.num_images:
        raise ImageRowNotFoundError(
            f"dataset {name!r} has rows 0..{manifest.num_images - 1}, not {row}"
        )
    root = resolve_data_root(manifest.source_root, settings.data_roots)
    relative = _row_path(store, row)
    candidate = root / relative
    roots = allowed_roots(settings.data_roots)
    # Lexically first, then after following symlinks: the file must stay below its root.
    if not candidate.resolve(strict=False).is_relative_to(root):
        raise PathNotAllowedError(f"row {row} of dataset {name!r} points outside its source root")
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise ImageRowNotFoundError(
            f"the image of row {row} ({relative}) is no longer in the dataset's source root"
        ) from exc
    if not resolved.is_file() or not any(resolved.is_relative_to(r) for r in roots):
        raise PathNotAllowedError(f"row {row} of dataset {name!r} resolves outside the data roots")
    media_type = mimetypes.guess_type(resolved.name)[0] or "application/octet-stream"
    return resolved, media_type


def _row_path(store: FeatureStore, row: int) -> str:
    from featurizer.store.parts import read_columns

    start = 0
    for entry in store.manifest.parts:
        if row < start + entry.rows:
            table = read_columns(store.part_path(entry), ["path"])
            return str(table.column("path")[row - start].as_py())
        start += entry.rows
    raise ImageRowNotFoundError(f"row {row} is not in any part of the dataset")
