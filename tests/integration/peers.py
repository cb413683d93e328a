"""Peers for tests: dcmtk's storescp that a move, a get or the SCU sends to; a pynetdicom
Storage SCP that answers slowly, with a chosen status, or holds its answer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

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


class PynetdicomSCP:
    """A pynetdicom Storage SCP in this process on a free port: it answers every C-STORE with
    ``status`` after ``delay`` seconds; with ``hold``, only once :meth:`let_go` was called
    (60 s at most). ``stored`` lists the SOP Instance UIDs answered, repeats included."""

    def __init__(self, status: int = 0x0000, delay: float = 0.0, hold: bool = False,
                 aet: str = "PYSCP") -> None:
        self.status, self.delay = status, delay
        self.port = free_port()
        self.stored: list[str] = []
        self.arrived = threading.Event()  # a C-STORE-RQ came in
        self.aborted = threading.Event()  # the requestor aborted an association
        self._gate = threading.Event()
        if not hold:
            self._gate.set()
        ae = AE(ae_title=aet)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._on_store), (evt.EVT_ABORTED, self._on_abort)])

    def _on_store(self, event: evt.Event) -> int:
        self.arrived.set()
        self._gate.wait(60)
        time.sleep(self.delay)
        self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return self.status

    def _on_abort(self, event: evt.Event) -> None:
        self.aborted.set()

    def let_go(self) -> None:
        self._gate.set()

    def stop(self) -> None:
        self._gate.set()
        self.server.shutdown()


@pytest.fixture
def pynetdicom_scp() -> Iterator:
    """``make(status=, delay=, hold=)`` -> a started :class:`PynetdicomSCP`, stopped after."""
    started: list[PynetdicomSCP] = []

    def make(**kwargs: object) -> PynetdicomSCP:
        scp = PynetdicomSCP(**kwargs)  # type: ignore[arg-type]
        started.append(scp)
        return scp

    yield make
    for scp in started:
        scp.stop()
