"""Running the worker as a real process: started, waited on, signalled and killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from dbsync_mq.config import WorkerConfig

READY_LINE = "consuming "


class WorkerProcess:
    """``dbsync-mq worker`` in a subprocess; readiness is its "consuming" log line."""

    def __init__(self, config: WorkerConfig, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.process: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._lines: list[str] = []

    def start(
        self,
        *plugins: str,
        env: dict[str, str] | None = None,
        wait: bool = True,
        options: tuple[str, ...] = (),
    ) -> None:
        command = [
            sys.executable,
            "-m",
            "dbsync_mq",
            "worker",
            "--db",
            self.config.database_url,
            "--models",
            ",".join(self.config.models),
            "--broker",
            self.config.broker_url,
            "--namespace",
            self.config.namespace,
        ]
        for plugin in plugins:
            command += ["--plugin", plugin]
        command += options
        self._ready.clear()
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        if wait:
            self.wait_ready()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        with process.stdout, self.log_path.open("a") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                self._lines.append(line)
                if READY_LINE in line:
                    self._ready.set()

    def wait_ready(self, timeout: float = 20) -> None:
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the worker never started consuming:\n{self.output}")

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no acks; the broker requeues what was in hand."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
