"""What the suite measures: a target (AE title, host, port, DICOMweb URL), and private servers.

A target is written ``NAME=AET@HOST:PORT`` with an optional ``,web=URL`` (the DICOMweb root,
e.g. ``http://127.0.0.1:8042/dicom-web``). C-MOVE needs the target to know the suite's
destination (``--move-dest AET:PORT``: the suite listens there with dcmtk's ``storescp``); the
private servers started by ``--with-pacs`` and ``--with-orthanc`` are configured for it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port

_SPEC = re.compile(r"^(?P<name>[\w.-]+)=(?P<aet>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d+)"
                   r"(?:,web=(?P<web>\S+))?$")
ORTHANC_DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass(frozen=True)
class Target:
    name: str
    aet: str
    host: str
    port: int
    web: str = ""  # DICOMweb root URL; "" skips the HTTP scenarios

    @classmethod
    def parse(cls, spec: str) -> Target:
        match = _SPEC.match(spec)
        if match is None:
            raise ValueError(f"target {spec!r}: expected NAME=AET@HOST:PORT[,web=URL]")
        return cls(match["name"], match["aet"], match["host"], int(match["port"]),
                   (match["web"] or "").rstrip("/"))


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening on {port}")


class MoveDestination:
    """dcmtk ``storescp`` receiving C-MOVE sub-operations into a folder the suite counts."""

    def __init__(self, work: Path, aet: str, port: int) -> None:
        self.folder = work / "move-dest"
        self.aet, self.port = aet, port
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MoveDestination:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["storescp", "-aet", self.aet, "--max-pdu", "131072", "-od", str(self.folder),
             str(self.port)],
            env=dict(os.environ, TCP_NODELAY="1"), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "storescp")
        return self

    def received(self) -> int:
        return sum(1 for _ in self.folder.iterdir())

    def clear(self) -> None:
        for path in self.folder.iterdir():
            path.unlink()

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_pacs(stack: ExitStack, work: Path, dest_aet: str, dest_port: int,
               workers: int = 0) -> Target:
    """A private ``pacs serve`` (this repository) in ``work``, knowing the move destination."""
    work.mkdir(parents=True, exist_ok=True)
    port, http_port = free_port(), free_port()
    config = work / "pacs.toml"
    config.write_text(f'[remote.{dest_aet}]\nhost = "127.0.0.1"\nport = {dest_port}\n')
    log = open(work / "pacs.log", "w")  # noqa: SIM115 - closed by the stack
    stack.callback(log.close)
    cmd = [sys.executable, "-m", "pacs", "serve", "--config", str(config), "--data-dir",
           str(work / "data"), "--host", "127.0.0.1", "--port", str(port), "--http-port",
           str(http_port), "--aet", "PACS"]
    if workers:
        cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    stack.callback(_stop, proc)
    wait_port(http_port, proc, "pacs serve")
    wait_port(port, proc, "pacs serve")
    return Target("pacs", "PACS", "127.0.0.1", port, f"http://127.0.0.1:{http_port}/dicom-web")


def start_orthanc(stack: ExitStack, work: Path, calling_aet: str, dest_aet: str,
                  dest_port: int) -> Target:
    """A private Orthanc (Debian's ``orthanc``), with its DICOMweb plugin when installed."""
    orthanc = shutil.which("Orthanc")
    if orthanc is None:
        raise RuntimeError("Orthanc is not on PATH (apt-get install orthanc orthanc-dicomweb)")
    work.mkdir(parents=True, exist_ok=True)
    port, http_port = free_port(), free_port()
    config = {
        "Name": "bench", "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"), "StorageCompression": False,
        "Plugins": [str(ORTHANC_DICOMWEB)] if ORTHANC_DICOMWEB.exists() else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpServerEnabled": True, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomServerEnabled": True, "DicomAet": "ORTHANC",
        "DicomPort": port, "DicomCheckCalledAet": False,
        "DicomModalities": {
            calling_aet: {"AET": calling_aet, "Host": "127.0.0.1", "Port": port},
            dest_aet: {"AET": dest_aet, "Host": "127.0.0.1", "Port": dest_port},
        },
        "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False,
        "DicomCheckModalityHost": True, "MaximumPduLength": 131072, "SyncStorageArea": True,
        "SynchronousCMove": True, "SaveJobs": False, "TcpNoDelay": True,
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    # TCP_NODELAY=1: Orthanc's DCMTK reads it for the associations it opens (C-MOVE
    # sub-operations); without it each of them waits for delayed ACKs.
    proc = subprocess.Popen([orthanc, f"--logfile={work / 'orthanc.log'}", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, TCP_NODELAY="1"))

    stack.callback(_stop, proc)
    wait_port(port, proc, "Orthanc")
    wait_port(http_port, proc, "Orthanc")
    web = f"http://127.0.0.1:{http_port}/dicom-web" if ORTHANC_DICOMWEB.exists() else ""
    return Target("orthanc", "ORTHANC", "127.0.0.1", port, web)


def scratch(stack: ExitStack, keep: Path | None) -> Path:
    """The run's working folder: ``keep`` if given, else a temporary one removed at the end."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        return keep
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pacs-bench-")))
