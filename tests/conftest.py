"""Shared fixtures: a running archive process, dcmtk availability, generated instances."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest_plugins = ["tests.integration.peers"]  # the scp_factory fixture

# Debian's dcmtk tools wait ~40 ms per request for a delayed ACK without this.
os.environ.setdefault("TCP_NODELAY", "1")

REPO = Path(__file__).resolve().parent.parent


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never one this test run handed out before: the kernel may
    give the same free port twice in a row, and a server told to listen twice on one port
    (DICOM and HTTP) with SO_REUSEPORT would split its connections between the two."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (make test installs Debian's dcmtk)")
    return path


@dataclass
class ArchiveProcess:
    """A `pacs serve` subprocess on loopback with its own data directory."""

    data_dir: Path
    port: int
    aet: str = "PACS"
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    log_path: Path | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start ``pacs serve`` and wait until every worker listens (this run's log only)."""
        self.log_path = self.data_dir.parent / f"pacs-{self.port}.log"
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = dict(os.environ, **self.env)
        with open(self.log_path, "a") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pacs", "serve", "--data-dir", str(self.data_dir),
                 "--host", "127.0.0.1", "--port", str(self.port), "--aet", self.aet,
                 "--http-port", "0", *self.extra_args],  # a test passing its own port wins
                stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
                start_new_session=True,  # its own process group: kill_all reaches the workers
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pacs serve exited {self.proc.returncode}:\n{self.log()}")
            text = self.log()[offset:]
            workers = re.search(r"starting (\d+) DICOM workers", text)
            expected = int(workers[1]) if workers else 1
            if len(re.findall(r"DICOM SCP .* listening on", text)) >= expected:
                return
            time.sleep(0.05)
        raise RuntimeError(f"pacs serve did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def wait_log(self, pattern: str, offset: int = 0, timeout: float = 30.0) -> str:
        """The log from ``offset`` once ``pattern`` (a regex) shows in it: a server may write
        its line after the client that caused it has already exited."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, text := self.log()[offset:]):
            assert time.monotonic() < deadline, f"no {pattern!r} in the log:\n{text}"
            time.sleep(0.05)
        return text

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill_all(self) -> None:
        """SIGKILL the server and every worker process, as a power cut would."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)

    def pids(self) -> list[int]:
        """The server's process and its workers (same process group)."""
        assert self.proc is not None
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # fields: state ppid pgrp ...; zombies hold no memory and no files
            if int(fields[2]) == self.proc.pid and fields[0] != "Z":
                found.append(int(entry.name))
        return found

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def archive_factory(tmp_path: Path) -> Iterator:
    started: list[ArchiveProcess] = []

    def make(*extra_args: str, env: dict[str, str] | None = None) -> ArchiveProcess:
        archive = ArchiveProcess(tmp_path / f"data{len(started)}", free_port(),
                                 extra_args=list(extra_args), env=env or {})
        archive.start()
        started.append(archive)
        return archive

    yield make
    for archive in started:
        archive.stop()


@pytest.fixture
def archive(archive_factory) -> ArchiveProcess:
    return archive_factory("--acse-timeout", "2", "--idle-timeout", "3", "--log-level", "DEBUG")
