"""`/v1/jobs`: list, inspect and cancel background jobs (extractions, index builds, probe fits)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path, Query, Response, status

from service.api.deps import JobsDep
from service.api.errors import problem_responses
from service.api.routing import v1_router
from service.paths import ID_PATTERN
from service.schemas import JobList, JobOut
from service.state import JobStatus
from service.tasks import extraction, index_build, probe_fit

# The kinds of job this server runs (the handlers `service.app` registers).
JobKind = Literal[extraction.KIND, index_build.KIND, probe_fit.KIND]  # type: ignore[valid-type]
JobId = Annotated[str, Path(pattern=ID_PATTERN, description="a job id (POST answers)")]

router = v1_router("jobs")


@router.get("/jobs", response_model=JobList, summary="List jobs, newest first")
def list_jobs(
    jobs: JobsDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict:
    return {"jobs": jobs.list(status=status_filter, kind=kind, limit=limit)}


@router.get(
    "/jobs/{job_id}", response_model=JobOut, summary="One job", responses=problem_responses(404)
)
def get_job(job_id: JobId, jobs: JobsDep) -> dict:
    return jobs.get(job_id)


@router.delete(
    "/jobs/{job_id}",
    response_model=JobOut,
    summary="Cancel a job",
    responses={
        202: {"model": JobOut, "description": "running: it stops after the current batch"},
        **problem_responses(404, 409),
    },
    description="A queued job is cancelled at once (200). A running one stops after its "
    "current batch (202; poll the job; up to a second later when the job runs in another "
    "server process); the parts it finished stay on disk, so submitting the "
    "same extraction again resumes it. A finished job answers 409.",
)
def cancel_job(job_id: JobId, jobs: JobsDep, response: Response) -> dict:
    job = jobs.cancel(job_id)
    if job["status"] != "cancelled":
        response.status_code = status.HTTP_202_ACCEPTED
    return job
