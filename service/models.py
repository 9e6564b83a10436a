"""The served backbones: each loaded once, with its own micro-batcher, behind one lookup.

`ModelPool` is the only place the service asks "which backbone?" and "is this layer offered?":
requests name a backbone (or get the default, the first configured) and layers; the answers come
from the loaded featurizers themselves, never from a hard-coded list of layer names.

- `LoadedModel.layers`: the layers a backbone *serves* to requests (features, few-shot probes,
  predict): `DECAF_LAYERS` for the default backbone, else all of the featurizer's layers.
- `ModelPool.check_taps`: every tap of a backbone, for work that builds its own featurizer
  (extraction jobs) or reads stored features (fits on a dataset).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featurizer.backbones import get_backbone
from featurizer.errors import UnknownBackboneError, UnknownLayerError
from service.batcher import BatcherStoppedError, MicroBatcher
from service.settings import Settings

if TYPE_CHECKING:
    from featurizer.extractor import Featurizer
    from service.metrics import ServiceMetrics


@dataclass
class LoadedModel:
    """One served backbone: its featurizer, its micro-batcher and the layers it offers."""

    name: str
    featurizer: Featurizer
    batcher: MicroBatcher
    layers: tuple[str, ...]

    @property
    def dims(self) -> dict[str, int]:
        all_dims = self.featurizer.describe()["layers"]
        return {layer: int(all_dims[layer]) for layer in self.layers}

    @property
    def default_layers(self) -> list[str]:
        """What a request that names no layer gets: the backbone's first default tap if served."""
        preferred = [tap for tap in get_backbone(self.name).default_layers if tap in self.layers]
        return preferred[:1] or [self.layers[0]]

    def describe(self, crop: str | None = None) -> dict[str, Any]:
        """The featurizer's provenance with the served layers (and a request's crop mode)."""
        described = dict(self.featurizer.describe())
        described["layers"] = self.dims
        if crop is not None:
            described["preprocessing"] = {**described.get("preprocessing", {}), "crop_mode": crop}
        return described

    def running_batcher(self) -> MicroBatcher:
        if not self.batcher.running:
            raise BatcherStoppedError(
                f"the {self.name} model is not serving (server starting or stopping); retry "
                "when /readyz answers 200"
            )
        return self.batcher


class ModelPool:
    """The loaded backbones by name; the first is the default."""

    def __init__(self, models: Sequence[LoadedModel]) -> None:
        if not models:
            raise ValueError("a model pool needs at least one backbone")
        self._models = {model.name: model for model in models}
        self.default = models[0]

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def __iter__(self) -> Any:
        return iter(self._models.values())

    def get(self, name: str | None = None) -> LoadedModel:
        """The backbone called `name` (None or empty: the default); 422 naming the loaded ones."""
        if not name:
            return self.default
        model = self._models.get(name)
        if model is None:
            raise UnknownBackboneError(
                f"backbone {name!r} is not loaded on this server; loaded: {self.names} "
                "(DECAF_BACKBONES)"
            )
        return model

    def check_layers(self, name: str | None, layers: Sequence[str]) -> tuple[str, ...]:
        """`layers` (order kept, duplicates dropped) if backbone `name` serves them all."""
        model = self.get(name)
        names = _requested(layers, model.layers)
        unknown = [layer for layer in names if layer not in model.layers]
        if unknown:
            raise UnknownLayerError(
                f"unknown or not served layer(s) {unknown}; backbone {model.name} on this server "
                f"offers {list(model.layers)}"
            )
        return names

    def check_taps(self, name: str | None, layers: Sequence[str]) -> tuple[str, ...]:
        """`layers` if they are taps of backbone `name`, served or not."""
        model = self.get(name)
        taps = list(get_backbone(model.name).tap_names)
        names = _requested(layers, taps)
        unknown = [layer for layer in names if layer not in taps]
        if unknown:
            raise UnknownLayerError(
                f"unknown layer(s) {unknown} for backbone {model.name}; available: {taps}"
            )
        return names

    def describe(self) -> list[dict[str, Any]]:
        return [model.describe() for model in self]

    def problems(self) -> list[str]:
        """Why the pool cannot serve right now (empty when every batcher runs)."""
        return [f"batcher of {m.name} not running" for m in self if not m.batcher.running]

    @property
    def queue_depth(self) -> int:
        return sum(model.batcher.queue_depth for model in self)

    def stop(self) -> None:
        for model in self:
            model.batcher.stop()

    def job_featurizer(
        self, backbone: str, layers: Sequence[str], precision: str, crop: str, settings: Settings
    ) -> Featurizer:
        """A featurizer of its own for an extraction job, with the very weights `backbone` serves.

        A separate instance because the served one belongs to its batcher thread.
        """
        from featurizer.extractor import Featurizer

        served = self.get(backbone).featurizer
        return Featurizer(
            layers=list(layers),
            weights=served.weights.source,  # the file (or "random") the served model was read from
            backbone=backbone,
            precision=precision,  # type: ignore[arg-type]
            device=settings.device,
            crop=crop,  # type: ignore[arg-type]
            max_pixels=settings.max_pixels,
        )


def _requested(layers: Sequence[str], offered: Sequence[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(layers))
    if not names:
        raise UnknownLayerError(f"no layer requested; choose from {list(offered)}")
    return names


# --------------------------------------------------------------------------- loading
def build_featurizer(settings: Settings, backbone: str) -> Featurizer:
    """The served featurizer of `backbone`, as configured (weights="random" warns loudly itself)."""
    from featurizer.extractor import Featurizer

    layers = settings.layers if backbone == settings.default_backbone else None
    return Featurizer(
        layers=layers or list(get_backbone(backbone).tap_names),
        weights=settings.weights,
        backbone=backbone,
        precision=settings.precision,
        device=settings.device,
        crop=settings.crop,
        max_pixels=settings.max_pixels,
    )


def load_featurizers(
    settings: Settings, preloaded: Mapping[str, Featurizer] | None = None
) -> dict[str, Featurizer]:
    """One featurizer per served backbone, default first; `preloaded` ones are used as they are.

    `preloaded` (tests, benchmarks) maps names to featurizers already in memory; when it is given
    it *is* the list of backbones, in its order. Each must describe itself under its name.
    """
    if preloaded:
        for name, featurizer in preloaded.items():
            described = featurizer.describe()["backbone"]
            if described != name:
                raise ValueError(f"preloaded featurizer {name!r} is a {described!r} backbone")
        return dict(preloaded)
    return {name: build_featurizer(settings, name) for name in settings.served_backbones}


def served_layers(settings: Settings, featurizer: Featurizer, is_default: bool) -> tuple[str, ...]:
    """The layers a loaded featurizer offers: DECAF_LAYERS for the default, else all it has."""
    available = tuple(featurizer.describe()["layers"])
    if not is_default or settings.layers is None:
        return available
    names = _requested(settings.layers, available)
    missing = [layer for layer in names if layer not in available]
    if missing:
        raise UnknownLayerError(
            f"DECAF_LAYERS names {missing}, which the loaded {featurizer.describe()['backbone']} "
            f"model does not compute; it has {list(available)}"
        )
    return names


def start_pool(
    settings: Settings, featurizers: Mapping[str, Featurizer], metrics: ServiceMetrics
) -> ModelPool:
    """Wrap each featurizer in a started micro-batcher."""
    models = []
    for index, (name, featurizer) in enumerate(featurizers.items()):
        batcher = MicroBatcher(
            featurizer,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_decode_wait_ms=settings.max_decode_wait_ms,
            max_queue=settings.max_queue,
            on_batch=metrics.on_batch,
            activity=lambda: metrics.in_flight,
            thread_name=f"decaf-batcher-{name}",
        )
        layers = served_layers(settings, featurizer, is_default=index == 0)
        models.append(LoadedModel(name, featurizer, batcher, layers))
    pool = ModelPool(models)
    for model in pool:
        model.batcher.start()
    return pool
