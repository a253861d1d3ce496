"""The public surface and the install paths."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nomyo
from tests.conftest import ROOT
from tests.test_native_boundary import compiled_modules, hooks_in

EXPECTED = {
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncSecureTransport",
    "AuthenticationError",
    "ForbiddenError",
    "InvalidRequestError",
    "MemoryProtection",
    "NomyoError",
    "RateLimitError",
    "SecureBuffer",
    "SecureChatCompletion",
    "SecureCompletionClient",
    "SecureMemoryWarning",
    "SecureTransport",
    "SecurityError",
    "ServerError",
    "ServiceUnavailableError",
    "SyncSecureChatCompletion",
    "__version__",
    "disable_secure_memory",
    "enable_secure_memory",
    "get_memory_protection_info",
    "protection",
    "secure_bytearray",
    "secure_bytes",
    "wipe",
}


def test_all_is_sorted_and_complete() -> None:
    assert nomyo.__all__ == sorted(nomyo.__all__)
    assert set(nomyo.__all__) == EXPECTED
    for name in nomyo.__all__:
        assert hasattr(nomyo, name), name


def test_exception_tree() -> None:
    tree = {
        nomyo.APIError: nomyo.NomyoError,
        nomyo.SecurityError: nomyo.NomyoError,
        nomyo.InvalidRequestError: nomyo.APIError,
        nomyo.AuthenticationError: nomyo.APIError,
        nomyo.ForbiddenError: nomyo.APIError,
        nomyo.RateLimitError: nomyo.APIError,
        nomyo.ServerError: nomyo.APIError,
        nomyo.ServiceUnavailableError: nomyo.APIError,
        nomyo.APIConnectionError: nomyo.APIError,
        nomyo.APITimeoutError: nomyo.APIConnectionError,
        nomyo.SecureMemoryWarning: UserWarning,
    }
    for cls, parent in tree.items():
        assert cls.__bases__ == (parent,), cls
    assert not issubclass(nomyo.SecurityError, nomyo.APIError)


def test_version_matches_pyproject() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{nomyo.__version__}"' in text


def test_python_versions_are_what_make_matrix_tests() -> None:
    # `make matrix` runs CPython 3.10-3.13; the metadata claims exactly those
    text = (ROOT / "pyproject.toml").read_text()
    claimed = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', text)
    makefile = (ROOT / "Makefile").read_text()
    glob = re.search(r"versions/3\.1\[(\d)-(\d)\]", makefile)
    assert glob, "make matrix no longer picks its versions by the glob this test reads"
    tested = [f"3.1{minor}" for minor in range(int(glob[1]), int(glob[2]) + 1)]
    assert claimed == tested == ["3.10", "3.11", "3.12", "3.13"]
    assert 'requires-python = ">=3.10"' in text  # the lowest tested; see the README
    assert "Implementation :: CPython" in text and "PyPy" not in text


def _pip_install(target: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOMYO_")}
    env.update(extra_env)
    source = target.parent / "src-copy"
    # install from a copy so the checkout's build/ and egg-info stay untouched
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv*", ".git", "build", "dist", "*.so", "*.egg-info", ".*cache"
        ),
    )
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
         str(source)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )  # fmt: skip


def _import_from(target: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOMYO_")}
    env["PYTHONPATH"] = str(target)
    return subprocess.run(
        [sys.executable, "-c",
         "import nomyo, nomyo.memory as m; print(m.__file__); print(nomyo.protection().backend)"],
        capture_output=True, text=True, env=env, cwd="/", timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_pip_install_builds_the_extension(tmp_path: Path) -> None:
    target = tmp_path / "site"
    proc = _pip_install(target, {"NOMYO_REQUIRE_EXTENSION": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for module in compiled_modules(target / "nomyo"):  # _securemem (cffi) and _pyglue
        # no test hooks in what ships (control: tests/test_native_boundary.py
        # finds them in this venv's test build with the same check)
        assert hooks_in(module) == {"bytes": [], "dlsym": []}, module
    assert (target / "nomyo" / "_pyglue.pyi").exists()
    assert not list((target / "nomyo").glob("*.c")) and not (target / "csrc").exists()
    assert (target / "nomyo" / "py.typed").exists()
    shown = _import_from(target)
    assert shown.returncode == 0, shown.stderr
    where, backend = shown.stdout.split()
    assert where.startswith(str(target)) and backend == "native"


@pytest.mark.slow
def test_install_without_a_c_compiler_still_works(tmp_path: Path) -> None:
    target = tmp_path / "site"
    proc = _pip_install(target, {"CC": "/bin/false", "LDSHARED": "/bin/false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list((target / "nomyo").glob("_securemem*.so"))
    assert not list((target / "nomyo").glob("_pyglue*.so"))
    shown = _import_from(target)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split()[1] == "python"
    assert "SecureMemoryWarning" in shown.stderr and "not available" in shown.stderr
