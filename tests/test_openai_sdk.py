"""The real openai SDK through nomyo.openai, against `nomyo serve` and the fault
router over TLS: answers, streaming, tools, errors, the pin, and the
no-plaintext rule proved by a router that records every request on every path."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import nomyo
from nomyo import SecurityError, _keys
from nomyo.openai import AsyncOpenAI, OpenAI, metadata

from .faults import FaultRouter, attested, ok, slow, status
from .servers import API_KEY, MARKER, TOOLS, Endpoint

PROMPT = [{"role": "user", "content": MARKER}]


@dataclass
class RecordingRouter(FaultRouter):
    """The fault router, recording every HTTP request on any path (unknown
    paths included) before its routes see it."""

    seen: list[tuple[str, str]] = field(default_factory=list)

    def _app(self) -> Any:
        inner = super()._app()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                self.seen.append((scope["method"], scope["path"]))
            await inner(scope, receive, send)

        return app


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A client key pair made once (no 4096-bit generation per client)."""
    folder = tmp_path_factory.mktemp("client-keys")
    _keys.save_private_key(_keys.generate_private_key(2048), folder / "private_key.pem")
    return folder


@pytest.fixture
def recorder(tls: dict[str, Path], fault_key: rsa.RSAPrivateKey) -> Iterator[RecordingRouter]:
    router = RecordingRouter(tls, key=fault_key)
    yield router
    router.stop()


@pytest.fixture
def make(tls: dict[str, Path], key_dir: Path) -> Iterator[Callable[..., OpenAI]]:
    clients: list[OpenAI] = []

    def build(url: str, **options: Any) -> OpenAI:
        options.setdefault("api_key", API_KEY)
        client = OpenAI(base_url=url, verify=str(tls["ca"]), key_dir=key_dir, **options)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def pin_of(endpoint: Endpoint) -> str:
    return _keys.fingerprint(endpoint.router_key)


# ---------------------------------------------------------------- answers


def test_chat_completion_is_the_sdk_type_with_metadata(
    server: Endpoint, make: Callable[..., OpenAI]
) -> None:
    client = make(server.url, server_key_fingerprint=pin_of(server))
    completion = client.chat.completions.create(model="echo", messages=PROMPT)
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.choices[0].message.content == MARKER
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 2
    meta = metadata(completion)
    assert meta is not None and meta["is_encrypted"] is True
    assert isinstance(meta["processed_at"], int)
    assert completion._request_id == meta["payload_id"]  # the SDK's request id is ours


def test_base_url_with_or_without_v1(server: Endpoint, make: Callable[..., OpenAI]) -> None:
    for url in (server.url, server.url + "/v1", server.url + "/v1/"):
        answer = make(url).chat.completions.create(model="echo", messages=PROMPT)
        assert answer.choices[0].message.content == MARKER


def test_the_sdk_objects_hold_the_decrypted_strings_themselves(
    server: Endpoint, make: Callable[..., OpenAI]
) -> None:
    """The typed answer is built from the dict nomyo decrypted: the same str
    objects, not a re-serialised copy."""
    raw = make(server.url).chat.completions.with_raw_response.create(model="echo", messages=PROMPT)
    decoded = raw.http_response.json()
    completion = raw.parse()
    assert decoded["choices"][0]["message"]["content"] == MARKER
    assert completion.choices[0].message.content is decoded["choices"][0]["message"]["content"]
    # the raw body is still there for whoever asks (made on demand)
    assert json.loads(raw.text)["choices"][0]["message"]["content"] == MARKER


def test_streaming_is_the_one_answer_in_chunks(
    server: Endpoint, make: Callable[..., OpenAI]
) -> None:
    stream = make(server.url).chat.completions.create(
        model="echo", messages=PROMPT, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == MARKER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 1
    ids = {(metadata(c) or {}).get("payload_id") for c in chunks}
    assert len(ids) == 1 and None not in ids


def test_tools(server: Endpoint, make: Callable[..., OpenAI]) -> None:
    client = make(server.url)
    completion = client.chat.completions.create(model="echo", messages=PROMPT, tools=TOOLS)
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "lookup"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"text": MARKER}  # type: ignore[union-attr]
    chunks = list(
        client.chat.completions.create(model="echo", messages=PROMPT, tools=TOOLS, stream=True)
    )
    delta_calls = chunks[0].choices[0].delta.tool_calls
    assert delta_calls is not None and delta_calls[0].index == 0
    assert delta_calls[0].function is not None and delta_calls[0].function.name == "lookup"


def test_models_list_is_answered_locally(
    recorder: RecordingRouter, make: Callable[..., OpenAI]
) -> None:
    client = make(recorder.url, models=["echo", "other"])
    assert [m.id for m in client.models.list()] == ["echo", "other"]
    assert [m.id for m in make(recorder.url).models.list()] == ["nomyo"]
    assert recorder.seen == []


def test_async_client_and_async_stream(
    server: Endpoint, tls: dict[str, Path], key_dir: Path
) -> None:
    async def go() -> tuple[str | None, str]:
        client = AsyncOpenAI(
            base_url=server.url, api_key=API_KEY, verify=str(tls["ca"]), key_dir=key_dir
        )
        try:
            completion = await client.chat.completions.create(model="echo", messages=PROMPT)
            stream = await client.chat.completions.create(
                model="echo", messages=PROMPT, stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream])
            return completion.choices[0].message.content, text
        finally:
            await client.close()

    assert asyncio.run(go()) == (MARKER, MARKER)


def test_tier_goes_as_x_security_tier(router: FaultRouter, make: Callable[..., OpenAI]) -> None:
    client = make(router.url)
    client.chat.completions.create(
        model="echo", messages=PROMPT, extra_headers={"X-Security-Tier": "high"}
    )
    assert router.posts[-1].headers["x-security-tier"] == "high"
    with pytest.raises(openai.BadRequestError, match="security_tier"):
        client.chat.completions.create(
            model="echo", messages=PROMPT, extra_headers={"X-Security-Tier": "ultra"}
        )
    assert len(router.posts) == 1  # the bad tier sent nothing


class Verifier:
    """Accepts the attestation "good" only, recording what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, str]] = []

    def __call__(self, attestation: Any, payload_id: str) -> bool:
        self.calls.append((attestation, payload_id))
        return attestation == "good"


def test_attestation_checked_through_the_sdk(
    router: FaultRouter, make: Callable[..., OpenAI]
) -> None:
    verifier = Verifier()
    client = make(router.url, attestation_verifier=verifier, require_attestation=True)
    router.script = [attested("good"), attested("forged"), ok()]
    # control: an answer the verifier accepts comes back, with what it checked
    completion = client.chat.completions.create(model="echo", messages=PROMPT)
    meta = metadata(completion)
    assert meta is not None and meta["tpm_attestation"] == "good"
    assert verifier.calls == [("good", router.posts[-1].headers["x-payload-id"])]
    for message in ("rejected", "no tpm_attestation"):  # a forged one, then none at all
        with pytest.raises(SecurityError, match=message) as caught:
            client.chat.completions.create(model="echo", messages=PROMPT)
        assert isinstance(caught.value, openai.OpenAIError)  # re-raised, never retried
    assert len(router.posts) == 3
    with pytest.raises(ValueError, match="needs an attestation_verifier"):
        make(router.url, require_attestation=True)


def test_async_attestation_checked_through_the_sdk(
    router: FaultRouter, tls: dict[str, Path], key_dir: Path
) -> None:
    verifier = Verifier()
    router.script = [attested("good"), attested("forged")]

    async def go() -> None:
        async with AsyncOpenAI(
            base_url=router.url,
            api_key=API_KEY,
            verify=str(tls["ca"]),
            key_dir=key_dir,
            attestation_verifier=verifier,
        ) as client:
            completion = await client.chat.completions.create(model="echo", messages=PROMPT)
            assert completion.choices[0].message.content == MARKER  # control
            with pytest.raises(SecurityError, match="rejected"):
                await client.chat.completions.create(model="echo", messages=PROMPT)

    asyncio.run(go())
    assert [attestation for attestation, _ in verifier.calls] == ["good", "forged"]


def test_openai_api_key_is_never_sent_to_the_router(
    router: FaultRouter, tls: dict[str, Path], key_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret")
    monkeypatch.delenv("NOMYO_API_KEY", raising=False)
    with pytest.raises(ValueError, match="NOMYO_API_KEY") as caught:
        OpenAI(base_url=router.url, verify=str(tls["ca"]), key_dir=key_dir)
    assert "sk-openai-secret" not in str(caught.value)
    monkeypatch.setenv("NOMYO_API_KEY", "nomyo-key")  # control: the router's key is sent
    with OpenAI(base_url=router.url, verify=str(tls["ca"]), key_dir=key_dir) as client:
        client.chat.completions.create(model="echo", messages=PROMPT)
    assert router.posts[-1].headers["authorization"] == "Bearer nomyo-key"


# ---------------------------------------------------------------- errors


def test_wrong_api_key_is_authentication_error(
    server: Endpoint, make: Callable[..., OpenAI]
) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        make(server.url, api_key="wrong").chat.completions.create(model="echo", messages=PROMPT)
    assert caught.value.status_code == 401
    assert "wrong" not in str(caught.value)


def test_one_retry_policy_the_sdks(router: FaultRouter, make: Callable[..., OpenAI]) -> None:
    """With the SDK's max_retries=0 exactly one POST goes out (nomyo adds no
    retries of its own); 429's Retry-After reaches the SDK, which honours it."""
    router.script = [status(429, retry_after="1")]
    with pytest.raises(openai.RateLimitError) as caught:
        make(router.url, max_retries=0).chat.completions.create(model="echo", messages=PROMPT)
    assert caught.value.response.headers["retry-after"] == "1"
    assert len(router.posts) == 1
    router.script = [status(429, retry_after="1"), ok()]
    start = time.monotonic()
    answer = make(router.url, max_retries=1).chat.completions.create(model="echo", messages=PROMPT)
    assert answer.choices[0].message.content == MARKER
    assert time.monotonic() - start >= 0.9  # the SDK waited as told
    assert len(router.posts) == 3
    first, second = router.posts[1:]
    assert first.headers["x-payload-id"] != second.headers["x-payload-id"]  # sealed afresh


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (400, openai.BadRequestError),
        (403, openai.PermissionDeniedError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_statuses_become_the_sdks_errors(
    router: FaultRouter, make: Callable[..., OpenAI], code: int, error: type[Exception]
) -> None:
    router.script = [status(code)] * 2
    with pytest.raises(error, match=f"status {code} on purpose"):
        make(router.url, max_retries=0).chat.completions.create(model="echo", messages=PROMPT)


def test_timeout_is_the_sdks(router: FaultRouter, make: Callable[..., OpenAI]) -> None:
    router.script = [slow(5)]
    with pytest.raises(openai.APITimeoutError):
        make(router.url, timeout=0.5, max_retries=0).chat.completions.create(
            model="echo", messages=PROMPT
        )


def test_no_router_is_a_connection_error(make: Callable[..., OpenAI]) -> None:
    with pytest.raises(openai.APIConnectionError):
        make("https://127.0.0.1:9", max_retries=0).chat.completions.create(
            model="echo", messages=PROMPT
        )


def test_pin_mismatch_names_the_pin_sends_nothing_and_is_not_retried(
    recorder: RecordingRouter, make: Callable[..., OpenAI]
) -> None:
    pin = "sha256:" + "0" * 64
    client = make(recorder.url, server_key_fingerprint=pin, max_retries=2)
    with pytest.raises(SecurityError, match=pin) as caught:
        client.chat.completions.create(model="echo", messages=PROMPT)
    assert isinstance(caught.value, openai.OpenAIError)  # what the SDK re-raises untouched
    assert recorder.seen == [("GET", "/pki/public_key")]  # one key fetch, no POST, no retry
    # control: the right pin sends
    make(recorder.url, server_key_fingerprint=recorder.fingerprint).chat.completions.create(
        model="echo", messages=PROMPT
    )
    assert ("POST", "/v1/chat/secure_completion") in recorder.seen


# ---------------------------------------------------------------- nothing in plain text


REFUSED: list[tuple[str, Callable[[OpenAI], Any]]] = [
    ("embeddings", lambda c: c.embeddings.create(model="m", input=MARKER)),
    ("completions", lambda c: c.completions.create(model="m", prompt=MARKER)),
    ("responses", lambda c: c.responses.create(model="m", input=MARKER)),
    ("moderations", lambda c: c.moderations.create(input=MARKER)),
    ("files", lambda c: c.files.list()),
    ("speech", lambda c: c.audio.speech.create(model="m", voice="alloy", input=MARKER)),
    ("images", lambda c: c.images.generate(prompt=MARKER)),
    ("stored completions", lambda c: c.chat.completions.list()),
    ("model retrieve", lambda c: c.models.retrieve("m")),
]


@pytest.mark.parametrize(("name", "call"), REFUSED, ids=[n for n, _ in REFUSED])
def test_other_endpoints_are_refused_before_anything_is_sent(
    recorder: RecordingRouter, make: Callable[..., OpenAI], name: str, call: Callable[[OpenAI], Any]
) -> None:
    client = make(recorder.url, max_retries=2)
    with pytest.raises(SecurityError, match="nothing was sent") as caught:
        call(client)
    assert "refused" in str(caught.value) and MARKER not in str(caught.value)
    assert isinstance(caught.value, openai.OpenAIError)
    assert recorder.seen == []
    # control: the recorder sees what is sent, on known and unknown paths
    client.chat.completions.create(model="echo", messages=PROMPT)
    with httpx.Client(verify=False) as plain:  # noqa: S501
        plain.post(recorder.url + "/v1/embeddings", json={"input": "x"})
    assert ("POST", "/v1/chat/secure_completion") in recorder.seen
    assert ("POST", "/v1/embeddings") in recorder.seen


def test_async_refusals_send_nothing(
    recorder: RecordingRouter, tls: dict[str, Path], key_dir: Path
) -> None:
    async def go() -> None:
        client = AsyncOpenAI(
            base_url=recorder.url, api_key=API_KEY, verify=str(tls["ca"]), key_dir=key_dir
        )
        try:
            with pytest.raises(SecurityError, match="nothing was sent"):
                await client.embeddings.create(model="m", input=MARKER)
            with pytest.raises(SecurityError, match="nothing was sent"):
                await client.responses.create(model="m", input=MARKER)
            assert recorder.seen == []
            await client.chat.completions.create(model="echo", messages=PROMPT)  # control
        finally:
            await client.close()

    asyncio.run(go())
    assert ("POST", "/v1/chat/secure_completion") in recorder.seen


def test_websocket_apis_are_refused(recorder: RecordingRouter, make: Callable[..., OpenAI]) -> None:
    pytest.importorskip("websockets")
    client = make(recorder.url)
    with pytest.raises(SecurityError, match="websocket"), client.realtime.connect(model="m"):
        pass  # pragma: no cover
    assert recorder.seen == []


def test_http_client_cannot_be_replaced(server: Endpoint) -> None:
    with pytest.raises(TypeError, match="http_client"):
        OpenAI(base_url=server.url, api_key="k", http_client=openai.DefaultHttpxClient())


def test_with_options_keeps_the_secure_transport(
    server: Endpoint, make: Callable[..., OpenAI]
) -> None:
    client = make(server.url).with_options(max_retries=0)
    assert isinstance(client, OpenAI)
    assert client.chat.completions.create(model="echo", messages=PROMPT).choices[0].message.content


# ---------------------------------------------------------------- the bare transport


def test_transport_under_plain_httpx(server: Endpoint, tls: dict[str, Path], key_dir: Path) -> None:
    transport = nomyo.SecureTransport(verify=str(tls["ca"]), key_dir=key_dir)
    with httpx.Client(transport=transport) as http:
        response = http.post(
            server.url + "/v1/chat/completions",
            json={"model": "echo", "messages": PROMPT},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == MARKER
        bad = http.post(
            server.url + "/v1/chat/completions",
            json={"model": "echo", "messages": PROMPT, "api_key": "x"},
        )
        assert bad.status_code == 400 and bad.headers["x-should-retry"] == "false"
        with pytest.raises(SecurityError, match="refused GET /v1/files"):
            http.get(server.url + "/v1/files")
        chat = server.url + "/v1/chat/completions"
        for content, message in [
            (b"{not json", "not valid JSON"),
            (b"[1, 2]", "must be a JSON object"),
            (json.dumps({"model": "echo", "messages": PROMPT, "stream": "yes"}).encode(), "stream"),
            (json.dumps({"model": "", "messages": PROMPT}).encode(), "model"),
        ]:
            refused = http.post(chat, content=content)
            assert refused.status_code == 400, content
            assert message in refused.json()["error"]["message"]


def test_async_pin_and_errors(
    recorder: RecordingRouter, tls: dict[str, Path], key_dir: Path
) -> None:
    async def go() -> None:
        options: dict[str, Any] = dict(
            base_url=recorder.url, api_key=API_KEY, verify=str(tls["ca"]), key_dir=key_dir
        )
        async with AsyncOpenAI(server_key_fingerprint="sha256:" + "1" * 64, **options) as pinned:
            with pytest.raises(SecurityError, match="sha256:1111"):
                await pinned.chat.completions.create(model="echo", messages=PROMPT)
        assert recorder.seen == [("GET", "/pki/public_key")]
        recorder.script = [status(429, retry_after="2"), slow(5)]
        # the 429 on a client with time to spare (a first call does TLS and
        # the key fetch before it sends); the timeout on one whose 1.5 s
        # leave room to send but not to wait out the 5 s answer
        async with AsyncOpenAI(max_retries=0, timeout=30, **options) as client:
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="echo", messages=PROMPT)
            assert caught.value.response.headers["retry-after"] == "2"
        async with AsyncOpenAI(max_retries=0, timeout=1.5, **options) as client:
            with pytest.raises(openai.APITimeoutError):
                await client.chat.completions.create(model="echo", messages=PROMPT)

    asyncio.run(go())
    assert len(recorder.posts) == 2


def test_streaming_response_wrapper(server: Endpoint, make: Callable[..., OpenAI]) -> None:
    create = make(server.url).chat.completions.with_streaming_response.create
    with create(model="echo", messages=PROMPT) as response:
        assert response.parse().choices[0].message.content == MARKER


# ---------------------------------------------------------------- no resend (issue 13)


def test_a_request_the_router_read_in_full_is_not_sent_again_by_the_sdk(
    tls: dict[str, Path], fault_key: rsa.RSAPrivateKey, make: Callable[..., OpenAI]
) -> None:
    from tests.test_client_resend import DroppingRouter

    dropping = DroppingRouter(tls, fault_key, reset=False)
    try:
        client = make(dropping.url, max_retries=3)
        with pytest.raises(openai.APIConnectionError) as info:
            client.chat.completions.create(model="echo", messages=PROMPT)
        assert not isinstance(info.value, openai.APITimeoutError)
        time.sleep(0.2)  # a resend would have arrived by now
        assert dropping.posts == 1
    finally:
        dropping.stop()


def test_a_timeout_after_sending_is_not_retried_by_the_sdk(
    router: FaultRouter, make: Callable[..., OpenAI]
) -> None:
    # 1.5 s to connect, fetch the key and send (the post must arrive whole);
    # the answer would come after 4 s
    router.script = [slow(4)] * 3
    with pytest.raises(openai.APITimeoutError):
        make(router.url, timeout=1.5, max_retries=2).chat.completions.create(
            model="echo", messages=PROMPT
        )
    time.sleep(0.2)
    assert len(router.posts) == 1


def test_a_refused_connection_is_still_retried_by_the_sdk(
    router: FaultRouter, make: Callable[..., OpenAI]
) -> None:
    # the control: nothing was sent, so the SDK's retry may send it, once
    client = make(router.url, max_retries=4)
    client.chat.completions.create(model="echo", messages=PROMPT)  # the router key, cached
    router.stop()
    threading.Timer(0.3, router.start).start()
    answer = client.chat.completions.create(model="echo", messages=PROMPT)
    assert answer.choices[0].message.content == PROMPT[-1]["content"]
    assert len(router.posts) == 2
