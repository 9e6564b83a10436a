"""`GET /v1/model`: the loaded backbones, their weights, layers, dims and preprocessing.

The default backbone's description stays at the top level (what clients of a one-backbone server
read); `backbones` lists every loaded one, the default first.
"""

from __future__ import annotations

from typing import Any

from featurizer.options import CROP_MODES
from service.api.deps import ModelsDep, SettingsDep
from service.api.routing import v1_router
from service.feature_options import OUTPUT_DTYPES
from service.models import LoadedModel
from service.schemas import ModelInfo

router = v1_router("model")


def _backbone_info(model: LoadedModel) -> dict[str, Any]:
    return {**model.describe(), "default_layers": model.default_layers}


@router.get(
    "/model",
    response_model=ModelInfo,
    summary="Backbones, weights, layers, dims and preprocessing of the server",
)
async def get_model(settings: SettingsDep, models: ModelsDep) -> dict[str, Any]:
    default = models.default
    batcher = default.batcher
    return {
        **_backbone_info(default),
        "default_backbone": default.name,
        "backbones": [_backbone_info(model) for model in models],
        "offered_layers": list(default.layers),
        "crop_modes": list(CROP_MODES),
        "default_crop": settings.crop,
        "dtypes": list(OUTPUT_DTYPES),
        "batching": {
            "max_batch_size": batcher.max_batch_size,
            "max_wait_ms": batcher.max_wait_s * 1000.0,
            "max_queue": batcher.max_queue,
        },
        "limits": {
            "max_upload_bytes": settings.max_upload_bytes,
            "max_files_per_request": settings.max_files_per_request,
            "max_pixels": settings.max_pixels,
            "request_timeout_s": settings.request_timeout_s,
        },
    }
