"""Running the paper's protocol on the official data with the existing machinery.

1. the dataset (:func:`classifiers.datasets.prepare.prepare_dataset`);
2. features of every image into a normal feature store under ``OUT/features/`` (one per backbone
   and weights; created, resumed or reused by :func:`featurizer.extraction.extract_dataset`), so a
   rerun only refits. The store always holds the paper's layers the backbone has, plus any asked
   for, so runs with different ``--layers`` share it;
3. one set of splits for every row: Caltech-101 per class ``train_per_class`` random training
   images and all the others as test (:class:`~classifiers.splits.PerClassSplitter`); SUN-397 the
   first K official partitions (:class:`~classifiers.splits.PredefinedSplitter` over a split file
   written from them);
4. per layer x classifier (x dropout) a :class:`~classifiers.probe.LinearProbe` (C cross-validated
   on each training split) scored by mean per-class accuracy on each split
   (:func:`~classifiers.protocols.run_splits`), beside the paper's number for that row.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from classifiers.datasets.layouts import SUN397_PARTITIONS, classes_of, read_partition
from classifiers.datasets.prepare import PreparedDataset, prepare_dataset
from classifiers.datasets.sources import SOURCES, DatasetSource
from classifiers.errors import ProbeError
from classifiers.options import ClassifierKind
from classifiers.reproduce.paper import (
    PAPER_BACKBONE,
    PAPER_DROPOUT_RATE,
    PAPER_LAYERS,
    PAPER_PROTOCOL,
    paper_result,
)
from classifiers.reproduce.report import weights_slug
from featurizer.backbones import Backbone, get_backbone
from featurizer.options import CropMode
from featurizer.progress import ProgressBar

REPORT_KIND = "reproduce"
DEFAULT_CLASSIFIERS: tuple[ClassifierKind, ...] = ("svm", "logreg")


@dataclass(frozen=True)
class ReproduceConfig:
    """One ``decaf reproduce`` run. ``source`` replaces the official record (tests only)."""

    dataset: str
    out: Path
    backbone: str = PAPER_BACKBONE
    weights: str = "imagenet"
    data_dir: Path | None = None
    splits: int = 5
    layers: tuple[str, ...] | None = None
    classifiers: tuple[ClassifierKind, ...] = DEFAULT_CLASSIFIERS
    dropout: bool = False
    C: float | Literal["auto"] = "auto"
    train_per_class: int | None = None
    seed: int = 0
    crop: CropMode = "center"
    device: str = "auto"
    batch_size: int = 64
    workers: int | None = None
    allow_download: bool = True
    progress: bool = False
    source: DatasetSource | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Rows:
    """The labelled rows every layer shares: image paths and their classes."""

    paths: list[str]
    y: np.ndarray
    keep: np.ndarray  # positions of these rows in the store


def run_reproduce(config: ReproduceConfig) -> dict[str, Any]:
    """Run the protocol and return the report (see :mod:`classifiers.reproduce.report`)."""
    backbone = get_backbone(config.backbone)
    layers = report_layers(config.dataset, backbone, config.layers)
    check_config(config)
    prepared = prepare_dataset(
        config.source or SOURCES[config.dataset],
        config.data_dir,
        allow_download=config.allow_download,
        progress=config.progress,
    )
    extraction = extract_features(config, backbone, prepared, layers)
    store = extraction.pop("store_object")
    rows = labelled_rows(config.dataset, store)
    split_list, notes = make_splits(config, prepared, rows)
    report_rows = []
    for layer in layers:  # one layer in memory at a time: SUN-397's DeCAF5 alone is ~4 GB
        X = layer_features(store, layer, rows)
        for classifier in config.classifiers:
            for dropout in (False, True) if config.dropout else (False,):
                row = score_row(config, X, rows, split_list, layer, classifier, dropout)
                report_rows.append(row)
        del X
    return build_report(config, extraction, split_list, notes, report_rows)


# ------------------------------------------------------------------ checks
def report_layers(dataset: str, backbone: Backbone, asked: Sequence[str] | None) -> tuple[str, ...]:
    """The layers asked for, or the paper's layers the backbone has, or its default layers."""
    if asked:
        return backbone.check_layers(list(asked))
    paper = [name for name in PAPER_LAYERS[dataset] if name in backbone.tap_names]
    return tuple(paper) or backbone.default_layers


def check_config(config: ReproduceConfig) -> None:
    """Refuse invalid combinations before any download or extraction."""
    if config.dataset not in SOURCES:
        raise ProbeError(f"unknown dataset {config.dataset!r}; choose {', '.join(SOURCES)}")
    if config.splits < 1:
        raise ProbeError(f"--splits must be at least 1, got {config.splits}")
    if config.dataset == "sun397":
        if config.splits > SUN397_PARTITIONS:
            raise ProbeError(
                f"SUN-397 has {SUN397_PARTITIONS} official partitions; --splits must be "
                f"1..{SUN397_PARTITIONS}, got {config.splits}"
            )
        if config.train_per_class is not None:
            raise ProbeError(
                "--train-per-class applies to caltech101: SUN-397's official partitions fix "
                "50 training images per class"
            )
    if config.train_per_class is not None and config.train_per_class < 1:
        raise ProbeError(f"--train-per-class must be at least 1, got {config.train_per_class}")
    if not config.classifiers:
        raise ProbeError("no classifier asked for; use --classifiers svm,logreg")


def train_per_class(config: ReproduceConfig) -> int:
    return config.train_per_class or int(PAPER_PROTOCOL[config.dataset]["train_per_class"])


# -------------------------------------------------------------- extraction
def store_layers(dataset: str, backbone: Backbone, layers: Sequence[str]) -> tuple[str, ...]:
    """What the store holds: the paper's layers the backbone has, then the ones asked for."""
    paper = [name for name in PAPER_LAYERS[dataset] if name in backbone.tap_names]
    return tuple(dict.fromkeys([*paper, *layers]))


def store_path(config: ReproduceConfig, backbone: Backbone, layers: Sequence[str]) -> Path:
    extra = [name for name in layers if name not in PAPER_LAYERS[config.dataset]]
    suffix = f"-{'+'.join(extra)}" if extra else ""
    crop = "" if config.crop == "center" else f"-{config.crop}"
    return config.out / "features" / f"{backbone.name}-{weights_slug(config.weights)}{crop}{suffix}"


def extract_features(
    config: ReproduceConfig, backbone: Backbone, prepared: PreparedDataset, layers: Sequence[str]
) -> dict[str, Any]:
    """Create, resume or reuse the store; returns what the report records (+ the open store)."""
    from featurizer.extraction import extract_dataset
    from featurizer.store import FeatureStore

    wanted = store_layers(config.dataset, backbone, layers)
    path = store_path(config, backbone, wanted)
    with ProgressBar(enabled=config.progress, unit="img", desc="extract", leave=True) as bar:
        result = extract_dataset(
            prepared.images,
            path,
            backbone=backbone.name,
            layers=wanted,
            weights=config.weights,
            crop=config.crop,
            device=config.device,
            batch_size=config.batch_size,
            workers=config.workers,
            progress=lambda p: bar.advance_to(p.done, total=p.total),
        )
    manifest = result.manifest
    return {
        "store": str(result.store),
        "images": result.num_images,
        "errors": result.num_errors,
        "seconds": round(result.seconds, 3),
        "resumed_parts": result.resumed_parts,
        "weights_id": manifest.weights_id,
        "weights_sha256": manifest.weights_sha256,
        "preprocessing": manifest.preprocessing,
        "store_object": FeatureStore.open(result.store),
    }


def labelled_rows(dataset: str, store: Any) -> Rows:
    """Paths and classes of the store's labelled images (the first layer gives the order)."""
    _, labels, paths = store.load(next(iter(store.layers)))
    keep = np.flatnonzero([label is not None for label in labels])
    kept = [paths[i] for i in keep]
    return Rows(kept, np.asarray(classes_of(dataset, kept), dtype=object), keep)


# ------------------------------------------------------------------ splits
def make_splits(
    config: ReproduceConfig, prepared: PreparedDataset, rows: Rows
) -> tuple[list[Any], list[str]]:
    """One list of splits for every row of the report, and notes about the data."""
    from classifiers.splits import PerClassSplitter, PredefinedSplitter

    if config.dataset == "sun397":
        split_file, notes = write_partition_splits(config, prepared, rows)
        plan = PredefinedSplitter(split_file).split(rows.y, rows.paths)
        return plan.splits, notes + plan.notes
    splitter = PerClassSplitter(
        n_train=train_per_class(config), max_test=None, n_splits=config.splits, seed=config.seed
    )
    plan = splitter.split(rows.y, rows.paths)
    return plan.splits, list(plan.notes)


def write_partition_splits(
    config: ReproduceConfig, prepared: PreparedDataset, rows: Rows
) -> tuple[Path, list[str]]:
    """The first K official partitions as a split file; images the store lacks (unreadable ones,
    listed in the store's ``_errors.jsonl``) are left out, with a note."""
    present = set(rows.paths)
    splits, missing = [], 0
    for number in range(1, config.splits + 1):
        partition = read_partition(prepared.folders["Partitions"], number)
        train = [p for p in partition.train if p in present]
        test = [p for p in partition.test if p in present]
        missing += len(partition.train) + len(partition.test) - len(train) - len(test)
        splits.append({"partition": number, "train": train, "test": test})
    path = config.out / "splits" / f"sun397-partitions-1-{config.splits}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"splits": splits}), encoding="utf-8")
    notes = [f"{missing} partition entries have no features (unreadable images) and were left out"]
    return path, notes if missing else []


# ----------------------------------------------------------------- scoring
def score_row(
    config: ReproduceConfig,
    X: np.ndarray,
    rows: Rows,
    split_list: list[Any],
    layer: str,
    classifier: ClassifierKind,
    dropout: bool,
) -> dict[str, Any]:
    from classifiers.probe import make_probe
    from classifiers.protocols import run_splits

    probe = make_probe(
        {
            "classifier": classifier,
            "dropout": PAPER_DROPOUT_RATE if dropout else 0.0,
            "C": config.C,
            "device": config.device,
            "random_state": config.seed,
        }
    )
    desc = f"{layer} {classifier}{' +dropout' if dropout else ''}"
    results = run_splits(X, rows.y, split_list, probe, desc=desc, show_progress=config.progress)
    accuracies = [100.0 * r.mean_class_accuracy for r in results]
    paper = paper_result(config.dataset, layer, classifier, dropout)
    return {
        "backbone": config.backbone,
        "weights": config.weights,
        "layer": layer,
        "classifier": classifier,
        "dropout": dropout,
        "accuracies": accuracies,
        "mean": float(np.mean(accuracies)),
        "std": float(np.std(accuracies)),
        "chosen_C": [r.C for r in results],
        "paper": None if paper is None else paper.to_dict(),
    }


def layer_features(store: Any, layer: str, rows: Rows) -> np.ndarray:
    """The layer's features of the labelled rows, in the order of ``rows``."""
    X, _, _ = store.load(layer)
    return np.ascontiguousarray(X[rows.keep])


# ------------------------------------------------------------------ report
def build_report(
    config: ReproduceConfig,
    extraction: dict[str, Any],
    split_list: list[Any],
    notes: list[str],
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    random_weights = config.weights == "random"
    return {
        "kind": REPORT_KIND,
        "dataset": config.dataset,
        "protocol": protocol_record(config, split_list, notes),
        "backbone": config.backbone,
        "weights": config.weights,
        "random_weights": random_weights,
        "rows": rows,
        "extraction": extraction,
        "metric": "mean per-class accuracy (%), mean and population std over splits",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def protocol_record(
    config: ReproduceConfig, split_list: list[Any], notes: list[str]
) -> dict[str, Any]:
    paper = PAPER_PROTOCOL[config.dataset]
    n_train = train_per_class(config)
    record: dict[str, Any] = {
        "name": config.dataset,
        "splits": len(split_list),
        "train_per_class": n_train,
        "test": "every other image of the class"
        if config.dataset == "caltech101"
        else "the partition's test list (50 per class)",
        "split_source": "random per class, seeded"
        if config.dataset == "caltech101"
        else f"official partitions 1..{config.splits} (Partitions.zip)",
        "seed": config.seed,
        "classifier_C": "cross-validated on each training split (LinearProbe C='auto')"
        if config.C == "auto"
        else config.C,
        "dropout": {"rate": PAPER_DROPOUT_RATE, "as": "feature dropout, 4 noisy copies"}
        if config.dropout
        else None,
        "crop": config.crop,
        "train_images": [len(s.train) for s in split_list],
        "test_images": [len(s.test) for s in split_list],
        "paper_protocol": dict(paper),
        "matches_paper": n_train == paper["train_per_class"] and len(split_list) == paper["splits"],
        "notes": notes,
    }
    return record
