"""Small feature stores built without a model: parts with known features, written through
``FeatureStore`` (format version 2), and the same store in today's-minus-one layout (version 1,
as decaf wrote it before ``_manifest.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from featurizer.store import (
    ERRORS_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    V1_ERRORS_NAME,
    V1_MANIFEST_NAME,
    FeatureStore,
    FileList,
    Part,
    RunInfo,
    StoreConfig,
)

DIMS = {"decaf6": 5, "decaf7": 3}
# The sorted file list of the (imaginary) image folder; b/2.jpg is unreadable.
RECORDS = [
    ("a/1.jpg", "a"),
    ("a/2.jpg", "a"),
    ("b/1.jpg", "b"),
    ("b/2.jpg", "b"),
    ("b/3.jpg", "b"),
    ("root.jpg", None),
]
BAD = {"b/2.jpg": "ImageDecodeError: truncated"}
GOOD_PATHS = [path for path, _ in RECORDS if path not in BAD]
PART_SIZE = 3  # part 0: 3 rows; part 1: 2 rows + 1 error


def config(**changes: object) -> StoreConfig:
    values: dict[str, object] = {
        "backbone": "alexnet",
        "weights_id": "random",
        "weights_sha256": None,
        "layers": dict(DIMS),
        "preprocessing": {"resize": 256, "crop": 224, "crop_mode": "center"},
        "precision": "fp32",
        "dtype": "float32",
        "part_size": PART_SIZE,
        "files": FileList(count=len(RECORDS), sha256="f" * 64),
    }
    values.update(changes)
    return StoreConfig(**values)  # type: ignore[arg-type]


RUN = RunInfo(source_root="/data/images", engine="local", device="cpu", batch_size=2)


def features() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        name: rng.standard_normal((len(GOOD_PATHS), dim)).astype(np.float32)
        for name, dim in DIMS.items()
    }


def parts(full: dict[str, np.ndarray]) -> list[Part]:
    out = []
    row = 0
    for index in range(2):
        chunk = RECORDS[index * PART_SIZE : (index + 1) * PART_SIZE]
        good = [(path, label) for path, label in chunk if path not in BAD]
        errors = [
            {"path": path, "label": label, "error": BAD[path]}
            for path, label in chunk
            if path in BAD
        ]
        out.append(
            Part(
                index=index,
                paths=[path for path, _ in good],
                labels=[label for _, label in good],
                features={name: array[row : row + len(good)] for name, array in full.items()},
                errors=errors,  # type: ignore[arg-type]
            )
        )
        row += len(good)
    return out


def write_store(out: Path, *, complete: bool = True) -> dict[str, np.ndarray]:
    """A version-2 store of the RECORDS; returns the features of the good files, in order."""
    full = features()
    with FeatureStore.create(out, config(), RUN) as store:
        for part in parts(full):
            store.write_part(part)
        if complete:
            store.finalize()
    return full


def to_v1(out: Path) -> None:
    """Rewrite a version-2 store as decaf wrote it before format version 2."""
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    del manifest["format"]
    manifest["format_version"] = 1
    if manifest.pop("engine") != "local" or manifest.pop("ray") is not None:
        raise AssertionError("version 1 recorded the engine only for Ray")
    (out / V1_MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (out / MANIFEST_NAME).unlink()
    if (out / ERRORS_NAME).exists():
        (out / ERRORS_NAME).rename(out / V1_ERRORS_NAME)
    (out / LOCK_NAME).unlink(missing_ok=True)


def write_v1_store(out: Path, *, complete: bool = True) -> dict[str, np.ndarray]:
    full = write_store(out, complete=complete)
    to_v1(out)
    return full
