"""attestation_verifier= and require_attestation=: the router's
``_metadata["tpm_attestation"]`` handed, as sent, to the caller's verifier
before an answer is returned (sync and async twins against tests/faults.py's
router, which adds or omits it), and SecurityError instead of the answer when
it is missing under require_attestation or the verifier rejects it.  Each
refusal has a control: the same client accepting a good answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nomyo
import nomyo._client
from nomyo import _hybrid, _keys
from nomyo._constants import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE
from tests.faults import FaultRouter, attested, ok

MESSAGES = [{"role": "user", "content": "attest me"}]
EVIDENCE = {"quote": "AAEC-opaque-to-nomyo", "pcrs": [0, 7], "nonce": "n-1"}


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("attestation-keys")
    key = _keys.generate_private_key(2048)
    _keys.save_private_key(key, folder / PRIVATE_KEY_FILE)
    _keys.save_public_key(key, folder / PUBLIC_KEY_FILE)
    return folder


class Recorder:
    """A verifier that records its calls and answers as told."""

    def __init__(self, verdict: Callable[[Any], Any] = lambda attestation: None) -> None:
        self.calls: list[tuple[Any, str]] = []
        self.verdict = verdict

    def __call__(self, attestation: Any, payload_id: str) -> Any:
        self.calls.append((attestation, payload_id))
        return self.verdict(attestation)


def ask(
    kind: str, router: FaultRouter, tls: dict[str, Path], key_dir: Path, **options: Any
) -> dict[str, Any]:
    """One create() with a fresh client of ``kind`` ("sync" or "async")."""
    settings = dict(verify=str(tls["ca"]), key_dir=str(key_dir), max_retries=0, **options)
    base_url = settings.pop("base_url", router.url)
    call: dict[str, Any] = {"base_url": router.url} if base_url != router.url else {}
    if kind == "sync":
        with nomyo.SyncSecureChatCompletion(base_url, **settings) as client:
            return client.create("echo", MESSAGES, **call)

    async def main() -> dict[str, Any]:
        async with nomyo.SecureChatCompletion(base_url, **settings) as client:
            return await client.create("echo", MESSAGES, **call)

    return asyncio.run(main())


KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


@KINDS
def test_verifier_gets_the_attestation_and_payload_id(
    kind: str, router: FaultRouter, tls: dict[str, Path], key_dir: Path
) -> None:
    verifier = Recorder()
    router.script = [attested(EVIDENCE)]
    answer = ask(kind, router, tls, key_dir, attestation_verifier=verifier)
    sent_id = router.posts[-1].headers["x-payload-id"]
    assert verifier.calls == [(EVIDENCE, sent_id)]
    assert answer["_metadata"]["tpm_attestation"] == EVIDENCE  # surfaced to the caller too
    assert answer["_metadata"]["payload_id"] == sent_id
    assert answer["choices"][0]["message"]["content"] == "attest me"


@KINDS
@pytest.mark.parametrize("value", ["a-string", ["a", "list"], 42, {"nested": {"x": [1]}}])
def test_attestation_passed_as_sent(
    kind: str, value: Any, router: FaultRouter, tls: dict[str, Path], key_dir: Path
) -> None:
    verifier = Recorder(lambda attestation: True)
    router.script = [attested(value)]
    ask(kind, router, tls, key_dir, attestation_verifier=verifier, require_attestation=True)
    assert [attestation for attestation, _ in verifier.calls] == [value]


@KINDS
def test_verifier_that_raises_makes_security_error(
    kind: str,
    router: FaultRouter,
    tls: dict[str, Path],
    key_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def reject(attestation: Any) -> None:
        raise ValueError("quote signed by an unknown TPM")

    wiped: list[Any] = []
    monkeypatch.setattr(nomyo._client, "wipe", wiped.append)

    router.script = [attested({"quote": "bad-quote-value"})]
    with pytest.raises(nomyo.SecurityError, match="rejected") as refused:
        ask(kind, router, tls, key_dir, attestation_verifier=Recorder(reject))
    assert isinstance(refused.value.__cause__, ValueError)  # kept for debugging
    assert "bad-quote-value" not in str(refused.value)
    # the answer (attestation included) went to wipe() before the error was raised
    (answer,) = wiped
    assert answer["_metadata"]["tpm_attestation"] == {"quote": "bad-quote-value"}
    # control: the same client settings accept what the verifier accepts
    router.script = [attested({"quote": "good"})]
    assert ask(kind, router, tls, key_dir, attestation_verifier=Recorder())["choices"]


@KINDS
def test_verifier_that_returns_false_rejects(
    kind: str, router: FaultRouter, tls: dict[str, Path], key_dir: Path
) -> None:
    router.script = [attested(EVIDENCE)]
    with pytest.raises(nomyo.SecurityError, match="rejected"):
        ask(kind, router, tls, key_dir, attestation_verifier=Recorder(lambda a: False))
    router.script = [attested(EVIDENCE)]  # control: True and None accept
    assert ask(kind, router, tls, key_dir, attestation_verifier=Recorder(lambda a: True))


@KINDS
def test_require_attestation_refuses_an_answer_without_one(
    kind: str, router: FaultRouter, tls: dict[str, Path], key_dir: Path
) -> None:
    verifier = Recorder()
    router.script = [ok()]
    with pytest.raises(nomyo.SecurityError, match="no tpm_attestation"):
        ask(kind, router, tls, key_dir, attestation_verifier=verifier, require_attestation=True)
    router.script = [attested(None)]  # null is no attestation either
    with pytest.raises(nomyo.SecurityError, match="no tpm_attestation"):
        ask(kind, router, tls, key_dir, attestation_verifier=verifier, require_attestation=True)
    assert verifier.calls == []
    # control: the same settings, and the router attests
    router.script = [attested(EVIDENCE)]
    ask(kind, router, tls, key_dir, attestation_verifier=verifier, require_attestation=True)
    assert len(verifier.calls) == 1


@KINDS
def test_without_require_a_missing_attestation_passes(
    kind: str, router: FaultRouter, tls: dict[str, Path], key_dir: Path
) -> None:
    verifier = Recorder(lambda a: False)
    router.script = [ok()]
    answer = ask(kind, router, tls, key_dir, attestation_verifier=verifier)
    assert "tpm_attestation" not in answer["_metadata"] and verifier.calls == []


@KINDS
def test_policy_follows_a_per_call_base_url(
    kind: str, router: FaultRouter, tls: dict[str, Path], key_dir: Path
) -> None:
    # the client is made for another router; create(base_url=router.url) goes to this one
    router.script = [ok()]
    with pytest.raises(nomyo.SecurityError, match="no tpm_attestation"):
        ask(
            kind,
            router,
            tls,
            key_dir,
            base_url="https://127.0.0.1:9",
            attestation_verifier=Recorder(),
            require_attestation=True,
        )
    assert len(router.posts) == 1  # control: it did reach this router


def test_decrypt_response_is_checked_too() -> None:
    client = nomyo.SecureCompletionClient(
        "https://router.invalid", attestation_verifier=Recorder(lambda a: a == "good")
    )
    client.key_size = 2048
    client.generate_keys()
    pem = client.public_key_pem
    assert pem is not None
    public = _keys.load_public_key(pem)

    def package(attestation: str) -> bytes:
        answer = {"choices": [], "_metadata": {"payload_id": "p", "tpm_attestation": attestation}}
        return _hybrid.seal_json(answer, public, processed_at=int(time.time()))

    async def main() -> None:
        opened = await client.decrypt_response(package("good"), "p")
        assert opened["_metadata"]["tpm_attestation"] == "good"
        with pytest.raises(nomyo.SecurityError, match="rejected"):
            await client.decrypt_response(package("bad"), "p")

    asyncio.run(main())


def test_policy_checked_at_construction() -> None:
    url = "https://router.invalid"
    with pytest.raises(ValueError, match="needs an attestation_verifier"):
        nomyo.SecureChatCompletion(url, require_attestation=True)
    with pytest.raises(TypeError, match="callable"):
        nomyo.SyncSecureChatCompletion(url, attestation_verifier="not callable")  # type: ignore[arg-type]

    async def coroutine_verifier(attestation: Any, payload_id: str) -> None:
        raise AssertionError("never awaited")

    with pytest.raises(TypeError, match="coroutine"):
        nomyo.SecureCompletionClient(url, attestation_verifier=coroutine_verifier)
    with pytest.raises(TypeError, match="True or False"):
        nomyo.SecureChatCompletion(url, attestation_verifier=Recorder(), require_attestation=1)  # type: ignore[arg-type]
    nomyo.SecureChatCompletion(url, attestation_verifier=Recorder(), require_attestation=True)


def test_a_verifier_returning_an_awaitable_rejects(
    router: FaultRouter, tls: dict[str, Path], key_dir: Path
) -> None:
    async def check() -> None:
        return None

    router.script = [attested(EVIDENCE)]  # a lambda hiding a coroutine: its verdict is unread
    with pytest.raises(nomyo.SecurityError, match="rejected"):
        ask("sync", router, tls, key_dir, attestation_verifier=lambda a, p: check())
