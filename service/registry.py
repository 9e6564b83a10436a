"""What the service reads from the backbone records: names, taps and default taps.

The one place that knows where those records live, so that switching to the backbone registry is a
change here only. Loaded models are described by their own featurizer (`service.models`); this
module answers for backbones by name (settings validation, layers of a job's backbone).

TODO(registry): read everything below from `featurizer.backbones` (`backbone_names()`,
`get_backbone(name)` with its taps and default taps) once that package lands.
"""

from __future__ import annotations

import inspect

from featurizer.errors import UnknownBackboneError


def known_backbones() -> tuple[str, ...]:
    """Every backbone this installation can build, sorted."""
    from featurizer.weights import BACKBONES  # TODO(registry): backbone_names()

    return tuple(sorted(BACKBONES))


def backbone_taps(name: str) -> dict[str, int]:
    """`{tap: dim}` of backbone `name`, in the record's order."""
    from featurizer.weights import BACKBONES  # TODO(registry): get_backbone(name).taps

    spec = BACKBONES.get(name)
    if spec is None:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; known backbones: {list(known_backbones())}"
        )
    return dict(spec.layer_dims)


def default_taps(name: str) -> tuple[str, ...]:
    """The taps a request gets when it names none (the Featurizer's own default where it fits)."""
    from featurizer.extractor import Featurizer  # TODO(registry): get_backbone(name).default_taps

    taps = backbone_taps(name)
    defaults = inspect.signature(Featurizer).parameters["layers"].default
    chosen = tuple(tap for tap in defaults if tap in taps)
    return chosen or (next(reversed(taps)),)
