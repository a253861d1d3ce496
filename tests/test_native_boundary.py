"""The native layer's boundary (issue 11, items 3, 6 and 7).

- fill_random() pins its region while the GIL is released: a close() from
  another thread meanwhile zeroes the buffer but cannot hand its pages to
  the next buffer of that size while getrandom() is still writing them;
- the test hooks (debug capture, sanitizer self-tests) are compiled only
  into test builds (see tests/test_package.py for the installed build);
- ``NOMYO_MEMORY_BACKEND=python`` loads no compiled nomyo code, whatever
  the request path touches (checked in /proc/self/maps after a round trip
  against ``nomyo serve`` and one through nomyo-js's tag-inside form).
"""

from __future__ import annotations

import ast
import ctypes
import json
import sys
from pathlib import Path
from typing import Any

from tests.conftest import native_only, run_python
from tests.servers import API_KEY, Endpoint

# 512 data pages: the largest size the free-region cache still keeps
# (NOMYO_CACHE_MAX_PAGES), so a closed region's pages go straight to the
# next buffer of that size; getrandom() takes milliseconds to fill it
RACE = """
import ctypes, sys, threading
from nomyo import SecureBuffer
from nomyo import _native
SIZE = 512 * _native.PAGE_SIZE - _native.CANARY_BYTES
PATTERN = b"\\x5a" * SIZE
UNPINNED = {unpinned}
libc = ctypes.CDLL(None)
libc.getrandom.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint)
hits = fills = 0
for _ in range({rounds}):
    victim = SecureBuffer(SIZE)
    started = threading.Event()
    def fill():
        global fills
        started.set()
        try:
            if UNPINNED:  # the control: what fill_random did before (no pin)
                libc.getrandom(victim.address, SIZE, 0)
            else:
                victim.fill_random()
        except ValueError:  # closed before the fill began: no race this round
            return
        fills += 1
    thread = threading.Thread(target=fill)
    thread.start()
    started.wait()
    victim.close()  # while getrandom() may still be writing
    other = SecureBuffer(SIZE)
    memoryview(other)[:] = PATTERN
    thread.join()
    hits += bytes(memoryview(other)) != PATTERN
    other.close()
print(hits, fills)
"""


def _race(unpinned: bool, rounds: int = 40) -> tuple[int, int]:
    proc = run_python(RACE.format(unpinned=unpinned, rounds=rounds), timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    hits, fills = proc.stdout.split()
    return int(hits), int(fills)


@native_only
def test_fill_random_racing_close_never_writes_another_buffer() -> None:
    hits, fills = _race(unpinned=False)
    assert hits == 0, f"{hits} buffers overwritten by a fill of a closed buffer"
    assert fills > 0  # the fill really ran (and raced the close) in some rounds
    # the control: the same race with an unpinned write (today's fill_random
    # before the fix) is seen overwriting the next buffer of that size
    hits, _ = _race(unpinned=True)
    assert hits > 0


# ------------------------------------------------------------ test hooks (item 6)

#: names only a test build may contain: the debug capture (NOMYO_TEST_HOOKS)
#: and the sanitizer lane's self-tests (NOMYO_SANITIZE)
HOOK_NAMES = (b"nomyo_debug_capture", b"nomyo_debug_captured", b"nomyo_selftest_")
MODULES = ("nomyo._securemem", "nomyo._pyglue")


def hooks_in(path: Path) -> dict[str, list[str]]:
    """The test-hook names found in a compiled module: anywhere in its bytes
    (symbol tables, cffi's name table) and among its dynamic symbols (dlsym)."""
    data = path.read_bytes()
    library = ctypes.CDLL(str(path))
    return {
        "bytes": [n.decode() for n in HOOK_NAMES if n in data],
        "dlsym": [n.decode() for n in HOOK_NAMES[:2] if hasattr(library, n.decode())],
    }


def compiled_modules(package: Path) -> list[Path]:
    found = sorted(package.glob("_securemem*.so")) + sorted(package.glob("_pyglue*.so"))
    assert len(found) == 2, found
    return found


@native_only
def test_this_test_build_has_the_hooks_the_shipped_one_must_not() -> None:
    # the positive control of tests/test_package.py's check of an installed
    # build: the development venv is a test build (make install sets
    # NOMYO_TEST_HOOKS), and the same check sees its debug capture
    from nomyo import _native

    assert _native.TEST_HOOKS
    securemem, pyglue = (Path(sys.modules[m].__file__ or "") for m in MODULES)
    found = hooks_in(securemem)
    assert "nomyo_debug_capture" in found["bytes"] and "nomyo_debug_capture" in found["dlsym"]
    assert not hooks_in(pyglue)["dlsym"]  # the capture lives in the allocator only


@native_only
def test_the_stub_mypy_reads_matches_the_module() -> None:
    # src/nomyo/_pyglue.pyi gives mypy the types of the CPython extension
    from nomyo import _pyglue

    stub = ast.parse((Path(__file__).parents[1] / "src/nomyo/_pyglue.pyi").read_text())
    declared = {n.name for n in stub.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    declared |= {
        n.target.id
        for n in stub.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    present = {n for n in dir(_pyglue) if not n.startswith("__")}
    selftests = {"_selftest_heap_read", "_selftest_shift"}  # sanitizer build only
    assert declared - selftests == present - selftests, (declared, present)
    assert (selftests <= present) is bool(_pyglue.SANITIZE_BUILD)
    region = {n.name for n in stub.body if isinstance(n, ast.ClassDef)}
    assert region == {"Region"}


# ------------------------------------- NOMYO_MEMORY_BACKEND=python loads no C (item 7)

ROUND_TRIP = """
import json, os, sys
import nomyo
from nomyo import _envelope, _hybrid, memory
tools = [{"type": "function", "function": {"name": "f", "parameters": {"a": [1, 2.5, None]}}}]
with nomyo.SyncSecureChatCompletion(URL, api_key=KEY, verify=CA) as client:
    answer = client.create("echo", [{"role": "user", "content": "maps \\u00e9 \\U0001f512"}],
                           tools=tools, temperature=0.2)
call = answer["choices"][0]["message"]["tool_calls"][0]  # echo answers tools with a call
assert json.loads(call["function"]["arguments"]) == {"text": "maps \\u00e9 \\U0001f512"}, answer
secret = bytearray(b"wiped too")
nomyo.wipe(secret)
# nomyo-js's form (tag inside the ciphertext), as nomyo serve reads and writes it
from nomyo import _keys
key = _keys.generate_private_key(2048)
sealed = _hybrid.seal_json({"js": "\u00e9"}, key.public_key(), tag_inside=True)
plain, inside = _hybrid.open_package_either(sealed, key)
with plain:
    assert inside and _hybrid.parse(plain) == {"js": "\u00e9"}
package = os.path.dirname(nomyo.__file__)
mapped = sorted({line.split(None, 5)[5] for line in open("/proc/self/maps")
                 if len(line.split(None, 5)) == 6})
print(json.dumps({
    "backend": memory.BACKEND,
    "codec": [_hybrid._json_parse is not None, _envelope._c_parse is not None],
    "ours": [p for p in mapped if p.startswith(package + os.sep)
             or os.path.basename(p).startswith(("_securemem", "_pyglue"))],
    "compiled_modules": sorted(n for n, m in sys.modules.items()
                               if n.startswith("nomyo") and str(getattr(m, "__file__", "")
                               ).endswith(".so")),
}))
"""


def _round_trip_maps(server: Endpoint, backend: str) -> dict[str, Any]:
    code = f"URL, KEY, CA = {server.url!r}, {API_KEY!r}, {str(server.ca)!r}\n" + ROUND_TRIP
    proc = run_python(code, env={"NOMYO_MEMORY_BACKEND": backend})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@native_only
def test_python_backend_maps_no_compiled_nomyo_code(server: Endpoint) -> None:
    seen = _round_trip_maps(server, "python")
    assert seen["backend"] == "python"
    assert seen["codec"] == [False, False]  # _hybrid and _envelope fell back too
    assert seen["ours"] == [] and seen["compiled_modules"] == []
    # the control: the native backend's round trip maps both modules, and the
    # check above finds them by path
    seen = _round_trip_maps(server, "native")
    assert seen["backend"] == "native" and seen["codec"] == [True, True]
    names = sorted(Path(p).name.split(".")[0] for p in seen["ours"])
    assert names == ["_pyglue", "_securemem"], seen["ours"]
    assert seen["compiled_modules"] == ["nomyo._pyglue", "nomyo._securemem"]
