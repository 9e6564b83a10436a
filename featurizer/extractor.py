"""``Featurizer``: the Python API over backbone, weights, precision and preprocessing.

>>> fz = Featurizer(["decaf6", "decaf7"], weights="imagenet")           # doctest: +SKIP
>>> feats = fz.extract(["cat.jpg", open("dog.png", "rb").read()])       # doctest: +SKIP
>>> feats["decaf6"].shape                                               # doctest: +SKIP
(2, 4096)

``prepare`` (decode + resize/crop to uint8) and ``forward`` (uint8 batch -> float32 features) are
separate so batch extraction and the service can decode in parallel workers and feed the model.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

import numpy as np
import torch

from featurizer.backbone import DecafBackbone, build_backbone
from featurizer.backbones import DEFAULT_BACKBONE, Backbone, get_backbone
from featurizer.decode_tensor import prepare_image
from featurizer.errors import ImageDecodeError
from featurizer.images import DEFAULT_MAX_PIXELS, ImageSource
from featurizer.options import CROP_MODES, DECODERS, CropMode, Decoder, LinearKernel, Precision
from featurizer.precision import check_precision, resolve_device
from featurizer.runtime import default_num_threads
from featurizer.spec import PreprocessSpec
from featurizer.weights import LoadedWeights, resolve_weights

TENCROP_VIEWS = 10


class Featurizer:
    """DeCAF features from a pretrained backbone.

    Args:
        layers: default taps returned by ``forward``/``extract``; ``None``: the backbone's
            default layers (``decaf backbones`` lists every backbone's taps).
        backbone: a registered name (``featurizer.backbones.backbone_names()``) or a record.
        weights: ``"imagenet"`` (the backbone's default tag; torchvision cache,
            ``DECAF_WEIGHTS``), a weight tag such as ``"IMAGENET1K_V1"``, a ``.pth`` path (or a
            ``.caffemodel`` for ``caffenet``/``bvlc_alexnet``), or ``"random"`` (tests only).
            The weights decide the preprocessing (``self.preprocess``).
        precision: ``fp32`` (reference), ``bf16`` (CPU/CUDA), ``fp16`` (CUDA), ``int8`` (CPU).
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        crop: ``"center"`` or ``"tencrop"`` (features averaged over the 10 crops).
        max_pixels: decompression-bomb limit for decoding.
        num_threads: torch intra-op threads (process-wide); default: the cores we may use.
        download: allow downloading missing pretrained weights (``imagenet`` or a tag).
        mean_image: Caffe's ``ilsvrc_2012_mean.binaryproto``/``.npy`` for a Caffe backbone
            (``caffenet``, ``bvlc_alexnet``): subtracted per pixel instead of the channel mean.
        linear_kernel: fp32 CPU fc layers through ``onednn`` (``auto``: when available) or
            ``aten`` (``F.linear``, the reference); see ``featurizer.linear_kernels``.
        decoder: ``auto`` (torchvision's JPEG decoder where it is measured faster, else PIL),
            ``tensor`` or ``pil``; see ``featurizer.decode_tensor``.
    """

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        *,
        backbone: Backbone | str = DEFAULT_BACKBONE,
        weights: str = "imagenet",
        precision: Precision = "fp32",
        device: str = "auto",
        crop: CropMode = "center",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        num_threads: int | None = None,
        download: bool = True,
        mean_image: str | None = None,
        linear_kernel: LinearKernel = "auto",
        decoder: Decoder = "auto",
    ) -> None:
        if crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {list(CROP_MODES)}, got {crop!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {list(DECODERS)}, got {decoder!r}")
        self.backbone: Backbone = get_backbone(backbone) if isinstance(backbone, str) else backbone
        self.layers: tuple[str, ...] = self.backbone.check_layers(
            self.backbone.default_layers if layers is None else layers
        )
        self.device: torch.device = resolve_device(device)
        check_precision(precision, self.device)  # before the (slow) weights load
        self.precision: Precision = precision
        self.crop: CropMode = crop
        self.max_pixels = max_pixels
        self.decoder: Decoder = decoder
        self.num_threads = num_threads or default_num_threads()
        torch.set_num_threads(self.num_threads)
        loaded = resolve_weights(weights, self.backbone, download=download, mean_image=mean_image)
        self.preprocess: PreprocessSpec = loaded.preprocess
        self.model: DecafBackbone = build_backbone(self.backbone, loaded)
        self.model.set_precision(precision, self.device, linear_kernel)
        # Provenance only: the model owns the tensors now, and for bf16/int8/CUDA keeping the
        # fp32 CPU copy alive would cost another copy of the weights (VGG-16: 528 MB).
        self.weights: LoadedWeights = dataclasses.replace(loaded, state_dict={})
        # One forward at a time: the service calls from worker threads, torch already uses all
        # cores inside one forward, and quantised modules are not documented as re-entrant.
        self._lock = threading.Lock()

    @property
    def dims(self) -> dict[str, int]:
        dims = self.backbone.dims
        return {name: dims[name] for name in self.layers}

    def describe(self) -> dict:
        """JSON-safe provenance for manifests, probes and the service's GET /v1/model."""
        return {
            "backbone": self.backbone.name,
            "weights_id": self.weights.weights_id,
            "weights_sha256": self.weights.sha256,
            "layers": self.dims,
            "preprocessing": {**self.preprocess.to_dict(), "crop_mode": self.crop},
            "precision": self.precision,
            "device": str(self.device),
        }

    def prepare(self, source: ImageSource) -> torch.Tensor:
        """Decode + resize/crop one image to uint8 (3,H,W), or (10,3,H,W) for tencrop."""
        return prepare_image(
            source, self.preprocess, self.crop, max_pixels=self.max_pixels, decoder=self.decoder
        )

    def forward(
        self, batch: torch.Tensor, layers: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """uint8 (N,3,H,W) or (N,10,3,H,W) -> float32 numpy (N, dim) per layer."""
        names = self.layers if layers is None else self.backbone.check_layers(layers)
        images, views = self._flatten_views(batch)
        with self._lock, torch.inference_mode():
            taps = self.model(images, names)
            return {name: self._to_numpy(taps[name], views) for name in names}

    def extract(
        self,
        images: Sequence[ImageSource],
        *,
        batch_size: int = 64,
        layers: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Features of a list of paths / bytes / PIL images, in order.

        Raises the decoder's ImageDecodeError (or subclass) naming the index of a bad image.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        names = self.layers if layers is None else self.backbone.check_layers(layers)
        chunks: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for start in range(0, len(images), batch_size):
            tensors = [
                self._prepare_indexed(index, images[index])
                for index in range(start, min(start + batch_size, len(images)))
            ]
            for name, array in self.forward(torch.stack(tensors), names).items():
                chunks[name].append(array)
        return {
            name: np.concatenate(parts) if parts else self._empty(name)
            for name, parts in chunks.items()
        }

    def _empty(self, layer: str) -> np.ndarray:
        return np.zeros((0, self.backbone.dims[layer]), dtype=np.float32)

    def _prepare_indexed(self, index: int, source: ImageSource) -> torch.Tensor:
        try:
            return self.prepare(source)
        except ImageDecodeError as exc:
            # Same error type (ImageTooLargeError stays one), message says which input it was.
            raise type(exc)(f"image {index}: {exc}") from exc

    def _flatten_views(self, batch: torch.Tensor) -> tuple[torch.Tensor, int]:
        if not isinstance(batch, torch.Tensor):
            raise TypeError(f"batch must be a torch.Tensor, got {type(batch).__name__}")
        size = self.preprocess.crop
        if batch.dtype != torch.uint8:
            raise TypeError(f"batch must be uint8 (from prepare()), got {batch.dtype}")
        if batch.dim() == 5 and batch.shape[1:] == (TENCROP_VIEWS, 3, size, size):
            return batch.reshape(-1, 3, size, size), TENCROP_VIEWS
        if batch.dim() == 4 and batch.shape[1:] == (3, size, size):
            return batch, 1
        raise ValueError(
            f"batch shape {tuple(batch.shape)} is neither (N, 3, {size}, {size}) nor "
            f"(N, {TENCROP_VIEWS}, 3, {size}, {size})"
        )

    @staticmethod
    def _to_numpy(activation: torch.Tensor, views: int) -> np.ndarray:
        flat = activation.reshape(activation.shape[0], -1).to(torch.float32)
        if views > 1:
            flat = flat.view(-1, views, flat.shape[1]).mean(dim=1)
        return np.ascontiguousarray(flat.cpu().numpy())

    def __repr__(self) -> str:
        return (
            f"Featurizer(backbone={self.backbone.name!r}, weights={self.weights.weights_id!r}, "
            f"layers={list(self.layers)}, precision={self.precision!r}, device='{self.device}', "
            f"crop={self.crop!r})"
        )
