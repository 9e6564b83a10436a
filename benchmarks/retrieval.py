"""Benchmark: FAISS indexes of compact codes vs exact search and a NumPy brute force, in one run.

Two synthetic datasets of clustered vectors (Gaussian clusters around random centres, like CNN
codes of a dataset's classes; queries are held-out points of the same clusters):

* codes: 1,000,000 x 256 (PCA-sized codes), codec flat
* fc7:   200,000 x 4,096 (raw fc7 size), codec fp16

For each index kind (exact, ivf at several nprobe, hnsw at several efSearch) it reports the
build time, the build's peak memory (RSS high-water mark of a forked child that builds only that
index, minus the child's RSS before the build), the index size, queries/s (one batched search
call) and recall@10 against the exact neighbours (NumPy brute force on the same vectors).
Builds go through ``retrieval.build.build_from_source``: a sample for training, then the parts
added one by one (parts of 65,536 rows here), as ``decaf index build`` does on a store.

Targets (issue 10): on the 1M codes, an index with >= 20x the exact FAISS queries/s at
recall@10 >= 0.95; build memory <= 1.5 x the final index + one part.

    python benchmarks/retrieval.py --quick                  # 20k x 256 and 5k x 4096, a minute
    python benchmarks/retrieval.py                          # the full sizes (long; ~6 GB RAM)
    python benchmarks/retrieval.py --codes 200000,256 --fc7 50000,4096 --kinds exact,ivf
"""

from __future__ import annotations

from featurizer.runtime import configure_process

configure_process()  # an entry point: OpenMP settings before FAISS/torch start their runtime

import argparse
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.build import apply_search_params, build_from_source
from retrieval.recipe import IndexSpec, plan
from retrieval.sources import ArraySource

FULL = {"codes": (1_000_000, 256, "flat"), "fc7": (200_000, 4096, "fp16")}
QUICK = {"codes": (20_000, 256, "flat"), "fc7": (5_000, 4096, "fp16")}
PART_ROWS = 65_536
K = 10
PAGE = os.sysconf("SC_PAGE_SIZE")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--codes", help="ROWS,DIM of the codes dataset (default 1000000,256)")
    parser.add_argument("--fc7", help="ROWS,DIM of the fc7 dataset (default 200000,4096)")
    parser.add_argument("--datasets", default="codes,fc7")
    parser.add_argument("--kinds", default="exact,ivf,hnsw")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument(
        "--rows-per-cluster", type=int, default=1000, help="cluster size of the synthetic data"
    )
    return parser.parse_args(argv)


def clustered(rows: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit-norm-ish clustered vectors, made in chunks (no float64 copy of the whole matrix)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, PART_ROWS):
        n = min(PART_ROWS, rows - start)
        chunk = centres[rng.integers(0, clusters, size=n)]
        chunk += 0.7 * rng.standard_normal((n, dim), dtype=np.float32)
        out[start : start + n] = chunk
    return out


def numpy_topk(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact cosine top-k by brute force (the baseline): normalised blocks, argpartition."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    best_scores = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(q), k), dtype=np.int64)
    for start in range(0, len(database), PART_ROWS):
        block = database[start : start + PART_ROWS]
        block = block / np.linalg.norm(block, axis=1, keepdims=True)
        scores = q @ block.T
        scores = np.concatenate([best_scores, scores], axis=1)
        rows = np.concatenate(
            [best_rows, np.broadcast_to(np.arange(start, start + len(block)), scores[:, k:].shape)],
            axis=1,
        )
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        best_scores = np.take_along_axis(scores, top, axis=1)
        best_rows = np.take_along_axis(rows, top, axis=1)
    order = np.argsort(-best_scores, axis=1)
    return np.take_along_axis(best_rows, order, axis=1)


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def measure(
    source: ArraySource, kind: str, codec: str, queries: np.ndarray, truth: np.ndarray, out
) -> None:
    """In a forked child: build one index kind, then search it at each search setting."""
    import faiss

    recipe = plan(IndexSpec("bench", codec=codec, kind=kind), source.rows, source.dim)
    before = rss_bytes()
    started = time.perf_counter()
    index = build_from_source(source, recipe)
    build_s = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    size = faiss.serialize_index(index).nbytes
    for name, params in search_settings(recipe):
        apply_search_params(index, params)
        index.search(queries[:10], K)  # warm-up
        t = time.perf_counter()
        _, found = index.search(queries, K)
        qps = len(queries) / (time.perf_counter() - t)
        out.put(
            {
                "kind": f"{kind} {name}".strip(),
                "factory": recipe.factory,
                "build_s": build_s,
                "peak_mb": peak / 1e6,
                "index_mb": size / 1e6,
                "qps": qps,
                "recall": recall_at(found, truth),
            }
        )


def search_settings(recipe) -> list[tuple[str, dict[str, int]]]:
    if recipe.kind == "ivf":
        nlist = recipe.nlist
        return [
            (f"nprobe={p}", {"nprobe": p})
            for p in sorted({max(1, nlist // f) for f in (256, 128, 64, 32, 16)})
        ]
    if recipe.kind == "hnsw":
        return [(f"ef={ef}", {"efSearch": ef}) for ef in (32, 64, 128)]
    return [("", {})]


def run_dataset(name: str, rows: int, dim: int, codec: str, args: argparse.Namespace) -> None:
    print(
        f"\n## {name}: {rows:,} x {dim} (codec {codec}), {max(10, rows // args.rows_per_cluster)} "
        f"clusters, {args.queries} queries, k={K}"
    )
    t = time.perf_counter()
    clusters = max(10, rows // args.rows_per_cluster)
    database = clustered(rows, dim, clusters, seed=1)
    queries = clustered(args.queries, dim, clusters, seed=1)  # same centres (same seed)...
    queries += 0.05 * np.random.default_rng(2).standard_normal(queries.shape, dtype=np.float32)
    print(f"data made in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    truth = numpy_topk(database, queries, K)
    numpy_qps = len(queries) / (time.perf_counter() - t)
    rows_out = [
        {
            "kind": "numpy brute force",
            "factory": "-",
            "build_s": 0.0,
            "peak_mb": 0.0,
            "index_mb": database.nbytes / 1e6,
            "qps": numpy_qps,
            "recall": 1.0,
        }
    ]
    context = multiprocessing.get_context("fork")
    part_mb = min(PART_ROWS, rows) * dim * 4 / 1e6
    for kind in args.kinds.split(","):
        queue = context.Queue()
        child = context.Process(
            target=measure,
            args=(ArraySource(database, part_rows=PART_ROWS), kind, codec, queries, truth, queue),
        )
        child.start()
        child.join()
        while not queue.empty():
            rows_out.append(queue.get())
        if child.exitcode != 0:
            print(f"{kind}: the child failed (exit {child.exitcode})")
    print_table(rows_out, part_mb)


def print_table(rows: list[dict], part_mb: float) -> None:
    exact = next((r["qps"] for r in rows if r["kind"] == "exact"), None)
    header = (
        f"{'index':<22} {'faiss factory':<28} {'build s':>8} {'peak MB':>8} {'index MB':>9} "
        f"{'q/s':>9} {'x exact':>8} {'recall@10':>9} {'mem ok':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = f"{r['qps'] / exact:.1f}" if exact else "-"
        budget = 1.5 * r["index_mb"] + part_mb
        ok = "-" if r["factory"] == "-" else ("yes" if r["peak_mb"] <= budget else "NO")
        print(
            f"{r['kind']:<22} {r['factory']:<28} {r['build_s']:>8.1f} {r['peak_mb']:>8.0f} "
            f"{r['index_mb']:>9.0f} {r['qps']:>9.0f} {ratio:>8} {r['recall']:>9.3f} {ok:>6}"
        )
    print(f"(mem ok: build peak <= 1.5 x index + one part of {part_mb:.0f} MB)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    for name in ("codes", "fc7"):
        given = getattr(args, name)
        if given:
            rows, dim = (int(v) for v in given.split(","))
            sizes[name] = (rows, dim, sizes[name][2])
    import faiss

    print(
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    for name in args.datasets.split(","):
        run_dataset(name, *sizes[name], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
