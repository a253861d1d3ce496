"""The OpenAI-compatible proxy (nomyo.proxy), run in-process with uvicorn over
plain HTTP and backed by a real `nomyo serve` over TLS (or the misbehaving
router of tests/faults.py): plain httpx, the openai SDK, the error map, logs."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from starlette.applications import Starlette

import nomyo
from nomyo import _keys
from nomyo._constants import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE
from nomyo.proxy import (
    PIN_MISMATCH,
    TLS_FAILED,
    VERIFICATION_FAILED,
    create_proxy_app,
    is_loopback,
)
from tests.faults import FaultRouter, huge, ok, status, tampered_tag, wrong_payload_id
from tests.servers import API_KEY, MARKER, Endpoint

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "look a text up",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
        },
    }
]

# ---------------------------------------------------------------- running a proxy


@contextmanager
def running(app: Starlette) -> Iterator[str]:
    """``app`` served by uvicorn on a thread, at 127.0.0.1 on a free port."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the proxy did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.force_exit = server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2048-bit client key pair on disk: no key generation per client."""
    folder = tmp_path_factory.mktemp("proxy_client_keys")
    key = _keys.generate_private_key(2048)
    _keys.save_private_key(key, folder / PRIVATE_KEY_FILE)
    _keys.save_public_key(key, folder / PUBLIC_KEY_FILE)
    return folder


Make = Callable[..., Starlette]
Start = Callable[..., str]


@pytest.fixture(scope="module")
def make(server: Endpoint, key_dir: Path) -> Make:
    """``make(router_url, api_key=, client_key=, models=, **client_options)``: a
    proxy app (``api_key``) with its own client (``client_key`` is the client's
    API key), for the `nomyo serve` fixture unless told otherwise."""

    def build(
        router_url: str | None = None,
        *,
        api_key: str | None = None,
        client_key: str | None = None,
        models: tuple[str, ...] = (),
        **options: Any,
    ) -> Starlette:
        options.setdefault("verify", str(server.ca))
        client = nomyo.SecureChatCompletion(
            router_url or server.url, api_key=client_key, key_dir=key_dir, **options
        )
        return create_proxy_app(client, models=models, api_key=api_key)

    return build


@pytest.fixture(scope="module")
def start(make: Make) -> Iterator[Start]:
    """``start(...)``: ``make(...)`` running until the end of the module; its URL."""
    with ExitStack() as stack:
        yield lambda *args, **kwargs: stack.enter_context(running(make(*args, **kwargs)))


@pytest.fixture(scope="module")
def proxy(start: Start) -> str:
    """No api_key of its own: a request's Bearer key, else the client's (API_KEY)."""
    return start(client_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def keyed(start: Start) -> str:
    """Started with api_key=API_KEY: every request uses it, whatever it sends."""
    return start(api_key=API_KEY, max_retries=0)


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "echo",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
        **extra,
    }


def post(
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    headers = dict(headers or {})
    if raw is not None:
        headers.setdefault("Content-Type", "application/json")
        return httpx.post(url + "/v1/chat/completions", content=raw, headers=headers, timeout=30)
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def events(response: httpx.Response) -> list[Any]:
    """The SSE data of a response: parsed JSON chunks, and "[DONE]" as is."""
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("\n\n")
    out: list[Any] = []
    for block in response.text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def assert_openai_error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == kind
    return error  # type: ignore[no-any-return]


# ---------------------------------------------------------------- plain httpx


def test_round_trip(proxy: str) -> None:
    text = "round trip " + uuid.uuid4().hex
    response = post(proxy, chat(text, temperature=0.2))
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer["object"] == "chat.completion" and answer["model"] == "echo"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert "_metadata" not in answer
    assert uuid.UUID(response.headers["x-payload-id"]).version == 4


def test_concurrent_requests(proxy: str) -> None:
    texts = [f"concurrent {i} {uuid.uuid4().hex}" for i in range(8)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as http:
            url = proxy + "/v1/chat/completions"
            return list(await asyncio.gather(*(http.post(url, json=chat(t)) for t in texts)))

    responses = asyncio.run(run())
    assert [r.json()["choices"][0]["message"]["content"] for r in responses] == texts
    assert len({r.headers["x-payload-id"] for r in responses}) == len(texts)


def test_parameters_pass_through(proxy: str) -> None:
    assert post(proxy, chat("not streamed", stream=False)).json()["object"] == "chat.completion"
    two = post(proxy, chat("twice over", n=2)).json()
    assert [c["index"] for c in two["choices"]] == [0, 1]
    assert {c["message"]["content"] for c in two["choices"]} == {"twice over"}
    cut = post(proxy, chat("one two three four", max_tokens=2)).json()["choices"][0]
    assert cut["message"]["content"] == "one two" and cut["finish_reason"] == "length"


def test_tools_give_tool_calls(proxy: str) -> None:
    choice = post(proxy, chat("find me", tools=TOOLS)).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "lookup"
    assert json.loads(call["function"]["arguments"]) == {"text": "find me"}


def test_security_tier_header(proxy: str) -> None:
    response = post(proxy, chat("tiered"), headers={"X-Security-Tier": "high"})
    assert response.json()["choices"][0]["message"]["content"] == "tiered"
    error = assert_openai_error(
        post(proxy, chat("tiered"), headers={"X-Security-Tier": "ultra"}),
        400,
        "invalid_request_error",
    )
    assert "security_tier" in error["message"]


def test_stream_emulated(proxy: str) -> None:
    text = "streamed " + uuid.uuid4().hex
    plain = post(proxy, chat(text)).json()
    response = post(proxy, chat(text, stream=True))
    assert response.status_code == 200 and "x-payload-id" in response.headers
    chunks = events(response)
    assert chunks[-1] == "[DONE]" and "[DONE]" not in chunks[:-1]
    first, last = chunks[:-1]
    for chunk in (first, last):
        assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == "echo"
        assert "usage" not in chunk and "_metadata" not in chunk
    assert first["id"] == last["id"]
    assert first["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert last["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert first["choices"][0]["delta"]["content"] == plain["choices"][0]["message"]["content"]


def test_stream_each_choice_and_tool_calls(proxy: str) -> None:
    chunks = events(post(proxy, chat("call it", n=2, tools=TOOLS, stream=True)))
    assert chunks.pop() == "[DONE]"
    by_index: dict[int, list[dict[str, Any]]] = {}
    for chunk in chunks:
        (choice,) = chunk["choices"]
        by_index.setdefault(choice["index"], []).append(choice)
    assert sorted(by_index) == [0, 1]
    for first, last in by_index.values():
        (call,) = first["delta"]["tool_calls"]
        assert call["index"] == 0 and call["function"]["name"] == "lookup"
        assert json.loads(call["function"]["arguments"]) == {"text": "call it"}
        assert last == {"index": first["index"], "delta": {}, "logprobs": None} | {
            "finish_reason": "tool_calls"
        }


def test_stream_include_usage(proxy: str) -> None:
    body = chat("count these words", stream=True, stream_options={"include_usage": True})
    chunks = events(post(proxy, body))
    assert chunks[-1] == "[DONE]"
    usage_chunk = chunks[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert all(chunk["usage"] is None for chunk in chunks[:-2])


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        (b'{"model": "echo", "messages": [', "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'{"model": "echo", "messages": [], "temperature": NaN}', "application/json", 400),
        (b"\xff\xfe{}", "application/json", 400),
        (json.dumps(chat("a form")).encode(), "text/plain", 415),  # no "simple" CORS request
        (json.dumps(chat("a blob")).encode(), None, 415),
    ],
    ids=["truncated", "not-an-object", "nan", "not-utf8", "text-plain", "no-content-type"],
)
def test_malformed_body(proxy: str, raw: bytes, content_type: str | None, status: int) -> None:
    if content_type is None:  # httpx adds none to raw content
        response = httpx.post(proxy + "/v1/chat/completions", content=raw)
        assert "content-type" not in response.request.headers
    else:
        response = post(proxy, raw=raw, headers={"Content-Type": content_type})
    assert_openai_error(response, status, "invalid_request_error")
    assert "x-payload-id" not in response.headers  # nothing was sent


def test_too_large(proxy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from nomyo import proxy as module

    monkeypatch.setattr(module, "MAX_BODY_BYTES", 1000)
    big = json.dumps(chat("x" * 2000)).encode()
    assert_openai_error(post(proxy, raw=big), 413, "invalid_request_error")

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while read
        yield big

    response = httpx.post(
        proxy + "/v1/chat/completions",
        content=chunked(),
        headers={"Content-Type": "application/json"},
    )
    assert_openai_error(response, 413, "invalid_request_error")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "echo"}, "messages"),
        ({"model": "echo", "messages": [{"content": "no role"}]}, "messages"),
        (chat("x", stream="yes"), "stream"),
        (chat("x", stream_options=[]), "stream_options"),
        (chat("x", base_url="https://elsewhere.example"), "base_url"),
        (chat("x", api_key="from-the-body"), "api_key"),
        (chat("x", security_tier="high"), "security_tier"),
        (chat("x", self=1), "self"),
    ],
)
def test_bad_request_names_the_param(proxy: str, body: dict[str, Any], param: str) -> None:
    error = assert_openai_error(post(proxy, body), 400, "invalid_request_error")
    assert error["param"] == param


def test_wrong_api_key(start: Start) -> None:
    wrong = start(api_key="wrong-" + uuid.uuid4().hex, max_retries=0)
    response = post(wrong, chat("hello"), headers={"Authorization": f"Bearer {API_KEY}"})  # ignored
    error = assert_openai_error(response, 401, "authentication_error")
    assert error["code"] == "invalid_api_key" and "wrong-" not in response.text


def test_bearer_key_passes_through(proxy: str, keyed: str) -> None:
    # no api_key of its own: the request's key is used (here a wrong one) ...
    wrong = post(proxy, chat("hi"), headers={"Authorization": "Bearer not-" + API_KEY})
    assert_openai_error(wrong, 401, "authentication_error")
    assert API_KEY not in wrong.text
    assert (
        post(proxy, chat("hi"), headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    )
    # ... and without one, the client's (API_KEY)
    assert post(proxy, chat("hi")).status_code == 200
    # started with one: the request's key is ignored
    assert post(keyed, chat("hi"), headers={"Authorization": "Bearer not-it"}).status_code == 200


def test_router_unreachable(start: Start) -> None:
    unreachable = start("https://127.0.0.1:9", max_retries=0)
    response = post(unreachable, chat("hello"))
    error = assert_openai_error(response, 502, "api_error")
    assert error["code"] == "connection_error" and "127.0.0.1:9" not in error["message"]


# ---------------------------------------------------------------- a misbehaving router


@pytest.fixture
def faulty(make: Make, router: FaultRouter, tls: dict[str, Path]) -> Iterator[str]:
    app = make(router.url, verify=str(tls["ca"]), max_retries=0, max_response_bytes=4096)
    with running(app) as url:
        yield url


@pytest.mark.parametrize("behaviour", [tampered_tag, wrong_payload_id], ids=lambda b: b.__name__)
def test_security_error_is_opaque(faulty: str, router: FaultRouter, behaviour: Any) -> None:
    router.script = [behaviour()]
    response = post(faulty, chat("verify me"))
    error = assert_openai_error(response, 502, "api_error")
    assert error == {
        "message": VERIFICATION_FAILED,
        "type": "api_error",
        "param": None,
        "code": "verification_failed",
    }
    router.script = [ok()]  # the proxy goes on working
    assert post(faulty, chat("after")).json()["choices"][0]["message"]["content"] == "after"


def test_a_wrong_pin_says_so_sends_nothing_and_logs_why(
    make: Make, router: FaultRouter, tls: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sha256:" + "0" * 64
    with (
        caplog.at_level(logging.WARNING),
        running(
            make(router.url, verify=str(tls["ca"]), max_retries=0, server_key_fingerprint=wrong)
        ) as url,
    ):
        error = assert_openai_error(post(url, chat("pinned")), 502, "api_error")
    assert error["message"] == PIN_MISMATCH and error["code"] == "pin_mismatch"
    assert router.posts == []  # nothing was sent
    assert any("does not match server_key_fingerprint" in r.getMessage() for r in caplog.records)
    # the control: the router's true pin goes through
    right = router.fingerprint
    with running(
        make(router.url, verify=str(tls["ca"]), max_retries=0, server_key_fingerprint=right)
    ) as url:
        assert post(url, chat("pinned")).status_code == 200
    assert len(router.posts) == 1


def test_an_untrusted_router_certificate_says_tls_failed_and_logs_why(
    make: Make, router: FaultRouter, caplog: pytest.LogCaptureFixture
) -> None:
    # the system's CAs, which do not include the test CA
    with (
        caplog.at_level(logging.WARNING),
        running(make(router.url, verify=True, max_retries=0)) as url,
    ):
        error = assert_openai_error(post(url, chat("untrusted")), 502, "api_error")
    assert error["message"] == TLS_FAILED and error["code"] == "tls_verification_failed"
    assert router.posts == []
    assert any("TLS certificate verification failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("behaviour", "code", "kind"),
    [
        (status(429, retry_after="7"), 429, "rate_limit_error"),
        (status(500), 500, "api_error"),
        (status(503), 503, "api_error"),
        (status(403, body={"detail": "model not allowed for tier"}), 403, "permission_error"),
        (huge(10_000), 502, "api_error"),  # an answer over max_response_bytes
    ],
    ids=["429", "500", "503", "403", "too-large"],
)
def test_router_status(
    faulty: str, router: FaultRouter, behaviour: Any, code: int, kind: str
) -> None:
    router.script = [behaviour]
    response = post(faulty, chat("hello"))
    error = assert_openai_error(response, code, kind)
    assert uuid.UUID(response.headers["x-payload-id"])  # which request it was
    if code == 429:
        assert response.headers["retry-after"] == "7"
        assert error["code"] == "rate_limit_exceeded"
    if code == 403:
        assert error["message"] == "model not allowed for tier"


# ---------------------------------------------------------------- other endpoints


def test_models(proxy: str, start: Start) -> None:
    listed = httpx.get(proxy + "/v1/models").json()
    assert listed == {
        "object": "list",
        "data": [{"id": "nomyo", "object": "model", "created": 0, "owned_by": "nomyo"}],
    }
    named = start(models=("echo", "org/big-model", "echo"))
    assert [m["id"] for m in httpx.get(named + "/v1/models").json()["data"]] == [
        "echo",
        "org/big-model",
    ]
    assert httpx.get(named + "/v1/models/org/big-model").json()["id"] == "org/big-model"
    missing = assert_openai_error(
        httpx.get(named + "/v1/models/nope"), 404, "invalid_request_error"
    )
    assert missing["code"] == "model_not_found"


def test_health_and_unknown_routes(proxy: str) -> None:
    assert httpx.get(proxy + "/health").json() == {"status": "ok"}
    error = assert_openai_error(httpx.get(proxy + "/v1/embeddings"), 404, "invalid_request_error")
    assert error["code"] == "not_found" and "/v1/embeddings" in error["message"]
    assert_openai_error(httpx.post(proxy + "/nope", json={}), 404, "invalid_request_error")
    wrong_method = httpx.get(proxy + "/v1/chat/completions")
    assert_openai_error(wrong_method, 405, "invalid_request_error")
    assert "POST" in wrong_method.headers["allow"]


# ---------------------------------------------------------------- the openai SDK


@pytest.fixture(scope="module")
def sdk(keyed: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=keyed + "/v1", api_key="unused", max_retries=0)
    yield client
    client.close()


def test_openai_sdk_create(sdk: openai.OpenAI) -> None:
    text = "sdk " + uuid.uuid4().hex
    completion = sdk.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": text}], temperature=0.1
    )
    assert completion.choices[0].message.content == text
    assert completion.usage is not None and completion.usage.completion_tokens == 2


def test_openai_sdk_stream(sdk: openai.OpenAI) -> None:
    text = "sdk stream " + uuid.uuid4().hex
    stream = sdk.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_openai_sdk_stream_helper_collects_tool_calls(sdk: openai.OpenAI) -> None:
    with sdk.chat.completions.stream(
        model="echo",
        messages=[{"role": "user", "content": "use the tool"}],
        tools=TOOLS,  # type: ignore[arg-type]
    ) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"text": "use the tool"}
    assert final.choices[0].finish_reason == "tool_calls"


def test_openai_sdk_models_and_errors(sdk: openai.OpenAI, start: Start) -> None:
    assert [m.id for m in sdk.models.list()] == ["nomyo"]
    wrong = openai.OpenAI(
        base_url=start(api_key="wrong", max_retries=0) + "/v1", api_key="unused", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as raised:
        wrong.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 401 and raised.value.type == "authentication_error"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model="echo", messages=[])
    assert bad.value.param == "messages"
    wrong.close()


# ---------------------------------------------------------------- logs


def leaks(caplog: pytest.LogCaptureFixture, secrets: list[str]) -> list[str]:
    """The secrets in any log line as it was formatted when emitted (the
    arguments may have been changed or wiped since) or in exception text."""
    text = caplog.text + "\n".join(f"{r.exc_text or ''} {r.exc_info!r}" for r in caplog.records)
    return [secret for secret in secrets if secret in text]


def test_logs_never_hold_prompts_or_keys(
    proxy: str, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    bearer = "bearer-" + uuid.uuid4().hex
    proxy_key = "proxy-key-" + uuid.uuid4().hex
    with caplog.at_level(logging.DEBUG):
        keyed_wrong = start(api_key=proxy_key, max_retries=0)
        answered = post(proxy, chat(MARKER))
        post(proxy, chat(MARKER, stream=True, tools=TOOLS))
        post(proxy, chat(MARKER), headers={"Authorization": f"Bearer {bearer}"})  # router: 401
        post(keyed_wrong, chat(MARKER))
        post(proxy, raw=b'{"model": "' + MARKER.encode())  # bad JSON
        post(proxy, {"model": MARKER, "messages": []})  # refused by the client
    # the control: the proxy logged each request, with its payload id
    proxied = [r.getMessage() for r in caplog.records if r.name == "nomyo.proxy"]
    assert len(proxied) >= 6
    assert any(answered.headers["x-payload-id"] in line for line in proxied)
    assert any("-> 401" in line for line in proxied)
    assert leaks(caplog, [MARKER, API_KEY, bearer, proxy_key]) == []
    # the scanner finds a planted copy, even one whose argument is gone since
    with caplog.at_level(logging.DEBUG):
        planted = {"content": MARKER}
        logging.getLogger("nomyo.proxy").debug("request %s", planted)
        planted.clear()
    assert leaks(caplog, [MARKER, API_KEY]) == [MARKER]


# ---------------------------------------------------------------- helpers and misuse


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),  # noqa: S104 - a string, nothing binds
        ("::", False),
        ("192.168.1.2", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_misuse(server: Endpoint, key_dir: Path) -> None:
    client = nomyo.SecureChatCompletion(server.url, key_dir=key_dir, verify=str(server.ca))
    with pytest.raises(TypeError, match="client"):
        create_proxy_app(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="models"):
        create_proxy_app(client, models="echo")
    with pytest.raises(TypeError, match="models"):
        create_proxy_app(client, models=[1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="models"):
        create_proxy_app(client, models=[""])
    with pytest.raises(ValueError, match="api_key"):
        create_proxy_app(client, api_key="")
    with pytest.raises(TypeError, match="api_key"):
        create_proxy_app(client, api_key=b"key")  # type: ignore[arg-type]


# ---------------------------------------------------------------- the Host guard, as a library


def _health(app: Starlette, host: str | None) -> httpx.Response:
    """GET /health straight into ``app`` (no server, no nomyo CLI) with this Host."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            request = http.build_request("GET", "/health")
            if host is None:
                del request.headers["host"]
            else:
                request.headers["host"] = host
            return await http.send(request)

    return asyncio.run(go())


FOREIGN_HOSTS = [
    "attacker.example",
    "attacker.example:8080",
    "127.0.0.1.nip.io:8080",
    "localhost.attacker.example",
    "192.168.1.2:8080",
    "0.0.0.0:8080",
    "127.0.0.1:abc",
    "[::1]x",
    "",
]
LOOPBACK_HOSTS = [
    "localhost",
    "localhost:8080",
    "LOCALHOST:1",
    "127.0.0.1",
    "127.0.0.1:8080",
    "[::1]",
    "[::1]:8080",
]


@pytest.fixture(scope="module")
def library_client(key_dir: Path) -> Iterator[nomyo.SecureChatCompletion]:
    client = nomyo.SecureChatCompletion("https://127.0.0.1:9", key_dir=key_dir, max_retries=0)
    yield client
    asyncio.run(client.aclose())


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_library_app_refuses_foreign_hosts(
    library_client: nomyo.SecureChatCompletion, host: str
) -> None:
    app = create_proxy_app(library_client)
    response = _health(app, host)
    error = assert_openai_error(response, 400, "invalid_request_error")
    assert "Host" in error["message"]
    # a foreign Host never gets as far as reading the body
    chat_request = httpx.Request(
        "POST", "http://127.0.0.1/v1/chat/completions", json=chat("x"), headers={"Host": host}
    )
    answer = asyncio.run(_send(app, chat_request))
    assert answer.status_code == 400 and "Host" in answer.json()["error"]["message"]


async def _send(app: Starlette, request: httpx.Request) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        return await http.send(request)


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_library_app_answers_loopback_hosts(
    library_client: nomyo.SecureChatCompletion, host: str
) -> None:
    response = _health(create_proxy_app(library_client), host)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}


def test_library_app_without_or_with_two_hosts(library_client: nomyo.SecureChatCompletion) -> None:
    app = create_proxy_app(library_client)
    assert _health(app, None).status_code == 400

    async def two_hosts() -> list[Any]:
        sent: list[Any] = []
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": "/health", "raw_path": b"/health",
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "headers": [(b"host", b"localhost"), (b"host", b"attacker.example")],
        }  # fmt: skip

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent

    assert asyncio.run(two_hosts())[0]["status"] == 400


def test_library_app_allowed_hosts(library_client: nomyo.SecureChatCompletion) -> None:
    named = create_proxy_app(library_client, allowed_hosts=["Proxy.Internal"])
    assert _health(named, "proxy.internal:8080").status_code == 200
    assert _health(named, "localhost:8080").status_code == 200
    assert _health(named, "attacker.example").status_code == 400
    anything = create_proxy_app(library_client, allowed_hosts=["*"])
    assert _health(anything, "attacker.example").status_code == 200
    with pytest.raises(TypeError, match="allowed_hosts"):
        create_proxy_app(library_client, allowed_hosts="localhost")
    with pytest.raises(ValueError, match="allowed_hosts"):
        create_proxy_app(library_client, allowed_hosts=[" "])
