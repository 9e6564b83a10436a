"""`/v1/probes`: fit (from a stored dataset, or few-shot from uploads), list, inspect, delete,
predict.

`POST /v1/probes` accepts two bodies:
- `application/json` (ProbeFromDataset): fit on a feature store; runs as a job (202 + job; the
  probe id is in the job's `result.probe_id` when it succeeds);
- `multipart/form-data` (few-shot): labelled images are featurized by one of the server's
  backbones and a probe is fitted at once (201 + probe).
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar, get_args

from fastapi import File, Path, Query, Request, Response, UploadFile, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from classifiers.options import ClassifierKind
from featurizer.options import CROP_MODES
from service.api.deps import (
    JobsDep,
    ModelsDep,
    ProbesDep,
    SettingsDep,
    UploadsDep,
)
from service.api.errors import problem_responses
from service.api.routing import v1_router
from service.errors import MalformedBodyError, UnsupportedMediaTypeError
from service.paths import ID_PATTERN
from service.predict import predict_uploads
from service.probe_fits import FORM_FIELDS, dataset_fit_params, fit_few_shot, parse_labels
from service.probe_store import probe_to_dict
from service.schemas import (
    FewShotForm,
    JobOut,
    PredictResponse,
    ProbeDetail,
    ProbeFromDataset,
    ProbeList,
    inline_schema,
)
from service.tasks import probe_fit

router = v1_router("probes")
ProbeId = Annotated[str, Path(pattern=ID_PATTERN, description="a probe id (GET /v1/probes)")]

Body = TypeVar("Body", bound=BaseModel)

_FIT_DOC = (
    "Two request bodies.\n\n"
    "**application/json** (`ProbeFromDataset`): fit on a stored dataset; runs as a job → "
    "202 with the job; its `result.probe_id` names the probe when it succeeds.\n\n"
    "**multipart/form-data** (few-shot): `files` (repeated, one part per image) and `labels` "
    '(one JSON array aligned with the files, e.g. `["cat","cat","dog"]`, or one `labels` '
    "part per file, in the same order); optional `name`, `backbone` (default: the server's "
    "default), `layer` (default: the backbone's default layer), `classifier` (logreg|svm), "
    "`C` ('auto' or a number), `crop`. Images are featurized by that backbone and the probe is "
    "fitted at once → 201 with the probe. Files that cannot be decoded are skipped and listed "
    "in `skipped`."
)

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["files", "labels"],
    "properties": {
        "files": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "minItems": 1,
        },
        "labels": {
            "type": "string",
            "description": "JSON array of labels aligned with files (or one `labels` part per "
            "file)",
        },
        "name": {"type": "string"},
        "backbone": {"type": "string"},
        "layer": {"type": "string"},
        "classifier": {"type": "string", "enum": list(get_args(ClassifierKind))},
        "C": {"type": "string", "default": "auto"},
        "crop": {"type": "string", "enum": list(CROP_MODES)},
    },
}

_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(ProbeFromDataset)},
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        },
    }
}


def _validated(model: type[Body], payload: Any) -> Body:
    """Validate a hand-parsed body; errors get the same 422 as bodies FastAPI parses."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False)]
        ) from exc


# --------------------------------------------------------------------------- fit
@router.post(
    "/probes",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Fit a probe (from a stored dataset as a job, or few-shot from uploaded images)",
    description=_FIT_DOC,
    openapi_extra=_OPENAPI_BODY,
    responses={
        201: {"model": ProbeDetail, "description": "few-shot probe fitted"},
        202: {"model": JobOut, "description": "probe_fit job queued"},
        **problem_responses(400, 404, 409, 413, 415),
    },
)
async def create_probe(
    request: Request,
    response: Response,
    settings: SettingsDep,
    models: ModelsDep,
    jobs: JobsDep,
    uploads: UploadsDep,
    probes: ProbesDep,
) -> Any:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type == "application/json":
        body = _validated(ProbeFromDataset, await _json_body(request))
        # File and database work off the event loop (SQLite may wait on a busy writer).
        params = await run_in_threadpool(dataset_fit_params, body, settings, models)
        job = await run_in_threadpool(jobs.submit, probe_fit.KIND, params)
        response.headers["Location"] = f"/v1/jobs/{job['id']}"
        return job
    if content_type == "multipart/form-data":
        # The context manager closes the spooled upload files when we are done with them.
        async with request.form() as form:
            files = [f for f in form.getlist("files") if isinstance(f, StarletteUploadFile)]
            labels = parse_labels(form.getlist("labels"), len(files))
            fields = {key: form.get(key) for key in FORM_FIELDS}
            options = _validated(
                FewShotForm, {k: v for k, v in fields.items() if isinstance(v, str) and v}
            )
            probe = await fit_few_shot(
                files,
                labels,
                options,
                settings=settings,
                models=models,
                uploads=uploads,
                probes=probes,
                receive=request.receive,
            )
        response.status_code = status.HTTP_201_CREATED
        response.headers["Location"] = f"/v1/probes/{probe['id']}"
        return probe
    raise UnsupportedMediaTypeError(
        "send application/json (fit on a stored dataset) or multipart/form-data (few-shot "
        f"labelled images), not {content_type or 'no content type'!r}"
    )


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise MalformedBodyError(f"invalid JSON body: {exc}") from exc


# --------------------------------------------------------------------------- read / delete
@router.get("/probes", response_model=ProbeList, summary="List probes")
def list_probes(probes: ProbesDep) -> dict:
    return {"probes": [probe_to_dict(row) for row in probes.list()]}


@router.get(
    "/probes/{probe_id}",
    response_model=ProbeDetail,
    summary="One probe: classes, metrics, provenance",
    responses=problem_responses(404),
)
def get_probe(probe_id: ProbeId, probes: ProbesDep) -> dict:
    return probe_to_dict(probes.get(probe_id), detail=True)


@router.delete(
    "/probes/{probe_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a probe and its files",
    responses=problem_responses(404),
)
def delete_probe(probe_id: ProbeId, probes: ProbesDep) -> Response:
    probes.delete(probe_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --------------------------------------------------------------------------- predict
@router.post(
    "/probes/{probe_id}/predict",
    response_model=PredictResponse,
    summary="Top-k labels for uploaded images",
    responses=problem_responses(404, 409, 413),
    description="multipart/form-data with `files` (one part per image). The images go to the "
    "probe's own backbone; each gets its top-k labels with scores (probabilities for logreg "
    "probes, margins for SVM probes: see `score_kind`), or its own error entry if it cannot be "
    "decoded. 409 if this server cannot make the features the probe was trained on.",
)
async def predict(
    probe_id: ProbeId,
    request: Request,
    settings: SettingsDep,
    models: ModelsDep,
    uploads: UploadsDep,
    probes: ProbesDep,
    files: Annotated[list[UploadFile], File(description="images, one part each", min_length=1)],
    top_k: Annotated[int, Query(ge=1, le=1000, description="labels per image")] = 5,
) -> dict:
    row = await run_in_threadpool(probes.get, probe_id)
    return await predict_uploads(
        row,
        files,
        top_k=top_k,
        default_crop=settings.crop,
        models=models,
        uploads=uploads,
        probes=probes,
        receive=request.receive,
    )
