"""Saved probes: files under `DECAF_DATA_DIR/probes/<id>/`, a row in the database, a small cache.

Files are written by `classifiers.save_probe` (arrays in an npz without pickle + JSON), then the
row; a probe survives restarts and is listed from the database. Recently used probes stay loaded
(reading the npz on every predict call would be wasteful).
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from sqlalchemy import select

from classifiers.errors import ProbeError
from classifiers.options import SCORE_KIND_OF
from featurizer.errors import DecafError
from service.errors import NotFoundError
from service.settings import Settings
from service.state import Database, ProbeRow, iso

if TYPE_CHECKING:
    from classifiers.probe import LinearProbe

PROBE_CACHE_SIZE = 16


class ProbeNotFoundError(NotFoundError):
    """No probe has this id."""

    http_status: ClassVar[int] = 404


class ProbeLoadError(DecafError):
    """A probe's files are damaged, edited or missing: the probe exists but cannot be used
    until it is fitted again (409 with the reason, never a 500)."""

    http_status: ClassVar[int] = 409


def make_probe(options: dict[str, Any]) -> LinearProbe:
    """An unfitted probe from a request's options; the job's other keys (layer, name, ...) are
    not estimator parameters and stay out."""
    from classifiers.probe import PARAMETER_NAMES
    from classifiers.probe import make_probe as make_estimator

    return make_estimator({key: options[key] for key in PARAMETER_NAMES if key in options})


def fit_metrics(probe: LinearProbe, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """What a fit reports: training set size and accuracy, and the C it settled on."""
    return {
        "num_train": len(y),
        "train_accuracy": float(np.mean(probe.predict(X) == y)),
        "C": float(probe.C_),
    }


def probe_to_dict(row: ProbeRow, *, detail: bool = False) -> dict[str, Any]:
    """The JSON shape of a probe in the API."""
    provenance = row.provenance or {}
    data: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "source": row.source,
        "dataset": row.dataset,
        "backbone": provenance.get("backbone"),
        "layer": row.layer,
        "classifier": row.classifier,
        "score_kind": SCORE_KIND_OF[row.classifier],
        "classes": list(row.classes),
        "num_classes": len(row.classes),
        "job_id": row.job_id,
        "created_at": iso(row.created_at),
    }
    if detail:
        data["metrics"] = row.metrics or {}
        data["provenance"] = provenance
    return data


class ProbeStore:
    """Probe files + rows of one data directory and database."""

    def __init__(self, settings: Settings, db: Database, cache_size: int = PROBE_CACHE_SIZE):
        self.root = Path(settings.data_dir).expanduser().resolve() / "probes"
        self.db = db
        self.cache_size = cache_size
        self._loaded: OrderedDict[str, tuple[LinearProbe, dict]] = OrderedDict()
        self._lock = threading.Lock()

    def save(
        self,
        probe: LinearProbe,
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
        path = self.root / probe_id
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
            with self.db.session() as session:
                session.add(row)
        except Exception:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return row

    def find(self, probe_id: str) -> ProbeRow | None:
        with self.db.session() as session:
            return session.get(ProbeRow, probe_id)

    def get(self, probe_id: str) -> ProbeRow:
        row = self.find(probe_id)
        if row is None:
            raise ProbeNotFoundError(f"probe {probe_id!r} not found (GET /v1/probes lists them)")
        return row

    def list(self) -> list[ProbeRow]:
        with self.db.session() as session:
            return list(session.scalars(select(ProbeRow).order_by(ProbeRow.created_at.desc())))

    def delete(self, probe_id: str) -> None:
        with self.db.session() as session:
            row = session.get(ProbeRow, probe_id)
            if row is None:
                raise ProbeNotFoundError(f"probe {probe_id!r} not found")
            path = Path(row.path)
            session.delete(row)
        with self._lock:
            self._loaded.pop(probe_id, None)
        shutil.rmtree(path, ignore_errors=True)

    def load(self, row: ProbeRow) -> tuple[LinearProbe, dict[str, Any]]:
        """The fitted probe and its saved metadata (cached)."""
        with self._lock:
            if row.id in self._loaded:
                self._loaded.move_to_end(row.id)
                return self._loaded[row.id]
        from classifiers.persistence import load_probe

        try:
            loaded = load_probe(row.path)
        except ProbeError as exc:
            raise ProbeLoadError(
                f"probe {row.id} cannot be loaded: {exc}; fit it again or restore its files"
            ) from exc
        with self._lock:
            self._loaded[row.id] = loaded
            while len(self._loaded) > self.cache_size:
                self._loaded.popitem(last=False)
        return loaded
