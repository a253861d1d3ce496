"""Hostile routers: stalling answers.

The contract (see test_client_hostile_answers.py): never a hang.  Covered:
stalling routers, sync and async (a raw TLS server, as uvicorn cannot
trickle headers): the body stops midway, the body trickles a byte at a
time, the headers trickle, the router key trickles (for create() and for
fetch_server_public_key()).  A stall ends, after STALL seconds, with a
valid answer, so a client that ignored its ``timeout`` would get it: the
APITimeoutError, with the stalled part never sent in full, proves the
deadline held; a thread join far above the timeout catches a hang.  The
control: the same router stalling briefly gives the true answer.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import nomyo
from nomyo import _hybrid, _keys
from nomyo.server import echo_completion
from tests.faults import stop_listening
from tests.test_client_faults import MODEL, content, messages
from tests.test_client_hostile_answers import PROMPT, attempt, key_dir

__all__ = ["key_dir"]  # the fixture, shared with test_client_hostile_answers.py

# ---------------------------------------------------------------- stalling routers

TICK = 0.05  # seconds between trickled bytes: each read completes well within the timeout
STALL = 5.0  # how long a stall lasts before the router completes a valid answer
TIMEOUT = 0.5  # the client's timeout for a whole call


class StallingRouter:
    """A raw TLS HTTP/1.1 router (uvicorn cannot trickle headers) that speaks
    protocol 1.0 but stalls one part of its answer, as ``mode`` says, for
    ``stall`` seconds, and then completes it with a valid answer:

    * ``body-pause``: the first 100 bytes of the body, then nothing;
    * ``body-trickle``: the body one byte every TICK;
    * ``headers``: an endless-looking header, one byte every TICK;
    * ``key``: the router's public key one byte every TICK.
    """

    def __init__(self, tls: dict[str, Path], key: rsa.RSAPrivateKey, mode: str, stall: float):
        self.key, self.mode, self.stall = key, mode, stall
        self.completed: list[str] = []  # what was sent in full
        self.hung_up: list[str] = []  # what the client stopped reading
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(str(tls["cert"]), str(tls["key"]))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def close(self) -> None:
        stop_listening(self._listener, self._acceptor)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            with self._tls.wrap_socket(raw, server_side=True) as conn:
                reader = conn.makefile("rb")
                while self._answer(conn, reader):
                    pass
        except (OSError, ssl.SSLError):
            pass  # the client went away

    def _answer(self, conn: ssl.SSLSocket, reader: Any) -> bool:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = reader.readline()
            if not line:
                return False
            head += line
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:] if x)
        }
        body = reader.read(int(headers.get("content-length", "0")))
        if lines[0].startswith("GET"):
            pem = _keys.public_pem(self.key)
            start = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            return self._send("key", conn, start, pem, trickle_body=self.mode == "key")
        request = _hybrid.open_json(body, self.key)
        truth = echo_completion(request)
        truth["_metadata"] = {"payload_id": headers["x-payload-id"]}
        client = _keys.load_public_key(urllib.parse.unquote(headers["x-public-key"]))
        package = _hybrid.seal_json(truth, client, processed_at=int(time.time()))
        start = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        return self._send("answer", conn, start, package, trickle_body=self.mode == "body-trickle")

    def _send(
        self, what: str, conn: ssl.SSLSocket, start: bytes, body: bytes, *, trickle_body: bool
    ) -> bool:
        try:
            head = start + b"Content-Length: %d\r\n" % len(body)
            if self.mode == "headers" and what == "answer":
                conn.sendall(head + b"X-Stall: ")
                self._trickle(conn, b"a" * len(body) * 4)  # until the stall is over
                head = b"\r\n"
            conn.sendall(head + b"\r\n")
            if trickle_body:
                body = body[self._trickle(conn, body) :]
            elif self.mode == "body-pause" and what == "answer":
                conn.sendall(body[:100])
                body = body[100:]
                time.sleep(self.stall)
            conn.sendall(body)
        except OSError:
            self.hung_up.append(what)
            raise
        self.completed.append(what)
        return True

    def _trickle(self, conn: ssl.SSLSocket, data: bytes) -> int:
        """Send ``data`` a byte per TICK until the stall is over; how much went."""
        end = time.monotonic() + self.stall
        sent = 0
        while time.monotonic() < end and sent < len(data) - 1:
            conn.sendall(data[sent : sent + 1])
            sent += 1
            time.sleep(TICK)
        return sent


def call_in_thread(call: Callable[[], Any], guard: float) -> Any:
    """``call()``'s outcome; fails if it is still running after ``guard`` seconds
    (a hang detector far above any timeout here, not a performance bound)."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(attempt(call)), daemon=True)
    thread.start()
    thread.join(guard)
    assert not thread.is_alive(), f"the client still waits after {guard} s: it hangs"
    return box[0]


def one_call(
    kind: str, url: str, tls: dict[str, Path], key_dir: Path, timeout: float, what: str = "create"
) -> Callable[[], Any]:
    """A fresh client of ``kind`` making one ``create()`` (or fetching the router key)."""
    options: dict[str, Any] = dict(
        verify=str(tls["ca"]), key_dir=key_dir, timeout=timeout, max_retries=2
    )
    if kind == "sync":

        def sync() -> Any:
            with nomyo.SyncSecureChatCompletion(url, **options) as client:
                if what == "fetch-key":
                    return client.fetch_server_public_key()
                return client.create(MODEL, messages(PROMPT))

        return sync

    async def go() -> Any:
        async with nomyo.SecureChatCompletion(url, **options) as client:
            if what == "fetch-key":
                return await client.client.fetch_server_public_key()
            return await client.create(MODEL, messages(PROMPT))

    return lambda: asyncio.run(go())


STALLS = ["body-pause", "body-trickle", "headers", "key"]


@pytest.mark.parametrize("mode", STALLS)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stalling_router_ends_in_a_timeout(
    tls: dict[str, Path], fault_key: rsa.RSAPrivateKey, key_dir: Path, kind: str, mode: str
) -> None:
    stalling = StallingRouter(tls, fault_key, mode, STALL)
    try:
        outcome = call_in_thread(one_call(kind, stalling.url, tls, key_dir, TIMEOUT), STALL + 30)
    finally:
        stalling.close()

    # a client that waited out the stall would have got the answer instead
    assert isinstance(outcome, nomyo.APITimeoutError), repr(outcome)
    stalled = "key" if mode == "key" else "answer"
    assert stalled not in stalling.completed


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_trickled_router_key_ends_fetch_server_public_key_in_a_timeout(
    tls: dict[str, Path], fault_key: rsa.RSAPrivateKey, key_dir: Path, kind: str
) -> None:
    stalling = StallingRouter(tls, fault_key, "key", STALL)
    try:
        call = one_call(kind, stalling.url, tls, key_dir, TIMEOUT, what="fetch-key")
        outcome = call_in_thread(call, STALL + 30)
    finally:
        stalling.close()

    assert isinstance(outcome, nomyo.APITimeoutError), repr(outcome)
    assert stalling.completed == []
    # the control: a short trickle gives the key
    stalling = StallingRouter(tls, fault_key, "key", 0.3)
    try:
        call = one_call(kind, stalling.url, tls, key_dir, 30, what="fetch-key")
        assert call_in_thread(call, 60) == _keys.public_pem(fault_key).decode()
    finally:
        stalling.close()


@pytest.mark.parametrize("mode", STALLS)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_short_stall_within_the_timeout_gives_the_answer(
    tls: dict[str, Path], fault_key: rsa.RSAPrivateKey, key_dir: Path, kind: str, mode: str
) -> None:
    # the control: the same router, stalling briefly, completes a true answer
    stalling = StallingRouter(tls, fault_key, mode, 0.3)
    try:
        outcome = call_in_thread(one_call(kind, stalling.url, tls, key_dir, 30), 60)
    finally:
        stalling.close()

    assert not isinstance(outcome, BaseException), repr(outcome)
    assert content(outcome) == PROMPT
    # the router thread notes a part as sent after its last sendall(), which
    # can be after the client has read it and returned: give it a moment
    deadline = time.monotonic() + 10
    while len(stalling.completed) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stalling.completed == ["key", "answer"]
    assert stalling.hung_up == []
