"""The clients refuse bad input before anything is sent.

No network: the transports' ``request`` is replaced by a recorder that raises
a sentinel, so a refusal shows as an empty record and a valid call as one
recorded request (the positive control).  The router key is a local 2048-bit
key, so what was sent can be opened and read back.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.parse
import uuid
import warnings
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any

import certifi
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from nomyo import (
    SecureChatCompletion,
    SecureCompletionClient,
    SecurityError,
    SyncSecureChatCompletion,
    _hybrid,
    _keys,
)
from nomyo._client import _AsyncEngine, _SyncEngine
from nomyo._constants import (
    API_KEY_ENV,
    BASE_URL_ENV,
    COMPLETION_PATH,
    DEFAULT_BASE_URL,
    SECURITY_TIERS,
)
from nomyo._transport import AsyncTransport, SyncTransport

URL = "https://127.0.0.1:9"
OTHER_URL = "https://127.0.0.2:9"
MESSAGES = [{"role": "user", "content": "hello"}]
CONSTRUCTORS = [SecureChatCompletion, SyncSecureChatCompletion, SecureCompletionClient]
KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


class Sent(Exception):
    """Raised by the patched transports: the request got as far as the wire."""


@dataclass
class Keys:
    client: rsa.RSAPrivateKey
    router: rsa.RSAPrivateKey
    other: rsa.RSAPrivateKey

    @property
    def router_pem(self) -> str:
        return _keys.public_pem(self.router).decode("ascii")


@dataclass
class Wire:
    """What reached the patched transports."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    router_key: rsa.RSAPrivateKey | None = None

    def only(self) -> dict[str, Any]:
        assert len(self.calls) == 1, self.calls
        return self.calls[0]

    def plaintext(self) -> dict[str, Any]:
        """The request plaintext, opened with the (local) router key."""
        assert self.router_key is not None
        opened = _hybrid.open_json(self.only()["content"], self.router_key)
        assert isinstance(opened, dict)
        return opened


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        _keys.generate_private_key(2048),
        _keys.generate_private_key(2048),
        _keys.generate_private_key(2048),
    )


@pytest.fixture(autouse=True)
def wire(monkeypatch: pytest.MonkeyPatch, keys: Keys) -> Wire:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    # no 4096-bit key generation in the background of every construction
    monkeypatch.setattr(_keys, "generate_private_key", lambda bits=2048: keys.client)

    def router_key(self: Any, *, force: bool = False, deadline: float | None = None) -> Any:
        return self.core.accept_router_key(keys.router_pem)

    async def async_router_key(
        self: Any, *, force: bool = False, deadline: float | None = None
    ) -> Any:
        return self.core.accept_router_key(keys.router_pem)

    monkeypatch.setattr(_SyncEngine, "router_key", router_key)
    monkeypatch.setattr(_AsyncEngine, "router_key", async_router_key)

    recorded = Wire(router_key=keys.router)

    def request(self: Any, method: str, url: str, **kwargs: Any) -> bytes:
        recorded.calls.append({"method": method, "url": url, **kwargs})
        raise Sent

    async def async_request(self: Any, method: str, url: str, **kwargs: Any) -> bytes:
        recorded.calls.append({"method": method, "url": url, **kwargs})
        raise Sent

    monkeypatch.setattr(SyncTransport, "request", request)
    monkeypatch.setattr(AsyncTransport, "request", async_request)
    return recorded


def make(kind: str, base_url: str | None = URL, **options: Any) -> Any:
    if kind == "sync":
        return SyncSecureChatCompletion(base_url, **options)
    return SecureChatCompletion(base_url, **options)


def create(kind: str, client: Any, *args: Any, **kwargs: Any) -> Any:
    """client.create(...), blocking; the pool is closed after (and remade on reuse)."""
    if kind == "sync":
        try:
            return client.create(*args, **kwargs)
        finally:
            client.close()

    async def main() -> Any:
        try:
            return await client.create(*args, **kwargs)
        finally:
            await client.aclose()

    return asyncio.run(main())


def sends(kind: str, client: Any, wire: Wire, **kwargs: Any) -> dict[str, Any]:
    """Positive control: a valid call reaches the transport (exactly once)."""
    before = len(wire.calls)
    with pytest.raises(Sent):
        create(kind, client, "test-model", MESSAGES, **kwargs)
    assert len(wire.calls) == before + 1
    return wire.calls[-1]


# ---------------------------------------------------------------- plain HTTP


@pytest.mark.parametrize("cls", CONSTRUCTORS)
def test_plain_http_is_refused_at_construction(cls: type, wire: Wire) -> None:
    with pytest.raises(SecurityError, match="allow_http"):
        cls("http://127.0.0.1:9")
    with pytest.raises(SecurityError):
        cls("HTTP://127.0.0.1:9")
    assert wire.calls == []


@pytest.mark.parametrize("cls", CONSTRUCTORS)
def test_plain_http_with_allow_http_warns(cls: type) -> None:
    with pytest.warns(UserWarning, match="plain HTTP"):
        client = cls("http://127.0.0.1:9", allow_http=True)
    url = client.router_url if cls is SecureCompletionClient else client.base_url
    assert url == "http://127.0.0.1:9"


@pytest.mark.parametrize("cls", CONSTRUCTORS)
def test_https_does_not_warn(cls: type) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls(URL)
    assert not [w for w in caught if "plain HTTP" in str(w.message)]


@pytest.mark.parametrize(
    "cls",
    [
        SecureChatCompletion,
        SyncSecureChatCompletion,
        SecureCompletionClient,
    ],
)
def test_plain_http_warning_points_at_the_caller(cls: type) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls("http://127.0.0.1:9", allow_http=True)
    (warning,) = [w for w in caught if "plain HTTP" in str(w.message)]
    assert warning.filename == __file__


@KINDS
def test_plain_http_per_call_base_url_is_refused(kind: str, wire: Wire) -> None:
    client = make(kind)
    with pytest.raises(SecurityError, match="allow_http"):
        create(kind, client, "test-model", MESSAGES, base_url="http://127.0.0.1:9")
    assert wire.calls == []
    sends(kind, client, wire)


def test_plain_http_from_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BASE_URL_ENV, "http://127.0.0.1:9")
    for cls in CONSTRUCTORS:
        with pytest.raises(SecurityError):
            cls()
        with pytest.warns(UserWarning, match="plain HTTP"):
            cls(allow_http=True)


# ---------------------------------------------------------------- base_url


@pytest.mark.parametrize("url", ["ftp://x", "", "not a url", "https://", "//host/path", 123])
@pytest.mark.parametrize("cls", CONSTRUCTORS)
def test_bad_base_url(cls: type, url: Any, wire: Wire) -> None:
    with pytest.raises(ValueError, match="base_url"):
        cls(url)
    assert wire.calls == []


@pytest.mark.parametrize("cls", CONSTRUCTORS)
def test_good_base_url_is_kept_without_trailing_slash(cls: type) -> None:
    client = cls(URL + "/")
    url = client.router_url if cls is SecureCompletionClient else client.base_url
    assert url == URL


@KINDS
@pytest.mark.parametrize("url", ["ftp://x", "", "not a url"])
def test_bad_per_call_base_url(kind: str, url: str, wire: Wire) -> None:
    client = make(kind)
    with pytest.raises(ValueError, match="base_url"):
        create(kind, client, "test-model", MESSAGES, base_url=url)
    assert wire.calls == []
    sends(kind, client, wire)


@KINDS
def test_non_string_per_call_base_url(kind: str, wire: Wire) -> None:
    client = make(kind)
    with pytest.raises((ValueError, TypeError), match="base_url"):
        create(kind, client, "test-model", MESSAGES, base_url=123)
    assert wire.calls == []


@KINDS
def test_per_call_base_url_is_where_it_goes(kind: str, wire: Wire) -> None:
    client = make(kind)
    call = sends(kind, client, wire, base_url=OTHER_URL + "/")
    assert call["url"] == OTHER_URL + COMPLETION_PATH
    call = sends(kind, make(kind), wire)
    assert call["url"] == URL + COMPLETION_PATH


# ---------------------------------------------------------------- create() arguments

BAD_CALLS: list[tuple[tuple[Any, ...], dict[str, Any], str]] = [
    (("", MESSAGES), {}, "model"),
    ((None, MESSAGES), {}, "model"),
    ((123, MESSAGES), {}, "model"),
    ((b"test-model", MESSAGES), {}, "model"),
    ((["test-model"], MESSAGES), {}, "model"),
    (("test-model", "hello"), {}, "messages"),
    (("test-model", None), {}, "messages"),
    (("test-model", []), {}, "messages"),
    (("test-model", {"role": "user", "content": "hi"}), {}, "messages"),
    (("test-model", tuple(MESSAGES)), {}, "messages"),
    (("test-model", ["hello"]), {}, r"messages\[0\]"),
    (("test-model", [None]), {}, r"messages\[0\]"),
    (("test-model", [{"content": "hi"}]), {}, r"messages\[0\].*role"),
    (("test-model", [{"role": "", "content": "hi"}]), {}, r"messages\[0\].*role"),
    (("test-model", [{"role": 1, "content": "hi"}]), {}, r"messages\[0\].*role"),
    (("test-model", [{"role": "user"}]), {}, r"messages\[0\].*content"),
    (("test-model", [*MESSAGES, {"role": "user"}]), {}, r"messages\[1\].*content"),
    (("test-model", MESSAGES), {"stream": True}, "stream"),
    (("test-model", MESSAGES), {"stream": 1}, "stream"),
    (("test-model", MESSAGES), {"security_tier": "low"}, "security_tier"),
    (("test-model", MESSAGES), {"security_tier": "MAXIMUM"}, "security_tier"),
    (("test-model", MESSAGES), {"security_tier": ""}, "security_tier"),
    (("test-model", MESSAGES), {"security_tier": 1}, "security_tier"),
]


@KINDS
@pytest.mark.parametrize(("args", "kwargs", "match"), BAD_CALLS)
def test_bad_create_is_refused_before_sending(
    kind: str, args: tuple[Any, ...], kwargs: dict[str, Any], match: str, wire: Wire
) -> None:
    client = make(kind)
    with pytest.raises(ValueError, match=match):
        create(kind, client, *args, **kwargs)
    assert wire.calls == []
    sends(kind, client, wire)


@KINDS
def test_missing_model_or_messages_names_it(kind: str, wire: Wire) -> None:
    # a missing required argument is Python's own TypeError, which names it
    client = make(kind)
    with pytest.raises(TypeError, match="model"):
        create(kind, client, messages=MESSAGES)
    with pytest.raises(TypeError, match="messages"):
        create(kind, client, model="test-model")
    assert wire.calls == []
    sends(kind, client, wire)


@KINDS
def test_chat_completions_create_validates_too(kind: str, wire: Wire) -> None:
    client = make(kind)

    def run(*args: Any, **kwargs: Any) -> Any:
        if kind == "sync":
            return client.chat.completions.create(*args, **kwargs)
        return asyncio.run(client.chat.completions.create(*args, **kwargs))

    with pytest.raises(ValueError, match="stream"):
        run("test-model", MESSAGES, stream=True)
    assert wire.calls == []
    with pytest.raises(Sent):
        run(model="test-model", messages=MESSAGES)
    assert len(wire.calls) == 1


@KINDS
def test_stream_false_is_allowed(kind: str, wire: Wire) -> None:
    sends(kind, make(kind), wire, stream=False)
    assert wire.plaintext()["stream"] is False


OPENAI_KWARGS: dict[str, Any] = {
    "temperature": 0.2,
    "max_tokens": 64,
    "top_p": 0.9,
    "frequency_penalty": 0.1,
    "presence_penalty": 0.1,
    "stop": ["\n\n"],
    "n": 2,
    "seed": 7,
    "user": "end-user-1",
    "response_format": {"type": "json_object"},
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
    "tool_choice": "auto",
}


@KINDS
def test_openai_kwargs_are_accepted_and_sealed(kind: str, wire: Wire) -> None:
    sends(kind, make(kind), wire, **OPENAI_KWARGS)
    assert wire.plaintext() == {"model": "test-model", "messages": MESSAGES, **OPENAI_KWARGS}


@KINDS
@pytest.mark.parametrize("tier", SECURITY_TIERS)
def test_every_documented_tier_is_accepted(kind: str, tier: str, wire: Wire) -> None:
    call = sends(kind, make(kind), wire, security_tier=tier)
    assert call["headers"]["X-Security-Tier"] == tier


# ---------------------------------------------------------------- options at construction


@pytest.mark.parametrize("value", [-1, "2", True, 1.5, None])
@pytest.mark.parametrize("cls", CONSTRUCTORS)
def test_bad_max_retries(cls: type, value: Any) -> None:
    with pytest.raises(ValueError, match="max_retries"):
        cls(URL, max_retries=value)


@pytest.mark.parametrize("value", [0, 5])
def test_good_max_retries(value: int) -> None:
    assert SyncSecureChatCompletion(URL, max_retries=value)._core.config.max_retries == value


@pytest.mark.parametrize("value", [0, -5, True, "10", 1.0, None])
@pytest.mark.parametrize("cls", CONSTRUCTORS)
def test_bad_max_response_bytes(cls: type, value: Any) -> None:
    with pytest.raises(ValueError, match="max_response_bytes"):
        cls(URL, max_response_bytes=value)


def test_good_max_response_bytes() -> None:
    assert SyncSecureChatCompletion(URL, max_response_bytes=1)._core.config.max_response_bytes == 1


@pytest.mark.parametrize("value", [0, -1, "10", True, -0.5, [10]])
@pytest.mark.parametrize("cls", CONSTRUCTORS)
def test_bad_timeout(cls: type, value: Any) -> None:
    with pytest.raises(ValueError, match="timeout"):
        cls(URL, timeout=value)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_timeout(value: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        SyncSecureChatCompletion(URL, timeout=value)


@pytest.mark.parametrize("value", [httpx.Timeout(5), None, 0.5, 10])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_good_timeout(kind: str, value: Any, wire: Wire) -> None:
    sends(kind, make(kind, timeout=value), wire)


def test_timeout_sets_the_per_call_budget() -> None:
    core = SyncSecureChatCompletion(URL, timeout=10)._core.config
    assert core.total_timeout == 10.0 and core.http_timeout == httpx.Timeout(10.0)
    core = SyncSecureChatCompletion(URL, timeout=httpx.Timeout(5))._core.config
    assert core.total_timeout is None and core.http_timeout == httpx.Timeout(5)
    core = SyncSecureChatCompletion(URL, timeout=None)._core.config
    assert core.total_timeout is None and core.http_timeout == httpx.Timeout(None)


@pytest.mark.parametrize(
    "value",
    [
        "sha256:abc",
        "md5:" + "a" * 32,
        "sha1:" + "a" * 40,
        "sha256:" + "g" * 64,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "a" * 64,
        "",
        b"sha256:" + b"a" * 64,
    ],
)
@pytest.mark.parametrize("cls", CONSTRUCTORS)
def test_bad_server_key_fingerprint(cls: type, value: Any) -> None:
    with pytest.raises(ValueError, match="server_key_fingerprint"):
        cls(URL, server_key_fingerprint=value)


@KINDS
def test_uppercase_fingerprint_is_normalised_and_pins(kind: str, keys: Keys, wire: Wire) -> None:
    fingerprint = _keys.fingerprint(keys.router)
    upper = "SHA256:" + fingerprint.split(":", 1)[1].upper()
    client = make(kind, server_key_fingerprint=upper)
    core = (client._core if kind == "sync" else client.client._core).config
    assert core.pin == fingerprint
    sends(kind, client, wire)  # the router's key matches the pin: the request goes out


@KINDS
def test_wrong_fingerprint_sends_nothing(kind: str, keys: Keys, wire: Wire) -> None:
    client = make(kind, server_key_fingerprint=_keys.fingerprint(keys.other))
    with pytest.raises(SecurityError, match="server_key_fingerprint"):
        create(kind, client, "test-model", MESSAGES)
    assert wire.calls == []


def test_fingerprint_with_trailing_newline(keys: Keys) -> None:
    fingerprint = _keys.fingerprint(keys.router)
    try:
        client = SyncSecureChatCompletion(URL, server_key_fingerprint=fingerprint + "\n")
    except ValueError:
        return
    assert client._core.config.pin == fingerprint


@pytest.mark.parametrize("value", [123, None, b"/etc/ssl/certs/ca.pem", 1.0])
@pytest.mark.parametrize("cls", CONSTRUCTORS)
def test_bad_verify(cls: type, value: Any) -> None:
    with pytest.raises(TypeError, match="verify"):
        cls(URL, verify=value)


@pytest.mark.parametrize(
    "value",
    [True, False, certifi.where(), ssl.create_default_context()],
    ids=["true", "false", "ca-path", "ssl-context"],
)
@KINDS
def test_good_verify(kind: str, value: Any, wire: Wire) -> None:
    sends(kind, make(kind, verify=value), wire)  # the pool is built with it, then sends


@pytest.mark.parametrize("value", [123, b"key"])
@pytest.mark.parametrize("cls", CONSTRUCTORS)
def test_bad_api_key_type(cls: type, value: Any) -> None:
    with pytest.raises(TypeError, match="api_key"):
        cls(URL, api_key=value)


# ---------------------------------------------------------------- environment


@pytest.mark.parametrize("cls", CONSTRUCTORS)
def test_base_url_from_the_environment(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    def url_of(client: Any) -> str:
        return client.router_url if cls is SecureCompletionClient else client.base_url

    assert url_of(cls()) == DEFAULT_BASE_URL  # control: unset means the default
    monkeypatch.setenv(BASE_URL_ENV, OTHER_URL + "/")
    assert url_of(cls()) == OTHER_URL
    assert url_of(cls(URL)) == URL  # an explicit base_url wins
    monkeypatch.setenv(BASE_URL_ENV, "")
    assert url_of(cls()) == DEFAULT_BASE_URL


@KINDS
def test_requests_go_to_the_environment_base_url(
    kind: str, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BASE_URL_ENV, OTHER_URL)
    call = sends(kind, make(kind, base_url=None), wire)
    assert call["url"] == OTHER_URL + COMPLETION_PATH


@KINDS
def test_api_key_from_the_environment(
    kind: str, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "Authorization" not in sends(kind, make(kind), wire)["headers"]  # control: none
    monkeypatch.setenv(API_KEY_ENV, "env-key")
    client = make(kind)
    assert (client._core if kind == "sync" else client.client._core).config.api_key == "env-key"
    assert sends(kind, client, wire)["headers"]["Authorization"] == "Bearer env-key"
    # an explicit api_key wins over the environment
    explicit = make(kind, api_key="explicit-key")
    assert sends(kind, explicit, wire)["headers"]["Authorization"] == "Bearer explicit-key"
    # a per-call api_key wins over both, for that call only
    call = sends(kind, explicit, wire, api_key="call-key")
    assert call["headers"]["Authorization"] == "Bearer call-key"
    assert sends(kind, explicit, wire)["headers"]["Authorization"] == "Bearer explicit-key"
    call = sends(kind, make(kind), wire, api_key="call-key")
    assert call["headers"]["Authorization"] == "Bearer call-key"


# ---------------------------------------------------------------- headers, not plaintext


@KINDS
def test_request_headers(kind: str, keys: Keys, wire: Wire) -> None:
    call = sends(kind, make(kind), wire)
    headers = call["headers"]
    assert call["method"] == "POST" and call["url"] == URL + COMPLETION_PATH
    assert headers["Content-Type"] == "application/octet-stream"
    assert uuid.UUID(headers["X-Payload-ID"]).version == 4
    assert call["payload_id"] == headers["X-Payload-ID"]
    assert urllib.parse.unquote(headers["X-Public-Key"]) == _keys.public_pem(keys.client).decode()
    assert "X-Security-Tier" not in headers and "Authorization" not in headers


@KINDS
def test_security_tier_goes_in_the_header_only(kind: str, wire: Wire) -> None:
    sends(kind, make(kind), wire, security_tier="maximum", temperature=0.5)
    assert wire.only()["headers"]["X-Security-Tier"] == "maximum"
    plaintext = wire.plaintext()
    assert plaintext == {"model": "test-model", "messages": MESSAGES, "temperature": 0.5}
    assert "security_tier" not in plaintext
    assert "maximum" not in json.dumps(plaintext)


@KINDS
def test_api_key_goes_in_authorization_only(kind: str, wire: Wire) -> None:
    secret = "sk-call-" + uuid.uuid4().hex
    sends(kind, make(kind, api_key="client-key"), wire, api_key=secret)
    call = wire.only()
    assert call["headers"]["Authorization"] == f"Bearer {secret}"
    plaintext = json.dumps(wire.plaintext())
    assert secret not in plaintext
    assert "client-key" not in plaintext
    assert secret.encode() not in call["content"]
    assert "api_key" not in wire.plaintext()
    # positive control: the same scan finds a copy planted in the plaintext
    wire.calls.clear()
    planted = [{"role": "user", "content": f"my key is {secret}"}]
    with pytest.raises(Sent):
        create(kind, make(kind), "test-model", planted, api_key=secret)
    assert secret in json.dumps(wire.plaintext())


@KINDS
def test_each_attempt_is_sealed_to_the_router_key(kind: str, keys: Keys, wire: Wire) -> None:
    sends(kind, make(kind), wire)
    with pytest.raises(SecurityError):  # control: not readable with another key
        _hybrid.open_json(wire.only()["content"], keys.other)
    assert wire.plaintext()["model"] == "test-model"


def test_the_config_is_frozen_and_with_base_url_is_a_checked_copy() -> None:
    config = SyncSecureChatCompletion(URL, max_retries=5, timeout=10)._core.config
    with pytest.raises(FrozenInstanceError):
        config.max_retries = 1  # type: ignore[misc]
    other = config.with_base_url("https://other.example/")
    assert other.base_url == "https://other.example"
    assert (other.max_retries, other.total_timeout, other.pin) == (5, 10.0, config.pin)
    assert config.base_url == URL  # the client's own is unchanged
    with pytest.raises(SecurityError, match="plain HTTP"):  # checked as the first one was
        config.with_base_url("http://other.example")
    with pytest.raises(ValueError, match="base_url"):
        config.with_base_url("ftp://other.example")
