"""Open the embedded archive's parts from settings: blob store, catalog, writer, ingest."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pacs.config import Settings
from pacs.errors import ConfigError
from pacs.index.catalog import Catalog
from pacs.index.writer import CatalogWriter
from pacs.ingest import Ingest
from pacs.store.base import BlobStore
from pacs.store.files import FileStore

log = logging.getLogger("pacs.archive")


def open_store(settings: Settings) -> BlobStore:
    if settings.store_backend == "files":
        return FileStore(settings.blob_dir)
    raise ConfigError(f"store_backend: unknown backend {settings.store_backend!r}")


def open_catalog(settings: Settings) -> Catalog:
    return Catalog(settings.index_dir, map_size=settings.lmdb_map_size)


@dataclass
class Archive:
    """Everything one process needs to store and find instances."""

    settings: Settings
    store: BlobStore
    catalog: Catalog
    writer: CatalogWriter
    executor: ThreadPoolExecutor
    ingest: Ingest

    @classmethod
    def open(cls, settings: Settings) -> Archive:
        for folder in (settings.data_dir, settings.spool_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # Spooled datasets left by a crash were never acknowledged: drop them.
        for leftover in settings.spool_dir.glob("spool-*"):
            log.warning("removing unfinished spool file %s", leftover)
            leftover.unlink(missing_ok=True)
        store = open_store(settings)
        catalog = open_catalog(settings)
        writer = CatalogWriter(catalog, batch_size=settings.commit_batch)
        executor = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="pacs-io")
        ingest = Ingest(store, catalog, writer, executor, settings.on_duplicate)
        return cls(settings, store, catalog, writer, executor, ingest)

    def close(self) -> None:
        """Finish queued index commits, then release everything (order matters)."""
        self.executor.shutdown(wait=True)
        self.writer.close()
        self.catalog.close()
        self.store.close()
