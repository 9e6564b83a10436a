"""`POST /v1/extractions`: a batch extraction job, images below a data root → a feature store.

Reads a directory below `DECAF_DATA_ROOTS` and writes a feature store under
`DECAF_DATA_DIR/datasets/<name>/` with one of the loaded backbones; the work runs as a background
job (`service.tasks.extraction`), polled with `GET /v1/jobs/{id}` and cancelled with
`DELETE /v1/jobs/{id}`.
"""

from __future__ import annotations

from fastapi import Response, status

from featurizer.backbones import get_backbone
from service.api.deps import JobsDep, ModelsDep, SettingsDep
from service.api.errors import problem_responses
from service.api.routing import v1_router
from service.dataset_store import check_no_conflict, dataset_path
from service.errors import FeatureUnavailableError
from service.paths import resolve_data_root
from service.schemas import ExtractionRequest, JobOut
from service.tasks import extraction

router = v1_router("jobs")


@router.post(
    "/extractions",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    summary="Start a batch extraction job",
    responses=problem_responses(400, 403, 404, 409, 501),
)
def create_extraction(
    body: ExtractionRequest,
    response: Response,
    settings: SettingsDep,
    models: ModelsDep,
    jobs: JobsDep,
) -> dict:
    backbone = models.get(body.backbone).name
    layers = models.check_taps(backbone, body.layers or get_backbone(backbone).default_layers)
    root = resolve_data_root(body.root, settings.data_roots)
    out = dataset_path(settings, body.name)
    check_no_conflict(jobs, body.name, out, body.overwrite)
    if body.engine == "ray":
        _check_ray_available()
    params = {
        **body.model_dump(exclude={"root"}),
        "root": str(root),
        "requested_root": body.root,
        "out": str(out),
        "backbone": backbone,
        "layers": list(layers),
        "precision": body.precision or settings.precision,
    }
    job = jobs.submit(extraction.KIND, params, dataset=body.name)
    response.headers["Location"] = f"/v1/jobs/{job['id']}"
    return job


def _check_ray_available() -> None:
    """Refuse engine "ray" at submit time when the server cannot import Ray (501, with the
    install hint) rather than queueing a job that can only fail.
    """
    from featurizer.engines.ray import EngineUnavailableError, import_ray

    try:
        import_ray()
    except EngineUnavailableError as exc:
        raise FeatureUnavailableError(f'"engine": "ray" is not available here: {exc}') from exc
