"""Orthanc as an in-run comparison baseline (benchmarks only, never a dependency).

Uses Debian's ``orthanc`` package (``apt-get install orthanc``) when ``Orthanc`` is on PATH;
the benchmarks print :data:`SKIP_NOTE` and leave the Orthanc rows out otherwise. Each run
starts its own server from a JSON config in a temporary directory (never the system service):
storage and index in that directory, no plugins, HTTP with ``RemoteAccessAllowed`` false.

Orthanc 1.10 has no listen-address option: its DICOM and HTTP ports bind every interface. So
instead of the ``DicomAlwaysAllow*`` switches, only the AE title :data:`CALLER` (and the
destinations given to :class:`Orthanc`) are known, each pinned to 127.0.0.1 with
``DicomCheckModalityHost``; every dcmtk call to Orthanc must pass ``-aet BENCH``.

Durability: each stored file is fdatasync-ed (``SyncStorageArea``, Orthanc's default since
1.7.4) but the SQLite index runs with ``JOURNAL_MODE=WAL`` and ``SYNCHRONOUS=NORMAL``, so a
C-STORE is answered before its index commit reaches the disk (safe against a crash of Orthanc,
not of the machine). ``sync=False`` turns the file sync off (``strace``: 215 fdatasync calls
for 200 stores with it, 17 without, those of SQLite checkpoints).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from tests.conftest import free_port

ORTHANC = shutil.which("Orthanc")
SKIP_NOTE = "note: Orthanc is not on PATH (apt-get install orthanc): Orthanc rows skipped"
AET = "ORTHANC"
CALLER = "BENCH"


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("Orthanc did not start")


def available() -> bool:
    return ORTHANC is not None


def version() -> str:
    if ORTHANC is None:
        return "not installed"
    out = subprocess.run([ORTHANC, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].strip() if out else "unknown"


class Orthanc:
    """A private Orthanc server: ``with Orthanc(work) as o: ... o.dicom_port ...``.

    ``destinations`` maps AE titles to ports on 127.0.0.1 (C-MOVE targets). ``pdu`` is
    Orthanc's ``MaximumPduLength`` (its default is 16 KiB; the benchmarks use 128 KiB for every
    peer).
    """

    def __init__(self, work: Path, destinations: dict[str, int] | None = None,
                 sync: bool = True, pdu: int = 131072) -> None:
        if ORTHANC is None:
            raise RuntimeError(SKIP_NOTE)
        self.work = work
        self.dicom_port, self.http_port = free_port(), free_port()
        modalities: dict[str, object] = {
            CALLER: {"AET": CALLER, "Host": "127.0.0.1", "Port": self.dicom_port},
        }
        for aet, port in (destinations or {}).items():
            modalities[aet] = {"AET": aet, "Host": "127.0.0.1", "Port": port}
        self.config = {
            "Name": "bench",
            "StorageDirectory": str(work / "storage"),
            "IndexDirectory": str(work / "index"),
            "StorageCompression": False,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": AET,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomModalities": modalities,
            "DicomCheckModalityHost": True,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowFindWorklist": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "UnknownSopClassAccepted": False,
            "MaximumPduLength": pdu,
            "SyncStorageArea": sync,
            "SynchronousCMove": True,
            "SaveJobs": False,
            "TcpNoDelay": True,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> Orthanc:
        assert ORTHANC is not None
        self.work.mkdir(parents=True, exist_ok=True)
        path = self.work / "orthanc.json"
        path.write_text(json.dumps(self.config, indent=2))
        self.proc = subprocess.Popen(
            [ORTHANC, f"--logfile={self.work / 'orthanc.log'}", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(self.dicom_port, self.proc)
            echo = subprocess.run(["echoscu", "-aet", CALLER, "-aec", AET, "127.0.0.1",
                                   str(self.dicom_port)], capture_output=True, text=True)
            if echo.returncode != 0:
                raise RuntimeError(f"echoscu to Orthanc failed: {echo.stderr[-1000:]}")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return (self.work / "orthanc.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def count_instances(self) -> int:
        """Instances in the index (REST ``/statistics``), to check that every store landed."""
        url = f"http://127.0.0.1:{self.http_port}/statistics"
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(json.load(response)["CountInstances"])
