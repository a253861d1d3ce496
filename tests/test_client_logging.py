"""No secret in any log: everything logged at DEBUG while the clients work.

The root logger and the ``nomyo``, ``httpx`` and ``httpcore`` loggers are
set to DEBUG with one handler that keeps every record, formatted (message,
traceback) and as its raw attributes; warnings are routed into logging too,
and capfd takes whatever reaches stdout/stderr.  Then the sync and the async
client each make successful and failing requests:

* against ``nomyo serve``: an answer with the right API key, and a 401 with
  a wrong one (AuthenticationError);
* against the FaultRouter: an answer distinct from the prompt, a tampered
  answer (SecurityError), and a 503 that is retried once and then answered.

None of these may appear in any captured log, in what was printed, or in the
message, repr, cause chain or ``error_details`` of the exceptions raised: the
prompt, the answers, the API keys (right and wrong), the client's private
key (its PEM, every base64 line of it, its DER in hex), and every AES key
used in the process (taken where ``nomyo._hybrid`` hands it to AESGCM), as
raw bytes, bytes repr, hex and base64 (standard, url-safe, unpadded).

Controls in the same test: the records show the requests happened (the
POST URL of each router, httpcore's DEBUG lines, the retry), AES keys were
recorded, and the checker finds each kind of secret in a line planted
through the ``nomyo`` logger, and the prompt in something printed.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from starlette.responses import Response

import nomyo
from nomyo import _hybrid, _keys
from nomyo._constants import COMPLETION_PATH, PRIVATE_KEY_FILE
from tests.faults import Behaviour, Ctx, FaultRouter, ok, status, tampered_tag
from tests.servers import API_KEY, Endpoint

PROMPT = "prompt-" + uuid.uuid4().hex
ANSWER = "answer-" + uuid.uuid4().hex
WRONG_KEY = "wrong-api-key-" + uuid.uuid4().hex
LOGGERS = ("", "nomyo", "httpx", "httpcore")


class Keep(logging.Handler):
    """Keeps every record: formatted, and its attributes as a repr."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(pathname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record) + "\n" + repr(vars(record)))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def everything_logged() -> Iterator[Keep]:
    """Root, nomyo, httpx and httpcore at DEBUG into one Keep; warnings too."""
    keep = Keep()
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    root.addHandler(keep)
    logging.captureWarnings(True)
    try:
        yield keep
    finally:
        logging.captureWarnings(False)
        root.removeHandler(keep)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture
def aes_keys(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every AES key handed to AESGCM inside nomyo._hybrid (client and FaultRouter)."""
    recorded: list[bytes] = []

    def recording(key: Any) -> Any:
        recorded.append(bytes(key))
        return AESGCM(key)

    monkeypatch.setattr(_hybrid, "AESGCM", recording)
    return recorded


@pytest.fixture(scope="module")
def key_dir(client_key: rsa.RSAPrivateKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("logging_client_keys")
    _keys.save_private_key(client_key, folder / PRIVATE_KEY_FILE)
    return folder


def forms(raw: bytes) -> list[str]:
    """The ways bytes end up in text."""
    return [
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
        repr(raw)[2:-1],
        raw.decode("latin-1"),
    ]


def secrets_of(client_key: rsa.RSAPrivateKey, aes_keys: list[bytes]) -> dict[str, list[str]]:
    pem = client_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    der = client_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    body_lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return {
        "prompt": [PROMPT],
        "answer": [ANSWER],
        "api key": [API_KEY],
        "wrong api key": [WRONG_KEY],
        "private key": ["PRIVATE KEY", pem, *body_lines, der.hex(), der.hex().upper()],
        "aes key": [form for key in aes_keys for form in forms(key)],
    }


def leaks(text: str, secrets: dict[str, list[str]]) -> list[str]:
    """The names of the secrets found in ``text``."""
    return [name for name, values in secrets.items() if any(v and v in text for v in values)]


def described(exc: BaseException) -> str:
    """All an exception tells: messages, reprs, causes, error_details."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), repr(getattr(seen, "error_details", None))]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def distinct_answer(text: str) -> Behaviour:
    """A true answer to the request, whose content is ``text`` (not the prompt)."""

    def run(ctx: Ctx) -> Response:
        answer = ctx.answer()
        answer["choices"][0]["message"]["content"] = text
        return Response(ctx.seal(answer), media_type="application/json")

    return run


def one_request(
    kind: str, url: str, ca: Path, key_dir: Path, **options: Any
) -> Callable[[], dict[str, Any]]:
    """One create(PROMPT) by a fresh client of ``kind``, closed afterwards."""
    options.update(verify=str(ca), key_dir=key_dir)
    messages = [{"role": "user", "content": PROMPT}]
    if kind == "sync":

        def sync() -> dict[str, Any]:
            with nomyo.SyncSecureChatCompletion(url, **options) as client:
                return client.create("echo", messages)

        return sync

    async def go() -> dict[str, Any]:
        async with nomyo.SecureChatCompletion(url, **options) as client:
            return await client.create("echo", messages)

    return lambda: asyncio.run(go())


def content(answer: dict[str, Any]) -> Any:
    return answer["choices"][0]["message"]["content"]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_no_secret_in_any_log_at_debug(
    kind: str,
    everything_logged: Keep,
    aes_keys: list[bytes],
    capfd: pytest.CaptureFixture[str],
    server: Endpoint,
    router: FaultRouter,
    tls: dict[str, Path],
    key_dir: Path,
    client_key: rsa.RSAPrivateKey,
) -> None:
    to_router: dict[str, Any] = {"url": router.url, "ca": tls["ca"], "key_dir": key_dir}
    to_server: dict[str, Any] = {"url": server.url, "ca": server.ca, "key_dir": key_dir}
    raised: list[BaseException] = []
    router.script = [distinct_answer(ANSWER), tampered_tag(), status(503, retry_after="0"), ok()]

    # successes
    assert content(one_request(kind, **to_router)()) == ANSWER
    assert content(one_request(kind, **to_server, api_key=API_KEY)()) == PROMPT
    # failures
    with pytest.raises(nomyo.SecurityError) as tampered:
        one_request(kind, **to_router)()
    raised.append(tampered.value)
    with pytest.raises(nomyo.AuthenticationError) as refused:
        one_request(kind, **to_server, api_key=WRONG_KEY, max_retries=0)()
    raised.append(refused.value)
    # a 503, retried, then answered
    assert content(one_request(kind, **to_router, max_retries=1)()) == PROMPT

    logged = everything_logged.text
    out, err = capfd.readouterr()
    secrets = secrets_of(client_key, aes_keys)
    assert leaks(logged, secrets) == []
    assert leaks(out + err, secrets) == []
    for exc in raised:
        assert leaks(described(exc), secrets) == [], type(exc).__name__

    # the controls: the requests were logged down to httpcore, keys were recorded ...
    assert logged.count(router.url + COMPLETION_PATH) >= 4
    assert server.url + COMPLETION_PATH in logged
    assert "retrying after ServiceUnavailableError" in logged
    assert "httpcore" in logged and "send_request_headers" in logged
    assert len(router.posts) == 4
    assert len(aes_keys) >= 8  # a seal and an open for each of 4 answered requests at least
    # ... and the checker finds each kind of secret once it is in a log line
    log = logging.getLogger("nomyo")
    planted = {
        "prompt": PROMPT,
        "answer": ANSWER,
        "api key": API_KEY,
        "wrong api key": WRONG_KEY,
        "private key": secrets["private key"][2],  # one base64 line of the PEM
        "aes key": aes_keys[0].hex(),
    }
    for name, value in planted.items():
        before = len(everything_logged.lines)
        log.debug("planted %s", value)
        assert leaks("\n".join(everything_logged.lines[before:]), secrets) == [name]
    print("planted", PROMPT)
    out, err = capfd.readouterr()
    assert leaks(out + err, secrets) == ["prompt"]
