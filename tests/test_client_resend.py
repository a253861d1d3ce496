"""No automatic resend of a request the router may have received in full
(issue 13), and retries where nothing was sent.

A router that reads the whole POST and then drops the connection (a plain
close: httpx.RemoteProtocolError; a reset: httpx.ReadError) sees exactly one
POST, and the caller gets APIConnectionError.  A router that refuses
connections (nothing listening: httpx.ConnectError) is retried, and a call
made while it restarts succeeds.  Sync and async.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import nomyo
from nomyo import _keys
from tests.faults import FaultRouter, stop_listening
from tests.test_client_hostile_answers import key_dir

__all__ = ["key_dir"]


class DroppingRouter:
    """Serves the router key; reads each POST in full (headers and
    Content-Length bytes), counts it, and drops the connection unanswered."""

    def __init__(self, tls: dict[str, Path], key: rsa.RSAPrivateKey, *, reset: bool) -> None:
        self.pem = _keys.public_pem(key)
        self.reset = reset
        self.posts = 0
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(tls["cert"]), str(tls["key"]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = False
        self._acceptor = threading.Thread(target=self._serve, daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self.stopped:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(raw,), daemon=True).start()

    def _connection(self, raw: socket.socket) -> None:
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                while len(buffer) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                buffer = buffer[length:]
                if lines[0].startswith("GET"):
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                        + f"content-length: {len(self.pem)}\r\n\r\n".encode()
                        + self.pem
                    )
                    continue
                self.posts += 1  # the whole request is here: drop it unanswered
                if self.reset:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopped = True
        stop_listening(self.listener, self._acceptor)


@pytest.fixture(params=["close", "reset"])
def dropping(
    request: pytest.FixtureRequest, tls: dict[str, Path], fault_key: rsa.RSAPrivateKey
) -> Iterator[DroppingRouter]:
    router = DroppingRouter(tls, fault_key, reset=request.param == "reset")
    yield router
    router.stop()


def call(kind: str, url: str, **options: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "once"}]
    if kind == "sync":
        with nomyo.SyncSecureChatCompletion(url, **options) as client:
            return client.create("echo", messages)

    async def go() -> dict[str, Any]:
        async with nomyo.SecureChatCompletion(url, **options) as client:
            return await client.create("echo", messages)

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_request_the_router_read_in_full_is_not_sent_again(
    dropping: DroppingRouter, tls: dict[str, Path], key_dir: Path, kind: str
) -> None:
    with pytest.raises(nomyo.APIConnectionError) as info:
        call(kind, dropping.url, verify=str(tls["ca"]), key_dir=key_dir, max_retries=3)
    assert not isinstance(info.value, nomyo.APITimeoutError)
    time.sleep(0.2)  # a resend would have arrived by now
    assert dropping.posts == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_router_that_refuses_connections_is_tried_again(
    router: FaultRouter,
    tls: dict[str, Path],
    key_dir: Path,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    messages = [{"role": "user", "content": "again"}]
    options: dict[str, Any] = dict(verify=str(tls["ca"]), key_dir=key_dir, max_retries=2)
    patient = {**options, "max_retries": 6}

    def steps(first: Any, refused: Any, back: Any) -> None:
        assert first()["choices"][0]["message"]["content"] == "again"  # router key cached
        router.stop()  # nothing listens: every attempt is refused, each one retried
        with caplog.at_level(logging.INFO, logger="nomyo"):
            with pytest.raises(nomyo.APIConnectionError, match="connection refused"):
                refused()
        retries = [r for r in caplog.records if "retrying after APIConnectionError" in r.message]
        assert len(retries) == 2
        # a router back while the client retries gets the request, once
        threading.Timer(0.3, router.start).start()
        assert back()["choices"][0]["message"]["content"] == "again"
        assert len(router.posts) == 2

    if kind == "sync":
        with (
            nomyo.SyncSecureChatCompletion(router.url, **options) as client,
            nomyo.SyncSecureChatCompletion(router.url, **patient) as other,
        ):
            other._core.router = client._core.router  # the key, fetched once

            def first() -> Any:
                answer = client.create("echo", messages)
                other._core.router = client._core.router
                return answer

            steps(
                first,
                lambda: client.create("echo", messages),
                lambda: other.create("echo", messages),
            )
        return

    async def go() -> None:
        async with (
            nomyo.SecureChatCompletion(router.url, **options) as client,
            nomyo.SecureChatCompletion(router.url, **patient) as other,
        ):
            loop = asyncio.get_running_loop()

            def run(c: Any) -> Any:
                return asyncio.run_coroutine_threadsafe(c.create("echo", messages), loop).result()

            def first() -> Any:
                answer = run(client)
                other._core.router = client._core.router
                return answer

            await asyncio.to_thread(steps, first, lambda: run(client), lambda: run(other))

    asyncio.run(go())
