"""Fitting probes, the two ways the API offers.

- On a stored dataset: checked here (backbone, layer, store) before a `probe_fit` job is queued
  (`service.tasks.probe_fit` does the fit), so a request that cannot work fails at once.
- Few-shot: labelled uploads → features from a served backbone → a fitted, saved probe, at once.
  Labels come as one JSON array aligned with the files (`["cat","dog",...]`) or as one `labels`
  form field per file, in the same order. Files that cannot be used are skipped and listed; the
  fit needs usable images of at least two classes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from starlette.datastructures import UploadFile

from classifiers.errors import ProbeError, ProbeMismatchError
from service.dataset_store import check_layer_stored, finished_manifest
from service.errors import InvalidOptionError
from service.models import ModelPool
from service.probe_store import ProbeStore, fit_metrics, make_probe, probe_to_dict
from service.schemas import FewShotForm, ProbeFromDataset
from service.settings import Settings
from service.uploads import NoImagesError, Receive, UploadPipeline

FORM_FIELDS = ("name", "backbone", "layer", "classifier", "C", "crop")


def dataset_fit_params(
    body: ProbeFromDataset, settings: Settings, models: ModelPool
) -> dict[str, Any]:
    """The parameters of a `probe_fit` job, once backbone, layer and store are checked."""
    backbone = models.get(body.backbone).name
    layer = body.layer or models.get(backbone).default_layers[0]
    models.check_taps(backbone, [layer])
    manifest = finished_manifest(settings, body.dataset)
    check_layer_stored(manifest, body.dataset, layer)
    stored = manifest.backbone
    if stored != backbone:
        raise ProbeMismatchError(
            f"dataset {body.dataset!r} holds {stored} features, not {backbone}: pass "
            f'"backbone": "{stored}" (a probe is fitted on the features it will be applied to)'
        )
    return {**body.model_dump(), "backbone": backbone, "layer": layer}


def parse_labels(values: Sequence[Any], count: int) -> list[str]:
    """One label per file, from a JSON array or repeated `labels` fields."""
    texts = [v for v in values if isinstance(v, str)]
    if len(texts) == 1 and texts[0].lstrip().startswith("["):
        try:
            parsed = json.loads(texts[0])
        except ValueError as exc:
            raise InvalidOptionError(f"labels is not valid JSON: {exc}") from exc
        texts = parsed if isinstance(parsed, list) else []
    labels = [str(label).strip() for label in texts]
    if count == 0:
        raise NoImagesError("no images in 'files': send one part per labelled image")
    if len(labels) != count or not all(labels):
        raise InvalidOptionError(
            f"got {count} files and {len(labels)} labels: send 'labels' as a JSON array with "
            "one non-empty label per file, in the order of the files"
        )
    return labels


async def fit_few_shot(
    files: Sequence[UploadFile],
    labels: Sequence[str],
    options: FewShotForm,
    *,
    settings: Settings,
    models: ModelPool,
    uploads: UploadPipeline,
    probes: ProbeStore,
    receive: Receive | None = None,
) -> dict[str, Any]:
    """Featurize the uploads with the chosen backbone, fit a probe, save it; the probe's dict."""
    from classifiers.persistence import provenance_from_featurizer

    model = models.get(options.backbone)
    layer = options.layer or model.default_layers[0]
    models.check_layers(model.name, [layer])
    crop = options.crop or settings.crop
    results = await uploads.featurize(
        files, model=model, layers=[layer], crop=crop, receive=receive
    )
    good = [(r, label) for r, label in zip(results, labels, strict=True) if r.ok]
    skipped = [{"filename": r.filename, "error": r.message} for r in results if not r.ok]
    if len({label for _, label in good}) < 2:
        raise ProbeError(
            "a probe needs usable images of at least 2 classes; skipped: "
            + "; ".join(f"{item['filename']}: {item['error']}" for item in skipped)
        )
    X = np.stack([r.features[layer] for r, _ in good]).astype(np.float32)  # type: ignore[index]
    y = np.array([label for _, label in good])
    provenance = provenance_from_featurizer(model.describe(crop=crop), layer)
    params = {**options.model_dump(), "backbone": model.name, "layer": layer}

    def fit_and_save() -> Any:
        probe = make_probe(params).fit(X, y)
        metrics = {**fit_metrics(probe, X, y), "num_skipped": len(skipped)}
        return probes.save(
            probe,
            name=options.name,
            source="upload",
            dataset=None,
            options=params,
            provenance=provenance,
            metrics=metrics,
        )

    row = await asyncio.to_thread(fit_and_save)
    return {**probe_to_dict(row, detail=True), "skipped": skipped}
