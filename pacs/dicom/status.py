"""DIMSE status classes (PS3.7 Annex C), without imports: the supervisor's metrics use them."""

from __future__ import annotations

SUCCESS = 0x0000


def is_warning(status: int) -> bool:
    """Warning statuses of PS3.7 Annex C: 0001, 0107, 0116 and B000-BFFF (C-STORE: B000,
    B006, B007)."""
    return status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF


def delivered(status: int) -> bool:
    """The peer took what was sent: success, or a warning (stored, maybe with coercion,
    elements discarded, ...). The one classifier of forwards and retrieve sub-operations."""
    return status == SUCCESS or is_warning(status)
