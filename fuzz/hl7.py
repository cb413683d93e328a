"""HL7 target: orders, patient updates and ACKs (pacs/worklist/hl7_orders.py), MLLP framing.

The input's first byte picks the chunking of the rest for the MLLP reader. Three checks:

* ``OrderHandler.handle`` answers every message with a parseable ACK (AA, AE or AR) and never
  with AE 207 "internal error", which it sends only when an unexpected exception escaped (a
  bug: HL7 errors are ``Hl7Error``); orders go to a real worklist store (LMDB, temporary);
* ``reject_unframed`` answers any bytes with an AR ACK;
* the MLLP reader (``MllpServer._frames``) over the input as a TCP stream: every frame it
  writes is ``VT message FS CR`` holding a parseable ACK, and it never raises.
"""

from __future__ import annotations

import asyncio
import atexit
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

from pacs.index.catalog import Catalog
from pacs.worklist.hl7_orders import (
    INTERNAL_ERROR,
    OrderHandler,
    reject_unframed,
)
from pacs.worklist.mllp import CR, END, START, MllpServer
from pacs.worklist.store import DB_NAME, WorklistStore

_STEPS = (0, 1, 2, 3, 7, 16, 64, 256)


class _Inline(Executor):
    """Runs each submitted call at once (no thread hop per message while fuzzing)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class _Writer:
    """The part of asyncio.StreamWriter the MLLP reader uses; keeps the bytes."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


class _State:
    """One worklist store (emptied before each input: an input's outcome is its own) and one
    event loop for all inputs."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="fuzz-hl7-"))
        self.catalog = Catalog(self.directory / "index", map_size=1 << 28,
                               durable_commits=False)
        self.dirty = False
        store = WorklistStore(self.catalog, self._run_write)
        self.handler = OrderHandler(store, "STATION", "PACS")
        self.server = MllpServer("127.0.0.1", 0, self.handler.handle,
                                 lambda junk, reason: reject_unframed(junk, reason),
                                 executor=_Inline(), max_frame=4096)
        self.loop = asyncio.new_event_loop()

    def _run_write(self, fn: Callable[[], Any]) -> Any:
        self.dirty = True
        return fn()

    def empty_worklist(self) -> None:
        if self.dirty:
            db = self.catalog.database(DB_NAME)
            self.catalog._write(lambda t: t.txn.drop(db, delete=False))
            self.dirty = False

    def close(self) -> None:
        self.loop.close()
        self.catalog.close()
        shutil.rmtree(self.directory, ignore_errors=True)


_state: _State | None = None


def _get_state() -> _State:
    global _state
    if _state is None:
        _state = _State()
        atexit.register(close)
    return _state


def close() -> None:
    """Release the store and the event loop (the next check makes new ones)."""
    global _state
    if _state is not None:
        _state.close()
        _state = None


def check_ack(ack: bytes) -> str:
    """The ACK code of an ACK message; raises when it is not a proper ACK (read by hand: the
    hl7 library's parse is most of the time per input)."""
    segments = {line[:3]: line.split("|") for line in ack.decode().split("\r") if line}
    if not ack.startswith(b"MSH|^~\\&|") or "MSA" not in segments:
        raise AssertionError(f"not an ACK: {ack!r}")
    code = segments["MSA"][1]
    if code not in ("AA", "AE", "AR") or (code == "AA") == ("ERR" in segments):
        raise AssertionError(f"ACK code {code!r}: {ack!r}")
    if code != "AA" and segments["ERR"][3].split("^")[0] == str(INTERNAL_ERROR):
        raise AssertionError(f"internal error: {ack!r}")
    return code


async def _frames(server: MllpServer, chunks: list[bytes], writer: _Writer) -> None:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    await server._frames(reader, writer, "fuzz")  # type: ignore[arg-type]


def check(data: bytes) -> None:
    """Run the three checks on ``data``; raises on a crash."""
    if not data:
        return
    state = _get_state()
    state.empty_worklist()
    mode, body = data[0], data[1:]
    check_ack(state.handler.handle(body, "fuzz"))
    if check_ack(reject_unframed(body, "fuzzing")) != "AR":
        raise AssertionError("reject_unframed did not reject")
    step = _STEPS[mode & 0x07]
    chunks = [body[i:i + step] for i in range(0, len(body), step)] if step else [body]
    writer = _Writer()
    state.loop.run_until_complete(_frames(state.server, chunks, writer))
    out = bytes(writer.data)
    while out:
        end = out.find(END + CR)
        if not out.startswith(START) or end < 0:
            raise AssertionError(f"malformed MLLP frame written: {out[:40]!r}")
        check_ack(out[1:end])
        out = out[end + 2:]


_ORM = ("MSH|^~\\&|RIS|HOSP|PACS|HOSP|20261129120000||ORM^O01|MSG{n}|P|2.5.1\r"
        "PID|1||P{n}^^^HOSP||Doe^Jane^Q||19700101|F\r"
        "PV1|1|O|||||1234^Ref^Doctor\r"
        "ORC|{control}|PL{n}^RIS|FI{n}||{status}|||||||1234^Order^Doc\r"
        + "|".join(["OBR", "1", "PL{n}^RIS", "FI{n}", "CTCHEST^CT chest^L", "", "",
                    "20261130083000", *[""] * 8, "5678^Ref^Doc", "", "ACC{n}", "RP{n}", "SPS{n}",
                    "CT1", "", "", "CT", "", "", "^^^20261130083000", *[""] * 6, "4321^Tech^Tom",
                    "", "20261130"]) + "\r"
        + "TQ1|1||||||20261130090000\r"
        "ZDS|1.2.3.{n}^PACS^Application^DICOM\r")


_OMI = ("MSH|^~\\&|RIS|HOSP|PACS|HOSP|20261129120000||OMI^O23|OMI{n}|P|2.5.1\r"
        "PID|1||P{n}^^^HOSP||Roe^Ann||19800202|F\r"
        "ORC|NW|OP{n}^RIS|OF{n}\r"
        "OBR|1|OP{n}^RIS|OF{n}|MRHEAD^MR head^L\r"
        "IPC|ACC{n}|RP{n}|1.2.840.{n}|SPS{n}|MR||||MR1\r")
_ADT = ("MSH|^~\\&|ADT|HOSP|PACS|HOSP|20261129||ADT^{event}|ADT{n}|P|2.5.1\r"
        "PID|1||P{n}^^^HOSP||Doe^Janet||19700101|F\r"
        "MRG|P1^^^HOSP\r")


def seeds() -> list[bytes]:
    """Mode byte + ORM (NW, XO, SC, CA), OMI^O23, ADT (A08, A40, an unsupported A01), junk;
    framed and unframed; an order then its update and merge in one stream."""
    messages = [_ORM.format(n=1, control="NW", status=""),
                _ORM.format(n=1, control="XO", status=""),
                _ORM.format(n=1, control="SC", status="IP"),
                _ORM.format(n=2, control="CA", status=""),
                _OMI.format(n=3),
                _ADT.format(n=4, event="A08"),
                _ADT.format(n=5, event="A40"),
                "MSH|^~\\&|ADT|HOSP|PACS|HOSP|20261129||ADT^A01|M9|P|2.3\rPID|1||P9\r",
                "not hl7 at all"]
    out = []
    for mode, text in enumerate(messages):
        raw = text.encode()
        out.append(bytes([mode]) + raw)
        out.append(bytes([mode + 8]) + START + raw + END + CR)
    out.append(b"\x03" + START + messages[0].encode() + START + messages[1].encode() + END + CR)
    stream = [messages[0], messages[5], messages[6], messages[1]]
    out.append(b"\x05" + b"".join(START + m.encode() + END + CR for m in stream))
    return out
