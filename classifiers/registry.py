"""The evaluation protocols by name: one registry entry each, and everything else derives from it
(CLI ``choices`` and help, pydantic fields, error messages, docs).

An entry pairs a name and a one-line description with a builder that turns the common protocol
parameters (:class:`ProtocolParams`) into a splitter object with ``.split(y, paths)`` (see
:mod:`classifiers.splits`), the way scikit-learn's model-selection splitters work. A new protocol
= one :func:`register_protocol` call.

Importable without numpy, torch or scikit-learn (the CLI parser reads it): builders import the
splitters when they run.

Few-shot curves are not an entry: a curve is the per-class protocol run for several ``n_train``
on one shared test set (``classifiers.protocols.few_shot_curve``), not one way of splitting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from classifiers.errors import ProbeError

if TYPE_CHECKING:
    from classifiers.splits import SplitPlan


@dataclass(frozen=True)
class ProtocolParams:
    """The parameters a protocol may read; each protocol reads some (``ProtocolEntry.reads``).

    ``None`` means the protocol's own default (caltech101: 30 train / 50 test per class).
    """

    n_train: int | None = None
    max_test: int | None = None
    splits: int = 5
    seed: int = 0
    train_fraction: float = 0.5
    split_file: str | Path | None = None


PROTOCOL_PARAMETERS: tuple[str, ...] = tuple(f.name for f in fields(ProtocolParams))


class Splitter(Protocol):
    def split(self, y: Any, paths: Sequence[str] | None = None) -> SplitPlan: ...


@dataclass(frozen=True)
class ProtocolEntry:
    """One protocol: its name, a one-line description, the parameters it reads and its builder.

    ``needs_split_file``: the protocol cannot run without ``split_file`` (and the rows' paths).
    """

    name: str
    description: str
    reads: tuple[str, ...]
    build: Callable[[ProtocolParams], Splitter]
    needs_split_file: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.reads) - set(PROTOCOL_PARAMETERS))
        if unknown:
            raise ValueError(
                f"protocol {self.name!r} reads unknown parameters {unknown}; "
                f"ProtocolParams has {list(PROTOCOL_PARAMETERS)}"
            )

    def splitter(self, params: ProtocolParams) -> Splitter:
        """The splitter of this protocol for ``params``; invalid values raise ProbeError."""
        return self.build(params)

    def recorded_params(self, params: ProtocolParams) -> dict[str, Any]:
        """``params`` as a result records them: the ones this protocol does not read are None."""
        return {
            name: (_jsonable(getattr(params, name)) if name in self.reads else None)
            for name in PROTOCOL_PARAMETERS
        }


_REGISTRY: dict[str, ProtocolEntry] = {}
PROTOCOLS: Mapping[str, ProtocolEntry] = MappingProxyType(_REGISTRY)


def register_protocol(entry: ProtocolEntry) -> ProtocolEntry:
    """Add ``entry`` to the registry; a name can be registered once."""
    if entry.name in _REGISTRY:
        raise ValueError(f"protocol {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def get_protocol(name: str) -> ProtocolEntry:
    """The entry called ``name``; an unknown name is a ProbeError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ProbeError(
            f"unknown protocol {name!r}; choose one of {', '.join(_REGISTRY)}"
        ) from None


def protocol_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def protocols_help(separator: str = "\n") -> str:
    """``name: description`` of each protocol, one a line (or ``separator``), for help and docs."""
    return separator.join(f"{entry.name}: {entry.description}" for entry in _REGISTRY.values())


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


# ------------------------------------------------------------------ builders
def _per_class(name: str, default_n_train: int, default_max_test: int) -> ProtocolEntry:
    def build(params: ProtocolParams) -> Splitter:
        from classifiers.splits import PerClassSplitter

        return PerClassSplitter(
            n_train=default_n_train if params.n_train is None else params.n_train,
            max_test=default_max_test if params.max_test is None else params.max_test,
            n_splits=params.splits,
            seed=params.seed,
        )

    return ProtocolEntry(
        name,
        f"n_train random training images per class (default {default_n_train}), the rest "
        f"test, at most max_test per class (default {default_max_test})",
        reads=("n_train", "max_test", "splits", "seed"),
        build=build,
    )


def _stratified(params: ProtocolParams) -> Splitter:
    from classifiers.splits import StratifiedSplitter

    return StratifiedSplitter(
        train_fraction=params.train_fraction, n_splits=params.splits, seed=params.seed
    )


def _predefined(params: ProtocolParams) -> Splitter:
    from classifiers.splits import PredefinedSplitter

    if params.split_file is None:
        raise ProbeError("protocol 'predefined' needs a split file (--split-file PATH)")
    return PredefinedSplitter(params.split_file)


_BUILT_IN = (
    _per_class("caltech101", 30, 50),
    _per_class("sun397", 50, 50),
    ProtocolEntry(
        "stratified",
        "train_fraction of each class trains (at least 1 image), the rest tests",
        reads=("train_fraction", "splits", "seed"),
        build=_stratified,
    ),
    ProtocolEntry(
        "predefined",
        "the train/test paths of a split file (JSON, or 'train PATH' / 'test PATH' lines)",
        reads=("split_file",),
        build=_predefined,
        needs_split_file=True,
    ),
)
for _entry in _BUILT_IN:
    register_protocol(_entry)

PROTOCOL_NAMES: tuple[str, ...] = protocol_names()
# A Literal built from the registry, for pydantic and argparse; the built-in names, in order.
ProtocolName = Literal[PROTOCOL_NAMES]  # type: ignore[valid-type]
