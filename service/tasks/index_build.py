"""Job kind "index_build": a FAISS index of one layer of a dataset (see `retrieval.build`).

Re-running is safe: the index is written under temporary names and renamed at the end, so a
cancelled or crashed build leaves the previous index (if any) as it was; without `rebuild`, a
run of the same recipe on an unchanged dataset keeps the index it finds.
"""

from __future__ import annotations

from typing import Any

from service.dataset_store import dataset_path, finished_manifest
from service.job_context import JobContext

KIND = "index_build"


def run_index_build(ctx: JobContext) -> dict[str, Any]:
    """Job handler: build `params.layer`'s index of `params.dataset`, reporting rows added."""
    from retrieval.build import BuildProgress, build_store_index
    from retrieval.recipe import IndexSpec

    params = ctx.params
    name = params["dataset"]
    finished_manifest(ctx.settings, name)  # still there and finished when the job starts

    def on_progress(progress: BuildProgress) -> None:
        ctx.report({"done": progress.done, "total": progress.total, "step": progress.step})

    spec = IndexSpec(
        layer=params["layer"],
        dim=params.get("dim"),
        whiten=bool(params.get("whiten")),
        codec=params.get("codec", "flat"),
        kind=params.get("kind", "auto"),
    )
    result = build_store_index(
        dataset_path(ctx.settings, name),
        spec,
        # A resumed attempt with rebuild builds again: at worst work repeated, never a stale index.
        rebuild=bool(params.get("rebuild")),
        progress=on_progress,
        should_stop=ctx.should_stop,
    )
    record = result.record
    final = {"done": record.rows, "total": record.rows, "step": "done"}
    ctx.report(final, force=True)
    return {
        "dataset": name,
        "index": record.name,
        "layer": record.layer,
        "rows": record.rows,
        "recipe": record.recipe,
        "reused": result.reused,
        "progress": final,
    }
