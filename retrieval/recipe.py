"""From the user's options to a FAISS index recipe: which transform, which index, which codec.

Every index searches L2-normalised vectors (cosine similarity), so all of them use the L2 metric:
on unit vectors ``|a - b|^2 = 2 - 2 cos(a, b)``, the same order as the inner product, and it is
the one metric every FAISS index supports (``HNSW..._PQ`` ignores the inner-product metric).
Scores are reported as cosines, ``1 - d/2``.

Measured for ``auto`` (:data:`AUTO_EXACT_MAX_FLOATS`): exact FAISS search (IndexFlatL2, batches
of 200 queries, 2 shared cores under load, faiss-cpu 1.15) costs 0.76 ms/query on 10k x 256,
4.8 ms on 100k x 256, 8.6 ms on 200k x 256, 1.5 ms on 10k x 4096 and 27 ms on 50k x 4096: about
linear in rows x dim. At 25 M floats an exact query costs ~5 ms, below which an approximate index
saves little and loses recall; above it ``auto`` builds an IVF index.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from retrieval.errors import InvalidIndexOptionError
from retrieval.options import CODECS, INDEX_KINDS, Codec, IndexKind

AUTO_EXACT_MAX_FLOATS = 25_000_000
HNSW_LINKS = 32
HNSW_EF_SEARCH = 128
IVF_PROBE_FRACTION = 1 / 16  # nprobe = nlist/16: recall@10 >= 0.95 on clustered data (benchmark)
TRAIN_POINTS_PER_CENTROID = 39  # FAISS's own minimum before it warns
# Cap of the float32 training sample. IVF training holds ~3 copies of it (the sample, residuals,
# k-means buffers): measured 1000 MB peak for a 328 MB sample (20k x 4096 fp16 IVF). At 128 MiB
# training stays within the build-memory budget (1.5 x index + one part); see the benchmark.
TRAIN_SAMPLE_BYTES = 128 * 1024 * 1024
PQ_DIMS_PER_CODE = 4  # pq: one byte per 4 dimensions = 1/16 of float32

_SQ = {"flat": "Flat", "fp16": "SQfp16", "int8": "SQ8"}
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class IndexSpec:
    """What the user asked for (``decaf index build`` flags, ``POST .../index`` body)."""

    layer: str
    dim: int | None = None  # PCA output dimension; None keeps the layer's
    whiten: bool = False
    codec: Codec = "flat"
    kind: IndexKind = "auto"

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise InvalidIndexOptionError(
                f"codec must be one of {list(CODECS)}, got {self.codec!r}"
            )
        if self.kind not in INDEX_KINDS:
            raise InvalidIndexOptionError(
                f"kind must be one of {list(INDEX_KINDS)}, got {self.kind!r}"
            )
        if self.dim is not None and self.dim < 1:
            raise InvalidIndexOptionError(f"dim must be a positive integer, got {self.dim}")
        if self.whiten and self.dim is None:
            raise InvalidIndexOptionError(
                "whitening is learned with PCA: give --dim (e.g. --dim 256 --whiten)"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Recipe:
    """A resolved build: the FAISS factory string and the parameters search needs."""

    spec: IndexSpec
    kind: str  # exact | ivf | hnsw (auto resolved)
    dim_in: int
    dim_out: int
    factory: str
    train_rows: int  # rows of the training sample (0: nothing to train)
    nlist: int | None = None
    nprobe: int | None = None
    ef_search: int | None = None

    @property
    def name(self) -> str:
        """Index directory name ``<layer>-<dims>-<codec>-<kind>``, e.g. ``decaf7-256w-pq-ivf``."""
        dims = (
            "full" if self.spec.dim is None else f"{self.dim_out}{'w' if self.spec.whiten else ''}"
        )
        return _SLUG.sub("_", f"{self.spec.layer}-{dims}-{self.spec.codec}-{self.kind}")

    def search_params(self) -> dict[str, int]:
        params = {}
        if self.nprobe is not None:
            params["nprobe"] = self.nprobe
        if self.ef_search is not None:
            params["efSearch"] = self.ef_search
        return params

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["spec"] = self.spec.to_dict()
        return data


def plan(spec: IndexSpec, rows: int, dim_in: int) -> Recipe:
    """The recipe for ``rows`` vectors of ``dim_in`` dimensions."""
    if rows < 1:
        raise InvalidIndexOptionError("the store has no rows to index")
    dim_out = dim_in if spec.dim is None else spec.dim
    if dim_out > dim_in:
        raise InvalidIndexOptionError(
            f"--dim {spec.dim} is above the layer's {dim_in} dimensions: PCA can only reduce"
        )
    if spec.dim is not None and rows < dim_in and spec.dim > rows:
        raise InvalidIndexOptionError(
            f"PCA to {spec.dim} dimensions needs at least {spec.dim} rows; the store has {rows}"
        )
    kind = _resolve_kind(spec.kind, rows, dim_out)
    nlist = _nlist(rows) if kind == "ivf" else None
    head = _transforms(spec, dim_in, dim_out)
    factory = head + _index_part(kind, spec.codec, dim_out, nlist)
    wanted = _wanted_training_rows(spec, kind, nlist, dim_in, dim_out)
    byte_cap = max(1, TRAIN_SAMPLE_BYTES // (4 * dim_in))
    train_rows = min(rows, wanted, byte_cap) if wanted else 0
    return Recipe(
        spec=spec,
        kind=kind,
        dim_in=dim_in,
        dim_out=dim_out,
        factory=factory,
        train_rows=train_rows,
        nlist=nlist,
        nprobe=None if nlist is None else max(1, round(nlist * IVF_PROBE_FRACTION)),
        ef_search=HNSW_EF_SEARCH if kind == "hnsw" else None,
    )


def _resolve_kind(kind: str, rows: int, dim: int) -> str:
    if kind != "auto":
        return kind
    return "exact" if rows * dim <= AUTO_EXACT_MAX_FLOATS else "ivf"


def _nlist(rows: int) -> int:
    # The FAISS guideline: 4..16 x sqrt(N) cells; at least 1, never more than rows / 39.
    return max(1, min(int(4 * math.sqrt(rows)), rows // TRAIN_POINTS_PER_CENTROID))


def _transforms(spec: IndexSpec, dim_in: int, dim_out: int) -> str:
    if spec.dim is None:
        return "L2norm,"
    # PCAW: eigenvalue power -1/2 (whitening); renormalised after, so scores stay cosines.
    return f"L2norm,{'PCAW' if spec.whiten else 'PCA'}{dim_out},L2norm,"


def pq_subquantizers(dim: int) -> int:
    """One byte per ~4 dimensions, with ``dim`` divisible by the count (FAISS requires it)."""
    target = max(1, dim // PQ_DIMS_PER_CODE)
    return max(m for m in range(1, target + 1) if dim % m == 0)


def _codec_part(codec: str, dim: int) -> str:
    return f"PQ{pq_subquantizers(dim)}" if codec == "pq" else _SQ[codec]


def _index_part(kind: str, codec: str, dim: int, nlist: int | None) -> str:
    codec_part = _codec_part(codec, dim)
    if kind == "exact":
        # "np": no polysemous training, which the factory otherwise runs for a bare PQ (measured:
        # 166 s instead of 0.3 s for 4000 x 64 on 2 cores) and only a Hamming pre-filter uses.
        return codec_part + ("np" if codec == "pq" else "")
    if kind == "ivf":
        return f"IVF{nlist},{codec_part}"
    return f"HNSW{HNSW_LINKS}" + ("" if codec == "flat" else f"_{codec_part}")


def _wanted_training_rows(
    spec: IndexSpec, kind: str, nlist: int | None, dim_in: int, dim_out: int
) -> int:
    wanted = 0
    if spec.dim is not None:
        wanted = max(wanted, 4 * dim_in)  # a covariance estimate needs a few x dim rows
    if spec.codec in ("int8", "pq"):
        # SQ8 learns value ranges; PQ learns 256 centroids per sub-space.
        wanted = max(wanted, 256 * TRAIN_POINTS_PER_CENTROID if spec.codec == "pq" else 10_000)
    if nlist is not None:
        wanted = max(wanted, nlist * TRAIN_POINTS_PER_CENTROID)
    return wanted
