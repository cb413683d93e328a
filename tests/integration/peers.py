"""dcmtk peers for tests: a storescp that a move, a get or the SCU sends to."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from tests.conftest import free_port, require_tool

AET = "STORESCP"


class StoreSCP:
    """dcmtk storescp on a free port writing into ``directory``."""

    def __init__(self, directory: Path, *args: str, debug: bool = True,
                 port: int | None = None) -> None:
        self.directory = directory
        self.extra = ["-d"] if debug else []
        self.port = port or free_port()
        directory.mkdir(exist_ok=True)
        env = dict(os.environ, TCP_NODELAY="1")
        self.log_path = directory.parent / f"{directory.name}.log"
        with open(self.log_path, "wb") as log:  # a file: a full pipe would stall storescp
            self.proc = subprocess.Popen(
                [require_tool("storescp"), "-aet", AET, "-od", str(directory), "-pdu", "131072",
                 *self.extra, *args, str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until it listens
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    break
            except OSError:
                time.sleep(0.02)
        self.dest = ("127.0.0.1", self.port, AET)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def output(self) -> str:
        self.kill()
        return self.log_path.read_text("latin-1")

    def received_count(self) -> int:
        """How many instances it has written so far (storescp writes each file whole)."""
        return sum(1 for path in self.directory.iterdir()
                   if path.is_file() and not path.name.startswith("."))

    def received(self) -> dict[str, pydicom.FileDataset]:
        found = {}
        for path in self.directory.iterdir():
            if path.is_file() and not path.name.startswith("."):
                ds = pydicom.dcmread(path)
                found[ds.SOPInstanceUID] = ds
        return found


@pytest.fixture
def scp_factory(tmp_path: Path) -> Iterator:
    started: list[StoreSCP] = []

    def start(*args: str, name: str = "in") -> StoreSCP:
        scp = StoreSCP(tmp_path / name, *args)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.kill()
