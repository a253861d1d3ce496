"""What the native backend promises, checked against the kernel's view."""

from __future__ import annotations

import ctypes
import errno
import faulthandler
import os
import signal

import pytest

from nomyo import SecureBuffer, protection
from tests.conftest import mapping_at, native_only, smaps

pytestmark = native_only

SECRET = bytes(range(100, 148))


@pytest.fixture
def native():  # type: ignore[no-untyped-def]
    from nomyo import _native

    return _native


def test_smaps_shows_locked_dontdump_wipeonfork() -> None:
    with SecureBuffer(100) as buf:
        m = mapping_at(buf.address)
        assert {"lo", "dd", "wf"} <= m.vmflags, m.vmflags
        assert m.locked_kb > 0
        assert m.perms.startswith("rw")
    # positive control: ordinary Python memory shows none of them
    plain = bytearray(100)
    heap = mapping_at(ctypes.addressof(ctypes.c_char.from_buffer(plain)))
    assert not {"lo", "dd", "wf"} & heap.vmflags and heap.locked_kb == 0


def test_data_ends_flush_against_a_guard_page(native) -> None:  # type: ignore[no-untyped-def]
    page = native.PAGE_SIZE
    for size in (1, 15, 16, 17, page - 16, page - 15, page, 3 * page + 5):
        with SecureBuffer(size) as buf:
            end = buf.address + size
            assert end % page == 0, size
            after = mapping_at(end)
            assert after.perms.startswith("---"), (size, after.perms)
            start = buf._mapping[0]  # type: ignore[attr-defined]
            assert start <= buf.address - native.CANARY_BYTES
            before = mapping_at(start - 1)
            assert before.perms.startswith("---"), (size, before.perms)


def test_protection_reports_everything_on_this_machine() -> None:
    report = protection()
    assert report.backend == "native"
    assert report.mlock and report.guard_pages and report.dontdump and report.wipeonfork
    assert report.memfd_secret  # this machine's kernel has secretmem (see the brief)


def test_close_wipes_before_unmapping(native) -> None:  # type: ignore[no-untyped-def]
    for before_zero, expect_secret in ((True, True), (False, False)):
        with native.debug_capture(1 << 16, before_zero=before_zero) as captured:
            buf = SecureBuffer(len(SECRET))
            memoryview(buf)[:] = SECRET
            buf.close()
            pages = captured()
        assert len(pages) == native.PAGE_SIZE
        # before zeroing the capture sees the secret (the positive control);
        # after zeroing, every byte of the data pages is zero
        assert (SECRET in pages) is expect_secret
        if not expect_secret:
            assert pages == bytes(len(pages))


def test_garbage_collection_wipes_too(native) -> None:  # type: ignore[no-untyped-def]
    with native.debug_capture(1 << 16) as captured:
        buf = SecureBuffer(len(SECRET))
        memoryview(buf)[:] = SECRET
        del buf
        pages = captured()
    assert len(pages) == native.PAGE_SIZE and pages == bytes(len(pages))


def test_memory_stays_mapped_until_the_last_view_goes(native) -> None:  # type: ignore[no-untyped-def]
    buf = SecureBuffer(32)
    view = memoryview(buf)
    address = buf.address
    buf.close()
    assert buf._exports == 1  # type: ignore[attr-defined]
    assert mapping_at(address).perms.startswith("rw")  # still ours, zeroed
    view.release()
    assert buf._exports == 0  # type: ignore[attr-defined]


# The children below only read memory, write to a pipe and _exit: they take
# no lock another thread may have held at fork (the allocator's own locks are
# re-made in the child by its pthread_atfork handler), so 3.12's warning
# about forking a multi-threaded process does not apply to them.
FORK_IS_SAFE_HERE = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


@FORK_IS_SAFE_HERE
def test_child_after_fork_reads_zeros() -> None:
    buf = SecureBuffer(len(SECRET))
    memoryview(buf)[:] = SECRET
    control = bytearray(SECRET)  # ordinary memory: fork copies it
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            seen = bytes(memoryview(buf)) + bytes(control)
            os.write(write_end, seen)
            buf.close()  # must not abort: the canary went with the wipe
        finally:
            os._exit(0)
    os.close(write_end)
    seen = b""
    while chunk := os.read(read_end, 4096):
        seen += chunk
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert seen[: len(SECRET)] == bytes(len(SECRET))
    assert seen[len(SECRET) :] == SECRET  # positive control
    assert bytes(memoryview(buf)) == SECRET  # the parent keeps its copy
    buf.close()


def test_secret_memory_is_out_of_reach_of_proc_mem() -> None:
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        with SecureBuffer(len(SECRET)) as plain:
            memoryview(plain)[:] = SECRET
            # positive control: /proc/self/mem reads ordinary locked memory
            assert os.pread(fd, len(SECRET), plain.address) == SECRET
        with SecureBuffer(len(SECRET), secret_memory=True) as hidden:
            assert hidden.secret_memory and hidden.locked
            memoryview(hidden)[:] = SECRET
            assert bytes(memoryview(hidden)) == SECRET
            with pytest.raises(OSError, match="Input/output error") as refused:
                os.pread(fd, len(SECRET), hidden.address)
            assert refused.value.errno == errno.EIO
            assert "dd" in mapping_at(hidden.address).vmflags
    finally:
        os.close(fd)


# the forked child's SIGSEGV would be an ASan report (exit 1) in make sanitize
@pytest.mark.segfaults_on_purpose
@FORK_IS_SAFE_HERE
def test_secret_memory_is_not_mapped_in_a_child() -> None:
    buf = SecureBuffer(16, secret_memory=True)
    memoryview(buf)[:] = b"x" * 16
    pid = os.fork()
    if pid == 0:
        try:
            faulthandler.disable()  # the crash is the expected outcome
            os.write(2, b"child reads: " + ctypes.string_at(buf.address, 1))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    buf.close()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV


def test_freed_regions_are_reused_and_trimmed(native) -> None:  # type: ignore[no-untyped-def]
    native.cache_trim()
    assert native.cache_pages() == 0
    first = SecureBuffer(100)
    address = first.address
    first.close()
    assert native.cache_pages() == 1
    again = SecureBuffer(100)
    assert again.address == address and again.locked
    with memoryview(again) as view:
        assert bytes(view) == b"\xdb" * 100  # garbage-filled, as new
    again.close()
    assert native.cache_trim() == 1 and native.cache_pages() == 0


def test_capability_flags_are_read_once(native) -> None:  # type: ignore[no-untyped-def]
    caps = native.CAPABILITIES
    assert caps.getrandom and caps.explicit_bzero and caps.madv_dontdump
    assert caps.madv_wipeonfork and caps.memfd_secret
    with pytest.raises(AttributeError):
        caps.getrandom = False


def test_no_stray_mappings_after_many_buffers(native) -> None:  # type: ignore[no-untyped-def]
    native.cache_trim()
    before = len(smaps())
    for size in range(1, 5000, 37):
        with SecureBuffer(size) as buf, memoryview(buf) as view:
            view[-1:] = b"x"
    native.cache_trim()
    assert len(smaps()) <= before + 2
