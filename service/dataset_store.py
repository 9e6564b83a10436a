"""Feature stores the service writes and reads: where they live, what they hold, who writes them.

Stores live under `DECAF_DATA_DIR/datasets/<name>/` (written by extraction jobs, or by
`decaf extract` into that directory) and are indexed in the database with the job that wrote
them. The format itself belongs to `featurizer.store`; this module only finds and checks stores.

A store whose manifest cannot be read is *invalid*: it is listed with its reason beside the
others, and every route that needs it answers 409 with that reason (never a 500).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import select

from featurizer.errors import StoreError, UnknownLayerError
from featurizer.store.layout import StoreNotFoundError
from service.errors import ConflictError, NotFoundError
from service.jobs import JobManager
from service.paths import validate_name
from service.settings import Settings
from service.state import Database, DatasetRow, iso

if TYPE_CHECKING:
    from featurizer.store import Manifest


class DatasetNotFoundError(NotFoundError):
    """No finished or running feature store has this name."""

    http_status: ClassVar[int] = 404


class DatasetConflictError(ConflictError):
    """A store of that name exists, is being written, or is not finished yet."""

    http_status: ClassVar[int] = 409


class DatasetInvalidError(ConflictError):
    """The store exists but its manifest or parts are damaged: the reason says which."""

    http_status: ClassVar[int] = 409


def _invalid(name: str, exc: Exception) -> DatasetInvalidError:
    return DatasetInvalidError(
        f'dataset {name!r} is invalid: {exc}. Extract it again with "overwrite": true '
        "(POST /v1/extractions), or restore its files"
    )


def datasets_dir(settings: Settings) -> Path:
    return Path(settings.data_dir).expanduser().resolve() / "datasets"


def dataset_path(settings: Settings, name: str) -> Path:
    """Store directory of dataset `name` (InvalidNameError, 400, for an unsafe name)."""
    return datasets_dir(settings) / validate_name(name, "dataset name")


def check_no_conflict(jobs: JobManager, name: str, out: Path, overwrite: bool) -> None:
    """Refuse to start writing `name` while another job writes it, or over a finished store."""
    active = jobs.active_job_for_dataset(name)
    if active:
        raise DatasetConflictError(
            f"dataset {name!r} is already being extracted by job {active}; wait for it or "
            "cancel it with DELETE /v1/jobs/{id}"
        )
    if overwrite:
        return
    from featurizer.store import FeatureStore

    try:
        complete = FeatureStore.open(out).manifest.complete
    except StoreNotFoundError:
        return  # no store yet, or one whose first run died early: the job creates it
    except StoreError as exc:
        raise _invalid(name, exc) from exc
    if complete:
        raise DatasetConflictError(
            f'dataset {name!r} already exists; choose another name or pass "overwrite": true'
        )


def finished_manifest(settings: Settings, name: str) -> Manifest:
    """The manifest of the finished store `name` (404 if there is none, 409 if unfinished)."""
    from featurizer.store import FeatureStore

    try:
        store = FeatureStore.open(dataset_path(settings, name))
    except StoreNotFoundError as exc:
        raise DatasetNotFoundError(f"dataset {name!r} not found (GET /v1/datasets)") from exc
    except StoreError as exc:
        raise _invalid(name, exc) from exc
    if not store.manifest.complete:
        raise DatasetConflictError(
            f"dataset {name!r} is incomplete (its extraction has not finished): wait for its job"
        )
    # Footers only (~2 ms a part): a fit must not start on parts that disagree with the manifest.
    problems = store.problems()
    if problems:
        raise _invalid(name, StoreError("; ".join(problems[:3])))
    return store.manifest


def check_layer_stored(manifest: Manifest, name: str, layer: str) -> None:
    layers = manifest.layers
    if layer not in layers:
        raise UnknownLayerError(
            f"layer {layer!r} is not in dataset {name!r}; available: {sorted(layers)} "
            "(extract the dataset again with that layer)"
        )


def list_datasets(settings: Settings, db: Database, jobs: JobManager) -> list[dict[str, Any]]:
    """Summaries of the stores on disk and of those a running job is writing, by name."""
    root = datasets_dir(settings)
    with db.session() as session:
        rows = {row.name: row for row in session.scalars(select(DatasetRow))}
    on_disk = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    summaries = []
    for name in sorted(set(rows) | on_disk):
        writing = bool(jobs.active_job_for_dataset(name))
        if name not in on_disk and not writing:
            continue  # registered but never written (e.g. the job failed before starting)
        summaries.append(_summary(name, root / name, rows.get(name), writing=writing))
    return summaries


def _summary(name: str, path: Path, row: DatasetRow | None, *, writing: bool) -> dict[str, Any]:
    from featurizer.store import FeatureStore

    summary: dict[str, Any] = {
        "name": name,
        "complete": False,
        "status": "incomplete",
        "job_id": row.job_id if row else None,
        "source_root": row.source_root if row else None,
        "created_at": iso(row.created_at) if row else None,
    }
    try:
        manifest = FeatureStore.open(path).manifest
    except StoreNotFoundError as exc:
        # A job that just started has not written its manifest yet: not a broken store.
        summary.update(status="incomplete" if writing else "invalid", error=str(exc))
        return summary
    except (StoreError, OSError) as exc:
        summary.update(status="invalid", error=str(exc))
        return summary
    summary.update(
        complete=manifest.complete,
        status="complete" if manifest.complete else "incomplete",
        backbone=manifest.backbone,
        num_images=manifest.num_images,
        num_errors=manifest.num_errors,
        num_classes=len(manifest.classes),
        layers=dict(manifest.layers),
        source_root=manifest.source_root or summary["source_root"],
        created_at=manifest.created_at or summary["created_at"],
    )
    return summary


def dataset_info(settings: Settings, db: Database, name: str) -> dict[str, Any]:
    """Manifest, counts per class and size on disk of store `name`."""
    from featurizer.store import store_info

    path = dataset_path(settings, name)
    if not path.is_dir():
        raise DatasetNotFoundError(f"dataset {name!r} not found (GET /v1/datasets)")
    try:
        info = store_info(path)
    except StoreNotFoundError as exc:
        raise DatasetNotFoundError(f"dataset {name!r} has no readable store yet: {exc}") from exc
    except (StoreError, OSError) as exc:
        raise _invalid(name, exc) from exc
    with db.session() as session:
        row = session.get(DatasetRow, name)
        info["job_id"] = row.job_id if row else None
    info["name"] = name
    return info
