"""Job kind "extraction": images below a data root → a feature store, resumable.

Re-running is safe: the store's finished parts are skipped, so a job resumed after a crash (or
submitted again after a cancel) continues where it stopped. Each job builds its own Featurizer
through `featurizer_factory(backbone, layers, precision, crop)`: the served featurizer belongs to
its micro-batcher and is not safe for concurrent forward calls. Jobs with `engine: "ray"` build
no model here: the Ray engine builds it inside its actors, on the cluster of
`settings.ray_address` (a server setting, never a request field) or a local Ray.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from service.job_context import JobContext, JobHandler

if TYPE_CHECKING:
    from featurizer.extraction import ExtractionResult
    from featurizer.extractor import Featurizer

KIND = "extraction"

FeaturizerFactory = Callable[[str, Sequence[str], str, str], "Featurizer"]
"""(backbone, layers, precision, crop) -> a Featurizer of the job's own."""


def extraction_handler(featurizer_factory: FeaturizerFactory) -> JobHandler:
    """The handler of extraction jobs, building its models with `featurizer_factory`."""

    def run(ctx: JobContext) -> dict[str, Any]:
        return run_extraction(ctx, featurizer_factory)

    return run


def run_extraction(ctx: JobContext, featurizer_factory: FeaturizerFactory) -> dict[str, Any]:
    """Extract `params.root` into `params.out`; resumes from the parts already written."""
    params = ctx.params
    last: dict[str, Any] = {}

    def on_progress(progress: Any) -> None:
        last.update(_progress_dict(progress))
        ctx.report(last)

    options: dict[str, Any] = {
        "layers": tuple(params["layers"]),
        "precision": params["precision"],
        "crop": params["crop"],
        "batch_size": int(params["batch_size"]),
        # Overwrite only on the first attempt: a resumed job must keep what it already wrote.
        "overwrite": bool(params.get("overwrite")) and ctx.attempt == 1,
        "progress": on_progress,
        "should_stop": ctx.should_stop,
        "follow_symlinks": bool(params.get("follow_symlinks", True)),
        # A link inside the root must not lead the job out of the folders it may read.
        "allowed_roots": list(ctx.settings.data_roots),
    }
    if params.get("part_size"):
        options["part_size"] = int(params["part_size"])
    if params.get("engine") == "ray":
        result = _extract_with_ray(ctx, options)
    else:
        result = _extract_locally(ctx, options, featurizer_factory)
    total = result.num_images + result.num_errors
    final = {
        "done": total,
        "total": total,
        "errors": result.num_errors,
        # Over the files this attempt handled: parts resumed from earlier attempts are not speed.
        "images_per_s": round(result.images_per_s, 2),
        "eta_s": 0.0,
    }
    ctx.report(final, force=True)
    return {
        "dataset": params["name"],
        "store": str(result.store),
        "num_images": result.num_images,
        "num_errors": result.num_errors,
        "num_skipped": result.num_skipped,
        "skipped": result.skipped,
        "seconds": round(result.seconds, 3),
        "resumed_parts": result.resumed_parts,
        "files_this_run": result.files_this_run,
        "progress": final,
    }


def _backbone(ctx: JobContext) -> str:
    # Jobs queued before backbones were a job parameter ran on the server's default.
    return str(ctx.params.get("backbone") or ctx.settings.default_backbone)


def _progress_dict(progress: Any) -> dict[str, Any]:
    data = dataclasses.asdict(progress) if dataclasses.is_dataclass(progress) else dict(progress)
    return {
        "done": int(data.get("done", 0)),
        "total": int(data.get("total", 0)),
        "errors": int(data.get("errors", 0)),
        "images_per_s": round(float(data.get("images_per_s") or 0.0), 2),
        "eta_s": None if data.get("eta_s") is None else round(float(data["eta_s"]), 1),
    }


def _extract_locally(
    ctx: JobContext, options: dict[str, Any], featurizer_factory: FeaturizerFactory
) -> ExtractionResult:
    from featurizer.extraction import extract_dataset

    params = ctx.params
    featurizer = featurizer_factory(
        _backbone(ctx), params["layers"], params["precision"], params["crop"]
    )
    return extract_dataset(
        params["root"],
        params["out"],
        featurizer=featurizer,
        workers=max(1, int(ctx.settings.decode_threads)),
        **options,
    )


def _extract_with_ray(ctx: JobContext, options: dict[str, Any]) -> ExtractionResult:
    """Ray Data engine: the model is built inside the Ray actors from the server's settings."""
    from featurizer.engines.ray import RayOptions
    from featurizer.extraction import extract_dataset

    params, settings = ctx.params, ctx.settings
    return extract_dataset(
        params["root"],
        params["out"],
        weights=settings.weights,
        backbone=_backbone(ctx),
        device=settings.device,
        engine="ray",
        ray=RayOptions(
            address=settings.ray_address,
            num_gpus_per_worker=params.get("num_gpus_per_worker"),
            concurrency=params.get("concurrency"),
        ),
        **options,
    )
