"""One chat request end to end through a real ``nomyo serve``, beside the transport floor.

Per module, two servers run as subprocesses on 127.0.0.1, over TLS with the same
trustme certificate: ``python -m nomyo serve --port 0`` (built-in echo model, a 2048-bit
router key from ``--server-key``, log level warning) and ``_echo_endpoint.py``, the
transport floor: the same uvicorn + Starlette stack and the same echo model, the chat
JSON in the clear inside TLS.  The client key is 4096 bits (nomyo's default), made once
and loaded by every client from a ``key_dir``.  Every client is created once, warmed up
(router key fetched, connections open) and reused across rounds; ``max_retries=0``, so
a failure fails the benchmark instead of hiding in a retry.

Where a request's time goes on the nomyo side: the client seals (RSA-OAEP to the
2048-bit router key), the server opens it (RSA-2048 decrypt) and seals the answer to
the client's 4096-bit key in its thread pool, and the client opens that (RSA-4096
decrypt); ``bench_protocol.py``'s ``rsa-floor`` group has those four costs alone.

Groups (compare the rows inside one group):

- ``e2e-sequential``: one request with a 1 KiB prompt through ``SyncSecureChatCompletion``
  against a pooled ``httpx.Client`` POSTing the same chat JSON to the echo endpoint;
- ``e2e-secure-memory``: the same request with ``secure_memory=True`` and ``False``;
- ``e2e-inflight16``: 16 concurrent requests (``asyncio.gather``) through one
  ``SecureChatCompletion``, against 16 concurrent POSTs through one ``httpx.AsyncClient``.
  An async client's pool belongs to one event loop, so the main rows run every round on
  one loop kept alive in a thread (``run_coroutine_threadsafe``; a hand-off of some
  microseconds): that is steady state, 16 pooled connections reused, as in a
  long-running service.  A third row runs each round with ``asyncio.run``, as scripts
  written for the published client do: a new loop, so a new pool and 16 fresh TLS
  handshakes every round; the difference to the first row is that reconnect.

The client and both servers share this machine's cores, so concurrent numbers say as
much about the machine as about nomyo.

Run: ``pytest benchmarks/bench_client.py --benchmark-only`` (or ``--benchmark-disable``
to run each body once as a smoke test).
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from nomyo import SecureChatCompletion, SyncSecureChatCompletion, _keys
from nomyo._constants import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE
from tests.servers import make_tls, stop_process, wait_listening

HERE = Path(__file__).resolve().parent
T = TypeVar("T")

MODEL = "echo"
PROMPT = ("Summarise the following paragraph in one sentence, please. " * 18)[:1024]
MESSAGES = [{"role": "user", "content": PROMPT}]
REQUEST = {"model": MODEL, "messages": MESSAGES}
INFLIGHT = 16


# ---------------------------------------------------------------- servers


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]
    log: Path


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *argv], stdout=subprocess.PIPE, stderr=log.open("w"), text=True
    )


def _wait_listening(process: subprocess.Popen[str], log: Path) -> Server:
    url, _lines = wait_listening(process, log)
    return Server(url, process, log)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench_client")


@pytest.fixture(scope="module")
def tls(workdir: Path) -> dict[str, Path]:
    return make_tls(workdir)


@pytest.fixture(scope="module")
def servers(workdir: Path, tls: dict[str, Path]) -> Iterator[dict[str, Server]]:
    """``nomyo serve`` and the echo endpoint, started together, stopped at module teardown."""
    router_key = workdir / "router.pem"
    _keys.save_private_key(_keys.generate_private_key(2048), router_key)
    cert = ["--certfile", str(tls["cert"]), "--keyfile", str(tls["key"])]
    serve = [
        "-m", "nomyo", "serve", "--host", "127.0.0.1", "--port", "0",
        "--server-key", str(router_key), "--log-level", "warning", *cert,
    ]  # fmt: skip
    echo = [str(HERE / "_echo_endpoint.py"), *cert]
    processes = {
        name: _spawn(argv, workdir / f"{name}.log")
        for name, argv in {"nomyo": serve, "echo": echo}.items()
    }
    try:
        yield {
            name: _wait_listening(process, workdir / f"{name}.log")
            for name, process in processes.items()
        }
    finally:
        for process in processes.values():
            stop_process(process)


@pytest.fixture(scope="module")
def key_dir(workdir: Path) -> Path:
    """One 4096-bit client key pair on disk, loaded by every client (no keygen per client)."""
    folder = workdir / "client_keys"
    key = _keys.generate_private_key(4096)
    _keys.save_private_key(key, folder / PRIVATE_KEY_FILE)
    _keys.save_public_key(key, folder / PUBLIC_KEY_FILE)
    return folder


def _check(answer: dict[str, Any]) -> None:
    assert answer["choices"][0]["message"]["content"] == PROMPT, answer


# ---------------------------------------------------------------- sync clients


@pytest.fixture(scope="module")
def sync_clients(
    servers: dict[str, Server], tls: dict[str, Path], key_dir: Path
) -> Iterator[dict[bool, SyncSecureChatCompletion]]:
    """A warmed-up SyncSecureChatCompletion per ``secure_memory`` setting."""
    clients = {
        secure: SyncSecureChatCompletion(
            servers["nomyo"].url,
            secure_memory=secure,
            key_dir=key_dir,
            verify=str(tls["ca"]),
            timeout=60,
            max_retries=0,
        )
        for secure in (True, False)
    }
    try:
        for client in clients.values():
            _check(client.chat.completions.create(model=MODEL, messages=MESSAGES))
        yield clients
    finally:
        for client in clients.values():
            client.close()


@pytest.fixture(scope="module")
def floor_client(servers: dict[str, Server], tls: dict[str, Path]) -> Iterator[httpx.Client]:
    """A pooled httpx.Client to the echo endpoint, warmed up."""
    context = ssl.create_default_context(cafile=str(tls["ca"]))
    with httpx.Client(base_url=servers["echo"].url, verify=context, timeout=60) as http:
        _check(_floor_post(http))
        yield http


def _floor_post(http: httpx.Client) -> dict[str, Any]:
    response = http.post("/v1/chat/completions", json=REQUEST)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def _sequential(benchmark: BenchmarkFixture, group: str, call: Any) -> None:
    benchmark.group = group
    _check(benchmark.pedantic(call, rounds=200, warmup_rounds=5))


def test_e2e_sequential_nomyo(
    benchmark: BenchmarkFixture, sync_clients: dict[bool, SyncSecureChatCompletion]
) -> None:
    create = sync_clients[True].chat.completions.create
    _sequential(benchmark, "e2e-sequential", lambda: create(model=MODEL, messages=MESSAGES))


def test_e2e_sequential_floor(benchmark: BenchmarkFixture, floor_client: httpx.Client) -> None:
    # baseline: the same chat JSON and answer over the same kind of TLS, nothing sealed
    _sequential(benchmark, "e2e-sequential", lambda: _floor_post(floor_client))


@pytest.mark.parametrize("secure", [True, False], ids=["secure_memory", "plain_memory"])
def test_e2e_secure_memory(
    benchmark: BenchmarkFixture,
    sync_clients: dict[bool, SyncSecureChatCompletion],
    secure: bool,
) -> None:
    create = sync_clients[secure].chat.completions.create
    _sequential(benchmark, "e2e-secure-memory", lambda: create(model=MODEL, messages=MESSAGES))


# ---------------------------------------------------------------- 16 in flight (async)


class LoopThread:
    """One event loop running in a daemon thread; ``run`` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def close(self) -> None:
        self.run(self.loop.shutdown_asyncgens())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _async_client(servers: dict[str, Server], tls: dict[str, Path], key_dir: Path) -> Any:
    return SecureChatCompletion(
        servers["nomyo"].url, key_dir=key_dir, verify=str(tls["ca"]), timeout=60, max_retries=0
    )


async def _nomyo_batch(client: SecureChatCompletion) -> list[dict[str, Any]]:
    calls = [
        client.chat.completions.create(model=MODEL, messages=MESSAGES) for _ in range(INFLIGHT)
    ]
    return await asyncio.gather(*calls)


async def _floor_batch(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    async def one() -> dict[str, Any]:
        response = await http.post("/v1/chat/completions", json=REQUEST)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    return await asyncio.gather(*(one() for _ in range(INFLIGHT)))


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    runner = LoopThread()
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def async_client(
    servers: dict[str, Server], tls: dict[str, Path], key_dir: Path, loop_thread: LoopThread
) -> Iterator[SecureChatCompletion]:
    """One SecureChatCompletion whose pool lives on ``loop_thread``'s loop, warmed up
    with one batch (so its 16 connections are open)."""
    client = _async_client(servers, tls, key_dir)
    try:
        for answer in loop_thread.run(_nomyo_batch(client)):
            _check(answer)
        yield client
    finally:
        loop_thread.run(client.aclose())


@pytest.fixture(scope="module")
def async_floor_client(
    servers: dict[str, Server], tls: dict[str, Path], loop_thread: LoopThread
) -> Iterator[httpx.AsyncClient]:
    async def make() -> httpx.AsyncClient:
        context = ssl.create_default_context(cafile=str(tls["ca"]))
        return httpx.AsyncClient(base_url=servers["echo"].url, verify=context, timeout=60)

    http = loop_thread.run(make())
    try:
        for answer in loop_thread.run(_floor_batch(http)):
            _check(answer)
        yield http
    finally:
        loop_thread.run(http.aclose())


def _inflight(benchmark: BenchmarkFixture, batch: Any, rounds: int) -> None:
    benchmark.group = f"e2e-inflight{INFLIGHT}"
    answers = benchmark.pedantic(batch, rounds=rounds, warmup_rounds=1)
    assert len(answers) == INFLIGHT
    for answer in answers:
        _check(answer)


def test_e2e_inflight_nomyo(
    benchmark: BenchmarkFixture, async_client: SecureChatCompletion, loop_thread: LoopThread
) -> None:
    _inflight(benchmark, lambda: loop_thread.run(_nomyo_batch(async_client)), rounds=40)


def test_e2e_inflight_nomyo_asyncio_run(
    benchmark: BenchmarkFixture, servers: dict[str, Server], tls: dict[str, Path], key_dir: Path
) -> None:
    # A client of its own: one whose pool moves between loops would leave the old pool
    # to the old loop.  Every round: a new loop, a new pool, 16 TLS handshakes; the pool
    # closes with its loop (asyncio.run finalizes the client's keeper generator).
    client = _async_client(servers, tls, key_dir)
    _inflight(benchmark, lambda: asyncio.run(_nomyo_batch(client)), rounds=20)


def test_e2e_inflight_floor(
    benchmark: BenchmarkFixture, async_floor_client: httpx.AsyncClient, loop_thread: LoopThread
) -> None:
    # baseline: 16 plain JSON POSTs in flight through one pooled AsyncClient, same loop
    _inflight(benchmark, lambda: loop_thread.run(_floor_batch(async_floor_client)), rounds=40)
