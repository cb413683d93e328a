"""``pacs serve``: the event loop (uvloop when available), signals and orderly shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from pacs.archive import Archive
from pacs.config import Settings
from pacs.server.dimse_server import DimseServer

log = logging.getLogger("pacs.serve")


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or ``stop`` is set), then finish in-flight stores and close."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    archive = await loop.run_in_executor(None, Archive.open, settings)
    dimse = DimseServer(settings, archive)
    try:
        await dimse.start()
        stats = archive.catalog.statistics()
        log.info("archive at %s holds %s instances; scanner %s", settings.data_dir,
                 stats.get("instances", 0), _scanner())
        await stop.wait()
        log.info("shutting down: finishing in-flight stores")
        await dimse.stop()
    finally:
        await loop.run_in_executor(None, archive.close)
        log.info("index closed; bye")


def _scanner() -> str:
    from pacs.dicom.scan import IMPLEMENTATION

    return IMPLEMENTATION


def run(settings: Settings) -> int:
    """Blocking entry point for the CLI; exit status 0 after an orderly shutdown."""
    try:
        import uvloop

        runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    except ImportError:  # plain asyncio still works, only slower
        runner = asyncio.run
    try:
        runner(serve(settings))
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 2
    return 0
