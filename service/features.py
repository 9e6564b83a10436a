"""`POST /v1/features` (images → DeCAF features) and `GET /v1/model`.

Request (multipart/form-data): one or many files in the field `images`. Options as query
parameters or form fields (query wins when both are given):
- `layers`: comma list of layers, `all` for every layer the server offers; default `decaf6`
  (DeCAF6 transferred best in the paper's experiments; `decaf7` is a close second);
- `crop`: `center` | `tencrop` (10 views averaged, ~10x the compute); default: server setting;
- `normalize`: `l2` (unit-length vectors, what cosine / linear-SVM users usually want) | `none`;
  `true`/`false` are accepted too;
- `dtype`: `float32` | `float16` (halves the payload; values rounded after normalisation).

Response, chosen by `Accept` (or `?format=json|npy|npz`, handy in a browser):
- `application/json` (default): `{"model": {...}, "options": {...}, "results": [{"filename",
  "features": {layer: [floats]} | null, "error": str | null}]}` in upload order. HTTP 200 when at
  least one image worked; when *every* image failed: 422 (undecodable), 413 (too big) or 415
  (unsupported content type), with the same `results` and an `error` object.
- `application/x-npy`: one `.npy` array `(n_ok, dim)` of the single requested layer (406 if
  several layers were requested: use npz), rows in upload order of the images that worked. Always
  2-D, also for one image. Headers `X-Decaf-Filenames` (JSON list of the rows' filenames) and
  `X-Decaf-Errors` (JSON list of `{"index", "filename", "error"}` for the failed files).
- `application/x-npz`: an `.npz` (no pickle) with one `(n_ok, dim)` array per layer, plus
  `filenames` (rows), `failed_filenames` and `failed_errors` string arrays; same headers.
When no image worked, every format answers with the JSON error body described above.
"""

from __future__ import annotations

import io
import json
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from featurizer.errors import DecafError, UnknownLayerError
from featurizer.preprocess import CROP_MODES
from service.deps import (
    ApiKeyDep,
    BatcherDep,
    FeaturizerDep,
    ImageResult,
    SettingsDep,
    featurize_uploads,
)
from service.settings import Settings

router = APIRouter(prefix="/v1", tags=["features"], dependencies=[ApiKeyDep])

NPY_MEDIA_TYPE = "application/x-npy"
NPZ_MEDIA_TYPE = "application/x-npz"
DEFAULT_LAYER = "decaf6"
_TRUE = {"l2", "true", "1", "yes", "on"}
_FALSE = {"none", "false", "0", "no", "off", ""}

# Status when every image of a request failed, by the kind of the first failure.
_ALL_FAILED_STATUS = {
    "UnsupportedContentType": 415,
    "FileTooLarge": 413,
    "ImageTooLargeError": 413,
}


class BadOptionError(DecafError, ValueError):
    """An option value the server does not understand (mapped to 422 with the message)."""


def default_layers(settings: Settings) -> list[str]:
    return [DEFAULT_LAYER] if DEFAULT_LAYER in settings.layers else [settings.layers[0]]


def parse_layers(text: str | None, settings: Settings) -> list[str]:
    """`"decaf6,decaf7"` → checked list in that order (duplicates dropped); None → default."""
    if text is None or not text.strip():
        return default_layers(settings)
    if text.strip().lower() == "all":
        return list(settings.layers)
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in settings.layers]
    if unknown:
        raise UnknownLayerError(
            f"unknown or not served layer(s) {unknown}; this server offers {list(settings.layers)}"
        )
    return names


def parse_normalize(value: str | None) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise BadOptionError(f"normalize must be 'l2' or 'none' (or true/false), got {value!r}")


def parse_crop(value: str | None, settings: Settings) -> str:
    crop = (value or settings.crop).strip().lower()
    if crop not in CROP_MODES:
        raise BadOptionError(f"crop must be one of {list(CROP_MODES)}, got {value!r}")
    return crop


def parse_dtype(value: str | None) -> Literal["float32", "float16"]:
    text = (value or "float32").strip().lower()
    if text in ("float32", "fp32", "f4"):
        return "float32"
    if text in ("float16", "fp16", "f2", "half"):
        return "float16"
    raise BadOptionError(f"dtype must be 'float32' or 'float16', got {value!r}")


def choose_format(request: Request, explicit: str | None) -> str:
    """json | npy | npz from `?format=` or the Accept header (first binary type listed wins)."""
    if explicit:
        fmt = explicit.strip().lower()
        if fmt not in ("json", "npy", "npz"):
            raise BadOptionError(f"format must be json, npy or npz, got {explicit!r}")
        return fmt
    accept = request.headers.get("accept", "").lower()
    for media_type in (part.split(";", 1)[0].strip() for part in accept.split(",")):
        if media_type == NPY_MEDIA_TYPE:
            return "npy"
        if media_type == NPZ_MEDIA_TYPE:
            return "npz"
        if media_type == "application/json":
            return "json"
    return "json"


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


# --------------------------------------------------------------------------- responses
def _errors_header(results: list[ImageResult]) -> str:
    failed = [
        {"index": index, "filename": r.filename, "error": r.error}
        for index, r in enumerate(results)
        if not r.ok
    ]
    return json.dumps(failed, ensure_ascii=True)


def _binary_response(
    results: list[ImageResult], layers: list[str], fmt: str, dtype: str
) -> Response:
    ok = [r for r in results if r.ok]
    arrays = {
        layer: np.stack([r.features[layer] for r in ok]).astype(dtype, copy=False)  # type: ignore[index]
        for layer in layers
    }
    buffer = io.BytesIO()
    if fmt == "npy":
        np.save(buffer, arrays[layers[0]], allow_pickle=False)
        media_type = NPY_MEDIA_TYPE
    else:
        failed = [r for r in results if not r.ok]
        np.savez(
            buffer,
            **arrays,
            filenames=np.array([r.filename for r in ok], dtype=str),
            failed_filenames=np.array([r.filename for r in failed], dtype=str),
            failed_errors=np.array([r.error or "" for r in failed], dtype=str),
        )
        media_type = NPZ_MEDIA_TYPE
    headers = {
        "X-Decaf-Filenames": json.dumps([r.filename for r in ok], ensure_ascii=True),
        "X-Decaf-Errors": _errors_header(results),
        "X-Decaf-Layers": ",".join(layers),
    }
    return Response(buffer.getvalue(), media_type=media_type, headers=headers)


def _result_json(result: ImageResult) -> dict[str, Any]:
    return {
        "filename": result.filename,
        "features": (
            {layer: vector.tolist() for layer, vector in result.features.items()}
            if result.features is not None
            else None
        ),
        "error": result.error,
    }


def _all_failed_response(results: list[ImageResult], body: dict[str, Any]) -> JSONResponse:
    first = results[0]
    status = _ALL_FAILED_STATUS.get(first.error_type or "", 422)
    message = (
        f"none of the {len(results)} uploaded file(s) could be featurized; first error "
        f"({first.filename}): {first.error}"
    )
    error = {"type": first.error_type or "ImageDecodeError", "message": message}
    return JSONResponse({"error": error, **body}, status_code=status)


# --------------------------------------------------------------------------- routes
@router.post(
    "/features",
    summary="DeCAF features of one or many uploaded images",
    responses={
        200: {
            "content": {
                NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
                NPZ_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
            "description": "features as JSON, .npy or .npz (see Accept)",
        },
        413: {"description": "upload too large / too many files"},
        422: {"description": "bad option, or no uploaded image could be decoded"},
        503: {"description": "batch queue full (Retry-After) or model not loaded"},
    },
)
async def post_features(
    request: Request,
    settings: SettingsDep,
    featurizer: FeaturizerDep,
    _batcher: BatcherDep,
    images: Annotated[list[UploadFile], File(description="one or many image files")],
    layers: Annotated[str | None, Query(description="comma list or 'all'; default decaf6")] = None,
    crop: Annotated[str | None, Query(description="center | tencrop")] = None,
    normalize: Annotated[str | None, Query(description="l2 | none")] = None,
    dtype: Annotated[str | None, Query(description="float32 | float16")] = None,
    format: Annotated[str | None, Query(description="json | npy | npz (else Accept)")] = None,
    layers_form: Annotated[str | None, Form(alias="layers")] = None,
    crop_form: Annotated[str | None, Form(alias="crop")] = None,
    normalize_form: Annotated[str | None, Form(alias="normalize")] = None,
    dtype_form: Annotated[str | None, Form(alias="dtype")] = None,
) -> Response:
    chosen_layers = parse_layers(layers if layers is not None else layers_form, settings)
    chosen_crop = parse_crop(crop if crop is not None else crop_form, settings)
    l2 = parse_normalize(normalize if normalize is not None else normalize_form)
    out_dtype = parse_dtype(dtype if dtype is not None else dtype_form)
    fmt = choose_format(request, format)
    if fmt == "npy" and len(chosen_layers) != 1:
        return JSONResponse(
            {
                "error": {
                    "type": "NotAcceptable",
                    "message": f"application/x-npy holds one array but {len(chosen_layers)} "
                    "layers were requested: ask for one layer or Accept: application/x-npz",
                }
            },
            status_code=406,
        )

    results = await featurize_uploads(
        request, images, chosen_layers, settings=settings, crop=chosen_crop
    )
    for result in results:
        if result.features is not None:
            result.features = finish_features(result.features, normalize=l2, dtype=out_dtype)

    options = {
        "layers": chosen_layers,
        "crop": chosen_crop,
        "normalize": "l2" if l2 else "none",
        "dtype": out_dtype,
    }
    if fmt != "json" and any(r.ok for r in results):
        return _binary_response(results, chosen_layers, fmt, out_dtype)
    model = featurizer.describe()
    model["preprocessing"] = {**model.get("preprocessing", {}), "crop_mode": chosen_crop}
    body = {"model": model, "options": options, "results": [_result_json(r) for r in results]}
    if not any(r.ok for r in results):
        return _all_failed_response(results, body)
    return JSONResponse(body)


@router.get("/model", summary="Backbone, weights, layers, dims and preprocessing of the server")
async def get_model(settings: SettingsDep, featurizer: FeaturizerDep, request: Request) -> dict:
    batcher = getattr(request.app.state, "batcher", None)
    return {
        **featurizer.describe(),
        "offered_layers": list(settings.layers),
        "default_layers": default_layers(settings),
        "crop_modes": list(CROP_MODES),
        "default_crop": settings.crop,
        "dtypes": ["float32", "float16"],
        "batching": None
        if batcher is None
        else {
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
