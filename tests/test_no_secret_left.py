"""No secret left in memory: after 200 requests, each answer passed to
``nomyo.wipe``, the client process's readable memory holds no AES key (the
request's or the answer's), no request plaintext and no answer plaintext.

The client runs in its own process (``_CHILD`` below) against ``nomyo
serve``.  It reports each secret through a pipe as it is made, without
keeping a copy: the AES keys straight from the secure buffers that
``AESGCM`` is given (``os.write`` of a memoryview), the random bytes each
prompt is made from (wiped once written), and each answer's ``id`` (its
encoded copy wiped).  The test process keeps the needles and reads the
child's memory from outside (tests/memscan.py), so the needles the scan
looks for exist only in the scanning process.

- text needles: each prompt's 48 random hex digits (inside text with JSON
  escapes and non-Latin-1 characters, as real prompts have; the echo model
  sends it back, so it is in the serialized request and in the answer
  plaintext) and each answer's id (32 hex digits, only in the answer);
- key needles: the 32-byte AES key of every request and every answer.

The caller's side of the bargain: the child drops its own objects, passing
the answer and its messages to ``nomyo.wipe``.

Positive control, in the same process right after the clean scan: one more
request whose answer is kept and whose AES keys are copied into a heap
bytearray; the second scan must find exactly those.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nomyo.memory import BACKEND
from tests import memscan
from tests.servers import API_KEY, Endpoint

REQUESTS = 200

_CHILD = r"""
import asyncio, gc, os, sys
import nomyo
from nomyo import _hybrid

fd, url, ca, api_key, n, kind = int(sys.argv[1]), *sys.argv[2:5], int(sys.argv[5]), sys.argv[6]
_real_aesgcm = _hybrid.AESGCM
planted = []
plant = False


def reporting_aesgcm(key):
    os.write(fd, b"K")
    os.write(fd, key)  # from the secure buffer: no copy in this process
    if plant:
        planted.append(bytearray(key))  # the control's copy
    return _real_aesgcm(key)


_hybrid.AESGCM = reporting_aesgcm


def messages():
    raw = os.urandom(24)
    os.write(fd, b"P")
    os.write(fd, raw)
    needle = raw.hex()
    assert nomyo.wipe(raw) == 1
    # text as it comes: JSON escapes and characters beyond Latin-1 (a UCS-2 str)
    text = "".join(("Befund:\n\t\"", needle, "\" \u2014 Patientin \u00fc, Verdacht auf \u2026"))
    assert nomyo.wipe(needle) == 1
    return [{"role": "user", "content": text}]


def report_answer(answer):
    ident = answer["id"].encode("ascii")
    os.write(fd, b"I")
    os.write(fd, ident)
    assert nomyo.wipe(ident) == 1


def done(message):
    sys.stdout.write(message + "\n")
    sys.stdout.flush()
    return sys.stdin.readline().strip()


# run_async and run_sync are twins on purpose: each holds the answer in one
# local only, so that nomyo.wipe(answer) sees no other reference (passing it
# on to a helper adds one, and wipe() then rightly leaves it alone)
async def run_async(client, count, keep):
    kept = []
    for _ in range(count):
        sent = messages()
        answer = await client.create(model="echo", messages=sent)
        report_answer(answer)
        if keep:
            kept.append(answer)
        else:
            nomyo.wipe(answer)
            nomyo.wipe(sent)
        del answer, sent
    return kept


def run_sync(client, count, keep):
    kept = []
    for _ in range(count):
        sent = messages()
        answer = client.create(model="echo", messages=sent)
        report_answer(answer)
        if keep:
            kept.append(answer)
        else:
            nomyo.wipe(answer)
            nomyo.wipe(sent)
        del answer, sent
    return kept


if kind == "sync":
    client = nomyo.SyncSecureChatCompletion(url, api_key=api_key, verify=ca)
    run_sync(client, n, False)
    gc.collect()
    assert done("scan") == "plant"
    plant = True
    kept = run_sync(client, 1, True)
    client.close()
else:
    client = nomyo.SecureChatCompletion(url, api_key=api_key, verify=ca)

    async def main():
        await run_async(client, n, False)
        gc.collect()
        assert done("scan") == "plant"
        global plant
        plant = True
        kept = await run_async(client, 1, True)
        await client.aclose()
        return kept

    kept = asyncio.run(main())
gc.collect()
done("scan")
"""


class Needles:
    """What the child reports through its pipe, parsed as it arrives."""

    def __init__(self, fd: int) -> None:
        self.keys: list[bytes] = []
        self.prompts: list[str] = []
        self.ids: list[str] = []
        self._file = os.fdopen(fd, "rb", buffering=0)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            more = self._file.read(n - len(data))
            if not more:
                raise EOFError
            data += more
        return data

    def _read(self) -> None:
        try:
            while True:
                tag = self._exact(1)
                if tag == b"K":
                    self.keys.append(self._exact(32))
                elif tag == b"P":
                    self.prompts.append(self._exact(24).hex())
                elif tag == b"I":
                    ident = self._exact(len("chatcmpl-") + 32).decode()
                    assert ident.startswith("chatcmpl-")
                    self.ids.append(ident.removeprefix("chatcmpl-"))
                else:
                    raise AssertionError(f"unknown tag {tag!r}")
        except EOFError:
            pass

    def counts(self) -> tuple[int, int, int]:
        return len(self.keys), len(self.prompts), len(self.ids)

    def counts_once(
        self, expected: tuple[int, int, int], seconds: float = 30.0
    ) -> tuple[int, int, int]:
        """The counts once ``expected`` is reached or ``seconds`` pass: the
        pipe is read by a thread of ours, which may still be behind the
        child's "scan" line on the other pipe."""
        deadline = time.monotonic() + seconds
        while (
            any(n < e for n, e in zip(self.counts(), expected, strict=True))
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        return self.counts()


def _scan(pid: int, needles: Needles) -> memscan.Scan:
    return memscan.scan(pid, list(needles.keys), [*needles.prompts, *needles.ids])


def _describe(result: memscan.Scan, needles: Needles) -> str:
    n_prompts = len(needles.prompts)
    lines = []
    for hit in result.hits:
        what = "AES key"
        if hit.kind == "text":
            what = "prompt" if hit.needle < n_prompts else "answer id"
        lines.append(f"{what} #{hit.needle} at {hit.address:#x} in {hit.mapping}: {hit.context!r}")
    return "\n".join(lines[:40])


@pytest.mark.skipif(BACKEND != "native", reason="the claim is the native backend's")
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_no_key_prompt_or_answer_left_after_200_requests(
    server: Endpoint, kind: str, tmp_path: Path
) -> None:
    read_end, write_end = os.pipe()
    child = subprocess.Popen(
        [
            sys.executable, "-c", _CHILD, str(write_end), server.url, str(server.ca), API_KEY,
            str(REQUESTS), kind,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "child.log").open("w"),
        pass_fds=(write_end,),
        text=True,
        cwd=tmp_path,
    )  # fmt: skip
    os.close(write_end)
    needles = Needles(read_end)
    assert child.stdin is not None and child.stdout is not None
    try:
        line = child.stdout.readline().strip()
        assert line == "scan", (tmp_path / "child.log").read_text()[-3000:]
        expected = (2 * REQUESTS, REQUESTS, REQUESTS)
        assert needles.counts_once(expected) == expected
        assert len(set(needles.keys)) == 2 * REQUESTS  # a fresh key each way, each time
        clean = _scan(child.pid, needles)
        before = needles.counts()

        child.stdin.write("plant\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "scan"
        expected = (before[0] + 2, before[1] + 1, before[2] + 1)
        assert needles.counts_once(expected) == expected
        control = _scan(child.pid, needles)
        child.stdin.write("end\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    print(
        f"\n{kind}: scanned {clean.bytes_read >> 20} MiB in {clean.mappings} mappings "
        f"({clean.bytes_unreadable >> 10} KiB unreadable) for {before[0]} AES keys, "
        f"{before[1]} prompts and {before[2]} answer ids: {len(clean.hits)} found"
    )
    # the control: the kept answer (its prompt and id) and the two copied keys are found
    found = {(hit.kind, hit.needle) for hit in control.hits}
    keys, prompts, _ = before
    assert ("key", keys) in found and ("key", keys + 1) in found
    assert ("text", prompts) in found  # the kept answer's content: the last prompt
    assert ("text", len(needles.prompts) + before[2]) in found  # and its id
    # ... and nothing from the 200 wiped requests, then or now
    assert clean.hits == [], _describe(clean, needles)
    ids = range(prompts + 1, prompts + 1 + before[2])  # the wiped answers' ids
    old = [
        hit
        for hit in control.hits
        if (hit.kind == "key" and hit.needle < keys)
        or (hit.kind == "text" and (hit.needle < prompts or hit.needle in ids))
    ]
    assert old == [], _describe(control, needles)
