"""What a normal user sees: no CAP_IPC_LOCK and RLIMIT_MEMLOCK = 64 KiB."""

from __future__ import annotations

import json

import pytest

from tests.conftest import native_only, needs_root, run_python

pytestmark = [native_only, needs_root]

LIMIT = 64 * 1024

REPORT = """
import json, warnings
warnings.simplefilter("always")
caught = []
warnings.showwarning = lambda message, category, *a, **k: caught.append(
    (category.__name__, str(message)))
import nomyo
{body}
print(json.dumps(dict(result, warnings=caught)))
"""


def run_limited(body: str) -> dict:  # type: ignore[type-arg]
    proc = run_python(REPORT.format(body=body), memlock=LIMIT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_buffers_work_unlocked_with_exactly_one_warning() -> None:
    result = run_limited(
        """
import os
bufs = []
for i in range(12):   # 12 x 16 KiB: more than the limit allows
    b = nomyo.SecureBuffer(16 * 1024 - 100)
    memoryview(b)[:4] = b"abcd"
    bufs.append(b)
result = dict(
    uid=os.getuid(),
    locked=[b.locked for b in bufs],
    readback=[bytes(memoryview(b)[:4]).decode() for b in bufs],
    limit=nomyo.protection().memlock_limit,
)
"""
    )
    assert result["uid"] == 65534 and result["limit"] == LIMIT
    locked = result["locked"]
    assert locked[0] is True and locked[-1] is False  # some fit, the rest do not
    assert locked == sorted(locked, reverse=True)
    assert set(result["readback"]) == {"abcd"}
    lock_warnings = [w for w in result["warnings"] if w[0] == "SecureMemoryWarning"]
    assert len(lock_warnings) == 1, result["warnings"]
    message = lock_warnings[0][1]
    assert "RLIMIT_MEMLOCK is 64 KiB" in message and "LimitMEMLOCK" in message


def test_require_locked_raises_when_the_limit_is_reached() -> None:
    result = run_limited(
        """
small = nomyo.SecureBuffer(1000, require_locked=True)
try:
    nomyo.SecureBuffer(200 * 1024, require_locked=True)
    raised = None
except nomyo.SecurityError as exc:
    raised = str(exc)
result = dict(small_locked=small.locked, raised=raised)
"""
    )
    assert result["small_locked"] is True
    assert result["raised"] and "RLIMIT_MEMLOCK" in result["raised"]
    assert result["warnings"] == []  # raising replaces the warning


def test_cached_free_pages_are_given_back_when_the_limit_is_short() -> None:
    # three 16 KiB regions, closed: 48 KiB stay locked in the reuse cache;
    # a 32 KiB buffer only fits if the cache lets go of them
    result = run_limited(
        """
from nomyo import _native
for b in [nomyo.SecureBuffer(12 * 1024) for _ in range(3)]:
    b.close()
cached = _native.cache_pages()
big = nomyo.SecureBuffer(28 * 1024)
result = dict(cached=cached, locked=big.locked, after=_native.cache_pages())
"""
    )
    assert result["cached"] == 12
    assert result["locked"] is True and result["after"] == 0
    assert result["warnings"] == []


def test_secret_memory_counts_against_the_limit_and_degrades() -> None:
    result = run_limited(
        """
fits = nomyo.SecureBuffer(1000, secret_memory=True)
too_big = nomyo.SecureBuffer(256 * 1024, secret_memory=True)
result = dict(fits=fits.secret_memory, too_big=too_big.secret_memory,
              too_big_locked=too_big.locked)
"""
    )
    assert result["fits"] is True
    assert result["too_big"] is False and result["too_big_locked"] is False
    causes = sorted(message.split(" (")[0] for _, message in result["warnings"])
    assert causes == ["nomyo could not lock secure memory", "nomyo could not use memfd_secret"]


def test_lock_budget_measures_the_limit_and_what_is_locked() -> None:
    # nomyo doctor's numbers: 64 KiB leave no room for a request's prompt;
    # the control in the same process: a locked buffer shows in `locked`
    result = run_limited(
        """
from nomyo.memory import lock_budget
before = lock_budget()
buf = nomyo.SecureBuffer(16 * 1024)
after = lock_budget()
result = dict(
    before=[before.cap_ipc_lock, before.limit, before.locked, before.per_request, before.enough],
    after_locked=after.locked,
    buffer_locked=buf.locked,
)
"""
    )
    cap, limit, locked, per_request, enough = result["before"]
    assert cap is False and limit == LIMIT and enough is False
    assert per_request == max(0, (LIMIT - locked - 64 * 1024) // 2) == 0
    assert result["buffer_locked"] is True and result["after_locked"] > locked


def test_lock_budget_with_cap_ipc_lock_has_no_limit() -> None:
    # root here (needs_root): CAP_IPC_LOCK, so no limit applies, whatever RLIMIT_MEMLOCK says
    from pathlib import Path

    from nomyo.memory import lock_budget

    status = Path("/proc/self/status").read_text()
    cap_eff = int(next(x for x in status.splitlines() if x.startswith("CapEff:")).split()[1], 16)
    if not cap_eff & (1 << 14):
        pytest.skip("root without CAP_IPC_LOCK (a restricted container)")
    budget = lock_budget()
    assert budget.cap_ipc_lock and budget.limit is None and budget.per_request is None
    assert budget.enough
