"""FastAPI dependencies shared by every router, and the upload → features pipeline.

Everything the routes need lives on `app.state` (set by the lifespan in `service.app`): `settings`,
`featurizer`, `batcher`, `decode_pool`, `metrics`, and (from service-state) `db` and `jobs`.
Routes receive them through the `Annotated[..., Depends()]` aliases below, so tests can build an
app with any settings and nothing is a module-level global.

Upload rules (`featurize_uploads`), each failure a per-image error that never spoils the others:
- content type must be `image/*` or `application/octet-stream` (what curl/httpx send for unknown
  extensions); anything else → "unsupported content type ...";
- a file larger than `max_upload_bytes` → "file too large ..." (the whole request body is also
  capped by `BodySizeLimitMiddleware` at `max_files_per_request * max_upload_bytes` + 1 MiB, which
  answers 413 before anything is parsed);
- undecodable / truncated / empty / too many pixels → the featurizer's error message.
More than `max_files_per_request` files → 413 for the whole request.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import Depends, HTTPException, Request, UploadFile, status

from featurizer.errors import DecafError, ImageDecodeError
from service.batcher import BatcherStoppedError, MicroBatcher
from service.settings import Settings

if TYPE_CHECKING:
    import torch

    from featurizer.extractor import Featurizer

log = logging.getLogger(__name__)

ACCEPTED_GENERIC_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})


# --------------------------------------------------------------------------- app.state accessors
def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_featurizer(request: Request) -> Featurizer:
    featurizer = getattr(request.app.state, "featurizer", None)
    if featurizer is None:
        raise BatcherStoppedError("the model is not loaded yet; retry when /readyz answers 200")
    return featurizer


def get_batcher(request: Request) -> MicroBatcher:
    batcher = getattr(request.app.state, "batcher", None)
    if batcher is None or not batcher.running:
        raise BatcherStoppedError("the model is not loaded yet; retry when /readyz answers 200")
    return batcher


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
FeaturizerDep = Annotated[Any, Depends(get_featurizer)]  # a featurizer.Featurizer
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]


# --------------------------------------------------------------------------- authentication
def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def require_api_key(request: Request) -> None:
    """Accept `X-API-Key: KEY` or `Authorization: Bearer KEY` when DECAF_API_KEY is set."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    presented = _presented_key(request)
    # compare_digest: the time taken must not reveal how much of the key matched.
    if presented is None or not hmac.compare_digest(
        presented.encode("utf-8"), expected.get_secret_value().encode("utf-8")
    ):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid API key: send 'X-API-Key: <key>' or "
            "'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": 'Bearer realm="decaf"'},
        )


ApiKeyDep = Depends(require_api_key)


# --------------------------------------------------------------------------- uploads
@dataclass
class ImageResult:
    """Outcome for one uploaded file: features ({layer: (dim,) float32}) or an error message."""

    filename: str
    features: dict[str, np.ndarray] | None
    error: str | None
    error_type: str | None = None  # UnsupportedContentType, FileTooLarge, ImageDecodeError, ...

    @property
    def ok(self) -> bool:
        return self.error is None


class FileTooLargeError(ImageDecodeError):
    """One uploaded file is over DECAF_MAX_UPLOAD_BYTES."""


def content_type_allowed(content_type: str | None) -> bool:
    if not content_type:  # a multipart part without a type is plain bytes by RFC 7578
        return True
    main = content_type.split(";", 1)[0].strip().lower()
    return main.startswith("image/") or main in ACCEPTED_GENERIC_TYPES


async def read_limited(upload: UploadFile, limit: int) -> bytes:
    """Read at most `limit` bytes; raise ImageDecodeError naming the limit if there is more."""
    if upload.size is not None and upload.size > limit:
        raise FileTooLargeError(_too_large_message(upload.size, limit))
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise FileTooLargeError(_too_large_message(None, limit))
    return data


def _too_large_message(size: int | None, limit: int) -> str:
    shown = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return f"file too large: {shown}, the limit is {limit} bytes per file (DECAF_MAX_UPLOAD_BYTES)"


def decode_pool(request: Request) -> ThreadPoolExecutor:
    return request.app.state.decode_pool


def prepare_tensor(featurizer: Featurizer, data: bytes, crop: str, max_pixels: int) -> torch.Tensor:
    """Decode + preprocess one upload (runs in the decode thread pool)."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    if crop == featurizer.crop:
        return featurizer.prepare(data)
    # The served featurizer has one crop mode; another one per request goes through the same
    # preprocessing function with that mode and the same spec.
    from featurizer.preprocess import load_and_preprocess

    return load_and_preprocess(data, featurizer.spec.preprocess, crop, max_pixels=max_pixels)


async def _featurize_one(
    request: Request,
    upload: UploadFile,
    layers: frozenset[str],
    crop: str,
    settings: Settings,
) -> ImageResult:
    filename = upload.filename or "upload"
    featurizer: Featurizer = request.app.state.featurizer
    batcher: MicroBatcher = request.app.state.batcher
    if not content_type_allowed(upload.content_type):
        return ImageResult(
            filename,
            None,
            f"unsupported content type {upload.content_type!r}: send image/* or "
            "application/octet-stream",
            "UnsupportedContentType",
        )
    try:
        # Announced from the start, so a forming batch waits for this image (see batcher).
        with batcher.expecting():
            data = await read_limited(upload, settings.max_upload_bytes)
            loop = asyncio.get_running_loop()
            tensor = await loop.run_in_executor(
                decode_pool(request), prepare_tensor, featurizer, data, crop, settings.max_pixels
            )
            del data
        pending = batcher.enqueue(tensor, layers)  # no await in between: nothing is missed
        features = await pending
    except FileTooLargeError as exc:
        return ImageResult(filename, None, str(exc), "FileTooLarge")
    except ImageDecodeError as exc:  # includes ImageTooLargeError (pixel limit)
        return ImageResult(filename, None, str(exc), type(exc).__name__)
    return ImageResult(filename, features, None)


class ClientDisconnectedError(DecafError):
    """The client went away before its features were ready (nginx's 499: nobody reads it)."""

    status_code = 499


async def _cancel_on_disconnect(
    request: Request, task: asyncio.Future[Any], flag: dict[str, bool]
) -> None:
    """Cancel `task` when the client disconnects, so its images are dropped before the forward.

    Only used once the body is fully read: from then on the ASGI server's `receive` yields
    nothing but `http.disconnect`.
    """
    while not task.done():
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            flag["disconnected"] = True
            task.cancel()
            return


async def featurize_uploads(
    request: Request,
    files: list[UploadFile],
    layers: Sequence[str],
    *,
    settings: Settings,
    crop: str | None = None,
) -> list[ImageResult]:
    """Features for every upload, in order; bad files get an error entry, good ones features.

    Decoding runs in the bounded decode pool, the forward pass in the micro-batcher. Raises
    QueueFullError (→ 503) if the batch queue is full, HTTPException 413 for too many files.
    """
    if not files:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "no images were uploaded")
    if len(files) > settings.max_files_per_request:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"too many files: {len(files)}, the limit is {settings.max_files_per_request} per "
            "request (DECAF_MAX_FILES_PER_REQUEST)",
        )
    get_batcher(request)  # 503 early when the model is not ready
    wanted = frozenset(layers)
    crop_mode = crop or settings.crop
    tasks = [
        asyncio.ensure_future(_featurize_one(request, f, wanted, crop_mode, settings))
        for f in files
    ]
    everything = asyncio.ensure_future(_wait_all(tasks))
    flag = {"disconnected": False}
    watcher = asyncio.ensure_future(_cancel_on_disconnect(request, everything, flag))
    try:
        results = await everything
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if flag["disconnected"] and current is not None and not current.cancelling():
            raise ClientDisconnectedError("client disconnected; its images were skipped") from None
        raise
    finally:
        watcher.cancel()
        for task in tasks:
            task.cancel()
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.record_images(ok=sum(r.ok for r in results), failed=sum(not r.ok for r in results))
    return results


async def _wait_all(tasks: list[asyncio.Future[ImageResult]]) -> list[ImageResult]:
    """Like gather, but the first request-level failure (e.g. queue full) cancels the rest."""
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        if task.exception() is not None:
            for other in pending:
                other.cancel()
            raise task.exception()  # type: ignore[misc]
    return [task.result() for task in tasks]
