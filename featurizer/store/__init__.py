"""The feature store: a Parquet dataset directory with a typed, versioned manifest.

``FeatureStore`` owns the format (see :mod:`featurizer.store.store` for the layout)::

    from featurizer.store import FeatureStore
    store = FeatureStore.open("stores/caltech101")       # read-only, format version 1 or 2
    store.manifest.backbone, store.layers                 # typed manifest, {layer: dim}
    X, y, paths = store.load("decaf6")

Engines produce :class:`Part` objects; the extraction orchestration
(:func:`featurizer.extraction.extract_dataset`) writes them through a writer store
(``FeatureStore.create_or_resume``). ``upgrade_store`` converts a version-1 store in place.
"""

from featurizer.store.layout import StoreNotFoundError, clear_store
from featurizer.store.lock import StoreLockedError
from featurizer.store.manifest import (
    ERRORS_NAME,
    FORMAT_VERSION,
    LOCK_NAME,
    MANIFEST_NAME,
    RESUME_KEYS,
    V1_ERRORS_NAME,
    V1_MANIFEST_NAME,
    ErrorEntry,
    FileList,
    Manifest,
    PartEntry,
    RunInfo,
    StoreConfig,
    part_name,
)
from featurizer.store.parts import Part, PartFooter, read_part_footer
from featurizer.store.store import (
    STORE_STATUSES,
    FeatureStore,
    StoreInfo,
    StoreStatus,
    load_features,
    read_errors,
    read_manifest,
    store_info,
)
from featurizer.store.upgrade import UpgradeResult, upgrade_store

__all__ = [
    "ERRORS_NAME",
    "FORMAT_VERSION",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "RESUME_KEYS",
    "STORE_STATUSES",
    "V1_ERRORS_NAME",
    "V1_MANIFEST_NAME",
    "ErrorEntry",
    "FeatureStore",
    "FileList",
    "Manifest",
    "Part",
    "PartEntry",
    "PartFooter",
    "RunInfo",
    "StoreConfig",
    "StoreInfo",
    "StoreLockedError",
    "StoreNotFoundError",
    "StoreStatus",
    "UpgradeResult",
    "clear_store",
    "load_features",
    "part_name",
    "read_errors",
    "read_manifest",
    "read_part_footer",
    "store_info",
    "upgrade_store",
]
