"""Predict with a saved probe: route the images to the probe's backbone, score, rank top-k.

A probe only accepts features made the way its training features were: the same backbone,
weights, layer and preprocessing (crop mode included). The images go to the micro-batcher of the
probe's own backbone, with the probe's crop mode; when that backbone is not loaded here, or the
loaded one differs from the probe's, the answer is 409 (ProbeMismatchError).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
from starlette.datastructures import UploadFile

from classifiers.errors import ProbeMismatchError
from featurizer.options import CROP_MODES, CropMode
from service.models import LoadedModel, ModelPool
from service.probe_store import ProbeStore
from service.state import ProbeRow
from service.uploads import ImageResult, Receive, UploadPipeline


def probe_crop(row: ProbeRow) -> CropMode | None:
    """The crop mode the probe's features were made with, if recorded."""
    # "crop" in a preprocessing spec is the crop *size* (224); the mode is "crop_mode".
    mode = ((row.provenance or {}).get("preprocessing") or {}).get("crop_mode")
    return next((known for known in CROP_MODES if known == mode), None)


def model_for_probe(
    models: ModelPool, row: ProbeRow, meta: dict[str, Any], crop: str
) -> LoadedModel:
    """The loaded backbone that makes features this probe accepts (409 when there is none)."""
    from classifiers.persistence import check_compatible

    backbone = (row.provenance or {}).get("backbone") or models.default.name
    if backbone not in models.names:
        raise ProbeMismatchError(
            f"probe {row.id} was fitted on {backbone} features, and this server does not load "
            f"{backbone} (loaded: {models.names}; DECAF_BACKBONES)"
        )
    model = models.get(backbone)
    if row.layer not in model.layers:
        raise ProbeMismatchError(
            f"probe {row.id} uses layer {row.layer!r}, which this server does not serve for "
            f"{backbone} (it serves {list(model.layers)}; DECAF_LAYERS)"
        )
    check_compatible(meta, model.describe(crop=crop))
    return model


async def predict_uploads(
    row: ProbeRow,
    files: Sequence[UploadFile],
    *,
    top_k: int,
    default_crop: str,
    models: ModelPool,
    uploads: UploadPipeline,
    probes: ProbeStore,
    receive: Receive | None = None,
) -> dict[str, Any]:
    """Top-k labels with scores for each upload, or its own error; the predict response."""
    probe, meta = await asyncio.to_thread(probes.load, row)
    crop = probe_crop(row) or default_crop
    model = model_for_probe(models, row, meta, crop)
    results = await uploads.featurize(
        files, model=model, layers=[row.layer], crop=crop, receive=receive
    )
    ok = [r.features[row.layer] for r in results if r.features is not None]
    scores = np.empty((0, len(row.classes)))
    if ok:
        features = np.stack(ok).astype(np.float32)
        scores = await asyncio.to_thread(probe.scores, features)
    classes = [str(c) for c in probe.classes_]
    return {
        "probe_id": row.id,
        "backbone": model.name,
        "layer": row.layer,
        "score_kind": probe.score_kind,
        "results": _ranked(results, iter(scores), classes, top_k),
    }


def _ranked(
    results: list[ImageResult], scores: Any, classes: list[str], top_k: int
) -> list[dict[str, Any]]:
    k = min(top_k, len(classes))
    out: list[dict[str, Any]] = []
    for result in results:
        if not result.ok:
            out.append({"filename": result.filename, "error": result.message})
            continue
        row_scores = next(scores)
        best = np.argsort(-row_scores, kind="stable")[:k]
        predictions = [{"label": classes[i], "score": float(row_scores[i])} for i in best]
        out.append({"filename": result.filename, "predictions": predictions})
    return out
