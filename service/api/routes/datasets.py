"""`/v1/datasets`: the feature stores of this server (written by extraction jobs)."""

from __future__ import annotations

from typing import Any

from service.api.deps import DbDep, JobsDep, SettingsDep
from service.api.errors import problem_responses
from service.api.routing import DatasetName, v1_router
from service.dataset_store import dataset_info, list_datasets
from service.schemas import DatasetList

router = v1_router("datasets")


@router.get("/datasets", response_model=DatasetList, summary="List feature stores")
def get_datasets(settings: SettingsDep, db: DbDep, jobs: JobsDep) -> dict:
    return {"datasets": list_datasets(settings, db, jobs)}


@router.get(
    "/datasets/{name}",
    summary="One feature store: manifest, counts per class, size on disk",
    responses=problem_responses(404, 409),
)
def get_dataset(
    name: DatasetName,
    settings: SettingsDep,
    db: DbDep,
) -> dict[str, Any]:
    return dataset_info(settings, db, name)
