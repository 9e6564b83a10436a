"""The options of `POST /v1/features`, parsed and checked (each bad value → 422 saying why).

- `backbone`: one of the loaded backbones; default: the server's default (GET /v1/model);
- `layers`: comma list of layers, `all` for every layer the backbone serves; default: the
  backbone's default tap (`decaf6` for AlexNet: DeCAF6 transferred best in the paper);
- `crop`: `center` | `tencrop` (10 views averaged, ~10x the compute); default: server setting;
- `normalize`: `l2` (unit-length vectors, what cosine / linear-SVM users usually want) | `none`;
  `true`/`false` are accepted too;
- `dtype`: `float32` | `float16` (halves the payload; values rounded after normalisation);
- `format`: `json` | `npy` | `npz`, else the Accept header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from featurizer.options import CROP_MODES, CropMode
from service.errors import InvalidOptionError, NotAcceptableError
from service.models import LoadedModel, ModelPool

NPY_MEDIA_TYPE = "application/x-npy"
NPZ_MEDIA_TYPE = "application/x-npz"

OutputDtype = Literal["float32", "float16"]
OUTPUT_DTYPES: tuple[OutputDtype, ...] = get_args(OutputDtype)
OutputFormat = Literal["json", "npy", "npz"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)

_TRUE = {"l2", "true", "1", "yes", "on"}
_FALSE = {"none", "false", "0", "no", "off", ""}
_DTYPE_ALIASES: dict[str, OutputDtype] = {
    "float32": "float32",
    "fp32": "float32",
    "f4": "float32",
    "float16": "float16",
    "fp16": "float16",
    "f2": "float16",
    "half": "float16",
}


@dataclass(frozen=True)
class FeatureOptions:
    model: LoadedModel
    layers: list[str]
    crop: CropMode
    normalize: bool
    dtype: OutputDtype
    format: OutputFormat

    def echo(self) -> dict[str, object]:
        """The options as the JSON response reports them."""
        return {
            "layers": self.layers,
            "crop": self.crop,
            "normalize": "l2" if self.normalize else "none",
            "dtype": self.dtype,
        }


def parse_layers(text: str | None, models: ModelPool, model: LoadedModel) -> list[str]:
    """`"decaf6,decaf7"` → checked list in that order (duplicates dropped); None → default."""
    if text is None or not text.strip():
        return model.default_layers
    if text.strip().lower() == "all":
        return list(model.layers)
    names = [part.strip() for part in text.split(",") if part.strip()]
    return list(models.check_layers(model.name, names))


def parse_normalize(value: str | None) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidOptionError(f"normalize must be 'l2' or 'none' (or true/false), got {value!r}")


def parse_crop(value: str | None, default: CropMode) -> CropMode:
    crop = (value or default).strip().lower()
    for mode in CROP_MODES:
        if crop == mode:
            return mode
    raise InvalidOptionError(f"crop must be one of {list(CROP_MODES)}, got {value!r}")


def parse_dtype(value: str | None) -> OutputDtype:
    text = (value or "float32").strip().lower()
    if text in _DTYPE_ALIASES:
        return _DTYPE_ALIASES[text]
    raise InvalidOptionError(f"dtype must be one of {list(OUTPUT_DTYPES)}, got {value!r}")


def choose_format(explicit: str | None, accept: str) -> OutputFormat:
    """json | npy | npz from `?format=` or the Accept header (first known type listed wins)."""
    if explicit:
        fmt = explicit.strip().lower()
        for known in OUTPUT_FORMATS:
            if fmt == known:
                return known
        raise InvalidOptionError(f"format must be json, npy or npz, got {explicit!r}")
    for media_type in (part.split(";", 1)[0].strip() for part in accept.lower().split(",")):
        if media_type == NPY_MEDIA_TYPE:
            return "npy"
        if media_type == NPZ_MEDIA_TYPE:
            return "npz"
        if media_type == "application/json":
            return "json"
    return "json"


def check_representable(fmt: OutputFormat, layers: list[str]) -> None:
    """An .npy file holds one array: one layer only."""
    if fmt == "npy" and len(layers) != 1:
        raise NotAcceptableError(
            f"{NPY_MEDIA_TYPE} holds one array but {len(layers)} layers were requested: ask for "
            f"one layer or Accept: {NPZ_MEDIA_TYPE}"
        )
