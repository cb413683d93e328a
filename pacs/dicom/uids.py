"""UIDs the archive negotiates and writes (PS3.6 Annex A).

The lists come from pydicom's UID dictionary so that every Storage SOP class and transfer syntax
pydicom knows is accepted without a hand-kept table.
"""

from __future__ import annotations

from pydicom._uid_dict import UID_dictionary

# Our own implementation identity, written in A-ASSOCIATE user information and Part-10 meta.
IMPLEMENTATION_CLASS_UID = "2.25.144268546363426866593777276823695078858"
IMPLEMENTATION_VERSION_NAME = "PACS_ARCHIVE_01"  # 16 characters at most (PS3.7 D.3.3.2)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"

NATIVE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
)


def _transfer_syntaxes() -> tuple[str, ...]:
    known = [uid for uid, entry in UID_dictionary.items() if entry[1] == "Transfer Syntax"]
    # Retired syntaxes are accepted too: migration jobs bring old archives, stored as received.
    encapsulated = [uid for uid in known if uid not in NATIVE_TRANSFER_SYNTAXES]
    return NATIVE_TRANSFER_SYNTAXES + tuple(sorted(encapsulated))


ALL_TRANSFER_SYNTAXES: tuple[str, ...] = _transfer_syntaxes()
ENCAPSULATED_TRANSFER_SYNTAXES: tuple[str, ...] = ALL_TRANSFER_SYNTAXES[
    len(NATIVE_TRANSFER_SYNTAXES) :
]


def _storage_sop_classes() -> tuple[str, ...]:
    return tuple(
        sorted(
            uid
            for uid, (name, kind, *_rest) in UID_dictionary.items()
            if kind == "SOP Class"
            and "Storage" in name
            and "Commitment" not in name
            and "Media Storage Directory" not in name
        )
    )


STORAGE_SOP_CLASSES: tuple[str, ...] = _storage_sop_classes()


def uid_name(uid: str) -> str:
    """The Standard's name of a UID, or the UID itself when pydicom does not know it."""
    entry = UID_dictionary.get(uid)
    return entry[0] if entry else uid
