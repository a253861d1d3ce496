"""The published client's venv, shared by tests/test_interop.py and
benchmarks/compare_published.py: nomyo==0.2.9 from PyPI has our package's
name, so it lives in a throwaway venv of its own (.venv-interop), reused
while it holds that version and rebuilt otherwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = "nomyo==0.2.9"
VENV = ROOT / ".venv-interop"
PYTHON = VENV / "bin" / "python"


def published_version(python: Path = PYTHON) -> str | None:
    """The nomyo version installed for ``python``, or None (no venv, no nomyo)."""
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('nomyo'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def published_python() -> Path:
    """The interpreter of a venv holding :data:`PUBLISHED`, built when needed.

    :raises RuntimeError: the venv does not hold it even after a rebuild.
    """
    wanted = PUBLISHED.split("==")[1]
    if published_version() != wanted:
        print(f"building {VENV.name} with {PUBLISHED} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, PUBLISHED], check=True, timeout=600)
    if published_version() != wanted:
        raise RuntimeError(f"{VENV} does not hold {PUBLISHED}")
    return PYTHON
