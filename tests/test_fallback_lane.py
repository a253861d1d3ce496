"""The pure-Python fallback: the same API tests, and what it says and refuses."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import ROOT, run_python


def test_api_tests_pass_on_the_python_backend() -> None:
    proc = run_python(
        f"""
import sys, pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-W",
                      "ignore::nomyo.SecureMemoryWarning", "--rootdir", {str(ROOT)!r},
                      {str(ROOT / "tests" / "test_memory_api.py")!r}]))
""",
        env={"NOMYO_MEMORY_BACKEND": "python"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout


def _import_report(env: dict[str, str], before: str = "") -> dict:  # type: ignore[type-arg]
    proc = run_python(
        f"""
import json, sys, warnings
warnings.simplefilter("always")
caught = []
warnings.showwarning = lambda m, c, *a, **k: caught.append((c.__name__, str(m)))
{before}
import nomyo
print(json.dumps(dict(backend=nomyo.protection().backend, warnings=caught)))
""",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_forced_fallback_says_what_is_lost_once() -> None:
    report = _import_report({"NOMYO_MEMORY_BACKEND": "python"})
    assert report["backend"] == "python"
    assert len(report["warnings"]) == 1
    category, message = report["warnings"][0]
    assert category == "SecureMemoryWarning"
    assert "NOT locked against swap" in message and "NOMYO_MEMORY_BACKEND" in message


def test_missing_extension_falls_back_with_a_warning() -> None:
    report = _import_report({}, before="sys.modules['nomyo._securemem'] = None")
    assert report["backend"] == "python"
    assert len(report["warnings"]) == 1
    assert "extension nomyo._securemem is not available" in report["warnings"][0][1]
    # the control: without the block the native backend loads, silently
    assert _import_report({}) == {"backend": "native", "warnings": []}


def test_native_required_but_missing_is_an_import_error() -> None:
    proc = run_python(
        "import sys\nsys.modules['nomyo._securemem'] = None\nimport nomyo",
        env={"NOMYO_MEMORY_BACKEND": "native"},
    )
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "NOMYO_MEMORY_BACKEND=native" in proc.stderr


def test_unknown_backend_name_is_refused() -> None:
    proc = run_python("import nomyo", env={"NOMYO_MEMORY_BACKEND": "rust"})
    assert proc.returncode != 0
    assert "ValueError" in proc.stderr and "NOMYO_MEMORY_BACKEND='rust'" in proc.stderr


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython layout")
def test_fallback_refuses_bytearray_operations_that_copy_or_resize() -> None:
    proc = run_python(
        """
import json, nomyo
buf = nomyo.SecureBuffer(8)
memoryview(buf)[:] = b"secret!!"
refused = []
ops = {
    "decode": lambda: buf.decode(), "hex": lambda: buf.hex(), "copy": lambda: buf.copy(),
    "index": lambda: buf[0], "slice": lambda: buf[:4], "iter": lambda: list(buf),
    "add": lambda: buf + b"x", "extend": lambda: buf.extend(b"x"), "clear": lambda: buf.clear(),
    "append": lambda: buf.append(1), "contains": lambda: b"s" in buf, "upper": lambda: buf.upper(),
    "mul": lambda: buf * 2, "setitem": lambda: buf.__setitem__(0, 1), "lt": lambda: buf < b"z",
}
for name, op in ops.items():
    try:
        op()
    except TypeError:
        refused.append(name)
print(json.dumps(dict(refused=sorted(refused), total=len(ops), size=len(buf),
                      content=bytes(memoryview(buf)).decode(), eq=buf == bytearray(b"secret!!"))))
""",
        env={"NOMYO_MEMORY_BACKEND": "python"},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert len(report["refused"]) == report["total"], report
    assert report["size"] == 8 and report["content"] == "secret!!" and report["eq"] is False
