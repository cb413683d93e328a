"""The forwarding ledger: acknowledgements handed to the catalog writer are written even when
the round is cancelled (a shutdown) while they wait for the writer thread."""

from __future__ import annotations

import asyncio
import threading
import time
import types
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from pacs.server.forward import _Ledger


class BusyWriter:
    """Like CatalogWriter.run: the writer thread is busy with another batch for 0.2 s, and a
    cancelled future is skipped when its turn comes."""

    def run(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()

        def work() -> None:
            time.sleep(0.2)
            if future.set_running_or_notify_cancel():
                future.set_result(fn())

        threading.Thread(target=work).start()
        return future


def test_a_settle_cancelled_while_it_waits_for_the_writer_is_still_written() -> None:
    settled: list[Any] = []
    catalog = types.SimpleNamespace(
        settle_forwards=lambda sent, failed, now, base: settled.extend(sent))
    archive = types.SimpleNamespace(writer=BusyWriter(), catalog=catalog,
                                    settings=types.SimpleNamespace(forward_retry_base=1))

    async def main() -> None:
        ledger = _Ledger(archive)  # type: ignore[arg-type]
        ledger.sent += ["acknowledged-1", "acknowledged-2"]  # type: ignore[list-item]

        async def round_() -> None:  # as _send_round: a settle, then the final one
            try:
                await ledger.settle()
            finally:
                await asyncio.shield(ledger.settle())

        task = asyncio.create_task(round_())
        await asyncio.sleep(0.05)
        task.cancel()  # a shutdown, while the batch waits for the writer thread
        await asyncio.gather(task, return_exceptions=True)
        deadline = time.monotonic() + 5
        while not settled and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    asyncio.run(main())
    assert settled == ["acknowledged-1", "acknowledged-2"]
