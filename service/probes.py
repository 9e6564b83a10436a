"""Routes for linear probes: fit (from a stored dataset, or few-shot from uploads), list,
inspect, delete, predict.

Probes are saved by `classifiers.save_probe` under `DECAF_DATA_DIR/probes/<id>/` (arrays in an
npz without pickle + JSON) and indexed in the database, so they survive restarts.

`POST /v1/probes` accepts two bodies:
- `application/json` (ProbeFromDataset): fit on a feature store; runs as a job (202 + job; the
  probe id is in the job's `result.probe_id` when it succeeds);
- `multipart/form-data` (few-shot): labelled images are featurized by the server's model and a
  probe is fitted at once (201 + probe). Parts: `files` (repeated, one per image) and `labels`,
  either one JSON array aligned with the files (`["cat","dog",...]`) or one `labels` field per
  file in the same order; optional `name`, `layer`, `classifier`, `C`, `crop`.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import (
    APIRouter,
    Depends,
    File,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
    status,
)
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from classifiers.errors import ProbeError, ProbeMismatchError
from featurizer.backbone import LAYER_NAMES
from featurizer.errors import DecafError, StoreError
from service.datasets import DbDep, JobOut, JobsDep, dataset_path, http_error
from service.deps import featurize_uploads, require_api_key
from service.jobs import JobContext, JobError
from service.paths import NAME_PATTERN
from service.state import Database, ProbeRow, iso

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])

PROBE_CACHE_SIZE = 16


# --------------------------------------------------------------------------- request models
class ProtocolSpec(BaseModel):
    """Evaluation protocol run before the final fit (metrics land in the probe)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["caltech101", "sun397", "stratified"] = Field(
        "stratified",
        description="caltech101: n_train per class, rest test (capped at max_test); sun397: "
        "50/50 per class; stratified: train_fraction per class",
    )
    n_train: int | None = Field(
        None, ge=1, description="training images per class (default: caltech101 30, sun397 50)"
    )
    max_test: int | None = Field(None, ge=1, description="test images per class, at most")
    splits: int = Field(5, ge=1, le=100)
    seed: int = 0
    train_fraction: float = Field(0.5, gt=0, lt=1)


class ProbeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: str = Field("decaf6", description=f"one of {', '.join(LAYER_NAMES)}")
    classifier: Literal["logreg", "svm"] = "logreg"
    C: Literal["auto"] | Annotated[float, Field(gt=0)] = Field(
        "auto", description="'auto': chosen by cross-validation on the training data"
    )
    standardize: bool = True
    l2_normalize: bool = False
    class_weight: Literal["balanced"] | None = None

    @field_validator("layer")
    @classmethod
    def _known_layer(cls, layer: str) -> str:
        if layer not in LAYER_NAMES:
            raise ValueError(f"unknown layer {layer!r}; available: {list(LAYER_NAMES)}")
        return layer


class ProbeFromDataset(ProbeOptions):
    """Fit a probe on a feature store produced by POST /v1/extractions (or `decaf extract`)."""

    dataset: str = Field(pattern=NAME_PATTERN, description="store name (GET /v1/datasets)")
    name: str | None = Field(None, pattern=NAME_PATTERN, description="default: <dataset>-<layer>")
    protocol: ProtocolSpec | None = Field(
        None, description="evaluate with this protocol first; its metrics are stored"
    )


class FewShotForm(ProbeOptions):
    name: str = Field("few-shot", pattern=NAME_PATTERN)
    crop: Literal["center", "tencrop"] | None = None


class ProbeSummary(BaseModel):
    id: str
    name: str
    source: str = Field(description="'dataset' (fitted on a store) or 'upload' (few-shot)")
    dataset: str | None = None
    layer: str
    classifier: str
    classes: list[str]
    num_classes: int
    job_id: str | None = None
    created_at: str | None = None


class ProbeDetail(ProbeSummary):
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    skipped: list[dict[str, Any]] | None = Field(
        None, description="few-shot uploads that could not be used, with the reason"
    )


class ProbeList(BaseModel):
    probes: list[ProbeSummary]


class Prediction(BaseModel):
    label: str
    score: float


class ImagePrediction(BaseModel):
    filename: str
    predictions: list[Prediction] | None = None
    error: str | None = None


class PredictResponse(BaseModel):
    probe_id: str
    layer: str
    score: str = Field(description="what `score` means: class probability")
    results: list[ImagePrediction]


# --------------------------------------------------------------------------- helpers
def probes_dir(settings: Any) -> Path:
    return Path(settings.data_dir).expanduser().resolve() / "probes"


def make_probe(options: dict[str, Any]) -> Any:
    from classifiers.probe import LinearProbe

    return LinearProbe(
        classifier=options.get("classifier", "logreg"),
        C=options.get("C", "auto"),
        standardize=bool(options.get("standardize", True)),
        l2_normalize=bool(options.get("l2_normalize", False)),
        class_weight=options.get("class_weight"),
    )


def probe_to_dict(row: ProbeRow, *, detail: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "source": row.source,
        "dataset": row.dataset,
        "layer": row.layer,
        "classifier": row.classifier,
        "classes": list(row.classes),
        "num_classes": len(row.classes),
        "job_id": row.job_id,
        "created_at": iso(row.created_at),
    }
    if detail:
        data["metrics"] = row.metrics or {}
        data["provenance"] = row.provenance or {}
    return data


def _labelled(
    X: np.ndarray, y: np.ndarray, paths: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows with a label (files directly in the root have none and cannot train a probe)."""
    mask = np.array([label is not None for label in y], dtype=bool)
    kept_paths = [path for path, keep in zip(paths, mask, strict=True) if keep]
    return X[mask], y[mask].astype(str), kept_paths


def save_and_index(
    db: Database,
    settings: Any,
    probe: Any,
    *,
    name: str,
    source: str,
    dataset: str | None,
    options: dict[str, Any],
    provenance: dict[str, Any],
    metrics: dict[str, Any],
    protocol: dict[str, Any] | None = None,
    job_id: str | None = None,
    probe_id: str | None = None,
) -> ProbeRow:
    """Write the probe files (no pickle) and its database row; files first, row last."""
    from classifiers.persistence import save_probe

    probe_id = probe_id or uuid.uuid4().hex
    path = probes_dir(settings) / probe_id
    save_probe(probe, path, provenance=provenance, metrics=metrics, protocol=protocol)
    row = ProbeRow(
        id=probe_id,
        name=name,
        source=source,
        dataset=dataset,
        layer=options["layer"],
        classifier=options.get("classifier", "logreg"),
        path=str(path),
        classes=[str(c) for c in probe.classes_],
        metrics=metrics,
        provenance=provenance,
        job_id=job_id,
    )
    try:
        with db.session() as session:
            session.add(row)
    except Exception:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return row


def _fit_metrics(probe: Any, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    return {
        "num_train": len(y),
        "train_accuracy": float(np.mean(probe.predict(X) == y)),
        "C": float(probe.C_),
    }


# --------------------------------------------------------------------------- probe_fit job
class ProbeJobCancelled(DecafError):
    pass


def run_probe_fit_job(ctx: JobContext) -> dict[str, Any]:
    """Job handler: load a layer of a store, optionally evaluate a protocol, fit, save."""
    from classifiers.persistence import provenance_from_manifest
    from featurizer.store import load_features, read_manifest

    params = ctx.params
    # Derived from the job id, so a job re-run after a crash never makes a second probe.
    probe_id = uuid.uuid5(uuid.NAMESPACE_OID, f"decaf-probe-job:{ctx.job_id}").hex
    with ctx.db.session() as session:
        existing = session.get(ProbeRow, probe_id)
    steps = 3 if params.get("protocol") else 2
    if existing is not None:  # the crash came after the probe was saved
        done = {"done": steps, "total": steps, "step": "done"}
        return {"probe_id": probe_id, "probe": probe_to_dict(existing), "progress": done}
    store = dataset_path(ctx.settings, params["dataset"])
    ctx.report({"done": 0, "total": steps, "step": "loading features"}, force=True)
    manifest = read_manifest(store)
    X, y, paths = load_features(store, params["layer"])
    X, y, paths = _labelled(X, y, paths)
    if len(set(y)) < 2:
        raise ProbeError(
            f"dataset {params['dataset']!r} has {len(set(y))} labelled class(es); a probe needs "
            "at least 2 (labels are the first-level sub-folders of the extraction root)"
        )
    metrics: dict[str, Any] = {}
    protocol = params.get("protocol")
    if protocol:
        _stop_point(ctx)
        ctx.report(
            {"done": 1, "total": steps, "step": f"evaluating {protocol['name']}"}, force=True
        )
        metrics["evaluation"] = _evaluate(ctx, X, y, paths, params, protocol)
    _stop_point(ctx)
    ctx.report({"done": steps - 1, "total": steps, "step": "fitting"}, force=True)
    probe = make_probe(params).fit(X, y)
    metrics.update(_fit_metrics(probe, X, y))
    provenance = provenance_from_manifest(manifest, params["layer"])
    provenance.update(dataset=params["dataset"], source_root=manifest.get("source_root"))
    row = save_and_index(
        ctx.db,
        ctx.settings,
        probe,
        name=params.get("name") or f"{params['dataset']}-{params['layer']}",
        source="dataset",
        dataset=params["dataset"],
        options=params,
        provenance=provenance,
        metrics=metrics,
        protocol=protocol,
        job_id=ctx.job_id,
        probe_id=probe_id,
    )
    progress = {"done": steps, "total": steps, "step": "done"}
    return {"probe_id": row.id, "probe": probe_to_dict(row), "progress": progress}


def _evaluate(
    ctx: JobContext, X: np.ndarray, y: np.ndarray, paths: list[str], params: dict, protocol: dict
) -> dict[str, Any]:
    from classifiers.protocols import evaluate

    def on_split(done: int, total: int) -> None:
        ctx.report({"done": 1, "total": 3, "step": f"evaluating: split {done}/{total}"})
        _stop_point(ctx)  # cancellation takes effect between splits

    result = evaluate(
        X,
        y,
        paths,
        protocol=protocol["name"],
        probe=make_probe(params),
        n_train=protocol["n_train"],
        max_test=protocol["max_test"],
        splits=protocol["splits"],
        seed=protocol["seed"],
        train_fraction=protocol["train_fraction"],
        progress=on_split,
    )
    return result.to_dict()


def _stop_point(ctx: JobContext) -> None:
    if ctx.should_stop():
        raise ProbeJobCancelled("probe fit cancelled")


# --------------------------------------------------------------------------- fit routes
_FEW_SHOT_DOC = (
    "Two request bodies.\n\n"
    "**application/json** (`ProbeFromDataset`): fit on a stored dataset; runs as a job → "
    "202 with the job; its `result.probe_id` names the probe when it succeeds.\n\n"
    "**multipart/form-data** (few-shot): `files` (repeated, one part per image) and `labels` "
    '(one JSON array aligned with the files, e.g. `["cat","cat","dog"]`, or one `labels` '
    "part per file, in the same order); optional `name`, `layer` (default decaf6), "
    "`classifier` (logreg|svm), `C` ('auto' or a number), `crop`. Images are featurized by the "
    "server's model and the probe is fitted at once → 201 with the probe. Files that cannot be "
    "decoded are skipped and listed in `skipped`."
)


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` substituted in place.

    The route parses its body by hand (JSON or multipart), so FastAPI does not register the
    model under `components/schemas`; an inlined schema cannot dangle.
    """
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_schema(ProbeFromDataset)},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files", "labels"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                        "labels": {
                            "type": "string",
                            "description": "JSON array of labels aligned with files (or one "
                            "`labels` part per file)",
                        },
                        "name": {"type": "string"},
                        "layer": {"type": "string", "default": "decaf6"},
                        "classifier": {"type": "string", "enum": ["logreg", "svm"]},
                        "C": {"type": "string", "default": "auto"},
                        "crop": {"type": "string", "enum": ["center", "tencrop"]},
                    },
                }
            },
        },
    }
}


@router.post(
    "/probes",
    status_code=status.HTTP_202_ACCEPTED,
    tags=["probes"],
    summary="Fit a probe (from a stored dataset as a job, or few-shot from uploaded images)",
    description=_FEW_SHOT_DOC,
    openapi_extra=_OPENAPI_BODY,
    responses={
        201: {"model": ProbeDetail, "description": "few-shot probe fitted"},
        202: {"model": JobOut, "description": "probe_fit job queued"},
        404: {"description": "dataset not found"},
    },
)
async def create_probe(request: Request, response: Response, db: DbDep, jobs: JobsDep) -> Any:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type == "application/json":
        return await _submit_dataset_probe(request, response, jobs)
    if content_type == "multipart/form-data":
        return await _fit_few_shot(request, response, db)
    raise HTTPException(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        "send application/json (fit on a stored dataset) or multipart/form-data (few-shot "
        f"labelled images), not {content_type or 'no content type'!r}",
    )


def _validation_error(exc: ValidationError) -> RequestValidationError:
    """The same 422 shape FastAPI gives for bodies it parses itself."""
    return RequestValidationError(
        [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False)]
    )


async def _submit_dataset_probe(request: Request, response: Response, jobs: Any) -> dict:
    try:
        payload = await request.json()
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"invalid JSON body: {exc}") from exc
    try:
        body = ProbeFromDataset.model_validate(payload)
    except ValidationError as exc:
        raise _validation_error(exc) from exc
    settings = request.app.state.settings
    # File and database work off the event loop (SQLite may wait on a busy writer).
    store = dataset_path(settings, body.dataset)
    await run_in_threadpool(_check_dataset_layer, store, body.dataset, body.layer)
    params = body.model_dump()
    try:
        job = await run_in_threadpool(jobs.submit, "probe_fit", params)
    except JobError as exc:
        raise http_error(exc) from exc
    response.headers["Location"] = f"/v1/jobs/{job['id']}"
    return job


def _check_dataset_layer(store: Path, name: str, layer: str) -> None:
    """Fail fast (before queueing a job) when the store or the layer is not there."""
    from featurizer.store import read_manifest

    try:
        manifest = read_manifest(store)
    except StoreError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {name!r} not found") from exc
    if not manifest.get("complete"):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"dataset {name!r} is incomplete (its extraction has not finished)",
        )
    layers = manifest.get("layers") or {}
    if layer not in layers:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"layer {layer!r} is not in dataset {name!r}; available: {sorted(layers)}",
        )


async def _fit_few_shot(request: Request, response: Response, db: Database) -> dict:
    # The context manager closes the spooled upload files when we are done with them.
    async with request.form() as form:
        return await _fit_few_shot_form(request, response, db, form)


async def _fit_few_shot_form(request: Request, response: Response, db: Database, form: Any) -> dict:
    settings = request.app.state.settings
    files = [f for f in form.getlist("files") if isinstance(f, StarletteUploadFile)]
    labels = _parse_labels(form.getlist("labels"), len(files))
    fields = {
        key: form.get(key)
        for key in ("name", "layer", "classifier", "C", "crop")
        if isinstance(form.get(key), str) and form.get(key)
    }
    try:
        options = FewShotForm.model_validate(fields)
    except ValidationError as exc:
        raise _validation_error(exc) from exc
    if options.layer not in settings.layers:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"layer {options.layer!r} is not served; available: {list(settings.layers)}",
        )
    crop = options.crop or settings.crop
    results = await featurize_uploads(
        request, list(files), [options.layer], settings=settings, crop=crop
    )
    good = [(r, label) for r, label in zip(results, labels, strict=True) if r.ok]
    skipped = [{"filename": r.filename, "error": r.error} for r in results if not r.ok]
    if len({label for _, label in good}) < 2:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            "a probe needs usable images of at least 2 classes; skipped: "
            + "; ".join(f"{item['filename']}: {item['error']}" for item in skipped),
        )
    X = np.stack([r.features[options.layer] for r, _ in good]).astype(np.float32)
    y = np.array([label for _, label in good])
    provenance = _served_provenance(request, options.layer, crop)
    params = options.model_dump()

    def fit_and_save() -> ProbeRow:
        probe = make_probe(params).fit(X, y)
        metrics = {**_fit_metrics(probe, X, y), "num_skipped": len(skipped)}
        return save_and_index(
            db,
            settings,
            probe,
            name=options.name,
            source="upload",
            dataset=None,
            options=params,
            provenance=provenance,
            metrics=metrics,
        )

    try:
        row = await run_in_threadpool(fit_and_save)
    except ProbeError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    response.status_code = status.HTTP_201_CREATED
    response.headers["Location"] = f"/v1/probes/{row.id}"
    return {**probe_to_dict(row, detail=True), "skipped": skipped}


def _parse_labels(values: list[Any], count: int) -> list[str]:
    texts = [v for v in values if isinstance(v, str)]
    if len(texts) == 1 and texts[0].lstrip().startswith("["):
        try:
            parsed = json.loads(texts[0])
        except ValueError as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"labels is not valid JSON: {exc}"
            ) from exc
        texts = parsed if isinstance(parsed, list) else []
    labels = [str(label).strip() for label in texts]
    if count == 0:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "no images in 'files'")
    if len(labels) != count or not all(labels):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"got {count} files and {len(labels)} labels: send 'labels' as a JSON array with "
            "one non-empty label per file, in the order of the files",
        )
    return labels


def _served_provenance(request: Request, layer: str, crop: str) -> dict[str, Any]:
    """Provenance of features computed by this server's model with `crop`."""
    from classifiers.persistence import provenance_from_featurizer

    return provenance_from_featurizer(_served_meta(request, crop), layer)


def _served_meta(request: Request, crop: str) -> dict[str, Any]:
    """describe() of the served model as it featurizes with crop mode `crop` (a request may
    ask for another crop mode than the server's default)."""
    described = dict(request.app.state.featurizer.describe())
    described["preprocessing"] = {**described.get("preprocessing", {}), "crop_mode": crop}
    return described


# --------------------------------------------------------------------------- read / delete
@router.get("/probes", response_model=ProbeList, tags=["probes"], summary="List probes")
def list_probes(db: DbDep) -> dict:
    with db.session() as session:
        rows = session.scalars(select(ProbeRow).order_by(ProbeRow.created_at.desc())).all()
        return {"probes": [probe_to_dict(row) for row in rows]}


def _get_row(db: Database, probe_id: str) -> ProbeRow:
    with db.session() as session:
        row = session.get(ProbeRow, probe_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"probe {probe_id!r} not found")
    return row


@router.get(
    "/probes/{probe_id}",
    response_model=ProbeDetail,
    tags=["probes"],
    summary="One probe: classes, metrics, provenance",
    responses={404: {"description": "no such probe"}},
)
def get_probe(probe_id: str, db: DbDep) -> dict:
    return probe_to_dict(_get_row(db, probe_id), detail=True)


@router.delete(
    "/probes/{probe_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["probes"],
    summary="Delete a probe and its files",
    responses={404: {"description": "no such probe"}},
)
def delete_probe(probe_id: str, db: DbDep) -> Response:
    with db.session() as session:
        row = session.get(ProbeRow, probe_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"probe {probe_id!r} not found")
        path = Path(row.path)
        session.delete(row)
    _cache.evict(probe_id)
    shutil.rmtree(path, ignore_errors=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --------------------------------------------------------------------------- predict
class _ProbeCache:
    """Recently used probes kept loaded: reading the npz on every predict call is wasteful."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[Any, dict]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, row: ProbeRow) -> tuple[Any, dict]:
        with self._lock:
            if row.id in self._items:
                self._items.move_to_end(row.id)
                return self._items[row.id]
        from classifiers.persistence import load_probe

        loaded = load_probe(row.path)
        with self._lock:
            self._items[row.id] = loaded
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return loaded

    def evict(self, probe_id: str) -> None:
        with self._lock:
            self._items.pop(probe_id, None)


_cache = _ProbeCache(PROBE_CACHE_SIZE)


@router.post(
    "/probes/{probe_id}/predict",
    response_model=PredictResponse,
    tags=["probes"],
    summary="Top-k labels for uploaded images",
    responses={
        404: {"description": "no such probe"},
        409: {"description": "the served model differs from the probe's"},
    },
    description="multipart/form-data with `files` (one part per image). Each image gets its "
    "top-k labels with class probabilities, or its own error entry if it cannot be decoded. "
    "409 if the server's model differs from the one the probe was trained on.",
)
async def predict(
    probe_id: str,
    request: Request,
    files: Annotated[list[UploadFile], File(description="images, one part each")],
    db: DbDep,
    top_k: Annotated[int, Query(ge=1, le=1000, description="labels per image")] = 5,
) -> dict:
    settings = request.app.state.settings
    row = await run_in_threadpool(_get_row, db, probe_id)
    try:
        probe, meta = await run_in_threadpool(_cache.get, row)
    except ProbeError as exc:
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR, f"probe {probe_id} cannot be loaded: {exc}"
        ) from exc
    provenance = row.provenance or {}
    crop = _probe_crop(provenance) or settings.crop
    _check_served_model(request, meta, row, crop)
    results = await featurize_uploads(
        request, list(files), [row.layer], settings=settings, crop=crop
    )
    ok = [r for r in results if r.ok]
    scores = (
        await run_in_threadpool(
            probe.predict_proba, np.stack([r.features[row.layer] for r in ok]).astype(np.float32)
        )
        if ok
        else np.empty((0, len(row.classes)))
    )
    classes = [str(c) for c in probe.classes_]
    k = min(top_k, len(classes))
    ok_scores = iter(scores)
    out = []
    for result in results:
        if not result.ok:
            out.append({"filename": result.filename, "error": result.error})
            continue
        row_scores = next(ok_scores)
        best = np.argsort(-row_scores, kind="stable")[:k]
        out.append(
            {
                "filename": result.filename,
                "predictions": [{"label": classes[i], "score": float(row_scores[i])} for i in best],
            }
        )
    return {"probe_id": probe_id, "layer": row.layer, "score": "probability", "results": out}


def _probe_crop(provenance: dict[str, Any]) -> str | None:
    # "crop" in a preprocessing spec is the crop *size* (224); the mode is "crop_mode".
    mode = (provenance.get("preprocessing") or {}).get("crop_mode")
    return mode if mode in ("center", "tencrop") else None


def _check_served_model(request: Request, meta: dict, row: ProbeRow, crop: str) -> None:
    """409 when the server's backbone/weights/preprocessing differ from the probe's."""
    from classifiers.persistence import check_compatible

    if row.layer not in request.app.state.settings.layers:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"probe {row.id} uses layer {row.layer!r}, which this server does not serve",
        )
    try:
        check_compatible(meta, _served_meta(request, crop))
    except ProbeMismatchError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
