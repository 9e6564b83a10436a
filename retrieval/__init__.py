"""Retrieval over a feature store: FAISS indexes of L2-normalised features, search,
near-duplicates and retrieval quality (mAP, precision@k with labels as relevance).

The pipeline (``decaf index build|search|duplicates|eval``, ``POST /v1/datasets/{name}/index``)::

    store layer ──L2norm──▶ [PCA(-whitening) to --dim ──L2norm] ──▶ codec (flat|fp16|int8|pq)
                                                                 in an exact, IVF or HNSW index

Every index lives beside its store (``STORE/_index/<layer>-<params>/``, skipped by Parquet
readers) and records the store's fingerprint, so an index of a changed store is refused.
Importing this package imports neither FAISS nor torch: the modules that need them import them.
"""
