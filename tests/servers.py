"""The server as a process of its own, as `cdp serve` starts it from a terminal."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import API_KEY, WRITE_KEY, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    def __init__(self, data_dir: Path, run_writer: bool, **env_vars: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "CDP_DATA_DIR": str(data_dir),
            "CDP_WRITE_KEYS": WRITE_KEY,
            "CDP_ADMIN_KEY": API_KEY,
            "CDP_RUN_WRITER": str(run_writer).lower(),
            **env_vars,
        }
        for name in ("CDP_CLICKHOUSE_URL", "CDP_REDIS_URL"):
            env.pop(name, None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cdp", "serve", "--port", str(self.port), "--log-level",
             "warning"],
            env=env,
            start_new_session=True,  # a process group of its own, as a terminal gives it
        )  # fmt: skip
        wait_for(self._healthy, timeout=60, interval=0.2)

    def _healthy(self) -> bool:
        assert self.process.poll() is None, "server exited"
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def events(self) -> int:
        response = httpx.get(
            f"{self.url}/api/v1/reports/overview",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=10,
        )
        return int(response.json()["events"])


def children_of(pid: int, command: bytes = b"") -> list[int]:
    """Workers started by the server with that pid (they name it with `--parent`), those
    whose command line holds `command` if given."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        named = b"--parent" in words and words[words.index(b"--parent") + 1]
        if named == str(pid).encode() and state != "Z" and (not command or command in words):
            found.append(int(entry.name))
    return found
