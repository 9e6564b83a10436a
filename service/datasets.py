"""Routes for batch extraction jobs, the job list and the feature stores they produce.

`POST /v1/extractions` reads a directory below `DECAF_DATA_ROOTS` and writes a feature store
under `DECAF_DATA_DIR/datasets/<name>/`; the work runs as a background job (service/jobs.py),
polled with `GET /v1/jobs/{id}` and cancelled with `DELETE /v1/jobs/{id}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select

from featurizer.backbone import LAYER_NAMES
from featurizer.errors import StoreError
from service.deps import require_api_key
from service.jobs import JobError, JobManager
from service.paths import NAME_PATTERN, ServicePathError, resolve_data_root, validate_name
from service.state import Database, DatasetRow, iso

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


# --------------------------------------------------------------------------- dependencies
def get_jobs(request: Request) -> JobManager:
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the job manager is not running")
    return jobs


def get_db(request: Request) -> Database:
    db = getattr(request.app.state, "db", None)
    if db is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the database is not open")
    return db


JobsDep = Annotated[JobManager, Depends(get_jobs)]
DbDep = Annotated[Database, Depends(get_db)]


def http_error(exc: Exception) -> HTTPException:
    """HTTP form of the service's own errors (they carry their status code)."""
    code = getattr(exc, "status_code", status.HTTP_400_BAD_REQUEST)
    return HTTPException(code, str(exc))


def datasets_dir(settings: Any) -> Path:
    return Path(settings.data_dir).expanduser().resolve() / "datasets"


def dataset_path(settings: Any, name: str) -> Path:
    """Store directory of dataset `name` (400 for names that are not a safe directory name)."""
    try:
        return datasets_dir(settings) / validate_name(name, "dataset name")
    except ServicePathError as exc:
        raise http_error(exc) from exc


# --------------------------------------------------------------------------- models
class ExtractionRequest(BaseModel):
    """Extract features of every image below `root` into the feature store `name`."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field(
        min_length=1,
        description="directory to read: absolute, or relative to one of DECAF_DATA_ROOTS; it "
        "must resolve (symlinks and '..' included) inside DECAF_DATA_ROOTS",
        examples=["caltech101"],
    )
    name: str = Field(
        pattern=NAME_PATTERN,
        description="store name: the store is written to DECAF_DATA_DIR/datasets/<name>/",
        examples=["caltech101-decaf"],
    )
    layers: list[str] = Field(default=["decaf6", "decaf7"], min_length=1, max_length=6)
    crop: Literal["center", "tencrop"] = "center"
    precision: Literal["fp32", "bf16", "fp16", "int8"] | None = Field(
        None, description="default: the server's precision (DECAF_PRECISION)"
    )
    batch_size: int = Field(64, ge=1, le=1024)
    part_size: int | None = Field(
        None, ge=1, le=1_000_000, description="rows per Parquet part (the unit of resume)"
    )
    engine: Literal["local", "ray"] = Field(
        "local",
        description="'local': this server's decode workers and model; 'ray': Ray Data on the "
        "server's DECAF_RAY_ADDRESS cluster (or a local Ray), needs the ray extra "
        "(pip install 'decaf[ray]')",
    )
    num_gpus_per_worker: float | None = Field(
        None,
        ge=0,
        le=8,
        description="engine 'ray' only: GPUs per model actor (default: 1 if the cluster has "
        "GPUs, else 0)",
    )
    concurrency: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="engine 'ray' only: number of model actors (default: one per GPU, or one "
        "per CPU node)",
    )
    overwrite: bool = Field(
        False, description="replace a finished store of the same name instead of answering 409"
    )

    @field_validator("layers")
    @classmethod
    def _known_layers(cls, layers: list[str]) -> list[str]:
        unknown = [layer for layer in layers if layer not in LAYER_NAMES]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; available: {list(LAYER_NAMES)}")
        return list(dict.fromkeys(layers))  # drop duplicates, keep the order

    @model_validator(mode="after")
    def _ray_options_need_ray(self) -> ExtractionRequest:
        # Silently ignoring them would let a client believe it got 4 GPU actors.
        if self.engine != "ray":
            given = [
                name
                for name in ("num_gpus_per_worker", "concurrency")
                if getattr(self, name) is not None
            ]
            if given:
                raise ValueError(f'{" and ".join(given)} only apply to "engine": "ray"')
        return self


class JobOut(BaseModel):
    id: str
    kind: str
    status: str = Field(
        description="queued | running | succeeded | failed | cancelled | "
        "interrupted (stopped by repeated server crashes; resubmit to resume)"
    )
    params: dict[str, Any]
    progress: dict[str, Any] = Field(
        description="done, total, errors, images_per_s, eta_s (extraction jobs)"
    )
    result: dict[str, Any] | None = Field(
        None,
        description="extraction: dataset, store, num_images, num_errors, resumed_parts; "
        "probe_fit: probe_id, probe",
    )
    error: str | None = None
    note: str | None = None
    cancel_requested: bool = False
    attempts: int = 0
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str | None = None


class JobList(BaseModel):
    jobs: list[JobOut]


class DatasetSummary(BaseModel):
    name: str
    complete: bool
    num_images: int | None = None
    num_errors: int | None = None
    num_classes: int | None = None
    layers: dict[str, int] | None = None
    source_root: str | None = None
    job_id: str | None = None
    created_at: str | None = None
    error: str | None = None


class DatasetList(BaseModel):
    datasets: list[DatasetSummary]


# --------------------------------------------------------------------------- extraction + jobs
@router.post(
    "/extractions",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    tags=["jobs"],
    summary="Start a batch extraction job",
    responses={
        403: {"description": "root outside DECAF_DATA_ROOTS (or none configured)"},
        404: {"description": "root does not exist"},
        409: {"description": "a store of that name exists or is being written"},
        501: {"description": "engine 'ray' asked but Ray is not installed on the server"},
    },
)
def create_extraction(
    body: ExtractionRequest, request: Request, response: Response, jobs: JobsDep
) -> dict:
    settings = request.app.state.settings
    try:
        root = resolve_data_root(body.root, settings.data_roots)
    except ServicePathError as exc:
        raise http_error(exc) from exc
    out = dataset_path(settings, body.name)
    _check_no_conflict(jobs, body.name, out, body.overwrite)
    params = {
        "root": str(root),
        "requested_root": body.root,
        "out": str(out),
        "name": body.name,
        "layers": body.layers,
        "crop": body.crop,
        "precision": body.precision or settings.precision,
        "batch_size": body.batch_size,
        "part_size": body.part_size,
        "engine": body.engine,
        "num_gpus_per_worker": body.num_gpus_per_worker,
        "concurrency": body.concurrency,
        "overwrite": body.overwrite,
    }
    if body.engine == "ray":
        _check_ray_available()
    try:
        job = jobs.submit("extraction", params, dataset=body.name)
    except JobError as exc:
        raise http_error(exc) from exc
    response.headers["Location"] = f"/v1/jobs/{job['id']}"
    return job


def _check_ray_available() -> None:
    """Refuse engine "ray" at submit time when the server cannot import Ray (501, with the
    install hint) rather than queueing a job that can only fail.
    """
    from featurizer.distributed import EngineUnavailableError, import_ray

    try:
        import_ray()
    except EngineUnavailableError as exc:
        raise HTTPException(
            status.HTTP_501_NOT_IMPLEMENTED, f'"engine": "ray" is not available here: {exc}'
        ) from exc


def _check_no_conflict(jobs: JobManager, name: str, out: Path, overwrite: bool) -> None:
    active = jobs.active_jobs_for_dataset(name)
    if active:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"dataset {name!r} is already being extracted by job {active[0]}; wait for it or "
            "cancel it with DELETE /v1/jobs/{id}",
        )
    if overwrite:
        return
    try:
        from featurizer.store import read_manifest

        complete = bool(read_manifest(out).get("complete"))
    except StoreError:
        return  # no store, or an unfinished one: the job creates or resumes it
    if complete:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f'dataset {name!r} already exists; choose another name or pass "overwrite": true',
        )


@router.get("/jobs", response_model=JobList, tags=["jobs"], summary="List jobs, newest first")
def list_jobs(
    jobs: JobsDep,
    status_filter: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"] | None,
        Query(alias="status"),
    ] = None,
    kind: Annotated[Literal["extraction", "probe_fit"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict:
    return {"jobs": jobs.list(status=status_filter, kind=kind, limit=limit)}


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    tags=["jobs"],
    summary="One job",
    responses={404: {"description": "no such job"}},
)
def get_job(job_id: str, jobs: JobsDep) -> dict:
    try:
        return jobs.get(job_id)
    except JobError as exc:
        raise http_error(exc) from exc


@router.delete(
    "/jobs/{job_id}",
    response_model=JobOut,
    tags=["jobs"],
    summary="Cancel a job",
    responses={
        202: {"description": "running: it stops after the current batch"},
        404: {"description": "no such job"},
        409: {"description": "the job already finished"},
    },
    description="A queued job is cancelled at once (200). A running one stops after its "
    "current batch (202; poll the job; up to a second later when the job runs in another "
    "server process); the parts it finished stay on disk, so submitting the "
    "same extraction again resumes it. A finished job answers 409.",
)
def cancel_job(job_id: str, jobs: JobsDep, response: Response) -> dict:
    try:
        job = jobs.cancel(job_id)
    except JobError as exc:
        raise http_error(exc) from exc
    if job["status"] not in ("cancelled",):
        response.status_code = status.HTTP_202_ACCEPTED
    return job


# --------------------------------------------------------------------------- datasets
@router.get(
    "/datasets", response_model=DatasetList, tags=["datasets"], summary="List feature stores"
)
def list_datasets(request: Request, db: DbDep, jobs: JobsDep) -> dict:
    settings = request.app.state.settings
    root = datasets_dir(settings)
    with db.session() as session:
        rows = {row.name: row for row in session.scalars(select(DatasetRow))}
    on_disk = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    summaries = []
    for name in sorted(set(rows) | on_disk):
        row = rows.get(name)
        if name not in on_disk and not jobs.active_jobs_for_dataset(name):
            continue  # registered but never written (e.g. the job failed before starting)
        summaries.append(_summary(name, root / name, row))
    return {"datasets": summaries}


def _summary(name: str, path: Path, row: DatasetRow | None) -> dict:
    from featurizer.store import read_manifest

    summary: dict[str, Any] = {
        "name": name,
        "complete": False,
        "job_id": row.job_id if row else None,
        "source_root": row.source_root if row else None,
        "created_at": iso(row.created_at) if row else None,
    }
    try:
        manifest = read_manifest(path)
    except StoreError as exc:
        summary["error"] = str(exc)
        return summary
    summary.update(
        complete=bool(manifest.get("complete")),
        num_images=manifest.get("num_images"),
        num_errors=manifest.get("num_errors"),
        num_classes=len(manifest.get("classes") or []),
        layers=manifest.get("layers"),
        source_root=manifest.get("source_root", summary["source_root"]),
        created_at=manifest.get("created_at") or summary["created_at"],
    )
    return summary


@router.get(
    "/datasets/{name}",
    tags=["datasets"],
    summary="One feature store: manifest, counts per class, size on disk",
    responses={400: {"description": "invalid name"}, 404: {"description": "no such store"}},
)
def get_dataset(name: str, request: Request, db: DbDep) -> dict:
    from featurizer.store import store_info

    path = dataset_path(request.app.state.settings, name)
    if not path.is_dir():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {name!r} not found")
    try:
        info = store_info(path)
    except StoreError as exc:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"dataset {name!r} has no readable store yet: {exc}"
        ) from exc
    with db.session() as session:
        row = session.get(DatasetRow, name)
        info["job_id"] = row.job_id if row else None
    info["name"] = name
    return info
