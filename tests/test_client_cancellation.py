"""Cancellation and timeouts never change a client's shared state (issue 13).

Against a real `nomyo serve` over TLS (a subprocess: its sockets are not
counted here).  A call cancelled or timed out at any point — while the key
pair is still being made, while connecting, writing, waiting or reading —
leaves the key pair, the router key (cancels also land in its fetch) and the
connection pools as they were:
the same client then answers correctly, no thread or task printed an
exception, and the process holds no more file descriptors than the pooled
connections it keeps (every pooled connection idle, no request left queued),
with the cyclic garbage collector off: nothing is left for it to close.

The control: the same cancellations through a plain ``httpx.AsyncClient``
(httpcore 1.0.9, encode/httpcore#1093) leave connections stuck in its pool,
and the same check sees them.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import ssl
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import nomyo
from nomyo import _keys
from nomyo._constants import PRIVATE_KEY_FILE
from nomyo._transport import SyncTransport
from tests.servers import API_KEY, Endpoint

#: how many calls are cancelled, in batches this large (concurrent, so the
#: cancels also land while requests wait for a pooled connection)
CANCELLED = 400
BATCH = 8


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def content(answer: dict[str, Any]) -> str:
    return str(answer["choices"][0]["message"]["content"])


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cancel_keys")
    _keys.save_private_key(_keys.generate_private_key(2048), folder / PRIVATE_KEY_FILE)
    return folder


class Noise:
    """Everything a thread, a task or a callback might print: uncaught thread
    exceptions, the event loop's exception handler, stderr."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def thread(self, args: threading.ExceptHookArgs) -> None:
        self.seen.append(f"thread {args.thread}: {args.exc_type.__name__}: {args.exc_value}")

    def loop(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.seen.append(f"loop: {context.get('message')} {context.get('exception')!r}")


@pytest.fixture
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector off: what is closed must be closed by the
    code, not found later in a reference cycle (a cancelled call's traceback)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
def noise(capfd: pytest.CaptureFixture[str]) -> Iterator[Noise]:
    found = Noise()
    saved = threading.excepthook
    threading.excepthook = found.thread
    try:
        yield found
    finally:
        threading.excepthook = saved
    err = capfd.readouterr().err
    assert not found.seen, found.seen
    assert "Traceback" not in err and "Error" not in err, err


# ---------------------------------------------------------------- the pools


def pools(client: Any) -> list[Any]:
    """httpcore's pools under the client (white box: what the fds belong to)."""
    engine = client._engine
    if isinstance(engine._transport, SyncTransport):
        return [engine._transport._http._transport._pool]
    return [shard._transport._pool for shard in engine._transport._shards]


def held(pool_list: list[Any]) -> tuple[int, int, int]:
    """(connections that are not idle, requests still in the pools, idle connections)."""
    busy = sum(not c.is_idle() for p in pool_list for c in p._connections)
    requests = sum(len(p._requests) for p in pool_list)
    idle = sum(c.is_idle() for p in pool_list for c in p._connections)
    return busy, requests, idle


async def settled(pool_list: list[Any], baseline: int) -> tuple[int, int, int, int]:
    """(stuck connections, leftover requests, fds beyond the baseline and the
    idle pooled connections), after giving closing sockets a moment (the
    event loop closes a transport's socket on its next turn).  No gc.collect:
    a socket left for the garbage collector counts."""
    for _ in range(50):
        busy, requests, idle = held(pool_list)
        extra = open_fds() - baseline - idle
        if (busy, requests, extra) == (0, 0, 0):
            break
        await asyncio.sleep(0.02)
    return busy, requests, extra, idle


async def cancel_at_random(
    call: Any, duration: float, count: int, rng: random.Random, core: Any = None
) -> tuple[list[float], int]:
    """``count`` calls, BATCH at a time, each cancelled after a random delay
    spread over 0..1.5x a call's ``duration`` (half by task.cancel(), half by
    asyncio.timeout); (the delays as fractions of ``duration``, calls that
    finished first).  With the client's ``core``, every fourth batch starts
    with the router key forgotten, so that cancels also land in its fetch."""
    fractions: list[float] = []
    finished = 0

    async def one(i: int) -> None:
        nonlocal finished
        fraction = rng.uniform(0.0, 1.5)
        fractions.append(fraction)
        marker = f"cancel-{i}"
        if i % 2:
            task = asyncio.ensure_future(call(marker))
            await asyncio.sleep(fraction * duration)
            task.cancel()
            try:
                answer = await task
            except asyncio.CancelledError:
                return
        else:
            try:
                async with asyncio.timeout(fraction * duration):
                    answer = await call(marker)
            except TimeoutError:
                return
        assert content(answer) == marker
        finished += 1

    for start in range(0, count, BATCH):
        if core is not None and start % (4 * BATCH) == 0:
            core.router = None
        await asyncio.gather(*(one(i) for i in range(start, min(start + BATCH, count))))
    return fractions, finished


def spread(fractions: list[float]) -> str:
    q = statistics.quantiles(fractions, n=4)
    low, high = min(fractions), max(fractions)
    return f"min {low:.2f} q1 {q[0]:.2f} median {q[1]:.2f} q3 {q[2]:.2f} max {high:.2f}"


async def call_duration(call: Any) -> float:
    """The median time a call takes when BATCH run at once."""
    times = []

    async def timed(marker: str) -> None:
        start = time.monotonic()
        assert content(await call(marker)) == marker
        times.append(time.monotonic() - start)

    for round_ in range(4):
        await asyncio.gather(*(timed(f"warm-{round_}-{i}") for i in range(BATCH)))
    return statistics.median(times)


def test_random_cancellations_leave_the_async_client_whole(
    server: Endpoint, key_dir: Path, noise: Noise, no_gc: None
) -> None:
    rng = random.Random(1313)  # noqa: S311 - reproducible test delays

    async def go() -> None:
        asyncio.get_running_loop().set_exception_handler(noise.loop)
        baseline = open_fds()  # the event loop's own fds counted
        client = nomyo.SecureChatCompletion(
            server.url, api_key=API_KEY, verify=str(server.ca), key_dir=key_dir, max_retries=0
        )

        async def call(marker: str) -> dict[str, Any]:
            return await client.create("echo", messages(marker))

        duration = await call_duration(call)
        fractions, finished = await cancel_at_random(call, duration, CANCELLED, rng, client._core)
        print(
            f"\nasync: {CANCELLED} calls cancelled at {spread(fractions)}"
            f" x {duration * 1000:.0f} ms (a call's median); {finished} finished first"
        )
        assert CANCELLED - finished >= CANCELLED // 4, "too few cancels landed inside a call"
        # the same client answers, concurrently too
        answers = await asyncio.gather(*(call(f"after-{i}") for i in range(BATCH)))
        assert [content(a) for a in answers] == [f"after-{i}" for i in range(BATCH)]
        busy, requests, extra, idle = await settled(pools(client), baseline)
        print(f"async: pools {busy} stuck, {requests} queued, {idle} idle; fds +{extra}")
        assert (busy, requests, extra) == (0, 0, 0)
        await client.aclose()
        await asyncio.sleep(0.05)
        assert open_fds() == baseline

    asyncio.run(go())


def test_random_timeouts_leave_the_sync_client_whole(
    server: Endpoint, key_dir: Path, noise: Noise
) -> None:
    # a sync call is never cancelled, it times out: at 0.25 .. 1.5 x the
    # median call under the same load (8 threads on one client), the cut
    # lands in every phase of a call
    gc.collect()  # sockets an earlier test left to the collector
    baseline = open_fds()
    options: dict[str, Any] = dict(
        api_key=API_KEY, verify=str(server.ca), key_dir=key_dir, max_retries=0
    )
    latencies: list[float] = []
    outcomes = {"timed out": 0, "answered": 0}
    counting = threading.Lock()

    def worker(client: Any, name: str, calls: int) -> None:
        for i in range(calls):
            marker = f"{name}-{i}"
            start = time.monotonic()
            try:
                answer = content(client.create("echo", messages(marker)))
            except nomyo.APITimeoutError:
                outcome = "timed out"
            else:
                assert answer == marker
                outcome = "answered"
            with counting:
                outcomes[outcome] += 1
                latencies.append(time.monotonic() - start)

    def load(client: Any, name: str, calls: int) -> None:
        threads = [
            threading.Thread(target=worker, args=(client, f"{name}-{t}", calls // 8))
            for t in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    with nomyo.SyncSecureChatCompletion(server.url, **options) as probe:
        load(probe, "warm", 80)
    assert outcomes == {"timed out": 0, "answered": 80}
    duration = statistics.median(latencies)
    outcomes.update({"timed out": 0, "answered": 0})
    fractions = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    clients = []
    for fraction in fractions:
        client = nomyo.SyncSecureChatCompletion(
            server.url, **{**options, "timeout": fraction * duration}
        )
        clients.append(client)
        load(client, f"sync-{fraction}", CANCELLED // len(fractions))
    print(f"\nsync: {outcomes}, timeouts {fractions} x {duration * 1000:.0f} ms")
    assert outcomes["timed out"] >= CANCELLED // 4
    done = sum(outcomes.values())
    assert done == len(fractions) * 8 * (CANCELLED // len(fractions) // 8), "a worker failed"
    for client in clients:
        assert held(pools(client))[:2] == (0, 0)
    # the same clients answer again. How soon a client with a tight timeout
    # answers depends on the machine's load, not on the client: a timeout
    # that lands before the answer is read drops the connection, so the next
    # try connects again (CI once saw 0.25 x 13 ms never answer in 100 tries;
    # under heavier load a fresh client's cold call outgrew the loaded median
    # in 8 of 13 runs). So each client first tries a few times with its own
    # timeout, where it may only answer or time out; then its timeout is
    # raised in place (the same pools, key pair, router key and replay
    # memory) and it must answer: whatever the timeouts left behind in them
    # would fail here.
    for fraction, client in zip(fractions, clients, strict=True):
        for _ in range(5):
            try:
                assert content(client.create("echo", messages("again"))) == "again"
                break
            except nomyo.APITimeoutError:
                continue
        client._core.config = client._core.config.changed(timeout=30)
        assert content(client.create("echo", messages("at last"))) == "at last", fraction
    idle = sum(held(pools(client))[2] for client in clients)
    assert open_fds() - baseline == idle, "a socket beyond the pooled idle connections"
    for client in clients:
        client.close()
    gc.collect()
    assert open_fds() == baseline


# ---------------------------------------------------------------- the key pair


@pytest.fixture
def held_keygen(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """The key thread waits for the returned event before it makes the pair:
    a 4096-bit pair takes anywhere from ~30 ms to seconds, so a test that
    needs the race (a call timing out while the pair is still being made)
    holds the thread rather than hoping it is slow (CI once saw the pair
    ready within a 50 ms timeout). Released at teardown in any case."""
    release = threading.Event()
    real = _keys.generate_private_key

    def generate(*args: Any, **kwargs: Any) -> Any:
        assert release.wait(120), "the test never let the key thread go on"
        return real(*args, **kwargs)

    monkeypatch.setattr(_keys, "generate_private_key", generate)
    try:
        yield release
    finally:
        release.set()


@pytest.mark.parametrize("how", ["one loop", "asyncio.run per call"])
def test_a_timeout_while_the_key_pair_is_made_does_not_poison_the_client(
    server: Endpoint, noise: Noise, how: str, held_keygen: threading.Event
) -> None:
    # issue 13: the first call timed out while the key thread was still at
    # work, which cancelled the shared key future: the thread died with
    # InvalidStateError on stderr and every later call raised CancelledError
    client = nomyo.SecureChatCompletion(server.url, api_key=API_KEY, verify=str(server.ca))
    future = client._core.keys._future

    async def first() -> None:
        asyncio.get_running_loop().set_exception_handler(noise.loop)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.create("echo", messages("first"))
        assert not future.cancelled(), "the timeout cancelled the shared key pair"
        assert not future.done(), "the key pair was ready: the race was not run"
        held_keygen.set()  # now the thread may finish, after the timeout

    async def later() -> str:
        asyncio.get_running_loop().set_exception_handler(noise.loop)
        return content(await client.create("echo", messages("later")))

    if how == "one loop":

        async def both() -> str:
            await first()
            return await later()

        assert asyncio.run(both()) == "later"
    else:
        asyncio.run(first())
        future.result(timeout=120)  # the thread finishes after the first loop closed
        assert asyncio.run(later()) == "later"
    assert not future.cancelled()
    asyncio.run(client.aclose())


def test_a_sync_call_waits_for_the_key_pair_no_longer_than_its_timeout(
    server: Endpoint, noise: Noise, held_keygen: threading.Event
) -> None:
    client = nomyo.SyncSecureChatCompletion(
        server.url, api_key=API_KEY, verify=str(server.ca), timeout=0.05
    )
    start = time.monotonic()
    with pytest.raises(nomyo.APITimeoutError, match="key pair"):
        client.create("echo", messages("first"))
    assert time.monotonic() - start < 1.0
    assert not client._core.keys._future.done()
    held_keygen.set()
    client._core.keys._future.result(timeout=120)
    client.close()


# ---------------------------------------------------------------- the control


def test_the_check_sees_what_plain_httpx_leaves_behind(
    server: Endpoint, noise: Noise, no_gc: None
) -> None:
    # plain httpx (httpcore 1.0.9) under the same cancellations: connections
    # stay ACTIVE in its pool for good and their sockets stay open
    context = ssl.create_default_context(cafile=str(server.ca))
    rng = random.Random(1313)  # noqa: S311 - reproducible test delays

    async def go() -> tuple[int, int, int, int]:
        baseline = open_fds()
        async with httpx.AsyncClient(verify=context, timeout=30) as client:
            url = server.url + "/v1/chat/secure_completion"

            async def call(marker: str) -> dict[str, Any]:
                await client.post(url, content=b"x" * 4096)  # a 4xx answer: a full round trip
                return {"choices": [{"message": {"content": marker}}]}

            duration = await call_duration(call)
            await cancel_at_random(call, duration, CANCELLED // 2, rng)
            return await settled([client._transport._pool], baseline)

    busy, requests, extra, idle = asyncio.run(go())
    print(f"\nplain httpx: {busy} stuck, {requests} left queued, fds +{extra} beyond {idle} idle")
    assert busy > 0 and requests > 0 and extra > 0


if sys.version_info < (3, 11):  # pragma: no cover - asyncio.timeout
    pytestmark = pytest.mark.skip("asyncio.timeout is 3.11+")
