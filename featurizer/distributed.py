"""Former home of the Ray engine, now :mod:`featurizer.engines.ray` driven by
:func:`featurizer.extraction.extract_dataset` (``engine="ray"``). These names remain for code
not yet switched (``service/jobs.py``, ``service/datasets.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featurizer.engines.ray import INSTALL_HINT, EngineUnavailableError, RayOptions, import_ray
from featurizer.extraction import ExtractionResult, extract_dataset

__all__ = ["INSTALL_HINT", "EngineUnavailableError", "extract_dataset_ray", "import_ray"]


def extract_dataset_ray(
    root: str | Path,
    out: str | Path,
    *,
    address: str | None = None,
    num_gpus_per_worker: float | None = None,
    concurrency: int | None = None,
    **options: Any,
) -> ExtractionResult:
    """``extract_dataset(root, out, engine="ray", ray=RayOptions(...), **options)``."""
    ray = RayOptions(address, num_gpus_per_worker, concurrency)
    return extract_dataset(root, out, engine="ray", ray=ray, **options)
