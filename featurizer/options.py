"""Allowed values, declared once: argparse ``choices``, pydantic fields and docs all read these.

Importable without torch (``decaf --help`` must stay fast).
"""

from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

CropMode = Literal["center", "tencrop"]
CROP_MODES: tuple[CropMode, ...] = get_args(CropMode)

Engine = Literal["local", "ray"]
ENGINES: tuple[Engine, ...] = get_args(Engine)

LinearKernel = Literal["auto", "onednn", "aten"]
LINEAR_KERNELS: tuple[LinearKernel, ...] = get_args(LinearKernel)

# How files become pixels (featurizer.decode_tensor): PIL everywhere, torchvision.io's JPEG decoder
# for every plain JPEG, or "auto" (the measured choice per file, see featurizer.decode_tensor).
Decoder = Literal["auto", "tensor", "pil"]
DECODERS: tuple[Decoder, ...] = get_args(Decoder)
