"""A client used in a process forked from the one that made it refuses with a
SecurityError before anything is sent (its connections, key-generation thread
and secure memory belong to the parent); the parent's client keeps working,
and a new client made in the child works (the controls)."""

from __future__ import annotations

import pytest

from tests.conftest import run_python
from tests.servers import API_KEY, Endpoint

_CHILD = """
import asyncio, os, sys
import httpx
import nomyo

url, ca, api_key, kind = sys.argv[1:5]
msgs = [{"role": "user", "content": "before the fork"}]
if kind == "sync":
    client = nomyo.SyncSecureChatCompletion(url, api_key=api_key, verify=ca)
    ask = lambda text: client.create("echo", [{"role": "user", "content": text}])
else:
    client = nomyo.SecureChatCompletion(url, api_key=api_key, verify=ca)
    ask = lambda text: asyncio.run(client.create("echo", [{"role": "user", "content": text}]))
assert ask("before")["choices"][0]["message"]["content"] == "before"

pid = os.fork()
if pid == 0:
    sent = []
    for cls in (httpx.Client, httpx.AsyncClient):
        real = cls.send
        def spy(self, *a, _real=real, **k):
            sent.append(1)
            return _real(self, *a, **k)
        cls.send = spy
    code = 0
    try:
        ask("in the child")
        code = 10  # it must not work
    except nomyo.SecurityError as exc:
        if "fork" not in str(exc) or str(os.getppid()) not in str(exc):
            code = 11
    except BaseException:
        code = 12
    if sent:
        code = 13  # something went out
    # the control: a client made in the child works (and does send)
    fresh = nomyo.SyncSecureChatCompletion(url, api_key=api_key, verify=ca)
    ok = fresh.create("echo", [{"role": "user", "content": "fresh"}])
    if ok["choices"][0]["message"]["content"] != "fresh" or not sent:
        code = code or 14
    os._exit(code)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
# the parent's client is unaffected
assert ask("after")["choices"][0]["message"]["content"] == "after"
print("parent ok")
"""


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_forked_child_gets_a_clear_error_and_sends_nothing(server: Endpoint, kind: str) -> None:
    done = run_python(
        f"import sys; sys.argv = ['x', {server.url!r}, {str(server.ca)!r}, {API_KEY!r}, {kind!r}]\n"
        + _CHILD
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["child", "0", "parent", "ok"], done.stdout + done.stderr[-2000:]
