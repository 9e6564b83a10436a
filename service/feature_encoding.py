"""Features of a request → its response: JSON, one `.npy` array, or an `.npz` archive.

- `application/json` (default): `{"model": {...}, "options": {...}, "results": [{"filename",
  "features": {layer: [floats]} | null, "error": str | null, "error_type": problem type | null}]}`
  in upload order.
- `application/x-npy`: one `.npy` array `(n_ok, dim)` of the single requested layer, rows in
  upload order of the images that worked. Always 2-D, also for one image.
- `application/x-npz`: an `.npz` (no pickle) with one `(n_ok, dim)` array per layer, plus
  `filenames` (rows), `failed_filenames` and `failed_errors` string arrays.
JSON is written by orjson straight from numpy: measured 0.09 ms per 4096-d vector against 2.5 ms
for ``tolist()`` + ``json.dumps`` (one thread, loaded machine); the old encoding cost ~12 % of a
single request's decode + batch-1 forward on 2 cores. The arrays are widened to float64 first,
so every number is the exact value of the float32/float16 feature, as ``tolist()`` gave: the
same numbers as before (writing float32 directly would be half the bytes, but its shortest
repr parses to a different double).
Binary answers carry headers `X-Decaf-Filenames` (JSON list of the rows' filenames),
`X-Decaf-Errors` (JSON list of the failed files' problems) and `X-Decaf-Layers`.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

from service.feature_options import NPY_MEDIA_TYPE, NPZ_MEDIA_TYPE, FeatureOptions
from service.uploads import ImageResult, image_errors


def finish_features(
    features: dict[str, np.ndarray], *, normalize: bool, dtype: str
) -> dict[str, np.ndarray]:
    """Optional L2 normalisation (in float32), then the requested dtype."""
    out = {}
    for layer, vector in features.items():
        if normalize:
            norm = float(np.linalg.norm(vector))
            vector = vector / norm if norm > 0 else vector
        out[layer] = vector.astype(dtype, copy=False)
    return out


def features_response(results: list[ImageResult], options: FeatureOptions) -> Response:
    """The answer for a request of which at least one image worked."""
    for result in results:
        if result.features is not None:
            result.features = finish_features(
                result.features, normalize=options.normalize, dtype=options.dtype
            )
    if options.format != "json":
        return _binary_response(results, options)
    body = {
        "model": options.model.describe(crop=options.crop),
        "options": options.echo(),
        "results": [_result_json(r) for r in results],
    }
    content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, media_type="application/json")


def _result_json(result: ImageResult) -> dict[str, Any]:
    return {
        "filename": result.filename,
        "features": (
            {layer: v.astype(np.float64) for layer, v in result.features.items()}
            if result.features is not None
            else None
        ),
        "error": result.message,
        "error_type": result.error_type,
    }


def _binary_response(results: list[ImageResult], options: FeatureOptions) -> Response:
    ok = [r for r in results if r.ok]
    layers = options.layers
    arrays = {
        layer: np.stack([r.features[layer] for r in ok]).astype(options.dtype, copy=False)  # type: ignore[index]
        for layer in layers
    }
    buffer = io.BytesIO()
    if options.format == "npy":
        np.save(buffer, arrays[layers[0]], allow_pickle=False)
        media_type = NPY_MEDIA_TYPE
    else:
        failed = [r for r in results if not r.ok]
        np.savez(
            buffer,
            **arrays,
            filenames=np.array([r.filename for r in ok], dtype=str),
            failed_filenames=np.array([r.filename for r in failed], dtype=str),
            failed_errors=np.array([r.message or "" for r in failed], dtype=str),
        )
        media_type = NPZ_MEDIA_TYPE
    headers = {
        "X-Decaf-Filenames": json.dumps([r.filename for r in ok], ensure_ascii=True),
        "X-Decaf-Errors": json.dumps(image_errors(results), ensure_ascii=True),
        "X-Decaf-Layers": ",".join(layers),
    }
    return Response(buffer.getvalue(), media_type=media_type, headers=headers)
