"""Job kind "probe_fit": load a layer of a feature store, optionally evaluate a protocol, fit, save.

Re-running is safe: the probe id derives from the job id, so a job resumed after a crash that
came after the save finds its probe instead of making a second one.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from classifiers.errors import ProbeError
from service.dataset_store import dataset_path
from service.job_context import JobContext
from service.probe_store import ProbeStore, fit_metrics, make_probe, probe_to_dict

KIND = "probe_fit"


def run_probe_fit(ctx: JobContext) -> dict[str, Any]:
    """Job handler: fit a probe on `params.dataset`'s `params.layer` and save it."""
    from classifiers.data import labelled_rows
    from classifiers.persistence import provenance_from_manifest
    from featurizer.store import FeatureStore

    params = ctx.params
    store = ProbeStore(ctx.settings, ctx.db)
    probe_id = uuid.uuid5(uuid.NAMESPACE_OID, f"decaf-probe-job:{ctx.job_id}").hex
    steps = 3 if params.get("protocol") else 2
    existing = store.find(probe_id)
    if existing is not None:  # the crash came after the probe was saved
        done = {"done": steps, "total": steps, "step": "done"}
        return {"probe_id": probe_id, "probe": probe_to_dict(existing), "progress": done}
    path = dataset_path(ctx.settings, params["dataset"])
    ctx.report({"done": 0, "total": steps, "step": "loading features"}, force=True)
    features = FeatureStore.open(path)
    manifest = features.manifest
    rows = labelled_rows(*features.load(params["layer"]), source=f"dataset {path.name!r}")
    X, y, paths = rows.X, rows.y, rows.paths
    if len(set(y)) < 2:
        raise ProbeError(
            f"dataset {params['dataset']!r} has {len(set(y))} labelled class(es); a probe needs "
            "at least 2 (labels are the first-level sub-folders of the extraction root)"
        )
    metrics: dict[str, Any] = {}
    protocol = params.get("protocol")
    if protocol:
        ctx.stop_point()
        ctx.report(
            {"done": 1, "total": steps, "step": f"evaluating {protocol['name']}"}, force=True
        )
        metrics["evaluation"] = _evaluate(ctx, X, y, paths, params, protocol)
    ctx.stop_point()
    ctx.report({"done": steps - 1, "total": steps, "step": "fitting"}, force=True)
    probe = make_probe(params).fit(X, y)
    metrics.update(fit_metrics(probe, X, y))
    provenance = provenance_from_manifest(manifest, params["layer"])
    provenance.update(dataset=params["dataset"], source_root=manifest.source_root)
    row = store.save(
        probe,
        name=params.get("name") or f"{params['dataset']}-{params['layer']}",
        source="dataset",
        dataset=params["dataset"],
        options=params,
        provenance=provenance,
        metrics=metrics,
        protocol=protocol,
        job_id=ctx.job_id,
        probe_id=probe_id,
    )
    progress = {"done": steps, "total": steps, "step": "done"}
    return {"probe_id": row.id, "probe": probe_to_dict(row), "progress": progress}


def _evaluate(
    ctx: JobContext, X: np.ndarray, y: np.ndarray, paths: list[str], params: dict, protocol: dict
) -> dict[str, Any]:
    from classifiers.protocols import evaluate

    def on_split(done: int, total: int) -> None:
        ctx.report({"done": 1, "total": 3, "step": f"evaluating: split {done}/{total}"})
        ctx.stop_point()  # cancellation takes effect between splits

    result = evaluate(
        X,
        y,
        paths,
        protocol=protocol["name"],
        probe=make_probe(params),
        n_train=protocol["n_train"],
        max_test=protocol["max_test"],
        splits=protocol["splits"],
        seed=protocol["seed"],
        train_fraction=protocol["train_fraction"],
        progress=on_split,
    )
    return result.to_dict()
