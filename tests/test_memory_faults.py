"""Memory faults, one fresh process each: the process must die by the signal.

Each child writes or reads through ctypes where no Python API would let it.
The guard-page tests are segfaults_on_purpose: under ASan (make sanitize) the
runtime's SIGSEGV handler would report the fault and exit 1 instead.  The
canary tests die by SIGABRT, which ASan leaves alone: they run in that lane.
"""

from __future__ import annotations

import signal

import pytest

from tests.conftest import native_only, run_python

pytestmark = native_only

PRELUDE = """
import ctypes, faulthandler, sys
faulthandler.disable()
import nomyo
from nomyo import _native
buf = nomyo.SecureBuffer({size})
memoryview(buf)[:] = b"s" * {size}
print("ready", flush=True)
"""


#: corrupts one byte by flipping all its bits: writing a fixed value would leave
#: a canary byte that already held it (1 in 256) intact, and no abort would come
FLIP = "flip = ctypes.c_ubyte.from_address({address}); flip.value ^= 0xFF\n"


def run_fault(size: int, action: str) -> tuple[int, str, str]:
    proc = run_python(PRELUDE.format(size=size) + action)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("size", [1, 16, 4000, 4096, 10000])
@pytest.mark.segfaults_on_purpose
def test_writing_one_byte_past_the_end_faults(size: int) -> None:
    code, out, err = run_fault(size, "ctypes.memset(buf.address + len(buf), 0x41, 1)\nprint('x')")
    assert out.strip() == "ready", err
    assert code == -signal.SIGSEGV, err


@pytest.mark.segfaults_on_purpose
def test_reading_one_byte_past_the_end_faults() -> None:
    code, out, err = run_fault(64, "ctypes.string_at(buf.address + 64, 1)\nprint('x')")
    assert out.strip() == "ready" and code == -signal.SIGSEGV, err


@pytest.mark.segfaults_on_purpose
def test_touching_the_leading_guard_page_faults() -> None:
    code, out, err = run_fault(64, "ctypes.memset(buf._mapping[0] - 1, 0, 1)\nprint('x')")
    assert out.strip() == "ready" and code == -signal.SIGSEGV, err


def test_inside_the_buffer_does_not_fault() -> None:
    # the control: the same write one byte earlier is fine
    code, out, err = run_fault(
        64, "ctypes.memset(buf.address + 63, 0x41, 1)\nbuf.close()\nprint('survived')"
    )
    assert code == 0 and out.split() == ["ready", "survived"], err


@pytest.mark.parametrize("offset", [1, 16])
def test_corrupt_canary_aborts_on_close(offset: int) -> None:
    code, out, err = run_fault(
        64, FLIP.format(address=f"buf.address - {offset}") + "buf.close()\nprint('x')"
    )
    assert out.strip() == "ready"
    assert code == -signal.SIGABRT, err
    assert "canary overwritten" in err and "aborting" in err


def test_corrupt_canary_aborts_on_garbage_collection() -> None:
    code, _out, err = run_fault(64, FLIP.format(address="buf.address - 3") + "del buf\nprint('x')")
    assert code == -signal.SIGABRT and "canary overwritten" in err, err
