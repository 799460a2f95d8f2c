"""`cdp demo` as a user runs it: embedded engines, a simulated shop, a report."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import API_KEY, WRITE_KEY, LiveServer

pytestmark = pytest.mark.e2e


def test_demo_runs_end_to_end_and_reports(tmp_path: Path) -> None:
    env = {**os.environ, "CDP_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "100"}
    for name in ("CDP_CLICKHOUSE_URL", "CDP_REDIS_URL", "CDP_WRITE_KEYS", "CDP_ADMIN_KEY"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "cdp", "demo", "--visitors", "40", "--seed", "7"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every accepted event is stored exactly once" in result.stdout
    assert "Events by type" in result.stdout and "Order Completed" in result.stdout
    assert "logged-in people is one profile" in result.stdout
    assert "merges" in result.stdout and "identified" in result.stdout
    assert "bot profiles" in result.stdout and "in no audience" in result.stdout
    assert "Audiences, kept live by the rules engine" in result.stdout
    assert "abandoned-cart" in result.stdout and "Why is p_" in result.stdout
    assert "Real time and the SQL over ClickHouse agree on 8 of 8 audiences" in result.stdout
    assert "root.and[0].performed.where[0].property" in result.stdout
    assert "has `categroy` (did you mean `category`?)" in result.stdout
    typo = "no `Order Complete` event within the kept 400 days (did you mean `Order Completed`?)"
    assert typo in result.stdout
    assert "members, 0 hints" in result.stdout
    assert "watchers left back-in-stock-watchers" in result.stdout

    # Again on the same data: the report is of this run, not of everything kept.
    again = subprocess.run(
        [sys.executable, "-m", "cdp", "demo", "--visitors", "30", "--seed", "8"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "logged-in people is one profile" in again.stdout

    replayed = subprocess.run(
        [sys.executable, "-m", "cdp", "replay"], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "replayed" in replayed.stdout and "profiles" in replayed.stdout
    keys = (tmp_path / "data" / "keys.json").read_text()
    assert "wk_" in keys and "keys generated and kept in" in result.stdout
    assert not (tmp_path / "data" / "valkey" / "valkey.pid").exists()


def test_demo_against_a_running_server(live_server: LiveServer) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cdp", "demo", "--visitors", "15", "--url", live_server.url,
         "--write-key", WRITE_KEY, "--api-key", API_KEY],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "100"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every accepted event is stored exactly once" in result.stdout


def test_demo_with_url_needs_keys(live_server: LiveServer) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cdp", "demo", "--url", live_server.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("CDP_DEMO_")},
    )
    assert result.returncode == 2
    assert "--url needs --write-key and --api-key" in result.stdout
