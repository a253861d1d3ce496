"""One measured workload through OUR client (this repository's nomyo), or
through the floor, for benchmarks/compare_published.py; run with our venv's
interpreter::

    .venv/bin/python benchmarks/_ours_driver.py WORKLOAD --client ours-async --url URL ...

Clients (``--client``):

- ``ours-async`` / ``ours-sync``: ``nomyo.SecureChatCompletion`` /
  ``nomyo.SyncSecureChatCompletion``, one instance per process (its pool warm
  after the warm-up), ``--secure-memory on|off``;
- ``floor-sync`` / ``floor-async``: the least any client of this protocol
  spends per request (see :class:`FloorSync`), against a plain JSON echo endpoint;
- ``floor-wire-sync`` / ``floor-wire-async``: the same, sending a package
  sealed beforehand to ``nomyo serve`` itself (see :class:`FloorWireSync`).

Prints one JSON line, measured by the harness in ``_published_driver.py`` (the
same code that measures the published client).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import ssl
import urllib.parse
from collections.abc import Callable
from typing import Any

import httpx
from _published_driver import (
    MODEL,
    WARMUP,
    AsyncAdapter,
    Probe,
    check,
    info,
    main,
    parser,
    run_async,
    text_of,
)
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

import nomyo
from nomyo._constants import COMPLETION_PATH

# ---------------------------------------------------------------- sync workloads
# the same four as the async ones in _published_driver.py, for blocking clients


class SyncAdapter:
    def make(self) -> Any:
        raise NotImplementedError

    def call(self, client: Any, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def close(self, client: Any) -> None:
        client.close()


def sequential(adapter: SyncAdapter, n: int, size: int) -> dict[str, Any]:
    text = text_of(size)
    client = adapter.make()
    for _ in range(WARMUP):
        check(adapter.call(client, text), text)
    with Probe() as probe:
        for _ in range(n):
            check(adapter.call(client, text), text)
    adapter.close(client)
    return {"n": n, "size": size, **probe.fields()}


def inflight(adapter: SyncAdapter, n: int, size: int, concurrency: int) -> dict[str, Any]:
    """``concurrency`` threads sharing one client (it is thread-safe)."""
    text = text_of(size)
    client = adapter.make()
    for _ in range(WARMUP):
        check(adapter.call(client, text), text)
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for answer in pool.map(lambda _: adapter.call(client, text), range(concurrency)):
            check(answer, text)
        with Probe() as probe:
            for answer in pool.map(lambda _: adapter.call(client, text), range(n)):
                check(answer, text)
    adapter.close(client)
    return {"n": n, "size": size, "concurrency": concurrency, **probe.fields()}


def big(adapter: SyncAdapter, size: int) -> dict[str, Any]:
    client = adapter.make()
    small = text_of(1024)
    check(adapter.call(client, small), small)
    text = text_of(size)
    with Probe() as probe:
        answer = adapter.call(client, text)
    check(answer, text)
    del answer
    adapter.close(client)
    return {"size": size, **probe.fields()}


def first(adapter: SyncAdapter, size: int) -> dict[str, Any]:
    text = text_of(size)
    with Probe() as probe:
        client = adapter.make()
        answer = adapter.call(client, text)
    check(answer, text)
    adapter.close(client)
    return {"size": size, **probe.fields()}


def run_sync(args: argparse.Namespace, adapter: SyncAdapter) -> dict[str, Any]:
    workloads: dict[str, Callable[[], dict[str, Any]]] = {
        "sequential": lambda: sequential(adapter, args.n, args.size),
        "inflight": lambda: inflight(adapter, args.n, args.size, args.concurrency),
        "big": lambda: big(adapter, args.size),
        "first": lambda: first(adapter, args.size),
    }
    if args.workload not in workloads:
        raise ValueError(f"unknown workload {args.workload!r}")
    return workloads[args.workload]()


# ---------------------------------------------------------------- our client


def _messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "api_key": args.api_key,
        "verify": args.ca,
        "secure_memory": args.secure_memory == "on",
        "key_dir": args.key_dir,
        "max_retries": 0,  # as the published client is run
    }


class OursAsync(AsyncAdapter):
    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args

    def make(self) -> Any:
        return nomyo.SecureChatCompletion(self._args.url, **_options(self._args))

    async def call(self, client: Any, text: str) -> dict[str, Any]:
        return await client.create(model=MODEL, messages=_messages(text))  # type: ignore[no-any-return]

    async def close(self, client: Any) -> None:
        await client.aclose()


class OursSync(SyncAdapter):
    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args

    def make(self) -> Any:
        return nomyo.SyncSecureChatCompletion(self._args.url, **_options(self._args))

    def call(self, client: Any, text: str) -> dict[str, Any]:
        return client.create(model=MODEL, messages=_messages(text))  # type: ignore[no-any-return]


# ---------------------------------------------------------------- the floor

_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class FloorSync(SyncAdapter):
    """The floor of a request: what any client of this protocol must spend.

    One pooled ``httpx.Client`` POST of the same chat request JSON to a plain
    JSON echo endpoint (``--url``: another process, same TLS certificate),
    ``response.json()``, then one RSA-4096 OAEP decryption with the client's
    key (unwrapping the answer's AES key) and one RSA-OAEP encryption to a
    2048-bit router key (wrapping the request's).  Left out, as small next
    to these: AES-GCM, base64 and the package framing, and the ~0.9 KiB
    X-Public-Key header.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        with open(os.path.join(args.key_dir, "private_key.pem"), "rb") as pem:
            key = serialization.load_pem_private_key(pem.read(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        self.private_key = key
        self.router = rsa.generate_private_key(65537, 2048).public_key()
        # RSA decryption costs the same whatever the ciphertext: one is enough
        self.wrapped = key.public_key().encrypt(os.urandom(32), _OAEP)
        self.url = args.url.rstrip("/") + "/v1/chat/completions"
        self.ca = args.ca

    def crypto(self) -> None:
        aes_key = self.private_key.decrypt(self.wrapped, _OAEP)
        self.router.encrypt(aes_key, _OAEP)

    def make(self) -> Any:
        return httpx.Client(verify=ssl.create_default_context(cafile=self.ca), timeout=60)

    def call(self, client: Any, text: str) -> dict[str, Any]:
        response = client.post(self.url, json={"model": MODEL, "messages": _messages(text)})
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        self.crypto()
        return answer


class FloorWireSync(FloorSync):
    """:class:`FloorSync` speaking the protocol to ``nomyo serve`` itself, so
    the endpoint, its latency and the bytes on the wire are exactly what our
    client gets: each POST sends one package sealed beforehand (the router
    keeps no memory of packages, so the same one serves every request), with
    the real headers, and reads the sealed answer as bytes.  What the floor
    leaves out is then precisely what nomyo adds: serializing, AES-GCM,
    base64, the package JSON, secure memory and wiping.  The answer is not
    opened (that is nomyo's work); the warm-up opens the first ones with
    nomyo to check the endpoint really echoes, and every measured answer
    must be a 200 at least as long as the prompt.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        from nomyo import _hybrid, _keys

        super().__init__(args)
        context = ssl.create_default_context(cafile=self.ca)
        base = args.url.rstrip("/")
        with httpx.Client(verify=context) as client:
            router = _keys.load_public_key(client.get(base + "/pki/public_key").content)
        self.router = router  # the OAEP encryption of the floor goes to the real key
        self.url = base + COMPLETION_PATH
        self.text = text_of(args.size)
        request = {"model": MODEL, "messages": _messages(self.text)}
        self.package = _hybrid.seal_json(request, router)
        public = _keys.public_pem(self.private_key).decode("ascii")
        self.headers = {
            "Content-Type": "application/octet-stream",
            "X-Payload-ID": "3f1c6a52-6d0e-4d2e-9a43-2b7f3f0c9d11",
            "X-Public-Key": urllib.parse.quote(public),
            "Authorization": f"Bearer {args.api_key}",
        }
        self.checked = 0

    def call(self, client: Any, text: str) -> dict[str, Any]:
        response = client.post(self.url, content=self.package, headers=self.headers)
        return self.answer(response, text)

    def answer(self, response: httpx.Response, text: str) -> dict[str, Any]:
        """The floor's work on an answer: the RSA pair, and a size check."""
        response.raise_for_status()
        body = response.content
        self.crypto()
        if len(body) < len(text):
            raise RuntimeError(f"an answer of {len(body)} bytes cannot echo {len(text)}")
        if self.checked < WARMUP:  # the warm-up: open it for real, outside the measurement
            from nomyo import _hybrid

            self.checked += 1
            return _hybrid.open_json(body, self.private_key)  # type: ignore[no-any-return]
        return {"choices": [{"message": {"content": text}}]}


class FloorWireAsync(AsyncAdapter):
    """:class:`FloorWireSync` with a pooled ``httpx.AsyncClient``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._sync = FloorWireSync(args)

    def make(self) -> Any:
        return httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=self._sync.ca), timeout=60
        )

    async def call(self, client: Any, text: str) -> dict[str, Any]:
        wire = self._sync
        response = await client.post(wire.url, content=wire.package, headers=wire.headers)
        return wire.answer(response, text)

    async def close(self, client: Any) -> None:
        await client.aclose()


class FloorAsync(AsyncAdapter):
    """:class:`FloorSync` with a pooled ``httpx.AsyncClient``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._sync = FloorSync(args)

    def make(self) -> Any:
        return httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=self._sync.ca), timeout=60
        )

    async def call(self, client: Any, text: str) -> dict[str, Any]:
        response = await client.post(
            self._sync.url, json={"model": MODEL, "messages": _messages(text)}
        )
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        self._sync.crypto()
        return answer

    async def close(self, client: Any) -> None:
        await client.aclose()


# ---------------------------------------------------------------- offline: no sockets


def offline(args: argparse.Namespace) -> dict[str, Any]:
    """``sequential`` with the network taken out: the client's pool is an
    ``httpx.MockTransport`` handing out answers made beforehand (sealed to
    our key, for ``ours-sync``; the plain echo JSON, for ``floor-sync``), so
    the CPU time is the client's own code, httpx's and the RSA work, with
    no sockets, no TLS and no waiting, the noisiest parts of the other runs.
    """
    from nomyo import _hybrid
    from nomyo.server import echo_completion

    text = text_of(args.size)
    request = {"model": MODEL, "messages": _messages(text)}
    answer = echo_completion(request)
    floor = FloorSync(args)
    client: Any
    if args.client == "ours-sync":
        public = floor.private_key.public_key()
        ready = [
            _hybrid.seal_json(answer, public, processed_at=1) for _ in range(args.n + WARMUP)
        ]  # a fresh package each: the client refuses replays
        router_pem = serialization.Encoding.PEM
        pem = floor.router.public_bytes(router_pem, serialization.PublicFormat.SubjectPublicKeyInfo)
        answers = iter(ready)

        def handler(request: httpx.Request) -> httpx.Response:
            if request.method == "GET":
                return httpx.Response(200, content=pem)
            return httpx.Response(200, content=next(answers))

        client = nomyo.SyncSecureChatCompletion(
            "https://router.invalid",
            api_key=args.api_key,
            key_dir=args.key_dir,
            max_retries=0,
            secure_memory=args.secure_memory == "on",
        )
        engine = client._engine
        engine._http().close()
        engine._transport._http = httpx.Client(transport=httpx.MockTransport(handler))

        def call() -> dict[str, Any]:
            return client.create(model=MODEL, messages=_messages(text))  # type: ignore[no-any-return]

    else:
        body = json.dumps(answer).encode()
        floor.url = "https://router.invalid/v1/chat/completions"
        client = httpx.Client(
            transport=httpx.MockTransport(lambda request: httpx.Response(200, content=body))
        )

        def call() -> dict[str, Any]:
            return floor.call(client, text)

    for _ in range(WARMUP):
        check(call(), text)
    with Probe() as probe:
        for _ in range(args.n):
            check(call(), text)
    client.close()
    return {"n": args.n, "size": args.size, **probe.fields()}


# ---------------------------------------------------------------- command line

ADAPTERS: dict[str, Callable[[argparse.Namespace], AsyncAdapter | SyncAdapter]] = {
    "ours-async": OursAsync,
    "ours-sync": OursSync,
    "floor-sync": FloorSync,
    "floor-async": FloorAsync,
    "floor-wire-sync": FloorWireSync,
    "floor-wire-async": FloorWireAsync,
}


def _run_ours(args: argparse.Namespace) -> dict[str, Any]:
    head = {"client": args.client, "secure_memory": args.secure_memory}
    if args.workload == "info":
        return {**head, **info(args, "nomyo"), "protection": nomyo.protection().backend}
    if args.workload == "offline":
        return {**head, **offline(args)}
    adapter = ADAPTERS[args.client](args)
    if isinstance(adapter, AsyncAdapter):
        return {**head, **run_async(args, adapter)}
    return {**head, **run_sync(args, adapter)}


def _parser() -> argparse.ArgumentParser:
    p = parser()
    p.add_argument("--client", choices=sorted(ADAPTERS), default="ours-async")
    p.add_argument("--secure-memory", choices=("on", "off"), default="on")
    return p


if __name__ == "__main__":
    main(_run_ours, _parser())
