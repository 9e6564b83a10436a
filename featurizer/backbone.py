"""The runtime over a backbone record: uint8 images in, a dict of tap activations out.

The record (:mod:`featurizer.backbones`) declares the taps as data and the forward as a flat plan
of stages named like torchvision's graph; :class:`DecafBackbone` normalises the batch on the
device, runs the plan once, stops after the deepest requested tap and applies each tap's
reduction (global average pool, class-token select) as it hands the tap out.

torchvision's AlexNet/VGG (and ResNet's blocks) use in-place ReLUs: without care the ReLU after fc6
would overwrite the ``decaf6_pre`` tensor already handed out. Every in-place module after the
first tap is therefore switched to out-of-place when the plan is built (the small fc ReLUs and
ResNet's layer4 ReLUs, so it costs nothing measurable); the earlier conv ReLUs keep running in
place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from featurizer.backbones import Backbone, Reduction, Stage, Tap, get_backbone
from featurizer.errors import UnknownLayerError
from featurizer.options import LinearKernel
from featurizer.precision import apply_precision
from featurizer.spec import PreprocessSpec
from featurizer.weights import LoadedWeights, WeightsError

_REDUCE: dict[Reduction, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    "spatial_mean": lambda x: x.mean(dim=(2, 3)),
    "class_token": lambda x: x[:, 0],
}


class DecafBackbone(nn.Module):
    """uint8 images in, a dict of tap activations out; always in eval mode.

    ``net`` keeps torchvision's module names, so its state_dict is torchvision's. Precision changes
    (see ``featurizer.precision``) replace or cast ``net``'s modules and then call
    :meth:`rebuild_plan`; the normalisation constants stay float32 whatever the model dtype.
    ``preprocess`` (mean/std) is the one of the loaded weights; default: the default tag's.
    ``mean_image`` (3, H, W, 0-255, network channel order) replaces the per-channel mean: Caffe's
    ILSVRC mean image, subtracted pixel by pixel from every crop (``featurizer.caffe.mean``).
    """

    def __init__(
        self,
        backbone: Backbone,
        net: nn.Module,
        preprocess: PreprocessSpec | None = None,
        mean_image: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.net = net
        self.taps: dict[str, Tap] = {tap.name: tap for tap in backbone.taps}
        spec = preprocess or backbone.default_tag.preprocess
        if (mean_image is None) != (spec.mean_image is None):
            raise ValueError("a mean image and the spec's mean_image sha256 come together")
        if mean_image is None:
            mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        else:
            mean = (mean_image.to(torch.float32) / 255.0).unsqueeze(0)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std folded into one multiply-add.
        self.register_buffer("input_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("input_shift", -mean / std, persistent=False)
        # Decoders give RGB; a BGR network (Caffe) gets its channels reversed in forward.
        self.reverse_channels = spec.channel_order == "bgr"
        self.compute_dtype = torch.float32
        self.memory_format = torch.channels_last
        self.rebuild_plan()
        self.eval()

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The forward plan in execution order (for tests and profiling)."""
        return tuple(self._stages)

    def rebuild_plan(self) -> None:
        """Recompute the module walk (after modules were swapped, e.g. by quantisation)."""
        stages = self.backbone.plan(self.net)
        names = [name for name, _ in stages]
        missing = [tap.node for tap in self.taps.values() if tap.node not in names]
        if missing:
            raise RuntimeError(
                f"backbone {self.backbone.name}: the plan has no stage for tap node(s) {missing}"
            )
        self._tap_index = {tap.name: names.index(tap.node) for tap in self.taps.values()}
        first_tap = min(self._tap_index.values())
        for _, stage in stages[first_tap + 1 :]:
            _make_out_of_place(stage)  # would clobber a tap handed out earlier
        self._stages = stages

    def set_precision(
        self, precision: str, device: torch.device, linear_kernel: LinearKernel = "auto"
    ) -> None:
        """Move to ``device`` and convert ``net`` to ``precision`` (see featurizer.precision).

        fp32 on CPU: the fc layers run through oneDNN (featurizer.linear_kernels) unless
        ``linear_kernel="aten"``.
        """
        self.net, self.compute_dtype = apply_precision(self.net, precision, device, linear_kernel)
        self.input_scale = self.input_scale.to(device)
        self.input_shift = self.input_shift.to(device)
        self.rebuild_plan()
        self.eval()

    def train(self, mode: bool = True) -> DecafBackbone:
        # Features are defined in eval mode only (dropout off); refuse to leave it.
        return super().train(False)

    def depth_of(self, layers: Sequence[str]) -> int:
        """Number of stages a forward for ``layers`` runs (for tests and profiling)."""
        return max(self._tap_index[name] for name in layers) + 1

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 image batch, got {images.dtype}")
        images = images.to(self.input_scale.device, non_blocking=True)
        if self.reverse_channels:
            images = images.flip(1)  # RGB -> BGR on uint8, before the float copy
        # One converting copy straight into the conv layout, then in-place scale and shift:
        # measured ~2x faster than x.float() * scale + shift followed by a layout change.
        x = torch.empty(
            images.shape,
            dtype=torch.float32,
            device=images.device,
            memory_format=self.memory_format,
        )
        x.copy_(images).mul_(self.input_scale).add_(self.input_shift)
        return x.to(self.compute_dtype)

    def forward(self, images: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """``images``: uint8 (N, 3, H, W). Returns the requested taps in the model's dtype."""
        unknown = [name for name in layers if name not in self._tap_index]
        if unknown:
            raise UnknownLayerError(
                f"unknown layer(s) {unknown} for backbone {self.backbone.name}; "
                f"choose from {list(self.taps)}"
            )
        wanted: dict[int, list[str]] = {}
        for name in layers:
            wanted.setdefault(self._tap_index[name], []).append(name)
        x = self.normalize(images)
        out: dict[str, torch.Tensor] = {}
        for index, (_, stage) in enumerate(self._stages[: self.depth_of(layers)]):
            x = stage(x)
            for name in wanted.get(index, ()):
                out[name] = _REDUCE[self.taps[name].reduce](x)
        return out


def _make_out_of_place(stage: Callable[[torch.Tensor], torch.Tensor]) -> None:
    # Whole subtree: a block's own in-place ReLU is harmless today, but proving that per block
    # is not worth the 9 small extra allocations in ResNet's layer4.
    if isinstance(stage, nn.Module):
        for module in stage.modules():
            if getattr(module, "inplace", False):
                module.inplace = False


def build_backbone(backbone: Backbone | str, weights: LoadedWeights) -> DecafBackbone:
    """Architecture + verified weights -> eval-mode, channels_last DecafBackbone."""
    record = get_backbone(backbone) if isinstance(backbone, str) else backbone
    with torch.device("meta"):  # skip the default init: every tensor is replaced just below
        net = record.build()
    try:
        net.load_state_dict(weights.state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"weights from {weights.source} do not fit {record.name}: {exc}"
        ) from exc
    net = net.to(memory_format=torch.channels_last)
    return DecafBackbone(record, net, weights.preprocess, weights.mean_image)
