"""A protocol 1.0 router for tests that misbehaves on request.

It runs in-process (uvicorn in a thread) over TLS, counts what it sees
(connections, key fetches, POSTs with their headers and decrypted bodies) and
answers each POST with the next behaviour in ``script`` (then plain echo)::

    router.script = [status(429, retry_after="1"), ok()]
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nomyo import SecurityError, _hybrid, _keys
from nomyo.server import echo_completion


@dataclass
class Post:
    """One POST as the router saw it."""

    headers: dict[str, str]
    request: dict[str, Any] | None  # decrypted, None when it did not open
    client_key: rsa.RSAPublicKey | None
    connection: tuple[str, int]


@dataclass
class Ctx:
    router: FaultRouter
    post: Post

    def answer(self, **metadata: Any) -> dict[str, Any]:
        assert self.post.request is not None
        answer = echo_completion(self.post.request)
        answer["_metadata"] = {"payload_id": self.post.headers.get("x-payload-id"), **metadata}
        return answer

    def seal(self, answer: dict[str, Any]) -> bytes:
        assert self.post.client_key is not None
        return _hybrid.seal_json(answer, self.post.client_key, processed_at=int(time.time()))


Behaviour = Callable[[Ctx], Any]


def ok() -> Behaviour:
    def run(ctx: Ctx) -> Response:
        body = ctx.seal(ctx.answer())
        ctx.router.last_answer = body
        return Response(body, media_type="application/json")

    return run


def attested(value: Any) -> Behaviour:
    """An echo answer whose _metadata carries ``tpm_attestation=value``."""

    def run(ctx: Ctx) -> Response:
        return Response(ctx.seal(ctx.answer(tpm_attestation=value)), media_type="application/json")

    return run


def status(code: int, *, retry_after: str | None = None, body: Any = None) -> Behaviour:
    def run(ctx: Ctx) -> Response:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        content = {"detail": f"status {code} on purpose"} if body is None else body
        if isinstance(content, bytes):
            return Response(content, status_code=code, headers=headers)
        return JSONResponse(content, status_code=code, headers=headers)

    return run


def slow(seconds: float, then: Behaviour | None = None) -> Behaviour:
    async def run(ctx: Ctx) -> Response:
        await asyncio.sleep(seconds)
        return (then or ok())(ctx)  # type: ignore[no-any-return]

    return run


def huge(size: int) -> Behaviour:
    def run(ctx: Ctx) -> Response:
        return Response(b"x" * size, media_type="application/json")

    return run


def tampered_tag() -> Behaviour:
    def run(ctx: Ctx) -> Response:
        package = json.loads(ctx.seal(ctx.answer()))
        tag = bytearray(base64.b64decode(package["encrypted_payload"]["tag"]))
        tag[5] ^= 0x10
        package["encrypted_payload"]["tag"] = base64.b64encode(bytes(tag)).decode()
        return Response(json.dumps(package).encode(), media_type="application/json")

    return run


def wrong_payload_id() -> Behaviour:
    def run(ctx: Ctx) -> Response:
        answer = ctx.answer()
        answer["_metadata"]["payload_id"] = str(uuid.uuid4())
        return Response(ctx.seal(answer), media_type="application/json")

    return run


def replay() -> Behaviour:
    """The last good answer, byte for byte, again."""

    def run(ctx: Ctx) -> Response:
        assert ctx.router.last_answer is not None, "nothing to replay yet"
        return Response(ctx.router.last_answer, media_type="application/json")

    return run


def sealed_to_another_key() -> Behaviour:
    def run(ctx: Ctx) -> Response:
        other = _keys.generate_private_key(2048).public_key()
        return Response(_hybrid.seal_json(ctx.answer(), other), media_type="application/json")

    return run


def not_a_package(body: bytes = b'{"version": "1.0"}') -> Behaviour:
    def run(ctx: Ctx) -> Response:
        return Response(body, media_type="application/json")

    return run


@dataclass
class FaultRouter:
    tls: dict[str, Path]
    key: rsa.RSAPrivateKey = field(default_factory=lambda: _keys.generate_private_key(2048))
    port: int = 0
    script: list[Behaviour] = field(default_factory=list)
    key_fetches: int = 0
    posts: list[Post] = field(default_factory=list)
    connections: set[tuple[str, int]] = field(default_factory=set)
    last_answer: bytes | None = None

    def __post_init__(self) -> None:
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def fingerprint(self) -> str:
        return _keys.fingerprint(self.key)

    def _app(self) -> Starlette:
        async def public_key(request: Request) -> Response:
            self._seen(request)
            self.key_fetches += 1
            return Response(_keys.public_pem(self.key), media_type="text/plain")

        async def completion(request: Request) -> Response:
            connection = self._seen(request)
            body = await request.body()
            try:
                client_key = _keys.load_public_key(
                    __import__("urllib.parse").parse.unquote(request.headers["x-public-key"])
                )
                chat = _hybrid.open_json(body, self.key)
            except (KeyError, ValueError, SecurityError):
                self.posts.append(Post(dict(request.headers), None, None, connection))
                return JSONResponse({"detail": "invalid encrypted package"}, status_code=400)
            post = Post(dict(request.headers), chat, client_key, connection)
            self.posts.append(post)
            behaviour = self.script.pop(0) if self.script else ok()
            result = behaviour(Ctx(self, post))
            if asyncio.iscoroutine(result):
                result = await result
            return result  # type: ignore[no-any-return]

        return Starlette(
            routes=[
                Route("/pki/public_key", public_key, methods=["GET"]),
                Route("/v1/chat/secure_completion", completion, methods=["POST"]),
            ]
        )

    def _seen(self, request: Request) -> tuple[str, int]:
        assert request.client is not None
        connection = (request.client.host, request.client.port)
        self.connections.add(connection)
        return connection

    def start(self) -> None:
        config = uvicorn.Config(
            self._app(),
            host="127.0.0.1",
            port=self.port,
            ssl_certfile=str(self.tls["cert"]),
            ssl_keyfile=str(self.tls["key"]),
            log_level="warning",
            lifespan="off",
            # the tests count connections: a loaded machine's pause between
            # two calls must not let uvicorn's 5 s default close one
            timeout_keep_alive=60,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fault router did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Stop at once, as a crashing or restarting router does: without
        waiting for idle keep-alive connections (uvicorn would otherwise wait
        for each TLS peer's close_notify, which an idle pool never sends)."""
        if self._server is not None and self._thread is not None:
            self._server.force_exit = True
            self._server.should_exit = True
            self._thread.join(10)
        self._server = self._thread = None

    def restart(self, key: rsa.RSAPrivateKey | None = None) -> None:
        """Stop, then serve again on the same port, with a new key if given."""
        self.stop()
        if key is not None:
            self.key = key
        for _ in range(50):  # the port may linger a moment
            try:
                self.start()
                return
            except (RuntimeError, OSError, SystemExit):
                time.sleep(0.1)
        raise RuntimeError(f"could not restart on port {self.port}")


def stop_listening(listener: socket.socket, acceptor: threading.Thread) -> None:
    """Close ``listener`` and wait for the thread blocked in its ``accept()``.
    A close alone leaves that thread in ``accept()`` on the fd number, which a
    later test's listener may get: a paused process (SIGSTOP) was seen to
    hand the next test's connections to the old router. ``shutdown`` wakes
    the ``accept()`` first."""
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    acceptor.join(10)
    assert not acceptor.is_alive(), "the accept thread did not end"
