"""The clients against a misbehaving router (tests/faults.py), sync and async twins.

Every test runs once with ``SyncSecureChatCompletion`` and once with
``SecureChatCompletion`` (through ``asyncio.run``), via the ``api`` adapter.

Covered:

* every attempt is sealed afresh (new AES key, nonce, ciphertext), under one
  X-Payload-ID and one client key;
* retries: 429/500/502/503/504 and connection failures are retried up to
  ``max_retries``; ``max_retries=0`` sends once and maps the status to its
  exception (``detail`` as the message, ``payload_id`` as the router saw it,
  non-JSON, non-string-detail and huge error bodies too); 400/401/403/404
  are never retried;
* Retry-After: seconds (really waited) and HTTP-date; capped at 60 s;
* timeouts: a slow router past ``timeout`` -> APITimeoutError, under it -> ok;
* ``max_response_bytes`` stops a huge answer early with an APIError, with
  and without Content-Length;
* answer binding: tampered tag, another recipient and garbage are one opaque
  SecurityError; another request's answer and a replay are SecurityErrors;
* router key rotation: refetched and resent once; refused under a pin;
  a pin mismatch from the start sends nothing;
* 64 concurrent requests on one client each get their own answer, one key fetch;
* 20 sequential requests share one connection and one key fetch;
* an async client survives being used from two ``asyncio.run`` calls, and
  each loop's pool is closed when that loop ends.

Sleeps before retries are recorded (and usually skipped) by replacing
``time`` / ``asyncio`` inside ``nomyo._client`` only, never globally: the
router runs its own event loop in this process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import email.utils
import gc
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.responses import StreamingResponse

import nomyo
from nomyo import _client, _hybrid, _keys, _transport
from nomyo._constants import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, RETRY_AFTER_CAP
from tests.faults import (
    FaultRouter,
    huge,
    not_a_package,
    ok,
    replay,
    sealed_to_another_key,
    slow,
    status,
    tampered_tag,
    wrong_payload_id,
)

MODEL = "echo"

# ---------------------------------------------------------------- helpers


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def content(answer: dict[str, Any]) -> Any:
    return answer["choices"][0]["message"]["content"]


class Api:
    """One flavour of client (``kind`` is "sync" or "async") against ``router``.

    Every async call runs in its own ``asyncio.run`` and closes the client's
    pool before that loop ends; sync clients are closed at teardown.
    """

    def __init__(self, kind: str, router: FaultRouter, tls: dict[str, Path], key_dir: Path):
        self.kind = kind
        self.router = router
        self.tls = tls
        self.key_dir = key_dir
        self._clients: list[Any] = []

    def client(self, **options: Any) -> Any:
        options.setdefault("key_dir", self.key_dir)  # a 2048-bit pair: no key generation
        cls = nomyo.SyncSecureChatCompletion if self.kind == "sync" else nomyo.SecureChatCompletion
        client = cls(self.router.url, verify=str(self.tls["ca"]), **options)
        self._clients.append(client)
        return client

    def create(self, client: Any, text: str = "hello") -> dict[str, Any]:
        return self.create_all(client, [text])[0]

    def create_all(self, client: Any, texts: list[str]) -> list[dict[str, Any]]:
        """One create() per text, one after the other (one event loop for all)."""
        if self.kind == "sync":
            return [client.create(MODEL, messages(text)) for text in texts]

        async def run() -> list[dict[str, Any]]:
            try:
                return [await client.create(MODEL, messages(text)) for text in texts]
            finally:
                await client.aclose()

        return asyncio.run(run())

    def create_concurrently(self, client: Any, texts: list[str]) -> list[dict[str, Any]]:
        """All at once: asyncio.gather, or 16 threads sharing the sync client."""
        if self.kind == "sync":
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                return list(pool.map(lambda text: client.create(MODEL, messages(text)), texts))

        async def run() -> list[dict[str, Any]]:
            try:
                return list(
                    await asyncio.gather(*(client.create(MODEL, messages(t)) for t in texts))
                )
            finally:
                await client.aclose()

        return asyncio.run(run())

    def close(self) -> None:
        for client in self._clients:
            if self.kind == "sync":
                client.close()
            else:
                asyncio.run(client.aclose())


@pytest.fixture(scope="module")
def client_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("client_keys")
    key = _keys.generate_private_key(2048)
    _keys.save_private_key(key, folder / PRIVATE_KEY_FILE)
    _keys.save_public_key(key, folder / PUBLIC_KEY_FILE)
    return folder


@pytest.fixture(params=["sync", "async"])
def api(
    request: pytest.FixtureRequest,
    router: FaultRouter,
    tls: dict[str, Path],
    client_key_dir: Path,
) -> Iterator[Api]:
    adapter = Api(request.param, router, tls, client_key_dir)
    yield adapter
    adapter.close()


class _Module:
    """``module`` with some attributes replaced, for one module's global name only."""

    def __init__(self, module: ModuleType, **overrides: Any) -> None:
        self._module = module
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[float]]:
    """``sleeps(real=False)``: record the client's retry sleeps (and skip them,
    unless ``real``).  Only ``nomyo._client``'s ``time``/``asyncio`` are replaced."""

    def install(real: bool = False) -> list[float]:
        recorded: list[float] = []

        def sync_sleep(seconds: float) -> None:
            recorded.append(seconds)
            if real:
                time.sleep(seconds)

        async def async_sleep(seconds: float) -> None:
            recorded.append(seconds)
            await asyncio.sleep(seconds if real else 0)

        monkeypatch.setattr(_client, "time", _Module(time, sleep=sync_sleep))
        monkeypatch.setattr(_client, "asyncio", _Module(asyncio, sleep=async_sleep))
        return recorded

    return install


def post_ids(router: FaultRouter) -> list[str]:
    return [post.headers["x-payload-id"] for post in router.posts]


def stop_router(router: FaultRouter) -> None:
    router.stop()


def restart_router(router: FaultRouter, key: rsa.RSAPrivateKey | None = None) -> None:
    router.restart(key)


def established_to(port: int) -> int:
    """Open (ESTABLISHED) TCP connections from this host to 127.0.0.1:``port``,
    as the kernel sees them: client-side sockets only (their remote port is ``port``)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port and fields[3] == "01":
            count += 1
    return count


# ---------------------------------------------------------------- sealing


def test_every_attempt_is_sealed_afresh(
    api: Api, sleeps: Callable[..., list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the raw bodies are taken where they leave the client, at httpx
    bodies: list[bytes] = []
    for cls in (httpx.Client, httpx.AsyncClient):
        original = cls.stream

        def stream(self: Any, method: str, url: str, *a: Any, _o: Any = original, **kw: Any) -> Any:
            if method == "POST":
                bodies.append(kw["content"])
            return _o(self, method, url, *a, **kw)

        monkeypatch.setattr(cls, "stream", stream)
    sleeps()
    api.router.script = [status(503), ok()]

    answer = api.create(api.client(max_retries=2), "the same request twice")

    assert content(answer) == "the same request twice"
    assert len(api.router.posts) == len(bodies) == 2
    first, second = api.router.posts
    # both opened at the router, to the same request, from the same client key
    assert first.request is not None and first.request == second.request
    assert first.headers["x-payload-id"] == second.headers["x-payload-id"]
    assert first.headers["x-public-key"] == second.headers["x-public-key"]
    # ... but sealed twice: nothing of the package repeats
    a, b = (json.loads(body) for body in bodies)
    assert a["encrypted_aes_key"] != b["encrypted_aes_key"]
    for field in ("ciphertext", "nonce", "tag"):
        assert a["encrypted_payload"][field] != b["encrypted_payload"][field]


# ---------------------------------------------------------------- retries


@pytest.mark.parametrize("code", [429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried_then_succeed(
    api: Api, sleeps: Callable[..., list[float]], code: int
) -> None:
    slept = sleeps()
    api.router.script = [status(code), status(code), ok()]

    answer = api.create(api.client(max_retries=2), "third time lucky")

    assert content(answer) == "third time lucky"
    assert len(api.router.posts) == 3 and len(slept) == 2
    assert len(set(post_ids(api.router))) == 1  # one create(), one payload id
    assert answer["_metadata"]["payload_id"] == post_ids(api.router)[0]


@pytest.mark.parametrize("code", [429, 500, 502, 503, 504])
def test_retries_stop_after_max_retries(
    api: Api, sleeps: Callable[..., list[float]], code: int
) -> None:
    slept = sleeps()
    api.router.script = [status(code)] * 4

    with pytest.raises(nomyo.APIError) as caught:
        api.create(api.client(max_retries=2))

    assert caught.value.status_code == code
    assert len(api.router.posts) == 3 and len(slept) == 2  # 1 + max_retries


def test_connection_failures_are_retried(
    api: Api, monkeypatch: pytest.MonkeyPatch, sleeps: Callable[..., list[float]]
) -> None:
    sleeps()
    client = api.client(max_retries=2)
    assert content(api.create(client, "warm up")) == "warm up"  # router key now cached
    stop_router(api.router)
    attempts: list[int] = []

    def bring_the_router_back(attempt: int, retry_after: float | None) -> float:
        attempts.append(attempt)
        api.router.restart()  # same key, same port
        return 0.0

    monkeypatch.setattr(_transport, "retry_delay", bring_the_router_back)

    assert content(api.create(client, "after the outage")) == "after the outage"
    assert attempts == [0]  # one failed attempt that reached no router, then the retry
    assert len(api.router.posts) == 2  # the failed attempt never reached a router
    assert api.router.key_fetches == 1


def test_connection_failure_without_retries_is_sent_once(
    api: Api, sleeps: Callable[..., list[float]]
) -> None:
    slept = sleeps()
    client = api.client(max_retries=0)
    assert content(api.create(client, "reachable")) == "reachable"  # control
    stop_router(api.router)

    with pytest.raises(nomyo.APIConnectionError) as caught:
        api.create(client)

    assert caught.value.status_code is None and caught.value.payload_id is not None
    assert slept == []


@pytest.mark.parametrize(
    ("code", "exception"),
    [
        (429, nomyo.RateLimitError),
        (500, nomyo.ServerError),
        (502, nomyo.APIError),
        (503, nomyo.ServiceUnavailableError),
        (504, nomyo.APIError),
        (400, nomyo.InvalidRequestError),
        (401, nomyo.AuthenticationError),
        (403, nomyo.ForbiddenError),
        (404, nomyo.APIError),
    ],
)
def test_max_retries_zero_sends_once_and_maps_the_status(
    api: Api, sleeps: Callable[..., list[float]], code: int, exception: type[nomyo.APIError]
) -> None:
    slept = sleeps()
    api.router.script = [status(code, retry_after="7")]

    with pytest.raises(nomyo.APIError) as caught:
        api.create(api.client(max_retries=0))

    error = caught.value
    assert type(error) is exception
    assert error.status_code == code
    assert error.message == f"status {code} on purpose"  # the router's detail
    assert error.error_details == {"detail": f"status {code} on purpose"}
    assert len(api.router.posts) == 1 and slept == []
    assert error.payload_id == post_ids(api.router)[0]
    if code == 429:
        assert isinstance(error, nomyo.RateLimitError) and error.retry_after == 7.0


@pytest.mark.parametrize(
    ("code", "exception"),
    [
        (400, nomyo.InvalidRequestError),
        (401, nomyo.AuthenticationError),
        (403, nomyo.ForbiddenError),
        (404, nomyo.APIError),
    ],
)
def test_client_errors_are_not_retried(
    api: Api, sleeps: Callable[..., list[float]], code: int, exception: type[nomyo.APIError]
) -> None:
    slept = sleeps()
    api.router.script = [status(code), status(503), ok()]
    client = api.client(max_retries=2)

    with pytest.raises(exception) as caught:
        api.create(client, "refused")

    assert type(caught.value) is exception
    assert len(api.router.posts) == 1 and slept == []
    assert caught.value.payload_id == post_ids(api.router)[0]
    # a 400 makes the client check the router key once more (it may have rotated)
    assert api.router.key_fetches == (2 if code == 400 else 1)
    # control: the same client does retry the 503 that comes next
    assert content(api.create(client, "accepted")) == "accepted"
    assert len(api.router.posts) == 3 and len(slept) == 1


@pytest.mark.parametrize(
    ("code", "exception"),
    [
        (400, nomyo.InvalidRequestError),
        (401, nomyo.AuthenticationError),
        (403, nomyo.ForbiddenError),
        (404, nomyo.APIError),
        (429, nomyo.RateLimitError),
        (500, nomyo.ServerError),
        (502, nomyo.APIError),
        (503, nomyo.ServiceUnavailableError),
        (504, nomyo.APIError),
    ],
)
def test_a_non_json_error_body_still_gives_the_right_class(
    api: Api, code: int, exception: type[nomyo.APIError]
) -> None:
    api.router.script = [status(code, body=b"<html>Bad Gateway, said nginx</html>")]

    with pytest.raises(nomyo.APIError) as caught:
        api.create(api.client(max_retries=0))

    error = caught.value
    assert type(error) is exception and error.status_code == code
    assert error.error_details is None
    assert error.message and "nginx" not in error.message  # a generic message, not the body
    assert error.payload_id == post_ids(api.router)[0]


def test_a_detail_that_is_not_a_string_gives_a_generic_message(api: Api) -> None:
    body = {"detail": [{"loc": ["body", "model"], "msg": "field required"}]}
    api.router.script = [status(422, body=body)]

    with pytest.raises(nomyo.APIError) as caught:
        api.create(api.client(max_retries=0))

    assert type(caught.value) is nomyo.APIError and caught.value.status_code == 422
    assert caught.value.message == "unexpected status 422"
    assert caught.value.error_details == body


def test_a_huge_error_body_is_not_read_whole(api: Api) -> None:
    api.router.script = [status(503, body=b"x" * 5_000_000)]

    started = time.monotonic()
    with pytest.raises(nomyo.ServiceUnavailableError) as caught:
        api.create(api.client(max_retries=0))

    assert time.monotonic() - started < 2
    assert caught.value.message == "the router is unavailable"  # not JSON: generic
    assert len(api.router.posts) == 1


# ---------------------------------------------------------------- Retry-After


def test_retry_after_seconds_is_waited(api: Api, sleeps: Callable[..., list[float]]) -> None:
    slept = sleeps(real=True)
    api.router.script = [status(429, retry_after="1"), ok()]
    client = api.client(max_retries=1)

    started = time.monotonic()
    assert content(api.create(client, "after a second")) == "after a second"
    elapsed = time.monotonic() - started

    assert slept == [1.0]
    # waited for real; what it waited is the line above (the rest is two
    # calls, which a loaded machine may slow)
    assert 0.9 <= elapsed < 4.0
    assert len(api.router.posts) == 2


def test_without_retry_after_the_backoff_is_short(
    api: Api, sleeps: Callable[..., list[float]]
) -> None:
    # control for the test above: the header, not the backoff, made it 1 s
    slept = sleeps()
    api.router.script = [status(429), ok()]

    api.create(api.client(max_retries=1))

    assert len(slept) == 1 and 0.3 <= slept[0] <= 0.5


def test_retry_after_http_date_is_honoured(api: Api, sleeps: Callable[..., list[float]]) -> None:
    slept = sleeps()  # recorded, not waited
    when = datetime.datetime.fromtimestamp(int(time.time()) + 30, datetime.timezone.utc)
    api.router.script = [status(503, retry_after=email.utils.format_datetime(when, True)), ok()]

    api.create(api.client(max_retries=1))

    assert len(slept) == 1 and 27.0 <= slept[0] <= 30.0
    assert len(api.router.posts) == 2


def test_a_huge_retry_after_is_capped_at_60_s(api: Api, sleeps: Callable[..., list[float]]) -> None:
    slept = sleeps()  # recorded, not waited
    api.router.script = [status(429, retry_after="3600"), ok()]

    started = time.monotonic()
    assert content(api.create(api.client(max_retries=1), "capped")) == "capped"

    assert slept == [RETRY_AFTER_CAP] == [60.0]
    assert time.monotonic() - started < 5
    assert len(api.router.posts) == 2


# ---------------------------------------------------------------- timeouts and size


def test_a_slow_router_times_out(api: Api) -> None:
    api.router.script = [slow(3)]
    client = api.client(timeout=1.0, max_retries=2)

    started = time.monotonic()
    with pytest.raises(nomyo.APITimeoutError) as caught:
        api.create(client)
    elapsed = time.monotonic() - started

    # the router answers after 3 s: anything under that is the timeout, with
    # room for a loaded machine (one retry would show in the posts below)
    assert elapsed < 2.9
    assert len(api.router.posts) == 1  # waiting for an answer is not retried
    assert caught.value.payload_id == post_ids(api.router)[0]


def test_a_slow_answer_within_the_timeout_succeeds(api: Api) -> None:
    # the timeout is for the whole call, the first one's TLS and key fetch
    # included: room for those on a loaded machine, and for the 1 s wait
    api.router.script = [slow(1.0)]
    assert content(api.create(api.client(timeout=5.0), "patience")) == "patience"


def test_an_answer_over_max_response_bytes_is_refused_early(api: Api) -> None:
    api.router.script = [huge(5_000_000)]
    client = api.client(max_response_bytes=100_000, max_retries=2)

    started = time.monotonic()
    with pytest.raises(nomyo.APIError) as caught:
        api.create(client)

    assert time.monotonic() - started < 2
    assert not isinstance(caught.value, nomyo.SecurityError)
    assert "max_response_bytes" in str(caught.value)
    assert len(api.router.posts) == 1  # not retried
    # control: the same junk under the cap is read, and then fails to open
    api.router.script = [huge(50_000)]
    with pytest.raises(nomyo.SecurityError):
        api.create(client)


def test_a_streamed_answer_over_max_response_bytes_is_cut_off(api: Api) -> None:
    # no Content-Length this time: the cap has to hold while reading
    chunk, chunks = 64 * 1024, 80  # 5 MiB at 10 ms a chunk: 0.8 s to send it all
    state = {"sent": 0, "done": False}

    def streamed_junk(ctx: Any) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            try:
                for _ in range(chunks):
                    state["sent"] += 1
                    yield b"x" * chunk
                    await asyncio.sleep(0.01)
            finally:
                state["done"] = True

        return StreamingResponse(body(), media_type="application/json")

    api.router.script = [streamed_junk]
    client = api.client(max_response_bytes=100_000, max_retries=0)

    with pytest.raises(nomyo.APIError, match="max_response_bytes") as caught:
        api.create(client)

    assert not isinstance(caught.value, nomyo.SecurityError)
    deadline = time.monotonic() + 5
    while not state["done"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert state["done"]  # the router saw the client hang up ...
    assert 2 <= state["sent"] < chunks // 2  # ... long before the end


# ---------------------------------------------------------------- answer binding


def test_unopenable_answers_are_one_opaque_security_error(api: Api) -> None:
    api.router.script = [tampered_tag(), sealed_to_another_key(), not_a_package()]
    client = api.client()
    seen: list[str] = []
    for _ in range(3):
        with pytest.raises(nomyo.SecurityError) as caught:
            api.create(client)
        seen.append(str(caught.value))

    assert seen[0] and "tag" not in seen[0].lower()
    assert seen == [seen[0]] * 3  # no oracle: which check failed is not told
    assert len(api.router.posts) == 3  # a SecurityError is not retried
    assert content(api.create(client, "control")) == "control"


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"version": "2.0"}', b"\xff\xfe"])
def test_garbage_answers_give_the_same_opaque_error(api: Api, body: bytes) -> None:
    api.router.script = [tampered_tag(), not_a_package(body)]
    client = api.client()
    with pytest.raises(nomyo.SecurityError) as tampered:
        api.create(client)
    with pytest.raises(nomyo.SecurityError) as garbage:
        api.create(client)
    assert str(garbage.value) == str(tampered.value) == _hybrid.OPEN_FAILED


def test_an_answer_to_another_request_is_refused(api: Api) -> None:
    api.router.script = [wrong_payload_id()]
    client = api.client()
    with pytest.raises(nomyo.SecurityError, match="another request"):
        api.create(client)
    assert content(api.create(client, "control")) == "control"


def test_a_replayed_answer_is_refused(api: Api) -> None:
    api.router.script = [ok(), replay()]
    client = api.client()
    assert content(api.create(client, "once")) == "once"
    assert api.router.last_answer is not None  # the bytes the router will send again
    with pytest.raises(nomyo.SecurityError, match="replay"):
        api.create(client, "twice")
    assert len(api.router.posts) == 2


# ---------------------------------------------------------------- the router key


@pytest.fixture(scope="module")
def new_router_key() -> rsa.RSAPrivateKey:
    return _keys.generate_private_key(2048)


def test_a_rotated_router_key_is_fetched_again(
    api: Api, new_router_key: rsa.RSAPrivateKey, sleeps: Callable[..., list[float]]
) -> None:
    sleeps()
    client = api.client()
    assert content(api.create(client, "key A")) == "key A"
    assert api.router.key_fetches == 1

    restart_router(api.router, new_router_key)
    assert content(api.create(client, "key B")) == "key B"

    opened = [post.request is not None for post in api.router.posts]
    assert opened == [True, False, True]  # sealed to A (refused with 400), then to B
    assert api.router.key_fetches == 2


def test_a_pinned_key_refuses_rotation(
    api: Api, new_router_key: rsa.RSAPrivateKey, sleeps: Callable[..., list[float]]
) -> None:
    sleeps()
    client = api.client(server_key_fingerprint=api.router.fingerprint)
    assert content(api.create(client, "key A")) == "key A"  # control: the pin matches A

    restart_router(api.router, new_router_key)
    with pytest.raises(nomyo.SecurityError, match="server_key_fingerprint"):
        api.create(client, "never to B")

    # the one POST still sealed to A failed to open; nothing was sealed to B
    assert [post.request is not None for post in api.router.posts] == [True, False]
    assert api.router.key_fetches == 2


def test_a_pin_mismatch_sends_nothing(api: Api) -> None:
    client = api.client(server_key_fingerprint="sha256:" + "0" * 64)
    with pytest.raises(nomyo.SecurityError, match="server_key_fingerprint"):
        api.create(client)
    assert api.router.posts == []
    assert api.router.key_fetches == 1  # control: the router was reached


# ---------------------------------------------------------------- many requests


def test_64_concurrent_requests_each_get_their_own_answer(api: Api) -> None:
    texts = [f"request number {i} of 64" for i in range(64)]

    answers = api.create_concurrently(api.client(), texts)

    assert [content(answer) for answer in answers] == texts
    ids = [answer["_metadata"]["payload_id"] for answer in answers]
    assert len(set(ids)) == 64 and set(ids) == set(post_ids(api.router))
    assert len(api.router.posts) == 64
    assert api.router.key_fetches == 1


def test_sequential_requests_share_one_connection(api: Api) -> None:
    texts = [f"in turn {i}" for i in range(20)]

    answers = api.create_all(api.client(), texts)

    assert [content(answer) for answer in answers] == texts
    assert len(api.router.posts) == 20 and api.router.key_fetches == 1
    assert len(api.router.connections) == 1  # the key fetch included


def test_an_async_client_survives_a_second_event_loop(
    router: FaultRouter, tls: dict[str, Path], client_key_dir: Path
) -> None:
    client = nomyo.SecureChatCompletion(router.url, verify=str(tls["ca"]), key_dir=client_key_dir)

    async def second() -> dict[str, Any]:
        async with client:
            return await client.create(MODEL, messages("loop two"))

    try:
        first = asyncio.run(client.create(MODEL, messages("loop one")))
        assert content(first) == "loop one"
        assert content(asyncio.run(second())) == "loop two"
    finally:
        stop_router(router)

    assert router.key_fetches == 1  # the router key outlives the loop
    assert len(router.connections) == 2  # control: a new loop, a new pool


def test_each_event_loop_closes_its_pool(
    router: FaultRouter, tls: dict[str, Path], client_key_dir: Path
) -> None:
    client = nomyo.SecureChatCompletion(router.url, verify=str(tls["ca"]), key_dir=client_key_dir)

    async def second() -> None:
        async with client:  # closes the pool, as documented
            await client.create(MODEL, messages("loop two"))

    async def first() -> None:
        await client.create(MODEL, messages("loop one"))
        assert established_to(router.port) == 1  # control: the pooled connection is seen

    gc.disable()  # a leaked pool would sit in a reference cycle until the cyclic GC
    try:
        asyncio.run(first())
        assert established_to(router.port) == 0  # closed as its event loop ended
        asyncio.run(second())
        assert len(router.connections) == 2
        assert established_to(router.port) == 0
    finally:
        gc.enable()
        stop_router(router)


# ---------------------------------------------------------------- the process check


def test_the_process_is_checked_once_per_request(
    api: Api, monkeypatch: pytest.MonkeyPatch, sleeps: Callable[..., list[float]]
) -> None:
    # one check before anything is sent, not one per key fetch, seal and open;
    # the count of 1 (not 0) also shows the counter sees the check
    sleeps()
    checks: list[int] = []
    check = _client._Core.check_process

    def counted(core: Any) -> None:
        checks.append(1)
        check(core)

    monkeypatch.setattr(_client._Core, "check_process", counted)
    api.router.script = [status(503), ok()]  # a router key fetch and two attempts
    client = api.client(max_retries=1)
    assert content(api.create(client, "checked once")) == "checked once"
    assert len(api.router.posts) == 2 and api.router.key_fetches == 1
    assert checks == [1]
