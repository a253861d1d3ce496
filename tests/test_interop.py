"""The published client, nomyo==0.2.9 from PyPI, against `nomyo serve` over TLS.

It has the same package name as ours, so it lives in its own throwaway venv
(.venv-interop, rebuilt when missing) and runs tests/interop_driver.py there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests import interop
from tests.conftest import ROOT
from tests.servers import API_KEY, Endpoint

pytestmark = pytest.mark.interop

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="session")
def published_python() -> Path:
    return interop.published_python()


def test_published_client_against_nomyo_serve(
    server: Endpoint, published_python: Path, tmp_path: Path
) -> None:
    marker = "interop-" + uuid.uuid4().hex
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().endswith("_PROXY") and k not in ("SSL_CERT_DIR", "PYTHONPATH")
    }
    env["SSL_CERT_FILE"] = str(server.ca)  # the published client's only way to trust a CA
    started = int(time.time())
    driver = ROOT / "tests" / "interop_driver.py"
    proc = subprocess.run(
        [str(published_python), str(driver), server.url, API_KEY, marker],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)

    for case in ("roundtrip", "tier"):
        assert "response" in report[case], report[case]
        answer = report[case]["response"]
        assert answer["choices"][0]["message"] == {"role": "assistant", "content": marker}
        assert answer["model"] == "echo-test"
        metadata = answer["_metadata"]
        assert UUID4.match(metadata["payload_id"])
        assert metadata["is_encrypted"] is True
        assert metadata["encryption_algorithm"] == "hybrid-aes256-rsa4096"
        assert started <= metadata["processed_at"] <= int(time.time()) + 1

    assert report["wrong_key"] == {"exception": "AuthenticationError", "status": 401}
    logs = server.logs_with("tier high", "refused: 401")
    assert "tier high" in logs  # the tier arrived as the X-Security-Tier header
    assert marker not in logs
    assert os.listdir(tmp_path) == []  # the published client wrote no key files
