"""The forwarder: worker 0 drains the forwarding queue (``pacs.index.outbox``) to remote AEs.

Routing rules (``[[route]]`` in the settings) queue instances as they are indexed; this loop
sends what is due with the SCU, drops what the destination acknowledged and postpones each
failure with an exponential back-off. The queue lives in the index, so a forward survives a
restart; ``pacs jobs`` lists what waits and why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING

from pacs.errors import ConfigError
from pacs.index.outbox import Forward
from pacs.net import dimse
from pacs.remotes import RemoteRegistry
from pacs.server.scu import remote_tls, send_instances

if TYPE_CHECKING:
    from pacs.archive import Archive

log = logging.getLogger("pacs.forward")

POLL = 0.5  # seconds between looks at the queue when idle
BATCH = 500  # entries taken per round
SETTLE_INTERVAL = 1.0  # s: outcomes of a long send are written to the queue this often


async def forward_forever(archive: Archive) -> None:
    """Run until cancelled; each round sends every due entry, grouped by destination."""
    loop = asyncio.get_running_loop()
    remotes = RemoteRegistry(archive.settings)
    while True:
        try:
            now = time.time()
            due = await loop.run_in_executor(archive.executor, archive.catalog.forwards_due,
                                             now, BATCH)
            if due:
                await _send_round(archive, due, remotes)
                continue  # more may be due
        except asyncio.CancelledError:
            raise
        except Exception:  # the queue is durable: the next round tries again
            log.exception("forwarding round failed")
        await asyncio.sleep(POLL)


class _Ledger:
    """Outcomes of a round not yet written to the queue. Each settle is one transaction;
    what is settled is never sent again after a stop or a crash."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.sent: list[Forward] = []
        self.failed: list[tuple[Forward, str]] = []

    async def settle(self) -> None:
        sent, failed = self.sent, self.failed
        if not (sent or failed):
            return
        self.sent, self.failed = [], []
        now = time.time()
        for entry, error in failed:
            log.warning("forward of %s to %s failed (attempt %d): %s", entry.sop_instance_uid,
                        entry.destination, entry.attempts + 1, error)
        archive = self.archive

        def settle() -> None:
            archive.catalog.settle_forwards(sent, failed, now, archive.settings.forward_retry_base)

        # Shielded: cancelled while it waits for the writer thread, the transaction would be
        # skipped, and this batch is no longer in the ledger for the final settle.
        await asyncio.shield(asyncio.wrap_future(archive.writer.run(settle)))


async def _send_round(archive: Archive, due: list[Forward], remotes: RemoteRegistry) -> None:
    """Send the due entries, settling each destination's outcomes when its send ends and, in
    a long send, every SETTLE_INTERVAL; cancelled (a shutdown) or failed, what was
    acknowledged so far is settled before the exception goes on."""
    ledger = _Ledger(archive)
    try:
        await _send_groups(archive, due, remotes, ledger)
    finally:
        # Shielded: a second cancellation must not lose the acknowledgements either.
        await asyncio.shield(ledger.settle())


async def _send_groups(archive: Archive, due: list[Forward], remotes: RemoteRegistry,
                       ledger: _Ledger) -> None:
    settings = archive.settings
    loop = asyncio.get_running_loop()
    groups: dict[str, list[Forward]] = defaultdict(list)
    for entry in due:
        groups[entry.destination].append(entry)
    for destination, entries in groups.items():
        # Routes name settings entries (checked at load); REST may override host and port.
        remote = remotes.get(destination)
        if remote is None:
            ledger.failed += [(e, f"unknown destination {destination}") for e in entries]
            continue
        by_uid: dict[str, Forward] = {}
        items = []
        for entry in entries:
            record = await loop.run_in_executor(archive.executor, archive.catalog.get_instance,
                                                entry.sop_instance_uid)
            if record is None:  # deleted meanwhile: nothing left to forward
                ledger.sent.append(entry)
                continue
            by_uid[record.sop_instance_uid] = entry
            items.append((record.location, record.attributes.get("SOPClassUID", ""),
                          record.sop_instance_uid, record.transfer_syntax_uid))
        delivered = 0

        def on_result(uid: str, status: int, comment: str | None,
                      by_uid: dict[str, Forward] = by_uid) -> None:
            nonlocal delivered
            entry = by_uid.pop(uid, None)
            if entry is None:
                return
            if dimse.delivered(status):  # a warning too: the peer stored it
                ledger.sent.append(entry)
                delivered += 1
            else:
                ledger.failed.append((entry, f"0x{status:04X} {comment or ''}".strip()))

        try:
            tls = remote_tls(settings, remote)
        except ConfigError as exc:  # a REST remote's TLS files unreadable since it was added
            ledger.failed += [(e, f"TLS settings: {exc}") for e in by_uid.values()]
            by_uid.clear()
            items = []
        if items:
            sending = asyncio.ensure_future(send_instances(
                archive.store, items, (remote.host, remote.port, remote.aet), settings.aet,
                associations=1, on_result=on_result, tls=tls))
            try:
                while not sending.done():
                    await asyncio.wait({sending}, timeout=SETTLE_INTERVAL)
                    await ledger.settle()  # a crash loses at most this interval's outcomes
            finally:
                if not sending.done():  # cancelled (a shutdown): abort its association
                    sending.cancel()
                    await asyncio.gather(sending, return_exceptions=True)
            sending.result()
        ledger.failed += [(entry, "0xC000 not attempted") for entry in by_uid.values()]
        log.info("forwarded %d of %d instances to %s", delivered, len(items), destination)
        await ledger.settle()
