"""Uploaded images → features: content types, size limits, parallel decoding, the micro-batcher.

Rules (`UploadPipeline.featurize`), each failure a per-image error that never spoils the others:
- content type must be `image/*` or `application/octet-stream` (what curl/httpx send for unknown
  extensions); anything else → UnsupportedContentTypeError (415);
- a file larger than `max_upload_bytes` → FileTooLargeError (413) (the whole request body is also
  capped by `BodySizeLimitMiddleware` at `max_files_per_request * max_upload_bytes` + 1 MiB,
  which answers 413 before anything is parsed);
- undecodable / truncated / empty / too many pixels → the featurizer's ImageDecodeError (422) or
  ImageTooLargeError (413).
No file, or more than `max_files_per_request` files, fails the whole request (422, 413). When no
image of a request worked, `ImagesFailedError` reports every image's problem in one answer.
Decoding runs in a bounded thread pool, the forward pass in the backbone's micro-batcher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from starlette.datastructures import UploadFile

from featurizer.errors import DecafError, ImageDecodeError
from service.models import LoadedModel
from service.problems import Problem, problem_from_error, problem_type

if TYPE_CHECKING:
    import torch

    from featurizer.extractor import Featurizer

ACCEPTED_GENERIC_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})

Receive = Callable[[], Awaitable[dict[str, Any]]]


# --------------------------------------------------------------------------- errors
class UnsupportedContentTypeError(DecafError):
    """An uploaded part's content type is not an image."""

    http_status: ClassVar[int] = 415


class FileTooLargeError(ImageDecodeError):
    """One uploaded file is over DECAF_MAX_UPLOAD_BYTES."""

    http_status: ClassVar[int] = 413


class TooManyFilesError(DecafError):
    """More files in one request than DECAF_MAX_FILES_PER_REQUEST."""

    http_status: ClassVar[int] = 413


class NoImagesError(DecafError, ValueError):
    """The request carries no image file."""

    http_status: ClassVar[int] = 422


class ClientDisconnectedError(DecafError):
    """The client went away before its features were ready (nginx's 499: nobody reads it)."""

    http_status: ClassVar[int] = 499


@dataclass
class ImageResult:
    """Outcome for one uploaded file: features ({layer: (dim,) float32}) or the error."""

    filename: str
    features: dict[str, np.ndarray] | None
    error: DecafError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def message(self) -> str | None:
        return None if self.error is None else str(self.error)

    @property
    def error_type(self) -> str | None:
        """The problem type URI of the error (see service.problems), None when it worked."""
        return None if self.error is None else problem_type(type(self.error))


class ImagesFailedError(DecafError):
    """No uploaded image of the request could be used.

    Answered as the first image's problem (its type and status: 422 undecodable, 413 too big,
    415 not an image), with every image's own problem in `errors`.
    """

    http_status: ClassVar[int] = 422  # the usual case; the first failure's status is used

    def __init__(self, results: Sequence[ImageResult]) -> None:
        self.results = list(results)
        first = self.results[0]
        super().__init__(
            f"none of the {len(self.results)} uploaded file(s) could be used; first error "
            f"({first.filename}): {first.message}"
        )

    def to_problem(self) -> Problem:
        assert self.results[0].error is not None
        first = problem_from_error(self.results[0].error)
        return Problem(
            status=first.status,
            title=first.title,
            detail=str(self),
            type=first.type,
            extensions={"errors": image_errors(self.results)},
            headers=first.headers,
        )


def image_errors(results: Sequence[ImageResult]) -> list[dict[str, Any]]:
    """The failed images of a request: index, filename and their problem (type, status, detail)."""
    return [
        {
            "index": index,
            "filename": result.filename,
            "type": result.error_type,
            "status": type(result.error).http_status,
            "detail": result.message,
        }
        for index, result in enumerate(results)
        if result.error is not None
    ]


# --------------------------------------------------------------------------- pieces
def content_type_allowed(content_type: str | None) -> bool:
    if not content_type:  # a multipart part without a type is plain bytes by RFC 7578
        return True
    main = content_type.split(";", 1)[0].strip().lower()
    return main.startswith("image/") or main in ACCEPTED_GENERIC_TYPES


async def read_limited(upload: UploadFile, limit: int) -> bytes:
    """Read at most `limit` bytes; raise FileTooLargeError naming the limit if there is more."""
    if upload.size is not None and upload.size > limit:
        raise FileTooLargeError(_too_large_message(upload.size, limit))
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise FileTooLargeError(_too_large_message(None, limit))
    return data


def _too_large_message(size: int | None, limit: int) -> str:
    shown = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return f"file too large: {shown}, the limit is {limit} bytes per file (DECAF_MAX_UPLOAD_BYTES)"


def prepare_tensor(featurizer: Featurizer, data: bytes, crop: str, max_pixels: int) -> torch.Tensor:
    """Decode + preprocess one upload (runs in the decode thread pool)."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    if crop == featurizer.crop:
        return featurizer.prepare(data)
    # The served featurizer has one crop mode; another one per request goes through the same
    # preprocessing function with that mode, the same spec and the same decoder.
    from featurizer.decode_tensor import prepare_image

    decoder = getattr(featurizer, "decoder", "auto")
    return prepare_image(data, featurizer.preprocess, crop, max_pixels=max_pixels, decoder=decoder)


# --------------------------------------------------------------------------- pipeline
@dataclass(frozen=True)
class UploadLimits:
    max_upload_bytes: int
    max_files_per_request: int
    max_pixels: int


class UploadPipeline:
    """Featurizes the uploads of a request; one per app (it owns the decode pool)."""

    def __init__(
        self,
        limits: UploadLimits,
        decode_pool: Executor,
        on_images: Callable[[int, int], None] | None = None,
    ) -> None:
        self.limits = limits
        self.decode_pool = decode_pool
        self.on_images = on_images  # (ok, failed) per request, for the metrics

    def close(self) -> None:
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    async def featurize(
        self,
        files: Sequence[UploadFile],
        *,
        model: LoadedModel,
        layers: Sequence[str],
        crop: str,
        receive: Receive | None = None,
    ) -> list[ImageResult]:
        """Features for every upload, in order; bad files get their error, good ones features.

        `receive` (the request's ASGI receive) lets a client disconnect cancel the work. Raises
        QueueFullError (503) if the batch queue is full, TooManyFilesError or NoImagesError.
        """
        if not files:
            raise NoImagesError("no images were uploaded: send one or more image files")
        if len(files) > self.limits.max_files_per_request:
            raise TooManyFilesError(
                f"too many files: {len(files)}, the limit is {self.limits.max_files_per_request} "
                "per request (DECAF_MAX_FILES_PER_REQUEST): split them over several requests"
            )
        model.running_batcher()  # 503 early when the model is not serving
        wanted = frozenset(layers)
        tasks = [asyncio.ensure_future(self._one(f, model, wanted, crop)) for f in files]
        results = await _gather_unless_disconnected(tasks, receive)
        if self.on_images is not None:
            self.on_images(sum(r.ok for r in results), sum(not r.ok for r in results))
        return results

    async def _one(
        self, upload: UploadFile, model: LoadedModel, layers: frozenset[str], crop: str
    ) -> ImageResult:
        filename = upload.filename or "upload"
        if not content_type_allowed(upload.content_type):
            return ImageResult(
                filename,
                None,
                UnsupportedContentTypeError(
                    f"unsupported content type {upload.content_type!r}: send image/* or "
                    "application/octet-stream"
                ),
            )
        try:
            # Announced from the start, so a forming batch waits for this image (see batcher).
            with model.batcher.expecting():
                data = await read_limited(upload, self.limits.max_upload_bytes)
                loop = asyncio.get_running_loop()
                tensor = await loop.run_in_executor(
                    self.decode_pool,
                    prepare_tensor,
                    model.featurizer,
                    data,
                    crop,
                    self.limits.max_pixels,
                )
                del data
            pending = model.batcher.enqueue(tensor, layers)  # no await in between: none missed
            features = await pending
        except ImageDecodeError as exc:  # includes FileTooLarge and ImageTooLarge (pixels)
            return ImageResult(filename, None, exc)
        return ImageResult(filename, features)


async def _gather_unless_disconnected(
    tasks: list[asyncio.Future[ImageResult]], receive: Receive | None
) -> list[ImageResult]:
    everything = asyncio.ensure_future(_wait_all(tasks))
    flag = {"disconnected": False}
    watcher = (
        asyncio.ensure_future(_cancel_on_disconnect(receive, everything, flag))
        if receive is not None
        else None
    )
    try:
        return await everything
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if flag["disconnected"] and current is not None and not current.cancelling():
            raise ClientDisconnectedError("client disconnected; its images were skipped") from None
        raise
    finally:
        if watcher is not None:
            watcher.cancel()
        for task in tasks:
            task.cancel()


async def _cancel_on_disconnect(
    receive: Receive, task: asyncio.Future[Any], flag: dict[str, bool]
) -> None:
    """Cancel `task` when the client disconnects, so its images are dropped before the forward.

    Only used once the body is fully read: from then on the ASGI server's `receive` yields
    nothing but `http.disconnect`.
    """
    while not task.done():
        message = await receive()
        if message.get("type") == "http.disconnect":
            flag["disconnected"] = True
            task.cancel()
            return


async def _wait_all(tasks: list[asyncio.Future[ImageResult]]) -> list[ImageResult]:
    """Like gather, but the first request-level failure (e.g. queue full) cancels the rest."""
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        error = task.exception()
        if error is not None:
            for other in pending:
                other.cancel()
            raise error
    return [task.result() for task in tasks]
