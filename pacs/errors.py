"""The whole exception tree of the archive.

::

    PacsError
    ├── ConfigError              a setting is missing, malformed or out of range
    ├── DicomFormatError         bytes are not a valid DICOM dataset (offset, tag, reason)
    ├── ProtocolError            a PS3.8 upper layer / PS3.7 DIMSE rule was broken
    │   ├── LocalProtocolError   ... by us (a bug, or an API misuse)
    │   └── RemoteProtocolError  ... by the peer (abort the association)
    ├── StorageError             the blob store failed to write or read
    │   └── BlobNotFound         no blob at this location
    ├── CatalogError             the index failed
    ├── QueryError               a query (C-FIND identifier, QIDO-RS) is invalid; carries the
    │                            DIMSE status (0xA900, 0xC000...) and an error comment
    └── IngestError              an instance was refused; carries the DIMSE status to send

DIMSE statuses are values, never exceptions on the wire: service handlers turn these into a
status and an error comment at one boundary (``pacs.server.services``).
"""

from __future__ import annotations


class PacsError(Exception):
    """Base of every error raised by this package."""


class ConfigError(PacsError):
    """A setting is missing, malformed or out of range."""


class DicomFormatError(PacsError):
    """Bytes that do not parse as a DICOM dataset.

    ``offset`` is the byte offset in the buffer where parsing failed, ``tag`` the element being
    read there (or None when no tag was read yet).
    """

    def __init__(self, reason: str, offset: int = -1, tag: int | None = None) -> None:
        self.reason = reason
        self.offset = offset
        self.tag = tag
        where = f" at offset {offset}" if offset >= 0 else ""
        what = f" in ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else ""
        super().__init__(f"{reason}{what}{where}")

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, DicomFormatError)
            and (self.reason, self.offset, self.tag) == (other.reason, other.offset, other.tag)
        )

    def __hash__(self) -> int:
        return hash((self.reason, self.offset, self.tag))


class ProtocolError(PacsError):
    """A rule of the DICOM upper layer (PS3.8) or message exchange (PS3.7) was broken."""


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol forbids in the current state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids; the association must be aborted."""


class StorageError(PacsError):
    """The blob store could not write or read."""


class BlobNotFound(StorageError):
    """There is no blob at the requested location."""


class CatalogError(PacsError):
    """The index could not be read or written."""


class IngestError(PacsError):
    """An instance was refused; ``status`` is the DIMSE status to answer with."""

    def __init__(self, status: int, comment: str) -> None:
        self.status = status
        self.comment = comment
        super().__init__(f"0x{status:04X}: {comment}")


class QueryError(PacsError):
    """A query cannot be processed; ``status`` is the C-FIND failure status to answer with
    (0xA900 identifier does not match SOP class, 0xC000-0xCFFF unable to process)."""

    def __init__(self, status: int, comment: str) -> None:
        self.status = status
        self.comment = comment
        super().__init__(f"0x{status:04X}: {comment}")
