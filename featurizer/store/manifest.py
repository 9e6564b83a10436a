"""The store's manifest: typed, versioned, validated on read.

The JSON form (``_manifest.json``) is flat and stable; :class:`Manifest` is its typed mirror.
Reading never trusts the file: a malformed, foreign or newer manifest is a :class:`StoreError`
saying which field is wrong and what to do, never a ``KeyError`` deep inside a reader.

Format versions:

- 1: ``manifest.json`` + ``errors.jsonl`` beside the parts. Parquet readers pointed at the
  directory fail on them (``ArrowInvalid: Could not read schema from STORE/errors.jsonl``).
  Read-only since version 2; ``decaf store upgrade STORE`` converts one in place.
- 2: the same content under ``_manifest.json`` / ``_errors.jsonl`` (names starting with ``_``
  are skipped by Parquet readers, the Hive/Spark convention), a ``"format"`` marker, and the
  ``engine`` always recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from featurizer.errors import StoreError

FORMAT_NAME = "decaf-feature-store"
FORMAT_VERSION = 2
OLDEST_READABLE_VERSION = 1
MANIFEST_NAME = "_manifest.json"
ERRORS_NAME = "_errors.jsonl"
LOCK_NAME = "_lock"
V1_MANIFEST_NAME = "manifest.json"
V1_ERRORS_NAME = "errors.jsonl"
PART_NAME = re.compile(r"part-(\d{5,})\.parquet")

# Fields that must match for a store to be resumed: everything that changes the numbers in a part
# or which files go into which part. Their hash is written into every part.
RESUME_KEYS = (
    "backbone",
    "weights_id",
    "weights_sha256",
    "layers",
    "preprocessing",
    "precision",
    "dtype",
    "part_size",
    "files",
)
DAMAGED_HINT = "restore the file, or re-extract with `decaf extract ... --overwrite`"


class ErrorEntry(TypedDict):
    """One skipped file: a line of ``_errors.jsonl`` and an item of a part's error metadata."""

    path: str
    label: str | None
    error: str


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def part_index(name: str) -> int | None:
    """The index of a plain ``part-NNNNN.parquet`` name; None for anything else (paths too)."""
    match = PART_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class FileList:
    """Fingerprint of the scanned image folder: a changed file list refuses resume."""

    count: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "sha256": self.sha256}


@dataclass(frozen=True)
class PartEntry:
    file: str  # always a plain part name (validated): never a path out of the store
    rows: int
    errors: int

    @property
    def index(self) -> int:
        index = part_index(self.file)
        assert index is not None  # validated on construction paths
        return index

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "rows": self.rows, "errors": self.errors}


@dataclass(frozen=True)
class StoreConfig:
    """What defines a store's numbers (the :data:`RESUME_KEYS`), as an extraction supplies it."""

    backbone: str
    weights_id: str
    weights_sha256: str | None
    layers: dict[str, int]  # tap -> dim, in column order; treat as read-only
    preprocessing: dict[str, Any]  # verbatim from Featurizer.describe(): probes compare it
    precision: str
    dtype: str
    part_size: int
    files: FileList

    @property
    def num_parts(self) -> int:
        return -(-self.files.count // self.part_size)

    def part_range(self, index: int) -> tuple[int, int]:
        """Records ``[start, end)`` of the sorted file list that part ``index`` covers."""
        start = index * self.part_size
        return start, min(start + self.part_size, self.files.count)

    def resume_dict(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in RESUME_KEYS}
        values["files"] = self.files.to_dict()
        return values

    def sha256(self) -> str:
        """Hash of the resume keys, stored in every part (same JSON as format version 1)."""
        return hashlib.sha256(json.dumps(self.resume_dict(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class RunInfo:
    """How the latest run wrote the store; informational (may change on resume)."""

    source_root: str
    engine: str = "local"
    device: str | None = None
    batch_size: int | None = None
    ray: dict[str, Any] | None = None  # the Ray plan (actors, GPUs per actor, ...) if engine=ray


@dataclass(frozen=True)
class Manifest:
    format_version: int
    backbone: str
    weights_id: str
    weights_sha256: str | None
    layers: dict[str, int]
    preprocessing: dict[str, Any]
    precision: str
    dtype: str
    part_size: int
    files: FileList
    source_root: str
    engine: str
    device: str | None
    batch_size: int | None
    ray: dict[str, Any] | None
    created_at: str
    finished_at: str | None
    complete: bool
    classes: tuple[str, ...] = ()
    parts: tuple[PartEntry, ...] = field(default=())
    # Entries the folder scan passed over (dangling links, FIFOs, ...), listed in _errors.jsonl
    # beside the unreadable files; absent from stores written before it was recorded.
    skipped: int = 0

    @classmethod
    def new(cls, config: StoreConfig, run: RunInfo, *, created_at: str) -> Manifest:
        return cls(
            format_version=FORMAT_VERSION,
            **_shallow(config),
            **_shallow(run),
            created_at=created_at,
            finished_at=None,
            complete=False,
        )

    @property
    def config(self) -> StoreConfig:
        return StoreConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(StoreConfig)}
        )

    @property
    def run(self) -> RunInfo:
        return RunInfo(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RunInfo)})

    @property
    def num_images(self) -> int:
        return sum(part.rows for part in self.parts)

    @property
    def num_errors(self) -> int:
        return sum(part.errors for part in self.parts)

    def with_config(self, config: StoreConfig, run: RunInfo) -> Manifest:
        return dataclasses.replace(self, **_shallow(config), **_shallow(run))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``_manifest.json``; probe provenance and the API use it too)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data.update(
            format=FORMAT_NAME,
            layers=dict(self.layers),
            preprocessing=json.loads(json.dumps(self.preprocessing)),
            files=self.files.to_dict(),
            ray=None if self.ray is None else dict(self.ray),
            classes=list(self.classes),
            parts=[part.to_dict() for part in self.parts],
            num_images=self.num_images,
            num_errors=self.num_errors,
        )
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str) -> Manifest:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StoreError(f"{source} is not valid JSON ({exc}); {DAMAGED_HINT}") from exc
        except RecursionError as exc:  # [[[[... nested deeper than the parser goes
            raise StoreError(
                f"{source} is nested too deeply to be a manifest; {DAMAGED_HINT}"
            ) from exc
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, *, source: str) -> Manifest:
        """Validate and type a parsed manifest; ``source`` names the file in error messages."""
        version = _check_format(data, source)
        fields = _Fields(data, source)
        files = fields.mapping("files")
        manifest = cls(
            format_version=version,
            backbone=fields.string("backbone"),
            weights_id=fields.string("weights_id"),
            weights_sha256=fields.string("weights_sha256", optional=True),
            layers=fields.layers("layers"),
            preprocessing=dict(fields.mapping("preprocessing")),
            precision=fields.string("precision"),
            dtype=fields.string("dtype"),
            part_size=fields.integer("part_size", minimum=1),
            files=FileList(
                count=_Fields(files, source, "files.").integer("count", minimum=0),
                sha256=_Fields(files, source, "files.").string("sha256"),
            ),
            source_root=fields.string("source_root"),
            # Version 1 recorded the engine only for Ray.
            engine=fields.string("engine", optional=version < 2) or "local",
            device=fields.string("device", optional=True),
            batch_size=fields.integer("batch_size", minimum=1, optional=True),
            ray=fields.mapping("ray", optional=True),
            created_at=fields.string("created_at"),
            finished_at=fields.string("finished_at", optional=True),
            complete=fields.boolean("complete"),
            classes=fields.strings("classes"),
            parts=fields.parts("parts"),
            skipped=fields.integer("skipped", minimum=0, optional=True) or 0,
        )
        _check_parts(manifest, data, source)
        return manifest


def _shallow(instance: Any) -> dict[str, Any]:
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


def _check_format(data: Any, source: str) -> int:
    """Foreign file, newer format or a version we read: the first thing said about a manifest."""
    if not isinstance(data, dict):
        raise StoreError(
            f"{source} is not a decaf feature-store manifest (a JSON {type(data).__name__}, "
            "not an object)"
        )
    marker = data.get("format")
    version = data.get("format_version")
    if marker is not None and marker != FORMAT_NAME:
        raise StoreError(f"{source} is not a decaf feature-store manifest (format {marker!r})")
    if isinstance(version, bool) or not isinstance(version, int):
        raise StoreError(
            f"{source} is not a decaf feature-store manifest (no integer format_version)"
        )
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{source} was written by a newer decaf (store format version {version}; this "
            f"decaf reads versions {OLDEST_READABLE_VERSION}-{FORMAT_VERSION}): upgrade decaf "
            "to read it"
        )
    if version < OLDEST_READABLE_VERSION or (version >= 2 and marker is None):
        raise StoreError(
            f"{source} is not a decaf feature-store manifest (format version {version!r}"
            + ("" if marker else ", no format marker")
            + ")"
        )
    return version


def _check_parts(manifest: Manifest, data: Mapping[str, Any], source: str) -> None:
    indices = [part.index for part in manifest.parts]
    if len(set(indices)) != len(indices):
        raise StoreError(f"{source}: a part is listed twice; {DAMAGED_HINT}")
    if indices and max(indices) >= manifest.config.num_parts:
        raise StoreError(
            f"{source}: part {max(indices)} is beyond the {manifest.config.num_parts} parts of "
            f"{manifest.files.count} files; {DAMAGED_HINT}"
        )
    config = manifest.config
    for part in manifest.parts:
        start, end = config.part_range(part.index)
        if part.rows + part.errors != end - start:
            raise StoreError(
                f"{source}: {part.file} lists {part.rows} rows and {part.errors} errors, but part "
                f"{part.index} covers {end - start} files; {DAMAGED_HINT}"
            )
    if manifest.complete and len(manifest.parts) != config.num_parts:
        raise StoreError(
            f"{source}: marked complete but lists {len(manifest.parts)} of {config.num_parts} "
            f"parts; {DAMAGED_HINT}"
        )
    for key, value in (("num_images", manifest.num_images), ("num_errors", manifest.num_errors)):
        if key in data and data[key] != value:
            raise StoreError(
                f"{source}: {key} is {data[key]!r} but the parts add up to {value}; {DAMAGED_HINT}"
            )


class _Fields:
    """Typed access to one JSON object, with errors naming the file and the field."""

    def __init__(self, data: Mapping[str, Any], source: str, prefix: str = "") -> None:
        self.data, self.source, self.prefix = data, source, prefix

    def _get(self, key: str, optional: bool) -> Any:
        if key not in self.data:
            if optional:
                return None
            raise StoreError(
                f"{self.source}: required field '{self.prefix}{key}' is missing; {DAMAGED_HINT}"
            )
        return self.data[key]

    def _wrong(self, key: str, expected: str, value: Any) -> StoreError:
        shown = json.dumps(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return StoreError(
            f"{self.source}: field '{self.prefix}{key}' must be {expected}, got {shown}; "
            f"{DAMAGED_HINT}"
        )

    def string(self, key: str, *, optional: bool = False) -> Any:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self._wrong(key, "a string", value)
        return value

    def integer(self, key: str, *, minimum: int, optional: bool = False) -> Any:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._wrong(key, f"an integer >= {minimum}", value)
        return value

    def boolean(self, key: str) -> bool:
        value = self._get(key, False)
        if not isinstance(value, bool):
            raise self._wrong(key, "true or false", value)
        return value

    def mapping(self, key: str, *, optional: bool = False) -> Any:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, dict):
            raise self._wrong(key, "an object", value)
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key, False)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._wrong(key, "a list of strings", value)
        return tuple(value)

    def layers(self, key: str) -> dict[str, int]:
        value = self.mapping(key)
        valid = all(
            isinstance(name, str) and name and type(dim) is int and dim > 0
            for name, dim in value.items()
        )
        if not value or not valid:
            raise self._wrong(key, "an object of layer name -> positive dimension", value)
        return dict(value)

    def parts(self, key: str) -> tuple[PartEntry, ...]:
        value = self._get(key, False)
        if not isinstance(value, list):
            raise self._wrong(key, "a list of parts", value)
        entries = [self._part(item, position) for position, item in enumerate(value)]
        return tuple(sorted(entries, key=lambda entry: entry.index))

    def _part(self, item: Any, position: int) -> PartEntry:
        where = f"parts[{position}]."
        if not isinstance(item, dict):
            raise _Fields({}, self.source)._wrong(f"parts[{position}]", "an object", item)
        fields = _Fields(item, self.source, where)
        name = fields.string("file")
        if part_index(name) is None:
            # A manifest must not be able to point a reader outside the store.
            raise StoreError(
                f"{self.source}: {where}file must be a plain part-NNNNN.parquet name inside the "
                f"store, got {name!r}; {DAMAGED_HINT}"
            )
        return PartEntry(
            file=name,
            rows=fields.integer("rows", minimum=0),
            errors=fields.integer("errors", minimum=0),
        )
