"""The sanitizer lane's positive control (``make sanitize``).

In the lane (``NOMYO_SANITIZE`` set by the Makefile) the extension loaded must
be the instrumented out-of-tree build, and a sanitizer report must end the
process that hit it; both compiled modules (nomyo._securemem, the cffi
allocator, and nomyo._pyglue, the CPython extension) are checked.  Outside
the lane they must carry neither the instrumentation nor the test-only entry
points of csrc/sanitize_selftest.c.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import SANITIZER_REPORT, native_only, run_python

pytestmark = native_only

# what the lane built with (make sanitize sets it; children never see NOMYO_*)
LANE = {n.strip() for n in os.environ.get("NOMYO_SANITIZE", "").split(",") if n.strip()}
in_lane = pytest.mark.skipif(not LANE, reason="sanitizer lane only: run by `make sanitize`")
with_asan = pytest.mark.skipif(
    "address" not in LANE, reason="sanitizer lane with ASan only: run by `make sanitize`"
)
with_ubsan = pytest.mark.skipif(
    "undefined" not in LANE, reason="sanitizer lane with UBSan only: run by `make sanitize`"
)

# the child calls an in-bounds control first, then the faulty call
PROBE = """
from nomyo import _native
print("control", _native.{call_ok}, flush=True)
print("faulty", _native.{call_bad}, flush=True)
print("survived", flush=True)
"""

# each compiled module, and how its self-tests are reached from nomyo._native
MODULES = {"nomyo._securemem": "lib.nomyo_selftest_", "nomyo._pyglue": "_pyglue._selftest_"}
each_module = pytest.mark.parametrize("module", sorted(MODULES))


def _extension(module: str) -> Path:
    from nomyo import _native  # the one importer; this only reads the file names

    assert _native.lib is not None
    return Path(sys.modules[module].__file__ or "")


def _run_probe(tmp_path: Path, call_ok: str, call_bad: str) -> tuple[str, str]:
    """Run PROBE with the lane's options, ASan's log moved to tmp_path (not the
    lane's, which would fail the run); returns (stdout, reports + stderr)."""
    proc = run_python(
        PROBE.format(call_ok=call_ok, call_bad=call_bad),
        env={"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + f":log_path={tmp_path}/asan"},
        sanitizer_report_expected=True,
    )
    report = "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("asan.*")))
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr, report)
    assert "survived" not in proc.stdout, proc.stdout
    return proc.stdout, report + proc.stderr


@each_module
def test_selftest_entry_points_only_in_the_sanitizer_build(module: str) -> None:
    from nomyo import _native

    data = _extension(module).read_bytes()
    owner, prefix = MODULES[module].split(".")
    assert hasattr(getattr(_native, owner), prefix + "heap_read") is bool(LANE)
    assert (b"nomyo_selftest_heap_read" in data) is bool(LANE)
    assert (b"__asan_report_load1" in data) is ("address" in LANE)
    assert (b"__ubsan_handle_" in data) is ("undefined" in LANE)


@in_lane
@each_module
def test_the_lane_loads_the_instrumented_out_of_tree_build(module: str) -> None:
    path = _extension(module)
    assert path.parent.parent.name == "sanitize", path  # build/sanitize/nomyo/, not src/nomyo/
    data = path.read_bytes()
    if "address" in LANE:
        assert b"libasan.so" in data  # DT_NEEDED
        maps = Path("/proc/self/maps").read_text()
        assert "libasan.so" in maps  # the runtime is in this (uninstrumented) interpreter
        assert "halt_on_error=1" in os.environ.get("ASAN_OPTIONS", "")
        assert os.environ.get("PYTHONMALLOC") == "malloc"  # Python objects on ASan's heap
    if "undefined" in LANE:
        assert b"libubsan.so" in data
        assert "halt_on_error=1" in os.environ.get("UBSAN_OPTIONS", "")


@with_asan
@each_module
def test_heap_overflow_is_reported_and_ends_the_process(tmp_path: Path, module: str) -> None:
    out, report = _run_probe(
        tmp_path,
        MODULES[module] + "heap_read(16, 15)",
        MODULES[module] + "heap_read(16, 16)",
    )
    assert out.split() == ["control", "7"]
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in report, report
    assert "READ of size 1" in report and "nomyo_selftest_heap_read" in report, report
    assert "0 bytes to the right of 16-byte region" in report, report


@with_ubsan
@each_module
def test_undefined_shift_is_reported_and_ends_the_process(tmp_path: Path, module: str) -> None:
    out, report = _run_probe(
        tmp_path,
        MODULES[module] + "shift(1, 3)",
        MODULES[module] + "shift(1, 40)",
    )
    assert out.split() == ["control", "8"]
    assert "sanitize_selftest.c" in report, report
    assert SANITIZER_REPORT.search(report) and "shift exponent 40 is too large" in report, report
