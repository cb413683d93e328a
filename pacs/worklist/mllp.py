"""The HL7 v2 listener: MLLP (HL7 v2 Minimal Lower Layer Protocol) over TCP, asyncio.

A frame is ``<VT 0x0B> message <FS 0x1C><CR 0x0D>``; each frame gets exactly one ACK frame, in
order. Framing errors never close the connection silently:

* bytes before a start block (a message sent without MLLP, or garbage) -> an AR ACK (error 100)
  once the junk is over (at an end block, the next start block, or the end of the connection);
* a start block inside a frame (a frame without its end block) -> AR for the unfinished frame,
  and the new frame is read;
* a frame larger than ``max_frame`` -> AR, then the connection is closed;
* a connection idle for ``idle_timeout`` seconds is closed.

Each case is logged. Messages are handled one at a time per connection, in the archive's executor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor

log = logging.getLogger("pacs.hl7")

START, END, CR = b"\x0b", b"\x1c", b"\x0d"

Handle = Callable[[bytes, str], bytes]  # (message, peer) -> ACK message
Reject = Callable[[bytes, str], bytes]  # (junk, reason) -> negative ACK message


class MllpServer:
    """Listens on ``host:port``; ``handle`` (blocking, run in ``executor``) answers each message."""

    def __init__(
        self, host: str, port: int, handle: Handle, reject: Reject,
        executor: Executor | None = None, max_frame: int = 4 * 1024 * 1024,
        idle_timeout: float = 600.0,
    ) -> None:
        self.host, self.port = host, port
        self.handle, self.reject = handle, reject
        self.executor = executor
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info("HL7 MLLP listener on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        address = writer.get_extra_info("peername")
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        log.debug("HL7 connection from %s", peer)
        try:
            await self._frames(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug: this connection ends, the listener keeps serving
            log.exception("HL7 connection from %s failed", peer)
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _send(self, writer: asyncio.StreamWriter, message: bytes) -> None:
        writer.write(START + message + END + CR)
        await writer.drain()

    async def _answer(self, writer: asyncio.StreamWriter, message: bytes, peer: str) -> None:
        loop = asyncio.get_running_loop()
        ack = await loop.run_in_executor(self.executor, self.handle, message, peer)
        await self._send(writer, ack)

    async def _reject(self, writer: asyncio.StreamWriter, junk: bytes, reason: str,
                      peer: str) -> None:
        log.warning("HL7 from %s: MLLP framing error: %s (%d bytes)", peer, reason, len(junk))
        await self._send(writer, self.reject(junk, reason))

    async def _frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      peer: str) -> None:
        buffer = b""
        junk = b""  # bytes outside a frame
        while True:
            start = buffer.find(START)
            if start < 0:
                junk, buffer = junk + buffer, b""
            else:
                junk, buffer = junk + buffer[:start], buffer[start:]
            if junk.strip(b"\r\n\t \0"):
                end = junk.find(END)
                if end >= 0 or start >= 0:
                    cut = end if end >= 0 else len(junk)
                    await self._reject(writer, junk[:cut], "message without its start block "
                                       "(0x0B)" if end >= 0 else "data outside a frame", peer)
                    junk = junk[cut + 1:].lstrip(b"\r")
                    continue
            elif start >= 0:
                junk = b""
            if start >= 0:
                end = buffer.find(END, 1)
                restart = buffer.find(START, 1)
                if restart > 0 and (end < 0 or restart < end):
                    await self._reject(writer, buffer[1:restart],
                                       "frame without its end block (0x1C) before the next "
                                       "start block", peer)
                    buffer = buffer[restart:]
                    continue
                if end >= 0:
                    message, buffer = buffer[1:end], buffer[end + 1:]
                    if buffer.startswith(CR):
                        buffer = buffer[1:]
                    await self._answer(writer, message, peer)
                    continue
                if len(buffer) > self.max_frame:
                    await self._reject(writer, buffer[1:4096],
                                       f"frame larger than {self.max_frame} bytes", peer)
                    return
            elif len(junk) > self.max_frame:
                await self._reject(writer, junk[:4096], "data outside a frame", peer)
                return
            try:
                chunk = await asyncio.wait_for(reader.read(65536), self.idle_timeout)
            except TimeoutError:
                log.info("HL7 connection from %s idle: closed", peer)
                return
            if not chunk:
                if junk.strip(b"\r\n\t \0"):
                    await self._reject(writer, junk, "data outside a frame", peer)
                elif buffer:
                    await self._reject(writer, buffer[1:], "connection ended inside a frame",
                                       peer)
                return
            buffer += chunk
