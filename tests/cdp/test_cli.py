"""The `cdp` command's own answers: settings errors name the variable, and commands refuse
what cannot work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.e2e


def cdp(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    return subprocess.run(
        [sys.executable, "-m", "cdp", *args],
        env={**clean, "COLUMNS": "120", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_bad_setting_is_named(tmp_path: Path) -> None:
    result = cdp("migrate", CDP_DATA_DIR=str(tmp_path), CDP_REDIS_URL="mysql://nope")
    assert result.returncode == 2
    assert "CDP_REDIS_URL" in result.stdout


def test_migrate_applies_then_reports_up_to_date(tmp_path: Path) -> None:
    first = cdp("migrate", CDP_DATA_DIR=str(tmp_path))
    assert first.returncode == 0 and "applied migrations: [1, 2, 3, 4]" in first.stdout
    again = cdp("migrate", CDP_DATA_DIR=str(tmp_path))
    assert again.returncode == 0 and "schema is up to date" in again.stdout


def test_a_separate_writer_needs_a_clickhouse_server(tmp_path: Path) -> None:
    result = cdp("writer", CDP_DATA_DIR=str(tmp_path))
    assert result.returncode == 2
    assert "CDP_CLICKHOUSE_URL" in result.stdout


def test_keys_are_made_listed_and_revoked_from_the_command_line(tmp_path: Path) -> None:
    created = cdp("keys", "create", "--scope", "read", "--name", "bi", CDP_DATA_DIR=str(tmp_path))
    assert created.returncode == 0, created.stdout + created.stderr
    secret = created.stdout.split(": ")[1].split()[0]
    key_id = created.stdout.split()[2]
    assert secret.startswith("sk_") and "read key" in created.stdout

    listed = cdp("keys", "list", CDP_DATA_DIR=str(tmp_path))
    assert key_id in listed.stdout and "bi" in listed.stdout and secret not in listed.stdout
    # The embedded Valkey the command started is stopped again.
    assert not (tmp_path / "valkey" / "valkey.pid").exists()

    assert cdp("keys", "revoke", key_id, CDP_DATA_DIR=str(tmp_path)).returncode == 0
    assert key_id not in cdp("keys", "list", CDP_DATA_DIR=str(tmp_path)).stdout
    missing = cdp("keys", "revoke", key_id, CDP_DATA_DIR=str(tmp_path))
    assert missing.returncode == 1 and "no key" in missing.stdout


def serve_briefly(tmp_path: Path, *args: str, **env: str) -> tuple[str, list[str]]:
    """Run `cdp serve`, ask it for a missing page, stop it: its stdout and stderr lines."""
    from tests.servers import free_port

    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("w") as stdout, err.open("w") as stderr:
        server = subprocess.Popen(
            [sys.executable, "-m", "cdp", "serve", "--port", str(port), *args],
            env={**clean, "COLUMNS": "200", "CDP_DATA_DIR": str(tmp_path / "data"), **env},
            stdout=stdout, stderr=stderr,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"

            def up() -> bool:
                try:
                    return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(up, timeout=60, interval=0.2)
            assert httpx.get(f"{url}/no/such/page").status_code == 404
        finally:
            server.terminate()
            server.wait(timeout=60)
    return out.read_text(), err.read_text().splitlines()


def test_serve_shows_the_new_keys_and_the_snippet_then_logs_json(tmp_path: Path) -> None:
    stdout, stderr = serve_briefly(tmp_path, CDP_LOG_FORMAT="json")
    keys = json.loads((tmp_path / "data" / "keys.json").read_text())
    write_key = keys["write_keys"][0]
    assert f'data-write-key="{write_key}"' in stdout and keys["admin_key"] in stdout
    entries = [json.loads(line) for line in stderr]  # every line is JSON
    [access] = [e for e in entries if e["logger"] == "cdp.access" and e["path"] != "/healthz"]
    assert access["path"] == "/no/such/page" and access["status"] == 404
    assert access["method"] == "GET" and access["bytes"] > 0
    # Known keys are not shown again: the admin key is secret.
    again, _ = serve_briefly(tmp_path, "--no-access-log")
    assert write_key in again and keys["admin_key"] not in again


def test_no_access_log_means_no_request_lines(tmp_path: Path) -> None:
    _, stderr = serve_briefly(tmp_path, "--no-access-log")
    assert not [line for line in stderr if "/no/such/page" in line]
