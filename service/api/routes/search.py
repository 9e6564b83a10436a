"""`/v1/datasets/{name}/index|search|images`: retrieval over a dataset (see `retrieval`).

- `POST /v1/datasets/{name}/index` (JSON `IndexRequest`) → 202 with a job (`index_build`):
  progress (rows added) in `GET /v1/jobs/{id}`, cancel with `DELETE /v1/jobs/{id}`;
- `GET /v1/datasets/{name}/index` → the newest index's record (404 naming the build route);
- `POST /v1/datasets/{name}/search?k=10` (multipart `images`, like `/v1/features`) → the
  neighbours of each image; queries are extracted through the micro-batcher of the dataset's
  backbone, which must be loaded with the dataset's weights and preprocessing;
- `GET /v1/datasets/{name}/images/{row}` → the original image of a row, for thumbnails.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import File, Path, Query, Request, Response, UploadFile, status
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from retrieval.search import clamp_k
from service.api.deps import JobsDep, ModelsDep, SettingsDep, UploadsDep
from service.api.errors import problem_responses
from service.api.routing import DatasetName, v1_router
from service.dataset_search import (
    check_served_model,
    dataset_searcher,
    image_file,
    index_record,
    search_answers,
)
from service.dataset_store import check_layer_stored, dataset_path, finished_manifest
from service.schemas import IndexOut, IndexRequest, JobOut, SearchResponse
from service.tasks import index_build
from service.uploads import ImagesFailedError

router = v1_router("datasets")

MAX_K = 1000


def _searchers(request: Request) -> Any:
    from retrieval.search import SearcherCache

    cache = getattr(request.app.state, "searchers", None)
    if cache is None:  # one per app: loaded indexes are reused across requests
        cache = request.app.state.searchers = SearcherCache()
    return cache


@router.post(
    "/datasets/{name}/index",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    summary="Build a FAISS index of one layer of a dataset (a job)",
    responses=problem_responses(400, 404, 409),
)
def build_index(
    name: DatasetName, body: IndexRequest, response: Response, settings: SettingsDep, jobs: JobsDep
) -> dict:
    manifest = finished_manifest(settings, name)
    check_layer_stored(manifest, name, body.layer)
    _check_recipe(body, manifest.layers[body.layer], manifest.num_images)
    params = {"dataset": name, "store": str(dataset_path(settings, name)), **body.model_dump()}
    job = jobs.submit(index_build.KIND, params)
    response.headers["Location"] = f"/v1/jobs/{job['id']}"
    return job


def _check_recipe(body: IndexRequest, dim: int, rows: int) -> None:
    """Refuse at submit time what the build would refuse later (a 422 now, not a failed job)."""
    from retrieval.recipe import IndexSpec, plan

    plan(IndexSpec(body.layer, body.dim, body.whiten, body.codec, body.kind), rows, dim)


@router.get(
    "/datasets/{name}/index",
    response_model=IndexOut,
    summary="The dataset's index: what it was built from and how",
    responses=problem_responses(400, 404, 409),
)
def get_index(
    name: DatasetName,
    settings: SettingsDep,
    layer: Annotated[str | None, Query(description="the layer's index (default: newest)")] = None,
) -> dict[str, Any]:
    return index_record(settings, name, layer)


@router.post(
    "/datasets/{name}/search",
    response_model=SearchResponse,
    summary="Nearest images of the dataset for each uploaded image",
    responses=problem_responses(400, 404, 409, 413, 415),
)
async def search_dataset(
    name: DatasetName,
    request: Request,
    settings: SettingsDep,
    models: ModelsDep,
    uploads: UploadsDep,
    images: Annotated[list[UploadFile], File(description="one or many query images")],
    k: Annotated[int, Query(ge=1, le=MAX_K, description="neighbours per image")] = 10,
    layer: Annotated[str | None, Query(description="the layer's index (default: newest)")] = None,
) -> dict[str, Any]:
    searcher = await run_in_threadpool(dataset_searcher, settings, name, _searchers(request), layer)
    manifest = searcher.store.manifest
    model = models.get(manifest.backbone)
    crop = check_served_model(model, searcher)
    k, note = clamp_k(k, searcher.rows)
    results = await uploads.featurize(
        images, model=model, layers=[searcher.layer], crop=crop, receive=request.receive
    )
    if not any(result.ok for result in results):
        raise ImagesFailedError(results)
    answers = await run_in_threadpool(search_answers, searcher, results, k)
    return {"k": k, "note": note, "index": searcher.record.name, "results": answers}


@router.get(
    "/datasets/{name}/images/{row}",
    summary="The original image of one row of a dataset (for thumbnails)",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/*": {}}, "description": "the image file as stored"},
        **problem_responses(400, 403, 404, 409),
    },
)
def get_image(
    name: DatasetName,
    row: Annotated[int, Path(ge=0, description="the row's position in the store")],
    settings: SettingsDep,
) -> FileResponse:
    path, media_type = image_file(settings, name, row)
    return FileResponse(path, media_type=media_type)
