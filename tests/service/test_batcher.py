"""Dynamic batching: the MicroBatcher itself (real random-weight AlexNet) and through real HTTP."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import numpy as np
import pytest
import torch

from featurizer.preprocess import load_and_preprocess
from service.batcher import BatcherStoppedError, MicroBatcher, QueueFullError
from tests.service._service_helpers import jpeg_bytes, problem


def tensors(featurizer, count: int, crop: str = "center") -> list[torch.Tensor]:
    return [
        load_and_preprocess(jpeg_bytes(seed), featurizer.preprocess, crop) for seed in range(count)
    ]


def single(featurizer, tensor: torch.Tensor, layers) -> dict[str, np.ndarray]:
    out = featurizer.forward(tensor.unsqueeze(0), layers=sorted(layers))
    return {name: array[0] for name, array in out.items()}


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale)


async def wait_for_queue(
    batcher: MicroBatcher, depth: int, timeout: float = 60.0, *, empty: bool = False
) -> None:
    """Until the queue holds `depth` items (or, `empty`: none). The timeout only turns a hang
    into a failure."""
    deadline = time.monotonic() + timeout
    while (batcher.queue_depth > 0) if empty else (batcher.queue_depth < depth):
        assert time.monotonic() < deadline, f"queue never reached {depth}"
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- unit level
def test_concurrent_submissions_share_one_forward_pass(shared_featurizer):
    inputs = tensors(shared_featurizer, 6)
    batcher = MicroBatcher(shared_featurizer, max_batch_size=8, max_wait_ms=50)

    async def scenario():
        tasks = [asyncio.ensure_future(batcher.enqueue(t, frozenset({"decaf6"}))) for t in inputs]
        await wait_for_queue(batcher, len(inputs))
        batcher.start()  # everything is already queued: one batch
        return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert batcher.forward_passes == 1 and batcher.batch_sizes == [6]
    for tensor, result in zip(inputs, results, strict=True):
        assert set(result) == {"decaf6"}
        assert_close(result["decaf6"], single(shared_featurizer, tensor, {"decaf6"})["decaf6"])


def test_max_batch_size_splits_batches(shared_featurizer):
    inputs = tensors(shared_featurizer, 5)
    batcher = MicroBatcher(shared_featurizer, max_batch_size=2, max_wait_ms=0)

    async def scenario():
        tasks = [asyncio.ensure_future(batcher.enqueue(t, frozenset({"decaf7"}))) for t in inputs]
        await wait_for_queue(batcher, len(inputs))
        batcher.start()
        return await asyncio.gather(*tasks)

    try:
        asyncio.run(scenario())
    finally:
        batcher.stop()
    assert batcher.batch_sizes == [2, 2, 1]


def test_each_request_gets_only_its_layers_and_crop_modes_are_not_mixed(shared_featurizer):
    center = tensors(shared_featurizer, 2)
    tencrop = tensors(shared_featurizer, 1, crop="tencrop")
    batcher = MicroBatcher(shared_featurizer, max_batch_size=8, max_wait_ms=50)
    wanted = [frozenset({"decaf6"}), frozenset({"decaf7", "logits"}), frozenset({"decaf6"})]

    async def scenario():
        items = [center[0], center[1], tencrop[0]]
        tasks = [
            asyncio.ensure_future(batcher.enqueue(t, layers))
            for t, layers in zip(items, wanted, strict=True)
        ]
        await wait_for_queue(batcher, 3)
        batcher.start()
        return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert [set(r) for r in results] == [set(w) for w in wanted]
    assert sorted(batcher.batch_sizes) == [1, 2]  # (N,3,..) and (N,10,3,..) never stacked together
    assert_close(results[1]["logits"], single(shared_featurizer, center[1], {"logits"})["logits"])
    expected_tencrop = single(shared_featurizer, tencrop[0], {"decaf6"})["decaf6"]
    assert_close(results[2]["decaf6"], expected_tencrop)


def test_batch_waits_for_announced_decodes_but_not_forever(shared_featurizer):
    first, second, third = tensors(shared_featurizer, 3)
    layers = frozenset({"decaf6"})
    # Held open: a decode wait far beyond the test's length, so "not done yet" is no race.
    patient = MicroBatcher(
        shared_featurizer, max_batch_size=8, max_wait_ms=0, max_decode_wait_ms=600_000
    ).start()
    # Not forever: an announcement that never arrives delays a batch by max_decode_wait only.
    bounded = MicroBatcher(
        shared_featurizer, max_batch_size=8, max_wait_ms=0, max_decode_wait_ms=300
    ).start()

    async def scenario() -> float:
        with patient.expecting():  # another request is still decoding its image
            one = patient.enqueue(first, layers)
            await wait_for_queue(patient, 0, empty=True)  # the worker took it, and holds it
            # Gives a batcher that does not wait the chance to show it; a correct one cannot
            # finish the batch in this time, however slow or fast the machine.
            await asyncio.sleep(0.2)
            assert not one.done()
            two = patient.enqueue(second, layers)
        await asyncio.gather(one, two)
        with bounded.expecting():
            started = time.perf_counter()
            await asyncio.wait_for(bounded.enqueue(third, layers), 120)  # 120: "forever"
            return time.perf_counter() - started

    try:
        waited = asyncio.run(scenario())
    finally:
        patient.stop()
        bounded.stop()
    assert patient.batch_sizes == [2] and bounded.batch_sizes == [1]
    assert waited >= 0.3  # the deadline is a lower bound; "not forever" is the wait_for above


@pytest.mark.parametrize(("in_flight", "waits"), [(1, False), (2, True)])
def test_max_wait_is_skipped_when_no_other_request_is_in_flight(
    shared_featurizer, in_flight, waits
):
    [tensor] = tensors(shared_featurizer, 1)
    # Alone, the window would outlast the test: finishing at all shows it was skipped (no
    # upper bound on a measured time, which a loaded machine could break).
    max_wait_ms = 1500 if waits else 600_000
    batcher = MicroBatcher(
        shared_featurizer, max_wait_ms=max_wait_ms, activity=lambda: in_flight
    ).start()

    async def scenario() -> float:
        started = time.perf_counter()
        await asyncio.wait_for(batcher.enqueue(tensor, frozenset({"decaf6"})), 120)
        return time.perf_counter() - started

    try:
        waited = asyncio.run(scenario())
    finally:
        batcher.stop()
    if waits:  # another request may still join: the window is kept
        assert waited >= 1.4


def test_full_queue_raises_with_retry_after(shared_featurizer):
    inputs = tensors(shared_featurizer, 3)
    batcher = MicroBatcher(shared_featurizer, max_batch_size=4, max_queue=2)

    async def scenario():
        tasks = [
            asyncio.ensure_future(batcher.enqueue(t, frozenset({"decaf6"}))) for t in inputs[:2]
        ]
        await wait_for_queue(batcher, 2)
        with pytest.raises(QueueFullError) as caught:
            await batcher.enqueue(inputs[2], frozenset({"decaf6"}))
        assert caught.value.retry_after >= 1
        batcher.start()  # the queued ones still complete
        return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert len(results) == 2 and batcher.rejected_full == 1


def test_cancelled_requests_are_dropped_before_the_forward_pass(shared_featurizer):
    inputs = tensors(shared_featurizer, 3)
    batcher = MicroBatcher(shared_featurizer, max_batch_size=8, max_wait_ms=20)

    async def scenario():
        tasks = [asyncio.ensure_future(batcher.enqueue(t, frozenset({"decaf6"}))) for t in inputs]
        await wait_for_queue(batcher, 3)
        tasks[1].cancel()  # e.g. the client disconnected
        await asyncio.sleep(0)
        batcher.start()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return done

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert isinstance(results[1], asyncio.CancelledError)
    assert batcher.batch_sizes == [2] and batcher.dropped_cancelled == 1


def test_forward_errors_reach_every_waiting_request(shared_featurizer):
    batcher = MicroBatcher(shared_featurizer, max_batch_size=4, max_wait_ms=20).start()
    wrong_shape = torch.zeros((3, 32, 32), dtype=torch.uint8)

    async def scenario():
        return await asyncio.gather(
            batcher.enqueue(wrong_shape, frozenset({"decaf6"})),
            batcher.enqueue(wrong_shape, frozenset({"decaf6"})),
            return_exceptions=True,
        )

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert all(isinstance(r, ValueError) and "shape" in str(r) for r in results)
    assert batcher.forward_passes == 0


def test_stop_fails_pending_and_refuses_new_work(shared_featurizer):
    inputs = tensors(shared_featurizer, 1)
    batcher = MicroBatcher(shared_featurizer)

    async def scenario():
        task = asyncio.ensure_future(batcher.enqueue(inputs[0], frozenset({"decaf6"})))
        await wait_for_queue(batcher, 1)
        await asyncio.to_thread(batcher.stop)
        with pytest.raises(BatcherStoppedError):
            await task
        with pytest.raises(BatcherStoppedError):
            await batcher.enqueue(inputs[0], frozenset({"decaf6"}))

    asyncio.run(scenario())
    assert not batcher.running


# --------------------------------------------------------------------------- over HTTP
async def _post_concurrently(base_url: str, images: list[bytes], **params) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        return await asyncio.gather(
            *(
                client.post(
                    "/v1/features",
                    params={"layers": "decaf6,decaf7", **params},
                    files=[("images", (f"{i}.jpg", data, "image/jpeg"))],
                )
                for i, data in enumerate(images)
            )
        )


def test_concurrent_http_requests_are_batched_and_equal_single_results(serve, shared_featurizer):
    server = serve(max_wait_ms=100, max_batch_size=16)
    images = [jpeg_bytes(seed) for seed in range(10)]
    responses = asyncio.run(_post_concurrently(server.base_url, images))
    assert [r.status_code for r in responses] == [200] * len(images)
    batcher = server.batcher
    assert batcher.images_processed == len(images)
    assert batcher.forward_passes < len(images), batcher.batch_sizes
    assert max(batcher.batch_sizes) > 1
    for data, response in zip(images, responses, strict=True):
        tensor = shared_featurizer.prepare(data)  # the decoder the service uses
        expected = single(shared_featurizer, tensor, {"decaf6", "decaf7"})
        features = response.json()["results"][0]["features"]
        for layer in ("decaf6", "decaf7"):
            assert_close(np.array(features[layer], np.float32), expected[layer])
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert f"decaf_batch_size_count {float(batcher.forward_passes)}" in metrics


def test_full_queue_answers_503_with_retry_after_over_http(serve, shared_featurizer):
    server = serve(max_queue=1, max_batch_size=1, max_wait_ms=0)
    images = [jpeg_bytes(seed) for seed in range(3)]

    async def scenario():
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:

            def send(i: int) -> asyncio.Future[httpx.Response]:
                files = [("images", (f"{i}.jpg", images[i], "image/jpeg"))]
                return asyncio.ensure_future(client.post("/v1/features", files=files))

            # Hold the model busy so the queue fills deterministically: the featurizer's own
            # lock serialises forward passes, so the batcher thread waits inside forward().
            shared_featurizer._lock.acquire()
            try:
                first = send(0)
                await _until(lambda: server.batcher.in_flight == 1)
                second = send(1)  # fills the queue (size 1)
                await _until(lambda: server.batcher.queue_depth == 1)
                rejected = await send(2)
            finally:
                shared_featurizer._lock.release()
            return rejected, await asyncio.gather(first, second)

    rejected, accepted = asyncio.run(scenario())
    assert rejected.status_code == 503
    assert int(rejected.headers["Retry-After"]) >= 1
    body = problem(rejected, 503, "/problems/queue-full")
    assert "queue is full" in body["detail"]
    assert [r.status_code for r in accepted] == [200, 200]  # the queued ones still finish
    assert server.batcher.rejected_full == 1


async def _until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


def _queued_items_cancelled(batcher: MicroBatcher) -> list[bool]:
    """Whether each item waiting in the batcher's queue was cancelled (white-box: its deque)."""
    return [item.future.cancelled() for item in list(batcher._queue.queue)]


def test_disconnected_client_does_not_cost_a_forward_pass(serve, shared_featurizer):
    server = serve(max_queue=8, max_batch_size=1, max_wait_ms=0)
    host, port = server.base_url.removeprefix("http://").split(":")

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            shared_featurizer._lock.acquire()  # keep the worker busy with request 1 (see above)
            try:
                files = [("images", ("a.jpg", jpeg_bytes(1), "image/jpeg"))]
                first = asyncio.ensure_future(client.post("/v1/features", files=files))
                await _until(lambda: server.batcher.in_flight == 1)
                # Request 2 over a raw socket; hang up once it waits in the queue.
                sock = socket.create_connection((host, int(port)))
                sock.sendall(_raw_multipart(jpeg_bytes(2)))
                await _until(lambda: server.batcher.queue_depth == 1)
                sock.close()
                # The server notices the hang-up and cancels request 2's queued item.
                await _until(lambda: _queued_items_cancelled(server.batcher) == [True])
            finally:
                shared_featurizer._lock.release()
            return await first

    assert asyncio.run(scenario()).status_code == 200
    deadline = time.monotonic() + 60  # only turns a hang into a failure
    while server.batcher.dropped_cancelled < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.batcher.dropped_cancelled == 1
    assert server.batcher.images_processed == 1  # only request 1 went through the model


def _raw_multipart(data: bytes) -> bytes:
    boundary = "decafboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="b.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        "POST /v1/features HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body
