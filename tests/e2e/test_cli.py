"""The `cdp` command's own answers: settings errors name the variable, and commands refuse
what cannot work."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert first.returncode == 0 and "applied migrations: [1, 2, 3]" in first.stdout
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
