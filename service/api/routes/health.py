"""Operations: liveness, readiness and Prometheus metrics.

`GET /healthz` (the process answers), `GET /readyz` (every backbone is loaded and its batcher
runs: 200, else 503 with the reasons), `GET /metrics` (Prometheus text format). None needs the
API key, so orchestrators and scrapers work without secrets; they reveal no user data.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import MetricsDep
from service.api.errors import problem_responses
from service.problems import DEFAULT_RETRY_AFTER_S
from service.schemas import Health, Readiness

router = APIRouter(tags=["operations"], responses=problem_responses(500))


@router.get("/healthz", summary="Liveness: the process is up", response_model=Health)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the models are loaded and their batchers are running",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready (see reasons)"}},
)
async def readyz(request: Request) -> JSONResponse:
    models = getattr(request.app.state, "models", None)
    problems = ["model not loaded"] if models is None else models.problems()
    if problems:
        return JSONResponse(
            {"status": "not ready", "reasons": problems},
            status_code=503,
            headers={"Retry-After": str(DEFAULT_RETRY_AFTER_S)},
        )
    return JSONResponse({"status": "ready", "queue_depth": models.queue_depth})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
