"""The ``maximum`` security tier and low lock limits, as a normal user sees them.

As uid 65534 with no capabilities and RLIMIT_MEMLOCK = 64 KiB (tests/conftest.py):

- standard and high tier requests with 512 KiB prompts work, degraded, with
  exactly one SecureMemoryWarning between them;
- a maximum-tier request with the same prompt, whose buffers cannot all be
  locked, raises SecurityError before anything is sent (no POST);
- a small maximum-tier request, whose buffers fit the limit, works (the
  control: the tier itself is not refused);
- ``secure_memory=False`` with ``maximum`` raises SecurityError before any
  request, even the router key's, and so does the Python fallback.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import needs_root, run_python
from tests.servers import API_KEY, Endpoint

# what the child needs from the standard library and the venv, loaded while root
_PRELOAD = (
    "import httpx, httpcore, h11, ssl, uuid, hmac, concurrent.futures, idna, encodings.idna\n"
    "import nomyo._client, nomyo._hybrid, nomyo._keys, nomyo._transport\n"
)

_CHILD = """
import json, ssl, sys, warnings
import httpx
import nomyo

url, ca_pem, api_key = sys.argv[1:4]
sent = []
_real_send = httpx.Client.send


def spy(self, request, **kwargs):
    sent.append(f"{request.method} {request.url.path}")
    return _real_send(self, request, **kwargs)


httpx.Client.send = spy
context = ssl.create_default_context(cadata=ca_pem)
report = {}


def attempt(client, text, tier):
    before = len(sent)
    try:
        answer = client.create("echo", [{"role": "user", "content": text}], security_tier=tier)
    except nomyo.SecurityError as exc:
        return {"error": "SecurityError", "message": str(exc), "sent": sent[before:]}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc), "sent": sent[before:]}
    same = answer["choices"][0]["message"]["content"] == text
    return {"ok": same, "sent": sent[before:]}


MODE = sys.argv[4]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if MODE == "limits":
        client = nomyo.SyncSecureChatCompletion(url, api_key=api_key, verify=context)
        big = "".join("prompt %d " % i for i in range(60000))[: 512 * 1024]
        report["standard"] = attempt(client, big, "standard")
        report["high"] = attempt(client, big, "high")
        report["maximum_big"] = attempt(client, big, "maximum")
        report["maximum_small"] = attempt(client, "a small prompt", "maximum")
        report["locked"] = nomyo.SecureBuffer(1024).locked
    else:  # "plain": secure_memory=False; "fallback": the Python backend, secure_memory on
        client = nomyo.SyncSecureChatCompletion(
            url, api_key=api_key, verify=context, secure_memory=MODE == "fallback"
        )
        report["maximum"] = attempt(client, "small", "maximum")
        report["standard"] = attempt(client, "small", "standard")  # the control
    client.close()
report["warnings"] = [
    str(w.message) for w in caught if issubclass(w.category, nomyo.SecureMemoryWarning)
]
report["backend"] = nomyo.protection().backend
print(json.dumps(report))
"""

POST = "POST /v1/chat/secure_completion"


def _run(server: Endpoint, mode: str, **kwargs: object) -> dict[str, object]:
    argv = [server.url, server.ca.read_text(), API_KEY, mode]
    done = run_python(f"import sys; sys.argv = ['child', *{argv!r}]\n" + _CHILD, **kwargs)  # type: ignore[arg-type]
    assert done.returncode == 0, done.stderr[-4000:]
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@needs_root
def test_low_lock_limit_degrades_standard_and_high_and_guards_maximum(server: Endpoint) -> None:
    report = _run(server, "limits", memlock=64 * 1024, preload=_PRELOAD)
    assert report["standard"] == {"ok": True, "sent": ["GET /pki/public_key", POST]}
    assert report["high"] == {"ok": True, "sent": [POST]}
    big = report["maximum_big"]
    assert isinstance(big, dict)
    assert big["error"] == "SecurityError" and "lock" in big["message"]
    assert big["sent"] == []  # refused before anything was sent
    assert report["maximum_small"] == {"ok": True, "sent": [POST]}
    assert report["locked"] is True  # small buffers do lock under this limit
    warnings = report["warnings"]
    assert isinstance(warnings, list) and len(warnings) == 1, warnings
    assert "RLIMIT_MEMLOCK" in warnings[0] or "memlock" in warnings[0].lower()


@pytest.mark.parametrize(("mode", "backend"), [("plain", "native"), ("fallback", "python")])
def test_maximum_needs_secure_memory_that_can_be_locked(
    server: Endpoint, mode: str, backend: str
) -> None:
    report = _run(server, mode, env={"NOMYO_MEMORY_BACKEND": backend})
    assert report["backend"] == backend
    maximum = report["maximum"]
    assert isinstance(maximum, dict)
    assert maximum["error"] == "SecurityError" and "maximum" in maximum["message"]
    assert maximum["sent"] == []  # not even the router key was fetched
    assert report["standard"] == {"ok": True, "sent": ["GET /pki/public_key", POST]}
