"""Device choice and numeric precision of the backbone.

Measured on this project's 2-core AVX-512-BF16 CPU (benchmarks/model_throughput.py):

- ``fp32``: the reference.
- ``bf16``: the whole network is cast to bfloat16 (oneDNN kernels accumulate in fp32). Casting was
  faster than ``torch.autocast`` here (autocast re-casts the weights on every call) and equally
  faithful. Inputs are normalised in fp32 first, then rounded once to bf16.
- ``int8``: dynamic quantisation of every ``nn.Linear`` with
  ``torch.ao.quantization.quantize_dynamic``: int8 weights, activations quantised per batch. Convs
  stay fp32. Per backbone: AlexNet and VGG-16 fc6/fc7/fc8 (at batch 1 the fc layers, 58 M of
  AlexNet's 61 M weights, dominate, as DeCAF observed); ResNet-50 only its fc head (the 2048-d
  ``pool`` tap is computed before it and stays exact); ViT-B/16 the two MLP Linears of each block
  and the head, while attention's ``out_proj`` (a ``NonDynamicallyQuantizableLinear``, matched out
  by quantize_dynamic's exact-type lookup) and the fused q/k/v projection stay fp32.
  ``torch.ao.quantization`` is deprecated in favour of torchao but still works in torch 2.14; its
  deprecation warnings are silenced here, and a clear error is raised if it disappears.
- ``fp16``: CUDA only (half model); CPUs have no fast fp16 convolutions.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from featurizer.errors import DecafError
from featurizer.linear_kernels import pack_linears, unpack_linears
from featurizer.options import PRECISIONS, LinearKernel, Precision

__all__ = [
    "PRECISIONS",
    "Precision",
    "PrecisionError",
    "apply_precision",
    "check_precision",
    "cpu_has_fast_bf16",
    "quantize_linear_int8",
    "resolve_device",
]


class PrecisionError(DecafError, ValueError):
    """The precision or device asked for is unknown or not supported on this machine."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU. ``"cuda:1"`` etc. are checked to exist."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PrecisionError(f"invalid device {device!r}: {exc}") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise PrecisionError(f"device {device!r} requested but CUDA is not available here")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise PrecisionError(f"device {device!r} requested but only {count} CUDA device(s)")
    elif resolved.type != "cpu":
        raise PrecisionError(f"device {device!r} is not supported; use auto, cpu or cuda[:N]")
    return resolved


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise PrecisionError("fp16 needs a CUDA device; on CPU use bf16 (or int8)")
    if precision == "int8" and device.type != "cpu":
        raise PrecisionError("int8 (dynamic quantisation) runs on CPU only; on CUDA use fp16/bf16")


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN has native bf16 kernels (AVX-512 BF16 / AMX) on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def apply_precision(
    net: nn.Module, precision: str, device: torch.device, linear_kernel: LinearKernel = "auto"
) -> tuple[nn.Module, torch.dtype]:
    """Move ``net`` to ``device`` in ``precision``; returns the module and its input dtype.

    ``int8`` returns a new module (quantised copies of the Linear layers); callers must re-read
    any references they held to submodules. fp32 on CPU runs its fc layers through oneDNN
    (``featurizer.linear_kernels``; ``linear_kernel="aten"`` keeps ``F.linear``).
    """
    check_precision(precision, device)
    unpack_linears(net)  # packed fp32 CPU weights would silently ignore the .to() below
    net = net.to(device)
    if precision == "fp32":
        net = net.to(torch.float32)  # undoes an earlier bf16/fp16 cast; a no-op otherwise
        if device.type == "cpu":
            pack_linears(net, linear_kernel)
        return net, torch.float32
    if precision == "fp16":
        return net.to(torch.float16), torch.float16
    if precision == "bf16":
        if device.type == "cpu" and not cpu_has_fast_bf16():
            warnings.warn(
                "this CPU has no native bf16 support (AVX-512 BF16 / AMX): bf16 will likely be "
                "slower than fp32",
                RuntimeWarning,
                stacklevel=3,
            )
        return net.to(torch.bfloat16), torch.bfloat16
    return quantize_linear_int8(net), torch.float32


def quantize_linear_int8(net: nn.Module) -> nn.Module:
    """Dynamic int8 quantisation of every nn.Linear (weights int8, activations per batch)."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:  # removed in a future torch: torchao is the successor
        raise PrecisionError(
            "int8 needs torch.ao.quantization.quantize_dynamic, which this torch "
            f"({torch.__version__}) no longer has; use bf16 or fp32"
        ) from exc
    engines = torch.backends.quantized.supported_engines
    if "x86" in engines:
        torch.backends.quantized.engine = "x86"  # fbgemm/onednn dispatch tuned for AVX-512 VNNI
    with warnings.catch_warnings():
        # Deprecation notices about torch.ao -> torchao: known, and not the user's to act on.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(net, {nn.Linear}, dtype=torch.qint8, inplace=False)
