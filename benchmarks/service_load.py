"""Load test of the HTTP service: dynamic batching vs one forward pass per request.

    python benchmarks/service_load.py            # full run (lead, quiet machine)
    python benchmarks/service_load.py --quick    # smoke run, ~1-2 min on 2 cores

What it measures, all in one run on this machine:
1. the real server (`python -m service.cli serve`, a subprocess on loopback) under 1, 8 and 32
   concurrent clients, each posting single images: p50/p99 latency, images/s, errors, and the
   mean batch size (from the server's /metrics);
2. a naive FastAPI app (defined below: decode + one batch-1 forward per request, no batching),
   served by uvicorn in a subprocess, at the same client counts (levels interleaved with 1.);
3. offline throughput of the featurizer in this process: `extract()` on the same images with
   batch size = the server's max batch (decode + forward, what a script would do), and the
   forward pass alone;
4. decode + batch-1 forward time of one image (what a single request cannot avoid);
5. a burst of concurrent requests into a server whose queue is small: every answer must be 200 or
   503 with Retry-After (never a crash or a timeout), memory of the server before and after.
Then a table and the ratios of the issue's targets:
  32 clients >= 2x naive throughput; >= 80% of offline throughput; single-client p50 <= 1.3x
  (decode + batch-1 forward); zero errors at every level; 503 past the queue limit.

`--weights random` is the default because pretrained weights cannot be downloaded here; the
compute (and so every number) is the same as with ImageNet weights.
"""

from __future__ import annotations

from featurizer.runtime import configure_process

configure_process()  # this script is an entry point: set before torch starts its OpenMP runtime

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, UploadFile  # module level: the naive app's annotations need them

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- naive baseline app
def naive_app(weights: str, layer: str) -> Any:
    """The obvious FastAPI service: each request decodes and runs its own batch-1 forward pass.

    A sync endpoint, so FastAPI runs it in its thread pool (decoding overlaps); the featurizer's
    lock serialises the forward passes, as it must for one model.
    """
    import torch

    from featurizer.extractor import Featurizer

    featurizer = Featurizer(layers=[layer], weights=weights)
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/features")
    def features(images: list[UploadFile] = File(...)) -> dict[str, Any]:  # noqa: B008
        results = []
        for upload in images:
            tensor = featurizer.prepare(upload.file.read())
            out = featurizer.forward(torch.stack([tensor]), layers=[layer])
            results.append(
                {"filename": upload.filename, "features": {layer: out[layer][0].tolist()}}
            )
        return {"results": results}

    return app


def run_naive_server(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        naive_app(args.weights, args.layer), host="127.0.0.1", port=args.port, log_level="warning"
    )
    return 0


# --------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_images(count: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """JPEGs that look like photos to the codec: smooth gradients plus texture."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    images = []
    for _ in range(count):
        colour = rng.uniform(0, 255, 3)
        slope = rng.uniform(-0.3, 0.3, 3)
        pixels = colour + slope * (xx[..., None] + yy[..., None])
        pixels += rng.normal(0, 20, (height, width, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=88)
        images.append(buffer.getvalue())
    return images


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    base_url: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(name: str, command: Sequence[str], env: dict[str, str], port: int) -> Server:
    import httpx

    process = subprocess.Popen(list(command), env=env, cwd=ROOT)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} server exited with code {process.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return Server(name, process, base_url)
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{name} server did not start in time")
        time.sleep(0.25)


def python_path() -> str:
    """The repo first, then what the caller had (e.g. wheels unpacked on the GPU machine)."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def start_decaf(args: argparse.Namespace, data_dir: Path, max_queue: int | None = None) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "DECAF_DATA_DIR": str(data_dir),
        "DECAF_LOG_LEVEL": "WARNING",
        "PYTHONPATH": python_path(),
    }
    command = [
        sys.executable, "-m", "service.cli", "serve", "--port", str(port),
        "--weights", args.weights, "--layers", args.layer,
        "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
        "--decode-threads", str(args.decode_threads),
        "--max-decode-wait-ms", str(args.max_decode_wait_ms),
    ]  # fmt: skip
    if max_queue is not None:
        command += ["--max-queue", str(max_queue)]
    return start_server("decaf", command, env, port)


def start_naive(args: argparse.Namespace) -> Server:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": python_path()}
    command = [
        sys.executable, str(Path(__file__).resolve()), "--naive-server", "--port", str(port),
        "--weights", args.weights, "--layer", args.layer,
    ]  # fmt: skip
    return start_server("naive", command, env, port)


# --------------------------------------------------------------------------- load generation
@dataclass
class LoadResult:
    server: str
    clients: int
    requests: int = 0
    ok: int = 0
    errors: int = 0
    rejected_503: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    mean_batch: float | None = None  # from the server's /metrics (decaf only)

    @property
    def images_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


async def _client_loop(
    client: Any, images: list[bytes], count: int, offset: int, layer: str, result: LoadResult
) -> None:
    for i in range(count):
        data = images[(offset + i) % len(images)]
        started = time.perf_counter()
        try:
            response = await client.post(
                "/v1/features",
                params={"layers": layer},
                files=[("images", ("img.jpg", data, "image/jpeg"))],
            )
            status = response.status_code
            if status == 503 and "retry-after" not in response.headers:
                status = -503  # a 503 without Retry-After counts as an error
        except Exception:  # a transport error is an error at this level, counted not raised
            status = -1
        elapsed = time.perf_counter() - started
        result.requests += 1
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status == 200:
            result.ok += 1
            result.latencies.append(elapsed)
        elif status == 503:
            result.rejected_503 += 1
        else:
            result.errors += 1


def batch_counters(server: Server) -> tuple[float, float] | None:
    """(sum, count) of the decaf_batch_size histogram, None for servers without it."""
    import httpx

    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        for key in ("decaf_batch_size_sum", "decaf_batch_size_count"):
            if line.startswith(key + " "):
                values[key] = float(line.split()[1])
    if len(values) < 2:
        return None
    return values["decaf_batch_size_sum"], values["decaf_batch_size_count"]


async def run_load(
    server: Server, clients: int, per_client: int, images: list[bytes], layer: str
) -> LoadResult:
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=300, limits=limits) as client:
        warmup = LoadResult(server.name, clients)
        await asyncio.gather(
            *(_client_loop(client, images, 1, c, layer, warmup) for c in range(clients))
        )
        result = LoadResult(server.name, clients)
        before = await asyncio.to_thread(batch_counters, server)
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _client_loop(client, images, per_client, c * per_client, layer, result)
                for c in range(clients)
            )
        )
        result.seconds = time.perf_counter() - started
        after = await asyncio.to_thread(batch_counters, server)
    if before is not None and after is not None and after[1] > before[1]:
        result.mean_batch = (after[0] - before[0]) / (after[1] - before[1])
    return result


async def run_burst(server: Server, burst: int, images: list[bytes], layer: str) -> LoadResult:
    import httpx

    limits = httpx.Limits(max_connections=burst, max_keepalive_connections=burst)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=300, limits=limits) as client:
        result = LoadResult(server.name, burst)
        started = time.perf_counter()
        await asyncio.gather(
            *(_client_loop(client, images, 1, c, layer, result) for c in range(burst))
        )
        result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- offline baselines
def offline_numbers(
    args: argparse.Namespace, images: list[bytes], featurizer: Any
) -> dict[str, float]:
    import torch

    batch = args.max_batch_size
    count = max(batch * 2, args.offline_images)
    sample = [images[i % len(images)] for i in range(count)]
    featurizer.extract(sample[:batch], batch_size=batch)  # warm-up
    started = time.perf_counter()
    featurizer.extract(sample, batch_size=batch)
    extract_ips = count / (time.perf_counter() - started)

    tensors = torch.stack([featurizer.prepare(data) for data in sample[:batch]])
    featurizer.forward(tensors)
    repeats = max(2, count // batch)
    started = time.perf_counter()
    for _ in range(repeats):
        featurizer.forward(tensors)
    forward_ips = repeats * batch / (time.perf_counter() - started)

    one = tensors[:1]
    featurizer.forward(one)  # warm-up at batch 1
    started = time.perf_counter()
    for _ in range(args.single_repeats):
        featurizer.forward(one)
    forward1_ips = args.single_repeats / (time.perf_counter() - started)
    single_times, decode_times = [], []
    for data in sample[: args.single_repeats]:
        started = time.perf_counter()
        tensor = featurizer.prepare(data)
        decoded = time.perf_counter()
        featurizer.forward(torch.stack([tensor]))
        single_times.append(time.perf_counter() - started)
        decode_times.append(decoded - started)
    return {
        "extract_ips": extract_ips,
        "forward_ips": forward_ips,
        "forward1_ips": forward1_ips,
        "decode_forward1_ms": statistics.median(single_times) * 1000,
        "decode_ms": statistics.median(decode_times) * 1000,
    }


# --------------------------------------------------------------------------- report
def print_table(results: list[LoadResult]) -> None:
    print(f"{'server':<8}{'clients':>8}{'requests':>10}{'ok':>7}{'503':>6}{'errors':>8}"
          f"{'p50 ms':>10}{'p99 ms':>10}{'img/s':>9}{'batch':>7}")  # fmt: skip
    for r in results:
        batch = f"{r.mean_batch:.1f}" if r.mean_batch is not None else "1"
        print(
            f"{r.server:<8}{r.clients:>8}{r.requests:>10}{r.ok:>7}{r.rejected_503:>6}"
            f"{r.errors:>8}{r.percentile(50):>10.1f}{r.percentile(99):>10.1f}"
            f"{r.images_per_s:>9.1f}{batch:>7}"
        )


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "ok" if ok else "MISSED"


def cpu_ms(run: Any, repeats: int = 30) -> float:
    """Median CPU milliseconds of ``run()`` in this thread (steadier than wall time under load)."""
    run()
    samples = []
    for _ in range(repeats):
        start = time.thread_time()
        run()
        samples.append(time.thread_time() - start)
    return 1000 * statistics.median(samples)


def print_request_overheads(image: bytes, decode_forward1_ms: float) -> None:
    """What a request costs besides decode + forward, each part measured alone (issue 13, 4.).

    multipart parsing of one upload (starlette's ``Request.form()``, the route's own parser) and
    the JSON answer of one 4096-d vector: today's orjson-from-numpy vs ``tolist`` + ``json.dumps``
    (what the service did before).
    """
    import json

    import orjson
    from starlette.requests import Request

    boundary = "decafboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    scope = {"type": "http", "method": "POST", "path": "/v1/features", "headers": [
        (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
        (b"content-length", str(len(body)).encode()),
    ]}  # fmt: skip

    async def parse() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(scope, receive).form()
        await form["images"].read()  # type: ignore[union-attr]
        await form.close()

    vector = np.random.default_rng(0).random(4096, dtype=np.float32)

    def new_json() -> bytes:  # as service.feature_encoding: exact values, widened to float64
        answer = {"results": [{"filename": "a.jpg", "features": {"decaf6": vector.astype(float)}}]}
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)

    def old_json() -> bytes:
        plain = {"results": [{"filename": "a.jpg", "features": {"decaf6": vector.tolist()}}]}
        return json.dumps(plain).encode()

    loop = asyncio.new_event_loop()
    try:
        parse_ms = cpu_ms(lambda: loop.run_until_complete(parse()))
    finally:
        loop.close()
    new_ms = cpu_ms(new_json)
    old_ms = cpu_ms(old_json)
    print(f"per request, CPU ms (one thread): multipart parse {parse_ms:.2f}; JSON answer of one "
          f"4096-d vector: orjson {new_ms:.2f} (before: tolist + json.dumps {old_ms:.2f}); "
          f"as a fraction of decode + batch-1 forward ({decode_forward1_ms:.1f} ms): parse "
          f"{parse_ms / decode_forward1_ms:.3f}, JSON {new_ms / decode_forward1_ms:.3f} "
          f"(before {old_ms / decode_forward1_ms:.3f})")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--clients", default=None, help="comma list (default 1,8,32; quick 1,8)")
    parser.add_argument("--requests-per-client", type=int, default=None)
    parser.add_argument("--weights", default="random")
    parser.add_argument("--layer", default="decaf6")
    parser.add_argument("--image-size", default="375x500", help="HxW of the test JPEGs")
    parser.add_argument("--images", type=int, default=64, help="distinct images to cycle through")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5)
    parser.add_argument("--max-decode-wait-ms", type=float, default=100)
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--burst", type=int, default=None, help="concurrent burst size")
    parser.add_argument("--burst-queue", type=int, default=8, help="max queue of burst server")
    parser.add_argument("--offline-images", type=int, default=None)
    parser.add_argument("--single-repeats", type=int, default=None)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--naive-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.naive_server:
        return run_naive_server(args)

    quick = args.quick
    clients = [int(c) for c in (args.clients or ("1,8" if quick else "1,8,32")).split(",")]
    per_client = args.requests_per_client or (4 if quick else 24)
    args.offline_images = args.offline_images or (64 if quick else 256)
    args.single_repeats = args.single_repeats or (5 if quick else 20)
    burst = args.burst or (48 if quick else 256)
    height, width = (int(v) for v in args.image_size.lower().split("x"))
    images = make_images(args.images, (height, width))

    import tempfile

    results: list[LoadResult] = []
    with tempfile.TemporaryDirectory(prefix="decaf-bench-") as tmp:
        print(f"# starting decaf server ({args.weights} weights) ...", file=sys.stderr)
        servers = [start_decaf(args, Path(tmp) / "data")]
        try:
            if not args.skip_naive:
                print("# starting naive server ...", file=sys.stderr)
                servers.append(start_naive(args))
            # Interleaved per level, so a change in machine load hits both servers alike.
            for level in clients:
                for server in servers:
                    print(f"# {server.name}, {level} clients", file=sys.stderr)
                    results.append(
                        asyncio.run(run_load(server, level, per_client, images, args.layer))
                    )
        finally:
            for server in servers:
                server.stop()
        results.sort(key=lambda r: (r.server != "decaf", r.clients))
        print("# offline featurizer ...", file=sys.stderr)
        # Built in this thread, run in a worker thread: exactly how the server uses the model
        # (lifespan builds it, the batcher thread runs it). On a busy 2-core machine, forward
        # passes in the thread that built the Featurizer (which calls torch.set_num_threads)
        # measured 4-7x slower at batch 1 than in another thread.
        from featurizer.extractor import Featurizer

        featurizer = Featurizer(layers=[args.layer], weights=args.weights)
        with ThreadPoolExecutor(1) as pool:
            offline = pool.submit(offline_numbers, args, images, featurizer).result()
        print(
            f"# burst of {burst} into a server with max queue {args.burst_queue}", file=sys.stderr
        )
        small = start_decaf(args, Path(tmp) / "burst", max_queue=args.burst_queue)
        try:
            rss_before = rss_mib(small.process.pid)
            burst_result = asyncio.run(run_burst(small, burst, images, args.layer))
            rss_after = rss_mib(small.process.pid)
            alive = small.process.poll() is None
        finally:
            small.stop()

    print()
    print(f"service load: {height}x{width} JPEGs, layer {args.layer}, weights {args.weights}, "
          f"max batch {args.max_batch_size}, max wait {args.max_wait_ms} ms "
          f"(decodes {args.max_decode_wait_ms} ms), "
          f"{os.cpu_count()} CPUs{' (quick)' if quick else ''}")  # fmt: skip
    print_table(results)
    print()
    print(f"offline extract() (decode+forward, batch {args.max_batch_size}): "
          f"{offline['extract_ips']:.1f} img/s; forward only: {offline['forward_ips']:.1f} img/s; "
          f"decode + batch-1 forward: {offline['decode_forward1_ms']:.1f} ms "
          f"(decode {offline['decode_ms']:.1f} ms)")  # fmt: skip
    print_request_overheads(images[0], offline["decode_forward1_ms"])

    decaf_by = {r.clients: r for r in results if r.server == "decaf"}
    naive_by = {r.clients: r for r in results if r.server == "naive"}
    top = max(clients)
    print()
    print(f"{'target':<52}{'value':>10}{'goal':>8}  verdict")
    rows: list[tuple[str, float, str, str]] = []
    if top in naive_by and naive_by[top].images_per_s:
        ratio = decaf_by[top].images_per_s / naive_by[top].images_per_s
        rows.append((f"{top} clients: decaf / naive throughput", ratio, ">= 2", verdict(ratio, 2)))
    ratio = decaf_by[top].images_per_s / offline["extract_ips"]
    rows.append(
        (f"{top} clients: decaf / offline extract throughput", ratio, ">= 0.8", verdict(ratio, 0.8))
    )
    ratio_fwd = decaf_by[top].images_per_s / offline["forward_ips"]
    rows.append((f"{top} clients: decaf / offline forward-only", ratio_fwd, "(info)", ""))
    if 1 in decaf_by:
        ratio = decaf_by[1].percentile(50) / offline["decode_forward1_ms"]
        rows.append(
            (
                "1 client: p50 / (decode + batch-1 forward)",
                ratio,
                "<= 1.3",
                verdict(ratio, 1.3, False),
            )
        )
    ceiling = offline["forward_ips"] / offline["forward1_ips"]
    rows.append((f"batching ceiling: forward img/s batch {args.max_batch_size} / batch 1", ceiling,
                 "(info)", ""))  # fmt: skip
    if 1 in decaf_by and 1 in naive_by:
        ratio = decaf_by[1].percentile(50) / naive_by[1].percentile(50)
        rows.append(("1 client: p50 decaf / p50 naive (HTTP included)", ratio, "(info)", ""))
    errors = sum(r.errors + r.rejected_503 for r in results)
    rows.append(("errors (incl. 503) at all load levels", errors, "== 0", verdict(-errors, 0)))
    for name, value, goal, mark in rows:
        print(f"{name:<52}{value:>10.2f}{goal:>8}  {mark}")
    print()
    rss = (
        f"{rss_before:.0f} -> {rss_after:.0f} MiB"
        if rss_before is not None and rss_after is not None
        else "n/a"
    )
    print(
        f"burst: {burst} concurrent requests, max queue {args.burst_queue}: "
        f"{burst_result.ok} x 200, {burst_result.rejected_503} x 503, {burst_result.errors} other; "
        f"server alive afterwards: {alive}; server RSS {rss}"
    )
    burst_ok = burst_result.errors == 0 and burst_result.rejected_503 > 0 and alive
    print(f"burst verdict: {'ok' if burst_ok else 'MISSED'} (503s expected, nothing else)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
