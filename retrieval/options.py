"""The allowed values of an index build, declared once (argparse, pydantic and docs reuse them)."""

from __future__ import annotations

from typing import Literal

Codec = Literal["flat", "fp16", "int8", "pq"]
CODECS: tuple[Codec, ...] = ("flat", "fp16", "int8", "pq")
CODEC_HELP = (
    "how vectors are stored: flat (float32), fp16 (half), int8 (8-bit scalar quantiser), pq "
    "(product quantiser, ~1/16 of float32)"
)

IndexKind = Literal["auto", "exact", "ivf", "hnsw"]
INDEX_KINDS: tuple[IndexKind, ...] = ("auto", "exact", "ivf", "hnsw")
KIND_HELP = (
    "exact (brute force), ivf (inverted file, k-means cells), hnsw (graph), or auto: exact up "
    "to the size where an approximate index pays off, ivf above"
)

DuplicateFormat = Literal["text", "json", "csv"]

DEFAULT_K = 10
DEFAULT_THRESHOLD = 0.95
DEFAULT_EVAL_K: tuple[int, ...] = (1, 5, 10)
