"""A worker in a process of its own, started and watched by the serving process: restarted
when it dies, stopped with the server, and gone with it if the server is killed. Work that
needs no chdb runs this way, so it does not share the server's interpreter (and its one
core of Python) with the HTTP edge."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

from cdp.metrics import MULTIPROCESS_ENV, worker_metrics_dir
from cdp.settings import Settings

log = logging.getLogger(__name__)


class WorkerProcess:
    def __init__(self, name: str, command: list[str], settings: Settings, redis_url: str) -> None:
        self.name = name
        self.command = [sys.executable, "-m", "cdp", *command, "--parent", str(os.getpid())]
        self.env = {**os.environ, **settings.as_env(), "CDP_REDIS_URL": redis_url,
                    MULTIPROCESS_ENV: str(worker_metrics_dir(settings))}  # fmt: skip
        self.restarts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name=f"{name}-watch", daemon=True)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def state(self) -> dict[str, object]:
        process = self._process
        running = process is not None and process.poll() is None
        return {"running": running, "pid": self.pid, "restarts": self.restarts}

    def start(self) -> None:
        self._process = self._spawn()
        self._watcher.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # A session of its own: a signal to our process group (Ctrl+C) does not stop it
        # behind our back; we stop it on the way out, and it leaves when we are gone.
        return subprocess.Popen(self.command, env=self.env, start_new_session=True)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            process = self._process
            assert process is not None
            code = process.wait()
            if self._stopping.is_set():
                return
            log.error("%s exited with %s; restarting", self.name, code)
            self.restarts += 1
            if self._stopping.wait(min(30.0, 0.5 * 2 ** min(self.restarts, 6))):
                return
            self._process = self._spawn()

    def stop(self, timeout: float = 30) -> None:
        """Ask it to finish what it holds (SIGTERM), then insist."""
        self._stopping.set()
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
