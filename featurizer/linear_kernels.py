"""fp32 fully connected layers through oneDNN's packed inner product instead of MKL's sgemm.

Why: on CPU, ``F.linear`` in fp32 goes to MKL's sgemm, which on AMD CPUs (and on small batches
on Intel ones) runs far below the cores' FMA peak, while the convolutions (oneDNN) reach it. The
same layer through oneDNN's inner product with a weight reordered once into oneDNN's blocked
layout (``torch.ops.mkldnn._reorder_linear_weight`` + ``torch.ops.mkldnn._linear_pointwise``,
the pair torch's own inductor uses for packed CPU linears) is 1.2-2.4x faster. Measured
(AlexNet's fc6+fc7+fc8, 2 threads, median of interleaved rounds, ``benchmarks/model_throughput.py
--fc-table``): AMD EPYC, quiet (issue 13): 2.38x at batch 64, 2.15x at 32, 2.18x at 8, 1.40x at
1; this project's Intel Xeon VM, loaded 10-20x over its 2 cores by other jobs (so +-30 %): 1.2-1.3x
at 64, 1.5-1.8x at 32, 1.7-2.2x at 8, 1.0x at 1 and 2 (median per-round CPU-time ratio 0.99 / 0.98
over 40 alternated rounds), 1.47x at 4. Not slower beyond noise in any row, hence the rule rather
than a measurement at start-up (which would cost start-up time and make the kernel, but not the
result, depend on machine noise):

    **Rule**: on CPU, in fp32, every module whose type is exactly ``nn.Linear`` runs through
    oneDNN when torch was built with it (``torch.backends.mkldnn.is_available()``);
    ``linear_kernel="aten"`` keeps ``F.linear`` (the reference, used by the tests and benchmarks).

Exactly ``nn.Linear``: subclasses such as attention's ``NonDynamicallyQuantizableLinear`` are
read by their owner through ``.weight`` and must stay as they are. The result is not bit-identical
(a different summation order) but within fp32 rounding: every tap of every backbone stays within
1e-5 relative of the reference (tests/featurizer/backbones/contract.py).

bf16 and int8 need nothing here: bf16 ``F.linear`` on CPU already dispatches to oneDNN (measured:
identical output and speed to the packed path), and int8's dynamic-quantised Linear has its own
fbgemm/oneDNN kernels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featurizer.options import LINEAR_KERNELS, LinearKernel

__all__ = ["LINEAR_KERNELS", "LinearKernel", "OneDnnLinear", "pack_linears", "unpack_linears"]


def onednn_available() -> bool:
    return bool(torch.backends.mkldnn.is_available()) and hasattr(
        torch.ops.mkldnn, "_reorder_linear_weight"
    )


class OneDnnLinear(nn.Module):
    """A frozen fp32 ``nn.Linear`` whose weight lives only in oneDNN's packed layout.

    The plain weight is not kept (AlexNet: 234 MB, VGG-16: 494 MB saved); ``state_dict`` still
    has ``weight`` (unpacked on demand), so the network's state_dict stays torchvision's.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), False)
        self._register_state_dict_hook(_add_unpacked_weight)

    def unpacked_weight(self) -> torch.Tensor:
        return self.packed_weight.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:  # e.g. bf16 under torch.autocast: F.linear casts as usual
            return F.linear(x, self.unpacked_weight(), self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def to_linear(self) -> nn.Linear:
        linear = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device="meta"
        )
        linear.weight = nn.Parameter(self.unpacked_weight(), requires_grad=False)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach(), requires_grad=False)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel=onednn"


def _add_unpacked_weight(
    module: OneDnnLinear, state: dict[str, Any], prefix: str, _metadata: Any
) -> None:
    state[prefix + "weight"] = module.unpacked_weight()


def pack_linears(net: nn.Module, kernel: LinearKernel = "auto") -> int:
    """Swap every exact ``nn.Linear`` of an fp32 CPU ``net`` for :class:`OneDnnLinear`, in place.

    Returns how many were swapped. ``kernel``: ``auto``/``onednn`` follow the rule in the module
    docstring (``onednn`` raises when torch lacks oneDNN), ``aten`` swaps nothing.
    """
    if kernel not in LINEAR_KERNELS:
        raise ValueError(f"linear kernel must be one of {list(LINEAR_KERNELS)}, got {kernel!r}")
    if kernel == "aten":
        return 0
    if not onednn_available():
        if kernel == "onednn":
            raise RuntimeError("linear_kernel='onednn' but this torch was built without oneDNN")
        return 0
    targets = [
        (name, module)
        for name, module in net.named_modules()
        if type(module) is nn.Linear
        and module.weight.device.type == "cpu"
        and module.weight.dtype == torch.float32
    ]
    for name, module in targets:
        _replace(net, name, OneDnnLinear(module))
    return len(targets)


def unpack_linears(net: nn.Module) -> int:
    """Undo :func:`pack_linears` (before a change of device or dtype); returns how many."""
    targets = [(n, m) for n, m in net.named_modules() if isinstance(m, OneDnnLinear)]
    for name, module in targets:
        _replace(net, name, module.to_linear())
    return len(targets)


def _replace(root: nn.Module, dotted_name: str, new: nn.Module) -> None:
    parent_name, _, child = dotted_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
