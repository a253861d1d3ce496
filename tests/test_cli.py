"""The ``nomyo`` command, run as a subprocess against a real ``nomyo serve``:
output, exit codes per class of failure, and no secret in any output."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from nomyo import _keys
from tests.conftest import native_only, needs_root, run_python
from tests.servers import API_KEY, Endpoint


def nomyo(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NOMYO_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "nomyo", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def chat(server: Endpoint, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return nomyo(
        "chat", "--base-url", server.url, "--ca", str(server.ca), "--model", "echo", *args, **kwargs
    )  # type: ignore[arg-type]


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nomyo: error: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_chat_prompt_from_argument_and_stdin(server: Endpoint) -> None:
    marker = "cli " + uuid.uuid4().hex
    proc = chat(server, "--api-key", API_KEY, "--tier", "high", marker)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == marker + "\n" and proc.stderr == ""
    proc = chat(server, stdin=marker + " via stdin", env={"NOMYO_API_KEY": API_KEY})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == marker + " via stdin"


def test_chat_base_url_from_the_environment(server: Endpoint) -> None:
    proc = nomyo(
        "chat",
        "--ca",
        str(server.ca),
        "hello env",
        env={"NOMYO_BASE_URL": server.url, "NOMYO_API_KEY": API_KEY, "NOMYO_MODEL": "echo"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "hello env"


def test_chat_pin(server: Endpoint) -> None:
    pin = _keys.fingerprint(server.router_key)
    ok = chat(server, "--api-key", API_KEY, "--pin", pin, "pinned")
    assert ok.returncode == 0 and ok.stdout.strip() == "pinned", ok.stderr
    refused = chat(server, "--api-key", API_KEY, "--pin", "sha256:" + "0" * 64, "x")
    assert_one_line_error(refused, 5)
    assert "does not match" in refused.stderr


def test_exit_codes_per_class_of_failure(server: Endpoint) -> None:
    secret_prompt = "secret prompt " + uuid.uuid4().hex
    wrong_key = "wrong-" + API_KEY
    auth = chat(server, "--api-key", wrong_key, secret_prompt)
    assert_one_line_error(auth, 4)
    unreachable = nomyo(
        "chat", "--base-url", "https://127.0.0.1:9", "--model", "m", "--max-retries", "0", "x"
    )
    assert_one_line_error(unreachable, 3)
    plain_http = nomyo("chat", "--base-url", "http://127.0.0.1:9", "--model", "m", "x")
    assert_one_line_error(plain_http, 5)
    no_model = nomyo("chat", "--base-url", server.url, "x")
    assert_one_line_error(no_model, 2)
    usage = nomyo("chat", "--tier", "low", "x")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
    for proc in (auth, unreachable, plain_http, no_model):
        assert API_KEY not in proc.stderr + proc.stdout
        assert secret_prompt not in proc.stderr + proc.stdout


def test_debug_shows_the_traceback(server: Endpoint) -> None:
    proc = nomyo(
        "--debug", "chat", "--base-url", "https://127.0.0.1:9", "--model", "m",
        "--max-retries", "0", "x",
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    assert "APIConnectionError" in proc.stderr


def test_keys_generate_and_fingerprint(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    password = "pw-" + uuid.uuid4().hex
    proc = nomyo(
        "keys", "generate", "--dir", str(folder), "--password-env", "PW", "--bits", "2048",
        env={"PW": password},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    private = folder / "private_key.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"ENCRYPTED" in private.read_bytes()
    key = _keys.load_private_key(private, password=password)
    assert f"fingerprint: {_keys.fingerprint(key)}" in proc.stdout
    assert password not in proc.stdout + proc.stderr

    again = nomyo("keys", "generate", "--dir", str(folder), "--no-password", "--bits", "2048")
    assert_one_line_error(again, 1)
    assert "refusing to overwrite" in again.stderr
    assert _keys.load_private_key(private, password=password).private_numbers() == (
        key.private_numbers()
    )

    for target in (str(folder / "public_key.pem"), str(private)):
        shown = nomyo("keys", "fingerprint", target, "--password-env", "PW", env={"PW": password})
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.strip() == _keys.fingerprint(key)


def test_keys_generate_needs_a_password_source(tmp_path: Path) -> None:
    proc = nomyo("keys", "generate", "--dir", str(tmp_path / "k"), stdin="")
    assert_one_line_error(proc, 2)
    assert not (tmp_path / "k").exists()


def test_keys_fingerprint_of_a_server(server: Endpoint) -> None:
    proc = nomyo("keys", "fingerprint", "--server", server.url, "--ca", str(server.ca))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == _keys.fingerprint(server.router_key)


def test_doctor_reports_protection() -> None:
    proc = nomyo("doctor")
    assert proc.returncode == 0, proc.stderr
    assert "native secure-memory backend" in proc.stdout
    assert "[ok] memory locked against swap (mlock)" in proc.stdout
    assert "RLIMIT_MEMLOCK" in proc.stdout


@native_only
@needs_root
def test_doctor_explains_a_low_lock_limit() -> None:
    proc = run_python(
        "from nomyo._cli import main\nmain(['doctor'])",
        memlock=64 * 1024,
        preload="import nomyo._cli",
    )
    assert proc.returncode == 0, proc.stderr
    assert "[!!] RLIMIT_MEMLOCK: 64 KiB" in proc.stdout
    assert "LimitMEMLOCK=infinity" in proc.stdout and "ulimit -l" in proc.stdout


def test_demo_runs_to_completion_and_leaves_no_files(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = nomyo("demo", env={"TMPDIR": str(scratch)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "< Patient 4711" in out  # the echo model's answer came back
    assert "AES-256-GCM" in out and "RSA-OAEP-SHA256, 4096-bit" in out
    assert "router key:   pinned, sha256:" in out
    assert "locked against swap (mlock):   yes" in out
    assert "request:" in out and " ms" in out
    assert list(scratch.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]


def test_version_and_help() -> None:
    assert nomyo("--version").stdout.startswith("nomyo ")
    assert "exit codes" in nomyo("--help").stdout
    assert nomyo().returncode == 2


@pytest.mark.parametrize("command", ["chat", "keys", "doctor", "demo", "proxy", "serve"])
def test_every_command_has_help(command: str) -> None:
    proc = nomyo(command, "--help")
    assert proc.returncode == 0 and "usage: nomyo" in proc.stdout


def _start_proxy(server: Endpoint, listen: str) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOMYO_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "nomyo", "proxy", "--listen", listen, "--base-url", server.url,
         "--ca", str(server.ca), "--api-key", API_KEY, "--model", "echo"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("nomyo proxy: http://"), line + process.stderr.read()  # type: ignore[union-attr]
    return process, line.split()[2]


def test_proxy_command(server: Endpoint) -> None:
    import httpx

    process, base = _start_proxy(server, "127.0.0.1:0")
    try:
        body = {"model": "echo", "messages": [{"role": "user", "content": "through the proxy"}]}
        answer = httpx.post(base + "/chat/completions", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "through the proxy"
        assert "_metadata" not in answer.json()
        # a tool's placeholder bearer does not replace the proxy's own API key
        with_dummy = httpx.post(
            base + "/chat/completions", json=body, headers={"Authorization": "Bearer sk-x"}
        )
        assert with_dummy.status_code == 200, with_dummy.text
        rebound = httpx.post(
            base + "/chat/completions", json=body, headers={"Host": "attacker.example"}
        )
        assert rebound.status_code == 400  # DNS rebinding: only loopback host names
        assert httpx.get(base + "/models").json()["data"][0]["id"] == "echo"
    finally:
        process.terminate()
        process.wait(15)
    assert process.stderr is not None
    logs = process.stderr.read()
    assert "through the proxy" not in logs and API_KEY not in logs
    assert "POST /v1/chat/completions" in logs  # the control: requests were logged


def test_proxy_warns_when_not_on_loopback(server: Endpoint) -> None:
    process, _ = _start_proxy(server, "0.0.0.0:0")
    process.terminate()
    process.wait(15)
    assert process.stderr is not None
    assert "WARNING: listening on 0.0.0.0, not loopback" in process.stderr.read()
